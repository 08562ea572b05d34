"""File-system layers for fault tests (LevelDB's ``Env`` substitution, SQLite's
test VFS).

Every disk operation on a store's files goes through a ``logkv._fs.FileSystem``;
``LogKV(path, _fs=...)`` and ``logkv._compact.compact_store(path, fs=...)`` take
one of these instead:

* ``RecordingFS``  records each *mutating* call with its path;
* ``CrashAt``      raises ``SimulatedCrash`` just before or just after the n-th
                   mutating call (a process killed there);
* ``FaultFS``      raises ``OSError(ENOSPC|EIO)`` at the n-th write / fsync /
                   replace / fsync_dir, once or from then on;
* ``PowerCutFS``   writes go to the real files AND into a page-cache model
                   that knows what was fsynced; ``state()`` freezes the model,
                   ``cut(rng)`` says what a power cut could leave on disk and
                   ``materialise`` writes that into a fresh folder.

Mutating calls are: open for writing or creating, write, fsync, fdatasync,
fsync_dir, ftruncate, replace, link, unlink. ``close``, reads and stats are
never counted and never fail.
"""
from __future__ import annotations

import copy
import errno as _errno
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

from logkv._fs import FileSystem

MUTATING = ("open", "write", "fsync", "fdatasync", "fsync_dir", "ftruncate", "replace", "link",
            "unlink")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class SimulatedCrash(BaseException):
    """The process "died" here. BaseException, so no ``except Exception`` or
    ``except OSError`` in the library can swallow it."""


class HookFS(FileSystem):
    """Calls ``self.before(kind, path, args)`` / ``self.after(kind, path)``
    around every mutating call; keeps a table of open descriptors (fd -> path)
    so fd-based calls can be named and a dead process's descriptors closed."""

    #: False: fsync, fdatasync and fsync_dir are counted but not done. For
    #: tests of process crashes (where the kernel keeps every written byte)
    #: and of reopening, syncs only cost time (~2.5 ms each on the CI disk).
    real_sync = True

    def __init__(self) -> None:
        self.fds: dict[int, str] = {}
        self._mu = threading.RLock()
        self.hook: Callable[[int, "Call"], None] | None = None

    # -- overridable ---------------------------------------------------------
    def before(self, kind: str, path: str, args: tuple) -> Any:
        return None

    def after(self, kind: str, path: str, args: tuple) -> None:
        return None

    # -- the calls -----------------------------------------------------------
    def _path(self, fd: int) -> str:
        return self.fds.get(fd, f"<fd {fd}>")

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        mutating = bool(flags & _WRITE_FLAGS)
        if mutating:
            self.before("open", path, (flags,))
        fd = super().open(path, flags, mode)
        with self._mu:
            self.fds[fd] = path
        if mutating:
            self.after("open", path, (flags, fd))
        return fd

    def close(self, fd: int) -> None:
        with self._mu:
            self.fds.pop(fd, None)
        super().close(fd)

    def write(self, fd: int, data: bytes) -> None:
        path = self._path(fd)
        self.before("write", path, (fd, data))
        super().write(fd, data)
        self.after("write", path, (fd, data))

    def fsync(self, fd: int) -> None:
        path = self._path(fd)
        self.before("fsync", path, (fd,))
        if self.real_sync:
            super().fsync(fd)
        self.after("fsync", path, (fd,))

    def fdatasync(self, fd: int) -> None:
        path = self._path(fd)
        self.before("fdatasync", path, (fd,))
        if self.real_sync:
            super().fdatasync(fd)
        self.after("fdatasync", path, (fd,))

    def fsync_dir(self, path: str) -> None:
        self.before("fsync_dir", path, ())
        if self.real_sync:
            super().fsync_dir(path)
        self.after("fsync_dir", path, ())

    def ftruncate(self, fd: int, size: int) -> None:
        path = self._path(fd)
        self.before("ftruncate", path, (fd, size))
        super().ftruncate(fd, size)
        self.after("ftruncate", path, (fd, size))

    def replace(self, src: str, dst: str) -> None:
        self.before("replace", src, (dst,))
        super().replace(src, dst)
        self.after("replace", src, (dst,))

    def link(self, src: str, dst: str) -> None:
        self.before("link", src, (dst,))
        super().link(src, dst)
        self.after("link", src, (dst,))

    def unlink(self, path: str) -> None:
        self.before("unlink", path, ())
        super().unlink(path)
        self.after("unlink", path, ())

    # -- what the kernel does when a process dies ------------------------------
    def kill_descriptors(self) -> None:
        """Close every descriptor still open through this layer (no data
        changes: closing a file writes nothing)."""
        with self._mu:
            fds, self.fds = list(self.fds), {}
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


