"""Windows: the operating-system calls logkv needs (see ``_sys_posix`` for the
other platform module; ``_sys`` picks one).

What differs from POSIX, and what logkv does about it:

* **Opening.** Files are opened with ``CreateFileW`` sharing read, write *and
  delete*, then wrapped as a C runtime descriptor (``msvcrt.open_osfhandle``),
  so that another process may rename or delete a file this one holds open
  (compaction renames the old log aside while readers hold it). Descriptors
  are binary (``O_BINARY``: no newline translation) and not inherited.
* **Renaming over an open file.** Windows (and Wine) refuse to rename a file
  *over* one that any process holds open, even with delete sharing. So
  ``replace`` first moves the open destination aside to a unique name
  (allowed, thanks to the sharing above), then renames the source into the
  freed name, then deletes the moved-aside file (it disappears when its last
  holder closes it). A crash between the two renames leaves no file at the
  destination; the caller's recovery rule for that moment is in
  ``docs/design.md`` (the log rotation: a missing ``db.json.wal`` beside a
  complete ``db.json.wal.next`` is finished on the next open).
* **Locks.** ``LockFileEx`` locks belong to one handle, shared or exclusive.
  The whole-file lock of ``db.json.lock`` is an exclusive lock of byte 0, the
  byte aiodict's ``filelock`` locks with ``msvcrt.locking``, so the two
  libraries exclude each other. Windows locks are mandatory (a locked range
  cannot be read or written through another handle), so locks on files that
  hold data (the shared page) lie far past the data, at 2**40 + n.
* **Positioned I/O** is ``ReadFile``/``WriteFile`` with an ``OVERLAPPED``
  offset: ``os.pread``/``os.pwrite`` do not exist on Windows, and a seek
  followed by a read would race with another thread's append.
* **Syncs.** ``os.fsync`` is ``FlushFileBuffers``, which writes the file and
  the drive's cache. A folder cannot be synced (NTFS journals its entries);
  ``sync_folder`` does nothing.
* **Processes.** ``kill_hard`` is ``TerminateProcess``; a pid is alive while
  ``OpenProcess`` succeeds and ``GetExitCodeProcess`` says STILL_ACTIVE
  (``os.kill(pid, 0)`` would *terminate* the process on Windows).
"""
from __future__ import annotations

import ctypes
import msvcrt
import os
import subprocess
import uuid
from ctypes import wintypes

NAME = "win32"
OPEN_FLAGS = os.O_BINARY | os.O_NOINHERIT
NOFOLLOW = 0
HAS_FOLDER_SYNC = False
REPLACE_OPEN_FILES = False

_k32 = ctypes.WinDLL("kernel32", use_last_error=True)

_GENERIC_READ = 0x80000000
_GENERIC_WRITE = 0x40000000
_FILE_SHARE_ALL = 0x1 | 0x2 | 0x4
_CREATE_NEW, _CREATE_ALWAYS, _OPEN_EXISTING, _OPEN_ALWAYS, _TRUNCATE_EXISTING = 1, 2, 3, 4, 5
_FILE_ATTRIBUTE_NORMAL = 0x80
_INVALID_HANDLE = wintypes.HANDLE(-1).value
_LOCKFILE_FAIL_IMMEDIATELY = 0x1
_LOCKFILE_EXCLUSIVE_LOCK = 0x2
_ERROR_LOCK_VIOLATION = 33
_ERROR_IO_PENDING = 997
_ERROR_HANDLE_EOF = 38
_FAR = 1 << 40  # where locks on data-holding files lie (mandatory locking)


class _Overlapped(ctypes.Structure):
    _fields_ = [("Internal", ctypes.c_void_p), ("InternalHigh", ctypes.c_void_p),
                ("Offset", wintypes.DWORD), ("OffsetHigh", wintypes.DWORD),
                ("hEvent", wintypes.HANDLE)]


def _at(offset: int) -> _Overlapped:
    ov = _Overlapped()
    ov.Offset = offset & 0xFFFFFFFF
    ov.OffsetHigh = offset >> 32
    return ov


_k32.CreateFileW.restype = wintypes.HANDLE
_k32.CreateFileW.argtypes = [wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD, ctypes.c_void_p,
                             wintypes.DWORD, wintypes.DWORD, wintypes.HANDLE]
_k32.ReadFile.argtypes = [wintypes.HANDLE, ctypes.c_void_p, wintypes.DWORD,
                          ctypes.POINTER(wintypes.DWORD), ctypes.POINTER(_Overlapped)]
_k32.WriteFile.argtypes = [wintypes.HANDLE, ctypes.c_void_p, wintypes.DWORD,
                           ctypes.POINTER(wintypes.DWORD), ctypes.POINTER(_Overlapped)]
_k32.LockFileEx.argtypes = [wintypes.HANDLE, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD,
                            wintypes.DWORD, ctypes.POINTER(_Overlapped)]
_k32.UnlockFileEx.argtypes = [wintypes.HANDLE, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD,
                              ctypes.POINTER(_Overlapped)]
_k32.OpenProcess.restype = wintypes.HANDLE
_k32.OpenProcess.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.DWORD]
_k32.GetExitCodeProcess.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
_k32.CloseHandle.argtypes = [wintypes.HANDLE]


def _handle(fd: int) -> int:
    return msvcrt.get_osfhandle(fd)


def _error(path: str | None = None) -> OSError:
    code = ctypes.get_last_error()
    err = ctypes.WinError(code)
    if path is not None:
        return type(err)(err.errno, err.strerror, path, code)
    return err


