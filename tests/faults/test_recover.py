"""The salvage machinery behind ``logkv verify`` and ``logkv recover``, called
as library functions (no command line, no subprocess).

* ``logkv._log.walk_log``: every line of a log, valid or with its problem,
  going on past damage.
* ``logkv._recover.salvage_log``: the two salvage policies (skip every bad
  record / stop at the first bad one) that open-time recovery can offer.
* ``logkv._recover.verify_store`` and ``recover_store``: the reports.

Logs are written by the library; damage is done byte by byte here, and the
expected offsets are computed here from the log's lines (design.md §3), not
taken from the implementation.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from logkv import LogKV, LogKVError
from logkv._log import LogLine, LogWalk, apply_ops, walk_log
from logkv._recover import (
    SALVAGE_POLICIES,
    RecoverReport,
    VerifyReport,
    recover_store,
    salvage_log,
    verify_store,
)

STAMP = r"\d{8}T\d{6}"
EXPECTED = {f"k{i}": {"i": i} for i in range(10)}
TORN = b'{"x":"0123456789abcdef","s":11,"o":[["s","k10"'


# ------------------------------------------------------------------------ helpers
def split_lines(raw: bytes) -> list[tuple[int, bytes]]:
    """(offset, bytes with newline when it has one) of every line."""
    out, pos = [], 0
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        end = len(raw) if nl < 0 else nl + 1
        out.append((pos, raw[pos:end]))
        pos = end
    return out


def flip(raw: bytes, index: int, marker: bytes = b'"o":', delta: int = 6) -> tuple[bytes, int]:
    """Flip one byte inside the checksummed body of line ``index``; return the
    new bytes and the line's offset."""
    off, line = split_lines(raw)[index]
    out = bytearray(raw)
    out[off + line.index(marker) + delta] ^= 0x01
    return bytes(out), off


def flip_file(path: str, index: int) -> int:
    wal = Path(path + ".wal")
    raw, off = flip(wal.read_bytes(), index)
    wal.write_bytes(raw)
    return off


def open_state(path: str) -> dict:
    db = LogKV(path, read_only=True)
    try:
        return db.copy()
    finally:
        db.close()


def replay(records: list[tuple[int, list]]) -> dict:
    data: dict = {}
    exp: dict = {}
    for _seq, ops in records:
        apply_ops(data, exp, ops)
    return data


@pytest.fixture
def logged(tmp_path) -> str:
    """A closed store with no snapshot whose log holds a header and 10
    records k0..k9 (sequences 1..10; line i holds sequence i)."""
    path = str(tmp_path / "db.json")
    db = LogKV(path, compact_on_close=False, durability="os")
    for i in range(10):
        db[f"k{i}"] = {"i": i}
    db.close()
    assert len(split_lines(Path(path + ".wal").read_bytes())) == 11
    return path


@pytest.fixture
def log_bytes(logged) -> tuple[str, bytes]:
    return logged + ".wal", Path(logged + ".wal").read_bytes()


# ------------------------------------------------------------------------ walk_log
def test_walk_a_clean_log(log_bytes):
    wal, buf = log_bytes
    walk = walk_log(buf, wal)
    assert isinstance(walk, LogWalk)
    lines = split_lines(buf)
    assert walk.header is not None and walk.header.base_seq == 0
    assert walk.header.end == len(lines[0][1])
    assert walk.header_problem is None
    assert walk.size == len(buf)
    assert [(ln.offset, ln.raw) for ln in walk.lines] == lines[1:]
    assert [ln.seq for ln in walk.valid] == list(range(1, 11))
    assert walk.valid[3].ops == [["s", "k3", {"i": 3}, None]]
    assert walk.damaged == [] and walk.torn is None


def test_walk_empty_buffer():
    walk = walk_log(b"", "x.wal")
    assert walk.header is None and walk.lines == [] and walk.size == 0
    assert walk.valid == [] and walk.damaged == [] and walk.torn is None