class NoSyncFS(HookFS):
    """The real file system minus the syncs (for reopening and checking)."""

    real_sync = False


# =========================================================================== recording


@dataclass
class Call:
    kind: str
    path: str
    detail: str = ""

    def __str__(self) -> str:
        name = os.path.basename(self.path)
        return f"{self.kind}({name}{', ' + self.detail if self.detail else ''})"


class RecordingFS(HookFS):
    """Records every mutating call in ``self.calls``; ``hook(call_index, call)``,
    if given, runs just before each one is numbered (tests use it to
    interleave work; the calls the hook makes are numbered first)."""

    def __init__(self, hook: Callable[[int, Call], None] | None = None) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self.hook = hook

    def before(self, kind: str, path: str, args: tuple) -> Any:
        detail = ""
        if kind in ("replace", "link"):
            detail = os.path.basename(args[0])
        elif kind == "write":
            detail = f"{len(args[1])} B"
        elif kind == "ftruncate":
            detail = str(args[1])
        call = Call(kind, path, detail)
        if self.hook is not None:
            # Before the call is numbered: calls the hook makes come first.
            self.hook(len(self.calls) + 1, call)
        with self._mu:
            self.calls.append(call)

    def count(self) -> int:
        return len(self.calls)


# =========================================================================== crashing


class CrashAt(RecordingFS):
    """Dies (raises ``SimulatedCrash``) just before (``before=True``) or just
    after the ``n``-th mutating call, counting from 1.

    ``partial``: when the n-th call is a write and ``before`` is True, first
    write ``data[:partial]`` (a process killed inside a long ``write(2)``, or
    a torn sector).

    Once dead, every further mutating call raises ``SimulatedCrash`` too (a
    dead process writes nothing more: ``finally`` blocks in the library that
    unwind through the crash reach the disk no more). Afterwards call
    ``bury(*stores)`` to drop what the kernel would drop at exit: descriptors,
    the shared page's mapping, the flusher thread. Never ``close()`` the
    stores: that would flush and compact.
    """

    def __init__(self, n: int, before: bool = True, partial: int | None = None,
                 hook: Callable[[int, Call], None] | None = None, real_sync: bool = False) -> None:
        super().__init__(hook)
        self.real_sync = real_sync  # a killed process loses nothing the kernel holds
        self.n = n
        self.crash_before = before
        self.partial = partial
        self.dead = False
        self.crashed_on: Call | None = None

    def before(self, kind: str, path: str, args: tuple) -> Any:
        if self.dead:
            raise SimulatedCrash("already dead")
        super().before(kind, path, args)
        if len(self.calls) == self.n and self.crash_before:
            self.dead = True
            self.crashed_on = self.calls[-1]
            if self.partial is not None and kind == "write":
                FileSystem.write(self, args[0], args[1][: self.partial])
            raise SimulatedCrash(f"before {self.crashed_on}")

    def after(self, kind: str, path: str, args: tuple) -> None:
        if len(self.calls) == self.n and not self.crash_before and not self.dead:
            self.dead = True
            self.crashed_on = self.calls[-1]
            raise SimulatedCrash(f"after {self.crashed_on}")

    def bury(self, *stores: Any) -> None:
        """Release what a killed process holds, without touching any data."""
        for db in stores:
            if db is None:
                continue
            e = getattr(db, "_e", db)
            e._stop.set()
            e._flush_wake.set()
            t = e._flusher
            if t is not None and t is not threading.current_thread():
                t.join(5)
            e._closed = True
            e._fast = False
            coord = e.coord
            try:
                if coord.words is not None:
                    coord.words.release()
                    coord.words = None
                if coord.map is not None:
                    coord.map.close()
                    coord.map = None
            except (ValueError, BufferError):
                pass
            for name in ("shm_fd", "lock_fd"):
                setattr(coord, name, -1)  # the descriptors are closed below
        self.kill_descriptors()


