"""Input is checked when it is given, and memory holds what the disk holds.

* A key that cannot be written (a lone surrogate has no UTF-8 form) is
  refused by the call that gives it, in every mode: manual mode, inside a
  transaction, on a namespace view, through ``AsyncLogKV`` and the aiodict
  adapter, with the error autosave mode gives. A failed flush keeps the
  pending changes; a later flush (or close) saves them.
* With ``durability="always"``, one thread's bad input fails that thread's
  call alone, never the other calls of its group-commit batch.
* A value nested deeper than a snapshot can hold (``MAX_DEPTH`` levels: the
  snapshot puts every value 3 levels down and orjson writes at most 254) is
  refused when it is set; a file another program wrote with such a value
  opens, and compaction refuses it with an error naming the file and the key,
  leaving the files as they were.
* A value reads back the same before and after a reopen: logkv keeps in
  memory what the disk holds (a set is held as a list, a date as its ISO
  text, an int-keyed dict with str keys, ...), and with a deserializer the
  deserializer's result.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import enum
import errno
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logkv import AsyncLogKV, ClosedError, CorruptionError, LogKV, StorageError
from logkv._fs import FileSystem
from logkv._record import MAX_DEPTH
from logkv.compat import aiodict

REPO = pathlib.Path(__file__).resolve().parents[2]
BAD = "bad\ud800key"  # a lone surrogate: no UTF-8 (and so no JSON text) form

pytestmark = pytest.mark.file_engine


def nest(depth: int, leaf: Any = 1) -> Any:
    v = leaf
    for _ in range(depth):
        v = [v]
    return v


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same type at every level (1 == 1.0 == True is not enough)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def state_in_new_process(path: str) -> dict[str, Any]:
    """The store as a fresh process reads it."""
    code = ("import json, sys; from logkv import LogKV\n"
            "db = LogKV(sys.argv[1], read_only=True)\n"
            "print(json.dumps(dict(db.items())))\n"
            "db.close()\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True,
                         text=True, check=True, timeout=60)
    return json.loads(out.stdout)


# =========================================================================== unwritable keys

def _key_error_of(call: Callable[[], Any]) -> tuple[type, str]:
    """The error's type and message (the key named without a view's prefix)."""
    with pytest.raises(TypeError) as info:
        call()
    return type(info.value), str(info.value).replace("v:", "")


WRITES: list[tuple[str, Callable[[Any], Any]]] = [
    ("setitem", lambda s: s.__setitem__(BAD, 1)),
    ("set", lambda s: s.set(BAD, 1)),
    ("set_ttl", lambda s: s.set(BAD, 1, ttl=100)),
    ("mset", lambda s: s.mset({"fine": 1, BAD: 2})),
    ("update", lambda s: s.update({"fine": 1, BAD: 2})),
    ("setdefault", lambda s: s.setdefault(BAD, 1)),
    ("incr", lambda s: s.incr(BAD)),
    ("append", lambda s: s.append(BAD, 1)),
    ("extend", lambda s: s.extend(BAD, [1])),
]


@pytest.mark.parametrize("autosave", [True, False], ids=["autosave", "manual"])
@pytest.mark.parametrize("name,write", WRITES, ids=[n for n, _ in WRITES])
def test_an_unwritable_key_is_refused_when_given(store_path, autosave, name, write):
    db = LogKV(store_path, autosave=autosave)
    try:
        db["a"] = 1
        db.flush()
        db["pending"] = 2
        error = _key_error_of(lambda: write(db))
        assert "surrogate" in error[1]
        assert db.copy() == {"a": 1, "pending": 2}
        # the same refusal on a view, inside a transaction, and in a view's transaction
        view = db.namespace("v")
        assert _key_error_of(lambda: write(view)) == error
        with db.transaction():
            db["in_tx"] = 3
            assert _key_error_of(lambda: write(db)) == error
        with view.transaction():
            assert _key_error_of(lambda: write(view)) == error
        db.flush()
    finally:
        db.close()
    # a new process reads every change: nothing was lost to the bad key
    assert state_in_new_process(store_path) == {"a": 1, "pending": 2, "in_tx": 3}


def test_manual_mode_the_bad_key_never_blocks_flush_or_close(store_path):
    # The case that lost everything: the key was accepted in manual mode, and
    # from then on flush() and close() raised, deleting it did not help, and
    # the reopened store was empty.
    db = LogKV(store_path, autosave=False)
    db["a"] = 1
    db.mset({"b": 2, "c": 3})
    with pytest.raises(TypeError):
        db[BAD] = 1
    with pytest.raises(KeyError):
        del db[BAD]
    db.incr("n", 5)
    db.flush()
    db["after"] = 4
    db.close()
    assert state_in_new_process(store_path) == {"a": 1, "b": 2, "c": 3, "n": 5, "after": 4}


def test_autosave_and_manual_mode_give_the_same_error(tmp_path):
    errors = []
    for autosave in (True, False):
        db = LogKV(str(tmp_path / f"{autosave}.json"), autosave=autosave)
        try:
            errors.append(_key_error_of(lambda db=db: db.set(BAD, 1)))
        finally:
            db.close()
    assert errors[0] == errors[1]


def test_a_key_read_from_a_foreign_file_that_cannot_be_written(store_path):
    # A file the stdlib json wrote with ensure_ascii (the default) may hold a
    # lone surrogate as an escape; it opens (through the exact parser). In
    # manual mode deleting that key must fail at the call, not at every later
    # flush with all the other pending changes.
    with open(store_path, "w") as f:
        f.write(json.dumps({BAD: 1, "a": 1, "big": 2 ** 70}))
    db = LogKV(store_path, autosave=False, compact_on_close=False)
    try:
        assert db[BAD] == 1
        db["b"] = 2
        with pytest.raises(TypeError):
            del db[BAD]
        db["c"] = 3
        db.flush()
    finally:
        db.close()
    db = LogKV(store_path, compact_on_close=False)
    try:
        assert db.copy() == {BAD: 1, "a": 1, "big": 2 ** 70, "b": 2, "c": 3}
    finally:
        db.close()


def test_async_and_aiodict_refuse_the_key_when_given(tmp_path):
    async def main() -> None:
        db = AsyncLogKV(str(tmp_path / "async.json"), autosave=False)
        await db.set("a", 1)
        for call in (lambda: db.set(BAD, 1), lambda: db.mset({BAD: 1}),
                     lambda: db.incr(BAD), lambda: db.namespace("v").set(BAD, 1)):
            with pytest.raises(TypeError):
                await call()
        await db.close()

    asyncio.run(main())
    assert state_in_new_process(str(tmp_path / "async.json")) == {"a": 1}

    path = str(tmp_path / "aiodict.json")
    db = aiodict(path, autosave=False)
    db["a"] = 1
    with pytest.raises(TypeError):
        db[BAD] = 1
    db.close()
    assert state_in_new_process(path) == {"a": 1}


class FailingWrites(FileSystem):
    """The log's write(2) fails with ENOSPC while ``failing`` is set."""

    real_sync = False

    def __init__(self) -> None:
        self.failing = False

    def write(self, fd: int, data: bytes) -> None:
        if self.failing:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().write(fd, data)

    def fsync(self, fd: int) -> None:
        pass

    def fdatasync(self, fd: int) -> None:
        pass

    def fsync_dir(self, path: str) -> None:
        pass


