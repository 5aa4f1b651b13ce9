"""Reading an organization's audit log: Atlassian's Organizations REST API, events endpoints.

What the API gives (developer.atlassian.com, Organizations REST API, Events): events
``{id, type, attributes: {time, processedAt, action, actor, context, container, location},
links, message}`` in pages ``{data, meta: {next, page_size}, links}``. This reader uses the
polling endpoint ``GET /admin/v1/orgs/{orgId}/events-stream`` (sorted by processing time, so an
event processed late is still met; a cursor comes back even on the last page, which is where
the next run resumes), started with ``from`` (epoch milliseconds) and continued with ``cursor``.
An organization API key is sent as ``Authorization: Bearer``.

The documented rate limit of the events endpoint is 10 requests a minute, so a run spaces its
requests :data:`MIN_INTERVAL` apart and waits out a 429 (``Retry-After``, else
``X-RateLimit-Reset``).

Action keys are not published: the calls apps make are found by the action's display name
("Third-party app Confluence API request"), looked up once per run in
``GET /admin/v1/orgs/{orgId}/event-actions``. Which app made a call, on which site and as whom
is read from the documented ``actor`` (``auth.authType``, ``onBehalfOf``, ``app``) and the
``container`` of type ``sites``. Where a call's method, path and status are in the event is not
documented: this reader takes them from a ``context`` object whose attributes hold ``method``
and ``path``, the form the project's simulator serves, and records the call without them when
they are absent (reconciliation then matches on site, time and identity alone).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

from collector import events as ev
from collector.errors import ImportFailed
from collector.sources import (
    ORG_EVENTS,
    Http,
    Page,
    SiteResolver,
    SourceConfig,
    epoch_ms,
    from_iso,
    imported_record,
)

KIND = ORG_EVENTS
#: Seconds between two requests: the documented 10 requests a minute of the events endpoint.
MIN_INTERVAL = 6.0
PAGE_SIZE = 200  # the polling endpoint's default
#: The display names of the actions that are an app's call of a product's REST API.
API_REQUEST_ACTIONS = frozenset(
    {"Third-party app Confluence API request", "Third-party app Jira API request"}
)
#: ``actor.auth.authType`` of a Connect app's own JWT: the call was made as the app user.
CONNECT_TOKEN = "connect-token"  # noqa: S105 (a vocabulary word, not a credential)


def headers(source: SourceConfig) -> dict[str, str]:
    return {"Authorization": f"Bearer {source.credential}", "Accept": "application/json"}


def pages(http: Http, source: SourceConfig, cursor: dict[str, Any] | None, now: datetime) -> Iterator[Page]:
    base = f"{source.api_url.rstrip('/')}/admin/v1/orgs/{quote(source.target, safe='')}"
    what = f"reading the audit log of organization {source.target}"
    actions = list(cursor.get("api_actions") or []) if cursor else []
    if not actions:
        actions = _api_request_actions(http, f"{base}/event-actions", source, what)
    context = {"api_actions": frozenset(actions)}
    position = (cursor or {}).get("cursor")
    while True:
        params: dict[str, Any] = {"limit": PAGE_SIZE}
        if position:
            params["cursor"] = position
        else:
            params["from"] = epoch_ms(source.covered_since or now)
        body = http.get_json(f"{base}/events-stream", params=params, headers=headers(source), what=what)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise ImportFailed(f"{what}: the answer is not a page of events (no data list)")
        meta = body.get("meta") if isinstance(body.get("meta"), dict) else {}
        following = meta.get("next") if isinstance(meta.get("next"), str) and meta.get("next") else position
        state = {"cursor": following, "api_actions": sorted(actions)}
        if not data:
            # The stream is read to its end: every event processed so far is in.
            yield Page([], state, covered_until=now, context=context)
            return
        yield Page(data, state, context=context)
        if following == position:  # no cursor to go on with: resume from here next time
            return
        position = following


def _api_request_actions(http: Http, url: str, source: SourceConfig, what: str) -> list[str]:
    body = http.get_json(url, headers=headers(source), what=f"{what} (its event actions)")
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise ImportFailed(f"{what}: the event actions answer has no data list")
    return sorted(
        str(item["id"])
        for item in data
        if isinstance(item, Mapping)
        and item.get("id")
        and isinstance(item.get("attributes"), Mapping)
        and item["attributes"].get("displayName") in API_REQUEST_ACTIONS
    )


def to_record(
    raw: Mapping[str, Any], source: SourceConfig, sites: SiteResolver, context: Mapping[str, Any]
) -> ev.AuditRecord:
    event_id = raw.get("id")
    attributes = raw.get("attributes") if isinstance(raw.get("attributes"), Mapping) else {}
    ts = from_iso(attributes.get("time"))
    if not event_id or ts is None:
        raise ImportFailed(f"an event of organization {source.target} has no id or time")
    action = _text(attributes.get("action"))
    actor = _mapping(attributes.get("actor"))
    auth = _mapping(actor.get("auth"))
    on_behalf = _mapping(actor.get("onBehalfOf"))
    app = _mapping(actor.get("app"))
    # The app acting as itself: its Connect JWT, or an app named with no person it acted for.
    as_app = not on_behalf and (auth.get("authType") == CONNECT_TOKEN or bool(app))
    account = _text(on_behalf.get("id")) or _text(actor.get("id"))
    site, cloud_id = _site(attributes.get("container"))
    client_key, base_url = sites.resolve(site, cloud_id)
    request = _request(attributes.get("context"))
    api_call = action in context.get("api_actions", ())
    status = request.get("status")
    message = _mapping(raw.get("message"))
    return imported_record(
        source,
        raw,
        str(event_id),
        ts=ts,
        outcome=_outcome(status) if api_call else ev.ALLOWED,
        identity_kind=ev.APP_USER if as_app else (ev.USER if account else ev.ANONYMOUS),
        account_id=account,
        tenant_client_key=client_key,
        tenant_base_url=base_url,
        product="confluence" if api_call and "Confluence" in str(action) else None,
        method=_text(request.get("method"), 10),
        path=_text(request.get("path"), 2000),
        status=status if isinstance(status, int) else None,
        detail=_text(message.get("content")),
        extra={
            "action": action,
            "api_request": api_call,
            "app": _text(app.get("id")),
            "auth_type": _text(auth.get("authType")),
            "site": site,
            "cloud_id": cloud_id,
        },
    )


def _site(container: Any) -> tuple[str | None, str | None]:
    for item in container if isinstance(container, list) else []:
        if isinstance(item, Mapping) and item.get("type") == "sites":
            links = _mapping(item.get("links"))
            attrs = _mapping(item.get("attributes"))
            url = links.get("alt") if isinstance(links.get("alt"), str) else None
            host = attrs.get("siteHostName") if isinstance(attrs.get("siteHostName"), str) else None
            if url and urlsplit(url).scheme in ("http", "https"):
                return url.rstrip("/"), _text(item.get("id"))
            return (f"https://{host}" if host else None), _text(item.get("id"))
    return None, None


def _request(context: Any) -> dict[str, Any]:
    for item in context if isinstance(context, list) else []:
        attrs = _mapping(item.get("attributes")) if isinstance(item, Mapping) else {}
        if isinstance(attrs.get("method"), str) and isinstance(attrs.get("path"), str):
            return {"method": attrs["method"].upper(), "path": attrs["path"], "status": attrs.get("status")}
    return {}


def _outcome(status: Any) -> str:
    if not isinstance(status, int) or status < 400:
        return ev.ALLOWED
    if status == 401:
        return ev.REJECTED
    if status == 403:
        return ev.DENIED
    return ev.ERROR if status >= 500 else ev.ALLOWED


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any, limit: int = 500) -> str | None:
    return str(value)[:limit] if value not in (None, "") else None
