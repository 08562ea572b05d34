"""CONTRACT §4.8: bad input changes nothing.

A value orjson cannot encode (and no serializer helps) raises TypeError; NaN and
±Infinity raise ValueError; a ttl <= 0 raises ValueError. In every case the
store in memory and the files on disk are exactly as they were.
"""
from __future__ import annotations

import copy
import dataclasses
import decimal
import math
import os

import pytest

from logkv import LogKV

NAN = float("nan")
INF = float("inf")


@dataclasses.dataclass
class Point:
    x: float
    y: float


def disk_bytes(path):
    out = {}
    for suffix in ("", ".wal"):
        p = path + suffix
        if os.path.exists(p):
            with open(p, "rb") as f:
                out[suffix] = f.read()
        else:
            out[suffix] = None
    return out


def memory_state(db):
    data = copy.deepcopy(db.copy())
    ttls = {}
    for k in data:
        r = db.ttl(k)
        ttls[k] = None if r is None else "ttl"
    return data, ttls


def prepare(db):
    db["a"] = 1
    db["l"] = [1, 2]
    db["n"] = 5
    db["f"] = 1e308
    db["d"] = {"x": {"y": [1]}}
    db.set("t", "temp", ttl=1000)


class Ctx:
    def __init__(self, db, path):
        self.db = db
        self.path = path
        self.mem = memory_state(db)
        self.disk = disk_bytes(path)
        self.records = db.stats()["wal_records"]

    def assert_unchanged(self):
        assert memory_state(self.db) == self.mem
        assert disk_bytes(self.path) == self.disk
        assert self.db.stats()["wal_records"] == self.records


@pytest.fixture
def ctx(store_path):
    db = LogKV(store_path)
    prepare(db)
    c = Ctx(db, store_path)
    yield c
    db.close()
    # and what is on disk after a clean close is the state before the bad call
    db2 = LogKV(store_path)
    try:
        assert memory_state(db2) == c.mem
    finally:
        db2.close()


class Unencodable:
    pass


