"""``from logkv.compat import aiodict`` replaces ``from aiodict import aiodict``.

Part 1 is aiodict 1.0.1's own test suite (tests/test_core.py, 5 tests) with
only the import changed. Part 2 is every behaviour aiodict's README documents,
plus the errors of shared/reference/peers-behaviour.md.
"""
from __future__ import annotations

import inspect
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from logkv import LogKV
from logkv.compat import aiodict

# ---------------------------------------------------------------------------
# Part 1: aiodict's own tests/test_core.py, import changed
# ---------------------------------------------------------------------------


def test_basic_set_get(tmp_path: Path):
    db = aiodict(tmp_path / "db.json", autosave=False)
    db["a"] = 1
    assert db["a"] == 1
    db.flush()
    db.close()


def test_persistence(tmp_path: Path):
    path = tmp_path / "db.json"
    db = aiodict(path, autosave=False)
    db["name"] = "Ali"
    db.flush()
    db.close()

    db2 = aiodict(path, autosave=False)
    assert db2["name"] == "Ali"
    db2.close()


def test_ttl_expiration(tmp_path: Path):
    db = aiodict(tmp_path / "db.json", autosave=False)
    db.set("otp", "1234", ttl=0.1)
    time.sleep(0.15)
    assert db.get("otp") is None
    db.close()


def test_namespace(tmp_path: Path):
    db = aiodict(tmp_path / "db.json", autosave=False)
    users = db.namespace("users")
    users["1"] = {"name": "Alice"}
    assert db["users:1"] == {"name": "Alice"}
    assert users["1"] == {"name": "Alice"}
    db.close()


def test_transaction(tmp_path: Path):
    db = aiodict(tmp_path / "db.json", autosave=True, autosave_delay=1.0)
    with db.transaction():
        db["a"] = 1
        db["b"] = 2
    assert db["a"] == 1
    assert db["b"] == 2
    db.close()


# ---------------------------------------------------------------------------
# Part 2: the README and the reference behaviour
# ---------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    s = aiodict(str(tmp_path / "db.json"))
    yield s
    s.close()


