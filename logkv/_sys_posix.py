"""Linux, macOS and other POSIX systems: the operating-system calls logkv needs.

One of the two platform modules (the other is ``_sys_windows``); ``_sys``
picks one. Nothing above ``_fs`` and ``_lock`` calls the operating system's
file, lock or sync primitives directly.

What differs between the POSIX systems, and why:

* **Syncs on macOS.** Apple's fsync(2) moves data to the drive but does not
  make the drive write its cache, so it does not survive a power cut;
  ``fcntl(F_FULLFSYNC)`` does (LevelDB's ``env_posix.cc`` does the same).
  Every sync after which logkv acknowledges a write, or deletes what the
  write replaces, is a full sync there: the log's sync (every durability mode
  syncs to make its promise), a folder's sync after a rename, and the sync of
  a snapshot that is about to replace the old one. ``F_BARRIERFSYNC`` would
  order writes without flushing the cache, but every logkv sync is followed
  by an action (an acknowledgement, a rename, an unlink) that relies on the
  data being on the medium, so logkv uses the full sync everywhere and the
  barrier nowhere. Elsewhere ``fdatasync`` (data and size, not times) is the
  log's sync and ``fsync`` the others'.
* **Byte locks per open file.** Linux's open-file-description locks
  (``F_OFD_SETLK``) belong to one descriptor, so two stores in one process
  exclude each other. Classic ``lockf``/``F_SETLK`` locks belong to the
  process (a second descriptor in the same process "gets" a lock the first
  holds, and closing any descriptor of the file drops them all), so where
  OFD locks are missing (macOS, the BSDs) each byte lock is a ``flock`` on a
  small file of its own beside the store (``flock`` is per open file
  everywhere).
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess

NAME = "darwin" if os.uname().sysname == "Darwin" else "posix"

# Added to every open: a child process started by the store (the compactor)
# must not inherit its descriptors, or it would hold the store's locks.
OPEN_FLAGS = getattr(os, "O_CLOEXEC", 0)
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
HAS_FOLDER_SYNC = True
# Whether the kernel lets a file be renamed over or deleted while another
# process holds it open (POSIX: always).
REPLACE_OPEN_FILES = True

_F_FULLFSYNC = getattr(fcntl, "F_FULLFSYNC", None)
_HAS_FDATASYNC = hasattr(os, "fdatasync")
# Looked up at call time (not import time), so that tests can hide it and run
# the per-file-lock path that macOS takes.
_OFD_NAME = "F_OFD_SETLK"
_FLOCK_FMT = "hhqqi4x" if struct.calcsize("hhqqi4x") == 32 else "hhqqi"


def open_fd(path: str, flags: int, mode: int) -> int:
    return os.open(path, flags | OPEN_FLAGS, mode)


def pread(fd: int, size: int, offset: int) -> bytes:
    return os.pread(fd, size, offset)


def pwrite(fd: int, data: bytes, offset: int) -> int:
    return os.pwrite(fd, data, offset)


def _full_sync(fd: int) -> bool:
    """``F_FULLFSYNC`` where the system has it; False where it has not (or the
    file system refuses it, as some network file systems do)."""
    if _F_FULLFSYNC is None:
        return False
    try:
        fcntl.fcntl(fd, _F_FULLFSYNC)
        return True
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.ENOTTY):
            return False
        raise


def sync_data(fd: int) -> None:
    """Make the file's data (and size) survive a power cut."""
    if _full_sync(fd):
        return
    if _HAS_FDATASYNC:
        os.fdatasync(fd)
    else:
        os.fsync(fd)


def sync_file(fd: int) -> None:
    """Make the file's data and metadata survive a power cut."""
    if not _full_sync(fd):
        os.fsync(fd)


def sync_folder(path: str) -> None:
    """Make the folder's entries (creations, renames, unlinks) survive a power cut."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | OPEN_FLAGS)
    try:
        sync_file(fd)
    finally:
        os.close(fd)


def replace(src: str, dst: str) -> None:
    os.replace(src, dst)


# -- whole-file locks (the write lock, liveness) -------------------------------
def lock_file(fd: int, *, exclusive: bool, wait: bool) -> bool:
    """``flock`` the file (aiodict's ``filelock`` locks ``db.json.lock`` the same
    way). Returns False, without waiting, when ``wait`` is False and another
    open file holds a conflicting lock."""
    op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    if not wait:
        op |= fcntl.LOCK_NB
    try:
        fcntl.flock(fd, op)
    except BlockingIOError:
        return False
    return True


def unlock_file(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)


# -- byte locks (one compactor at a time, ...) -----------------------------------
class ByteLocks:
    """Exclusive locks on single bytes of one file, each owned by this object
    alone (not by the process): Linux OFD locks on ``fd``; elsewhere a ``flock``
    on ``<base>.<byte>`` (``base`` is the file's path), created on first use
    with ``mode``."""

    def __init__(self, fd: int, base: str, mode: int) -> None:
        self.fd = fd
        self.base = base
        self.mode = mode
        self.ofd = getattr(fcntl, _OFD_NAME, None)
        self._files: dict[int, int] = {}

    def path_of(self, byte: int) -> str | None:
        """The separate lock file that stands for ``byte``, or None with OFD locks."""
        return None if self.ofd is not None else f"{self.base}.{byte}"

    def try_lock(self, byte: int) -> bool:
        if self.ofd is not None:
            arg = struct.pack(_FLOCK_FMT, fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0)
            try:
                fcntl.fcntl(self.fd, self.ofd, arg)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return False
                raise
            return True
        fd = self._files.get(byte)
        if fd is None:
            path = f"{self.base}.{byte}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | NOFOLLOW | OPEN_FLAGS, self.mode)
            self._files[byte] = fd
        if lock_file(fd, exclusive=True, wait=False):
            return True
        return False

    def unlock(self, byte: int) -> None:
        if self.ofd is not None:
            arg = struct.pack(_FLOCK_FMT, fcntl.F_UNLCK, os.SEEK_SET, byte, 1, 0)
            fcntl.fcntl(self.fd, self.ofd, arg)
            return
        fd = self._files.get(byte)
        if fd is not None:
            unlock_file(fd)

    def close(self) -> None:
        files, self._files = self._files, {}
        for fd in files.values():
            os.close(fd)


# -- processes -------------------------------------------------------------------
def kill_hard(proc: subprocess.Popen[bytes]) -> None:
    """Kill a child at once, with no chance to clean up (SIGKILL)."""
    proc.kill()


def killed_hard(returncode: int | None) -> bool:
    """Whether a child's exit status says ``kill_hard`` ended it."""
    import signal
    return returncode == -signal.SIGKILL


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


# -- liveness (every open store holds the shared page's lock shared) -------------
def lock_liveness(fd: int, *, exclusive: bool, wait: bool) -> bool:
    return lock_file(fd, exclusive=exclusive, wait=wait)


def share_liveness(fd: int) -> None:
    """Exclusive -> shared, atomically (``flock`` converts in place)."""
    fcntl.flock(fd, fcntl.LOCK_SH)
