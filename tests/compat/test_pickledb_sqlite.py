"""``from logkv.compat import PickleDBSQLite`` replaces pickleDB 1.6's SQLite
class: same API and results, same table layout (so pickleDB's database files
keep working), stdlib sqlite3, one connection, no blocking call on the loop."""
from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid

import orjson
import pytest

from logkv.compat import PickleDBSQLite


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------------------
# pickleDB's own two SQLite tests, import changed
# ---------------------------------------------------------------------------


def test_sqlite_sync_set_get_and_all(tmp_path):
    sqlite_path = tmp_path / "kv.sqlite3"
    kv = PickleDBSQLite(str(sqlite_path))
    key1 = kv.set(None, {"foo": "bar"})
    key2 = kv.set("explicit", [1, 2, 3])
    assert isinstance(key1, str)
    assert key2 == "explicit"
    assert kv.get(key1) == {"foo": "bar"}
    assert kv.get("explicit") == [1, 2, 3]
    keys = set(kv.all())
    assert key1 in keys
    assert "explicit" in keys
    kv.close()


def test_sqlite_async_set_get_and_purge(tmp_path):
    async def main():
        kv = PickleDBSQLite(str(tmp_path / "kv_async.sqlite3"))
        key = await kv.set(None, {"async": True})
        assert await kv.get(key) == {"async": True}
        await kv.set("x", 1)
        await kv.set("y", 2)
        keys = set(await kv.all())
        assert key in keys
        assert {"x", "y"} <= keys
        assert await kv.remove("x") is True
        assert await kv.remove("x") is False
        assert await kv.purge() is True
        assert await kv.all() == []
        await kv.close()

    run(main())


# ---------------------------------------------------------------------------
# The documented API, sync and async
# ---------------------------------------------------------------------------


def test_defaults():
    import inspect

    params = inspect.signature(PickleDBSQLite).parameters
    # pickleDB's two parameters, then logkv's keyword-only addition (the mode
    # of a database file it creates)
    assert [(n, p.default) for n, p in params.items()] == \
        [("sqlite_path", "pickledb.sqlite3"), ("table_name", "kv"), ("mode", None)]
    assert params["mode"].kind is inspect.Parameter.KEYWORD_ONLY


def test_set_none_makes_a_uuid4_key_and_set_upserts(tmp_path):
    kv = PickleDBSQLite(str(tmp_path / "kv.sqlite3"))
    k = kv.set(None, 1)
    assert uuid.UUID(k).version == 4 and str(uuid.UUID(k)) == k
    assert kv.set(None, 1) != k
    assert kv.set("a", 1) == "a"
    assert kv.set("a", {"v": 2}) == "a"
    assert kv.get("a") == {"v": 2}
    assert kv.set(5, "five") == "5"
    assert kv.get(5) == "five"
    kv.close()


def test_get_missing_raises_keyerror_without_default(tmp_path):
    kv = PickleDBSQLite(str(tmp_path / "kv.sqlite3"))
    with pytest.raises(KeyError) as info:
        kv.get("missing")
    assert info.value.args == ("missing",)
    assert kv.get("missing", default=None) is None
    assert kv.get("missing", "d") == "d"

    async def main():
        with pytest.raises(KeyError):
            await kv.get("missing")
        assert await kv.get("missing", default=0) == 0

    run(main())
    kv.close()


def test_all_is_sorted_remove_and_purge(tmp_path):
    kv = PickleDBSQLite(str(tmp_path / "kv.sqlite3"))
    for k in ("b", "c", "a"):
        kv.set(k, k)
    assert kv.all() == ["a", "b", "c"]
    assert kv.remove("b") is True and kv.remove("b") is False
    assert kv.purge() is True and kv.all() == []
    kv.close()


def test_table_layout_and_values_are_orjson_bytes(tmp_path):
    path = str(tmp_path / "kv.sqlite3")
    kv = PickleDBSQLite(path)
    kv.set("k", {"a": [1, 2.5, None, "é"]})
    kv.close()
    conn = sqlite3.connect(path)
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name='kv'").fetchone()
    cols = [(r[1], r[2], r[3], r[5]) for r in conn.execute("PRAGMA table_info(kv)")]
    assert cols == [("key", "TEXT", 0, 1), ("value", "BLOB", 1, 0)]
    assert "PRIMARY KEY" in sql and "NOT NULL" in sql
    value, kind = conn.execute("SELECT value, typeof(value) FROM kv").fetchone()
    assert kind == "blob" and value == orjson.dumps({"a": [1, 2.5, None, "é"]})
    conn.close()


