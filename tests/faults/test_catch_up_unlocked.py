"""A store that fell far behind another process's writes (or its compaction)
reads most of the backlog *before* it takes the write lock, so the other
writers are not held up while it parses (design §7, "Catching up"). The
backlog is counted by where it was applied: with the lock held by this store
or not. Two stores on one path in one process coordinate exactly as two
processes do (separate lock descriptors, separate shared-page maps)."""
from __future__ import annotations

import fcntl
import os

import pytest

from logkv import LogKV


def _watch_applies(store: LogKV, lock_path: str) -> dict[str, int]:
    """Count records the store applies with the write lock held and without."""
    counts = {"locked": 0, "unlocked": 0}
    probe = os.open(lock_path, os.O_RDWR)
    engine = store._e
    original = engine._apply_records

    def apply(recs, *args, **kwargs):
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            counts["locked"] += len(recs)  # only this store can hold it here
        else:
            fcntl.flock(probe, fcntl.LOCK_UN)
            counts["unlocked"] += len(recs)
        return original(recs, *args, **kwargs)

    engine._apply_records = apply
    return counts


@pytest.mark.parametrize("how", ["write", "read", "transaction"])
def test_a_backlog_is_read_before_taking_the_lock(store_path, how):
    behind = LogKV(store_path, auto_compact=False, compact_on_close=False)
    writer = LogKV(store_path, auto_compact=False, compact_on_close=False)
    try:
        behind["start"] = 1
        counts = _watch_applies(behind, store_path + ".lock")
        for i in range(3000):  # ~250 KB of records, past the 64 KiB read-ahead step
            writer[f"k{i}"] = {"i": i, "pad": "x" * 40}
        if how == "write":
            behind["mine"] = 1
        elif how == "read":
            assert behind["k2999"]["i"] == 2999
        else:
            with behind.transaction() as tx:
                tx["mine"] = tx["k2999"]["i"]
        assert len(behind) == len(writer)
        assert counts["unlocked"] >= 2900, counts
        assert counts["locked"] <= 100, counts
    finally:
        writer.close()
        behind.close()


def test_a_compaction_in_between_is_followed_without_the_lock(store_path):
    behind = LogKV(store_path, auto_compact=False, compact_on_close=False)
    writer = LogKV(store_path, auto_compact=False, compact_on_close=False)
    try:
        behind["start"] = 1
        for i in range(3000):
            writer[f"a{i}"] = {"i": i, "pad": "x" * 40}
        writer.compact()  # folds a*, rotates the log
        for i in range(3000):  # records in the new log, after the rotation
            writer[f"b{i}"] = {"i": i, "pad": "y" * 40}
        counts = _watch_applies(behind, store_path + ".lock")
        gen = behind._e.log_gen
        behind["mine"] = 2
        assert behind._e.log_gen == gen + 1  # followed the rotation, did not reload
        assert behind.copy() == {**writer.copy(), "mine": 2}
        writer.get("mine")  # catch up on behind's write
        assert behind.stats()["wal_records"] == writer.stats()["wal_records"] == 3001
        # Both the old log's rest and the new log's records were read unlocked.
        assert counts["unlocked"] >= 5900, counts
        assert counts["locked"] <= 100, counts
    finally:
        writer.close()
        behind.close()


class _CompactorDied(Exception):
    pass


def _compact_and_die_after_rename(store_path, *, while_preparing=None):
    """Run a compaction that stops right after renaming its new log in, as if
    killed there (nothing published); ``while_preparing`` runs when the new
    log is about to be written."""
    from logkv import _compact
    from logkv._fs import FileSystem

    class DyingFS(FileSystem):
        def open(self, path, flags, mode=0o644):
            if while_preparing is not None and ".wal.tmp." in path:
                while_preparing()
            return super().open(path, flags, mode)

        def replace(self, src, dst):
            super().replace(src, dst)
            if dst.endswith(".wal"):
                raise _CompactorDied

    with pytest.raises(_CompactorDied):
        _compact.compact_store(store_path, fs=DyingFS())


def test_a_compactor_that_died_after_its_rename_leaves_no_stale_offset_mapping(store_path):
    """A compactor killed between renaming its new log in and publishing it
    leaves the shared page describing the rotation before; the next lock
    holder publishes the new log, and no store may map its offset with those
    stale words (found by the soak: a store then replayed a record twice)."""
    a = LogKV(store_path, auto_compact=False, compact_on_close=False)
    b = LogKV(store_path, auto_compact=False, compact_on_close=False)
    try:
        # Sizes chosen so that the stale mapping lands inside the new log:
        # rotation 1 starts past what rotation 2 folds, and before its end.
        for i in range(1200):
            a[f"k{i}"] = i
        a.compact()  # rotation 1: the page maps the old log's offsets onto the new one
        for i in range(600):
            a[f"m{i}"] = i
        assert b["m599"] == 599  # b follows rotation 1 and reads well past its mapping
        for i in range(300):
            a[f"n{i}"] = i

        def write_more():
            # Records that arrive while the new log is prepared are copied
            # into it: it grows past the stale mapping's target offset.
            for i in range(1500):
                a[f"p{i}"] = i

        _compact_and_die_after_rename(store_path, while_preparing=write_more)
        a["after"] = 1  # the next lock holder publishes the renamed log
        assert b.copy() == a.copy()
        assert b["n299"] == 299 and b["after"] == 1
    finally:
        a.close()
        b.close()


