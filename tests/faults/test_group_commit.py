"""Group commit with durability="always" (design.md §8, CONTRACT §3.1, §6).

While one batch's fdatasync is under way, the calls of other threads queue up
and the next leader writes all their records with ONE write(2) and syncs them
with ONE fdatasync. These tests would fail if the batching were broken:

* batching happens: the log's write(2) and fdatasync calls are counted
  through the FileSystem layer while the first fdatasync is held until seven
  calls have queued behind it (no timing is asserted: the hold waits for the
  queue, not for a clock);
* a batch is all or nothing for its callers: a failed write(2) fails every
  call in it and changes neither memory nor the log; a failed fdatasync fails
  every call and poisons the store; a read-modify-write whose own change
  raises fails alone;
* threads of two processes writing at once leave a log whose sequence numbers
  are consecutive, with every acknowledged write in it;
* SIGKILL of a process with eight writer threads loses no acknowledged write.
"""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from fsfaults import HookFS
from logkv import LogKV, StorageError
from logkv._log import walk_log

REPO = Path(__file__).resolve().parents[2]
THREADS = 8
QUEUED = THREADS - 1  # the calls that queue behind the first one's fdatasync


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def assert_log_consecutive(path: str) -> list[int]:
    """Every line of the log is a whole valid record and the sequence numbers
    follow each other from the header's base; returns them."""
    wal = path + ".wal"
    with open(wal, "rb") as f:
        walk = walk_log(f.read(), wal)
    assert walk.header is not None, walk.header_problem
    bad = [(ln.offset, ln.problem, ln.torn) for ln in walk.lines if ln.problem or ln.torn]
    assert bad == [], f"damaged lines in {wal}: {bad[:5]}"
    seqs = [ln.seq for ln in walk.valid]
    base = walk.header.base_seq
    assert seqs == list(range(base + 1, base + 1 + len(seqs))), "sequence numbers not consecutive"
    return seqs


def reopen_state(path: str) -> dict[str, Any]:
    with LogKV(path, compact_on_close=False, auto_compact=False) as db:
        return dict(db.items())


# =========================================================================== in one process


class BatchProbe(HookFS):
    """Counts the log's write(2) calls (how many records each carries) and
    fdatasyncs. The first fdatasync of the log after ``arm()`` is held until
    ``release_when()`` is true, so that other threads' calls queue up behind
    it. ``fail`` = (kind, n): the n-th log ``write`` or ``fdatasync`` after
    ``arm()`` raises ``OSError(err)`` instead (nothing written)."""

    real_sync = False  # what is tested is which calls are made, not the disk

    def __init__(self, release_when: Callable[[], bool],
                 fail: tuple[str, int, int] | None = None) -> None:
        super().__init__()
        self.release_when = release_when
        self.fail = fail
        self.armed = False
        self.holding = threading.Event()  # the held fdatasync has started
        self.writes: list[int] = []       # records per write(2) of the log
        self.syncs = 0
        self._held = False

    def arm(self) -> None:
        self.armed = True

    def _failing(self, kind: str, seen: int) -> None:
        if self.fail is not None and self.fail[0] == kind and self.fail[1] == seen:
            err = self.fail[2]
            raise OSError(err, os.strerror(err))

    def before(self, kind: str, path: str, args: tuple) -> Any:
        if not (self.armed and path.endswith(".wal")):
            return
        if kind == "write":
            self.writes.append(bytes(args[1]).count(b"\n"))
            self._failing("write", len(self.writes))
        elif kind == "fdatasync":
            self.syncs += 1
            if not self._held:
                self._held = True
                self.holding.set()
                deadline = time.monotonic() + 20  # a broken batching fails, not hangs
                while not self.release_when() and time.monotonic() < deadline:
                    time.sleep(0.001)
            self._failing("fdatasync", self.syncs)


def queued(db: LogKV) -> int:
    """How many calls wait in the batch that is taking calls."""
    batch = db._e._open_batch
    return len(batch.items) if batch is not None else 0


def open_probed(path: str, fail: tuple[str, int, int] | None = None) -> tuple[LogKV, BatchProbe]:
    holder: list[LogKV] = []
    probe = BatchProbe(lambda: queued(holder[0]) == QUEUED, fail)
    db = LogKV(path, durability="always", auto_compact=False, compact_on_close=False, _fs=probe)
    holder.append(db)
    return db, probe


