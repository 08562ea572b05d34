"""A crash at any step of compaction: no double apply, no loss (CONTRACT §4.5).

Three ways in:

* a real child that writes and compacts in a loop is SIGKILLed at random
  moments, over and over on one store; after each kill the store must hold
  exactly the acknowledged state, counters exact;
* a child whose file syscalls (open, write, fsync, fdatasync, link, rename,
  replace, unlink, ftruncate) are wrapped kills itself just before or just
  after the k-th such call inside ``compact()``, for every k;
* the crash windows of design.md §6 are built by hand from the files: a new
  snapshot with the old, unrotated log (also with records appended after
  step 2, and with a half-made ``db.json.wal.tmp``), a stray
  ``db.json.tmp.*``, and an old snapshot put back under a rotated log.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from logkv import LogKV, LogMismatchError

REPO = Path(__file__).resolve().parents[2]
PAD = 2000


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# =========================================================================== random kills

WRITER = r'''
import os, sys
from logkv import LogKV

path, run = sys.argv[1], sys.argv[2]

def out(s):
    os.write(1, (s + "\n").encode())

db = LogKV(path)
if "padPADLAST" not in db:
    db.mset({"pad%d" % j: "p" * 30 for j in range(PAD)})
    out("P")
out("READY")
i = 0
while True:
    for _ in range(3):
        i += 1
        kind = i % 3
        if kind == 0:
            k = "k%s_%d" % (run, i)
            out("s " + k)
            db.set(k, i)
            out("S " + k)
        elif kind == 1:
            out("i")
            v = db.incr("counter")
            out("I %d" % v)
        else:
            g = "t%s_%d" % (run, i)
            out("t " + g)
            with db.transaction():
                db[g + ":a"] = i
                db[g + ":b"] = i
                db["txn"] = db.get("txn", 0) + 1
            out("T " + g)
    out("C")
    db.compact()
    out("c")
'''.replace("PADLAST", str(PAD - 1)).replace("PAD", str(PAD))


def _run_and_kill(tmp_path: Path, store: Path, run: str, rng: random.Random) -> list[str]:
    script = tmp_path / "writer.py"
    if not script.exists():
        script.write_text(WRITER)
    errfile = tmp_path / "stderr.txt"
    with open(errfile, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(script), str(store), run],
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=_env())
        lines: list[str] = []
        ready = threading.Event()

        def pump() -> None:
            for raw in proc.stdout:
                line = raw.decode().rstrip("\n")
                lines.append(line)
                if line == "READY":
                    ready.set()
            ready.set()

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        if rng.random() < 0.15:
            # sometimes kill while it opens (and recovers from the previous kill)
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            if not ready.wait(60):
                proc.kill()
                pytest.fail("writer did not start")
            time.sleep(rng.uniform(0.0, 0.08))
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        t.join(60)
    assert proc.returncode == -signal.SIGKILL, (
        f"writer exited by itself ({proc.returncode}):\n{errfile.read_text()[-3000:]}"
    )
    return lines


class Model:
    def __init__(self) -> None:
        self.state: dict = {}
        self.counter = 0

    def check(self, store: Path, lines: list[str], tag: str, *, compact_on_close: bool) -> None:
        intents, acked = set(), set()
        incr_vals: list[int] = []
        inflight = False
        for line in lines:
            op, _, arg = line.partition(" ")
            if op in ("s", "t"):
                intents.add(arg)
            elif op in ("S", "T"):
                acked.add(arg)
            elif op == "i":
                inflight = True
            elif op == "I":
                incr_vals.append(int(arg))
                inflight = False
        assert incr_vals == list(range(self.counter + 1, self.counter + 1 + len(incr_vals))), (
            f"{tag}: live incr results {incr_vals[:4]}… do not continue the recovered counter {self.counter}"
        )
        acked_counter = self.counter + len(incr_vals)
        with LogKV(str(store), compact_on_close=compact_on_close) as db:
            state = dict(db.items())
        problems = []
        for k, v in self.state.items():
            if k not in ("counter", "txn") and state.get(k, "<missing>") != v:
                problems.append(f"earlier state lost: {k!r}={state.get(k, '<missing>')!r}, was {v!r}")
        if "P" in lines:
            lost = [j for j in range(PAD) if state.get(f"pad{j}") != "p" * 30]
            if lost:
                problems.append(f"{len(lost)} acknowledged pad keys lost")
        for name in intents:
            want = int(name.rsplit("_", 1)[1])
            if name.startswith("k"):
                got = [state.get(name, "<missing>")]
                full = [want]
            else:
                got = [state.get(f"{name}:{s}", "<missing>") for s in "ab"]
                full = [want, want]
            if got == full:
                continue
            if name in acked:
                problems.append(f"acknowledged {name} lost or partial: {got}")
            elif got != ["<missing>"] * len(full):
                problems.append(f"unacknowledged {name} partial or wrong: {got}")
        counter = state.get("counter", 0)
        ok = {acked_counter, acked_counter + 1} if inflight else {acked_counter}
        if counter not in ok:
            problems.append(f"counter {counter}, acknowledged {acked_counter} (allowed {sorted(ok)})"
                            " — double apply or loss")
        groups = {k.split(":")[0] for k in state if k.startswith("t") and ":" in k}
        if state.get("txn", 0) != len(groups):
            problems.append(f"txn {state.get('txn', 0)} != {len(groups)} transactions present")
        allowed = set(self.state) | {"counter", "txn"} | {f"pad{j}" for j in range(PAD)}
        allowed |= {n for n in intents if n.startswith("k")}
        allowed |= {f"{n}:{s}" for n in intents if n.startswith("t") for s in "ab"}
        extra = sorted(set(state) - allowed)
        if extra:
            problems.append(f"keys nobody wrote: {extra[:8]}")
        assert not problems, f"{tag}\n" + "\n".join(problems[:20])
        self.state = state
        self.counter = counter


def _kill_loop(tmp_path: Path, kills: int, budget: float, seed: int) -> None:
    rng = random.Random(seed)
    store = tmp_path / "db.json"
    model = Model()
    start = time.monotonic()
    done = 0
    in_compaction = 0
    while done < kills and time.monotonic() - start < budget:
        run = f"r{done}"
        lines = _run_and_kill(tmp_path, store, run, rng)
        if lines and lines[-1] == "C":
            in_compaction += 1
        tag = f"seed={seed} kill #{done} last lines={lines[-3:]}"
        model.check(store, lines, tag, compact_on_close=rng.random() < 0.3)
        done += 1
    assert done >= min(kills, 8), f"only {done} kills fitted in {budget}s"
    assert in_compaction >= 1, f"none of {done} kills landed inside compact()"
    # leftovers of the killed compactions do not disturb a clean compaction
    with LogKV(str(store)) as db:
        assert db.get("counter", 0) == model.counter
        db.incr("counter")
        db.compact()
        assert dict(db.items()) == {**model.state, "counter": model.counter + 1}
    with LogKV(str(store)) as db:
        assert dict(db.items()) == {**model.state, "counter": model.counter + 1}


def test_kill_during_write_and_compact_loop(tmp_path):
    _kill_loop(tmp_path, kills=8, budget=15.0, seed=random.randrange(1 << 30))


@pytest.mark.slow
def test_kill_during_write_and_compact_loop_soak(tmp_path):
    _kill_loop(tmp_path, kills=45, budget=30.0, seed=random.randrange(1 << 30))


# =========================================================================== kill at the k-th syscall

HOOKED = r'''
import json, os, signal, sys
from logkv import LogKV

path, target, when, names, hooked_round = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(","), int(sys.argv[5])
wait_before = sys.argv[6] == "wait"
_write = os.write

def out(s):
    _write(1, (s + "\n").encode())

st = {"active": False, "n": 0}
calls = []

def wrap(name, fn):
    def hooked(*a, **k):
        if not st["active"]:
            return fn(*a, **k)
        st["n"] += 1
        n = st["n"]
        calls.append(name)
        if n == target and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        r = fn(*a, **k)
        if n == target and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return r
    return hooked

for name in names:
    if hasattr(os, name):
        setattr(os, name, wrap(name, getattr(os, name)))

db = LogKV(path, durability="os", compact_on_close=False)
for rnd in range(2):
    for j in range(6):
        db.set("r%d_k%d" % (rnd, j), [rnd, j])
        db.incr("counter")
    with db.transaction():
        db["tx%d_a" % rnd] = rnd
        db["tx%d_b" % rnd] = rnd
        db.incr("counter", 10)
    db.mset({"m%d_%d" % (rnd, j): j for j in range(3)})
    if rnd == 1:
        db.set("r0_k0", "overwritten")
        del db["r0_k1"]
    out("S " + json.dumps(dict(db.items())))
    if rnd == hooked_round and wait_before:
        out("WAIT")  # the parent lets its own store catch up first
        sys.stdin.readline()
    out("C")
    st["active"] = (rnd == hooked_round)
    db.compact()
    st["active"] = False
    out("c")
out("DONE " + json.dumps(calls))
db.close()
'''

STEP_CALLS = ["fsync", "fdatasync", "link", "rename", "replace", "unlink", "write"]
ALL_CALLS = STEP_CALLS + ["open", "pwrite", "ftruncate", "truncate"]


def _hooked_run(tmp_path: Path, store: Path, target: int, when: str, names: list[str], rnd: int,
                on_wait=None):
    """Run the hooked child; ``on_wait()`` runs in this process just before the
    child starts its hooked compaction."""
    script = tmp_path / "hooked.py"
    if not script.exists():
        script.write_text(HOOKED)
    args = [sys.executable, str(script), str(store), str(target), when, ",".join(names), str(rnd),
            "wait" if on_wait else "go"]
    errfile = tmp_path / "hooked-stderr.txt"
    with open(errfile, "wb") as err:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=_env())
        lines = []
        for raw in proc.stdout:
            line = raw.decode().rstrip("\n")
            lines.append(line)
            if line == "WAIT":
                on_wait()
                proc.stdin.write(b"go\n")
                proc.stdin.flush()
        proc.wait(120)
    return proc.returncode, lines, errfile.read_text()


def _syscall_kills(tmp_path: Path, names: list[str], rounds: list[int], *,
                   survivor: bool = False, whens: tuple[str, ...] = ("before", "after")) -> None:
    """``survivor``: the test process keeps the store open for writing while
    the child compacts and dies; it then writes on, and its writes must last
    (it must notice a rotation the dead compactor finished, or not finished)."""
    failures = []
    for rnd in rounds:
        probe = tmp_path / f"probe{rnd}"
        probe.mkdir()
        rc, lines, err = _hooked_run(tmp_path, probe / "db.json", 0, "never", names, rnd)
        assert rc == 0 and lines[-1].startswith("DONE "), err[-3000:]
        calls = json.loads(lines[-1][5:])
        if not calls:
            pytest.skip("compact() made none of the wrapped calls in this process "
                        "(compaction runs elsewhere); the random-kill test covers it")
        for k in range(1, len(calls) + 1):
            for when in whens:
                d = tmp_path / f"r{rnd}-{k}-{when}"
                d.mkdir()
                store = d / "db.json"
                live = LogKV(str(store), durability="os", compact_on_close=False) if survivor else None
                ro = LogKV(str(store), read_only=True) if survivor else None
                try:
                    rc, lines, err = _hooked_run(
                        tmp_path, store, k, when, names, rnd,
                        on_wait=(lambda: len(live)) if live is not None else None)
                    tag = f"round {rnd}, killed {when} call #{k} ({calls[k - 1]}) of {calls}"
                    if live is not None and rc == -signal.SIGKILL:
                        try:
                            for j in range(5):
                                live.set(f"survivor{j}", j)
                            live.incr("counter", 1000)
                            live.flush()
                        except Exception as exc:  # noqa: BLE001
                            failures.append(f"{tag}: the surviving writer failed: {type(exc).__name__}: {exc}")
                            continue
                        # a reader that was open all along follows, too
                        assert ro is not None
                        seen = (ro.get("survivor4"), ro.get("counter"))
                        if seen != (4, live.get("counter")):
                            failures.append(f"{tag}: a read-only store open all along sees {seen}, "
                                            f"expected (4, {live.get('counter')})")
                finally:
                    if live is not None:
                        live.close()
                    if ro is not None:
                        ro.close()
                if rc != -signal.SIGKILL:
                    failures.append(f"{tag}: child exited {rc} instead of dying: {err[-1500:]}")
                    continue
                states = [json.loads(x[2:]) for x in lines if x.startswith("S ")]
                assert lines[-1] == "C" and len(states) == rnd + 1, (tag, lines[-3:])
                expected = states[-1]
                if survivor:
                    expected = {**expected, **{f"survivor{j}": j for j in range(5)},
                                "counter": expected["counter"] + 1000}
                try:
                    with LogKV(str(store), compact_on_close=False) as db:
                        got = dict(db.items())
                except Exception as exc:  # noqa: BLE001
                    failures.append(f"{tag}: reopen raised {type(exc).__name__}: {exc}")
                    continue
                if got != expected:
                    diff = {key: (got.get(key), expected.get(key))
                            for key in set(got) | set(expected) if got.get(key) != expected.get(key)}
                    failures.append(f"{tag}: state differs (got, expected): {diff}")
                    continue
                # the store keeps working: write, compact, reopen
                try:
                    with LogKV(str(store)) as db:
                        db.incr("counter")
                        db.compact()
                    with LogKV(str(store)) as db:
                        again = dict(db.items())
                    if again != {**expected, "counter": expected["counter"] + 1}:
                        failures.append(f"{tag}: after recovery + incr + compact: counter "
                                        f"{again.get('counter')} (expected {expected['counter'] + 1})")
                except Exception as exc:  # noqa: BLE001
                    failures.append(f"{tag}: use after recovery raised {type(exc).__name__}: {exc}")
    assert not failures, f"{len(failures)} crash points fail:\n" + "\n".join(failures[:20])


def test_kill_at_each_compaction_step(tmp_path):
    """Kill before/after each fsync, link, rename, unlink inside compact() of
    a store that already has a snapshot (so .bak and rotation both happen)."""
    _syscall_kills(tmp_path, STEP_CALLS, rounds=[1])


@pytest.mark.slow
def test_kill_at_every_compaction_syscall(tmp_path):
    _syscall_kills(tmp_path, ALL_CALLS, rounds=[0, 1])


def test_compactor_dies_while_another_process_writes(tmp_path):
    """The compacting process dies after each of its steps while this process
    has the store open; this process's later writes must not go to a log file
    that was replaced behind its back, nor be lost at the next open."""
    _syscall_kills(tmp_path, STEP_CALLS, rounds=[0, 1], survivor=True, whens=("after",))


@pytest.mark.slow
def test_compactor_dies_while_another_process_writes_every_syscall(tmp_path):
    _syscall_kills(tmp_path, ALL_CALLS, rounds=[0, 1], survivor=True)


# =========================================================================== windows built by hand


def _wal(p: Path) -> Path:
    return p.parent / (p.name + ".wal")


def _store_with_records(d: Path) -> tuple[Path, LogKV]:
    d.mkdir()
    p = d / "db.json"
    db = LogKV(str(p), compact_on_close=False, durability="os")
    db.set("a", 1)
    db.incr("counter", 100)
    db.compact()  # a snapshot with bookkeeping exists
    for _ in range(5):
        db.incr("counter")
    db.append("lst", "x")
    db.append("lst", "y")
    with db.transaction():
        db["t1"] = "one"
        db["t2"] = "two"
        db.incr("counter", 10)
    del db["a"]
    db.flush()
    return p, db


@pytest.mark.parametrize("shm", ["stale-shm", "no-shm"])
def test_new_snapshot_with_old_log_is_not_applied_twice(tmp_path, shm):
    """Crash between step 4 and step 5: the new snapshot is renamed in, the
    old log (whose records the snapshot already holds) is still there."""
    p, db = _store_with_records(tmp_path / "s")
    old_wal = _wal(p).read_bytes()
    old_snap = p.read_bytes()
    db.compact()
    expected = dict(db.items())
    assert expected["counter"] == 115
    db.close()
    assert p.read_bytes() != old_snap, "compact() must write a new snapshot"
    assert orjson.loads(p.read_bytes())["data"]["counter"]["value"] == 115
    _wal(p).write_bytes(old_wal)  # the rotation never happened
    if shm == "no-shm":
        (p.parent / "db.json.shm").unlink(missing_ok=True)
    for _ in range(2):  # a second open must not apply them again either
        with LogKV(str(p), compact_on_close=False) as db:
            assert dict(db.items()) == expected
    with LogKV(str(p), compact_on_close=False) as db:
        assert db.incr("counter") == 116
    with LogKV(str(p)) as db:  # compacts on close
        assert dict(db.items()) == {**expected, "counter": 116}
    with LogKV(str(p)) as db:
        assert dict(db.items()) == {**expected, "counter": 116}


def test_new_snapshot_with_old_log_holding_later_records(tmp_path):
    """Crash between step 4 and 5 while writers had appended records after
    step 2 (sequence > S) to the old log: those are replayed, exactly once;
    the ones ≤ S are not."""
    p, db = _store_with_records(tmp_path / "s")
    old_wal = _wal(p).read_bytes()
    db.compact()
    for _ in range(3):
        db.incr("counter")
    db.set("late", {"after": "step 2"})
    db.append("lst", "z")
    expected = dict(db.items())
    assert expected["counter"] == 118
    db.close()
    new_wal = _wal(p).read_bytes()
    header_end = new_wal.index(b"\n") + 1
    later = new_wal[header_end:]
    assert later.count(b"\n") == 5, "the rotated log holds exactly the records written after compact()"
    # the old log as a writer would have left it: its records, then the later ones
    _wal(p).write_bytes(old_wal + later)
    (p.parent / "db.json.shm").unlink(missing_ok=True)
    with LogKV(str(p), compact_on_close=False) as db:
        assert dict(db.items()) == expected
    with LogKV(str(p)) as db:
        assert dict(db.items()) == expected
        db.incr("counter")
    with LogKV(str(p)) as db:
        assert db["counter"] == 119
        assert db["lst"] == ["x", "y", "z"]


def test_records_already_in_the_snapshot_are_never_reapplied(tmp_path):
    """design.md §5: a record is applied only if its sequence is above what the
    snapshot holds. Records are post-images, so replaying a whole old log in
    order would hide a double apply; replaying only its first records would
    not: the snapshot (counter 115) next to an old log cut after its first two
    records (counter 101, 102) must give the snapshot's state."""
    p, db = _store_with_records(tmp_path / "s")
    old_wal = _wal(p).read_bytes()
    db.compact()
    expected = dict(db.items())
    db.close()
    lines = old_wal.splitlines(keepends=True)
    assert len(lines) >= 4 and b'"counter",101' in lines[1] and b'"counter",102' in lines[2], lines[:3]
    _wal(p).write_bytes(b"".join(lines[:3]))  # header + two records, all <= S
    (p.parent / "db.json.shm").unlink(missing_ok=True)
    with LogKV(str(p), compact_on_close=False) as db:
        assert dict(db.items()) == expected
        assert db["counter"] == 115
        db.incr("counter")
    with LogKV(str(p)) as db:
        assert dict(db.items()) == {**expected, "counter": 116}