# (name, callable, expected exception)
CASES = [
    # set / []=
    ("set_object", lambda d: d.set("a", object()), TypeError),
    ("set_object_new_key", lambda d: d.set("new", object()), TypeError),
    ("setitem_custom_class", lambda d: d.__setitem__("a", Unencodable()), TypeError),
    ("set_lambda", lambda d: d.set("a", lambda: 1), TypeError),
    ("set_bytes", lambda d: d.set("a", b"raw"), TypeError),
    ("set_complex", lambda d: d.set("a", 1 + 2j), TypeError),
    ("set_decimal", lambda d: d.set("a", decimal.Decimal("1.5")), TypeError),
    ("set_nested_object", lambda d: d.set("d", {"x": {"y": [1, object()]}}), TypeError),
    ("set_object_in_set", lambda d: d.set("a", {Unencodable()}), TypeError),
    ("set_object_in_tuple", lambda d: d.set("a", (1, Unencodable())), TypeError),
    ("set_nan", lambda d: d.set("a", NAN), ValueError),
    ("set_inf", lambda d: d.set("a", INF), ValueError),
    ("set_neg_inf", lambda d: d.set("a", -INF), ValueError),
    ("setitem_nan_new_key", lambda d: d.__setitem__("new", NAN), ValueError),
    ("set_nested_nan", lambda d: d.set("d", {"x": {"y": [1, NAN]}}), ValueError),
    ("set_nested_inf_in_list", lambda d: d.set("l", [1, 2, INF]), ValueError),
    ("set_nan_in_tuple", lambda d: d.set("l", (1, NAN)), ValueError),
    ("set_nan_in_dataclass", lambda d: d.set("a", Point(1.0, NAN)), ValueError),
    ("set_ttl_zero", lambda d: d.set("a", 2, ttl=0), ValueError),
    ("set_ttl_negative", lambda d: d.set("new", 2, ttl=-5), ValueError),
    ("set_ttl_nan_value", lambda d: d.set("t", NAN, ttl=10), ValueError),
    # setdefault
    ("setdefault_object", lambda d: d.setdefault("new", object()), TypeError),
    ("setdefault_nan", lambda d: d.setdefault("new", NAN), ValueError),
    # mset
    ("mset_object", lambda d: d.mset({"x": 1, "a": 99, "y": object()}), TypeError),
    ("mset_nan", lambda d: d.mset({"x": 1, "a": NAN}), ValueError),
    ("mset_inf_last", lambda d: d.mset({"x": 1, "y": 2, "z": [INF]}), ValueError),
    ("mset_ttl_zero", lambda d: d.mset({"x": 1, "a": 2}, ttl=0), ValueError),
    ("mset_ttl_negative", lambda d: d.mset({"x": 1}, ttl=-1), ValueError),
    # update
    ("update_object", lambda d: d.update({"x": 1, "a": 99, "y": object()}), TypeError),
    ("update_kwargs_inf", lambda d: d.update(x=1, y=INF), ValueError),
    ("update_pairs_nan", lambda d: d.update([("x", 1), ("a", 2), ("y", NAN)]), ValueError),
    ("update_mixed_bad_kwarg", lambda d: d.update({"x": 1}, y=object()), TypeError),
    # append / extend
    ("append_object", lambda d: d.append("l", object()), TypeError),
    ("append_object_new_key", lambda d: d.append("new", object()), TypeError),
    ("append_nan", lambda d: d.append("l", NAN), ValueError),
    ("append_inf_new_key", lambda d: d.append("new", INF), ValueError),
    ("append_ttl_zero", lambda d: d.append("l", 3, ttl=0), ValueError),
    ("extend_object", lambda d: d.extend("l", [3, object()]), TypeError),
    ("extend_nan", lambda d: d.extend("l", [3, NAN]), ValueError),
    ("extend_inf_new_key", lambda d: d.extend("new", [-INF]), ValueError),
    ("extend_unique_nan", lambda d: d.extend("l", [3, NAN], unique=True), ValueError),
    ("extend_ttl_negative", lambda d: d.extend("l", [3], ttl=-1), ValueError),
    # incr
    ("incr_to_inf", lambda d: d.incr("f", 1e308), ValueError),
    ("incr_by_inf", lambda d: d.incr("n", INF), ValueError),
    ("incr_by_nan", lambda d: d.incr("n", NAN), ValueError),
    ("incr_new_key_by_nan", lambda d: d.incr("new", NAN), ValueError),
    ("incr_by_str", lambda d: d.incr("n", "x"), TypeError),
    ("incr_ttl_zero", lambda d: d.incr("n", ttl=0), ValueError),
    # expire / touch
    ("expire_zero", lambda d: d.expire("a", 0), ValueError),
    ("touch_negative", lambda d: d.touch("t", -1), ValueError),
    # namespace view
    ("view_set_object", lambda d: d.namespace("ns").set("a", object()), TypeError),
    ("view_mset_nan", lambda d: d.namespace("ns").mset({"a": 1, "b": NAN}), ValueError),
    ("view_update_object", lambda d: d.namespace("ns").update({"a": 1, "b": object()}), TypeError),
]


@pytest.mark.parametrize("name,call,exc", CASES, ids=[c[0] for c in CASES])
def test_bad_input_changes_nothing(ctx, name, call, exc):
    with pytest.raises(exc):
        call(ctx.db)
    ctx.assert_unchanged()
    # the store still works afterwards
    ctx.db["after"] = 1
    assert ctx.db["after"] == 1
    del ctx.db["after"]


def test_nan_is_not_silently_written_as_null(ctx):
    with pytest.raises(ValueError):
        ctx.db["a"] = NAN
    assert ctx.db["a"] == 1
    ctx.assert_unchanged()


# ---------------------------------------------------------------------------
# transactions
# ---------------------------------------------------------------------------


def test_bad_value_in_transaction_rolls_back_whole_block(ctx):
    db = ctx.db
    with pytest.raises(TypeError):
        with db.transaction():
            db["x"] = 1
            db["a"] = 2
            db.incr("n")
            db["y"] = object()
    ctx.assert_unchanged()


def test_nan_in_transaction_rolls_back_whole_block(ctx):
    db = ctx.db
    with pytest.raises(ValueError):
        with db.transaction():
            db.append("l", 3)
            db.mset({"x": 1, "y": 2})
            db.set("z", INF)
    ctx.assert_unchanged()


