"""``RedisKV`` and ``AsyncRedisKV``: logkv's API on a real Redis server.

One core, two drivers. Every method is written once, as a generator in
``_Ops``: it yields *requests* (a command, an atomic MULTI/EXEC batch, a
pipelined batch, a WATCH) and receives the server's replies. It never does
I/O itself, so the same code runs under the blocking driver (``RedisKV``,
redis-py's ``Redis``) and under the asyncio driver (``AsyncRedisKV``,
``redis.asyncio``). What a call means -- argument checks, the incr and list
edits, the errors -- comes from ``_rules``, which ``LogKV`` uses too.

Storage: each key is one Redis string key ``prefix + key`` holding the
value's JSON text (so a JSON integer is a Redis integer, and ``incr`` can be
``INCRBY``). Expiry is native Redis expiry (``PXAT``, ``PEXPIREAT``,
``PTTL``, ``KEEPTTL``), never emulated.

Atomicity: single-key calls are one command (``GETDEL``, ``DEL``,
``PEXPIREAT``) or one Lua script (``incr``, ``setdefault``); the other
read-modify-writes (list helpers, float ``incr``) are optimistic:
WATCH, read, compute in Python, MULTI/EXEC, retried when another client got
there first. ``transaction()`` buffers the block's writes, WATCHes every key
the block reads, and commits the writes as one MULTI/EXEC; if a watched key
changed meanwhile nothing is written and ``TransactionConflict`` is raised.

``redis`` (redis-py) is imported only when a Redis store is created.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, AsyncIterator, Callable, Generator
from urllib.parse import urlsplit, urlunsplit

import orjson

from . import _rules
from ._aio import _OpenMethod
from ._errors import ClosedError, CorruptionError, LogKVError, TransactionConflict
from ._record import ValueCodec
from ._rules import MISSING, NO_DEFAULT, optional_expiry

__all__ = ["AsyncRedisKV", "RedisKV"]

# Requests an operation yields to its driver, and what the driver sends back.
CMD = "cmd"          # (CMD, args): one command -> its reply
ATOMIC = "atomic"    # (ATOMIC, [args, ...]): MULTI/EXEC -> list of replies, or CONFLICT
BATCH = "batch"      # (BATCH, [args, ...]): pipelined, not atomic -> list of replies
WATCH = "watch"      # (WATCH, keys): WATCH on the operation's own connection -> None
CONFLICT: Any = type("Conflict", (), {"__repr__": lambda self: "CONFLICT"})()
# An entry's expiry meaning "leave the key's expiry as the server has it".
KEEP: Any = type("Keep", (), {"__repr__": lambda self: "KEEP"})()

Op = Generator[tuple, Any, Any]
MIN_VERSION = (6, 2)  # GETDEL, SET ... PXAT / KEEPTTL
CHUNK = 1000
_LONG_DIGITS = re.compile(rb"\d{19}")  # may hold an integer orjson would round
_GLOB = re.compile(r"([*?\[\]\\])")

# incr on a JSON integer: INCRBY, plus the expiry when ttl= is given, in one
# step. Anything INCRBY refuses (a float, a list, a 65-bit result) returns
# nil and the caller takes the general read-modify-write path.
_INCR_SCRIPT = """
local n = redis.pcall('INCRBY', KEYS[1], ARGV[1])
if type(n) == 'table' and n.err then return false end
if ARGV[2] ~= '' then redis.call('PEXPIREAT', KEYS[1], ARGV[2]) end
return n
"""
# Each key's value and absolute expiry (ms; -1 for none), read together so a
# key that expires meanwhile is not taken for a permanent one. Redis 7 has
# PEXPIRETIME; before it, PTTL is read between two TIME calls that fall in
# the same millisecond, so that now + PTTL is exact.
_ENTRIES_SCRIPT = """
local out = {}
for _, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  local at = -1
  if v then
    if ARGV[1] == '1' then
      at = redis.call('PEXPIRETIME', k)
    else
      local t, p, u
      repeat
        t = redis.call('TIME'); p = redis.call('PTTL', k); u = redis.call('TIME')
      until t[1] == u[1] and math.floor(t[2] / 1000) == math.floor(u[2] / 1000)
      if p >= 0 then at = tonumber(t[1]) * 1000 + math.floor(t[2] / 1000) + p
      elseif p == -2 then v = false end
    end
    if at == -2 then v = false end
  end
  out[#out + 1] = v
  out[#out + 1] = at
end
return out
"""
_SETDEFAULT_SCRIPT = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1])
return false
"""


def _ms(exp: float) -> int:
    # Down, not to the nearest: ttl() must never read more than was given.
    return int(exp * 1000)


def _commands(full: str, entry: tuple) -> list[tuple]:
    """The commands that write one entry."""
    kind = entry[0]
    if kind == "s":
        exp = entry[4]
        if exp is None:
            return [("SET", full, entry[2])]
        if exp is KEEP:
            return [("SET", full, entry[2], "KEEPTTL")]
        return [("SET", full, entry[2], "PXAT", _ms(exp))]
    if kind == "d":
        return [("DEL", full)]
    exp = entry[1]
    if exp is None:
        return [("PERSIST", full)]
    return [("PEXPIREAT", full, _ms(exp))]


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for i in range(0, len(items), CHUNK):
        yield items[i:i + CHUNK]


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class _Session:
    """The connection an operation WATCHes on (a redis-py pipeline in watch
    mode), held from its first WATCH to its MULTI/EXEC."""

    __slots__ = ("pipe",)

    def __init__(self) -> None:
        self.pipe: Any = None


class _Tx:
    """An open ``transaction()`` block: its staged writes (the last entry per
    key) and the session whose WATCHes guard what it read."""

    __slots__ = ("staged", "session")

    def __init__(self) -> None:
        self.staged: dict[str, tuple] = {}
        self.session = _Session()

    def stage(self, full: str, entry: tuple) -> None:
        old = self.staged.get(full)
        if entry[0] == "e" and old is not None and old[0] == "s":
            self.staged[full] = old[:4] + (entry[1],)  # a new expiry for a staged value
        else:
            self.staged[full] = entry


# The open transactions of the current thread or task: ((root, _Tx), ...).
_TXS: contextvars.ContextVar[tuple] = contextvars.ContextVar("logkv_redis_tx", default=())


def _tx_of(root: "_Root") -> _Tx | None:
    for r, tx in _TXS.get():
        if r is root:
            return tx
    return None


class _Root:
    """What a store and all its namespace views share."""

    __slots__ = ("client", "url", "owns_client", "closed", "codec", "version", "__weakref__")

    def __init__(self, client: Any, url: str, owns_client: bool, codec: ValueCodec) -> None:
        self.client = client
        self.url = url
        self.owns_client = owns_client
        self.closed = False
        self.codec = codec
        self.version: tuple[int, ...] | None = None


class _Ops:
    """Every method of the API, once, as a generator of requests."""

    _root: _Root
    _prefix: str

    # ------------------------------------------------------------ helpers
    def _full(self, key: Any) -> str:
        return self._prefix + (key if type(key) is str else str(key))

    def _decode(self, full: str, raw: bytes) -> Any:
        try:
            value = json.loads(raw) if _LONG_DIGITS.search(raw) else orjson.loads(raw)
        except (ValueError, RecursionError):
            raise CorruptionError(f"the value of {full!r} in Redis is not JSON text",
                                  path=_masked(self._root.url)) from None
        deser = self._root.codec.deserializer
        return value if deser is None else deser(value)

    def _entry_value(self, full: str, entry: tuple) -> Any:
        # A staged value reads back as the server would return it.
        return self._decode(full, entry[2])

    def _op_hello(self) -> Op:
        info = yield (CMD, ("INFO", "server"))
        text = str(info.get("redis_version", "0"))
        version = tuple(int(p) for p in re.findall(r"\d+", text)[:3])
        if version[:2] < MIN_VERSION:
            raise LogKVError(f"RedisKV needs Redis {MIN_VERSION[0]}.{MIN_VERSION[1]} or newer; "
                             f"the server at {_masked(self._root.url)} is {text}")
        self._root.version = version
        return version

    # ---------------------------------------------------------- primitives
    def _read(self, full: str) -> Op:
        """``(value, expires_at)`` or MISSING; in a transaction, through its
        staged writes, and WATCHed. ``expires_at`` is KEEP when unknown."""
        tx = _tx_of(self._root)
        exp: Any = KEEP
        if tx is not None:
            entry = tx.staged.get(full)
            if entry is not None:
                kind = entry[0]
                if kind == "d":
                    return MISSING
                exp = entry[4] if kind == "s" else entry[1]
                if exp not in (None, KEEP) and exp <= time.time():
                    return MISSING
                if kind == "s":
                    return (self._entry_value(full, entry), exp)
            yield (WATCH, (full,))
        raw = yield (CMD, ("GET", full))
        return MISSING if raw is None else (self._decode(full, raw), exp)

    def _read_many(self, fulls: list[str]) -> Op:
        tx = _tx_of(self._root)
        if tx is not None:
            out = []
            for full in fulls:
                out.append((yield from self._read(full)))
            return out
        out = []
        for chunk in _chunks(fulls):
            raws = yield (CMD, ("MGET", *chunk))
            out.extend(MISSING if raw is None else (self._decode(full, raw), KEEP)
                       for full, raw in zip(chunk, raws))
        return out

    def _write(self, items: list[tuple[str, tuple]]) -> Op:
        """Write entries: staged in a transaction, else one MULTI/EXEC."""
        tx = _tx_of(self._root)
        if tx is not None:
            for full, entry in items:
                tx.stage(full, entry)
            return
        if len(items) == 1:
            cmds = _commands(*items[0])
            if len(cmds) == 1:
                yield (CMD, cmds[0])
                return
        yield (ATOMIC, [c for full, entry in items for c in _commands(full, entry)])

    def _modify(self, full: str, change: Callable[[Any], tuple | None]) -> Op:
        """Atomic read-modify-write of one key: ``change`` gets the current
        ``(value, expires_at)`` or MISSING and returns the entry to write (or
        None). Optimistic: retried while another client changes the key."""
        tx = _tx_of(self._root)
        if tx is not None:
            entry = change((yield from self._read(full)))
            if entry is not None:
                tx.stage(full, entry)
            return entry
        while True:
            yield (WATCH, (full,))
            raw = yield (CMD, ("GET", full))
            entry = change(MISSING if raw is None else (self._decode(full, raw), KEEP))
            if entry is None:
                return None
            if (yield (ATOMIC, _commands(full, entry))) is not CONFLICT:
                return entry

    def _take(self, full: str) -> Op:
        """Delete a key and return what it held (MISSING if nothing)."""
        tx = _tx_of(self._root)
        if tx is not None:
            r = yield from self._read(full)
            if r is not MISSING:
                tx.stage(full, ("d",))
            return r
        raw = yield (CMD, ("GETDEL", full))
        return MISSING if raw is None else (self._decode(full, raw), KEEP)

    def _live_fulls(self) -> Op:
        """Every full key under the prefix (SCAN), with a transaction's own
        writes folded in."""
        pattern = _GLOB.sub(r"\\\1", self._prefix) + "*"
        found: dict[str, None] = {}
        cursor = 0
        while True:
            cursor, batch = yield (CMD, ("SCAN", cursor, "MATCH", pattern, "COUNT", CHUNK))
            for k in batch:
                found[k.decode("utf-8")] = None  # SCAN may repeat a key
            if not int(cursor):
                break
        tx = _tx_of(self._root)
        if tx is not None:
            now = time.time()
            for full, entry in tx.staged.items():
                if not full.startswith(self._prefix):
                    continue
                if entry[0] == "d" or (entry[0] == "s" and entry[4] not in (None, KEEP)
                                       and entry[4] <= now):
                    found.pop(full, None)
                elif entry[0] == "s":
                    found[full] = None
        return list(found)

    def _live_items(self) -> Op:
        fulls = yield from self._live_fulls()
        found = yield from self._read_many(fulls)
        n = len(self._prefix)
        return [(full[n:], r[0]) for full, r in zip(fulls, found) if r is not MISSING]

    # ------------------------------------------------------ mapping protocol
    def _op_getitem(self, key: Any) -> Op:
        r = yield from self._read(self._full(key))
        if r is MISSING:
            raise KeyError(key)
        return r[0]

    def _op_setitem(self, key: Any, value: Any) -> Op:
        return (yield from self._op_set(key, value))

    def _op_delitem(self, key: Any) -> Op:
        full = self._full(key)
        if _tx_of(self._root) is None:
            if not (yield (CMD, ("DEL", full))):
                raise KeyError(key)
            return None
        if (yield from self._take(full)) is MISSING:
            raise KeyError(key)
        return None

    def _op_contains(self, key: Any) -> Op:
        full = self._full(key)
        if _tx_of(self._root) is None:
            return bool((yield (CMD, ("EXISTS", full))))
        return (yield from self._read(full)) is not MISSING

    def _op_len(self) -> Op:
        # SCAN, not DBSIZE: DBSIZE counts expired keys the server has not
        # reclaimed yet, which no read would return.
        return len((yield from self._live_fulls()))

    # ------------------------------------------------------------ core calls
    def _op_set(self, key: Any, value: Any, *, ttl: float | None = None) -> Op:
        entry = _rules.set_entry(self._root.codec, value, optional_expiry(ttl))
        yield from self._write([(self._full(key), entry)])

    def _op_get(self, key: Any, default: Any = None) -> Op:
        r = yield from self._read(self._full(key))
        return default if r is MISSING else r[0]

    def _op_pop(self, key: Any, default: Any = NO_DEFAULT) -> Op:
        r = yield from self._take(self._full(key))
        if r is MISSING:
            if default is NO_DEFAULT:
                raise KeyError(key)
            return default
        return r[0]

    def _op_popitem(self) -> Op:
        n = len(self._prefix)
        for full in (yield from self._live_fulls()):
            r = yield from self._take(full)
            if r is not MISSING:  # another client may have taken it first
                return (full[n:], r[0])
        raise KeyError("popitem(): the store is empty")

    def _op_setdefault(self, key: Any, default: Any = None) -> Op:
        full = self._full(key)
        codec = self._root.codec
        if _tx_of(self._root) is not None:
            r = yield from self._read(full)
            if r is not MISSING:
                return r[0]
            entry = _rules.set_entry(codec, default, None)
            yield from self._write([(full, entry)])
            return entry[1]
        held, enc, _exact = codec.prepare(default)
        raw = yield (CMD, ("EVAL", _SETDEFAULT_SCRIPT, 1, full, enc))
        return held if raw is None else self._decode(full, raw)

    def _write_pairs(self, pairs: list[tuple[Any, Any]], exp: float | None) -> Op:
        codec = self._root.codec
        staged: dict[str, tuple] = {}
        for key, value in pairs:  # encode everything first: all or nothing
            staged[self._full(key)] = _rules.set_entry(codec, value, exp)
        if staged:
            yield from self._write(list(staged.items()))

    def _op_entries(self) -> Op:
        """``(key, value, expires_at)`` of every live key (see _convert)."""
        fulls = yield from self._live_fulls()
        out = []
        n = len(self._prefix)
        has_expiretime = "1" if (self._root.version or (0,)) >= (7,) else "0"
        for chunk in _chunks(fulls):
            replies = yield (CMD, ("EVAL", _ENTRIES_SCRIPT, len(chunk), *chunk, has_expiretime))
            for full, raw, ms in zip(chunk, replies[::2], replies[1::2]):
                if raw:  # nil (false) when the key went away meanwhile
                    exp = None if ms < 0 else ms / 1000.0
                    out.append((full[n:], self._decode(full, raw), exp))
        return out

    def _op_update(self, other: Any = (), /, **kwargs: Any) -> Op:
        yield from self._write_pairs(_rules.pairs_of(other, kwargs), None)

    def _op_mset(self, mapping: Mapping[Any, Any], *, ttl: float | None = None) -> Op:
        yield from self._write_pairs(list(mapping.items()), optional_expiry(ttl))

    def _op_mget(self, keys: Iterable[Any], default: Any = None) -> Op:
        found = yield from self._read_many([self._full(k) for k in keys])
        return [default if r is MISSING else r[0] for r in found]

    def _op_clear(self) -> Op:
        fulls = yield from self._live_fulls()
        tx = _tx_of(self._root)
        if tx is not None:
            for full in fulls:
                tx.stage(full, ("d",))
            return
        for chunk in _chunks(fulls):
            yield (CMD, ("UNLINK", *chunk))

    def _op_exists(self, key: Any) -> Op:
        return (yield from self._op_contains(key))

    def _op_copy(self) -> Op:
        return dict((yield from self._live_items()))

    def _op_keys(self) -> Op:
        n = len(self._prefix)
        return [full[n:] for full in (yield from self._live_fulls())]

    def _op_values(self) -> Op:
        return [v for _k, v in (yield from self._live_items())]

    def _op_items(self) -> Op:
        return (yield from self._live_items())

    # ------------------------------------------------------ numeric and lists
    def _op_incr(self, key: Any, amount: int | float = 1, *, ttl: float | None = None) -> Op:
        _rules.check_amount(amount)
        exp = optional_expiry(ttl)
        full = self._full(key)
        root = self._root
        if (_tx_of(root) is None and type(amount) is int and -(1 << 63) <= amount < (1 << 63)
                and root.codec.deserializer is None):
            n = yield (CMD, ("EVAL", _INCR_SCRIPT, 1, full, amount,
                             "" if exp is None else _ms(exp)))
            if n is not None:
                return int(n)
        out: list[Any] = []
        yield from self._modify(full, _rules.incr_change(key, amount, exp, root.codec, out))
        return out[-1]

    def _change_list(self, key: Any, edit: Callable[[list[Any]], list[Any]],
                     ttl: float | None, *, must_exist: bool = False) -> Op:
        out: list[Any] = []
        change = _rules.list_change(key, edit, optional_expiry(ttl), self._root.codec, out,
                                    must_exist=must_exist)
        yield from self._modify(self._full(key), change)
        return list(out[-1])

    def _op_append(self, key: Any, value: Any, *, unique: bool = False,
                   ttl: float | None = None) -> Op:
        return (yield from self._change_list(key, _rules.appending(value, unique), ttl))

    def _op_extend(self, key: Any, values: Iterable[Any], *, unique: bool = False,
                   ttl: float | None = None) -> Op:
        return (yield from self._change_list(key, _rules.extending(values, unique), ttl))

    def _op_remove(self, key: Any, value: Any, *, all_occurrences: bool = False) -> Op:
        return (yield from self._change_list(key, _rules.removing(value, all_occurrences), None,
                                             must_exist=True))

    # ------------------------------------------------------------------ TTL
    def _set_expiry(self, key: Any, exp: float | None) -> Op:
        """Give an existing key a new expiry (None: none); KeyError if missing."""
        full = self._full(key)
        if _tx_of(self._root) is not None:
            if (yield from self._read(full)) is MISSING:
                raise KeyError(key)
            yield from self._write([(full, ("e", exp))])
            return
        if exp is None:
            exists, _ = yield (ATOMIC, [("EXISTS", full), ("PERSIST", full)])
        else:
            exists = yield (CMD, ("PEXPIREAT", full, _ms(exp)))
        if not exists:
            raise KeyError(key)

    def _op_expire(self, key: Any, ttl: float) -> Op:
        yield from self._set_expiry(key, _rules.expiry(ttl))

    def _op_ttl(self, key: Any) -> Op:
        full = self._full(key)
        tx = _tx_of(self._root)
        if tx is not None:
            r = yield from self._read(full)
            if r is MISSING:
                raise KeyError(key)
            if r[1] is not KEEP:
                return _rules.remaining(key, r[1])
        ms = yield (CMD, ("PTTL", full))
        if ms == -2:
            raise KeyError(key)
        return None if ms == -1 else max(ms, 1) / 1000.0

    def _op_persist(self, key: Any) -> Op:
        yield from self._set_expiry(key, None)

    def _op_touch(self, key: Any, ttl: float | None = None) -> Op:
        if not (yield from self._op_contains(key)):
            raise KeyError(key)  # checked before ttl, as LogKV does
        if ttl is not None:
            yield from self._set_expiry(key, _rules.expiry(ttl))

    def _op_cleanup_expired(self) -> Op:
        # Redis deletes expired keys itself; none is ever visible to remove.
        yield from ()
        return 0

    # ------------------------------------------------------------ the store
    def _op_stats(self) -> Op:
        fulls = yield from self._live_fulls()
        ttl_keys = 0
        for chunk in _chunks(fulls):
            ttl_keys += sum(1 for ms in (yield (BATCH, [("PTTL", f) for f in chunk])) if ms >= 0)
        info = yield (CMD, ("INFO", "persistence"))
        appendonly = bool(info.get("aof_enabled"))
        try:
            reply = yield (CMD, ("CONFIG", "GET", "appendfsync"))
            pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2])
            fsync = next((v.decode() for _k, v in pairs), "unknown")
        except Exception:  # CONFIG is often disabled on managed servers
            fsync = "unknown"
        root = self._root
        return {
            "keys": len(fulls),
            "ttl_keys": ttl_keys,
            "autosave": True,
            "autosave_delay": 0.0,
            "file_path": None,
            "file_size_bytes": info.get("aof_current_size") if appendonly else None,
            "dirty": None if not appendonly or fsync != "always" else False,
            "engine": "redis",
            "url": _masked(root.url),
            "prefix": self._prefix,
            "redis_version": ".".join(map(str, root.version or ())),
            "appendonly": appendonly,
            "appendfsync": fsync,
            "aof_rewrite_in_progress": bool(info.get("aof_rewrite_in_progress")),
        }

    def _op_flush(self) -> Op:
        # Every call already waited for the server's reply, so there is
        # nothing left to send; the round trip checks the server is there.
        # When a write reaches the disk is the server's appendfsync setting
        # (README). WAITAOF cannot stand in: it waits only for the writes of
        # the connection it is sent on, and RedisKV's calls use a pool.
        yield (CMD, ("PING",))

    def _op_reload(self) -> Op:
        # Nothing is cached: every read already comes from the server.
        yield (CMD, ("PING",))

    def _op_compact(self) -> Op:
        # The server's own compaction: rewrite the append-only file.
        try:
            yield (CMD, ("BGREWRITEAOF",))
        except Exception as exc:
            if "already in progress" not in str(exc):
                raise

    def _op_commit(self, tx: _Tx) -> Op:
        cmds = [c for full, entry in tx.staged.items() for c in _commands(full, entry)]
        if not cmds:
            return
        if (yield (ATOMIC, cmds)) is CONFLICT:
            raise TransactionConflict("a key this transaction read was changed by another "
                                      "client before it committed; nothing was written")