# =========================================================================== I/O errors


class FaultFS(RecordingFS):
    """Raises ``OSError(errno)`` at the ``n``-th call of ``kind`` (counting
    from 1) and, if ``persistent``, at every later one until ``heal()``.

    ``named=False``: a failing descriptor call raises with no file name, as
    the kernel's ``write(2)`` does (for tests that errors name their file).

    ``kind`` is one of ``write``, ``fsync`` (fsync and fdatasync), ``replace``,
    ``fsync_dir``, ``link``, ``ftruncate``, ``open`` (opens for writing).
    A failing write first writes ``partial`` bytes of its data (None: half),
    as a short write followed by ENOSPC leaves them; ``partial=0`` writes none.
    """

    KINDS = {"write": ("write",), "fsync": ("fsync", "fdatasync"), "replace": ("replace",),
             "fsync_dir": ("fsync_dir",), "link": ("link",), "ftruncate": ("ftruncate",),
             "open": ("open",)}

    def __init__(self, kind: str, n: int, errno: int = _errno.ENOSPC, persistent: bool = False,
                 partial: int | None = None, named: bool = True) -> None:
        super().__init__()
        # False: a failing write/fsync raises as the kernel's does, with no
        # file name (only a path-based call names its path).
        self.named = named
        if kind not in self.KINDS:
            raise ValueError(kind)
        self.kind = kind
        self.n = n
        self.errno = errno
        self.persistent = persistent
        self.partial = partial
        self.seen = 0
        self.failures = 0
        self.healed = False
        self.armed = True  # False: calls pass and are not counted (set-up work)
        self.failed_calls: list[Call] = []

    def heal(self) -> None:
        self.healed = True

    def before(self, kind: str, path: str, args: tuple) -> Any:
        super().before(kind, path, args)
        if kind not in self.KINDS[self.kind] or not self.armed:
            return
        with self._mu:
            self.seen += 1
            hit = not self.healed and (self.seen == self.n or (self.persistent and self.seen > self.n))
            if hit:
                self.failures += 1
                self.failed_calls.append(self.calls[-1])
        if hit:
            if kind == "write":
                data = args[1]
                cut = len(data) // 2 if self.partial is None else min(self.partial, len(data))
                if cut:
                    FileSystem.write(self, args[0], data[:cut])
            if not self.named and kind in ("write", "fsync", "fdatasync", "ftruncate"):
                raise OSError(self.errno, os.strerror(self.errno))
            raise OSError(self.errno, os.strerror(self.errno), path)


# =========================================================================== power cuts


@dataclass
class _Inode:
    durable: bytes = b""
    volatile: bytearray = field(default_factory=bytearray)


