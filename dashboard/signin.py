"""One local sign-in, whichever form it came from: throttle, password check, session, audit.

The dashboard's own edge (:mod:`dashboard.edge`, the ``/-/sign-in`` form that sets the session
cookie) and the in-page form used where the pages run without that edge (Streamlit's AppTest, an
embedding) both call :func:`attempt`, so the rules and the audit trail are the same for both.
"""

from __future__ import annotations

from dataclasses import dataclass

from dashboard import auth, queries, sessions


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one sign-in attempt came to; ``session_id`` is set only when it succeeded."""

    user: auth.User | None = None
    session_id: str | None = None
    error: str | None = None  # a sentence for the person
    retry_after: float = 0.0  # seconds, when throttled

    @property
    def throttled(self) -> bool:
        return self.retry_after > 0 and self.user is None


def attempt(accounts: auth.Accounts, name: str, password: str, address: str) -> Attempt:
    """Check ``name`` and ``password`` from ``address``; on success start a session."""
    name = name.strip()
    gate = auth.SignInThrottle(accounts)
    wait = gate.retry_after(name, address)
    if wait > 0:
        queries.record_admin_event("sign_in_throttled", actor=name, allowed=False, address=address,
                                   detail=f"Sign-in refused: {int(wait) + 1} s left to wait after failures",
                                   retry_after=round(wait, 1))
        return Attempt(error=f"Too many failed sign-ins from here; try again in {int(wait) + 1} seconds.",
                       retry_after=wait)
    user = accounts.authenticate(name, password)
    if user is None:
        verdict = gate.failed(name, address)
        queries.record_admin_event("sign_in_failed", actor=name, allowed=False, address=address,
                                   detail="Wrong account or password")
        if verdict.locked:
            queries.record_admin_event(
                "sign_in_lockout", actor=name, allowed=False, address=address,
                retry_after=verdict.retry_after,
                detail=f"Repeated failures: sign-ins from here wait {int(verdict.retry_after) + 1} s")
        return Attempt(error="Wrong account or password.")
    gate.succeeded(name, address)
    session_id = accounts.session_store().start(user.name, user.role)
    queries.record_admin_event("sign_in", actor=user.name, allowed=True, address=address,
                               detail=f"Signed in ({user.role}, local account)")
    return Attempt(user=user, session_id=session_id)


def check(accounts: auth.Accounts, presented: str | None, address: str) -> sessions.Check:
    """Is the presented session id still good? A session that has just run out is recorded."""
    store = accounts.session_store()
    found = store.check(presented)
    record_end(found, address, store)
    return found


def user_of(session: sessions.Session) -> auth.User:
    return auth.User(session.account, session.role, session.via)


def ended_sentence(reason: str | None, store: sessions.Sessions) -> str | None:
    """Why a presented session no longer signs in, for the person; None when there was none."""
    if reason == sessions.IDLE:
        return f"Your session ended after {_span(store.idle)} without activity. Sign in again."
    if reason == sessions.LIFETIME:
        return f"Your session reached its {_span(store.lifetime)} limit. Sign in again."
    if reason == sessions.ACCOUNT_CHANGED:
        return "Your account was changed, so its sessions ended. Sign in again."
    return None


def record_end(check: sessions.Check, address: str, store: sessions.Sessions) -> None:
    """Record a session that has just run out (idle or lifetime) in the dashboard's own audit."""
    if check.was is None or check.ended not in (sessions.IDLE, sessions.LIFETIME):
        return
    queries.record_admin_event("session_expired", actor=check.was.account, allowed=True, address=address,
                               detail=ended_sentence(check.ended, store).split(".")[0],
                               session_via=check.was.via, ended=check.ended)


def _span(seconds: float) -> str:
    if seconds % 3600 == 0:
        hours = int(seconds // 3600)
        return f"{hours} hour{'s' if hours != 1 else ''}"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)} minutes"
    return f"{seconds:g} seconds"
