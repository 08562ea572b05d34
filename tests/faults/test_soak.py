"""Soak: thousands of SIGKILLs of concurrent writer processes.

In the manner of RocksDB's crash test (db_crashtest.py + db_stress's expected
state): several real writer processes (``subprocess.Popen``) open one store at
once, each with a random durability mode, and do random operations:

* ``set`` / ``pop`` of keys owned by the writer's *slot* (a slot runs one child
  at a time, so each key has a single writer and its expected value is exact);
* ``incr`` of shared counters;
* ``append`` to shared lists;
* transactions and ``mset`` setting a group of the slot's keys to one value;
* shared transactions: read-modify-write of ``txcount`` plus ``tx:a..d`` all
  set to one value that embeds the new count;
* an occasional ``compact()``.

Each child prints an intent line before a call and an acknowledgement line
after it returns (one ``os.write`` each, so nothing waits in a buffer). The
parent SIGKILLs children at random moments (while opening, writing, in a
transaction, compacting), starts new ones, reads their output, and keeps the
record of what was acknowledged. A killed child has at most one operation in
flight: its last intent without an acknowledgement.

Checks:

* live, after every kill, through a ``read_only=True`` store the parent keeps
  open: ``tx:a..d`` are equal and embed exactly ``txcount`` (no half
  transaction is ever visible to another process); counters never go back and
  are at least the acknowledged increments of the dead children;
* at quiescent points (every ``check_every`` kills the parent kills the whole
  pool, reopens the store for writing, checks, and closes it, which compacts)
  and at the end, exactly:
  - every slot key holds its last acknowledged value, or a value of a later
    in-flight (killed) operation on it;
  - every group is whole (all members equal or all absent), with the same rule;
  - every counter is ≥ the acknowledged incrs and ≤ that plus the in-flight
    incrs; the values ``incr`` returned are all distinct (no lost update
    across processes) and within the counter;
  - every list holds each acknowledged element exactly once, in-flight ones at
    most once, nothing else, each writer's elements in its order;
  - ``txcount`` likewise, its returned values distinct;
  - no key outside what the writers write.
  After a check the observed state becomes the base for the next one.

The default (CI) run does at least 60 kills; ``-m slow`` does 10,000.
The figures (kills, acknowledged operations, checks, time) are printed.
"""
from __future__ import annotations

import errno
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from logkv import LogKV

REPO = Path(__file__).resolve().parents[2]

NKEYS = 64      # single keys per slot
NGROUPS = 16    # groups (of three keys) per slot
NCOUNTERS = 3
NLISTS = 2
TX_MEMBERS = "abcd"
GROUP_MEMBERS = "abc"

SCRIPT = r'''
import os, random, sys
from logkv import LogKV

path, cid, slot, epoch, seed, durability = sys.argv[1:7]
NKEYS, NGROUPS, NCOUNTERS, NLISTS = (int(x) for x in sys.argv[7:11])
rnd = random.Random(int(seed))
w = os.write

def out(s):
    w(1, (s + "\n").encode())

db = LogKV(path, durability=durability)
out("R")
i = 0
while True:
    i += 1
    v = "%s.%d" % (cid, i)
    r = rnd.random()
    if r < 0.30:
        k = "k%s_%d" % (slot, rnd.randrange(NKEYS))
        out("b s %s %s" % (k, v))
        db.set(k, v)
        out("a")
    elif r < 0.35:
        k = "k%s_%d" % (slot, rnd.randrange(NKEYS))
        out("b d %s" % k)
        db.pop(k, None)
        out("a")
    elif r < 0.55:
        c = "c%d" % rnd.randrange(NCOUNTERS)
        out("b i %s" % c)
        n = db.incr(c)
        out("a %d" % n)
    elif r < 0.65:
        l = "L%s_%d" % (epoch, rnd.randrange(NLISTS))
        out("b l %s %s" % (l, v))
        db.append(l, v)
        out("a")
    elif r < 0.85:
        g = "g%s_%d" % (slot, rnd.randrange(NGROUPS))
        out("b g %s %s" % (g, v))
        if rnd.random() < 0.5:
            with db.transaction():
                for m in "abc":
                    db[g + ":" + m] = v
        else:
            db.mset({g + ":" + m: v for m in "abc"})
        out("a")
    elif r < 0.995:
        out("b x %s" % v)
        with db.transaction():
            n = db.get("txcount", 0) + 1
            db["txcount"] = n
            for m in "abcd":
                db["tx:" + m] = "%s/%d" % (v, n)
        out("a %d" % n)
    else:
        out("b c")
        db.compact()
        out("a")
'''


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class SoakFailure(AssertionError):
    pass


