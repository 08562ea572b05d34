"""AsyncLogKV: the whole LogKV API as coroutines, one core with LogKV, and an
event loop that is never held up by blocking work (CONTRACT §3).

Plain ``asyncio.run`` inside sync tests: no pytest-asyncio needed.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import os
import threading
import time

import orjson
import pytest

import logkv
from logkv import ClosedError, LogKV, LogKVError
from logkv._aio import AsyncLogKV, AsyncNamespaceView

WORKER = "logkv-aio"


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------------------
# The method set: every LogKV method has a coroutine of the same name
# ---------------------------------------------------------------------------

SYNC_ONLY = {"namespace", "transaction"}  # return objects; do no I/O themselves
DUNDERS = {"__getitem__": "getitem", "__setitem__": "setitem", "__delitem__": "delitem",
           "__contains__": "contains", "__len__": "len"}


def public_methods(cls):
    return {n for n, v in inspect.getmembers(cls, callable) if not n.startswith("_")}


def test_every_logkv_method_is_a_coroutine_with_the_same_arguments():
    names = public_methods(LogKV)
    assert {"set", "get", "incr", "compact", "stats", "mget", "touch"} <= names
    for name in sorted(names):
        assert hasattr(AsyncLogKV, name), name
        if name in SYNC_ONLY:
            continue
        amethod = getattr(AsyncLogKV, name)
        assert inspect.iscoroutinefunction(amethod), name
        sync_params = list(inspect.signature(getattr(LogKV, name)).parameters.values())
        async_params = list(inspect.signature(amethod).parameters.values())
        assert [(p.name, p.kind) for p in async_params] == \
            [(p.name, p.kind) for p in sync_params], name
        for s, a in zip(sync_params, async_params):
            if s.default is not inspect.Parameter.empty and type(s.default) in (int, float, bool,
                                                                                str, type(None)):
                assert a.default == s.default, (name, s.name)
    for dunder, name in DUNDERS.items():
        assert hasattr(LogKV, dunder)
        assert inspect.iscoroutinefunction(getattr(AsyncLogKV, name)), name
    assert inspect.iscoroutinefunction(AsyncLogKV.aclose)
    # views have the whole set too
    for name in names | set(DUNDERS.values()):
        assert hasattr(AsyncNamespaceView, name), name


def test_constructor_takes_logkvs_arguments_and_checks_them_at_once(tmp_path):
    assert list(inspect.signature(LogKV).parameters)[0] == "path"
    with pytest.raises(TypeError):
        AsyncLogKV(str(tmp_path / "db.json"), no_such_option=1)
    AsyncLogKV(str(tmp_path / "db.json"), durability="os", autosave_delay=0.1)
    assert os.listdir(tmp_path) == []  # constructing touches no file


def test_exported_from_the_package():
    assert logkv.AsyncLogKV is AsyncLogKV


# ---------------------------------------------------------------------------
# Same results as LogKV: one scenario run against both, compared call by call
# ---------------------------------------------------------------------------


async def scenario(call):
    """Every method, with results and errors; ``call(name, *args, **kw)``."""
    out = []

    async def c(name, *args, **kw):
        try:
            r = await call(name, *args, **kw)
        except Exception as exc:  # noqa: BLE001 -- compared as type + message
            out.append((name, "raised", type(exc).__name__, str(exc)))
            return None
        if name == "ttl" and isinstance(r, float):
            r = round(r, -1)  # seconds left move while the test runs
        if name == "stats":
            # paths, byte sizes (expiry floats differ in digits) and timing differ
            r = {k: v for k, v in r.items() if k not in (
                "file_path", "wal_path", "last_compaction", "last_compaction_lock_hold_ms",
                "wal_size_bytes", "file_size_bytes", "dirty")}
        out.append((name, r))
        return r

    await c("set", "a", 1)
    await c("setitem", "b", {"x": [1, 2]})
    await c("get", "a")
    await c("get", "missing", "dflt")
    await c("getitem", "b")
    await c("getitem", "missing")
    await c("contains", "a")
    await c("contains", "zz")
    await c("len")
    await c("set", 5, "five")  # non-str key -> str()
    await c("get", "5")
    await c("exists", 5)
    await c("incr", "visits")
    await c("incr", "visits", 5)
    await c("incr", "visits", 0.5)
    await c("incr", "b")  # not numeric
    await c("set", "flag", True)
    await c("incr", "flag")  # bool is not numeric
    await c("append", "admins", 1)
    await c("append", "admins", 1, unique=True)
    await c("append", "admins", 2)
    await c("extend", "admins", [3, 3, 4], unique=True)
    await c("extend", "admins", (5, 5))
    await c("remove", "admins", 5, all_occurrences=True)
    await c("remove", "admins", 2)
    await c("remove", "admins", 99)
    await c("remove", "nolist", 1)
    await c("append", "a", 1)  # not a list
    await c("set", "otp", "918273", ttl=600)
    await c("ttl", "otp")
    await c("ttl", "a")
    await c("ttl", "missing")
    await c("expire", "a", 1200)
    await c("ttl", "a")
    await c("expire", "missing", 5)
    await c("expire", "a", 0)
    await c("set", "z", 1, ttl=-1)
    await c("persist", "a")
    await c("ttl", "a")
    await c("persist", "missing")
    await c("touch", "otp", 900)
    await c("ttl", "otp")
    await c("touch", "missing", 0)  # KeyError checked before ttl
    await c("touch", "otp")
    await c("mset", {"m1": 1, "m2": [2]}, ttl=300)
    await c("mget", ["m1", "m2", "nope"], "d")
    await c("update", {"u1": 1}, u2=2)
    await c("update", [("u3", 3)])
    await c("setdefault", "u1", 100)
    await c("setdefault", "sd", [])
    await c("pop", "u3")
    await c("pop", "u3", "gone")
    await c("pop", "u3")
    await c("delitem", "u2")
    await c("delitem", "u2")
    await c("keys")
    await c("values")
    await c("items")
    await c("copy")
    await c("cleanup_expired")
    await c("stats")
    await c("flush")
    await c("stats")
    await c("compact")
    await c("reload")
    await c("keys")
    await c("clear")
    await c("len")
    await c("set", "after", "clear")
    return out


def test_same_results_as_logkv(tmp_path):
    sync_db = LogKV(str(tmp_path / "sync.json"))

    async def sync_call(name, *args, **kw):
        name = {v: k for k, v in DUNDERS.items()}.get(name, name)
        return getattr(sync_db, name)(*args, **kw)

    expected = run(scenario(sync_call))
    sync_db.close()

    async def main():
        async with AsyncLogKV(str(tmp_path / "async.json")) as db:
            async def async_call(name, *args, **kw):
                return await getattr(db, name)(*args, **kw)

            got = await scenario(async_call)
        return got

    got = run(main())
    assert len(got) == len(expected) > 60
    for e, g in zip(expected, got):
        assert g == e


def test_namespace_view_same_results_as_sync_view(tmp_path):
    sync_db = LogKV(str(tmp_path / "sync.json"))
    sv = sync_db.namespace("users")

    async def sync_call(name, *args, **kw):
        name = {v: k for k, v in DUNDERS.items()}.get(name, name)
        return getattr(sv, name)(*args, **kw)

    expected = run(scenario(sync_call))
    sync_db.close()

    async def main():
        async with AsyncLogKV(str(tmp_path / "async.json")) as db:
            view = db.namespace("users")

            async def async_call(name, *args, **kw):
                return await getattr(view, name)(*args, **kw)

            got = await scenario(async_call)
        return got

    got = run(main())
    assert got == expected


# ---------------------------------------------------------------------------
# Opening, closing, persistence
# ---------------------------------------------------------------------------


def test_ways_to_open(tmp_path):
    p = str(tmp_path / "db.json")

    async def main():
        async with AsyncLogKV(p) as db:
            await db.set("a", 1)
        async with AsyncLogKV.open(p, durability="always") as db:
            assert await db.get("a") == 1
            assert (await db.stats())["durability"] == "always"
            await db.set("b", 2)
        db = await AsyncLogKV.open(p)
        assert await db.get("b") == 2
        await db.aclose()
        db = AsyncLogKV(p)
        assert await db.open() is db
        assert await db.open() is db  # idempotent
        await db.close()
        db = AsyncLogKV(p)  # no explicit open: the first call opens
        assert await db.getitem("a") == 1
        await db.close()

    run(main())
    with LogKV(p) as db:
        assert db.copy() == {"a": 1, "b": 2}


def test_open_and_blocking_calls_run_in_the_worker_thread(tmp_path):
    p = str(tmp_path / "db.json")
    with LogKV(p) as db:
        db["k"] = "v"
    seen = []

    def deserializer(value):
        seen.append(("load", threading.current_thread().name))
        return value

    def serializer(value):
        seen.append(("encode", threading.current_thread().name))
        return value.isoformat()

    async def main():
        loop_thread = threading.current_thread().name
        db = AsyncLogKV(p, serializer=serializer, deserializer=deserializer,
                        durability="always")
        assert seen == []
        await db.open()
        await db.set("when", dt.datetime(2026, 1, 1))
        async with db.transaction():
            await db.set("when2", dt.date(2026, 1, 2))
        await db.close()
        return loop_thread

    loop_thread = run(main())
    # each set also applies the deserializer to what it stored: memory holds
    # what a reopen reads back
    assert [k for k, _ in seen] == ["load", "encode", "load", "encode", "load"]
    for _kind, thread in seen:
        assert thread.startswith(WORKER) and thread != loop_thread


def test_close_is_idempotent_and_later_calls_raise(tmp_path):
    async def main():
        db = AsyncLogKV(str(tmp_path / "db.json"))
        await db.set("a", 1)
        await db.close()
        await db.close()
        await db.aclose()
        assert db.closed
        for call in (db.get("a"), db.set("a", 2), db.keys(), db.incr("n"), db.flush(),
                     db.stats(), db.open()):
            with pytest.raises(ClosedError) as info:
                await call
            assert isinstance(info.value, RuntimeError)
        view = db.namespace("x")
        with pytest.raises(RuntimeError):
            await view.set("a", 1)

    run(main())
    with LogKV(str(tmp_path / "db.json")) as db:
        assert db["a"] == 1


def test_close_compacts_so_the_snapshot_alone_holds_everything(tmp_path):
    p = str(tmp_path / "db.json")

    async def main():
        async with AsyncLogKV(p) as db:
            await db.mset({f"k{i}": i for i in range(100)})
            await db.set("t", "x", ttl=600)

    run(main())
    snap = orjson.loads(open(p, "rb").read())
    assert snap["data"]["k99"] == {"value": 99, "expires_at": None}
    assert snap["data"]["t"]["expires_at"] > time.time() + 500


def test_async_iteration_and_repr(tmp_path):
    async def main():
        db = AsyncLogKV(str(tmp_path / "db.json"))
        assert "unopened" in repr(db)
        await db.mset({"a": 1, "b": 2})
        assert [k async for k in db] == ["a", "b"]
        assert repr(db).endswith("size=2)")
        await db.close()
        assert "closed" in repr(db)

    run(main())


def test_a_write_in_another_store_object_is_seen_and_caught_up_in_the_worker(tmp_path):
    """Another process's records are read in the worker, not on the loop."""
    p = str(tmp_path / "db.json")
    threads = []

    def deserializer(value):
        threads.append(threading.current_thread().name)
        return value

    async def main():
        async with AsyncLogKV(p, deserializer=deserializer) as db:
            other = LogKV(p)  # a second store object: a stand-in for another process
            other["from_other"] = {"n": 1}
            assert await db.get("from_other") == {"n": 1}
            other.incr("c", 3)
            assert await db.mget(["c"]) == [3]
            other.close()

    run(main())
    assert threads and all(t.startswith(WORKER) for t in threads)


