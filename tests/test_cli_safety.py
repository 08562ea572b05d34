"""The command line never overwrites data: ``logkv export PATH OUT`` refuses
an existing OUT unless ``--force``, and the store's own files always, under
any spelling of the path, through a symbolic link or a hard link. A folder
given as PATH is refused before any file is made beside it; bad arguments
are usage errors (exit 2). Real subprocesses, real files."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from logkv import LogKV

ROOT = Path(__file__).resolve().parents[1]
OWN = ("", ".wal", ".bak", ".lock", ".shm")


def run(*args: str, cwd: Path | str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "logkv", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def store(tmp_path) -> Path:
    """A store with every one of its files: snapshot, log, backup, lock, page."""
    path = tmp_path / "db.json"
    with LogKV(str(path), compact_on_close=False) as db:
        db["a"] = 1
        db.compact()
        db["b"] = 2
        db.compact()
        db.set("otp", "918273", ttl=600)
    assert all((tmp_path / f"db.json{s}").exists() for s in OWN)
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_export_refuses_an_existing_out_unless_force(store, tmp_path):
    out = tmp_path / "aiodict.json"
    out.write_bytes(b'{"version": 1, "data": {"x": {"value": 1, "expires_at": 1e10}}}')
    before = out.read_bytes()
    done = run("export", str(store), str(out))
    assert done.returncode == 2, done
    assert "already exists" in done.stderr and str(out) in done.stderr and "--force" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == before
    done = run("export", str(store), str(out), "--force")
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_bytes()) == {"a": 1, "b": 2, "otp": "918273"}


def test_export_refuses_a_dangling_link_as_out(store, tmp_path):
    out = tmp_path / "out.json"
    os.symlink(tmp_path / "nowhere", out)
    done = run("export", str(store), str(out))
    assert done.returncode == 2 and "already exists" in done.stderr
    assert not (tmp_path / "nowhere").exists()


def _spellings(store: Path, suffix: str) -> list[str]:
    folder = store.parent
    name = store.name + suffix
    (folder / "sub").mkdir(exist_ok=True)
    link = folder / f"link{suffix or '.snap'}"
    if not link.is_symlink():
        os.symlink(folder / name, link)
    hard = folder / f"hard{suffix or '.snap'}"
    if not hard.exists():
        os.link(folder / name, hard)
    return [name, f"./{name}", str(folder / name), f"sub/../{name}", f"sub/..//./{name}",
            str(link), str(hard)]


@pytest.mark.parametrize("suffix", OWN)
@pytest.mark.parametrize("force", [False, True])
def test_export_never_writes_over_the_stores_own_files(store, suffix, force):
    """`export db.json db.json` broke the store: its own files are refused
    even with --force, whatever the spelling (relative, absolute, `..`, a
    symbolic link to one, a hard link of one)."""
    folder = store.parent
    spellings = _spellings(store, suffix)
    before = _files(folder)
    for out in spellings:
        args = ["export", "db.json", out] + (["--force"] if force else [])
        done = run(*args, cwd=folder)
        assert done.returncode == 2, (out, done)
        assert "one of the store's own files" in done.stderr, (out, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
        assert _files(folder) == before, out
    with LogKV(str(store), read_only=True) as db:
        assert db.copy() == {"a": 1, "b": 2, "otp": "918273"}


def test_export_through_a_symlinked_store_path_still_refuses_its_files(store, tmp_path):
    alias = tmp_path / "alias.json"
    os.symlink(store, alias)
    done = run("export", str(alias), str(store), "--force")
    assert done.returncode == 2 and "own files" in done.stderr


def test_export_gets_the_stores_mode(store, tmp_path):
    os.chmod(store, 0o640)
    out = tmp_path / "out.json"
    done = run("export", str(store), str(out))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert [n for n in os.listdir(tmp_path) if ".tmp" in n] == []


def test_export_to_stdout_takes_no_force(store):
    done = run("export", str(store))
    assert done.returncode == 0 and json.loads(done.stdout)["a"] == 1
    done = run("export", str(store), "-", "--force")
    assert done.returncode == 2 and "--force" in done.stderr


@pytest.mark.parametrize("command", ["compact", "verify", "stats", "dump", "recover", "export",
                                     "get", "set", "delete"])
def test_a_folder_as_path_is_refused_before_any_file_is_made(tmp_path, command):
    folder = tmp_path / "data"
    folder.mkdir()
    extra = {"get": ["k"], "set": ["k", "1"], "delete": ["k"]}.get(command, [])
    done = run(command, str(folder), *extra)
    assert done.returncode == 2, done
    assert "is a folder" in done.stderr and str(folder) in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["data"] and os.listdir(folder) == []


@pytest.mark.parametrize("acks", ["0", "-5", "x"])
def test_demo_refuses_a_bad_acks_argument(acks):
    done = run("demo", "--acks", acks)
    assert done.returncode == 2, done
    assert "--acks" in done.stderr and "FAILED" not in done.stdout
