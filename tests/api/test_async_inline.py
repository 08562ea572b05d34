"""AsyncLogKV runs a mutation inline on the event loop when it can complete
without waiting, and in the worker thread when it would wait: for the store's
thread lock, another process's write lock, or another process's records.

No timings: what is checked is which thread did the write, what the store
holds, and that the loop kept running while a call could not proceed.
"""
from __future__ import annotations

import asyncio
import fcntl
import gc
import os
import threading

import pytest

from logkv import LogKV
from logkv._aio import AsyncLogKV
from logkv._engine import Engine
from test_nonblocking import Holder  # a thread holding a lock, shared with those tests

WORKER = "logkv-aio"


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def writers(monkeypatch):
    """The name of the thread of every record appended to a log, in order."""
    names: list[str] = []
    append = Engine._append

    def recording(self, lines, records=1):
        names.append(threading.current_thread().name)
        return append(self, lines, records)

    monkeypatch.setattr(Engine, "_append", recording)
    return names


async def spin(n: int = 50) -> int:
    """Let the loop run other callbacks ``n`` times; returns how many ran."""
    done = 0
    for _ in range(n):
        await asyncio.sleep(0)
        done += 1
    return done


def log_bytes(path: str) -> bytes:
    with open(path + ".wal", "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------
# Inline: on the loop's thread, same results as the sync store
# ---------------------------------------------------------------------------


async def every_mutation(db):
    out = []
    out.append(await db.set("a", 1))
    out.append(await db.setitem("b", {"x": [1, 2]}))
    out.append(await db.set("t", "v", ttl=100))
    out.append(await db.incr("n", 5))
    out.append(await db.incr("n", 0.5))
    out.append(await db.append("l", 1))
    out.append(await db.extend("l", [2, 3, 2]))
    out.append(await db.append("l", 3, unique=True))
    out.append(await db.remove("l", 2, all_occurrences=True))
    out.append(await db.setdefault("sd", [0]))
    out.append(await db.setdefault("sd", [9]))
    out.append(await db.update({"u1": 1}, u2=2))
    out.append(await db.update(iter([("u3", 3)])))
    out.append(await db.mset({"m1": 1, "m2": 2}, ttl=50))
    out.append(await db.expire("a", 100))
    out.append(await db.persist("a"))
    out.append(await db.touch("b", 30))
    out.append(await db.touch("b"))
    out.append(await db.pop("m1"))
    out.append(await db.pop("missing", "dflt"))
    out.append(await db.delitem("u1"))
    out.append(await db.popitem())
    out.append(await db.cleanup_expired())
    users = db.namespace("users")
    out.append(await users.set("1", "ann"))
    out.append(await users.incr("count"))
    out.append(await users.clear())
    out.append(sorted(await db.items()))
    out.append(await db.clear())
    out.append(await db.set("last", True))
    return out


class SyncAsAsync:
    """A sync store behind the async method names, to compare results."""

    def __init__(self, db) -> None:
        self._db = db

    def __getattr__(self, name):
        target = {"setitem": "__setitem__", "delitem": "__delitem__"}.get(name, name)
        fn = getattr(self._db, target)

        async def call(*args, **kwargs):
            return fn(*args, **kwargs)
        return call

    def namespace(self, prefix):
        return SyncAsAsync(self._db.namespace(prefix))


def test_mutations_run_inline_with_the_same_results_as_logkv(tmp_path, writers):
    with LogKV(str(tmp_path / "sync.json")) as sdb:
        expected = run(every_mutation(SyncAsAsync(sdb)))
        expected_items = sorted(sdb.items())

    async def main():
        async with AsyncLogKV(str(tmp_path / "async.json")) as db:
            writers.clear()
            loop_thread = threading.current_thread().name
            got = await every_mutation(db)
            return loop_thread, got, sorted(await db.items())

    loop_thread, got, items = run(main())
    assert got == expected
    assert items == expected_items
    # every record of the block above was written on the loop's own thread
    # (close's compaction writes none: it runs in a child process)
    assert writers and set(writers) == {loop_thread}


def test_an_inline_set_calls_the_serializer_on_the_loops_thread(tmp_path):
    import datetime as dt

    seen = []

    def serializer(value):
        seen.append(threading.get_ident())
        return value.isoformat()

    async def main():
        async with AsyncLogKV(str(tmp_path / "db.json"), serializer=serializer) as db:
            await db.set("when", dt.date(2026, 1, 2))
            return threading.get_ident()

    assert seen == [run(main())]
    with LogKV(str(tmp_path / "db.json")) as db:
        assert db["when"] == "2026-01-02"


def test_always_mode_and_transactions_still_run_in_threads(tmp_path, writers):
    async def main():
        async with AsyncLogKV(str(tmp_path / "a.json"), durability="always") as db:
            await db.set("k", 1)
            await db.incr("n")
        async with AsyncLogKV(str(tmp_path / "b.json")) as db:
            async with db.transaction():
                await db.set("k", 1)
                await db.incr("n")

    run(main())
    assert len(writers) == 3
    assert writers[0].startswith("logkv-aio-commit") and writers[1].startswith("logkv-aio-commit")
    assert writers[2].startswith(WORKER) and not writers[2].startswith("logkv-aio-commit")


# ---------------------------------------------------------------------------
# Falls back to the worker when it would wait; the loop keeps running
# ---------------------------------------------------------------------------


def test_thread_lock_held_by_another_thread_falls_back_to_the_worker(tmp_path, writers):
    async def main():
        async with AsyncLogKV(str(tmp_path / "db.json")) as db:
            await db.set("k", 0)
            writers.clear()
            holder = Holder(db.sync._e.lock)
            try:
                task = asyncio.create_task(db.incr("k"))
                assert await spin() == 50  # the loop is not held up...
                assert not task.done()     # ...while the call waits in the worker
            finally:
                holder.release()
            assert await asyncio.wait_for(task, 10) == 1
            assert await db.get("k") == 1

    run(main())
    assert len(writers) == 1 and writers[0].startswith(WORKER)


def test_write_lock_held_by_another_descriptor_falls_back_to_the_worker(tmp_path, writers):
    p = str(tmp_path / "db.json")

    async def main():
        async with AsyncLogKV(p) as db:
            await db.set("k", "before")
            writers.clear()
            fd = os.open(p + ".lock", os.O_RDWR)  # as another process would hold it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                enabled = gc.isenabled()
                task = asyncio.create_task(db.set("k", "after"))
                ticks = await spin()
                assert ticks == 50 and not task.done()
                assert await db.get("k") == "before"  # reads still answer inline
                fcntl.flock(fd, fcntl.LOCK_UN)
                await asyncio.wait_for(task, 10)
                assert gc.isenabled() == enabled
            finally:
                os.close(fd)
            assert await db.get("k") == "after"

    run(main())
    assert len(writers) == 1 and writers[0].startswith(WORKER)
    with LogKV(p) as db:
        assert db["k"] == "after"


def test_behind_another_writer_falls_back_to_the_worker(tmp_path, writers):
    p = str(tmp_path / "db.json")

    async def main():
        async with AsyncLogKV(p) as db:
            await db.set("mine", 1)
            other = LogKV(p)  # a second store object: a stand-in for another process
            try:
                other.set("theirs", 2)
                writers.clear()
                await db.incr("mine")
                assert writers[0].startswith(WORKER)  # caught up and wrote there
                writers.clear()
                await db.incr("mine")  # nothing left to read: inline again
                assert writers == [threading.current_thread().name]
                assert await db.copy() == {"mine": 3, "theirs": 2}
            finally:
                other.close()

    run(main())


def test_a_call_submitted_after_one_queued_in_the_worker_takes_effect_after_it(tmp_path):
    """Calls of different tasks keep their order: once a call has gone to the
    worker, later ones follow it there instead of overtaking it inline."""
    release = threading.Event()

    class Slow:
        pass

    def serializer(value):
        if threading.current_thread().name.startswith(WORKER):
            assert release.wait(10)
        return "slow"

    async def main():
        async with AsyncLogKV(str(tmp_path / "db.json"), serializer=serializer) as db:
            holder = Holder(db.sync._e.lock)  # sends the first call to the worker
            try:
                first = asyncio.create_task(db.set("k", Slow()))
                await spin(5)
            finally:
                holder.release()
            # The worker is now inside the first call (its serializer waits);
            # the thread lock is free, so the second could run inline at once.
            second = asyncio.create_task(db.set("k", "second"))
            await spin(5)
            release.set()
            await asyncio.wait_for(asyncio.gather(first, second), 10)
            return await db.get("k")

    assert run(main()) == "second"
    with LogKV(str(tmp_path / "db.json")) as db:
        assert db["k"] == "second"


def test_a_tasks_own_writes_keep_their_order_across_fallbacks(tmp_path):
    async def main():
        async with AsyncLogKV(str(tmp_path / "db.json")) as db:
            e = db.sync._e

            async def writer():
                for i in range(40):
                    await db.append("seq", i)
                    await db.set("last", i)

            async def disturber():
                for _ in range(10):  # the lock busy now and then: some calls fall back
                    holder = Holder(e.lock)
                    await spin(3)
                    holder.release()
                    await spin(3)

            await asyncio.gather(writer(), disturber())
            return await db.get("seq"), await db.get("last")

    seq, last = run(main())
    assert seq == list(range(40)) and last == 39
    with LogKV(str(tmp_path / "db.json")) as db:
        assert db["seq"] == list(range(40))


def test_a_mutation_during_close_goes_behind_it_and_raises_closed(tmp_path):
    from logkv import ClosedError

    async def main():
        db = AsyncLogKV(str(tmp_path / "db.json"))
        await db.open()
        await db.set("k", 1)
        closing = asyncio.create_task(db.close())
        await asyncio.sleep(0)  # the close has started in the worker
        with pytest.raises(ClosedError):
            await db.set("k", 2)
        await closing

    run(main())
    with LogKV(str(tmp_path / "db.json")) as db:
        assert db["k"] == 1


def test_an_iterator_given_to_update_is_read_once_even_when_the_call_falls_back(tmp_path):
    async def main():
        async with AsyncLogKV(str(tmp_path / "db.json")) as db:
            holder = Holder(db.sync._e.lock)
            try:
                task = asyncio.create_task(db.update(iter([("a", 1), ("b", 2)]), c=3))
                await spin(5)
            finally:
                holder.release()
            await asyncio.wait_for(task, 10)
            return await db.copy()

    assert run(main()) == {"a": 1, "b": 2, "c": 3}


def test_automatic_compaction_is_started_in_the_worker(tmp_path, monkeypatch):
    started = []

    def start(self):
        started.append(threading.current_thread().name)
        self._want_compaction = False

    monkeypatch.setattr(Engine, "_start_auto_compaction", start)

    async def main():
        async with AsyncLogKV(str(tmp_path / "db.json"), auto_compact_min_size=2000,
                              compact_on_close=False) as db:
            for i in range(100):
                await db.set(f"k{i}", "x" * 50)

    run(main())
    assert started and all(name.startswith(WORKER) for name in started)


# ---------------------------------------------------------------------------
# Errors: the same as before, nothing changed
# ---------------------------------------------------------------------------


BAD_CALLS = [
    ("set", ("k", object()), {}),
    ("set", ("k", 1), {"ttl": -1}),
    ("set", ("k", 1), {"ttl": "soon"}),
    ("incr", ("s",), {}),
    ("incr", ("n", "1"), {}),
    ("append", ("s", 1), {}),
    ("remove", ("missing", 1), {}),
    ("delitem", ("missing",), {}),
    ("pop", ("missing",), {}),
    ("expire", ("missing", 10), {}),
    ("touch", ("missing",), {}),
    ("persist", ("missing",), {}),
    ("update", (5,), {}),
    ("update", ([1, 2],), {}),
    ("mset", ({"ok": 1, "bad": object()},), {}),
    ("setdefault", ("new", object()), {}),
]


@pytest.mark.parametrize("name,args,kwargs", BAD_CALLS, ids=[f"{c[0]}-{i}" for i, c in
                                                             enumerate(BAD_CALLS)])
def test_bad_calls_raise_what_logkv_raises_and_change_nothing(tmp_path, name, args, kwargs):
    def setup(db):
        db["s"] = "text"
        db["n"] = 1

    with LogKV(str(tmp_path / "sync.json")) as sdb:
        setup(sdb)
        target = {"delitem": "__delitem__"}.get(name, name)
        with pytest.raises(Exception) as sync_err:
            getattr(sdb, target)(*args, **kwargs)

    p = str(tmp_path / "async.json")

    async def main():
        async with AsyncLogKV(p) as db:
            setup(db.sync)
            before = (log_bytes(p), await db.copy(), (await db.stats())["sequence"])
            with pytest.raises(Exception) as err:
                await getattr(db, name)(*args, **kwargs)
            after = (log_bytes(p), await db.copy(), (await db.stats())["sequence"])
            assert after == before
            return err

    err = run(main())
    assert type(err.value) is type(sync_err.value)
    assert str(err.value) == str(sync_err.value)
