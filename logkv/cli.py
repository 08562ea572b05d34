"""The ``logkv`` command line (CONTRACT §5).

Parsing and printing only: the work is done by the library (``LogKV``,
``compact_store``, the snapshot and log readers). ``verify`` and ``recover``
walk the log line by line themselves, so that they find every damaged line
instead of stopping at the first one as the library's reader does.

Exit status, for every command: 0 success; 1 failure (damage found, key not
found, a logkv error); 2 usage error (bad arguments, bad JSON, no store at
PATH).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson

from ._errors import CorruptionError, LogKVError, LogMismatchError
from ._fs import DEFAULT_FS
from ._log import parse_header, replay_start
from ._record import RecordError, build_header, parse_line, validate_op
from ._snapshot import Snapshot, encode_snapshot, install_snapshot, parse_snapshot, write_snapshot
from ._store import LogKV

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2

_log = logging.getLogger("logkv")


# ---------------------------------------------------------------------------- helpers
class _UsageError(Exception):
    """Bad input from the user: exit 2 with the message."""


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _size(n: int) -> str:
    return f"{n:,} bytes ({_human(n)})"


def _json_bytes(value: Any, *, pretty: bool) -> bytes:
    option = orjson.OPT_INDENT_2 if pretty else 0
    try:
        return orjson.dumps(value, option=option | orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        # integers beyond 64 bits: the exact stdlib encoder
        text = json.dumps(value, indent=2 if pretty else None, ensure_ascii=False,
                          separators=None if pretty else (",", ":"), default=str)
        return text.encode("utf-8")


def _out(data: bytes | str) -> None:
    if isinstance(data, str):
        data = data.encode("utf-8")
    sys.stdout.flush()
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.flush()


def _err(msg: str) -> None:
    print(f"logkv: {msg}", file=sys.stderr)


def _require_store(path: str) -> None:
    if not os.path.exists(path) and not os.path.exists(path + ".wal"):
        raise _UsageError(f"no store at {path} (neither {path} nor {path}.wal exists)")


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%S")


def _free_name(base: str) -> str:
    """``base``, or ``base-1``, ``base-2``... whichever does not exist yet."""
    name, n = base, 0
    while os.path.lexists(name):
        n += 1
        name = f"{base}-{n}"
    return name


def _parse_json_value(text: str) -> Any:
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=no_constant)
    except ValueError as exc:
        raise _UsageError(
            f"the value is not valid JSON ({exc}); a string must be quoted, "
            "e.g. '\"hello\"'") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text!r}")
    return value


# ---------------------------------------------------------------------------- compact
def cmd_compact(args: argparse.Namespace) -> int:
    from ._compact import compact_store

    path = args.path
    _require_store(path)
    progress: Callable[[str], None] | None = None
    if sys.stderr.isatty():
        def progress(phase: str) -> None:
            print(f"logkv compact: {phase}...", file=sys.stderr, flush=True)
    result = compact_store(path, progress=progress)
    if result is None:
        _err(f"{path}: another compaction is running; try again later")
        return EXIT_FAIL
    before = result.snapshot_before + result.log_before
    after = result.snapshot_after + result.log_after
    print(f"compacted {path}: {result.keys} keys, up to sequence {result.seq}, "
          f"in {result.seconds:.3f} s")
    print(f"  snapshot  before {_size(result.snapshot_before)}")
    print(f"            after  {_size(result.snapshot_after)}")
    print(f"  log       before {_size(result.log_before)}")
    print(f"            after  {_size(result.log_after)}")
    print(f"  total     {_human(before)} -> {_human(after)}")
    return EXIT_OK


# ---------------------------------------------------------------------------- log walking
@dataclass
class _Line:
    offset: int
    raw: bytes            # the line's bytes, newline included when it has one
    seq: int | None = None
    ops: list | None = None
    problem: str | None = None
    torn: bool = False


@dataclass
class _Walk:
    """Every line of a log, each either valid or with its problem."""

    header: Any = None          # LogHeader, or None when missing/damaged
    header_problem: str | None = None
    lines: list[_Line] = field(default_factory=list)
    size: int = 0

    @property
    def valid(self) -> list[_Line]:
        return [ln for ln in self.lines if ln.problem is None]

    @property
    def damaged(self) -> list[_Line]:
        return [ln for ln in self.lines if ln.problem is not None]


def _walk_log(buf: bytes, wal_path: str) -> _Walk:
    """Check every line of the log: prefix, checksum, parse, operations and
    sequence continuity, continuing after a damaged line. After a damaged
    line any higher sequence is accepted (the damaged line may have held the
    numbers in between); a sequence that goes back is damage.
    """
    walk = _Walk(size=len(buf))
    if not buf:
        return walk
    pos = 0
    prev: int | None = None
    try:
        walk.header = parse_header(buf, wal_path)
        prev = walk.header.base_seq
        pos = walk.header.end
    except CorruptionError as exc:
        nl = buf.find(b"\n")
        if nl < 0:
            walk.lines.append(_Line(0, buf, problem="torn tail", torn=True))
            return walk
        walk.header_problem = str(exc).split(": ", 1)[-1]
        walk.lines.append(_Line(0, buf[:nl + 1], problem=walk.header_problem))
        pos = nl + 1
    gap_ok = False  # after a damaged line: any higher sequence is accepted
    while pos < len(buf):
        nl = buf.find(b"\n", pos)
        if nl < 0:
            walk.lines.append(_Line(pos, buf[pos:], problem="torn tail", torn=True))
            break
        line = _Line(pos, buf[pos:nl + 1])
        pos = nl + 1
        try:
            rec = parse_line(line.raw[:-1])
            ops = rec.get("o")
            if ops is None:
                raise RecordError("a header in the middle of the log")
            for op in ops:
                validate_op(op)
            seq = rec["s"]
            if prev is not None:
                if gap_ok:
                    if seq <= prev:
                        raise RecordError(f"sequence {seq} does not follow {prev}")
                elif seq != prev + 1:
                    raise RecordError(f"sequence {seq} does not follow {prev}")
        except RecordError as exc:
            line.problem = str(exc)
            walk.lines.append(line)
            gap_ok = True
            continue
        line.seq, line.ops = seq, ops
        walk.lines.append(line)
        prev = seq
        gap_ok = False
    return walk


# ---------------------------------------------------------------------------- verify
def cmd_verify(args: argparse.Namespace) -> int:
    path = args.path
    _require_store(path)
    wal = path + ".wal"
    bak = path + ".bak"
    problems: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    notes: list[str] = []

    def problem(file: str, offset: int | None, what: str) -> None:
        problems.append({"file": file, "offset": offset, "problem": what})

    # the snapshot and its backup
    for file, label in ((path, "snapshot"), (bak, "backup")):
        raw = DEFAULT_FS.read_file(file)
        if raw is None:
            if file == path:
                notes.append(f"{file}: no snapshot (the store is the log alone)")
            continue
        try:
            snap = parse_snapshot(raw, file)
        except CorruptionError as exc:
            problem(file, exc.offset, f"{label} does not load: {exc}")
            continue
        kind = "logkv" if snap.log_id else ("empty" if snap.fingerprint == "empty" else "foreign")
        notes.append(f"{file}: {label} ok, {len(snap.data)} keys, {_human(len(raw))}"
                     + (f", sequence {snap.seq}" if snap.log_id else f" ({kind} file)"))

    # the log, every line of it
    records = 0
    buf = DEFAULT_FS.read_file(wal)
    if buf is None:
        notes.append(f"{wal}: no log")
    elif not buf:
        notes.append(f"{wal}: empty log")
    else:
        walk = _walk_log(buf, wal)
        records = len([ln for ln in walk.valid])
        for ln in walk.lines:
            if ln.torn:
                warnings.append({"file": wal, "offset": ln.offset,
                                 "problem": f"torn tail, {len(ln.raw)} bytes at offset "
                                            f"{ln.offset}"})
            elif ln.problem is not None:
                problem(wal, ln.offset, ln.problem)
        seqs = [ln.seq for ln in walk.valid]
        span = f", sequences {seqs[0]}..{seqs[-1]}" if seqs else ""
        notes.append(f"{wal}: {records} valid records{span}, {_human(len(buf))}")

    # does the log belong to the snapshot? (the library's own open decides)
    keys: int | None = None
    logger_level = _log.level
    _log.setLevel(logging.ERROR)  # the torn tail is reported above, not twice
    try:
        store = LogKV(path, read_only=True)
    except LogMismatchError as exc:
        problem(exc.path or wal, exc.offset, f"the log does not belong to the snapshot: {exc}")
    except CorruptionError as exc:
        if not problems:  # the library found something the walk above did not
            problem(exc.path or path, exc.offset, str(exc))
    except LogKVError as exc:
        problem(path, None, f"the store does not open: {exc}")
    else:
        try:
            keys = len(store)
        finally:
            store.close()
    finally:
        _log.setLevel(logger_level)

    ok = not problems
    if args.json:
        _out(_json_bytes({"ok": ok, "problems": problems, "records": records, "keys": keys,
                          "warnings": warnings}, pretty=False))
        return EXIT_OK if ok else EXIT_FAIL
    for note in notes:
        print(note)
    for w in warnings:
        print(f"note: {w['file']}: {w['problem']} (a write cut short by a crash, never "
              "acknowledged; it is dropped when the store opens)")
    for p in problems:
        where = f"byte offset {p['offset']}" if p["offset"] is not None else "whole file"
        print(f"PROBLEM: {p['file']}, {where}: {p['problem']}")
    if ok:
        print(f"ok: {path} is clean ({records} log records, {keys} keys)")
        return EXIT_OK
    print(f"DAMAGED: {len(problems)} problem(s) in {path}; `logkv recover {path}` salvages "
          "what is valid")
    return EXIT_FAIL


# ---------------------------------------------------------------------------- stats, dump
def cmd_stats(args: argparse.Namespace) -> int:
    _require_store(args.path)
    store = LogKV(args.path, read_only=True)
    try:
        figures = store.stats()
    finally:
        store.close()
    _out(json.dumps(figures, indent=2, default=str))
    return EXIT_OK


def cmd_dump(args: argparse.Namespace) -> int:
    _require_store(args.path)
    store = LogKV(args.path, read_only=True)
    try:
        state = store.copy()
    finally:
        store.close()
    _out(_json_bytes(state, pretty=sys.stdout.isatty()))
    return EXIT_OK


# ---------------------------------------------------------------------------- get, set, delete
def cmd_get(args: argparse.Namespace) -> int:
    _require_store(args.path)
    store = LogKV(args.path, read_only=True)
    try:
        missing = object()
        value = store.get(args.key, missing)
    finally:
        store.close()
    if value is missing:
        _err(f"key not found: {args.key}")
        return EXIT_FAIL
    _out(_json_bytes(value, pretty=sys.stdout.isatty()))
    return EXIT_OK


def cmd_set(args: argparse.Namespace) -> int:
    value = _parse_json_value(args.value)
    store = LogKV(args.path, compact_on_close=False, durability="always")
    try:
        try:
            store.set(args.key, value, ttl=args.ttl)
        except (ValueError, TypeError) as exc:
            raise _UsageError(str(exc)) from None
    finally:
        store.close()
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    _require_store(args.path)
    store = LogKV(args.path, compact_on_close=False, durability="always")
    try:
        try:
            del store[args.key]
        except KeyError:
            _err(f"key not found: {args.key}")
            return EXIT_FAIL
    finally:
        store.close()
    return EXIT_OK


# ---------------------------------------------------------------------------- recover
def _take_locks(path: str, timeout: float = 10.0) -> list[int]:
    """The store's write lock (flock on PATH.lock), and the proof that no other
    process has the store open (an exclusive flock on PATH.shm, whose shared
    flock every open store holds)."""
    fds: list[int] = []
    lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fds.append(lock_fd)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                _release(fds)
                raise LogKVError(f"could not lock {path}.lock within {timeout} s") from None
            time.sleep(0.01)
    if os.path.exists(path + ".shm"):
        shm_fd = os.open(path + ".shm", os.O_RDWR | os.O_CLOEXEC)
        fds.append(shm_fd)
        try:
            fcntl.flock(shm_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _release(fds)
            raise LogKVError(
                f"{path} is open in another process; close it there first (a process that "
                "keeps writing would write to the log recover moves aside)") from None
    return fds


def _release(fds: list[int]) -> None:
    for fd in reversed(fds):
        os.close(fd)  # closing the descriptor releases its flock


def _apply_ops(data: dict[str, Any], exp: dict[str, float], ops: list) -> None:
    """The log's operations on plain dicts (as the engine replays them)."""
    for op in ops:
        kind = op[0]
        if kind == "s":
            data[op[1]] = op[2]
            if op[3] is None:
                exp.pop(op[1], None)
            else:
                exp[op[1]] = float(op[3])
        elif kind == "d":
            data.pop(op[1], None)
            exp.pop(op[1], None)
        elif kind == "e":
            if op[1] in data:
                if op[2] is None:
                    exp.pop(op[1], None)
                else:
                    exp[op[1]] = float(op[2])
        else:
            data.clear()
            exp.clear()


