"""Drop-in classes for users of aiodict and pickleDB: change one import.

* ``aiodict`` -- aiodict 1.0.1's class: its constructor, defaults and methods,
  on logkv's engine (a thin subclass of ``LogKV``).
* ``PickleDB`` -- pickleDB 1.6's JSON class: an in-memory dict, explicit
  ``load()``/``save()``, a plain JSON object file. ``save()`` is atomic across
  threads and processes.
* ``PickleDBSQLite`` -- pickleDB 1.6's SQLite class on stdlib ``sqlite3``,
  with the same table layout, so pickleDB's database files keep working.

How one method works both in sync code and, awaited, in async code (as
pickleDB's do): each call looks for a running event loop in the calling
thread (``asyncio._get_running_loop()``, a C function, ~40 ns). Without one,
the method does its work and returns the result. With one, it returns a
coroutine that does the work when awaited -- in memory for the in-memory
operations, in a worker thread for file and database I/O. pickleDB does the
same, except that its sync path runs ``asyncio.run()`` per call (a new event
loop each time, ~85 µs); here the sync path is a plain function call.

This module never imports aiodict or pickleDB.
"""
from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import os
import sqlite3
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import orjson

from ._fs import DEFAULT_FS, NEW_STORE_MODE, check_mode, store_mode
from ._snapshot import _DIGITS, _LONG_RUN
from ._store import LogKV

__all__ = ["aiodict", "PickleDB", "PickleDBSQLite"]

_running_loop = asyncio._get_running_loop
MISSING: Any = object()


# --------------------------------------------------------------------- aiodict
class aiodict(LogKV):  # noqa: N801 -- aiodict's own class name
    """aiodict 1.0.1's class on logkv's engine: same constructor, defaults,
    methods, results and errors (see the README for the few differences).

    Like aiodict, it creates the parent folders and writes ``path`` at once
    when it is missing.
    """

    def __init__(self, path: str | os.PathLike[str] = "db.json", *, autosave: bool = True,
                 autosave_delay: float = 0.35, create_backup: bool = True,
                 serializer: Callable[[Any], Any] | None = None,
                 deserializer: Callable[[Any], Any] | None = None, indent: int | None = None,
                 sort_keys: bool = False, cleanup_expired_on_load: bool = True,
                 lock_timeout: float = 10.0, encoding: str = "utf-8",
                 mode: int | None = None) -> None:
        super().__init__(path, autosave=autosave, autosave_delay=autosave_delay,
                         create_backup=create_backup, serializer=serializer,
                         deserializer=deserializer, indent=indent, sort_keys=sort_keys,
                         cleanup_expired_on_load=cleanup_expired_on_load,
                         lock_timeout=lock_timeout, encoding=encoding, mode=mode)
        if not os.path.exists(self._given_path):
            try:
                self.compact()  # aiodict writes the file at once when it is missing
            except BaseException:
                self.close()
                raise

    # aiodict's public attributes (read-only here: the engine owns them).
    @property
    def path(self) -> Path:  # type: ignore[override]
        return Path(self._given_path)

    @property
    def lock_path(self) -> Path:
        return Path(self._given_path + ".lock")

    @property
    def autosave(self) -> bool:
        return self._e.autosave

    @property
    def autosave_delay(self) -> float:
        return self._e.autosave_delay

    @property
    def create_backup(self) -> bool:
        return self._e.create_backup

    @property
    def serializer(self) -> Callable[[Any], Any] | None:
        return self._e.codec.serializer

    @property
    def deserializer(self) -> Callable[[Any], Any] | None:
        return self._e.codec.deserializer

    @property
    def indent(self) -> int | None:
        return self._e.indent

    @property
    def sort_keys(self) -> bool:
        return self._e.sort_keys

    @property
    def cleanup_expired_on_load(self) -> bool:
        return self._e.cleanup_expired_on_load

    def __repr__(self) -> str:
        return f"aiodict(path={str(self.path)!r}, size={len(self)})"


# ------------------------------------------------------------ sync/async calls
async def _in_memory(fn: Callable[..., Any], self: Any, args: tuple, kwargs: dict) -> Any:
    return fn(self, *args, **kwargs)


