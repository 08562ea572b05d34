"""Files logkv makes: their modes, links planted at their names, and what a
full disk or a refused permission leaves behind.

* Modes: a new store's files are 0o600 (``mode=`` overrides it); a store whose
  snapshot exists gives every file it creates or replaces (log, lock, shared
  page, backup, temp files, compaction's snapshot and rotated log) the
  snapshot's mode, exactly, whatever the umask.
* Links: a symbolic link planted at a name logkv uses is never written
  through or renamed into place.
* Full disk: on a real small tmpfs when this machine can mount one (root),
  else through the ``FileSystem`` seam (``FaultFS``): a failed compaction
  frees its temp files and keeps ``.bak``; every failure is one error type
  and one line naming the file, in-process and in a child alike; a failed
  import leaves nothing behind, so its retry works.
* The clock: a compactor whose clock runs ahead drops no key another process
  still sees live.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from fsfaults import FaultFS, RecordingFS, tiny_disk  # noqa: F401 (tiny_disk: a fixture)

from logkv import LogKV, StorageError, _compact
from logkv._convert import import_file
from logkv._fs import FileSystem
from logkv._recover import recover_store
from logkv.compat import PickleDB, PickleDBSQLite, aiodict

ROOT = Path(__file__).resolve().parents[2]
STORE_SUFFIXES = ("", ".wal", ".bak", ".lock", ".shm")


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _modes(folder: str | Path) -> dict[str, int]:
    return {name: _mode(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


class CreationFS(FileSystem):
    """Records the mode of every file at the moment it is created (temp files
    included, which are gone by the end)."""

    def __init__(self) -> None:
        self.created: dict[str, int] = {}

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        fd = super().create(path, mode, flags)
        self.created[os.path.basename(path)] = stat.S_IMODE(os.fstat(fd).st_mode)
        return fd

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        fd = super().open(path, flags, mode)
        if flags & os.O_CREAT:
            self.created.setdefault(os.path.basename(path), stat.S_IMODE(os.fstat(fd).st_mode))
        return fd


def _work(db: LogKV) -> None:
    """Writes, two compactions (so .bak is made and replaced), more writes."""
    db["a"] = 1
    db.set("otp", "918273", ttl=600)
    db.compact()
    db.incr("n")
    db.compact()
    db["b"] = 2


# ============================================================================ modes
def test_a_new_store_is_private(tmp_path, umask022):
    path = str(tmp_path / "db.json")
    with LogKV(path) as db:
        _work(db)
    files = _modes(tmp_path)
    assert set(files) == {"db.json" + s for s in STORE_SUFFIXES}
    assert files == {name: 0o600 for name in files}, {k: oct(v) for k, v in files.items()}


@pytest.mark.parametrize("mode", [0o640, 0o660, 0o600])
def test_mode_argument_sets_a_new_stores_mode_exactly(tmp_path, mode):
    old = os.umask(0o077)  # the mode is applied as given, whatever the umask
    try:
        fs = CreationFS()
        path = str(tmp_path / "db.json")
        with LogKV(path, mode=mode, _fs=fs) as db:
            _work(db)
    finally:
        os.umask(old)
    files = _modes(tmp_path)
    assert files == {name: mode for name in files}, {k: oct(v) for k, v in files.items()}
    assert fs.created and set(fs.created.values()) == {mode}, fs.created


def test_async_store_takes_a_mode(tmp_path, umask022):
    import asyncio

    from logkv import AsyncLogKV

    async def main() -> None:
        async with AsyncLogKV(str(tmp_path / "db.json"), mode=0o640) as db:
            await db.set("a", 1)

    asyncio.run(main())
    files = _modes(tmp_path)
    assert files and set(files.values()) == {0o640}, files


@pytest.mark.parametrize("mode", [0o664, 0o640, 0o600])
def test_an_existing_store_gives_every_file_the_snapshots_mode(tmp_path, umask022, mode):
    """An aiodict file (or a store someone chmodded): the log, the lock, the
    shared page, the backup, compaction's temp files, its new snapshot and its
    rotated log all get the snapshot's mode, as SQLite gives -wal and -shm
    the database's. 0o664 is wider than the umask allows: applied exactly."""
    path = tmp_path / "db.json"
    path.write_bytes(orjson.dumps({"version": 1, "updated_at": "2026-01-01T00:00:00Z",
                                   "data": {"k": {"value": 1, "expires_at": None}}}))
    os.chmod(path, mode)
    fs = CreationFS()
    with LogKV(str(path), mode=0o600, _fs=fs) as db:  # mode= is for new stores only
        _work(db)
        created = dict(fs.created)
    files = _modes(tmp_path)
    assert set(files) == {"db.json" + s for s in STORE_SUFFIXES}
    assert files == {name: mode for name in files}, {k: oct(v) for k, v in files.items()}
    # the temp files compaction made (gone now) had it too
    assert any(".tmp." in name for name in created), created
    assert set(created.values()) == {mode}, {k: oct(v) for k, v in created.items()}