def test_walk_goes_on_past_a_flipped_byte(log_bytes):
    wal, buf = log_bytes
    bad, off = flip(buf, 5)
    walk = walk_log(bad, wal)
    (dmg,) = walk.damaged
    assert dmg.offset == off and dmg.problem == "checksum mismatch" and not dmg.torn
    assert dmg.seq is None and dmg.ops is None
    assert dmg.raw == split_lines(bad)[5][1]
    # the record after the damaged one is accepted although 5 is missing
    assert [ln.seq for ln in walk.valid] == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert walk.torn is None


def test_walk_torn_tail(log_bytes):
    wal, buf = log_bytes
    walk = walk_log(buf + TORN, wal)
    torn = walk.torn
    assert isinstance(torn, LogLine)
    assert torn.offset == len(buf) and torn.raw == TORN and torn.problem == "torn tail"
    assert walk.damaged == [torn]
    assert len(walk.valid) == 10


def test_walk_two_damaged_records(log_bytes):
    wal, buf = log_bytes
    bad, off3 = flip(buf, 3)
    bad, off7 = flip(bad, 7)
    walk = walk_log(bad, wal)
    assert [(ln.offset, ln.problem) for ln in walk.damaged] == [
        (off3, "checksum mismatch"), (off7, "checksum mismatch")]
    assert [ln.seq for ln in walk.valid] == [1, 2, 4, 5, 6, 8, 9, 10]


def test_walk_sequence_rules(log_bytes):
    wal, buf = log_bytes
    lines = split_lines(buf)
    # a gap with no damaged line before it is damage
    gap = b"".join(line for i, (_o, line) in enumerate(lines) if i != 4)
    walk = walk_log(gap, wal)
    (dmg,) = walk.damaged
    assert dmg.offset == lines[5][0] - len(lines[4][1])
    assert dmg.problem == "sequence 5 does not follow 3"
    # a sequence that goes back is damage, even right after a damaged line
    back = b"".join(line for _o, line in lines) + lines[2][1]
    walk = walk_log(back, wal)
    assert [ln.problem for ln in walk.damaged] == ["sequence 2 does not follow 10"]
    bad, off = flip(buf, 9)
    walk = walk_log(bad + lines[3][1], wal)
    assert [(ln.offset, ln.problem) for ln in walk.damaged] == [
        (off, "checksum mismatch"), (len(buf), "sequence 3 does not follow 10")]
    # right after a damaged line: a higher sequence is accepted, the same one is not
    bad, off = flip(buf, 10)
    walk = walk_log(bad + lines[9][1], wal)
    assert [(ln.offset, ln.problem) for ln in walk.damaged] == [
        (off, "checksum mismatch"), (len(buf), "sequence 9 does not follow 9")]


def test_walk_damaged_header(log_bytes):
    wal, buf = log_bytes
    bad, off = flip(buf, 0, b'"h":', 8)
    walk = walk_log(bad, wal)
    assert off == 0
    assert walk.header is None
    assert walk.header_problem and "checksum" in walk.header_problem
    assert walk.lines[0].offset == 0 and walk.lines[0].problem == walk.header_problem
    assert [ln.seq for ln in walk.valid] == list(range(1, 11))


def test_walk_header_cut_short():
    walk = walk_log(b'{"x":"0123', "x.wal")
    assert walk.header is None
    assert walk.torn is not None and walk.torn.offset == 0 and walk.valid == []


# ------------------------------------------------------------------------ salvage_log
def test_salvage_rejects_an_unknown_policy(log_bytes):
    wal, buf = log_bytes
    assert SALVAGE_POLICIES == ("skip_corrupted", "point_in_time")
    with pytest.raises(ValueError, match="policy"):
        salvage_log(buf, wal, "tolerate_everything")


