"""Atlassian's own record, as the simulated host keeps it, and the audit APIs that serve it.

Every REST call the host serves to a caller it could identify (the app's JWT, a bearer token
it issued, a Forge token) becomes an entry, and so does every lifecycle change it makes. The
entries are served in the shapes of two real APIs:

* a site's Confluence audit log, ``GET /wiki/rest/api/audit`` (``AuditRecordArray``: records
  of ``author``, ``creationDate`` in epoch milliseconds, ``summary``, ``category`` ...; paged
  by ``start`` and ``limit``, filtered by ``startDate`` and ``endDate``, newest first), read
  with a site administrator's API token over Basic auth (:meth:`AtlassianRecord.admin_credentials`);
  as in Confluence, it holds the administrative acts (the app's installs, updates and
  uninstalls), not every API call;
* the organization's audit log, ``GET /admin/v1/orgs/{orgId}/events-stream`` and
  ``/event-actions``, with an organization API key as a bearer token: events ``{id, type,
  attributes: {time, processedAt, action, actor, context, container}, links, message}`` in
  pages ``{data, meta: {next, page_size}, links}``, the cursor returned on the last page too.
  The app's calls are the action "Third-party app Confluence API request". Their ``actor`` is
  the app (with ``onBehalfOf`` the person when it acted as one) and their method, path and
  status are in a ``context`` object of type ``api-requests``: that placement is this
  simulator's, since Atlassian does not document it.

Rate limits and failures are real: the organization API allows :attr:`AtlassianRecord.rate_limit`
requests per :attr:`AtlassianRecord.rate_window` seconds per key and answers a 429 with
``Retry-After`` and the ``X-RateLimit-*`` headers; a wrong credential gets a 401.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

#: The organization API's action ids (this simulator's; Atlassian publishes only display names).
ACTIONS = {
    "third_party_app_confluence_api_request": ("Third-party app Confluence API request", "App actions"),
    "app_installed": ("App successful installation", "App actions"),
    "app_updated": ("App update success", "App actions"),
    "app_uninstalled": ("App successful uninstallation", "App actions"),
    "app_enabled": ("App enable success", "App actions"),
    "app_disabled": ("App disable success", "App actions"),
}
_LIFECYCLE_ACTION = {
    "installed": "app_installed",
    "updated": "app_updated",
    "uninstalled": "app_uninstalled",
    "enabled": "app_enabled",
    "disabled": "app_disabled",
}
_LIFECYCLE_SUMMARY = {
    "installed": "App installed",
    "updated": "App updated",
    "uninstalled": "App uninstalled",
    "enabled": "App enabled",
    "disabled": "App disabled",
}


@dataclass
class Entry:
    """One thing the host saw: a served call (``method`` set) or a lifecycle change."""

    id: str
    at: float  # the host's clock
    site: str  # tenant name
    action: str
    actor_id: str
    actor_name: str
    on_behalf: tuple[str, str] | None = None  # (account id, name) when the app acted as a person
    auth_type: str | None = None
    method: str | None = None
    path: str | None = None
    status: int | None = None
    summary: str = ""
    ip: str = "127.0.0.1"
    processed_lag: float = 0.4
    extra: dict[str, Any] = field(default_factory=dict)


class ApiError(Exception):
    def __init__(self, status: int, body: Any, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or []


class AtlassianRecord:
    """The host's audit record and its APIs (see the module docstring)."""

    def __init__(self, sim: Any, clock: Callable[[], float]) -> None:
        self.sim = sim
        self.clock = clock
        self._lock = threading.Lock()
        self.entries: list[Entry] = []
        self.org_id = str(uuid.uuid4())
        self.org_key = secrets.token_urlsafe(32)
        self.admin_email = "site-admin@example.com"
        self.admin_token = secrets.token_urlsafe(24)
        #: Requests allowed per window per key on the organization API (None: no limit).
        self.rate_limit: int | None = 10
        self.rate_window = 60.0
        #: The most records one page of the Confluence audit log holds (its "system limit").
        self.confluence_page_cap = 1000
        #: Calls by hostile sites carry this in the summary and the actor's name.
        self._window_start = 0.0
        self._window_count = 0
        self.requests: list[str] = []  # paths the audit APIs were asked, in order

    # -- what is recorded -----------------------------------------------------------

    def add(self, entry: Entry) -> None:
        with self._lock:
            self.entries.append(entry)

    def note_call(self, tenant: Any, method: str, path: str, status: int, caller: dict[str, Any]) -> None:
        """A REST call the host served to an identified caller."""
        app = self.sim.app
        self.add(
            Entry(
                id=str(uuid.uuid4()),
                at=self.clock(),
                site=tenant.name,
                action="third_party_app_confluence_api_request",
                actor_id=tenant.site.app_user.account_id,
                actor_name=app.descriptor.get("name", app.key) if app else "app",
                on_behalf=caller.get("on_behalf"),
                auth_type=caller.get("auth_type"),
                method=method,
                path=path.split("?", 1)[0],
                status=status,
                summary=f"{method} {path.split('?', 1)[0]}",
                extra={"app": app.key if app else None},
            )
        )

    def note_lifecycle(self, tenant: Any, event: str) -> None:
        app = self.sim.app
        self.add(
            Entry(
                id=str(uuid.uuid4()),
                at=self.clock(),
                site=tenant.name,
                action=_LIFECYCLE_ACTION[event],
                actor_id=f"557058:{uuid.uuid5(uuid.NAMESPACE_URL, tenant.name)}",
                actor_name=tenant.site.admin_name,
                summary=_LIFECYCLE_SUMMARY[event],
                extra={
                    "app": app.key if app else None,
                    "app_name": app.descriptor.get("name") if app else None,
                },
            )
        )

    def calls(self, site: str | None = None) -> list[Entry]:
        with self._lock:
            return [e for e in self.entries if e.method and (site is None or e.site == site)]

    def admin_credentials(self) -> tuple[str, str]:
        """The email and API token of every site's administrator (one, for simplicity)."""
        return self.admin_email, self.admin_token

    def credentials(self) -> set[str]:
        return {self.org_key, self.admin_token}

    # -- the Confluence audit log -----------------------------------------------------

    def confluence_audit(self, tenant: Any, environ: dict) -> dict[str, Any]:
        self.requests.append(f"confluence:{tenant.name}")
        self._check_basic(environ)
        query = _query(environ)
        start = _int(query.get("start"), 0)
        limit = min(_int(query.get("limit"), 1000), self.confluence_page_cap)
        since = _int(query.get("startDate"), 0)
        until = _int(query.get("endDate"), 2**62)
        with self._lock:
            mine = [e for e in self.entries if e.site == tenant.name and not e.method]
        rows = [e for e in mine if since <= int(e.at * 1000) <= until]
        rows.sort(key=lambda e: (e.at, e.id), reverse=True)
        page = rows[start : start + limit]
        base = tenant.base_url
        return {
            "results": [self._audit_record(e, tenant) for e in page],
            "start": start,
            "limit": limit,
            "size": len(page),
            "_links": {"base": base, "context": "/wiki", "self": f"{base}/rest/api/audit"},
        }

    def _audit_record(self, e: Entry, tenant: Any) -> dict[str, Any]:
        app_name = e.extra.get("app_name") or e.extra.get("app") or "app"
        return {
            "author": {
                "type": "user",
                "displayName": e.actor_name,
                "operations": None,
                "accountId": e.actor_id,
                "accountType": "atlassian",
                "publicName": e.actor_name,
            },
            "remoteAddress": e.ip,
            "creationDate": int(e.at * 1000),
            "summary": e.summary,
            "description": "",
            "category": "Apps",
            "sysAdmin": False,
            "superAdmin": False,
            "affectedObject": {"name": str(app_name), "objectType": "App"},
            "changedValues": [],
            "associatedObjects": [{"name": tenant.spec.description or tenant.name, "objectType": "Site"}],
        }

    def _check_basic(self, environ: dict) -> None:
        scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        try:
            email, _, token = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeError):
            email = token = ""
        self.sim._remember(token)
        if (
            scheme.lower() != "basic"
            or email != self.admin_email
            or not hmac.compare_digest(token, self.admin_token)
        ):
            raise ApiError(401, None)  # Confluence documents an empty body

    # -- the organization's audit log ---------------------------------------------------

    def org_api(self, environ: dict, method: str, path: str) -> tuple[int, Any, list[tuple[str, str]]]:
        parts = path.strip("/").split("/")  # admin v1 orgs <orgId> <resource>
        if method != "GET" or len(parts) != 5 or parts[:3] != ["admin", "v1", "orgs"]:
            raise ApiError(404, _errors(404, "ADMIN-404-4", "Not found"))
        self.requests.append(f"org:{parts[4]}")
        self._check_key(environ)
        headers = self._count_request()
        if parts[3] != self.org_id:
            raise ApiError(404, _errors(404, "ADMIN-404-2", "Organization not found"), headers)
        if parts[4] == "event-actions":
            data = [
                {
                    "id": key,
                    "type": "event-actions",
                    "attributes": {"displayName": name, "groupDisplayName": group},
                }
                for key, (name, group) in ACTIONS.items()
            ]
            return 200, {"data": data}, headers
        if parts[4] == "events-stream":
            return 200, self._stream(environ), headers
        raise ApiError(404, _errors(404, "ADMIN-404-4", "Not found"), headers)

    def _check_key(self, environ: dict) -> None:
        scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        self.sim._remember(value.strip())
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(), self.org_key):
            raise ApiError(
                401, _errors(401, "ADMIN-401", "Unauthorized", "The API key is invalid or expired")
            )

    def _count_request(self) -> list[tuple[str, str]]:
        if self.rate_limit is None:
            return []
        with self._lock:
            now = self.clock()
            if now - self._window_start >= self.rate_window:
                self._window_start, self._window_count = now, 0
            reset_at = self._window_start + self.rate_window
            reset = datetime.fromtimestamp(reset_at, UTC).isoformat().replace("+00:00", "Z")
            if self._window_count >= self.rate_limit:
                wait = max(int(reset_at - now + 0.999), 1)
                raise ApiError(
                    429,
                    _errors(429, "ADMIN-429-1", "Rate limit exceeded"),
                    [
                        ("Retry-After", str(wait)),
                        ("X-RateLimit-Limit", str(self.rate_limit)),
                        ("X-RateLimit-Remaining", "0"),
                        ("X-RateLimit-Reset", reset),
                    ],
                )
            self._window_count += 1
            left = self.rate_limit - self._window_count
        return [
            ("X-RateLimit-Limit", str(self.rate_limit)),
            ("X-RateLimit-Remaining", str(left)),
            ("X-RateLimit-Reset", reset),
        ]

    def _stream(self, environ: dict) -> dict[str, Any]:
        query = _query(environ)
        limit = max(1, min(_int(query.get("limit"), 200), 500))
        with self._lock:
            ordered = sorted(self.entries, key=lambda e: (e.at + e.processed_lag, e.id))
        now = self.clock()
        ordered = [e for e in ordered if e.at + e.processed_lag <= now]  # not yet processed: not yet served
        if query.get("cursor"):
            try:
                position = int(base64.urlsafe_b64decode(query["cursor"].encode()).decode())
            except (binascii.Error, ValueError, UnicodeError):
                raise ApiError(400, _errors(400, "ADMIN-400-1", "Invalid page cursor")) from None
        else:
            since = _int(query.get("from"), 0) / 1000.0
            position = next(
                (i for i, e in enumerate(ordered) if e.at + e.processed_lag >= since), len(ordered)
            )
        page = ordered[position : position + limit]
        following = base64.urlsafe_b64encode(str(position + len(page)).encode()).decode()
        base = f"https://api.atlassian.com/admin/v1/orgs/{self.org_id}/events-stream"
        return {
            "data": [self._org_event(e) for e in page],
            "meta": {"next": following, "page_size": limit},
            "links": {"self": base, "prev": None, "next": f"{base}?cursor={following}"},
        }

    def _org_event(self, e: Entry) -> dict[str, Any]:
        tenant = self.sim.tenant(e.site)
        actor: dict[str, Any] = {"id": e.actor_id, "name": e.actor_name, "links": {"self": None}}
        context: list[dict[str, Any]] = []
        if e.method:
            actor["app"] = {"id": e.extra.get("app"), "type": "apps"}
            if e.auth_type:
                actor["auth"] = {"authType": e.auth_type}
            if e.on_behalf:
                actor["onBehalfOf"] = {"id": e.on_behalf[0], "name": e.on_behalf[1]}
            context.append(
                {
                    "id": e.id,
                    "type": "api-requests",
                    "attributes": {"method": e.method, "path": e.path, "status": e.status},
                }
            )
        else:
            context.append(
                {
                    "id": str(e.extra.get("app")),
                    "type": "apps",
                    "attributes": {"name": e.extra.get("app_name")},
                }
            )
        host = tenant.site_url.split("://", 1)[-1]
        return {
            "id": e.id,
            "type": "events",
            "attributes": {
                "time": _iso(e.at),
                "processedAt": _iso(e.at + e.processed_lag),
                "action": e.action,
                "actor": actor,
                "context": context,
                "container": [
                    {
                        "id": tenant.cloud_id,
                        "type": "sites",
                        "attributes": {"siteHostName": host, "siteName": tenant.name},
                        "links": {"alt": tenant.site_url},
                    }
                ],
                "location": {"ip": e.ip},
            },
            "links": {"self": f"https://api.atlassian.com/admin/v1/orgs/{self.org_id}/events/{e.id}"},
            "message": {"content": e.summary, "format": "simple"},
        }


def _errors(status: int, code: str, title: str, detail: str | None = None) -> dict[str, Any]:
    error = {"id": str(uuid.uuid4()), "status": str(status), "code": code, "title": title}
    if detail:
        error["detail"] = detail
    return {"errors": [error]}


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _query(environ: dict) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _int(value: str | None, default: int) -> int:
    try:
        return max(int(value), 0) if value not in (None, "") else default
    except ValueError:
        raise ApiError(
            400, _errors(400, "ADMIN-400-3", "Invalid parameter", f"{value!r} is not a number")
        ) from None


def dumps(body: Any) -> bytes:
    return b"" if body is None else json.dumps(body).encode()
