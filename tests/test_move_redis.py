"""Moving a store between engines: ``logkv export PATH --to URL`` and
``logkv import URL DEST`` (and the functions behind them, ``copy_store``,
``export_to_redis``, ``import_from_redis``), against a real redis-server.

What is on the server is read with a plain redis-py client, and expiry
times are read with a Lua script (``TIME`` + ``PTTL``, exact to the
millisecond on every Redis version), not through RedisKV.

Expiry times must come back to the millisecond: the keys of a Redis source
carry whole milliseconds and come back exactly; a logkv source's times (any
float) come back within a millisecond.
"""
from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from logkv import LogKV, RedisKV
from logkv._convert import (DestinationNotEmptyError, copy_store, export_to_redis,
                            import_from_redis)
from logkv.testing import free_port

ROOT = Path(__file__).resolve().parents[1]

# Values of many kinds; json.dumps tells 1 from 1.0 and True from 1, keeps
# integers of any size exact and floats to the last bit.
VALUES = {
    "int": 42,
    "negative": -7,
    "zero float": 0.0,
    "negative zero": -0.0,
    "float": 0.1,
    "tiny": 5e-324,
    "huge float": 1.7976931348623157e308,
    "u64 max": 2**64 - 1,
    "beyond 64 bits": 2**200 + 1,
    "below i64": -(2**63) - 1,
    "big in nested": {"a": [1, {"b": -(2**100)}], "c": None},
    "digits as text": "123456789012345678901234567890",
    "true": True,
    "false": False,
    "null": None,
    "empty list": [],
    "empty dict": {},
    "unicode": "Zoë ☃ 😀 ключ \u0000 \"quoted\" \\ back",
    "nested": {"users": [{"name": "Ali", "tags": ["x", 1.5, None]}], "n": {"deep": {"er": [[]]}}},
    "ключ 😀": "a unicode key",
    "": "the empty key",
    "with space\tand\nnewline": 1,
    "glob*?[chars]\\": 2,
}


