"""Moving data in and out of logkv: ``logkv import SRC DEST`` and
``logkv export PATH [OUT]``, and between engines: ``logkv export PATH --to
URL`` and ``logkv import URL DEST`` (the CLI wires these functions in).

``import_file`` reads any of

* an aiodict file (``{"version": 1, "data": {key: {"value", "expires_at"}}}``;
  expiry times are kept, already expired keys are skipped),
* a pickleDB JSON file, or any plain JSON object (each member is a key),
* a pickleDB SQLite database (detected by its header bytes; table ``kv``,
  values are orjson bytes),
* an empty file (nothing to import),

and writes it into a new logkv store. ``export_file`` writes a store's live
state as one plain JSON object, atomically.

``copy_store`` copies every live key, with its absolute expiry time, from one
store object to another, whatever their engines (``LogKV``, ``RedisKV`` or a
namespace view of either); ``export_to_redis`` and ``import_from_redis`` use
it to move a store to a Redis server and back. redis-py is imported only when
one of those two is called.
"""
from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from typing import IO, Any, Callable

import orjson

from ._errors import LogKVError
from ._fs import DEFAULT_FS, io_error, store_mode
from ._record import ValueCodec
from ._snapshot import parse_snapshot, write_snapshot
from ._store import LogKV

__all__ = ["import_file", "export_file", "detect_format", "copy_store", "export_to_redis",
           "import_from_redis", "is_redis_url", "DestinationNotEmptyError", "BATCH"]

Progress = Callable[[int, int], None]
SQLITE_MAGIC = b"SQLite format 3\x00"
BATCH = 10_000  # keys per log record while importing (per MULTI/EXEC into Redis)
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class DestinationNotEmptyError(LogKVError):
    """``export_to_redis``: keys already exist under the destination prefix
    (and ``replace`` was not given). ``url`` (password masked), ``prefix``
    and ``keys`` (how many exist) say where."""

    def __init__(self, message: str, *, url: str, prefix: str, keys: int) -> None:
        super().__init__(message)
        self.url = url
        self.prefix = prefix
        self.keys = keys