@dataclass
class Child:
    proc: subprocess.Popen
    cid: int
    slot: int
    errpath: Path
    spawned: float
    buf: bytearray = field(default_factory=bytearray)
    ready: bool = False
    deadline: float | None = None
    killed: bool = False
    eof: bool = False


class Model:
    """What the dead children acknowledged, on top of the state last observed."""

    def __init__(self) -> None:
        # key -> (last acknowledged value or None for absent, {values of in-flight ops since})
        self.keys: dict[str, tuple[str | None, set]] = {}
        self.groups: dict[str, tuple[str | None, set]] = {}
        # counter -> [base, acked, inflight, returned values]
        self.counters: dict[str, list] = {}
        self.txcount = [0, 0, 0, []]
        self.tx_values: set[str] = set()   # values of shared transactions since the last check
        self.tx_base: str | None = None    # tx:a value at the last check
        # list -> (base list, acked elements, in-flight elements)
        self.lists: dict[str, tuple[list, set, set]] = {}
        self.acked = 0
        self.inflight = 0
        self.assertions = 0

    def counter(self, c: str) -> list:
        return self.counters.setdefault(c, [0, 0, 0, []])

    def feed(self, lines: list[str]) -> None:
        """The output of one dead child, in order."""
        pending: list[str] | None = None
        for line in lines:
            if line == "R":
                continue
            parts = line.split(" ")
            if parts[0] == "b":
                assert pending is None, f"intent without acknowledgement before {line!r}"
                pending = parts[1:]
            elif parts[0] == "a":
                assert pending is not None, f"acknowledgement without intent: {line!r}"
                self._apply(pending, parts[1:], True)
                pending = None
            else:
                raise SoakFailure(f"unexpected child output {line!r}")
        if pending is not None:
            self._apply(pending, None, False)

    def _apply(self, op: list[str], ack: list[str] | None, acked: bool) -> None:
        if acked:
            self.acked += 1
        else:
            self.inflight += 1
        kind = op[0]
        if kind in ("s", "d"):
            key = op[1]
            value = op[2] if kind == "s" else None
            last, maybe = self.keys.get(key, (None, set()))
            self.keys[key] = (value, set()) if acked else (last, maybe | {value})
        elif kind == "g":
            g, value = op[1], op[2]
            last, maybe = self.groups.get(g, (None, set()))
            self.groups[g] = (value, set()) if acked else (last, maybe | {value})
        elif kind == "i":
            c = self.counter(op[1])
            if acked:
                c[1] += 1
                c[3].append(int(ack[0]))
            else:
                c[2] += 1
        elif kind == "x":
            t = self.txcount
            if acked:
                t[1] += 1
                t[3].append(int(ack[0]))
            else:
                t[2] += 1
            self.tx_values.add(op[1])
        elif kind == "l":
            base, ok, maybe = self.lists.setdefault(op[1], ([], set(), set()))
            (ok if acked else maybe).add(op[2])
        elif kind == "c":
            pass
        else:
            raise SoakFailure(f"unknown operation {op!r}")

    # ------------------------------------------------------------ the exact check
    def check(self, state: dict) -> None:
        seen = set()

        def fail(msg: str) -> None:
            raise SoakFailure(msg)

        for key, (last, maybe) in self.keys.items():
            seen.add(key)
            got = state.get(key)
            self.assertions += 1
            if got != last and got not in maybe:
                fail(f"key {key}: {got!r}, expected the acknowledged {last!r} or one of the in-flight {maybe!r}")
            self.keys[key] = (got, set())
        for g, (last, maybe) in self.groups.items():
            members = [state.get(f"{g}:{m}") for m in GROUP_MEMBERS]
            seen.update(f"{g}:{m}" for m in GROUP_MEMBERS)
            self.assertions += 1
            if len(set(members)) != 1:
                fail(f"group {g} is not whole: {members!r}")
            got = members[0]
            if got != last and got not in maybe:
                fail(f"group {g}: {got!r}, expected the acknowledged {last!r} or one of the in-flight {maybe!r}")
            self.groups[g] = (got, set())
        for name, c in list(self.counters.items()) + [("txcount", self.txcount)]:
            base, acked, inflight, returned = c
            got = state.get(name, 0)
            seen.add(name)
            self.assertions += 1
            if not base + acked <= got <= base + acked + inflight:
                fail(f"counter {name} = {got}: expected {base} + {acked} acknowledged "
                     f"(+ up to {inflight} in flight)")
            if len(set(returned)) != len(returned):
                fail(f"counter {name}: the same value was returned twice (lost update)")
            if returned and not (min(returned) > base and max(returned) <= got):
                fail(f"counter {name}: returned values {min(returned)}..{max(returned)} "
                     f"outside ({base}, {got}]")
            c[:] = [got, 0, 0, []]
        tx = [state.get("tx:" + m) for m in TX_MEMBERS]
        seen.update("tx:" + m for m in TX_MEMBERS)
        self.assertions += 1
        if len(set(tx)) != 1:
            fail(f"shared transaction not whole: {tx!r}")
        if tx[0] is None:
            if state.get("txcount") is not None:
                fail("txcount without its transaction's keys")
        else:
            v, _, n = tx[0].rpartition("/")
            if int(n) != state.get("txcount"):
                fail(f"tx:* = {tx[0]!r} does not match txcount {state.get('txcount')}")
            if tx[0] != self.tx_base and v not in self.tx_values:
                fail(f"tx:* = {tx[0]!r} was never written")
        self.tx_base = tx[0]
        self.tx_values = set()
        for name, (base, ok, maybe) in self.lists.items():
            got = state.get(name, [])
            seen.add(name)
            self.assertions += 1
            if got[:len(base)] != base:
                fail(f"list {name}: its first {len(base)} elements changed")
            new = got[len(base):]
            if len(set(new)) != len(new):
                fail(f"list {name}: an element appended twice")
            if not ok <= set(new):
                fail(f"list {name}: acknowledged appends missing: {sorted(ok - set(new))[:5]}")
            if not set(new) <= ok | maybe:
                fail(f"list {name}: elements never appended: {sorted(set(new) - ok - maybe)[:5]}")
            last: dict[str, int] = {}
            for e in new:
                cid, _, i = e.partition(".")
                if int(i) <= last.get(cid, 0):
                    fail(f"list {name}: writer {cid}'s appends out of order")
                last[cid] = int(i)
            self.lists[name] = (got, set(), set())
        extra = set(state) - seen
        self.assertions += 1
        if extra:
            fail(f"keys nobody acknowledged or started: {sorted(extra)[:5]}")

    # ------------------------------------------------------------ live check
    def check_live(self, state: dict, floor: dict[str, int]) -> None:
        """What holds at any moment, seen from another process."""
        self.assertions += 1
        tx = [state.get("tx:" + m) for m in TX_MEMBERS]
        if len(set(tx)) != 1:
            raise SoakFailure(f"live: half a shared transaction visible: {tx!r}")
        if tx[0] is not None and int(tx[0].rpartition("/")[2]) != state.get("txcount"):
            raise SoakFailure(f"live: tx:* = {tx[0]!r} but txcount = {state.get('txcount')}")
        for name, c in list(self.counters.items()) + [("txcount", self.txcount)]:
            got = state.get(name, 0)
            low = max(c[0] + c[1], floor.get(name, 0))
            if got < low:
                raise SoakFailure(f"live: counter {name} = {got} below {low} (acknowledged or seen before)")
            floor[name] = got
        for g in self.groups:
            members = {state.get(f"{g}:{m}") for m in GROUP_MEMBERS}
            if len(members) != 1:
                raise SoakFailure(f"live: group {g} not whole: {members!r}")


