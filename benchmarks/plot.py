#!/usr/bin/env python
"""Draw the benchmark's cost-against-store-size plots from a saved JSON run.

    python benchmarks/plot.py [benchmarks/results/latest.json] [--out docs]

Writes PNG files (matplotlib, no display needed):
  bench_growth.png   durable write (set + flush): aiodict vs logkv, by store size
  bench_scale.png    open, replay, compaction and memory per key, by store size
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _series(rows: list[dict], system: str) -> tuple[list[int], list[float], list[float], list[float]]:
    pts = sorted((r["size"], r["median"], r["min"], r["max"]) for r in rows
                 if r.get("system") == system and r.get("size") and r.get("median") is not None)
    return ([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], [p[3] for p in pts])


def _line(ax, rows: list[dict], system: str, label: str, scale: float = 1.0, **kw) -> None:
    xs, ys, lo, hi = _series(rows, system)
    if not xs:
        return
    ys = [y * scale for y in ys]
    err = [[y - lo_ * scale for y, lo_ in zip(ys, lo)], [hi_ * scale - y for y, hi_ in zip(ys, hi)]]
    ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label, **kw)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="?", default=os.path.join(HERE, "results", "latest.json"))
    p.add_argument("--out", default=os.path.join(ROOT, "docs"), help="folder for the PNGs")
    args = p.parse_args(argv)
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: pip install -e \".[bench]\"", file=sys.stderr)
        return 2
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(args.results) as f:
        res = json.load(f)
    wl = res["workloads"]
    m = res["meta"]["machine"]
    where = f"{m['nproc']} cores, {m['cpu_model']}, Python {m['python']}"
    os.makedirs(args.out, exist_ok=True)
    written = []

    if "growth" in wl and wl["growth"].get("rows"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        rows = wl["growth"]["rows"]
        _line(ax, rows, "aiodict", "aiodict set + flush (rewrites the file)")
        _line(ax, rows, "logkv", "logkv set + flush (appends one record)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("keys in the store")
        ax.set_ylabel("ms per durable write (median, min-max bars)")
        ax.set_title("A durable write against store size")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.text(0.01, 0.01, where, fontsize=7, alpha=0.7)
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        out = os.path.join(args.out, "bench_growth.png")
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)

    panels = [
        ("open", "Open a snapshot", "s", [("orjson-gc-off", "orjson.loads, GC off (anchor)"),
                                          ("logkv", "logkv open"),
                                          ("orjson-gc-on", "orjson.loads, GC on"),
                                          ("aiodict", "aiodict open")]),
        ("replay", "Replay the log", "µs per record", [("floor", "floor loop (anchor)"),
                                                       ("logkv", "logkv open")]),
        ("compaction", "Compaction with 2 writers", "s", [("floor", "floor (anchor)"),
                                                          ("logkv", "logkv compact()")]),
        ("memory", "Memory after open", "bytes per key", [("dict", "plain dict (anchor)"),
                                                          ("logkv", "logkv")]),
    ]
    present = [pn for pn in panels if pn[0] in wl and wl[pn[0]].get("rows")]
    if present:
        fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 4))
        if len(present) == 1:
            axes = [axes]
        for ax, (name, title, unit, systems) in zip(axes, present):
            rows = wl[name]["rows"]
            for system, label in systems:
                _line(ax, rows, system, label)
            ax.set_xscale("log")
            if name in ("open", "compaction"):
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)
            ax.set_xlabel("keys (records for replay)")
            ax.set_ylabel(unit)
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.text(0.01, 0.01, where, fontsize=7, alpha=0.7)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        out = os.path.join(args.out, "bench_scale.png")
        fig.savefig(out, dpi=100)
        plt.close(fig)
        written.append(out)

    for w in written:
        print(w)
    if not written:
        print("no sized workloads in the results; nothing drawn", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
