"""Random API calls against a plain-dict model, with reopens from disk,
crash copies (files copied without close), transactions that commit or roll
back, compaction and manual mode."""
from __future__ import annotations

import copy
import os
import shutil
import tempfile

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition, rule,
                                 run_state_machine_as_test)

from logkv import LogKV, RedisKV

FAR_TTL = 1000.0

KEYS = st.sampled_from(["a", "b", "c", "n", "l", "ns:a", "ns:b", "x:y:a"])
NS_KEYS = st.sampled_from(["a", "b", "c"])

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
VALUES = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=6,
)
AMOUNTS = st.integers(min_value=-5, max_value=5) | st.floats(min_value=-2, max_value=2, allow_nan=False)
TTLS = st.sampled_from([None, FAR_TTL])

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, VALUES, TTLS),
        st.tuples(st.just("del"), KEYS),
        st.tuples(st.just("incr"), KEYS, AMOUNTS),
        st.tuples(st.just("append"), KEYS, VALUES),
        st.tuples(st.just("mset"), st.dictionaries(KEYS, VALUES, max_size=3), TTLS),
    ),
    min_size=1,
    max_size=6,
)


class Boom(Exception):
    pass


def canon(v):
    """A comparable form that keeps types apart (True is not 1, 1.0 is not 1)."""
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, int):
        return ("int", v)
    if isinstance(v, float):
        return ("float", v)
    if isinstance(v, str):
        return ("str", v)
    if v is None:
        return ("none",)
    if isinstance(v, list):
        return ("list", tuple(canon(x) for x in v))
    if isinstance(v, dict):
        return ("dict", tuple(sorted((k, canon(x)) for k, x in v.items())))
    return ("other", type(v).__name__, repr(v))


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Model:
    def __init__(self):
        self.data = {}
        self.ttl = set()

    def clone(self):
        m = Model()
        m.data = copy.deepcopy(self.data)
        m.ttl = set(self.ttl)
        return m


def apply_op(target, model, op):
    """Apply op to the store (or view/transaction) and to the model."""
    kind = op[0]
    if kind == "set":
        _, k, v, ttl = op
        target.set(k, copy.deepcopy(v), ttl=ttl)
        model.data[k] = copy.deepcopy(v)
        (model.ttl.add if ttl else model.ttl.discard)(k)
    elif kind == "del":
        _, k = op
        got = target.pop(k, "<absent>")
        if k in model.data:
            assert canon(got) == canon(model.data[k])
            del model.data[k]
            model.ttl.discard(k)
        else:
            assert got == "<absent>"
    elif kind == "incr":
        _, k, amount = op
        if k in model.data and not is_number(model.data[k]):
            try:
                target.incr(k, amount)
            except TypeError:
                pass
            else:
                raise AssertionError(f"incr on {model.data[k]!r} did not raise TypeError")
            return
        new = model.data.get(k, 0) + amount
        got = target.incr(k, amount)
        assert canon(got) == canon(new), (got, new)
        if k not in model.data:
            model.ttl.discard(k)
        model.data[k] = new
    elif kind == "append":
        _, k, v = op
        if k in model.data and not isinstance(model.data[k], list):
            try:
                target.append(k, copy.deepcopy(v))
            except TypeError:
                pass
            else:
                raise AssertionError(f"append on {model.data[k]!r} did not raise TypeError")
            return
        new = model.data.get(k, []) + [copy.deepcopy(v)]
        got = target.append(k, copy.deepcopy(v))
        assert canon(got) == canon(new)
        if k not in model.data:
            model.ttl.discard(k)
        model.data[k] = new
    elif kind == "mset":
        _, mapping, ttl = op
        target.mset(copy.deepcopy(mapping), ttl=ttl)
        for k, v in mapping.items():
            model.data[k] = copy.deepcopy(v)
            (model.ttl.add if ttl else model.ttl.discard)(k)
    else:  # pragma: no cover
        raise AssertionError(kind)


