"""The ``logkv`` command line (CONTRACT §5).

Parsing and printing only: the work is done by the library (``LogKV``,
``compact_store``, and ``verify_store`` / ``recover_store`` in
``logkv._recover``, which return reports that are printed here).

Exit status, for every command: 0 success; 1 failure (damage found, key not
found, a logkv error); 2 usage error (bad arguments, bad JSON, no store at
PATH).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any, Callable

import orjson

from ._errors import LogKVError
from ._recover import recover_store, verify_store
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
    if os.path.isdir(path):  # refused before any file is made beside it
        raise _UsageError(f"{path} is a folder; PATH is the store's snapshot file "
                          f"(e.g. {os.path.join(path, 'db.json')})")
    if not os.path.exists(path) and not os.path.exists(path + ".wal"):
        raise _UsageError(f"no store at {path} (neither {path} nor {path}.wal exists)")


def _parse_json_value(text: str) -> Any:
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=no_constant)
    except ValueError as exc:
        raise _UsageError(
            f"the value is not valid JSON ({exc}); a string must be quoted, "
            "e.g. '\"hello\"'") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text!r}")
    return value


# ---------------------------------------------------------------------------- compact
def _phase_progress(command: str) -> Callable[[str], None] | None:
    """On a terminal, a printer of a long command's phases (on stderr)."""
    if not sys.stderr.isatty():
        return None

    def progress(phase: str) -> None:
        print(f"logkv {command}: {phase}...", file=sys.stderr, flush=True)
    return progress


def cmd_compact(args: argparse.Namespace) -> int:
    from ._compact import compact_store

    path = args.path
    _require_store(path)
    result = compact_store(path, progress=_phase_progress("compact"))
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
    print(f"  writers held up at most {result.longest_lock_hold * 1000:.1f} ms "
          "(the longest write-lock hold)")
    return EXIT_OK


# ---------------------------------------------------------------------------- verify
def cmd_verify(args: argparse.Namespace) -> int:
    path = args.path
    _require_store(path)
    report = verify_store(path)
    ok = report.ok
    if args.json:
        _out(_json_bytes({"ok": ok, "problems": [p._asdict() for p in report.problems],
                          "records": report.records, "keys": report.keys,
                          "warnings": [w._asdict() for w in report.warnings]}, pretty=False))
        return EXIT_OK if ok else EXIT_FAIL
    if report.snapshot_missing:
        print(f"{path}: no snapshot (the store is the log alone)")
    for snap in report.snapshots:
        print(f"{snap.file}: {snap.label} ok, {snap.keys} keys, {_human(snap.size)}"
              + (f", sequence {snap.seq}" if snap.seq is not None else f" ({snap.kind} file)"))
    log = report.log
    if log is not None:
        if not log.exists:
            print(f"{log.file}: no log")
        elif not log.size:
            print(f"{log.file}: empty log")
        else:
            span = (f", sequences {log.first_seq}..{log.last_seq}"
                    if log.first_seq is not None else "")
            print(f"{log.file}: {log.records} valid records{span}, {_human(log.size)}")
    for w in report.warnings:
        print(f"note: {w.file}: {w.problem} (a write cut short by a crash, never "
              "acknowledged; it is dropped when the store opens)")
    for p in report.problems:
        where = f"byte offset {p.offset}" if p.offset is not None else "whole file"
        print(f"PROBLEM: {p.file}, {where}: {p.problem}")
    if ok:
        print(f"ok: {path} is clean ({report.records} log records, {report.keys} keys)")
        return EXIT_OK
    print(f"DAMAGED: {len(report.problems)} problem(s) in {path}; `logkv recover {path}` "
          "salvages what is valid")
    return EXIT_FAIL


# ---------------------------------------------------------------------------- stats, dump
def cmd_stats(args: argparse.Namespace) -> int:
    _require_store(args.path)
    with LogKV(args.path, read_only=True) as store:
        figures = store.stats()
    _out(json.dumps(figures, indent=2, default=str))
    return EXIT_OK


