#!/usr/bin/env python
"""Two versions of logkv's hot paths side by side, in one process.

    python benchmarks/ab_hotpaths.py OLD_ROOT NEW_ROOT [--wall]

Loads the ``logkv`` package of each source tree under its own name and times
``set`` (dict, int and str values), ``incr``, ``get`` and a durable ``set``
on a store of each, in alternating chunks (the order flips every round), so
both versions meet the same machine load. Reports per-op µs (min and median
of the rounds) and the median of the paired per-round ratios new/old, which
is what a "costs at most N %" budget is judged on. By default the clock is
the thread's CPU time (``time.thread_time``): on a loaded shared machine wall
time moves ±50 % between rounds, CPU time a few percent; ``--wall`` uses
``time.perf_counter`` instead. The durable figure in CPU time is the cost of
the call itself, not of its wait for the ``fdatasync``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any


def load(name: str, root: str) -> ModuleType:
    pkg = os.path.join(root, "logkv")
    spec = importlib.util.spec_from_file_location(name, os.path.join(pkg, "__init__.py"),
                                                  submodule_search_locations=[pkg])
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


KEYS = [f"user:{i}" for i in range(2000)]
VALUE = {"name": "x", "n": 1, "tags": ["a", "b"]}


def workload(kind: str, n: int) -> tuple[Callable[[Any], None], int]:
    """A function doing ``ops`` operations of ``kind`` on a store, and ``ops``."""
    keys = KEYS[:n]

    def set_dict(db: Any) -> None:
        s = db.set
        for k in keys:
            s(k, VALUE)

    def set_int(db: Any) -> None:
        s = db.set
        for i, k in enumerate(keys):
            s(k, i)

    def set_str(db: Any) -> None:
        s = db.set
        for k in keys:
            s(k, "some text")

    def incr(db: Any) -> None:
        f = db.incr
        for _ in keys:
            f("c")

    def get(db: Any) -> None:
        g = db.get
        for _ in range(10):
            for k in keys:
                g(k)

    fns = {"set_dict": set_dict, "set_int": set_int, "set_str": set_str, "incr": incr,
           "get": get}
    return fns[kind], n * (10 if kind == "get" else 1)


def bench(mods: dict[str, ModuleType], folder: str, kind: str, clock: Callable[[], float], *,
          durability: str = "interval", n: int = 2000, rounds: int = 100) -> dict[str, float]:
    fn, ops = workload(kind, n)
    stores = {tag: mod.LogKV(os.path.join(folder, f"{kind}-{tag}-{durability}.json"),
                             durability=durability, auto_compact=False, compact_on_close=False)
              for tag, mod in mods.items()}
    times: dict[str, list[float]] = {tag: [] for tag in stores}
    try:
        for db in stores.values():
            for k in KEYS[:n]:
                db.set(k, VALUE)
        for r in range(rounds):
            for tag in (("old", "new") if r % 2 == 0 else ("new", "old")):
                t = clock()
                fn(stores[tag])
                times[tag].append((clock() - t) / ops * 1e6)
    finally:
        for db in stores.values():
            db.close()
    old, new = times["old"], times["new"]
    paired = statistics.median(b / a for a, b in zip(old, new))
    return {"old_min": min(old), "new_min": min(new), "old_median": statistics.median(old),
            "new_median": statistics.median(new), "paired_ratio": paired}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old_root")
    p.add_argument("new_root")
    p.add_argument("--wall", action="store_true", help="wall-clock time instead of CPU time")
    args = p.parse_args(argv)
    mods = {"old": load("logkv_old", os.path.abspath(args.old_root)),
            "new": load("logkv_new", os.path.abspath(args.new_root))}
    clock = time.perf_counter if args.wall else time.thread_time
    folder = tempfile.mkdtemp(prefix="logkv-ab-")
    results = {kind: bench(mods, folder, kind, clock)
               for kind in ("set_dict", "set_int", "set_str", "incr", "get")}
    results["durable_set_dict"] = bench(mods, folder, "set_dict", clock, durability="always",
                                        n=40, rounds=30)
    print(f"clock: {'wall' if args.wall else 'thread CPU'} time; µs per op")
    for kind, r in results.items():
        print(f"{kind:17s} old min {r['old_min']:8.3f} median {r['old_median']:8.3f} | "
              f"new min {r['new_min']:8.3f} median {r['new_median']:8.3f} | "
              f"new/old paired median {r['paired_ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
