"""Power loss: bytes and folder entries that were never synced may vanish
(CONTRACT §4.2, §4.3; design.md §8).

``PowerCutFS`` lets every call reach the real files and keeps a page-cache
model beside them: per file, what was fsynced and what was written since; for
the folder, the entries as of the last folder fsync and the changes since
(creations, renames, links, unlinks, kept in order). It captures the model
just before and just after every mutating call. Each captured moment is then
cut many ways (all un-synced data lost, all kept, and random mixes: an
ordered prefix of the folder changes, and per file its un-synced bytes lost,
cut to any prefix, kept, or cut with a run of zeros after the prefix),
written into a fresh folder and opened with the real file system.

* ``"always"``: every cut of every moment opens, and holds the last
  acknowledged state or that state plus the whole operation in flight
  (§4.2). A missing fsync of the folder after a rename or a new file, or of
  the log before a call returns, shows up here.
* ``"interval"``: every cut opens; it holds a prefix of the acknowledged
  operations that includes every operation acknowledged more than
  ``autosave_delay`` (+ slack for one fsync in flight and the scheduler)
  before the cut, and everything before an explicit ``flush()`` (§4.3).
"""
from __future__ import annotations

import os
import random
import shutil
import time
from typing import Any

import pytest

from fsfaults import FrozenDisk, NoSyncFS, PowerCutFS, fast_tmp, materialise  # noqa: F401
from logkv import LogKV
from test_crash_points import WORKLOADS, Ctx, Tracker, _same

RANDOM_CUTS = 12
CUTS: dict[str, int] = {}


def open_cut(files: dict[str, bytes], folder: str) -> dict[str, Any]:
    """Materialise a cut, open it (it must open), return its state; then check
    the store takes a write and comes back with it."""
    materialise(files, folder)
    path = os.path.join(folder, "db.json")
    db = LogKV(path, durability="os", compact_on_close=False, auto_compact=False, _fs=NoSyncFS())
    state = db.copy()
    db["after_cut"] = 1
    db.close()
    db = LogKV(path, durability="os", compact_on_close=False, auto_compact=False, _fs=NoSyncFS())
    again = db.copy()
    db.close()
    assert again == {**state, "after_cut": 1}, (state, again)
    shutil.rmtree(folder)
    return state


def cuts_of(frozen: FrozenDisk, rng: random.Random, n: int):
    yield "durable", frozen.cut("durable")
    yield "volatile", frozen.cut("volatile")
    for i in range(n):
        yield f"random{i}", frozen.cut(rng)


# =========================================================================== "always"


def run_captured(workload, folder: str) -> PowerCutFS:
    os.makedirs(folder)
    fs = PowerCutFS(folder, capture=True)
    t = Tracker()
    c = Ctx(os.path.join(folder, "db.json"), fs, t)
    c._publish()
    workload(c, "always")
    for db in c.stores:
        c.do(_same, db.close)
    fs.states.append(fs.state(("end", "", "", t.allowed())))
    return fs


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_always_survives_power_loss(fast_tmp, name: str, capsys) -> None:
    fs = run_captured(WORKLOADS[name], str(fast_tmp / "run"))
    rng = random.Random(f"always-{name}")
    cuts = 0
    for k, frozen in enumerate(fs.states):
        when, kind, fname, allowed = frozen.label
        for how, files in cuts_of(frozen, rng, RANDOM_CUTS):
            state = open_cut(files, str(fast_tmp / "cut"))
            cuts += 1
            assert state in allowed, (
                f"power cut {when} {kind}({fname}) [{how}], moment {k}: state {state}\n"
                f"is none of {allowed}\nfiles: { {n: v[:200] for n, v in files.items()} }")
    CUTS[f"always-{name}"] = cuts
    with capsys.disabled():
        print(f"\n  power cuts {name}/always: {len(fs.states)} moments, {cuts} cuts")


# =========================================================================== "interval"

DELAY = 0.05
SLACK = 0.6  # one fsync in flight, and a loaded 2-core machine's scheduler


