"""Decoding the log a chunk at a time (design.md §3 "Replay speed"): the chunks
together are exactly the records that decode_records reads in one go, and
damage on any line -- the first, a middle or the last line of its chunk, or a
line across the chunk size -- is CorruptionError at that line's offset, never
skipped. A store that meets the damage while catching up keeps the chunks it
applied before it, with its sequence and log end saying so."""
from __future__ import annotations

import contextlib
import os

import pytest

from fsfaults import NoSyncFS, fast_tmp  # noqa: F401
from logkv import CorruptionError, LogKV
from logkv import _engine, _log, _record

PATH = "/nonexistent/db.json.wal"
HEADER = _record.build_header(0, "a" * 32, "empty")
BIG = 2 ** 70 + 1  # beyond 64 bits: an exact ("j") record
HUGE = 10 ** 400  # beyond a double too: orjson refuses its chunk, line by line reads it
CHUNK_SIZES = [1, 150, 333, 10 ** 6]  # one line a chunk .. the whole log in one


def rec(seq: int, key: str, value: object, expires_at: float | None = None) -> bytes:
    enc, exact = _record.ValueCodec().encode(value)
    return _record.build_line(seq, [_record.op_set(key, enc, expires_at)], exact)


def make_log(n: int) -> bytes:
    """A header and ``n`` records of varied sizes, some exact, one with two ops."""
    lines = [HEADER]
    for i in range(1, n + 1):
        if i % 13 == 0:
            lines.append(rec(i, f"k{i}", [HUGE + i]))
        elif i % 7 == 0:
            lines.append(rec(i, f"k{i}", {"big": BIG + i}))
        elif i % 11 == 0:
            lines.append(_record.build_line(i, [_record.op_set(f"k{i}", b"1", None),
                                                _record.op_delete(f"k{i - 1}")]))
        else:
            lines.append(rec(i, f"k{i}", "v" * (i * 13 % 90)))
    return b"".join(lines)


def line_starts(buf: bytes) -> list[int]:
    """Offset of every line after the header."""
    starts, pos = [], len(HEADER)
    while pos < len(buf):
        starts.append(pos)
        pos = buf.index(b"\n", pos) + 1
    return starts


def chunked(buf: bytes, chunk_bytes: int, base_offset: int = 0) -> list[tuple[list, int, int]]:
    return list(_log.decode_chunks(buf, len(HEADER), 0, PATH, base_offset, chunk_bytes))


@pytest.mark.parametrize("chunk_bytes", CHUNK_SIZES)
@pytest.mark.parametrize("base_offset", [0, 5000])
@pytest.mark.parametrize("torn", [b"", b'{"x":"0123'])
def test_chunks_are_the_records_read_in_one_go(chunk_bytes, base_offset, torn):
    buf = make_log(40) + torn
    whole, whole_end = _log.decode_records(buf, len(HEADER), 0, PATH, base_offset)
    chunks = chunked(buf, chunk_bytes, base_offset)
    # (What a record holds besides its sequence and operations depends on
    # which reader parsed it, in one go or line by line.)
    assert [(r["s"], r["o"]) for recs, _start, _end in chunks for r in recs] == [
        (r["s"], r["o"]) for r in whole]
    assert whole[6]["o"][0][2] == {"big": BIG + 7}  # parsed exactly
    assert whole[12]["o"][0][2] == [HUGE + 13]
    # Each chunk starts where the one before ended, on a line start; the last
    # ends where decode_records does (before the torn tail).
    at = len(HEADER)
    for recs, start, end in chunks:
        assert recs and start == at and buf[start - 1:start] == b"\n"
        at = end - base_offset
    assert chunks[-1][2] == whole_end == base_offset + len(buf) - len(torn)
    if chunk_bytes == 1:
        assert all(len(recs) == 1 for recs, _s, _e in chunks)
    if chunk_bytes == 10 ** 6:
        assert len(chunks) == 1


def test_nothing_whole_yields_no_chunk():
    assert chunked(HEADER, 1) == []
    assert chunked(HEADER + b'{"x":"01', 1) == []


def damaged(buf: bytes, start: int, how: str) -> bytes:
    """``buf`` with the line at ``start`` damaged in one of three ways."""
    end = buf.index(b"\n", start)
    line = buf[start:end]
    seq = _record.parse_line(line)["s"]
    if how == "checksum":
        new = line[:6] + (b"0" if line[6:7] != b"0" else b"1") + line[7:]
    elif how == "sequence":  # a valid record with the wrong number
        new = rec(seq + 1, "k", 1)[:-1]
    elif how == "not-json":  # a valid checksum over a body that is not JSON
        body = b'"s":%d,"o":[["s","k",}' % seq
        new = b'{"x":"%b",%b' % (_record._hexdigest(body).encode(), body)
    else:  # a valid record with an operation of no known shape
        new = _record.build_line(seq, [b'["s",1,2,null]'])[:-1]
    return buf[:start] + new + buf[end:]