def run_batched(db: LogKV, probe: BatchProbe, first: Callable[[], Any],
                others: list[Callable[[], Any]]) -> tuple[Any, list[Any]]:
    """Run ``first`` in a thread until it is inside its fdatasync (held), then
    ``others`` in one thread each; return each call's result or exception."""
    results: dict[int, Any] = {}

    def call(i: int, fn: Callable[[], Any]) -> None:
        try:
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            results[i] = exc

    probe.arm()
    lead = threading.Thread(target=call, args=(0, first))
    lead.start()
    assert probe.holding.wait(60), "the first call never reached its fdatasync"
    threads = [threading.Thread(target=call, args=(i + 1, fn)) for i, fn in enumerate(others)]
    for t in threads:
        t.start()
    for t in [lead, *threads]:
        t.join(60)
    assert not any(t.is_alive() for t in [lead, *threads]), "a call hung"
    return results[0], [results[i + 1] for i in range(len(others))]


def test_queued_sets_share_one_write_and_one_fdatasync(store_path):
    db, probe = open_probed(store_path)

    def set_then_count_syncs(i: int) -> int:
        db.set(f"k{i}", i)
        return probe.syncs  # the fdatasyncs started before the call returned

    try:
        first, rest = run_batched(db, probe, lambda: set_then_count_syncs(0),
                                  [lambda i=i: set_then_count_syncs(i) for i in range(1, THREADS)])
        # no call returned before the fdatasync that covers its record
        assert first >= 1 and rest == [2] * QUEUED
        # the lone first record, then the seven that queued behind its sync
        assert probe.writes == [1, QUEUED]
        assert probe.syncs == 2
        assert not db.stats()["dirty"]
        assert db.copy() == {f"k{i}": i for i in range(THREADS)}
    finally:
        db.close()
    assert assert_log_consecutive(store_path) == list(range(1, THREADS + 1))
    assert reopen_state(store_path) == {f"k{i}": i for i in range(THREADS)}


class RecordedWake:
    """Stands for a queued call's wake lock: records which thread released it."""

    def __init__(self, lock: Any, index: int, log: list) -> None:
        self.lock, self.index, self.log = lock, index, log

    def acquire(self) -> Any:
        return self.lock.acquire()

    def release(self) -> None:
        self.log.append((self.index, threading.get_ident()))
        self.lock.release()


def test_the_calls_of_a_finished_batch_wake_one_another_in_turn(store_path):
    # The leader wakes only the first of its batch's other calls; each call
    # wakes the next as it leaves (design §8).
    woken: list[tuple[int, int]] = []  # (index in the batch, thread that woke it)
    order: list[str] = []              # the batch's keys, in batch order
    holder: list[LogKV] = []

    def queue_complete() -> bool:
        batch = holder[0]._e._open_batch
        if batch is None or len(batch.items) < QUEUED:
            return False
        # all seven wait: the first for the held sync's batch to drain, the
        # others on their own lock
        for i, item in enumerate(batch.items[1:], 1):
            item.wake = RecordedWake(item.wake, i, woken)
        order.extend(item.key for item in batch.items)
        return True

    probe = BatchProbe(queue_complete)
    db = LogKV(store_path, durability="always", auto_compact=False, compact_on_close=False,
               _fs=probe)
    holder.append(db)
    thread_of: dict[str, int] = {}

    def set_in(key: str) -> None:
        thread_of[key] = threading.get_ident()
        db.set(key, 1)

    try:
        run_batched(db, probe, lambda: set_in("k0"),
                    [lambda i=i: set_in(f"k{i}") for i in range(1, THREADS)])
        assert probe.writes == [1, QUEUED]
        assert woken == [(i, thread_of[order[i - 1]]) for i in range(1, QUEUED)]
    finally:
        db.close()


def test_queued_increments_are_computed_in_order_in_one_batch(store_path):
    db, probe = open_probed(store_path)
    try:
        first, rest = run_batched(db, probe, lambda: db.incr("c"),
                                  [lambda: db.incr("c")] * QUEUED)
        assert probe.writes == [1, QUEUED] and probe.syncs == 2
        # each call saw the one before it in the batch: results 1..8, each once
        assert sorted([first, *rest]) == list(range(1, THREADS + 1))
        assert db["c"] == THREADS
    finally:
        db.close()
    assert_log_consecutive(store_path)
    assert reopen_state(store_path) == {"c": THREADS}


