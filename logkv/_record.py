"""Encoding of values and of one log line, with its checksum. No I/O here.

The byte layout is specified in docs/design.md §3; keep the two in step.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import math
import uuid
from pathlib import PurePath
from typing import Any, Callable

import orjson
import xxhash

_hexdigest = xxhash.xxh3_64_hexdigest

# Fixed prefix of every line: '{"x":"' + 16 hex digits + '",' -> 24 bytes.
LINE_PREFIX = b'{"x":"'
CHECK_END = 22
BODY_START = 24

_OPT_NATIVE = orjson.OPT_NON_STR_KEYS
# With a user serializer, orjson must hand these types to it instead of
# encoding them itself (CONTRACT §3: the serializer sees datetime & co.).
_OPT_PASSTHROUGH = (
    orjson.OPT_NON_STR_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


_I64 = 1 << 63
_U64 = 1 << 64


class RecordError(Exception):
    """A line is not a valid record; ``reason`` says why (no path/offset here)."""


def builtin_default(value: Any) -> Any:
    """What aiodict (stdlib json) converts without a serializer, beyond what
    orjson does itself: sets, paths, and subclasses of float and tuple
    (namedtuples), which stdlib json writes as their base type."""
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_PLAIN = frozenset((str, int, float, bool, type(None)))

# How many levels of lists and dicts a value may nest. orjson writes at most
# 254 levels, and the snapshot puts every value 3 levels down
# ({"data": {key: {"value": ...}}}); a deeper value could be logged but never
# compacted, so it is refused when it is set.
MAX_DEPTH = 251


class _Convert:
    """Marks a value that holds something a reopen gives back as another type
    (a tuple, a UUID, ...), or that nests too deep for the scan to tell."""

    __slots__ = ()


_CONVERT: Any = _Convert()
# Types orjson writes by itself that a reopen reads back as something else.
_NATIVE_CONVERTED = (uuid.UUID, orjson.Fragment)


def _scan(value: Any, depth: int = 0) -> Any:
    """The first Enum member inside ``value`` (orjson encodes enums itself,
    bypassing both the serializer and the no-serializer rules); else
    ``_CONVERT`` if ``value`` holds a type orjson writes natively that a
    reopen does not give back (tuple, UUID, Fragment) or nests more than 100
    levels (the scan stops there); else None. Everything else that is not
    plain JSON, the strict encode of ``ValueCodec.prepare`` finds."""
    t = type(value)
    if t in _PLAIN:
        return None
    if depth > 100:
        return _CONVERT
    if t is dict:
        found = None
        for item in value.values():
            if type(item) not in _PLAIN:
                r = _scan(item, depth + 1)
                if r is not None:
                    if r is not _CONVERT:
                        return r
                    found = r
        return found
    if t is list or t is tuple:
        found = None if t is list else _CONVERT
        for item in value:
            if type(item) not in _PLAIN:
                r = _scan(item, depth + 1)
                if r is not None:
                    if r is not _CONVERT:
                        return r
                    found = r
        return found
    if isinstance(value, enum.Enum):
        return value
    if isinstance(value, _NATIVE_CONVERTED):
        return _CONVERT
    return None


def _find_enum(value: Any) -> Any:
    """The first Enum member inside ``value``, or None."""
    r = _scan(value)
    return None if r is _CONVERT else r


class _NotPlain(Exception):
    """Raised by the strict encode's ``default``: the value is not plain JSON."""


def _not_plain(value: Any) -> Any:
    raise _NotPlain


# The strict encode: plain JSON only. orjson hands every other type it knows
# (datetime & co., dataclasses, subclasses of str/int/dict/list) to
# ``default`` and refuses non-str dict keys.
_OPT_STRICT = (orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
               | orjson.OPT_PASSTHROUGH_SUBCLASS)