@pytest.mark.parametrize("policy", SALVAGE_POLICIES)
def test_salvage_a_clean_log_keeps_everything(log_bytes, policy):
    wal, buf = log_bytes
    got = salvage_log(buf, wal, policy)
    assert got.policy == policy
    assert [seq for seq, _ in got.records] == list(range(1, 11))
    assert replay(got.records) == EXPECTED
    assert got.dropped == [] and got.problems == [] and got.valid_dropped == 0
    assert got.last_seq == 10 and got.end == len(buf) and got.dropped_bytes == 0


def test_salvage_flipped_middle_record(log_bytes):
    wal, buf = log_bytes
    bad, off = flip(buf, 5)  # the record of k4, sequence 5
    end = off + len(split_lines(bad)[5][1])

    skip = salvage_log(bad, wal, "skip_corrupted")
    assert [seq for seq, _ in skip.records] == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert replay(skip.records) == {k: v for k, v in EXPECTED.items() if k != "k4"}
    assert skip.dropped == [(off, end)]
    assert skip.problems == [(off, "checksum mismatch")]
    assert skip.last_seq == 10 and skip.end == len(bad) and skip.valid_dropped == 0

    pit = salvage_log(bad, wal, "point_in_time")
    assert [seq for seq, _ in pit.records] == [1, 2, 3, 4]
    assert replay(pit.records) == {f"k{i}": {"i": i} for i in range(4)}
    assert pit.dropped == [(off, len(bad))]
    assert pit.problems == [(off, "checksum mismatch")]
    assert pit.last_seq == 4 and pit.end == off
    assert pit.valid_dropped == 5  # sequences 6..10, whole but after the damage
    assert pit.dropped_bytes == len(bad) - off


@pytest.mark.parametrize("policy", SALVAGE_POLICIES)
def test_salvage_torn_tail(log_bytes, policy):
    wal, buf = log_bytes
    got = salvage_log(buf + TORN, wal, policy)
    assert [seq for seq, _ in got.records] == list(range(1, 11))
    assert got.dropped == [(len(buf), len(buf) + len(TORN))]
    assert got.problems == [(len(buf), "torn tail")]
    assert got.last_seq == 10 and got.end == len(buf) and got.valid_dropped == 0


def test_salvage_two_damaged_records_and_a_torn_tail(log_bytes):
    wal, buf = log_bytes
    bad, off3 = flip(buf, 3)
    bad, off7 = flip(bad, 7)
    lines = split_lines(bad)
    bad += TORN
    end3, end7 = off3 + len(lines[3][1]), off7 + len(lines[7][1])

    skip = salvage_log(bad, wal, "skip_corrupted")
    assert [seq for seq, _ in skip.records] == [1, 2, 4, 5, 6, 8, 9, 10]
    assert skip.dropped == [(off3, end3), (off7, end7), (len(buf), len(bad))]
    assert [p for _o, p in skip.problems] == ["checksum mismatch", "checksum mismatch",
                                               "torn tail"]
    assert skip.dropped_bytes == (end3 - off3) + (end7 - off7) + len(TORN)
    assert skip.last_seq == 10 and skip.end == len(buf)

    pit = salvage_log(bad, wal, "point_in_time")
    assert [seq for seq, _ in pit.records] == [1, 2]
    assert pit.dropped == [(off3, len(bad))]
    assert [o for o, _p in pit.problems] == [off3, off7, len(buf)]  # every one reported
    assert pit.valid_dropped == 6  # 4, 5, 6, 8, 9, 10
    assert pit.last_seq == 2 and pit.end == off3


def test_salvage_damaged_header(log_bytes):
    wal, buf = log_bytes
    bad, _ = flip(buf, 0, b'"h":', 8)
    header_len = len(split_lines(bad)[0][1])

    skip = salvage_log(bad, wal, "skip_corrupted")
    assert skip.header is None
    assert [seq for seq, _ in skip.records] == list(range(1, 11))
    assert skip.dropped == [(0, header_len)]

    pit = salvage_log(bad, wal, "point_in_time")
    assert pit.header is None and pit.records == [] and pit.last_seq is None
    assert pit.dropped == [(0, len(bad))] and pit.end == 0 and pit.valid_dropped == 10