def test_a_failing_change_fails_only_its_own_call(store_path):
    db, probe = open_probed(store_path)
    db.mset({"c": 0, "s": "text", "l": [1]})
    try:
        calls = [lambda: db.incr("s"), lambda: db.incr("c"), lambda: db.append("l", 2),
                 lambda: db.incr("c"), lambda: db.extend("s", [1]), lambda: db.incr("c", 10),
                 lambda: db.append("l", 3)]
        first, rest = run_batched(db, probe, lambda: db.incr("c"), calls)
        assert first == 1
        assert [type(r) for r in rest] == [TypeError, int, list, int, TypeError, int, list]
        # the five that changed something are one write of five records
        assert probe.writes == [1, 5] and probe.syncs == 2
        assert db["c"] == 13 and db["s"] == "text"
        assert sorted(db["l"]) == [1, 2, 3]
    finally:
        db.close()
    assert_log_consecutive(store_path)
    state = reopen_state(store_path)
    assert state["c"] == 13 and state["s"] == "text" and sorted(state["l"]) == [1, 2, 3]


def test_a_batch_with_nothing_to_write_neither_writes_nor_syncs(store_path):
    db, probe = open_probed(store_path)
    db.set("s", "text")
    try:
        first, rest = run_batched(db, probe, lambda: db.incr("c"), [lambda: db.incr("s")] * QUEUED)
        assert first == 1 and [type(r) for r in rest] == [TypeError] * QUEUED
        assert probe.writes == [1] and probe.syncs == 1
    finally:
        db.close()
    assert reopen_state(store_path) == {"s": "text", "c": 1}


class Interrupt(BaseException):
    """Not an Exception: stands for KeyboardInterrupt in the leader's thread."""


def test_an_interrupt_in_the_leader_fails_the_batch_for_everyone(store_path):
    db, probe = open_probed(store_path)

    def interrupted(r: Any) -> None:
        raise Interrupt

    try:
        first, rest = run_batched(db, probe, lambda: db.set("k0", 0),
                                  [lambda: db._e.modify_one("x", interrupted)] * QUEUED)
        # the batch's leader computed the first change: it raised the interrupt;
        # the others, whose calls never ran, are told so
        assert sorted(type(r).__name__ for r in rest) == ["Interrupt"] + ["LogKVError"] * 6
        assert all(isinstance(r.__cause__, Interrupt) for r in rest if type(r) is not Interrupt)
        assert probe.writes == [1] and probe.syncs == 1
        db.set("after", 1)
    finally:
        db.close()
    assert reopen_state(store_path) == {"k0": 0, "after": 1}


def test_a_call_interrupted_in_its_wait_does_not_stop_the_others_waking(store_path):
    # The calls of a batch wake one another in turn; one that an interrupt
    # (a signal in the main thread) took out of its wait is skipped, or the
    # calls after it would wait forever.
    holder: list[LogKV] = []
    main = threading.get_ident()
    sent: list[bool] = []

    def main_has_left() -> bool:
        batch = holder[0]._e._open_batch
        if batch is None or len(batch.items) < QUEUED:
            return False
        if not sent:
            sent.append(True)
            signal.pthread_kill(main, signal.SIGUSR1)
        return batch.items[1].gone

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupt

    probe = BatchProbe(main_has_left)
    db = LogKV(store_path, durability="always", auto_compact=False, compact_on_close=False,
               _fs=probe)
    holder.append(db)
    results: dict[str, Any] = {}

    def set_in(key: str) -> None:
        try:
            db.set(key, 1)
            results[key] = "ok"
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            results[key] = exc

    def queue_after_main() -> None:
        # the main thread's call second in the batch, five calls after it
        while queued(db) < 2:
            time.sleep(0.001)
        for i in range(3, THREADS):
            spawn(f"k{i}")

    threads: list[threading.Thread] = []

    def spawn(key: str) -> None:
        t = threading.Thread(target=set_in, args=(key,), daemon=True)  # a hang fails, not blocks
        threads.append(t)
        t.start()

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        probe.arm()
        spawn("k0")
        assert probe.holding.wait(60), "the first call never reached its fdatasync"
        spawn("k1")
        while queued(db) < 1:
            time.sleep(0.001)
        threading.Thread(target=queue_after_main, daemon=True).start()
        set_in("k2")  # in the main thread: interrupted in its wait
        deadline = time.monotonic() + 60
        for t in list(threads):
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads), "a call hung"
        assert type(results.pop("k2")) is Interrupt
        assert results == {f"k{i}": "ok" for i in range(THREADS) if i != 2}
        assert probe.writes == [1, QUEUED] and probe.syncs == 2
    finally:
        signal.signal(signal.SIGUSR1, previous)
        db.close()


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
def test_a_failed_batch_write_fails_every_call_and_changes_nothing(store_path, err):
    db, probe = open_probed(store_path, fail=("write", 2, err))
    db.set("s", "text")
    try:
        # one of the queued calls fails by itself (incr of a string): it
        # keeps its own error; the six others fail with the write
        calls = [lambda: db.incr("s")] + [lambda i=i: db.set(f"k{i}", i) for i in range(2, THREADS)]
        first, rest = run_batched(db, probe, lambda: db.set("k0", 0), calls)
        assert first is None
        assert sorted(type(r).__name__ for r in rest) == ["StorageError"] * 6 + ["TypeError"]
        assert not any(r.poisoned for r in rest if isinstance(r, StorageError))
        assert probe.writes == [1, 6] and probe.syncs == 1
        assert db.copy() == {"s": "text", "k0": 0}  # memory as the log is
        assert assert_log_consecutive(store_path) == [1, 2]
        db.set("after", 1)  # the fault is gone: the store goes on
        assert db.incr("n") == 1
    finally:
        db.close()
    assert assert_log_consecutive(store_path) == [1, 2, 3, 4]
    assert reopen_state(store_path) == {"s": "text", "k0": 0, "after": 1, "n": 1}


