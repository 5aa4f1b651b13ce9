"""Sign-in for the dashboard: nothing of the audit log is shown before it.

Two ways in:

* **OIDC** through ``st.login`` (Authlib) when ``[auth]`` is configured in
  ``.streamlit/secrets.toml``. Roles come from ``[connect_audit]`` in the same file: the groups
  of the claim ``roles_claim`` (default ``groups``) listed in ``admin_groups`` / ``auditor_groups``,
  or the e-mail (else ``sub``) listed in ``admins`` / ``auditors``. An identity with neither is
  signed in but gets no access. Sign-out revokes the identity cookie (:func:`revoke_cookie`).
* **Local accounts** otherwise. The ``admin`` account's password is
  ``CONNECT_AUDIT_ADMIN_PASSWORD`` or, when that is unset at first start, a generated one
  printed once in the terminal (as Jupyter does with its token). Passwords are kept only as
  scrypt hashes in ``dashboard-accounts.json`` beside the store (mode 0600); admins add
  auditor accounts on the Accounts page.

Roles: ``admin`` sees and does everything; ``auditor`` reads and exports but cannot verify
tokens against stored shared secrets or manage accounts.

Failed sign-ins slow down per account at an address and per address (:class:`SignInThrottle`),
persisted beside the accounts so that a restart does not reset them; a guesser elsewhere never
locks the real admin out. ``python -m dashboard.auth reset ACCOUNT`` resets an account's password
and throttle from the terminal.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector import config, files
from dashboard import sessions

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


_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_LOCK = threading.Lock()
_SHARED: dict[str, Accounts] = {}


def shared_accounts(path: Path | None = None) -> Accounts:
    """This process's accounts file (the store's own unless ``path``), its admin account made sure of
    on first use: what the pages and the sign-in edge both use."""
    path = path or accounts_path()
    with _LOCKS_LOCK:
        found = _SHARED.get(str(path))
    if found is None:
        found = Accounts(path)
        found.ensure_admin()
        with _LOCKS_LOCK:
            found = _SHARED.setdefault(str(path), found)
    return found


class Accounts:
    """The local accounts file: ``{"accounts": {name: {"role", "password"}}, "throttle": {...}}``
    (the throttle's failure counts live here too, so that a restart does not reset them)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or accounts_path()
        # One lock per file in this process: the sign-in edge and the pages each hold an
        # instance, and every change is a read-modify-write of the whole file.
        with _LOCKS_LOCK:
            self._lock = _LOCKS.setdefault(str(self.path.expanduser().absolute()), threading.RLock())

    def _document(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise AuthError(f"The accounts file {self.path} cannot be read: {exc}") from None
        return data if isinstance(data, dict) else {}

    def _load(self) -> dict[str, dict[str, str]]:
        return dict(self._document().get("accounts", {}))

    def _write(self, document: dict[str, Any]) -> None:
        files.private_dir(self.path.parent)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(document, fh, indent=2, sort_keys=True)
        os.replace(tmp, self.path)

    def _save(self, accounts: dict[str, dict[str, str]]) -> None:
        with self._lock:
            document = self._document()
            before = document.get("accounts", {})
            # A new password, a new role or a removal ends the account's sessions at once, here,
            # so that every way of changing an account (page, terminal, environment) does it.
            changed = {n for n in set(before) | set(accounts) if before.get(n) != accounts.get(n)}
            sessions.drop_accounts(document, changed)
            self._write({**document, "accounts": accounts})

    def document(self) -> dict[str, Any]:
        return self._document()

    def update_document(self, change: Any) -> Any:
        """Apply ``change(document)`` to the whole file under the lock; returns its result."""
        with self._lock:
            document = self._document()
            result = change(document)
            self._write(document)
            return result

    def throttle_state(self) -> dict[str, dict[str, float]]:
        return dict(self._document().get("throttle", {}))

    def update_throttle(self, change: Any) -> Any:
        """Apply ``change(state)`` to the persisted throttle state under the lock; returns its result."""

        def on_document(document: dict[str, Any]) -> Any:
            state = dict(document.get("throttle", {}))
            result = change(state)
            document["throttle"] = state
            return result

        return self.update_document(on_document)

    def role_of(self, name: str) -> str | None:
        """The account's role now (None: no such account)."""
        account = self._load().get(name)
        return account.get("role") if account else None

    def session_store(self, **options: Any) -> sessions.Sessions:
        """This file's dashboard sessions, checked against the accounts' current roles."""
        return sessions.Sessions(self, role_of=self.role_of, **options)

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
            if name == ADMIN and role != ADMIN:
                raise AuthError("The admin account keeps the admin role")
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


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the throttle says about one sign-in attempt."""

    retry_after: float  # seconds to wait before this account may try again from this address
    locked: bool = False  # this failure started a wait


class SignInThrottle:
    """Failed sign-ins make the next try wait, longer each time, persisted in the accounts file.

    The wait grows per *account at an address* (after ``free`` failures: 5 s, 10 s, 20 s, ... up to
    ``cap``, 15 minutes) and per *address* over all accounts (after ``address_free``: someone trying many
    names). It never grows per account alone: a guesser elsewhere cannot lock the real admin
    out, so a correct password from an address that has not been failing still signs in. Failures
    against one account from many addresses are counted too; once they pass
    ``account_alarm``, every address that has failed for that account waits the full ``cap``.
    Counts older than ``forget`` seconds are dropped. ``clock`` is epoch seconds (injectable).
    """

    def __init__(self, accounts: Accounts, *, free: int = 3, address_free: int = 20, account_alarm: int = 50,
                 base: float = 5.0, cap: float = 900.0, forget: float = 86400.0,
                 clock: Any = time.time) -> None:
        self.accounts = accounts
        self.free, self.address_free, self.account_alarm = free, address_free, account_alarm
        self.base, self.cap, self.forget = base, cap, forget
        self.clock = clock

    @staticmethod
    def _keys(name: str, address: str) -> tuple[str, str, str]:
        name = name.strip().lower()
        return f"pair:{name}|{address}", f"addr:{address}", f"acct:{name}"

    def _wait(self, entry: dict[str, float] | None, free: int, now: float) -> float:
        if not entry or entry["n"] <= free:
            return 0.0
        delay = min(self.cap, self.base * 2 ** (entry["n"] - free - 1))
        return max(0.0, entry["last"] + delay - now)

    def _verdict(self, state: dict[str, Any], name: str, address: str, now: float) -> float:
        pair, addr, acct = (state.get(k) for k in self._keys(name, address))
        wait = max(self._wait(pair, self.free, now), self._wait(addr, self.address_free, now))
        if pair and acct and acct["n"] >= self.account_alarm:
            wait = max(wait, pair["last"] + self.cap - now)
        return max(0.0, wait)

    def retry_after(self, name: str, address: str) -> float:
        """Seconds before ``name`` may try again from ``address`` (0: now)."""
        now = self.clock()
        return self._verdict(self._fresh(self.accounts.throttle_state(), now), name, address, now)

    def failed(self, name: str, address: str) -> Verdict:
        now = self.clock()

        def change(state: dict[str, Any]) -> Verdict:
            fresh = self._fresh(state, now)  # old counts go, so the file stays small
            state.clear()
            state.update(fresh)
            before = self._verdict(state, name, address, now)
            for key in self._keys(name, address):
                entry = state.get(key) or {"n": 0}
                state[key] = {"n": entry["n"] + 1, "last": now}
            after = self._verdict(state, name, address, now)
            return Verdict(after, locked=after > 0 and before == 0)

        return self.accounts.update_throttle(change)

    def succeeded(self, name: str, address: str) -> None:
        """Clear this account's count at this address (not the address's: one good account must
        not wipe the record of a guesser trying others)."""
        pair = self._keys(name, address)[0]
        if pair in self.accounts.throttle_state():
            self.accounts.update_throttle(lambda state: state.pop(pair, None))

    def reset(self, name: str) -> int:
        """Forget every count for ``name`` (the recovery command); returns how many were dropped."""
        name = name.strip().lower()

        def change(state: dict[str, Any]) -> int:
            gone = [k for k in state if k == f"acct:{name}" or k.startswith(f"pair:{name}|")]
            for key in gone:
                state.pop(key)
            return len(gone)

        return self.accounts.update_throttle(change)

    def _fresh(self, state: dict[str, Any], now: float) -> dict[str, Any]:
        return {k: v for k, v in state.items()
                if isinstance(v, dict) and now - float(v.get("last", 0)) < self.forget}


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
    """The role of an OIDC identity, from ``[connect_audit]`` in secrets.toml: the groups named
    by ``admin_groups`` / ``auditor_groups`` in the claim ``roles_claim`` (default ``groups``),
    or the e-mails / subjects listed in ``admins`` / ``auditors``. Admin wins over auditor."""
    try:
        section = secrets_obj.get("connect_audit") or {}
    except Exception:  # noqa: BLE001
        section = {}

    def listed(key: str) -> set[str]:
        value = section.get(key) or []
        return {str(x).lower() for x in ([value] if isinstance(value, str) else value)}

    who = {str(identity.get("email") or "").lower(), str(identity.get("sub") or "").lower()} - {""}
    claim = identity.get(str(section.get("roles_claim") or "groups"))
    values = [claim] if isinstance(claim, str) else claim if isinstance(claim, list | tuple) else []
    groups = {str(g).lower() for g in values}
    if who & listed("admins") or groups & listed("admin_groups"):
        return ADMIN
    if who & listed("auditors") or groups & listed("auditor_groups"):
        return AUDITOR
    return None


#: Streamlit's signed identity cookie (set by ``st.login``); its hash is revoked at sign-out.
OIDC_COOKIE = "_streamlit_user"
#: How long a revoked identity cookie is remembered: Streamlit's own cookie lifetime (30 days).
REVOKED_FOR = 30 * 86400


def cookie_fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def revoke_cookie(accounts: Accounts, value: str, *, now: float | None = None) -> None:
    """Remember a signed-out identity cookie, so that a copy of it (a second tab, a replay) no
    longer signs anyone in: Streamlit's cookie is stateless and would otherwise stay valid."""
    now = time.time() if now is None else now

    def change(document: dict[str, Any]) -> None:
        revoked = {k: v for k, v in document.get("revoked", {}).items() if v > now}
        revoked[cookie_fingerprint(value)] = now + REVOKED_FOR
        document["revoked"] = revoked

    accounts.update_document(change)


def is_revoked(accounts: Accounts, value: str | None, *, now: float | None = None) -> bool:
    if not value:
        return False
    now = time.time() if now is None else now
    until = accounts.document().get("revoked", {}).get(cookie_fingerprint(value))
    return bool(until and until > now)


def reset(name: str, *, out=None, password: str | None = None) -> str:
    """Give ``name`` a new password (generated unless given) and clear its throttle; returns it.

    The recovery path when the admin is locked out or has lost the password: it needs only a
    shell on the machine that holds the accounts file."""
    out = out or sys.stdout
    store = Accounts()
    known = dict(store.list())
    if name not in known and name != ADMIN:
        names = ", ".join(known) or "none"
        raise AuthError(f"There is no account {name!r} in {store.path}; accounts: {names}")
    chosen = password or secrets.token_urlsafe(18)
    if name == ADMIN:
        store._set_admin(chosen)
    else:
        store.set_password(name, chosen)
    cleared = SignInThrottle(store).reset(name)
    shown = "" if password else f":\n\n      {chosen}\n"
    print(f"Connect Audit dashboard: {name!r} has a new password{shown}\n"
          f"  Its failed sign-ins were cleared ({cleared} record(s)). Only its hash is kept in {store.path}.",
          file=out, flush=True)
    return chosen


def main(argv: list[str] | None = None) -> int:
    """``python -m dashboard.auth``: make sure the local admin account exists before the
    server starts (``make run`` calls it), so that a generated password is printed where
    the person starting the dashboard is looking, not on the first page view.

    ``python -m dashboard.auth reset ACCOUNT``: the recovery command (a new password, printed
    once, and the account's sign-in throttle cleared), recorded in the audit log."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dashboard.auth", description=(
        "Set up the dashboard's admin account, or reset an account's password and sign-in throttle."))
    commands = parser.add_subparsers(dest="command")
    again = commands.add_parser("reset", help=(
        "give ACCOUNT a new generated password and clear its failed sign-ins "
        "(the way back in when the admin is locked out)"))
    again.add_argument("account", nargs="?", default=ADMIN, help="the account (default: admin)")
    args = parser.parse_args(argv)
    if args.command == "reset":
        try:
            reset(args.account)
        except AuthError as exc:
            print(f"python -m dashboard.auth reset: {exc}", file=sys.stderr)
            return 2
        from dashboard import queries

        queries.record_admin_event("password_reset", actor=args.account, allowed=True, standalone=True,
                                   detail="Password and sign-in throttle reset from the terminal")
        return 0
    store = Accounts()
    if store.ensure_admin() is None and not os.environ.get(ADMIN_PASSWORD_ENV):
        print(f"Connect Audit dashboard: sign in as 'admin' (password set earlier; set "
              f"{ADMIN_PASSWORD_ENV} to replace it, or: python -m dashboard.auth reset admin)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
