"""logkv: a crash-safe, JSON-backed persistent dictionary.

Every change is appended to a checksummed JSON-lines write-ahead log; a
compactor folds the log into a single JSON snapshot in aiodict's format.
"""
import logging as _logging

from ._errors import (ClosedError, CorruptionError, LockTimeout, LogKVError, LogMismatchError,
                      ReadOnlyError, StorageError, TransactionConflict)
from ._aio import AsyncLogKV, AsyncNamespaceView
from ._redis import AsyncRedisKV, RedisKV  # redis-py is imported only when one is created
from ._store import LogKV, NamespaceView

__version__ = "0.1.0"

# A library leaves logging's output to the program (the logging HOWTO): with
# no handler configured, logkv's warnings go nowhere, not to stderr.
_logging.getLogger("logkv").addHandler(_logging.NullHandler())

__all__ = [
    "AsyncLogKV",
    "AsyncNamespaceView",
    "AsyncRedisKV",
    "ClosedError",
    "CorruptionError",
    "LockTimeout",
    "LogKV",
    "LogKVError",
    "LogMismatchError",
    "NamespaceView",
    "ReadOnlyError",
    "RedisKV",
    "StorageError",
    "TransactionConflict",
]
