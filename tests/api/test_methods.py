"""Every public method of LogKV: results, error types, TTL, persistence.

The reference is aiodict 1.0.1 (see shared/reference/peers-behaviour.md) with the
stricter rules of CONTRACT §3.2 where the two differ.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid

import pytest

import logkv
from logkv import ClosedError, LogKV, ReadOnlyError

SHORT_TTL = 0.1
PAST_SHORT_TTL = 0.3  # sleep long enough for SHORT_TTL keys to be gone


@pytest.fixture
def db(engine):
    store = engine.open()
    yield store
    store.close()


def reopen(store, path, **kwargs):
    store.close()
    return LogKV(path, **kwargs)


def crash_copy(path, tmp_path):
    """Copy the store's files as they are now (no close), like a kill -9 would leave them."""
    dest_dir = tmp_path / ("copy-" + uuid.uuid4().hex[:8])
    dest_dir.mkdir()
    base = os.path.basename(path)
    for suffix in ("", ".wal"):
        src = path + suffix
        if os.path.exists(src):
            shutil.copyfile(src, dest_dir / (base + suffix))
    return str(dest_dir / base)


# ---------------------------------------------------------------------------
# [] get / set / del, in, len, iteration, key conversion
# ---------------------------------------------------------------------------


def test_is_a_mutable_mapping(db):
    from collections.abc import MutableMapping

    assert isinstance(db, MutableMapping)


def test_getitem_setitem_delitem(db):
    db["a"] = 1
    db["b"] = {"x": [1, 2, {"y": None}]}
    assert db["a"] == 1
    assert db["b"] == {"x": [1, 2, {"y": None}]}
    del db["a"]
    assert "a" not in db
    with pytest.raises(KeyError):
        db["a"]
    with pytest.raises(KeyError):
        del db["a"]
    with pytest.raises(KeyError):
        db["never"]


def test_overwrite(db):
    db["a"] = 1
    db["a"] = "two"
    assert db["a"] == "two"
    assert len(db) == 1


def test_contains_len_iter(db, engine):
    assert len(db) == 0
    assert list(db) == []
    db["b"] = 1
    db["a"] = 2
    db["c"] = 3
    assert len(db) == 3
    assert "a" in db and "b" in db and "c" in db
    assert "d" not in db
    if not engine.is_redis:  # Redis keeps no order
        assert list(db) == ["b", "a", "c"]  # insertion order, like a dict
    assert sorted(iter(db)) == ["a", "b", "c"]


def test_keys_converted_with_str(db):
    db[1] = "one"
    db.set(2.5, "two and a half")
    assert db["1"] == "one"
    assert db[1] == "one"
    assert db.get(1) == "one"
    assert 1 in db
    assert db["2.5"] == "two and a half"
    assert sorted(db.keys()) == ["1", "2.5"]
    assert all(isinstance(k, str) for k in db)
    del db[1]
    assert "1" not in db


def test_none_and_falsy_values_are_values(db):
    db["n"] = None
    db["z"] = 0
    db["e"] = ""
    db["f"] = False
    assert "n" in db
    assert db["n"] is None
    assert db.get("n", "default") is None
    assert db.get("z", "default") == 0
    assert db.get("e", "default") == ""
    assert db.get("f", "default") is False
    assert len(db) == 4


# ---------------------------------------------------------------------------
# set / get
# ---------------------------------------------------------------------------


def test_set_returns_none_and_get_default(db):
    assert db.set("a", 1) is None
    assert db.get("a") == 1
    assert db.get("missing") is None
    assert db.get("missing", 42) == 42


@pytest.mark.parametrize("bad_ttl", [0, -1, -0.5, 0.0])
def test_set_ttl_must_be_positive(db, bad_ttl):
    db["a"] = 1
    with pytest.raises(ValueError, match="ttl must be greater than 0"):
        db.set("a", 2, ttl=bad_ttl)
    with pytest.raises(ValueError):
        db.set("new", 2, ttl=bad_ttl)
    assert db["a"] == 1
    assert "new" not in db


def test_set_without_ttl_clears_ttl(db):
    db.set("a", 1, ttl=100)
    assert db.ttl("a") is not None
    db.set("a", 2)
    assert db.ttl("a") is None
    db.set("b", 1, ttl=100)
    db["b"] = 3
    assert db.ttl("b") is None


# ---------------------------------------------------------------------------
# pop / setdefault / update / clear / exists / copy / keys / values / items
# ---------------------------------------------------------------------------


def test_pop(db):
    db["a"] = [1, 2]
    assert db.pop("a") == [1, 2]
    assert "a" not in db
    with pytest.raises(KeyError):
        db.pop("a")
    assert db.pop("a", "dflt") == "dflt"
    assert db.pop("a", None) is None
    assert len(db) == 0


def test_setdefault(db):
    assert db.setdefault("a", 5) == 5
    assert db["a"] == 5
    assert db.ttl("a") is None
    assert db.setdefault("a", 6) == 5
    assert db["a"] == 5
    assert db.setdefault("n") is None
    assert "n" in db
    assert db["n"] is None


def test_setdefault_keeps_existing_ttl(db):
    db.set("a", 1, ttl=100)
    assert db.setdefault("a", 2) == 1
    assert 90 < db.ttl("a") <= 100


def test_update_forms(db):
    assert db.update({"a": 1, "b": 2}) is None
    db.update([("c", 3), ("d", 4)])
    db.update(e=5, f=6)
    db.update({"g": 7}, h=8)
    assert db.copy() == {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7, "h": 8}


