"""Coordination between processes that open the same store.

Three mechanisms, all on descriptors kept open for the store's life:

* the write lock: ``flock`` on ``db.json.lock``. aiodict's ``filelock`` uses
  ``flock`` on the same file, so the two libraries exclude each other. Taken
  for one write (about 1 µs on a held descriptor) or one compaction step,
  never for the store's life.
* the shared page ``db.json.shm`` (4096 bytes, mapped): the last sequence
  number, the log's committed end and the log generation, so a read learns of
  other processes' writes with one memory load instead of an ``fstat``.
* byte locks on ``db.json.shm``: every open store holds a shared ``flock`` on
  it (liveness: the first opener, finding none, rebuilds the page from the
  files); the compactor holds an exclusive OFD lock on byte 1 (one compaction
  at a time; OFD locks belong to the descriptor, so two stores in one process
  exclude each other too, which classic ``lockf`` would not).
"""
from __future__ import annotations

import errno
import fcntl
import gc
import mmap
import os
import struct
import threading
import time

from ._errors import LockTimeout
from ._fs import NEW_STORE_MODE, O_NOFOLLOW, FileSystem, io_error

SHM_SIZE = 4096
MAGIC = 0x6C6F676B76763031  # "logkvv01"

# Word indexes in the shared page (unsigned 64-bit, native order).
W_MAGIC = 0
W_SEQ = 1          # last committed sequence number
W_END = 2          # committed end of the log file
W_GEN = 3          # bumped at every log rotation
W_WRITER = 4       # pid of a writer between write(2) and publication, else 0
W_COMPACTIONS = 5  # compactions since the page was built
W_LAST_COMPACTION_MS = 6
W_SNAPSHOT_SIZE = 7  # size of db.json after the last compaction
# The last rotation copied the old log's bytes from offset ROT_FROM to its end
# into the new log at offset ROT_TO, verbatim: a store that had read the old
# log up to X >= ROT_FROM continues in the new one at ROT_TO + X - ROT_FROM.
W_ROT_FROM = 8
W_ROT_TO = 9
# The longest write-lock hold of the last compaction, in microseconds: the
# most it can have made any writer wait (stats()["last_compaction_lock_hold_ms"]).
W_LAST_COMPACTION_HOLD_US = 10
NO_ROTATION = (1 << 64) - 1

_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", None)
_F_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", None)
_FLOCK_FMT = "hhqqi4x" if struct.calcsize("hhqqi4x") == 32 else "hhqqi"


