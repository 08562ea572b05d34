"""Branches of the storage core that the other tests did not reach.

Each test names the module and the branch it covers; docs/_coverage_notes.md
lists every branch that stays uncovered, with the reason.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import fcntl
import os

import pytest

from logkv import CorruptionError, LogKV, LogKVError, StorageError
from logkv import _compact, _fs, _lock, _log, _record
from logkv._engine import Engine
from logkv._errors import LockTimeout
from logkv._fs import FileSystem
from logkv._lock import Coordinator
from logkv._record import RecordError, ValueCodec


class Color(enum.IntEnum):
    RED = 1


class Shade(enum.Enum):
    DARK = "dark"


@dataclasses.dataclass
class Point:
    x: int
    y: int


# ---------------------------------------------------------------- _record.py
def test_record_enum_found_inside_dict_and_list():
    codec = ValueCodec()
    # _find_enum: the member inside a dict (returns it) and inside a list
    assert codec.encode({"c": Color.RED}) == (b'{"c":1}', False)
    assert codec.encode([Color.RED, "x"]) == (b'[1,"x"]', False)
    with pytest.raises(TypeError):
        codec.encode({"s": [Shade.DARK]})


def test_record_enum_replaced_by_serializer_in_nested_containers():
    # _replace_enums: dict, list, tuple and a non-enum leaf
    codec = ValueCodec(serializer=lambda v: v.name if isinstance(v, enum.Enum) else str(v))
    out, exact = codec.encode({"a": [Shade.DARK, "x", (Color.RED, 2)]})
    assert out == b'{"a":["DARK","x",["RED",2]]}' and not exact


def test_record_enum_search_stops_at_depth_100():
    v: object = [Shade.DARK]
    for _ in range(105):
        v = [v]
    # the search gives up below depth 100 (orjson then encodes the member's value)
    out, _ = ValueCodec().encode(v)
    assert b'"dark"' in out


def test_record_exact_encoder_default_hook():
    # _stdlib_default: a value with a > 64-bit integer goes through the stdlib
    # encoder; dataclass, datetime and Path are converted as orjson would
    from pathlib import Path
    codec = ValueCodec()
    out, exact = codec.encode({"n": 2 ** 70, "p": Point(1, 2), "d": dt.date(2026, 1, 2),
                               "f": Path("/x")})
    assert exact
    assert out == b'{"n":1180591620717411303424,"p":{"x":1,"y":2},"d":"2026-01-02","f":"/x"}'
    with pytest.raises(TypeError):
        codec.encode({"n": 2 ** 70, "o": object()})


def test_record_exact_encoder_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        ValueCodec().encode({"n": 2 ** 70, "f": float("nan")})


def test_record_nonfinite_float_subclass_and_foreign_leaf():
    class F(float):
        pass

    codec = ValueCodec()
    with pytest.raises(ValueError):
        codec.encode([None, F("nan")])
    # a null next to a non-plain leaf (no serializer, not a dataclass): no NaN
    assert codec.encode([None, dt.date(2026, 1, 2)])[0] == b'[null,"2026-01-02"]'


def test_record_nonfinite_check_tolerates_a_failing_serializer():
    calls = []

    def ser(v):
        calls.append(v)
        if len(calls) > 1:
            raise RuntimeError("second call")
        return "ok"

    out, _ = ValueCodec(serializer=ser).encode([None, object()])
    assert out == b'[null,"ok"]'


def test_record_nan_nested_deeper_than_200_is_refused():
    v: object = [float("nan")]
    for _ in range(210):
        v = [v]
    with pytest.raises(ValueError):
        ValueCodec().encode(v)


def test_record_validate_op_shapes():
    for bad in (1, [], ["s", "k", 1, "soon"], ["s", "k", 1, 10 ** 400], ["e", "k", -10 ** 400]):
        with pytest.raises(RecordError):
            _record.validate_op(bad)
    for good in (["s", "k", 1, 10 ** 20], ["e", "k", 1.5], ["e", "k", None]):
        _record.validate_op(good)


@pytest.mark.parametrize("op", [b'["s","k",1,1%s]' % (b"0" * 400), b'["e","k",1%s]' % (b"0" * 400)])
def test_engine_expiry_beyond_a_double_is_corruption(tmp_path, op):
    """Only an exact record can hold such an integer; it was OverflowError
    out of the open instead of CorruptionError at the record's offset."""
    head = _record.build_header(0, "a" * 32, "empty")
    first = _record.build_line(1, [_record.op_set("k", b"1", None)])
    (tmp_path / "db.json.wal").write_bytes(
        head + first + _record.build_line(2, [op], True))
    with pytest.raises(CorruptionError) as info:
        LogKV(str(tmp_path / "db.json"))
    assert info.value.offset == len(head) + len(first)


