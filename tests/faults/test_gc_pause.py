"""No garbage-collector pass runs while a store holds the write lock (design.md §7).

A full collection walks every container of the process (~50 ms with a 1M-key
store of dict values); inside a lock hold it made every writer of every other
process wait that long. The store pauses the collector for the span of each
hold. These tests make the collector run as often as it can (threshold 1) and
record, at the start of each pass, whether the store holds its write lock.
They would fail without the pause: with threshold 1 a pass starts at
almost every allocation, and a write allocates while it holds the lock.
"""
from __future__ import annotations

import fcntl
import gc
import os
import threading
from typing import Any, Callable, Iterator

import pytest

from logkv import LockTimeout, LogKV, _lock


class LockProbe:
    """Counts garbage-collector passes, and those that started while the
    store held its write lock.

    Whether the lock is held is tracked by wrapping ``flock`` (a probe that
    called ``flock`` itself would release the GIL inside the collector's
    callback and let a writer take the lock mid-pass)."""

    def __init__(self, lock_fd: int) -> None:
        self.lock_fd = lock_fd
        self.held = False
        self.passes = 0
        self.inside = 0

    def flock(self, real: Callable[[int, int], None]) -> Callable[[int, int], None]:
        def wrapped(fd: int, op: int) -> None:
            if fd == self.lock_fd and op & fcntl.LOCK_UN:
                self.held = False
            real(fd, op)
            if fd == self.lock_fd and op & (fcntl.LOCK_EX | fcntl.LOCK_SH):
                self.held = True
        return wrapped

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.passes += 1
            self.inside += self.held


@pytest.fixture
def collecting_often(monkeypatch: Any) -> Iterator[Callable[[LogKV], LockProbe]]:
    old = gc.get_threshold()
    was = gc.isenabled()
    probes: list[LockProbe] = []

    def start(db: LogKV) -> LockProbe:
        probe = LockProbe(db._e.coord.lock_fd)
        monkeypatch.setattr(_lock, "_flock", probe.flock(_lock._flock))
        monkeypatch.setattr(fcntl, "flock", probe.flock(fcntl.flock))
        probes.append(probe)
        gc.callbacks.append(probe)
        gc.set_threshold(1, 1, 1)
        gc.enable()
        return probe

    try:
        yield start
    finally:
        for probe in probes:
            gc.callbacks.remove(probe)
        gc.set_threshold(*old)
        if not was:
            gc.disable()


def _garbage() -> None:
    a: list[Any] = []
    a.append(a)  # a cycle: only the collector frees it


@pytest.mark.parametrize("durability", ["interval", "os", "always"])
def test_no_pass_while_a_write_holds_the_lock(tmp_path: Any, collecting_often: Any,
                                             durability: str) -> None:
    path = str(tmp_path / "db.json")
    db = LogKV(path, durability=durability, compact_on_close=False)
    probe = collecting_often(db)
    for i in range(300):
        _garbage()
        db.set(f"k{i % 7}", {"i": i, "tags": [i]})
        db.incr("n")
        db.append("log", i)
    db.update({"a": [1], "b": {"c": 2}})
    with db.transaction():
        _garbage()
        db.set("t", [1, 2])
        db.incr("n")
    db.compact()
    assert probe.passes > 300  # the collector did run, often
    assert probe.inside == 0
    assert gc.isenabled()
    assert db.get("n") == 301
    db.close()


def test_no_pass_while_threads_share_a_batch(tmp_path: Any, collecting_often: Any) -> None:
    path = str(tmp_path / "db.json")
    db = LogKV(path, durability="always", compact_on_close=False)
    probe = collecting_often(db)

    def work(t: int) -> None:
        for i in range(40):
            _garbage()
            db.incr("n")
            db.set(f"t{t}", [i])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert db.get("n") == 160
    assert probe.passes > 100
    assert probe.inside == 0
    assert gc.isenabled()
    db.close()


def test_a_collector_the_caller_turned_off_stays_off(tmp_path: Any) -> None:
    db = LogKV(str(tmp_path / "db.json"), compact_on_close=False)
    gc.disable()
    try:
        db.set("a", 1)
        db.incr("n")
        with db.transaction():
            db.set("b", 2)
        db.compact()
        assert not gc.isenabled()
    finally:
        gc.enable()
    db.close()


def test_a_lock_timeout_restarts_the_collector(tmp_path: Any) -> None:
    path = str(tmp_path / "db.json")
    db = LogKV(path, lock_timeout=0.05, compact_on_close=False)
    db.set("a", 1)
    other = os.open(path + ".lock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        assert gc.isenabled()
        with pytest.raises(LockTimeout):
            db.set("a", 2)
        assert gc.isenabled()
        with pytest.raises(LockTimeout):
            db.incr("n")
        assert gc.isenabled()
    finally:
        os.close(other)
    db.set("a", 3)
    assert db.get("a") == 3
    db.close()