def test_a_store_with_only_a_log_keeps_the_logs_mode(tmp_path, umask022):
    path = str(tmp_path / "db.json")
    with LogKV(path, mode=0o640, compact_on_close=False) as db:
        db["a"] = 1
    assert not os.path.exists(path)
    with LogKV(path) as db:
        db["b"] = 2
    assert _modes(tmp_path) == {"db.json" + s: 0o640 for s in STORE_SUFFIXES if s != ".bak"}


def test_recover_keeps_the_stores_mode(tmp_path, umask022):
    path = str(tmp_path / "db.json")
    with LogKV(path, mode=0o640, compact_on_close=False) as db:
        for i in range(3):
            db[f"k{i}"] = i
    raw = bytearray(Path(path + ".wal").read_bytes())
    second = raw.index(b"\n") + 1
    raw[raw.index(b'"o":', second) + 8] ^= 1  # damage the first record
    Path(path + ".wal").write_bytes(bytes(raw))
    os.chmod(path + ".wal", 0o640)
    with LogKV(path, mode=0o640, compact_on_close=False, recovery="skip_corrupted"):
        pass
    assert os.path.exists(path)
    files = _modes(tmp_path)
    assert any(".damaged-" in n for n in files) and any(".recovered-" in n for n in files)
    assert files == {name: 0o640 for name in files}, {k: oct(v) for k, v in files.items()}


def test_compat_adapters_are_private_and_take_a_mode(tmp_path, umask022):
    with aiodict(str(tmp_path / "a" / "db.json")) as db:
        db["x"] = 1
    assert set(_modes(tmp_path / "a").values()) == {0o600}
    with aiodict(str(tmp_path / "b" / "db.json"), mode=0o640) as db:
        db["x"] = 1
    assert set(_modes(tmp_path / "b").values()) == {0o640}

    pdb = PickleDB(str(tmp_path / "p.json"))
    pdb.set("x", 1)
    pdb.save()
    assert _mode(tmp_path / "p.json") == 0o600 and _mode(tmp_path / "p.json.lock") == 0o600
    os.chmod(tmp_path / "p.json", 0o644)  # an existing file keeps its mode
    pdb.save()
    assert _mode(tmp_path / "p.json") == 0o644
    shared = PickleDB(str(tmp_path / "q.json"), mode=0o660)
    shared.save()
    assert _mode(tmp_path / "q.json") == 0o660

    kv = PickleDBSQLite(str(tmp_path / "kv.sqlite3"))
    kv._conn.execute("PRAGMA journal_mode=WAL")
    kv.set("k", 1)
    assert _mode(tmp_path / "kv.sqlite3") == 0o600
    assert _mode(tmp_path / "kv.sqlite3-wal") == 0o600  # SQLite copies the database's mode
    kv.close()
    kv = PickleDBSQLite(str(tmp_path / "kv.sqlite3"), mode=0o644)  # exists: left as it is
    assert kv.get("k") == 1
    kv.close()
    assert _mode(tmp_path / "kv.sqlite3") == 0o600


@pytest.mark.parametrize("bad", [0o400, 0o200, -1, 0o10000, "600", 6.0, True])
def test_a_bad_mode_is_refused_before_any_file_is_made(tmp_path, bad):
    with pytest.raises(ValueError, match="mode"):
        LogKV(str(tmp_path / "db.json"), mode=bad)
    with pytest.raises(ValueError, match="mode"):
        PickleDB(str(tmp_path / "p.json"), mode=bad)
    assert os.listdir(tmp_path) == []


# ============================================================================ links
def _victim(tmp_path: Path) -> Path:
    """A file of another user's choosing, outside the store's folder."""
    other = tmp_path / "elsewhere"
    other.mkdir(exist_ok=True)
    victim = other / "victim"
    victim.write_bytes(b"not logkv's\n")
    return victim


