"""What each call does to a value, whichever engine keeps it.

The file engine (``LogKV``) and the Redis engine (``RedisKV``) store values
differently, but a call must mean the same on both: the same argument checks,
the same results, the same errors. Those rules live here, once.

An *entry* is what a call writes for one key, in the shape the engines share:
``("s", value, encoded_json, exact, expires_at)`` sets a value,
``("d",)`` deletes the key and ``("e", expires_at)`` changes only its expiry.
A read-modify-write gets the key's current state as ``(value, expires_at)``
or ``MISSING``; ``expires_at`` may be an engine's "keep whatever the server
has" marker, which the rules pass through untouched.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any, Callable, Iterable

from ._record import ValueCodec

Entry = tuple


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
NO_DEFAULT: Any = object()


def expiry(ttl: Any) -> float:
    """Absolute expiry for ``ttl`` seconds from now; ttl must be a number > 0."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    if not ttl > 0:
        raise ValueError("ttl must be greater than 0")
    if not math.isfinite(ttl):
        raise ValueError("ttl must be finite")
    return time.time() + float(ttl)


def optional_expiry(ttl: Any) -> float | None:
    return None if ttl is None else expiry(ttl)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_amount(amount: Any) -> None:
    if not is_number(amount):
        raise TypeError(f"amount must be a number, not {type(amount).__name__}")


def set_entry(codec: ValueCodec, value: Any, exp: float | None) -> Entry:
    """The entry setting ``value``: it holds what a reopen would read back
    (``ValueCodec.prepare``), which is the caller's object for plain JSON."""
    held, enc, exact = codec.prepare(value)
    return ("s", held, enc, exact, exp)


def _kept(exp: Any, current: Any) -> Any:
    # A read-modify-write keeps the key's expiry unless ttl= is given.
    return exp if exp is not None or current is MISSING else current[1]


def incr_change(key: Any, amount: int | float, exp: float | None, codec: ValueCodec,
                out: list[Any]) -> Callable[[Any], Entry]:
    """The change ``incr`` makes: a missing key counts as 0. The new number is
    appended to ``out``."""
    def change(current: Any) -> Entry:
        number = 0 if current is MISSING else current[0]
        if not is_number(number):
            raise TypeError(f"Value for {key!r} is not numeric")
        new = number + amount
        out.append(new)
        return set_entry(codec, new, _kept(exp, current))

    return change


def list_change(key: Any, edit: Callable[[list[Any]], list[Any]], exp: float | None,
                codec: ValueCodec, out: list[Any], *, must_exist: bool) -> Callable[[Any], Entry]:
    """The change a list helper makes: ``edit`` gets a copy of the list (an
    empty one for a missing key unless ``must_exist``). The new list is
    appended to ``out``."""
    def change(current: Any) -> Entry:
        if current is MISSING:
            if must_exist:
                raise KeyError(key)
            items: Any = []
        else:
            items = current[0]
        if not isinstance(items, list):
            raise TypeError(f"Value for {key!r} is not a list")
        entry = set_entry(codec, edit(list(items)), _kept(exp, current))
        out.append(entry[1])  # the list as stored (a tuple appended reads back as a list)
        return entry

    return change


def appending(value: Any, unique: bool) -> Callable[[list[Any]], list[Any]]:
    def edit(items: list[Any]) -> list[Any]:
        if not unique or value not in items:
            items.append(value)
        return items

    return edit


def extending(values: Iterable[Any], unique: bool) -> Callable[[list[Any]], list[Any]]:
    values = list(values)

    def edit(items: list[Any]) -> list[Any]:
        if not unique:
            items.extend(values)
            return items
        for v in values:
            if v not in items:
                items.append(v)
        return items

    return edit


def removing(value: Any, all_occurrences: bool) -> Callable[[list[Any]], list[Any]]:
    def edit(items: list[Any]) -> list[Any]:
        if all_occurrences:
            return [item for item in items if item != value]
        items.remove(value)  # ValueError when absent, before anything changes
        return items

    return edit


def pairs_of(other: Any, kwargs: dict[str, Any]) -> list[tuple[Any, Any]]:
    """``update()``'s arguments as (key, value) pairs, as dict.update reads them."""
    if isinstance(other, Mapping):
        pairs = list(other.items())
    elif hasattr(other, "keys"):
        pairs = [(k, other[k]) for k in other.keys()]
    else:
        pairs = list(other)
    pairs.extend(kwargs.items())
    return pairs


def remaining(key: Any, expires_at: float | None) -> float | None:
    """``ttl()``'s answer for a key that exists with this expiry."""
    if expires_at is None:
        return None
    left = expires_at - time.time()
    if left <= 0:
        raise KeyError(key)
    return left