class LogKVMachine(RuleBasedStateMachine):
    HAS_MANUAL_MODE = True

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="logkv-model-")
        self.path = os.path.join(self.dir, "db.json")
        self.manual = False
        self.db = self._open(manual=False)
        self.model = Model()
        self.durable = Model()  # what the files hold (differs from model only in manual mode)
        self.copies = 0

    def teardown(self):
        try:
            self.db.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _logged(self):
        if not self.manual:
            self.durable = self.model.clone()

    # -- what differs between engines ----------------------------------------

    def _open(self, manual):
        return LogKV(self.path, autosave=not manual)

    def _records(self):
        """Log records written so far (None where there is no log)."""
        return self.db.stats()["wal_records"]

    def _survivor(self):
        """A store holding what a crash right now would leave: a copy of the
        files taken without closing."""
        self.copies += 1
        dest = os.path.join(self.dir, f"copy{self.copies}")
        os.mkdir(dest)
        for suffix in ("", ".wal"):
            if os.path.exists(self.path + suffix):
                shutil.copyfile(self.path + suffix, os.path.join(dest, "db.json" + suffix))
        return LogKV(os.path.join(dest, "db.json"))

    # -- plain calls -------------------------------------------------------

    @rule(k=KEYS, v=VALUES, ttl=TTLS)
    def set(self, k, v, ttl):
        apply_op(self.db, self.model, ("set", k, v, ttl))
        self._logged()

    @rule(k=KEYS, v=VALUES)
    def setitem(self, k, v):
        self.db[k] = copy.deepcopy(v)
        self.model.data[k] = copy.deepcopy(v)
        self.model.ttl.discard(k)
        self._logged()

    @rule(k=KEYS)
    def delete(self, k):
        if k in self.model.data:
            del self.db[k]
            del self.model.data[k]
            self.model.ttl.discard(k)
        else:
            try:
                del self.db[k]
            except KeyError:
                pass
            else:
                raise AssertionError("del of a missing key did not raise KeyError")
        self._logged()

    @rule(k=KEYS)
    def pop(self, k):
        apply_op(self.db, self.model, ("del", k))
        self._logged()

    @rule(k=KEYS, amount=AMOUNTS)
    def incr(self, k, amount):
        apply_op(self.db, self.model, ("incr", k, amount))
        self._logged()

    @rule(k=KEYS, v=VALUES)
    def append(self, k, v):
        apply_op(self.db, self.model, ("append", k, v))
        self._logged()

    @rule(mapping=st.dictionaries(KEYS, VALUES, max_size=4), ttl=TTLS)
    def mset(self, mapping, ttl):
        apply_op(self.db, self.model, ("mset", mapping, ttl))
        self._logged()

    @rule(mapping=st.dictionaries(KEYS, VALUES, max_size=4))
    def update(self, mapping):
        self.db.update(copy.deepcopy(mapping))
        for k, v in mapping.items():
            self.model.data[k] = copy.deepcopy(v)
            self.model.ttl.discard(k)
        self._logged()

    @rule(k=KEYS, v=VALUES)
    def setdefault(self, k, v):
        got = self.db.setdefault(k, copy.deepcopy(v))
        if k in self.model.data:
            assert canon(got) == canon(self.model.data[k])
        else:
            assert canon(got) == canon(v)
            self.model.data[k] = copy.deepcopy(v)
            self.model.ttl.discard(k)
        self._logged()

    @rule(k=KEYS)
    def expire_or_persist(self, k):
        if k not in self.model.data:
            return
        if k in self.model.ttl:
            self.db.persist(k)
            self.model.ttl.discard(k)
        else:
            self.db.expire(k, FAR_TTL)
            self.model.ttl.add(k)
        self._logged()

    @rule()
    def clear(self):
        self.db.clear()
        self.model.data.clear()
        self.model.ttl.clear()
        self._logged()

    # -- namespaces ----------------------------------------------------------

    @rule(k=NS_KEYS, v=VALUES)
    def ns_set(self, k, v):
        ns = self.db.namespace("ns")
        ns[k] = copy.deepcopy(v)
        self.model.data["ns:" + k] = copy.deepcopy(v)
        self.model.ttl.discard("ns:" + k)
        self._logged()

    @rule(k=NS_KEYS)
    def ns_get(self, k):
        ns = self.db.namespace("ns")
        got = ns.get(k, "<absent>")
        want = self.model.data.get("ns:" + k, "<absent>")
        assert canon(got) == canon(want)

    @rule(k=NS_KEYS, amount=AMOUNTS)
    def nested_ns_incr(self, k, amount):
        view = self.db.namespace("x").namespace("y")
        apply_op(view, _PrefixedModel(self.model, "x:y:"), ("incr", k, amount))
        self._logged()

    # -- transactions --------------------------------------------------------

    @precondition(lambda self: not self.manual)
    @rule(ops=OPS, use_view=st.booleans())
    def transaction_commits(self, ops, use_view):
        working = self.model.clone()
        before_records = self._records()
        if use_view:
            view = self.db.namespace("ns")
            target_model = _PrefixedModel(working, "ns:")
            ctx = view.transaction()
        else:
            target_model = working
            ctx = self.db.transaction()
        with ctx as t:
            for op in ops:
                op = _strip_for_view(op) if use_view else op
                apply_op(t, target_model, op)
                # the block reads its own writes
                for k in _op_keys(op):
                    want = target_model.data.get(k, "<absent>")
                    assert canon(t.get(k, "<absent>")) == canon(want)
        self.model = working
        after_records = self._records()
        if after_records is not None:
            assert after_records - before_records <= 1  # one record per transaction
        self._logged()

    @precondition(lambda self: not self.manual)
    @rule(ops=OPS)
    def transaction_rolls_back(self, ops):
        working = self.model.clone()
        records = self._records()
        try:
            with self.db.transaction() as t:
                for op in ops:
                    apply_op(t, working, op)
                raise Boom()
        except Boom:
            pass
        else:  # pragma: no cover
            raise AssertionError("Boom swallowed")
        assert self._records() == records

    # -- lifecycle ---------------------------------------------------------

    @rule()
    def compact(self):
        self.db.compact()

    @rule(manual=st.booleans())
    def close_and_reopen(self, manual):
        self.db.close()
        self.durable = self.model.clone()
        self.manual = manual and self.HAS_MANUAL_MODE
        self.db = self._open(self.manual)

    @rule()
    def flush(self):
        self.db.flush()
        self.durable = self.model.clone()

    @rule()
    def reload(self):
        self.db.reload()
        if self.manual:
            self.model = self.durable.clone()

    @rule()
    def crash_copy_matches_durable_state(self):
        other = self._survivor()
        try:
            assert canon(other.copy()) == canon(self.durable.data)
            for k in self.durable.data:
                assert (other.ttl(k) is not None) == (k in self.durable.ttl), k
        finally:
            other.close()

    # -- the check after every step -----------------------------------------

    @invariant()
    def store_matches_model(self):
        db, model = self.db, self.model
        assert canon(db.copy()) == canon(model.data)
        assert len(db) == len(model.data)
        assert sorted(db.keys()) == sorted(model.data)
        for k, v in model.data.items():
            assert canon(db[k]) == canon(v)
            assert (db.ttl(k) is not None) == (k in model.ttl), k
        ns_expected = {k[3:]: v for k, v in model.data.items() if k.startswith("ns:")}
        assert canon(db.namespace("ns").copy()) == canon(ns_expected)


