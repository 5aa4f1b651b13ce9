"""Where settings come from: command-line flag, then environment, then the default.

The embedded default keeps everything under ``data/`` of the working directory (or
``CONNECT_AUDIT_DATA_DIR``): the SQLite store, and beside it, never inside it, the key
that encrypts shared secrets and the key that signs checkpoints.
"""

from __future__ import annotations

import os
from pathlib import Path

from collector.errors import ConfigurationError

DATABASE_ENV = "CONNECT_AUDIT_DATABASE_URL"
DATA_DIR_ENV = "CONNECT_AUDIT_DATA_DIR"
# Fernet key for shared secrets at rest (the name of a variable, not a secret).
SECRET_KEY_ENV = "CONNECT_AUDIT_SECRET_KEY"  # noqa: S105
CHECKPOINT_KEY_ENV = "CONNECT_AUDIT_CHECKPOINT_KEY"  # HMAC key for checkpoints
INSTALL_KEYS_ENV = "CONNECT_AUDIT_INSTALL_KEYS"  # base URL or directory of lifecycle public keys
KEY_DIR_ENV = "CONNECT_AUDIT_KEY_DIR"  # where audit.key and checkpoint.key live (default: beside the store)
WRITER_ENV = "CONNECT_AUDIT_WRITER"  # thread | process: where the recorder's store work runs
WRITERS = ("thread", "process")

#: Atlassian's CDN of the public keys that sign install/uninstall callbacks.
DEFAULT_INSTALL_KEYS_URL = "https://connect-install-keys.atlassian.com"


def data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


def key_dir(beside_store: Path) -> Path:
    """Where the key files live: ``CONNECT_AUDIT_KEY_DIR`` (recommended: off the data volume, so
    that a copy of the data is not a copy of the keys), else the store's own directory."""
    override = os.environ.get(KEY_DIR_ENV)
    return Path(override).expanduser().absolute() if override else beside_store


def default_database_url() -> str:
    return f"sqlite:///{data_dir() / 'audit.db'}"


def database_url(cli_value: str | None = None) -> str:
    """The store to use: ``--database``, else ``CONNECT_AUDIT_DATABASE_URL``, else data/audit.db."""
    return cli_value or os.environ.get(DATABASE_ENV) or default_database_url()


def writer(value: str | None = None) -> str:
    """Where the recorder writes: ``value``, else ``CONNECT_AUDIT_WRITER``, else ``thread``."""
    chosen = (value or os.environ.get(WRITER_ENV) or "thread").strip().lower()
    if chosen not in WRITERS:
        source = "writer" if value else WRITER_ENV
        raise ConfigurationError(f"{source} must be one of {', '.join(WRITERS)}, not {chosen!r}")
    return chosen
