"""The only code that touches the disk.

Every read, write, sync, rename and unlink of the store's files goes through a
``FileSystem``. Tests substitute a subclass that fails the N-th call, records
the calls, or forgets what was never synced.

Creating files (design.md §2 and §6): every file logkv makes gets the store's
mode exactly (``fchmod`` when the umask took bits away, as SQLite does for its
``-wal`` and ``-shm`` files); a temporary file has a random name and is made
with ``O_CREAT | O_EXCL | O_NOFOLLOW``, so a file or a symbolic link planted at
a name logkv will use is never opened, truncated or renamed into place; a
helper file at a fixed name (``.lock``, ``.shm``, ``.wal``) is opened with
``O_NOFOLLOW``, so a planted link is an error naming it.
"""
from __future__ import annotations

import errno
import os
import secrets
import stat

from ._errors import StorageError

_HAS_FDATASYNC = hasattr(os, "fdatasync")
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
NEW_STORE_MODE = 0o600
"""The mode of a new store's files (aiodict's); ``mode=`` overrides it."""


def store_mode(path: str, mode: int | None = None) -> int:
    """The permission bits for the files of the store at ``path``: those of its
    snapshot when it exists (else of its log), else ``mode``, else 0o600."""
    if mode is not None:
        check_mode(mode)
    for name in (path, path + ".wal"):
        try:
            st = os.stat(name)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    return NEW_STORE_MODE if mode is None else mode


def check_mode(mode: object) -> int:
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise ValueError(f"mode must be permission bits such as 0o600, not {mode!r}")
    if not mode & stat.S_IRUSR or not mode & stat.S_IWUSR:
        raise ValueError(f"mode {mode:#o} must let the owner read and write (0o600 at least)")
    return mode


def io_error(exc: OSError, path: str, doing: str) -> StorageError:
    """One line naming the file: ``PATH: DOING: reason`` (for an OSError
    that is not a StorageError already)."""
    if exc.errno == errno.ELOOP:
        reason = "it is a symbolic link, which logkv does not follow for this file (remove it)"
    else:
        reason = exc.strerror or str(exc)
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    if names and names != [path]:
        reason += f" ({' -> '.join(names)})"
    error = StorageError(f"{path}: {doing}: {reason}")
    error.errno = exc.errno
    return error


class FileSystem:
    """Thin, stateless wrappers around ``os``; one method per kind of call."""

    def open(self, path: str, flags: int, mode: int = NEW_STORE_MODE) -> int:
        return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), mode)

    def fchmod(self, fd: int, mode: int) -> None:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)

    # -- creating files (every creation of logkv goes through these) -------------
    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        """Create ``path``, which must not exist (not even as a symbolic
        link), with exactly ``mode``; return its descriptor."""
        fd = self.open(path, flags | os.O_CREAT | os.O_EXCL | O_NOFOLLOW, mode)
        try:
            if stat.S_IMODE(self.fstat(fd).st_mode) != mode:  # the umask took bits away
                self.fchmod(fd, mode)
        except BaseException:
            self.close(fd)
            try:
                self.unlink(path)
            except OSError:
                pass
            raise
        return fd

    def create_temp(self, base: str, mode: int) -> tuple[int, str]:
        """A new file ``base.<random>`` (see ``create``): its descriptor and name."""
        while True:
            name = f"{base}.{secrets.token_hex(8)}"
            try:
                return self.create(name, mode), name
            except FileExistsError:
                continue  # 2**-64 odds, or a name planted on purpose: draw again

    def open_helper(self, path: str, flags: int, mode: int) -> int:
        """Open the helper file ``path`` (``flags`` without ``O_CREAT``),
        creating it with exactly ``mode`` when it does not exist. Never
        through a symbolic link (``OSError(ELOOP)``)."""
        while True:
            if os.path.lexists(path):
                try:
                    return self.open(path, flags | O_NOFOLLOW, mode)
                except FileNotFoundError:
                    continue  # removed in between
            try:
                return self.create(path, mode, flags)
            except FileExistsError:
                continue  # another process created it in between: open that one

    def close(self, fd: int) -> None:
        os.close(fd)

    def write(self, fd: int, data: bytes) -> None:
        """Write all of ``data`` (loops over short writes)."""
        n = os.write(fd, data)
        if n == len(data):
            return
        view = memoryview(data)[n:]
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        chunks = []
        while size > 0:
            chunk = os.pread(fd, size, offset)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def read_file(self, path: str) -> bytes | None:
        """The whole file, or None when it does not exist."""
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        if _HAS_FDATASYNC:
            os.fdatasync(fd)
        else:  # macOS has no fdatasync
            os.fsync(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fstat(self, fd: int) -> os.stat_result:
        return os.fstat(fd)

    def size(self, path: str) -> int:
        """The file's size, 0 when it does not exist."""
        st = self.stat(path)
        return 0 if st is None else st.st_size

    def stat(self, path: str) -> os.stat_result | None:
        try:
            return os.stat(path)
        except FileNotFoundError:
            return None


DEFAULT_FS = FileSystem()