def soak(tmp_path: Path, kills: int, *, slots: int = 4, check_every: int = 20,
         seed: int | None = None, max_seconds: float = 3600.0) -> dict:
    seed = random.randrange(1 << 30) if seed is None else seed
    rnd = random.Random(seed)
    path = str(tmp_path / "db.json")
    errdir = tmp_path / "err"
    errdir.mkdir()
    env = _env()
    model = Model()
    sel = selectors.DefaultSelector()
    children: dict[int, Child] = {}     # slot -> child
    figures = {"seed": seed, "kills": 0, "kills_before_ready": 0, "children": 0, "checks": 0,
               "live_checks": 0, "killed_mid_op": 0}
    epoch = 0
    next_cid = 0
    ro: LogKV | None = None
    floor: dict[str, int] = {}
    start = time.monotonic()

    def spawn(slot: int) -> None:
        nonlocal next_cid
        next_cid += 1
        cid = next_cid
        durability = rnd.choice(["always", "interval", "os"])
        errpath = errdir / f"{cid}.err"
        with open(errpath, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", SCRIPT, path, str(cid), str(slot), str(epoch),
                 str(rnd.randrange(1 << 30)), durability,
                 str(NKEYS), str(NGROUPS), str(NCOUNTERS), str(NLISTS)],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env,
            )
        os.set_blocking(proc.stdout.fileno(), False)
        ch = Child(proc, cid, slot, errpath, time.monotonic())
        if rnd.random() < 0.08:
            # some die while importing or opening the store
            ch.deadline = ch.spawned + rnd.uniform(0.0, 0.25)
        children[slot] = ch
        sel.register(proc.stdout, selectors.EVENT_READ, ch)
        figures["children"] += 1

    def kill_delay() -> float:
        r = rnd.random()
        if r < 0.5:
            return rnd.uniform(0.0, 0.005)
        if r < 0.85:
            return rnd.uniform(0.0, 0.05)
        return rnd.uniform(0.0, 0.4)

    def read_some(ch: Child) -> None:
        fd = ch.proc.stdout.fileno()
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:  # pragma: no cover
                if exc.errno == errno.EAGAIN:
                    return
                raise
            if not data:
                ch.eof = True
                return
            ch.buf += data
            if not ch.ready and ch.buf.startswith(b"R\n"):
                ch.ready = True
                if ch.deadline is None:
                    ch.deadline = time.monotonic() + kill_delay()

    def kill(ch: Child) -> None:
        if not ch.killed:
            ch.killed = True
            try:
                os.kill(ch.proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # pragma: no cover
                pass

    def reap(ch: Child) -> None:
        """The child is dead (or killed): collect all it wrote, feed the model."""
        rc = ch.proc.wait(timeout=60)
        read_some(ch)
        sel.unregister(ch.proc.stdout)
        ch.proc.stdout.close()
        del children[ch.slot]
        if rc != -signal.SIGKILL or not ch.killed:
            raise SoakFailure(f"writer {ch.cid} exited with {rc} on its own:\n"
                              + ch.errpath.read_text(errors="replace")[-4000:])
        ch.errpath.unlink()
        text = ch.buf.decode()
        lines = text.split("\n")
        # a line cut by the kill is not an acknowledgement (os.write of a short line
        # to a pipe is atomic, so this does not happen in practice)
        lines = lines[:-1]
        figures["kills"] += 1
        if not ch.ready:
            figures["kills_before_ready"] += 1
        if lines and lines[-1].startswith("b"):
            figures["killed_mid_op"] += 1
        model.feed(lines)

    def live_check() -> None:
        if ro is None:
            return
        model.check_live(ro.copy(), floor)
        figures["live_checks"] += 1

    def full_check() -> None:
        nonlocal epoch, ro
        for ch in list(children.values()):
            kill(ch)
        for ch in list(children.values()):
            reap(ch)
        db = LogKV(path)
        try:
            model.check(db.copy())
        finally:
            db.close()
        figures["checks"] += 1
        epoch += 1
        if ro is None:
            ro = LogKV(path, read_only=True)
        else:
            live_check()

    try:
        while figures["kills"] < kills:
            if time.monotonic() - start > max_seconds:
                raise SoakFailure(f"soak took longer than {max_seconds} s: {figures}")
            for slot in range(slots):
                if slot not in children:
                    spawn(slot)
            now = time.monotonic()
            due = [ch.deadline for ch in children.values() if ch.deadline is not None and not ch.killed]
            timeout = max(0.0, min(due) - now) if due else 0.5
            for key, _ in sel.select(timeout=min(timeout, 0.5)):
                read_some(key.data)
            now = time.monotonic()
            for ch in list(children.values()):
                if children.get(ch.slot) is not ch:
                    continue  # reaped by a full check meanwhile
                if not ch.killed and ch.deadline is not None and now >= ch.deadline:
                    kill(ch)
                if ch.killed or ch.eof:
                    before = figures["kills"]
                    reap(ch)
                    if figures["kills"] != before and figures["kills"] % check_every == 0:
                        full_check()
                    else:
                        live_check()
            if not children and figures["kills"] >= kills:
                break
        full_check()
    finally:
        for ch in list(children.values()):
            kill(ch)
            ch.proc.wait()
        if ro is not None:
            ro.close()
        sel.close()
    figures["acknowledged_ops"] = model.acked
    figures["in_flight_at_kill"] = model.inflight
    figures["assertions"] = model.assertions
    figures["seconds"] = round(time.monotonic() - start, 1)
    print(f"\nsoak figures: {figures}")
    return figures


def test_soak_kills_writers_loses_nothing(tmp_path):
    """CI: ≥ 60 SIGKILLs of 4 concurrent writers, with exact checks every 15 kills."""
    kills = int(os.environ.get("LOGKV_SOAK_KILLS", "60"))
    f = soak(tmp_path, kills, slots=4, check_every=15, max_seconds=120)
    assert f["kills"] >= kills
    assert f["checks"] >= kills // 15
    assert f["acknowledged_ops"] > 0


@pytest.mark.slow
def test_soak_10000_kills(tmp_path):
    """≥ 10,000 SIGKILLs (a kill every few ms across a pool of 4 writers)."""
    kills = int(os.environ.get("LOGKV_SOAK_KILLS", "10000"))
    f = soak(tmp_path, kills, slots=4, check_every=500, max_seconds=4 * 3600)
    assert f["kills"] >= kills
    assert f["acknowledged_ops"] > 0
