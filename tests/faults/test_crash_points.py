"""A crash at EVERY mutating file-system call, just before it and just after it
(CONTRACT §4.1, §4.4, §4.5; design.md §5, §6).

For each workload, a first run with ``RecordingFS`` counts its mutating calls
N (opens for writing, writes, fsyncs, folder fsyncs, truncations, renames,
links, unlinks). Then, for every i in 1..N and both sides of the call, the
workload runs again in a fresh folder with ``CrashAt(i)``: the process "dies"
there (``SimulatedCrash``), its descriptors and locks are dropped as the
kernel would drop them, and the store is reopened with the real file system.
The state must equal the last acknowledged state, or that state plus the
whole operation in flight (a transaction's keys all or none, counters exact).
The reopened store must then accept a write and come back with it once more.

A second family crashes during RECOVERY: the open that follows a crash (and
a torn write) is itself crashed at each of its own mutating calls, then the
store is opened a third time.

The number of crash points is in each test's output (run with ``-s``) and in
``CRASH_POINTS`` below, which the last test prints as a summary.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from fsfaults import CrashAt, NoSyncFS, RecordingFS, SimulatedCrash, fast_tmp  # noqa: F401
from logkv import LogKV

CRASH_POINTS: dict[str, int] = {}


# =========================================================================== model of acknowledgements


@dataclass
class Tracker:
    """What has been acknowledged, and what is in flight."""

    acked: dict[str, Any] = field(default_factory=dict)
    pending: list[Callable[[dict], None]] = field(default_factory=list)

    def begin(self, effect: Callable[[dict], None]) -> None:
        self.pending.append(effect)

    def ack(self) -> None:
        effect = self.pending.pop()
        effect(self.acked)

    def allowed(self) -> list[dict[str, Any]]:
        """The acknowledged state, and that state with each prefix of the
        operations in flight applied whole."""
        out = [dict(self.acked)]
        state = dict(self.acked)
        for effect in self.pending:
            effect(state)
            out.append(dict(state))
        return out


def _set(**kv: Any) -> Callable[[dict], None]:
    return lambda s: s.update(kv)


def _delete(*keys: str) -> Callable[[dict], None]:
    def f(s: dict) -> None:
        for k in keys:
            s.pop(k, None)
    return f


def _incr(key: str, amount: int = 1) -> Callable[[dict], None]:
    return lambda s: s.__setitem__(key, s.get(key, 0) + amount)


def _same(s: dict) -> None:
    pass


class Ctx:
    def __init__(self, path: str, fs: Any, tracker: Tracker) -> None:
        self.path = path
        self.fs = fs
        self.t = tracker
        self.stores: list[Any] = []

    def open(self, **kw: Any) -> LogKV:
        kw.setdefault("auto_compact", False)
        db = LogKV(self.path, _fs=self.fs, **kw)
        self.stores.append(db)
        return db

    def do(self, effect: Callable[[dict], None], action: Callable[[], Any]) -> Any:
        """Run ``action``; once it has returned, ``effect`` is acknowledged."""
        self.t.begin(effect)
        self._publish()
        result = action()
        self.t.ack()
        self._publish()
        return result

    def _publish(self) -> None:
        # A PowerCutFS stamps each state it captures with what was allowed then.
        if hasattr(self.fs, "label"):
            self.fs.label = self.t.allowed()


# =========================================================================== workloads


def wl_autosave(c: Ctx, durability: str) -> None:
    db = c.do(_same, lambda: c.open(durability=durability))
    c.do(_set(a=1), lambda: db.set("a", 1))
    r = c.do(_incr("n"), lambda: db.incr("n"))
    assert r == 1
    r = c.do(_incr("n", 5), lambda: db.incr("n", 5))
    assert r == 6
    c.do(_set(b={"x": [1, 2]}), lambda: db.set("b", {"x": [1, 2]}))
    c.do(_delete("a"), lambda: db.__delitem__("a"))
    c.do(_set(m1="one", m2="two"), lambda: db.mset({"m1": "one", "m2": "two"}))
    r = c.do(_incr("n", -2), lambda: db.incr("n", -2))
    assert r == 4


def wl_transaction(c: Ctx, durability: str) -> None:
    db = c.do(_same, lambda: c.open(durability=durability))
    c.do(_set(k0="zero", n=10), lambda: db.mset({"k0": "zero", "n": 10}))

    def tx() -> None:
        with db.transaction():
            db["t1"] = "one"
            db["t2"] = [2]
            db.incr("n", 3)
            del db["k0"]

    def effect(s: dict) -> None:
        s.update(t1="one", t2=[2])
        s["n"] += 3
        del s["k0"]

    c.do(effect, tx)
    c.do(_incr("n"), lambda: db.incr("n"))


def wl_manual_flush(c: Ctx, durability: str) -> None:
    db = c.do(_same, lambda: c.open(durability=durability, autosave=False))
    # Manual mode: nothing is acknowledged before flush() returns.
    db["a"] = 1
    db["b"] = 2
    db.incr("n", 7)
    c.do(_set(a=1, b=2, n=7), db.flush)
    db["c"] = 3
    del db["a"]
    db.incr("n")
    c.do(lambda s: (s.update(c=3, n=8), s.pop("a")), db.flush)
    db["d"] = 4
    c.do(_set(d=4), db.close)  # close flushes, then compacts


def wl_compaction(c: Ctx, durability: str) -> None:
    db = c.do(_same, lambda: c.open(durability=durability))
    c.do(_set(a=1, b=2), lambda: db.mset({"a": 1, "b": 2}))
    c.do(_incr("n", 2), lambda: db.incr("n", 2))
    c.do(_same, db.compact)  # first compaction: no old snapshot, no .bak
    c.do(_set(c=3), lambda: db.set("c", 3))
    c.do(_incr("n"), lambda: db.incr("n"))
    c.do(_delete("a"), lambda: db.__delitem__("a"))
    c.do(_same, db.compact)  # second: .bak link, snapshot rename, log rotation
    c.do(_set(d=4), lambda: db.set("d", 4))
    c.do(_incr("n"), lambda: db.incr("n"))


def wl_compaction_concurrent(c: Ctx, durability: str) -> None:
    """A second store writes while the compaction's snapshot is being written
    (design §6 step 3, no lock held): step 5 must carry that record over into
    the rotated log."""
    db = c.do(_same, lambda: c.open(durability=durability))
    db2 = c.do(_same, lambda: c.open(durability=durability))
    c.do(_set(a=1), lambda: db.set("a", 1))
    c.do(_incr("n", 5), lambda: db.incr("n", 5))
    fired = []

    def hook(i: int, call: Any) -> None:
        if call.kind == "fsync" and ".json.tmp." in call.path and not fired:
            fired.append(i)
            c.do(_incr("n", 10), lambda: db2.incr("n", 10))
            c.do(_set(w="during"), lambda: db2.set("w", "during"))

    c.fs.hook = hook
    try:
        c.do(_same, db.compact)
    finally:
        c.fs.hook = None
    assert fired, "the hook never ran: the compaction no longer fsyncs a db.json.tmp.* file"
    c.do(_incr("n"), lambda: db2.incr("n"))
    c.do(_set(e=5), lambda: db.set("e", 5))


WORKLOADS = {
    "autosave": wl_autosave,
    "transaction": wl_transaction,
    "manual_flush": wl_manual_flush,
    "compaction": wl_compaction,
    "compaction_concurrent": wl_compaction_concurrent,
}


# =========================================================================== running


def run(workload: Callable, folder: str, fs: Any, durability: str) -> Tracker:
    os.makedirs(folder, exist_ok=True)
    t = Tracker()
    c = Ctx(os.path.join(folder, "db.json"), fs, t)
    try:
        workload(c, durability)
        for db in c.stores:  # close flushes and (compact_on_close) compacts: crash there too
            c.do(_same, db.close)
    except SimulatedCrash:
        fs.bury(*c.stores)
    return t


def reopen_state(path: str, fs: Any = None) -> dict[str, Any]:
    db = LogKV(path, durability="os", compact_on_close=False, auto_compact=False,
               _fs=fs or NoSyncFS())
    try:
        return db.copy()
    finally:
        db.close()


def check_after_crash(path: str, tracker: Tracker, where: str) -> dict[str, Any]:
    allowed = tracker.allowed()
    state = reopen_state(path)
    assert state in allowed, (
        f"crash {where}: reopened state {state}\n is none of the allowed states {allowed}")
    # The recovered store works: one more write, a clean close (which
    # compacts), and the next open has both.
    db = LogKV(path, durability="always", auto_compact=False, _fs=NoSyncFS())
    db["after_crash"] = True
    db.close()
    again = reopen_state(path)
    assert again == {**state, "after_crash": True}, f"crash {where}: after a write and close: {again}"
    return state


def count_calls(workload: Callable, folder: str, durability: str) -> RecordingFS:
    rec = RecordingFS()
    rec.real_sync = False
    t = run(workload, folder, rec, durability)
    assert not t.pending
    return rec


CASES = [(name, dur) for name in WORKLOADS for dur in ("always", "os")]


@pytest.mark.parametrize("name,durability", CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_crash_at_every_call(fast_tmp, name: str, durability: str, capsys) -> None:
    workload = WORKLOADS[name]
    rec = count_calls(workload, str(fast_tmp / "count"), durability)
    n = rec.count()
    assert n > 10
    outcomes = {"old": 0, "new": 0}
    for i in range(1, n + 1):
        for before in (True, False):
            folder = str(fast_tmp / f"p{i}{'b' if before else 'a'}")
            fs = CrashAt(i, before=before)
            t = run(workload, folder, fs, durability)
            assert fs.dead, f"the workload made fewer than {i} calls on the second run"
            where = f"{'before' if before else 'after'} call {i}/{n} {fs.crashed_on}"
            assert fs.crashed_on.kind == rec.calls[i - 1].kind, "the workload is not deterministic"
            state = check_after_crash(os.path.join(folder, "db.json"), t, where)
            outcomes["old" if state == t.acked else "new"] += 1
            shutil.rmtree(folder)
    points = 2 * n
    CRASH_POINTS[f"{name}-{durability}"] = points
    with capsys.disabled():
        print(f"\n  crash points {name}/{durability}: {n} calls x before/after = {points} "
              f"(in-flight op absent {outcomes['old']}, present {outcomes['new']})")


# --------------------------------------------------------------------------- crash during recovery


def _recovery_sources(fast_tmp, name: str) -> list[tuple[str, Tracker]]:
    """Crashed folders worth recovering from: every 'before' crash point of
    the workload, plus every log write torn in half."""
    workload = WORKLOADS[name]
    rec = count_calls(workload, str(fast_tmp / "count"), "always")
    out = []
    for i, call in enumerate(rec.calls, 1):
        variants = [None]
        if call.kind == "write" and call.path.endswith(".wal"):
            variants.append(7)  # a torn record: 7 bytes of it reached the file
        for partial in variants:
            folder = str(fast_tmp / f"src{i}-{partial}")
            fs = CrashAt(i, before=True, partial=partial)
            t = run(workload, folder, fs, "always")
            out.append((folder, t))
    return out


@pytest.mark.parametrize("name", ["autosave", "compaction"])
def test_crash_during_recovery(fast_tmp, name: str, capsys) -> None:
    points = 0
    for src, t in _recovery_sources(fast_tmp, name):
        path = os.path.join(src, "db.json")
        work = src + "-r"
        shutil.copytree(src, work)
        rec = RecordingFS()
        rec.real_sync = False
        LogKV(os.path.join(work, "db.json"), durability="os", compact_on_close=False,
              auto_compact=False, _fs=rec).close()
        shutil.rmtree(work)
        for j in range(1, rec.count() + 1):
            for before in (True, False):
                shutil.copytree(src, work)
                wpath = os.path.join(work, "db.json")
                fs = CrashAt(j, before=before)
                db = None
                try:
                    db = LogKV(wpath, durability="os", compact_on_close=False,
                               auto_compact=False, _fs=fs)
                    db.close()
                except SimulatedCrash:
                    fs.bury(db)
                assert fs.dead or j > rec.count()
                check_after_crash(wpath, t, f"in recovery of {src} at call {j} "
                                            f"{'before' if before else 'after'} {fs.crashed_on}")
                shutil.rmtree(work)
                points += 1
        assert reopen_state(path) in t.allowed()
    CRASH_POINTS[f"recovery-{name}"] = points
    with capsys.disabled():
        print(f"\n  recovery crash points {name}: {points}")


def test_torn_write_then_recovery_truncates(fast_tmp) -> None:
    """A record torn at every byte count: the reopened store drops it, counts
    the dropped bytes, and the next append does not turn it into mid-log
    corruption."""
    rec = count_calls(wl_autosave, str(fast_tmp / "count"), "os")
    idx = [i for i, c in enumerate(rec.calls, 1) if c.kind == "write" and c.path.endswith(".wal")]
    assert len(idx) >= 5
    i = idx[3]
    size = int(rec.calls[i - 1].detail.split()[0])
    for partial in range(1, size):
        folder = str(fast_tmp / f"t{partial}")
        fs = CrashAt(i, before=True, partial=partial)
        t = run(wl_autosave, folder, fs, "os")
        path = os.path.join(folder, "db.json")
        db = LogKV(path, durability="os", compact_on_close=False, auto_compact=False,
                   _fs=NoSyncFS())
        assert db.copy() == t.acked, partial
        assert db.stats()["dropped_tail_bytes"] == partial
        db.close()
        check_after_crash(path, t, f"torn write of {partial}/{size} bytes")
        shutil.rmtree(folder)


def test_zz_report_crash_points(capsys) -> None:
    with capsys.disabled():
        total = sum(CRASH_POINTS.values())
        print(f"\n  crash points covered: {total} {CRASH_POINTS}")


# --------------------------------------------------------------------------- real process death


@pytest.mark.slow
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_crash_points_in_forked_children(fast_tmp, name: str, capsys) -> None:
    """The same points, but the crash is a real ``os._exit`` of a forked child
    (the issue's wording): the kernel drops descriptors, flocks and the
    mapping, and no ``finally`` block of the library runs after the crash."""
    import json

    from fsfaults import ExitAt

    workload = WORKLOADS[name]
    n = count_calls(workload, str(fast_tmp / "count"), "always").count()
    for i in range(1, n + 1):
        for before in (True, False):
            folder = str(fast_tmp / f"f{i}{before}")
            os.makedirs(folder)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child
                code = 0
                try:
                    os.close(r)
                    fs = ExitAt(i, before, w)
                    t = Tracker()
                    c = Ctx(os.path.join(folder, "db.json"), fs, t)
                    c._publish()
                    workload(c, "always")
                    for db in c.stores:
                        c.do(_same, db.close)
                except BaseException:
                    code = 1
                os._exit(code)
            os.close(w)
            with os.fdopen(r, "rb") as f:
                lines = f.read().splitlines()
            _, status = os.waitpid(pid, 0)
            assert os.WEXITSTATUS(status) == ExitAt.EXIT_CODE, f"point {i}: child status {status}"
            allowed = json.loads(lines[-1])
            state = reopen_state(os.path.join(folder, "db.json"))
            assert state in allowed, f"{name}: real crash at {i} ({before=}): {state} not in {allowed}"
            shutil.rmtree(folder)
    with capsys.disabled():
        print(f"\n  forked-child crash points {name}: {2 * n}")
