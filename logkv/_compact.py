"""Compaction: fold the log into a new snapshot and rotate the log.

Works from the files, never from a store's memory: values in memory are the
caller's objects and may have been changed in place without being logged, and
only logged changes may reach the snapshot. The numbered steps are those of
docs/design.md §6; the crash tests name them.

Run as ``python -m logkv._compact PATH`` it compacts in a child process, so
the process that asked never holds its GIL for the parse and the dump.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

from ._errors import CorruptionError, LogKVError, StorageError
from ._fs import DEFAULT_FS, FileSystem
from ._lock import (W_COMPACTIONS, W_END, W_GEN, W_LAST_COMPACTION_HOLD_US,
                    W_LAST_COMPACTION_MS, W_ROT_FROM, W_ROT_TO, W_SNAPSHOT_SIZE, W_WRITER)
from ._record import ValueCodec, build_header
from ._snapshot import (encode_snapshot, install_snapshot, remove_stale_temps, set_aside_old_backup,
                        write_snapshot)

EXIT_BUSY = 3


@dataclass
class CompactResult:
    snapshot_before: int
    log_before: int
    snapshot_after: int
    log_after: int
    keys: int
    seq: int
    seconds: float
    longest_lock_hold: float  # seconds: the most any writer waited for this compaction


def compact_store(path: str, *, create_backup: bool = True, indent: int | None = None,
                  sort_keys: bool = False, fs: FileSystem | None = None,
                  wait: float | None = None, lock_timeout: float | None = 10.0,
                  progress: Callable[[str], None] | None = None) -> CompactResult | None:
    """Compact the store at ``path``; None if another compaction holds the lock
    for longer than ``wait`` seconds (None: wait as long as it takes).

    An I/O failure raises StorageError; the store is then as it was (the
    steps of design §6 are each safe to stop after)."""
    try:
        return _compact(path, create_backup=create_backup, indent=indent, sort_keys=sort_keys,
                        fs=fs, wait=wait, lock_timeout=lock_timeout, progress=progress)
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"{path}: compaction failed: {exc.strerror or exc}") from exc
    except CorruptionError as exc:
        if exc.path is not None:
            raise
        raise CorruptionError(f"{path}: {exc}", path=path, offset=None) from None


def _compact(path: str, *, create_backup: bool, indent: int | None, sort_keys: bool,
             fs: FileSystem | None, wait: float | None, lock_timeout: float | None,
             progress: Callable[[str], None] | None) -> CompactResult | None:
    from ._engine import Engine

    fs = fs or DEFAULT_FS
    say = progress or (lambda _msg: None)
    t0 = time.monotonic()
    say("loading snapshot and log")
    raw = Engine(path, codec=ValueCodec(), durability="os", compact_on_close=False,
                 cleanup_expired_on_load=False, auto_compact=False, fs=fs,
                 lock_timeout=lock_timeout)
    try:
        coord = raw.coord
        if not coord.try_compaction_lock(wait):
            return None
        try:
            remove_stale_temps(fs, path)
            snap_before = fs.size(path)
            # Step 2: fix the point we fold up to, and make the log durable up
            # to it, so the snapshot is never ahead of the durable log.
            raw.read_ahead(raw.log_gen)  # most of what arrived since the open, unlocked
            coord.lock()
            held = time.monotonic()
            try:
                raw._catch_up_locked()
                seq, end, log_id = raw.seq, raw.log_end, raw.log_id
                log_before = end
                assert raw.log is not None
                raw.log.sync()
            finally:
                coord.unlock()
                longest_hold = time.monotonic() - held
            # Step 3: build and write the new snapshot with no lock held.
            say(f"writing {len(raw.data)} keys")
            payload = encode_snapshot(raw.data, raw.exp, log_id, seq, indent=indent,
                                      sort_keys=sort_keys)
            keys = len(raw.data)
            raw.data, raw.exp = {}, {}  # free memory before the next steps
            tmp = write_snapshot(fs, path, payload)
            # Step 5 prepared without the lock: the new log starts with the
            # records written since step 2, copied as bytes (committed records
            # never change within a log generation) and synced, so that the
            # lock below is held only for the last few records.
            words = raw._words
            head = build_header(seq, log_id, f"{log_id}:{seq}")
            copied = words[W_END]
            new_log = path + ".wal.tmp"
            aside = set_aside_old_backup(fs, path) if create_backup else None
            fd = fs.open(new_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                fs.write(fd, head + raw.log.read(end, copied))
                fs.fsync(fd)
                say("installing snapshot and rotating the log")
                coord.lock()
                held = time.monotonic()
                try:
                    # Step 4: .bak, rename, folder fsync.
                    install_snapshot(fs, path, tmp, create_backup=create_backup)
                    # Step 5: the records appended since the copy, then rename.
                    if words[W_WRITER]:
                        raw._repair_after_dead_writer()
                    rest = raw.log.read(copied, words[W_END])
                    if rest:
                        fs.write(fd, rest)
                        fs.fsync(fd)
                    tail_len = words[W_END] - end
                    # Marked, so that if this process dies between the rename
                    # and the publication below, the next lock holder notices
                    # the new log (Engine._repair_after_dead_writer).
                    words[W_WRITER] = os.getpid()
                    fs.replace(new_log, path + ".wal")
                    fs.fsync_dir(raw.folder)
                    words[W_END] = len(head) + tail_len
                    words[W_ROT_FROM] = end
                    words[W_ROT_TO] = len(head)
                    words[W_GEN] = words[W_GEN] + 1
                    words[W_COMPACTIONS] = words[W_COMPACTIONS] + 1
                    words[W_LAST_COMPACTION_MS] = int(time.time() * 1000)
                    words[W_SNAPSHOT_SIZE] = len(payload)
                    words[W_WRITER] = 0
                    log_after = len(head) + tail_len
                finally:
                    coord.unlock()
                    longest_hold = max(longest_hold, time.monotonic() - held)
                # One aligned word, written after the release: read by stats() only.
                words[W_LAST_COMPACTION_HOLD_US] = int(longest_hold * 1e6)
            finally:
                fs.close(fd)
            if aside is not None:
                fs.unlink(aside)  # the snapshot before last, freed outside the lock
        finally:
            coord.compaction_unlock()
    finally:
        raw.close()
    return CompactResult(snap_before, log_before, len(payload), log_after, keys, seq,
                         time.monotonic() - t0, longest_hold)


def _child_command(path: str, *, create_backup: bool, indent: int | None, sort_keys: bool,
                   wait: float | None) -> tuple[list[str], dict[str, str]]:
    cmd = [sys.executable, "-m", "logkv._compact", os.path.abspath(path)]
    if not create_backup:
        cmd.append("--no-backup")
    if indent is not None:
        cmd += ["--indent", str(indent)]
    if sort_keys:
        cmd.append("--sort-keys")
    if wait is not None:
        cmd += ["--wait", str(wait)]
    env = dict(os.environ)
    # The child must import this very package, installed or not.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return cmd, env


def run_compaction_child(path: str, *, create_backup: bool, indent: int | None, sort_keys: bool,
                         wait: float | None) -> bool:
    cmd, env = _child_command(path, create_backup=create_backup, indent=indent,
                              sort_keys=sort_keys, wait=wait)
    done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    if done.returncode == EXIT_BUSY:
        return False
    if done.returncode:
        raise LogKVError(f"{path}: compaction failed: {done.stderr.decode(errors='replace').strip()}")
    return True


def spawn_compaction_child(path: str, *, create_backup: bool, indent: int | None,
                           sort_keys: bool) -> subprocess.Popen:
    cmd, env = _child_command(path, create_backup=create_backup, indent=indent,
                              sort_keys=sort_keys, wait=0.0)
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logkv._compact")
    parser.add_argument("path")
    parser.add_argument("--no-backup", action="store_true")
    parser.add_argument("--indent", type=int, default=None)
    parser.add_argument("--sort-keys", action="store_true")
    parser.add_argument("--wait", type=float, default=None)
    args = parser.parse_args(argv)
    try:
        result = compact_store(args.path, create_backup=not args.no_backup, indent=args.indent,
                               sort_keys=args.sort_keys, wait=args.wait)
    except LogKVError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return EXIT_BUSY if result is None else 0


if __name__ == "__main__":
    sys.exit(main())