def test_interval_loses_at_most_the_last_delay(fast_tmp, capsys) -> None:
    folder = str(fast_tmp / "run")
    os.makedirs(folder)
    fs = PowerCutFS(folder, capture=True)
    path = os.path.join(folder, "db.json")
    history: list[dict[str, Any]] = [{}]  # state after each acknowledged operation
    acked_at: list[float] = [0.0]
    flushed = [0]  # number of operations covered by an explicit flush()
    in_flight: list[dict[str, Any] | None] = [None]

    def publish() -> None:
        fs.label = (list(history), list(acked_at), flushed[0], in_flight[0])

    publish()
    db = LogKV(path, durability="interval", autosave_delay=DELAY, auto_compact=False,
               compact_on_close=False, _fs=fs)
    rng = random.Random(7)

    def op(i: int) -> None:
        nxt = dict(history[-1])
        if i % 3 == 0:
            nxt["n"] = nxt.get("n", 0) + 1
            in_flight[0] = nxt
            publish()
            assert db.incr("n") == nxt["n"]
        else:
            nxt[f"k{i % 5}"] = i
            in_flight[0] = nxt
            publish()
            db[f"k{i % 5}"] = i
        history.append(nxt)
        acked_at.append(time.monotonic())
        in_flight[0] = None
        publish()

    def moment() -> None:
        fs.states.append(fs.state())

    i = 0
    for burst in range(6):
        for _ in range(rng.randint(1, 4)):
            op(i)
            i += 1
            moment()
        time.sleep(rng.choice([0.0, 0.01, DELAY / 2, DELAY * 2, 0.3]))
        moment()
        if burst == 3:
            db.flush()
            flushed[0] = len(history) - 1
            publish()
            moment()
    time.sleep(DELAY + SLACK)
    moment()
    db.close()

    checked = lost_some = 0
    for k, frozen in enumerate(fs.states):
        lab = frozen.label
        if isinstance(lab[0], str):  # captured at a call: (when, kind, file, label)
            lab = lab[3]
        hist, times, flushed_n, flying = lab
        must = max(flushed_n, max(j for j, t in enumerate(times)
                                  if t <= frozen.at - (DELAY + SLACK)))
        for how, files in cuts_of(frozen, random.Random(k), RANDOM_CUTS):
            got = open_cut(files, str(fast_tmp / "cut"))
            checked += 1
            if flying is not None and got == flying:
                continue  # the operation in flight, whole
            # The log is append-only: what survives is a prefix of the
            # operations, at least every one that had to be durable.
            prefixes = [j for j, s in enumerate(hist) if s == got]
            assert prefixes, f"[{how}] moment {k}: {got} is no prefix of {hist}"
            assert max(prefixes) >= must, (
                f"[{how}] moment {k}: state {got} is the prefix of {max(prefixes)} operations, "
                f"but {must} were acknowledged more than {DELAY + SLACK:.2f} s before the cut "
                "(or flushed)")
            lost_some += max(prefixes) < len(hist) - 1
    # The final moment, well after the last write, must have lost nothing.
    final = fs.states[-1]
    assert open_cut(final.cut("durable"), str(fast_tmp / "cut")) == history[-1]
    CUTS["interval"] = checked
    with capsys.disabled():
        print(f"\n  power cuts interval: {len(fs.states)} moments, {checked} cuts "
              f"({lost_some} lost recent writes, as allowed)")


def test_os_mode_flush_is_a_sync_point(fast_tmp) -> None:
    """``durability="os"``: after ``flush()`` returns, a power cut loses nothing."""
    folder = str(fast_tmp / "run")
    os.makedirs(folder)
    fs = PowerCutFS(folder)
    path = os.path.join(folder, "db.json")
    db = LogKV(path, durability="os", auto_compact=False, compact_on_close=False, _fs=fs)
    db["a"] = 1
    db.incr("n", 3)
    assert open_cut(fs.state().cut("durable"), str(fast_tmp / "cut")) == {}
    db.flush()
    frozen = fs.state()
    rng = random.Random(3)
    for how, files in cuts_of(frozen, rng, 20):
        assert open_cut(files, str(fast_tmp / "cut")) == {"a": 1, "n": 3}, how
    db.close()


def test_model_catches_a_missing_folder_fsync(fast_tmp) -> None:
    """The model itself: a file created and synced, but whose folder was not
    synced, can vanish in a cut; after fsync_dir it cannot."""
    folder = str(fast_tmp / "m")
    os.makedirs(folder)
    fs = PowerCutFS(folder)
    fd = fs.open(os.path.join(folder, "f"), os.O_WRONLY | os.O_CREAT, 0o644)
    fs.write(fd, b"hello")
    fs.fsync(fd)
    assert "f" not in fs.state().cut("durable")
    fs.fsync_dir(folder)
    assert fs.state().cut("durable") == {"f": b"hello"}
    fs.write(fd, b" world")
    seen = {fs.state().cut(random.Random(i))["f"] for i in range(200)}
    assert b"hello" in seen and b"hello world" in seen and all(s.startswith(b"hello") for s in seen)
    fs.close(fd)
    fs.replace(os.path.join(folder, "f"), os.path.join(folder, "g"))
    assert fs.state().cut("durable") == {"f": b"hello"}
    assert fs.state().cut("volatile") == {"g": b"hello world"}


def test_zz_report_cuts(capsys) -> None:
    with capsys.disabled():
        print(f"\n  power cuts covered: {sum(CUTS.values())} {CUTS}")
