"""Reading and appending the write-ahead log (format: docs/design.md §3).

Recovery rules, each from the crash behind it:

* Bytes after the last newline are a *torn tail*: a writer died inside
  ``write(2)``, or the machine lost power before the page reached the disk.
  Such a record was never acknowledged, so it is dropped, not reported as
  damage.
* A whole line (it ends in a newline) that fails its checksum, does not parse
  or breaks the sequence was written completely and then damaged: that is
  corruption, raised with the file and the line's offset, never skipped.
"""
from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from itertools import repeat
from operator import contains, itemgetter
from typing import Any, Iterator

import orjson
import xxhash

from ._errors import CorruptionError, LogMismatchError, StorageError
from ._fs import O_NOFOLLOW, FileSystem, io_error
from ._record import BODY_START, LINE_PREFIX, RecordError, parse_line, validate_op

_hexdigest = xxhash.xxh3_64_hexdigest
_body = itemgetter(slice(BODY_START, None))
_head = itemgetter(slice(0, BODY_START))
_HEAD_OPEN = LINE_PREFIX.decode()
_HEAD_SEP = '",' + _HEAD_OPEN
_seq_of = itemgetter("s")
_ops_of = itemgetter("o")


@dataclass
class LogHeader:
    base_seq: int
    log_id: str
    fingerprint: str
    end: int  # offset just past the header line


def parse_header(buf: bytes, path: str) -> LogHeader:
    nl = buf.find(b"\n")
    if nl < 0:
        raise CorruptionError(f"{path}: the log header is cut short at offset 0", path=path, offset=0)
    try:
        rec = parse_line(buf[:nl])
    except RecordError as exc:
        raise CorruptionError(f"{path}: bad log header at offset 0: {exc}", path=path, offset=0) from None
    head = rec.get("h")
    if type(head) is not dict or type(head.get("log")) is not str or type(head.get("base")) is not str:
        raise CorruptionError(f"{path}: the first line is not a log header (offset 0)", path=path, offset=0)
    return LogHeader(rec["s"], head["log"], head["base"], nl + 1)


def replay_start(snap_log_id: str | None, snap_seq: int, snap_fingerprint: str,
                 header: LogHeader, has_records: bool, wal_path: str, snap_path: str) -> int:
    """The sequence after which the log's records apply on top of the
    snapshot (docs/design.md §5); LogMismatchError when they do not belong."""
    if snap_log_id is not None and snap_log_id == header.log_id:
        if header.base_seq > snap_seq:
            raise LogMismatchError(
                f"{wal_path}: the log starts after sequence {header.base_seq} but the snapshot "
                f"{snap_path} holds only up to {snap_seq} (an older snapshot was put back?); "
                "records in between are missing. Run `logkv recover` to choose.",
                path=wal_path, offset=0)
        return snap_seq
    if header.fingerprint == snap_fingerprint or not has_records:
        # Started on exactly this snapshot, or nothing to apply wrongly.
        return header.base_seq
    raise LogMismatchError(
        f"{wal_path}: the log's records do not belong to the snapshot {snap_path} (was it "
        "rewritten by another program?). They were not applied. Run `logkv recover` to choose "
        "between the snapshot alone and the snapshot plus these records.",
        path=wal_path, offset=0)


def iter_records(buf: bytes, start: int, prev_seq: int, path: str,
                 base_offset: int = 0,
                 stop: int | None = None) -> Iterator[tuple[int, int, int, list[Any]]]:
    """Yield ``(offset, end, seq, ops)`` for each whole line of ``buf[start:stop]``.

    Offsets are file offsets (``base_offset`` is where ``buf`` starts in the
    file). Stops before a torn tail; raises CorruptionError for a damaged whole
    line. ``prev_seq`` is the sequence the first record must follow.
    """
    pos = start
    find = buf.find
    while True:
        nl = find(b"\n", pos, stop)
        if nl < 0:
            return
        line = buf[pos:nl]
        off = base_offset + pos
        try:
            rec = parse_line(line)
            ops = rec.get("o")
            if ops is None:
                raise RecordError("a header in the middle of the log")
            seq = rec["s"]
            if seq != prev_seq + 1:
                raise RecordError(f"sequence {seq} does not follow {prev_seq}")
            for op in ops:
                validate_op(op)
        except RecordError as exc:
            raise CorruptionError(
                f"{path}: damaged log record at byte offset {off}: {exc}", path=path, offset=off
            ) from None
        yield off, base_offset + nl + 1, seq, ops
        prev_seq = seq
        pos = nl + 1


def apply_ops(data: dict[str, Any], exp: dict[str, float], ops: list,
              deserializer: Any = None) -> None:
    """Apply checked operations (post-images) to a key->value dict and a
    key->expiry dict: what replaying a record means."""
    for op in ops:
        kind = op[0]
        if kind == "s":
            key = op[1]
            data[key] = op[2] if deserializer is None else deserializer(op[2])
            if op[3] is None:
                exp.pop(key, None)
            else:
                exp[key] = float(op[3])
        elif kind == "d":
            data.pop(op[1], None)
            exp.pop(op[1], None)
        elif kind == "e":
            if op[1] in data:
                if op[2] is None:
                    exp.pop(op[1], None)
                else:
                    exp[op[1]] = float(op[2])
        else:
            data.clear()
            exp.clear()