# ====================================================================
# The two drivers: the only code that talks to the server.
# ====================================================================
def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError('RedisKV needs redis-py: pip install redis (or pip install ".[redis]" '
                          "in logkv's source folder)") from None
    return redis


def _io(root: _Root, gen: Op, tx: _Tx | None) -> Generator[tuple, Any, Any]:
    """Run the operation ``gen``: carry out its requests on the client, as a
    generator of the client calls that do I/O (``(function, args)``). The
    blocking runner calls them, the asyncio runner awaits them; everything
    else about talking to the server is here, once."""
    if root.closed:
        gen.close()
        raise ClosedError("the store is closed")
    redis = _import_redis()
    client = root.client
    session = tx.session if tx is not None else _Session()
    reply: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                req = gen.throw(error) if error is not None else gen.send(reply)
            except StopIteration as stop:
                return stop.value
            error = None
            kind, arg = req
            try:
                if kind is CMD:
                    reply = yield (session.pipe or client).execute_command, arg
                elif kind is WATCH:
                    if session.pipe is None:
                        session.pipe = client.pipeline(transaction=True)
                    yield session.pipe.watch, arg
                    reply = None
                elif kind is ATOMIC:
                    pipe, session.pipe = session.pipe, None
                    if pipe is None:
                        pipe = client.pipeline(transaction=True)
                    else:
                        pipe.multi()  # the WATCHes stay in force until EXEC
                    for args in arg:
                        pipe.execute_command(*args)
                    try:
                        reply = yield pipe.execute, ()
                    except redis.WatchError:
                        reply = CONFLICT
                else:  # BATCH
                    pipe = client.pipeline(transaction=False)
                    for args in arg:
                        pipe.execute_command(*args)
                    reply = yield pipe.execute, ()
            except redis.ResponseError as exc:
                error = exc  # the operation decides what a refusal means
    finally:
        gen.close()
        if tx is None and session.pipe is not None:
            yield session.pipe.reset, ()


