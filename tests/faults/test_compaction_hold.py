"""A compaction reports the longest time it held the write lock: the most it
can have made any writer wait (stats()["last_compaction_lock_hold_ms"], the
CLI's compact summary, CompactResult.longest_lock_hold).

The figure must cover every step done under the lock: here the renames of
step 4/5 are slowed by a known amount through the FileSystem layer, and the
figure must be at least that, as seen by another store of the same file.
"""
from __future__ import annotations

import time
from typing import Any

from fsfaults import HookFS
from logkv import LogKV
from logkv._compact import compact_store

STRETCH = 0.2


class SlowRenames(HookFS):
    """Every rename (steps 4 and 5 run under the write lock) takes STRETCH longer."""

    def before(self, kind: str, path: str, args: tuple) -> Any:
        if kind == "replace":
            time.sleep(STRETCH)
        return None


def test_the_longest_hold_covers_the_steps_under_the_lock(tmp_path: Any) -> None:
    path = str(tmp_path / "db.json")
    db = LogKV(path, compact_on_close=False, auto_compact=False)
    for i in range(100):
        db.set(f"k{i}", i)
    assert db.stats()["last_compaction_lock_hold_ms"] is None
    result = compact_store(path, fs=SlowRenames())
    assert result is not None
    assert result.longest_lock_hold >= STRETCH
    held = db.stats()["last_compaction_lock_hold_ms"]  # another store sees it
    assert abs(held - result.longest_lock_hold * 1000) < 0.002
    assert held >= STRETCH * 1000
    db.compact()  # an ordinary compaction replaces the figure
    assert db.stats()["last_compaction_lock_hold_ms"] < held
    assert db.get("k99") == 99
    db.close()