def dump(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def same(a: dict, b: dict) -> bool:
    """Equal, key by key, with every type and digit kept."""
    return a.keys() == b.keys() and all(dump(a[k]) == dump(b[k]) for k in a)


@pytest.fixture
def raw(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# PTTL's clock read falls between two TIME reads made in the same millisecond:
# server time + PTTL is then the expiry time to the millisecond.
_EXPIRY = """
local t, p, u
repeat
  t = redis.call('TIME')
  p = redis.call('PTTL', KEYS[1])
  u = redis.call('TIME')
until t[1] == u[1] and math.floor(t[2] / 1000) == math.floor(u[2] / 1000)
return {p, t[1], t[2]}
"""


def redis_expiry(client: redis.Redis, key: str) -> float | None:
    """The key's absolute expiry time in unix seconds (None: none), from the
    server's own clock."""
    pttl, sec, usec = client.eval(_EXPIRY, 1, key)
    assert pttl != -2, f"{key!r} is missing"
    if pttl == -1:
        return None
    return (int(sec) * 1000 + int(usec) // 1000 + int(pttl)) / 1000


def redis_state(client: redis.Redis, prefix: str = "") -> dict[str, tuple[object, float | None]]:
    """{key without prefix: (value, expires_at)} of every key under prefix."""
    out = {}
    for full in client.scan_iter(match=prefix.replace("[", "[[]") + "*", count=1000):
        key = full.decode()
        if not key.startswith(prefix):
            continue
        out[key[len(prefix):]] = (json.loads(client.get(full)), redis_expiry(client, key))
    return out


def file_entries(path: str) -> dict[str, tuple[object, float | None]]:
    db = LogKV(path, read_only=True)
    try:
        return {k: (v, exp) for k, v, exp in db._entries()}
    finally:
        db.close()


def check_entries(got: dict, want: dict, *, exact_ms: bool = False) -> None:
    """Values exactly equal; expiry times within a millisecond, or, when
    ``exact_ms`` (the source had whole milliseconds, as Redis keeps them),
    to the millisecond."""
    assert same({k: v for k, (v, _e) in got.items()}, {k: v for k, (v, _e) in want.items()})
    for key, (_v, exp) in want.items():
        back = got[key][1]
        if exp is None:
            assert back is None, key
        elif exact_ms:
            assert back is not None and round(back * 1000) == round(exp * 1000), (key, back, exp)
        else:
            assert back is not None and abs(back - exp) < 0.001 + 1e-6, (key, back, exp)


@pytest.fixture
def source(tmp_path) -> tuple[str, dict]:
    """A closed store with VALUES, some without expiry, some sharing one
    expiry time, some with their own; and a key that has expired. Returns
    (path, {key: (value, expires_at)}) of its live keys."""
    path = str(tmp_path / "src.json")
    now = time.time()
    shared = now + 3600.123456
    want = {}
    db = LogKV(path)
    for i, (key, value) in enumerate(VALUES.items()):
        exp = None if i % 3 == 0 else shared if i % 3 == 1 else now + 86400 * (i + 1) + i / 7
        db._set_many([(key, value)], exp)
        want[key] = (value, exp)
    db.set("gone", "expired", ttl=0.01)
    db.close()
    time.sleep(0.02)
    return path, want


# ------------------------------------------------------------------ the functions
def test_export_to_redis_copies_values_and_expiry_times(source, redis_url, raw):
    path, want = source
    assert export_to_redis(path, redis_url) == len(want)
    on_server = redis_state(raw)
    assert "gone" not in on_server  # expired: skipped
    check_entries(on_server, want)
    # stored the way RedisKV stores them: JSON text, readable by RedisKV
    assert raw.get("beyond 64 bits") == str(2**200 + 1).encode()
    with RedisKV(redis_url) as db:
        assert same(db.copy(), {k: v for k, (v, _e) in want.items()})


def test_import_from_redis_copies_values_and_expiry_times(redis_url, raw, tmp_path):
    now_ms = int(time.time() * 1000)
    want = {}
    for i, (key, value) in enumerate(VALUES.items()):
        ms = None if i % 2 else now_ms + 3_600_000 + i * 1_237
        if ms is None:
            raw.set(key, dump(value))
        else:
            raw.set(key, dump(value), pxat=ms)
        want[key] = (value, None if ms is None else ms / 1000)
    dest = str(tmp_path / "dest.json")
    assert import_from_redis(redis_url, dest) == len(want)
    check_entries(file_entries(dest), want, exact_ms=True)


def test_round_trip_file_redis_file_is_exact(source, redis_url, tmp_path):
    path, want = source
    assert export_to_redis(path, redis_url) == len(want)
    back = str(tmp_path / "back.json")
    assert import_from_redis(redis_url, back) == len(want)
    check_entries(file_entries(back), want)
    # and a second trip changes nothing more
    assert export_to_redis(back, redis_url, replace=True) == len(want)
    again = str(tmp_path / "again.json")
    import_from_redis(redis_url, again)
    check_entries(file_entries(again), want)


def test_prefix(source, redis_url, raw, tmp_path):
    path, want = source
    raw.set("other", b'"not mine"')
    raw.set("abc[x]:k", b"1")  # matches the glob a*[x]:* if the prefix were not escaped
    prefix = "a*[x]:"
    assert export_to_redis(path, redis_url, prefix=prefix) == len(want)
    check_entries(redis_state(raw, prefix), want)
    assert raw.get("other") == b'"not mine"' and raw.get("abc[x]:k") == b"1"
    assert raw.dbsize() == len(want) + 2

    only = str(tmp_path / "only.json")
    assert import_from_redis(redis_url, only, prefix=prefix) == len(want)
    check_entries(file_entries(only), want)

    everything = str(tmp_path / "all.json")
    assert import_from_redis(redis_url, everything) == len(want) + 2
    got = file_entries(everything)
    assert got["other"] == ("not mine", None)
    check_entries({k[len(prefix):]: e for k, e in got.items() if k.startswith(prefix)}, want)


def test_export_refuses_a_destination_that_is_not_empty(source, redis_url, raw):
    path, want = source
    raw.set("app:stale", b"1")
    raw.set("elsewhere", b"2")
    with pytest.raises(DestinationNotEmptyError) as info:
        export_to_redis(path, redis_url, prefix="app:")
    assert info.value.keys == 1 and info.value.prefix == "app:"
    assert "replace" in str(info.value)
    assert sorted(raw.keys()) == [b"app:stale", b"elsewhere"]  # nothing written

    assert export_to_redis(path, redis_url, prefix="app:", replace=True) == len(want)
    assert raw.get("app:stale") is None  # deleted first
    assert raw.get("elsewhere") == b"2"  # not under the prefix: left alone
    check_entries(redis_state(raw, "app:"), want)

    # with no prefix, any key of the database makes it not empty
    with pytest.raises(DestinationNotEmptyError):
        export_to_redis(path, redis_url)


def test_import_refuses_an_existing_destination(redis_url, raw, tmp_path):
    raw.set("k", b"1")
    for name in ("db.json", "db.json.wal"):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_text('{"keep": true}')
        with pytest.raises(FileExistsError, match="already exists"):
            import_from_redis(redis_url, folder / "db.json")
        assert (folder / name).read_text() == '{"keep": true}'


def test_copy_store_writes_one_batch_per_transaction(tmp_path):
    src = LogKV(str(tmp_path / "a.json"))
    now = time.time()
    for i in range(10):
        src._set_many([(f"k{i}", i)], None if i < 4 else now + 100 + (i % 2))
    dst = LogKV(str(tmp_path / "b.json"), auto_compact=False)
    calls = []
    try:
        assert copy_store(src, dst, lambda done, total: calls.append((done, total)),
                          batch=3) == 10
        assert calls == [(0, 10), (3, 10), (6, 10), (9, 10), (10, 10)]
        assert dst.stats()["wal_records"] == 4  # one record per batch of 3
        assert {k: (v, e) for k, v, e in dst._entries()} == \
            {k: (v, e) for k, v, e in src._entries()}
    finally:
        src.close()
        dst.close()


def test_copy_store_into_redis_writes_one_multi_exec_per_batch(redis_url, raw, tmp_path):
    src = LogKV(str(tmp_path / "a.json"))
    now = time.time()
    for i in range(25):
        src._set_many([(f"k{i}", {"i": i})], None if i % 3 == 0 else now + 100 + i % 3)
    raw.config_resetstat()
    dst = RedisKV(redis_url)
    try:
        assert copy_store(src, dst, batch=10) == 25
    finally:
        dst.close()
        src.close()
    assert raw.info("commandstats")["cmdstat_exec"]["calls"] == 3
    assert raw.info("commandstats")["cmdstat_set"]["calls"] == 25
    assert raw.dbsize() == 25


class _Source:
    """A store whose entries include one that expired after it was read."""

    def __init__(self, entries):
        self.entries = entries

    def _entries(self):
        return self.entries


def test_copy_store_skips_keys_already_expired(redis_url, raw):
    now = time.time()
    src = _Source([("live", 1, now + 100), ("plain", 2, None), ("dead", 3, now - 1)])
    dst = RedisKV(redis_url)
    calls = []
    try:
        assert copy_store(src, dst, lambda d, t: calls.append((d, t))) == 2
    finally:
        dst.close()
    assert calls == [(0, 2), (2, 2)]
    assert sorted(raw.keys()) == [b"live", b"plain"]


def test_an_unreachable_server_leaves_no_file(tmp_path):
    dest = tmp_path / "db.json"
    with pytest.raises(redis.ConnectionError):
        import_from_redis(f"redis://127.0.0.1:{free_port()}/0", dest)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ the command line
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "logkv", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=60, **kw)


def test_cli_export_to_redis_then_import_back(source, redis_url, raw, tmp_path):
    path, want = source
    done = run("export", path, "--to", redis_url, "--prefix", "bot:")
    assert done.returncode == 0, done.stderr
    assert f"exported {len(want)} keys from {path} to {redis_url} (prefix 'bot:')" in done.stdout
    assert done.stderr == ""  # progress only on a terminal
    check_entries(redis_state(raw, "bot:"), want)
    assert raw.dbsize() == len(want)

    dest = str(tmp_path / "back.json")
    done = run("import", redis_url, dest, "--prefix", "bot:")
    assert done.returncode == 0, done.stderr
    assert f"imported {len(want)} keys from {redis_url} (prefix 'bot:') into {dest}" in done.stdout
    check_entries(file_entries(dest), want)

    again = run("import", redis_url, dest, "--prefix", "bot:")
    assert again.returncode == 2 and "already exists" in again.stderr


def test_cli_export_refuses_a_destination_that_is_not_empty_unless_replace(
        source, redis_url, raw):
    path, want = source
    raw.set("stale", b"1")
    done = run("export", path, "--to", redis_url)
    assert done.returncode == 2
    assert "1 key(s) already exist" in done.stderr and "--replace" in done.stderr
    assert raw.keys() == [b"stale"]
    done = run("export", path, "--to", redis_url, "--replace")
    assert done.returncode == 0, done.stderr
    assert raw.get("stale") is None
    check_entries(redis_state(raw), want)


def test_cli_an_unreachable_server_is_a_clear_error(source, tmp_path):
    path, _want = source
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    for args in (["export", path, "--to", url], ["import", url, str(tmp_path / "new.json")]):
        done = run(*args)
        assert done.returncode == 1, args
        assert "cannot reach the Redis server at redis://:***@127.0.0.1" in done.stderr
        assert "secret" not in done.stderr and "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "new.json")


def test_cli_without_redis_py_says_what_to_install(source, tmp_path):
    path, _want = source
    code = ("import sys; sys.modules['redis'] = None\n"  # as if redis-py were not installed
            "from logkv.cli import main; sys.exit(main(sys.argv[1:]))")
    for args in (["export", path, "--to", "redis://127.0.0.1:1/0"],
                 ["import", "redis://127.0.0.1:1/0", str(tmp_path / "new.json")]):
        done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=_env(),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, (args, done.stderr)
        assert 'pip install redis' in done.stderr and 'pip install ".[redis]"' in done.stderr
        assert "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "new.json")


def test_cli_importing_the_cli_does_not_import_redis():
    code = ("import sys, logkv, logkv.cli, logkv._convert\n"
            "from logkv.cli import build_parser; build_parser()\n"
            "print('redis' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_cli_usage_errors(source, tmp_path):
    path, _want = source
    for args, message in (
            (["export", path, "--to", "http://localhost"], "--to takes a Redis URL"),
            (["export", path, "--prefix", "p:"], "go with --to"),
            (["export", path, "--replace"], "go with --to"),
            (["export", path, str(tmp_path / "o.json"), "--to", "redis://127.0.0.1:1/0"],
             "not both"),
            (["export", str(tmp_path / "none.json"), "--to", "redis://127.0.0.1:1/0"],
             "no store at"),
            (["import", path, str(tmp_path / "n.json"), "--prefix", "p:"], "Redis source"),
            (["import", path, "redis://127.0.0.1:1/0"], "not a URL")):
        done = run(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
    assert all(n.startswith("src.json") for n in os.listdir(tmp_path))  # nothing created


def test_cli_shows_progress_on_a_terminal(source, redis_url, tmp_path):
    path, want = source
    master, slave = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "logkv", "export", path, "--to", redis_url],
                              cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=slave,
                              timeout=60)
        os.close(slave)
        slave = -1
        chunks = []
        while select.select([master], [], [], 1)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert done.returncode == 0
    shown = b"".join(chunks).decode()
    n = len(want)
    assert f"logkv export: 0/{n} keys (0%)" in shown
    assert f"logkv export: {n}/{n} keys (100%)" in shown


def test_import_keeps_expiry_times_to_the_millisecond_in_a_larger_store(redis_url, raw,
                                                                        tmp_path):
    # Thousands of keys are read in pipelined batches: an expiry worked out
    # from the time left (PTTL) and the client's clock after the batch
    # arrives drifts by the batch's round trip.
    now_ms = int(time.time() * 1000)
    pipe = raw.pipeline(transaction=False)
    want = {}
    for i in range(3000):
        ms = now_ms + 600_000 + i * 997
        pipe.set(f"k{i}", str(i), pxat=ms)
        want[f"k{i}"] = (i, ms / 1000)
    pipe.execute()
    dest = str(tmp_path / "dest.json")
    assert import_from_redis(redis_url, dest) == 3000
    check_entries(file_entries(dest), want, exact_ms=True)