def test_salvage_of_a_header_only_log_keeps_its_base(tmp_path):
    path = str(tmp_path / "db.json")
    with LogKV(path) as db:
        db["a"] = 1  # close compacts: the new log is a header with base 1
    buf = Path(path + ".wal").read_bytes()
    assert len(split_lines(buf)) == 1
    for policy in SALVAGE_POLICIES:
        got = salvage_log(buf, path + ".wal", policy)
        assert got.records == [] and got.last_seq == 1 and got.end == len(buf)


# ------------------------------------------------------------------------ verify_store
def test_verify_store_clean(logged):
    report = verify_store(logged)
    assert isinstance(report, VerifyReport)
    assert report.ok and report.problems == [] and report.warnings == []
    assert report.records == 10 and report.keys == 10
    assert report.snapshot_missing and report.snapshots == []
    assert report.log is not None and report.log.exists
    assert (report.log.first_seq, report.log.last_seq) == (1, 10)
    assert report.log.size == os.path.getsize(logged + ".wal")


def test_verify_store_reports_every_damaged_record(logged):
    off3 = flip_file(logged, 3)
    off7 = flip_file(logged, 7)
    before = Path(logged + ".wal").read_bytes()
    report = verify_store(logged)
    assert not report.ok
    assert [(p.file, p.offset, p.problem) for p in report.problems] == [
        (logged + ".wal", off3, "checksum mismatch"), (logged + ".wal", off7, "checksum mismatch")]
    assert report.records == 8
    assert report.keys is None  # the store does not open
    assert Path(logged + ".wal").read_bytes() == before  # verify changes nothing


def test_verify_store_torn_tail_is_a_warning(logged):
    size = os.path.getsize(logged + ".wal")
    with open(logged + ".wal", "ab") as f:
        f.write(TORN)
    report = verify_store(logged)
    assert report.ok and report.problems == []
    assert [(w.offset, w.problem) for w in report.warnings] == [
        (size, f"torn tail, {len(TORN)} bytes at offset {size}")]
    assert report.records == 10 and report.keys == 10
    assert os.path.getsize(logged + ".wal") == size + len(TORN)
    assert not os.path.exists(logged)


def test_verify_store_snapshot_and_backup(tmp_path):
    path = str(tmp_path / "db.json")
    with LogKV(path) as db:
        db["a"] = 1
    with LogKV(path) as db:
        db["b"] = 2
    report = verify_store(path)
    assert report.ok and report.keys == 2
    assert [(s.label, s.keys, s.kind) for s in report.snapshots] == [
        ("snapshot", 2, "logkv"), ("backup", 1, "logkv")]
    assert report.snapshots[0].seq == 2 and report.snapshots[0].size == os.path.getsize(path)

    raw = Path(path).read_bytes()
    Path(path).write_bytes(raw[:-3])
    report = verify_store(path)
    assert not report.ok
    assert report.problems[0].file == path
    assert report.problems[0].problem.startswith("snapshot does not load")
    assert [s.label for s in report.snapshots] == ["backup"]


def test_verify_store_log_of_another_snapshot(logged):
    Path(logged).write_text('{"z": 1}')
    report = verify_store(logged)
    assert not report.ok
    (prob,) = report.problems
    assert prob.file == logged + ".wal" and prob.offset == 0
    assert "does not belong to the snapshot" in prob.problem
    assert [(s.kind, s.seq) for s in report.snapshots] == [("foreign", None)]