def decode_records(buf: bytes, start: int, prev_seq: int, path: str,
                   base_offset: int = 0,
                   stop: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """All whole records of ``buf[start:stop]`` as decoded dicts, and the file
    offset just past the last one. Damage raises CorruptionError.

    The checks and the parse run over all lines at once in C (map, join, one
    orjson.loads); only when something fails does the line-by-line reader run,
    to name the damaged line's offset. Operations are checked where they are
    applied (see Engine._apply_records). A long log is better decoded a chunk
    at a time (:func:`decode_chunks`).
    """
    last_nl = buf.rfind(b"\n", start, stop)
    if last_nl < start:
        return [], base_offset + start
    lines = buf[start:last_nl].split(b"\n")
    n = len(lines)
    bodies = list(map(_body, lines))
    # Every line's head -- {"x":"<checksum of its body>", -- checked in one
    # comparison of two joined strings (separate passes cost 0.25 s more
    # per million records).
    expected = (_HEAD_OPEN + _HEAD_SEP.join(map(_hexdigest, bodies)) + '",').encode()
    ok = expected == b"".join(map(_head, lines))
    recs: Any = None
    if ok:
        try:
            # The bodies only: the checksum member is checked above and
            # parsing it again would cost a string per record.
            recs = orjson.loads(b"[{" + b",{".join(bodies) + b"]")
            seqs = list(map(_seq_of, recs))
            ok = seqs == list(range(prev_seq + 1, prev_seq + 1 + n))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            ok = False
    exact = False
    if ok and n <= 16:  # catching up on a few records: a plain loop is cheapest
        for rec in recs:
            if type(rec) is not dict or type(rec.get("o")) is not list:
                ok = False
                break
            exact = exact or "j" in rec
    elif ok:
        # Many records: the shape checks as C-level passes (a Python loop
        # over a million records cost 0.4 s, these 0.12 s).
        try:
            ok = (set(map(type, recs)) == {dict}
                  and set(map(type, map(_ops_of, recs))) == {list})
        except KeyError:
            ok = False
        exact = ok and any(map(contains, recs, repeat("j")))
    if ok and exact:
        for i, rec in enumerate(recs):
            if "j" in rec:  # holds integers beyond 64 bits: reparse exactly
                try:
                    recs[i] = json.loads(lines[i])
                except (ValueError, RecursionError):
                    ok = False
                    break
                if type(recs[i]) is not dict or type(recs[i].get("o")) is not list:
                    ok = False
                    break
    if not ok:
        # Line by line: names the damage (raises), or reads what the bulk
        # parser could not (numbers beyond a double in an exact record).
        recs = [{"s": seq, "o": ops}
                for _off, _end, seq, ops in iter_records(buf, start, prev_seq, path, base_offset,
                                                          last_nl + 1)]
    return recs, base_offset + last_nl + 1


# Bytes of log decoded at a time by decode_chunks, so that the parsed records
# of a chunk (several times its bytes) are still in the CPU cache when they are
# applied and freed. Decoded in one go, a 1M-record log became a list of 1M
# parsed records (750 bytes each for one small set) that the parser wrote, the
# apply loop read back cold and the end of the replay freed cold: opening took
# 3.8 µs per record and peaked at 1.6 GB. In chunks of 16-128 KiB it took
# 1.7-1.8 µs (0.5 GB); 256 KiB 2.2 µs, 512 KiB 2.7 µs (2 MiB of L2 cache per
# core on the machine measured).
CHUNK_BYTES = 1 << 16


def decode_chunks(buf: bytes, start: int, prev_seq: int, path: str, base_offset: int = 0,
                  chunk_bytes: int | None = None
                  ) -> Iterator[tuple[list[dict[str, Any]], int, int]]:
    """:func:`decode_records` over ``buf[start:]`` in chunks of whole lines of
    about ``chunk_bytes``: yield ``(records, chunk_start, end)`` per chunk, where
    ``chunk_start`` is the chunk's index in ``buf`` and ``end`` the file offset
    just past its last line. Each chunk is checked whole before it is yielded;
    damage raises CorruptionError (with the damaged line's offset) when its
    chunk is reached, after the chunks before it were yielded. Stops before a
    torn tail. ``chunk_bytes`` defaults to CHUNK_BYTES."""
    if chunk_bytes is None:
        chunk_bytes = CHUNK_BYTES
    last_nl = buf.rfind(b"\n", start)
    pos = start
    while pos <= last_nl:
        # The chunk ends at the first newline past pos + chunk_bytes, or at
        # the last whole line.
        cut = buf.find(b"\n", pos + chunk_bytes, last_nl)
        if cut < 0:
            cut = last_nl
        recs, end = decode_records(buf, pos, prev_seq, path, base_offset, cut + 1)
        yield recs, pos, end
        prev_seq = recs[-1]["s"]
        pos = cut + 1


def locate_record(buf: bytes, start: int, index: int, base_offset: int = 0) -> int:
    """File offset of the ``index``-th line of ``buf[start:]`` (for errors)."""
    pos = start
    for _ in range(index):
        pos = buf.index(b"\n", pos) + 1
    return base_offset + pos


class LogFile:
    """An open log file: append whole lines, read what others appended."""

    def __init__(self, fs: FileSystem, path: str, *, writable: bool) -> None:
        self.fs = fs
        self.path = path
        flags = (os.O_RDWR | os.O_APPEND) if writable else os.O_RDONLY
        try:
            self.fd = fs.open(path, flags | O_NOFOLLOW)  # a planted link is not our log
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise io_error(exc, path, "cannot open the log") from exc
        self.writable = writable

    def size(self) -> int:
        return self.fs.fstat(self.fd).st_size

    def inode(self) -> tuple[int, int]:
        st = self.fs.fstat(self.fd)
        return st.st_dev, st.st_ino

    def read(self, start: int, end: int | None = None) -> bytes:
        if end is None:
            end = self.size()
        if end <= start:
            return b""
        return self.fs.pread(self.fd, end - start, start)

    def append(self, data: bytes, expected_end: int) -> int:
        """Append ``data`` at ``expected_end``; return the new end.

        On failure the partial bytes are cut back so the log ends where it did
        (a half line would otherwise turn into mid-log corruption after the
        next append), and StorageError is raised.
        """
        try:
            self.fs.write(self.fd, data)
        except OSError as exc:
            try:
                self.fs.ftruncate(self.fd, expected_end)
            except OSError:
                pass
            raise StorageError(f"{self.path}: write failed: {exc.strerror or exc}") from exc
        return expected_end + len(data)

    def truncate(self, size: int) -> None:
        self.fs.ftruncate(self.fd, size)

    def sync(self) -> None:
        self.fs.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            self.fs.close(fd)


# ---------------------------------------------------------------------------- every line
@dataclass
class LogLine:
    """One line of a log as :func:`walk_log` found it."""

    offset: int
    raw: bytes            # the line's bytes, newline included when it has one
    seq: int | None = None
    ops: list | None = None
    problem: str | None = None  # None for a valid record
    torn: bool = False          # bytes after the last newline (a torn tail)


@dataclass
class LogWalk:
    """Every line of a log, each either valid or with its problem.

    The header line, when it is whole and valid, is ``header`` and not one of
    ``lines``; a damaged header is ``lines[0]`` (and ``header_problem``).
    """

    header: LogHeader | None = None  # None when missing or damaged
    header_problem: str | None = None
    lines: list[LogLine] = field(default_factory=list)
    size: int = 0

    @property
    def valid(self) -> list[LogLine]:
        """The valid records, in file order."""
        return [ln for ln in self.lines if ln.problem is None]

    @property
    def damaged(self) -> list[LogLine]:
        """Every line with a problem, the torn tail included."""
        return [ln for ln in self.lines if ln.problem is not None]

    @property
    def torn(self) -> LogLine | None:
        """The torn tail (bytes after the last newline), if there is one."""
        if self.lines and self.lines[-1].torn:
            return self.lines[-1]
        return None


def walk_log(buf: bytes, wal_path: str) -> LogWalk:
    """Check every line of the log: prefix, checksum, parse, operations and
    sequence continuity, continuing after a damaged line (unlike
    :func:`iter_records`, which stops at the first). After a damaged line any
    higher sequence is accepted (the damaged line may have held the numbers in
    between); a sequence that goes back is damage.
    """
    walk = LogWalk(size=len(buf))
    if not buf:
        return walk
    pos = 0
    prev: int | None = None
    try:
        walk.header = parse_header(buf, wal_path)
        prev = walk.header.base_seq
        pos = walk.header.end
    except CorruptionError as exc:
        nl = buf.find(b"\n")
        if nl < 0:
            walk.lines.append(LogLine(0, buf, problem="torn tail", torn=True))
            return walk
        walk.header_problem = str(exc).split(": ", 1)[-1]
        walk.lines.append(LogLine(0, buf[:nl + 1], problem=walk.header_problem))
        pos = nl + 1
    gap_ok = False  # after a damaged line: any higher sequence is accepted
    while pos < len(buf):
        nl = buf.find(b"\n", pos)
        if nl < 0:
            walk.lines.append(LogLine(pos, buf[pos:], problem="torn tail", torn=True))
            break
        line = LogLine(pos, buf[pos:nl + 1])
        pos = nl + 1
        try:
            rec = parse_line(line.raw[:-1])
            ops = rec.get("o")
            if ops is None:
                raise RecordError("a header in the middle of the log")
            for op in ops:
                validate_op(op)
            seq = rec["s"]
            if prev is not None:
                if gap_ok:
                    if seq <= prev:
                        raise RecordError(f"sequence {seq} does not follow {prev}")
                elif seq != prev + 1:
                    raise RecordError(f"sequence {seq} does not follow {prev}")
        except RecordError as exc:
            line.problem = str(exc)
            walk.lines.append(line)
            gap_ok = True
            continue
        line.seq, line.ops = seq, ops
        walk.lines.append(line)
        prev = seq
        gap_ok = False
    return walk
