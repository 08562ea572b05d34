"""Existing files keep working: files written by aiodict and by pickleDB (made
here from their documented formats) open unchanged via LogKV and via the
compat classes; ``import_file``/``export_file`` move data in and out."""
from __future__ import annotations

import io
import json
import os
import sqlite3
import time

import orjson
import pytest

from logkv import CorruptionError, LogKV
from logkv._convert import detect_format, export_file, import_file
from logkv.compat import PickleDB, PickleDBSQLite, aiodict

VALUES = {
    "bot_name": "My Bot",
    "admin_id": 123456789,
    "nested": {"list": [1, 2.5, None, True], "text": "Oʻzbekiston ✓"},
    "big": 2**70 + 3,
    "empty": {},
}


def aiodict_bytes(values, expiries=None, *, indent=None, sort_keys=False):
    """What aiodict 1.0.1's flush() writes (peers-behaviour.md, "File")."""
    expiries = expiries or {}
    payload = {
        "version": 1,
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": {k: {"value": v, "expires_at": expiries.get(k)} for k, v in values.items()},
    }
    text = json.dumps(payload, ensure_ascii=False, indent=indent, sort_keys=sort_keys,
                      separators=(",", ":") if indent is None else None)
    return text.encode("utf-8")


def aiodict_read(path):
    """aiodict 1.0.1's loader, as documented: {key: (value, expires_at)}."""
    raw = open(path, encoding="utf-8").read().strip()
    if not raw:
        return {}
    payload = json.loads(raw)
    data = payload["data"] if "version" in payload and "data" in payload else payload
    out = {}
    for key, rec in data.items():
        if isinstance(rec, dict) and "value" in rec:
            out[key] = (rec["value"], rec.get("expires_at"))
        else:
            out[key] = (rec, None)
    return out


@pytest.fixture
def otp_expiry():
    """The absolute expiry time of the "otp" key in the aiodict fixture."""
    return time.time() + 600.25


@pytest.fixture
def aiodict_file(tmp_path, otp_expiry):
    path = tmp_path / "aiodict.json"
    expiries = {"otp": otp_expiry}
    values = dict(VALUES, otp="918273")
    data = json.loads(aiodict_bytes(values, expiries))
    data["data"]["gone"] = {"value": 1, "expires_at": time.time() - 10}  # already expired
    raw = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    path.write_bytes(raw)
    return path


@pytest.fixture
def pickledb_file(tmp_path):
    path = tmp_path / "pickle.json"
    values = dict(VALUES)
    del values["big"]  # orjson (pickleDB's encoder) cannot write it
    values["wrapped"] = {"value": 1, "expires_at": None}  # a user value that looks like aiodict's
    path.write_bytes(orjson.dumps(values))
    return path, values


@pytest.fixture
def pickledb_sqlite_file(tmp_path):
    path = tmp_path / "pickledb.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
    for k, v in VALUES.items():
        if k != "big":
            conn.execute("INSERT INTO kv (key, value) VALUES (?, ?)", (k, orjson.dumps(v)))
    conn.commit()
    conn.close()
    return path


# ---------------------------------------------------------------------------
# aiodict files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [LogKV, aiodict])
def test_aiodict_file_opens_unchanged(aiodict_file, cls):
    before = aiodict_file.read_bytes()
    db = cls(str(aiodict_file))
    assert {k: db[k] for k in VALUES} == VALUES
    assert db["otp"] == "918273"
    assert 590 < db.ttl("otp") <= 600.25
    assert "gone" not in db and db.get("gone") is None
    assert aiodict_file.read_bytes() == before  # opening does not rewrite it
    db.close()


@pytest.mark.parametrize("indent,sort_keys", [(2, False), (4, True), (None, True)])
def test_aiodict_file_variants(tmp_path, indent, sort_keys):
    path = tmp_path / "db.json"
    path.write_bytes(aiodict_bytes(VALUES, indent=indent, sort_keys=sort_keys))
    with aiodict(path, indent=indent, sort_keys=sort_keys) as db:
        assert db.copy() == VALUES
        db["new"] = 1
    assert aiodict_read(path)["new"] == (1, None)