def read_file(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_constructor_signature_and_defaults_are_aiodicts():
    params = inspect.signature(aiodict).parameters
    expected = [
        ("path", "db.json"), ("autosave", True), ("autosave_delay", 0.35),
        ("create_backup", True), ("serializer", None), ("deserializer", None),
        ("indent", None), ("sort_keys", False), ("cleanup_expired_on_load", True),
        ("lock_timeout", 10.0), ("encoding", "utf-8"),
    ]
    # aiodict's parameters, in aiodict's order, then logkv's one addition
    # (keyword-only, so no aiodict call changes meaning): the files' mode.
    assert [(name, p.default) for name, p in params.items()] == expected + [("mode", None)]
    assert params["path"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for n, p in params.items() if n != "path")
    assert issubclass(aiodict, LogKV)


def test_compat_module_does_not_import_the_peers():
    import logkv.compat  # noqa: F401

    assert "aiodict" not in sys.modules and "pickledb" not in sys.modules


def test_default_path_is_db_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = aiodict()
    s["x"] = 1
    s.close()
    assert read_file(tmp_path / "db.json")["data"]["x"] == {"value": 1, "expires_at": None}


@pytest.mark.parametrize("autosave", [True, False])
def test_creates_folders_and_the_file_at_once(tmp_path, autosave):
    path = tmp_path / "a" / "b" / "db.json"
    s = aiodict(path, autosave=autosave)
    assert path.exists()
    doc = read_file(path)
    assert doc["version"] == 1 and doc["data"] == {}
    assert doc["updated_at"].endswith("Z")
    s.close()


def test_attributes_and_repr(tmp_path):
    path = tmp_path / "db.json"
    s = aiodict(path, autosave=False, autosave_delay=1.5, indent=2, sort_keys=True)
    assert s.path == path and isinstance(s.path, Path)
    assert s.lock_path == Path(str(path) + ".lock")
    assert (s.autosave, s.autosave_delay, s.indent, s.sort_keys) == (False, 1.5, 2, True)
    assert s.create_backup is True and s.cleanup_expired_on_load is True
    s["a"] = 1
    s["b"] = 2
    assert repr(s) == f"aiodict(path={str(path)!r}, size=2)"
    s.close()


def test_quick_start(tmp_path):
    store = aiodict(str(tmp_path / "db.json"))
    store["bot_name"] = "My Bot"
    store["admin_id"] = 123456789
    assert store["bot_name"] == "My Bot"
    assert store.get("missing", "default value") == "default value"
    store.flush()
    store.close()
    again = aiodict(str(tmp_path / "db.json"))
    assert again.copy() == {"bot_name": "My Bot", "admin_id": 123456789}
    again.close()


def test_basic_usage(store):
    store["name"] = "Abbosjon"
    assert store["name"] == "Abbosjon"
    assert store.get("lang", "en") == "en"
    assert store.exists("name")
    del store["name"]
    assert not store.exists("name")
    with pytest.raises(KeyError):
        store["name"]
    with pytest.raises(KeyError):
        del store["name"]


def test_batch_operations(store):
    assert store.update({"theme": "dark", "timezone": "Asia/Tashkent"}) is None
    assert store.mset({"a": 1, "b": 2, "c": 3}) is None
    assert store.mget(["a", "b", "missing"], default=None) == [1, 2, None]
    assert store["theme"] == "dark"


def test_numeric_helpers(store):
    assert store.incr("visits") == 1
    assert store.incr("visits", 5) == 6
    assert store.incr("visits", 0.5) == 6.5
    store["name"] = "x"
    with pytest.raises(TypeError, match="Value for 'name' is not numeric"):
        store.incr("name")
    store["flag"] = True
    with pytest.raises(TypeError):
        store.incr("flag")


def test_incr_keeps_ttl_unless_given(store):
    store.set("c", 1, ttl=100)
    store.incr("c")
    assert 90 < store.ttl("c") <= 100
    store.incr("c", ttl=500)
    assert store.ttl("c") > 400


def test_list_helpers(store):
    assert store.append("admins", 123456789) == [123456789]
    assert store.append("admins", 123456789, unique=True) == [123456789]
    assert store.extend("admins", [111, 222, 333]) == [123456789, 111, 222, 333]
    assert store.remove("admins", 222) == [123456789, 111, 333]
    store.append("admins", 111)
    assert store.remove("admins", 111, all_occurrences=True) == [123456789, 333]
    assert store.remove("admins", 999, all_occurrences=True) == [123456789, 333]
    with pytest.raises(ValueError):
        store.remove("admins", 999)
    with pytest.raises(KeyError):
        store.remove("nobody", 1)
    store["s"] = "text"
    with pytest.raises(TypeError):
        store.append("s", 1)
    with pytest.raises(TypeError):
        store.remove("s", 1)


def test_ttl_support(store):
    store.set("otp:123", "918273", ttl=60)
    assert 59 < store.ttl("otp:123") <= 60
    store.expire("otp:123", 120)
    assert 119 < store.ttl("otp:123") <= 120
    store.persist("otp:123")
    assert store.ttl("otp:123") is None
    store.set("short", 1, ttl=0.05)
    store.set("short2", 1, ttl=0.05)
    time.sleep(0.1)
    with pytest.raises(KeyError):
        store.ttl("short")
    assert store.cleanup_expired() == 2
    assert store.cleanup_expired() == 0


def test_ttl_errors(store):
    for bad in (0, -1):
        with pytest.raises(ValueError, match="ttl must be greater than 0"):
            store.set("k", 1, ttl=bad)
    with pytest.raises(ValueError):
        store.expire("missing", 0)  # ttl is checked first
    with pytest.raises(KeyError):
        store.expire("missing", 10)
    with pytest.raises(KeyError):
        store.ttl("missing")
    with pytest.raises(KeyError):
        store.persist("missing")
    with pytest.raises(KeyError):
        store.touch("missing", 0)  # the key is checked before the ttl
    store["k"] = 1
    store.touch("k", 30)
    assert 29 < store.ttl("k") <= 30


def test_transaction_readme_example(store):
    with store.transaction() as tx:
        assert tx is store
        store["user:1"] = {"name": "Alice"}
        store["user:2"] = {"name": "Bob"}
        store.incr("user_count", 2)
    assert store["user_count"] == 2 and store["user:2"] == {"name": "Bob"}


def test_namespaces_readme_example(store):
    users = store.namespace("users")
    settings = store.namespace("settings")
    users["1001"] = {"name": "Ali"}
    settings["language"] = "uz"
    assert users["1001"] == {"name": "Ali"}
    assert settings["language"] == "uz"
    assert sorted(store.keys()) == ["settings:language", "users:1001"]


def test_explicit_persistence(tmp_path):
    path = str(tmp_path / "db.json")
    store = aiodict(path)
    store["saved"] = 1
    store.flush()
    other = aiodict(path)
    other["unsaved"] = 2  # another process writes; reload picks it up
    other.close()
    store.reload()
    assert store.copy() == {"saved": 1, "unsaved": 2}
    store.close()
    store.close()  # idempotent
    doc = read_file(path)
    assert doc["data"]["unsaved"]["value"] == 2


def test_reload_drops_unsaved_changes_in_manual_mode(tmp_path):
    store = aiodict(str(tmp_path / "db.json"), autosave=False)
    store["a"] = 1
    store.flush()
    store["b"] = 2
    store.reload()
    assert store.copy() == {"a": 1}
    store.close()


def test_context_manager_closes_and_saves_even_when_the_block_raises(tmp_path):
    path = str(tmp_path / "db.json")
    with aiodict(path) as store:
        store["hello"] = "world"
    with pytest.raises(RuntimeError):
        store["x"]
    with pytest.raises(ZeroDivisionError):
        with aiodict(path, autosave=False) as store:
            store["also"] = "saved"
            1 / 0
    assert read_file(path)["data"]["also"]["value"] == "saved"


def test_every_method_raises_runtime_error_after_close(store):
    store["a"] = 1
    store.close()
    calls = [lambda: store["a"], lambda: store.get("a"), lambda: store.set("a", 2),
             lambda: store.keys(), lambda: len(store), lambda: store.incr("n"),
             lambda: store.flush(), lambda: store.stats(), lambda: store.exists("a"),
             lambda: store.mget(["a"]), lambda: store.reload()]
    for call in calls:
        with pytest.raises(RuntimeError):
            call()
    store.close()


def test_serialization_hooks_readme_example(tmp_path):
    def serializer(value):
        if isinstance(value, datetime):
            return {"__type__": "datetime", "value": value.isoformat()}
        raise TypeError

    def deserializer(value):
        if isinstance(value, dict) and value.get("__type__") == "datetime":
            return datetime.fromisoformat(value["value"])
        return value

    path = str(tmp_path / "db.json")
    now = datetime.now()
    store = aiodict(path, serializer=serializer, deserializer=deserializer)
    store["created_at"] = now
    store.flush()
    store.close()
    assert read_file(path)["data"]["created_at"]["value"] == \
        {"__type__": "datetime", "value": now.isoformat()}
    store = aiodict(path, serializer=serializer, deserializer=deserializer)
    assert store["created_at"] == now
    store.close()


def test_builtin_conversions_without_a_serializer(store):
    from dataclasses import dataclass

    @dataclass
    class User:
        name: str

    store["when"] = datetime(2026, 4, 5, 12, 0)
    store["user"] = User("Ali")
    store["path"] = Path("/tmp/x")
    store["tags"] = {"a"}
    store["pair"] = (1, 2)
    path = str(store.path)
    store.close()
    data = read_file(path)["data"]
    assert data["when"]["value"] == "2026-04-05T12:00:00"
    assert data["user"]["value"] == {"name": "Ali"}
    assert data["path"]["value"] == "/tmp/x"
    assert data["tags"]["value"] == ["a"]
    assert data["pair"]["value"] == [1, 2]
    with aiodict(path) as again:
        with pytest.raises(TypeError):
            again["bad"] = object()


def test_copy_is_a_plain_dict_snapshot(store):
    store["a"] = {"x": 1}
    snap = store.copy()
    assert type(snap) is dict and snap == {"a": {"x": 1}}
    store["b"] = 2
    assert "b" not in snap


def test_stats_keys(store):
    store["a"] = 1
    store.set("t", 1, ttl=60)
    stats = store.stats()
    for key in ("keys", "ttl_keys", "autosave", "autosave_delay", "file_path",
                "file_size_bytes", "dirty"):
        assert key in stats
    assert (stats["keys"], stats["ttl_keys"], stats["autosave"], stats["autosave_delay"]) == \
        (2, 1, True, 0.35)
    assert stats["file_path"] == str(store.path)
    assert stats["file_size_bytes"] == os.path.getsize(store.path)
    store.flush()
    assert store.stats()["dirty"] is False


def test_telegram_bot_example(tmp_path):
    store = aiodict(str(tmp_path / "bot_db.json"))
    users = store.namespace("users")
    stats = store.namespace("stats")

    def register_user(user_id: int, full_name: str) -> None:
        users[str(user_id)] = {"full_name": full_name, "joined_at": "2026-04-05"}
        stats.incr("total_users")

    def is_registered(user_id: int) -> bool:
        return users.exists(str(user_id))

    register_user(1, "Ali")
    register_user(2, "Vali")
    assert is_registered(1) and not is_registered(3)
    assert store["stats:total_users"] == 2
    store.close()


def test_mapping_protocol(store):
    store.update(a=1, b=2)
    assert len(store) == 2 and "a" in store and list(store) == ["a", "b"]
    assert store.pop("a") == 1 and store.pop("a", "d") == "d"
    with pytest.raises(KeyError):
        store.pop("a")
    assert store.setdefault("c", [1]) == [1] and store.setdefault("c", 5) == [1]
    assert store.keys() == ["b", "c"] and store.values() == [2, [1]]
    assert store.items() == [("b", 2), ("c", [1])]
    store[7] = "seven"
    assert store["7"] == "seven"
    store.clear()
    assert len(store) == 0


def test_file_is_aiodicts_format_after_close(tmp_path):
    path = str(tmp_path / "db.json")
    store = aiodict(path, sort_keys=True)
    store["b"] = {"z": 1, "a": 2}
    store.set("a", [1], ttl=600)
    store.close()
    raw = open(path, encoding="utf-8").read()
    assert not raw.endswith("\n")
    doc = json.loads(raw)
    assert doc["version"] == 1
    assert list(doc["data"]) == ["a", "b"]
    assert doc["data"]["b"] == {"value": {"a": 2, "z": 1}, "expires_at": None}
    assert doc["data"]["a"]["expires_at"] > time.time() + 500
    assert os.path.exists(path + ".bak")  # create_backup=True
