"""What only RedisKV has: how it stores things on the server, its
transactions (optimistic, raising on conflict), and atomicity across
processes. The shared API suite (tests/api) runs on both engines."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
import redis

import logkv
from logkv import LogKVError, RedisKV, TransactionConflict


@pytest.fixture
def raw(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def db(redis_url):
    store = RedisKV(redis_url)
    yield store
    store.close()


# ------------------------------------------------------------ on the server
def test_values_are_json_text_and_incr_is_incrby(db, raw):
    db["user"] = {"name": "Zoë", "tags": ["a", 1, None, True, 1.5]}
    assert raw.get("user") == '{"name":"Zoë","tags":["a",1,null,true,1.5]}'.encode()
    db["n"] = 41
    assert raw.get("n") == b"41"
    raw.incrby("n", 1)  # another program's INCRBY is seen: a JSON integer is a Redis integer
    assert db.incr("n") == 43
    assert raw.object("encoding", "n") == b"int"


def test_big_integers_and_floats_are_exact(db, raw):
    big = 2**64 + 1
    db["big"] = big
    assert raw.get("big") == str(big).encode()
    assert db["big"] == big
    db["n"] = 2**63 - 1
    assert db.incr("n") == 2**63  # past INCRBY's range: computed exactly in Python
    assert db["n"] == 2**63
    db["f"] = 0.1
    assert db.incr("f", 0.2) == 0.1 + 0.2


def test_ttl_is_native_redis_expiry(db, raw):
    db.set("otp", "1234", ttl=60)
    assert 59_000 < raw.pttl("otp") <= 60_000
    db.persist("otp")
    assert raw.pttl("otp") == -1
    db.expire("otp", 0.05)
    time.sleep(0.15)
    assert raw.exists("otp") == 0  # the server itself dropped it
    assert "otp" not in db


def test_incr_and_list_helpers_keep_the_servers_expiry(db, raw):
    db.set("n", 1, ttl=100)
    db.append("l", 1, ttl=100)
    db.incr("n")
    db.incr("n", 0.5)  # the general (WATCH) path
    db.append("l", 2)
    assert 99_000 < raw.pttl("n") <= 100_000
    assert 99_000 < raw.pttl("l") <= 100_000


def test_prefix_keeps_stores_apart(redis_url, raw):
    raw.set("other", b"not json")
    a = RedisKV(redis_url, prefix="a[1]*:")  # glob characters in the prefix are literal
    b = RedisKV(redis_url, prefix="a")
    try:
        a["k"] = 1
        b["k"] = 2
        assert a.keys() == ["k"]
        assert sorted(b.keys()) == ["[1]*:k", "k"]
        a.clear()
        assert raw.get("ak") == b"2" and raw.get("other") == b"not json"
        assert a.keys() == [] and len(b) == 1
    finally:
        a.close()
        b.close()


def test_a_value_that_is_not_json_is_a_clear_error(db, raw):
    raw.set("bad", b"\xff not json")
    with pytest.raises(logkv.CorruptionError, match="not JSON"):
        db["bad"]
    assert raw.get("bad") == b"\xff not json"  # nothing was changed


def test_compact_rewrites_the_append_only_file(db, raw):
    before = raw.info("persistence")["aof_rewrites"] if "aof_rewrites" in raw.info(
        "persistence") else None
    db["a"] = 1
    db.compact()
    deadline = time.monotonic() + 10
    while raw.info("persistence").get("aof_rewrite_in_progress") or (
            raw.info("persistence").get("aof_rewrite_scheduled")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    info = raw.info("persistence")
    assert info["aof_last_bgrewrite_status"] == "ok"
    if before is not None:
        assert info["aof_rewrites"] > before
    assert db["a"] == 1


def test_stats_describe_the_server(db):
    db.set("a", 1, ttl=50)
    db["b"] = 2
    s = db.stats()
    assert s["keys"] == 2 and s["ttl_keys"] == 1
    assert s["engine"] == "redis" and s["appendonly"] is True
    assert s["appendfsync"] == "everysec"
    assert s["redis_version"].count(".") == 2


def test_flush_and_reload_talk_to_the_server(db, redis_url):
    db["a"] = 1
    db.flush()
    db.reload()
    other = RedisKV(redis_url)
    other["a"] = 2
    assert db["a"] == 2  # nothing is cached: every read asks the server
    other.close()


# ------------------------------------------------------------ construction
def test_unknown_option_fails_at_construction(redis_url):
    with pytest.raises(TypeError, match="durability"):
        RedisKV(redis_url, durability="always")


def test_unreachable_server_fails_at_construction():
    with pytest.raises(redis.ConnectionError):
        RedisKV("redis://127.0.0.1:1/0", socket_connect_timeout=1)


def test_a_given_client_is_used_and_left_open(redis_url):
    client = redis.Redis.from_url(redis_url)
    db = RedisKV(client=client, prefix="p:")
    db["a"] = 1
    db.close()
    assert client.get("p:a") == b"1"
    client.close()


def test_old_servers_are_refused():
    class OldServer:
        def execute_command(self, *args):
            assert args == ("INFO", "server")
            return {"redis_version": "6.0.16"}

        def close(self):
            raise AssertionError("a client passed in is not closed")

    with pytest.raises(LogKVError, match="6.2 or newer"):
        RedisKV(client=OldServer())


def test_importing_logkv_does_not_import_redis():
    out = subprocess.run([sys.executable, "-c",
                          "import sys, logkv; print('redis' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_redis_py_the_error_says_what_to_install():
    code = textwrap.dedent("""
        import sys
        sys.modules["redis"] = None  # as if redis-py were not installed
        from logkv import RedisKV
        try:
            RedisKV("redis://127.0.0.1:1/0")
        except ImportError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # logkv is installed from its source, not the package index: the message
    # names what works (pip install redis, or the extra in the source folder)
    assert 'pip install redis' in out.stdout and 'pip install ".[redis]"' in out.stdout