def test_a_failed_flush_keeps_the_pending_changes_and_close_keeps_the_store(store_path):
    fs = FailingWrites()
    db = LogKV(store_path, autosave=False, compact_on_close=False, _fs=fs)
    db["a"] = 1
    db.incr("n", 2)
    fs.failing = True
    with pytest.raises(StorageError):
        db.flush()
    with pytest.raises(StorageError):
        db.close()  # its flush failed: the store stays open with the changes
    assert db.copy() == {"a": 1, "n": 2} and db.stats()["dirty"]
    db["b"] = 3
    fs.failing = False
    db.close()
    with pytest.raises(ClosedError):
        db["c"] = 4
    assert state_in_new_process(store_path) == {"a": 1, "n": 2, "b": 3}


# =========================================================================== group commit

THREADS = 8


class HoldFirstSync(FileSystem):
    """Holds the first fdatasync of the log until ``release()`` is true, so
    that other threads' calls gather in the next batch (no timing asserted:
    the hold waits for the queue; the deadline only keeps a broken run from
    hanging)."""

    def __init__(self) -> None:
        self.release: Callable[[], bool] = lambda: True
        self.armed = False
        self.holding = threading.Event()
        self._held = False

    def fdatasync(self, fd: int) -> None:
        if self.armed and not self._held:
            self._held = True
            self.holding.set()
            deadline = time.monotonic() + 20
            while not self.release() and time.monotonic() < deadline:
                time.sleep(0.001)
        super().fdatasync(fd)


