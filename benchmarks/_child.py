"""Workers the benchmark runs in other processes (python benchmarks/_child.py MODE ...).

Protocol: the worker prepares, prints "ready", waits for one line "go" on
stdin, works, and prints one JSON line with its figures. Times are
time.monotonic(), which is one clock for every process on Linux.

  writer PATH            set keys in a loop until stdin says "stop"; reports
                         every set slower than 1 ms (start, seconds) and the count
  incr-logkv PATH N      N x store.incr("counter") with durability="os"
  incr-bare PATH N       N x (flock, fstat, pread of the last line, append the
                         next value, unlock) on a plain file: the anchor
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
import time


def _wait_go() -> None:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(2)


def writer(path: str) -> None:
    from logkv import LogKV

    from bench_lib import GcPauses, set_until

    s = LogKV(path, compact_on_close=False, auto_compact=False)
    stop = threading.Event()
    gcp = GcPauses()
    _wait_go()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    mono = time.monotonic
    first = mono()
    n, slow = set_until(s, "proc", stop)
    worst = max([d for _t, d, _p in slow] or [0.0])
    last = mono()
    s.close()
    gcp.stop()
    print(json.dumps({"ops": n, "first": first, "last": last, "slow": slow, "worst": worst,
                      "gc": gcp.passes}), flush=True)


def incr_logkv(path: str, n: int) -> None:
    from logkv import LogKV

    s = LogKV(path, durability="os", compact_on_close=False, auto_compact=False)
    s.get("counter")
    _wait_go()
    incr = s.incr
    t0 = time.monotonic()
    for _ in range(n):
        incr("counter")
    t1 = time.monotonic()
    s.close()
    print(json.dumps({"start": t0, "end": t1}), flush=True)


def incr_bare(path: str, n: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    _wait_go()
    flock, fstat, pread, write = fcntl.flock, os.fstat, os.pread, os.write
    EX, UN = fcntl.LOCK_EX, fcntl.LOCK_UN
    t0 = time.monotonic()
    for _ in range(n):
        flock(fd, EX)
        size = fstat(fd).st_size
        if size:
            tail = pread(fd, min(24, size), max(0, size - 24))
            value = int(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])
        else:
            value = 0
        write(fd, b"%d\n" % (value + 1))
        flock(fd, UN)
    t1 = time.monotonic()
    os.close(fd)
    print(json.dumps({"start": t0, "end": t1}), flush=True)


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "writer":
        writer(path)
    elif mode == "incr-logkv":
        incr_logkv(path, int(sys.argv[3]))
    elif mode == "incr-bare":
        incr_bare(path, int(sys.argv[3]))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
