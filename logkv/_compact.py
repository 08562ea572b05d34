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
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from contextlib import contextmanager
from typing import Callable, Iterator

from . import _errors
from ._errors import CorruptionError, LogKVError, StorageError
from ._fs import DEFAULT_FS, FileSystem, io_error
from ._lock import (W_COMPACTIONS, W_END, W_GEN, W_LAST_COMPACTION_HOLD_US,
                    W_LAST_COMPACTION_MS, W_ROT_FROM, W_ROT_TO, W_SNAPSHOT_SIZE, W_WRITER)
from ._record import ValueCodec, build_header
from ._snapshot import (create_snapshot_temp, encode_snapshot, fill_snapshot_temp, install_snapshot,
                        remove_stale_temps, set_aside_old_backup)

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

    Every failure is one logkv error whose one-line message reads ``PATH:
    compaction failed: why`` and names the file at fault: an I/O failure is a
    StorageError, and the store is then as it was (the steps of design §6 are
    each safe to stop after; the temp files are removed and the ``.bak`` is
    kept). A child compaction raises the same error with the same message."""
    try:
        return _compact(path, create_backup=create_backup, indent=indent, sort_keys=sort_keys,
                        fs=fs, wait=wait, lock_timeout=lock_timeout, progress=progress)
    except LogKVError as exc:
        exc.args = (_failed(path, str(exc)),)
        if isinstance(exc, CorruptionError) and exc.path is None:
            exc.path = path
        raise
    except OSError as exc:
        raise StorageError(_failed(path, str(exc))) from exc


def _failed(path: str, reason: str) -> str:
    if reason.startswith(f"{path}: compaction failed: "):
        return reason
    if reason.startswith(f"{path}: "):
        reason = reason[len(path) + 2:]
    return f"{path}: compaction failed: {reason}"


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
        tmp = new_log = aside = None
        try:
            log_temps = remove_stale_temps(fs, path)
            snap_before = fs.size(path)
            # Step 2: fix the point we fold up to, and make the log durable up
            # to it, so the snapshot is never ahead of the durable log.
            raw.read_ahead(raw.log_gen)  # most of what arrived since the open, unlocked
            coord.lock()
            held = time.monotonic()
            try:
                _unlink_all(fs, log_temps)  # stale: their writers held this lock
                raw._catch_up_locked()
                seq, end, log_id = raw.seq, raw.log_end, raw.log_id
                log_before = end
                assert raw.log is not None
                with _naming(raw.wal_path, "cannot sync the log"):
                    raw.log.sync()
            finally:
                coord.unlock()
                longest_hold = time.monotonic() - held
            # Step 3: build and write the new snapshot with no lock held.
            say(f"writing {len(raw.data)} keys")
            fd, tmp = create_snapshot_temp(fs, path, raw.mode)
            try:
                # Expired keys are dropped by the earlier of two clocks: this
                # process's and the kernel's, as it stamped the file just
                # made. A compactor whose clock runs ahead then drops no key
                # that other processes still see live (design §6).
                now = min(time.time(), fs.fstat(fd).st_mtime)
                payload = encode_snapshot(raw.data, raw.exp, log_id, seq, indent=indent,
                                          sort_keys=sort_keys, now=now)
            except BaseException:
                fs.close(fd)
                raise
            keys = len(raw.data)
            raw.data, raw.exp = {}, {}  # free memory before the next steps
            fill_snapshot_temp(fs, path, fd, tmp, payload)
            # Step 5 prepared without the lock: the new log starts with the
            # records written since step 2, copied as bytes (committed records
            # never change within a log generation) and synced, so that the
            # lock below is held only for the last few records.
            words = raw._words
            head = build_header(seq, log_id, f"{log_id}:{seq}")
            copied = words[W_END]
            with _naming(path + ".bak", "cannot set the old backup aside"):
                aside = set_aside_old_backup(fs, path) if create_backup else None
            with _naming(raw.wal_path, "cannot create the new log"):
                fd, new_log = fs.create_temp(path + ".wal.tmp", raw.mode)
            try:
                with _naming(new_log, "cannot write the new log"):
                    fs.write(fd, head + raw.log.read(end, copied))
                    fs.fsync(fd)
                say("installing snapshot and rotating the log")
                coord.lock()
                held = time.monotonic()
                try:
                    # Step 4: .bak, rename, folder fsync.
                    with _naming(path, "cannot install the new snapshot"):
                        install_snapshot(fs, path, tmp, create_backup=create_backup)
                    # Step 5: the records appended since the copy, then rename.
                    if words[W_WRITER]:
                        raw._repair_after_dead_writer()
                    rest = raw.log.read(copied, words[W_END])
                    with _naming(new_log, "cannot write the new log"):
                        if rest:
                            fs.write(fd, rest)
                            fs.fsync(fd)
                    tail_len = words[W_END] - end
                    # Marked, so that if this process dies between the rename
                    # and the publication below, the next lock holder notices
                    # the new log (Engine._repair_after_dead_writer).
                    words[W_WRITER] = os.getpid()
                    try:
                        with _naming(raw.wal_path, "cannot rename the new log into place"):
                            fs.replace(new_log, path + ".wal")
                    except BaseException:
                        words[W_WRITER] = 0  # nothing was renamed: the old log stays
                        raise
                    with _naming(raw.folder, "cannot sync the folder"):
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
                aside = None
        except BaseException:
            _clean_up_failed(fs, path, tmp, new_log, aside)
            raise
        finally:
            coord.compaction_unlock()
    finally:
        raw.close()
    return CompactResult(snap_before, log_before, len(payload), log_after, keys, seq,
                         time.monotonic() - t0, longest_hold)


@contextmanager
def _naming(file: str, doing: str) -> Iterator[None]:
    """Turn a bare OSError into a StorageError whose message names ``file``."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise io_error(exc, file, doing) from exc


