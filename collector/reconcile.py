"""Lining up Atlassian's record of the app's calls with the app's own: what acted as the app
that the app did not do, and what the app did that Atlassian did not log.

Each call Atlassian logged with the app's identity (an imported organization event whose
action is an app's API request, made by this app or by an app the record does not name) is

* ``matched`` to one outgoing event of the app's own log: the same site, a time within the
  tolerance, the same method and path (without the query) where both sides have them, and the
  same identity (the app user, or the same person when the app acted as one); the nearest in
  time wins, and an outgoing event matches at most one call;
* or ``atlassian_only``: a call with the app's identity that the collector never recorded
  (a leaked shared secret, a forgotten script, a second deployment).

Each outgoing event that Atlassian's record should hold but does not is ``app_only``: one on a
site an organization source covers, inside the time that source has read completely (less the
``settle`` time Atlassian may take to log a call), that
reached the product (it has a status, and is not a 401, which the product cannot attribute to
the app, nor a refused token exchange, which never reached it).

Reads go through :func:`collector.filters.where_clause`, so a tenant is named as everywhere else
(a clientKey, a baseUrl or ``acme.atlassian.net``), and use the imported-records index.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from collector import events as ev
from collector.database import EVENTS, connect, time_limit
from collector.filters import EventFilter, where_clause
from collector.models import ForgeInstallation, ImportSource, Install

#: The default largest gap, in seconds, between the app's time of a call and Atlassian's.
DEFAULT_TOLERANCE = 5.0
#: How long, in seconds, Atlassian may take to log a call: an outgoing event this close to the
#: end of what a source has read is not judged yet (the next import may still bring its record).
DEFAULT_SETTLE = 60.0
DEFAULT_WINDOW = timedelta(hours=24)
_TICK = timedelta(microseconds=1)  # an EventFilter's until is exclusive
#: How far from an unmatched call of Atlassian's the app's same call is looked for, to tell a
#: clock that is off (the app made the call, minutes away) from a call the app never made.
CLOCK_SEARCH = timedelta(minutes=15)
MATCHED, ATLASSIAN_ONLY, APP_ONLY = "matched", "atlassian_only", "app_only"
_COLUMNS = (
    EVENTS.c.event_id,
    EVENTS.c.ts,
    EVENTS.c.tenant_client_key,
    EVENTS.c.tenant_base_url,
    EVENTS.c.identity_kind,
    EVENTS.c.account_id,
    EVENTS.c.method,
    EVENTS.c.path,
    EVENTS.c.status,
    EVENTS.c.outcome,
    EVENTS.c.reason,
    EVENTS.c.platform,
    EVENTS.c.extra,
)


@dataclass(slots=True)
class Reconciliation:
    """The counts and the unmatched rows (``rows``: each a dict, see :func:`reconcile`)."""

    matched: int
    atlassian_only: int
    app_only: int
    window: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: Per site: matched, atlassian_only, app_only (for the dashboard's reconciliation view).
    sites: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.atlassian_only and not self.app_only

    def as_dict(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "atlassian_only": self.atlassian_only,
            "app_only": self.app_only,
            "window": self.window,
            "rows": self.rows,
        }


def reconcile(
    source: Any,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    tenant: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    settle: float = DEFAULT_SETTLE,
    now: datetime | None = None,
    time_limit_s: float | None = None,
    calls_only: bool = False,
) -> Reconciliation:
    """Reconcile ``[since, until)`` (default: the 24 hours before now) on every site or ``tenant``.

    ``calls_only`` judges Atlassian's calls alone (no ``app_only``), reading the app's events
    only around them: the cheap look the highlights take on every page."""
    until = until or now or datetime.now(UTC)
    since = since or until - DEFAULT_WINDOW
    slack = timedelta(seconds=tolerance)
    with connect(source) as conn, time_limit(conn, time_limit_s):
        apps = _our_apps(conn)
        imported = EventFilter(since=since, until=until, tenant=tenant, direction=ev.IMPORTED)
        calls = [r for r in _rows(conn, imported) if _is_app_call(r, apps)] if _any_imported(conn) else []
        coverage = [] if calls_only else _coverage(conn, since, until, timedelta(seconds=settle))
        ours = _ours(conn, calls, coverage, since, until, tenant, slack, calls_only)
    result = _match(calls, ours, slack, since, until, coverage)
    result.window = {
        "since": _iso(since),
        "until": _iso(until),
        "tolerance_s": tolerance,
        "settle_s": settle,
        "tenant": tenant,
    }
    return result


# --------------------------------------------------------------------------- reading


def _any_imported(conn: sa.Connection) -> bool:
    """Whether the store holds any imported record: read from the imported-records index
    alone. Without it, SQLite reads a window's imported records by the time index, through
    every event of the window (0.6 s for 30 days of a million events), and a store that
    imports nothing (most of them) would pay that on every Overview."""
    query = sa.select(EVENTS.c.seq).where(sa.text("direction = 'imported'")).limit(1)
    return conn.execute(query).first() is not None


def _rows(conn: sa.Connection, flt: EventFilter, *, site: str | None = None) -> list[dict[str, Any]]:
    query = sa.select(*_COLUMNS).where(where_clause(flt)).order_by(EVENTS.c.ts, EVENTS.c.seq)
    if site is not None:
        query = query.where(EVENTS.c.tenant_client_key == site)
    if flt.direction == ev.IMPORTED:
        # The imported-records index is partial: SQLite uses it only when the query states its
        # condition as this literal text.
        query = query.where(sa.text("direction = 'imported'"))
    out = []
    for row in conn.execute(query).mappings():
        item = dict(row)
        item["ts"] = _aware(item["ts"])
        item["extra"] = json.loads(item["extra"]) if item["extra"] else {}
        out.append(item)
    return out


def _ours(
    conn: sa.Connection,
    calls: list[dict[str, Any]],
    coverage: list[_Covered],
    since: datetime,
    until: datetime,
    tenant: str | None,
    slack: timedelta,
    calls_only: bool,
) -> list[dict[str, Any]]:
    """The app's outgoing events the matching needs: on the sites with Atlassian calls or an
    organization source's coverage, and with ``calls_only`` only around those calls (by the
    tenant-and-time index, never the whole window of a busy log)."""
    spans: dict[str | None, tuple[datetime, datetime]] = {}
    for call in calls:
        lo, hi = spans.get(call["tenant_client_key"], (call["ts"], call["ts"]))
        spans[call["tenant_client_key"]] = (min(lo, call["ts"]), max(hi, call["ts"]))
    if not calls_only:  # app_only is judged inside what a source has read: read no further
        for covered in coverage:
            for site in covered.tenants:
                lo, hi = spans.get(site, (covered.since, covered.until))
                spans[site] = (min(lo, covered.since), max(hi, covered.until))
    out: list[dict[str, Any]] = []
    for site, (lo, hi) in spans.items():
        if site is None:
            continue  # Atlassian named a site the app has no install on: nothing of ours is there
        reach = max(slack, CLOCK_SEARCH)  # wide enough to tell a clock that is off
        flt = EventFilter(
            since=lo - reach,
            until=hi + reach + _TICK,
            tenant=tenant,
            direction=ev.OUTGOING,
        )
        out += _rows(conn, flt, site=site)
    out.sort(key=lambda r: r["ts"])
    return out


def _our_apps(conn: sa.Connection) -> set[str]:
    installs, forge = Install.__table__, ForgeInstallation.__table__
    keys = set(conn.execute(sa.select(installs.c.app_key).distinct()).scalars())
    keys.update(conn.execute(sa.select(forge.c.app_id).distinct()).scalars())
    return {k for k in keys if k}


def _is_app_call(row: Mapping[str, Any], apps: set[str]) -> bool:
    extra = row["extra"]
    if not extra.get("api_request"):
        return False
    app = extra.get("app")
    return app is None or app in apps or not apps


@dataclass(frozen=True, slots=True)
class _Covered:
    since: datetime
    until: datetime
    tenants: frozenset[str]


def _coverage(conn: sa.Connection, since: datetime, until: datetime, settle: timedelta) -> list[_Covered]:
    """What each organization source has read completely: its sites and time span."""
    from collector.imports import ORG_EVENTS, SiteResolver

    sources = ImportSource.__table__
    resolver = SiteResolver(conn)
    out = []
    for row in conn.execute(sa.select(sources).where(sources.c.kind == ORG_EVENTS)).mappings():
        begin, end = _aware(row["covered_since"]), _aware(row["covered_until"])
        if begin is None or end is None:
            continue
        tenants = {resolver.resolve(site)[0] for site in row["sites"].split()}
        seen = (
            sa.select(EVENTS.c.tenant_client_key)
            .where(
                sa.text("direction = 'imported'"),
                EVENTS.c.event_type == ORG_EVENTS,
                EVENTS.c.tenant_client_key.is_not(None),
                EVENTS.c.extra.like(f'%"source":{json.dumps(row["name"])}%'),
            )
            .distinct()
        )
        tenants.update(conn.execute(seen).scalars())
        span = (max(begin, since), min(end - settle, until))
        if span[0] < span[1]:  # the source has read some of the window
            out.append(_Covered(*span, frozenset(t for t in tenants if t)))
    return out


# --------------------------------------------------------------------------- matching


def _match(
    calls: list[dict[str, Any]],
    ours: list[dict[str, Any]],
    slack: timedelta,
    since: datetime,
    until: datetime,
    coverage: list[_Covered],
) -> Reconciliation:
    by_site: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for row in ours:
        by_site[row["tenant_client_key"]].append(row)
    times = {site: [r["ts"] for r in rows] for site, rows in by_site.items()}
    used: set[str] = set()
    sites: dict[str, dict[str, int]] = defaultdict(lambda: {MATCHED: 0, ATLASSIAN_ONLY: 0, APP_ONLY: 0})
    rows: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], dict[str, Any]]] = []
    matched = 0
    for call in calls:
        site = call["tenant_client_key"]
        candidates, stamps = by_site.get(site, []), times.get(site, [])
        lo = bisect.bisect_left(stamps, call["ts"] - slack)
        hi = bisect.bisect_right(stamps, call["ts"] + slack)
        best = min(
            (c for c in candidates[lo:hi] if c["event_id"] not in used and _same_call(call, c)),
            key=lambda c: abs((c["ts"] - call["ts"]).total_seconds()),
            default=None,
        )
        label = call["tenant_base_url"] or site or "(unknown site)"
        if best is not None:
            used.add(best["event_id"])
            matched += 1
            sites[label][MATCHED] += 1
            continue
        sites[label][ATLASSIAN_ONLY] += 1
        rows.append(_row(ATLASSIAN_ONLY, call, nearest=_nearest(candidates, stamps, call["ts"])))
        pending.append((call, rows[-1]))
    for call, row in pending:
        row["clock_gap_s"] = _clock_gap(call, by_site.get(call["tenant_client_key"], []), used)
    app_only = 0
    for row in ours:
        if row["event_id"] in used or not (since <= row["ts"] < until) or not _expected(row, coverage):
            continue
        app_only += 1
        sites[row["tenant_base_url"] or row["tenant_client_key"] or "(unknown site)"][APP_ONLY] += 1
        rows.append(_row(APP_ONLY, row))
    rows.sort(key=lambda r: (r["ts"], r["kind"]))
    return Reconciliation(matched, len(rows) - app_only, app_only, {}, rows, dict(sites))


def _clock_gap(call: Mapping[str, Any], candidates: list[dict[str, Any]], used: set[str]) -> float | None:
    """Seconds from Atlassian's time of an unmatched call to the nearest unmatched event of the
    app that is the same call, within :data:`CLOCK_SEARCH`: set, it says the app did make the
    call and one of the two clocks is off (None: the app has no such call near it)."""
    near = [c for c in candidates if c["event_id"] not in used and _same_call(call, c)
            and abs(c["ts"] - call["ts"]) <= CLOCK_SEARCH]
    if not near:
        return None
    best = min(near, key=lambda c: abs((c["ts"] - call["ts"]).total_seconds()))
    return round((best["ts"] - call["ts"]).total_seconds(), 3)


def _same_call(call: Mapping[str, Any], ours: Mapping[str, Any]) -> bool:
    if call["method"] and ours["method"] and call["method"] != ours["method"]:
        return False
    if call["path"] and ours["path"] and _bare(call["path"]) != _bare(ours["path"]):
        return False
    if call["identity_kind"] == ev.USER:
        return ours["identity_kind"] == ev.USER and (
            not call["account_id"] or call["account_id"] == ours["account_id"]
        )
    return ours["identity_kind"] == ev.APP_USER


def _expected(row: Mapping[str, Any], coverage: Iterable[_Covered]) -> bool:
    """Whether Atlassian's record should hold this outgoing event."""
    if row["status"] is None or row["status"] == 401 or row["reason"] == ev.TOKEN_EXCHANGE_REFUSED:
        return False
    if row["extra"].get("stage") == "token_exchange":
        return False
    return any(c.since <= row["ts"] <= c.until and row["tenant_client_key"] in c.tenants for c in coverage)


def _nearest(candidates: list[dict[str, Any]], stamps: list[datetime], at: datetime, n: int = 3) -> list[str]:
    i = bisect.bisect_left(stamps, at)
    window = candidates[max(0, i - n) : i + n]
    window.sort(key=lambda c: abs((c["ts"] - at).total_seconds()))
    return [c["event_id"] for c in window[:n]]


def _row(kind: str, row: Mapping[str, Any], **more: Any) -> dict[str, Any]:
    extra = row["extra"]
    out = {
        "kind": kind,
        "ts": _iso(row["ts"]),
        "tenant": row["tenant_client_key"],
        "site": row["tenant_base_url"],
        "method": row["method"],
        "path": row["path"],
        "status": row["status"],
        "identity_kind": row["identity_kind"],
        "account_id": row["account_id"],
        "event_id": row["event_id"],
    }
    if kind == ATLASSIAN_ONLY:
        out.update(source=extra.get("source"), source_id=extra.get("source_id"), app=extra.get("app"))
    out.update(more)
    return out


def _bare(path: str) -> str:
    return path.split("?", 1)[0].rstrip("/") or "/"


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
