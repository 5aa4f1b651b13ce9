"""People by name: the display names of the accounts the app acted as, learnt from the product.

The log keys a person by their Atlassian account id; an administrator thinks in names. A
:class:`Directory` asks the product who they are, through Confluence's user API
(``GET /wiki/rest/api/user/bulk``, up to 200 ids a call; ``GET /wiki/rest/api/user`` for an id
that cannot go in a comma-separated list) as the app user, so every lookup is an outgoing
call recorded like any other. It works off the request path (:meth:`Directory.refresh`, or
:meth:`Directory.start` for a background thread), asks only for accounts it has no fresh name
for (``refresh_after``, a day by default), paces its calls (``min_interval``) and backs off
from a site that answers 429 for as long as its ``Retry-After`` says.

Names are the product's data, kept in the ``people`` table beside the log (never in it: the
account id stays the key in every event and export), and shown as text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from collector.errors import ConnectAuditError
from collector.models import ActorRollup, Person

log = logging.getLogger("collector.people")

PEOPLE: sa.Table = Person.__table__
ACTORS: sa.Table = ActorRollup.__table__
#: Confluence's bulk lookup answers at most this many ids per call.
BULK_LIMIT = 200
#: A name older than this is asked for again (seconds).
REFRESH_AFTER = 24 * 3600.0
#: Longest id list a lookup sends at once, so that its URL stays well under proxies' limits.
MAX_QUERY_CHARS = 6000


@dataclass
class Refresh:
    """What one :meth:`Directory.refresh` did."""

    asked: int = 0  # account ids looked up
    named: int = 0  # ... that the product named
    unknown: int = 0  # ... that it does not know
    calls: int = 0
    skipped_sites: dict[str, str] = field(default_factory=dict)  # clientKey -> why not asked


class Directory:
    """Learns and keeps the names of the people ``audit`` (a :class:`~collector.app.ConnectAudit`)
    acted as. ``clock`` and ``sleep`` are injectable; ``clock`` defaults to the audit's."""

    def __init__(self, audit: Any, *, refresh_after: float = REFRESH_AFTER, min_interval: float = 0.2,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.audit = audit
        self.refresh_after = refresh_after
        self.min_interval = min_interval
        self.clock = clock or audit.clock
        self.sleep = sleep
        self._not_before: dict[str, float] = {}  # a site that said 429, until when
        self._last_call = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ what to ask

    def due(self, limit: int = 5000) -> dict[str, list[str]]:
        """clientKey -> account ids the app acted as with no name younger than ``refresh_after``."""
        stale = datetime.fromtimestamp(self.clock() - self.refresh_after, UTC)
        acted = (sa.select(ACTORS.c.tenant_client_key, ACTORS.c.account_id)
                 .where(ACTORS.c.identity_kind == "user", ACTORS.c.tenant_client_key != "")
                 .group_by(ACTORS.c.tenant_client_key, ACTORS.c.account_id).subquery())
        known = sa.and_(PEOPLE.c.tenant_client_key == acted.c.tenant_client_key,
                        PEOPLE.c.account_id == acted.c.account_id)
        query = (sa.select(acted.c.tenant_client_key, acted.c.account_id)
                 .outerjoin(PEOPLE, known)
                 .where(sa.or_(PEOPLE.c.fetched_at.is_(None), PEOPLE.c.fetched_at < stale))
                 .order_by(acted.c.tenant_client_key, acted.c.account_id).limit(limit))
        out: dict[str, list[str]] = {}
        with self.audit.store.engine.connect() as conn:
            for tenant, account in conn.execute(query):
                out.setdefault(tenant, []).append(account)
        return out

    # ------------------------------------------------------------------ asking

    def refresh(self, *, limit: int = 5000) -> Refresh:
        """Look up every due account (at most ``limit``), site by site; never raises for a site
        that cannot answer (it is skipped, and asked again next time)."""
        report = Refresh()
        for tenant, accounts in self.due(limit).items():
            if self._not_before.get(tenant, 0.0) > self.clock():
                report.skipped_sites[tenant] = "rate limited"
                continue
            try:
                names = self._lookup(tenant, accounts, report)
            except _Skip as why:
                report.skipped_sites[tenant] = str(why)
                continue
            self._save(tenant, accounts, names)
            report.asked += len(accounts)
            report.named += sum(1 for a in accounts if names.get(a))
            report.unknown += sum(1 for a in accounts if not names.get(a))
        return report

    def _lookup(self, tenant: str, accounts: list[str], report: Refresh) -> dict[str, str]:
        try:
            session = self.audit.client(tenant).as_app()
        except ConnectAuditError as exc:  # uninstalled, disabled, unknown
            raise _Skip(type(exc).__name__) from None
        names: dict[str, str] = {}
        listable = [a for a in accounts if "," not in a]
        for chunk in _chunks(listable):
            answer = self._get(session, tenant, "/rest/api/user/bulk",
                               {"accountId": ",".join(chunk), "limit": str(len(chunk))}, report)
            for user in (answer or {}).get("results", []):
                if isinstance(user, dict) and isinstance(user.get("accountId"), str):
                    names[user["accountId"]] = _name(user)
        for account in (a for a in accounts if "," in a):  # a comma cannot go in the list
            answer = self._get(session, tenant, "/rest/api/user", {"accountId": account}, report)
            if answer and answer.get("accountId") == account:
                names[account] = _name(answer)
        return names

    def _get(self, session, tenant: str, path: str, params: dict[str, str], report: Refresh) -> dict | None:
        wait = self._last_call + self.min_interval - time.monotonic()
        if wait > 0:
            self.sleep(wait)
        self._last_call = time.monotonic()
        report.calls += 1
        try:
            response = session.get(path, params=params, timeout=10)
        except Exception as exc:  # noqa: BLE001  (recorded as a failed call by the client)
            raise _Skip(f"transport failure: {type(exc).__name__}") from None
        if response.status_code == 429:
            self._not_before[tenant] = self.clock() + _retry_after(response.headers.get("Retry-After"))
            raise _Skip("rate limited")
        if response.status_code == 404:
            return None  # getUser: no such account
        if not response.ok:
            raise _Skip(f"HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise _Skip("the answer was not JSON") from None

    def _save(self, tenant: str, accounts: list[str], names: dict[str, str]) -> None:
        now = datetime.fromtimestamp(self.clock(), UTC)
        rows = [{"tenant_client_key": tenant, "account_id": a, "display_name": names.get(a) or None,
                 "status": "known" if names.get(a) else "unknown", "fetched_at": now} for a in accounts]
        keys = [(r["tenant_client_key"], r["account_id"]) for r in rows]
        with self.audit.store.transaction() as conn:
            conn.execute(sa.delete(PEOPLE).where(
                sa.tuple_(PEOPLE.c.tenant_client_key, PEOPLE.c.account_id).in_(keys)))
            conn.execute(sa.insert(PEOPLE), rows)

    # ------------------------------------------------------------------ in the background

    def start(self, interval: float = 900.0) -> None:
        """Refresh every ``interval`` seconds on a daemon thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(interval,), name="connect-audit-people",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:
                log.warning("connect-audit people: the refresh failed; it runs again in %.0f s", interval,
                            exc_info=True)
            self._stop.wait(interval)


class _Skip(Exception):
    """Raised when one site cannot be asked now (the others still are)."""


def _name(user: dict) -> str:
    name = user.get("displayName") or user.get("publicName") or ""
    return str(name)[:200]


def _chunks(accounts: list[str]) -> list[list[str]]:
    out, current, size = [], [], 0
    for account in accounts:
        if current and (len(current) == BULK_LIMIT or size + len(account) + 1 > MAX_QUERY_CHARS):
            out.append(current)
            current, size = [], 0
        current.append(account)
        size += len(account) + 1
    return out + ([current] if current else [])


def _retry_after(value: str | None) -> float:
    try:
        return max(1.0, min(float(value or 60), 3600.0))
    except ValueError:
        return 60.0


def names(conn: sa.Connection, pairs: list[tuple[str, str]] | None = None) -> dict[tuple[str, str], str]:
    """(clientKey, account id) -> display name, for the known ones (all, or those in ``pairs``)."""
    query = sa.select(PEOPLE.c.tenant_client_key, PEOPLE.c.account_id, PEOPLE.c.display_name).where(
        PEOPLE.c.display_name.is_not(None))
    if pairs is not None:
        if not pairs:
            return {}
        query = query.where(sa.tuple_(PEOPLE.c.tenant_client_key, PEOPLE.c.account_id).in_(pairs))
    return {(t, a): n for t, a, n in conn.execute(query)}