def test_verify_store_without_a_store(tmp_path):
    with pytest.raises(FileNotFoundError):
        verify_store(str(tmp_path / "nothing.json"))
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------ recover_store
def test_recover_store_keeps_valid_records_and_moves_damage_aside(logged, tmp_path):
    lines = split_lines(Path(logged + ".wal").read_bytes())
    off5 = flip_file(logged, 5)
    with open(logged + ".wal", "ab") as f:
        f.write(TORN)
    old_wal = Path(logged + ".wal").read_bytes()
    end5 = off5 + len(lines[5][1])
    phases: list[str] = []

    report = recover_store(logged, progress=phases.append)
    assert isinstance(report, RecoverReport)
    assert phases == ["reading the snapshot", "reading the log", "moving damaged bytes aside",
                      "writing 9 keys"]
    assert report.source == logged and not report.used_backup
    assert report.mismatch is None and report.log_applied
    assert (report.applied, report.already, report.ignored) == (9, 0, 0)
    assert report.dropped == [(off5, end5, "checksum mismatch"),
                              (len(old_wal) - len(TORN), len(old_wal), "torn tail")]
    assert report.damaged_bytes == end5 - off5 + len(TORN)
    assert report.damaged_file is not None
    assert re.fullmatch(rf"db\.json\.damaged-{STAMP}", os.path.basename(report.damaged_file))
    assert Path(report.damaged_file).read_bytes() == old_wal[off5:end5] + TORN
    assert report.old_log is not None and Path(report.old_log).read_bytes() == old_wal
    assert report.old_bak is None and report.damaged_snapshot is None
    assert report.keys == 9 and report.seq == 10
    assert report.snapshot_size == os.path.getsize(logged)

    expected = {k: v for k, v in EXPECTED.items() if k != "k4"}
    assert open_state(logged) == expected
    assert len(split_lines(Path(logged + ".wal").read_bytes())) == 1
    assert json.loads(Path(logged).read_text())["logkv"] == {
        "log": report.log_id, "seq": 10, "exact": False}
    assert verify_store(logged).ok
    with LogKV(logged) as db:  # writable again
        db["after"] = 1
    assert open_state(logged) == {**expected, "after": 1}


def test_recover_store_of_a_clean_store_changes_no_value(tmp_path):
    path = str(tmp_path / "db.json")
    with LogKV(path) as db:
        db["a"] = 1
    with LogKV(path) as db:
        db["c"] = 3  # db.json = {a, c} (sequence 2), db.json.bak = {a}
    with LogKV(path, compact_on_close=False) as db:
        db["b"] = 2  # only in the log
    old_bak = Path(path + ".bak").read_bytes()
    report = recover_store(path, from_backup=True)
    assert report.backup_not_needed and not report.used_backup
    assert report.start_keys == 2 and report.start_seq == 2
    assert (report.applied, report.already) == (1, 0)
    assert report.dropped == [] and report.damaged_file is None
    assert report.old_bak is not None and Path(report.old_bak).read_bytes() == old_bak
    assert report.seq == 3 and report.keys == 3
    assert open_state(path) == {"a": 1, "b": 2, "c": 3}


def test_recover_store_skips_records_the_snapshot_already_holds(logged):
    # A compaction that died between installing the snapshot and rotating the
    # log (design.md §6, between steps 4 and 5): the snapshot holds 1..10 and
    # the log still starts at 1.
    old_wal = Path(logged + ".wal").read_bytes()
    with LogKV(logged, compact_on_close=False) as db:
        db.compact()
        db["k10"] = {"i": 10}
        db["k11"] = {"i": 11}
    new_lines = split_lines(Path(logged + ".wal").read_bytes())
    assert len(new_lines) == 3  # header (base 10) and sequences 11, 12
    Path(logged + ".wal").write_bytes(old_wal + b"".join(line for _o, line in new_lines[1:]))
    report = recover_store(logged)
    assert report.mismatch is None and report.start_seq == 10
    assert (report.applied, report.already) == (2, 10)
    assert report.seq == 12 and report.dropped == []
    assert open_state(logged) == {**EXPECTED, "k10": {"i": 10}, "k11": {"i": 11}}


