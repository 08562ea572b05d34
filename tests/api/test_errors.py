"""CONTRACT §4.11 / §3.2: logkv's own error classes, importable from ``logkv``,
each also the built-in exception aiodict raises in the same place."""
from __future__ import annotations

import types

import pytest

import logkv
from logkv import (
    ClosedError,
    CorruptionError,
    LockTimeout,
    LogKV,
    LogKVError,
    LogMismatchError,
    ReadOnlyError,
    StorageError,
)

REQUIRED = {
    "LogKV",
    "LogKVError",
    "CorruptionError",
    "LogMismatchError",
    "LockTimeout",
    "ClosedError",
    "ReadOnlyError",
    "StorageError",
}


def test_hierarchy():
    for cls in (CorruptionError, LogMismatchError, LockTimeout, ClosedError, ReadOnlyError, StorageError):
        assert issubclass(cls, LogKVError), cls
    assert issubclass(LogKVError, Exception)
    assert issubclass(CorruptionError, ValueError)
    assert issubclass(LogMismatchError, CorruptionError)
    assert issubclass(LogMismatchError, ValueError)
    assert issubclass(LockTimeout, TimeoutError)
    assert issubclass(ClosedError, RuntimeError)
    assert issubclass(StorageError, OSError)


def test_corruption_error_carries_path_and_offset():
    e = CorruptionError("bad record", path="/x/db.json.wal", offset=123)
    assert e.path == "/x/db.json.wal"
    assert e.offset == 123
    assert "bad record" in str(e)
    e2 = LogMismatchError("mismatch", path="/x/db.json")
    assert e2.path == "/x/db.json"
    assert e2.offset is None
    with pytest.raises(ValueError):
        raise e2


def test_existing_except_clauses_keep_working(store_path):
    db = LogKV(store_path)
    db.close()
    with pytest.raises(RuntimeError):
        db["a"] = 1
    with pytest.raises(LogKVError):
        db.get("a")


def test_all_lists_the_public_names():
    names = logkv.__all__
    assert isinstance(names, (list, tuple))
    assert len(names) == len(set(names)), "duplicates in __all__"
    assert REQUIRED <= set(names)
    for name in names:
        assert hasattr(logkv, name), name
    for cls_name in REQUIRED - {"LogKV"}:
        assert getattr(logkv, cls_name).__name__ == cls_name


def test_every_public_exception_class_is_in_all():
    exported = set(logkv.__all__)
    for name, obj in vars(logkv).items():
        if name.startswith("_") or isinstance(obj, types.ModuleType):
            continue
        if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__.startswith("logkv"):
            assert name in exported, name


def test_star_import_gives_the_names():
    ns = {}
    exec("from logkv import *", ns)
    assert REQUIRED <= set(ns)
    assert ns["LogKV"] is LogKV
    assert ns["ClosedError"] is ClosedError


def test_lock_timeout_when_lock_held(store_path):
    filelock = pytest.importorskip("filelock")
    db = LogKV(store_path, lock_timeout=0.2)
    try:
        db["a"] = 1
        lock = filelock.FileLock(store_path + ".lock")
        with lock:
            with pytest.raises(LockTimeout) as ei:
                db["b"] = 2
            assert isinstance(ei.value, TimeoutError)
            assert isinstance(ei.value, LogKVError)
            assert db.get("b") is None
            assert db.copy() == {"a": 1}
        db["b"] = 2
        assert db.copy() == {"a": 1, "b": 2}
    finally:
        db.close()
    db = LogKV(store_path)
    try:
        assert db.copy() == {"a": 1, "b": 2}
    finally:
        db.close()


def test_read_only_error(store_path):
    db = LogKV(store_path)
    db["a"] = 1
    db.close()
    ro = LogKV(store_path, read_only=True)
    try:
        with pytest.raises(ReadOnlyError) as ei:
            ro["a"] = 2
        assert isinstance(ei.value, LogKVError)
        assert ro["a"] == 1
    finally:
        ro.close()


def test_corruption_error_on_open_names_file(store_path):
    with open(store_path, "w") as f:
        f.write("{broken")
    with pytest.raises(CorruptionError) as ei:
        LogKV(store_path)
    assert ei.value.path is not None
    assert str(ei.value.path).endswith("db.json")
    assert isinstance(ei.value, LogKVError)