def test_a_file_written_by_pickledb_opens_and_stays_usable(tmp_path):
    path = str(tmp_path / "pickledb.sqlite3")
    # What pickleDB 1.6 writes: its CREATE TABLE, orjson bytes per row.
    conn = sqlite3.connect(path)
    conn.execute("""
                CREATE TABLE IF NOT EXISTS kv (
                    key   TEXT PRIMARY KEY,
                    value BLOB NOT NULL
                )
                """)
    conn.execute("INSERT INTO kv (key, value) VALUES (?, ?)",
                 ("0b9c6e9e-4c1f-4a1e-9a57-5f0c1e6f2b11", orjson.dumps({"foo": "bar"})))
    conn.execute("INSERT INTO kv (key, value) VALUES (?, ?)", ("n", orjson.dumps(7)))
    conn.commit()
    conn.close()
    kv = PickleDBSQLite(path)
    assert kv.get("n") == 7
    assert kv.get("0b9c6e9e-4c1f-4a1e-9a57-5f0c1e6f2b11") == {"foo": "bar"}
    kv.set("n", 8)
    kv.close()
    conn = sqlite3.connect(path)
    assert orjson.loads(conn.execute("SELECT value FROM kv WHERE key='n'").fetchone()[0]) == 8
    conn.close()


def test_custom_table_name(tmp_path):
    path = str(tmp_path / "kv.sqlite3")
    a = PickleDBSQLite(path, table_name="sessions")
    b = PickleDBSQLite(path)
    a.set("x", 1)
    b.set("x", 2)
    assert a.get("x") == 1 and b.get("x") == 2
    a.close()
    b.close()


def test_one_connection_is_reused(tmp_path, monkeypatch):
    connects = []
    real = sqlite3.connect

    def counting(*a, **k):
        connects.append(a)
        return real(*a, **k)

    monkeypatch.setattr(sqlite3, "connect", counting)
    kv = PickleDBSQLite(str(tmp_path / "kv.sqlite3"))

    async def main():
        for i in range(20):
            await kv.set(str(i), i)
            await kv.get(str(i))
        await kv.all()
        await kv.remove("0")

    run(main())
    for i in range(20):
        kv.set(str(i), i)
    kv.close()
    assert len(connects) == 1


class RecordingConnection:
    """Wraps the sqlite3 connection and records the thread of every execute."""

    def __init__(self, conn):
        self._conn = conn
        self.threads = []

    def execute(self, *a):
        self.threads.append(threading.current_thread().name)
        return self._conn.execute(*a)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def test_async_calls_run_off_the_event_loop(tmp_path):
    kv = PickleDBSQLite(str(tmp_path / "kv.sqlite3"))
    rec = kv._conn = RecordingConnection(kv._conn)

    async def main():
        loop_thread = threading.current_thread().name
        await kv.set("a", 1)
        await kv.get("a")
        await kv.all()
        await kv.remove("a")
        await kv.purge()
        return loop_thread

    loop_thread = run(main())
    assert len(rec.threads) == 5
    assert loop_thread not in rec.threads
    kv.set("sync", 1)  # sync code: runs in the caller's thread
    assert rec.threads[-1] == threading.current_thread().name
    kv.close()


def test_close_in_async_code_is_awaitable_and_closes(tmp_path):
    async def main():
        kv = PickleDBSQLite(str(tmp_path / "kv.sqlite3"))
        await kv.set("a", 1)
        closing = kv.close()
        assert asyncio.iscoroutine(closing)
        assert await closing is None
        with pytest.raises(sqlite3.ProgrammingError):
            await kv.get("a")

    run(main())


def test_threads_are_safe(tmp_path):
    kv = PickleDBSQLite(str(tmp_path / "kv.sqlite3"))
    errors = []

    def worker(t):
        try:
            for i in range(50):
                kv.set(f"{t}:{i}", i)
                assert kv.get(f"{t}:{i}") == i
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(kv.all()) == 200
    kv.close()


def test_a_failed_write_leaves_the_connection_usable(tmp_path):
    kv = PickleDBSQLite(str(tmp_path / "kv.sqlite3"))
    with pytest.raises(TypeError):
        kv.set("bad", {1, 2})  # orjson cannot encode a set
    kv.set("ok", 1)
    assert kv.all() == ["ok"]
    kv.close()