def cmd_dump(args: argparse.Namespace) -> int:
    _require_store(args.path)
    with LogKV(args.path, read_only=True) as store:
        state = store.copy()
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
    if os.path.isdir(args.path):
        _require_store(args.path)  # says why
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


# ---------------------------------------------------------------------------- import / export
def _count_progress(verb: str) -> Callable[[int, int], None] | None:
    if not sys.stderr.isatty():
        return None

    def progress(done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        end = "\n" if done >= total else ""
        print(f"\rlogkv {verb}: {done}/{total} keys ({pct}%)", end=end, file=sys.stderr,
              flush=True)

    return progress


def _redis_failure(exc: BaseException, url: str) -> str | None:
    """The message for an error raised while talking to a Redis server, or
    None when ``exc`` is not one (redis-py is never imported here: if it was
    not loaded, the error cannot be one of its own)."""
    redis = sys.modules.get("redis")
    exceptions = getattr(redis, "exceptions", None)
    if exceptions is None or not isinstance(exc, exceptions.RedisError):
        return None
    from ._redis import _masked

    where = _masked(url)
    if isinstance(exc, exceptions.AuthenticationError):
        return f"the Redis server at {where} refused the credentials: {exc}"
    if isinstance(exc, (exceptions.ConnectionError, exceptions.TimeoutError)):
        return f"cannot reach the Redis server at {where}: {exc}"
    return f"the Redis server at {where} answered with an error: {exc}"


def _with_redis(url: str, work: Callable[[], int]) -> int:
    """Run ``work``, turning a missing redis-py, server errors and bad input
    (a malformed URL, a value JSON cannot hold) into messages and exit 1."""
    try:
        return work()
    except ImportError as exc:
        if "redis" not in str(exc):
            raise
        _err('error: moving a store to or from Redis needs redis-py: pip install redis '
             '(or pip install ".[redis]" in logkv\'s source folder)')
        return EXIT_FAIL
    except Exception as exc:
        message = _redis_failure(exc, url)
        if message is None:
            if not isinstance(exc, (ValueError, TypeError)):
                raise
            message = str(exc)  # a malformed URL, a value JSON cannot hold
        _err(f"error: {message}")
        return EXIT_FAIL


# Without it, a host that drops packets would keep the command waiting for
# minutes; a URL's own ?socket_connect_timeout= overrides it.
_REDIS_OPTIONS = {"socket_connect_timeout": 10}


def cmd_import(args: argparse.Namespace) -> int:
    from ._convert import import_file, is_redis_url

    if is_redis_url(args.dest):
        raise _UsageError("DEST is the new store's file, not a URL; to copy a store into "
                          "Redis: logkv export PATH --to URL")
    if is_redis_url(args.src):
        return _import_from_redis(args)
    if args.prefix:
        raise _UsageError("--prefix applies only to a Redis source (redis://, rediss:// or "
                          "unix://)")
    if not os.path.exists(args.src):
        _err(f"{args.src}: no such file")
        return EXIT_USAGE
    try:
        n = import_file(args.src, args.dest, progress=_count_progress("import"))
    except FileExistsError as exc:
        _err(str(exc))
        return EXIT_USAGE
    print(f"imported {n} keys from {args.src} into {args.dest}")
    return EXIT_OK


def _import_from_redis(args: argparse.Namespace) -> int:
    from ._convert import import_from_redis
    from ._redis import _masked

    url = args.src
    where = _masked(url) + (f" (prefix {args.prefix!r})" if args.prefix else "")

    def work() -> int:
        n = import_from_redis(url, args.dest, prefix=args.prefix,
                              progress=_count_progress("import"), redis_options=_REDIS_OPTIONS)
        print(f"imported {n} keys from {where} into {args.dest}")
        if not n:
            _err(f"note: no key found at {where}")
        return EXIT_OK

    try:
        return _with_redis(url, work)
    except FileExistsError as exc:
        _err(str(exc))
        return EXIT_USAGE


def cmd_export(args: argparse.Namespace) -> int:
    from ._convert import export_file

    if args.to is not None:
        return _export_to_redis(args)
    if args.prefix or args.replace:
        raise _UsageError("--prefix and --replace go with --to URL")
    _require_store(args.path)
    if args.out is None or args.out == "-":
        if args.force:
            raise _UsageError("--force goes with OUT (a file to replace)")
        n = export_file(args.path, sys.stdout.buffer, progress=_count_progress("export"))
        sys.stdout.buffer.write(b"\n")
        return EXIT_OK
    try:
        n = export_file(args.path, args.out, progress=_count_progress("export"),
                        overwrite=args.force)
    except (FileExistsError, ValueError) as exc:  # an existing OUT, the store's own file
        raise _UsageError(str(exc)) from None
    print(f"exported {n} keys from {args.path} to {args.out}")
    return EXIT_OK


def _export_to_redis(args: argparse.Namespace) -> int:
    from ._convert import DestinationNotEmptyError, export_to_redis, is_redis_url
    from ._redis import _masked

    url = args.to
    if not is_redis_url(url):
        raise _UsageError(f"--to takes a Redis URL (redis://, rediss:// or unix://), not {url!r}")
    if args.out is not None:
        raise _UsageError("give either OUT or --to URL, not both")
    if args.force:
        raise _UsageError("--force goes with OUT; with --to URL, --replace empties the "
                          "destination first")
    _require_store(args.path)
    where = _masked(url) + (f" (prefix {args.prefix!r})" if args.prefix else "")

    def work() -> int:
        n = export_to_redis(args.path, url, prefix=args.prefix, replace=args.replace,
                            progress=_count_progress("export"), redis_options=_REDIS_OPTIONS)
        print(f"exported {n} keys from {args.path} to {where}")
        return EXIT_OK

    try:
        return _with_redis(url, work)
    except DestinationNotEmptyError as exc:
        under = f"under the prefix {exc.prefix!r}" if exc.prefix else "in the database"
        _err(f"error: {exc.keys} key(s) already exist {under} at {exc.url}; nothing was "
             "written. Choose another --prefix, or pass --replace to delete them first")
        return EXIT_USAGE


# ---------------------------------------------------------------------------- recover
def cmd_recover(args: argparse.Namespace) -> int:
    path = args.path
    _require_store(path)
    wal = path + ".wal"
    bak = path + ".bak"
    r = recover_store(path, from_backup=args.from_backup, apply_log=args.apply_log,
                      progress=_phase_progress("recover"))

    print(f"recovered {path}")
    src = f"the backup {r.source}" if r.used_backup else f"the snapshot {r.source}"
    print(f"  started from {src}: {r.start_keys} keys"
          + (f", sequence {r.start_seq}" if r.start_seq is not None else ""))
    if r.backup_not_needed:
        print(f"  the snapshot {path} is readable: --from-backup not needed, not used")
    if r.damaged_snapshot:
        print(f"  the damaged snapshot was kept at {r.damaged_snapshot}")
    if r.mismatch is not None:
        print(f"  the log does not belong to the snapshot: {r.mismatch}")
        if r.log_applied:
            print(f"  --apply-log: applied its {r.applied} valid record(s) on top of the snapshot")
        else:
            print(f"  kept the snapshot alone; the log's {r.ignored} valid record(s) were NOT "
                  "applied")
            if r.ignored and r.old_log:
                print(f"  to apply them instead: mv {r.old_log} {wal} && "
                      f"logkv recover {path} --apply-log")
    print(f"  log records kept: {r.applied} applied"
          + (f", {r.already} already in the snapshot" if r.already else ""))
    print(f"  log records dropped: {len(r.dropped)}")
    for start, end, problem in r.dropped:
        print(f"    byte offset {start}: {end - start} bytes, {problem}")
    if r.damaged_file:
        print(f"  moved {r.damaged_bytes} damaged bytes aside to {r.damaged_file}")
    if r.old_log:
        print(f"  the old log was kept at {r.old_log}")
    if r.old_bak:
        print(f"  the old backup was kept at {r.old_bak}; {bak} is now the snapshot recover "
              "started from")
    print(f"  new snapshot: {r.keys} keys, sequence {r.seq}, {_human(r.snapshot_size)};"
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
    p.add_argument("--acks", type=_positive_int, default=300, metavar="N",
                   help="acknowledged writes to wait for before the kill (default 300)")
    p.set_defaults(func=cmd_demo)

    p = add("import", "copy a file, or the keys on a Redis server, into a new store",
            "Read SRC and write it into a new logkv store at DEST, expiry times kept (keys "
            "already expired are skipped). SRC is an aiodict file, a pickleDB JSON file, a "
            "pickleDB SQLite database, any plain JSON object, or a Redis URL "
            "(redis://, rediss:// or unix://): then every key of that database starting "
            "with P (--prefix; default: every key), without P, as RedisKV(URL, prefix=P) "
            "sees them. DEST must not exist yet. Shows progress on a terminal. Exit 1 when the server "
            "cannot be reached or redis-py is missing, 2 when DEST exists.")
    p.add_argument("src", metavar="SRC", help="a file, or a Redis URL (redis://HOST:PORT/DB)")
    p.add_argument("dest", metavar="DEST", help="the new store's snapshot file")
    p.add_argument("--prefix", default="", metavar="P",
                   help="with a Redis SRC: copy only the keys starting with P, without P "
                        "(default: every key of the database)")
    p.set_defaults(func=cmd_import)

    p = add("export", "write the live state as a JSON object, or copy it into Redis",
            "Without --to: write every live key of the store at PATH and its value as one "
            "plain JSON object to OUT (atomically, with the mode of PATH), or to standard "
            "output when OUT is omitted or '-'; expiry times are not kept. An existing OUT "
            "is refused (exit 2) unless --force; the store's own files (PATH, PATH.wal, "
            "PATH.bak, PATH.lock, PATH.shm, under any name or link) are refused always. "
            "With --to URL: copy every live key "
            "with its value and expiry time into the Redis server at URL (redis://, "
            "rediss:// or unix://), each key stored as P<key> the way RedisKV(URL, "
            "prefix=P) stores it; shows progress on a terminal. The destination must hold "
            "no key under P (with no --prefix: no key at all), or the command writes "
            "nothing and exits 2; --replace deletes those keys first. Either way, expired "
            "keys are left out. Exit 1 when the server cannot be reached or redis-py is "
            "missing.")
    p.add_argument("path", metavar="PATH", help="the store's snapshot file")
    p.add_argument("out", metavar="OUT", nargs="?", default=None,
                   help="the JSON file to write (default: standard output); an existing "
                        "file is refused unless --force, the store's own files always")
    p.add_argument("--force", action="store_true",
                   help="replace OUT if it exists (never one of the store's own files: "
                        "PATH, PATH.wal, PATH.bak, PATH.lock, PATH.shm)")
    p.add_argument("--to", metavar="URL", default=None,
                   help="copy into this Redis server instead (e.g. redis://localhost:6379/0)")
    p.add_argument("--prefix", default="", metavar="P",
                   help="with --to: store each key as P<key> (default: no prefix)")
    p.add_argument("--replace", action="store_true",
                   help="with --to: delete every key under P first instead of refusing a "
                        "destination that is not empty")
    p.set_defaults(func=cmd_export)
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
    if not any(not isinstance(h, logging.NullHandler) for h in _log.handlers):
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