def test_update_clears_ttl_of_updated_keys(db):
    db.set("a", 0, ttl=100)
    db.set("b", 0, ttl=100)
    db.update({"a": 1})
    assert db["a"] == 1
    assert db.ttl("a") is None
    assert 90 < db.ttl("b") <= 100


def test_update_converts_keys(db):
    db.update({1: "x"})
    assert db["1"] == "x"


def test_clear(db):
    db.update({"a": 1, "b": 2})
    db.set("c", 3, ttl=100)
    assert db.clear() is None
    assert len(db) == 0
    assert db.copy() == {}
    assert db.stats()["keys"] == 0
    assert db.stats()["ttl_keys"] == 0


def test_exists(db):
    assert db.exists("a") is False
    db["a"] = None
    assert db.exists("a") is True
    del db["a"]
    assert db.exists("a") is False


def test_copy_is_a_plain_dict(db):
    inner = {"x": 1}
    db["a"] = inner
    db["b"] = 2
    c = db.copy()
    assert type(c) is dict
    assert c == {"a": {"x": 1}, "b": 2}
    c["b"] = 99
    c["new"] = 1
    assert db["b"] == 2
    assert "new" not in db


@pytest.mark.file_engine  # RedisKV decodes a new object at every read
def test_copy_is_shallow(db):
    db["a"] = {"x": 1}
    assert db.copy()["a"] is db["a"]


def test_keys_values_items_are_lists(db, engine):
    db["b"] = 1
    db["a"] = 2
    k, v, i = db.keys(), db.values(), db.items()
    assert type(k) is list and type(v) is list and type(i) is list
    assert sorted(i) == [("a", 2), ("b", 1)]
    assert i == list(zip(k, v))  # one order for all three
    if not engine.is_redis:  # Redis keeps no order
        assert k == ["b", "a"]
        assert v == [1, 2]
        assert i == [("b", 1), ("a", 2)]


# ---------------------------------------------------------------------------
# mset / mget
# ---------------------------------------------------------------------------


def test_mset_mget(db):
    assert db.mset({"a": 1, "b": "two", 3: [3]}) is None
    assert db.mget(["a", "b", "3", "missing"]) == [1, "two", [3], None]
    assert db.mget(["missing", "a"], default=0) == [0, 1]
    assert db.mget([]) == []
    assert db.mget(("a",)) == [1]
    assert type(db.mget(["a"])) is list
    assert db.ttl("a") is None


def test_mset_with_ttl(db):
    db["a"] = 0
    db.mset({"a": 1, "b": 2}, ttl=100)
    assert 90 < db.ttl("a") <= 100
    assert 90 < db.ttl("b") <= 100
    db.mset({"a": 5})
    assert db.ttl("a") is None
    assert db["a"] == 5


@pytest.mark.parametrize("bad_ttl", [0, -3])
def test_mset_ttl_must_be_positive(db, bad_ttl):
    db["a"] = 0
    with pytest.raises(ValueError):
        db.mset({"a": 1, "b": 2}, ttl=bad_ttl)
    assert db.copy() == {"a": 0}


# ---------------------------------------------------------------------------
# incr
# ---------------------------------------------------------------------------


def test_incr(db):
    assert db.incr("c") == 1
    assert db.incr("c") == 2
    assert db.incr("c", 5) == 7
    assert db.incr("c", -10) == -3
    assert db["c"] == -3
    assert db.incr("new", 10) == 10
    assert db.ttl("c") is None


def test_incr_floats(db):
    assert db.incr("f", 1.5) == 1.5
    assert db.incr("f", 0.25) == 1.75
    db["i"] = 2
    r = db.incr("i", 0.5)
    assert r == 2.5
    assert isinstance(r, float)
    db["g"] = 1.5
    assert db.incr("g") == 2.5


def test_incr_int_stays_int(db):
    db["i"] = 2
    r = db.incr("i", 3)
    assert r == 5 and type(r) is int


@pytest.mark.parametrize("value", ["abc", "1", True, False, None, [1], {"a": 1}])
def test_incr_non_numeric_raises_type_error(db, value):
    db["x"] = value
    with pytest.raises(TypeError, match="Value for 'x' is not numeric"):
        db.incr("x")
    assert db["x"] == value
    assert type(db["x"]) is type(value)


def test_incr_keeps_ttl_unless_given(db):
    db.set("c", 1, ttl=100)
    assert db.incr("c") == 2
    assert 90 < db.ttl("c") <= 100
    assert db.incr("c", ttl=1000) == 3
    assert 990 < db.ttl("c") <= 1000
    db["d"] = 1
    db.incr("d")
    assert db.ttl("d") is None
    assert db.incr("e", ttl=50) == 1
    assert 40 < db.ttl("e") <= 50


@pytest.mark.parametrize("bad_ttl", [0, -1])
def test_incr_ttl_must_be_positive(db, bad_ttl):
    db["c"] = 1
    with pytest.raises(ValueError):
        db.incr("c", ttl=bad_ttl)
    assert db["c"] == 1
    assert db.ttl("c") is None


def test_incr_big_integers(db):
    db["c"] = 2**64
    assert db.incr("c") == 2**64 + 1
    assert db.incr("c", 2**70) == 2**64 + 1 + 2**70


# ---------------------------------------------------------------------------
# append / extend / remove
# ---------------------------------------------------------------------------