def open_fd(path: str, flags: int, mode: int) -> int:
    """``os.open`` with delete sharing (see the module docstring)."""
    access = {os.O_RDONLY: _GENERIC_READ, os.O_WRONLY: _GENERIC_WRITE,
              os.O_RDWR: _GENERIC_READ | _GENERIC_WRITE}[flags & 3]
    creat, excl, trunc = flags & os.O_CREAT, flags & os.O_EXCL, flags & os.O_TRUNC
    if creat and excl:
        disposition = _CREATE_NEW
    elif creat and trunc:
        disposition = _CREATE_ALWAYS
    elif creat:
        disposition = _OPEN_ALWAYS
    elif trunc:
        disposition = _TRUNCATE_EXISTING
    else:
        disposition = _OPEN_EXISTING
    h = _k32.CreateFileW(path, access, _FILE_SHARE_ALL, None, disposition,
                         _FILE_ATTRIBUTE_NORMAL, None)
    if h == _INVALID_HANDLE or h is None:
        raise _error(path)
    crt = flags & (os.O_APPEND | os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
    try:
        return msvcrt.open_osfhandle(h, crt | os.O_BINARY | os.O_NOINHERIT)
    except OSError:
        _k32.CloseHandle(h)
        raise


def pread(fd: int, size: int, offset: int) -> bytes:
    buf = ctypes.create_string_buffer(size)
    got = wintypes.DWORD()
    ov = _at(offset)
    if not _k32.ReadFile(_handle(fd), buf, size, ctypes.byref(got), ctypes.byref(ov)):
        if ctypes.get_last_error() == _ERROR_HANDLE_EOF:
            return b""
        raise _error()
    return buf.raw[:got.value]


def pwrite(fd: int, data: bytes, offset: int) -> int:
    done = wintypes.DWORD()
    ov = _at(offset)
    if not _k32.WriteFile(_handle(fd), data, len(data), ctypes.byref(done), ctypes.byref(ov)):
        raise _error()
    return done.value


def sync_data(fd: int) -> None:
    os.fsync(fd)  # FlushFileBuffers: the file and the drive's cache


def sync_file(fd: int) -> None:
    os.fsync(fd)


def sync_folder(path: str) -> None:
    """Windows cannot sync a folder; NTFS journals its entries."""


def replace(src: str, dst: str) -> None:
    """Rename ``src`` over ``dst``, even while other processes hold ``dst`` open."""
    try:
        os.replace(src, dst)
        return
    except PermissionError:
        if not os.path.exists(dst):
            raise
    aside = f"{dst}.old.{uuid.uuid4().hex}"
    os.replace(dst, aside)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(aside, dst)
        raise
    try:
        os.unlink(aside)
    except OSError:
        pass  # still open somewhere without delete sharing: removed by the next compaction


def _lock(fd: int, offset: int, *, exclusive: bool, wait: bool) -> bool:
    flags = (_LOCKFILE_EXCLUSIVE_LOCK if exclusive else 0) | (0 if wait else _LOCKFILE_FAIL_IMMEDIATELY)
    ov = _at(offset)
    if _k32.LockFileEx(_handle(fd), flags, 0, 1, 0, ctypes.byref(ov)):
        return True
    if ctypes.get_last_error() in (_ERROR_LOCK_VIOLATION, _ERROR_IO_PENDING):
        return False
    raise _error()


def _unlock(fd: int, offset: int) -> None:
    ov = _at(offset)
    if not _k32.UnlockFileEx(_handle(fd), 0, 1, 0, ctypes.byref(ov)):
        raise _error()


def lock_file(fd: int, *, exclusive: bool, wait: bool) -> bool:
    """Lock byte 0, as ``filelock``'s ``msvcrt.locking`` does."""
    return _lock(fd, 0, exclusive=exclusive, wait=wait)


def unlock_file(fd: int) -> None:
    _unlock(fd, 0)


def lock_far(fd: int, n: int, *, exclusive: bool, wait: bool) -> bool:
    """Lock byte ``2**40 + n``: a lock on a file that holds data (mandatory
    locking would otherwise block reads of the locked range)."""
    return _lock(fd, _FAR + n, exclusive=exclusive, wait=wait)


def unlock_far(fd: int, n: int) -> None:
    _unlock(fd, _FAR + n)


def lock_liveness(fd: int, *, exclusive: bool, wait: bool) -> bool:
    return lock_far(fd, 0, exclusive=exclusive, wait=wait)


def share_liveness(fd: int) -> None:
    """Exclusive -> shared: Windows stacks a shared lock on the handle's own
    exclusive one, and the first unlock then removes the exclusive one."""
    lock_far(fd, 0, exclusive=False, wait=True)
    unlock_far(fd, 0)


class ByteLocks:
    """Exclusive locks on single bytes, owned by the handle (``LockFileEx``)."""

    def __init__(self, fd: int, base: str, mode: int) -> None:
        self.fd = fd

    def path_of(self, byte: int) -> str | None:
        return None

    def try_lock(self, byte: int) -> bool:
        return lock_far(self.fd, 1 + byte, exclusive=True, wait=False)

    def unlock(self, byte: int) -> None:
        unlock_far(self.fd, 1 + byte)

    def close(self) -> None:
        """The locks go with the handle."""


def kill_hard(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()  # TerminateProcess


def killed_hard(returncode: int | None) -> bool:
    return returncode == 1  # TerminateProcess's exit code as Popen.kill sets it


_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_STILL_ACTIVE = 259


def pid_alive(pid: int) -> bool:
    h = _k32.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not h:
        return False
    try:
        code = wintypes.DWORD()
        if not _k32.GetExitCodeProcess(h, ctypes.byref(code)):
            return False
        return code.value == _STILL_ACTIVE
    finally:
        _k32.CloseHandle(h)
