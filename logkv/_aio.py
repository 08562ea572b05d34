"""``AsyncLogKV``: the whole ``LogKV`` API as coroutines, for asyncio code.

One core: an ``AsyncLogKV`` wraps a ``LogKV`` and calls its methods; nothing
here re-implements store logic. What this module decides is *where* each call
runs:

* Every store has ONE worker thread (a single-thread executor). Calls that may
  block run there: opening, ``flush``, ``close``, ``compact``, ``reload``,
  a mutation that would wait (below) and everything inside a transaction.
  The worker is FIFO.
* Mutations (``set``, ``incr``, ``delete``, ``append``, ``update``, ...) run
  inline on the event loop when they can complete without waiting: ~7 us
  instead of ~50-80 us for the hop to the worker and back. The sync method
  runs in the engine's non-blocking mode (``_lock.nonblocking``, per thread):
  where it would wait -- the store's thread lock held by another thread (the
  worker, the background flusher, a user's thread), another process's records
  or rotation to read first, the write lock held by another process -- the
  engine raises ``_WouldBlock`` before it has changed anything, and the call
  runs in the worker as a whole, as it always did. A store that is behind
  (``Engine.behind()``) goes to the worker without trying. Nothing runs inline
  while the worker has calls queued or the store is closing, so calls take
  effect in the order they were made. An automatic compaction that an inline
  write asks for is started from the worker (spawning a process is slow).
  A custom serializer may thus be called twice for one call (inline, then
  again in the worker).
* With ``durability="always"`` a mutation outside a transaction waits for an
  fsync; those run in a small pool of commit threads instead, so that the
  engine's group commit shares one fsync among concurrent tasks (one worker
  would fsync once per write: 16 tasks got 4-8x less throughput). They never
  run inline.
* Reads (``get``, ``getitem``, ``exists``, ``ttl``, ``mget``, ``keys``, ...)
  run inline on the event loop: they are dictionary lookups. When the shared
  page says another process has written since this one last looked, the
  catch-up (reading its records, or reloading after its compaction) runs in
  the worker first, so a read never parses files on the event loop.
* A transaction is bound to the thread that opened it (the engine keeps its
  overlay per thread and holds its thread lock for the whole block), so the
  block's enter, its operations and its exit all run in the worker thread.
  While a task holds a transaction, other tasks' calls on the same store wait
  (asynchronously; the loop keeps running) until it ends: they would otherwise
  run on the transaction's thread and join it. Child tasks created inside the
  block inherit it (context variables) and join it, as nested blocks do.

The constructor does no I/O: the store opens in the worker at ``__aenter__``,
at ``await db.open()``, or at the first call, whichever comes first.
"""
from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, AsyncIterator, Callable, Iterable, Mapping

from ._errors import ClosedError
from ._lock import _WouldBlock, nonblocking as _nonblocking
from ._rules import NO_DEFAULT as _NO_DEFAULT
from ._store import LogKV, _API

__all__ = ["AsyncLogKV", "AsyncNamespaceView"]

# Tokens of the async transactions the current task (context) is inside of.
_TX: contextvars.ContextVar[tuple[object, ...]] = contextvars.ContextVar(
    "logkv_async_transactions", default=())

_LOGKV_SIGNATURE = inspect.signature(LogKV)
# Threads that may wait for an fsync at once (durability="always"): enough for
# the engine's group commit to share one fsync among several tasks' writes.
COMMIT_THREADS = 8