@dataclass
class FrozenDisk:
    """What the page-cache model knew at one moment; ``cut`` it any number of
    times. ``inodes``: id -> (durable bytes, current bytes); ``dir_durable``:
    name -> id as last fsynced; ``dir_ops``: directory changes since, in order."""

    inodes: dict[int, tuple[bytes, bytes]]
    dir_durable: dict[str, int]
    dir_ops: list[tuple]
    label: Any = None
    at: float = 0.0  # time.monotonic() when captured

    @staticmethod
    def _apply(entries: dict[str, int], ops: list[tuple]) -> dict[str, int]:
        d = dict(entries)
        for op in ops:
            if op[0] == "add":  # name -> ino (create, link)
                d[op[1]] = op[2]
            elif op[0] == "mv":  # rename src over dst
                ino = d.pop(op[1], None)
                if ino is not None:
                    d[op[2]] = ino
            elif op[0] == "rm":
                d.pop(op[1], None)
        return d

    def volatile_dir(self) -> dict[str, int]:
        return self._apply(self.dir_durable, self.dir_ops)

    def unsynced_bytes(self) -> int:
        return sum(abs(len(v) - len(d)) + (0 if v.startswith(d) or d.startswith(v) else 1)
                   for d, v in self.inodes.values())

    def lossless(self) -> dict[str, bytes]:
        """The files as the running process saw them (nothing lost)."""
        return {n: self.inodes[i][1] for n, i in self.volatile_dir().items()}

    def durable(self) -> dict[str, bytes]:
        """Only what was synced: every un-synced byte and entry lost."""
        return {n: self.inodes[i][0] for n, i in self.dir_durable.items()}

    def cut(self, choice: random.Random | str = "random") -> dict[str, bytes]:
        """One possible disk after a power cut.

        ``choice``: ``"durable"`` (everything un-synced lost), ``"volatile"``
        (everything kept), or a ``random.Random``: un-synced directory changes
        survive as an ordered prefix (journaled metadata); each file's
        un-synced bytes are lost, cut to a random prefix, kept, or cut with a
        run of zero bytes after the prefix (a size that reached the disk before
        the data, as XFS could leave).
        """
        if choice == "durable":
            return self.durable()
        if choice == "volatile":
            return self.lossless()
        rng = choice if isinstance(choice, random.Random) else random.Random()
        k = rng.randint(0, len(self.dir_ops))
        entries = self._apply(self.dir_durable, self.dir_ops[:k])
        out: dict[str, bytes] = {}
        memo: dict[int, bytes] = {}
        for name, ino in entries.items():
            if ino not in memo:
                memo[ino] = self._cut_file(*self.inodes[ino], rng)
            out[name] = memo[ino]
        return out

    @staticmethod
    def _cut_file(d: bytes, v: bytes, rng: random.Random) -> bytes:
        if d == v:
            return d
        mode = rng.random()
        if mode < 0.2:
            return d
        if mode < 0.4:
            return v
        c = 0  # common prefix
        n = min(len(d), len(v))
        while c < n and d[c] == v[c]:
            c += 1
        if len(v) <= c:  # a truncation not yet durable: old or new length
            return d if rng.random() < 0.5 else v
        m = rng.randint(c, len(v))
        out = v[:m]
        if mode > 0.9 and m < len(v):
            out += b"\0" * rng.randint(1, len(v) - m)
        return out


