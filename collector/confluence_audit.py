"""Reading a site's Confluence audit log: ``GET /wiki/rest/api/audit`` (operation getAuditRecords).

What the API gives (Confluence Cloud REST API v1, Atlassian's OpenAPI document): records of
administrative acts (space exports and permissions, group membership, app installations)
with ``author``, ``remoteAddress``, ``creationDate`` (epoch milliseconds), ``summary``,
``description``, ``category``, ``sysAdmin``, ``affectedObject``, ``changedValues`` and
``associatedObjects``, in pages of ``results`` with ``start``, ``limit`` and ``size``, filtered
by ``startDate`` and ``endDate`` (epoch milliseconds) and paged by ``start``.

Who may read it: a Confluence administrator (Basic auth with an API token, or OAuth 2.0 with
``read:audit-log:confluence``). Its Connect scope is INACCESSIBLE: the app user cannot read it,
so this source always carries an administrator's credential.

A record has no id of its own, so its id here is the SHA-256 of its stored form: reading a
window twice adds nothing, and two records identical to the millisecond count once. Each run
reads one fixed window, ``[start of the last window minus OVERLAP, now]``, page after page; a
window that is fixed does not shift under offset paging, and the overlap catches records that
reach the log late.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from collector import events as ev
from collector.errors import ImportFailed
from collector.sources import (
    CONFLUENCE_AUDIT,
    Http,
    Page,
    SiteResolver,
    SourceConfig,
    epoch_ms,
    from_epoch_ms,
    imported_record,
    stored_record,
)

KIND = CONFLUENCE_AUDIT
PATH = "/wiki/rest/api/audit"
#: Records per request; the API's default (it "may be restricted by fixed system limits").
PAGE_SIZE = 1000
#: How far each window reaches back into the one before (milliseconds).
OVERLAP_MS = 5 * 60 * 1000
MIN_INTERVAL = 0.0


def headers(source: SourceConfig) -> dict[str, str]:
    """Basic auth for an administrator's API token (``username`` is its account's email), else
    the credential as an OAuth 2.0 bearer token."""
    if source.username:
        pair = f"{source.username}:{source.credential}".encode()
        auth = "Basic " + base64.b64encode(pair).decode("ascii")
    else:
        auth = f"Bearer {source.credential}"
    return {"Authorization": auth, "Accept": "application/json"}


def pages(http: Http, source: SourceConfig, cursor: dict[str, Any] | None, now: datetime) -> Iterator[Page]:
    since = int(cursor["since_ms"]) if cursor else epoch_ms(source.covered_since or now)
    until = int(cursor.get("until_ms") or epoch_ms(now)) if cursor else epoch_ms(now)
    start = int(cursor.get("start") or 0) if cursor else 0
    url = f"{source.api_url.rstrip('/')}{PATH}"
    what = f"reading the Confluence audit log of {source.target}"
    while True:
        body = http.get_json(
            url,
            params={"startDate": since, "endDate": until, "start": start, "limit": PAGE_SIZE},
            headers=headers(source),
            what=what,
        )
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list):
            raise ImportFailed(f"{what}: the answer is not a page of audit records (no results list)")
        limit = body.get("limit") if isinstance(body.get("limit"), int) and body["limit"] > 0 else PAGE_SIZE
        start += len(results)
        if results and len(results) >= limit:
            yield Page(results, {"since_ms": since, "until_ms": until, "start": start})
            continue
        # The window is read whole: the next run starts a new one, overlapping this one's end.
        yield Page(
            results,
            {"since_ms": max(until - OVERLAP_MS, since), "until_ms": None, "start": 0},
            covered_until=from_epoch_ms(until),
        )
        return


def to_record(
    raw: Mapping[str, Any], source: SourceConfig, sites: SiteResolver, context: Mapping[str, Any]
) -> ev.AuditRecord:
    ts = from_epoch_ms(raw.get("creationDate"))
    if ts is None:
        raise ImportFailed(f"a Confluence audit record of {source.target} has no creationDate")
    _kept, _removed, digest = stored_record(raw)
    author = raw.get("author") if isinstance(raw.get("author"), Mapping) else {}
    account = _text(author.get("accountId"))
    kind = ev.APP_USER if author.get("accountType") == "app" else (ev.USER if account else ev.ANONYMOUS)
    client_key, base_url = sites.resolve(source.target)
    return imported_record(
        source,
        raw,
        digest,
        ts=ts,
        outcome=ev.ALLOWED,
        identity_kind=kind,
        account_id=account,
        tenant_client_key=client_key,
        tenant_base_url=base_url,
        product="confluence",
        detail=_text(raw.get("summary")),
        extra={"category": _text(raw.get("category")), "remote_address": _text(raw.get("remoteAddress"))},
    )


def _text(value: Any, limit: int = 500) -> str | None:
    return str(value)[:limit] if value not in (None, "") else None
