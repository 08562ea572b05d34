"""The command line (CONTRACT §5), run as real subprocesses.

Each command runs as ``python -m logkv ...`` with PYTHONPATH pointing at this
checkout. Stores are built in ``tmp_path`` with the library; damage is done
byte by byte, and expected offsets are computed here from the log's lines
(design.md §3), not taken from the implementation.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from logkv import LogKV

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["compact", "verify", "stats", "dump", "get", "set", "delete", "recover", "demo",
            "import", "export"]


def _env(with_path: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if with_path:
        env["PYTHONPATH"] = str(ROOT)
    return env


def run(*args: str, cwd: Path | str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "logkv", *args], cwd=cwd or ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def wal_lines(path: str) -> list[tuple[int, bytes]]:
    """(offset, bytes with newline) of every line of the store's log."""
    raw = Path(path + ".wal").read_bytes()
    out, pos = [], 0
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        end = len(raw) if nl < 0 else nl + 1
        out.append((pos, raw[pos:end]))
        pos = end
    return out


def flip_byte_in_line(path: str, index: int) -> int:
    """Flip one byte inside the checksummed body of log line ``index``; return
    the line's offset."""
    wal = Path(path + ".wal")
    raw = bytearray(wal.read_bytes())
    off, line = wal_lines(path)[index]
    pos = off + line.index(b'"o":') + 6  # inside the operations
    raw[pos] ^= 0x01
    wal.write_bytes(bytes(raw))
    return off


def open_state(path: str) -> dict:
    db = LogKV(path, read_only=True)
    try:
        return db.copy()
    finally:
        db.close()


@pytest.fixture
def logged(tmp_path) -> str:
    """A closed store whose log holds a header and 10 records k0..k9."""
    path = str(tmp_path / "db.json")
    db = LogKV(path, compact_on_close=False, durability="os")
    for i in range(10):
        db[f"k{i}"] = {"i": i}
    db.close()
    assert len(wal_lines(path)) == 11
    return path


EXPECTED = {f"k{i}": {"i": i} for i in range(10)}


# ------------------------------------------------------------------------ help, usage
def test_help_lists_every_command_and_each_command_has_help():
    top = run("--help")
    assert top.returncode == 0
    for name in COMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", top.stdout, re.M), f"{name} missing from --help"
    for name in COMMANDS:
        done = run(name, "--help")
        assert done.returncode == 0, (name, done.stderr)
        assert done.stdout.startswith(f"usage: logkv {name}"), done.stdout
        assert "exit status" in done.stdout


def test_unknown_or_missing_command_is_a_usage_error(tmp_path):
    done = run("frobnicate", str(tmp_path / "db.json"))
    assert done.returncode == 2
    assert "invalid choice" in done.stderr
    assert run().returncode == 2
    assert run("get", str(tmp_path / "db.json")).returncode == 2  # KEY missing


def test_a_path_with_no_store_is_a_usage_error(tmp_path):
    path = str(tmp_path / "nothing.json")
    for cmd in (["dump", path], ["stats", path], ["get", path, "k"], ["verify", path],
                ["compact", path], ["recover", path]):
        done = run(*cmd)
        assert done.returncode == 2, cmd
        assert "no store at" in done.stderr
    assert os.listdir(tmp_path) == []  # nothing was created


# ------------------------------------------------------------------------ get / set / delete
def test_set_get_delete(tmp_path):
    path = str(tmp_path / "db.json")
    assert run("set", path, "user", '{"name": "Alice", "tags": [1, 2]}').returncode == 0
    big = "123456789012345678901234567890"
    assert run("set", path, "big", big).returncode == 0
    # durable and visible to the library
    assert open_state(path) == {"user": {"name": "Alice", "tags": [1, 2]}, "big": int(big)}
    got = run("get", path, "user")
    assert got.returncode == 0
    assert json.loads(got.stdout) == {"name": "Alice", "tags": [1, 2]}
    got = run("get", path, "big")
    assert got.returncode == 0 and got.stdout.strip() == big  # exact, not rounded
    missing = run("get", path, "nope")
    assert missing.returncode == 1
    assert "key not found" in missing.stderr and missing.stdout == ""
    assert run("delete", path, "user").returncode == 0
    assert open_state(path) == {"big": int(big)}
    again = run("delete", path, "user")
    assert again.returncode == 1 and "key not found" in again.stderr