def _run_blocking(root: _Root, gen: Op, tx: _Tx | None) -> Any:
    io = _io(root, gen, tx)
    try:
        fn, args = next(io)
        while True:
            try:
                result = fn(*args)
            except BaseException as exc:
                fn, args = io.throw(exc)
            else:
                fn, args = io.send(result)
    except StopIteration as stop:
        return stop.value


async def _run_async(root: _Root, gen: Op, tx: _Tx | None) -> Any:
    io = _io(root, gen, tx)
    try:
        fn, args = next(io)
        while True:
            try:
                result = await fn(*args)
            except BaseException as exc:
                fn, args = io.throw(exc)
            else:
                fn, args = io.send(result)
    except StopIteration as stop:
        return stop.value


# ====================================================================
# The public classes: each method runs its _Ops generator in a driver.
# ====================================================================
_METHODS = ("get", "set", "pop", "popitem", "setdefault", "update", "mset", "mget", "clear",
            "exists", "copy", "keys", "values", "items", "incr", "append", "extend", "remove",
            "expire", "ttl", "persist", "touch", "cleanup_expired", "stats", "flush", "reload",
            "compact")
# The mapping protocol's async names, as AsyncLogKV has them.
_PROTOCOL = ("getitem", "setitem", "delitem", "contains", "len")