# ---------------------------------------------------------------------------
# Namespaces
# ---------------------------------------------------------------------------


def test_namespace_views(tmp_path):
    async def main():
        async with AsyncLogKV(str(tmp_path / "db.json")) as db:
            users = db.namespace("users")
            assert isinstance(users, AsyncNamespaceView)
            assert users.prefix == "users:"
            await users.set("1001", {"name": "Ali"})
            assert await db.get("users:1001") == {"name": "Ali"}
            assert await users.getitem("1001") == {"name": "Ali"}
            admins = users.namespace("admins", separator=".")
            assert admins.prefix == "users:admins."
            await admins.incr("count", 2)
            assert await db.get("users:admins.count") == 2
            await users.set("otp", 1, ttl=600)
            stats = await users.stats()
            assert (stats["keys"], stats["ttl_keys"]) == (3, 1)
            assert await users.keys() == ["1001", "admins.count", "otp"]
            await db.set("other", 1)
            await users.clear()
            assert await db.keys() == ["other"]
            async with users.transaction() as tx:
                assert tx is users
                await tx.mset({"a": 1, "b": 2})
            assert await db.mget(["users:a", "users:b"]) == [1, 2]
            await users.flush()
            await users.compact()
            await users.close()  # acts on the store
            assert db.closed

    run(main())