def test_set_writes_one_record_to_the_log_without_compacting(tmp_path):
    path = str(tmp_path / "db.json")
    assert run("set", path, "a", "1").returncode == 0
    assert run("set", path, "b", '"two"').returncode == 0
    lines = [json.loads(line) for _off, line in wal_lines(path)]
    assert [rec.get("o") for rec in lines[1:]] == [[["s", "a", 1, None]], [["s", "b", "two", None]]]
    assert not os.path.exists(path)  # compact_on_close=False: no snapshot written


def test_set_rejects_bad_json_and_bad_ttl(tmp_path):
    path = str(tmp_path / "db.json")
    assert run("set", path, "k", "1").returncode == 0
    for args in (["k", "hello"], ["k", "{'a': 1}"], ["k", "NaN"], ["k", "2", "--ttl", "0"],
                 ["k", "2", "--ttl", "-5"], ["k", "2", "--ttl", "soon"]):
        done = run("set", path, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.strip()
    assert "not valid JSON" in run("set", path, "k", "hello").stderr
    assert open_state(path) == {"k": 1}  # nothing changed


def test_set_with_ttl(tmp_path):
    path = str(tmp_path / "db.json")
    assert run("set", path, "otp", '"918273"', "--ttl", "120").returncode == 0
    db = LogKV(path, read_only=True)
    try:
        left = db.ttl("otp")
        assert db["otp"] == "918273"
    finally:
        db.close()
    assert left is not None and 100 < left <= 120


# ------------------------------------------------------------------------ stats, dump
def test_stats_prints_the_stats_as_json(logged):
    done = run("stats", logged)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["keys"] == 10
    assert stats["wal_records"] == 10
    assert stats["wal_size_bytes"] == os.path.getsize(logged + ".wal")
    assert "dropped_tail_bytes" in stats


def test_dump_prints_the_live_state_compact_when_piped(logged):
    done = run("dump", logged)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == EXPECTED
    assert done.stdout.count("\n") == 1  # one compact line when stdout is not a TTY


def test_read_commands_fail_with_exit_1_on_a_damaged_log(logged):
    flip_byte_in_line(logged, 5)
    for cmd in ("dump", "stats"):
        done = run(cmd, logged)
        assert done.returncode == 1, cmd
        assert "damaged log record" in done.stderr


# ------------------------------------------------------------------------ compact
def _check_compact_output(out: str, path: str, wal_before: int) -> None:
    assert re.search(r"snapshot\s+before 0 bytes", out), out
    assert re.search(rf"after\s+{os.path.getsize(path):,} bytes", out), out
    assert re.search(rf"log\s+before {wal_before:,} bytes", out), out
    assert re.search(rf"after\s+{os.path.getsize(path + '.wal'):,} bytes", out), out
    assert re.search(r"in \d+\.\d+ s", out), out


def test_compact(logged):
    wal_before = os.path.getsize(logged + ".wal")
    done = run("compact", logged)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # progress only on a terminal
    assert len(wal_lines(logged)) == 1  # the log holds only its header now
    _check_compact_output(done.stdout, logged, wal_before)
    assert json.loads(Path(logged).read_text())["data"]["k3"] == {"value": {"i": 3},
                                                                   "expires_at": None}
    assert open_state(logged) == EXPECTED


def test_compact_of_a_damaged_store_fails_and_changes_nothing(logged):
    flip_byte_in_line(logged, 4)
    wal = Path(logged + ".wal").read_bytes()
    done = run("compact", logged)
    assert done.returncode == 1
    assert "damaged log record" in done.stderr
    assert Path(logged + ".wal").read_bytes() == wal
    assert not os.path.exists(logged)


def test_tools_compact_py_works_from_a_checkout(logged, tmp_path):
    wal_before = os.path.getsize(logged + ".wal")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "compact.py"), logged],
                          cwd=tmp_path, env=_env(with_path=False), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(wal_lines(logged)) == 1
    _check_compact_output(done.stdout, logged, wal_before)
    assert open_state(logged) == EXPECTED


# ------------------------------------------------------------------------ verify
def test_verify_clean_store(logged):
    done = run("verify", logged)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "clean" in done.stdout
    report = json.loads(run("verify", logged, "--json").stdout)
    assert report == {"ok": True, "problems": [], "records": 10, "keys": 10, "warnings": []}