def test_append(db):
    assert db.append("l", 1) == [1]
    assert db.append("l", 2) == [1, 2]
    assert db.append("l", 1) == [1, 2, 1]
    assert db.append("l", 1, unique=True) == [1, 2, 1]
    assert db.append("l", 3, unique=True) == [1, 2, 1, 3]
    assert db["l"] == [1, 2, 1, 3]
    assert db.append("o", {"a": 1}) == [{"a": 1}]
    assert db.append("o", {"a": 1}, unique=True) == [{"a": 1}]


@pytest.mark.parametrize("value", ["abc", 1, {"a": 1}, None])
def test_append_extend_on_non_list_raise_type_error(db, value):
    db["x"] = value
    with pytest.raises(TypeError):
        db.append("x", 1)
    with pytest.raises(TypeError):
        db.extend("x", [1])
    with pytest.raises(TypeError):
        db.remove("x", 1)
    assert db["x"] == value


def test_append_returns_a_new_list(db):
    orig = [1]
    db["l"] = orig
    r = db.append("l", 2)
    assert r == [1, 2]
    assert r is not orig
    assert orig == [1]  # the caller's object is not changed in place
    assert db["l"] == [1, 2]
    r2 = db.append("l", 3)
    assert r2 is not r
    assert r == [1, 2]


def test_extend(db):
    assert db.extend("l", [1, 2]) == [1, 2]
    assert db.extend("l", (3, 4)) == [1, 2, 3, 4]
    assert db.extend("l", []) == [1, 2, 3, 4]
    assert db.extend("l", [2, 5, 5, 6], unique=True) == [1, 2, 3, 4, 5, 6]
    assert db.extend("l", [1, 1]) == [1, 2, 3, 4, 5, 6, 1, 1]
    assert db["l"] == [1, 2, 3, 4, 5, 6, 1, 1]


def test_extend_returns_a_new_list(db):
    orig = [1]
    db["l"] = orig
    r = db.extend("l", [2, 3])
    assert r == [1, 2, 3]
    assert r is not orig
    assert orig == [1]


def test_remove(db):
    db["l"] = [1, 2, 1, 3, 1]
    assert db.remove("l", 1) == [2, 1, 3, 1]
    assert db.remove("l", 1, all_occurrences=True) == [2, 3]
    assert db["l"] == [2, 3]
    with pytest.raises(ValueError):
        db.remove("l", 99)
    assert db["l"] == [2, 3]
    assert db.remove("l", 99, all_occurrences=True) == [2, 3]
    assert db["l"] == [2, 3]
    with pytest.raises(KeyError):
        db.remove("missing", 1)
    assert "missing" not in db


def test_remove_returns_a_new_list(db):
    orig = [1, 2, 3]
    db["l"] = orig
    r = db.remove("l", 2)
    assert r == [1, 3]
    assert r is not orig
    assert orig == [1, 2, 3]
    r2 = db.remove("l", 1, all_occurrences=True)
    assert r2 == [3] and r2 is not r and r == [1, 3]


def test_list_helpers_keep_ttl_unless_given(db):
    db.set("l", [1], ttl=100)
    db.append("l", 2)
    assert 90 < db.ttl("l") <= 100
    db.extend("l", [3])
    assert 90 < db.ttl("l") <= 100
    db.remove("l", 1)
    assert 90 < db.ttl("l") <= 100
    assert db["l"] == [2, 3]
    db.append("l", 4, ttl=1000)
    assert 990 < db.ttl("l") <= 1000
    db.extend("l", [5], ttl=50)
    assert 40 < db.ttl("l") <= 50
    db.append("m", 1)
    assert db.ttl("m") is None
    db.append("n", 1, ttl=60)
    assert 50 < db.ttl("n") <= 60


@pytest.mark.parametrize("bad_ttl", [0, -1])
def test_list_helpers_ttl_must_be_positive(db, bad_ttl):
    db["l"] = [1]
    with pytest.raises(ValueError):
        db.append("l", 2, ttl=bad_ttl)
    with pytest.raises(ValueError):
        db.extend("l", [2], ttl=bad_ttl)
    with pytest.raises(ValueError):
        db.append("new", 2, ttl=bad_ttl)
    assert db.copy() == {"l": [1]}
    assert db.ttl("l") is None


# ---------------------------------------------------------------------------
# expire / ttl / persist / touch / cleanup_expired
# ---------------------------------------------------------------------------


def test_expire_ttl_persist(db):
    db["a"] = 1
    assert db.ttl("a") is None
    assert db.expire("a", 100) is None
    r = db.ttl("a")
    assert isinstance(r, float)
    assert 90 < r <= 100
    assert db.persist("a") is None
    assert db.ttl("a") is None
    assert db["a"] == 1


def test_expire_errors(db):
    db["a"] = 1
    with pytest.raises(ValueError):
        db.expire("a", 0)
    with pytest.raises(ValueError):
        db.expire("a", -1)
    assert db.ttl("a") is None
    with pytest.raises(KeyError):
        db.expire("missing", 10)
    # the ttl is checked first, even for a missing key
    with pytest.raises(ValueError):
        db.expire("missing", 0)
    assert "missing" not in db


def test_ttl_and_persist_missing_key(db):
    with pytest.raises(KeyError):
        db.ttl("missing")
    with pytest.raises(KeyError):
        db.persist("missing")
    assert "missing" not in db