class _Core:
    """What an AsyncLogKV and all its views share: the sync store, its worker
    thread, and the transaction gate."""

    __slots__ = ("path", "kwargs", "kv", "executor", "commit_pool", "always", "opening",
                 "closed", "closing", "queued", "tx_token", "tx_waiters")

    def __init__(self, path: str, kwargs: dict[str, Any]) -> None:
        self.path = path
        self.kwargs = kwargs
        self.kv: LogKV | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.commit_pool: ThreadPoolExecutor | None = None
        self.always = kwargs.get("durability") == "always"
        self.opening: asyncio.Future[Any] | None = None
        self.closed = False
        self.closing = False
        self.queued = 0  # calls submitted to the worker and not yet done
        self.tx_token: object | None = None
        self.tx_waiters: list[asyncio.Future[None]] = []

    # ------------------------------------------------------------ the worker
    def run(self, fn: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
        """Run ``fn(*args)`` in the store's worker thread (FIFO)."""
        if self.closed:
            raise ClosedError("the store is closed")
        assert self.executor is not None
        fut = asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        self.queued += 1
        fut.add_done_callback(self._ran)
        return fut

    def _ran(self, _fut: "asyncio.Future[Any]") -> None:
        self.queued -= 1

    def run_commit(self, fn: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
        """Run a mutation that waits for an fsync in the commit pool: several
        threads, so concurrent tasks share fsyncs. These calls need not run on
        the worker: outside a transaction the engine orders them itself."""
        if self.closed:
            raise ClosedError("the store is closed")
        pool = self.commit_pool
        if pool is None:
            pool = self.commit_pool = ThreadPoolExecutor(
                max_workers=COMMIT_THREADS, thread_name_prefix="logkv-aio-commit")
        return asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def open(self) -> LogKV:
        if self.closed:
            raise ClosedError("the store is closed")
        if self.kv is not None:
            return self.kv
        if self.opening is None:
            loop = asyncio.get_running_loop()
            if self.executor is None:
                self.executor = ThreadPoolExecutor(max_workers=1,
                                                   thread_name_prefix="logkv-aio")
            self.opening = loop.run_in_executor(self.executor,
                                                partial(LogKV, self.path, **self.kwargs))
        opening = self.opening
        try:
            kv = await asyncio.shield(opening)
        except BaseException:
            if opening.done() and (opening.cancelled() or opening.exception() is not None):
                self.opening = None  # a failed open may be retried
            raise
        kv._e.compact_in_child = True  # never hold the loop's GIL for a compaction
        self.kv = kv
        return kv

    async def close(self) -> None:
        if self.closed:
            return
        await self.wait_turn()
        if self.closed:
            return
        self.closing = True  # mutations go to the worker, behind the close
        kv = self.kv
        if kv is None and self.opening is not None:
            try:
                kv = await self.open()
            except Exception:
                kv = None
        try:
            if kv is not None:
                assert self.executor is not None
                await asyncio.get_running_loop().run_in_executor(self.executor, kv.close)
        finally:
            self.closed = True
            if self.executor is not None:
                self.executor.shutdown(wait=False)
            if self.commit_pool is not None:
                self.commit_pool.shutdown(wait=False)

    # ------------------------------------------------------- transaction gate
    def owns_tx(self) -> bool:
        token = self.tx_token
        return token is not None and token in _TX.get()

    async def wait_turn(self) -> None:
        """Wait until no other task holds a transaction on this store."""
        while self.tx_token is not None and self.tx_token not in _TX.get():
            waiter = asyncio.get_running_loop().create_future()
            self.tx_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self.tx_waiters:
                    self.tx_waiters.remove(waiter)

    def release_tx(self, token: object) -> None:
        if self.tx_token is token:
            self.tx_token = None
            waiters, self.tx_waiters = self.tx_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)


def _behind(kv: LogKV) -> bool:
    """True when another process has written (or compacted) since this store
    last looked: the next read would catch up, which may read files."""
    return kv._e.behind()


class _AsyncAPI:
    """The coroutine method set over a sync ``_API`` object (store or view)."""

    _core: _Core
    _full: str

    # ``_s`` is the sync object (LogKV or NamespaceView), None until open.
    _s: _API | None

    # ------------------------------------------------------------ plumbing
    async def _sync(self) -> _API:
        """Open if needed and wait for our turn; return the sync object."""
        core = self._core
        if core.tx_token is not None:
            await core.wait_turn()
        s = self._s
        if s is None:
            await core.open()
            s = self._s
            assert s is not None
            if core.tx_token is not None:
                await core.wait_turn()
        return s

    async def _w(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the sync method ``name`` in the worker thread."""
        s = self._s
        core = self._core
        if s is None or core.tx_token is not None:
            s = await self._sync()
        fn = getattr(s, name)
        if kwargs:
            fn = partial(fn, **kwargs)
        return await core.run(fn, *args)

    async def _m(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """A mutation: inline on the event loop when it can complete without
        waiting; else in the worker thread, or -- with durability="always",
        outside a transaction -- in the store's commit pool, so that the
        fsyncs of concurrent tasks are shared (group commit).

        Inline, the sync method runs in the engine's non-blocking mode: where
        it would wait (the store's thread lock held by another thread,
        another process's records to read first, the write lock held by
        another process) the engine raises _WouldBlock before changing
        anything, and the call goes to the worker as a whole. Nothing runs
        inline while the worker has calls queued: they were submitted first,
        so they take effect first."""
        s = self._s
        core = self._core
        if s is None or core.tx_token is not None:
            s = await self._sync()
            if core.owns_tx():
                return await self._w(name, *args, **kwargs)
        fn = getattr(s, name)
        if kwargs:
            fn = partial(fn, **kwargs)
        if core.always:
            return await core.run_commit(fn, *args)
        kv = core.kv
        assert kv is not None
        if not (core.queued or core.closing or core.closed or _behind(kv)):
            # No await from the checks above to the end of the call: no
            # transaction can begin and nothing can be queued ahead of it.
            mode = _nonblocking
            was = mode.on
            mode.on = True
            try:
                try:
                    result = fn(*args)
                finally:
                    mode.on = was  # before any await: other tasks share this thread
            except _WouldBlock:
                pass  # nothing was changed: the whole call runs in the worker
            else:
                e = kv._e
                if e._want_compaction:  # spawning the child takes a while: not here
                    await core.run(e.start_wanted_compaction)
                return result
        return await core.run(fn, *args)

    async def _r(self, name: str, /, *args: Any) -> Any:
        """Call the sync read ``name`` inline, unless it could block: then
        (store not open, inside a transaction, another process's records to
        read) do what is needed in the worker first."""
        core = self._core
        while True:
            s = self._s
            if s is None or core.tx_token is not None:
                s = await self._sync()
                if core.owns_tx():  # reads inside the block see its writes: its thread
                    return await core.run(getattr(s, name), *args)
            kv = core.kv
            assert kv is not None
            if _behind(kv):
                if core.closed:
                    raise ClosedError("the store is closed")
                await core.run(kv._e.catch_up)
                continue  # something may have changed while we waited: look again
            # No await between the checks above and this call: no transaction
            # is open and nothing is left to read from the files.
            return getattr(s, name)(*args)

    @property
    def sync(self) -> _API | None:
        """The underlying sync object (None before the store opens). Calling
        its methods from the event loop thread may block it."""
        return self._s

    # ------------------------------------------------------ mapping protocol
    async def getitem(self, key: Any) -> Any:
        """``store[key]``: KeyError when missing."""
        return await self._r("__getitem__", key)

    async def setitem(self, key: Any, value: Any) -> None:
        """``store[key] = value``."""
        return await self._m("__setitem__", key, value)

    async def delitem(self, key: Any) -> None:
        """``del store[key]``: KeyError when missing."""
        return await self._m("__delitem__", key)

    async def contains(self, key: Any) -> bool:
        """``key in store``."""
        return await self._r("__contains__", key)

    async def len(self) -> int:
        """``len(store)``."""
        return await self._r("__len__")

    async def __aiter__(self) -> AsyncIterator[str]:
        """``async for key in store``: over the keys present when it starts."""
        for key in await self._r("keys"):
            yield key

    # ------------------------------------------------------------ core calls
    async def set(self, key: Any, value: Any, *, ttl: float | None = None) -> None:
        return await self._m("set", key, value, ttl=ttl)

    async def get(self, key: Any, default: Any = None) -> Any:
        s = self._s
        core = self._core
        if s is None or core.tx_token is not None or _behind(core.kv):  # type: ignore[arg-type]
            return await self._r("get", key, default)
        return s.get(key, default)

    async def pop(self, key: Any, default: Any = _NO_DEFAULT) -> Any:
        if default is _NO_DEFAULT:
            return await self._m("pop", key)
        return await self._m("pop", key, default)

    async def popitem(self) -> tuple[str, Any]:
        return await self._m("popitem")

    async def setdefault(self, key: Any, default: Any = None) -> Any:
        return await self._m("setdefault", key, default)

    async def update(self, other: Any = (), /, **kwargs: Any) -> None:
        if not isinstance(other, Mapping) and not hasattr(other, "keys"):
            # An iterator is read here, once: a mutation that cannot run
            # inline is run again in the worker, which would find it empty.
            try:
                other = list(other)
            except TypeError:
                pass  # not iterable: the sync method raises the same error
        return await self._m("update", other, **kwargs)

    async def mset(self, mapping: Mapping[Any, Any], *, ttl: float | None = None) -> None:
        return await self._m("mset", mapping, ttl=ttl)

    async def mget(self, keys: Iterable[Any], default: Any = None) -> list[Any]:
        return await self._r("mget", list(keys), default)

    async def clear(self) -> None:
        return await self._m("clear")

    async def exists(self, key: Any) -> bool:
        return await self._r("exists", key)

    async def copy(self) -> dict[str, Any]:
        return await self._r("copy")

    async def keys(self) -> list[str]:
        return await self._r("keys")

    async def values(self) -> list[Any]:
        return await self._r("values")

    async def items(self) -> list[tuple[str, Any]]:
        return await self._r("items")

    # ------------------------------------------------------ numeric and lists
    async def incr(self, key: Any, amount: int | float = 1, *,
                   ttl: float | None = None) -> int | float:
        return await self._m("incr", key, amount, ttl=ttl)

    async def append(self, key: Any, value: Any, *, unique: bool = False,
                     ttl: float | None = None) -> list[Any]:
        return await self._m("append", key, value, unique=unique, ttl=ttl)

    async def extend(self, key: Any, values: Iterable[Any], *, unique: bool = False,
                     ttl: float | None = None) -> list[Any]:
        return await self._m("extend", key, list(values), unique=unique, ttl=ttl)

    async def remove(self, key: Any, value: Any, *, all_occurrences: bool = False) -> list[Any]:
        return await self._m("remove", key, value, all_occurrences=all_occurrences)

    # ------------------------------------------------------------------ TTL
    async def expire(self, key: Any, ttl: float) -> None:
        return await self._m("expire", key, ttl)

    async def ttl(self, key: Any) -> float | None:
        return await self._r("ttl", key)

    async def persist(self, key: Any) -> None:
        return await self._m("persist", key)

    async def touch(self, key: Any, ttl: float | None = None) -> None:
        return await self._m("touch", key, ttl)

    async def cleanup_expired(self) -> int:
        return await self._m("cleanup_expired")

    # ------------------------------------------------------------ the store
    async def stats(self) -> dict[str, Any]:
        return await self._r("stats")

    async def flush(self) -> None:
        return await self._w("flush")

    async def reload(self) -> None:
        return await self._w("reload")

    async def compact(self) -> None:
        return await self._w("compact")

    async def close(self) -> None:
        """Flush, compact (``compact_on_close``), release everything and stop
        the worker thread. Idempotent; any later call raises ClosedError."""
        await self._core.close()

    async def aclose(self) -> None:
        """The same as ``close()``."""
        await self._core.close()

    def transaction(self) -> "_AsyncTransaction":
        """``async with db.transaction() as tx:`` -- the block's writes become
        one log record; if it raises, they are rolled back. Yields this
        store (or view)."""
        return _AsyncTransaction(self)

    def namespace(self, prefix: str, separator: str = ":") -> "AsyncNamespaceView":
        return AsyncNamespaceView(self, prefix, separator)


class _AsyncTransaction:
    __slots__ = ("_api", "_cm", "_token", "_ctx", "_outer")

    def __init__(self, api: _AsyncAPI) -> None:
        self._api = api
        self._cm: Any = None
        self._token: object | None = None
        self._ctx: contextvars.Token[tuple[object, ...]] | None = None
        self._outer = False

    async def __aenter__(self) -> _AsyncAPI:
        api = self._api
        core = api._core
        s = await api._sync()  # waits while another task holds a transaction
        if core.closed:
            raise ClosedError("the store is closed")
        cm = s.transaction()
        if core.owns_tx():  # nested: joins the outer block, on its thread
            await core.run(cm.__enter__)
            self._cm = cm
            return api
        # Outer block. From here to the submission below nothing awaits, so
        # no other task's call can slip in between.
        token = object()
        core.tx_token = token
        self._token = token
        self._outer = True
        self._ctx = _TX.set(_TX.get() + (token,))
        assert core.executor is not None
        cf = core.executor.submit(cm.__enter__)
        try:
            await asyncio.shield(asyncio.wrap_future(cf))
        except BaseException:
            _TX.reset(self._ctx)
            if cf.cancel() or (cf.done() and cf.exception() is not None):
                core.release_tx(token)  # the block never began
            else:
                # Cancelled while the worker was entering: end the block there
                # (rolled back) once the enter is done, then open the gate.
                def undo() -> None:
                    if cf.exception() is None:
                        cm.__exit__(asyncio.CancelledError, asyncio.CancelledError(), None)

                done = asyncio.wrap_future(core.executor.submit(undo))
                done.add_done_callback(lambda _f: core.release_tx(token))
            raise
        self._cm = cm
        return api

    async def __aexit__(self, et: Any, ev: Any, tb: Any) -> bool:
        core = self._api._core
        cm = self._cm
        assert core.executor is not None
        cf = core.executor.submit(cm.__exit__, et, ev, tb)
        fut = asyncio.wrap_future(cf)
        if self._outer:
            token = self._token
            fut.add_done_callback(lambda _f: core.release_tx(token))
            assert self._ctx is not None
            _TX.reset(self._ctx)
        # Even if this task is cancelled now, the exit still runs in the worker
        # and the gate opens when it is done.
        return bool(await asyncio.shield(fut))


class _Opener:
    """What ``AsyncLogKV.open(path, **kw)`` returns: await it for an open
    store, or use it as ``async with`` (closes at the end)."""

    __slots__ = ("_db",)

    def __init__(self, db: "AsyncLogKV") -> None:
        self._db = db

    def __await__(self) -> Any:
        return self._db.open().__await__()

    async def __aenter__(self) -> "AsyncLogKV":
        return await self._db.open()

    async def __aexit__(self, *exc: Any) -> None:
        await self._db.close()


class _OpenMethod:
    """``AsyncLogKV.open(path, **kw)`` on the class; ``await db.open()`` on an
    instance."""

    def __get__(self, obj: Any, cls: type) -> Callable[..., Any]:
        if obj is None:
            return lambda *args, **kwargs: _Opener(cls(*args, **kwargs))
        return obj._open


class AsyncLogKV(_AsyncAPI):
    """``LogKV`` for asyncio: the same methods, arguments and results, as
    coroutines. Construct with ``LogKV``'s arguments; nothing touches the disk
    until ``async with``, ``await db.open()`` or the first call (the open runs
    in the store's worker thread)::

        async with AsyncLogKV("db.json") as db:
            await db.set("visits", 0)
            await db.incr("visits")

        async with AsyncLogKV.open("db.json", durability="always") as db: ...
        db = await AsyncLogKV.open("db.json")
    """

    open = _OpenMethod()

    def __init__(self, path: str | os.PathLike[str] = "db.json", **kwargs: Any) -> None:
        _LOGKV_SIGNATURE.bind(path, **kwargs)  # bad arguments fail here, not at open
        self._given_path = os.fspath(path)
        self._core = _Core(self._given_path, kwargs)

    @property
    def _s(self) -> _API | None:  # type: ignore[override]
        return self._core.kv

    _full = ""

    async def _open(self) -> "AsyncLogKV":
        """Open the store (in the worker thread); returns it. Idempotent."""
        await self._core.open()
        return self

    @property
    def path(self) -> str:
        return self._given_path

    @property
    def closed(self) -> bool:
        return self._core.closed

    async def __aenter__(self) -> "AsyncLogKV":
        return await self._open()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        kv = self._core.kv
        if self._core.closed:
            size: Any = "closed"
        elif kv is None:
            size = "unopened"
        else:
            try:
                size = len(kv)
            except Exception:
                size = "?"
        return f"AsyncLogKV(path={self._given_path!r}, size={size})"


class AsyncNamespaceView(_AsyncAPI):
    """The keys of an async store under ``prefix + separator``, with the whole
    async method set; ``flush``/``reload``/``compact``/``close`` act on the
    store."""

    def __init__(self, parent: _AsyncAPI, prefix: str, separator: str = ":") -> None:
        self._parent = parent
        self._core = parent._core
        self._name = prefix
        self._sep = separator
        self._view: _API | None = None
        self._full = parent._full + prefix + separator

    @property
    def _s(self) -> _API | None:  # type: ignore[override]
        v = self._view
        if v is None:
            ps = self._parent._s
            if ps is None:
                return None
            v = self._view = ps.namespace(self._name, self._sep)
        return v

    @property
    def prefix(self) -> str:
        """The full key prefix, separator included (``"users:"``)."""
        return self._full

    def __repr__(self) -> str:
        return f"AsyncNamespaceView(prefix={self.prefix!r})"
