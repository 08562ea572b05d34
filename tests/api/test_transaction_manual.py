"""transaction() (atomic, rolled back on exception, nested blocks join) and
manual mode (autosave=False): CONTRACT §3, §3.1."""
from __future__ import annotations

import os
import shutil
import uuid

import pytest

from logkv import LogKV


class Boom(Exception):
    pass


@pytest.fixture
def db(engine):
    store = engine.open()
    yield store
    store.close()


def disk_bytes(path):
    out = {}
    for suffix in ("", ".wal"):
        p = path + suffix
        if os.path.exists(p):
            with open(p, "rb") as f:
                out[suffix] = f.read()
        else:
            out[suffix] = None
    return out


def crash_copy(path, tmp_path):
    dest_dir = tmp_path / ("copy-" + uuid.uuid4().hex[:8])
    dest_dir.mkdir()
    base = os.path.basename(path)
    for suffix in ("", ".wal"):
        if os.path.exists(path + suffix):
            shutil.copyfile(path + suffix, dest_dir / (base + suffix))
    return str(dest_dir / base)


def open_copy(path, tmp_path, **kwargs):
    p = crash_copy(path, tmp_path)
    store = LogKV(p, **kwargs)
    try:
        return store.copy()
    finally:
        store.close()


# ---------------------------------------------------------------------------
# transactions
# ---------------------------------------------------------------------------


def test_transaction_yields_the_store(db):
    with db.transaction() as t:
        assert t is db
        t["a"] = 1
    assert db["a"] == 1


@pytest.mark.file_engine
def test_transaction_commits_all_as_one_record(db, store_path, tmp_path):
    db["n"] = 1
    db["gone"] = 1
    db["l"] = [1]
    before = db.stats()["wal_records"]
    with db.transaction():
        db["user:1"] = {"name": "Alice"}
        db["user:2"] = {"name": "Bob"}
        db.incr("n", 2)
        del db["gone"]
        db.append("l", 2)
        db.set("t", 1, ttl=1000)
        db.mset({"m": 1})
        db.update({"u": 2})
    assert db.stats()["wal_records"] == before + 1
    expected = {"n": 3, "l": [1, 2], "user:1": {"name": "Alice"}, "user:2": {"name": "Bob"},
                "t": 1, "m": 1, "u": 2}
    assert db.copy() == expected
    assert 900 < db.ttl("t") <= 1000
    assert open_copy(store_path, tmp_path) == expected


def test_transaction_reads_its_own_writes(db):
    db["a"] = 1
    with db.transaction():
        db["a"] = 2
        assert db["a"] == 2
        assert db.get("a") == 2
        db["b"] = 3
        assert "b" in db
        assert db.copy() == {"a": 2, "b": 3}
        assert len(db) == 2
        del db["a"]
        assert "a" not in db
        assert db.get("a", "d") == "d"
        assert db.incr("c") == 1
        assert db.incr("c") == 2
        assert db.mget(["a", "b", "c"]) == [None, 3, 2]
    assert db.copy() == {"b": 3, "c": 2}


def test_transaction_rollback_on_exception(store_path, tmp_path):
    db = LogKV(store_path)
    db["a"] = 1
    db["l"] = [1, 2]
    db.set("t", "ttl", ttl=1000)
    db["n"] = 5
    files_before = disk_bytes(store_path)
    records_before = db.stats()["wal_records"]
    with pytest.raises(Boom):
        with db.transaction():
            db["a"] = 2
            db["new"] = 3
            del db["l"]
            db.persist("t")
            db.incr("n", 10)
            db.mset({"m1": 1, "m2": 2})
            db.update({"a": 7})
            db.clear()
            db["after_clear"] = 1
            raise Boom()
    expected = {"a": 1, "l": [1, 2], "t": "ttl", "n": 5}
    assert db.copy() == expected
    assert 900 < db.ttl("t") <= 1000
    assert db.ttl("a") is None
    assert db.stats()["wal_records"] == records_before
    assert disk_bytes(store_path) == files_before  # nothing logged
    assert open_copy(store_path, tmp_path) == expected
    db.close()
    db = LogKV(store_path)
    try:
        assert db.copy() == expected
        assert 900 < db.ttl("t") <= 1000
    finally:
        db.close()


def test_rollback_of_list_helpers_does_not_leak_in_place(db):
    lst = [1, 2]
    db["l"] = lst
    with pytest.raises(Boom):
        with db.transaction():
            db.append("l", 3)
            db.extend("l", [4])
            db.remove("l", 1)
            raise Boom()
    assert db["l"] == [1, 2]
    assert lst == [1, 2]