def test_touch(db):
    db["a"] = 1
    assert db.touch("a") is None
    assert db.ttl("a") is None  # touch without ttl keeps "no expiry"
    db.touch("a", 100)
    assert 90 < db.ttl("a") <= 100
    db.touch("a")
    assert 90 < db.ttl("a") <= 100  # keeps the expiry it has
    db.touch("a", ttl=1000)
    assert 990 < db.ttl("a") <= 1000
    assert db["a"] == 1


def test_touch_errors(db):
    with pytest.raises(KeyError):
        db.touch("missing")
    # a missing key is checked before the ttl
    with pytest.raises(KeyError):
        db.touch("missing", 0)
    with pytest.raises(KeyError):
        db.touch("missing", -1)
    db["a"] = 1
    with pytest.raises(ValueError):
        db.touch("a", 0)
    with pytest.raises(ValueError):
        db.touch("a", -2)
    assert db.ttl("a") is None
    assert "missing" not in db


def test_expired_keys_invisible_to_every_read(db):
    db.set("t", "gone", ttl=SHORT_TTL)
    db["keep"] = 1
    assert db["t"] == "gone"
    assert 0 < db.ttl("t") <= SHORT_TTL
    time.sleep(PAST_SHORT_TTL)
    assert db.get("t") is None
    assert db.get("t", "d") == "d"
    assert "t" not in db
    assert db.exists("t") is False
    with pytest.raises(KeyError):
        db["t"]
    with pytest.raises(KeyError):
        db.ttl("t")
    assert len(db) == 1
    assert list(db) == ["keep"]
    assert db.keys() == ["keep"]
    assert db.values() == [1]
    assert db.items() == [("keep", 1)]
    assert db.copy() == {"keep": 1}
    assert db.mget(["t", "keep"], default="d") == ["d", 1]
    assert db.stats()["keys"] == 1
    assert db.stats()["ttl_keys"] == 0


def test_expired_key_is_missing_for_mutators(db):
    for k in ("p", "s", "i", "l", "e", "r", "t", "d", "pe"):
        db.set(k, [7] if k in ("l", "r") else 7, ttl=SHORT_TTL)
    time.sleep(PAST_SHORT_TTL)
    assert db.pop("p", "dflt") == "dflt"
    with pytest.raises(KeyError):
        db.pop("p")
    assert db.setdefault("s", 1) == 1
    assert db.ttl("s") is None
    assert db.incr("i") == 1
    assert db.ttl("i") is None
    assert db.append("l", 1) == [1]
    assert db.ttl("l") is None
    with pytest.raises(KeyError):
        db.expire("e", 10)
    with pytest.raises(KeyError):
        db.remove("r", 7)
    with pytest.raises(KeyError):
        db.touch("t")
    with pytest.raises(KeyError):
        del db["d"]
    with pytest.raises(KeyError):
        db.persist("pe")
    assert db.copy() == {"s": 1, "i": 1, "l": [1]}


@pytest.mark.file_engine
def test_cleanup_expired(db):
    db.set("a", 1, ttl=SHORT_TTL)
    db.set("b", 2, ttl=SHORT_TTL)
    db.set("c", 3, ttl=100)
    db["d"] = 4
    assert db.cleanup_expired() == 0
    time.sleep(PAST_SHORT_TTL)
    assert db.cleanup_expired() == 2
    assert db.cleanup_expired() == 0
    assert db.copy() == {"c": 3, "d": 4}


def test_expire_makes_key_vanish(db):
    db["a"] = 1
    db.expire("a", SHORT_TTL)
    time.sleep(PAST_SHORT_TTL)
    assert "a" not in db
    assert db.get("a") is None


def test_touch_with_ttl_extends(db):
    db.set("a", 1, ttl=SHORT_TTL)
    db.touch("a", 100)
    time.sleep(PAST_SHORT_TTL)
    assert db["a"] == 1


def test_persist_keeps_key(db):
    db.set("a", 1, ttl=SHORT_TTL)
    db.persist("a")
    time.sleep(PAST_SHORT_TTL)
    assert db["a"] == 1


def test_ttl_holds_across_reopen(store_path):
    db = LogKV(store_path)
    db.set("long", 1, ttl=1000)
    db.set("short", 2, ttl=1.0)
    db["plain"] = 3
    db = reopen(db, store_path)
    try:
        assert 990 < db.ttl("long") <= 1000
        assert 0 < db.ttl("short") <= 1.0
        assert db.ttl("plain") is None
        time.sleep(1.2)
        assert "short" not in db
        assert db.copy() == {"long": 1, "plain": 3}
    finally:
        db.close()
    db = LogKV(store_path)
    try:
        assert db.copy() == {"long": 1, "plain": 3}
    finally:
        db.close()


def test_expired_keys_not_loaded_after_reopen(store_path):
    db = LogKV(store_path)
    db.set("short", 2, ttl=SHORT_TTL)
    db["plain"] = 3
    db.close()
    time.sleep(PAST_SHORT_TTL)
    db = LogKV(store_path)
    try:
        assert db.copy() == {"plain": 3}
        assert len(db) == 1
    finally:
        db.close()


# ---------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------

AIODICT_STATS_KEYS = {"keys", "ttl_keys", "autosave", "autosave_delay", "file_path", "file_size_bytes", "dirty"}
LOG_STATS_KEYS = {
    "wal_path",
    "wal_size_bytes",
    "wal_records",
    "durability",
    "compactions",
    "last_compaction",
    "last_compaction_lock_hold_ms",
    "recovered_records",
    "dropped_tail_bytes",
}