def test_a_link_planted_at_the_rotated_logs_old_name_is_never_written(tmp_path):
    """db.json.wal.tmp was a fixed name: a link planted there while the
    compactor prepared its new log made it truncate and write the target,
    then rename the link over the log. The new log now has a random name
    made with O_EXCL; the planted link is left alone (and removed, not
    followed, by the next compaction)."""
    folder = tmp_path / "store"
    folder.mkdir()
    path = str(folder / "db.json")
    victim = _victim(tmp_path)

    class Racing(FileSystem):
        """Another user plants the link just before the new log is opened
        (after the compaction removed stale temp files)."""

        def open(self, p: str, flags: int, mode: int = 0o600) -> int:
            if ".wal.tmp" in os.path.basename(p) and not os.path.lexists(path + ".wal.tmp"):
                os.symlink(victim, path + ".wal.tmp")
            return super().open(p, flags, mode)

    with LogKV(path, compact_on_close=False) as db:
        db["otp"] = "918273"
        _compact.compact_store(path, fs=Racing())
        db["after"] = 1
    assert victim.read_bytes() == b"not logkv's\n"
    assert not os.path.islink(path + ".wal")
    with LogKV(path) as db:
        assert db.copy() == {"otp": "918273", "after": 1}
    assert victim.read_bytes() == b"not logkv's\n"
    assert not os.path.lexists(path + ".wal.tmp")  # the close's compaction removed it


def test_a_link_planted_before_the_store_exists_is_never_written(tmp_path):
    """A new store writes its first log through a temp file: never the
    planted link."""
    folder = tmp_path / "store"
    folder.mkdir()
    path = str(folder / "db.json")
    victim = _victim(tmp_path)
    os.symlink(victim, path + ".wal.tmp")
    with LogKV(path) as db:
        db["otp"] = "918273"
    assert victim.read_bytes() == b"not logkv's\n"
    assert not os.path.islink(path + ".wal")
    with LogKV(path) as db:
        assert db["otp"] == "918273"


@pytest.mark.parametrize("suffix", [".shm", ".lock", ".wal"])
def test_a_helper_file_that_is_a_link_is_refused(tmp_path, suffix):
    """.shm (mapped and written), .lock (flocked) and .wal (appended to) are
    opened with O_NOFOLLOW: a planted link is an error naming it, and the
    target is not changed (the shared page would have been truncated to 4 KiB
    and written)."""
    folder = tmp_path / "store"
    folder.mkdir()
    path = str(folder / "db.json")
    if suffix == ".wal":
        with LogKV(path, compact_on_close=False) as db:
            db["a"] = 1
        os.unlink(path + ".wal")
    victim = _victim(tmp_path)
    os.symlink(victim, path + suffix)
    with pytest.raises(StorageError) as info:
        LogKV(path)
    message = str(info.value)
    assert path + suffix in message and "symbolic link" in message and "\n" not in message
    assert victim.read_bytes() == b"not logkv's\n"
    assert os.path.islink(path + suffix)


def test_a_dangling_link_at_a_helper_name_creates_nothing_through_it(tmp_path):
    folder = tmp_path / "store"
    folder.mkdir()
    path = str(folder / "db.json")
    target = tmp_path / "elsewhere" / "planted.shm"
    target.parent.mkdir()
    os.symlink(target, path + ".shm")
    with pytest.raises(StorageError, match="symbolic link"):
        LogKV(path)
    assert not target.exists()


def test_a_stray_temp_that_is_a_link_is_removed_not_followed(tmp_path):
    folder = tmp_path / "store"
    folder.mkdir()
    path = str(folder / "db.json")
    victim = _victim(tmp_path)
    with LogKV(path, compact_on_close=False) as db:
        db["a"] = 1
        for name in ("db.json.tmp.0123456789abcdef", "db.json.bak.old.0123456789ab",
                     "db.json.wal.tmp.0123456789abcdef"):
            os.symlink(victim, folder / name)
        db.compact()
    assert victim.read_bytes() == b"not logkv's\n"
    assert sorted(os.listdir(folder)) == sorted("db.json" + s for s in STORE_SUFFIXES
                                                if s != ".bak")