def _batch_keys(db: LogKV) -> list[str]:
    batch = db._e._open_batch
    return [item.key for item in batch.items] if batch is not None else []


def _run_behind_a_held_sync(db: LogKV, fs: HoldFirstSync, bad: Callable[[], Any],
                            bad_key: str) -> tuple[Any, list[Any]]:
    """One valid set is held in its fdatasync; meanwhile ``bad`` and seven
    valid sets are called from their own threads. The held sync is let go
    once the seven wait in the next batch and ``bad`` has either joined that
    batch too or already returned. Returns ``bad``'s outcome and the others'."""
    results: dict[int, Any] = {}
    bad_done = threading.Event()

    def call(i: int, fn: Callable[[], Any]) -> None:
        try:
            results[i] = fn()
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            results[i] = exc
        if i == -1:
            bad_done.set()

    def ready() -> bool:
        keys = _batch_keys(db)
        valid = sum(1 for k in keys if k != bad_key)
        return valid == THREADS - 1 and (bad_key in keys or bad_done.is_set())

    fs.release = ready
    fs.armed = True
    lead = threading.Thread(target=call, args=(0, lambda: db.set("k0", 0)))
    lead.start()
    assert fs.holding.wait(60)
    threads = [threading.Thread(target=call, args=(-1, bad))]
    threads += [threading.Thread(target=call, args=(i, lambda i=i: db.set(f"k{i}", i)))
                for i in range(1, THREADS)]
    for t in threads:
        t.start()
    for t in [lead, *threads]:
        t.join(60)
    assert not any(t.is_alive() for t in [lead, *threads]), "a call hung"
    return results[-1], [results[i] for i in range(THREADS)]


def test_a_bad_key_fails_only_its_own_call_in_a_batch(store_path):
    fs = HoldFirstSync()
    db = LogKV(store_path, durability="always", auto_compact=False, compact_on_close=False,
               _fs=fs)
    try:
        bad, others = _run_behind_a_held_sync(db, fs, lambda: db.set(BAD, 1), BAD)
        assert isinstance(bad, TypeError)
        assert others == [None] * THREADS  # every valid call returned
        assert db.copy() == {f"k{i}": i for i in range(THREADS)}
    finally:
        db.close()
    assert state_in_new_process(store_path) == {f"k{i}": i for i in range(THREADS)}


def test_the_batch_isolates_a_change_it_cannot_encode(store_path):
    # Below the front ends: a change whose record cannot be built (its key
    # was never checked) fails its own call, and the batch writes the rest.
    fs = HoldFirstSync()
    db = LogKV(store_path, durability="always", auto_compact=False, compact_on_close=False,
               _fs=fs)
    e = db._e
    try:
        bad, others = _run_behind_a_held_sync(
            db, fs, lambda: e.after_write(e.write_one(BAD, ("s", 1, b"1", False, None))), BAD)
        assert isinstance(bad, TypeError)
        assert others == [None] * THREADS
    finally:
        db.close()
    assert state_in_new_process(store_path) == {f"k{i}": i for i in range(THREADS)}