class PowerCutFS(HookFS):
    """Real files plus a page-cache model of the one folder the store lives in.

    Writes, truncations, renames, links and unlinks go to the real files and
    to the model's *volatile* side; ``fsync``/``fdatasync`` of a descriptor
    make that file's bytes durable; ``fsync_dir`` makes the folder's entries
    durable (creations, renames, links, unlinks). Files that existed in the
    folder when the layer was made count as durable. The shared page and the
    lock file (``*.shm``, ``*.lock``) hold nothing that must survive and are
    left out of the model.

    ``capture``: if set, ``state(label)`` is called (under the model's lock)
    just before and just after every mutating call, so a test can cut at every
    instant the disk could be in; captured states pile up in ``self.states``.
    """

    real_sync = False  # the model, not the disk, says what is durable

    def __init__(self, folder: str, *, capture: bool = False) -> None:
        super().__init__()
        self.folder = os.path.abspath(folder)
        self._next = 1
        self.inodes: dict[int, _Inode] = {}
        self.dir_durable: dict[str, int] = {}
        self.dir_ops: list[tuple] = []
        self.fd_ino: dict[int, int] = {}
        self.fd_pos: dict[int, int] = {}
        self.fd_append: dict[int, bool] = {}
        self.capture = capture
        self.states: list[FrozenDisk] = []
        self.label: Any = None  # what a test is doing now (copied into captures)
        for name in sorted(os.listdir(self.folder)):
            full = os.path.join(self.folder, name)
            if os.path.isfile(full) and not self._ignored(name):
                with open(full, "rb") as f:
                    raw = f.read()
                ino = self._new_inode(raw)
                self.inodes[ino].durable = raw
                self.dir_durable[name] = ino

    # -- the model -------------------------------------------------------------
    @staticmethod
    def _ignored(name: str) -> bool:
        return name.endswith(".shm") or name.endswith(".lock")

    def _name(self, path: str) -> str | None:
        full = os.path.abspath(path)
        if os.path.dirname(full) != self.folder:
            return None
        name = os.path.basename(full)
        return None if self._ignored(name) else name

    def _new_inode(self, raw: bytes = b"") -> int:
        ino = self._next
        self._next += 1
        self.inodes[ino] = _Inode(b"", bytearray(raw))
        return ino

    def _volatile_dir(self) -> dict[str, int]:
        return FrozenDisk._apply(self.dir_durable, self.dir_ops)

    def state(self, label: Any = None) -> FrozenDisk:
        with self._mu:
            return FrozenDisk({i: (n.durable, bytes(n.volatile)) for i, n in self.inodes.items()},
                              dict(self.dir_durable), list(self.dir_ops),
                              label if label is not None else copy.copy(self.label),
                              time.monotonic())

    def _snap(self, when: str, kind: str, path: str) -> None:
        if when == "before" and self.hook is not None:
            self.hook(0, Call(kind, path))
        if self.capture:
            self.states.append(self.state((when, kind, os.path.basename(path), copy.copy(self.label))))

    # -- the calls -----------------------------------------------------------
    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        with self._mu:
            if flags & _WRITE_FLAGS:
                self._snap("before", "open", path)
            fd = FileSystem.open(self, path, flags, mode)
            self.fds[fd] = path
            name = self._name(path)
            if name is not None:
                entries = self._volatile_dir()
                ino = entries.get(name)
                if ino is None:
                    ino = self._new_inode(b"")
                    self.dir_ops.append(("add", name, ino))
                if flags & os.O_TRUNC:
                    self.inodes[ino].volatile = bytearray()
                self.fd_ino[fd] = ino
                self.fd_pos[fd] = 0
                self.fd_append[fd] = bool(flags & os.O_APPEND)
            if flags & _WRITE_FLAGS:
                self._snap("after", "open", path)
            return fd

    def close(self, fd: int) -> None:
        with self._mu:
            self.fds.pop(fd, None)
            self.fd_ino.pop(fd, None)
            self.fd_pos.pop(fd, None)
            self.fd_append.pop(fd, None)
            FileSystem.close(self, fd)

    def write(self, fd: int, data: bytes) -> None:
        with self._mu:
            path = self._path(fd)
            self._snap("before", "write", path)
            FileSystem.write(self, fd, data)
            ino = self.fd_ino.get(fd)
            if ino is not None:
                buf = self.inodes[ino].volatile
                pos = len(buf) if self.fd_append[fd] else self.fd_pos[fd]
                if pos > len(buf):
                    buf.extend(b"\0" * (pos - len(buf)))
                buf[pos:pos + len(data)] = data
                self.fd_pos[fd] = pos + len(data)
            self._snap("after", "write", path)

    def _sync(self, fd: int, kind: str, real: Callable[[int], None]) -> None:
        with self._mu:
            path = self._path(fd)
            self._snap("before", kind, path)
            ino = self.fd_ino.get(fd)
            content = bytes(self.inodes[ino].volatile) if ino is not None else None
        # The real sync runs without the model's lock (group commit: other
        # threads append meanwhile); what it covers is what was written
        # before it started.
        if self.real_sync:
            real(fd)
        with self._mu:
            if ino is not None and content is not None:
                node = self.inodes[ino]
                node.durable = content
            self._snap("after", kind, path)

    def fsync(self, fd: int) -> None:
        self._sync(fd, "fsync", lambda f: FileSystem.fsync(self, f))

    def fdatasync(self, fd: int) -> None:
        self._sync(fd, "fdatasync", lambda f: FileSystem.fdatasync(self, f))

    def fsync_dir(self, path: str) -> None:
        with self._mu:
            self._snap("before", "fsync_dir", path)
            if self.real_sync:
                FileSystem.fsync_dir(self, path)
            if os.path.abspath(path) == self.folder:
                self.dir_durable = self._volatile_dir()
                self.dir_ops = []
            self._snap("after", "fsync_dir", path)

    def ftruncate(self, fd: int, size: int) -> None:
        with self._mu:
            path = self._path(fd)
            self._snap("before", "ftruncate", path)
            FileSystem.ftruncate(self, fd, size)
            ino = self.fd_ino.get(fd)
            if ino is not None:
                buf = self.inodes[ino].volatile
                if size < len(buf):
                    del buf[size:]
                else:
                    buf.extend(b"\0" * (size - len(buf)))
            self._snap("after", "ftruncate", path)

    def replace(self, src: str, dst: str) -> None:
        with self._mu:
            self._snap("before", "replace", src)
            FileSystem.replace(self, src, dst)
            a, b = self._name(src), self._name(dst)
            if a is not None and b is not None:
                self.dir_ops.append(("mv", a, b))
            self._snap("after", "replace", src)

    def link(self, src: str, dst: str) -> None:
        with self._mu:
            self._snap("before", "link", src)
            FileSystem.link(self, src, dst)
            a, b = self._name(src), self._name(dst)
            if a is not None and b is not None:
                ino = self._volatile_dir().get(a)
                if ino is not None:
                    self.dir_ops.append(("add", b, ino))
            self._snap("after", "link", src)

    def unlink(self, path: str) -> None:
        with self._mu:
            self._snap("before", "unlink", path)
            FileSystem.unlink(self, path)
            name = self._name(path)
            if name is not None:
                self.dir_ops.append(("rm", name))
            self._snap("after", "unlink", path)