def test_pickledb_save_never_writes_through_a_planted_tmp_link(tmp_path):
    victim = _victim(tmp_path)
    path = tmp_path / "db.json"
    os.symlink(victim, str(path) + ".tmp")
    db = PickleDB(str(path))
    db.set("otp", "918273")
    db.save()
    assert victim.read_bytes() == b"not logkv's\n"
    assert not path.is_symlink() and json.loads(path.read_bytes()) == {"otp": "918273"}
    assert sorted(os.listdir(tmp_path)) == ["db.json", "db.json.lock", "db.json.tmp",
                                           "elsewhere"]


def test_pickledb_save_removes_its_own_stale_temps(tmp_path):
    path = tmp_path / "db.json"
    (tmp_path / "db.json.tmp.0123456789abcdef").write_bytes(b"half a save")
    (tmp_path / "db.json.tmp.not-ours").write_bytes(b"someone else's")
    db = PickleDB(str(path))
    db.set("a", 1)
    db.save()
    assert sorted(os.listdir(tmp_path)) == ["db.json", "db.json.lock", "db.json.tmp.not-ours"]


# ============================================================================ a folder as PATH
@pytest.mark.parametrize("read_only", [False, True])
def test_a_folder_as_path_is_refused_before_any_file_is_made(tmp_path, read_only):
    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(StorageError, match="is a folder") as info:
        LogKV(str(folder), read_only=read_only)
    assert str(folder) in str(info.value)
    assert os.listdir(tmp_path) == ["data"] and os.listdir(folder) == []


# ============================================================================ full disk: compaction
def _store_with_backup(path: str, n: int = 200) -> dict[str, Any]:
    with LogKV(path, compact_on_close=False, auto_compact=False) as db:
        for i in range(n):
            db[f"k{i}"] = "x" * 100
        db.compact()  # makes db.json; the next one makes .bak
        db["more"] = 1
        db.compact()
        for i in range(n):
            db[f"k{i}"] = "y" * 100
        return db.copy()


def _leftovers(folder: str | Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if ".tmp" in n or ".old." in n)


def test_compaction_on_a_full_disk_frees_its_temp_files_and_keeps_bak(tiny_disk):  # noqa: F811
    """On a real small tmpfs: the compaction fails with StorageError naming
    the file; its temp files are gone (the space is free again), .bak is the
    one before, the store is unchanged and compacts once there is room."""
    if tiny_disk is None:
        pytest.skip("cannot mount a tmpfs here; the FaultFS variant below covers the library")
    disk = tiny_disk(1 << 20)
    path = os.path.join(disk.path, "db.json")
    expected = _store_with_backup(path)
    bak = Path(path + ".bak").read_bytes()
    filler = disk.fill(leave=8192)
    free = disk.free()
    with LogKV(path, compact_on_close=False, auto_compact=False) as db:
        with pytest.raises(StorageError) as info:
            db.compact()
        message = str(info.value)
        assert message.count("compaction failed:") == 1 and "\n" not in message
        assert "No space left on device" in message and path in message
        assert ".tmp." in message  # the file that could not be written
        assert _leftovers(disk.path) == []
        assert disk.free() == free
        assert Path(path + ".bak").read_bytes() == bak
        assert db.copy() == expected
        os.unlink(filler)
        db.compact()
    with LogKV(path) as db:
        assert db.copy() == expected


def _compaction_calls(path: str) -> list[Any]:
    rec = RecordingFS()
    rec.real_sync = False
    _compact.compact_store(path, fs=rec)
    return list(rec.calls)