def test_many_threads_with_one_bad_writer(store_path):
    # The reported case, on the real disk: eight threads of valid sets and one
    # of unencodable keys, all with durability="always".
    db = LogKV(store_path, durability="always", auto_compact=False, compact_on_close=False)
    errors: list[BaseException] = []
    refused = []
    per_thread = 40

    def good(t: int) -> None:
        for i in range(per_thread):
            try:
                db.set(f"t{t}:{i}", i)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    def evil() -> None:
        for _ in range(per_thread):
            try:
                db.set(BAD, 1)
            except TypeError:
                refused.append(1)

    threads = [threading.Thread(target=good, args=(t,)) for t in range(THREADS)]
    threads.append(threading.Thread(target=evil))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert errors == []
        assert len(refused) == per_thread
        assert len(db) == THREADS * per_thread
    finally:
        db.close()
    assert len(state_in_new_process(store_path)) == THREADS * per_thread


# =========================================================================== nesting depth

DEEP_WRITES: list[tuple[str, Callable[[Any, Any], Any]]] = [
    ("set", lambda s, v: s.set("deep", v)),
    ("mset", lambda s, v: s.mset({"fine": 1, "deep": v})),
    ("setdefault", lambda s, v: s.setdefault("deep", v)),
    ("append", lambda s, v: s.append("deep", v)),
]


@pytest.mark.parametrize("autosave", [True, False], ids=["autosave", "manual"])
@pytest.mark.parametrize("name,write", DEEP_WRITES, ids=[n for n, _ in DEEP_WRITES])
def test_a_value_too_deep_for_a_snapshot_is_refused_when_set(store_path, autosave, name, write):
    db = LogKV(store_path, autosave=autosave)
    try:
        db["a"] = 1
        for depth in (MAX_DEPTH + 1, 254, 255, 400):
            # (append nests the value one level down in its list)
            value = nest(depth - 1 if name == "append" else depth)
            for target in (db, db.namespace("v")):
                with pytest.raises(TypeError, match=str(MAX_DEPTH)):
                    write(target, value)
                with pytest.raises(TypeError, match=str(MAX_DEPTH)), db.transaction():
                    write(target, value)
        assert db.copy() == {"a": 1}
        db["ok"] = nest(MAX_DEPTH)
        db.close()  # flushes and compacts: the deepest value allowed fits the snapshot
        assert "logkv" in json.loads(pathlib.Path(store_path).read_bytes())
    finally:
        db.close()
    db = LogKV(store_path)
    try:
        assert db.copy() == {"a": 1, "ok": nest(MAX_DEPTH)}
    finally:
        db.close()


def test_a_deep_value_from_a_serializer_is_refused(store_path):
    class Deep:
        pass

    db = LogKV(store_path, serializer=lambda v: nest(MAX_DEPTH + 1))
    try:
        with pytest.raises(TypeError, match=str(MAX_DEPTH)):
            db["x"] = Deep()
        assert db.copy() == {}
    finally:
        db.close()


def test_a_foreign_file_too_deep_to_compact_is_named_and_kept(store_path, caplog):
    # aiodict (stdlib json) writes values nested deeper than orjson can.
    deep = nest(400)
    doc = {"version": 1, "updated_at": "2026-01-01T00:00:00Z",
           "data": {"ok": {"value": 1, "expires_at": None},
                    "too_deep": {"value": deep, "expires_at": None}}}
    with open(store_path, "w") as f:
        json.dump(doc, f)
    raw = pathlib.Path(store_path).read_bytes()
    db = LogKV(store_path)
    assert db["too_deep"] == deep  # it opens and reads
    db["new"] = 2
    with pytest.raises(CorruptionError) as info:
        db.compact()
    assert info.value.path == os.path.abspath(store_path)
    assert store_path in str(info.value) and "'too_deep'" in str(info.value)
    assert str(MAX_DEPTH) in str(info.value)
    assert pathlib.Path(store_path).read_bytes() == raw
    db.close()  # the compaction on close fails the same way: logged, and the store closes
    with pytest.raises(ClosedError):
        db["x"] = 1
    assert any("too_deep" in r.getMessage() for r in caplog.records)
    assert pathlib.Path(store_path).read_bytes() == raw
    # nothing was lost; once the value is replaced, compaction works again
    db = LogKV(store_path)
    try:
        assert db.copy() == {"ok": 1, "too_deep": deep, "new": 2}
        db["too_deep"] = nest(3)
        db.compact()
    finally:
        db.close()
    assert json.loads(pathlib.Path(store_path).read_bytes())["data"]["too_deep"]["value"] == nest(3)