def test_rollback_of_ttl_changes(db):
    db["a"] = 1
    db.set("b", 1, ttl=1000)
    with pytest.raises(Boom):
        with db.transaction():
            db.expire("a", 5)
            db.touch("b", 5)
            raise Boom()
    assert db.ttl("a") is None
    assert 900 < db.ttl("b") <= 1000


def test_store_usable_after_rollback(db):
    with pytest.raises(Boom):
        with db.transaction():
            db["a"] = 1
            raise Boom()
    db["b"] = 2
    with db.transaction():
        db["c"] = 3
    assert db.copy() == {"b": 2, "c": 3}


@pytest.mark.file_engine
def test_nested_transactions_join_outer(db, store_path, tmp_path):
    before = db.stats()["wal_records"]
    with db.transaction() as outer:
        outer["a"] = 1
        with db.transaction() as inner:
            inner["b"] = 2
        # the inner block's end is not a commit of its own
        assert db.stats()["wal_records"] == before
        assert open_copy(store_path, tmp_path) == {}
        outer["c"] = 3
    assert db.stats()["wal_records"] == before + 1
    assert db.copy() == {"a": 1, "b": 2, "c": 3}
    assert open_copy(store_path, tmp_path) == {"a": 1, "b": 2, "c": 3}


def test_nested_inner_changes_rolled_back_with_outer(store_path, tmp_path):
    db = LogKV(store_path)
    db["keep"] = 0
    with pytest.raises(Boom):
        with db.transaction():
            db["a"] = 1
            with db.transaction():
                db["b"] = 2
                db["keep"] = 1
            raise Boom()
    assert db.copy() == {"keep": 0}
    assert open_copy(store_path, tmp_path) == {"keep": 0}
    db.close()
    db = LogKV(store_path)
    try:
        assert db.copy() == {"keep": 0}
    finally:
        db.close()


def test_exception_from_inner_propagates_and_rolls_back_everything(db):
    db["keep"] = 0
    with pytest.raises(Boom):
        with db.transaction():
            db["a"] = 1
            with db.transaction():
                db["b"] = 2
                raise Boom()
    assert db.copy() == {"keep": 0}


def test_empty_transaction(db):
    db["a"] = 1
    with db.transaction():
        pass
    assert db.copy() == {"a": 1}


def test_transaction_with_ttl_reads(db):
    with db.transaction():
        db.set("t", 1, ttl=100)
        r = db.ttl("t")
        assert r is not None and 90 < r <= 100
    assert 90 < db.ttl("t") <= 100


# ---------------------------------------------------------------------------
# manual mode (autosave=False)
# ---------------------------------------------------------------------------


def test_manual_mode_keeps_mutations_in_memory(store_path, tmp_path):
    db = LogKV(store_path, autosave=False)
    try:
        db["base"] = 0
        db.flush()
        files = disk_bytes(store_path)
        db["a"] = 1
        db.set("b", 2, ttl=1000)
        db.incr("base")
        db.append("l", 1)
        db.mset({"m": 1})
        db.update({"u": 1})
        del db["m"]
        assert db.copy() == {"base": 1, "a": 1, "b": 2, "l": [1], "u": 1}
        assert db.stats()["dirty"] is True
        assert disk_bytes(store_path) == files  # nothing written yet
        assert open_copy(store_path, tmp_path) == {"base": 0}
    finally:
        db.close()


def test_manual_mode_flush_is_one_record(store_path, tmp_path):
    db = LogKV(store_path, autosave=False)
    try:
        before = db.stats()["wal_records"]
        db["a"] = 1
        db["b"] = 2
        db.incr("c")
        del db["a"]
        assert db.stats()["dirty"] is True
        assert db.flush() is None
        assert db.stats()["dirty"] is False
        assert db.stats()["wal_records"] == before + 1
        assert open_copy(store_path, tmp_path) == {"b": 2, "c": 1}
    finally:
        db.close()


def test_manual_mode_reload_discards(store_path):
    db = LogKV(store_path, autosave=False)
    try:
        db["a"] = 1
        db.set("t", 1, ttl=1000)
        db.flush()
        db["a"] = 2
        db["b"] = 3
        db.persist("t")
        del db["t"]
        assert db.reload() is None
        assert db.copy() == {"a": 1, "t": 1}
        assert 900 < db.ttl("t") <= 1000
        assert db.stats()["dirty"] is False
    finally:
        db.close()