def test_read_ahead_ignores_an_end_published_for_the_next_log(store_path):
    """A compactor publishes the new log's end before the new generation; a
    store reading ahead without the lock in between must not take that end
    for the old log's, or it reads an unpublished record the compactor is
    about to cut (the soak found a store that did, then followed the rotation
    one record off)."""
    from logkv._lock import W_END, W_SEQ, W_WRITER
    from logkv._record import build_set_line

    a = LogKV(store_path, auto_compact=False, compact_on_close=False)
    b = LogKV(store_path, auto_compact=False, compact_on_close=False)
    try:
        b["start"] = 1
        for i in range(2000):  # well past the 64 KiB read-ahead step
            a[f"k{i}"] = {"i": i, "pad": "x" * 40}
        words = a._e._words
        published_end, published_seq = words[W_END], words[W_SEQ]
        # A writer died after writing its record, before publishing it ...
        phantom = build_set_line(published_seq + 1, "phantom", b"1", None, False)
        with open(store_path + ".wal", "ab") as f:
            f.write(phantom)
        # ... and a compactor, mid-publication, has set its new log's end
        # (here larger than the old log's) but not yet the new generation.
        words[W_WRITER] = os.getpid()
        words[W_END] = published_end + len(phantom)
        with b._e.lock:
            b._e._prefetch()
        assert b._e.seq <= published_seq
        assert "phantom" not in b._e.data
        words[W_END] = published_end
        words[W_WRITER] = 0
        os.truncate(store_path + ".wal", published_end)
        assert b["k1999"]["i"] == 1999 and "phantom" not in b
    finally:
        a.close()
        b.close()


def test_a_read_only_store_never_takes_in_a_dead_writers_record(store_path):
    """A writer killed after writing its record and before publishing it
    leaves the record in the log until the next writer cuts it. A read-only
    store (it never repairs) that opens in between must not take it in: the
    next writer writes a different record with the same sequence number in
    its place (the soak saw a read-only store hold such a value, below an
    acknowledged counter, or read the log one record off later)."""
    from logkv._lock import W_SEQ, W_WRITER
    from logkv._record import build_set_line

    a = LogKV(store_path, auto_compact=False, compact_on_close=False)
    try:
        for i in range(10):
            a["counter"] = i
        words = a._e._words
        phantom = build_set_line(words[W_SEQ] + 1, "counter", b"999", None, False)
        with open(store_path + ".wal", "ab") as f:
            f.write(phantom)
        words[W_WRITER] = 999_999  # the dead writer's mark
        ro = LogKV(store_path, read_only=True)
        try:
            assert ro["counter"] == 9
            a["counter"] = 10  # repairs (cuts the phantom), then writes seq+1 itself
            a["other"] = "x" * 50
            assert ro["counter"] == 10 and ro["other"] == "x" * 50
            assert ro.copy() == a.copy()
            a.compact()
            a["after"] = 1
            assert ro.copy() == a.copy()
        finally:
            ro.close()
    finally:
        a.close()


def test_a_read_only_store_on_a_dead_compactors_log_reads_it_as_live(store_path):
    """A read-only store that opens while a dead compactor's new log sits,
    unpublished, at the path holds that very file; once a writer publishes
    it, it is the live log, not an old one to read to its end (where a dead
    writer's unpublished record may lie)."""
    from logkv._lock import W_SEQ, W_WRITER
    from logkv._record import build_set_line

    a = LogKV(store_path, auto_compact=False, compact_on_close=False)
    try:
        for i in range(200):
            a[f"k{i}"] = i
        words = a._e._words
        before = [words[i] for i in range(10)]
        _compact_and_die_after_rename(store_path)
        # In this process the compactor's own close repaired at once; put the
        # page back as a killed compactor leaves it: renamed, nothing published.
        for i in range(1, 10):
            words[i] = before[i]
        words[W_WRITER] = 999_999
        ro = LogKV(store_path, read_only=True)  # opens the unpublished new log
        assert ro._e.log.inode() == (os.stat(store_path + ".wal").st_dev,
                                     os.stat(store_path + ".wal").st_ino)
        try:
            for i in range(2000):  # publishes it (repair), then well past 64 KiB
                a[f"m{i}"] = {"i": i, "pad": "x" * 40}
            published = words[W_SEQ]
            with open(store_path + ".wal", "ab") as f:
                f.write(build_set_line(published + 1, "phantom", b"1", None, False))
            words[W_WRITER] = 999_999  # a writer died before publishing it
            with ro._e.lock:
                ro._e._prefetch()
            assert ro._e.seq <= published and "phantom" not in ro._e.data
            assert ro["m1999"]["i"] == 1999 and "phantom" not in ro
            a["after"] = 1  # repairs: the phantom is cut
            assert ro.copy() == a.copy()
        finally:
            ro.close()
    finally:
        a.close()