def test_half_made_rotated_log_is_ignored(tmp_path):
    """Crash inside step 5: `db.json.wal.tmp` written (maybe partly), not renamed."""
    p, db = _store_with_records(tmp_path / "s")
    old_wal = _wal(p).read_bytes()
    db.compact()
    expected = dict(db.items())
    db.close()
    new_wal = _wal(p).read_bytes()
    _wal(p).write_bytes(old_wal)
    tmp_wal = p.parent / "db.json.wal.tmp"
    tmp_wal.write_bytes(new_wal[: len(new_wal) // 2])
    with LogKV(str(p), compact_on_close=False) as db:
        assert dict(db.items()) == expected
        db.incr("counter")
        db.compact()
        db.incr("counter")
    with LogKV(str(p)) as db:
        assert dict(db.items()) == {**expected, "counter": expected["counter"] + 2}


def test_stray_snapshot_temp_files_are_ignored(tmp_path):
    """Crash in step 3 or before the rename of step 4 leaves db.json.tmp.*:
    it is never read, never renamed in."""
    p, db = _store_with_records(tmp_path / "s")
    expected = dict(db.items())
    db.close()
    evil = orjson.dumps({"version": 1, "updated_at": "2026-01-01T00:00:00Z",
                         "data": {"evil": {"value": 666, "expires_at": None},
                                  "counter": {"value": 0, "expires_at": None}},
                         "logkv": orjson.loads(p.read_bytes()).get("logkv")})
    (p.parent / "db.json.tmp.0123abcd").write_bytes(evil)
    (p.parent / "db.json.tmp.garbage").write_bytes(b'{"version": 1, "da')
    (p.parent / "db.json.tmp.empty").write_bytes(b"")
    with LogKV(str(p), compact_on_close=False) as db:
        assert dict(db.items()) == expected
        db.incr("counter")
        db.compact()
        assert dict(db.items()) == {**expected, "counter": expected["counter"] + 1}
    with LogKV(str(p)) as db:
        assert dict(db.items()) == {**expected, "counter": expected["counter"] + 1}
    assert "evil" not in orjson.loads(p.read_bytes())["data"]


def test_stray_snapshot_temp_files_are_removed_by_next_compaction(tmp_path):
    """design.md §6: "a stray temp file is removed by the next compaction"."""
    p, db = _store_with_records(tmp_path / "s")
    db.close()
    stray = p.parent / "db.json.tmp.0123abcd"
    stray.write_bytes(b'{"version": 1, "da')
    with LogKV(str(p), compact_on_close=False) as db:
        db.compact()
    assert not stray.exists()


def test_old_snapshot_put_back_under_rotated_log_is_refused(tmp_path):
    """design.md §5 rule 2: records between the snapshot's S and the log's base
    are missing (an older snapshot was put back): refuse, change nothing."""
    p, db = _store_with_records(tmp_path / "s")
    old_snap = p.read_bytes()
    db.compact()
    db.incr("counter")
    db.close()
    p.write_bytes(old_snap)
    files = {f.name: f.read_bytes() for f in p.parent.iterdir()
             if f.is_file() and not f.name.endswith((".lock", ".shm"))}
    with pytest.raises(LogMismatchError):
        LogKV(str(p))
    assert files == {f.name: f.read_bytes() for f in p.parent.iterdir()
                     if f.is_file() and not f.name.endswith((".lock", ".shm"))}


def test_backup_link_made_but_rename_not_done(tmp_path):
    """Crash in step 4 after `.bak` was pointed at the old snapshot but before
    the rename: old snapshot, old log, a fresh .bak, a finished temp file."""
    p, db = _store_with_records(tmp_path / "s")
    expected = dict(db.items())
    db.close()
    # make the finished temp file by compacting a copy
    twin = tmp_path / "twin"
    shutil.copytree(p.parent, twin)
    with LogKV(str(twin / "db.json"), compact_on_close=False) as t:
        t.compact()
    (p.parent / "db.json.bak").unlink(missing_ok=True)
    os.link(p, p.parent / "db.json.bak")
    shutil.copyfile(twin / "db.json", p.parent / "db.json.tmp.5eed5eed")
    with LogKV(str(p), compact_on_close=False) as db:
        assert dict(db.items()) == expected
        db.incr("counter")
    with LogKV(str(p)) as db:
        assert dict(db.items()) == {**expected, "counter": expected["counter"] + 1}
