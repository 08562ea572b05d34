"""Open-time recovery policies (`recovery=`), in the spirit of RocksDB's WAL
recovery modes: the default drops a torn tail and refuses mid-log damage;
"skip_corrupted" keeps every valid record; "point_in_time" keeps the records
before the first damaged one. A read-only open never changes a file; a
writable one moves the damaged bytes aside (nothing deleted) so that the
store opens with the default policy afterwards."""
from __future__ import annotations

import glob
import logging
import os

import pytest

from logkv import CorruptionError, LogKV


def _damaged_store(folder) -> tuple[str, int]:
    path = str(folder / "db.json")
    db = LogKV(path, compact_on_close=False)
    for i in range(5):
        db[f"k{i}"] = i
    db.close()
    wal = path + ".wal"
    raw = bytearray(open(wal, "rb").read())
    lines = raw.split(b"\n")
    start = sum(len(line) + 1 for line in lines[:3])  # header, k0, k1: then k2's line
    raw[start + 40] ^= 0x20
    with open(wal, "wb") as f:
        f.write(bytes(raw))
    return path, start


def _files(folder) -> dict[str, bytes]:
    return {os.path.basename(p): open(p, "rb").read()
            for p in glob.glob(str(folder / "*")) if not p.endswith(".shm")}


EXPECTED = {
    "skip_corrupted": {"k0": 0, "k1": 1, "k3": 3, "k4": 4},
    "point_in_time": {"k0": 0, "k1": 1},
}


def test_default_refuses_mid_log_damage(tmp_path):
    path, offset = _damaged_store(tmp_path)
    before = _files(tmp_path)
    with pytest.raises(CorruptionError) as info:
        LogKV(path)
    assert info.value.offset == offset and info.value.path.endswith("db.json.wal")
    assert _files(tmp_path) == before


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_read_only_salvage_changes_no_file(tmp_path, mode):
    path, _ = _damaged_store(tmp_path)
    before = _files(tmp_path)
    with LogKV(path, read_only=True, recovery=mode) as db:
        assert db.copy() == EXPECTED[mode]
    assert _files(tmp_path) == before


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_writable_salvage_repairs_and_keeps_the_damage_aside(tmp_path, mode, caplog):
    path, offset = _damaged_store(tmp_path)
    damaged_line = open(path + ".wal", "rb").read()[offset:].split(b"\n")[0]
    with caplog.at_level(logging.WARNING, logger="logkv"):
        with LogKV(path, recovery=mode) as db:
            assert db.copy() == EXPECTED[mode]
            db["after"] = 1
    assert any("salvaging" in r.getMessage() for r in caplog.records)
    aside = glob.glob(path + ".damaged-*")
    assert len(aside) == 1 and damaged_line in open(aside[0], "rb").read()
    assert glob.glob(path + ".wal.recovered-*"), "the old log is kept, not deleted"
    with LogKV(path) as db:  # the default policy opens it now
        assert db.copy() == {**EXPECTED[mode], "after": 1}


def test_torn_tail_is_dropped_with_a_warning(tmp_path, caplog):
    path = str(tmp_path / "db.json")
    db = LogKV(path, compact_on_close=False)
    db["a"] = 1
    db["b"] = 2
    db.close()
    with open(path + ".wal", "rb+") as f:
        f.truncate(os.path.getsize(path + ".wal") - 5)
    with caplog.at_level(logging.WARNING, logger="logkv"):
        with LogKV(path) as db:
            assert db.copy() == {"a": 1}
            assert db.stats()["dropped_tail_bytes"] > 0
    assert any("torn" in r.getMessage() for r in caplog.records)


def test_unknown_policy_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        LogKV(str(tmp_path / "db.json"), recovery="whatever")
    assert os.listdir(tmp_path) == []  # checked before any file is made