def _wait_flock(fd: int, op: int, timeout: float | None, what: str) -> None:
    """``flock(fd, op)`` giving up after ``timeout`` seconds (None: forever)."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    if timeout is None:
        fcntl.flock(fd, op)
        return
    deadline = time.monotonic() + timeout
    delay = 0.0
    spins = 0
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        now = time.monotonic()
        if now >= deadline:
            raise LockTimeout(f"could not lock {what} within {timeout} s")
        # Writers hold the lock for microseconds: yield first, back off later.
        spins += 1
        if spins < 50:
            time.sleep(0)
        else:
            delay = min(max(delay * 2, 0.0001), 0.005)
            time.sleep(min(delay, max(deadline - now, 0)))


class _WouldBlock(Exception):
    """Raised in non-blocking mode (``nonblocking``) where a call would wait:
    for the store's thread lock, another process's write lock, or a catch-up
    that reads files. Always before the call has changed anything; the async
    front end then runs the call in its worker thread instead."""


class _Mode(threading.local):
    on = False


# Non-blocking mode, per thread: AsyncLogKV turns it on around a mutation it
# runs on the event loop thread.
nonblocking = _Mode()


# Why the write lock pauses CPython's garbage collector: a full collection
# walks every container the process holds, ~50 ms with a 1M-key store of dict
# values. Run inside a lock hold, it made every writer of every other process
# wait that long. Paused for the hold, the collection runs right after the
# release instead, and stalls only the process that owes it.
_gc_isenabled, _gc_disable, _gc_enable = gc.isenabled, gc.disable, gc.enable
_flock = fcntl.flock
_LOCK_UN = fcntl.LOCK_UN


class Coordinator:
    """The lock file, the shared page, and the byte locks of one open store."""

    _gc_paused = False

    def __init__(self, fs: FileSystem, path: str, *, read_only: bool, timeout: float | None,
                 mode: int = NEW_STORE_MODE) -> None:
        self.fs = fs
        self.lock_path = path + ".lock"
        self.shm_path = path + ".shm"
        self.timeout = timeout
        self.read_only = read_only
        self.lock_fd = -1
        self.shm_fd = -1
        self.map: mmap.mmap | None = None
        self.words: memoryview | None = None
        self.alone = False
        try:
            self._open_files(fs, read_only, mode)
        except OSError as exc:
            self.close()
            raise io_error(exc, exc.filename or self.lock_path, "cannot open") from exc
        if read_only:
            return
        try:
            _wait_flock(self.shm_fd, fcntl.LOCK_EX, 0.0, self.shm_path)
            self.alone = True
        except LockTimeout:
            _wait_flock(self.shm_fd, fcntl.LOCK_SH, timeout, self.shm_path)
        if os.fstat(self.shm_fd).st_size < SHM_SIZE:
            os.ftruncate(self.shm_fd, SHM_SIZE)
        self.map = mmap.mmap(self.shm_fd, SHM_SIZE)
        self.words = memoryview(self.map).cast("Q")

    def _open_files(self, fs: FileSystem, read_only: bool, mode: int) -> None:
        """Open (a writer: create with ``mode``) ``.lock`` and ``.shm``, never
        through a symbolic link (see _fs)."""
        if read_only:
            if os.path.exists(self.lock_path):
                self.lock_fd = fs.open(self.lock_path, os.O_RDONLY | O_NOFOLLOW)
            if os.path.exists(self.shm_path) and os.path.getsize(self.shm_path) >= SHM_SIZE:
                self.shm_fd = fs.open(self.shm_path, os.O_RDONLY | O_NOFOLLOW)
                self.map = mmap.mmap(self.shm_fd, SHM_SIZE, access=mmap.ACCESS_READ)
                self.words = memoryview(self.map).cast("Q")
            return
        self.lock_fd = fs.open_helper(self.lock_path, os.O_RDWR, mode)
        self.shm_fd = fs.open_helper(self.shm_path, os.O_RDWR, mode)

    # -- the write lock ------------------------------------------------------
    def lock(self) -> None:
        """Take the write lock (shared for a read-only store), with the
        garbage collector paused until ``unlock`` (the comment above
        ``_gc_isenabled`` says why). In non-blocking mode, when another
        descriptor holds it, raise ``_WouldBlock`` at once, with the collector
        as it was."""
        fd = self.lock_fd
        if fd < 0:
            return
        paused = self._gc_paused = _gc_isenabled()
        if paused:
            _gc_disable()
        op = fcntl.LOCK_SH if self.read_only else fcntl.LOCK_EX
        try:
            try:
                _flock(fd, op | fcntl.LOCK_NB)
            except BlockingIOError:
                if nonblocking.on:  # one try only; the collector is restored below
                    raise _WouldBlock from None
                _wait_flock(fd, op, self.timeout, self.lock_path)
        except BaseException:
            if paused:
                _gc_enable()
            raise

    def unlock(self) -> None:
        if self.lock_fd >= 0:
            _flock(self.lock_fd, _LOCK_UN)
            if self._gc_paused:
                _gc_enable()

    # -- liveness ------------------------------------------------------------
    def share_liveness(self) -> None:
        """After rebuilding the page: let other openers in (exclusive -> shared)."""
        if self.alone and self.shm_fd >= 0:
            fcntl.flock(self.shm_fd, fcntl.LOCK_SH)

    # -- one compactor at a time -------------------------------------------------
    def try_compaction_lock(self, wait: float | None) -> bool:
        """Take the compaction byte lock; False if another compactor holds it."""
        if self.shm_fd < 0:
            return True
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            try:
                self._byte_lock(fcntl.F_WRLCK, 1)
                return True
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def compaction_unlock(self) -> None:
        if self.shm_fd >= 0:
            self._byte_lock(fcntl.F_UNLCK, 1)

    def _byte_lock(self, kind: int, byte: int) -> None:
        if _F_OFD_SETLK is not None:
            arg = struct.pack(_FLOCK_FMT, kind, os.SEEK_SET, byte, 1, 0)
            fcntl.fcntl(self.shm_fd, _F_OFD_SETLK, arg)
        else:  # pragma: no cover - non-Linux: process-scoped record locks
            op = {fcntl.F_WRLCK: fcntl.LOCK_EX, fcntl.F_UNLCK: fcntl.LOCK_UN}[kind]
            fcntl.lockf(self.shm_fd, op | (fcntl.LOCK_NB if kind != fcntl.F_UNLCK else 0), 1, byte)

    def close(self) -> None:
        if self.words is not None:
            self.words.release()
            self.words = None
        if self.map is not None:
            self.map.close()
            self.map = None
        for name in ("shm_fd", "lock_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                os.close(fd)
