"""Torn tails and damaged records in the write-ahead log.

CONTRACT §4.4 (a batch is all or nothing) and §4.6 (a torn last record is
dropped and counted; a damaged record in the middle is an error naming the
file and the byte offset, never skipped). The byte layout these tests cut and
damage is design.md §3.

Expected states are computed independently of the implementation's reader:
the test decodes each record line itself (the post-image operations of §3) and
cross-checks the result against a model of the calls it made.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import xxhash

from logkv import CorruptionError, LogKV

BODY_START = 24  # '{"x":"' + 16 hex digits + '",'


# --------------------------------------------------------------------------- helpers


def _records(wal: bytes) -> tuple[int, list[tuple[int, int, dict]]]:
    """Split a whole log into (end of header, [(start, end, record)]).

    ``end`` is just past the line's newline. Each line is checked against the
    §3 layout so a damaged byte is known to fall inside checksummed bytes.
    """
    assert wal.endswith(b"\n"), "the log of a cleanly closed store must end with a newline"
    lines = []
    pos = 0
    while pos < len(wal):
        nl = wal.index(b"\n", pos)
        line = wal[pos:nl]
        assert line[:6] == b'{"x":"' and line[22:24] == b'",', line
        assert xxhash.xxh3_64_hexdigest(line[BODY_START:]).encode() == line[6:22], (
            f"checksum of the line at offset {pos} is not xxh3_64 of its body (design.md §3)"
        )
        lines.append((pos, nl + 1, json.loads(line)))
        pos = nl + 1
    header = lines[0]
    assert "h" in header[2], "the first line of the log must be its header"
    return header[1], lines[1:]


def _apply(state: dict, ops: list) -> None:
    for op in ops:
        kind = op[0]
        if kind == "s":
            state[op[1]] = op[2]
        elif kind == "d":
            state.pop(op[1], None)
        elif kind == "e":
            assert op[1] in state
        elif kind == "c":
            state.clear()
        else:  # pragma: no cover - a format violation
            raise AssertionError(f"unknown operation {op!r}")


def _state(db: LogKV) -> dict:
    return dict(db.items())


def _disk_files(d: Path) -> dict[str, bytes]:
    """Every file of the store except the lock and the shared page."""
    return {
        p.name: p.read_bytes()
        for p in sorted(d.iterdir())
        if p.is_file() and not p.name.endswith((".lock", ".shm"))
    }


class Built:
    def __init__(self, d: Path, base: dict, model: dict, wal: bytes) -> None:
        self.dir = d
        self.base = base  # state folded into the snapshot (empty without compaction)
        self.model = model  # what the calls should have produced
        self.wal = wal
        self.header_end, self.recs = _records(wal)
        # states[k] = state after the first k records (k = 0 .. len(recs))
        self.states = [dict(base)]
        for _, _, rec in self.recs:
            nxt = dict(self.states[-1])
            _apply(nxt, rec["o"])
            self.states.append(nxt)
        assert self.states[-1] == model, "replaying the log's post-images must give what the calls did"
        self.bounds = [self.header_end] + [end for _, end, _ in self.recs]

    def copy_to(self, d: Path, wal: bytes, *, with_shm: bool = False) -> Path:
        d.mkdir()
        for name in ("db.json", "db.json.bak") + (("db.json.shm",) if with_shm else ()):
            src = self.dir / name
            if src.exists():
                shutil.copyfile(src, d / name)
        (d / "db.json.wal").write_bytes(wal)
        return d / "db.json"


TX_KEYS = ("tx:a", "tx:b", "tx:c")


def _build(root: Path, *, compact_first: bool) -> Built:
    d = root / "src"
    d.mkdir()
    p = str(d / "db.json")
    model: dict = {}
    db = LogKV(p, compact_on_close=False)
    db.set("a", 1)
    model["a"] = 1
    db["b"] = {"name": "Alice", "tags": ["x", "y"]}
    model["b"] = {"name": "Alice", "tags": ["x", "y"]}
    assert db.incr("n") == 1
    assert db.incr("n", 5) == 6
    model["n"] = 6
    db.append("lst", "one")
    model["lst"] = ["one"]
    base: dict = {}
    if compact_first:
        db.compact()
        base = dict(model)
    db.set("gone", True)
    del db["gone"]
    db.append("lst", "two")
    model["lst"] = ["one", "two"]
    # The last three records are what the cut tests walk through byte by byte.
    with db.transaction():
        db["tx:a"] = "α"
        db["tx:b"] = [1, 2, 3]
        db["tx:c"] = {"nested": {"deep": None}}
        db.incr("n")
        del db["a"]
    model.update({"tx:a": "α", "tx:b": [1, 2, 3], "tx:c": {"nested": {"deep": None}}, "n": 7})
    del model["a"]
    db.mset({"m:1": "é✓", "m:2": 2.5, "m:3": [True, False]})
    model.update({"m:1": "é✓", "m:2": 2.5, "m:3": [True, False]})
    db.set("uni", "héllo wörld ✓ 🎉 " * 3)
    model["uni"] = "héllo wörld ✓ 🎉 " * 3
    assert _state(db) == model
    db.close()
    wal = (d / "db.json.wal").read_bytes()
    built = Built(d, base, model, wal)
    assert len(built.recs) >= 5
    # One batch is one record (CONTRACT §2): the transaction and the mset.
    tx_ops = built.recs[-3][2]["o"]
    assert {op[1] for op in tx_ops if op[0] == "s"} >= set(TX_KEYS) | {"n"}, tx_ops
    assert ["d", "a"] in tx_ops, tx_ops
    ms_ops = built.recs[-2][2]["o"]
    assert {op[1] for op in ms_ops if op[0] == "s"} == {"m:1", "m:2", "m:3"}, ms_ops
    return built


# --------------------------------------------------------------------------- torn tails


@pytest.mark.parametrize("compact_first", [False, True], ids=["no-snapshot", "after-compaction"])
@pytest.mark.parametrize("with_shm", [False, True], ids=["fresh-shm", "stale-shm"])
def test_every_cut_in_the_last_records(tmp_path, compact_first, with_shm):
    """Cut the log at every byte of its last three records.

    The state must be the one after the last whole record, the partial line
    counted in ``dropped_tail_bytes``, and the cut-off tail really removed: a
    record written afterwards must survive the next open (were the partial
    line left in place, the new record would be glued to it and the log would
    be corrupt or lose the new write).
    """
    built = _build(tmp_path, compact_first=compact_first)
    first = built.recs[-3][0]
    failures: list[str] = []
    for cut in range(first, len(built.wal) + 1):
        # k = number of whole records kept
        k = max(i for i, b in enumerate(built.bounds) if b <= cut)
        expected = built.states[k]
        dropped = cut - built.bounds[k]
        p = built.copy_to(tmp_path / f"cut{cut}", built.wal[:cut], with_shm=with_shm)
        try:
            db = LogKV(str(p), compact_on_close=False)
        except Exception as exc:  # noqa: BLE001 - collected and reported below
            failures.append(f"cut at {cut}: open raised {type(exc).__name__}: {exc}")
            continue
        try:
            got = _state(db)
            if got != expected:
                failures.append(f"cut at {cut}: state {got!r} != state after {k} records {expected!r}")
            st = db.stats()
            if st.get("dropped_tail_bytes") != dropped:
                failures.append(
                    f"cut at {cut}: dropped_tail_bytes={st.get('dropped_tail_bytes')!r}, expected {dropped}"
                )
            if built.recs[-3][0] < cut < built.recs[-3][1]:
                # The transaction's record is cut: none of its effects may show.
                present = [key for key in TX_KEYS if key in db]
                if present or db.get("a") != 1 or db.get("n") != 6:
                    failures.append(
                        f"cut at {cut} inside the transaction record: half a transaction is visible "
                        f"(present={present}, a={db.get('a')!r}, n={db.get('n')!r})"
                    )
            db.set("after", cut)
        finally:
            db.close()
        try:
            db = LogKV(str(p), compact_on_close=False)
        except Exception as exc:  # noqa: BLE001
            failures.append(f"cut at {cut}: reopen after a new write raised {type(exc).__name__}: {exc}")
            continue
        try:
            got = _state(db)
            if got != {**expected, "after": cut}:
                failures.append(f"cut at {cut}: after a new write and reopen, state {got!r}")
            if db.stats().get("dropped_tail_bytes") != 0:
                failures.append(f"cut at {cut}: the second open still dropped a tail")
        finally:
            db.close()
    assert not failures, f"{len(failures)} failing cuts:\n" + "\n".join(failures[:15])


def test_cut_transaction_leaves_none_of_its_keys(tmp_path):
    """A transaction record cut anywhere inside leaves none of its writes."""
    built = _build(tmp_path, compact_first=False)
    start, end, _ = built.recs[-3]
    for cut in (start + 1, start + BODY_START + 3, (start + end) // 2, end - 2, end - 1):
        p = built.copy_to(tmp_path / f"tx{cut}", built.wal[:cut])
        with LogKV(str(p), compact_on_close=False) as db:
            assert [key for key in TX_KEYS if key in db] == []
            assert db.get("a") == 1, "the transaction's delete must not be applied either"
            assert db.get("n") == 6, "the transaction's incr must not be applied either"
            assert db.stats()["dropped_tail_bytes"] == cut - start
    # and the whole record, with its newline, is applied in full
    p = built.copy_to(tmp_path / "txwhole", built.wal[:end])
    with LogKV(str(p), compact_on_close=False) as db:
        assert all(key in db for key in TX_KEYS)
        assert "a" not in db and db.get("n") == 7
        assert db.stats()["dropped_tail_bytes"] == 0


def test_torn_tail_is_dropped_by_a_read_only_open_too(tmp_path):
    built = _build(tmp_path, compact_first=False)
    start, end, _ = built.recs[-1]
    cut = (start + end) // 2
    p = built.copy_to(tmp_path / "ro", built.wal[:cut])
    db = LogKV(str(p), read_only=True)
    try:
        assert _state(db) == built.states[-2]
    finally:
        db.close()
    # read_only never writes: the torn bytes are still there for a writer to cut
    assert (p.parent / "db.json.wal").read_bytes() == built.wal[:cut]


# --------------------------------------------------------------------------- corruption


def _damage(wal: bytes, recs, how: str) -> tuple[bytes, int]:
    """Damage the record in the middle of the log; return (bytes, offset of the bad line)."""
    mid = 2  # records 0..n-1; several valid records follow this one
    assert mid + 2 < len(recs)
    start, end, _ = recs[mid]
    b = bytearray(wal)
    if how == "body-byte":
        i = start + BODY_START + (end - 1 - start - BODY_START) // 2
        b[i] = ord("Z") if b[i] != ord("Z") else ord("Y")
    elif how == "checksum-digit":
        i = start + 10
        b[i] = ord("0") if b[i] != ord("0") else ord("1")
    elif how == "bit-flip-in-value":
        # flip one low bit of a byte near the end of the body (inside the ops)
        i = end - 4
        b[i] ^= 0x01
    elif how == "garbage-line":
        b[start:end - 1] = b"#" * (end - 1 - start)
    elif how == "lost-newline":
        b[end - 1] = ord(" ")  # two records glued into one line
    elif how == "missing-record":
        del b[start:end]  # the sequence jumps
    elif how == "duplicated-record":
        prev_start, prev_end, _ = recs[mid - 1]
        b[start:start] = wal[prev_start:prev_end]  # the sequence repeats
    elif how == "swapped-records":
        nstart, nend, _ = recs[mid + 1]
        b[start:nend] = wal[nstart:nend] + wal[start:end]
    elif how == "not-json":
        # a line with a correct checksum whose body does not parse
        body = b'"s":%d,"o":[["s","k",]]}' % recs[mid][2]["s"]
        line = b'{"x":"' + xxhash.xxh3_64_hexdigest(body).encode() + b'",' + body + b"\n"
        b[start:end] = line
    else:  # pragma: no cover
        raise AssertionError(how)
    return bytes(b), start


@pytest.mark.parametrize(
    "how",
    [
        "body-byte",
        "checksum-digit",
        "bit-flip-in-value",
        "garbage-line",
        "lost-newline",
        "missing-record",
        "duplicated-record",
        "swapped-records",
        "not-json",
    ],
)
@pytest.mark.parametrize("compact_first", [False, True], ids=["no-snapshot", "after-compaction"])
def test_damaged_record_in_the_middle_is_an_error_with_offset(tmp_path, how, compact_first):
    built = _build(tmp_path, compact_first=compact_first)
    bad, offset = _damage(built.wal, built.recs, how)
    p = built.copy_to(tmp_path / "bad", bad)
    before = _disk_files(p.parent)
    with pytest.raises(CorruptionError) as ei:
        LogKV(str(p))
    err = ei.value
    wal_path = p.parent / "db.json.wal"
    assert err.path is not None and os.path.samefile(err.path, wal_path), err.path
    assert err.offset == offset, f"offset {err.offset!r}, the damaged line starts at {offset}"
    assert "db.json.wal" in str(err) and str(offset) in str(err), (
        f"the message must name the file and the byte offset: {err}"
    )
    assert isinstance(err, ValueError)
    # nothing was rewritten, cut or skipped: every file is as it was
    assert _disk_files(p.parent) == before
    assert wal_path.read_bytes() == bad
    # and it stays an error: a second open does not "heal" it by dropping records
    with pytest.raises(CorruptionError) as ei2:
        LogKV(str(p))
    assert ei2.value.offset == offset
    assert _disk_files(p.parent) == before


def test_damaged_record_read_only_open_is_an_error_too(tmp_path):
    built = _build(tmp_path, compact_first=False)
    bad, offset = _damage(built.wal, built.recs, "body-byte")
    p = built.copy_to(tmp_path / "bad", bad)
    before = _disk_files(p.parent)
    with pytest.raises(CorruptionError) as ei:
        LogKV(str(p), read_only=True)
    assert ei.value.offset == offset
    assert _disk_files(p.parent) == before


def test_damaged_last_whole_line_is_corruption_not_a_torn_tail(tmp_path):
    """design.md §3: a line that ends in a newline and fails its checksum is
    corruption even when it is the last one; only bytes after the last newline
    are a torn tail."""
    built = _build(tmp_path, compact_first=False)
    start, end, _ = built.recs[-1]
    b = bytearray(built.wal)
    i = (start + BODY_START + end) // 2
    b[i] = ord("Z") if b[i] != ord("Z") else ord("Y")
    p = built.copy_to(tmp_path / "badlast", bytes(b))
    before = _disk_files(p.parent)
    with pytest.raises(CorruptionError) as ei:
        LogKV(str(p))
    assert ei.value.offset == start
    assert os.path.samefile(ei.value.path, p.parent / "db.json.wal")
    assert _disk_files(p.parent) == before


def test_damaged_record_followed_by_torn_tail_is_still_an_error(tmp_path):
    """A torn tail does not excuse damage before it."""
    built = _build(tmp_path, compact_first=False)
    bad, offset = _damage(built.wal, built.recs, "body-byte")
    bad = bad[:-7]  # also tear the last record
    p = built.copy_to(tmp_path / "bad", bad)
    before = _disk_files(p.parent)
    with pytest.raises(CorruptionError) as ei:
        LogKV(str(p))
    assert ei.value.offset == offset
    assert _disk_files(p.parent) == before


def test_update_and_clear_are_one_record_each_and_all_or_nothing(tmp_path):
    """CONTRACT §4.4: `update` and `clear` are batches too."""
    d = tmp_path / "src"
    d.mkdir()
    p = d / "db.json"
    with LogKV(str(p), compact_on_close=False) as db:
        db.mset({"a": 1, "b": 2, "c": 3})
        db.update({"u1": "x", "u2": "y", "a": 10})
        db.clear()
        db.set("z", 26)
    wal = (d / "db.json.wal").read_bytes()
    header_end, recs = _records(wal)
    assert len(recs) == 4, [r[2]["o"] for r in recs]
    states = [{}]
    for _, _, rec in recs:
        nxt = dict(states[-1])
        _apply(nxt, rec["o"])
        states.append(nxt)
    assert states[-1] == {"z": 26}
    for idx in (1, 2):  # the update record, the clear record
        start, end, _ = recs[idx]
        for cut in range(start + 1, end):
            case = tmp_path / f"c{idx}-{cut}"
            case.mkdir()
            if p.exists():
                shutil.copyfile(p, case / "db.json")
            (case / "db.json.wal").write_bytes(wal[:cut])
            with LogKV(str(case / "db.json"), compact_on_close=False) as db:
                assert dict(db.items()) == states[idx], f"cut at {cut} inside record {idx}"
                assert db.stats()["dropped_tail_bytes"] == cut - start
