"""Encoding of values and of one log line, with its checksum. No I/O here.

The byte layout is specified in docs/design.md §3; keep the two in step.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import math
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


def _find_enum(value: Any, depth: int = 0) -> Any:
    """The first Enum member inside ``value`` (orjson encodes enums itself,
    bypassing both the serializer and the no-serializer rules), or None."""
    t = type(value)
    if t in _PLAIN or depth > 100:
        return None
    if t is dict:
        for item in value.values():
            if type(item) not in _PLAIN:
                found = _find_enum(item, depth + 1)
                if found is not None:
                    return found
        return None
    if t is list or t is tuple:
        for item in value:
            if type(item) not in _PLAIN:
                found = _find_enum(item, depth + 1)
                if found is not None:
                    return found
        return None
    return value if isinstance(value, enum.Enum) else None


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
    """

    __slots__ = ("serializer", "deserializer", "_default", "_option")

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
            if "64-bit" not in str(exc):
                raise TypeError(str(exc)) from None
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