# ------------------------------------------------------------ transactions
def test_transaction_reads_its_own_writes_and_hides_them_until_the_end(db, redis_url):
    other = RedisKV(redis_url)
    db["a"] = 1
    with db.transaction() as tx:
        tx["a"] = 2
        tx.incr("n", 5)
        tx.append("l", "x")
        tx.set("t", 1, ttl=100)
        del tx["a"]
        assert "a" not in tx and tx["n"] == 5 and tx["l"] == ["x"]
        assert 99 < tx.ttl("t") <= 100
        assert sorted(tx.keys()) == ["l", "n", "t"]
        assert other.get("a") == 1 and "n" not in other  # not yet visible elsewhere
    assert other.copy() == {"n": 5, "l": ["x"], "t": 1}
    assert 99 < other.ttl("t") <= 100
    other.close()


def test_transaction_that_raises_writes_nothing(db, raw):
    db["a"] = 1
    with pytest.raises(RuntimeError):
        with db.transaction() as tx:
            tx["a"] = 2
            tx["b"] = 3
            raise RuntimeError("boom")
    assert db.copy() == {"a": 1}


def test_nested_block_that_raises_undoes_only_itself(db):
    with db.transaction() as tx:
        tx["outer"] = 1
        with pytest.raises(KeyError):
            with tx.transaction():
                tx["inner"] = 2
                raise KeyError("x")
        with tx.transaction():
            tx["joined"] = 3
    assert db.copy() == {"outer": 1, "joined": 3}