def test_stats_keys_and_values(store_path):
    db = LogKV(store_path)
    try:
        s = db.stats()
        assert AIODICT_STATS_KEYS | LOG_STATS_KEYS <= set(s)
        assert s["keys"] == 0
        assert s["ttl_keys"] == 0
        assert s["autosave"] is True
        assert s["autosave_delay"] == 0.35
        assert s["file_path"] == store_path
        assert s["durability"] == "interval"
        assert s["dirty"] is False
        assert s["recovered_records"] == 0
        assert s["dropped_tail_bytes"] == 0
        assert os.path.basename(str(s["wal_path"])) == "db.json.wal"
        db.set("a", 1, ttl=100)
        db.set("b", 2)
        db["c"] = 3
        s = db.stats()
        assert s["keys"] == 3
        assert s["ttl_keys"] == 1
        wal = store_path + ".wal"
        assert s["wal_size_bytes"] == (os.path.getsize(wal) if os.path.exists(wal) else 0)
        assert s["wal_size_bytes"] > 0
        assert s["file_size_bytes"] == (os.path.getsize(store_path) if os.path.exists(store_path) else 0)
    finally:
        db.close()


def test_stats_options_reflected(store_path):
    db = LogKV(store_path, autosave=False, autosave_delay=1.5, durability="always")
    try:
        s = db.stats()
        assert s["autosave"] is False
        assert s["autosave_delay"] == 1.5
        assert s["durability"] == "always"
    finally:
        db.close()


@pytest.mark.file_engine
def test_stats_wal_records_one_per_batch(db):
    before = db.stats()["wal_records"]
    db["a"] = 1
    assert db.stats()["wal_records"] == before + 1
    db.mset({"b": 1, "c": 2, "d": 3})
    assert db.stats()["wal_records"] == before + 2
    db.update({"b": 5, "e": 6})
    assert db.stats()["wal_records"] == before + 3
    with db.transaction():
        db["x"] = 1
        db["y"] = 2
        db.incr("a")
    assert db.stats()["wal_records"] == before + 4
    db.clear()
    assert db.stats()["wal_records"] == before + 5


def test_stats_recovered_records(store_path, tmp_path):
    db = LogKV(store_path)
    try:
        db["a"] = 1
        db["b"] = 2
        db["c"] = 3
        copy_path = crash_copy(store_path, tmp_path)
    finally:
        db.close()
    other = LogKV(copy_path)
    try:
        assert other.copy() == {"a": 1, "b": 2, "c": 3}
        s = other.stats()
        assert s["recovered_records"] == 3
        assert s["dropped_tail_bytes"] == 0
    finally:
        other.close()


def test_stats_dirty_by_durability(store_path, tmp_path):
    db = LogKV(store_path, durability="os")
    try:
        assert db.stats()["dirty"] is False
        db["a"] = 1
        assert db.stats()["dirty"] is True
        db.flush()
        assert db.stats()["dirty"] is False
    finally:
        db.close()
    p2 = str(tmp_path / "always.json")
    db = LogKV(p2, durability="always")
    try:
        db["a"] = 1
        assert db.stats()["dirty"] is False
    finally:
        db.close()


@pytest.mark.file_engine
def test_stats_compactions(db, store_path):
    db["a"] = 1
    before = db.stats()
    db.compact()
    after = db.stats()
    assert after["compactions"] == before["compactions"] + 1
    assert after["last_compaction"] is not None
    assert before["last_compaction_lock_hold_ms"] is None
    assert after["last_compaction_lock_hold_ms"] >= 0
    assert after["keys"] == 1


# ---------------------------------------------------------------------------
# compact / flush / reload / close / context manager
# ---------------------------------------------------------------------------


@pytest.mark.file_engine
def test_compact_folds_log_into_snapshot(db, store_path, tmp_path):
    db["a"] = 1
    db.set("b", [1, 2], ttl=1000)
    db["c"] = "x"
    del db["c"]
    wal_before = db.stats()["wal_size_bytes"]
    assert db.compact() is None
    assert db.stats()["wal_size_bytes"] < wal_before
    assert db.copy() == {"a": 1, "b": [1, 2]}
    with open(store_path, encoding="utf-8") as f:
        snap = json.load(f)
    assert snap["data"]["a"] == {"value": 1, "expires_at": None}
    assert snap["data"]["b"]["value"] == [1, 2]
    assert snap["data"]["b"]["expires_at"] > time.time() + 900
    assert "c" not in snap["data"]
    # the snapshot alone holds the whole state
    only = tmp_path / "only"
    only.mkdir()
    shutil.copyfile(store_path, only / "db.json")
    other = LogKV(str(only / "db.json"))
    try:
        assert other.copy() == {"a": 1, "b": [1, 2]}
    finally:
        other.close()
    # and writes after a compaction keep working
    db["d"] = 4
    assert db["d"] == 4


@pytest.mark.file_engine
def test_compact_drops_expired_keys_from_disk(db, store_path):
    db.set("t", 1, ttl=SHORT_TTL)
    db["k"] = 2
    time.sleep(PAST_SHORT_TTL)
    db.compact()
    with open(store_path, encoding="utf-8") as f:
        snap = json.load(f)
    assert set(snap["data"]) == {"k"}


def test_close_is_idempotent_and_persists(store_path):
    db = LogKV(store_path)
    db["a"] = 1
    assert db.close() is None
    assert db.close() is None
    db2 = LogKV(store_path)
    try:
        assert db2.copy() == {"a": 1}
    finally:
        db2.close()