@pytest.mark.parametrize("chunk_bytes", CHUNK_SIZES)
@pytest.mark.parametrize("how", ["checksum", "sequence", "not-json"])
def test_damage_anywhere_in_a_chunk_is_named_at_its_offset(chunk_bytes, how):
    clean = make_log(40)
    starts = line_starts(clean)
    place = {}  # line start -> where the line sits in its chunk (clean layout)
    for _recs, first, end in chunked(clean, chunk_bytes):
        inside = [x for x in starts if first <= x < end]
        for k, x in enumerate(inside):
            place[x] = "first" if k == 0 else "last" if k == len(inside) - 1 else "middle"
    for start in starts:
        buf = damaged(clean, start, how)
        got = []
        with pytest.raises(CorruptionError) as info:
            for recs, _s, end in _log.decode_chunks(buf, len(HEADER), 0, PATH, 0, chunk_bytes):
                got.append((recs, end))
        assert info.value.offset == start and info.value.path == PATH
        assert str(start) in str(info.value)
        # Only whole chunks before the damaged line were yielded, all of them
        # clean and in order.
        seqs = [r["s"] for recs, _e in got for r in recs]
        assert seqs == list(range(1, len(seqs) + 1))
        assert not got or got[-1][1] <= start
    if chunk_bytes == 333:
        assert set(place.values()) == {"first", "middle", "last"}


# ---------------------------------------------------------------- whole stores
@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(_log, "CHUNK_BYTES", 150)


def _open(path: str) -> LogKV:
    return LogKV(path, durability="os", compact_on_close=False, auto_compact=False,
                 _fs=NoSyncFS())


def test_open_in_small_chunks_gives_the_same_store(fast_tmp, small_chunks):
    path = str(fast_tmp / "db.json")
    db = _open(path)
    expected = {}
    for i in range(60):
        db[f"k{i}"] = {"i": i, "big": BIG * i}
        expected[f"k{i}"] = {"i": i, "big": BIG * i}
        if i % 5 == 0:
            db.set(f"t{i}", i, ttl=3600)
            expected[f"t{i}"] = i
        if i % 9 == 8:
            db.pop(f"k{i - 1}")
            del expected[f"k{i - 1}"]
        if i == 30:
            db.clear()
            expected.clear()
    db.close()
    with open(path + ".wal", "ab") as f:
        f.write(b'{"x":"0123')  # a torn tail
    db = _open(path)
    assert db.copy() == expected and db["k59"]["big"] == BIG * 59
    assert db.ttl("t55") > 3000
    stats = db.stats()
    assert stats["dropped_tail_bytes"] == 10
    assert stats["wal_records"] == stats["recovered_records"] == stats["sequence"]
    db.close()


@pytest.mark.parametrize("how", ["checksum", "sequence", "not-json", "bad-op"])
def test_open_names_damage_anywhere_in_small_chunks(fast_tmp, small_chunks, how):
    """Operations are checked where they are applied, chunk by chunk: their
    offsets too must be the damaged line's."""
    path = str(fast_tmp / "db.json")
    clean = make_log(40)
    for start in line_starts(clean):
        with open(path + ".wal", "wb") as f:
            f.write(damaged(clean, start, how))
        with pytest.raises(CorruptionError) as info:
            _open(path)
        assert (info.value.path, info.value.offset) == (path + ".wal", start), info.value


def test_catch_up_stops_at_damage_with_what_came_before(fast_tmp, small_chunks):
    path = str(fast_tmp / "db.json")
    reader = _open(path)
    writer = _open(path)
    try:
        reader["start"] = 0
        before = os.path.getsize(path + ".wal")
        for i in range(40):
            writer[f"k{i}"] = i
        with open(path + ".wal", "rb") as f:
            buf = f.read()
        target = line_starts(buf)[25]  # record 27: "start" is 1, k0 is 2
        assert target > before
        with open(path + ".wal", "r+b") as f:
            f.seek(target + 6)
            f.write(b"0" if buf[target + 6:target + 7] != b"0" else b"1")
        for _attempt in range(2):  # a second read meets the same damage
            with pytest.raises(CorruptionError) as info:
                reader.get("k39")
            assert info.value.offset == target
            e = reader._e
            # Memory holds exactly the records up to its sequence, and its log
            # end is where the next record starts.
            assert 20 <= e.seq < 27 and e.log_end <= target and e.log_end in line_starts(buf)
            assert buf.count(b"\n", 0, e.log_end) == e.seq + 1  # the header and seq records
            assert sorted(e.data) == sorted(["start"] + [f"k{i}" for i in range(e.seq - 1)])
    finally:
        writer.close()
        with contextlib.suppress(CorruptionError):  # its last flush catches up first
            reader.close()


def test_readers_wait_only_while_a_chunk_is_applied(fast_tmp, small_chunks, monkeypatch):
    """The seqlock that lock-free reads check is odd while a chunk is applied
    and even while the next one is decoded (decoding a large backlog takes
    long; reads need not wait for it)."""
    path = str(fast_tmp / "db.json")
    reader = _open(path)
    writer = _open(path)
    try:
        reader["start"] = 0
        for i in range(40):
            writer[f"k{i}"] = i
        e = reader._e
        seen = []
        decode = _engine.decode_chunks

        def decode_watched(*args, **kwargs):
            for chunk in decode(*args, **kwargs):
                seen.append(("decoded", e._wgen & 1))
                yield chunk

        apply = e._apply_records

        def apply_watched(*args, **kwargs):
            seen.append(("applying", e._wgen & 1))
            return apply(*args, **kwargs)

        monkeypatch.setattr(_engine, "decode_chunks", decode_watched)
        monkeypatch.setattr(e, "_apply_records", apply_watched)
        assert reader["k39"] == 39
        assert len(seen) >= 20, seen  # many chunks
        assert all(odd == (kind == "applying") for kind, odd in seen), seen
        assert e._wgen & 1 == 0
    finally:
        writer.close()
        reader.close()
