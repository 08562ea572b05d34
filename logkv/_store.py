"""``LogKV`` and its namespace views: the sync API, with aiodict's names,
arguments, results and errors. No disk logic here: everything that touches
state goes through the engine."""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, Callable

from . import _rules
from ._engine import Engine
from ._fs import FileSystem
from ._record import ValueCodec, check_key
from ._rules import MISSING, NO_DEFAULT as _NO_DEFAULT, optional_expiry

_W_SEQ = 1
_W_GEN = 3


class _API(MutableMapping[str, Any]):
    """The whole method set, over the engine, for keys under ``_prefix``."""

    _e: Engine
    _prefix: str

    # ---------------------------------------------------------------- helpers
    def _key(self, key: Any) -> str:
        return self._prefix + (key if type(key) is str else str(key))

    def _wkey(self, key: Any) -> str:
        """``_key`` for a call that may create the key: refuses a key that
        cannot be written (checked now, in every mode, not when it is logged)."""
        full = self._prefix + (key if type(key) is str else str(key))
        if not full.isascii():
            check_key(full)
        return full

    def _read(self, full: str) -> Any:
        e = self._e
        e.check()
        return e.lookup(full)

    def _write(self, full: str, entry: tuple) -> None:
        e = self._e
        e.after_write(e.write_one(full, entry))

    def _own(self, data: dict[str, Any]) -> Iterator[tuple[str, Any]]:
        p = self._prefix
        if not p:
            return iter(data.items())
        n = len(p)
        return ((k[n:], v) for k, v in data.items() if k.startswith(p))

    # ------------------------------------------------------ mapping protocol
    def __getitem__(self, key: Any) -> Any:
        r = self._read(self._key(key))
        if r is MISSING:
            raise KeyError(key)
        return r[0]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: Any) -> None:
        full = self._key(key)
        e = self._e
        e._enter()
        try:
            if e.lookup(full) is MISSING:
                raise KeyError(key)
            ticket = e._stage(full, ("d",))
        finally:
            e._exit()
        e.after_write(ticket)

    def __contains__(self, key: object) -> bool:
        return self._read(self._key(key)) is not MISSING

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        if not self._prefix:
            return self._e.count()
        data, _exp = self._e.live_items()
        return sum(1 for _ in self._own(data))

    # ------------------------------------------------------------ core calls
    def set(self, key: Any, value: Any, *, ttl: float | None = None) -> None:
        full = self._wkey(key)
        entry = _rules.set_entry(self._e.codec, value, optional_expiry(ttl))
        self._write(full, entry)

    def get(self, key: Any, default: Any = None) -> Any:
        r = self._read(self._key(key))
        return default if r is MISSING else r[0]

    def pop(self, key: Any, default: Any = _NO_DEFAULT) -> Any:
        full = self._key(key)
        e = self._e
        e._enter()
        try:
            r = e.lookup(full)
            if r is MISSING:
                if default is _NO_DEFAULT:
                    raise KeyError(key)
                return default
            ticket = e._stage(full, ("d",))
        finally:
            e._exit()
        e.after_write(ticket)
        return r[0]

    def popitem(self) -> tuple[str, Any]:
        """Remove and return the oldest item, in one step (the mapping
        protocol's default reads and deletes in two, so two threads could
        pop the same item)."""
        e = self._e
        e._enter()
        try:
            data, _exp = e.live_items()
            p = self._prefix
            for full, value in data.items():
                if full.startswith(p):
                    break
            else:
                raise KeyError("popitem(): the store is empty")
            ticket = e._stage(full, ("d",))
        finally:
            e._exit()
        e.after_write(ticket)
        return full[len(p):], value

    def setdefault(self, key: Any, default: Any = None) -> Any:
        full = self._wkey(key)
        e = self._e
        e._enter()
        try:
            r = e.lookup(full)
            if r is not MISSING:
                return r[0]
            held, enc, exact = e.codec.prepare(default)
            ticket = e._stage(full, ("s", held, enc, exact, None))
        finally:
            e._exit()
        e.after_write(ticket)
        return held

    def _set_many(self, pairs: Iterable[tuple[Any, Any]], exp: float | None) -> None:
        e = self._e
        prepare = e.codec.prepare
        staged: dict[str, tuple] = {}
        for key, value in pairs:  # check and encode everything first: all or nothing
            full = self._wkey(key)
            held, enc, exact = prepare(value)
            staged[full] = ("s", held, enc, exact, exp)
        if not staged:
            e._ensure_open()
            return
        e._enter()
        try:
            ticket = e._stage_many(list(staged.items()))
        finally:
            e._exit()
        e.after_write(ticket)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:  # type: ignore[override]
        self._set_many(_rules.pairs_of(other, kwargs), None)

    def mset(self, mapping: Mapping[Any, Any], *, ttl: float | None = None) -> None:
        self._set_many(list(mapping.items()), optional_expiry(ttl))

    def mget(self, keys: Iterable[Any], default: Any = None) -> list[Any]:
        found = self._e.lookup_many([self._key(k) for k in keys])
        return [default if r is MISSING else r[0] for r in found]

    def clear(self) -> None:  # type: ignore[override]
        e = self._e
        if not self._prefix:
            e._enter()
            try:
                ticket = e._stage(None, ("c",))
            finally:
                e._exit()
            e.after_write(ticket)
            return
        e._enter()  # a view deletes its own keys, in one record
        try:
            data, _exp = e.live_items()
            mine = [(k, ("d",)) for k in data if k.startswith(self._prefix)]
            ticket = e._stage_many(mine) if mine else 0
        finally:
            e._exit()
        e.after_write(ticket)

    def _entries(self) -> list[tuple[str, Any, float | None]]:
        """``(key, value, expires_at)`` of every live key: what moving a store
        to another engine copies (see _convert)."""
        data, exp = self._e.live_items()
        n = len(self._prefix)
        return [(k[n:], v, exp.get(k)) for k, v in data.items() if k.startswith(self._prefix)]

    def exists(self, key: Any) -> bool:
        return self._read(self._key(key)) is not MISSING

    def copy(self) -> dict[str, Any]:
        data, _exp = self._e.live_items()
        return dict(self._own(data))

    def keys(self) -> list[str]:  # type: ignore[override]
        data, _exp = self._e.live_items()
        return [k for k, _v in self._own(data)]

    def values(self) -> list[Any]:  # type: ignore[override]
        data, _exp = self._e.live_items()
        return [v for _k, v in self._own(data)]

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        data, _exp = self._e.live_items()
        return list(self._own(data))

    # ------------------------------------------------------ numeric and lists
    def incr(self, key: Any, amount: int | float = 1, *, ttl: float | None = None) -> int | float:
        _rules.check_amount(amount)
        e = self._e
        out: list[Any] = []
        full = self._wkey(key)
        change = _rules.incr_change(key, amount, optional_expiry(ttl), e.codec, out)
        e.after_write(e.modify_one(full, change))
        return out[-1]

    def _change_list(self, key: Any, edit: Callable[[list[Any]], list[Any]], ttl: float | None,
                     *, must_exist: bool = False) -> list[Any]:
        e = self._e
        # remove() never creates the key: a key that cannot be stored is just missing
        full = self._key(key) if must_exist else self._wkey(key)
        out: list[Any] = []
        change = _rules.list_change(key, edit, optional_expiry(ttl), e.codec, out,
                                    must_exist=must_exist)
        e.after_write(e.modify_one(full, change))
        # A copy: changing the returned list must not change the store unlogged.
        return list(out[-1])

    def append(self, key: Any, value: Any, *, unique: bool = False,
               ttl: float | None = None) -> list[Any]:
        return self._change_list(key, _rules.appending(value, unique), ttl)

    def extend(self, key: Any, values: Iterable[Any], *, unique: bool = False,
               ttl: float | None = None) -> list[Any]:
        return self._change_list(key, _rules.extending(values, unique), ttl)

    def remove(self, key: Any, value: Any, *, all_occurrences: bool = False) -> list[Any]:
        return self._change_list(key, _rules.removing(value, all_occurrences), None,
                                 must_exist=True)

    # ------------------------------------------------------------------ TTL
    def expire(self, key: Any, ttl: float) -> None:
        exp = _rules.expiry(ttl)
        full = self._key(key)
        e = self._e
        e._enter()
        try:
            if e.lookup(full) is MISSING:
                raise KeyError(key)
            ticket = e._stage(full, ("e", exp))
        finally:
            e._exit()
        e.after_write(ticket)

    def ttl(self, key: Any) -> float | None:
        r = self._read(self._key(key))
        if r is MISSING:
            raise KeyError(key)
        return _rules.remaining(key, r[1])

    def persist(self, key: Any) -> None:
        full = self._key(key)
        e = self._e
        e._enter()
        try:
            r = e.lookup(full)
            if r is MISSING:
                raise KeyError(key)
            ticket = e._stage(full, ("e", None)) if r[1] is not None else 0
        finally:
            e._exit()
        e.after_write(ticket)

    def touch(self, key: Any, ttl: float | None = None) -> None:
        full = self._key(key)
        e = self._e
        e._enter()
        try:
            if e.lookup(full) is MISSING:
                raise KeyError(key)  # checked before ttl, as aiodict does
            if ttl is None:
                ticket = 0  # nothing changes: the expiry stays where it is
            else:
                ticket = e._stage(full, ("e", _rules.expiry(ttl)))
        finally:
            e._exit()
        e.after_write(ticket)

    def cleanup_expired(self) -> int:
        """Forget expired keys in memory; returns how many. (They are already
        invisible; compaction drops them from disk.)"""
        e = self._e
        e.check()
        e.take_lock()
        try:
            return e.drop_expired(self._prefix)
        finally:
            e.lock.release()

    # ------------------------------------------------------------ the store
    def stats(self) -> dict[str, Any]:
        e = self._e
        data, exp = e.live_items()
        if self._prefix:
            keys = [k for k in data if k.startswith(self._prefix)]
            ttl_keys = sum(1 for k in keys if k in exp)
            nkeys = len(keys)
        else:
            nkeys, ttl_keys = len(data), len(exp)
        figures = e.stats()
        out = {
            "keys": nkeys,
            "ttl_keys": ttl_keys,
            "autosave": e.autosave,
            "autosave_delay": e.autosave_delay,
            "file_path": self._file_path(),
            "file_size_bytes": figures.pop("file_size_bytes"),
            "dirty": figures.pop("dirty"),
        }
        out.update(figures)
        return out

    def _file_path(self) -> str:
        raise NotImplementedError  # both concrete classes define it

    def flush(self) -> None:
        self._e.flush()

    def reload(self) -> None:
        self._e.reload()

    def compact(self) -> None:
        """Fold the log into the snapshot now (waits for a compaction another
        process is running, then runs its own)."""
        self._e.compact()

    def close(self) -> None:
        self._e.close()

    def __enter__(self) -> Any:
        self._e._ensure_open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """Group writes into one log record: all or nothing, even after a crash.

        The block sees its own writes; other threads and processes see none of
        them until it ends. If it raises, its changes are dropped. Nested
        blocks join the outer one (a nested block that raises undoes itself).
        """
        with self._e.transaction():
            yield self

    def namespace(self, prefix: str, separator: str = ":") -> "NamespaceView":
        return NamespaceView(self._e, f"{self._prefix}{prefix}{separator}", self)