def is_redis_url(text: str) -> bool:
    """True for a ``redis://``, ``rediss://`` or ``unix://`` URL."""
    return text[:10].lower().startswith(REDIS_SCHEMES)


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"sqlite"``, ``"logkv"`` (a store with its log beside it), ``"aiodict"``,
    ``"json"`` (a plain object) or ``"empty"``."""
    path = os.fspath(path)
    if os.path.exists(path + ".wal"):
        return "logkv"
    raw = _read(path)
    if raw.startswith(SQLITE_MAGIC):
        return "sqlite"
    if not raw.strip():
        return "empty"
    snap = parse_snapshot(raw, path)  # raises CorruptionError when not a JSON object
    if snap.expiries:
        return "aiodict"
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "aiodict" if snap.seq else "json"
    return "aiodict" if type(doc) is dict and "version" in doc and "data" in doc else "json"


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _read_sqlite(path: str, table: str) -> dict[str, Any]:
    uri = "file:" + os.path.abspath(path) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        quoted = '"' + table.replace('"', '""') + '"'
        rows = conn.execute(f"SELECT key, value FROM {quoted} ORDER BY rowid").fetchall()
    finally:
        conn.close()
    out: dict[str, Any] = {}
    for key, value in rows:
        if isinstance(value, str):
            value = value.encode("utf-8")
        out[str(key)] = orjson.loads(value)
    return out


def _load_source(src: str, table: str) -> tuple[dict[str, Any], dict[str, float]]:
    if os.path.exists(src + ".wal"):
        # A logkv store: its log may hold changes the snapshot does not (and
        # the snapshot may not exist yet).
        db = LogKV(src, read_only=True)
        try:
            return db._e.live_items()
        finally:
            db.close()
    with open(src, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head == SQLITE_MAGIC:
        return _read_sqlite(src, table), {}
    # The snapshot reader: aiodict's format or a plain object, integers of any
    # size kept exact, NaN/Infinity refused with the key named.
    snap = parse_snapshot(_read(src), src)
    return snap.data, snap.expiries


def import_file(src: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                progress: Progress | None = None, table: str = "kv",
                **store_options: Any) -> int:
    """Import the aiodict, pickleDB (JSON or SQLite) or plain JSON file ``src``
    into a new logkv store at ``dest``; return the number of keys imported.

    ``dest`` must not hold a store yet (neither ``dest`` nor ``dest.wal``
    exists). Keys go in batches of ``BATCH`` (one log record each); expiry
    times from aiodict files are kept exactly, keys already expired are
    skipped. ``progress(done, total)`` is called after each batch.
    ``store_options`` go to ``LogKV`` (e.g. ``durability``).
    """
    src_s, dest_s = os.fspath(src), os.fspath(dest)
    if os.path.abspath(src_s) == os.path.abspath(dest_s):
        raise ValueError("import: source and destination are the same file (logkv opens "
                         "aiodict and pickleDB JSON files in place; no import is needed)")
    for existing in (dest_s, dest_s + ".wal"):
        if os.path.exists(existing):
            raise FileExistsError(f"import: {existing} already exists; choose a new destination")
    data, expiries = _load_source(src_s, table)
    now = time.time()
    plain = [(k, v) for k, v in data.items() if k not in expiries]
    timed = [(k, v, expiries[k]) for k, v in data.items() if k in expiries and expiries[k] > now]
    total = len(plain) + len(timed)
    if progress is not None:
        progress(0, total)

    def fill(db: LogKV) -> int:
        done = 0
        for start in range(0, len(plain), BATCH):
            batch = plain[start:start + BATCH]
            db.mset(dict(batch))
            done += len(batch)
            if progress is not None:
                progress(done, total)
        for start in range(0, len(timed), BATCH):
            batch3 = timed[start:start + BATCH]
            # Absolute expiry times, kept exactly: LogKV's public calls take a
            # relative ttl, so this uses its batch writer (one record per batch).
            with db.transaction():
                for key, value, exp in batch3:
                    db._set_many([(key, value)], exp)
            done += len(batch3)
            if progress is not None:
                progress(done, total)
        return done

    return _into_new_store(dest_s, store_options, fill)


_STORE_SUFFIXES = ("", ".wal", ".bak", ".lock", ".shm")


def _into_new_store(dest: str, store_options: dict[str, Any],
                    fill: Callable[[LogKV], int]) -> int:
    """Create the store ``dest``, ``fill`` it, compact it (``dest`` alone then
    holds everything) and close it; return what ``fill`` returned. All or
    nothing: when any step fails (a full disk), every file the attempt
    created is removed before the error is raised, so running the same
    import again starts afresh."""
    existed = {name for name in (dest + sfx for sfx in _STORE_SUFFIXES) if os.path.lexists(name)}
    store_options.setdefault("auto_compact", False)
    compact = store_options.pop("compact_on_close", True)
    db: LogKV | None = None
    try:
        db = LogKV(dest, compact_on_close=False, **store_options)
        done = fill(db)
        if compact:
            db.compact()
        db.close()
    except BaseException:
        if db is not None:
            with contextlib.suppress(Exception):
                db.close()  # lets go of the files; its flush may fail again
        _remove_new_files(dest, existed)
        raise
    return done


def _remove_new_files(dest: str, existed: set[str]) -> None:
    folder, base = os.path.split(os.path.abspath(dest))
    names = [dest + sfx for sfx in _STORE_SUFFIXES if dest + sfx not in existed]
    try:
        names += [os.path.join(folder, n) for n in os.listdir(folder)
                  if n.startswith((base + ".tmp.", base + ".wal.tmp.", base + ".bak.tmp."))]
    except OSError:
        pass
    for name in names:
        try:
            os.unlink(name)
        except OSError:
            pass


def export_file(path: str | os.PathLike[str], out: str | os.PathLike[str] | IO[bytes], *,
                progress: Progress | None = None, overwrite: bool = False,
                **store_options: Any) -> int:
    """Write the live state of the store at ``path`` as one plain JSON object
    (``{key: value}``; expiry times are not kept, expired keys are left out)
    to ``out``: a file name (written atomically: temp file, fsync, rename,
    folder fsync) or a binary file object. Returns the number of keys.
    ``progress(done, total)`` is called as keys are encoded.

    An existing ``out`` is refused (``FileExistsError``) unless ``overwrite``;
    one of the store's own files (``PATH``, ``.wal``, ``.bak``, ``.lock``,
    ``.shm``, under any spelling, through a link, or a hard link of one) is
    refused always (``ValueError``). Both before anything is read. The new
    file gets the store's mode (that of ``PATH``; see the README's
    "Security")."""
    path = os.fspath(path)
    out_s = None if hasattr(out, "write") else os.fspath(out)
    if out_s is not None:
        check_export_target(path, out_s, overwrite=overwrite)
    if not os.path.exists(path) and not os.path.exists(path + ".wal"):
        raise FileNotFoundError(f"export: no store at {path}")
    store_options.setdefault("read_only", True)
    db = LogKV(path, **store_options)
    try:
        data = db.copy()
    finally:
        db.close()
    total = len(data)
    codec = ValueCodec()
    parts: list[bytes] = [b"{"]
    step = max(1, min(BATCH, total // 100 or 1))
    if progress is not None:
        progress(0, total)
    for i, (key, value) in enumerate(data.items(), 1):
        if i > 1:
            parts.append(b",")
        parts.append(orjson.dumps(key))
        parts.append(b":")
        parts.append(codec.encode(value)[0])  # exact for integers beyond 64 bits
        if progress is not None and (i % step == 0 or i == total):
            progress(i, total)
    parts.append(b"}")
    payload = b"".join(parts)
    if out_s is None:
        out.write(payload)  # type: ignore[union-attr]
        return total
    fs = DEFAULT_FS
    tmp = write_snapshot(fs, out_s, payload, store_mode(path), what="the export")
    try:
        try:
            if overwrite:
                fs.replace(tmp, out_s)
            else:
                _link_no_clobber(fs, tmp, out_s)
            fs.fsync_dir(os.path.dirname(os.path.abspath(out_s)))
        except FileExistsError:
            raise FileExistsError(f"export: {out_s} already exists (it appeared while the "
                                  "export ran); nothing was written over it") from None
        except OSError as exc:
            raise io_error(exc, out_s, "cannot write the export") from exc
    finally:
        try:
            fs.unlink(tmp)  # gone already after a rename
        except OSError:
            pass
    return total


def _link_no_clobber(fs: Any, tmp: str, out: str) -> None:
    """Give ``tmp`` the name ``out`` only if ``out`` does not exist, in one
    step (``link`` fails with EEXIST); where hard links are not supported,
    check and rename."""
    try:
        fs.link(tmp, out)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(out):
            raise FileExistsError(errno.EEXIST, "exists", out) from None
        fs.replace(tmp, out)


def store_files(path: str) -> list[str]:
    """The files of the store at ``path`` that logkv itself writes (beside
    the path as given and, for a symlinked path, beside the real file)."""
    names = [path + sfx for sfx in _STORE_SUFFIXES]
    real = os.path.realpath(path)
    return names + [real + sfx for sfx in _STORE_SUFFIXES if real + sfx not in names]


def check_export_target(path: str, out: str, *, overwrite: bool) -> None:
    """Refuse to write an export over the store's own files (always) or over
    any existing file (unless ``overwrite``)."""
    target = os.path.realpath(out)
    for own in store_files(path):
        same = os.path.realpath(own) == target
        if not same and os.path.exists(own) and os.path.exists(out):
            try:
                same = os.path.samefile(own, out)  # another name of it (a hard link)
            except OSError:
                same = False
        if same:
            raise ValueError(f"export: {out} is {own}, one of the store's own files; logkv "
                             "never writes an export over them (not even with --force)")
    if os.path.lexists(out) and not overwrite:
        raise FileExistsError(f"export: {out} already exists; pass --force to replace it")


# ---------------------------------------------------------------------------- between engines
Entry = tuple[str, Any, "float | None"]


def copy_store(src: Any, dst: Any, progress: Progress | None = None, *,
               batch: int = BATCH) -> int:
    """Copy every live key of the store ``src`` into the store ``dst``, each
    with its absolute expiry time; return the number of keys copied.

    Either may be a ``LogKV``, a ``RedisKV`` or a namespace view of one (a
    view copies its own keys, without its prefix). Keys already expired when
    the copy starts are skipped; keys of ``dst`` with other names are left
    alone, keys with the same names are overwritten. Keys sharing an expiry
    time are written together; every ``batch`` keys are one
    ``dst.transaction()`` (one log record on ``LogKV``, one MULTI/EXEC on
    ``RedisKV``), so a batch is all or nothing. ``progress(done, total)`` is
    called before the first batch and after each one.
    """
    return _copy_entries(src._entries(), dst, progress, batch)


def _copy_entries(entries: Iterable[Entry], dst: Any, progress: Progress | None,
                  batch: int = BATCH) -> int:
    if batch < 1:
        raise ValueError("batch must be >= 1")
    now = time.time()
    groups: dict[float | None, list[tuple[str, Any]]] = {}
    for key, value, exp in entries:
        if exp is None or exp > now:
            groups.setdefault(exp, []).append((key, value))
    total = sum(len(pairs) for pairs in groups.values())
    if progress is not None:
        progress(0, total)
    # Cut the groups into batches of ``batch`` keys; a batch may hold the
    # tail of one group and the head of the next.
    done = 0
    pending: list[tuple[float | None, list[tuple[str, Any]]]] = []
    size = 0

    def write() -> None:
        nonlocal done, size
        with dst.transaction():
            for exp, pairs in pending:
                dst._set_many(pairs, exp)
        done += size
        pending.clear()
        size = 0
        if progress is not None:
            progress(done, total)

    for exp, pairs in groups.items():
        start = 0
        while start < len(pairs):
            part = pairs[start:start + batch - size]
            pending.append((exp, part))
            size += len(part)
            start += len(part)
            if size >= batch:
                write()
    if pending:
        write()
    return done


def _open_redis(url: str, prefix: str, redis_options: Mapping[str, Any] | None) -> Any:
    from ._redis import RedisKV  # redis-py is imported here, not before

    return RedisKV(url, prefix=prefix, **dict(redis_options or {}))


def export_to_redis(path: str | os.PathLike[str], url: str, *, prefix: str = "",
                    replace: bool = False, progress: Progress | None = None,
                    redis_options: Mapping[str, Any] | None = None) -> int:
    """Copy the live state of the store at ``path`` (values and expiry
    times) into the Redis server at ``url``, each key stored as
    ``prefix + key`` the way ``RedisKV(url, prefix=prefix)`` stores it;
    return the number of keys copied.

    The destination must be empty: when any key under ``prefix`` exists (with
    an empty prefix: any key of the database), ``DestinationNotEmptyError`` is
    raised and nothing is written, unless ``replace`` is true, in which case
    every key under ``prefix`` is deleted first (``RedisKV.clear()``; not
    atomic against other clients writing meanwhile). Keys already expired
    are skipped. Batches of ``BATCH`` keys are one MULTI/EXEC each; a failure
    part way leaves the batches already written (run again with ``replace``).
    ``redis_options`` go to ``redis.Redis.from_url``. Needs redis-py
    (``pip install redis``); server errors are redis-py's own.
    """
    path = os.fspath(path)
    if not os.path.exists(path) and not os.path.exists(path + ".wal"):
        raise FileNotFoundError(f"export: no store at {path}")
    src = LogKV(path, read_only=True)
    try:
        entries = src._entries()
    finally:
        src.close()
    dst = _open_redis(url, prefix, redis_options)
    try:
        existing = len(dst.keys())
        if existing:
            if not replace:
                raise DestinationNotEmptyError(
                    f"export: {_where(dst.url, prefix)} already holds {existing} key(s); "
                    "nothing was written (replace=True deletes them first)",
                    url=dst.url, prefix=prefix, keys=existing)
            dst.clear()
        return _copy_entries(entries, dst, progress)
    finally:
        dst.close()


def import_from_redis(url: str, dest: str | os.PathLike[str], *, prefix: str = "",
                      progress: Progress | None = None,
                      redis_options: Mapping[str, Any] | None = None,
                      **store_options: Any) -> int:
    """Copy every live key under ``prefix`` of the Redis server at ``url``
    (the keys of ``RedisKV(url, prefix=prefix)``, without the prefix) into a
    new logkv store at ``dest``, with its expiry time (Redis keeps
    milliseconds); return the number of keys copied.

    As for ``import_file``, ``dest`` must not hold a store yet (neither
    ``dest`` nor ``dest.wal`` exists): ``FileExistsError`` otherwise. Every
    key is read from the server before ``dest`` is created, so a server that
    cannot be reached, or a value that is not JSON text
    (``CorruptionError``), leaves no file behind. Batches of ``BATCH`` keys
    are one log record each. ``redis_options`` go to
    ``redis.Redis.from_url``; ``store_options`` to ``LogKV``.
    """
    dest_s = os.fspath(dest)
    for existing in (dest_s, dest_s + ".wal"):
        if os.path.exists(existing):
            raise FileExistsError(f"import: {existing} already exists; choose a new destination")
    src = _open_redis(url, prefix, redis_options)
    try:
        entries = src._entries()
    finally:
        src.close()
    return _into_new_store(dest_s, store_options,
                           lambda db: _copy_entries(entries, db, progress))


def _where(url: str, prefix: str) -> str:
    return f"{url} under the prefix {prefix!r}" if prefix else url
