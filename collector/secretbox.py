"""Shared secrets encrypted at rest.

Each install's shared secret can mint tokens for that tenant, so the store keeps only a
Fernet ciphertext (AES-128-CBC + HMAC-SHA256, authenticated). The key comes from
``CONNECT_AUDIT_SECRET_KEY`` or, failing that, from the key file ``audit.key`` created
(0600) in the store's key directory, beside the SQLite file, never inside the database:
a copy of the database alone reveals no secret.

Rotation: ``CONNECT_AUDIT_SECRET_KEY`` may hold several comma-separated keys; the first
encrypts, all of them decrypt, so old ciphertexts stay readable while installs are
re-encrypted (every reinstall writes a new ciphertext with the first key).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from collector import config, keyfiles
from collector.errors import ConfigurationError

if TYPE_CHECKING:
    from collector.store import Store

KEY_FILE = "audit.key"


class SecretBox:
    """Encrypts and decrypts shared secrets with the store's secret key."""

    def __init__(self, keys: list[bytes], *, source: str) -> None:
        if not keys:
            raise ConfigurationError(f"no secret key in {source}")
        try:
            self._fernet = MultiFernet([Fernet(k) for k in keys])
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"the secret key in {source} is not a Fernet key (32 url-safe base64 bytes; "
                "create one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())')"
            ) from exc
        self.source = source

    @classmethod
    def for_store(cls, store: Store) -> SecretBox:
        """The box for ``store``: the environment's key, else ``audit.key`` in ``store.key_dir``."""
        env = os.environ.get(config.SECRET_KEY_ENV, "").strip()
        if env:
            keys = [k.strip().encode() for k in env.split(",") if k.strip()]
            return cls(keys, source=config.SECRET_KEY_ENV)
        path = store.key_dir / KEY_FILE
        return cls([keyfiles.load_or_create(path, Fernet.generate_key)], source=str(path))

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode("ascii")).decode()
        except (InvalidToken, UnicodeError) as exc:
            raise ConfigurationError(
                f"a stored shared secret cannot be decrypted with the key from {self.source}: "
                f"the store was written with another key (set {config.SECRET_KEY_ENV} or restore "
                "the original key file)"
            ) from exc

    def __repr__(self) -> str:  # never shows key material
        return f"SecretBox(source={self.source!r})"