def test_log_first_line_not_a_header():
    buf = _record.build_line(1, [_record.op_delete("k")])
    with pytest.raises(CorruptionError, match="not a log header"):
        _log.parse_header(buf, "x.wal")


def test_log_header_in_the_middle_of_the_log():
    buf = _record.build_header(0, "a" * 32, "empty") + _record.build_header(1, "a" * 32, "empty")
    head = _log.parse_header(buf, "x.wal")
    with pytest.raises(CorruptionError, match="header in the middle"):
        _log.decode_records(buf, head.end, head.base_seq, "x.wal")


def test_log_apply_ops_with_expiry():
    data, exp = {}, {}
    _log.apply_ops(data, exp, [["s", "k", 1, 123]], None)
    assert data == {"k": 1} and exp == {"k": 123.0}


def test_log_file_read_to_end_and_double_close(tmp_path):
    p = str(tmp_path / "w")
    with open(p, "wb") as f:
        f.write(b"abc")
    lf = _log.LogFile(FileSystem(), p, writable=True)
    assert lf.read(1) == b"bc"
    lf.close()
    lf.close()


def test_log_append_failure_when_the_cut_back_fails_too(tmp_path):
    class Broken(FileSystem):
        def write(self, fd, data):
            raise OSError(28, "No space left on device")

        def ftruncate(self, fd, size):
            raise OSError(5, "Input/output error")

    p = str(tmp_path / "w")
    open(p, "wb").close()
    lf = _log.LogFile(Broken(), p, writable=True)
    with pytest.raises(StorageError, match="write failed"):
        lf.append(b"x\n", 0)
    lf.close()


# ---------------------------------------------------------------- _fs.py
def test_fs_write_loops_over_short_writes(tmp_path, monkeypatch):
    real = os.write

    def short(fd, data):
        return real(fd, bytes(data[:3]))

    p = str(tmp_path / "f")
    fs = FileSystem()
    fd = fs.open(p, os.O_WRONLY | os.O_CREAT)
    monkeypatch.setattr(_fs.os, "write", short)
    fs.write(fd, b"0123456789")
    monkeypatch.undo()
    fs.close(fd)
    with open(p, "rb") as f:
        assert f.read() == b"0123456789"


def test_fs_pread_stops_at_end_of_file(tmp_path):
    p = str(tmp_path / "f")
    with open(p, "wb") as f:
        f.write(b"abc")
    fs = FileSystem()
    fd = fs.open(p, os.O_RDONLY)
    assert fs.pread(fd, 100, 1) == b"bc"
    fs.close(fd)


def test_fs_fdatasync_fallback_without_fdatasync(tmp_path, monkeypatch):
    monkeypatch.setattr(_fs, "_HAS_FDATASYNC", False)
    p = str(tmp_path / "f")
    fs = FileSystem()
    fd = fs.open(p, os.O_WRONLY | os.O_CREAT)
    fs.fdatasync(fd)  # falls back to fsync (macOS)
    fs.close(fd)


