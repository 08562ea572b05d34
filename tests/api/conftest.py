"""One API suite, two engines.

A test that takes the ``engine`` fixture (usually through its module's ``db``
fixture) runs once against ``LogKV`` and once against ``RedisKV`` on a real
redis-server, so any difference between the engines shows up as a failure.
A test about something only a file store has (reopening files, the log,
crash copies, object identity in memory) is marked ``file_engine`` and runs
on ``LogKV`` alone; the README lists those differences.
"""
from __future__ import annotations

import pytest

from logkv import LogKV, RedisKV

ENGINES = ("logkv", "redis")


def pytest_configure(config):
    config.addinivalue_line("markers", "file_engine: only meaningful for the file engine "
                            "(LogKV); not run against RedisKV")


def pytest_generate_tests(metafunc):
    if "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", ENGINES, indirect=True)


def pytest_collection_modifyitems(config, items):
    # Not skipped: a file-engine test has no RedisKV case at all.
    keep, drop = [], []
    for item in items:
        spec = getattr(item, "callspec", None)
        if (spec is not None and spec.params.get("engine") == "redis"
                and item.get_closest_marker("file_engine") is not None):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


class Engine:
    """Opens stores of one kind: ``open()`` a fresh one, ``reopen(store)``
    the same data through a new store object."""

    def __init__(self, name: str, store_path: str, redis_url: str | None) -> None:
        self.name = name
        self.store_path = store_path
        self.redis_url = redis_url

    @property
    def is_redis(self) -> bool:
        return self.name == "redis"

    def open(self, **kwargs):
        if self.is_redis:
            return RedisKV(self.redis_url, **kwargs)
        return LogKV(self.store_path, **kwargs)

    def reopen(self, store, **kwargs):
        store.close()
        return self.open(**kwargs)

    def __repr__(self) -> str:
        return self.name


@pytest.fixture
def engine(request, store_path):
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return Engine("redis", store_path, url)
    return Engine("logkv", store_path, None)
