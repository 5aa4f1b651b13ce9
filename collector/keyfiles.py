"""Key files kept beside the store, never inside it.

The store holds ciphertext (shared secrets) and signatures (checkpoints); the keys that
make them meaningful live in small files that an attacker who copies or edits the
database does not get. A key file is created once, readable by its owner only (0600),
and atomically: several processes opening a new store at the same moment all end up
using the same key, never one each.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from collector import files
from collector.errors import ConfigurationError


def load_or_create(path: Path, make_key: Callable[[], bytes]) -> bytes:
    """Return the key stored at ``path``, creating it with ``make_key()`` if absent."""
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    try:
        files.private_dir(path.parent)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the key directory {path.parent}: {exc.strerror or exc}"
        ) from exc
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(make_key() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        # link() fails if the name exists: whoever links first wins, the others read theirs.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    except OSError as exc:
        raise ConfigurationError(f"cannot create the key file {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return _read(path)


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes().strip()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigurationError(f"cannot read the key file {path}: {exc.strerror or exc}") from exc
    if not data:
        raise ConfigurationError(f"the key file {path} is empty")
    return data
