"""CONTRACT §4.9: any mix of calls from any number of threads is safe; incr
from N threads is exact; no thread sees half a transaction."""
from __future__ import annotations

import threading

import pytest

from logkv import LogKV

THREADS = 8
N = 500


def run_threads(target, count, *args):
    errors = []
    barrier = threading.Barrier(count)

    def wrapper(i):
        try:
            barrier.wait()
            target(i, *args)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=wrapper, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "threads hung"
    return errors


@pytest.mark.parametrize("durability", ["interval", "always"])
def test_incr_from_threads_is_exact(store_path, durability):
    db = LogKV(store_path, durability=durability)
    n = N if durability == "interval" else 100

    def work(i):
        for _ in range(n):
            db.incr("c")
            db.incr(f"own{i}", 2)

    errors = run_threads(work, THREADS)
    assert errors == []
    assert db["c"] == THREADS * n
    for i in range(THREADS):
        assert db[f"own{i}"] == 2 * n
    db.close()
    db = LogKV(store_path)
    try:
        assert db["c"] == THREADS * n
    finally:
        db.close()


def test_incr_from_threads_on_a_view(store_path):
    db = LogKV(store_path)
    try:
        ns = db.namespace("s")

        def work(i):
            for _ in range(200):
                ns.incr("c")

        assert run_threads(work, THREADS) == []
        assert db["s:c"] == THREADS * 200
    finally:
        db.close()


def test_append_from_threads_loses_nothing(store_path):
    db = LogKV(store_path)
    try:
        def work(i):
            for j in range(100):
                db.append("l", [i, j])

        assert run_threads(work, THREADS) == []
        got = db["l"]
        assert len(got) == THREADS * 100
        assert sorted(map(tuple, got)) == sorted((i, j) for i in range(THREADS) for j in range(100))
    finally:
        db.close()


def test_mixed_calls_from_threads(store_path):
    db = LogKV(store_path)

    def work(i):
        for j in range(300):
            k = f"t{i}:{j}"
            db[k] = j
            assert db[k] == j
            if j % 2 == 0:
                del db[k]
            db.set("shared", j, ttl=100)
            db.get("shared")
            db.pop("shared", None)
            db.setdefault("sd", i)
            db.mset({f"m{i}": j, "shared2": j})
            db.mget(["shared", "shared2", k])
            "shared" in db
            len(db)
            list(db)
            db.keys()
            db.items()
            db.values()
            db.copy()
            db.stats()
            db.exists(k)
            if j % 50 == 0:
                db.cleanup_expired()
            if j % 100 == 0:
                with db.transaction():
                    db[f"tx{i}"] = j
                    db.incr("txcount")

    errors = run_threads(work, THREADS)
    assert errors == []
    expected_own = {f"t{i}:{j}": j for i in range(THREADS) for j in range(300) if j % 2}
    state = db.copy()
    for k, v in expected_own.items():
        assert state[k] == v
    assert db["txcount"] == THREADS * 3
    for i in range(THREADS):
        assert state[f"m{i}"] == 299
        assert state[f"tx{i}"] == 200
    assert state["sd"] in range(THREADS)
    db.close()
    db = LogKV(store_path)
    try:
        assert db.copy() == state
    finally:
        db.close()


def test_compaction_while_threads_write(store_path):
    db = LogKV(store_path)
    stop = threading.Event()

    def compactor():
        while not stop.is_set():
            db.compact()

    def work(i):
        for _ in range(300):
            db.incr("c")

    ct = threading.Thread(target=compactor)
    ct.start()
    try:
        errors = run_threads(work, 4)
    finally:
        stop.set()
        ct.join(60)
    assert errors == []
    assert db["c"] == 1200
    db.close()
    db = LogKV(store_path)
    try:
        assert db["c"] == 1200
    finally:
        db.close()


