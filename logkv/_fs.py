"""The only code that touches the disk.

Every read, write, sync, rename and unlink of the store's files goes through a
``FileSystem``. Tests substitute a subclass that fails the N-th call, records
the calls, or forgets what was never synced.
"""
from __future__ import annotations

import os

_HAS_FDATASYNC = hasattr(os, "fdatasync")


class FileSystem:
    """Thin, stateless wrappers around ``os``; one method per kind of call."""

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), mode)

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
