"""Files on disk: aiodict's snapshot format, pickleDB-style plain objects, empty
and broken files, exact big integers, indent/sort_keys, converters and the
serializer/deserializer hooks (CONTRACT §2, §3, §3.2)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import pathlib
import re
import shutil
import time
import uuid

import pytest

from logkv import CorruptionError, LogKV


def crash_copy(path, tmp_path):
    dest_dir = tmp_path / ("copy-" + uuid.uuid4().hex[:8])
    dest_dir.mkdir()
    base = os.path.basename(path)
    for suffix in ("", ".wal"):
        if os.path.exists(path + suffix):
            shutil.copyfile(path + suffix, dest_dir / (base + suffix))
    return str(dest_dir / base)


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def contents(path, **kwargs):
    db = LogKV(path, **kwargs)
    try:
        return db.copy()
    finally:
        db.close()


# ---------------------------------------------------------------------------
# the snapshot after a clean close
# ---------------------------------------------------------------------------


def test_snapshot_is_aiodict_format_after_close(store_path):
    db = LogKV(store_path)
    db["a"] = 1
    db["s"] = "text ü"
    db["obj"] = {"x": [1, 2, None, True]}
    db.set("t", 2, ttl=1000)
    db["gone"] = 0
    del db["gone"]
    db.close()

    snap = read_json(store_path)
    assert isinstance(snap, dict)
    assert snap["version"] == 1
    extra = set(snap) - {"version", "updated_at", "data"}
    assert len(extra) <= 1  # logkv may add one bookkeeping member
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", snap["updated_at"])
    when = dt.datetime.fromisoformat(snap["updated_at"][:-1]).replace(tzinfo=dt.timezone.utc)
    assert abs(when.timestamp() - time.time()) < 3600
    data = snap["data"]
    assert set(data) == {"a", "s", "obj", "t"}
    assert data["a"] == {"value": 1, "expires_at": None}
    assert data["s"] == {"value": "text ü", "expires_at": None}
    assert data["obj"] == {"value": {"x": [1, 2, None, True]}, "expires_at": None}
    assert data["t"]["value"] == 2
    assert isinstance(data["t"]["expires_at"], (int, float))
    assert time.time() + 900 < data["t"]["expires_at"] <= time.time() + 1000
    assert set(data["t"]) == {"value", "expires_at"}


def test_snapshot_alone_holds_everything_after_close(store_path, tmp_path):
    db = LogKV(store_path)
    for i in range(50):
        db[f"k{i}"] = i
    db.incr("k0", 100)
    db.append("l", 1)
    db.close()
    only = tmp_path / "only"
    only.mkdir()
    shutil.copyfile(store_path, only / "db.json")
    got = contents(str(only / "db.json"))
    expected = {f"k{i}": i for i in range(50)}
    expected["k0"] = 100
    expected["l"] = [1]
    assert got == expected
    assert {k: v["value"] for k, v in read_json(store_path)["data"].items()} == expected


def test_expired_keys_not_written(store_path):
    db = LogKV(store_path)
    db.set("t", 1, ttl=0.05)
    db["k"] = 2
    time.sleep(0.2)
    db.close()
    assert set(read_json(store_path)["data"]) == {"k"}


def test_compact_on_close_false_still_reopens(store_path):
    db = LogKV(store_path, compact_on_close=False)
    db["a"] = 1
    db["b"] = [1]
    db.close()
    assert contents(store_path) == {"a": 1, "b": [1]}


# ---------------------------------------------------------------------------
# files written by others
# ---------------------------------------------------------------------------


def test_aiodict_file_opens(store_path):
    future = time.time() + 1000
    write(store_path, json.dumps({
        "version": 1,
        "updated_at": "2026-01-01T00:00:00Z",
        "data": {
            "a": {"value": 1, "expires_at": None},
            "b": {"value": {"value": 5}, "expires_at": None},
            "t": {"value": "x", "expires_at": future},
            "old": {"value": "y", "expires_at": 1000.0},
        },
    }))
    db = LogKV(store_path)
    try:
        assert db.copy() == {"a": 1, "b": {"value": 5}, "t": "x"}
        assert db.ttl("a") is None
        assert 900 < db.ttl("t") <= 1000
        assert "old" not in db
    finally:
        db.close()


def test_aiodict_file_with_indent_and_no_newline_variants(store_path):
    write(store_path, json.dumps({"version": 1, "updated_at": "2026-01-01T00:00:00Z",
                                  "data": {"k": {"value": [1, 2], "expires_at": None}}}, indent=2) + "\n")
    assert contents(store_path) == {"k": [1, 2]}


def test_plain_object_file_members_taken_as_is(store_path):
    original = {
        "a": 1,
        "b": {"value": 1},
        "c": {"value": 2, "expires_at": None},
        "d": {"value": 3, "expires_at": 1.0},
        "e": [1, "x"],
        "f": None,
        "version": 7,
    }
    write(store_path, json.dumps(original))
    db = LogKV(store_path)
    try:
        assert db.copy() == original
        for k in original:
            assert db.ttl(k) is None
        db["added"] = 1  # forces a new snapshot at close
    finally:
        db.close()
    # after a close the members are still exactly the same values
    assert contents(store_path) == dict(original, added=1)
    snap = read_json(store_path)
    assert snap["data"]["b"] == {"value": {"value": 1}, "expires_at": None}
    assert snap["data"]["d"] == {"value": {"value": 3, "expires_at": 1.0}, "expires_at": None}


def test_plain_object_file_untouched_until_changed_is_readable(store_path):
    write(store_path, '{"x": 1, "y": {"value": 2}}')
    db = LogKV(store_path)
    try:
        db["z"] = 3
        assert db.copy() == {"x": 1, "y": {"value": 2}, "z": 3}
    finally:
        db.close()
    assert contents(store_path) == {"x": 1, "y": {"value": 2}, "z": 3}


def test_object_with_data_but_no_version_is_plain(store_path):
    write(store_path, '{"data": {"a": {"value": 1, "expires_at": null}}}')
    assert contents(store_path) == {"data": {"a": {"value": 1, "expires_at": None}}}


def test_object_with_version_but_no_data_is_plain(store_path):
    write(store_path, '{"version": 1, "x": 2}')
    assert contents(store_path) == {"version": 1, "x": 2}


@pytest.mark.parametrize("text", ["", "   ", "\n", " \n\t "])
def test_empty_file_is_empty_store(store_path, text):
    write(store_path, text)
    db = LogKV(store_path)
    try:
        assert db.copy() == {}
        assert len(db) == 0
        db["a"] = 1
    finally:
        db.close()
    assert contents(store_path) == {"a": 1}
    assert read_json(store_path)["data"] == {"a": {"value": 1, "expires_at": None}}


def test_missing_file_is_empty_store(store_path):
    assert not os.path.exists(store_path)
    assert contents(store_path) == {}


@pytest.mark.parametrize(
    "text",
    ["{not json", '{"a": 1', "hello", '{"a": 1} trailing', "[1, 2, 3]", "42", '"string"', "null"],
)
def test_unreadable_snapshot_raises_and_is_left_alone(store_path, text):
    write(store_path, text)
    before = open(store_path, "rb").read()
    with pytest.raises(CorruptionError) as ei:
        LogKV(store_path)
    err = ei.value
    assert isinstance(err, ValueError)
    assert err.path is not None and os.path.basename(str(err.path)) == "db.json"
    assert "db.json" in str(err)
    assert open(store_path, "rb").read() == before
    # and a second attempt fails the same way: logkv never starts empty over it
    with pytest.raises(CorruptionError):
        LogKV(store_path)
    assert open(store_path, "rb").read() == before


def test_non_utf8_snapshot_raises(store_path):
    with open(store_path, "wb") as f:
        f.write(b'{"a": "\xff\xfe"}')
    before = open(store_path, "rb").read()
    with pytest.raises(CorruptionError):
        LogKV(store_path)
    assert open(store_path, "rb").read() == before


# ---------------------------------------------------------------------------
# big integers
# ---------------------------------------------------------------------------

BIG = [2**63, 2**64, 2**64 + 1, -(2**63) - 1, -(2**64) - 7, 2**70 + 3, 10**30 + 1, 123456789012345678901234567890]


def test_big_ints_round_trip_after_close(store_path):
    db = LogKV(store_path)
    for i, v in enumerate(BIG):
        db[f"b{i}"] = v
    db["nested"] = {"x": [BIG[0], {"y": BIG[-1]}], "small": 1, "f": 1.5}
    db.close()
    got = contents(store_path)
    for i, v in enumerate(BIG):
        assert got[f"b{i}"] == v
        assert type(got[f"b{i}"]) is int
    assert got["nested"] == {"x": [BIG[0], {"y": BIG[-1]}], "small": 1, "f": 1.5}
    # any JSON tool that keeps integers exactly (Python's json) reads them too
    snap = read_json(store_path)
    assert snap["data"]["b5"]["value"] == 2**70 + 3


def test_big_ints_round_trip_through_the_log(store_path, tmp_path):
    db = LogKV(store_path)
    try:
        for i, v in enumerate(BIG):
            db[f"b{i}"] = v
        db.incr("c", 2**65)
        db.append("l", 2**66)
        copy_path = crash_copy(store_path, tmp_path)
    finally:
        db.close()
    got = contents(copy_path)
    for i, v in enumerate(BIG):
        assert got[f"b{i}"] == v and type(got[f"b{i}"]) is int
    assert got["c"] == 2**65
    assert got["l"] == [2**66]


def test_big_ints_in_foreign_files(store_path, tmp_path):
    write(store_path, '{"big": 123456789012345678901234567890, "neg": -99999999999999999999999, "f": 1.25}')
    got = contents(store_path)
    assert got == {"big": 123456789012345678901234567890, "neg": -99999999999999999999999, "f": 1.25}
    assert type(got["big"]) is int
    p2 = str(tmp_path / "aio.json")
    write(p2, '{"version":1,"updated_at":"2026-01-01T00:00:00Z","data":{"big":{"value":18446744073709551617,"expires_at":null}}}')
    got = contents(p2)
    assert got == {"big": 18446744073709551617}
    assert type(got["big"]) is int


# ---------------------------------------------------------------------------
# indent / sort_keys
# ---------------------------------------------------------------------------


def _data(db):
    db["b"] = {"z": 1, "y": {"q": 2, "p": 3}}
    db["a"] = [1, {"d": 1, "c": 2}]
    db["c"] = "x"


@pytest.mark.parametrize("indent", [1, 2, 3, 4, 8])
def test_indent_honoured(store_path, indent):
    db = LogKV(store_path, indent=indent)
    _data(db)
    db.close()
    text = open(store_path, encoding="utf-8").read()
    lines = text.splitlines()
    assert len(lines) > 5
    assert lines[0] == "{"
    # second line is a top-level member indented by exactly `indent` spaces
    assert lines[1].startswith(" " * indent + '"')
    assert not lines[1].startswith(" " * (indent + 1))
    # every indented line uses a multiple of `indent`
    for line in lines[1:]:
        n = len(line) - len(line.lstrip(" "))
        assert n % indent == 0, (indent, line)
    deepest = max(len(line) - len(line.lstrip(" ")) for line in lines)
    assert deepest >= 4 * indent  # data -> key -> value -> nested object
    assert json.loads(text)["data"]["b"]["value"] == {"z": 1, "y": {"q": 2, "p": 3}}
    assert contents(store_path) == {"b": {"z": 1, "y": {"q": 2, "p": 3}}, "a": [1, {"d": 1, "c": 2}], "c": "x"}


def test_indent_none_is_compact(store_path):
    db = LogKV(store_path)
    _data(db)
    db.close()
    text = open(store_path, encoding="utf-8").read()
    assert "\n" not in text.rstrip("\n")
    assert json.loads(text)["data"]["c"]["value"] == "x"


def _ordered(text):
    return json.loads(text, object_pairs_hook=lambda pairs: pairs)


def _assert_sorted_everywhere(node):
    if isinstance(node, list) and node and all(isinstance(p, tuple) and len(p) == 2 for p in node):
        keys = [k for k, _ in node]
        assert keys == sorted(keys), keys
        for _, v in node:
            _assert_sorted_everywhere(v)
    elif isinstance(node, list):
        for v in node:
            _assert_sorted_everywhere(v)


@pytest.mark.parametrize("indent", [None, 4])
def test_sort_keys_honoured(store_path, indent):
    db = LogKV(store_path, sort_keys=True, indent=indent)
    _data(db)
    db.close()
    text = open(store_path, encoding="utf-8").read()
    tree = _ordered(text)
    _assert_sorted_everywhere(tree)
    data = dict(tree)["data"]
    assert [k for k, _ in data] == ["a", "b", "c"]
    b_value = dict(dict(data)["b"])["value"]
    assert [k for k, _ in b_value] == ["y", "z"]
    assert contents(store_path) == {"b": {"z": 1, "y": {"q": 2, "p": 3}}, "a": [1, {"d": 1, "c": 2}], "c": "x"}


def test_without_sort_keys_insertion_order_kept(store_path):
    db = LogKV(store_path)
    _data(db)
    db.close()
    tree = _ordered(open(store_path, encoding="utf-8").read())
    data = dict(tree)["data"]
    assert [k for k, _ in data] == ["b", "a", "c"]
    b_value = dict(dict(data)["b"])["value"]
    assert [k for k, _ in b_value] == ["z", "y"]


# ---------------------------------------------------------------------------
# converters (no serializer) and hooks
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class User:
    name: str
    age: int
    tags: list


def test_default_converters(store_path, tmp_path):
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456)
    aware = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    day = dt.date(2024, 5, 6)
    clock = dt.time(7, 8, 9)
    user = User("Ali", 30, ["a"])
    path = pathlib.Path("/tmp/some/file.txt")
    values = {
        "dt": when,
        "aware": aware,
        "date": day,
        "time": clock,
        "user": user,
        "path": path,
        "set": {3},
        "tuple": (1, "two", (3, 4)),
        "nested_keys": {1: "one", 2.5: "x", "s": {3: [day]}},
    }
    expected = {
        "dt": when.isoformat(),
        "aware": aware.isoformat(),
        "date": day.isoformat(),
        "time": clock.isoformat(),
        "user": {"name": "Ali", "age": 30, "tags": ["a"]},
        "path": str(path),
        "set": [3],
        "tuple": [1, "two", [3, 4]],
        "nested_keys": {"1": "one", "2.5": "x", "s": {"3": [day.isoformat()]}},
    }
    db = LogKV(store_path)
    try:
        for k, v in values.items():
            db[k] = v
        # memory holds what a reopen reads back, not the caller's objects
        for k in values:
            assert db[k] == expected[k]
        logged = contents(crash_copy(store_path, tmp_path))
        assert logged == expected
    finally:
        db.close()
    assert contents(store_path) == expected
    assert {k: v["value"] for k, v in read_json(store_path)["data"].items()} == expected


def test_multi_element_set_becomes_list(store_path):
    db = LogKV(store_path)
    db["s"] = {1, 2, 3}
    db.close()
    got = contents(store_path)["s"]
    assert isinstance(got, list)
    assert sorted(got) == [1, 2, 3]


def _dt_serializer(value):
    if isinstance(value, dt.datetime):
        return {"__type__": "datetime", "value": value.isoformat()}
    raise TypeError


def _dt_deserializer(value):
    if isinstance(value, dict) and value.get("__type__") == "datetime":
        return dt.datetime.fromisoformat(value["value"])
    return value


def test_readme_datetime_example_round_trips(store_path, tmp_path):
    created = dt.datetime(2026, 4, 5, 10, 11, 12, 345678)
    store = LogKV(store_path, serializer=_dt_serializer, deserializer=_dt_deserializer)
    store["created_at"] = created
    store["plain"] = {"n": 1}
    store.flush()
    # the log replays through the deserializer too
    copy_path = crash_copy(store_path, tmp_path)
    got = contents(copy_path, serializer=_dt_serializer, deserializer=_dt_deserializer)
    assert got == {"created_at": created, "plain": {"n": 1}}
    assert type(got["created_at"]) is dt.datetime
    store.close()

    snap = read_json(store_path)
    assert snap["data"]["created_at"]["value"] == {"__type__": "datetime", "value": created.isoformat()}
    store = LogKV(store_path, serializer=_dt_serializer, deserializer=_dt_deserializer)
    try:
        assert store["created_at"] == created
        assert type(store["created_at"]) is dt.datetime
        assert store["plain"] == {"n": 1}
    finally:
        store.close()


def test_serializer_called_for_date_time_and_dataclass(store_path):
    seen = []

    def ser(value):
        seen.append(type(value))
        return {"__t__": type(value).__name__, "s": str(value)}

    db = LogKV(store_path, serializer=ser)
    db["d"] = dt.date(2024, 1, 2)
    db["t"] = dt.time(1, 2, 3)
    db["u"] = User("x", 1, [])
    db.close()
    assert dt.date in seen and dt.time in seen and User in seen
    got = contents(store_path)
    assert got["d"] == {"__t__": "date", "s": "2024-01-02"}
    assert got["t"] == {"__t__": "time", "s": "01:02:03"}
    assert got["u"]["__t__"] == "User"


def test_deserializer_applied_to_every_value_read_from_disk(store_path, tmp_path):
    def deser(value):
        return ("D", value)

    db = LogKV(store_path)
    db["a"] = 1
    db["b"] = [2]
    db.compact()
    db["c"] = "three"  # in the log only
    copy_path = crash_copy(store_path, tmp_path)
    db.close()
    got = contents(copy_path, deserializer=deser)
    assert got == {"a": ("D", 1), "b": ("D", [2]), "c": ("D", "three")}
    # values set through the API are passed through it too: memory holds
    # what a reopen reads back
    db = LogKV(store_path, deserializer=deser)
    try:
        assert db["a"] == ("D", 1)
        db["new"] = 5
        assert db["new"] == ("D", 5)
    finally:
        db.close()


def test_encoding_option(tmp_path):
    path = str(tmp_path / "db.json")
    db = LogKV(path, encoding="utf-8")
    db["k"] = "ünïcödé ✓"
    db.close()
    assert read_json(path)["data"]["k"]["value"] == "ünïcödé ✓"
    assert contents(path) == {"k": "ünïcödé ✓"}


def test_backup_created_on_compaction(store_path):
    db = LogKV(store_path, create_backup=True)
    try:
        db["a"] = 1
        db.compact()
        db["a"] = 2
        db.compact()
        bak = store_path + ".bak"
        assert os.path.exists(bak)
        # the previous snapshot
        assert read_json(bak)["data"]["a"]["value"] == 1
        assert read_json(store_path)["data"]["a"]["value"] == 2
    finally:
        db.close()
    assert read_json(store_path)["data"]["a"]["value"] == 2


def test_no_backup_when_disabled(store_path):
    db = LogKV(store_path, create_backup=False)
    try:
        db["a"] = 1
        db.compact()
        db["a"] = 2
        db.compact()
    finally:
        db.close()
    assert not os.path.exists(store_path + ".bak")


def test_cleanup_expired_on_load_false_still_hides_expired(store_path):
    write(store_path, json.dumps({"version": 1, "updated_at": "2026-01-01T00:00:00Z",
                                  "data": {"old": {"value": 1, "expires_at": 1000.0},
                                           "k": {"value": 2, "expires_at": None}}}))
    db = LogKV(store_path, cleanup_expired_on_load=False)
    try:
        # expired keys are invisible to every read whatever the option says
        assert db.copy() == {"k": 2}
        assert "old" not in db
    finally:
        db.close()
    assert contents(store_path) == {"k": 2}


@pytest.mark.parametrize(
    "text",
    [
        '{"weird_key": NaN, "b": 1}',
        '{"version":1,"updated_at":"2026-01-01T00:00:00Z","data":{"weird_key":{"value":Infinity,"expires_at":null}}}',
        '{"weird_key": [1, -Infinity]}',
    ],
)
def test_foreign_non_finite_values_kept_or_refused_naming_the_key(store_path, text):
    # CONTRACT §3.2: opens with those values intact, or fails with an error
    # naming the key; the file is never rewritten with them changed.
    write(store_path, text)
    before = open(store_path, "rb").read()
    try:
        db = LogKV(store_path)
    except Exception as e:  # noqa: BLE001 - either outcome is allowed, checked below
        assert "weird_key" in str(e)
        assert open(store_path, "rb").read() == before
        return
    try:
        v = db["weird_key"]
        flat = v if isinstance(v, list) else [v]
        assert any(isinstance(x, float) and not math.isfinite(x) for x in flat)
    finally:
        db.close()


def test_updated_at_changes_and_unknown_member_ignored(store_path):
    write(store_path, json.dumps({"version": 1, "updated_at": "2000-01-01T00:00:00Z",
                                  "data": {"a": {"value": 1, "expires_at": None}},
                                  "written_by": "someone else"}))
    db = LogKV(store_path)
    try:
        assert db.copy() == {"a": 1}
        db["b"] = 2
    finally:
        db.close()
    snap = read_json(store_path)
    assert snap["updated_at"] != "2000-01-01T00:00:00Z"
    assert {k: v["value"] for k, v in snap["data"].items()} == {"a": 1, "b": 2}


# ---------------------------------------------------------------------------
# subclasses of built-in types (CONTRACT §3: the serializer is called for them;
# without one, logkv converts what aiodict's json.dumps converts)
# ---------------------------------------------------------------------------

import collections  # noqa: E402
import enum  # noqa: E402


class MyInt(int):
    pass


class MyStr(str):
    pass


class MyFloat(float):
    pass


class MyDict(dict):
    pass


class MyList(list):
    pass


class Colour(enum.IntEnum):
    RED = 3


class Mood(str, enum.Enum):
    HAPPY = "happy"


class Plain(enum.Enum):
    ONE = 1


Pair = collections.namedtuple("Pair", "x y")

SUBCLASS_VALUES = [
    ("myint", MyInt(5)),
    ("mystr", MyStr("x")),
    ("myfloat", MyFloat(1.5)),
    ("mydict", MyDict(a=1)),
    ("mylist", MyList([1])),
    ("intenum", Colour.RED),
    ("strenum", Mood.HAPPY),
]


@pytest.mark.parametrize("name,value", SUBCLASS_VALUES, ids=[n for n, _ in SUBCLASS_VALUES])
def test_serializer_called_for_subclasses_of_builtins(store_path, name, value):
    seen = []

    def ser(v):
        seen.append(v)
        return {"__sub__": type(v).__name__}

    db = LogKV(store_path, serializer=ser)
    db["v"] = value
    assert db["v"] == {"__sub__": type(value).__name__}  # memory holds what a reopen reads
    db.close()
    assert any(type(s) is type(value) for s in seen), seen
    assert contents(store_path) == {"v": {"__sub__": type(value).__name__}}


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("myint", MyInt(5), 5),
        ("mystr", MyStr("x"), "x"),
        ("myfloat", MyFloat(1.5), 1.5),
        ("mydict", MyDict(a=1), {"a": 1}),
        ("mylist", MyList([1]), [1]),
        ("namedtuple", Pair(1, 2), [1, 2]),
        ("intenum", Colour.RED, 3),
        ("strenum", Mood.HAPPY, "happy"),
        ("nested", {"p": Pair(MyFloat(0.5), [MyInt(1)])}, {"p": [0.5, [1]]}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_builtin_subclasses_without_serializer_stored_like_aiodict(store_path, name, value, expected):
    db = LogKV(store_path)
    db["v"] = value
    db.close()
    got = contents(store_path)["v"]
    assert got == expected
    assert type(got) is type(expected)


def test_plain_enum_without_serializer_raises_type_error(store_path):
    # aiodict's json.dumps refuses a plain Enum member; CONTRACT §3: "raises
    # TypeError for anything else".
    db = LogKV(store_path)
    try:
        with pytest.raises(TypeError):
            db["v"] = Plain.ONE
        assert "v" not in db
    finally:
        db.close()


def test_log_lines_are_json_one_per_mutation(store_path):
    db = LogKV(store_path)
    try:
        db["a"] = 1
        wal = store_path + ".wal"
        with open(wal, "rb") as f:
            n0 = f.read().count(b"\n")
        db["b"] = {"x": [1, 2]}
        db.mset({"c": 1, "d": 2})
        with db.transaction():
            db["e"] = 1
            db["f"] = 2
        db.set("g", 2**70)
        with open(wal, "rb") as f:
            raw = f.read()
    finally:
        db.close()
    assert raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    assert len(lines) == n0 + 4
    for line in lines:
        obj = json.loads(line)  # each line is a JSON object on its own (jq reads it)
        assert isinstance(obj, dict)
        assert len(obj) >= 2  # at least a sequence number and a checksum besides the body


AWKWARD = {
    "": "empty key",
    "a\nb": "line1\nline2\r\n",
    'quo"te': 'back\\slash "quoted"',
    "uni ✓ \u2028 \u2029": "ünï \u2028 \x00 \x1f",
    "tab\tkey": {"nested\nkey": ["\n", "\t", "\u0000"]},
    "long": "x" * 100_000,
    "emoji 😀": "😀" * 10,
}


def test_awkward_keys_and_values_round_trip(store_path, tmp_path):
    db = LogKV(store_path)
    try:
        for k, v in AWKWARD.items():
            db[k] = v
        assert contents(crash_copy(store_path, tmp_path)) == AWKWARD
    finally:
        db.close()
    assert contents(store_path) == AWKWARD
    assert {k: v["value"] for k, v in read_json(store_path)["data"].items()} == AWKWARD


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_failed_open_leaves_nothing_open(tmp_path):
    path = str(tmp_path / "db.json")
    write(path, "{broken")
    for _ in range(3):
        with pytest.raises(CorruptionError):
            LogKV(path)
    leftover = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(tmp_path)):
            leftover.append(target)
    with open("/proc/self/maps") as f:
        leftover.extend(line for line in f if str(tmp_path) in line)
    assert leftover == []


def test_deserializer_applied_to_values_written_by_another_handle(store_path):
    # values another handle (process) wrote reach this one from the log: the
    # deserializer applies to them too.
    h0 = LogKV(store_path, serializer=_dt_serializer, deserializer=_dt_deserializer)
    h1 = LogKV(store_path, serializer=_dt_serializer, deserializer=_dt_deserializer)
    when = dt.datetime(2024, 1, 1, 1, 1, 1)
    try:
        h0["t"] = when
        assert h1["t"] == when and type(h1["t"]) is dt.datetime
        with h0.transaction():
            h0["u"] = when
        assert h1["u"] == when
        h0.compact()
        h0["w"] = when
        assert h1.copy() == {"t": when, "u": when, "w": when}
    finally:
        h0.close()
        h1.close()


def test_indent_and_sort_keys_with_big_ints(store_path):
    db = LogKV(store_path, indent=3, sort_keys=True)
    db["b"] = {"z": 2**70, "y": 1}
    db["a"] = 1
    db.close()
    text = open(store_path, encoding="utf-8").read()
    lines = text.splitlines()
    assert lines[1].startswith('   "') and not lines[1].startswith('    ')
    _assert_sorted_everywhere(_ordered(text))
    assert json.loads(text)["data"]["b"]["value"] == {"y": 1, "z": 2**70}
    assert contents(store_path) == {"a": 1, "b": {"y": 1, "z": 2**70}}
