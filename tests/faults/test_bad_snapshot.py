"""A snapshot logkv cannot read, or one another program rewrote.

CONTRACT §4.7: a snapshot that does not parse is an error naming the file (and
saying that `.bak` exists, if it does); logkv never starts empty over a file it
could not read and never overwrites it. CONTRACT §3.2 / design.md §5: a log
whose records do not belong to the snapshot on disk is never replayed over it:
open fails with LogMismatchError.
"""
from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from logkv import CorruptionError, LogKV, LogKVError, LogMismatchError


def _disk_files(d: Path) -> dict[str, bytes]:
    """Every file in the folder except the lock and the shared page."""
    return {
        p.name: p.read_bytes()
        for p in sorted(d.iterdir())
        if p.is_file() and not p.name.endswith((".lock", ".shm"))
    }


def _wal_records(d: Path) -> int:
    wal = d / "db.json.wal"
    if not wal.exists():
        return 0
    return sum(1 for line in wal.read_bytes().splitlines() if b'"o":' in line)


def _make_store(d: Path, *, backup: bool = True) -> tuple[Path, dict]:
    """A store with a snapshot and records in its log that are not in the snapshot."""
    d.mkdir(exist_ok=True)
    p = d / "db.json"
    db = LogKV(str(p), compact_on_close=False, create_backup=backup)
    db.set("a", 1)
    db.compact()  # first snapshot
    db.set("counter", 10)
    db.compact()  # snapshot holds a=1, counter=10; .bak the first one
    db.set("b", [1, 2])
    db.incr("counter", 5)
    db.set("c", {"deep": True})
    state = dict(db.items())
    db.close()
    assert p.exists()
    assert _wal_records(d) >= 3, "the log must still hold records the snapshot lacks"
    return p, state


UNREADABLE = {
    "garbage-text": b"this is not json at all\n",
    "truncated-object": b'{"version": 1, "updated_at": "2026-01-01T00:00:00Z", "data": {"a": {"value": 1, ',
    "binary": bytes(range(256)),
    "json-array": b"[1, 2, 3]",
    "json-string": b'"hello"',
    "json-number": b"42",
    "json-null": b"null",
    "trailing-garbage": b'{"a": 1} xyz',
    "bad-utf8": b'{"a": "\xff\xfe"}',
}


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
def test_unreadable_snapshot_is_an_error_and_nothing_changes(tmp_path, kind):
    p, state = _make_store(tmp_path / "s")
    good = p.read_bytes()
    p.write_bytes(UNREADABLE[kind])
    before = _disk_files(p.parent)
    with pytest.raises(CorruptionError) as ei:
        LogKV(str(p))
    err = ei.value
    assert isinstance(err, ValueError) and isinstance(err, LogKVError)
    assert err.path is not None and os.path.samefile(err.path, p), err.path
    assert "db.json" in str(err)
    # .bak exists here (create_backup=True and two compactions): the message says so
    assert (p.parent / "db.json.bak").exists()
    assert ".bak" in str(err), f"the error must mention that db.json.bak exists: {err}"
    # nothing was written over the unreadable file, the log was not consumed
    # (no record replayed, no rotation, no cut), and the backup is intact
    assert _disk_files(p.parent) == before
    # a second attempt fails the same way: logkv did not start empty and save that
    with pytest.raises(CorruptionError):
        LogKV(str(p))
    assert _disk_files(p.parent) == before
    # putting the good snapshot back gives the full state: the log's records
    # were neither dropped nor folded anywhere
    p.write_bytes(good)
    with LogKV(str(p)) as db:
        assert dict(db.items()) == state


def test_unreadable_snapshot_read_only_is_an_error_too(tmp_path):
    p, _ = _make_store(tmp_path / "s")
    p.write_bytes(UNREADABLE["truncated-object"])
    before = _disk_files(p.parent)
    with pytest.raises(CorruptionError) as ei:
        LogKV(str(p), read_only=True)
    assert os.path.samefile(ei.value.path, p)
    assert _disk_files(p.parent) == before


def test_unreadable_snapshot_without_backup(tmp_path):
    """No `.bak`: still an error naming the file, and no file is created or rewritten."""
    d = tmp_path / "nb"
    d.mkdir()
    p = d / "db.json"
    p.write_bytes(UNREADABLE["truncated-object"])
    before = _disk_files(d)
    with pytest.raises(CorruptionError) as ei:
        LogKV(str(p))
    err = ei.value
    assert os.path.samefile(err.path, p)
    assert "db.json" in str(err)
    assert not (d / "db.json.bak").exists()
    assert _disk_files(d) == before, "no file may be created or rewritten next to an unreadable snapshot"