def test_recover_store_log_of_another_snapshot(logged, tmp_path):
    Path(logged).write_text('{"z": 1}')
    report = recover_store(logged)
    assert report.mismatch is not None and "do not belong" in report.mismatch
    assert not report.log_applied and report.ignored == 10 and report.applied == 0
    assert open_state(logged) == {"z": 1}
    assert report.old_log is not None

    # put the old log back and apply it this time
    os.replace(report.old_log, logged + ".wal")
    report = recover_store(logged, apply_log=True)
    assert report.mismatch is not None and report.log_applied and report.applied == 10
    assert open_state(logged) == {"z": 1, **EXPECTED}


def test_recover_store_apply_log_of_another_stream_applies_all_its_records(logged, tmp_path):
    # the snapshot is logkv's own (sequence 10) but the log is another store's
    with LogKV(logged) as db:
        db.compact()
    other = str(tmp_path / "other.json")
    with LogKV(other, compact_on_close=False) as db:
        for i in range(3):
            db[f"o{i}"] = i  # sequences 1..3 of another stream
    os.replace(other + ".wal", logged + ".wal")
    report = recover_store(logged)
    assert report.mismatch is not None and report.ignored == 3
    assert open_state(logged) == EXPECTED
    assert report.old_log is not None
    os.replace(report.old_log, logged + ".wal")
    # the snapshot written by that recover has a new stream and sequence 10
    report = recover_store(logged, apply_log=True)
    assert report.mismatch is not None and (report.applied, report.already) == (3, 0)
    assert open_state(logged) == {**EXPECTED, "o0": 0, "o1": 1, "o2": 2}


def test_recover_store_from_backup(tmp_path):
    path = str(tmp_path / "db.json")
    with LogKV(path) as db:
        db["a"] = 1
    with LogKV(path) as db:
        db["b"] = 2  # db.json = {a, b}, db.json.bak = {a}
    raw = Path(path).read_bytes()
    Path(path).write_bytes(raw[: len(raw) // 2])
    damaged = Path(path).read_bytes()
    before = sorted(os.listdir(tmp_path))

    with pytest.raises(LogKVError, match="--from-backup"):
        recover_store(path)
    assert sorted(os.listdir(tmp_path)) == before
    assert Path(path).read_bytes() == damaged

    report = recover_store(path, from_backup=True)
    assert report.used_backup and report.source == path + ".bak"
    assert report.start_keys == 1
    assert report.damaged_snapshot is not None
    assert Path(report.damaged_snapshot).read_bytes() == damaged
    assert open_state(path) == {"a": 1}
    assert verify_store(path).ok


def test_recover_store_damaged_header_keeps_the_snapshot_alone(logged):
    wal = Path(logged + ".wal")
    bad, _ = flip(wal.read_bytes(), 0, b'"h":', 8)
    wal.write_bytes(bad)
    report = recover_store(logged)
    assert report.mismatch is not None and "header is damaged" in report.mismatch
    assert report.ignored == 10 and not report.log_applied
    assert [(s, p) for s, _e, p in report.dropped] == [(0, report.dropped[0][2])]
    assert open_state(logged) == {}
    wal.write_bytes(bad)
    report = recover_store(logged, apply_log=True)
    assert report.applied == 10 and open_state(logged) == EXPECTED


def test_recover_store_refuses_while_the_store_is_open(logged):
    db = LogKV(logged)
    try:
        with pytest.raises(LogKVError, match="open in another process"):
            recover_store(logged)
    finally:
        db.close()
    assert not [n for n in os.listdir(os.path.dirname(logged)) if "recovered" in n]


def test_recover_store_without_a_store(tmp_path):
    with pytest.raises(FileNotFoundError):
        recover_store(str(tmp_path / "nothing.json"))
    assert os.listdir(tmp_path) == []
