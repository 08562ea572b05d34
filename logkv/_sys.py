"""The platform seam: the one place that knows which operating system runs.

``_fs`` (files, syncs) and ``_lock`` (locks, the shared page) call these
functions; nothing else in logkv branches on the platform. The two
implementations, ``_sys_posix`` (Linux, macOS, BSDs) and ``_sys_windows``,
export the same names; each module's docstring says what differs and why.
"""
from __future__ import annotations

import sys

if sys.platform == "win32":
    from ._sys_windows import (HAS_FOLDER_SYNC, NAME, NOFOLLOW, OPEN_FLAGS, REPLACE_OPEN_FILES,
                               ByteLocks, kill_hard, killed_hard, lock_file, lock_liveness,
                               open_fd, pid_alive, pread, pwrite, replace, share_liveness,
                               sync_data, sync_file, sync_folder, unlock_file)
else:
    from ._sys_posix import (HAS_FOLDER_SYNC, NAME, NOFOLLOW, OPEN_FLAGS, REPLACE_OPEN_FILES,
                             ByteLocks, kill_hard, killed_hard, lock_file, lock_liveness,
                             open_fd, pid_alive, pread, pwrite, replace, share_liveness,
                             sync_data, sync_file, sync_folder, unlock_file)

__all__ = ["HAS_FOLDER_SYNC", "NAME", "NOFOLLOW", "OPEN_FLAGS", "REPLACE_OPEN_FILES", "ByteLocks",
           "kill_hard", "killed_hard", "lock_file", "lock_liveness", "open_fd", "pid_alive",
           "pread", "pwrite", "replace", "share_liveness", "sync_data", "sync_file",
           "sync_folder", "unlock_file"]