def _write_durably(name: str, payload: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        DEFAULT_FS.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)


def _keep_aside(src: str, dst: str) -> None:
    """Make ``dst`` a second name of ``src`` (hard link; a synced copy when
    links are not possible), so ``src`` can then be replaced atomically."""
    try:
        os.link(src, dst)
    except OSError:
        with open(src, "rb") as f:
            _write_durably(dst, f.read())


def cmd_recover(args: argparse.Namespace) -> int:
    path = args.path
    _require_store(path)
    wal = path + ".wal"
    bak = path + ".bak"
    folder = os.path.dirname(os.path.abspath(path))
    say: Callable[[str], None]
    if sys.stderr.isatty():
        def say(phase: str) -> None:
            print(f"logkv recover: {phase}...", file=sys.stderr, flush=True)
    else:
        def say(phase: str) -> None:
            pass

    fds = _take_locks(path)
    try:
        stamp = _stamp()
        report: list[str] = []
        # 1. the snapshot (or its backup)
        say("reading the snapshot")
        used_backup = False
        damaged_snapshot: str | None = None
        raw = DEFAULT_FS.read_file(path)
        try:
            snap = parse_snapshot(raw, path) if raw is not None else \
                Snapshot({}, {}, None, 0, "empty", 0)
            if args.from_backup:
                report.append(f"the snapshot {path} is readable: --from-backup not needed, "
                              "not used")
        except CorruptionError as exc:
            if not args.from_backup:
                hint = (f"; rerun with --from-backup to start from {bak}"
                        if os.path.exists(bak) else f"; there is no {bak} to start from")
                raise LogKVError(f"{exc}{hint}") from None
            braw = DEFAULT_FS.read_file(bak)
            if braw is None:
                raise LogKVError(f"{exc}; and there is no {bak}") from None
            try:
                snap = parse_snapshot(braw, bak)
            except CorruptionError as bexc:
                raise LogKVError(f"{exc}; the backup is damaged too: {bexc}") from None
            used_backup = True

        # 2. the log, every line of it
        say("reading the log")
        buf = DEFAULT_FS.read_file(wal) or b""
        walk = _walk_log(buf, wal)
        header = walk.header
        valid = walk.valid
        damaged = walk.damaged

        # 3. does the log belong to the snapshot? (design.md §5)
        mismatch: str | None = None
        start = snap.seq
        if header is None:
            if valid:
                mismatch = "the log's header is damaged, so it cannot tell which snapshot it " \
                           "belongs to"
        else:
            try:
                start = replay_start(snap.log_id, snap.seq, snap.fingerprint, header,
                                     bool(valid), wal, path)
            except LogMismatchError as exc:
                mismatch = str(exc)
        if mismatch is not None:
            # Records of the same stream (or of an unknown one) are applied
            # only above what the snapshot holds; those of another stream all.
            same = header is None or (snap.log_id is not None and snap.log_id == header.log_id)
            start = snap.seq if same else -1

        data, exp = dict(snap.data), dict(snap.expiries)
        applied = 0
        already = 0
        last_seq = snap.seq
        ignored = 0
        if mismatch is None or args.apply_log:
            for ln in valid:
                if ln.seq is not None and ln.seq > start:
                    _apply_ops(data, exp, ln.ops or [])
                    applied += 1
                    last_seq = max(last_seq, ln.seq)
                else:
                    already += 1
        else:
            ignored = len(valid)

        # 4. keep everything that is replaced or dropped, next to the store
        say("moving damaged bytes aside")
        if used_backup and raw is not None:
            damaged_snapshot = _free_name(f"{path}.damaged-{stamp}.snapshot")
            _keep_aside(path, damaged_snapshot)
        damaged_file: str | None = None
        damaged_bytes = sum(len(ln.raw) for ln in damaged)
        if damaged:
            damaged_file = _free_name(f"{path}.damaged-{stamp}")
            _write_durably(damaged_file, b"".join(ln.raw for ln in damaged))
        old_bak: str | None = None
        if not used_backup and raw is not None and os.path.exists(bak):
            # install_snapshot below makes .bak the current snapshot: keep the
            # older backup too
            old_bak = _free_name(f"{bak}.recovered-{stamp}")
            _keep_aside(bak, old_bak)
        old_log: str | None = None
        if os.path.exists(wal):
            old_log = _free_name(f"{wal}.recovered-{stamp}")
            _keep_aside(wal, old_log)
        DEFAULT_FS.fsync_dir(folder)

        # 5. a fresh snapshot with a new log id, then a log holding its header
        say(f"writing {len(data)} keys")
        log_id = secrets.token_hex(16)
        payload = encode_snapshot(data, exp, log_id, last_seq)
        tmp = write_snapshot(DEFAULT_FS, path, payload)
        install_snapshot(DEFAULT_FS, path, tmp, create_backup=not used_backup)
        head = build_header(last_seq, log_id, f"{log_id}:{last_seq}")
        wal_tmp = wal + ".tmp"
        fd = os.open(wal_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            DEFAULT_FS.write(fd, head)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(wal_tmp, wal)
        DEFAULT_FS.fsync_dir(folder)
        if len(fds) > 1:
            # The shared page describes the old files: clear its magic word so
            # the next process that opens the store rebuilds it from the files
            # (design.md §7), even one that was waiting for our lock.
            os.pwrite(fds[1], b"\0" * 8, 0)
    finally:
        _release(fds)

    # 6. what was kept and what was dropped
    print(f"recovered {path}")
    src = f"the backup {bak}" if used_backup else f"the snapshot {path}"
    print(f"  started from {src}: {len(snap.data)} keys"
          + (f", sequence {snap.seq}" if snap.log_id else ""))
    for line in report:
        print(f"  {line}")
    if damaged_snapshot:
        print(f"  the damaged snapshot was kept at {damaged_snapshot}")
    if mismatch is not None:
        print(f"  the log does not belong to the snapshot: {mismatch}")
        if args.apply_log:
            print(f"  --apply-log: applied its {applied} valid record(s) on top of the snapshot")
        else:
            print(f"  kept the snapshot alone; the log's {ignored} valid record(s) were NOT "
                  "applied")
            if ignored and old_log:
                print(f"  to apply them instead: mv {old_log} {wal} && "
                      f"logkv recover {path} --apply-log")
    print(f"  log records kept: {applied} applied"
          + (f", {already} already in the snapshot" if already else ""))
    print(f"  log records dropped: {len(damaged)}")
    for ln in damaged:
        print(f"    byte offset {ln.offset}: {len(ln.raw)} bytes, {ln.problem}")
    if damaged_file:
        print(f"  moved {damaged_bytes} damaged bytes aside to {damaged_file}")
    if old_log:
        print(f"  the old log was kept at {old_log}")
    if old_bak:
        print(f"  the old backup was kept at {old_bak}; {bak} is now the snapshot recover "
              "started from")
    now = time.time()
    live = sum(1 for k in data if k not in exp or exp[k] > now)
    print(f"  new snapshot: {live} keys, sequence {last_seq}, {_human(len(payload))};"
          " new log: header only")
    return EXIT_OK


# ---------------------------------------------------------------------------- demo
_CHILD = r"""
import sys
from logkv import LogKV

db = LogKV(sys.argv[1])  # the default durability ("interval")
while True:
    n = db.incr("counter")
    db.set(f"item:{n}", {"n": n})
    print(n, flush=True)  # printed only after both writes returned
"""


def cmd_demo(args: argparse.Namespace) -> int:
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAILED'}] {what}")
        if not ok:
            failures.append(what)

    def heading(title: str) -> None:
        print(f"\n== {title} ==")

    def sizes(path: str) -> tuple[int, int]:
        return (os.path.getsize(path) if os.path.exists(path) else 0,
                os.path.getsize(path + ".wal") if os.path.exists(path + ".wal") else 0)

    target = args.acks
    with tempfile.TemporaryDirectory(prefix="logkv-demo-") as tmp:
        path = os.path.join(tmp, "db.json")
        heading("1. writes")
        print(f"store: {path}")
        with LogKV(path) as db:
            db["greeting"] = "hello"
            db.set("session", {"user": "alice"}, ttl=3600)
            db.mset({"colors": ["red", "green"], "answer": 42})
            for key in db.keys():
                print(f"  {key} = {orjson.dumps(db[key]).decode()}")
        print(f"closed: {os.path.basename(path)} now holds all {4} keys")

        heading("2. kill -9 of a writer")
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        child = subprocess.Popen([sys.executable, "-c", _CHILD, path], env=env,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        acked = 0
        deadline = time.monotonic() + 20
        assert child.stdout is not None
        try:
            while acked < target and time.monotonic() < deadline:
                line = child.stdout.readline()
                if not line:
                    break
                acked = int(line)
        finally:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
            child.wait()
        # Lines still in the pipe were printed after their write returned:
        # they were acknowledged too.
        for line in child.stdout.read().splitlines():
            if line.strip().isdigit():
                acked = max(acked, int(line))
        child.stdout.close()
        errors = child.stderr.read().decode(errors="replace").strip() if child.stderr else ""
        if child.stderr:
            child.stderr.close()
        print(f"writer pid {child.pid}: incr('counter') + set('item:<n>') in a loop, "
              f"durability 'interval'")
        print(f"killed with SIGKILL after {acked} acknowledged writes (exit {child.returncode})")
        if acked < target:
            check(False, f"the writer acknowledged {target} writes before the kill"
                  + (f": {errors.splitlines()[-1]}" if errors else ""))
            return EXIT_FAIL
        check(child.returncode == -signal.SIGKILL, "the writer died of SIGKILL")

        heading("3. recovery")
        snap_before, log_before = sizes(path)
        with LogKV(path) as db:
            counter = db.get("counter")
            stats = db.stats()
            missing = [n for n in range(1, acked + 1) if db.get(f"item:{n}") != {"n": n}]
            print(f"reopened: counter = {counter}, last acknowledged = {acked}")
            print(f"recovered_records = {stats['recovered_records']}, "
                  f"dropped_tail_bytes = {stats['dropped_tail_bytes']}")
            check(isinstance(counter, int) and acked <= counter <= acked + 1,
                  "counter >= last acknowledged value (one more if a write was in flight)")
            check(not missing, f"all {acked} acknowledged keys item:1..item:{acked} are there"
                  + (f" (missing: {missing[:5]})" if missing else ""))
            check(db["greeting"] == "hello" and db["answer"] == 42,
                  "the keys written before the kill are there")

            heading("4. compaction")
            print(f"before: snapshot {_size(snap_before)}, log {_size(log_before)}")
            t0 = time.monotonic()
            db.compact()
            took = time.monotonic() - t0
            snap_after, log_after = sizes(path)
            print(f"after:  snapshot {_size(snap_after)}, log {_size(log_after)} "
                  f"({took * 1000:.0f} ms)")
            check(log_after < log_before, "the log was folded into the snapshot")
            check(db.get("counter") == counter, "the counter is unchanged by compaction")

            heading("5. stats")
            for key, value in db.stats().items():
                print(f"  {key}: {value}")
    heading("result")
    if failures:
        print(f"{len(failures)} check(s) FAILED")
        return EXIT_FAIL
    print("every acknowledged write survived kill -9; nothing was lost")
    return EXIT_OK


# ---------------------------------------------------------------------------- the parser
_EPILOG = textwrap.dedent("""\
    exit status: 0 success; 1 failure (damage found, key not found, a logkv
    error); 2 usage error (bad arguments, value not JSON, no store at PATH).

    PATH is the snapshot file (db.json); the store's other files sit next to
    it: PATH.wal (the log), PATH.bak, PATH.lock, PATH.shm.""")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logkv",
        description="Inspect, repair and demonstrate logkv stores (a JSON snapshot plus a "
                    "checksummed write-ahead log).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__
    parser.add_argument("--version", action="version", version=f"logkv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description, epilog=_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        return p

    p = add("compact", "fold the log into the snapshot; print sizes before and after",
            "Fold the log into a new snapshot (the old one is kept as PATH.bak) and start "
            "a log holding only its header. Safe while other processes have the store "
            "open. Prints the sizes before and after and the time taken; shows its "
            "phases when stderr is a terminal.")
    p.add_argument("path", metavar="PATH", help="the store's snapshot file (e.g. db.json)")
    p.set_defaults(func=cmd_compact)

    p = add("verify", "check the snapshot, the backup and every log record",
            "Check the snapshot, PATH.bak if present, and every log record (header, "
            "checksum, operations, sequence continuity), and that the log belongs to the "
            "snapshot. Prints each problem with its file and byte offset. A torn tail (a "
            "last line cut short by a crash, never acknowledged) is a note, not damage. "
            "Exit 0 clean, 1 damaged, 2 usage error.")
    p.add_argument("path", metavar="PATH", help="the store's snapshot file")
    p.add_argument("--json", action="store_true",
                   help='print {"ok", "problems": [{"file", "offset", "problem"}], "records", '
                        '"keys", "warnings"} instead of text')
    p.set_defaults(func=cmd_verify)

    p = add("stats", "print the store's figures as JSON",
            "Open the store read-only and print stats() as JSON.")
    p.add_argument("path", metavar="PATH", help="the store's snapshot file")
    p.set_defaults(func=cmd_stats)

    p = add("dump", "print the live state as one JSON object",
            "Open the store read-only and print every live key and its value as one JSON "
            "object (indented on a terminal, compact otherwise). Expired keys are left out.")
    p.add_argument("path", metavar="PATH", help="the store's snapshot file")
    p.set_defaults(func=cmd_dump)

    p = add("get", "print one key's value as JSON",
            "Print the value of KEY as JSON. Exit 1 when the key does not exist.")
    p.add_argument("path", metavar="PATH", help="the store's snapshot file")
    p.add_argument("key", metavar="KEY")
    p.set_defaults(func=cmd_get)

    p = add("set", "set one key to a JSON value (durably)",
            "Set KEY to VALUE, which is parsed as JSON (quote strings: '\"text\"'). The "
            "write is fsynced before the command exits. Creates the store if needed.")
    p.add_argument("path", metavar="PATH", help="the store's snapshot file")
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="JSON", help="the value, as JSON text")
    p.add_argument("--ttl", type=_positive_float, metavar="SECONDS",
                   help="expire the key after SECONDS (> 0)")
    p.set_defaults(func=cmd_set)

    p = add("delete", "delete one key (durably)",
            "Delete KEY; the deletion is fsynced before the command exits. Exit 1 when the "
            "key does not exist.")
    p.add_argument("path", metavar="PATH", help="the store's snapshot file")
    p.add_argument("key", metavar="KEY")
    p.set_defaults(func=cmd_delete)

    p = add("recover", "salvage every valid record; move damaged bytes aside",
            "Under the store's lock (refused while another process has the store open): "
            "read the snapshot and every valid log record, skipping damaged lines; keep the "
            "damaged bytes in PATH.damaged-<date> and the old log in "
            "PATH.wal.recovered-<date> (nothing is deleted); write a fresh snapshot and a "
            "log holding only its header; report what was kept and dropped. When the log "
            "does not belong to the snapshot, the snapshot alone is kept unless "
            "--apply-log is given.")
    p.add_argument("path", metavar="PATH", help="the store's snapshot file")
    p.add_argument("--from-backup", action="store_true",
                   help="when the snapshot is damaged, start from PATH.bak (the damaged "
                        "snapshot is kept at PATH.damaged-<date>.snapshot)")
    p.add_argument("--apply-log", action="store_true",
                   help="when the log does not belong to the snapshot, apply its valid "
                        "records on top of it (default: keep the snapshot alone)")
    p.set_defaults(func=cmd_recover)

    p = add("demo", "show writes, kill -9 of a writer, recovery, compaction, stats",
            "In a temporary folder: write a few keys; start a real writer process that "
            "increments a counter, kill it with SIGKILL; reopen and check that every "
            "acknowledged write is there; compact; print the stats. Exit 0 when every "
            "check passes.")
    p.add_argument("--acks", type=int, default=300, metavar="N",
                   help="acknowledged writes to wait for before the kill (default 300)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if not _log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("logkv: %(levelname)s: %(message)s"))
        _log.addHandler(handler)
    try:
        return args.func(args)
    except _UsageError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except LogKVError as exc:
        _err(f"error: {exc}")
        return EXIT_FAIL
    except BrokenPipeError:  # pragma: no cover - e.g. `logkv dump db.json | head`
        return EXIT_FAIL
    except OSError as exc:
        _err(f"error: {exc}")
        return EXIT_FAIL