def _sync_method(name: str, op_name: str) -> Callable[..., Any]:
    op = getattr(_Ops, "_op_" + op_name)

    @functools.wraps(op)
    def method(self: "_RedisBase", *args: Any, **kwargs: Any) -> Any:
        return _run_blocking(self._root, op(self, *args, **kwargs), _tx_of(self._root))

    method.__name__ = method.__qualname__ = name
    return method


def _async_method(name: str) -> Callable[..., Any]:
    op = getattr(_Ops, "_op_" + name)

    @functools.wraps(op)
    async def method(self: "_RedisBase", *args: Any, **kwargs: Any) -> Any:
        root = self._root
        if root.version is None and not root.closed:
            await _run_async(root, self._op_hello(), None)
        return await _run_async(root, op(self, *args, **kwargs), _tx_of(root))

    method.__name__ = method.__qualname__ = name
    return method


def _redis_options(cls: Any, options: dict[str, Any]) -> None:
    """Refuse options the client would only reject at its first command."""
    known = set(inspect.signature(cls.__init__).parameters) - {"self", "decode_responses"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unexpected argument(s) for RedisKV: {', '.join(unknown)}")


class _RedisBase:
    _root: _Root
    _prefix: str

    def _setup(self, url: str, prefix: str, serializer: Callable[[Any], Any] | None,
               deserializer: Callable[[Any], Any] | None, client: Any, client_cls: Any,
               options: dict[str, Any]) -> None:
        if not isinstance(prefix, str):
            raise TypeError("prefix must be a str")
        if client is None:
            _redis_options(client_cls, options)
            client = client_cls.from_url(url, decode_responses=False, **options)
            owns = True
        else:
            if options:
                raise TypeError("pass either client= or connection options, not both")
            owns = False
        self._root = _Root(client, url, owns, ValueCodec(serializer, deserializer))
        self._prefix = prefix

    def _view(self, prefix: str, separator: str) -> Any:
        if not isinstance(prefix, str) or not isinstance(separator, str):
            raise TypeError("prefix and separator must be str")
        view = object.__new__(type(self))
        view._root = self._root
        view._prefix = f"{self._prefix}{prefix}{separator}"
        return view

    @property
    def prefix(self) -> str:
        """The key prefix (a namespace's ends with its separator)."""
        return self._prefix

    @property
    def url(self) -> str:
        """The server's URL, password masked."""
        return _masked(self._root.url)

    @property
    def closed(self) -> bool:
        return self._root.closed

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, prefix={self._prefix!r})"


