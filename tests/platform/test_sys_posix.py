"""The POSIX platform module, including the paths macOS takes, simulated here.

macOS differs from Linux in two calls logkv depends on: its fsync does not
flush the drive's cache (``F_FULLFSYNC`` does), and it has no open-file-
description locks (``F_OFD_SETLK``), whose classic replacement belongs to the
process. Both are simulated by changing what ``_sys_posix`` finds in ``fcntl``.
"""
from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import textwrap

import pytest

if sys.platform == "win32":
    pytest.skip("POSIX only", allow_module_level=True)

from logkv import _sys_posix

F_FULLFSYNC_FAKE = 0x7FFF  # no such fcntl command on Linux: only the recorder sees it


@pytest.fixture
def recorder(monkeypatch):
    """Record syncs: ``F_FULLFSYNC`` through fcntl, and the plain syncs."""
    calls: list[tuple[str, int]] = []
    real_fcntl = fcntl.fcntl

    def fake_fcntl(fd, cmd, arg=0):
        if cmd == F_FULLFSYNC_FAKE:
            calls.append(("fullfsync", fd))
            return 0
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(_sys_posix, "_F_FULLFSYNC", F_FULLFSYNC_FAKE)
    monkeypatch.setattr(_sys_posix.fcntl, "fcntl", fake_fcntl)
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync", fd)))
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(("fdatasync", fd)), raising=False)
    return calls


def test_macos_every_sync_is_a_full_sync(recorder, tmp_path):
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _sys_posix.sync_data(fd)
        _sys_posix.sync_file(fd)
    finally:
        os.close(fd)
    _sys_posix.sync_folder(str(tmp_path))
    assert [kind for kind, _ in recorder] == ["fullfsync"] * 3


def test_full_sync_refused_falls_back_to_fsync(recorder, monkeypatch, tmp_path):
    # Some network file systems refuse F_FULLFSYNC (EINVAL/ENOTSUP): fsync is
    # then the best there is, and it must still be called.
    def refusing(fd, cmd, arg=0):
        raise OSError(errno.ENOTSUP, "not supported")

    monkeypatch.setattr(_sys_posix.fcntl, "fcntl", refusing)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _sys_posix.sync_data(fd)
        _sys_posix.sync_file(fd)
    finally:
        os.close(fd)
    assert [kind for kind, _ in recorder] == ["fdatasync", "fsync"]


def test_full_sync_io_error_is_not_swallowed(monkeypatch, tmp_path):
    def failing(fd, cmd, arg=0):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(_sys_posix, "_F_FULLFSYNC", F_FULLFSYNC_FAKE)
    monkeypatch.setattr(_sys_posix.fcntl, "fcntl", failing)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as info:
            _sys_posix.sync_data(fd)
        assert info.value.errno == errno.EIO
    finally:
        os.close(fd)


def test_linux_syncs_without_full_sync(monkeypatch, tmp_path):
    monkeypatch.setattr(_sys_posix, "_F_FULLFSYNC", None)
    calls: list[str] = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append("fdatasync"))
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync"))
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _sys_posix.sync_data(fd)
        _sys_posix.sync_file(fd)
    finally:
        os.close(fd)
    assert calls == ["fdatasync", "fsync"]


def _two_locks(tmp_path):
    base = str(tmp_path / "db.json.shm")
    fds = [os.open(base, os.O_RDWR | os.O_CREAT, 0o600) for _ in range(2)]
    return fds, [_sys_posix.ByteLocks(fd, base, 0o600) for fd in fds]


@pytest.mark.parametrize("ofd", [True, False], ids=["ofd", "no-ofd (macOS)"])
def test_byte_locks_exclude_two_descriptors_of_one_process(ofd, monkeypatch, tmp_path):
    if ofd and not hasattr(fcntl, "F_OFD_SETLK"):
        pytest.skip("this kernel has no OFD locks")
    if not ofd:
        monkeypatch.setattr(_sys_posix, "_OFD_NAME", "F_NO_SUCH_LOCK")
    fds, (a, b) = _two_locks(tmp_path)
    try:
        assert (a.path_of(1) is None) == ofd
        assert a.try_lock(1)
        assert not b.try_lock(1), "a second store in the same process took a held lock"
        assert b.try_lock(2), "another byte is another lock"
        a.unlock(1)
        assert b.try_lock(1)
        b.unlock(1)
        b.unlock(2)
    finally:
        a.close()
        b.close()
        for fd in fds:
            os.close(fd)


def test_classic_record_locks_would_not_exclude_one_process(tmp_path):
    # Why the fallback is not lockf: a record lock belongs to the process, so
    # a second descriptor of the same process "gets" it too.
    path = tmp_path / "f"
    a = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    b = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(a, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 1)
        fcntl.lockf(b, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 1)  # no error: no exclusion
    finally:
        os.close(a)
        os.close(b)


@pytest.mark.parametrize("ofd", [True, False], ids=["ofd", "no-ofd (macOS)"])
def test_byte_locks_exclude_another_process(ofd, monkeypatch, tmp_path):
    if ofd and not hasattr(fcntl, "F_OFD_SETLK"):
        pytest.skip("this kernel has no OFD locks")
    if not ofd:
        monkeypatch.setattr(_sys_posix, "_OFD_NAME", "F_NO_SUCH_LOCK")
    base = str(tmp_path / "db.json.shm")
    fd = os.open(base, os.O_RDWR | os.O_CREAT, 0o600)
    locks = _sys_posix.ByteLocks(fd, base, 0o600)
    child = textwrap.dedent(f"""
        import os, sys
        from logkv import _sys_posix
        if {not ofd!r}:
            _sys_posix._OFD_NAME = "F_NO_SUCH_LOCK"
        fd = os.open({base!r}, os.O_RDWR)
        locks = _sys_posix.ByteLocks(fd, {base!r}, 0o600)
        print("got" if locks.try_lock(1) else "refused")
    """)
    try:
        assert locks.try_lock(1)
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                             check=True).stdout.strip()
        assert out == "refused"
        locks.unlock(1)
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                             check=True).stdout.strip()
        assert out == "got"
    finally:
        locks.close()
        os.close(fd)


def test_lock_file_is_flock_and_compatible_with_filelock(tmp_path):
    filelock = pytest.importorskip("filelock")
    path = str(tmp_path / "db.json.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert _sys_posix.lock_file(fd, exclusive=True, wait=False)
        with pytest.raises(filelock.Timeout):
            filelock.FileLock(path, timeout=0.05).acquire()
        _sys_posix.unlock_file(fd)
        with filelock.FileLock(path, timeout=1):
            assert not _sys_posix.lock_file(fd, exclusive=False, wait=False)
    finally:
        os.close(fd)


def test_pid_alive(tmp_path):
    assert _sys_posix.pid_alive(os.getpid())
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    assert _sys_posix.pid_alive(proc.pid)
    _sys_posix.kill_hard(proc)
    proc.wait()
    assert _sys_posix.killed_hard(proc.returncode)
    assert not _sys_posix.pid_alive(proc.pid)


def test_pread_pwrite(tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert _sys_posix.pwrite(fd, b"hello world", 0) == 11
        assert _sys_posix.pread(fd, 5, 6) == b"world"
        assert _sys_posix.pread(fd, 5, 100) == b""
    finally:
        os.close(fd)