def test_namespace_made_before_open(tmp_path):
    async def main():
        db = AsyncLogKV(str(tmp_path / "db.json"))
        users = db.namespace("users")
        await users.set("x", 1)  # opens the store
        assert await db.get("users:x") == 1
        await db.close()

    run(main())


# ---------------------------------------------------------------------------
# Transactions
# ---------------------------------------------------------------------------


def wal_records(path):
    with open(path + ".wal", "rb") as f:
        return f.read().count(b"\n") - 1  # minus the header


def test_transaction_commits_one_record(tmp_path):
    p = str(tmp_path / "db.json")

    async def main():
        async with AsyncLogKV(p, compact_on_close=False) as db:
            await db.set("n", 1)
            before = wal_records(p)
            async with db.transaction() as tx:
                assert tx is db
                await tx.set("a", 1)
                await tx.incr("n", 10)
                await tx.append("l", "x")
                assert await tx.get("a") == 1  # the block sees its own writes
                assert await tx.mget(["a", "n"]) == [1, 11]
                assert await tx.keys() == ["n", "a", "l"]
            assert wal_records(p) == before + 1
            assert await db.copy() == {"n": 11, "a": 1, "l": ["x"]}

    run(main())


def test_transaction_rolls_back_on_exception(tmp_path):
    p = str(tmp_path / "db.json")

    async def main():
        async with AsyncLogKV(p, compact_on_close=False) as db:
            await db.mset({"a": 1, "n": 5})
            before = wal_records(p)
            with pytest.raises(ZeroDivisionError):
                async with db.transaction():
                    await db.set("a", 2)
                    await db.incr("n")
                    await db.delitem("a")
                    await db.set("new", 1)
                    1 / 0
            assert await db.copy() == {"a": 1, "n": 5}
            assert wal_records(p) == before
            async with db.transaction():  # the store is usable afterwards
                await db.set("a", 3)
            assert await db.get("a") == 3

    run(main())
    with LogKV(p) as db:
        assert db.copy() == {"a": 3, "n": 5}


