"""Namespace views: the whole method set (CONTRACT §3, §3.2)."""
from __future__ import annotations

import json
import time

import pytest

from logkv import ClosedError, LogKV

SHORT_TTL = 0.1
PAST_SHORT_TTL = 0.3


@pytest.fixture
def db(engine):
    store = engine.open()
    yield store
    store.close()


@pytest.fixture
def users(db):
    return db.namespace("users")


def test_keys_are_prefixed_in_the_parent(db, users):
    users["1001"] = {"name": "Ali"}
    assert db["users:1001"] == {"name": "Ali"}
    assert users["1001"] == {"name": "Ali"}
    db["users:1002"] = "from parent"
    assert users["1002"] == "from parent"
    assert "1002" in users
    assert "users:1002" not in users


def test_custom_separator(db):
    v = db.namespace("cfg", separator=".")
    v["lang"] = "uz"
    assert db["cfg.lang"] == "uz"
    assert "cfg:lang" not in db
    assert v.keys() == ["lang"]


def test_view_sees_only_its_keys(db, users):
    db["usersx"] = 1
    db["users"] = 2
    db["other:1"] = 3
    db["users:a"] = 4
    db["users:b"] = 5
    assert sorted(users) == ["a", "b"]
    assert len(users) == 2
    assert sorted(users.keys()) == ["a", "b"]
    assert sorted(users.values()) == [4, 5]
    assert sorted(users.items()) == [("a", 4), ("b", 5)]
    assert users.copy() == {"a": 4, "b": 5}
    assert type(users.copy()) is dict
    assert type(users.keys()) is list
    assert type(users.values()) is list
    assert type(users.items()) is list
    assert "usersx" not in users
    assert users.get("x") is None


def test_getitem_delitem_get_pop_setdefault(db, users):
    users["a"] = 1
    assert users.get("a") == 1
    assert users.get("zz", "d") == "d"
    with pytest.raises(KeyError):
        users["zz"]
    del users["a"]
    assert "users:a" not in db
    with pytest.raises(KeyError):
        del users["a"]
    users.set("b", 2)
    assert users.pop("b") == 2
    assert "users:b" not in db
    with pytest.raises(KeyError):
        users.pop("b")
    assert users.pop("b", "d") == "d"
    assert users.setdefault("c", 3) == 3
    assert users.setdefault("c", 4) == 3
    assert db["users:c"] == 3
    assert users.ttl("c") is None


def test_update_mset_mget(db, users):
    users.update({"a": 1}, b=2)
    assert db.copy() == {"users:a": 1, "users:b": 2}
    users.mset({"c": 3, "d": 4})
    assert db["users:c"] == 3 and db["users:d"] == 4
    assert users.mget(["a", "c", "zz"]) == [1, 3, None]
    assert users.mget(["zz"], default=0) == [0]
    users.mset({"e": 5}, ttl=100)
    assert 90 < users.ttl("e") <= 100
    assert 90 < db.ttl("users:e") <= 100
    with pytest.raises(ValueError):
        users.mset({"f": 1}, ttl=0)
    assert "f" not in users


def test_update_clears_ttl_in_view(users):
    users.set("a", 0, ttl=100)
    users.update({"a": 1})
    assert users.ttl("a") is None


def test_clear_clears_only_the_view(db, users):
    db["other"] = 1
    db["usersx"] = 2
    users["a"] = 1
    users["b"] = 2
    assert users.clear() is None
    assert len(users) == 0
    assert db.copy() == {"other": 1, "usersx": 2}


def test_exists(users):
    assert users.exists("a") is False
    users["a"] = None
    assert users.exists("a") is True


def test_incr(db, users):
    assert users.incr("n") == 1
    assert users.incr("n", 2.5) == 3.5
    assert db["users:n"] == 3.5
    users["s"] = "str"
    with pytest.raises(TypeError):
        users.incr("s")
    users.set("t", 1, ttl=100)
    users.incr("t")
    assert 90 < users.ttl("t") <= 100
    with pytest.raises(ValueError):
        users.incr("t", ttl=0)
    assert users["t"] == 2