def test_manual_mode_close_saves(store_path):
    db = LogKV(store_path, autosave=False)
    db["a"] = 1
    db.extend("l", [1, 2])
    db.close()
    db = LogKV(store_path)
    try:
        assert db.copy() == {"a": 1, "l": [1, 2]}
    finally:
        db.close()


def test_manual_mode_context_manager_saves(store_path):
    with LogKV(store_path, autosave=False) as db:
        db["a"] = 1
    with LogKV(store_path) as db:
        assert db.copy() == {"a": 1}


def test_manual_mode_transaction_end_logs(store_path, tmp_path):
    db = LogKV(store_path, autosave=False)
    try:
        with db.transaction():
            db["a"] = 1
            db["b"] = 2
        assert db.copy() == {"a": 1, "b": 2}
        assert open_copy(store_path, tmp_path) == {"a": 1, "b": 2}
    finally:
        db.close()


def test_manual_mode_transaction_rollback(store_path, tmp_path):
    db = LogKV(store_path, autosave=False)
    try:
        db["a"] = 1
        db.flush()
        with pytest.raises(Boom):
            with db.transaction():
                db["a"] = 2
                db["b"] = 2
                raise Boom()
        assert db.copy() == {"a": 1}
        assert open_copy(store_path, tmp_path) == {"a": 1}
    finally:
        db.close()


def test_manual_mode_pending_state_across_reads(store_path):
    db = LogKV(store_path, autosave=False)
    try:
        db["a"] = 1
        assert db["a"] == 1
        assert "a" in db
        assert len(db) == 1
        assert db.stats()["keys"] == 1
        assert db.keys() == ["a"]
    finally:
        db.close()


def test_dirty_flag_autosave_modes(store_path, tmp_path):
    db = LogKV(store_path, durability="os")
    try:
        assert db.stats()["dirty"] is False
        db["a"] = 1
        assert db.stats()["dirty"] is True
        db.flush()
        assert db.stats()["dirty"] is False
        db.compact()
        assert db.stats()["dirty"] is False
    finally:
        db.close()


def test_manual_mode_reopen_after_reload_and_flush(store_path):
    db = LogKV(store_path, autosave=False)
    db["a"] = 1
    db.flush()
    db["b"] = 2
    db.reload()
    db["c"] = 3
    db.flush()
    db.close()
    db = LogKV(store_path, autosave=False)
    try:
        assert db.copy() == {"a": 1, "c": 3}
    finally:
        db.close()


def test_interval_flusher_clears_dirty(store_path):
    # durability="interval": the background flusher makes writes durable by
    # itself (at most autosave_delay later); poll generously, no timing assertion.
    import time

    db = LogKV(store_path, autosave_delay=0.05)
    try:
        db["a"] = 1
        deadline = time.monotonic() + 10
        while db.stats()["dirty"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert db.stats()["dirty"] is False
    finally:
        db.close()


def test_in_place_change_after_set_is_not_logged_manual_mode(store_path):
    lst = [1]
    db = LogKV(store_path, autosave=False)
    db["l"] = lst
    lst.append(2)  # not through the API
    db.flush()
    db.close()
    db = LogKV(store_path)
    try:
        assert db["l"] == [1]
    finally:
        db.close()


def test_in_place_change_inside_transaction_is_not_logged(store_path):
    d = {"x": 1}
    db = LogKV(store_path)
    with db.transaction():
        db["d"] = d
        d["x"] = 2  # not through the API
    db.close()
    db = LogKV(store_path)
    try:
        assert db["d"] == {"x": 1}
    finally:
        db.close()


def test_manual_mode_clear_then_set_flush(store_path, tmp_path):
    db = LogKV(store_path, autosave=False)
    try:
        db.mset({"a": 1, "b": 2})
        db.flush()
        db.clear()
        db["c"] = 3
        assert open_copy(store_path, tmp_path) == {"a": 1, "b": 2}
        db.flush()
        assert open_copy(store_path, tmp_path) == {"c": 3}
        assert db.copy() == {"c": 3}
    finally:
        db.close()


def test_manual_mode_rollback_keeps_earlier_pending_changes(store_path, tmp_path):
    db = LogKV(store_path, autosave=False)
    try:
        db["p"] = 1
        with pytest.raises(Boom):
            with db.transaction():
                db["p"] = 2
                db["q"] = 2
                raise Boom()
        assert db.copy() == {"p": 1}  # the block is undone, the earlier change is not
        db.flush()
        assert open_copy(store_path, tmp_path) == {"p": 1}
    finally:
        db.close()