def test_unreadable_snapshot_is_not_overwritten_by_a_write_attempt(tmp_path):
    """Even a caller that catches the error and tries again never gets an empty
    store written over the unreadable file."""
    d = tmp_path / "w"
    d.mkdir()
    p = d / "db.json"
    p.write_bytes(b'{"precious": "data", ')
    for _ in range(2):
        with pytest.raises(CorruptionError):
            LogKV(str(p), autosave=True, durability="always")
    assert p.read_bytes() == b'{"precious": "data", '
    assert _wal_records(d) == 0


# --------------------------------------------------------------------------- foreign rewrites


def _aiodict_file(data: dict) -> bytes:
    return orjson.dumps(
        {
            "version": 1,
            "updated_at": "2026-11-23T06:22:45Z",
            "data": {k: {"value": v, "expires_at": None} for k, v in data.items()},
        }
    )


@pytest.mark.parametrize("foreign", ["aiodict", "plain-object", "empty-file", "deleted"])
def test_snapshot_rewritten_by_another_program_with_log_records_is_a_mismatch(tmp_path, foreign):
    p, _ = _make_store(tmp_path / "s")
    if foreign == "aiodict":
        p.write_bytes(_aiodict_file({"a": 1, "counter": 10, "z": "from aiodict"}))
    elif foreign == "plain-object":
        p.write_bytes(b'{"a": 1, "counter": 10}')
    elif foreign == "empty-file":
        p.write_bytes(b"")
    else:
        p.unlink()
    before = _disk_files(p.parent)
    with pytest.raises(LogMismatchError) as ei:
        LogKV(str(p))
    assert isinstance(ei.value, CorruptionError)
    assert _disk_files(p.parent) == before, "the log must not be replayed, cut, rotated or dropped"
    with pytest.raises(LogMismatchError):
        LogKV(str(p), read_only=True)
    assert _disk_files(p.parent) == before


def test_log_started_from_empty_then_a_snapshot_appears_is_a_mismatch(tmp_path):
    """The log was started on no snapshot ("empty"); then another program wrote db.json."""
    d = tmp_path / "e"
    d.mkdir()
    p = d / "db.json"
    db = LogKV(str(p), compact_on_close=False)
    db.set("k", 1)
    db.incr("n")
    db.close()
    assert _wal_records(d) >= 2
    p.write_bytes(_aiodict_file({"other": "program"}))
    before = _disk_files(d)
    with pytest.raises(LogMismatchError):
        LogKV(str(p))
    assert _disk_files(d) == before


def test_log_started_on_a_foreign_snapshot_that_then_changes_is_a_mismatch(tmp_path):
    """The log was started on an aiodict file (fingerprint = its bytes); the file
    was then rewritten: the records do not belong to the new one."""
    d = tmp_path / "f"
    d.mkdir()
    p = d / "db.json"
    p.write_bytes(_aiodict_file({"x": 1, "counter": 1}))
    db = LogKV(str(p), compact_on_close=False)
    assert dict(db.items()) == {"x": 1, "counter": 1}
    db.incr("counter")
    db.set("y", 2)
    db.close()
    assert _wal_records(d) >= 2
    # control: unchanged foreign snapshot + its log replays fine
    with LogKV(str(p), compact_on_close=False) as db:
        assert dict(db.items()) == {"x": 1, "counter": 2, "y": 2}
    p.write_bytes(_aiodict_file({"x": 1, "counter": 1, "new": "by aiodict"}))
    before = _disk_files(d)
    with pytest.raises(LogMismatchError):
        LogKV(str(p))
    assert _disk_files(d) == before


def test_foreign_rewrite_after_a_clean_close_is_accepted(tmp_path):
    """Control for the mismatch tests (design.md §5 rule 1): once the log holds
    no records (clean close with compaction), aiodict may rewrite db.json and
    logkv opens what aiodict wrote."""
    d = tmp_path / "c"
    d.mkdir()
    p = d / "db.json"
    db = LogKV(str(p))  # compact_on_close=True
    db.set("a", 1)
    db.set("b", 2)
    db.close()
    assert _wal_records(d) == 0
    doc = orjson.loads(p.read_bytes())
    assert "logkv" in doc and doc["data"]["a"]["value"] == 1
    p.write_bytes(_aiodict_file({"a": 100, "c": 3}))  # aiodict drops "logkv"
    with LogKV(str(p)) as db:
        assert dict(db.items()) == {"a": 100, "c": 3}
        db.set("d", 4)
    with LogKV(str(p)) as db:
        assert dict(db.items()) == {"a": 100, "c": 3, "d": 4}
