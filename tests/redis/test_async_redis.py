"""AsyncRedisKV, and the promise that switching engines is one constructor:
the same method names and signatures, the same program, the same results."""
from __future__ import annotations

import asyncio
import inspect

import pytest

from logkv import AsyncLogKV, AsyncRedisKV, ClosedError, LogKV, RedisKV, TransactionConflict

# What only the file engine has, on purpose (README: "When you outgrow one machine").
FILE_ONLY = {"path", "sync"}


def _public(cls):
    return {n for n in dir(cls) if not n.startswith("_")}


@pytest.mark.parametrize("file_cls,redis_cls", [(LogKV, RedisKV), (AsyncLogKV, AsyncRedisKV)])
def test_every_method_is_there_with_the_same_signature(file_cls, redis_cls):
    missing = _public(file_cls) - _public(redis_cls) - FILE_ONLY
    assert not missing
    for name in sorted(_public(file_cls) - FILE_ONLY):
        f, r = getattr(file_cls, name), getattr(redis_cls, name)
        if callable(f) and not isinstance(f, property):
            assert inspect.signature(f).parameters == inspect.signature(r).parameters, name
            assert (inspect.iscoroutinefunction(f) == inspect.iscoroutinefunction(r)
                    or name == "transaction"), name


async def program(db):
    """A little bot's storage code, written once against the async API."""
    await db.set("visits", 0)
    for _ in range(5):
        await db.incr("visits")
    await db.set("otp:42", "9817", ttl=60)
    users = db.namespace("users")
    await users.setitem("ann", {"lang": "en"})
    await users.append("ann:tags", "admin")
    async with db.transaction():
        await db.setitem("a", 1)
        await db.setitem("b", [await db.get("a")])
    removed = await db.pop("a")
    return {
        "visits": await db.getitem("visits"),
        "otp_ttl": 59 < await db.ttl("otp:42") <= 60,
        "users": sorted(await users.items()),
        "removed": removed,
        "b": await db.get("b"),
        "len": await db.len(),
        "has": await db.contains("b"),
    }


def test_the_same_program_gives_the_same_results(store_path, redis_url):
    async def run():
        async with AsyncLogKV(store_path) as f, AsyncRedisKV(redis_url) as r:
            return await program(f), await program(r)

    on_file, on_redis = asyncio.run(run())
    assert on_file == on_redis
    assert on_file["visits"] == 5 and on_file["len"] == 5


def test_concurrent_tasks_lose_no_update(redis_url):
    async def run():
        async with AsyncRedisKV(redis_url) as db:
            async def worker(i):
                for j in range(20):
                    await db.incr("n")
                    await db.append("log", f"{i}:{j}")

            await asyncio.gather(*(worker(i) for i in range(8)))
            return await db.get("n"), await db.get("log")

    n, log = asyncio.run(run())
    assert n == 160 and len(set(log)) == 160


def test_async_transaction_commits_rolls_back_and_conflicts(redis_url):
    async def run():
        async with AsyncRedisKV(redis_url) as db, AsyncRedisKV(redis_url) as other:
            async with db.transaction():
                await db.setitem("a", 1)
                assert await db.getitem("a") == 1
                assert await other.get("a") is None
            assert await other.get("a") == 1
            with pytest.raises(ValueError):
                async with db.transaction():
                    await db.setitem("a", 2)
                    raise ValueError
            assert await db.get("a") == 1
            with pytest.raises(TransactionConflict):
                async with db.transaction():
                    v = await db.getitem("a")
                    await other.setitem("a", 10)
                    await db.setitem("a", v + 1)
            assert await db.get("a") == 10
            # another task does not see (or join) this task's block
            async with db.transaction():
                await db.setitem("t", 1)
                seen = await asyncio.create_task(_outside(other))
            assert seen is None

    async def _outside(store):
        return await store.get("t")

    asyncio.run(run())


def test_open_on_the_class_and_on_a_store(redis_url):
    async def run():
        async with AsyncRedisKV.open(redis_url, prefix="o:") as db:
            await db.set("a", 1)
        assert db.closed
        db2 = await AsyncRedisKV.open(redis_url, prefix="o:")
        assert await db2.get("a") == 1
        assert await db2.open() is db2
        await db2.close()

    asyncio.run(run())


def test_async_close_and_errors(redis_url):
    async def run():
        db = AsyncRedisKV(redis_url)  # no I/O until the first call
        assert await db.get("x", 5) == 5
        with pytest.raises(KeyError):
            await db.getitem("x")
        with pytest.raises(ValueError):
            await db.set("x", 1, ttl=0)
        keys = [k async for k in db]
        assert keys == []
        await db.close()
        await db.close()
        with pytest.raises(ClosedError):
            await db.get("x")

    asyncio.run(run())
