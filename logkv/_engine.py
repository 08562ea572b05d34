"""The engine: in-memory state, the write path, recovery, durability.

Plain blocking code; the sync and async front ends both drive it. See
docs/design.md for the whole picture; the comments here say why.
"""
from __future__ import annotations

import gc
import logging
import os
import re
import secrets
import subprocess
import threading
import time
import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from ._errors import (ClosedError, CorruptionError, LogKVError, LogMismatchError, ReadOnlyError,
                      StorageError)
from ._fs import DEFAULT_FS, FileSystem, io_error, store_mode
from ._lock import (MAGIC, NO_ROTATION, W_COMPACTIONS, W_END, W_GEN, W_LAST_COMPACTION_HOLD_US,
                    W_LAST_COMPACTION_MS, W_MAGIC, W_ROT_FROM, W_ROT_TO, W_SEQ, W_SNAPSHOT_SIZE,
                    W_WRITER, Coordinator, _WouldBlock, nonblocking)
from ._log import (LogFile, LogHeader, apply_ops, decode_chunks, locate_record,
                   parse_header, replay_start)
from ._rules import MISSING
from ._record import (BODY_START, OP_CLEAR, RecordError, ValueCodec, build_header, build_line,
                      build_set_line, check_key, op_delete,
                      op_expire, op_set, validate_op)
from ._snapshot import Snapshot, load_snapshot

log = logging.getLogger("logkv")

_ABSENT: Any = object()
DURABILITY_MODES = ("always", "interval", "os")
# What opening does with a log damaged in the middle (RocksDB's WAL recovery
# modes): refuse (the default; a torn tail is always dropped), keep every
# valid record, or keep the records before the first damaged one.
RECOVERY_MODES = ("tolerate_tail", "skip_corrupted", "point_in_time")
# Above this many bytes of snapshot + log, compact() runs in a child process
# so that this process's threads are not held up by the parse and the dump:
# those hold the GIL ~10 ms per MiB (a 7 MiB store stalled a writer thread
# 64 ms), while starting the child costs ~0.1 s of wall time and no stall.
CHILD_COMPACTION_BYTES = 1 << 20

# A staged change is a tuple whose first item says what it is:
#   ("s", value, encoded_bytes, exact, expires_at)   set
#   ("d",)                                           delete
#   ("e", expires_at)                                 change only the expiry
Entry = tuple


def _op_bytes(key: str, entry: Entry) -> bytes:
    kind = entry[0]
    if kind == "s":
        return op_set(key, entry[2], entry[4])
    if kind == "d":
        return op_delete(key)
    return op_expire(key, entry[1])


def _entry_line(seq: int, key: str, entry: Entry) -> bytes:
    """The log line of one change to one key, as record ``seq``."""
    if entry[0] == "s":
        return build_set_line(seq, key, entry[2], entry[4], entry[3])
    return build_line(seq, [_op_bytes(key, entry)])


_SEQ_AT_BODY = re.compile(rb'"s":(\d+)')


def _cut_unpublished(buf: bytes, start: int, last_published: int) -> bytes:
    """``buf`` without the whole lines at its end numbered above
    ``last_published``: a record a writer wrote and died before publishing
    (the next writer will cut it), which a read-only store, which never
    repairs, must not take in. Also drops a torn partial line."""
    end = buf.rfind(b"\n") + 1
    while end > start:
        line = buf.rfind(b"\n", start, end - 1) + 1 or start
        m = _SEQ_AT_BODY.match(buf, line + BODY_START)
        if m is None or int(m.group(1)) <= last_published:
            break
        end = line
    return buf[:end]


def _merge(staged: dict[str, Entry], key: str, entry: Entry) -> None:
    """Fold ``entry`` onto what ``staged`` already holds for ``key`` (post-images)."""
    if entry[0] == "e":
        prev = staged.get(key)
        if prev is not None and prev[0] == "s":
            staged[key] = ("s", prev[1], prev[2], prev[3], entry[1])
            return
    staged[key] = entry


# A forked child shares its parent's lock descriptors: flock would then let
# both "hold" the lock at once. Store objects must not cross a fork.
_OPEN_ENGINES: "weakref.WeakSet[Engine]" = weakref.WeakSet()
_FORKED = ("this store was opened in the parent of a fork(); open the store again in the child "
           "process (its locks belong to the parent)")


def _mark_forked() -> None:
    for engine in list(_OPEN_ENGINES):
        engine._forked = True
        engine._fast = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_mark_forked)


class _NeedLock(Exception):
    """An unlocked (optimistic) load met a state only the lock holder may settle."""


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Decoding allocates containers by the million that form no cycles; the
    collector would scan the whole store again and again meanwhile (measured:
    replaying 1M records takes 2.9 s with it on, 0.7 s off; catching up on
    150k records in a 1M-key store took seconds of full collections)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _folded_seq(header: LogHeader) -> int:
    """The snapshot sequence a rotated log names in its fingerprint ("L:S")."""
    log_id, _, seq = header.fingerprint.rpartition(":")
    if log_id == header.log_id and seq.isdigit():
        return int(seq)
    return header.base_seq


def _ident(st: os.stat_result | None) -> tuple | None:
    """What tells one snapshot file from another (a rename gives a new inode;
    a rewrite in place changes size or mtime)."""
    if st is None:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _Overlay:
    """A transaction's writes, visible only to the thread that owns it."""

    __slots__ = ("vals", "staged", "cleared")

    def __init__(self) -> None:
        self.vals: dict[str, tuple[Any, float | None] | None] = {}
        self.staged: dict[str, Entry] = {}
        self.cleared = False

    def savepoint(self) -> tuple:
        return dict(self.vals), dict(self.staged), self.cleared

    def restore(self, sp: tuple) -> None:
        self.vals, self.staged, self.cleared = dict(sp[0]), dict(sp[1]), sp[2]


class _Item:
    """One write_one / modify_one call in a group-commit batch."""

    __slots__ = ("key", "entry", "change", "ticket", "error", "wake", "gone")

    def __init__(self, key: str, entry: Entry | None,
                 change: Callable[[Any], Entry | None] | None) -> None:
        self.key = key
        self.entry = entry      # a set: known; a read-modify-write: computed by the leader
        self.change = change
        self.ticket = 0         # 0: nothing was logged for this call
        self.error: BaseException | None = None
        # A follower blocks on this held lock until it is released (one
        # wake-up per thread; an Event's condition costs several).
        self.wake: Any = None
        self.gone = False       # the call has left its batch


class _Batch:
    """Calls whose records go to the log in one write(2) and one fdatasync
    (the first item is the leader's). ``finished`` once every item has its
    ticket or its error; ``inside`` counts the calls that have not yet
    returned to their callers; ``drained``, held by the next batch's leader
    while it waits, is released when both are so. ``to_wake``: the index of
    the next item to wake once finished."""

    __slots__ = ("items", "finished", "inside", "drained", "to_wake")

    def __init__(self) -> None:
        self.items: list[_Item] = []
        self.finished = False
        self.inside = 0
        self.drained: Any = None
        self.to_wake = 1


class _ClosedWords:
    """Stands in for the shared page after close, so the lock-free read path
    raises ClosedError without testing a flag of its own."""

    def __getitem__(self, i: int) -> int:
        raise ClosedError("the store is closed")


class _StatWords:
    """For a read-only store with no shared page: derive the change counter
    from the log file's identity and size (one stat per read)."""

    def __init__(self, wal_path: str) -> None:
        self.wal_path = wal_path

    def __getitem__(self, i: int) -> int:
        try:
            st = os.stat(self.wal_path)
        except FileNotFoundError:
            return 0
        if i == W_GEN:
            return st.st_ino
        if i == W_END:
            return st.st_size
        if i == W_SEQ:
            return st.st_size + (st.st_ino << 40)
        return 0