def too_deep(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deep ``value`` (lists and dicts only: a decoded JSON value) nests,
    if more than ``limit`` levels; 0 if not. Iterative: a value may nest
    deeper than Python's stack."""
    deepest = 0
    stack = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        t = type(item)
        if t is dict:
            item = item.values()
        elif t is not list:
            continue
        deepest = max(deepest, depth)
        for child in item:
            tc = type(child)
            if tc is dict or tc is list:
                push((child, depth + 1))
    return deepest if deepest > limit else 0


def depth_error(depth: int | None) -> TypeError:
    """The error for a value nested deeper than MAX_DEPTH (``depth`` if known)."""
    how = f"{depth} levels" if depth else "more than 254 levels"
    return TypeError(f"the value nests {how} of lists and dicts; logkv stores at most "
                     f"{MAX_DEPTH} (its snapshot adds 3 levels and orjson writes at most 254)")


def snapshot_problem(data: dict[str, Any]) -> str:
    """Why ``data`` (values as read from disk) cannot be written as a
    snapshot: the first key whose member orjson refuses, and why. For the
    error path only: it encodes the keys one by one."""
    for key, value in data.items():
        try:
            orjson.dumps({"data": {key: {"value": value}}})
        except orjson.JSONEncodeError as exc:
            text = str(exc)
            if "64-bit" in text:
                continue  # written by the exact encoder instead
            if "ecursion" in text:
                depth = too_deep(value)
                how = f"{depth} levels" if depth else "too many levels"
                return (f"key {key!r} holds a value nested {how} deep; a snapshot holds at most "
                        f"{MAX_DEPTH} levels (orjson writes at most 254). Replace or delete "
                        "that key; until then compaction keeps the files as they are")
            return f"key {key!r} cannot be written: {text}"
    return "orjson refused the data"


def check_key(key: str) -> None:
    """Raise TypeError unless ``key`` can be written: a str holding a lone
    surrogate has no UTF-8 (and so no JSON) form. (ASCII keys need no check.)"""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise TypeError(f"key {key!r} cannot be stored: it holds a lone surrogate, which "
                        "UTF-8 text cannot hold") from None


def _replace_enums(value: Any, hook: Callable[[Any], Any]) -> Any:
    t = type(value)
    if t is dict:
        return {k: _replace_enums(v, hook) for k, v in value.items()}
    if t is list or t is tuple:
        return [_replace_enums(v, hook) for v in value]
    if isinstance(value, enum.Enum):
        return hook(value)
    return value


def _stdlib_default(value: Any) -> Any:
    # Used only by the exact fallback encoder, which lacks orjson's native types.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)  # as orjson writes it
    return builtin_default(value)  # (tuples the stdlib encoder writes itself)


def _find_nonfinite(value: Any, serializer: Callable[[Any], Any] | None) -> bool:
    """True if ``value`` holds NaN or ±Infinity anywhere (no recursion: a value
    may nest deeper than Python's stack; orjson itself stops at 255 levels)."""
    stack = [(value, serializer)]
    while stack:
        item, hook = stack.pop()
        t = type(item)
        if t is float:
            if not math.isfinite(item):
                return True
        elif t is dict:
            stack.extend((v, hook) for v in item.values())
        elif t is list or t is tuple:
            stack.extend((v, hook) for v in item)
        elif item is None or t is str or t is int or t is bool:
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif hook is not None:
            try:
                stack.append((hook(item), None))
            except Exception:
                continue
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.append((dataclasses.asdict(item), None))
    return False


class ValueCodec:
    """Turns values into JSON bytes and back, with the user's hooks.

    ``encode`` returns ``(bytes, exact)``: ``exact`` is True when the value
    holds an integer beyond 64 bits, which orjson cannot write; such values
    are written by the stdlib encoder and must be read back by the stdlib
    parser to stay exact.

    ``prepare`` returns ``(held, bytes, exact)``: ``held`` is what memory
    keeps, which is what a reopen reads back from those bytes. A plain JSON
    value (str, int, float, bool, None, lists, dicts with str keys) is held
    as it is, at no cost beyond the encode; any other value is held as its
    decoded JSON, so it never changes type across a restart. With a
    ``deserializer``, ``held`` is the deserializer applied to the decoded
    JSON, as a reopen applies it to every value it reads.
    """

    __slots__ = ("serializer", "deserializer", "_default", "_option", "prepare")

    def __init__(self, serializer: Callable[[Any], Any] | None = None,
                 deserializer: Callable[[Any], Any] | None = None) -> None:
        self.serializer = serializer
        self.deserializer = deserializer
        if serializer is None:
            self._default: Callable[[Any], Any] = builtin_default
            self._option = _OPT_NATIVE
        else:
            self._default = serializer
            self._option = _OPT_PASSTHROUGH
        self.prepare: Callable[[Any], tuple[Any, bytes, bool]] = (
            self._prepare if deserializer is None else self._prepare_deserialized)

    def _prepare(self, value: Any) -> tuple[Any, bytes, bool]:
        t = type(value)
        if t is str:
            return value, orjson.dumps(value), False
        if t is int and -_I64 <= value < _U64:
            return value, b"%d" % value, False
        found = None if t in _PLAIN else _scan(value)
        if found is None:
            # Plain JSON unless the strict encode says otherwise (its default
            # is called for anything else, and non-str keys fail it): then
            # the bytes are the ones ``encode`` writes and memory keeps the
            # caller's object.
            try:
                out = orjson.dumps(value, default=_not_plain, option=_OPT_STRICT)
            except orjson.JSONEncodeError:
                pass
            else:
                if b"null" in out and _find_nonfinite(value, None):
                    raise ValueError("NaN and Infinity cannot be stored: JSON has no such values")
                return value, out, False
        # Not plain JSON (or an integer beyond 64 bits): keep what a reopen reads.
        out, exact = self.encode(value)
        held = json.loads(out) if exact else orjson.loads(out)
        if out.count(b"[") + out.count(b"{") > MAX_DEPTH:
            depth = too_deep(held)
            if depth:
                raise depth_error(depth)
        return held, out, exact

    def _prepare_deserialized(self, value: Any) -> tuple[Any, bytes, bool]:
        held, out, exact = self._prepare(value)
        if held is value:  # plain JSON: decode it too, so the deserializer gets its own copy
            held = json.loads(out) if exact else orjson.loads(out)
        assert self.deserializer is not None
        return self.deserializer(held), out, exact

    def encode(self, value: Any) -> tuple[bytes, bool]:
        t = type(value)
        if t is str:
            return orjson.dumps(value), False
        if t is int and -_I64 <= value < _U64:
            return b"%d" % value, False
        if t not in _PLAIN:
            member = _find_enum(value)
            if member is not None:
                if self.serializer is not None:
                    value = _replace_enums(value, self.serializer)
                elif not isinstance(member, (int, str)):
                    # stdlib json (aiodict) refuses a plain Enum member
                    raise TypeError(f"Object of type {type(member).__name__} is not JSON "
                                    "serializable")
        try:
            out = orjson.dumps(value, default=self._default, option=self._option)
        except orjson.JSONEncodeError as exc:
            text = str(exc)
            if "64-bit" not in text:
                if "ecursion" in text:
                    raise depth_error(None) from None
                raise TypeError(text) from None
            return self._encode_exact(value), True
        # orjson writes NaN and ±Infinity as null; JSON has no such values, so
        # refuse them rather than store a different value silently.
        if b"null" in out and _find_nonfinite(value, self.serializer):
            raise ValueError("NaN and Infinity cannot be stored: JSON has no such values")
        return out, False

    def _encode_exact(self, value: Any) -> bytes:
        default = self.serializer if self.serializer is not None else _stdlib_default
        try:
            text = json.dumps(value, default=default, allow_nan=False, ensure_ascii=False,
                              separators=(",", ":"))
        except ValueError:
            raise ValueError("NaN and Infinity cannot be stored: JSON has no such values") from None
        except RecursionError:
            raise depth_error(None) from None
        return text.encode("utf-8")


def _exp_bytes(expires_at: float | None) -> bytes:
    return b"null" if expires_at is None else orjson.dumps(expires_at)


def op_set(key: str, enc: bytes, expires_at: float | None) -> bytes:
    return b'["s",%b,%b,%b]' % (orjson.dumps(key), enc, _exp_bytes(expires_at))


def op_delete(key: str) -> bytes:
    return b'["d",%b]' % orjson.dumps(key)


def op_expire(key: str, expires_at: float | None) -> bytes:
    return b'["e",%b,%b]' % (orjson.dumps(key), _exp_bytes(expires_at))


OP_CLEAR = b'["c"]'


def build_line(seq: int, ops: list[bytes], exact: bool = False) -> bytes:
    """One record line: checksum, body, newline (docs/design.md §3)."""
    body = b'"s":%d%b,"o":[%b]}' % (seq, b',"j":1' if exact else b"", b",".join(ops))
    return b'{"x":"%b",%b\n' % (_hexdigest(body).encode(), body)


def build_set_line(seq: int, key: str, enc: bytes, expires_at: float | None,
                   exact: bool) -> bytes:
    """``build_line(seq, [op_set(key, enc, expires_at)], exact)`` in one step:
    the hot path of a single set (one format instead of four calls)."""
    body = b'"s":%d%b,"o":[["s",%b,%b,%b]]}' % (
        seq, b',"j":1' if exact else b"", orjson.dumps(key), enc,
        b"null" if expires_at is None else orjson.dumps(expires_at))
    return b'{"x":"%b",%b\n' % (_hexdigest(body).encode(), body)


def build_header(base_seq: int, log_id: str, fingerprint: str) -> bytes:
    body = b'"s":%d,"h":%s}' % (base_seq, orjson.dumps({"log": log_id, "base": fingerprint}))
    return b'{"x":"' + _hexdigest(body).encode() + b'",' + body + b"\n"


def parse_line(line: bytes) -> dict[str, Any]:
    """Check and decode one line (without its newline). Raises RecordError."""
    if len(line) < BODY_START + 2 or line[:6] != LINE_PREFIX or line[CHECK_END:BODY_START] != b'",':
        raise RecordError("not a logkv record")
    body = line[BODY_START:]
    if _hexdigest(body).encode() != line[6:CHECK_END]:
        raise RecordError("checksum mismatch")
    if body.startswith(b'"s":') and b',"j":1,' in body[:32]:
        # Holds integers orjson cannot read exactly (or at all): stdlib parser.
        rec = parse_exact(line)
    else:
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise RecordError("does not parse as JSON") from None
        if type(rec) is dict and "j" in rec:
            rec = parse_exact(line)
    if type(rec) is not dict or type(rec.get("s")) is not int or rec["s"] < 0:
        raise RecordError("no sequence number")
    ops = rec.get("o")
    if ops is None:
        if type(rec.get("h")) is not dict:
            raise RecordError("neither operations nor header")
    elif type(ops) is not list:
        raise RecordError("operations are not a list")
    return rec


def parse_exact(line: bytes) -> Any:
    """Parse with the stdlib parser (exact big integers); RecordError if not JSON."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        raise RecordError("does not parse as JSON") from None


def validate_op(op: Any) -> None:
    """Raise RecordError unless ``op`` is one of the four operation shapes."""
    if type(op) is not list or not op:
        raise RecordError("malformed operation")
    kind = op[0]
    n = len(op)
    if kind == "s" and n == 4 and type(op[1]) is str:
        exp = op[3]
    elif kind == "e" and n == 3 and type(op[1]) is str:
        exp = op[2]
    elif kind == "d" and n == 2 and type(op[1]) is str:
        return
    elif kind == "c" and n == 1:
        return
    else:
        raise RecordError("malformed operation")
    if exp is None or type(exp) is float:
        return
    if type(exp) is not int:
        raise RecordError("malformed expiry")
    try:
        float(exp)  # an exact record may hold an integer no double can be
    except OverflowError:
        raise RecordError("malformed expiry") from None