class RedisKV(_RedisBase, _Ops, MutableMapping[str, Any]):
    """``LogKV``'s API on a Redis server: the same methods, arguments, results
    and errors; durability is the server's (its ``appendfsync``)::

        db = RedisKV("redis://localhost:6379/0")     # was: LogKV("db.json")
        db["visits"] = 0
        db.incr("visits")

    ``prefix`` puts every key of this store under ``prefix`` (include your
    own separator). ``client`` takes an existing ``redis.Redis`` (created with
    ``decode_responses=False``); other keyword arguments go to
    ``redis.Redis.from_url``. The differences from ``LogKV`` are listed in the
    README ("When you outgrow one machine").
    """

    def __init__(self, url: str = "redis://localhost:6379/0", *, prefix: str = "",
                 serializer: Callable[[Any], Any] | None = None,
                 deserializer: Callable[[Any], Any] | None = None, client: Any = None,
                 **redis_options: Any) -> None:
        redis = _import_redis()
        self._setup(url, prefix, serializer, deserializer, client, redis.Redis, redis_options)
        try:
            _run_blocking(self._root, self._op_hello(), None)
        except BaseException:
            self.close()
            raise

    # The mapping protocol (named here, not set after the class: the ABC
    # decides at class creation which abstract methods are still missing).
    __getitem__ = _sync_method("__getitem__", "getitem")
    __setitem__ = _sync_method("__setitem__", "setitem")
    __delitem__ = _sync_method("__delitem__", "delitem")
    __contains__ = _sync_method("__contains__", "contains")
    __len__ = _sync_method("__len__", "len")

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def close(self) -> None:
        """Release the connections (a client passed in is left open).
        Idempotent; any later call raises ClosedError."""
        root = self._root
        if root.closed:
            return
        root.closed = True
        if root.owns_client:
            root.client.close()

    def __enter__(self) -> "RedisKV":
        if self._root.closed:
            raise ClosedError("the store is closed")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator["RedisKV"]:
        """Buffer the block's writes and commit them as one MULTI/EXEC. Keys
        the block reads are WATCHed: if another client changes one before the
        commit, nothing is written and TransactionConflict is raised. If the
        block raises, nothing is written. Nested blocks join the outer one."""
        root = self._root
        tx = _tx_of(root)
        if tx is not None:
            saved = dict(tx.staged)
            try:
                yield self
            except BaseException:
                tx.staged = saved  # a nested block that raised undoes only itself
                raise
            return
        if root.closed:
            raise ClosedError("the store is closed")
        tx = _Tx()
        token = _TXS.set(_TXS.get() + ((root, tx),))
        ok = False
        try:
            yield self
            ok = True
        finally:
            _TXS.reset(token)
            try:
                if ok:
                    _run_blocking(root, self._op_commit(tx), tx)
            finally:
                if tx.session.pipe is not None:  # read but wrote nothing, or failed
                    tx.session.pipe.reset()

    # What moving a store between engines uses (_convert), as LogKV has them.
    def _entries(self) -> list[tuple[str, Any, float | None]]:
        return _run_blocking(self._root, self._op_entries(), _tx_of(self._root))

    def _set_many(self, pairs: Iterable[tuple[Any, Any]], exp: float | None) -> None:
        _run_blocking(self._root, self._write_pairs(list(pairs), exp), _tx_of(self._root))

    def namespace(self, prefix: str, separator: str = ":") -> "RedisKV":
        """A view of the keys under ``prefix + separator``, with the whole
        method set; flush/reload/compact/close act on the store."""
        return self._view(prefix, separator)