class LogKV(_API):
    """A persistent dictionary: every change is one append to a checksummed
    log; reads come from memory. See the README for the full story."""

    def __init__(self, path: str | os.PathLike[str] = "db.json", *, autosave: bool = True,
                 autosave_delay: float = 0.35, create_backup: bool = True,
                 serializer: Callable[[Any], Any] | None = None,
                 deserializer: Callable[[Any], Any] | None = None, indent: int | None = None,
                 sort_keys: bool = False, cleanup_expired_on_load: bool = True,
                 lock_timeout: float | None = 10.0, encoding: str = "utf-8",
                 durability: str = "interval", compact_on_close: bool = True,
                 read_only: bool = False, auto_compact: bool = True,
                 auto_compact_min_size: int = 4 << 20, auto_compact_percentage: int = 100,
                 recovery: str = "tolerate_tail", mode: int | None = None,
                 _fs: FileSystem | None = None) -> None:
        if encoding.replace("-", "").replace("_", "").lower() != "utf8":
            # JSON text exchanged between programs is UTF-8 (RFC 8259 §8.1).
            raise ValueError("logkv stores UTF-8 only (encoding='utf-8')")
        if indent is not None and (isinstance(indent, bool) or not isinstance(indent, int)):
            raise TypeError("indent must be an int or None")
        self._given_path = os.fspath(path)
        self._prefix = ""
        self.encoding = encoding
        self._e = Engine(os.path.abspath(self._given_path),
                         codec=ValueCodec(serializer, deserializer), autosave=autosave,
                         autosave_delay=autosave_delay, durability=durability,
                         create_backup=create_backup, compact_on_close=compact_on_close,
                         cleanup_expired_on_load=cleanup_expired_on_load,
                         lock_timeout=lock_timeout, indent=indent, sort_keys=sort_keys,
                         read_only=read_only, auto_compact=auto_compact,
                         auto_compact_min_size=auto_compact_min_size,
                         auto_compact_percentage=auto_compact_percentage, recovery=recovery,
                         fs=_fs, mode=mode)

    @property
    def path(self) -> str:
        return self._given_path

    def _file_path(self) -> str:
        return self._given_path

    def __repr__(self) -> str:
        try:
            size: Any = len(self)
        except Exception:
            size = "closed"
        return f"LogKV(path={self._given_path!r}, size={size})"

    # The hot paths, written out without the prefix machinery (CONTRACT §6).
    def __getitem__(self, key: Any) -> Any:
        v = self.get(key, MISSING)
        if v is MISSING:
            raise KeyError(key if type(key) is str else str(key))
        return v

    def get(self, key: Any, default: Any = None) -> Any:
        e = self._e
        w = e._words
        if w[_W_SEQ] != e._shm_seen or w[_W_GEN] != e.log_gen:
            e.catch_up()
        if type(key) is not str:
            key = str(key)
        if e._tx is None:
            g = e._wgen
            v = e.data.get(key, MISSING)
            if v is not MISSING and not (g & 1) and g == e._wgen:
                exp = e.exp
                if not exp or key not in exp or exp[key] > time.time():
                    return v
        r = e.lookup(key)
        return default if r is MISSING else r[0]

    def set(self, key: Any, value: Any, *, ttl: float | None = None) -> None:
        if type(key) is not str:
            key = str(key)
        if not key.isascii():
            check_key(key)
        exp = None if ttl is None else _rules.expiry(ttl)
        e = self._e
        held, enc, exact = e.codec.prepare(value)
        ticket = e.write_one(key, ("s", held, enc, exact, exp))
        if ticket:
            e.after_write(ticket)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.set(key, value)


class NamespaceView(_API):
    """The keys of a store that start with ``prefix + separator``, with the
    store's whole method set. flush/reload/compact/close act on the store."""

    def __init__(self, engine: Engine, prefix: str, parent: _API) -> None:
        self._e = engine
        self._prefix = prefix
        self._parent = parent

    @property
    def prefix(self) -> str:
        return self._prefix

    def _file_path(self) -> str:
        return self._parent._file_path()

    def __repr__(self) -> str:
        return f"NamespaceView(prefix={self._prefix!r}, size={len(self)})"
