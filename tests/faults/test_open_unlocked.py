"""Opening a large store while another process writes must not stop that
writer for the length of the parse (design §7, "Catching up"): the snapshot
and the committed log are read without the write lock, and only the tail is
read under it. Also the compactor, which opens the store the same way."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time

import orjson

from logkv import LogKV

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = r"""
import sys, time
from logkv import LogKV
t = time.perf_counter()
db = LogKV(sys.argv[1], compact_on_close=False)
took = time.perf_counter() - t
print(took, db.get("counter"), len(db), flush=True)
db.close()
"""


def _big_store(path: str, n: int) -> None:
    with open(path, "wb") as f:
        f.write(orjson.dumps({"version": 1, "updated_at": "2026-01-01T00:00:00Z",
                              "data": {f"user:{i}": {"value": {"n": i, "name": "x" * 20},
                                                     "expires_at": None} for i in range(n)}}))


def _bytes_read(pid: int) -> int:
    """Bytes the process has read through read(2) and friends (Linux)."""
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def test_another_process_parses_the_store_while_a_writer_holds_the_lock(tmp_path):
    """Held for the parse, a writer would wait the whole open (0.5-3 s for
    this store). Here a writer holds the write lock while another process
    opens the store: the opener must read the whole snapshot without the
    lock, and then wait only to read the tail under it. No clock is judged:
    the test waits for the opener's reads, not for a time."""
    path = str(tmp_path / "db.json")
    _big_store(path, 300_000)
    db = LogKV(path, compact_on_close=False, auto_compact=False)
    db.incr("counter")  # a record in the log too
    size = os.path.getsize(path)
    lock_fd = os.open(path + ".lock", os.O_RDWR)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    env = dict(os.environ, PYTHONPATH=ROOT)
    child = subprocess.Popen([sys.executable, "-c", CHILD, path], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while _bytes_read(child.pid) < size:
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the opener did not read the snapshot " \
                "while another process held the write lock"
            time.sleep(0.01)
        # The write lock is still ours: a write made now lands after the
        # opener's unlocked read, and must be in what it ends up with.
        fcntl.flock(lock_fd, fcntl.LOCK_UN)
        db.incr("counter")
    finally:
        os.close(lock_fd)
        out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err.decode()
    took, seen, keys = out.decode().split()
    assert int(keys) == 300_001  # every key, and the counter
    assert 1 <= int(seen) <= db["counter"] == 2
    db.close()