class Engine:
    """One open store. All public methods are thread-safe."""

    def __init__(self, path: str, *, codec: ValueCodec, autosave: bool = True,
                 autosave_delay: float = 0.35, durability: str = "interval",
                 create_backup: bool = True, compact_on_close: bool = True,
                 cleanup_expired_on_load: bool = True, lock_timeout: float | None = 10.0,
                 indent: int | None = None, sort_keys: bool = False, read_only: bool = False,
                 auto_compact: bool = True, auto_compact_min_size: int = 4 << 20,
                 auto_compact_percentage: int = 100, recovery: str = "tolerate_tail",
                 fs: FileSystem | None = None, mode: int | None = None) -> None:
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {DURABILITY_MODES}, not {durability!r}")
        if autosave_delay < 0:
            raise ValueError("autosave_delay must be >= 0")
        self.path = path
        self.wal_path = path + ".wal"
        self.folder = os.path.dirname(os.path.abspath(path))
        self.fs = fs or DEFAULT_FS
        self.codec = codec
        self.autosave = autosave
        self.autosave_delay = float(autosave_delay)
        self.durability = durability
        self.create_backup = create_backup
        self.compact_on_close = compact_on_close
        self.cleanup_expired_on_load = cleanup_expired_on_load
        self.indent = indent
        self.sort_keys = sort_keys
        self.read_only = read_only
        self.auto_compact = auto_compact and not read_only
        self.auto_compact_min_size = auto_compact_min_size
        self.auto_compact_percentage = auto_compact_percentage
        # Compact in a child process even when the store is small (an event
        # loop cannot afford the in-process parse and dump; AsyncLogKV sets it).
        self.compact_in_child = False

        self.data: dict[str, Any] = {}
        self.exp: dict[str, float] = {}
        self.lock = threading.RLock()
        self._wgen = 0  # odd while a change is being applied (seqlock for readers)
        self._depth = 0  # nesting of _enter() (the write lock is held while > 0)
        self._tx: _Overlay | None = None
        self._tx_owner = 0
        self._pending: dict[str, Entry] = {}  # manual mode: not yet logged
        self._pending_clear = False
        self._closed = False
        self._poisoned: str | None = None
        self._pid = os.getpid()
        # True while the one-record fast path may run (autosave, writable,
        # open, not poisoned); anything else takes the general path.
        self._fast = autosave and not read_only
        self._forked = False
        _OPEN_ENGINES.add(self)

        self.log: LogFile | None = None
        self._retired: list[LogFile] = []
        self.log_id = ""
        self.log_gen = 0
        self.log_end = 0
        self.folded_seq = 0  # the last sequence the snapshot on disk holds (as far as known)
        self.seq = 0
        self._shm_seen = 0
        self.wal_records = 0
        self.recovered_records = 0
        self.dropped_tail_bytes = 0
        self._compact_at = float("inf")
        self._compactor: subprocess.Popen | None = None
        self._want_compaction = False

        # durability bookkeeping: tickets count this store's appended records
        self._tickets = 0
        self._synced_ticket = 0
        self._syncing = False
        self._sync_cv = threading.Condition(threading.Lock())
        # group commit (durability="always", design §8): the batch taking
        # calls while its leader waits, and the last batch closed, until it
        # is finished and all its callers have returned
        self._group_commit = durability == "always"
        self._batch_mu = threading.Lock()
        self._open_batch: _Batch | None = None
        self._last_batch: _Batch | None = None
        self._flush_requested = False
        self._flush_wake = threading.Event()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

        if os.path.isdir(path):  # before any file is made beside it
            raise StorageError(f"{path}: is a folder; the path names the store's snapshot "
                               f"file (e.g. {os.path.join(path, 'db.json')})")
        # Every file this store creates or replaces gets this mode (design §2).
        self.mode = store_mode(path, mode)
        if not read_only:
            os.makedirs(self.folder, exist_ok=True)
        self.lock_timeout = lock_timeout
        self.coord: Coordinator
        self._words: Any = None
        self._snap_ident: tuple | None = None
        if recovery not in RECOVERY_MODES:
            raise ValueError(f"recovery must be one of {RECOVERY_MODES}, not {recovery!r}")
        self.recovery = recovery
        self.salvaged: Any = None  # the SalvageReport when a recovery policy acted at open
        try:
            self._open_store()
        except CorruptionError as exc:
            if recovery == "tolerate_tail" or isinstance(exc, LogMismatchError) \
                    or exc.path != self.wal_path:
                raise
            self._salvage_at_open(exc)
        if durability == "interval" and not read_only:
            self._flusher = threading.Thread(target=self._flusher_loop, name="logkv-flusher",
                                             daemon=True)
            self._flusher.start()

    def _open_store(self, *, salvage: str | None = None) -> None:
        """Map the shared page and load the store (after a failure nothing is held)."""
        self.coord = Coordinator(self.fs, self.path, read_only=self.read_only,
                                 timeout=self.lock_timeout, mode=self.mode)
        self._words = self.coord.words if self.coord.words is not None \
            else _StatWords(self.wal_path)
        self._salvage_policy = salvage
        try:
            words = self._words
            # (W_WRITER is not looked at here: without the lock it is set for
            # a moment by every live writer's append.)
            if not self.coord.alone and self.coord.words is not None and words[W_MAGIC] == MAGIC:
                self._open_optimistically()
            else:
                self.coord.lock()
                try:
                    self._open_files(rebuild=self.coord.alone)
                finally:
                    self.coord.unlock()
            self.coord.share_liveness()
        except BaseException:
            self._release_files()
            raise

    def _salvage_at_open(self, exc: CorruptionError) -> None:
        """The log is damaged in the middle and ``recovery`` says to salvage
        (design §3, recovery policies). Read-only: apply what the policy keeps,
        in memory only. Otherwise: rewrite the store as `logkv recover` does
        (damaged bytes moved aside, nothing deleted), then open it."""
        log.warning("%s: %s; salvaging with recovery=%r", self.path, exc, self.recovery)
        if self.read_only:
            self._open_store(salvage=self.recovery)
            return
        from ._recover import recover_store

        report = recover_store(self.path, fs=self.fs, policy=self.recovery)
        log.warning("%s: kept %d records, dropped %d (%d bytes moved aside to %s)", self.path,
                    report.applied, len(report.dropped), report.damaged_bytes,
                    report.damaged_file)
        self.salvaged = report
        self._open_store()

    # ------------------------------------------------------------------ loading
    def _open_optimistically(self) -> None:
        """Other processes have the store open: load the snapshot and the
        committed log without the write lock (a large store takes seconds to
        parse, and writers must not wait that long), then take the lock and
        catch up. If the files changed under the load (a compaction rotated
        the log, another program replaced the snapshot), load again under the
        lock."""
        words = self._words
        gen = words[W_GEN]
        try:
            self._open_files(rebuild=False, locked=False)
            self.read_ahead(gen)
            loaded = True
        except (_NeedLock, CorruptionError, OSError):
            loaded = False  # decide under the lock, where the files hold still
        self.coord.lock()
        try:
            if (loaded and words[W_GEN] == gen and not words[W_WRITER]
                    and _ident(self.fs.stat(self.path)) == self._snap_ident):
                self.log_gen = gen
                self._catch_up_locked()
            else:
                self._open_files(rebuild=False)
        finally:
            self.coord.unlock()

    def _prefetch(self) -> None:
        """Before taking the write lock to catch up: apply, without it, the
        records that cannot change any more, so that the lock is held only
        for the last few. A process that fell far behind (another process
        wrote for seconds, or compacted meanwhile) otherwise made every writer
        wait while it parsed: 0.5 s for 150k records. Anything unexpected is
        left to the locked catch-up, which decides with the files still."""
        words = self._words
        if self.log is None or self.coord.words is None:
            return
        gen = words[W_GEN]
        try:
            if gen == self.log_gen:
                self.read_ahead(gen)
            else:
                # Rotated: the old file, still open here, is final (the
                # compactor cut any unpublished tail before rotating), and
                # its records past ours are the ones to apply first.
                # Final only if it is no longer the file at the path: a store
                # that opened while a dead compactor's new log sat there,
                # unpublished, holds that very file, which is live now.
                current = _ident(self.fs.stat(self.wal_path))
                if current is None or current[:2] == self.log.inode():
                    return
                size = self.log.size()
                if size - self.log_end >= 65536:
                    self._apply_tail(self.log.read(self.log_end, size), self.log_end)
                # A writer's append marks W_WRITER for a moment, which makes
                # the adoption step back: try a few times.
                for _attempt in range(8):
                    if self._adopt_rotated_log(locked=False):
                        self.read_ahead(self.log_gen)  # what was written meanwhile
                        break
                    if words[W_GEN] != gen:
                        break
        except (CorruptionError, OSError):
            return

    def read_ahead(self, gen: int) -> None:
        """Apply committed records without the write lock, while there are
        many, so that the catch-up that follows under the lock is short.
        Safe: bytes before the published end never change within a log
        generation, and the caller checks the generation under the lock."""
        words = self._words
        for _round in range(4):
            end = words[W_END]
            # The end must be this generation's: a compactor publishes the new
            # log's end before the new generation, with W_WRITER marked from
            # its rename until after both. Read past it, the old file could
            # yield a record that was never published and that the compactor
            # then cut (found by the soak: a reader applied such a phantom
            # and later mapped its offset one record off).
            if (words[W_WRITER] or words[W_GEN] != gen or end - self.log_end < 65536
                    or self.log is None):
                return
            self._apply_tail(self.log.read(self.log_end, end), self.log_end)

    def _open_files(self, *, rebuild: bool, locked: bool = True) -> None:
        """Load snapshot + log into memory. Caller holds the write lock.

        ``rebuild``: this process is the only one with the store open (or the
        shared page is not initialised): the files alone are the truth, a torn
        tail is cut off and the shared page is written afresh.
        """
        with _gc_paused():
            self._load_files(rebuild=rebuild, locked=locked)

    def _load_files(self, *, rebuild: bool, locked: bool) -> None:
        words = self._words
        writable = not self.read_only
        if not locked:
            if words[W_MAGIC] != MAGIC:
                raise _NeedLock
        elif writable and (words[W_MAGIC] != MAGIC or words[W_WRITER]):
            # Not initialised, or a writer or compactor died mid-step: the
            # files are the truth (we hold the write lock).
            rebuild = True
        before = _ident(self.fs.stat(self.path))
        snap = load_snapshot(self.fs, self.path)
        self._snap_ident = _ident(self.fs.stat(self.path))
        if self._snap_ident != before:
            raise _NeedLock  # replaced while read (only possible without the lock)
        self.data, self.exp = snap.data, snap.expiries
        deser = self.codec.deserializer
        if deser is not None:
            self.data = {k: deser(v) for k, v in self.data.items()}
        self.seq = snap.seq
        self.recovered_records = 0
        self.dropped_tail_bytes = 0
        self.wal_records = 0
        self.log_id = snap.log_id or ""

        if self.log is not None:
            self._retire_log()
        if self.fs.stat(self.wal_path) is None:
            if writable and not locked:
                raise _NeedLock
            if writable:
                self._new_log(snap.log_id or secrets.token_hex(16), snap.seq, snap.fingerprint)
            else:
                self.log_gen = words[W_GEN]
                self.log_end = 0
                self._finish_open(snap, rebuild=False)
                return
        else:
            self.log = LogFile(self.fs, self.wal_path, writable=writable)
        assert self.log is not None
        size = self.log.size()
        committed = size if (rebuild or self.read_only or self.coord.words is None) else words[W_END]
        if not rebuild and writable and locked and size > committed:
            # A writer died between write(2) and publishing its record.
            self.log.truncate(committed)
            words[W_WRITER] = 0
            size = committed
        buf = self.log.read(0, min(size, committed))
        if not buf:
            if writable and not locked:
                raise _NeedLock
            if writable:  # an empty file: a crash while it was created
                self._retire_log()
                self._new_log(snap.log_id or secrets.token_hex(16), snap.seq, snap.fingerprint)
                self._finish_open(snap, rebuild=rebuild)
            else:
                self.log_end = 0
                self.log_gen = words[W_GEN]
                self._finish_open(snap, rebuild=False)
            return
        if self._salvage_policy is not None:
            self._load_salvaged(snap, buf)
            return
        header = parse_header(buf, self.wal_path)
        if self.read_only and self.coord.words is not None and words[W_MAGIC] == MAGIC:
            # Read-only stores read the file to its end (its published end
            # may describe another file after a compactor died mid-rotation)
            # and keep only what was published.
            buf = _cut_unpublished(buf, header.end, words[W_SEQ])
        start = replay_start(snap.log_id, snap.seq, snap.fingerprint, header,
                             buf.find(b"\n", header.end) >= 0, self.wal_path, self.path)
        self.log_id = header.log_id
        last = self._replay(buf, header, start)
        end_of_lines = self.log_end
        torn = len(buf) - end_of_lines
        if torn and not locked and writable:
            # Without the lock a rotation may have changed what W_END
            # measures: not a torn record, a moving target. Load under the lock.
            raise _NeedLock
        if torn:
            self.dropped_tail_bytes = torn
            log.warning("%s: dropped a torn last record (%d bytes at offset %d): it was never "
                        "acknowledged", self.wal_path, torn, end_of_lines)
            if rebuild and writable:
                self.log.truncate(end_of_lines)
        if snap.log_id == header.log_id and snap.seq > last and writable and rebuild:
            # Every record in the log is already in the snapshot and the log is
            # behind it; start a fresh log so sequence numbers stay contiguous.
            self._retire_log()
            self._new_log(header.log_id, snap.seq, snap.fingerprint)
        elif last == header.base_seq and header.fingerprint != snap.fingerprint and \
                snap.log_id != header.log_id and writable and rebuild:
            # A log with no records that names another snapshot (aiodict
            # rewrote db.json after a clean close): nothing to replay, so
            # start a log that belongs to the file that is there now.
            self._retire_log()
            self._new_log(snap.log_id or secrets.token_hex(16), snap.seq, snap.fingerprint)
            last = snap.seq
        self.seq = max(self.seq, last)
        self._finish_open(snap, rebuild=rebuild)

    def _finish_open(self, snap: Snapshot, *, rebuild: bool) -> None:
        self.folded_seq = snap.seq
        words = self._words
        if rebuild and not self.read_only:
            keep = words[W_MAGIC] == MAGIC
            words[W_WRITER] = 0
            words[W_SEQ] = self.seq
            words[W_END] = self.log_end
            words[W_GEN] = (words[W_GEN] + 1) if keep else (time.time_ns() & 0xFFFFFFFF)
            if not keep:
                words[W_COMPACTIONS] = 0
                words[W_LAST_COMPACTION_MS] = 0
                words[W_LAST_COMPACTION_HOLD_US] = 0
            words[W_SNAPSHOT_SIZE] = snap.size
            words[W_ROT_FROM] = NO_ROTATION
            words[W_MAGIC] = MAGIC
        if self.coord.words is not None or not self.read_only:
            self.log_gen = words[W_GEN]
        self._shm_seen = words[W_SEQ]
        if self.cleanup_expired_on_load and self.exp:
            self.drop_expired()
        self._set_compact_threshold()

    def _load_salvaged(self, snap: Snapshot, buf: bytes) -> None:
        """Read-only open of a damaged log: apply the records the recovery
        policy keeps (the files are not touched)."""
        from ._recover import salvage_log

        report = salvage_log(buf, self.wal_path, self._salvage_policy or "skip_corrupted")
        self.salvaged = report
        header = report.header
        if header is None:
            raise CorruptionError(f"{self.wal_path}: the log header is damaged; run `logkv "
                                  "recover`", path=self.wal_path, offset=0)
        start = replay_start(snap.log_id, snap.seq, snap.fingerprint, header,
                             bool(report.records), self.wal_path, self.path)
        recs = [{"s": seq, "o": ops} for seq, ops in report.records]
        self.recovered_records = self._apply_records(recs, start, buf, header.end, 0)
        self.wal_records = len(recs)
        self.log_id = header.log_id
        # Everything read was either kept or dropped: catching up starts after it.
        self.log_end = len(buf)
        self.seq = max(snap.seq, report.last_seq or 0)
        self._finish_open(snap, rebuild=False)

    def _replay(self, buf: bytes, header: LogHeader, start: int) -> int:
        """Apply the records of the log ``buf`` with sequence > ``start``; return the last seq."""
        self.log_end = header.end
        self.wal_records = 0
        self.recovered_records = self._apply_log(buf, header.end, header.base_seq, start, 0)
        # Sequences are consecutive from the base (decode_chunks checks it).
        return header.base_seq + self.wal_records

    def _apply_log(self, buf: bytes, start: int, prev_seq: int, above: int,
                   base_offset: int) -> int:
        """Decode and apply the whole records of ``buf[start:]`` (the first
        follows ``prev_seq``) that have sequence > ``above``; return how many
        were applied. One chunk at a time (see decode_chunks): after each,
        ``seq``, ``log_end`` and ``wal_records`` say how far it got, so that
        damage met in a later chunk leaves them matching what was applied.
        Lock-free readers wait only while a chunk is applied, not while the
        next one is decoded."""
        applied = 0
        for recs, chunk_start, end in decode_chunks(buf, start, prev_seq, self.wal_path,
                                                    base_offset):
            self._wgen += 1
            try:
                applied += self._apply_records(recs, above, buf, chunk_start, base_offset)
                self.seq = max(self.seq, recs[-1]["s"])
                self.wal_records += len(recs)
                self.log_end = end
            finally:
                self._wgen += 1
        return applied

    def _apply_records(self, recs: list[dict[str, Any]], above: int, buf: bytes, start: int,
                       base_offset: int) -> int:
        """Apply decoded records with sequence > ``above``; return how many.

        The common operations are applied inline (replay speed, CONTRACT §6);
        anything unusual goes through the checked general path. A malformed
        operation is corruption at that record's offset.
        """
        data, exp = self.data, self.exp
        deser = self.codec.deserializer
        general = bool(self._pending or self._pending_clear)
        applied = 0
        index = -1
        try:
            for rec in recs:
                index += 1
                if rec["s"] <= above:
                    continue
                applied += 1
                ops = rec["o"]
                if general:
                    self._apply_disk_ops(ops)
                    continue
                for op in ops:
                    if op[0] == "s" and len(op) == 4 and op[1].__class__ is str:
                        key = op[1]
                        data[key] = op[2] if deser is None else deser(op[2])
                        x = op[3]
                        if x is None:
                            if exp:
                                exp.pop(key, None)
                        elif x.__class__ is float or x.__class__ is int:
                            exp[key] = float(x)
                        else:
                            raise RecordError("malformed expiry")
                    else:
                        self._apply_disk_ops([op])
        except (RecordError, TypeError, IndexError, AttributeError, KeyError, ValueError,
                OverflowError) as exc:  # (an expiry beyond a double in an exact record)
            off = locate_record(buf, start, max(index, 0), base_offset)
            raise CorruptionError(f"{self.wal_path}: damaged log record at byte offset {off}: "
                                  f"{exc}", path=self.wal_path, offset=off) from None
        return applied

    def _new_log(self, log_id: str, base_seq: int, fingerprint: str) -> None:
        """Create ``db.json.wal`` holding only a header, atomically and durably."""
        tmp = ""
        header = build_header(base_seq, log_id, fingerprint)
        try:
            fd, tmp = self.fs.create_temp(self.wal_path + ".tmp", self.mode)
            try:
                self.fs.write(fd, header)
                self.fs.fsync(fd)
            finally:
                self.fs.close(fd)
            self.fs.replace(tmp, self.wal_path)
            self.fs.fsync_dir(self.folder)
            self.log = LogFile(self.fs, self.wal_path, writable=True)
        except OSError as exc:
            if tmp:
                try:
                    self.fs.unlink(tmp)
                except OSError:
                    pass
            if isinstance(exc, StorageError):
                raise
            raise io_error(exc, self.wal_path, "could not create the log") from exc
        self.log_id = log_id
        self.log_end = len(header)
        self.wal_records = 0
        words = self._words
        if words[W_MAGIC] == MAGIC:
            # Other processes must reopen the log, as after a compaction.
            words[W_END] = self.log_end
            words[W_ROT_FROM] = NO_ROTATION
            words[W_GEN] = words[W_GEN] + 1
            self.log_gen = words[W_GEN]

    def _retire_log(self) -> None:
        # Another thread may be inside fdatasync on the old log: close retired
        # logs only while no sync is running (or at close).
        if self.log is not None:
            self._retired.append(self.log)
            self.log = None
        with self._sync_cv:
            if not self._syncing:
                for old in self._retired:
                    old.close()
                self._retired = []

    def _set_compact_threshold(self) -> None:
        if not self.auto_compact:
            self._compact_at = float("inf")
            return
        snap_size = self._words[W_SNAPSHOT_SIZE] if self.coord.words is not None else 0
        self._compact_at = max(self.auto_compact_min_size,
                               snap_size * self.auto_compact_percentage / 100)

    # -------------------------------------------------------------- applying
    def _apply_disk_ops(self, ops: list) -> None:
        """Apply ops read from the log (values pass through the deserializer)."""
        for op in ops:
            validate_op(op)
        pending = self._pending
        if pending or self._pending_clear:
            # Manual mode: unsaved local changes win over what others logged,
            # as they will when they are flushed (last writer wins).
            if self._pending_clear:
                return
            ops = [op for op in ops if op[0] == "c" or op[1] not in pending]
        apply_ops(self.data, self.exp, ops, self.codec.deserializer)
        if pending and any(op[0] == "c" for op in ops):
            self._reapply_pending()

    def _apply_entries(self, items: Iterable[tuple[str, Entry]], clear: bool) -> None:
        """Apply staged entries to memory. Caller holds self.lock."""
        data, exp = self.data, self.exp
        self._wgen += 1
        try:
            if clear:
                data.clear()
                exp.clear()
            for key, entry in items:
                kind = entry[0]
                if kind == "s":
                    data[key] = entry[1]
                    if entry[4] is None:
                        if exp:
                            exp.pop(key, None)
                    else:
                        exp[key] = entry[4]
                elif kind == "d":
                    data.pop(key, None)
                    exp.pop(key, None)
                elif key in data:
                    if entry[1] is None:
                        exp.pop(key, None)
                    else:
                        exp[key] = entry[1]
        finally:
            self._wgen += 1

    def _reapply_pending(self) -> None:
        self._apply_entries(list(self._pending.items()), False)

    def drop_expired(self, prefix: str = "") -> int:
        """Forget the expired keys (those starting with ``prefix``) in
        memory; return how many. Caller holds self.lock."""
        now = time.time()
        dead = [k for k, x in self.exp.items() if x <= now and k.startswith(prefix)]
        if dead:
            self._wgen += 1
            try:
                for k in dead:
                    self.data.pop(k, None)
                    self.exp.pop(k, None)
            finally:
                self._wgen += 1
        return len(dead)

    # ----------------------------------------------------------- catching up
    def behind(self) -> bool:
        """True when another process has written or compacted since this
        store last looked (the next read would catch up, reading files)."""
        w = self._words
        return w[W_SEQ] != self._shm_seen or w[W_GEN] != self.log_gen

    def check(self) -> None:
        """Catch up if another process has written (the read path's check)."""
        w = self._words
        if w[W_SEQ] != self._shm_seen or w[W_GEN] != self.log_gen:
            self.catch_up()

    def catch_up(self) -> None:
        self.take_lock()
        try:
            if self._closed:
                raise ClosedError("the store is closed")
            if self._depth:
                return  # we hold the write lock: nobody else can have written
            if self._forked:
                raise LogKVError(_FORKED)
            if nonblocking.on:
                raise _WouldBlock  # reading files: not on an event loop
            self._prefetch()
            self.coord.lock()
            try:
                self._catch_up_locked()
            finally:
                self.coord.unlock()
        finally:
            self.lock.release()

    def _catch_up_locked(self) -> None:
        words = self._words
        if not self.read_only and words[W_WRITER]:
            self._repair_after_dead_writer()
        if words[W_GEN] != self.log_gen:
            self._follow_rotation()
            return
        end = words[W_END]
        if self.log is None or end <= self.log_end:
            self._shm_seen = words[W_SEQ]
            return
        buf = self.log.read(self.log_end, end)
        self._apply_tail(buf, self.log_end)
        self._shm_seen = words[W_SEQ]

    def _repair_after_dead_writer(self) -> None:
        """The process that held the write lock died inside a step that it
        marks in the shared page (design §7). Caller holds the write lock."""
        words = self._words
        st = self.fs.stat(self.wal_path)
        if self.log is not None and st is not None and (st.st_dev, st.st_ino) != self.log.inode():
            # A compactor renamed its new log in and died before publishing
            # it: publish it now (it was complete and synced before the rename).
            # Its offset mapping may never have been written: the words still
            # describe the rotation before, so say there is none to follow.
            words[W_ROT_FROM] = NO_ROTATION
            words[W_END] = st.st_size
            words[W_GEN] = words[W_GEN] + 1
        elif self.log is not None:
            # A writer died inside its append: cut its partial bytes.
            self.log.truncate(words[W_END])
        words[W_WRITER] = 0

    def _apply_tail(self, buf: bytes, base_offset: int) -> None:
        """Apply whole records in ``buf`` (log bytes from ``base_offset``)."""
        if len(buf) > 65536:
            with _gc_paused():
                self._apply_log(buf, 0, self.seq, self.seq, base_offset)
        else:
            self._apply_log(buf, 0, self.seq, self.seq, base_offset)

    def _adopt_rotated_log(self, *, locked: bool) -> bool:
        """The fast way to follow one rotation: if we had read past the part
        the compactor copied into the new log, continue at the same record in
        the new file without parsing what we already applied. False (nothing
        changed) when that does not apply. Safe without the write lock: the
        rotation's words are published before its generation, and the
        generation is read again after them."""
        words = self._words
        gen = words[W_GEN]
        if (self.coord.words is None or gen != self.log_gen + 1 or self.log is None
                or words[W_ROT_FROM] == NO_ROTATION):
            return False
        rot_from, rot_to = words[W_ROT_FROM], words[W_ROT_TO]
        end = words[W_END]
        if words[W_GEN] != gen or self.log_end < rot_from:
            return False
        at = rot_to + self.log_end - rot_from
        if at > end:
            return False
        try:
            new = LogFile(self.fs, self.wal_path, writable=not self.read_only)
        except FileNotFoundError:
            return False
        try:
            header = parse_header(new.read(0, rot_to), self.wal_path)
        except CorruptionError:
            header = None
        if not locked:
            # The file opened must be this generation's: no rotation may be
            # in flight (the compactor marks W_WRITER from its rename until it
            # publishes) or completed since (the generation moves on).
            current = _ident(self.fs.stat(self.wal_path))
            if (words[W_WRITER] or words[W_GEN] != gen or current is None
                    or current[:2] != new.inode()):
                header = None
        if header is None or header.log_id != self.log_id:
            new.close()
            return False
        self._retire_log()
        self.log = new
        self.log_gen = gen
        self.folded_seq = _folded_seq(header)
        self.log_end = at
        # The new log's records up to here are ours already, numbered
        # consecutively from its base (reading them to count them cost
        # ~0.1 s after a long compaction).
        self.wal_records = max(0, self.seq - header.base_seq)
        self._apply_tail(new.read(at, end), at)
        self._set_compact_threshold()
        return True

    def _follow_rotation(self) -> None:
        """Another process compacted (or recreated) the log: reopen it and
        continue from our own sequence, or reload everything if the part we
        had not seen yet was folded into the snapshot."""
        words = self._words
        # A read-only store does not repair after a process that died
        # mid-step (W_WRITER still set): the file at the path may then be a
        # compactor's unpublished new log, which the page does not describe.
        unrepaired = self.read_only and words[W_WRITER]
        if not unrepaired and self._adopt_rotated_log(locked=True):
            self._shm_seen = words[W_SEQ]
            return
        try:
            new = LogFile(self.fs, self.wal_path, writable=not self.read_only)
        except FileNotFoundError:
            self._reload_all()
            return
        shared = self.coord.words is not None
        end = words[W_END] if shared and not unrepaired else new.size()
        buf = new.read(0, end)
        try:
            header = parse_header(buf, self.wal_path)
        except CorruptionError:
            new.close()
            raise
        if unrepaired and shared:
            buf = _cut_unpublished(buf, header.end, words[W_SEQ])
        if header.log_id == self.log_id and header.base_seq > self.seq and self.log is not None:
            # Behind the compaction point: the old file, still open here, holds
            # every record up to the rotation (writers check the generation
            # under the lock before they append), so read the rest from it
            # rather than reload the whole snapshot.
            tail = self.log.read(self.log_end, self.log.size())
            # Only what was published: this may be the live file after all
            # (see _prefetch), with a dead writer's record at its end.
            self._apply_tail(_cut_unpublished(tail, 0, words[W_SEQ]), self.log_end)
        if header.log_id != self.log_id or header.base_seq > self.seq:
            new.close()
            self._reload_all()
            return
        self._retire_log()
        self.log = new
        self.log_gen = words[W_GEN]
        self.folded_seq = _folded_seq(header)
        self.log_end = header.end
        self.wal_records = 0
        self._apply_log(buf, header.end, header.base_seq, self.seq, 0)
        self._shm_seen = words[W_SEQ]
        self._set_compact_threshold()

    def _reload_all(self) -> None:
        self._wgen += 1
        try:
            self._open_files(rebuild=False)
            if self._pending or self._pending_clear:
                if self._pending_clear:
                    self.data.clear()
                    self.exp.clear()
                self._reapply_pending()
        finally:
            self._wgen += 1

    # ------------------------------------------------------------ write path
    # Non-blocking mode (``nonblocking.on``, set per thread by AsyncLogKV for
    # a mutation it runs on the event loop): where a call would wait -- for
    # the thread lock, the prefetch or catch-up, the write lock of another
    # process -- it raises _WouldBlock instead, always before it has changed
    # memory, the log or the shared page, and with every lock it took let go.
    def take_lock(self) -> None:
        """Acquire the thread lock (``self.lock``); release it yourself."""
        if not self.lock.acquire(False):
            self._wait_lock()

    def _wait_lock(self) -> None:
        """The thread lock is held by another thread: wait for it, or, in
        non-blocking mode, raise _WouldBlock without it."""
        if nonblocking.on:
            raise _WouldBlock
        self.lock.acquire()

    def _enter(self) -> None:
        """Take the thread lock and the write lock, and catch up."""
        self.take_lock()
        if self._depth:
            self._depth += 1
            return
        try:
            if self._closed:
                raise ClosedError("the store is closed")
            if self._forked:
                raise LogKVError(_FORKED)
            if self.read_only:
                raise ReadOnlyError(f"{self.path} was opened read-only")
            w = self._words
            if w[W_GEN] != self.log_gen or w[W_END] - self.log_end >= 65536:
                if nonblocking.on:
                    raise _WouldBlock
                self._prefetch()  # far behind: read most of it before locking
            self.coord.lock()
            try:
                if w[W_SEQ] != self.seq or w[W_GEN] != self.log_gen or w[W_WRITER]:
                    if nonblocking.on:
                        raise _WouldBlock
                    self._catch_up_locked()
            except BaseException:
                self.coord.unlock()
                raise
        except BaseException:
            self.lock.release()
            raise
        self._depth = 1

    def _exit(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.coord.unlock()
        self.lock.release()

    def _stage(self, key: str | None, entry: Entry) -> int:
        """Record one change. Caller is inside _enter(). Returns a ticket (0: no log write)."""
        tx = self._tx
        if tx is not None:
            if key is None:
                tx.vals.clear()
                tx.staged.clear()
                tx.cleared = True
            else:
                kind = entry[0]
                if kind == "s":
                    tx.vals[key] = (entry[1], entry[4])
                elif kind == "d":
                    tx.vals[key] = None
                else:
                    cur = self.lookup(key)
                    tx.vals[key] = (cur[0], entry[1])
                _merge(tx.staged, key, entry)
            return 0
        if key is None:
            return self._commit([], clear=True)
        return self._commit([(key, entry)], clear=False)

    def write_one(self, key: str, entry: Entry) -> int:
        """Log and apply one change to one key: the hot path of set()."""
        lock = self.lock
        if not lock.acquire(False):
            self._wait_lock()
        try:
            if self._depth or not self._fast:
                self._enter()
                try:
                    return self._stage(key, entry)
                finally:
                    self._exit()
            if not self._group_commit:
                self._lock_write()
                try:
                    return self._write_entry_locked(key, entry)
                finally:
                    self.coord.unlock()
        finally:
            lock.release()
        return self._write_in_batch(_Item(key, entry, None))

    def modify_one(self, key: str, change: Callable[[Any], Entry | None]) -> int:
        """Read-modify-write of one key under the write lock: ``change`` gets
        ``(value, expires_at)`` or MISSING and returns the entry to write (or
        None for no change). The hot path of incr() and the list helpers."""
        lock = self.lock
        if not lock.acquire(False):
            self._wait_lock()
        try:
            if self._depth or not self._fast:
                self._enter()
                try:
                    entry = change(self.lookup(key))
                    return 0 if entry is None else self._stage(key, entry)
                finally:
                    self._exit()
            if not self._group_commit:
                self._lock_write()
                try:
                    v = self.data.get(key, _ABSENT)
                    x = self.exp.get(key)
                    if v is _ABSENT or (x is not None and x <= time.time()):
                        entry = change(MISSING)
                    else:
                        entry = change((v, x))
                    return 0 if entry is None else self._write_entry_locked(key, entry)
                finally:
                    self.coord.unlock()
        finally:
            lock.release()
        return self._write_in_batch(_Item(key, None, change))

    def _lock_write(self) -> None:
        """Take the write lock (caller holds self.lock, depth 0) and catch up;
        release with ``coord.unlock()``. The garbage collector stays paused
        in between (_lock.py says why)."""
        w = self._words
        if w[W_GEN] != self.log_gen or w[W_END] - self.log_end >= 65536:
            if nonblocking.on:
                raise _WouldBlock
            self._prefetch()  # far behind: read most of it before locking
        coord = self.coord
        coord.lock()
        try:
            w = self._words
            if w[W_SEQ] != self.seq or w[W_GEN] != self.log_gen or w[W_WRITER]:
                if nonblocking.on:
                    raise _WouldBlock
                self._catch_up_locked()
        except BaseException:
            coord.unlock()
            raise

    def _write_entry_locked(self, key: str, entry: Entry) -> int:
        self._append(_entry_line(self.seq + 1, key, entry))
        self._apply_entries(((key, entry),), False)
        return self._tickets

    def _stage_many(self, items: list[tuple[str, Entry]]) -> int:
        if self._tx is not None:
            for key, entry in items:
                self._stage(key, entry)
            return 0
        return self._commit(items, clear=False)

    def _commit(self, items: list[tuple[str, Entry]], *, clear: bool) -> int:
        """Log one batch as one record and apply it. Caller is inside _enter()."""
        if not self.autosave:
            # Every key must be writable now: one that is not would make each
            # later flush fail, and with it every other pending change (the
            # front ends check the keys they are given; this also covers a
            # delete of a key read from a foreign file).
            for key, _entry in items:
                if not key.isascii():
                    check_key(key)
            if clear:
                self._pending.clear()
                self._pending_clear = True
            for key, entry in items:
                _merge(self._pending, key, entry)
            self._apply_entries(items, clear)
            return 0
        ops = [OP_CLEAR] if clear else []
        exact = False
        for key, entry in items:
            ops.append(_op_bytes(key, entry))
            if entry[0] == "s" and entry[3]:
                exact = True
        self._append(build_line(self.seq + 1, ops, exact))
        self._apply_entries(items, clear)
        return self._tickets

    def _append(self, lines: bytes, records: int = 1) -> None:
        """Append ``records`` whole record lines (numbered from self.seq + 1)
        with one write(2) and publish them. Caller holds the write lock."""
        if self._poisoned:
            raise StorageError(self._poisoned, poisoned=True)
        assert self.log is not None
        words = self._words
        seq = self.seq + records
        words[W_WRITER] = self._pid
        try:
            end = self.log.append(lines, self.log_end)
        except BaseException:
            words[W_WRITER] = 0  # the append cut its bytes back
            raise
        words[W_END] = end
        words[W_SEQ] = seq
        # Cleared only after the publication: a writer killed between its
        # write and this line leaves the mark, and the next lock holder cuts
        # the unpublished record (otherwise the next record would reuse its
        # sequence number after it, and the log would not reopen).
        words[W_WRITER] = 0
        self.log_end = end
        self.seq = seq
        self._shm_seen = seq
        self.wal_records += records
        self._tickets += records
        if end > self._compact_at:
            self._want_compaction = True

    def after_write(self, ticket: int) -> None:
        """Durability for a write that was logged; call with no lock held."""
        if not ticket:
            return
        mode = self.durability
        if mode == "interval":
            if not self._flush_requested:
                self._flush_requested = True
                self._flush_wake.set()
        elif mode == "always" and self._synced_ticket < ticket:
            self._wait_synced(ticket)
        if self._want_compaction and not nonblocking.on:
            # (In non-blocking mode the caller starts it off the event loop,
            # with start_wanted_compaction: spawning a process takes a while.)
            self._start_auto_compaction()

    def start_wanted_compaction(self) -> None:
        """Start the automatic compaction a write asked for, if any."""
        if self._want_compaction:
            self._start_auto_compaction()

    # ------------------------------------------------------------ group commit
    def _write_in_batch(self, item: _Item) -> int:
        """durability="always": log ``item`` together with the calls of other
        threads, one write(2) and one fdatasync for all; return once its
        record is durable (its ticket), or raise what failed it.

        A call that finds a batch taking calls joins it and waits. Otherwise
        it leads a new batch: at once when the last batch is done with, else
        once it is (its fdatasync finished and its callers all returned), and
        the calls that arrive meanwhile join. So while one fdatasync runs,
        the next batch gathers every thread that writes again at once.
        """
        wait = None
        with self._batch_mu:
            batch = self._open_batch
            leader = batch is None
            if leader:
                batch = _Batch()
                ahead = self._last_batch
                if ahead is None:
                    self._last_batch = batch  # closed at once: nobody to wait for
                else:
                    self._open_batch = batch
                    wait = ahead.drained = threading.Lock()
                    wait.acquire()
            else:
                item.wake = threading.Lock()
                item.wake.acquire()
            batch.items.append(item)
            batch.inside += 1
        try:
            if leader:
                self._lead(batch, wait)
            else:
                item.wake.acquire()
        finally:
            self._leave(batch, item)
        if item.error is not None:
            raise item.error
        return item.ticket

    def _leave(self, batch: _Batch, item: _Item) -> None:
        """A call of ``batch`` returns to its caller; the last one lets the
        next batch's leader go on.

        The calls of a finished batch leave one after another, each waking
        the next as it goes (the leader first). Waking them all at once cost
        the leader a futex wake per call, and the woken threads then took
        the GIL one at a time anyway, each from a sleep; woken in a chain,
        each thread's wake-up overlaps the Python of the one before."""
        with self._batch_mu:
            batch.inside -= 1
            item.gone = True
            if batch.finished:
                self._wake_next(batch)
            if not batch.inside and batch.finished:
                if self._last_batch is batch:
                    self._last_batch = None
                if batch.drained is not None:
                    batch.drained.release()

    @staticmethod
    def _wake_next(batch: _Batch) -> None:
        """Wake the next call of a finished ``batch`` that still waits (a call
        interrupted in its wait has left by itself). Under _batch_mu."""
        items = batch.items
        i = batch.to_wake
        while i < len(items) and items[i].gone:
            i += 1
        if i < len(items):
            items[i].wake.release()
            i += 1
        batch.to_wake = i

    def _lead(self, batch: _Batch, wait: Any) -> None:
        """Write and sync ``batch`` (after ``wait``, the batch ahead's
        ``drained``); then release every call in it, each with its ticket or
        its error (they leave in turn: _leave)."""
        failure: BaseException | None = None
        try:
            if wait is not None:
                wait.acquire()
                with self._batch_mu:
                    self._open_batch = None  # calls from now on form the next batch
                    self._last_batch = batch
            ticket = self._write_batch(batch.items)
            if ticket:
                self._wait_synced(ticket)
        except BaseException as exc:
            failure = exc
        finally:
            if failure is not None:
                self._fail_batch(batch, failure)
            with self._batch_mu:
                if self._open_batch is batch:  # interrupted while it waited
                    self._open_batch = None
                batch.finished = True

    @staticmethod
    def _fail_batch(batch: _Batch, failure: BaseException) -> None:
        """Nothing of the batch is durable: every call raises. The leader
        raises ``failure`` itself; the others raise it too unless it is not
        an error of the store (an interrupt of the leader's thread), which
        they get as a LogKVError."""
        leader = batch.items[0]
        for item in batch.items:
            if item.error is not None:
                continue  # its own change already failed; nothing was logged for it
            if item is leader or isinstance(failure, Exception):
                item.error = failure
            else:
                err = LogKVError("the thread writing this batch was interrupted before the "
                                 "record was durable")
                err.__cause__ = failure
                item.error = err
            item.ticket = 0

    def _write_batch(self, items: list[_Item]) -> int:
        """Take both locks (and catch up), number the items' records in order,
        write them with one write(2), publish them and apply them to memory.
        Return the ticket that covers them (0 when no item changed anything).

        A read-modify-write item's change is computed here, under the lock,
        against memory plus the earlier items of the batch; if it raises, only
        that item fails. Memory is changed only after the write succeeded, so
        a failed write leaves memory as the log is.
        """
        self._enter()
        try:
            seq = self.seq
            written: list[tuple[str, Entry]] = []
            lines: list[bytes] = []
            view: dict[str, Any] = {}  # key -> what memory will hold (_held_after)
            for item in items:
                entry = item.entry
                try:
                    if entry is None:
                        assert item.change is not None
                        entry = item.change(self._batch_lookup(item.key, view))
                        if entry is None:
                            continue  # no change, nothing to log
                        item.entry = entry
                    line = _entry_line(seq + 1, item.key, entry)
                except Exception as exc:
                    # The caller's own error (TypeError, KeyError...): it fails
                    # that call alone, never the others of the batch.
                    item.error = exc
                    item.entry = None
                    continue
                seq += 1
                lines.append(line)
                written.append((item.key, entry))
                view[item.key] = self._held_after(item.key, entry, view)
            if not lines:
                return 0
            self._append(b"".join(lines), len(lines))
            self._apply_entries(written, False)
            ticket = self._tickets
            for item in items:
                if item.error is None and item.entry is not None:
                    item.ticket = ticket
            return ticket
        finally:
            self._exit()

    def _batch_lookup(self, key: str, view: dict[str, Any]) -> Any:
        """``lookup(key)`` as it will be once the batch's earlier items are applied."""
        r = view.get(key, _ABSENT)
        if r is _ABSENT:
            return self.lookup(key)
        if r is None or (r[1] is not None and r[1] <= time.time()):
            return MISSING
        return r

    def _held_after(self, key: str, entry: Entry, view: dict[str, Any]) -> Any:
        """``(value, expires_at)`` that memory holds for ``key`` once ``entry``
        is applied after ``view``, or None when absent: as _apply_entries
        does it (an expiry change keeps an expired key's value)."""
        kind = entry[0]
        if kind == "s":
            return (entry[1], entry[4])
        if kind == "d":
            return None
        r = view.get(key, _ABSENT)
        if r is _ABSENT:
            r = (self.data[key], None) if key in self.data else None
        return None if r is None else (r[0], entry[1])

    # ------------------------------------------------------------ durability
    def _wait_synced(self, ticket: int) -> None:
        """Group commit: the first waiter syncs for everyone written so far."""
        cv = self._sync_cv
        with cv:
            while self._synced_ticket < ticket:
                if self._poisoned:
                    raise StorageError(self._poisoned, poisoned=True)
                if self._syncing:
                    cv.wait()
                    continue
                self._syncing = True
                target = self._tickets
                logf = self.log
                cv.release()
                err: OSError | None = None
                try:
                    if logf is not None:
                        logf.sync()
                except OSError as exc:
                    err = exc
                finally:
                    cv.acquire()
                    self._syncing = False
                    if err is None:
                        self._synced_ticket = max(self._synced_ticket, target)
                    else:
                        # Linux reports a failed fsync once and may drop the
                        # pages; a retry would "succeed" falsely. Stop here.
                        self._fast = False
                        self._poisoned = (f"{self.wal_path}: fsync failed ({err.strerror or err}); "
                                          "the store refuses writes until it is reopened")
                    cv.notify_all()
                if err is not None:
                    raise StorageError(self._poisoned or "fsync failed", poisoned=True) from err

    def _flusher_loop(self) -> None:
        while True:
            self._flush_wake.wait()
            if self._stop.is_set():
                return
            if self._stop.wait(self.autosave_delay):
                return
            self._flush_wake.clear()
            self._flush_requested = False
            try:
                self._wait_synced(self._tickets)
            except StorageError as exc:
                log.error("%s", exc)

    @property
    def dirty(self) -> bool:
        return bool(self._synced_ticket < self._tickets or self._pending or self._pending_clear)

    # ------------------------------------------------------------ reading
    def lookup(self, key: str) -> Any:
        """``(value, expires_at)`` of a live key, or MISSING. Thread-safe."""
        tx = self._tx
        if tx is not None and self._tx_owner == threading.get_ident():
            r = tx.vals.get(key, _ABSENT)
            if r is not _ABSENT:
                if r is None or (r[1] is not None and r[1] <= time.time()):
                    return MISSING
                return r
            if tx.cleared:
                return MISSING
        while True:
            g = self._wgen
            v = self.data.get(key, _ABSENT)
            x = self.exp.get(key)
            if not (g & 1) and g == self._wgen:
                break
            with self.lock:  # a writer is mid-apply: wait for it
                pass
        if v is _ABSENT or (x is not None and x <= time.time()):
            return MISSING
        return (v, x)

    def lookup_many(self, keys: list[str]) -> list[Any]:
        """``lookup`` of several keys, all from one consistent state."""
        if self._tx is not None and self._tx_owner == threading.get_ident():
            return [self.lookup(k) for k in keys]
        self.check()
        while True:
            g = self._wgen
            data, exp = self.data, self.exp
            found = [(data.get(k, _ABSENT), exp.get(k)) for k in keys]
            if not (g & 1) and g == self._wgen:
                break
            with self.lock:
                pass
        now = time.time()
        return [MISSING if v is _ABSENT or (x is not None and x <= now) else (v, x)
                for v, x in found]

    def count(self) -> int:
        """How many live keys (without copying the store)."""
        if self._tx is not None and self._tx_owner == threading.get_ident():
            return len(self.live_items()[0])
        self.check()
        while True:
            g = self._wgen
            n = len(self.data)
            now = time.time()
            dead = sum(1 for x in list(self.exp.values()) if x <= now)
            if not (g & 1) and g == self._wgen:
                return n - dead
            with self.lock:
                pass

    def live_items(self) -> tuple[dict[str, Any], dict[str, float]]:
        """A consistent copy of the live data and expiries (never half a batch)."""
        self.check()
        while True:
            g = self._wgen
            data = dict(self.data)  # one C call each: atomic under the GIL
            exp = dict(self.exp)
            if not (g & 1) and g == self._wgen:
                break
            with self.lock:
                pass
        tx = self._tx
        if tx is not None and self._tx_owner == threading.get_ident():
            if tx.cleared:
                data.clear()
                exp.clear()
            for k, r in tx.vals.items():
                if r is None:
                    data.pop(k, None)
                    exp.pop(k, None)
                else:
                    data[k] = r[0]
                    if r[1] is None:
                        exp.pop(k, None)
                    else:
                        exp[k] = r[1]
        if exp:
            now = time.time()
            for k in [k for k, x in exp.items() if x <= now]:
                data.pop(k, None)
                del exp[k]
        return data, exp

    # ------------------------------------------------------------ transactions
    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._enter()
        tx = self._tx
        outer = tx is None
        saved = None
        if outer:
            tx = self._tx = _Overlay()
            self._tx_owner = threading.get_ident()
        else:
            assert tx is not None
            saved = tx.savepoint()
        ok = False
        ticket = 0
        try:
            yield
            ok = True
        finally:
            try:
                if outer:
                    self._tx = None
                    self._tx_owner = 0
                    if ok and (tx.staged or tx.cleared):
                        ticket = self._commit(list(tx.staged.items()), clear=tx.cleared)
                    if ok and not self.autosave:
                        ticket = self._flush_pending_locked()
                elif not ok and saved is not None:
                    tx.restore(saved)  # a nested block that raised undoes only itself
            finally:
                self._exit()
        if outer and ok:
            self.after_write(ticket)

    def in_transaction(self) -> bool:
        return self._tx is not None and self._tx_owner == threading.get_ident()

    # ------------------------------------------------------------ persistence
    def _flush_pending_locked(self) -> int:
        if not (self._pending or self._pending_clear):
            return 0
        ops = [OP_CLEAR] if self._pending_clear else []
        exact = False
        for key, entry in self._pending.items():
            ops.append(_op_bytes(key, entry))
            if entry[0] == "s" and entry[3]:
                exact = True
        self._append(build_line(self.seq + 1, ops, exact))
        self._pending = {}
        self._pending_clear = False
        return self._tickets

    def flush(self) -> None:
        """Log what manual mode holds, and make everything so far durable."""
        if self.read_only:
            self._ensure_open()
            return
        self._enter()
        try:
            self._flush_pending_locked()
        finally:
            self._exit()
        if self._tickets > self._synced_ticket:
            self._wait_synced(self._tickets)

    def reload(self) -> None:
        """Drop unsaved changes and read the store again from disk."""
        with self.lock:
            self._ensure_open()
            if self.in_transaction():
                raise LogKVError("reload() inside a transaction")
            self.coord.lock()
            try:
                self._pending = {}
                self._pending_clear = False
                self._reload_all()
            finally:
                self.coord.unlock()

    def _ensure_open(self) -> None:
        if self._closed:
            raise ClosedError("the store is closed")

    def compact(self, *, wait: float | None = None) -> bool:
        """Fold the log into the snapshot now (design §6). False if another
        compaction was running and ``wait`` ran out."""
        from ._compact import compact_store, run_compaction_child

        self._ensure_open()
        if self.read_only:
            raise ReadOnlyError(f"{self.path} was opened read-only")
        if self.in_transaction():
            raise LogKVError("compact() cannot run inside a transaction")
        # Folds what is logged; manual-mode changes stay pending (they are
        # logged only by flush(), close() or the end of a transaction).
        size = self.fs.size(self.path) + self.log_end
        if self.compact_in_child or size > CHILD_COMPACTION_BYTES:
            done = run_compaction_child(self.path, create_backup=self.create_backup,
                                        indent=self.indent, sort_keys=self.sort_keys, wait=wait)
        else:
            done = compact_store(self.path, create_backup=self.create_backup, indent=self.indent,
                                 sort_keys=self.sort_keys, fs=self.fs, wait=wait) is not None
        self.catch_up()
        return done

    def _start_auto_compaction(self) -> None:
        from ._compact import EXIT_BUSY

        self._want_compaction = False
        child = self._compactor
        if child is not None:
            if child.poll() is None:
                return
            if child.returncode not in (0, EXIT_BUSY):
                log.warning("%s: automatic compaction failed (exit %s)", self.path, child.returncode)
        from ._compact import spawn_compaction_child

        # Until the child's rotation is seen; if it fails (or another process
        # was compacting), try again after the log has grown by as much again.
        self._compact_at = self.log_end + self.auto_compact_min_size
        self._compactor = spawn_compaction_child(self.path, create_backup=self.create_backup,
                                                 indent=self.indent, sort_keys=self.sort_keys)

    def close(self) -> None:
        if self._closed:
            return
        if self._forked:  # the parent owns the files' state: just let go
            with self.lock:
                self._closed = True
                self._release_files()
            return
        error: BaseException | None = None
        if not self.read_only:
            try:
                self.flush()
            except BaseException as exc:
                if (self._pending or self._pending_clear) and not self._poisoned:
                    # Manual-mode changes that could not be logged (a write
                    # failed): the store stays open with them, so that close()
                    # or flush() once the fault is gone still saves them.
                    raise
                error = exc  # still release everything below
        self._stop.set()
        self._flush_wake.set()
        if self._flusher is not None:
            self._flusher.join()
        if self._compactor is not None:
            self._compactor.wait()
        if error is None and not self.read_only and self.compact_on_close and not self._poisoned:
            with self.lock:
                has_records = self.seq > self.folded_seq
            if has_records or self.exp:
                try:
                    self.compact(wait=None)
                except (LogKVError, OSError) as exc:
                    # Everything is durable in the log already; the next
                    # compaction folds it. Closing must still let go below.
                    log.warning("%s: compaction on close failed: %s", self.path, exc)
        with self.lock:
            self._closed = True
            self._fast = False
            self._release_files()
            self.data = {}
            self.exp = {}
        if error is not None:
            raise error

    def _release_files(self) -> None:
        self._words = _ClosedWords()
        for lf in [self.log, *self._retired]:
            if lf is not None:
                lf.close()
        self.log = None
        self._retired = []
        self.coord.close()

    # ------------------------------------------------------------ figures
    def stats(self) -> dict[str, Any]:
        self.check()
        words = self._words
        shared = self.coord.words is not None
        last_ms = words[W_LAST_COMPACTION_MS] if shared else 0
        snap = self.fs.stat(self.path)
        return {
            "file_size_bytes": snap.st_size if snap is not None else 0,
            "wal_path": self.wal_path,
            "wal_size_bytes": self.log_end,
            "wal_records": self.wal_records,
            "durability": self.durability,
            "compactions": words[W_COMPACTIONS] if shared else 0,
            "last_compaction": (last_ms / 1000.0) if last_ms else None,
            "last_compaction_lock_hold_ms": (words[W_LAST_COMPACTION_HOLD_US] / 1000.0)
            if last_ms else None,
            "recovered_records": self.recovered_records,
            "dropped_tail_bytes": self.dropped_tail_bytes,
            "sequence": self.seq,
            "dirty": self.dirty,
        }