def test_context_manager(store_path):
    with LogKV(store_path) as db:
        assert isinstance(db, LogKV)
        db["a"] = 1
    with pytest.raises(ClosedError):
        db.get("a")
    with LogKV(store_path) as db2:
        assert db2.copy() == {"a": 1}


def test_context_manager_closes_and_keeps_data_when_block_raises(store_path):
    with pytest.raises(ZeroDivisionError):
        with LogKV(store_path) as db:
            db["a"] = 1
            1 / 0
    with pytest.raises(ClosedError):
        db["b"] = 1
    with LogKV(store_path) as db2:
        assert db2.copy() == {"a": 1}


def test_flush_returns_none_and_makes_durable(store_path, tmp_path):
    db = LogKV(store_path, durability="os")
    try:
        db["a"] = 1
        assert db.flush() is None
        assert db.stats()["dirty"] is False
        copy_path = crash_copy(store_path, tmp_path)
    finally:
        db.close()
    other = LogKV(copy_path)
    try:
        assert other.copy() == {"a": 1}
    finally:
        other.close()


def test_reload_in_autosave_mode_keeps_everything(db):
    db["a"] = 1
    db.set("b", 2, ttl=100)
    assert db.reload() is None
    assert db.copy() == {"a": 1, "b": 2}
    assert 90 < db.ttl("b") <= 100


@pytest.mark.file_engine
def test_file_is_not_locked_for_the_store_lifetime(db, store_path):
    # CONTRACT §3.2: the lock is held only for the span of a write.
    import filelock

    db["a"] = 1
    lock = filelock.FileLock(store_path + ".lock", timeout=2)
    with lock:
        pass
    db["b"] = 2
    assert db.copy() == {"a": 1, "b": 2}


# ---------------------------------------------------------------------------
# closed store
# ---------------------------------------------------------------------------

CLOSED_CALLS = [
    ("getitem", lambda d: d["a"]),
    ("setitem", lambda d: d.__setitem__("a", 2)),
    ("delitem", lambda d: d.__delitem__("a")),
    ("contains", lambda d: "a" in d),
    ("len", lambda d: len(d)),
    ("iter", lambda d: list(iter(d))),
    ("set", lambda d: d.set("a", 2)),
    ("get", lambda d: d.get("a")),
    ("pop", lambda d: d.pop("a", None)),
    ("setdefault", lambda d: d.setdefault("z", 1)),
    ("update", lambda d: d.update({"a": 3})),
    ("clear", lambda d: d.clear()),
    ("exists", lambda d: d.exists("a")),
    ("copy", lambda d: d.copy()),
    ("keys", lambda d: d.keys()),
    ("values", lambda d: d.values()),
    ("items", lambda d: d.items()),
    ("mset", lambda d: d.mset({"a": 1})),
    ("mget", lambda d: d.mget(["a"])),
    ("incr", lambda d: d.incr("n")),
    ("append", lambda d: d.append("l", 1)),
    ("extend", lambda d: d.extend("l", [1])),
    ("remove", lambda d: d.remove("l", 0)),
    ("expire", lambda d: d.expire("a", 10)),
    ("ttl", lambda d: d.ttl("a")),
    ("persist", lambda d: d.persist("a")),
    ("cleanup_expired", lambda d: d.cleanup_expired()),
    ("touch", lambda d: d.touch("a")),
    ("stats", lambda d: d.stats()),
    ("flush", lambda d: d.flush()),
    ("reload", lambda d: d.reload()),
    ("compact", lambda d: d.compact()),
    ("transaction", lambda d: d.transaction().__enter__()),
    ("namespace_use", lambda d: d.namespace("ns").get("a")),
    ("enter", lambda d: d.__enter__()),
]


@pytest.mark.parametrize("name,call", CLOSED_CALLS, ids=[c[0] for c in CLOSED_CALLS])
def test_every_method_but_close_raises_after_close(engine, name, call):
    db = engine.open()
    db["a"] = 1
    db["l"] = [0]
    db.close()
    with pytest.raises(ClosedError) as ei:
        call(db)
    assert isinstance(ei.value, RuntimeError)
    assert isinstance(ei.value, logkv.LogKVError)
    db.close()  # still fine
    db2 = engine.open()
    try:
        assert db2.copy() == {"a": 1, "l": [0]}
    finally:
        db2.close()


def test_view_made_before_close_raises_after_close(engine):
    db = engine.open()
    ns = db.namespace("ns")
    ns["a"] = 1
    db.close()
    with pytest.raises(ClosedError):
        ns["a"]
    with pytest.raises(ClosedError):
        ns["b"] = 2


# ---------------------------------------------------------------------------
# read_only
# ---------------------------------------------------------------------------


def test_read_only_on_missing_store_creates_no_file(tmp_path):
    path = str(tmp_path / "db.json")
    db = LogKV(path, read_only=True)
    try:
        assert len(db) == 0
        assert db.get("a") is None
        with pytest.raises(ReadOnlyError):
            db["a"] = 1
        assert "a" not in db
    finally:
        db.close()
    assert os.listdir(tmp_path) == []


READ_ONLY_MUTATIONS = [
    ("setitem", lambda d: d.__setitem__("a", 2)),
    ("set", lambda d: d.set("new", 2)),
    ("delitem", lambda d: d.__delitem__("a")),
    ("pop", lambda d: d.pop("a")),
    ("setdefault_missing", lambda d: d.setdefault("new", 1)),
    ("update", lambda d: d.update({"a": 3})),
    ("clear", lambda d: d.clear()),
    ("mset", lambda d: d.mset({"a": 1})),
    ("incr", lambda d: d.incr("n")),
    ("append", lambda d: d.append("l", 1)),
    ("extend", lambda d: d.extend("l", [1])),
    ("remove", lambda d: d.remove("l", 0)),
    ("expire", lambda d: d.expire("a", 10)),
    ("persist", lambda d: d.persist("t")),
    ("touch", lambda d: d.touch("a", 10)),
    ("transaction", lambda d: _ro_txn(d)),
    ("namespace_set", lambda d: d.namespace("ns").__setitem__("a", 1)),
]