for _name in _METHODS:
    setattr(RedisKV, _name, _sync_method(_name, _name))


class AsyncRedisKV(_RedisBase, _Ops):
    """``RedisKV`` for asyncio, on ``redis.asyncio``: the same methods as
    coroutines, named as ``AsyncLogKV`` names them (``getitem``, ``setitem``,
    ``delitem``, ``contains``, ``len`` for the mapping protocol)::

        async with AsyncRedisKV("redis://localhost:6379/0") as db:
            await db.set("visits", 0)
            await db.incr("visits")
    """

    def __init__(self, url: str = "redis://localhost:6379/0", *, prefix: str = "",
                 serializer: Callable[[Any], Any] | None = None,
                 deserializer: Callable[[Any], Any] | None = None, client: Any = None,
                 **redis_options: Any) -> None:
        _import_redis()
        import redis.asyncio as aredis
        self._setup(url, prefix, serializer, deserializer, client, aredis.Redis, redis_options)

    # As AsyncLogKV's: ``AsyncRedisKV.open(url, **kw)`` on the class (await
    # it, or ``async with`` it), ``await db.open()`` on a store.
    open = _OpenMethod()

    async def _open(self) -> "AsyncRedisKV":
        """Connect and check the server (done by the first call otherwise)."""
        root = self._root
        if root.version is None:
            await _run_async(root, self._op_hello(), None)
        return self

    async def __aenter__(self) -> "AsyncRedisKV":
        return await self._open()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def __aiter__(self) -> AsyncIterator[str]:
        for key in await self.keys():
            yield key

    async def close(self) -> None:
        """Release the connections (a client passed in is left open).
        Idempotent; any later call raises ClosedError."""
        root = self._root
        if root.closed:
            return
        root.closed = True
        if root.owns_client:
            await root.client.aclose()

    async def aclose(self) -> None:
        """The same as ``close()``."""
        await self.close()

    def transaction(self) -> "_AsyncTransaction":
        """``async with db.transaction():`` -- as ``RedisKV.transaction()``."""
        return _AsyncTransaction(self)

    def namespace(self, prefix: str, separator: str = ":") -> "AsyncRedisKV":
        return self._view(prefix, separator)