def test_after_logkv_writes_aiodict_still_reads_the_file(aiodict_file, otp_expiry):
    db = LogKV(str(aiodict_file))
    db["added"] = [1, 2]
    db.incr("admin_id")
    db.set("otp2", "x", ttl=300)
    del db["empty"]
    db.close()
    seen = aiodict_read(aiodict_file)
    assert seen["added"] == ([1, 2], None)
    assert seen["admin_id"] == (123456790, None)
    assert seen["big"] == (2**70 + 3, None)  # exact
    assert seen["otp"][1] == otp_expiry
    assert seen["otp2"][1] > time.time() + 200
    assert "empty" not in seen and "gone" not in seen


def test_aiodict_file_with_nan_fails_naming_the_key(tmp_path):
    path = tmp_path / "db.json"
    path.write_text('{"version":1,"updated_at":"2026-01-01T00:00:00Z","data":'
                    '{"ok":{"value":1,"expires_at":null},"bad":{"value":NaN,"expires_at":null}}}')
    with pytest.raises(CorruptionError, match="bad"):
        LogKV(str(path))
    assert "NaN" in path.read_text()  # never rewritten


# ---------------------------------------------------------------------------
# pickleDB files
# ---------------------------------------------------------------------------


def test_pickledb_json_file_opens_via_logkv_with_members_as_they_are(pickledb_file):
    path, values = pickledb_file
    before = path.read_bytes()
    db = LogKV(str(path))
    assert db.copy() == values
    assert db["wrapped"] == {"value": 1, "expires_at": None}  # not unwrapped
    assert path.read_bytes() == before
    db.close()


def test_pickledb_json_file_opens_via_compat_pickledb(pickledb_file):
    path, values = pickledb_file
    db = PickleDB(str(path)).load()
    assert db.all() == list(values)
    assert db.get("nested") == VALUES["nested"]
    db.set("x", 1)
    db.save()
    assert orjson.loads(path.read_bytes()) == dict(values, x=1)


def test_a_file_saved_by_compat_pickledb_opens_via_logkv(tmp_path):
    path = str(tmp_path / "db.json")
    db = PickleDB(path)
    db.set("a", {"b": 1})
    db.save()
    with LogKV(path) as kv:
        assert kv.copy() == {"a": {"b": 1}}


def test_pickledb_sqlite_file_opens_via_compat(pickledb_sqlite_file):
    kv = PickleDBSQLite(str(pickledb_sqlite_file))
    assert kv.all() == sorted(k for k in VALUES if k != "big")
    assert kv.get("nested") == VALUES["nested"]
    kv.close()


# ---------------------------------------------------------------------------
# import_file / export_file
# ---------------------------------------------------------------------------


def test_detect_format(tmp_path, aiodict_file, pickledb_file, pickledb_sqlite_file):
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    assert detect_format(aiodict_file) == "aiodict"
    assert detect_format(pickledb_file[0]) == "json"
    assert detect_format(pickledb_sqlite_file) == "sqlite"
    assert detect_format(empty) == "empty"


def test_import_aiodict_file_keeps_expiry_times_exactly(tmp_path, aiodict_file, otp_expiry):
    dest = str(tmp_path / "out" / "store.json")
    calls = []
    n = import_file(aiodict_file, dest, progress=lambda done, total: calls.append((done, total)))
    assert n == len(VALUES) + 1  # "gone" had expired
    assert calls[0] == (0, n) and calls[-1] == (n, n)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    with LogKV(dest) as db:
        assert {k: db[k] for k in VALUES} == VALUES
        assert db["otp"] == "918273"
    doc = json.loads(open(dest).read())
    assert doc["data"]["otp"]["expires_at"] == otp_expiry  # exactly
    assert doc["data"]["admin_id"]["expires_at"] is None


