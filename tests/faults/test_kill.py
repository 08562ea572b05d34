"""kill -9 of a writer loses no acknowledged write, in every durability mode.

CONTRACT §4.1 (a mutation that has returned survives kill -9 in every mode)
and §4.4 (a transaction / mset is all or nothing after any crash).

A real child process writes and prints every acknowledged operation to its
stdout (one ``os.write`` each, so nothing sits in a buffer) AFTER the call
returns, and an intent line BEFORE the call. The parent SIGKILLs it at a
random moment, reopens the store and checks:

* every acknowledged write is there with its value;
* an operation that was started but not acknowledged is either wholly there
  or wholly absent;
* the counter equals the acknowledged increments, or one more when an incr
  was in flight, never anything else;
* every transaction / mset is whole (all its keys with its value, or none),
  and the transaction's own read-modify-write counter matches the number of
  whole transactions present;
* no key appears that the child never tried to write.

Runs for one mode share one store, so later runs also recover from the state
an earlier kill left behind.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from logkv import LogKV

REPO = Path(__file__).resolve().parents[2]
MODES = ["always", "interval", "os"]
PAD = 2000  # keys written once so that compact() takes a measurable while

WRITER = r'''
import os, sys
from logkv import LogKV

path, durability, run, compact_every = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def out(s):
    os.write(1, (s + "\n").encode())

db = LogKV(path, durability=durability)
if compact_every > 0 and "pad%d" % (PAD - 1) not in db:
    db.mset({"pad%d" % j: "x" * 40 for j in range(PAD)})
    out("P")
out("READY")
i = 0
while True:
    i += 1
    kind = i % 4
    if kind == 0:
        k = "k%s_%d" % (run, i)
        out("s " + k)
        db.set(k, i)
        out("S " + k)
    elif kind == 1:
        out("i")
        v = db.incr("counter")
        out("I %d" % v)
    elif kind == 2:
        g = "t%s_%d" % (run, i)
        out("t " + g)
        with db.transaction():
            for s in "abc":
                db[g + ":" + s] = i
            db["txn"] = db.get("txn", 0) + 1
        out("T " + g)
    else:
        g = "m%s_%d" % (run, i)
        out("m " + g)
        db.mset({g + ":a": i, g + ":b": i, g + ":c": i})
        out("M " + g)
    if compact_every > 0 and i % compact_every == 0:
        out("C")
        db.compact()
        out("c")
    elif compact_every < 0 and i % -compact_every == 0:
        # close (which compacts) and reopen, over and over
        out("X")
        db.close()
        db = LogKV(path, durability=durability)
        out("x")
'''.replace("PAD", str(PAD))


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Child:
    """The writer process, with a thread that collects its lines as they come."""

    def __init__(self, script: Path, args: list[str], errfile: Path, kill_on_compact: tuple[int, float] | None):
        self.err = open(errfile, "wb")
        self.errfile = errfile
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            stdout=subprocess.PIPE,
            stderr=self.err,
            stdin=subprocess.DEVNULL,
            env=_env(),
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.kill_on_compact = kill_on_compact
        self._killed = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        seen_c = 0
        for raw in self.proc.stdout:
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            if line == "READY":
                self.ready.set()
            elif line == "C" and self.kill_on_compact is not None:
                seen_c += 1
                n, delay = self.kill_on_compact
                if seen_c == n:
                    end = time.perf_counter() + delay
                    while time.perf_counter() < end:
                        pass
                    self.kill()
        self.ready.set()

    def kill(self) -> None:
        with self._lock:
            if not self._killed:
                self._killed = True
                try:
                    os.kill(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def finish(self) -> list[str]:
        self.proc.wait(timeout=60)
        self.thread.join(timeout=60)
        self.err.close()
        rc = self.proc.returncode
        assert rc == -signal.SIGKILL, (
            f"writer exited with {rc} instead of being killed; stderr:\n{self.errfile.read_text()[-3000:]}"
        )
        return self.lines


def _run_once(tmp_path: Path, store: Path, durability: str, run: str, rng: random.Random,
              *, compact_kill: bool, cycle: bool = False) -> list[str]:
    script = tmp_path / "writer.py"
    if not script.exists():
        script.write_text(WRITER)
    kill_on_compact = (rng.randint(1, 3), rng.uniform(0.0, 0.003)) if compact_kill else None
    compact_every = 3 if compact_kill else (-4 if cycle else 0)
    child = Child(script, [str(store), durability, run, str(compact_every)],
                  tmp_path / f"stderr-{run}.txt", kill_on_compact)
    if not child.ready.wait(60) or "READY" not in child.lines:
        child.kill()
        child.proc.wait(10)
        pytest.fail(f"writer did not start: {(tmp_path / f'stderr-{run}.txt').read_text()[-3000:]}")
    if compact_kill:
        # the reader thread kills right after the n-th "C"; a time limit as a fallback
        deadline = time.monotonic() + 30
        while child.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        child.kill()
    else:
        time.sleep(rng.uniform(0.0, 0.15))
        child.kill()
    return child.finish()


class Verifier:
    """What the store must hold, built up over the runs on one store."""

    def __init__(self) -> None:
        self.durable: dict = {}  # every key/value verified after an earlier kill
        self.counter = 0

    def check(self, store: Path, lines: list[str] | list[list[str]], tag: str) -> dict:
        """``lines``: the output of one writer, or a list of outputs of writers
        that ran at the same time on the store."""
        streams = [lines] if not lines or isinstance(lines[0], str) else lines
        acked_s, intent_s = set(), set()
        acked_g, intent_g = set(), set()
        incr_values: list[int] = []
        inflight = 0
        pads_acked = False
        for stream in streams:
            incr_inflight = False
            pads_acked |= "P" in stream
            for line in stream:
                op, _, arg = line.partition(" ")
                if op == "s":
                    intent_s.add(arg)
                elif op == "S":
                    acked_s.add(arg)
                elif op in ("t", "m"):
                    intent_g.add(arg)
                elif op in ("T", "M"):
                    acked_g.add(arg)
                elif op == "i":
                    incr_inflight = True
                elif op == "I":
                    incr_values.append(int(arg))
                    incr_inflight = False
            inflight += incr_inflight
        if len(streams) == 1:
            # incr returned consecutive values continuing the counter: no lost
            # or double-applied increment in the live process either
            assert incr_values == list(range(self.counter + 1, self.counter + 1 + len(incr_values))), (
                f"{tag}: incr returned {incr_values[:5]}… starting from a recovered counter of {self.counter}"
            )
        else:
            # several writers: the values they were given are distinct (no lost update)
            assert len(set(incr_values)) == len(incr_values), f"{tag}: incr returned a value twice"
            assert all(v > self.counter for v in incr_values)
        acked_counter = self.counter + len(incr_values)

        with LogKV(str(store), compact_on_close=False) as db:
            state = dict(db.items())
        problems: list[str] = []
        for k, v in self.durable.items():
            if k in ("counter", "txn"):
                continue
            if state.get(k, "<missing>") != v:
                problems.append(f"earlier durable key {k!r}: {state.get(k, '<missing>')!r} != {v!r}")
        for k in acked_s:
            want = int(k.rsplit("_", 1)[1])
            if state.get(k, "<missing>") != want:
                problems.append(f"acknowledged set {k!r} lost: {state.get(k, '<missing>')!r}")
        for k in intent_s - acked_s:
            if k in state and state[k] != int(k.rsplit("_", 1)[1]):
                problems.append(f"in-flight set {k!r} has a wrong value {state[k]!r}")
        counter = state.get("counter", 0)
        allowed = set(range(acked_counter, acked_counter + inflight + 1))
        if incr_values and max(incr_values) > counter:
            problems.append(f"counter {counter} is below an acknowledged incr result {max(incr_values)}")
        if counter not in allowed:
            problems.append(
                f"counter {counter} but {len(incr_values)} increments acknowledged on top of "
                f"{self.counter} (allowed {sorted(allowed)})"
            )
        for g in intent_g:
            want = int(g.rsplit("_", 1)[1])
            vals = [state.get(f"{g}:{s}", "<missing>") for s in "abc"]
            if vals == [want] * 3:
                continue
            if g in acked_g:
                problems.append(f"acknowledged batch {g} not whole: {vals}")
            elif vals != ["<missing>"] * 3:
                problems.append(f"unacknowledged batch {g} is half there: {vals}")
        # the transaction's own read-modify-write counter matches the whole transactions
        groups = {k.split(":")[0] for k in state if k.startswith("t") and ":" in k}
        whole = sum(1 for g in groups if all(f"{g}:{s}" in state for s in "abc"))
        if state.get("txn", 0) != whole:
            problems.append(f"txn counter {state.get('txn', 0)} != {whole} whole transactions present")
        if pads_acked:
            missing = [j for j in range(PAD) if state.get(f"pad{j}") != "x" * 40]
            if missing:
                problems.append(f"{len(missing)} acknowledged pad keys lost, e.g. pad{missing[0]}")
        allowed_keys = set(self.durable) | intent_s | {"counter", "txn"}
        allowed_keys |= {f"{g}:{s}" for g in intent_g for s in "abc"}
        allowed_keys |= {f"pad{j}" for j in range(PAD)}
        extra = sorted(set(state) - allowed_keys)
        if extra:
            problems.append(f"keys nobody wrote: {extra[:10]}")
        assert not problems, f"{tag}:\n" + "\n".join(problems[:20])
        self.durable = state
        self.counter = counter
        return state


def _soak(tmp_path: Path, durability: str, time_kills: int, compact_kills: int, seed: int,
          cycle_kills: int = 0) -> None:
    rng = random.Random(seed)
    store = tmp_path / "db.json"
    ver = Verifier()
    landed_in_compaction = 0
    plan = ["time"] * time_kills + ["compact"] * compact_kills + ["cycle"] * cycle_kills
    rng.shuffle(plan)
    attempts = 0
    r = 0
    while r < len(plan) or (compact_kills and landed_in_compaction == 0 and attempts < 10):
        kind = plan[r] if r < len(plan) else "compact"
        run = f"r{r}"
        lines = _run_once(tmp_path, store, durability, run, rng, compact_kill=(kind == "compact"),
                          cycle=(kind == "cycle"))
        tag = f"durability={durability} seed={seed} run={run} kill={kind} last lines={lines[-4:]}"
        ver.check(store, lines, tag)
        if kind == "compact":
            attempts += 1
            if "C" in lines and lines[-1] == "C":
                landed_in_compaction += 1
        r += 1
    if compact_kills:
        assert landed_in_compaction >= 1, "no kill landed while compact() was running"
    # finally: a clean open with compaction, then the state is still the same
    with LogKV(str(store)) as db:
        assert dict(db.items()) == ver.durable
    with LogKV(str(store)) as db:
        assert dict(db.items()) == ver.durable


@pytest.mark.parametrize("durability", MODES)
def test_kill9_loses_no_acknowledged_write(tmp_path, durability):
    seed = random.randrange(1 << 30)
    _soak(tmp_path, durability, time_kills=4, compact_kills=0, seed=seed)


@pytest.mark.parametrize("durability", MODES)
def test_kill9_while_closing_and_reopening(tmp_path, durability):
    """The writer closes (compact_on_close) and reopens every few writes: kills
    land in close(), in the compaction it runs, and in open()'s recovery."""
    seed = random.randrange(1 << 30)
    _soak(tmp_path, durability, time_kills=0, compact_kills=0, cycle_kills=3, seed=seed)