for _name in (*_METHODS, *_PROTOCOL):
    setattr(AsyncRedisKV, _name, _async_method(_name))


class _AsyncTransaction:
    __slots__ = ("_db", "_tx", "_token", "_saved")

    def __init__(self, db: AsyncRedisKV) -> None:
        self._db = db
        self._tx: _Tx | None = None
        self._token: Any = None
        self._saved: dict[str, tuple] | None = None

    async def __aenter__(self) -> AsyncRedisKV:
        root = self._db._root
        if root.closed:
            raise ClosedError("the store is closed")
        tx = _tx_of(root)
        if tx is not None:  # nested: joins the outer block
            self._saved = dict(tx.staged)
            self._tx = tx
            return self._db
        await self._db._open()
        self._tx = _Tx()
        self._token = _TXS.set(_TXS.get() + ((root, self._tx),))
        return self._db

    async def __aexit__(self, et: Any, ev: Any, tb: Any) -> bool:
        tx = self._tx
        assert tx is not None
        if self._token is None:  # nested
            if et is not None and self._saved is not None:
                tx.staged = self._saved
            return False
        _TXS.reset(self._token)
        try:
            if et is None:
                await _run_async(self._db._root, self._db._op_commit(tx), tx)
        finally:
            if tx.session.pipe is not None:  # read but wrote nothing, or failed
                await tx.session.pipe.reset()
        return False
