"""The one exception tree of logkv.

Each class also derives from the built-in exception that aiodict raises in the
same situation, so existing ``except`` clauses keep working.
"""
from __future__ import annotations


class LogKVError(Exception):
    """Base class of every error logkv raises on its own account."""


class CorruptionError(LogKVError, ValueError):
    """A file logkv must read is damaged or is not what it should be.

    ``path`` names the file, ``offset`` the byte where the damage starts
    (``None`` when the whole file is at fault).
    """

    def __init__(self, message: str, *, path: str | None = None, offset: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset


class LogMismatchError(CorruptionError):
    """The log's records do not belong to the snapshot on disk."""


class LockTimeout(LogKVError, TimeoutError):
    """The store's lock could not be taken within ``lock_timeout`` seconds."""


class ClosedError(LogKVError, RuntimeError):
    """The store was closed; only ``close()`` may still be called."""


class ReadOnlyError(LogKVError):
    """A mutation was attempted on a store opened with ``read_only=True``."""


class StorageError(LogKVError, OSError):
    """A write or an fsync failed.

    After a failed write the store is unchanged and usable again once the
    fault is gone. After a failed fsync the store refuses writes until it is
    reopened (``poisoned`` is True), because the kernel may have dropped the
    data and a second fsync would report success falsely.
    """

    def __init__(self, message: str, *, poisoned: bool = False) -> None:
        super().__init__(message)
        self.poisoned = poisoned


class TransactionConflict(LogKVError):
    """A ``RedisKV`` transaction was not applied: another client changed a key
    the block had read before the block could commit. Nothing of the block was
    written; run it again."""