def test_nested_transactions_join_the_outer(tmp_path):
    p = str(tmp_path / "db.json")

    async def main():
        async with AsyncLogKV(p, compact_on_close=False) as db:
            before = wal_records(p)
            async with db.transaction():
                await db.set("a", 1)
                with pytest.raises(KeyError):
                    async with db.transaction():
                        await db.set("inner", 1)
                        raise KeyError("inner")  # undoes only the inner block
                async with db.namespace("v").transaction() as v:
                    await v.set("b", 2)
            assert wal_records(p) == before + 1
            assert await db.copy() == {"a": 1, "v:b": 2}

    run(main())


def test_other_tasks_never_see_or_join_an_open_transaction(tmp_path):
    """A task's calls during another task's transaction run after it, outside it:
    they neither see its writes early nor get rolled back with it."""
    p = str(tmp_path / "db.json")

    async def main():
        async with AsyncLogKV(p) as db:
            await db.set("a", "old")
            in_tx = asyncio.Event()
            release = asyncio.Event()
            seen = []

            async def holder():
                with pytest.raises(RuntimeError):
                    async with db.transaction():
                        await db.set("a", "uncommitted")
                        in_tx.set()
                        await release.wait()
                        raise RuntimeError("abort")

            async def other():
                await in_tx.wait()
                seen.append(await db.get("a"))
                await db.set("b", "outside")  # must not join the failing block
                seen.append(await db.get("b"))

            t1 = asyncio.create_task(holder())
            t2 = asyncio.create_task(other())
            await in_tx.wait()
            for _ in range(20):
                await asyncio.sleep(0)
            assert seen == []  # waiting for the transaction, loop still running
            release.set()
            await asyncio.gather(t1, t2)
            assert seen == ["old", "outside"]
            assert await db.copy() == {"a": "old", "b": "outside"}

    run(main())


def test_cancelled_transaction_rolls_back_and_frees_the_store(tmp_path):
    p = str(tmp_path / "db.json")

    async def main():
        async with AsyncLogKV(p) as db:
            started = asyncio.Event()

            async def block():
                async with db.transaction():
                    await db.set("a", 1)
                    started.set()
                    await asyncio.sleep(60)

            t = asyncio.create_task(block())
            await started.wait()
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            assert await db.get("a") is None
            async with db.transaction():
                await db.set("b", 2)
            assert await db.copy() == {"b": 2}

    run(main())


def test_compact_inside_a_transaction_raises_the_engines_error(tmp_path):
    async def main():
        async with AsyncLogKV(str(tmp_path / "db.json")) as db:
            async with db.transaction():
                await db.set("a", 1)
                with pytest.raises(LogKVError):
                    await db.compact()
            assert await db.get("a") == 1

    run(main())