# =========================================================================== read back = reopen

class Colour(enum.IntEnum):
    RED = 3


class Mood(str, enum.Enum):
    HAPPY = "happy"


class MyStr(str):
    pass


class MyInt(int):
    pass


class MyFloat(float):
    pass


class MyDict(dict):
    pass


class MyList(list):
    pass


Pair = collections.namedtuple("Pair", "x y")


@dataclasses.dataclass
class User:
    name: str
    tags: tuple


# Every conversion logkv makes without a serializer, and what a reopen gives.
CONVERSIONS: list[tuple[str, Any, Any]] = [
    ("set", {1, 2}, [1, 2]),
    ("frozenset", frozenset({"a"}), ["a"]),
    ("tuple", (1, "two", (3, 4)), [1, "two", [3, 4]]),
    ("namedtuple", Pair(1, 2), [1, 2]),
    ("date", dt.date(2026, 1, 2), "2026-01-02"),
    ("datetime", dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05"),
    ("time", dt.time(3, 4, 5), "03:04:05"),
    ("int_keys", {1: "a"}, {"1": "a"}),
    ("mixed_keys", {1: "a", 2.5: "b", None: "d"}, {"1": "a", "2.5": "b", "null": "d"}),
    ("nested_keys", {"s": [{3: (dt.date(2026, 1, 2),)}]}, {"s": [{"3": ["2026-01-02"]}]}),
    ("path", pathlib.PurePosixPath("/tmp/x"), "/tmp/x"),
    ("dataclass", User("ali", ("a",)), {"name": "ali", "tags": ["a"]}),
    ("uuid", uuid.UUID(int=5), "00000000-0000-0000-0000-000000000005"),
    ("intenum", Colour.RED, 3),
    ("strenum", Mood.HAPPY, "happy"),
    ("mystr", MyStr("x"), "x"),
    ("myint", MyInt(5), 5),
    ("myfloat", MyFloat(1.5), 1.5),
    ("mydict", MyDict(a=(1,)), {"a": [1]}),
    ("mylist", MyList([(1,)]), [[1]]),
    ("in_list", [1, {2, 3}, (4,)], [1, [2, 3], [4]]),
    ("big_int_tuple", (2 ** 70, 1), [2 ** 70, 1]),
    ("deeper_than_the_scan", nest(120, (1,)), nest(121)),
]


def _reopened(path: str, **kwargs: Any) -> dict[str, Any]:
    db = LogKV(path, **kwargs)
    try:
        return db.copy()
    finally:
        db.close()


@pytest.mark.parametrize("name,value,expected", CONVERSIONS, ids=[c[0] for c in CONVERSIONS])
def test_every_conversion_reads_back_as_a_reopen_does(tmp_path, name, value, expected):
    path = str(tmp_path / "db.json")
    db = LogKV(path)
    try:
        db["set"] = value
        db.mset({"mset": value})
        db.update(update=value)
        assert same(db.setdefault("setdefault", value), expected)
        assert same(db.append("append", value), [expected])
        assert same(db.extend("extend", [value]), [expected])
        with db.transaction():
            db["tx"] = value
            assert same(db["tx"], expected)  # inside the block too
        db.namespace("v")["view"] = value
        before = db.copy()
        for key in ("set", "mset", "update", "setdefault", "tx", "v:view"):
            assert same(before[key], expected), key
        assert same(db.get("set"), expected) and same(db.values()[0], expected)
    finally:
        db.close()
    after = _reopened(path)
    assert same(after, before)  # compacted on close: the snapshot
    assert same(_reopened(path, compact_on_close=False), before)


@pytest.mark.parametrize("name,value,expected", CONVERSIONS[:8], ids=[c[0] for c in CONVERSIONS[:8]])
def test_conversions_in_manual_mode_async_and_aiodict(tmp_path, name, value, expected):
    path = str(tmp_path / "manual.json")
    db = LogKV(path, autosave=False, compact_on_close=False)
    db["k"] = value
    assert same(db["k"], expected)
    db.close()
    assert same(_reopened(path)["k"], expected)

    apath = str(tmp_path / "async.json")

    async def main() -> Any:
        adb = AsyncLogKV(apath, durability="always")
        await adb.set("k", value)
        got = await adb.get("k")
        await adb.close()
        return got

    assert same(asyncio.run(main()), expected)
    assert same(_reopened(apath)["k"], expected)

    cpath = str(tmp_path / "aiodict.json")
    cdb = aiodict(cpath)
    cdb["k"] = value
    assert same(cdb["k"], expected)
    cdb.close()
    assert same(aiodict(cpath)["k"], expected)


def test_a_value_with_a_log_only_record_reads_back_the_same(store_path, tmp_path):
    # The log (not the snapshot) is what a crash leaves: read it without a close.
    db = LogKV(store_path, durability="always", compact_on_close=False)
    try:
        db["k"] = {1: (dt.date(2026, 1, 2), {3})}
        before = db["k"]
        copy = str(tmp_path / "copy.json")
        with open(store_path + ".wal", "rb") as f, open(copy + ".wal", "wb") as g:
            g.write(f.read())
        assert same(_reopened(copy)["k"], before)
        assert same(before, {"1": ["2026-01-02", [3]]})
    finally:
        db.close()


def test_plain_values_stay_the_callers_objects(store_path):
    # Plain JSON pays nothing: it is held as it is (and so is not copied).
    db = LogKV(store_path)
    try:
        obj = {"a": [1, 2.5, None, True, {"b": "c"}]}
        db["p"] = obj
        assert db["p"] is obj
        lst = [1, [2]]
        db.mset({"l": lst})
        assert db["l"] is lst
    finally:
        db.close()


def _ser(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"__type__": "datetime", "value": value.isoformat()}
    if isinstance(value, (set, frozenset)):
        return {"__type__": "set", "value": sorted(value)}
    raise TypeError(type(value).__name__)


def _deser(value: Any) -> Any:
    if isinstance(value, dict) and value.get("__type__") == "datetime":
        return dt.datetime.fromisoformat(value["value"])
    if isinstance(value, dict) and value.get("__type__") == "set":
        return set(value["value"])
    if isinstance(value, list):
        return tuple(value)  # a deserializer may change plain values too
    return value


@pytest.mark.parametrize("value", [dt.datetime(2026, 1, 2, 3, 4), {1, 2}, [1, 2], "text", 5,
                                   (1, 2), {"a": 1}])
def test_with_a_deserializer_memory_holds_what_a_reopen_gives(store_path, value):
    db = LogKV(store_path, serializer=_ser, deserializer=_deser)
    try:
        db["k"] = value
        before = db["k"]
    finally:
        db.close()
    db = LogKV(store_path, serializer=_ser, deserializer=_deser)
    try:
        assert same(db["k"], before)
    finally:
        db.close()


def test_a_serializer_result_is_held_as_json(store_path):
    # Without a deserializer, what the serializer returned is held as JSON.
    db = LogKV(store_path, serializer=lambda v: {"t": (1, 2)})
    try:
        db["k"] = object()
        assert same(db["k"], {"t": [1, 2]})
    finally:
        db.close()
    assert same(_reopened(store_path)["k"], {"t": [1, 2]})


_scalars = (st.none() | st.booleans() | st.integers(-2 ** 80, 2 ** 80)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
            | st.dates() | st.datetimes() | st.uuids())
_values = st.recursive(
    _scalars,
    lambda inner: (st.lists(inner, max_size=4) | st.tuples(inner, inner)
                   | st.frozensets(st.integers(-5, 5), max_size=3)
                   | st.dictionaries(st.text(max_size=4), inner, max_size=3)
                   | st.dictionaries(st.integers(-5, 5), inner, max_size=3)),
    max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(_values, min_size=1, max_size=5))
def test_random_values_read_back_the_same_before_and_after_reopen(tmp_path_factory, values):
    path = str(tmp_path_factory.mktemp("h") / "db.json")
    db = LogKV(path, durability="os", auto_compact=False)
    try:
        for i, v in enumerate(values):
            db[f"k{i}"] = v
        before = db.copy()
    finally:
        db.close()
    assert same(_reopened(path, compact_on_close=False), before)