def test_every_failing_call_of_a_compaction_leaves_no_temp_and_keeps_bak(tmp_path):
    """Through the seam: fail each write, fsync, replace, link and open of a
    compaction in turn (ENOSPC, as the kernel reports it: no file name). The
    error is a StorageError of one line naming a file of the store; no temp
    file is left; .bak is there (the old one, or the one that replaced it);
    the store reopens to the same state."""
    proto = tmp_path / "proto"
    proto.mkdir()
    expected = _store_with_backup(str(proto / "db.json"))
    # a dry run on a copy counts the calls of each kind
    dry = tmp_path / "dry"
    _copy_store(proto, dry)
    calls = _compaction_calls(str(dry / "db.json"))
    kinds: dict[str, int] = {}
    for call in calls:
        kind = "fsync" if call.kind == "fdatasync" else call.kind
        kinds[kind] = kinds.get(kind, 0) + 1
    tried = 0
    for kind in ("write", "fsync", "replace", "link", "open", "fsync_dir"):
        for n in range(1, kinds.get(kind, 0) + 1):
            folder = tmp_path / f"{kind}{n}"
            _copy_store(proto, folder)
            path = str(folder / "db.json")
            fs = FaultFS(kind, n, named=False)
            fs.real_sync = False
            try:
                result = _compact.compact_store(path, fs=fs)
            except StorageError as exc:
                message = str(exc)
                assert message.startswith(path + ": compaction failed: "), message
                assert message.count("compaction failed") == 1 and "\n" not in message
                assert str(folder) in message[len(path):], message  # names the file at fault
            else:
                # failures the compaction survives: the .bak link (a copy is
                # the fallback) and the reopening of the rotated log once
                # all is done (the next catch-up reopens it)
                assert fs.failures == 1, (kind, n)
                assert kind == "link" or fs.failed_calls[0].path == path + ".wal", \
                    (kind, n, fs.failed_calls, result)
            tried += 1
            assert _leftovers(folder) == [], (kind, n)
            assert os.path.exists(path + ".bak"), (kind, n)
            with LogKV(path, compact_on_close=False) as db:
                assert db.copy() == expected, (kind, n)
    assert tried >= 8


def _copy_store(src: Path, dst: Path) -> None:
    dst.mkdir()
    for suffix in ("", ".wal", ".bak"):
        name = "db.json" + suffix
        if (src / name).exists():
            (dst / name).write_bytes((src / name).read_bytes())


# ============================================================================ one error type, one message
def _child_and_in_process(path: str) -> tuple[BaseException, BaseException]:
    errors: list[BaseException] = []
    for child in (False, True):
        try:
            if child:
                _compact.run_compaction_child(path, create_backup=True, indent=None,
                                              sort_keys=False, wait=None)
            else:
                _compact.compact_store(path)
        except Exception as exc:  # noqa: BLE001 - compared below
            errors.append(exc)
        else:
            pytest.fail(f"compaction {'in a child' if child else 'in-process'} succeeded")
    return errors[0], errors[1]


def test_a_failed_compaction_raises_the_same_error_in_process_and_in_a_child(tmp_path):
    """A store of more than 1 MiB compacts in a child: its failure used to be
    a plain LogKVError saying "compaction failed:" twice, where the same
    failure in-process raised the error itself."""
    path = str(tmp_path / "db.json")
    with LogKV(path, compact_on_close=False) as db:
        db["a"] = 1
    Path(path).write_bytes(b'{"version": 1, "da')
    inproc, child = _child_and_in_process(path)
    assert type(inproc) is type(child), (inproc, child)
    assert str(inproc) == str(child)
    assert str(inproc).count("compaction failed:") == 1 and path in str(inproc)
    assert inproc.path == child.path == path  # type: ignore[attr-defined]


def test_a_compaction_on_a_full_disk_fails_alike_in_process_and_in_a_child(tiny_disk):  # noqa: F811
    if tiny_disk is None:
        pytest.skip("cannot mount a tmpfs here (a child process cannot take a FaultFS)")
    disk = tiny_disk(1 << 20)
    path = os.path.join(disk.path, "db.json")
    _store_with_backup(path)
    disk.fill(leave=8192)
    inproc, child = _child_and_in_process(path)
    assert type(inproc) is type(child) is StorageError
    for exc in (inproc, child):
        message = str(exc)
        assert message.count("compaction failed:") == 1 and "\n" not in message, message
        assert "No space left on device" in message and ".tmp." in message
    assert _leftovers(disk.path) == []
    # LogKV.compact() through the child takes the same path
    with LogKV(path, compact_on_close=False) as db:
        db._e.compact_in_child = True
        with pytest.raises(StorageError, match="compaction failed: cannot write"):
            db.compact()


def test_a_compaction_child_that_dies_is_a_storage_error_naming_the_store(tmp_path, monkeypatch):
    path = str(tmp_path / "db.json")
    with LogKV(path, compact_on_close=False) as db:
        db["a"] = 1
    real = _compact._child_command

    def dying(*args: Any, **kwargs: Any) -> tuple[list[str], dict[str, str]]:
        _cmd, env = real(*args, **kwargs)
        return [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], env

    monkeypatch.setattr(_compact, "_child_command", dying)
    with pytest.raises(StorageError, match="killed by signal 9") as info:
        _compact.run_compaction_child(path, create_backup=True, indent=None, sort_keys=False,
                                      wait=None)
    assert str(info.value).startswith(f"{path}: compaction failed: ")