def test_a_failed_batch_fdatasync_fails_every_call_and_poisons(store_path):
    db, probe = open_probed(store_path, fail=("fdatasync", 2, errno.EIO))
    try:
        first, rest = run_batched(db, probe, lambda: db.set("k0", 0),
                                  [lambda i=i: db.incr(f"n{i}") for i in range(1, THREADS)])
        assert first is None
        assert [type(r) for r in rest] == [StorageError] * QUEUED, rest
        assert all(r.poisoned and "fsync" in str(r) for r in rest)
        with pytest.raises(StorageError) as info:
            db.set("later", 1)
        assert info.value.poisoned
    finally:
        try:
            db.close()
        except StorageError:
            pass
    # The failed sync's records reached the kernel (a real failure might have
    # dropped them): the reopen has all of them or, at least, the first.
    assert_log_consecutive(store_path)
    state = reopen_state(store_path)
    assert state in ({"k0": 0}, {"k0": 0, **{f"n{i}": 1 for i in range(1, THREADS)}})


@pytest.mark.parametrize("durability", ["always", "interval"])
def test_threads_mixing_every_kind_of_call(store_path, durability):
    """Batched calls (set, incr, append) interleave with calls that write
    their own record (mset, delete, transactions) and with compaction."""
    db = LogKV(store_path, durability=durability)
    n = 60
    errors: list[str] = []
    gate = threading.Barrier(THREADS)

    def work(t: int) -> None:
        try:
            gate.wait()
            for j in range(n):
                db[f"t{t}:{j}"] = j
                db.incr("c")
                db.append(f"l{t}", j)
                if j % 3 == 0:
                    db.mset({f"m{t}": j, f"m{t}b": j})
                if j % 4 == 0:
                    del db[f"t{t}:{j}"]
                if j % 10 == 0:
                    with db.transaction():
                        db.incr("tx")
                        db[f"tx{t}"] = j
                if t == 0 and j % 20 == 0:
                    db.compact()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not any(th.is_alive() for th in threads) and errors == []
    expected = {"c": THREADS * n, "tx": THREADS * n // 10}
    for t in range(THREADS):
        expected.update({f"t{t}:{j}": j for j in range(n) if j % 4})
        expected[f"l{t}"] = list(range(n))
        expected[f"m{t}"] = expected[f"m{t}b"] = n - 1 - (n - 1) % 3
        expected[f"tx{t}"] = n - 10
    try:
        assert db.copy() == expected
    finally:
        db.close()
    assert reopen_state(store_path) == expected


# =========================================================================== processes

WRITER = r'''
import os, sys, threading
from logkv import LogKV

path, tag, threads, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
db = LogKV(path, durability="always", auto_compact=False, compact_on_close=False)

def out(line):
    os.write(1, (line + "\n").encode())  # one write(2) per line: atomic in a pipe

def work(t):
    for i in range(n):
        key = "%s:%d:%d" % (tag, t, i)
        if i % 2:
            db.set(key, i)
            out("S %s %d" % (key, i))
        else:
            out("i %s" % tag)
            db.incr("c:" + tag)
            out("I %s" % tag)

out("READY")
ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
out("DONE")
db.close()
'''


def _writer(tmp_path: Path, path: str, tag: str, threads: int, n: int) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    if not script.exists():
        script.write_text(WRITER)
    return subprocess.Popen([sys.executable, str(script), path, tag, str(threads), str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=_env())


def _acks(lines: list[str]) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """(acknowledged sets, acknowledged increments per tag, started increments per tag)"""
    sets: dict[str, int] = {}
    incrs: dict[str, int] = {}
    started: dict[str, int] = {}
    for line in lines:
        parts = line.split()
        if parts[:1] == ["S"]:
            sets[parts[1]] = int(parts[2])
        elif parts[:1] == ["I"]:
            incrs[parts[1]] = incrs.get(parts[1], 0) + 1
        elif parts[:1] == ["i"]:
            started[parts[1]] = started.get(parts[1], 0) + 1
    return sets, incrs, started


def test_threads_of_two_processes_keep_the_sequence_consecutive(tmp_path):
    path = str(tmp_path / "db.json")
    n = 60
    procs = [_writer(tmp_path, path, tag, THREADS, n) for tag in ("a", "b")]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-3000:]
        outs.append(out.decode().splitlines())
    seqs = assert_log_consecutive(path)
    assert len(seqs) == 2 * THREADS * n  # every call logged exactly one record
    state = reopen_state(path)
    for tag, lines in zip(("a", "b"), outs):
        sets, incrs, _ = _acks(lines)
        assert len(sets) == THREADS * n // 2
        for key, value in sets.items():
            assert state.get(key) == value, f"acknowledged {key} lost"
        assert state[f"c:{tag}"] == incrs[tag] == THREADS * n // 2


def test_sigkill_of_eight_writer_threads_loses_no_acknowledged_write(tmp_path):
    """A child with eight writer threads in "always" mode reports each write
    after it returned; it is killed at random moments (while a second process
    writes the same store in one round of two); every acknowledged write must
    be in the reopened store and the log must stay consecutive."""
    path = str(tmp_path / "db.json")
    rng = random.Random(20261123)
    all_sets: dict[str, int] = {}
    acked_incr: dict[str, int] = {}
    started_incr: dict[str, int] = {}
    for rnd in range(6):
        tag = f"r{rnd}"
        child = _writer(tmp_path, path, tag, THREADS, 10 ** 6)
        other = _writer(tmp_path, path, f"o{rnd}", 2, 40) if rnd % 2 else None
        lines: list[str] = []
        assert child.stdout is not None
        # Read until a random number of acknowledgements has come, then kill.
        target = rng.randint(20, 400)
        got = 0
        while got < target:
            raw = child.stdout.readline()
            if not raw:
                break
            line = raw.decode().rstrip("\n")
            lines.append(line)
            got += line[:1] in ("S", "I")
        os.kill(child.pid, signal.SIGKILL)
        # the rest through the same buffered reader (communicate() would skip
        # what readline() has already buffered)
        rest = child.stdout.read()
        child.wait(timeout=60)
        assert child.stderr is not None
        err = child.stderr.read()
        assert child.returncode == -signal.SIGKILL, err.decode()[-3000:]
        # a line cut by the kill was never a whole acknowledgement
        lines += rest.decode().split("\n")[:-1]
        if other is not None:
            out, err = other.communicate(timeout=300)
            assert other.returncode == 0, err.decode()[-3000:]
            lines += out.decode().splitlines()
        sets, incrs, started = _acks(lines)
        all_sets.update(sets)
        for src, dst in ((incrs, acked_incr), (started, started_incr)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
        state = reopen_state(path)
        assert_log_consecutive(path)
        lost = [k for k, v in all_sets.items() if state.get(k) != v]
        assert lost == [], f"round {rnd}: acknowledged writes lost: {lost[:5]}"
        for t, acked in acked_incr.items():
            # at most one increment per thread was in flight when the kill came
            value = state.get(f"c:{t}", 0)
            assert acked <= value <= started_incr[t], (rnd, t, acked, value, started_incr[t])
        with open(tmp_path / "acks.json", "w") as f:  # for a human reading a failure
            json.dump({"sets": len(all_sets), "incr": acked_incr}, f)
