"""Several real processes on one store (CONTRACT §4.10, design.md §7).

* Read-modify-write calls (incr, append, pop, transactions) are atomic across
  processes: no lost updates, no double pops.
* A write that has returned in process A is seen by a read that starts after
  it in process B (a pipe handshake orders the two).
* ``read_only=True`` creates no file, and sees the writes of another process.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

from logkv import LogKV, ReadOnlyError

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 120.0

WORKER = r'''
import json, os, random, sys
from logkv import LogKV

def out(obj):
    os.write(1, (json.dumps(obj) + "\n").encode())

mode, path, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
rest = sys.argv[4:]
db = LogKV(path, **opts)
out("READY")
if mode == "serve":
    # one JSON command per stdin line: [method, *args]; the answer is printed
    # only after the call has returned
    for line in sys.stdin:
        cmd = json.loads(line)
        name, args = cmd[0], cmd[1:]
        try:
            if name == "contains":
                res = args[0] in db
            elif name == "len":
                res = len(db)
            elif name == "state":
                res = dict(db.items())
            elif name == "delitem":
                del db[args[0]]
                res = None
            else:
                res = getattr(db, name)(*args)
            out(["ok", res])
        except Exception as exc:
            out(["err", type(exc).__name__, str(exc)])
    db.close()
    out("CLOSED")
    sys.exit(0)

assert sys.stdin.readline().strip() == "go"
if mode == "incr_append":
    n, wid = int(rest[0]), rest[1]
    vals = []
    for i in range(n):
        vals.append(db.incr("counter"))
        db.append("list", "%s:%d" % (wid, i))
    out(vals)
elif mode == "pop_keys":
    keys = json.loads(rest[0])
    random.Random(rest[1]).shuffle(keys)
    got = {}
    for k in keys:
        v = db.pop(k, None)
        if v is not None:
            got[k] = v
    out(got)
elif mode == "pop_list":
    got = []
    while True:
        v = None
        with db.transaction():
            q = db.get("queue") or []
            if q:
                v = q[0]
                db["queue"] = q[1:]
        if v is None:
            break
        got.append(v)
    out(got)
elif mode == "tx_rmw":
    n = int(rest[0])
    for i in range(n):
        with db.transaction():
            a = db.get("a", 0)
            b = db.get("b", 0)
            db["a"] = a + 1
            db["b"] = b + 1
            db["tx_log"] = (db.get("tx_log") or 0) + 1
    out("ok")
elif mode == "setdefault_extend":
    n, wid = int(rest[0]), rest[1]
    won = db.setdefault("winner", wid)
    for i in range(n):
        db.extend("ext", ["%s:%d:a" % (wid, i), "%s:%d:b" % (wid, i)])
    out(won)
elif mode == "compactor":
    n = int(rest[0])
    for i in range(n):
        db.compact()
        db.incr("compactions_done")
    out("ok")
elif mode == "incr_ab":
    n = int(rest[0])
    for i in range(n):
        db.incr("a")
        db.incr("b")
    out("ok")
else:
    raise SystemExit("unknown mode " + mode)
db.close()
out("DONE")
'''


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Worker:
    def __init__(self, tmp: Path, mode: str, path: Path, opts: dict, *rest: str) -> None:
        script = tmp / "worker.py"
        if not script.exists():
            script.write_text(WORKER)
        self.errfile = tmp / f"stderr-{mode}-{id(self)}.txt"
        self._err = open(self.errfile, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), mode, str(path), json.dumps(opts), *rest],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            env=_env(),
        )
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for raw in self.proc.stdout:
            self.q.put(json.loads(raw))
        self.q.put(EOFError)

    def read(self, timeout: float = TIMEOUT):
        try:
            item = self.q.get(timeout=timeout)
        except queue.Empty:
            self.proc.kill()
            pytest.fail(f"worker silent for {timeout}s; stderr:\n{self.stderr()}")
        if item is EOFError:
            self.proc.wait(10)
            pytest.fail(f"worker exited ({self.proc.returncode}); stderr:\n{self.stderr()}")
        return item

    def stderr(self) -> str:
        self._err.flush()
        return self.errfile.read_text()[-4000:]

    def ready(self) -> None:
        assert self.read() == "READY"

    def send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def call(self, *cmd):
        self.send(json.dumps(cmd))
        res = self.read()
        if res[0] != "ok":
            raise AssertionError(f"worker call {cmd!r} raised {res[1]}: {res[2]}")
        return res[1]

    def finish(self, expect: str = "DONE"):
        self.proc.stdin.close()
        last = self.read()
        if expect == "DONE":
            result, last = last, self.read()
        else:
            result = None
        assert last == expect, last
        self.proc.wait(TIMEOUT)
        self._err.close()
        assert self.proc.returncode == 0, self.stderr()
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._err.close()


def _run_group(workers: list[Worker]) -> list:
    try:
        for w in workers:
            w.ready()
        for w in workers:
            w.send("go")
        return [w.finish() for w in workers]
    finally:
        for w in workers:
            w.kill()


DURABILITIES = [pytest.param({}, id="default"), pytest.param({"durability": "os"}, id="os")]


# --------------------------------------------------------------------------- atomic RMW


def _incr_append(tmp_path: Path, opts: dict, n: int, procs: int = 4, compactions: int = 0) -> None:
    store = tmp_path / "db.json"  # does not exist yet: the processes race to create it
    workers = [Worker(tmp_path, "incr_append", store, opts, str(n), f"w{j}") for j in range(procs)]
    if compactions:
        workers.append(Worker(tmp_path, "compactor", store, opts, str(compactions)))
    results = _run_group(workers)
    if compactions:
        assert results.pop() == "ok"
    returned = sorted(v for vals in results for v in vals)
    assert returned == list(range(1, procs * n + 1)), (
        "incr must return distinct consecutive values across processes (a repeated value is a lost update)"
    )
    for vals in results:
        assert vals == sorted(vals)
    with LogKV(str(store)) as db:
        assert db["counter"] == procs * n
        lst = db["list"]
    assert len(lst) == procs * n, f"list has {len(lst)} items, expected {procs * n}"
    assert sorted(lst) == sorted(f"w{j}:{i}" for j in range(procs) for i in range(n))
    for j in range(procs):
        mine = [int(x.split(":")[1]) for x in lst if x.startswith(f"w{j}:")]
        assert mine == list(range(n)), "one process's appends must keep their order"


@pytest.mark.parametrize("opts", DURABILITIES)
def test_incr_and_append_from_four_processes(tmp_path, opts):
    _incr_append(tmp_path, opts, n=300)


@pytest.mark.parametrize("opts", DURABILITIES)
def test_incr_and_append_while_another_process_compacts(tmp_path, opts):
    """design.md §6: compaction runs beside the writers (step 3 holds no lock);
    the records they append meanwhile are carried into the new log."""
    _incr_append(tmp_path, opts, n=300, compactions=25)


@pytest.mark.slow
@pytest.mark.parametrize("opts", DURABILITIES)
def test_incr_and_append_from_four_processes_soak(tmp_path, opts):
    _incr_append(tmp_path, opts, n=1000)


@pytest.mark.parametrize("opts", DURABILITIES)
def test_setdefault_and_extend_across_processes(tmp_path, opts):
    """CONTRACT §4.10 names setdefault and extend among the atomic calls: one
    process wins setdefault and all see its value; each extend lands whole
    (its two items next to each other) and none is lost."""
    store = tmp_path / "db.json"
    n, procs = 150, 4
    workers = [Worker(tmp_path, "setdefault_extend", store, opts, str(n), f"w{j}") for j in range(procs)]
    results = _run_group(workers)
    assert len(set(results)) == 1, f"setdefault returned different winners: {results}"
    with LogKV(str(store)) as db:
        assert db["winner"] == results[0]
        ext = db["ext"]
    assert len(ext) == 2 * n * procs, f"{len(ext)} items, expected {2 * n * procs}"
    for i in range(0, len(ext), 2):
        assert ext[i].endswith(":a") and ext[i + 1] == ext[i][:-1] + "b", (
            f"an extend was split or interleaved at index {i}: {ext[i:i + 2]}"
        )
    assert sorted(ext) == sorted(f"w{j}:{i}:{s}" for j in range(procs) for i in range(n) for s in "ab")


@pytest.mark.parametrize("opts", DURABILITIES)
def test_pop_each_key_exactly_once(tmp_path, opts):
    store = tmp_path / "db.json"
    keys = [f"job:{i}" for i in range(400)]
    with LogKV(str(store), **opts) as db:
        db.mset({k: f"payload-{k}" for k in keys})
    workers = [
        Worker(tmp_path, "pop_keys", store, opts, json.dumps(keys), str(seed)) for seed in range(4)
    ]
    results = _run_group(workers)
    seen: dict[str, int] = {}
    for got in results:
        for k, v in got.items():
            assert v == f"payload-{k}"
            seen[k] = seen.get(k, 0) + 1
    twice = [k for k, c in seen.items() if c > 1]
    assert not twice, f"popped by more than one process: {twice[:10]}"
    assert sorted(seen) == sorted(keys), f"never popped: {sorted(set(keys) - set(seen))[:10]}"
    with LogKV(str(store)) as db:
        assert [k for k in db if k.startswith("job:")] == []


@pytest.mark.parametrize("opts", DURABILITIES)
def test_pop_from_shared_list_each_value_once(tmp_path, opts):
    """A work queue held in one list, popped by read-modify-write transactions."""
    store = tmp_path / "db.json"
    values = list(range(250))
    with LogKV(str(store), **opts) as db:
        db["queue"] = values
    workers = [Worker(tmp_path, "pop_list", store, opts) for _ in range(4)]
    results = _run_group(workers)
    popped = [v for got in results for v in got]
    assert sorted(popped) == values, (
        f"{len(popped)} pops for {len(values)} values; duplicates: "
        f"{sorted({v for v in popped if popped.count(v) > 1})[:10]}"
    )
    for got in results:
        assert got == sorted(got), "one process pops the queue in order"
    with LogKV(str(store)) as db:
        assert db["queue"] == []


@pytest.mark.parametrize("opts", DURABILITIES)
def test_transaction_read_modify_write_no_lost_updates(tmp_path, opts):
    """Two processes read a and b and write a+1, b+1 in transactions while two
    others incr a and b: every update counts."""
    store = tmp_path / "db.json"
    n = 150
    workers = [Worker(tmp_path, "tx_rmw", store, opts, str(n)) for _ in range(2)]
    workers += [Worker(tmp_path, "incr_ab", store, opts, str(n)) for _ in range(2)]
    _run_group(workers)
    with LogKV(str(store)) as db:
        assert db["tx_log"] == 2 * n
        assert db["a"] == 4 * n, f"a={db['a']}: lost updates"
        assert db["b"] == 4 * n, f"b={db['b']}: lost updates"


# --------------------------------------------------------------------------- visibility


@pytest.mark.parametrize("opts", DURABILITIES)
@pytest.mark.parametrize("reader", ["writer-process", "read-only-process"])
def test_write_returned_in_a_is_seen_by_read_started_after_in_b(tmp_path, opts, reader):
    store = tmp_path / "db.json"
    a = Worker(tmp_path, "serve", store, opts)
    a.ready()
    a.call("set", "seed", 0)
    b_opts = dict(opts, read_only=True) if reader == "read-only-process" else opts
    b = Worker(tmp_path, "serve", store, b_opts)
    try:
        b.ready()
        for i in range(40):
            a.call("set", "k", i)
            assert b.call("get", "k") == i, f"round {i}: B did not see A's returned set"
            v = a.call("incr", "n")
            assert b.call("get", "n") == v
            a.call("append", "lst", i)
            assert b.call("get", "lst") == list(range(i + 1))
            with_tx = {f"tx:{i}:{s}": i for s in "xyz"}
            a.call("mset", with_tx)
            assert b.call("mget", list(with_tx)) == [i, i, i]
            if i % 7 == 3:
                a.call("delitem", "k")
                assert b.call("contains", "k") is False
                assert b.call("get", "k", "gone") == "gone"
            if i == 20:
                a.call("update", {"u1": 1, "u2": 2})
                assert b.call("mget", ["u1", "u2"]) == [1, 2]
                a.call("clear")
                assert b.call("len") == 0 and b.call("get", "u1") is None
                a.call("set", "seed", 0)
                a.call("set", "lst", list(range(i + 1)))
            if i % 10 == 9:
                a.call("compact")  # B must follow the log's rotation
                a.call("set", "after-compact", i)
                assert b.call("get", "after-compact") == i
        if reader == "writer-process":
            # the other direction, too
            for i in range(10):
                b.call("set", "from-b", i)
                assert a.call("get", "from-b") == i
        expected = a.call("state")
        assert b.call("state") == expected
        a.finish("CLOSED")  # close() compacts; B keeps reading correctly
        assert b.call("state") == expected
        b.finish("CLOSED")
    finally:
        a.kill()
        b.kill()


def test_read_only_opened_before_the_store_exists_sees_writes(tmp_path):
    store = tmp_path / "db.json"
    ro = LogKV(str(store), read_only=True)
    try:
        assert os.listdir(tmp_path) == []
        assert len(ro) == 0 and ro.get("k") is None
        a = Worker(tmp_path, "serve", store, {})
        try:
            a.ready()
            for i in range(15):
                a.call("set", "k", i)
                assert ro.get("k") == i, f"round {i}: read-only store did not see the write"
                a.call("incr", "n")
                assert ro["n"] == i + 1
                if i == 7:
                    a.call("compact")
            a.finish("CLOSED")
        finally:
            a.kill()
        assert ro.get("k") == 14 and ro["n"] == 15
        with pytest.raises(ReadOnlyError):
            ro.set("x", 1)
    finally:
        ro.close()


def test_read_only_in_process_sees_another_process_writes(tmp_path):
    store = tmp_path / "db.json"
    a = Worker(tmp_path, "serve", store, {"durability": "os"})
    try:
        a.ready()
        a.call("set", "k", -1)
        ro = LogKV(str(store), read_only=True)
        try:
            assert ro["k"] == -1
            for i in range(30):
                a.call("mset", {"k": i, f"x{i}": [i]})
                assert ro["k"] == i and ro[f"x{i}"] == [i]
                if i % 10 == 4:
                    a.call("compact")
            assert dict(ro.items()) == a.call("state")
        finally:
            ro.close()
        a.finish("CLOSED")
    finally:
        a.kill()


# --------------------------------------------------------------------------- read_only creates nothing


def test_read_only_on_missing_path_creates_no_file(tmp_path):
    store = tmp_path / "db.json"
    db = LogKV(str(store), read_only=True)
    try:
        assert len(db) == 0
        assert db.get("x") is None and "x" not in db
        assert list(db) == [] and db.keys() == []
        for attempt in (lambda: db.set("x", 1), lambda: db.incr("n"),
                        lambda: db.__setitem__("y", 2), lambda: db.mset({"z": 1})):
            with pytest.raises(ReadOnlyError):
                attempt()
        assert "x" not in db
    finally:
        db.close()
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
    # nor the folder it would live in
    db = LogKV(str(tmp_path / "no" / "such" / "db.json"), read_only=True)
    try:
        assert len(db) == 0
    finally:
        db.close()
    assert os.listdir(tmp_path) == []


def test_read_only_on_a_foreign_file_creates_no_file(tmp_path):
    store = tmp_path / "db.json"
    raw = orjson.dumps({"version": 1, "updated_at": "2026-01-01T00:00:00Z",
                        "data": {"a": {"value": 1, "expires_at": None}}})
    store.write_bytes(raw)
    db = LogKV(str(store), read_only=True)
    try:
        assert dict(db.items()) == {"a": 1}
        with pytest.raises(ReadOnlyError):
            db["b"] = 2
    finally:
        db.close()
    assert os.listdir(tmp_path) == ["db.json"]
    assert store.read_bytes() == raw


def test_a_store_behind_a_compaction_catches_up_from_its_old_log(tmp_path):
    """Another store compacted past records this one had not read yet: it reads
    them from the old log file it still holds open instead of reloading the
    whole snapshot (which would stall it for a large store)."""
    p = str(tmp_path / "db.json")
    a = LogKV(p, compact_on_close=False)
    b = LogKV(p, compact_on_close=False)
    try:
        b["seen"] = 0  # b is current up to here
        for i in range(50):
            a[f"k{i}"] = i  # b has not read these
        a.compact()  # the new log starts after all of them

        def no_reload() -> None:
            raise AssertionError("reloaded the whole snapshot")

        b._e._reload_all = no_reload
        assert b["k49"] == 49
        assert len(b) == 51
        b["after"] = 1
        assert a["after"] == 1
    finally:
        a.close()
        b.close()
    with LogKV(p) as c:
        assert len(c) == 52


DIE_AFTER_WRITE = r"""
import os, sys
from logkv import LogKV
from logkv._lock import W_END

db = LogKV(sys.argv[1], compact_on_close=False)

class DieAtPublication:
    # The shared page, except that publishing the new log end kills the
    # process: the record is in the file, its publication never happens.
    def __init__(self, words):
        self.words = words
    def __getitem__(self, i):
        return self.words[i]
    def __setitem__(self, i, value):
        if i == W_END:
            os._exit(9)
        self.words[i] = value

db._e._words = DieAtPublication(db._e._words)
db["x"] = 1
"""


def test_a_writer_killed_between_its_write_and_its_publication(tmp_path):
    """The next writer must not append after the unpublished record with the
    same sequence number (the log would then not reopen)."""
    p = str(tmp_path / "db.json")
    a = LogKV(p, compact_on_close=False)
    a["before"] = 0
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", DIE_AFTER_WRITE, p], env=env, timeout=60)
    assert done.returncode == 9
    a["y"] = 2
    assert a["y"] == 2
    a.close()
    with LogKV(p) as b:
        state = b.copy()
    assert state.get("y") == 2 and state.get("before") == 0
    assert state.get("x", 1) == 1  # unacknowledged: may be there or not, but whole