def _ro_txn(d):
    with d.transaction() as t:
        t["a"] = 5


@pytest.mark.parametrize("name,call", READ_ONLY_MUTATIONS, ids=[c[0] for c in READ_ONLY_MUTATIONS])
def test_read_only_refuses_mutations(store_path, name, call):
    db = LogKV(store_path)
    db["a"] = 1
    db["n"] = 1
    db["l"] = [0]
    db.set("t", 1, ttl=1000)
    db.close()
    files = {p: open(os.path.join(os.path.dirname(store_path), p), "rb").read()
             for p in os.listdir(os.path.dirname(store_path))
             if p in ("db.json", "db.json.wal")}
    ro = LogKV(store_path, read_only=True)
    try:
        assert ro.copy() == {"a": 1, "n": 1, "l": [0], "t": 1}
        with pytest.raises(ReadOnlyError) as ei:
            call(ro)
        assert isinstance(ei.value, logkv.LogKVError)
        assert ro.copy() == {"a": 1, "n": 1, "l": [0], "t": 1}
        assert ro.ttl("a") is None
        assert 900 < ro.ttl("t") <= 1000
    finally:
        ro.close()
    for p, data in files.items():
        with open(os.path.join(os.path.dirname(store_path), p), "rb") as f:
            assert f.read() == data, p


# ---------------------------------------------------------------------------
# persistence of every mutating method across close + reopen, and across a
# crash (files copied without close)
# ---------------------------------------------------------------------------


def _prep(d):
    d["a"] = 1
    d["n"] = 10
    d["l"] = [1, 2, 1]
    d.set("t", "x", ttl=1000)


MUTATIONS = [
    ("setitem", lambda d: d.__setitem__("a", {"new": [1]}), {"a": {"new": [1]}}),
    ("set", lambda d: d.set("b", "bee"), {"b": "bee"}),
    ("set_ttl", lambda d: d.set("b", "bee", ttl=1000), {"b": "bee"}),
    ("delitem", lambda d: d.__delitem__("a"), {"a": None}),
    ("pop", lambda d: d.pop("a"), {"a": None}),
    ("setdefault", lambda d: d.setdefault("s", [5]), {"s": [5]}),
    ("update", lambda d: d.update({"a": 2, "u": 3}, v=4), {"a": 2, "u": 3, "v": 4}),
    ("clear", lambda d: d.clear(), "clear"),
    ("mset", lambda d: d.mset({"m1": 1, "m2": [2]}), {"m1": 1, "m2": [2]}),
    ("mset_ttl", lambda d: d.mset({"m1": 1, "a": 0}, ttl=1000), {"m1": 1, "a": 0}),
    ("incr", lambda d: d.incr("n", 5), {"n": 15}),
    ("incr_new", lambda d: d.incr("c"), {"c": 1}),
    ("incr_float", lambda d: d.incr("n", 0.5), {"n": 10.5}),
    ("append", lambda d: d.append("l", 3), {"l": [1, 2, 1, 3]}),
    ("append_unique", lambda d: d.append("l", 2, unique=True), {}),
    ("extend", lambda d: d.extend("l", [7, 8]), {"l": [1, 2, 1, 7, 8]}),
    ("extend_unique", lambda d: d.extend("l", [2, 9], unique=True), {"l": [1, 2, 1, 9]}),
    ("remove", lambda d: d.remove("l", 1), {"l": [2, 1]}),
    ("remove_all", lambda d: d.remove("l", 1, all_occurrences=True), {"l": [2]}),
    ("expire", lambda d: d.expire("a", 1000), {}),
    ("persist", lambda d: d.persist("t"), {}),
    ("touch", lambda d: d.touch("a", 1000), {}),
    ("transaction", lambda d: _txn(d), {"a": 100, "x": 1, "n": 11}),
    ("namespace", lambda d: d.namespace("ns").set("k", "v"), {"ns:k": "v"}),
]

TTL_AFTER = {
    "set_ttl": {"b": True, "t": True},
    "mset_ttl": {"m1": True, "a": True, "t": True},
    "expire": {"a": True, "t": True},
    "persist": {"t": False},
    "touch": {"a": True, "t": True},
    "clear": {},
}


def _txn(d):
    with d.transaction() as t:
        t["a"] = 100
        t["x"] = 1
        t.incr("n")


def _expected(change):
    base = {"a": 1, "n": 10, "l": [1, 2, 1], "t": "x"}
    if change == "clear":
        return {}
    for k, v in change.items():
        if v is None:
            base.pop(k, None)
        else:
            base[k] = v
    return base


def _check_state(d, name, expected):
    assert d.copy() == expected
    ttls = TTL_AFTER.get(name, {"t": True})
    for k in expected:
        has = ttls.get(k, False)
        r = d.ttl(k)
        if has:
            assert r is not None and 900 < r <= 1000, (k, r)
        else:
            assert r is None, (k, r)