def _dual(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An in-memory method: the result in sync code, a coroutine in async code."""

    @functools.wraps(fn)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _running_loop() is None:
            return fn(self, *args, **kwargs)
        return _in_memory(fn, self, args, kwargs)

    return method


async def _in_thread(fn: Callable[..., Any], self: Any, args: tuple,
                     executor: ThreadPoolExecutor | None = None, kwargs: dict | None = None) -> Any:
    call = functools.partial(fn, self, *args, **kwargs) if kwargs else functools.partial(fn, self, *args)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


def _no_worker() -> None:
    return None


def _dual_io(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A method that does file or database I/O: in async code it runs in a
    worker thread (the object's own when it has one)."""

    @functools.wraps(fn)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _running_loop() is None:
            return fn(self, *args, **kwargs)
        return _in_thread(fn, self, args, getattr(self, "_worker", _no_worker)(), kwargs)

    return method


# --------------------------------------------------------------------- pickleDB
def _parse_json(raw: bytes) -> Any:
    """orjson, or the stdlib parser where orjson would lose precision (integers
    of 19+ digits, which orjson turns into floats)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)  # NaN/Infinity, or raises the stdlib's JSONDecodeError
    if raw.translate(_DIGITS).find(_LONG_RUN) >= 0:
        return json.loads(raw)
    return doc


def _encode_json(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise
    # orjson cannot write integers beyond 64 bits; the stdlib can, exactly.
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(path: str) -> None:
    """Delete ``<file>.tmp.<16 hex digits>`` left by a save that died (the
    caller holds ``<file>.lock``; unlink never follows a link)."""
    folder, base = os.path.split(path)
    prefix = base + ".tmp."
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix) and _is_token(name[len(prefix):]):
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass


def _is_token(text: str) -> bool:
    return len(text) == 16 and all(c in "0123456789abcdef" for c in text)


class PickleDB:
    """pickleDB 1.6's JSON class: all data in memory in ``self.db``; ``load()``
    and ``save()`` are the only I/O. Every method works in sync code and,
    awaited, in async code.

    Unlike pickleDB's, it is thread-safe, and ``save()`` is atomic across
    threads and processes: it takes ``<location>.lock``, writes a temp file in
    the same folder, fsyncs it, renames it over the file and fsyncs the folder;
    the last ``save()`` wins and nothing is left behind when encoding fails.
    """

    def __init__(self, location: str | os.PathLike[str], *, mode: int | None = None) -> None:
        self.location = os.path.expanduser(location)
        self.db: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._mode = None if mode is None else check_mode(mode)

    # ----------------------------------------------------------- context
    def __enter__(self) -> "PickleDB":
        PickleDB._load(self)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            PickleDB._save(self)

    async def __aenter__(self) -> "PickleDB":
        await _in_thread(PickleDB._load, self, ())
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            await _in_thread(PickleDB._save, self, ())

    # ----------------------------------------------------------- I/O
    def _load(self) -> "PickleDB":
        try:
            with open(self.location, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raw = b""
        if raw.strip():
            doc = _parse_json(raw)
            if type(doc) is not dict:
                raise ValueError(f"{self.location}: not a JSON object "
                                 f"(found {type(doc).__name__})")
        else:
            doc = {}
        with self._lock:
            self.db = doc
        return self

    def _save(self) -> bool:
        path = os.path.abspath(self.location)
        folder = os.path.dirname(path)
        # The file's own mode when it exists, else mode= (0o600 by default),
        # for the file and the lock file alike (see LogKV's files).
        mode = store_mode(path, self._mode)
        lock_fd = DEFAULT_FS.open_helper(path + ".lock", os.O_RDWR, mode)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            # Encode under the lock: the save that writes last holds the
            # newest state. Encoding first also means a value that cannot be
            # encoded raises before any file is created.
            with self._lock:
                payload = _encode_json(self.db)
            # A new file with a random name (O_EXCL, never through a link),
            # so a file or link planted at <file>.tmp is never written. Temp
            # files of saves that died are stale now (we hold the lock).
            _remove_stale_temps(path)
            fd, tmp = DEFAULT_FS.create_temp(path + ".tmp", mode)
            try:
                try:
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            _fsync_dir(folder)
        finally:
            os.close(lock_fd)  # releases the flock
        return True

    load = _dual_io(_load)
    load.__doc__ = """Read the file into memory (a missing or empty file is an empty
    database); returns the database object."""
    save = _dual_io(_save)
    save.__doc__ = """Write the database to the file atomically; returns True."""

    # ----------------------------------------------------------- in memory
    @_dual
    def set(self, key: Any, value: Any) -> bool:
        """Store ``value`` under ``str(key)`` (in memory); returns True."""
        with self._lock:
            self.db[str(key)] = value
        return True

    @_dual
    def get(self, key: Any, default: Any = None) -> Any:
        """The value under ``str(key)``, or ``default``."""
        with self._lock:
            return self.db.get(str(key), default)

    @_dual
    def remove(self, key: Any) -> bool:
        """Delete ``str(key)``; True if it existed."""
        with self._lock:
            return self.db.pop(str(key), MISSING) is not MISSING

    @_dual
    def all(self) -> list[str]:
        """All keys, in insertion order."""
        with self._lock:
            return list(self.db)

    @_dual
    def purge(self) -> bool:
        """Forget every key (in memory); returns True."""
        with self._lock:
            self.db.clear()
        return True

    def __repr__(self) -> str:
        return f"PickleDB(location={self.location!r}, keys={len(self.db)})"


# --------------------------------------------------------------- PickleDBSQLite
def _quote_ident(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def _create_private(path: str, mode: int | None) -> None:
    """Create a missing database file, empty, with ``mode`` (0o600 by
    default), before SQLite opens it: SQLite then gives its ``-wal``,
    ``-shm`` and ``-journal`` files that mode too. An existing file is left
    as it is."""
    mode = NEW_STORE_MODE if mode is None else check_mode(mode)
    if path in ("", ":memory:") or os.path.lexists(path):
        return
    try:
        fd = DEFAULT_FS.create(path, mode)
    except FileExistsError:
        return  # another process created it meanwhile
    os.close(fd)


class PickleDBSQLite:
    """pickleDB 1.6's SQLite class on stdlib ``sqlite3``: table
    ``kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)`` holding orjson bytes,
    committed per write. One connection, reused; in async code every call runs
    in this object's own worker thread, never on the event loop."""

    def __init__(self, sqlite_path: str | os.PathLike[str] = "pickledb.sqlite3",
                 table_name: str = "kv", *, mode: int | None = None) -> None:
        self.sqlite_path = sqlite_path
        self.table_name = table_name
        self._lock = threading.RLock()
        self._executor: ThreadPoolExecutor | None = None
        _create_private(os.fspath(sqlite_path), mode)
        self._conn = sqlite3.connect(sqlite_path, check_same_thread=False)
        t = _quote_ident(table_name)
        self._sql_get = f"SELECT value FROM {t} WHERE key = ?"
        self._sql_insert = f"INSERT INTO {t} (key, value) VALUES (?, ?)"
        self._sql_upsert = (f"INSERT INTO {t} (key, value) VALUES (?, ?) "
                            "ON CONFLICT(key) DO UPDATE SET value=excluded.value")
        self._sql_delete = f"DELETE FROM {t} WHERE key = ?"
        self._sql_all = f"SELECT key FROM {t} ORDER BY key"
        self._sql_purge = f"DELETE FROM {t}"
        with self._lock:
            self._conn.execute(f"CREATE TABLE IF NOT EXISTS {t} "
                               "(key TEXT PRIMARY KEY, value BLOB NOT NULL)")
            self._conn.commit()

    def _worker(self) -> ThreadPoolExecutor:
        ex = self._executor
        if ex is None:
            with self._lock:
                ex = self._executor
                if ex is None:
                    ex = self._executor = ThreadPoolExecutor(
                        max_workers=1, thread_name_prefix="pickledb-sqlite")
        return ex

    def _write(self, sql: str, params: tuple) -> int:
        with self._lock:
            conn = self._conn
            try:
                cur = conn.execute(sql, params)
                conn.commit()
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
            return cur.rowcount

    def _set(self, key: Any, value: Any) -> str:
        payload = orjson.dumps(value)
        if key is None:
            new_key = str(uuid.uuid4())
            self._write(self._sql_insert, (new_key, payload))
            return new_key
        key = str(key)
        self._write(self._sql_upsert, (key, payload))
        return key

    def _get(self, key: Any, default: Any = MISSING) -> Any:
        with self._lock:
            row = self._conn.execute(self._sql_get, (str(key),)).fetchone()
        if row is None:
            if default is MISSING:
                raise KeyError(key)
            return default
        return orjson.loads(row[0])

    def _remove(self, key: Any) -> bool:
        return self._write(self._sql_delete, (str(key),)) > 0

    def _all(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._conn.execute(self._sql_all).fetchall()]

    def _purge(self) -> bool:
        self._write(self._sql_purge, ())
        return True

    def _close(self) -> None:
        with self._lock:
            self._conn.close()

    set = _dual_io(_set)
    set.__doc__ = """Store ``value`` under ``key`` (a new uuid4 key when None); returns the key."""
    get = _dual_io(_get)
    get.__doc__ = """The value under ``key``; ``default`` if given, else KeyError, when missing."""
    remove = _dual_io(_remove)
    remove.__doc__ = """Delete ``key``; True if a row was deleted."""
    all = _dual_io(_all)
    all.__doc__ = """All keys, sorted."""
    purge = _dual_io(_purge)
    purge.__doc__ = """Delete every row; returns True."""

    def close(self) -> Any:
        """Close the connection (a coroutine to await in async code)."""
        if _running_loop() is None:
            self._close()
            self._stop_worker()
            return None
        return self._aclose()

    async def _aclose(self) -> None:
        try:
            await _in_thread(PickleDBSQLite._close, self, (), self._worker())
        finally:
            self._stop_worker()

    def _stop_worker(self) -> None:
        ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"PickleDBSQLite(sqlite_path={str(self.sqlite_path)!r}, table_name={self.table_name!r})"

