"""Files only their owner can read: the store, its WAL and shared memory, spill files, keys, exports.

The audit log is evidence and holds personal data (account ids, paths); under the usual umask
(022) a new file is world-readable, so every file the collector creates is made 0600 and every
directory 0700, whatever the umask. SQLite gives a database's ``-wal`` and ``-shm`` files the
database file's own mode, so creating the database 0600 covers them too. A store that already
exists and that others can read is not changed behind its owner's back: it is reported once,
with the command that fixes it.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

log = logging.getLogger("collector.files")

FILE_MODE = 0o600
DIR_MODE = 0o700

_warned: set[str] = set()
_warned_lock = threading.Lock()


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700 directories; an existing one is left alone."""
    missing = []
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # another process made it first
        os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask
    return path


def create_private(path: Path) -> bool:
    """Create an empty 0600 file at ``path`` unless one exists; True when this call made it."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return True


def open_private(path: Path, mode: str = "wb"):
    """Open ``path`` for writing, created (or truncated) 0600: for exports and other outputs."""
    private_dir(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode through O_CREAT
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def warn_if_exposed(path: Path, what: str = "audit store") -> bool:
    """Log once per path when others may read it, with the fix; True when it warned."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return False
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return False
    key = str(path.absolute())
    with _warned_lock:
        if key in _warned:
            return False
        _warned.add(key)
    log.warning("the %s %s is open to other users (mode %04o); restrict it with: chmod 600 %s*; chmod 700 %s",
                what, path, mode, path, path.parent)
    return True