def test_readers_never_see_half_a_transaction(store_path):
    db = LogKV(store_path)
    db.mset({"a": 0, "b": 0})
    done = threading.Event()
    bad = []

    def writer():
        try:
            for i in range(1, 400):
                with db.transaction():
                    db["a"] = i
                    db["extra"] = i
                    db["b"] = i
                if i % 50 == 0:
                    with db.transaction():
                        db.mset({"a": -i, "b": -i})
        finally:
            done.set()

    def reader(_i):
        while not done.is_set():
            a, b = db.mget(["a", "b"])
            if a != b:
                bad.append(("mget", a, b))
            c = db.copy()
            if c.get("a") != c.get("b"):
                bad.append(("copy", c.get("a"), c.get("b")))
            items = dict(db.items())
            if items.get("a") != items.get("b"):
                bad.append(("items", items.get("a"), items.get("b")))
            if len(bad) > 20:
                return

    w = threading.Thread(target=writer)
    w.start()
    errors = run_threads(reader, 4)
    w.join(120)
    try:
        assert errors == []
        assert bad == []
        assert db["a"] == db["b"] == 399
    finally:
        db.close()


def test_readers_never_see_rolled_back_writes(store_path):
    db = LogKV(store_path)
    db["a"] = 0
    done = threading.Event()
    seen = []

    def writer():
        try:
            for i in range(300):
                try:
                    with db.transaction():
                        db["a"] = -1  # never committed
                        db["ghost"] = i
                        raise RuntimeError("rollback")
                except RuntimeError:
                    pass
                db["a"] = i
        finally:
            done.set()

    def reader(_i):
        while not done.is_set():
            v = db.get("a")
            if v == -1:
                seen.append(v)
            if db.get("ghost") is not None:
                seen.append("ghost")
            if len(seen) > 20:
                return

    w = threading.Thread(target=writer)
    w.start()
    errors = run_threads(reader, 3)
    w.join(120)
    try:
        assert errors == []
        assert seen == []
        assert db.copy() == {"a": 299}
    finally:
        db.close()


def test_transactions_from_threads_are_serialised(store_path):
    db = LogKV(store_path)
    db["n"] = 0

    def work(i):
        for _ in range(100):
            with db.transaction():
                v = db.get("n")
                db["n"] = v + 1

    try:
        assert run_threads(work, 4) == []
        assert db["n"] == 400
    finally:
        db.close()
    db = LogKV(store_path)
    try:
        assert db["n"] == 400
    finally:
        db.close()


def test_close_with_background_flusher_from_threads(store_path):
    # the interval flusher must not outlive close() (CONTRACT §3.1: close stops background threads)
    before = set(threading.enumerate())
    db = LogKV(store_path, autosave_delay=0.01)

    def work(i):
        for j in range(100):
            db[f"k{i}"] = j

    assert run_threads(work, 4) == []
    db.close()
    leftover = [t for t in threading.enumerate() if t not in before]
    for t in leftover:
        t.join(5)
    assert [t.name for t in leftover if t.is_alive()] == []
    db = LogKV(store_path)
    try:
        assert db.copy() == {f"k{i}": 99 for i in range(4)}
    finally:
        db.close()


def test_two_handles_on_one_store_from_threads(store_path):
    # CONTRACT §4.10 within one process: two stores opened on the same files
    # behave like two processes: no lost updates, writes seen by the other.
    h = [LogKV(store_path), LogKV(store_path)]
    try:
        def work(i):
            for _ in range(300):
                h[i % 2].incr("c")

        assert run_threads(work, 2) == []
        assert h[0]["c"] == 600
        assert h[1]["c"] == 600
        with h[0].transaction():
            h[0]["a"] = 1
            h[0]["b"] = 1
        assert h[1].mget(["a", "b"]) == [1, 1]
        h[1].append("l", "x")
        assert h[0]["l"] == ["x"]
        h[0].compact()
        h[1].incr("c")
        h[1].compact()
        h[0].incr("c")
        assert h[1]["c"] == 602
    finally:
        h[0].close()
        h[1].close()
    db = LogKV(store_path)
    try:
        assert db.copy() == {"c": 602, "a": 1, "b": 1, "l": ["x"]}
    finally:
        db.close()


def test_popitem_from_many_threads_pops_each_item_once(store_path):
    import sys

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    db = LogKV(store_path)
    try:
        db.update({f"k{i}": i for i in range(2000)})
        popped: list = []
        errors: list = []

        def worker():
            while True:
                try:
                    popped.append(db.popitem())
                except KeyError:
                    if len(db):  # items only go: it was not empty when it raised
                        errors.append("KeyError from a store that was not empty")
                    return
                except Exception as exc:  # pragma: no cover - the failure being tested
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert sorted(popped) == sorted((f"k{i}", i) for i in range(2000))
        assert len(db) == 0
    finally:
        sys.setswitchinterval(old)
        db.close()