def test_list_helpers(db, users):
    assert users.append("l", 1) == [1]
    assert users.append("l", 1, unique=True) == [1]
    assert users.extend("l", [2, 3, 2]) == [1, 2, 3, 2]
    assert users.extend("l", [3, 4], unique=True) == [1, 2, 3, 2, 4]
    assert users.remove("l", 2) == [1, 3, 2, 4]
    assert users.remove("l", 2, all_occurrences=True) == [1, 3, 4]
    assert db["users:l"] == [1, 3, 4]
    with pytest.raises(ValueError):
        users.remove("l", 99)
    with pytest.raises(KeyError):
        users.remove("missing", 1)
    users["s"] = "str"
    with pytest.raises(TypeError):
        users.append("s", 1)
    with pytest.raises(ValueError):
        users.append("l", 5, ttl=0)
    assert users["l"] == [1, 3, 4]


def test_ttl_helpers(db, users):
    users["a"] = 1
    assert users.ttl("a") is None
    users.expire("a", 100)
    assert 90 < users.ttl("a") <= 100
    assert 90 < db.ttl("users:a") <= 100
    users.persist("a")
    assert users.ttl("a") is None
    assert db.ttl("users:a") is None
    users.touch("a", 50)
    assert 40 < users.ttl("a") <= 50
    users.touch("a")
    assert 40 < users.ttl("a") <= 50
    with pytest.raises(KeyError):
        users.ttl("zz")
    with pytest.raises(KeyError):
        users.expire("zz", 1)
    with pytest.raises(ValueError):
        users.expire("zz", 0)
    with pytest.raises(KeyError):
        users.persist("zz")
    with pytest.raises(KeyError):
        users.touch("zz", 0)
    with pytest.raises(ValueError):
        users.touch("a", 0)
    with pytest.raises(ValueError):
        users.set("b", 1, ttl=-1)
    assert "b" not in users


def test_expiry_in_view(db, users):
    users.set("t", 1, ttl=SHORT_TTL)
    users["k"] = 2
    db.set("outside", 3, ttl=SHORT_TTL)
    time.sleep(PAST_SHORT_TTL)
    assert "t" not in users
    assert users.get("t") is None
    assert users.exists("t") is False
    assert users.copy() == {"k": 2}
    assert len(users) == 1
    assert users.keys() == ["k"]
    assert users.mget(["t", "k"]) == [None, 2]


@pytest.mark.file_engine
def test_cleanup_expired_counts_view_keys(db, users):
    users.set("t1", 1, ttl=SHORT_TTL)
    users.set("t2", 1, ttl=SHORT_TTL)
    users["k"] = 1
    db.set("outside", 3, ttl=SHORT_TTL)
    time.sleep(PAST_SHORT_TTL)
    assert users.cleanup_expired() == 2
    assert users.cleanup_expired() == 0
    assert users.copy() == {"k": 1}
    assert db.cleanup_expired() == 1
    assert db.copy() == {"users:k": 1}


def test_stats_counts_view_keys(db, users):
    db["other"] = 1
    db.set("other2", 1, ttl=100)
    users["a"] = 1
    users.set("b", 2, ttl=100)
    users.set("c", 3, ttl=100)
    s = users.stats()
    assert s["keys"] == 3
    assert s["ttl_keys"] == 2
    assert s["file_path"] == db.stats()["file_path"]
    p = db.stats()
    assert p["keys"] == 5
    assert p["ttl_keys"] == 3


def test_nested_namespaces(db):
    a = db.namespace("a")
    b = a.namespace("b")
    b["key"] = 1
    assert db["a:b:key"] == 1
    assert a["b:key"] == 1
    assert b["key"] == 1
    assert b.keys() == ["key"]
    assert a.keys() == ["b:key"]
    c = b.namespace("c")
    c.set("deep", [1], ttl=100)
    assert db["a:b:c:deep"] == [1]
    assert 90 < c.ttl("deep") <= 100
    c.append("deep", 2)
    assert db["a:b:c:deep"] == [1, 2]
    assert b.stats()["keys"] == 2
    assert c.stats()["keys"] == 1
    b.clear()
    assert db.copy() == {}


def test_nested_namespace_custom_separator(db):
    a = db.namespace("a", separator="/")
    b = a.namespace("b", separator="/")
    b["k"] = 1
    assert db.copy() == {"a/b/k": 1}


