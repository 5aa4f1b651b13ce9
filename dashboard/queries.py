"""The dashboard's only door to the audit store.

Pages never open the database, the recorder, the middleware or an HTTP edge themselves:
they call these functions, which build on :mod:`collector.query` (filters in SQL, keyset
pages, rollups, a time limit), :mod:`collector.export`, :mod:`collector.chain`,
:mod:`collector.installs` and :mod:`collector.inspect`. Every function returns plain data
(dicts, lists, dataclasses), so the pages are presentation only and this module can be
timed without Streamlit (``bench/dashboard.py`` does).

The store is opened once per server process (``st.cache_resource``) from
``CONNECT_AUDIT_DATABASE_URL`` (:func:`collector.config.database_url`), read-only: the
database refuses any write from the pages. The recorders that write the log fold the rollups;
the one event the dashboard writes, an export's own record, goes through a recorder on a
separate writable handle opened for it.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from collector import config
from collector import events as ev
from collector import query as q
from collector.errors import REJECTIONS, ConnectAuditError, TokenExchangeFailed
from collector.forge import product_of
from collector.query import Cursor, EventFilter, FilterError, Page, QueryTimeout

__all__ = [
    "ConnectAuditError",
    "Cursor",
    "EventFilter",
    "FilterError",
    "Page",
    "QueryTimeout",
]

#: Interactive reads give up after this many seconds with a sentence, not a hung page.
PAGE_TIME_LIMIT = 8.0
#: Forge app ARIs the token debugger accepts besides those seen in the store (space separated).
FORGE_APP_IDS_ENV = "CONNECT_AUDIT_FORGE_APP_IDS"

# --------------------------------------------------------------------------- the store


@dataclass
class _Handle:
    store: Any  # opened read-only: every page's read
    url: str
    _writer: Any = None  # opened on the first export: the one thing the dashboard records

    def writer(self) -> Any:
        """A writable handle for recording an export (through the recorder, the log's writer)."""
        if self._writer is None:
            from collector.store import Store

            self._writer = Store.open(self.url, create=False)
        return self._writer


def _open(url: str) -> _Handle:
    from collector.store import Store

    # Read-only: the database itself refuses a write from the pages. The rollups are folded by
    # the recorders that write the log; until they catch up, pages read the unfolded tail
    # from the log, so they stay exact, only slower.
    return _Handle(Store.open(url, create=False, read_only=True), url)


def _handle() -> _Handle:
    import streamlit as st

    @st.cache_resource(show_spinner="Opening the audit store...")
    def cached(url: str) -> _Handle:
        return _open(url)

    return cached(config.database_url())


_direct: dict[str, _Handle] = {}


def use_store(store: Any) -> None:
    """Serve a given open store (benchmarks and scripts that run without Streamlit)."""
    _direct[config.database_url()] = _Handle(store, config.database_url(), store)


def _current() -> _Handle:
    return _direct.get(config.database_url()) or _handle()


def store() -> Any:
    return _current().store


def store_label() -> str:
    return getattr(store(), "url", config.database_url())


# --------------------------------------------------------------------------- filters


def filter_from_params(params: dict[str, Any]) -> EventFilter:
    return EventFilter.from_params(params)


def filter_options() -> dict[str, list[Any]]:
    """Values offered by the filter widgets, read from the rollups (cheap at any size)."""
    s = store()
    out: dict[str, list[Any]] = {}
    for column in ("tenant_client_key", "method", "reason", "required_scope", "path_template"):
        out[column] = q.distinct_values(s, column)
    out["platform"] = list(ev.PLATFORMS)
    out["direction"] = list(ev.DIRECTIONS)
    out["identity_kind"] = list(ev.IDENTITY_KINDS)
    out["outcome"] = list(ev.OUTCOMES)
    return out


def people() -> dict[tuple[str, str], str]:
    """(clientKey, account id) -> the display name the product gave (:mod:`collector.people`)."""
    from collector.people import names

    with store().engine.connect() as conn:
        return names(conn)


def tenant_sites() -> dict[str, str]:
    """clientKey -> the site's baseUrl (installs only; logged tenants may be unknown)."""
    return {inst["client_key"]: inst["base_url"] for inst in installs()}


# --------------------------------------------------------------------------- overview


def overview(flt: EventFilter) -> dict[str, Any]:
    s = store()
    b = q.bounds(s)
    bucket = q.bucket_seconds(flt, oldest=b["oldest"])
    data = q.overview(s, flt, bucket_s=bucket, time_limit_s=PAGE_TIME_LIMIT)
    rates = data["rates"]
    return {
        "summary": {
            "events": data["events"],
            "tenants": data["tenants"],
            "outcomes": data["outcomes"],
            "rejection_rate": rates[ev.REJECTED],
            "denial_rate": rates[ev.DENIED],
            "error_rate": rates[ev.ERROR],
        },
        "series": [{"time": t, "outcome": o or "unknown", "events": n}
                   for t, o, n in data["series"]],
        "bucket_s": bucket,
        "top_tenants": [{"tenant_client_key": k, "events": n} for k, n in data["top_tenants"]],
        "top_endpoints": [{"method": m, "path_template": p, "events": n}
                          for (m, p), n in data["top_endpoints"]],
        "top_reasons": [{"reason": r, "events": n} for r, n in data["top_reasons"]],
        "freshness": freshness(b),
    }


def freshness(b: dict[str, Any] | None = None) -> dict[str, Any]:
    """Newest event and its age, oldest kept, and how far the rollups lag behind."""
    s = store()
    b = b or q.bounds(s)
    now = datetime.now(UTC)
    return {
        "newest": b["newest"],
        "age_s": (now - b["newest"]).total_seconds() if b["newest"] else None,
        "oldest": b["oldest"],
        "events": (b["last_seq"] - b["first_seq"] + 1) if b["last_seq"] else 0,
        "unfolded": q.rollup_lag(s),
    }


# --------------------------------------------------------------------------- installs


def installs() -> list[dict[str, Any]]:
    """Every tenant with product, baseUrl, status, scopes, first and last seen (no secrets).

    A Connect install linked to a Forge installation of the same site carries the
    installation's id and the date of the switch (``forge_since``); a Forge installation with
    no Connect install is a tenant of its own, keyed by its installation id.
    """
    from collector.installs import InstallRegistry

    registry = InstallRegistry(store())
    forge = registry.list_forge_installations()
    linked = {f.connect_client_key: f for f in forge if f.connect_client_key}
    rows = []
    for inst in registry.list_installs():
        f = linked.get(inst.client_key)
        rows.append({
            "client_key": inst.client_key,
            "platform": "connect + forge" if f else "connect",
            "base_url": inst.base_url,
            "product": inst.product,
            "status": inst.status,
            "declared_scopes": inst.declared_scopes,
            "description": inst.description,
            "first_seen": inst.first_seen,
            "last_seen": max(inst.last_seen, f.last_seen) if f else inst.last_seen,
            "forge_installation": f.installation_id if f else None,
            "forge_since": f.linked_at if f else None,
            "forge_status": f.status if f else None,
        })
    for f in forge:
        if f.connect_client_key:
            continue
        rows.append({
            "client_key": f.installation_id, "platform": "forge",
            "base_url": f.site_url or f.api_base_url or "",
            "product": product_of(f.api_base_url or "") or "confluence",
            "status": f.status, "declared_scopes": "", "description": None,
            "first_seen": f.first_seen, "last_seen": f.last_seen,
            "forge_installation": f.installation_id, "forge_since": f.first_seen, "forge_status": f.status,
        })
    return rows


def lifecycle_timeline(client_key: str, *, limit: int = 100) -> list[dict[str, Any]]:
    """The tenant's lifecycle callbacks (installed, enabled, ...) and what reinstalls changed,
    newest first, from the log."""
    flt = EventFilter(tenant=client_key, direction=ev.LIFECYCLE)
    return q.page(store(), flt, limit=limit, columns=(*q.LIST_COLUMNS, "detail"),
                  time_limit_s=PAGE_TIME_LIMIT).rows


def install_changes(flt: EventFilter, *, limit: int = 10) -> list[dict[str, Any]]:
    """In the filter's range: reinstalls that changed an install (baseUrl, product, a rotated
    secret) and lifecycle callbacks the install policy refused, newest first. Lifecycle events
    are few, so the newest few hundred of them are enough to find these."""
    lifecycle = replace(flt, direction=ev.LIFECYCLE)
    rows = q.page(store(), lifecycle, limit=300, columns=(*q.LIST_COLUMNS, "detail"),
                  time_limit_s=PAGE_TIME_LIMIT).rows
    from collector.errors import LIFECYCLE_REFUSAL_CODES

    # A refused *token* on a lifecycle route is a rejection like any other (Top reasons); only
    # the install policy's refusals are install changes.
    wanted = [r for r in rows
              if r["event_type"] == "install_changed" or r["reason"] in LIFECYCLE_REFUSAL_CODES]
    return wanted[:limit]


#: A range's highlights are found at most once a minute per server process: a filter change on
#: the Overview (a tenant, a platform) narrows the same list instead of reading it again.
HIGHLIGHTS_TTL = 60.0


def highlights(flt: EventFilter, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """What is worth a look in the filter's range (:mod:`collector.highlights`), most severe and
    newest first, narrowed to its tenant and platform; each with the Activity page's parameters.

    A range that ends now is taken to the minute (rates are hourly, first uses settle over a
    day), so the list is found once a minute and every filter change within it narrows it."""
    now = now or datetime.now(UTC)
    until = min(flt.until, now) if flt.until else now.replace(second=0, microsecond=0)
    since = flt.since or until - timedelta(hours=24)
    if not flt.until:
        since = since.replace(second=0, microsecond=0)
    found, sites = _find_highlights(since, until)
    keep = [h for h in found
            if (not flt.tenant or h.tenant in (None, flt.tenant) or sites.get(h.tenant or "") == flt.tenant)
            and (not flt.platform or h.platform in (None, flt.platform))]
    return [{**h.as_dict(), "first_seen": h.first_seen, "last_seen": h.last_seen,
             "params": h.filter.to_params()} for h in keep]


def _find_highlights(since: datetime, until: datetime) -> tuple[list[Any], dict[str, str]]:
    import streamlit as st

    @st.cache_data(ttl=HIGHLIGHTS_TTL, show_spinner=False, max_entries=32)
    def cached(url: str, since: datetime, until: datetime) -> tuple[list[Any], dict[str, str]]:
        from collector import highlights as hl

        with q.reading(store(), PAGE_TIME_LIMIT) as conn:
            sites = hl.site_names(conn)
        return hl.find(store(), since=since, now=until, names=sites), sites

    return cached(config.database_url(), since, until)


# --------------------------------------------------------------------------- activity


def activity_page(flt: EventFilter, after: Cursor | None = None, limit: int = 50) -> Page:
    return q.page(store(), flt, after=after, limit=limit, time_limit_s=PAGE_TIME_LIMIT)


def facets(flt: EventFilter) -> dict[str, list[tuple[Any, int]]]:
    return q.facets(store(), flt, time_limit_s=PAGE_TIME_LIMIT)


def count(flt: EventFilter) -> int:
    return q.count(store(), flt, time_limit_s=PAGE_TIME_LIMIT)


def count_label(flt: EventFilter, cap: int = 10_000) -> str:
    """"1,234" or "more than 10,000" (free-text filters stop counting at ``cap``)."""
    n, exact = q.count_at_most(store(), flt, cap, time_limit_s=PAGE_TIME_LIMIT)
    return f"{n:,}" if exact else f"more than {cap:,}"


def event_detail(event_id: str) -> dict[str, Any] | None:
    """One event with its claims summary and extra decoded (they are stored as JSON)."""
    row = q.get_event(store(), event_id)
    if row is None:
        return None
    for name in ("claims", "extra"):
        if row.get(name):
            with contextlib.suppress(ValueError):
                row[name] = json.loads(row[name])
    return row


def claims_summary(claims: dict[str, Any] | None, zone: tzinfo = UTC) -> list[dict[str, str]]:
    """The stored claims summary as rows, with times made readable (in ``zone``, named)."""
    if not claims:
        return []
    out = []
    for name, value in claims.items():
        shown = str(value)
        if name in {"iat", "exp", "nbf"} and isinstance(value, int | float):
            try:
                shown = f"{value}  ({datetime.fromtimestamp(value, zone):%Y-%m-%d %H:%M:%S} {zone})"
            except (OverflowError, OSError, ValueError):
                shown = f"{value}  (not a time in seconds)"
        out.append({"claim": name, "value": shown})
    return out


# --------------------------------------------------------------------------- who acted


def who_acted(flt: EventFilter, *, n: int = 50) -> dict[str, Any]:
    s = store()
    rows = q.who_acted(s, flt, n=None, time_limit_s=PAGE_TIME_LIMIT)
    split = {kind: sum(r[kind] for r in rows) for kind in ev.IDENTITY_KINDS}
    return {
        "by_endpoint": rows[:n],
        "users": q.acting_users(s, flt.replace(identity_kind=ev.USER), time_limit_s=PAGE_TIME_LIMIT),
        "split": split,
    }


# --------------------------------------------------------------------------- denials

FIXES: dict[str, str] = {cls.code: cls.fix for cls in REJECTIONS}
FIXES[TokenExchangeFailed.code] = TokenExchangeFailed.fix
FIXES[ev.SCOPE] = ("Add the required scope to the app descriptor's scopes (Connect) or to manifest.yml's "
                   "permissions.scopes (Forge: its classic or its granular scopes), and have each site "
                   "update the app.")
FIXES[ev.PERMISSION] = (
    "The scopes are fine: the acting user lacks the permission (space or page restriction); "
    "act as a user who has it or ask an administrator to grant it."
)

#: How a refusal the app answered came about, by its recorded reason.
ANSWERED_CAUSES: dict[str, str] = {
    ev.SCOPE: "passed on: Confluence refused a call for a missing scope",
    ev.PERMISSION: "the app's own rules, or Confluence refused the acting user",
}


def denials(flt: EventFilter) -> dict[str, Any]:
    s = store()
    b = q.bounds(s)
    bucket = q.bucket_seconds(flt, oldest=b["oldest"])
    rejected = flt.replace(outcome=ev.REJECTED)
    reasons = [
        {"reason": key[0] or "unknown", "events": n, "fix": FIXES.get(key[0] or "", "")}
        for key, n in q.aggregate(s, rejected, ("reason",), time_limit_s=PAGE_TIME_LIMIT)
    ]
    return {
        "split": q.denial_split(s, flt, time_limit_s=PAGE_TIME_LIMIT),
        "rejections": reasons,
        "rejection_series": [
            {"time": t, "reason": r or "unknown", "events": n}
            for t, r, n in q.series(s, rejected, "reason", bucket_s=bucket,
                                    time_limit_s=PAGE_TIME_LIMIT)
        ],
        "bucket_s": bucket,
    }


# --------------------------------------------------------------------------- the Atlassian record

#: How far either side of an unmatched call the link to Activity looks for the app's own events.
AROUND = timedelta(minutes=2)
#: A window's reconciliation is read at most this often per server process (in seconds), unless
#: an import run has added records since: a click on the page (a row, a page of records) reuses it.
RECONCILE_TTL = 30.0
#: The most unmatched calls of each kind the page lists (the newest); the counts cover them all.
UNMATCHED_SHOWN = 500
#: The filter fields an imported record answers (no platform, direction, reason or scope: the
#: page reads imported records only, and Atlassian's record names neither reason nor scope).
IMPORTED_FIELDS = ("range", "tenant", "identity_kind", "outcome", "status", "method", "account_id",
                   "path_contains", "text")
_IMPORTED_COLUMNS = (*q.LIST_COLUMNS, "detail", "extra")


def import_sources() -> list[dict[str, Any]]:
    """The import sources (``connect-audit import``), by name: what each reads, how many records
    it brought, up to when its record is complete, and since when and why it fails. Never a
    credential (:func:`collector.imports.source_states` does not read one)."""
    from collector.imports import source_states

    now = datetime.now(UTC)
    return [
        {
            "name": s.name,
            "kind": s.kind,
            "target": s.target,
            "sites": " ".join(s.sites),
            "imported": s.imported,
            "complete_from": s.covered_since,
            "complete_to": s.covered_until,
            "updated": s.updated_at,
            "reading_now": bool(s.lease_until and s.lease_until > now),
            "failing_since": s.failing_since,
            "last_error": s.last_error,
        }
        for s in source_states(store())
    ]


def imported_filter(flt: EventFilter) -> EventFilter:
    """``flt`` over Atlassian's imported records only, whatever its direction and platform said."""
    return flt.replace(direction=ev.IMPORTED, platform=None)


def _imported_where(flt: EventFilter) -> Any:
    import sqlalchemy as sa

    from collector.models import IMPORTED_SQL

    # The partial index of imported records is used only when the condition is stated as its text.
    return sa.and_(q.where_clause(imported_filter(flt)), sa.text(IMPORTED_SQL))


def imported_page(flt: EventFilter, after: Cursor | None = None, limit: int = 50) -> Page:
    """One page of Atlassian's imported records under ``flt`` (forced to direction imported),
    newest first, and the cursor of the next page. Each row has the event's listing columns, its
    message (``detail``) and, from its stored extra, ``action`` (the organization event's action,
    or the Confluence audit record's category), ``actor`` (the name the record gives), ``source``,
    ``source_id`` and ``sha256``; not the verbatim record (:func:`imported_record` has it)."""
    import sqlalchemy as sa

    limit = max(1, min(int(limit), 1000))
    e = q.EVENTS.c
    cond = _imported_where(flt)
    if after is not None:
        cond = sa.and_(cond, sa.or_(e.ts < after.ts, sa.and_(e.ts == after.ts, e.seq < after.seq)))
    stmt = (sa.select(*(e[name] for name in _IMPORTED_COLUMNS)).where(cond)
            .order_by(e.ts.desc(), e.seq.desc()).limit(limit + 1))
    with q.reading(store(), PAGE_TIME_LIMIT) as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = Cursor(rows[-1]["ts"], rows[-1]["seq"]) if more and rows else None
    return Page([_imported_row(row) for row in rows], nxt)


def imported_count_label(flt: EventFilter, cap: int = 10_000) -> str:
    """How many imported records match ``flt``: "1,234", or "more than 10,000" past ``cap``."""
    import sqlalchemy as sa

    inner = sa.select(q.EVENTS.c.seq).where(_imported_where(flt)).limit(cap + 1).subquery()
    with q.reading(store(), PAGE_TIME_LIMIT) as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(inner)).scalar() or 0
    return f"{n:,}" if n <= cap else f"more than {cap:,}"


def _extra(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        doc = json.loads(value) if value else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _actor(record: Any) -> str | None:
    """The acting party's name as the record gives it: an organization event's actor (and whom
    it acted for), or a Confluence audit record's author."""
    if not isinstance(record, dict):
        return None
    attributes = record.get("attributes")
    if isinstance(attributes, dict) and isinstance(attributes.get("actor"), dict):
        actor = attributes["actor"]
        name = actor.get("name") if isinstance(actor.get("name"), str) else None
        behalf = actor.get("onBehalfOf")
        if isinstance(behalf, dict) and isinstance(behalf.get("name"), str) and behalf["name"]:
            return f"{name or 'the app'} for {behalf['name']}"
        return name or None
    author = record.get("author")
    if isinstance(author, dict):
        for key in ("displayName", "publicName"):
            if isinstance(author.get(key), str) and author[key]:
                return author[key]
    return None


def _imported_row(row: dict[str, Any]) -> dict[str, Any]:
    extra = _extra(row.pop("extra", None))
    return {
        **row,
        "action": extra.get("action") or extra.get("category") or row.get("event_type"),
        "actor": _actor(extra.get("record")),
        "source": extra.get("source"),
        "source_id": extra.get("source_id"),
        "sha256": extra.get("sha256"),
    }


def imported_record(event_id: str) -> dict[str, Any] | None:
    """One imported record: its event's fields (``event``), the record as its source sent it
    (``record``, less any credential-looking field, named in ``removed``), the stored ``sha256``
    and whether the stored record still hashes to it (``verified``); None for an event that is
    not an imported record."""
    from collector.sources import stored_record

    row = q.get_event(store(), event_id)
    if row is None or row.get("direction") != ev.IMPORTED:
        return None
    extra = _extra(row.pop("extra", None))
    row.pop("claims", None)
    record = extra.get("record")
    digest = extra.get("sha256")
    verified = bool(digest) and record is not None and stored_record(record)[2] == digest
    return {
        "event": _imported_row({**row, "extra": extra}),
        "record": record,
        "sha256": digest,
        "verified": verified,
        "removed": list(extra.get("removed") or []),
        "kind": extra.get("kind") or row.get("event_type"),
    }


def reconciliation(flt: EventFilter, tolerance: float = 5.0, *,
                   now: datetime | None = None) -> dict[str, Any]:
    """Atlassian's record lined up with the app's own (:func:`collector.reconcile.reconcile`) over
    the filter's time range (all of the log's when it has no start) and tenant.

    Returns the window (``since``, ``until``, ``tolerance_s``), the counts (``matched``,
    ``atlassian_only``, ``app_only``), ``sites`` (per site: ``site``, the counts and
    ``matched_share``, matched / (matched + atlassian_only), None without a call of Atlassian's)
    and the unmatched calls, newest first, at most :data:`UNMATCHED_SHOWN` of each kind:
    ``atlassian_rows`` and ``app_rows``. Each has ``time``, ``site``, ``tenant``, ``method``,
    ``path``, ``status``, ``identity_kind``, ``account_id``, ``event_id``, ``activity`` (the
    Activity page's parameters for the app's outgoing events on that site within :data:`AROUND`
    of it) and, for Atlassian's, ``source``, ``source_id``, ``app`` and ``nearest`` (the app's
    outgoing events nearest in time on that site, each ``{"event_id", "activity"}``).

    A range that ends now is taken to the minute, and a window's answer is kept for
    :data:`RECONCILE_TTL` seconds unless an import run has changed a source since."""
    now = now or datetime.now(UTC)
    tolerance = min(max(float(tolerance), 0.0), 3600.0)
    if flt.until is not None:
        until = flt.until
    else:  # the minute after now: the whole present, and one answer a minute
        until = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    since = flt.since
    if since is None:
        oldest = q.bounds(store())["oldest"]
        since = _utc(oldest) if oldest is not None else until - timedelta(hours=24)
    if flt.until is None:
        since = since.replace(second=0, microsecond=0)
    since = min(since, until - timedelta(seconds=1))
    version = tuple((s["name"], s["imported"], s["updated"]) for s in import_sources())
    found = _reconciled(since, until, flt.tenant, tolerance, version)
    return _reconciliation_view(found, since, until, tolerance)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _reconciled(since: datetime, until: datetime, tenant: str | None, tolerance: float,
                version: tuple) -> dict[str, Any]:
    import streamlit as st

    @st.cache_data(ttl=RECONCILE_TTL, show_spinner=False, max_entries=32)
    def cached(url: str, since: datetime, until: datetime, tenant: str | None, tolerance: float,
               version: tuple) -> dict[str, Any]:
        from collector.reconcile import reconcile

        found = reconcile(store(), since=since, until=until, tenant=tenant, tolerance=tolerance,
                          time_limit_s=PAGE_TIME_LIMIT)
        return {"matched": found.matched, "atlassian_only": found.atlassian_only,
                "app_only": found.app_only, "rows": found.rows, "sites": found.sites}

    return cached(config.database_url(), since, until, tenant, tolerance, version)


def _around(tenant: str | None, at: datetime, event_id: str | None = None) -> dict[str, str]:
    """The Activity page's parameters for the app's own calls on ``tenant`` around ``at``."""
    params = EventFilter(since=at - AROUND, until=at + AROUND, tenant=tenant or None,
                         direction=ev.OUTGOING).to_params()
    return {**params, "event": event_id} if event_id else params


def _reconciliation_view(found: dict[str, Any], since: datetime, until: datetime,
                         tolerance: float) -> dict[str, Any]:
    from collector.reconcile import APP_ONLY, ATLASSIAN_ONLY, MATCHED

    shown: dict[str, list[dict[str, Any]]] = {ATLASSIAN_ONLY: [], APP_ONLY: []}
    for row in reversed(found["rows"]):  # newest first
        kept = shown[row["kind"]]
        if len(kept) >= UNMATCHED_SHOWN:
            continue
        at = q.parse_time(row["ts"])
        tenant = row["tenant"] or row["site"]
        item = {k: v for k, v in row.items() if k not in ("ts", "nearest")}
        item["time"] = at
        if row["kind"] == ATLASSIAN_ONLY:
            item["activity"] = _around(tenant, at)
            item["nearest"] = [{"event_id": n, "activity": _around(tenant, at, n)}
                               for n in row.get("nearest") or []]
        else:
            item["activity"] = _around(tenant, at, row["event_id"])
        kept.append(item)
    sites = []
    for label, n in sorted(found["sites"].items()):
        atlassian = n[MATCHED] + n[ATLASSIAN_ONLY]
        sites.append({"site": label, "matched": n[MATCHED], "atlassian_only": n[ATLASSIAN_ONLY],
                      "app_only": n[APP_ONLY],
                      "matched_share": n[MATCHED] / atlassian if atlassian else None})
    return {
        "since": since,
        "until": until,
        "tolerance_s": tolerance,
        "matched": found["matched"],
        "atlassian_only": found["atlassian_only"],
        "app_only": found["app_only"],
        "sites": sites,
        "atlassian_rows": shown[ATLASSIAN_ONLY],
        "app_rows": shown[APP_ONLY],
    }


# --------------------------------------------------------------------------- token debugger


def inspect_token(
    token: str,
    *,
    method: str | None = None,
    url: str | None = None,
    endpoint: str = "request",
    verify_with_store: bool,
    app_base_url: str | None = None,
    body_client_key: str | None = None,
    inputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Decode and explain a pasted token; verify with the stored secret only when allowed.
    ``inputs`` names the form's fields for the hints (the CLI's flags otherwise).

    Nothing pasted is stored or logged: the token lives in this call only. The report never
    holds a shared secret or the token's signature. Without ``verify_with_store`` (the
    auditor role) no install is looked up, so the verdict is about the token's form only
    and the page says so.
    """
    import time

    from collector.inspect import inspect_token as _inspect

    if endpoint == "forge":
        return _inspect_forge(token, verify_with_store=verify_with_store, now=time.time(), inputs=inputs)
    installs = None
    keys = None
    if verify_with_store:
        from collector.installs import InstallRegistry

        installs = InstallRegistry(store())
        if endpoint == "lifecycle":
            from collector.keys import key_source

            keys = key_source()
    with_request = bool(method and url)
    return _inspect(
        token,
        method=method if with_request else None,
        url=url if with_request else None,
        endpoint=endpoint,
        installs=installs,
        keys=keys,
        app_base_url=app_base_url or None,
        body_client_key=body_client_key or None,
        now=time.time(),
        **({"inputs": inputs} if inputs else {}),
    )


def forge_app_ids() -> list[str]:
    """The Forge app ARIs to accept: ``CONNECT_AUDIT_FORGE_APP_IDS`` and every app seen in the store."""
    import os

    from collector.installs import InstallRegistry

    configured = os.environ.get(FORGE_APP_IDS_ENV, "").replace(",", " ").split()
    seen = [f.app_id for f in InstallRegistry(store()).list_forge_installations()]
    return list(dict.fromkeys([*configured, *seen]))


def _inspect_forge(token: str, *, verify_with_store: bool, now: float,
                   inputs: dict[str, str] | None) -> dict[str, Any]:
    from collector.inspect import inspect_forge_token
    from collector.installs import InstallRegistry
    from collector.jwks import jwks_source

    return inspect_forge_token(
        token, app_ids=forge_app_ids(), keys=jwks_source(), now=now,
        installations=InstallRegistry(store()) if verify_with_store else None,
        **({"inputs": inputs} if inputs else {}),
    )


# --------------------------------------------------------------------------- export


def export_bytes(flt: EventFilter, fmt: str, *, actor: str) -> tuple[bytes, Any]:
    """Run an export (recorded in the log) and return the file's bytes and the result.

    The rows are streamed to a spooled temporary file (memory-bounded while the query
    runs); Streamlit then serves the finished file, which it holds in memory, so very large
    exports are better done with ``connect-audit export``.
    """
    import dataclasses

    from collector.export import export, record_export

    with tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024) as tmp:
        # Read through the read-only store; only the export's own event is written.
        result = export(store(), flt, tmp, fmt, actor=actor, via="dashboard", record=False)
        event_id = record_export(
            _current().writer(), flt, fmt=fmt, rows=result.rows, sha256=result.sha256, size=result.bytes,
            filename=result.filename_suggestion, actor=actor, via="dashboard",
        )
        tmp.seek(0)
        return tmp.read(), dataclasses.replace(result, audit_event_id=event_id)


# --------------------------------------------------------------------------- the dashboard's own acts

#: The dashboard's own audit events (direction internal): sign-ins and account changes.
ADMIN_EVENTS = ("sign_in", "sign_in_failed", "sign_in_throttled", "sign_in_lockout", "sign_out",
                "session_expired", "password_reset", "account_saved", "account_removed")


def record_admin_event(event_type: str, *, actor: str, allowed: bool, detail: str,
                       standalone: bool = False, **extra: Any) -> str | None:
    """Record a sign-in or account change in the log (chained like every event); returns its id.

    ``standalone`` opens the store for this one write (the terminal's recovery command, with no
    Streamlit server). A store that cannot be written is logged and never blocks a sign-in."""
    import logging

    from collector import events as ev
    from collector.actions import write_internal
    from collector.store import Store

    if event_type not in ADMIN_EVENTS:
        raise ValueError(f"unknown dashboard event {event_type!r}")
    record = ev.AuditRecord(
        direction=ev.INTERNAL, outcome=ev.ALLOWED if allowed else ev.REJECTED, event_type=event_type,
        auth_method=ev.NO_AUTH, identity_kind=ev.ANONYMOUS, detail=detail[:300],
        extra={"actor": actor[:64], "via": "terminal" if standalone else "dashboard",
               **{k: v for k, v in extra.items() if v is not None}},
    )
    try:
        if standalone:
            with Store.open(config.database_url(), create=False) as writer:
                return write_internal(writer, record)
        return write_internal(_current().writer(), record)
    except Exception as exc:  # noqa: BLE001 - the sign-in goes on; the failure is logged
        logging.getLogger("dashboard.audit").warning("could not record %s for %s: %s", event_type, actor, exc)
        return None


def admin_events(limit: int = 50) -> list[dict[str, Any]]:
    """The dashboard's own recent acts (sign-ins, failures, lockouts, resets), newest first."""
    rows = [r for r in q.internal_events(store(), None, limit=limit * 2) if r["event_type"] in ADMIN_EVENTS]
    out = []
    for row in rows[:limit]:
        extra = json.loads(row["extra"]) if isinstance(row.get("extra"), str) else (row.get("extra") or {})
        out.append({"ts": row["ts"], "event": row["event_type"], "outcome": row["outcome"],
                    "account": extra.get("actor"), "address": extra.get("address"), "detail": row["detail"]})
    return out


def export_file_name(flt: EventFilter, fmt: str) -> str:
    from collector.export import filename_for

    return filename_for(flt, fmt)


def recent_exports(limit: int = 20) -> list[dict[str, Any]]:
    rows = []
    for row in q.internal_events(store(), "export", limit=limit):
        try:
            extra = json.loads(row.get("extra") or "{}")
        except ValueError:
            extra = {}
        rows.append({
            "time": row["ts"],
            "actor": extra.get("actor"),
            "via": extra.get("via"),
            "format": extra.get("format"),
            "rows": extra.get("rows"),
            "sha256": extra.get("sha256"),
            "filter": json.dumps(extra.get("filter") or {}, sort_keys=True),
        })
    return rows


# --------------------------------------------------------------------------- integrity


def integrity() -> dict[str, Any]:
    """What is cheap to show at once: bounds, last checkpoint, rollup state."""
    import sqlalchemy as sa

    from collector.models import Checkpoint

    s = store()
    b = q.bounds(s)
    table = Checkpoint.__table__
    with q.reading(s) as conn:
        last = conn.execute(sa.select(table).order_by(table.c.seq.desc()).limit(1)).first()
        checkpoints = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
    return {
        "oldest": b["oldest"],
        "newest": b["newest"],
        "first_seq": b["first_seq"],
        "last_seq": b["last_seq"],
        "checkpoints": checkpoints or 0,
        "last_checkpoint": dict(last._mapping) if last else None,
        "unfolded": q.rollup_lag(s),
        "retention": retention_state(),
        "forwarding": forwarding_state(),
    }


def forwarding_state() -> list[dict[str, Any]]:
    """Each forwarding destination's cursor (``connect-audit forward``, the recorder's option):
    what it sent, about how many events it is behind the log's head (the seq distance: cheap at
    any size), and since when and why it fails."""
    import sqlalchemy as sa

    from collector.models import ForwardCursor

    t = ForwardCursor.__table__
    with q.reading(store(), PAGE_TIME_LIMIT) as conn:
        rows = conn.execute(sa.select(t).order_by(t.c.name)).mappings().all()
        head = conn.execute(sa.select(sa.func.max(q.EVENTS.c.seq))).scalar() or 0
    return [{"destination": r["name"], "sent": r["forwarded"], "behind": max(head - r["seq"], 0),
             "updated": r["updated_at"], "failing since": r["failing_since"],
             "last error": r["last_error"]}
            for r in rows]


def retention_state(limit: int = 5) -> dict[str, Any]:
    """The retention policy this process is configured with (``CONNECT_AUDIT_RETENTION_*``; the
    recorders apply theirs) and the last purges, newest first, with what each removed and archived.
    A mistake in the configuration is shown as its sentence, not raised."""
    import sqlalchemy as sa

    from collector import partitions, retention

    try:
        policy = retention.RetentionPolicy.from_env()
        configured, problem = (policy.describe() if policy else None), None
    except ConnectAuditError as exc:
        configured, problem = None, str(exc)
    e = q.EVENTS.c
    # The literal condition lets the partial index of the tool's own events answer this.
    stmt = (sa.select(e.ts, e.detail, e.extra)
            .where(sa.text("direction = 'internal'"), e.event_type == "purge")
            .order_by(e.seq.desc()).limit(limit))
    with q.reading(store(), PAGE_TIME_LIMIT) as conn:
        rows = conn.execute(stmt).all()
        months = [{"month": f"{part.lower:%Y-%m}", "partition": part.name, "events (estimate)": n}
                  for part, n in partitions.sizes(conn)]
    purges = []
    for ts, detail, extra in rows:
        doc = json.loads(extra) if extra else {}
        archive = doc.get("archive") or {}
        purges.append({"time": ts, "removed": doc.get("removed"), "up to seq": doc.get("anchor_seq"),
                       "by": "policy" if doc.get("policy") else "command",
                       "months dropped": ", ".join(doc.get("dropped_partitions") or []) or None,
                       "archive": archive.get("file"), "archive sha256": archive.get("sha256"),
                       "detail": detail})
    return {"policy": configured, "problem": problem, "purges": purges, "months": months}


def verify_chain() -> dict[str, Any]:
    """Walk the whole hash chain and the checkpoints (seconds per million events)."""
    from collector.chain import verify

    report = verify(store())
    return report.as_dict()


# --------------------------------------------------------------------------- time presets

PRESETS: dict[str, tuple[str, timedelta | None]] = {
    "1h": ("Last hour", timedelta(hours=1)),
    "24h": ("Last 24 hours", timedelta(hours=24)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
    "all": ("All time", None),
    "custom": ("Custom dates", None),
}