def materialise(files: dict[str, bytes], folder: str) -> str:
    """Write a cut's files into ``folder`` (created; must be empty or absent)."""
    os.makedirs(folder, exist_ok=True)
    for name, raw in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(raw)
    return folder


@pytest.fixture
def fast_tmp(tmp_path):
    """A scratch folder on tmpfs when there is one (these tests create and
    delete thousands of small files; on the CI disk every folder change costs
    milliseconds), else pytest's ``tmp_path``. No test here relies on real
    syncs: durability is what the models above say."""
    base = "/dev/shm"
    if not (os.path.isdir(base) and os.access(base, os.W_OK)):
        yield tmp_path
        return
    folder = tempfile.mkdtemp(prefix="logkv-faults-", dir=base)
    try:
        from pathlib import Path
        yield Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class ExitAt(CrashAt):
    """``CrashAt`` for a forked child: at the crash point the process really
    dies (``os._exit``), so the kernel, not the test, drops its descriptors,
    locks and mapping. ``label`` assignments (what is acknowledged) are sent
    as JSON lines to ``report_fd`` for the parent to read."""

    EXIT_CODE = 77
    label: Any = None  # present, so workloads publish to it

    def __init__(self, n: int, before: bool, report_fd: int) -> None:
        super().__init__(n, before=before)
        self.report_fd = report_fd

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "label":
            import json
            os.write(self.report_fd, json.dumps(value).encode() + b"\n")
            return
        super().__setattr__(name, value)

    def before(self, kind: str, path: str, args: tuple) -> Any:
        try:
            return super().before(kind, path, args)
        except SimulatedCrash:
            os._exit(self.EXIT_CODE)

    def after(self, kind: str, path: str, args: tuple) -> None:
        try:
            super().after(kind, path, args)
        except SimulatedCrash:
            os._exit(self.EXIT_CODE)


# =========================================================================== a small real disk


class TinyDisk:
    """A real file system of ``size`` bytes (tmpfs), mounted at a new folder:
    a full disk as the kernel reports it (ENOSPC from ``write(2)``, with no
    file name). Needs root and a kernel that lets it mount (``available()``);
    tests fall back to ``FaultFS`` otherwise."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.path = tempfile.mkdtemp(prefix="logkv-tinydisk-")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                               self.path], capture_output=True, text=True, check=False)
        if done.returncode:
            os.rmdir(self.path)
            raise OSError(f"cannot mount a tmpfs: {done.stderr.strip()}")

    @staticmethod
    def available() -> bool:
        if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
            return False
        try:
            TinyDisk(64 * 1024).unmount()
        except OSError:
            return False
        return True

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0, name: str = "filler") -> str:
        """Take all the free space but ``leave`` bytes with a file ``name``."""
        filler = os.path.join(self.path, name)
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, self.free() - leave))
        return filler

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", self.path], check=True, capture_output=True)
        os.rmdir(self.path)


_TINY: list[bool] = []


def tiny_disk_available() -> bool:
    if not _TINY:
        _TINY.append(TinyDisk.available())
    return _TINY[0]


@pytest.fixture
def tiny_disk():
    """A factory of small tmpfs mounts (``TinyDisk``), unmounted after the
    test; None when this machine cannot mount one (not root, no tmpfs)."""
    if not tiny_disk_available():
        yield None
        return
    disks: list[TinyDisk] = []

    def make(size: int = 1 << 20) -> TinyDisk:
        disk = TinyDisk(size)
        disks.append(disk)
        return disk

    try:
        yield make
    finally:
        for disk in disks:
            disk.unmount()
