"""The Windows platform module. Runs on Windows (in CI: the official Windows
CPython under Wine, ``tools/ci/windows-tests.sh``); skipped elsewhere."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

if sys.platform != "win32":
    pytest.skip("Windows only (run by tools/ci/windows-tests.sh under Wine)", allow_module_level=True)

import msvcrt

from logkv import _sys_windows as w


def test_open_is_binary_and_exclusive_create(tmp_path):
    p = str(tmp_path / "f")
    fd = w.open_fd(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"a\nb\n")
    finally:
        os.close(fd)
    with open(p, "rb") as f:
        assert f.read() == b"a\nb\n"  # no \r\n translation
    with pytest.raises(FileExistsError):
        w.open_fd(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


def test_replace_over_a_file_another_handle_holds_open(tmp_path):
    # Compaction renames the new log over the old one while every store holds
    # the old one open; plain os.replace refuses that on Windows.
    log, tmp = str(tmp_path / "db.json.wal"), str(tmp_path / "db.json.wal.tmp")
    old = w.open_fd(log, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    os.write(old, b"old\n")
    with open(tmp, "wb") as f:
        f.write(b"new\n")
    w.replace(tmp, log)
    with open(log, "rb") as f:
        assert f.read() == b"new\n"
    assert w.pread(old, 10, 0) == b"old\n", "the holder still reads the file it opened"
    os.close(old)
    assert sorted(os.listdir(tmp_path)) == ["db.json.wal"], "the moved-aside file is gone"


def test_pread_pwrite_do_not_move_an_appender(tmp_path):
    p = str(tmp_path / "f")
    fd = w.open_fd(p, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"0123456789")
        assert w.pread(fd, 4, 3) == b"3456"
        assert w.pread(fd, 4, 100) == b""
        os.write(fd, b"ab")
        assert w.pread(fd, 20, 0) == b"0123456789ab"
        rw = w.open_fd(p, os.O_RDWR, 0)
        assert w.pwrite(rw, b"XY", 1) == 2
        os.close(rw)
        assert w.pread(fd, 4, 0) == b"0XY3"
    finally:
        os.close(fd)


def test_write_lock_excludes_filelock_style_locking(tmp_path):
    # aiodict's filelock locks byte 0 of db.json.lock with msvcrt.locking.
    p = str(tmp_path / "db.json.lock")
    ours = w.open_fd(p, os.O_RDWR | os.O_CREAT, 0o600)
    theirs = os.open(p, os.O_RDWR | os.O_BINARY)
    try:
        assert w.lock_file(ours, exclusive=True, wait=False)
        with pytest.raises(OSError):
            msvcrt.locking(theirs, msvcrt.LK_NBLCK, 1)
        w.unlock_file(ours)
        msvcrt.locking(theirs, msvcrt.LK_NBLCK, 1)
        assert not w.lock_file(ours, exclusive=True, wait=False)
        assert not w.lock_file(ours, exclusive=False, wait=False)
    finally:
        os.close(ours)
        os.close(theirs)


def test_liveness_shared_exclusive_and_downgrade(tmp_path):
    p = str(tmp_path / "db.json.shm")
    a = w.open_fd(p, os.O_RDWR | os.O_CREAT, 0o600)
    b = w.open_fd(p, os.O_RDWR, 0)
    try:
        assert w.lock_liveness(a, exclusive=True, wait=False)
        assert not w.lock_liveness(b, exclusive=False, wait=False)
        w.share_liveness(a)
        assert w.lock_liveness(b, exclusive=False, wait=False)
        assert not w.lock_liveness(b, exclusive=True, wait=False)
        # the locks lie past the data: the page stays readable and writable
        assert w.pwrite(a, b"\0" * 16, 0) == 16
        assert w.pread(b, 16, 0) == b"\0" * 16
    finally:
        os.close(a)
        os.close(b)


def test_byte_locks_belong_to_the_handle(tmp_path):
    p = str(tmp_path / "db.json.shm")
    fds = [w.open_fd(p, os.O_RDWR | os.O_CREAT, 0o600) for _ in range(2)]
    a, b = (w.ByteLocks(fd, p, 0o600) for fd in fds)
    try:
        assert a.try_lock(1)
        assert not b.try_lock(1)
        a.unlock(1)
        assert b.try_lock(1)
        b.unlock(1)
    finally:
        for fd in fds:
            os.close(fd)


def test_processes(tmp_path):
    assert w.pid_alive(os.getpid())
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    assert w.pid_alive(proc.pid)
    w.kill_hard(proc)
    proc.wait()
    assert w.killed_hard(proc.returncode)
    assert not w.pid_alive(proc.pid)