def test_verify_reports_every_damaged_record_with_its_offset(logged):
    off3 = flip_byte_in_line(logged, 3)
    off7 = flip_byte_in_line(logged, 7)
    done = run("verify", logged)
    assert done.returncode == 1
    assert f"byte offset {off3}" in done.stdout and f"byte offset {off7}" in done.stdout
    assert "checksum" in done.stdout
    js = run("verify", logged, "--json")
    assert js.returncode == 1
    report = json.loads(js.stdout)
    assert report["ok"] is False
    assert [(os.path.basename(p["file"]), p["offset"]) for p in report["problems"]] == [
        ("db.json.wal", off3), ("db.json.wal", off7)]
    assert report["records"] == 8


def test_verify_reports_a_sequence_gap(logged):
    lines = wal_lines(logged)
    Path(logged + ".wal").write_bytes(b"".join(line for i, (_o, line) in enumerate(lines)
                                               if i != 4))
    done = run("verify", logged, "--json")
    assert done.returncode == 1
    (prob,) = json.loads(done.stdout)["problems"]
    assert prob["offset"] == lines[5][0] - len(lines[4][1])
    assert "sequence" in prob["problem"]


def test_verify_torn_tail_is_a_note_not_damage(logged):
    size = os.path.getsize(logged + ".wal")
    with open(logged + ".wal", "ab") as f:
        f.write(b'{"x":"0123456789abcdef","s":11,"o":[["s","k10"')
    wal = Path(logged + ".wal").read_bytes()
    done = run("verify", logged)
    assert done.returncode == 0, done.stdout
    assert f"torn tail, 46 bytes at offset {size}" in done.stdout
    report = json.loads(run("verify", logged, "--json").stdout)
    assert report["ok"] is True and report["problems"] == []
    assert report["warnings"][0]["offset"] == size
    assert report["records"] == 10 and report["keys"] == 10
    assert Path(logged + ".wal").read_bytes() == wal  # verify changes nothing
    assert not os.path.exists(logged)


def test_verify_a_damaged_snapshot(logged):
    assert run("compact", logged).returncode == 0
    Path(logged).write_bytes(Path(logged).read_bytes()[:-3])
    done = run("verify", logged, "--json")
    assert done.returncode == 1
    (prob,) = json.loads(done.stdout)["problems"]
    assert os.path.basename(prob["file"]) == "db.json"


def test_verify_a_log_that_does_not_belong_to_the_snapshot(logged):
    Path(logged).write_text('{"z": 1}')  # e.g. another program rewrote db.json
    done = run("verify", logged)
    assert done.returncode == 1
    assert "does not belong to the snapshot" in done.stdout


# ------------------------------------------------------------------------ recover
STAMP = r"\d{8}T\d{6}"


def test_recover_keeps_valid_records_and_moves_damage_aside(logged, tmp_path):
    lines = wal_lines(logged)
    off5 = flip_byte_in_line(logged, 5)  # the record of k4
    torn = b'{"x":"0123456789abcdef","s":11,"o"'
    with open(logged + ".wal", "ab") as f:
        f.write(torn)
    old_wal = Path(logged + ".wal").read_bytes()
    bad_line = old_wal[off5:off5 + len(lines[5][1])]

    done = run("recover", logged)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "log records kept: 9 applied" in out
    assert "log records dropped: 2" in out
    assert f"byte offset {off5}" in out
    damaged = [n for n in os.listdir(tmp_path) if re.fullmatch(rf"db\.json\.damaged-{STAMP}", n)]
    assert len(damaged) == 1, os.listdir(tmp_path)
    assert (tmp_path / damaged[0]).read_bytes() == bad_line + torn
    assert damaged[0] in out
    kept = [n for n in os.listdir(tmp_path) if re.fullmatch(rf"db\.json\.wal\.recovered-{STAMP}", n)]
    assert len(kept) == 1 and (tmp_path / kept[0]).read_bytes() == old_wal

    expected = {k: v for k, v in EXPECTED.items() if k != "k4"}
    assert open_state(logged) == expected
    assert len(wal_lines(logged)) == 1  # a fresh log: header only
    book = json.loads(Path(logged).read_text())["logkv"]
    assert book["seq"] == 10
    assert run("verify", logged).returncode == 0
    # and the store is writable again
    db = LogKV(logged)
    db["after"] = 1
    db.close()
    assert open_state(logged) == {**expected, "after": 1}