@pytest.mark.parametrize("durability", MODES)
def test_kill9_while_compacting(tmp_path, durability):
    seed = random.randrange(1 << 30)
    _soak(tmp_path, durability, time_kills=0, compact_kills=2, seed=seed)


def _pair(tmp_path: Path, durability: str, rounds: int, seed: int) -> None:
    """Two writers on one store; one is killed while the other goes on writing
    (and must cut whatever half record the dead one left, design.md §7), then
    the other is killed too."""
    rng = random.Random(seed)
    store = tmp_path / "db.json"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    ver = Verifier()
    for r in range(rounds):
        kids = [
            Child(script, [str(store), durability, f"p{r}{x}", str(c)], tmp_path / f"stderr-p{r}{x}.txt", None)
            for x, c in (("a", 0), ("b", 5 if r % 2 else 0))
        ]
        for k in kids:
            if not k.ready.wait(60) or "READY" not in k.lines:
                for kk in kids:
                    kk.kill()
                pytest.fail(f"writer did not start: {k.errfile.read_text()[-3000:]}")
        rng.shuffle(kids)
        time.sleep(rng.uniform(0.0, 0.1))
        kids[0].kill()
        n_before = len(kids[1].lines)
        time.sleep(rng.uniform(0.02, 0.1))
        deadline = time.monotonic() + 30
        while len(kids[1].lines) < n_before + 20 and time.monotonic() < deadline:
            time.sleep(0.005)  # the survivor writes on after the death
        kids[1].kill()
        outs = [k.finish() for k in kids]
        ver.check(store, outs, f"durability={durability} seed={seed} pair round {r}; "
                               f"last lines {[o[-2:] for o in outs]}")
    with LogKV(str(store)) as db:
        assert dict(db.items()) == ver.durable


