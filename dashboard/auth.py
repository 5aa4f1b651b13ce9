"""Sign-in for the dashboard: nothing of the audit log is shown before it.

Two ways in:

* **OIDC** through ``st.login`` when ``[auth]`` is configured in ``.streamlit/secrets.toml``.
  Roles come from ``[connect_audit]`` in the same file: ``admins = ["alice@example.com"]``
  and ``auditors = [...]`` (matched on the identity's e-mail, else its ``sub``). An identity
  in neither list is signed in but gets no access.
* **Local accounts** otherwise. The ``admin`` account's password is
  ``CONNECT_AUDIT_ADMIN_PASSWORD`` or, when that is unset at first start, a generated one
  printed once in the terminal (as Jupyter does with its token). Passwords are kept only as
  scrypt hashes in ``dashboard-accounts.json`` beside the store (mode 0600); admins add
  auditor accounts on the Accounts page.

Roles: ``admin`` sees and does everything; ``auditor`` reads and exports but cannot verify
tokens against stored shared secrets or manage accounts.

Failed sign-ins are rate-limited per account name and per client address, in process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector import config, files

ADMIN = "admin"
AUDITOR = "auditor"
ROLES = (ADMIN, AUDITOR)
ADMIN_PASSWORD_ENV = "CONNECT_AUDIT_ADMIN_PASSWORD"  # noqa: S105 - a variable name
ACCOUNTS_FILE_ENV = "CONNECT_AUDIT_ACCOUNTS_FILE"
ACCOUNTS_FILE = "dashboard-accounts.json"
#: scrypt cost: about 50 ms and 16 MiB per check, cheap for a person, dear for a guesser.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 12
_NAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
SESSION_KEY = "connect_audit_user"


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    via: str  # "local" or "oidc"

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


class AuthError(Exception):
    """A sign-in or account change that cannot be done; the message is for the person."""


# --------------------------------------------------------------------------- hashing


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# --------------------------------------------------------------------------- account file


def accounts_path() -> Path:
    """Beside the store: the SQLite file's directory, else the data directory."""
    override = os.environ.get(ACCOUNTS_FILE_ENV)
    if override:
        return Path(override)
    url = config.database_url()
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).expanduser().parent / ACCOUNTS_FILE
    return config.data_dir() / ACCOUNTS_FILE


class Accounts:
    """The local accounts file: ``{"accounts": {name: {"role", "password"}}}``."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or accounts_path()
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise AuthError(f"The accounts file {self.path} cannot be read: {exc}") from None
        return dict(data.get("accounts", {}))

    def _save(self, accounts: dict[str, dict[str, str]]) -> None:
        files.private_dir(self.path.parent)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"accounts": accounts}, fh, indent=2, sort_keys=True)
        os.replace(tmp, self.path)

    def list(self) -> list[tuple[str, str]]:
        return sorted((name, acc["role"]) for name, acc in self._load().items())

    def set_password(self, name: str, password: str, role: str | None = None) -> None:
        if not _NAME_RE.match(name):
            raise AuthError("An account name is 1 to 64 letters, digits or . _ @ -")
        if len(password) < MIN_PASSWORD:
            raise AuthError(f"A password needs at least {MIN_PASSWORD} characters")
        with self._lock:
            accounts = self._load()
            current = accounts.get(name, {})
            role = role or current.get("role")
            if role not in ROLES:
                raise AuthError(f"The role must be one of {', '.join(ROLES)}")
            accounts[name] = {"role": role, "password": hash_password(password)}
            self._save(accounts)

    def remove(self, name: str) -> None:
        if name == ADMIN:
            raise AuthError("The admin account cannot be removed")
        with self._lock:
            accounts = self._load()
            accounts.pop(name, None)
            self._save(accounts)

    def authenticate(self, name: str, password: str) -> User | None:
        account = self._load().get(name)
        if account is None:
            # Spend the same time as a real check so that names cannot be probed by timing.
            check_password(password, _DUMMY_HASH)
            return None
        if not check_password(password, account["password"]):
            return None
        return User(name, account["role"], "local")

    def ensure_admin(self, *, out=None) -> str | None:
        """Create (or re-key from the environment) the admin account; print what a person
        needs to sign in, once. Returns the generated password, if one was generated."""
        out = out or sys.stdout
        env_password = os.environ.get(ADMIN_PASSWORD_ENV)
        accounts = self._load()
        admin = accounts.get(ADMIN)
        if env_password:
            if admin is None or not check_password(env_password, admin["password"]):
                self._set_admin(env_password)
                print(f"Connect Audit dashboard: admin password set from {ADMIN_PASSWORD_ENV} "
                      f"(stored as a hash in {self.path})", file=out, flush=True)
            return None
        if admin is not None:
            return None
        generated = secrets.token_urlsafe(18)
        self._set_admin(generated)
        print(
            "\n  Connect Audit dashboard: sign in as 'admin' with password\n\n"
            f"      {generated}\n\n"
            f"  It is shown only this once and stored only as a hash in {self.path}.\n"
            f"  Set {ADMIN_PASSWORD_ENV} to choose it instead.\n",
            file=out, flush=True,
        )
        return generated

    def _set_admin(self, password: str) -> None:
        # The environment's password is accepted whatever its length: the operator chose it.
        with self._lock:
            accounts = self._load()
            accounts[ADMIN] = {"role": ADMIN, "password": hash_password(password)}
            self._save(accounts)


_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


# --------------------------------------------------------------------------- throttling


class Throttle:
    """At most ``limit`` failures per ``window`` seconds per key (account name, address)."""

    def __init__(self, limit: int = 5, window: float = 300.0) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, *keys: str) -> float:
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for key in keys:
                q = self._failures.get(key)
                if not q:
                    continue
                while q and now - q[0] > self.window:
                    q.popleft()
                if len(q) >= self.limit:
                    wait = max(wait, self.window - (now - q[0]))
        return wait

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


# --------------------------------------------------------------------------- OIDC


def oidc_configured(secrets_obj: Any) -> bool:
    """True when ``[auth]`` in secrets.toml names a provider (flat or per-provider)."""
    try:
        section = secrets_obj.get("auth") if hasattr(secrets_obj, "get") else None
    except Exception:  # noqa: BLE001 - no secrets file at all is a normal state
        return False
    if not section:
        return False
    if "client_id" in section:
        return True
    return any(hasattr(value, "get") and value.get("client_id") for value in section.values())


def oidc_role(identity: dict[str, Any], secrets_obj: Any) -> str | None:
    """The role of an OIDC identity from ``[connect_audit]`` admins / auditors lists."""
    try:
        section = secrets_obj.get("connect_audit") or {}
    except Exception:  # noqa: BLE001
        section = {}
    who = {str(identity.get("email") or "").lower(), str(identity.get("sub") or "").lower()} - {""}
    if who & {str(x).lower() for x in section.get("admins", [])}:
        return ADMIN
    if who & {str(x).lower() for x in section.get("auditors", [])}:
        return AUDITOR
    return None


def main() -> int:
    """``python -m dashboard.auth``: make sure the local admin account exists before the
    server starts (``make run`` calls it), so that a generated password is printed where
    the person starting the dashboard is looking, not on the first page view."""
    store = Accounts()
    if store.ensure_admin() is None and not os.environ.get(ADMIN_PASSWORD_ENV):
        print(f"Connect Audit dashboard: sign in as 'admin' (password set earlier; set "
              f"{ADMIN_PASSWORD_ENV} to replace it)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
