"""The engine's non-blocking mode (what AsyncLogKV runs a mutation in on the
event loop): where a call would wait -- for the store's thread lock, another
descriptor's write lock, or a catch-up that reads files -- it raises
``_WouldBlock`` before it has changed memory, the log or the shared page, with
every lock it took let go and the garbage collector as it was.
"""
from __future__ import annotations

import fcntl
import gc
import os
import threading

import pytest

from logkv import LogKV
from logkv._lock import _WouldBlock, nonblocking


class Holder:
    """A thread that holds ``lock`` until ``release()``."""

    def __init__(self, lock) -> None:
        self.taken = threading.Event()
        self.go = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(lock,))
        self.thread.start()
        assert self.taken.wait(10)

    def _run(self, lock) -> None:
        with lock:
            self.taken.set()
            self.go.wait(30)

    def release(self) -> None:
        self.go.set()
        self.thread.join(10)


def log_bytes(path: str) -> bytes:
    with open(path + ".wal", "rb") as f:
        return f.read()



def state(db, path):
    e = db._e
    # (no db.copy(): it would catch up)
    return (log_bytes(path), dict(e.data), dict(e.exp), e.seq, e.log_end, e._shm_seen,
            e.log_gen, bytes(e.coord.map[:96]), e._depth)


def call_nonblocking(fn, *args):
    nonblocking.on = True
    try:
        return fn(*args)
    finally:
        nonblocking.on = False


MUTATIONS = [
    ("set", lambda db: db.set("k", 2)),
    ("incr", lambda db: db.incr("n")),
    ("append", lambda db: db.append("l", 1)),
    ("pop", lambda db: db.pop("k")),
    ("update", lambda db: db.update({"a": 1})),
    ("clear", lambda db: db.clear()),
    ("view clear", lambda db: db.namespace("x").clear()),
    ("popitem", lambda db: db.popitem()),
    ("cleanup_expired", lambda db: db.cleanup_expired()),
]


# cleanup_expired never takes the write lock (it logs nothing): no such case.
CASES = [(why, name, call) for why in ("thread lock", "write lock", "behind", "far behind")
         for name, call in MUTATIONS if not (name == "cleanup_expired" and why == "write lock")]


@pytest.mark.parametrize("why,name,call", CASES, ids=[f"{c[1]}-{c[0]}" for c in CASES])
@pytest.mark.parametrize("gc_on", [True, False])
def test_nonblocking_mode_raises_before_any_change(tmp_path, why, name, call, gc_on):
    p = str(tmp_path / "db.json")
    db = LogKV(p, compact_on_close=False)
    db.update({"k": 1, "n": 1, "x:y": 1})
    other = LogKV(p, compact_on_close=False)
    fd = os.open(p + ".lock", os.O_RDWR)
    holder = None
    was_enabled = gc.isenabled()
    try:
        if why == "thread lock":
            holder = Holder(db._e.lock)
        elif why == "write lock":
            fcntl.flock(fd, fcntl.LOCK_EX)
        elif why == "behind":
            other.set("theirs", 1)  # caught up after taking the write lock
        else:
            other.set("theirs", "x" * 70_000)  # prefetched before taking it
        if gc_on:
            gc.enable()
        else:
            gc.disable()
        before = state(db, p)
        with pytest.raises(_WouldBlock):
            call_nonblocking(call, db)
        assert gc.isenabled() == gc_on  # the collector as it was
        assert state(db, p) == before
        # everything it took was let go: the thread lock and the write lock
        if why != "thread lock":
            assert db._e.lock.acquire(False)
            db._e.lock.release()
        if why != "write lock":
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        if was_enabled:
            gc.enable()
        if holder is not None:
            holder.release()
        os.close(fd)
    # and once nothing is in the way, the same call succeeds (blocking mode)
    call(db)
    db.close()
    other.close()


def test_nonblocking_mode_is_per_thread(tmp_path):
    p = str(tmp_path / "db.json")
    db = LogKV(p)
    seen = []

    def other_thread():
        seen.append(nonblocking.on)

    nonblocking.on = True
    try:
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
    finally:
        nonblocking.on = False
    assert seen == [False]
    db.close()