@pytest.mark.parametrize("name,op,change", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mutation_persists_across_close_and_reopen(engine, store_path, name, op, change):
    expected = _expected(change)
    db = engine.open()
    _prep(db)
    op(db)
    _check_state(db, name, expected)
    db = engine.reopen(db)
    try:
        _check_state(db, name, expected)
    finally:
        db.close()
    if engine.is_redis:
        return
    # after a clean close the snapshot holds everything, in aiodict's format
    with open(store_path, encoding="utf-8") as f:
        snap = json.load(f)
    assert {k: v["value"] for k, v in snap["data"].items()} == expected


@pytest.mark.parametrize("name,op,change", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mutation_survives_crash_without_close(store_path, tmp_path, name, op, change):
    expected = _expected(change)
    db = LogKV(store_path)
    try:
        _prep(db)
        op(db)
        copy_path = crash_copy(store_path, tmp_path)
    finally:
        db.close()
    other = LogKV(copy_path)
    try:
        _check_state(other, name, expected)
    finally:
        other.close()


def test_in_place_change_of_a_value_is_not_persisted(store_path):
    lst = [1]
    db = LogKV(store_path)
    db["l"] = lst
    lst.append(2)  # not through the API: not logged
    assert db["l"] is lst
    db.compact()
    db.close()
    db = LogKV(store_path)
    try:
        assert db["l"] == [1]
    finally:
        db.close()


def test_repr_does_not_raise(db):
    db["a"] = 1
    assert isinstance(repr(db), str)


def test_parent_folders_created(tmp_path):
    path = str(tmp_path / "x" / "y" / "db.json")
    db = LogKV(path)
    db["a"] = 1
    db.close()
    db = LogKV(path)
    try:
        assert db["a"] == 1
    finally:
        db.close()


def test_delete_while_iterating(db):
    for i in range(5):
        db[f"k{i}"] = i
    for k in db:
        del db[k]
    assert db.copy() == {}
    for i in range(3):
        db[f"j{i}"] = i
    for k in db.keys():
        db.pop(k)
    assert len(db) == 0


def test_default_path_is_db_json_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = LogKV()
    try:
        db["a"] = 1
        assert db.stats()["file_path"] == "db.json"
    finally:
        db.close()
    assert os.path.exists(tmp_path / "db.json")
    db = LogKV(str(tmp_path / "db.json"))
    try:
        assert db.copy() == {"a": 1}
    finally:
        db.close()


def test_pathlike_path(tmp_path):
    import pathlib

    p = pathlib.Path(tmp_path) / "db.json"
    db = LogKV(p)
    try:
        db["a"] = 1
        assert db.stats()["file_path"] == str(p)
    finally:
        db.close()
    db = LogKV(str(p))
    try:
        assert db["a"] == 1
    finally:
        db.close()


def test_mget_many_keys(db):
    db.mset({f"k{i}": i for i in range(100)})
    db.set("t", "gone", ttl=SHORT_TTL)
    ns = db.namespace("ns")
    ns.mset({f"v{i}": i for i in range(80)})
    time.sleep(PAST_SHORT_TTL)
    keys = [f"k{i}" for i in range(100)] + ["t", "missing"]
    assert db.mget(keys, default="d") == list(range(100)) + ["d", "d"]
    assert ns.mget([f"v{i}" for i in range(80)] + ["k1"], default=-1) == list(range(80)) + [-1]


def test_read_only_sees_writes_of_another_handle(store_path):
    w = LogKV(store_path)
    w["a"] = 1
    ro = LogKV(store_path, read_only=True)
    try:
        assert ro.copy() == {"a": 1}
        w["b"] = 2
        assert ro.get("b") == 2
        w.compact()
        w["c"] = 3
        assert ro.copy() == {"a": 1, "b": 2, "c": 3}
        with w.transaction():
            w["d"] = 4
            w["e"] = 4
        assert ro.mget(["d", "e"]) == [4, 4]
        w.close()
        assert ro.copy() == {"a": 1, "b": 2, "c": 3, "d": 4, "e": 4}
        with pytest.raises(ReadOnlyError):
            ro["z"] = 1
    finally:
        w.close()
        ro.close()


def _open_handles(folder):
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            out.append(target)
    with open("/proc/self/maps") as f:
        out.extend(line for line in f if str(folder) in line)
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_close_releases_descriptors_and_maps(tmp_path):
    # CONTRACT §3.1: close() releases whatever it holds (descriptors, memory maps).
    path = str(tmp_path / "db.json")
    for durability in ("interval", "always", "os"):
        db = LogKV(path, durability=durability)
        db["a"] = 1
        db.compact()
        db["b"] = 2
        with db.transaction():
            db["c"] = 3
        db.close()
        assert _open_handles(tmp_path) == []
    ro = LogKV(path, read_only=True)
    assert ro["a"] == 1
    ro.close()
    assert _open_handles(tmp_path) == []
    with LogKV(path, autosave=False) as db:
        db["d"] = 4
    assert _open_handles(tmp_path) == []


def test_popitem(db, engine):
    db["a"] = 1
    db["b"] = 2
    db.namespace("ns")["c"] = 3
    view = db.namespace("ns")
    assert view.popitem() == ("c", 3)
    with pytest.raises(KeyError):
        view.popitem()
    first = db.popitem()
    if not engine.is_redis:
        assert first == ("a", 1)  # the oldest, as the mapping protocol's default
    second = db.popitem()
    assert sorted([first, second]) == [("a", 1), ("b", 2)]
    with pytest.raises(KeyError):
        db.popitem()
    assert len(db) == 0