class _PrefixedModel:
    """Presents a Model to apply_op with keys prefixed, as a view does."""

    def __init__(self, model, prefix):
        self._model = model
        self._prefix = prefix
        self.data = _PrefixedDict(model.data, prefix)
        self.ttl = _PrefixedSet(model.ttl, prefix)


class _PrefixedDict:
    def __init__(self, d, prefix):
        self.d, self.p = d, prefix

    def __contains__(self, k):
        return self.p + k in self.d

    def __getitem__(self, k):
        return self.d[self.p + k]

    def __setitem__(self, k, v):
        self.d[self.p + k] = v

    def __delitem__(self, k):
        del self.d[self.p + k]

    def get(self, k, default=None):
        return self.d.get(self.p + k, default)


class _PrefixedSet:
    def __init__(self, s, prefix):
        self.s, self.p = s, prefix

    def add(self, k):
        self.s.add(self.p + k)

    def discard(self, k):
        self.s.discard(self.p + k)


def _strip_for_view(op):
    """Keys used through the ``ns`` view: drop any prefix so they stay short."""
    kind = op[0]

    def short(k):
        return k.split(":")[-1]

    if kind == "mset":
        return ("mset", {short(k): v for k, v in op[1].items()}, op[2])
    return (kind, short(op[1])) + tuple(op[2:])


def _op_keys(op):
    if op[0] == "mset":
        return list(op[1])
    return [op[1]]


LogKVMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
TestLogKVModel = LogKVMachine.TestCase


class RedisKVMachine(LogKVMachine):
    """The same rules on RedisKV: reopening is a new client, and what
    "survives" is what a second client sees (every acknowledged write)."""

    HAS_MANUAL_MODE = False
    url = ""

    def _open(self, manual):
        return RedisKV(self.url)

    def _records(self):
        return None

    def _survivor(self):
        return RedisKV(self.url)

    def teardown(self):
        try:
            self.db.clear()
        finally:
            super().teardown()


def test_redis_kv_follows_the_model(redis_url):
    RedisKVMachine.url = redis_url
    run_state_machine_as_test(RedisKVMachine, settings=settings(
        max_examples=15, stateful_step_count=25, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much]))