@pytest.mark.parametrize("durability", MODES)
def test_kill9_one_of_two_writers(tmp_path, durability):
    _pair(tmp_path, durability, rounds=2, seed=random.randrange(1 << 30))


@pytest.mark.slow
@pytest.mark.parametrize("durability", MODES)
def test_kill9_one_of_two_writers_soak(tmp_path, durability):
    _pair(tmp_path, durability, rounds=12, seed=random.randrange(1 << 30))


@pytest.mark.slow
@pytest.mark.parametrize("durability", MODES)
def test_kill9_soak(tmp_path, durability):
    seed = random.randrange(1 << 30)
    _soak(tmp_path, durability, time_kills=15, compact_kills=10, cycle_kills=10, seed=seed)


# --------------------------------------------------------------------------- death inside an append

DYING = r'''
import os, signal, sys
from logkv import LogKV

path, durability, k, how, side = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
_write = os.write
count = [0]

def write(fd, data):
    try:
        target = os.readlink("/proc/self/fd/%d" % fd)
    except OSError:
        target = ""
    if target.endswith(".wal"):
        count[0] += 1
        if count[0] == k:
            # die inside the append: after part or all of the line reached the
            # file, before the call could return (and before logkv published it)
            data = bytes(data)
            _write(fd, data[: len(data) // 2] if how == "half" else data)
            _write(side, b"%d" % len(data))  # tell the parent the line's length
            os.kill(os.getpid(), signal.SIGKILL)
    return _write(fd, data)

def out(s):
    _write(1, (s + "\n").encode())

os.write = write
db = LogKV(path, durability=durability)
out("READY")
for i in range(1, 1000):
    if i % 3 == 0:
        out("m %d" % i)
        db.mset({"g%d:a" % i: i, "g%d:b" % i: i, "g%d:c" % i: i})
        out("M %d" % i)
    else:
        out("s %d" % i)
        db.set("k%d" % i, i)
        out("S %d" % i)
'''


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to find the log's descriptor")
@pytest.mark.parametrize("durability", ["always", "interval", "os"])
@pytest.mark.parametrize("how", ["half", "whole"])
@pytest.mark.parametrize("k", [5, 6], ids=["set", "mset"])
@pytest.mark.parametrize("others", ["alone", "survivors", "reader-first"])
def test_writer_dies_inside_its_append(tmp_path, durability, how, k, others):
    """A writer is killed inside its append (the bytes are in the file, the call
    never returned). With other processes still open (design.md §7: the next
    writer finds the dead writer's mark and cuts its bytes) and alone (the next
    opener drops the torn tail): no acknowledged write is lost, the dying
    record is whole or absent, and the log stays usable."""
    store = tmp_path / "db.json"
    script = tmp_path / "dying.py"
    script.write_text(DYING)
    survivor = ro = None
    if others == "survivors":
        survivor = LogKV(str(store), durability=durability, compact_on_close=False)
        survivor.set("base", 0)
        ro = LogKV(str(store), read_only=True)
        assert ro.get("base") == 0
    r, w = os.pipe()
    try:
        res = subprocess.run([sys.executable, str(script), str(store), durability, str(k), how, str(w)],
                             capture_output=True, env=_env(), timeout=60, pass_fds=(w,))
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as f:
        line_len = int(f.read() or b"0")
    assert res.returncode == -signal.SIGKILL, res.stderr.decode()[-3000:]
    lines = res.stdout.decode().splitlines()
    assert lines[0] == "READY" and line_len > 0, lines
    acked = [ln.split()[1] for ln in lines if ln[:1] in "SM"]
    dying = next(ln.split()[1] for ln in reversed(lines) if ln[:1] in "sm")
    assert len(acked) == k - 1 and dying == str(k), lines

    def dying_keys(i: str) -> list[str]:
        return [f"g{i}:{s}" for s in "abc"] if int(i) % 3 == 0 else [f"k{i}"]

    def check(state: dict, where: str) -> None:
        for i in acked:
            for key in dying_keys(i):
                assert state.get(key) == int(i), f"{where}: acknowledged {key} lost"
        present = [key for key in dying_keys(dying) if key in state]
        assert present in ([], dying_keys(dying)), f"{where}: half of the dying batch is visible: {present}"
        if how == "half":
            assert present == [], f"{where}: a half-written record was applied"

    if others == "survivors":
        assert survivor is not None and ro is not None
        check(dict(ro.items()), "read-only reader after the death")
        survivor.incr("after")  # the next write must not be glued to the dead writer's bytes
        survivor.set("after2", "x")
        check(dict(survivor.items()), "surviving writer")
        assert ro.get("after") == 1 and ro.get("after2") == "x"
        check(dict(ro.items()), "read-only reader after the survivor's writes")
        survivor.close()
        ro.close()
    if others == "reader-first":
        # a read-only store opens first (it may not cut anything), then a
        # writer that is therefore not alone must still get rid of the bytes
        ro = LogKV(str(store), read_only=True)
        try:
            check(dict(ro.items()), "read-only opened after the death")
            with LogKV(str(store), durability=durability, compact_on_close=False) as w2:
                check(dict(w2.items()), "writer opened beside the reader")
                w2.set("after2", "x")
            assert ro.get("after2") == "x"
            check(dict(ro.items()), "read-only after the writer's write")
        finally:
            ro.close()
    with LogKV(str(store), compact_on_close=False) as db:
        state = dict(db.items())
        check(state, "reopen")
        if others == "alone" and how == "half":
            assert db.stats()["dropped_tail_bytes"] == line_len // 2
        if others == "survivors":
            assert state.get("after") == 1 and state.get("after2") == "x"
        if others == "reader-first":
            assert state.get("after2") == "x"
        db.incr("after")
    with LogKV(str(store)) as db:
        check(dict(db.items()), "second reopen")
        assert db.get("after") == (2 if others == "survivors" else 1)