def _unlink_all(fs: FileSystem, names: list[str]) -> None:
    for name in names:
        try:
            fs.unlink(name)
        except OSError:
            pass


def _clean_up_failed(fs: FileSystem, path: str, tmp: str | None, new_log: str | None,
                     aside: str | None) -> None:
    """After a failed compaction: free the temp files (on a full disk they
    hold the space that is missing) and give the old ``.bak`` back its name
    if the new one was never made. Best effort; a rename already done left
    the name behind, so unlinking it is harmless."""
    _unlink_all(fs, [name for name in (tmp, new_log) if name])
    if aside is not None:
        try:
            if fs.stat(path + ".bak") is None:
                fs.replace(aside, path + ".bak")
            else:
                fs.unlink(aside)
        except OSError:
            pass  # the next compaction removes a stray .bak.old.*


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
        raise _child_error(path, done.returncode, done.stderr.decode(errors="replace"))
    return True


def _child_error(path: str, status: int, stderr: str) -> LogKVError:
    """The error the child reported (``main`` prints it as one JSON line),
    rebuilt with its class and message, so that compacting in a child fails
    exactly as compacting in-process does. A child that died without saying
    (a signal, an interpreter error) is a StorageError naming ``path``."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    try:
        report = json.loads(lines[-1])
        cls = getattr(_errors, report["error"])
        message = report["message"]
        if not (isinstance(cls, type) and issubclass(cls, LogKVError) and isinstance(message, str)):
            raise TypeError(report)
    except (IndexError, ValueError, KeyError, TypeError, AttributeError):
        why = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
        last = lines[-1].strip() if lines else "no message"
        return StorageError(f"{path}: compaction failed: the compaction process ended ({why}): "
                            f"{last}")
    if issubclass(cls, _errors.CorruptionError):
        return cls(message, path=report.get("path"), offset=report.get("offset"))
    if issubclass(cls, StorageError):
        return cls(message, poisoned=bool(report.get("poisoned")))
    return cls(message)


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
        # One JSON line, which run_compaction_child turns back into this error.
        print(json.dumps({"error": type(exc).__name__, "message": str(exc),
                          "path": getattr(exc, "path", None), "offset": getattr(exc, "offset", None),
                          "poisoned": getattr(exc, "poisoned", False)}), file=sys.stderr)
        return 1
    return EXIT_BUSY if result is None else 0


if __name__ == "__main__":
    sys.exit(main())