def test_transaction_on_view_commits(db, users):
    with users.transaction() as t:
        t["a"] = 1
        t.incr("n", 5)
        t.append("l", "x")
        assert t["a"] == 1
    assert db.copy() == {"users:a": 1, "users:n": 5, "users:l": ["x"]}


def test_transaction_on_view_yields_the_view(db, users):
    with users.transaction() as t:
        assert t is users
        t["k"] = 1
    assert db["users:k"] == 1
    assert "k" not in db


def test_transaction_on_view_rolls_back(store_path):
    db = LogKV(store_path)
    users = db.namespace("users")
    users["a"] = 1
    db["outside"] = 1
    with pytest.raises(RuntimeError, match="boom"):
        with users.transaction() as t:
            t["a"] = 2
            t["b"] = 3
            del t["a"]
            raise RuntimeError("boom")
    assert db.copy() == {"users:a": 1, "outside": 1}
    db.close()
    db = LogKV(store_path)
    try:
        assert db.copy() == {"users:a": 1, "outside": 1}
    finally:
        db.close()


@pytest.mark.file_engine
def test_transaction_on_view_is_one_record(db, users):
    before = db.stats()["wal_records"]
    with users.transaction():
        users["a"] = 1
        users["b"] = 2
        users["c"] = 3
    assert db.stats()["wal_records"] == before + 1


def test_view_and_parent_transactions_nest(db, users):
    with pytest.raises(KeyError):
        with db.transaction():
            db["p"] = 1
            with users.transaction():
                users["u"] = 2
            raise KeyError("outer fails")
    assert db.copy() == {}


def test_view_persists(store_path):
    db = LogKV(store_path)
    users = db.namespace("users")
    users["a"] = {"x": 1}
    users.set("t", 1, ttl=1000)
    db.close()
    db = LogKV(store_path)
    try:
        users = db.namespace("users")
        assert users.copy() == {"a": {"x": 1}, "t": 1}
        assert 900 < users.ttl("t") <= 1000
    finally:
        db.close()


def test_view_flush_reload_close_act_on_parent(store_path):
    db = LogKV(store_path, autosave=False)
    users = db.namespace("users")
    users["a"] = 1
    db["outside"] = 1
    users.flush()
    assert db.stats()["dirty"] is False
    db["outside2"] = 2
    users["b"] = 2
    users.reload()  # drops the parent's unsaved changes too
    assert db.copy() == {"users:a": 1, "outside": 1}
    users["c"] = 3
    users.close()
    with pytest.raises(ClosedError):
        db["x"] = 1
    with pytest.raises(ClosedError):
        users["x"] = 1
    db = LogKV(store_path)
    try:
        assert db.copy() == {"users:a": 1, "outside": 1, "users:c": 3}
    finally:
        db.close()


@pytest.mark.file_engine
def test_view_compact_acts_on_parent(db, store_path):
    users = db.namespace("users")
    users["a"] = 1
    db["outside"] = 2
    before = db.stats()["compactions"]
    users.compact()
    assert db.stats()["compactions"] == before + 1
    with open(store_path, encoding="utf-8") as f:
        snap = json.load(f)
    assert {k: v["value"] for k, v in snap["data"].items()} == {"users:a": 1, "outside": 2}


def test_view_keys_converted_with_str(db, users):
    users[5] = "five"
    assert db["users:5"] == "five"
    assert users.get(5) == "five"
    assert 5 in users


STORE_METHODS = [
    "__getitem__", "__setitem__", "__delitem__", "__contains__", "__len__", "__iter__",
    "set", "get", "pop", "setdefault", "update", "clear", "exists", "copy", "keys", "values",
    "items", "mset", "mget", "incr", "append", "extend", "remove", "expire", "ttl", "persist",
    "cleanup_expired", "touch", "stats", "flush", "reload", "close", "compact", "transaction",
    "namespace",
]


def test_view_has_the_whole_method_set(db, users):
    from collections.abc import MutableMapping

    assert isinstance(users, MutableMapping)
    for name in STORE_METHODS:
        assert callable(getattr(db, name, None)), name
        assert callable(getattr(users, name, None)), name