@pytest.mark.parametrize("which", ["lock", "shm", "tmp", "wal"])
def test_compact_without_permission_names_the_file(tmp_path, which):
    """EACCES (a folder or file the user may not write; root cannot be
    refused, so through the seam) at each file a compaction opens."""
    path = str(tmp_path / "db.json")
    with LogKV(path, compact_on_close=False) as db:
        db["a"] = 1

    class Refusing(FileSystem):
        def open(self, p: str, flags: int, mode: int = 0o600) -> int:
            name = os.path.basename(p)
            hit = {"lock": name == "db.json.lock", "shm": name == "db.json.shm",
                   "tmp": name.startswith("db.json.tmp."),
                   "wal": name.startswith("db.json.wal.tmp.")}[which]
            if hit and flags & (os.O_WRONLY | os.O_RDWR):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES), p)
            return super().open(p, flags, mode)

    with pytest.raises(StorageError) as info:
        _compact.compact_store(path, fs=Refusing())
    message = str(info.value)
    assert message.startswith(f"{path}: compaction failed: ") and "Permission denied" in message
    assert message.count("compaction failed") == 1
    named = {"lock": path + ".lock", "shm": path + ".shm", "tmp": str(tmp_path),
             "wal": path + ".wal"}[which]
    assert named in message[len(path) + 2:], message
    assert _leftovers(tmp_path) == []
    with LogKV(path) as db:
        assert db["a"] == 1


# ============================================================================ full disk: recover, export, import
def test_recover_on_a_full_disk_names_the_file(tmp_path):
    path = str(tmp_path / "db.json")
    with LogKV(path, compact_on_close=False) as db:
        db["a"] = 1
        db["b"] = 2
    raw = bytearray(Path(path + ".wal").read_bytes())
    raw[-5] ^= 1
    Path(path + ".wal").write_bytes(bytes(raw))
    fs = FaultFS("write", 1, named=False)
    with pytest.raises(StorageError) as info:
        recover_store(path, fs=fs)
    message = str(info.value)
    assert "No space left on device" in message and "\n" not in message
    failed = fs.failed_calls[0].path
    assert failed in message, (failed, message)


def test_export_on_a_full_disk_names_the_file_and_leaves_no_temp(tmp_path, monkeypatch):
    from logkv import _convert

    path = str(tmp_path / "db.json")
    with LogKV(path) as db:
        db["a"] = 1
    out = str(tmp_path / "out.json")
    monkeypatch.setattr(_convert, "DEFAULT_FS", FaultFS("write", 1, named=False))
    with pytest.raises(StorageError) as info:
        _convert.export_file(path, out)
    assert out in str(info.value) and "No space left on device" in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["db.json", "db.json.lock", "db.json.shm",
                                           "db.json.wal"]


@pytest.mark.parametrize("kind,n", [("write", 1), ("write", 3), ("fsync", 2), ("replace", 1),
                                    ("open", 1)])
def test_a_failed_import_leaves_nothing_and_can_be_retried(tmp_path, kind, n):
    src = tmp_path / "src.json"
    src.write_bytes(orjson.dumps({f"k{i}": i for i in range(25_000)}))
    dest = str(tmp_path / "new" / "db.json")
    fs = FaultFS(kind, n, persistent=True, named=False)
    with pytest.raises(OSError):
        import_file(str(src), dest, _fs=fs)
    assert fs.failures
    assert os.listdir(tmp_path / "new") == []
    assert import_file(str(src), dest) == 25_000
    with LogKV(dest, read_only=True) as db:
        assert len(db) == 25_000


def test_a_failed_import_keeps_a_lock_file_that_was_there(tmp_path):
    src = tmp_path / "src.json"
    src.write_bytes(b'{"a": 1}')
    dest = tmp_path / "db.json"
    (tmp_path / "db.json.lock").write_bytes(b"")  # e.g. aiodict's, left by another program
    with pytest.raises(OSError):
        import_file(str(src), str(dest), _fs=FaultFS("write", 1, persistent=True))
    assert sorted(os.listdir(tmp_path)) == ["db.json.lock", "src.json"]