# ---------------------------------------------------------------- _lock.py
def test_lock_wait_backs_off_then_times_out(tmp_path):
    p = str(tmp_path / "l")
    holder = os.open(p, os.O_RDWR | os.O_CREAT)
    waiter = os.open(p, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(LockTimeout):
            _lock._wait_flock(waiter, fcntl.LOCK_EX, 0.05, p)
    finally:
        os.close(holder)
        os.close(waiter)


def test_lock_compaction_lock_busy_and_read_only_coordinator(tmp_path):
    path = str(tmp_path / "db.json")
    fs = FileSystem()
    a = Coordinator(fs, path, read_only=False, timeout=1.0)
    a.share_liveness()
    b = Coordinator(fs, path, read_only=False, timeout=1.0)
    try:
        assert a.try_compaction_lock(None)
        assert not b.try_compaction_lock(0.03)  # waits, then gives up
        a.compaction_unlock()
        assert b.try_compaction_lock(0.03)
        b.compaction_unlock()
    finally:
        a.close()
        b.close()
    ro = Coordinator(fs, str(tmp_path / "none.json"), read_only=True, timeout=1.0)
    assert ro.shm_fd < 0
    assert ro.try_compaction_lock(None)  # nothing to exclude
    ro.compaction_unlock()
    ro.close()


# ---------------------------------------------------------------- _compact.py
def test_compact_main_in_process_with_every_option(tmp_path, capsys):
    path = str(tmp_path / "db.json")
    with LogKV(path, compact_on_close=False) as db:
        db["a"] = 1
    assert _compact.main([path, "--no-backup", "--indent", "2", "--sort-keys", "--wait", "1"]) == 0
    with open(path, "rb") as f:
        assert b'\n  "data"' in f.read()
    assert LogKV(path, read_only=True)["a"] == 1


def test_compact_main_reports_busy_and_errors(tmp_path, capsys):
    path = str(tmp_path / "db.json")
    with LogKV(path, compact_on_close=False) as db:
        db["a"] = 1
    holder = Coordinator(FileSystem(), path, read_only=False, timeout=1.0)
    holder.share_liveness()
    try:
        assert holder.try_compaction_lock(None)
        assert _compact.main([path, "--wait", "0"]) == _compact.EXIT_BUSY
    finally:
        holder.compaction_unlock()
        holder.close()
    with open(str(tmp_path / "db.json"), "wb") as f:
        f.write(b"not json")
    assert _compact.main([path]) == 1
    assert "db.json" in capsys.readouterr().err


def test_compact_child_command_flags():
    cmd, env = _compact._child_command("/x/db.json", create_backup=False, indent=2,
                                       sort_keys=True, wait=0.5)
    assert cmd[-7:] == ["/x/db.json", "--no-backup", "--indent", "2", "--sort-keys", "--wait", "0.5"]


def test_compact_child_busy_and_failing(tmp_path):
    path = str(tmp_path / "db.json")
    with LogKV(path, compact_on_close=False) as db:
        db["a"] = 1
    holder = Coordinator(FileSystem(), path, read_only=False, timeout=1.0)
    holder.share_liveness()
    try:
        assert holder.try_compaction_lock(None)
        assert _compact.run_compaction_child(path, create_backup=True, indent=None,
                                             sort_keys=False, wait=0) is False
    finally:
        holder.compaction_unlock()
        holder.close()
    with open(path, "wb") as f:
        f.write(b"not json")
    with pytest.raises(LogKVError, match="compaction failed"):
        _compact.run_compaction_child(path, create_backup=True, indent=None,
                                      sort_keys=False, wait=None)


# ---------------------------------------------------------------- _engine.py
def test_engine_rejects_bad_arguments(tmp_path):
    path = str(tmp_path / "db.json")
    with pytest.raises(ValueError, match="durability"):
        Engine(path, codec=ValueCodec(), durability="never")
    with pytest.raises(ValueError, match="autosave_delay"):
        Engine(path, codec=ValueCodec(), autosave_delay=-1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_engine_store_refuses_use_after_fork_and_closes_quietly(tmp_path):
    path = str(tmp_path / "db.json")
    db = LogKV(path)
    db["a"] = 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the inherited store refuses writes, close() just lets go
        code = 1
        try:
            try:
                db["b"] = 2
            except LogKVError:
                db.close()
                code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    db["c"] = 3  # the parent's store is untouched
    db.close()
    assert LogKV(path, read_only=True).copy() == {"a": 1, "c": 3}


def test_lock_wait_without_timeout_blocks_until_free(tmp_path):
    import threading
    p = str(tmp_path / "l")
    holder = os.open(p, os.O_RDWR | os.O_CREAT)
    waiter = os.open(p, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    t = threading.Timer(0.05, fcntl.flock, args=(holder, fcntl.LOCK_UN))
    t.start()
    try:
        _lock._wait_flock(waiter, fcntl.LOCK_EX, None, p)  # lock_timeout=None: wait forever
    finally:
        t.join()
        os.close(holder)
        os.close(waiter)


def test_log_walk_reports_a_header_in_the_middle():
    buf = _record.build_header(0, "a" * 32, "empty") + _record.build_header(1, "a" * 32, "empty")
    walk = _log.walk_log(buf, "x.wal")
    assert any(line.problem and "header in the middle" in line.problem for line in walk.lines)


def test_snapshot_data_member_not_an_object(tmp_path):
    path = str(tmp_path / "db.json")
    with open(path, "w") as f:
        f.write('{"version": 1, "data": [1, 2]}')
    with pytest.raises(CorruptionError, match='"data" is not a JSON object'):
        LogKV(path)


# ---------------------------------------------------------------- _engine.py (continued)
def test_engine_manual_mode_expiry_merges_into_pending_set(tmp_path):
    path = str(tmp_path / "db.json")
    db = LogKV(path, autosave=False)
    db["k"] = 1
    db.expire("k", 1000)  # _merge: an expiry change folds into the pending set
    db.flush()
    db.close()
    again = LogKV(path, read_only=True)
    assert again["k"] == 1 and 990 < again.ttl("k") <= 1000


def test_engine_manual_mode_flush_of_a_big_integer(tmp_path):
    path = str(tmp_path / "db.json")
    db = LogKV(path, autosave=False, compact_on_close=False)
    db["n"] = 2 ** 70
    db.flush()  # an exact record (beyond 64 bits)
    db.close()
    assert LogKV(path, read_only=True)["n"] == 2 ** 70


def test_engine_manual_mode_pending_changes_win_over_other_writers(tmp_path):
    """Catching up while manual-mode changes are pending: the general apply path."""
    path = str(tmp_path / "db.json")
    other = LogKV(path)
    mine = LogKV(path, autosave=False)
    mine["k"] = "mine"
    other["k"] = "theirs"
    other["j"] = "theirs"
    assert mine["k"] == "mine" and mine["j"] == "theirs"
    other.clear()  # another writer's clear: the pending changes are applied again
    assert mine.copy() == {"k": "mine"}
    mine.clear()   # a pending clear: other writers' records do not show through
    other["z"] = 1
    assert mine.copy() == {}
    mine.close()
    other.close()


def test_engine_transaction_reads_after_clear(tmp_path):
    db = LogKV(str(tmp_path / "db.json"))
    db.mset({"a": 1, "b": 2, "c": 3})
    with db.transaction():
        db.clear()
        assert db.get("a") is None
        db.set("t", 1, ttl=100)
        db["u"] = 2
        db.persist("t")
        db.set("t", 3, ttl=100)
        db["v"] = 3
        del db["v"]
        assert sorted(db.items()) == [("t", 3), ("u", 2)]
    assert sorted(db.keys()) == ["t", "u"]
    db.close()


def test_engine_read_only_flush_and_compact(tmp_path):
    from logkv import ReadOnlyError
    path = str(tmp_path / "db.json")
    with LogKV(path) as db:
        db["a"] = 1
    ro = LogKV(path, read_only=True)
    ro.flush()  # nothing to do
    with pytest.raises(ReadOnlyError):
        ro.compact()
    ro.close()


def test_engine_reload_inside_a_transaction_is_refused(tmp_path):
    db = LogKV(str(tmp_path / "db.json"))
    with pytest.raises(LogKVError, match="reload"):
        with db.transaction():
            db.reload()
    db.close()


def test_engine_open_with_gc_already_disabled(tmp_path):
    import gc
    path = str(tmp_path / "db.json")
    with LogKV(path) as db:
        db["a"] = 1
    gc.disable()
    try:
        with LogKV(path) as db:
            assert db["a"] == 1
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()


def test_engine_read_only_without_shared_page(tmp_path):
    path = str(tmp_path / "db.json")
    db = LogKV(path, compact_on_close=False)
    db["a"] = 1
    db.close()
    os.unlink(path + ".shm")
    ro = LogKV(path, read_only=True)  # watches the log's identity and size instead
    assert ro["a"] == 1
    assert ro.get("a") == 1
    w = LogKV(path)
    w["b"] = 2
    assert ro.get("b") == 2
    w.close()
    ro.close()


def test_engine_read_only_on_an_empty_log_file(tmp_path):
    path = str(tmp_path / "db.json")
    with LogKV(path) as db:
        db["a"] = 1
    open(path + ".wal", "wb").close()  # a crash while the log was being created
    for name in (".shm",):
        if os.path.exists(path + name):
            os.unlink(path + name)
    assert LogKV(path, read_only=True).copy() == {"a": 1}


def test_engine_salvage_with_a_damaged_header(tmp_path):
    path = str(tmp_path / "db.json")
    with LogKV(path, compact_on_close=False) as db:
        db["a"] = 1
    with open(path + ".wal", "r+b") as f:
        f.write(b"#")  # the header's first byte
    with pytest.raises(CorruptionError, match="header"):
        LogKV(path, recovery="skip_corrupted", read_only=True)


def test_engine_automatic_compaction_child_still_running_or_failed(tmp_path, caplog):
    db = LogKV(str(tmp_path / "db.json"))
    eng = db._e

    class FakeChild:
        def __init__(self, rc):
            self.returncode = rc

        def poll(self):
            return self.returncode

        def wait(self, timeout=None):
            return self.returncode

    eng._compactor = FakeChild(None)  # still running: no second child
    eng._start_auto_compaction()
    assert isinstance(eng._compactor, FakeChild)
    eng._compactor = FakeChild(1)     # failed: logged, and a new child starts
    with caplog.at_level("WARNING", logger="logkv"):
        eng._start_auto_compaction()
    assert "automatic compaction failed" in caplog.text
    assert not isinstance(eng._compactor, FakeChild)
    eng._compactor.wait()
    eng._compactor = FakeChild(0)     # finished: the next one starts
    eng._start_auto_compaction()
    assert not isinstance(eng._compactor, FakeChild)
    eng._compactor.wait()
    db.close()


def test_record_operations_not_a_list():
    body = b'"s":1,"o":5}'
    line = b'{"x":"' + _record._hexdigest(body).encode() + b'",' + body
    with pytest.raises(RecordError, match="not a list"):
        _record.parse_line(line)