# ---------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["interval", "always"])
def test_concurrent_tasks_incr_exactly(tmp_path, durability):
    p = str(tmp_path / "db.json")
    tasks, per_task = 20, 25 if durability == "always" else 100

    async def main():
        async with AsyncLogKV(p, durability=durability) as db:
            async def worker(i):
                for _ in range(per_task):
                    await db.incr("counter")
                    await db.append("seen", i)

            await asyncio.gather(*(worker(i) for i in range(tasks)))
            assert await db.get("counter") == tasks * per_task
            assert len(await db.get("seen")) == tasks * per_task

    run(main())
    with LogKV(p) as db:
        assert db["counter"] == tasks * per_task


def test_always_mode_tasks_share_fsyncs(tmp_path):
    """Group commit: concurrent tasks' writes in "always" mode share fsyncs
    (they run in a pool of commit threads, not one after another)."""
    from logkv._fs import FileSystem

    class CountingFS(FileSystem):
        syncs = 0

        def fdatasync(self, fd):
            CountingFS.syncs += 1
            super().fdatasync(fd)

    tasks, per_task = 16, 10

    async def main():
        async with AsyncLogKV(str(tmp_path / "db.json"), durability="always",
                              compact_on_close=False, _fs=CountingFS()) as db:
            before = CountingFS.syncs

            async def worker():
                for _ in range(per_task):
                    await db.incr("n")

            await asyncio.gather(*(worker() for _ in range(tasks)))
            assert await db.get("n") == tasks * per_task
            assert (await db.stats())["dirty"] is False
            return CountingFS.syncs - before

    syncs = run(main())
    assert 0 < syncs < 0.75 * tasks * per_task


def test_two_event_loops_in_threads_share_one_store_file(tmp_path):
    p = str(tmp_path / "db.json")
    n = 200

    def thread_main():
        async def main():
            async with AsyncLogKV(p) as db:
                for _ in range(n):
                    await db.incr("c")
        asyncio.run(main())

    threads = [threading.Thread(target=thread_main) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with LogKV(p) as db:
        assert db["c"] == 3 * n


# ---------------------------------------------------------------------------
# The event loop is not held up by compaction (a ratio, not a wall-clock time)
# ---------------------------------------------------------------------------


def build_store(path, n, value):
    db = LogKV(path, auto_compact=False, compact_on_close=False)
    batch = 20_000
    for start in range(0, n, batch):
        db.mset({f"user:{i:07d}": value(i) for i in range(start, min(n, start + batch))})
    db.close()


async def worst_lag_during(db, work):
    """Run ``work`` while a task ticks every millisecond; return (worst lag, duration)."""
    lags = []
    stop = False

    async def ticker():
        while not stop:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t0 - 0.001)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    lags.clear()
    t0 = time.perf_counter()
    await work()
    duration = time.perf_counter() - t0
    stop = True
    await tick
    return max(lags), duration, len(lags)


def check_compaction_lag(path):
    async def main():
        async with AsyncLogKV(path, auto_compact=False) as db:
            before = (await db.stats())["compactions"]
            worst, duration, ticks = await worst_lag_during(db, db.compact)
            stats = await db.stats()
            assert stats["compactions"] == before + 1
            assert stats["keys"] == 300_000
        return worst, duration, ticks

    worst, duration, ticks = run(main())
    print(f"\ncompaction of 300k keys: {duration * 1000:.0f} ms; worst loop lag "
          f"{worst * 1000:.1f} ms ({worst / duration:.1%}); {ticks} ticks")
    assert ticks > 10  # the ticker did run during the compaction
    # A small fraction of the compaction's own time (no absolute wall-clock
    # figure). In a child process the worst lag is ~1% of it; a compaction that
    # holds the GIL in this process (orjson parse/dump) gives 20-45%.
    assert worst < 0.10 * duration


def test_compaction_of_300k_keys_does_not_hold_up_the_loop(tmp_path):
    p = str(tmp_path / "db.json")
    build_store(p, 300_000, lambda i: {"name": f"user {i}", "score": i})
    check_compaction_lag(p)


def test_compaction_of_300k_small_keys_does_not_hold_up_the_loop(tmp_path):
    p = str(tmp_path / "db.json")
    with open(p, "wb") as f:  # a pickleDB-style file: 300k keys, 4.9 MB
        f.write(orjson.dumps({f"k{i}": i for i in range(300_000)}))
    check_compaction_lag(p)