def _cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "logkv", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_on_a_full_disk_import_export_recover_name_the_file(tiny_disk, tmp_path):  # noqa: F811
    """The real thing: a 1 MiB tmpfs. Each command fails with exit 1 and one
    line naming a file on the disk; import leaves no file behind and works
    once there is room; export leaves no temp file."""
    if tiny_disk is None:
        pytest.skip("cannot mount a tmpfs here; the FaultFS variants above cover the library")
    disk = tiny_disk(4 << 20)
    src = tmp_path / "src.json"
    src.write_bytes(orjson.dumps({f"key:{i}": "v" * 40 for i in range(12_000)}))  # ~0.7 MB
    dest = os.path.join(disk.path, "db.json")
    filler = disk.fill(leave=600_000)
    free = disk.free()
    done = _cli("import", str(src), dest)
    assert done.returncode == 1, done
    line = done.stderr.strip()
    assert "\n" not in line and disk.path in line and "No space left on device" in line, line
    assert os.listdir(disk.path) == ["filler"]
    assert disk.free() == free
    os.unlink(filler)
    done = _cli("import", str(src), dest)
    assert done.returncode == 0, done.stderr

    # export of that store to the full disk
    filler = disk.fill(leave=4096)
    out = os.path.join(disk.path, "out.json")
    done = _cli("export", dest, out)
    assert done.returncode == 1, done
    line = done.stderr.strip()
    assert "\n" not in line and out in line and "No space left on device" in line, line
    assert not os.path.exists(out) and _leftovers(disk.path) == []

    # recover of that store (its log damaged) on the full disk
    os.unlink(filler)
    with LogKV(dest, compact_on_close=False) as db:
        db["x"] = 1
        db["y"] = 2
    raw = bytearray(Path(dest + ".wal").read_bytes())
    raw[-5] ^= 1
    Path(dest + ".wal").write_bytes(bytes(raw))
    disk.fill(leave=0)
    done = _cli("recover", dest)
    assert done.returncode == 1, done
    line = done.stderr.strip()
    assert "\n" not in line and disk.path in line and "No space left on device" in line, line


# ============================================================================ logging
def test_the_logkv_logger_has_a_null_handler():
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("logkv").handlers)


def test_a_program_without_logging_configured_gets_no_stray_output(tmp_path):
    """A torn tail is reported through logging: a library's warning reaches
    stderr only if the program configured logging (logging's last-resort
    handler printed it before)."""
    path = str(tmp_path / "db.json")
    with LogKV(path, compact_on_close=False) as db:
        db["a"] = 1
    with open(path + ".wal", "ab") as f:
        f.write(b'{"x":"0123')
    code = f"from logkv import LogKV\nLogKV({path!r}).close()\n"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    quiet = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           check=False)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    with open(path + ".wal", "ab") as f:
        f.write(b'{"x":"0123')
    configured = "import logging\nlogging.basicConfig()\n" + code
    loud = subprocess.run([sys.executable, "-c", configured], env=env, capture_output=True,
                          text=True, check=False)
    assert "dropped a torn last record" in loud.stderr
    with open(path + ".wal", "ab") as f:
        f.write(b'{"x":"0123')
    done = _cli("set", path, "k", "1")  # the command line shows it
    assert done.returncode == 0 and "dropped a torn last record" in done.stderr


# ============================================================================ the clock
_SKEWED_COMPACTOR = textwrap.dedent("""\
    import sys, time
    real = time.time
    time.time = lambda: real() + float(sys.argv[2])  # this process's clock only
    from logkv._compact import compact_store
    compact_store(sys.argv[1])
""")


@pytest.mark.parametrize("skew", [7200.0, -7200.0])
def test_a_compactor_whose_clock_is_off_drops_no_live_key(tmp_path, skew):
    """A compacting process whose clock runs 2 h ahead must not drop a 1 h
    key that every other process still sees live (the kernel's clock, as it
    stamps the compactor's new file, bounds it); keys that really expired
    are still dropped. A clock behind only keeps expired keys longer."""
    path = str(tmp_path / "db.json")
    with LogKV(path, compact_on_close=False) as db:
        db.set("session", "alice", ttl=3600)
        db.set("gone", 1, ttl=0.05)
        db["plain"] = 2
    time.sleep(0.1)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", _SKEWED_COMPACTOR, path, str(skew)], env=env,
                   check=True, timeout=60)
    on_disk = orjson.loads(Path(path).read_bytes())["data"]
    assert "session" in on_disk and "plain" in on_disk
    if skew > 0:
        assert "gone" not in on_disk
    with LogKV(path) as db:
        assert db.get("session") == "alice" and 3500 < db.ttl("session") <= 3600
        assert "gone" not in db