def test_conflict_raises_and_writes_nothing(db, redis_url):
    other = RedisKV(redis_url)
    db["balance"] = 100
    with pytest.raises(TransactionConflict):
        with db.transaction() as tx:
            b = tx["balance"]
            other["balance"] = 0  # another client changes what the block read
            tx["balance"] = b - 30
            tx["log"] = ["-30"]
    assert db.copy() == {"balance": 0}  # nothing of the block was applied
    # Run again, it commits.
    with db.transaction() as tx:
        tx["balance"] = tx["balance"] + 5
    assert other["balance"] == 5
    other.close()


def test_unread_keys_do_not_conflict(db, redis_url):
    other = RedisKV(redis_url)
    with db.transaction() as tx:
        tx["mine"] = 1
        other["theirs"] = 2  # the block never read it
    assert db.copy() == {"mine": 1, "theirs": 2}
    other.close()


def test_transactions_in_threads_are_separate(db):
    import threading

    seen = {}
    with db.transaction() as tx:
        tx["a"] = 1

        def look():
            seen["a"] = db.get("a")

        t = threading.Thread(target=look)
        t.start()
        t.join()
    assert seen == {"a": None}
    assert db["a"] == 1


# ------------------------------------------------------------ several processes
WORKER = textwrap.dedent("""
    import sys
    from logkv import RedisKV, TransactionConflict
    url, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    db = RedisKV(url)
    for i in range(n):
        db.incr("count")                       # INCRBY
        db.incr("fcount", 0.5)                 # WATCH / MULTI, retried
        db.append("log", f"{who}:{i}")         # WATCH / MULTI, retried
        db.extend("ext", [f"{who}:{i}:a", f"{who}:{i}:b"])  # WATCH / MULTI
        db.remove("rm", f"{who}:{i}")          # WATCH / MULTI
        db.setdefault("first", who)            # a Lua script
        db.pop(f"tok{i}", None) is not None and db.append("won", f"{who}:{i}")
        while True:                            # a transfer in a transaction, retried
            try:
                with db.transaction() as tx:
                    tx["a"] = tx.get("a", 0) - 1
                    tx["b"] = tx.get("b", 0) + 1
                break
            except TransactionConflict:
                pass
    db.close()
""")


def test_read_modify_writes_lose_nothing_across_processes(redis_url):
    n, procs = 60, 4
    setup = RedisKV(redis_url)
    setup.mset({f"tok{i}": i for i in range(n)})
    setup["rm"] = [f"p{p}:{i}" for p in range(procs) for i in range(n)] + ["stays"]
    procs_ = [subprocess.Popen([sys.executable, "-c", WORKER, redis_url, f"p{p}", str(n)],
                               env={**os.environ, "PYTHONHASHSEED": "0"})
              for p in range(procs)]
    for p in procs_:
        assert p.wait(120) == 0
    total = n * procs
    assert setup["count"] == total
    assert setup["fcount"] == total * 0.5
    log = setup["log"]
    assert len(log) == total and len(set(log)) == total
    ext = setup["ext"]
    assert len(ext) == 2 * total and len(set(ext)) == 2 * total
    assert setup["rm"] == ["stays"]
    assert setup["first"] in {f"p{p}" for p in range(procs)}
    won = setup["won"]
    assert len(won) == n  # each token popped by exactly one process
    assert sorted(int(w.split(":")[1]) for w in won) == list(range(n))
    assert setup["a"] == -total and setup["b"] == total
    setup.close()


def _in_use(store):
    return len(store._root.client.connection_pool._in_use_connections)


def test_a_failed_operation_gives_its_connection_back(db):
    db["l"] = "not a list"
    for _ in range(3):
        with pytest.raises(TypeError):
            db.append("l", 1)  # raises between WATCH and MULTI
    with pytest.raises(KeyError):
        db.remove("missing", 1)
    assert _in_use(db) == 0
    with pytest.raises(RuntimeError):
        with db.transaction() as tx:
            tx.get("l")  # WATCHes on the block's own connection
            raise RuntimeError
    assert _in_use(db) == 0
    with db.transaction() as tx:
        tx.get("l")  # read, nothing written
    assert _in_use(db) == 0