def test_recover_from_backup(tmp_path):
    path = str(tmp_path / "db.json")
    with LogKV(path) as db:
        db["a"] = 1
    with LogKV(path) as db:
        db["b"] = 2  # close: db.json = {a, b}, db.json.bak = {a}
    snapshot = Path(path).read_bytes()
    Path(path).write_bytes(snapshot[: len(snapshot) // 2])
    damaged = Path(path).read_bytes()

    refused = run("recover", path)
    assert refused.returncode == 1
    assert "--from-backup" in refused.stderr
    assert Path(path).read_bytes() == damaged  # nothing touched

    done = run("recover", path, "--from-backup")
    assert done.returncode == 0, done.stderr
    assert "db.json.bak" in done.stdout
    assert open_state(path) == {"a": 1}
    kept = [n for n in os.listdir(tmp_path) if re.fullmatch(rf"db\.json\.damaged-{STAMP}\.snapshot", n)]
    assert len(kept) == 1 and (tmp_path / kept[0]).read_bytes() == damaged
    assert run("verify", path).returncode == 0


def test_recover_log_of_another_snapshot_default_and_apply_log(logged, tmp_path):
    Path(logged).write_text('{"z": 1}')
    other = tmp_path / "copy"
    other.mkdir()
    for name in os.listdir(tmp_path):
        if name.startswith("db.json"):
            shutil.copy2(tmp_path / name, other / name)

    done = run("recover", logged)
    assert done.returncode == 0, done.stderr
    assert "kept the snapshot alone" in done.stdout
    assert open_state(logged) == {"z": 1}

    copy = str(other / "db.json")
    done = run("recover", copy, "--apply-log")
    assert done.returncode == 0, done.stderr
    assert "--apply-log: applied" in done.stdout
    assert open_state(copy) == {"z": 1, **EXPECTED}


def test_recover_refuses_while_the_store_is_open_elsewhere(logged):
    db = LogKV(logged)
    try:
        done = run("recover", logged)
    finally:
        db.close()
    assert done.returncode == 1
    assert "open in another process" in done.stderr
    assert not [n for n in os.listdir(os.path.dirname(logged)) if "recovered" in n]


# ------------------------------------------------------------------------ demo
def test_demo(tmp_path):
    done = run("demo", cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for heading in ("writes", "kill -9", "recovery", "compaction", "stats"):
        assert re.search(rf"^== \d\. {heading}", out, re.M), heading
    assert "SIGKILL" in out
    assert "FAILED" not in out
    assert out.count("[ok]") >= 5
    m = re.search(r"counter = (\d+), last acknowledged = (\d+)", out)
    assert m and int(m.group(2)) >= 300 and int(m.group(2)) <= int(m.group(1)) <= int(m.group(2)) + 1
    assert os.listdir(tmp_path) == []  # everything happened in a temporary folder


# ---------------------------------------------------------------------------- import / export
def test_import_then_export_round_trip(tmp_path):
    src = tmp_path / "pickle.json"
    src.write_text(json.dumps({"a": 1, "big": 2**70, "nested": {"value": 3}}))
    dest = str(tmp_path / "db.json")
    r = run("import", str(src), dest)
    assert r.returncode == 0, r.stderr
    assert "imported 3 keys" in r.stdout
    with LogKV(dest, read_only=True) as db:
        assert db.copy() == {"a": 1, "big": 2**70, "nested": {"value": 3}}
    out = tmp_path / "out.json"
    r = run("export", dest, str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text()) == {"a": 1, "big": 2**70, "nested": {"value": 3}}
    r = run("export", dest)
    assert json.loads(r.stdout) == {"a": 1, "big": 2**70, "nested": {"value": 3}}


def test_import_refuses_an_existing_destination(tmp_path):
    src = tmp_path / "pickle.json"
    src.write_text('{"a": 1}')
    dest = tmp_path / "db.json"
    dest.write_text('{"keep": true}')
    r = run("import", str(src), str(dest))
    assert r.returncode == 2
    assert "already exists" in r.stderr
    assert dest.read_text() == '{"keep": true}'
