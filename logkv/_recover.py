"""Checking and repairing a store from its files: what ``logkv verify`` and
``logkv recover`` do, as library functions that return reports and print
nothing (the command line prints them).

* :func:`verify_store` checks the snapshot, the ``.bak``, every log line and
  whether the log belongs to the snapshot, and changes nothing.
* :func:`recover_store` keeps every valid record, moves every damaged byte
  aside next to the store (nothing is deleted), and writes a fresh snapshot
  and a log holding only its header.
* :func:`salvage_log` is the salvage rule on its own, on log bytes in memory,
  with the two policies an open-time ``recovery=`` option can offer
  (docs/design.md §3): ``"skip_corrupted"`` keeps every valid
  record and skips the bad ones; ``"point_in_time"`` keeps the valid records
  up to the first bad one.

The log is walked line by line with :func:`logkv._log.walk_log`, which, unlike
the engine's reader, goes on past a damaged line so that every one is found.
Which log belongs to which snapshot is :func:`logkv._log.replay_start`, the
engine's own rule (design.md §5).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from ._errors import CorruptionError, LogKVError, LogMismatchError, StorageError
from ._fs import DEFAULT_FS, NEW_STORE_MODE, O_NOFOLLOW, FileSystem, io_error, store_mode
from ._log import LogHeader, apply_ops, replay_start, walk_log
from ._record import build_header
from ._snapshot import Snapshot, encode_snapshot, install_snapshot, parse_snapshot, write_snapshot

_log = logging.getLogger("logkv")

SALVAGE_POLICIES = ("skip_corrupted", "point_in_time")


# ---------------------------------------------------------------------------- salvage
@dataclass
class SalvageReport:
    """What :func:`salvage_log` kept and dropped of one log."""

    policy: str
    header: LogHeader | None           # None when the header is missing or damaged
    records: list[tuple[int, list]] = field(default_factory=list)  # (seq, ops) kept, in order
    dropped: list[tuple[int, int]] = field(default_factory=list)   # byte ranges [start, end)
    problems: list[tuple[int, str]] = field(default_factory=list)  # (offset, problem), every damaged line
    last_seq: int | None = None  # last sequence kept; the header's base when no record was kept
    end: int = 0                 # offset just past the last byte kept (header included)
    valid_dropped: int = 0       # valid records dropped (point_in_time: those after the first bad line)

    @property
    def dropped_bytes(self) -> int:
        return sum(end - start for start, end in self.dropped)


def salvage_log(buf: bytes, wal_path: str, policy: str) -> SalvageReport:
    """Keep what ``policy`` keeps of the log bytes ``buf``.

    ``"skip_corrupted"``: every valid record is kept; each damaged line (the
    torn tail and a damaged header included) is one dropped range, in file
    order, and ``dropped[i]`` is the line named by ``problems[i]``.

    ``"point_in_time"``: the valid records before the first damaged line are
    kept; one range, from that line to the end of ``buf``, is dropped (valid
    records inside it are counted in ``valid_dropped``). A damaged header is
    the first damaged line: nothing is kept.

    Both policies list every damaged line in ``problems``. A sequence that
    jumps forward after a damaged line is accepted (the damaged line may have
    held the numbers in between); one that goes back is damage.
    """
    if policy not in SALVAGE_POLICIES:
        raise ValueError(f"unknown salvage policy {policy!r}; expected one of "
                         f"{', '.join(SALVAGE_POLICIES)}")
    walk = walk_log(buf, wal_path)
    out = SalvageReport(policy, walk.header)
    out.problems = [(ln.offset, ln.problem or "") for ln in walk.damaged]
    out.end = walk.header.end if walk.header is not None else 0
    out.last_seq = walk.header.base_seq if walk.header is not None else None
    stopped = False
    for ln in walk.lines:
        if stopped:
            if ln.problem is None:
                out.valid_dropped += 1
            continue
        if ln.problem is None:
            assert ln.seq is not None
            out.records.append((ln.seq, ln.ops or []))
            out.last_seq = ln.seq
            out.end = ln.offset + len(ln.raw)
        elif policy == "skip_corrupted":
            out.dropped.append((ln.offset, ln.offset + len(ln.raw)))
        else:
            out.dropped.append((ln.offset, len(buf)))
            stopped = True
    return out


# ---------------------------------------------------------------------------- shared helpers
class Finding(NamedTuple):
    """One problem (or warning) found in one file; ``offset`` None = the whole file."""

    file: str
    offset: int | None
    problem: str


def _require_store(path: str) -> None:
    if not os.path.exists(path) and not os.path.exists(path + ".wal"):
        raise FileNotFoundError(errno.ENOENT,
                                f"no store at {path} (neither {path} nor {path}.wal exists)",
                                path)


# ---------------------------------------------------------------------------- verify
@dataclass
class SnapshotInfo:
    """A snapshot file (the snapshot or its backup) that loads."""

    file: str
    label: str         # "snapshot" or "backup"
    keys: int
    size: int          # bytes
    seq: int | None    # the last sequence folded in; None unless logkv wrote the file
    kind: str          # "logkv", "empty" or "foreign"


@dataclass
class LogInfo:
    file: str
    exists: bool = False
    size: int = 0
    records: int = 0             # valid records
    first_seq: int | None = None
    last_seq: int | None = None


@dataclass
class VerifyReport:
    """What :func:`verify_store` found. ``ok`` is true when there is no problem
    (a torn tail is a warning, not a problem)."""

    path: str
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    records: int = 0           # valid log records
    keys: int | None = None    # keys of the opened store; None when it does not open
    snapshots: list[SnapshotInfo] = field(default_factory=list)  # those that load
    snapshot_missing: bool = False  # no snapshot file (the store is the log alone)
    log: LogInfo | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(path: str, *, fs: FileSystem = DEFAULT_FS) -> VerifyReport:
    """Check the snapshot, ``PATH.bak`` when present, every log line (header,
    checksum, operations, sequence continuity) and that the log belongs to the
    snapshot (by opening the store read-only, as the library would). Changes
    nothing. FileNotFoundError when there is no store at ``path``."""
    from ._store import LogKV  # not at import time: the engine may import this module

    _require_store(path)
    wal = path + ".wal"
    bak = path + ".bak"
    report = VerifyReport(path, log=LogInfo(wal))

    # the snapshot and its backup
    for file, label in ((path, "snapshot"), (bak, "backup")):
        raw = fs.read_file(file)
        if raw is None:
            if file == path:
                report.snapshot_missing = True
            continue
        try:
            snap = parse_snapshot(raw, file)
        except CorruptionError as exc:
            report.problems.append(Finding(file, exc.offset, f"{label} does not load: {exc}"))
            continue
        kind = "logkv" if snap.log_id else ("empty" if snap.fingerprint == "empty" else "foreign")
        report.snapshots.append(SnapshotInfo(file, label, len(snap.data), len(raw),
                                             snap.seq if snap.log_id else None, kind))

    # the log, every line of it
    buf = fs.read_file(wal)
    assert report.log is not None
    if buf is not None:
        report.log.exists = True
        report.log.size = len(buf)
    if buf:
        walk = walk_log(buf, wal)
        valid = walk.valid
        report.records = report.log.records = len(valid)
        for ln in walk.lines:
            if ln.torn:
                report.warnings.append(Finding(
                    wal, ln.offset, f"torn tail, {len(ln.raw)} bytes at offset {ln.offset}"))
            elif ln.problem is not None:
                report.problems.append(Finding(wal, ln.offset, ln.problem))
        if valid:
            report.log.first_seq, report.log.last_seq = valid[0].seq, valid[-1].seq

    # does the log belong to the snapshot? (the library's own open decides)
    logger_level = _log.level
    _log.setLevel(logging.ERROR)  # the torn tail is reported above, not twice
    try:
        store = LogKV(path, read_only=True)
    except LogMismatchError as exc:
        report.problems.append(Finding(exc.path or wal, exc.offset,
                                       f"the log does not belong to the snapshot: {exc}"))
    except CorruptionError as exc:
        if not report.problems:  # the library found something the walk above did not
            report.problems.append(Finding(exc.path or path, exc.offset, str(exc)))
    except LogKVError as exc:
        report.problems.append(Finding(path, None, f"the store does not open: {exc}"))
    else:
        try:
            report.keys = len(store)
        finally:
            store.close()
    finally:
        _log.setLevel(logger_level)
    return report


# ---------------------------------------------------------------------------- recover
@dataclass
class RecoverReport:
    """What :func:`recover_store` did."""

    path: str
    source: str                # the file recovery started from: the snapshot or PATH.bak
    used_backup: bool          # started from PATH.bak because the snapshot is damaged
    backup_not_needed: bool    # from_backup was asked for but the snapshot is readable
    start_keys: int            # keys in the file it started from
    start_seq: int | None      # its sequence, when logkv wrote it
    mismatch: str | None       # why the log does not belong to the snapshot, if it does not
    log_applied: bool          # the log's valid records were applied (False: snapshot alone)
    applied: int               # valid records applied
    already: int               # valid records the snapshot already held
    ignored: int               # valid records not applied (mismatch without apply_log)
    dropped: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, problem)
    damaged_file: str | None = None      # where the dropped bytes were moved
    damaged_snapshot: str | None = None  # where the damaged snapshot was kept (used_backup)
    old_log: str | None = None           # where the old log was kept
    old_bak: str | None = None           # where the previous backup was kept
    keys: int = 0              # live keys in the new snapshot
    seq: int = 0               # the new snapshot's sequence
    snapshot_size: int = 0     # bytes of the new snapshot
    log_id: str = ""           # the new log stream

    @property
    def damaged_bytes(self) -> int:
        return sum(end - start for start, end, _ in self.dropped)


def take_locks(path: str, timeout: float = 10.0, mode: int = NEW_STORE_MODE) -> list[int]:
    """The store's write lock (flock on PATH.lock), and the proof that no other
    process has the store open (an exclusive flock on PATH.shm, whose shared
    flock every open store holds). Returns the descriptors; close them with
    :func:`release_locks`."""
    fds: list[int] = []
    try:
        lock_fd = DEFAULT_FS.open_helper(path + ".lock", os.O_RDWR, mode)
    except OSError as exc:
        raise io_error(exc, path + ".lock", "cannot open") from exc
    fds.append(lock_fd)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                release_locks(fds)
                raise LogKVError(f"could not lock {path}.lock within {timeout} s") from None
            time.sleep(0.01)
    if os.path.exists(path + ".shm"):
        try:
            shm_fd = os.open(path + ".shm", os.O_RDWR | os.O_CLOEXEC | O_NOFOLLOW)
        except OSError as exc:
            release_locks(fds)
            raise io_error(exc, path + ".shm", "cannot open") from exc
        fds.append(shm_fd)
        try:
            fcntl.flock(shm_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            release_locks(fds)
            raise LogKVError(
                f"{path} is open in another process; close it there first (a process that "
                "keeps writing would write to the log recover moves aside)") from None
    return fds


def release_locks(fds: list[int]) -> None:
    for fd in reversed(fds):
        os.close(fd)  # closing the descriptor releases its flock


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S")


def _free_name(base: str) -> str:
    """``base``, or ``base-1``, ``base-2``... whichever does not exist yet."""
    name, n = base, 0
    while os.path.lexists(name):
        n += 1
        name = f"{base}-{n}"
    return name


def _write_durably(fs: FileSystem, name: str, payload: bytes, mode: int) -> None:
    try:
        fd = fs.create(name, mode)
        try:
            fs.write(fd, payload)
            fs.fsync(fd)
        finally:
            fs.close(fd)
    except OSError as exc:
        raise io_error(exc, name, "cannot write") from exc


def _keep_aside(fs: FileSystem, src: str, dst: str, mode: int) -> None:
    """Make ``dst`` a second name of ``src`` (hard link; a synced copy when
    links are not possible), so ``src`` can then be replaced atomically."""
    try:
        fs.link(src, dst)
    except OSError:
        data = fs.read_file(src)
        _write_durably(fs, dst, data or b"", mode)


def _read_start(fs: FileSystem, path: str, bak: str, from_backup: bool
                ) -> tuple[Snapshot, bytes | None, bool, bool]:
    """The snapshot recovery starts from: ``(snapshot, raw bytes of PATH or
    None, used_backup, backup_not_needed)``. LogKVError when it cannot start."""
    raw = fs.read_file(path)
    try:
        snap = parse_snapshot(raw, path) if raw is not None else \
            Snapshot({}, {}, None, 0, "empty", 0)
        return snap, raw, False, from_backup
    except CorruptionError as exc:
        if not from_backup:
            hint = (f"; rerun with --from-backup to start from {bak}"
                    if os.path.exists(bak) else f"; there is no {bak} to start from")
            raise LogKVError(f"{exc}{hint}") from None
        braw = fs.read_file(bak)
        if braw is None:
            raise LogKVError(f"{exc}; and there is no {bak}") from None
        try:
            snap = parse_snapshot(braw, bak)
        except CorruptionError as bexc:
            raise LogKVError(f"{exc}; the backup is damaged too: {bexc}") from None
        return snap, raw, True, False


def recover_store(path: str, *, from_backup: bool = False, apply_log: bool = False,
                  progress: Callable[[str], None] | None = None,
                  fs: FileSystem = DEFAULT_FS, policy: str = "skip_corrupted") -> RecoverReport:
    """Salvage the store at ``path``, under its lock; refused (LogKVError)
    while another process has it open.

    Reads the snapshot (``PATH.bak`` instead when it is damaged and
    ``from_backup`` is true; otherwise a damaged snapshot is a LogKVError and
    nothing is touched) and every valid log record, skipping damaged lines
    (:func:`salvage_log` with ``policy``: ``"skip_corrupted"`` keeps every
    valid record, ``"point_in_time"`` stops at the first damaged one). When the log does not belong
    to the snapshot (design.md §5) its records are applied only with
    ``apply_log``. Keeps the damaged bytes in ``PATH.damaged-<date>``, the old
    log in ``PATH.wal.recovered-<date>``, the previous backup in
    ``PATH.bak.recovered-<date>`` and a damaged snapshot in
    ``PATH.damaged-<date>.snapshot``: nothing is deleted. Then writes a fresh
    snapshot with a new log id and a log holding only its header.

    ``progress`` is called with the name of each phase as it starts.
    FileNotFoundError when there is no store at ``path``.
    """
    _require_store(path)
    say = progress or (lambda phase: None)
    wal = path + ".wal"
    bak = path + ".bak"
    folder = os.path.dirname(os.path.abspath(path))

    mode = store_mode(path)
    fds = take_locks(path, mode=mode)
    try:
        stamp = _stamp()
        # 1. the snapshot (or its backup)
        say("reading the snapshot")
        snap, raw, used_backup, backup_not_needed = _read_start(fs, path, bak, from_backup)

        # 2. the log, every line of it
        say("reading the log")
        buf = fs.read_file(wal) or b""
        salvage = salvage_log(buf, wal, policy)
        header = salvage.header
        valid = salvage.records

        # 3. does the log belong to the snapshot? (design.md §5)
        mismatch: str | None = None
        start = snap.seq
        if header is None:
            if valid:
                mismatch = "the log's header is damaged, so it cannot tell which snapshot it " \
                           "belongs to"
        else:
            try:
                start = replay_start(snap.log_id, snap.seq, snap.fingerprint, header,
                                     bool(valid), wal, path)
            except LogMismatchError as exc:
                mismatch = str(exc)
        if mismatch is not None:
            # Records of the same stream (or of an unknown one) are applied
            # only above what the snapshot holds; those of another stream all.
            same = header is None or (snap.log_id is not None and snap.log_id == header.log_id)
            start = snap.seq if same else -1

        data, exp = dict(snap.data), dict(snap.expiries)
        applied = already = ignored = 0
        last_seq = snap.seq
        log_applied = mismatch is None or apply_log
        if log_applied:
            for seq, ops in valid:
                if seq > start:
                    apply_ops(data, exp, ops)
                    applied += 1
                    last_seq = max(last_seq, seq)
                else:
                    already += 1
        else:
            ignored = len(valid)

        report = RecoverReport(
            path, bak if used_backup else path, used_backup, backup_not_needed,
            len(snap.data), snap.seq if snap.log_id else None, mismatch, log_applied,
            applied, already, ignored)
        assert len(salvage.dropped) == len(salvage.problems)
        report.dropped = [(s, e, problem) for (s, e), (_off, problem)
                          in zip(salvage.dropped, salvage.problems)]

        # 4. keep everything that is replaced or dropped, next to the store
        say("moving damaged bytes aside")
        if used_backup and raw is not None:
            report.damaged_snapshot = _free_name(f"{path}.damaged-{stamp}.snapshot")
            _keep_aside(fs, path, report.damaged_snapshot, mode)
        if report.dropped:
            report.damaged_file = _free_name(f"{path}.damaged-{stamp}")
            _write_durably(fs, report.damaged_file,
                           b"".join(buf[s:e] for s, e, _ in report.dropped), mode)
        if not used_backup and raw is not None and os.path.exists(bak):
            # install_snapshot below makes .bak the current snapshot: keep the
            # older backup too
            report.old_bak = _free_name(f"{bak}.recovered-{stamp}")
            _keep_aside(fs, bak, report.old_bak, mode)
        if os.path.exists(wal):
            report.old_log = _free_name(f"{wal}.recovered-{stamp}")
            _keep_aside(fs, wal, report.old_log, mode)
        fs.fsync_dir(folder)

        # 5. a fresh snapshot with a new log id, then a log holding its header
        say(f"writing {len(data)} keys")
        log_id = secrets.token_hex(16)
        payload = encode_snapshot(data, exp, log_id, last_seq)
        tmp = write_snapshot(fs, path, payload, mode)
        install_snapshot(fs, path, tmp, create_backup=not used_backup)
        head = build_header(last_seq, log_id, f"{log_id}:{last_seq}")
        fd, wal_tmp = fs.create_temp(wal + ".tmp", mode)
        try:
            try:
                fs.write(fd, head)
                fs.fsync(fd)
            finally:
                fs.close(fd)
            fs.replace(wal_tmp, wal)
        except BaseException:
            try:
                fs.unlink(wal_tmp)
            except OSError:
                pass
            raise
        fs.fsync_dir(folder)
        if len(fds) > 1:
            # The shared page describes the old files: clear its magic word so
            # the next process that opens the store rebuilds it from the files
            # (design.md §7), even one that was waiting for our lock.
            os.pwrite(fds[1], b"\0" * 8, 0)
    except StorageError:
        raise
    except OSError as exc:  # one line naming the file (a full disk, a folder not writable)
        raise io_error(exc, exc.filename or path, "recover failed") from exc
    finally:
        release_locks(fds)

    now = time.time()
    report.keys = sum(1 for k in data if k not in exp or exp[k] > now)
    report.seq = last_seq
    report.snapshot_size = len(payload)
    report.log_id = log_id
    return report