def test_bad_ttl_in_transaction_rolls_back_whole_block(ctx):
    db = ctx.db
    with pytest.raises(ValueError):
        with db.transaction():
            db["x"] = 1
            db.set("y", 2, ttl=0)
    ctx.assert_unchanged()


def test_bad_value_in_view_transaction(ctx):
    db = ctx.db
    ns = db.namespace("ns")
    with pytest.raises(TypeError):
        with ns.transaction() as t:
            t["x"] = 1
            t.extend("l", [1, object()])
    ctx.assert_unchanged()


def test_bad_value_in_nested_transaction(ctx):
    db = ctx.db
    with pytest.raises(ValueError):
        with db.transaction():
            db["x"] = 1
            with db.transaction():
                db["y"] = 2
                db["z"] = -INF
    ctx.assert_unchanged()


def test_caught_bad_value_inside_transaction_changes_nothing_of_its_own(store_path):
    db = LogKV(store_path)
    try:
        db["a"] = 1
        db["l"] = [1]
        with db.transaction():
            db["x"] = 1
            with pytest.raises(TypeError):
                db["y"] = object()
            with pytest.raises(ValueError):
                db["a"] = NAN
            with pytest.raises(TypeError):
                db.append("l", object())
            with pytest.raises(ValueError):
                db.mset({"z": 1, "w": NAN})
            assert "y" not in db
            assert "z" not in db
            assert db["a"] == 1
            assert db["l"] == [1]
        assert db.copy() == {"a": 1, "l": [1], "x": 1}
    finally:
        db.close()
    db = LogKV(store_path)
    try:
        assert db.copy() == {"a": 1, "l": [1], "x": 1}
    finally:
        db.close()


# ---------------------------------------------------------------------------
# serializer, manual mode
# ---------------------------------------------------------------------------


def _ser(value):
    if isinstance(value, complex):
        return {"re": value.real, "im": value.imag}
    raise TypeError(f"cannot encode {type(value).__name__}")


@pytest.mark.parametrize(
    "name,call,exc",
    [
        ("serializer_refuses", lambda d: d.set("a", Unencodable()), TypeError),
        ("serializer_gives_nan", lambda d: d.set("a", complex(NAN, 0)), ValueError),
        ("serializer_refuses_in_mset", lambda d: d.mset({"x": 1 + 1j, "y": Unencodable()}), TypeError),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_input_with_serializer_changes_nothing(store_path, name, call, exc):
    db = LogKV(store_path, serializer=_ser)
    try:
        prepare(db)
        db["c"] = 1 + 2j
        c = Ctx(db, store_path)
        with pytest.raises(exc):
            call(db)
        c.assert_unchanged()
    finally:
        db.close()


def test_bad_input_in_manual_mode_changes_nothing(store_path):
    db = LogKV(store_path, autosave=False)
    try:
        prepare(db)
        db.flush()
        db["pending"] = 1
        c = Ctx(db, store_path)
        with pytest.raises(TypeError):
            db["x"] = object()
        with pytest.raises(ValueError):
            db.mset({"y": 1, "z": NAN})
        assert memory_state(db) == c.mem
        assert disk_bytes(store_path) == c.disk
        db.flush()
    finally:
        db.close()
    db = LogKV(store_path)
    try:
        data, _ = memory_state(db)
        assert data == c.mem[0]
        assert "x" not in data and "y" not in data
    finally:
        db.close()


def test_non_finite_never_reaches_disk(store_path):
    db = LogKV(store_path)
    try:
        for v in (NAN, INF, -INF, [NAN], {"k": INF}):
            with pytest.raises(ValueError):
                db["v"] = v
        db["ok"] = 1.5
    finally:
        db.close()
    with open(store_path, "rb") as f:
        raw = f.read()
    assert b"NaN" not in raw and b"Infinity" not in raw
    assert b'"v"' not in raw
    db = LogKV(store_path)
    try:
        assert db.copy() == {"ok": 1.5}
        assert not any(isinstance(x, float) and not math.isfinite(x) for x in db.values())
    finally:
        db.close()
