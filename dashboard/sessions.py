"""Dashboard sessions that outlive a browser tab: a random id in a cookie, only its hash at rest.

A session starts at sign-in and ends at the first of: sign-out, ``idle`` seconds without a page
action (default 30 minutes), ``lifetime`` seconds after sign-in (default 12 hours), or a change to
its account (password, role, removal: :meth:`Sessions.end_account`, called by the accounts file
itself). The record lives in the accounts file under ``"sessions"``, keyed by the SHA-256 of the
id, so that a copy of the file signs nobody in.

Single sign-on sessions use the same records, keyed by the hash of Streamlit's identity cookie
(:meth:`Sessions.track`), so that both ways in expire and end alike.

Pure apart from the accounts file it is given; the clock is injectable.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The cookie that carries the session id; ``__Host-`` (Secure, host-only, Path=/) over HTTPS.
COOKIE = "connect_audit_session"
SECURE_COOKIE = f"__Host-{COOKIE}"
IDLE_ENV = "CONNECT_AUDIT_SESSION_IDLE_MINUTES"
LIFETIME_ENV = "CONNECT_AUDIT_SESSION_LIFETIME_HOURS"
DEFAULT_IDLE = 30 * 60.0
DEFAULT_LIFETIME = 12 * 3600.0
#: A session's last action is written at most this often (a page action is a rerun; writing the
#: file on each would cost more than it tells).
TOUCH_EVERY = 60.0
_KEY = "sessions"

#: Why a session is no longer accepted (the ``ended`` of a :class:`Check`).
IDLE, LIFETIME, ACCOUNT_CHANGED, UNKNOWN = "idle", "lifetime", "account_changed", "unknown"


class SessionSettingError(ValueError):
    """Raised when a session timeout in the environment is not a positive number."""


def _env_seconds(name: str, unit: float, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SessionSettingError(f"{name} must be a positive number, not {raw!r}")
    return value * unit


def idle_timeout() -> float:
    """Seconds without an action after which a session ends (``CONNECT_AUDIT_SESSION_IDLE_MINUTES``)."""
    return _env_seconds(IDLE_ENV, 60.0, DEFAULT_IDLE)


def session_lifetime() -> float:
    """Seconds after sign-in after which a session ends (``CONNECT_AUDIT_SESSION_LIFETIME_HOURS``)."""
    return _env_seconds(LIFETIME_ENV, 3600.0, DEFAULT_LIFETIME)


def digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    account: str
    role: str
    via: str  # "local" or "oidc"
    created: float
    seen: float


@dataclass(frozen=True, slots=True)
class Check:
    """The answer for one presented id: the session, or why there is none (``ended``)."""

    session: Session | None
    ended: str | None = None  # IDLE, LIFETIME, ACCOUNT_CHANGED or UNKNOWN when session is None
    was: Session | None = None  # the session that has just ended (so it can be recorded once)
    started: bool = False  # :meth:`Sessions.track` began it just now (a single sign-on sign-in)


def _session(record: dict[str, Any]) -> Session:
    return Session(str(record["account"]), str(record["role"]), str(record.get("via", "local")),
                   float(record["created"]), float(record["seen"]))


def drop_accounts(document: dict[str, Any], names: set[str]) -> int:
    """End every session of ``names`` inside an accounts ``document``; returns how many ended.

    The records stay, marked, until they are next presented, so that the tab holding one can say
    why it was signed out; the next sign-in sweeps them."""
    ended = 0
    for record in document.get(_KEY, {}).values():
        if record.get("account") in names and "ended" not in record:
            record["ended"] = ACCOUNT_CHANGED
            ended += 1
    return ended


class Sessions:
    """The session records of one accounts file (anything with ``document()`` and
    ``update_document(change)``); ``role_of(name)`` is the account's current role (None: gone)."""

    def __init__(self, accounts: Any, *, role_of: Callable[[str], str | None] | None = None,
                 idle: float | None = None, lifetime: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.accounts = accounts
        self.role_of = role_of
        self.idle = idle_timeout() if idle is None else idle
        self.lifetime = session_lifetime() if lifetime is None else lifetime
        self.clock = clock

    # -- starting and ending

    def start(self, account: str, role: str, *, via: str = "local") -> str:
        """A new session for ``account``; returns its id (to be put in the cookie, never stored)."""
        session_id = secrets.token_urlsafe(32)  # 256 bits
        self._put(digest(session_id), account, role, via)
        return session_id

    def _put(self, key: str, account: str, role: str, via: str) -> None:
        now = self.clock()
        record = {"account": account, "role": role, "via": via, "created": now, "seen": now}

        def change(document: dict[str, Any]) -> None:
            live = {k: v for k, v in document.get(_KEY, {}).items() if self._ended(v, now) is None}
            live[key] = record
            document[_KEY] = live  # ended sessions go on each sign-in, so the file stays small

        self.accounts.update_document(change)

    def end(self, session_id: str | None) -> Session | None:
        """Sign-out: forget the session named by ``session_id``; returns what it was."""
        return self._end_key(digest(session_id)) if session_id else None

    def _end_key(self, key: str) -> Session | None:
        def change(document: dict[str, Any]) -> Session | None:
            record = document.get(_KEY, {}).pop(key, None)
            return _session(record) if record else None

        if key not in self._records():
            return None
        return self.accounts.update_document(change)

    def end_account(self, name: str) -> int:
        """End every session of ``name`` (its password, role or existence changed)."""
        return self.accounts.update_document(lambda document: drop_accounts(document, {name}))

    # -- checking

    def check(self, session_id: str | None) -> Check:
        """Is the session named by ``session_id`` still good? Counts as an action (idle restarts)."""
        if not session_id:
            return Check(None, UNKNOWN)
        return self._check_key(digest(session_id))

    def _check_key(self, key: str, *, role: str | None = None) -> Check:
        record = self._records().get(key)
        if record is None:
            return Check(None, UNKNOWN)
        now = self.clock()
        ended = self._ended(record, now)
        if ended is None and self._role_changed(record, role):
            ended = ACCOUNT_CHANGED
        if ended is not None:
            self._end_key(key)  # so the end is seen (and recorded) once
            return Check(None, ended, _session(record))
        if now - float(record["seen"]) >= min(TOUCH_EVERY, self.idle / 10):
            self._touch(key, now)
        return Check(_session({**record, "seen": now}))

    def track(self, cookie: str, account: str, role: str) -> Check:
        """Single sign-on: the session of Streamlit's identity cookie, started on first sight.
        ``ended`` is set when it ran out or the identity's role changed since it started."""
        key = digest(cookie)
        if key not in self._records():
            self._put(key, account, role, "oidc")
            return Check(self._session_of(key), started=True)
        return self._check_key(key, role=role)

    def end_cookie(self, cookie: str) -> Session | None:
        return self._end_key(digest(cookie))

    def _session_of(self, key: str) -> Session | None:
        record = self._records().get(key)
        return _session(record) if record else None

    def _role_changed(self, record: dict[str, Any], role: str | None) -> bool:
        """The account's role is not the session's (given, or looked up): a stale session."""
        if role is None:
            if self.role_of is None:
                return False
            role = self.role_of(record["account"])
        return role != record["role"]

    def _touch(self, key: str, now: float) -> None:
        def change(document: dict[str, Any]) -> None:
            record = document.get(_KEY, {}).get(key)
            if record is not None:
                record["seen"] = max(float(record["seen"]), now)

        self.accounts.update_document(change)

    def _records(self) -> dict[str, dict[str, Any]]:
        return dict(self.accounts.document().get(_KEY, {}))

    def _ended(self, record: dict[str, Any], now: float) -> str | None:
        if record.get("ended"):
            return str(record["ended"])
        if now - float(record["created"]) >= self.lifetime:
            return LIFETIME
        if now - float(record["seen"]) >= self.idle:
            return IDLE
        return None

    def active(self, account: str | None = None) -> list[Session]:
        """The sessions still good now (all accounts, or one), newest first."""
        now = self.clock()
        found = [_session(r) for r in self._records().values()
                 if self._ended(r, now) is None and account in (None, r.get("account"))]
        return sorted(found, key=lambda s: s.created, reverse=True)