def test_import_pickledb_json_and_plain_object(tmp_path, pickledb_file):
    src, values = pickledb_file
    dest = str(tmp_path / "a.json")
    assert import_file(src, dest) == len(values)
    with LogKV(dest) as db:
        assert db.copy() == values
    plain = tmp_path / "config.json"
    plain.write_text('{"debug": true, "workers": 4}')
    assert import_file(plain, str(tmp_path / "b.json")) == 2
    with LogKV(str(tmp_path / "b.json")) as db:
        assert db.copy() == {"debug": True, "workers": 4}


def test_import_pickledb_sqlite(tmp_path, pickledb_sqlite_file):
    dest = str(tmp_path / "c.json")
    assert import_file(pickledb_sqlite_file, dest) == len(VALUES) - 1
    with LogKV(dest) as db:
        assert db.copy() == {k: v for k, v in VALUES.items() if k != "big"}


def test_import_empty_file(tmp_path):
    src = tmp_path / "empty.json"
    src.write_bytes(b"")
    assert import_file(src, str(tmp_path / "d.json")) == 0
    with LogKV(str(tmp_path / "d.json")) as db:
        assert len(db) == 0


def test_import_a_logkv_store_includes_its_log(tmp_path):
    src = str(tmp_path / "src.json")
    db = LogKV(src, compact_on_close=False)
    db.mset({"a": 1, "b": 2})
    db.set("t", 1, ttl=300)
    db.close()
    assert not os.path.exists(src)  # everything is still in the log
    dest = str(tmp_path / "dest.json")
    assert import_file(src, dest) == 3
    with LogKV(dest) as db:
        assert db.copy() == {"a": 1, "b": 2, "t": 1}
        assert db.ttl("t") > 200


def test_import_in_batches_of_one_record_each(tmp_path, monkeypatch):
    import logkv._convert as conv

    monkeypatch.setattr(conv, "BATCH", 100)
    src = tmp_path / "big.json"
    src.write_bytes(orjson.dumps({f"k{i}": i for i in range(1050)}))
    calls = []
    dest = str(tmp_path / "e.json")
    assert import_file(src, dest, progress=lambda d, t: calls.append(d),
                       compact_on_close=False) == 1050
    assert calls == [0] + list(range(100, 1001, 100)) + [1050]
    with open(dest + ".wal", "rb") as f:
        assert f.read().count(b"\n") == 1 + 11  # header + one record per batch


def test_import_refuses_an_existing_destination(tmp_path, pickledb_file):
    src, _ = pickledb_file
    dest = tmp_path / "exists.json"
    dest.write_text("{}")
    with pytest.raises(FileExistsError):
        import_file(src, dest)
    with pytest.raises(ValueError):
        import_file(src, src)


def test_export_writes_the_live_state_as_a_plain_object(tmp_path):
    path = str(tmp_path / "db.json")
    db = LogKV(path, compact_on_close=False)
    db.mset({"a": 1, "big": 2**70 + 3, "n": {"x": [1, None]}})
    db.set("gone", 1, ttl=0.05)
    db.set("kept", "t", ttl=300)
    db.close()
    time.sleep(0.1)
    out = tmp_path / "out.json"
    calls = []
    assert export_file(path, out, progress=lambda d, t: calls.append((d, t))) == 4
    assert calls[-1] == (4, 4)
    assert json.loads(out.read_text()) == {"a": 1, "big": 2**70 + 3, "n": {"x": [1, None]},
                                           "kept": "t"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == ["out.json"]
    buf = io.BytesIO()
    assert export_file(path, buf) == 4
    assert json.loads(buf.getvalue()) == json.loads(out.read_text())
    with pytest.raises(FileNotFoundError):
        export_file(str(tmp_path / "nothing.json"), tmp_path / "x.json")


def test_round_trip_import_then_export(tmp_path, aiodict_file):
    dest = str(tmp_path / "store.json")
    import_file(aiodict_file, dest)
    out = tmp_path / "plain.json"
    export_file(dest, out)
    assert json.loads(out.read_text()) == dict(VALUES, otp="918273")
    again = str(tmp_path / "again.json")
    import_file(out, again)
    with LogKV(again) as db:
        assert db.copy() == dict(VALUES, otp="918273")
