"""What the readers of Atlassian's audit logs share (collector.confluence_audit,
collector.org_events): the page a reader yields, the source as it sees it, HTTP that keeps to
a rate limit and waits out 429s, the mapping of a site to the app's install, and the event an
imported record becomes (its id derived from the source's own, its record kept verbatim with
the SHA-256 of the stored form). The run itself, the registry and the cursor are in
:mod:`collector.imports`.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
import sqlalchemy as sa

from collector import events as ev
from collector.errors import ImportFailed, SourceForbidden, SourceRateLimited, SourceUnauthorized
from collector.models import Install

INSTALLS = Install.__table__

CONFLUENCE_AUDIT = "confluence_audit"
ORG_EVENTS = "org_events"
KINDS = (CONFLUENCE_AUDIT, ORG_EVENTS)
#: The longest a run waits out one 429 before it gives up (the next run resumes).
MAX_RETRY_WAIT = 300.0
#: How many times a run retries one request that met a 429 or a 5xx.
MAX_RETRIES = 5
#: Keys whose values are credentials: left out of a stored record (their path is noted).
_CREDENTIAL_KEYS = frozenset(
    {
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "secret",
        "client_secret",
        "sharedsecret",
        "password",
        "authorization",
        "apikey",
        "api_key",
        "credential",
        "credentials",
        "assertion",
    }
)
#: Event ids of imported records: uuid5 in this namespace of ``kind:target:source id``.
_ID_NAMESPACE = uuid.UUID("6f1d4c52-5d0e-4a8b-9f61-3c3c1a7e0b8d")


# --------------------------------------------------------------------------- what a reader does


@dataclass(frozen=True, slots=True)
class Page:
    """One page a source read: its records (as the API sent them), the cursor to resume after
    it, and how far in time the source is now known to be complete."""

    records: list[dict[str, Any]]
    cursor: dict[str, Any]
    covered_until: datetime | None = None
    #: What the reader learnt that its records need to be read (the org's action names).
    context: Mapping[str, Any] = field(default_factory=dict)


class Reader(Protocol):
    """What each source module provides (collector.confluence_audit, collector.org_events)."""

    KIND: str

    def pages(
        self, http: Http, source: SourceConfig, cursor: dict[str, Any] | None, now: datetime
    ) -> Iterator[Page]: ...

    def to_record(
        self, raw: Mapping[str, Any], source: SourceConfig, sites: SiteResolver, context: Mapping[str, Any]
    ) -> ev.AuditRecord: ...


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """A source as a reader sees it: where to ask and with which credential (never printed)."""

    name: str
    kind: str
    target: str
    api_url: str
    username: str | None
    credential: str = field(repr=False)
    sites: tuple[str, ...] = ()
    covered_since: datetime | None = None


# --------------------------------------------------------------------------- HTTP


class Http:
    """The importers' HTTP: one session (its adapter injectable, so tests and the demo reach the
    simulator), a pace between requests, and 429s and 5xx waited out within bounds. Errors
    never carry the credential: they name the status and the API's own message."""

    def __init__(
        self,
        *,
        adapter: requests.adapters.BaseAdapter | None = None,
        timeout: float = 30.0,
        min_interval: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        max_wait: float = MAX_RETRY_WAIT,
    ) -> None:
        self.session = requests.Session()
        self.session.trust_env = False  # no .netrc: the credential is the source's, never another
        if adapter is not None:
            self.session.mount("http://", adapter)
            self.session.mount("https://", adapter)
        self.timeout = timeout
        self.min_interval = min_interval
        self.sleep = sleep
        self.monotonic = monotonic
        self.max_wait = max_wait
        self.requests = 0
        self.waited = 0.0
        self._last: float | None = None

    def get_json(
        self, url: str, *, params: Mapping[str, Any] | None = None, headers: Mapping[str, str], what: str
    ) -> Any:
        """GET ``url`` and return its JSON body; raise :class:`ImportFailed` (or a subclass)."""
        for attempt in range(MAX_RETRIES + 1):
            self._pace()
            try:
                response = self.session.get(
                    url, params=params, headers=dict(headers), timeout=self.timeout, allow_redirects=False
                )
            except requests.RequestException as exc:
                if attempt == MAX_RETRIES:
                    raise ImportFailed(
                        f"{what}: {urlsplit(url).netloc} could not be reached ({type(exc).__name__})"
                    ) from None
                self._wait(min(2.0**attempt, 30.0))
                continue
            status = response.status_code
            if status == 429 or status >= 500:
                if attempt == MAX_RETRIES:
                    cls = SourceRateLimited if status == 429 else ImportFailed
                    raise cls(
                        f"{what}: still HTTP {status} after {MAX_RETRIES} retries{_api_message(response)}",
                        status=status,
                    )
                delay = _retry_after(response, default=min(2.0**attempt, 30.0))
                if delay > self.max_wait:
                    raise SourceRateLimited(
                        f"{what}: HTTP 429, asked to wait {delay:.0f} s (more than {self.max_wait:.0f} s); "
                        "the next run resumes",
                        status=status,
                    )
                self._wait(delay)
                continue
            if status == 401:
                raise SourceUnauthorized(
                    f"{what}: HTTP 401, the credential was refused (wrong, revoked or expired; "
                    f"replace it with connect-audit import add){_api_message(response)}",
                    status=401,
                )
            if status == 403:
                raise SourceForbidden(
                    f"{what}: HTTP 403, the credential may not read this log (it needs an "
                    f"administrator's token or an organization API key){_api_message(response)}",
                    status=403,
                )
            if status != 200:
                raise ImportFailed(f"{what}: HTTP {status}{_api_message(response)}", status=status)
            try:
                return response.json()
            except ValueError:
                raise ImportFailed(
                    f"{what}: the answer is not JSON ({response.headers.get('Content-Type')})", status=status
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _pace(self) -> None:
        now = self.monotonic()
        if self._last is not None and self.min_interval > 0:
            gap = self._last + self.min_interval - now
            if gap > 0:
                self._wait(gap)
        self._last = self.monotonic()
        self.requests += 1

    def _wait(self, seconds: float) -> None:
        self.waited += seconds
        self.sleep(seconds)

    def close(self) -> None:
        self.session.close()


def _retry_after(response: requests.Response, *, default: float) -> float:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date), else ``X-RateLimit-Reset``
    (an ISO 8601 time, as Atlassian's admin APIs send it), else ``default``."""
    from email.utils import parsedate_to_datetime

    value = (response.headers.get("Retry-After") or "").strip()
    if value:
        try:
            return max(float(value), 0.0)
        except ValueError:
            try:
                return max((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds(), 0.0)
            except (TypeError, ValueError):
                pass
    reset = (response.headers.get("X-RateLimit-Reset") or "").strip()
    if reset:
        try:
            when = datetime.fromisoformat(reset.replace("Z", "+00:00"))
            return max((_aware(when) - datetime.now(UTC)).total_seconds(), 0.0)
        except ValueError:
            pass
    return default


def _api_message(response: requests.Response) -> str:
    """The API's own explanation, clipped and as text (never the request's headers)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    text = None
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            text = " ".join(str(errors[0].get(k)) for k in ("code", "title", "detail") if errors[0].get(k))
        text = text or body.get("message") or body.get("error_description") or body.get("error")
    text = " ".join(str(text).split())[:200] if text else ""
    return f": {text}" if text else ""


# --------------------------------------------------------------------------- records


class SiteResolver:
    """Maps a site as a source names it (a URL, a host name or a cloud id) to the install of the
    app on that site, so imported records carry the tenant the app's own events carry."""

    def __init__(self, conn: sa.Connection) -> None:
        self._by_site: dict[str, tuple[str, str]] = {}
        self._by_cloud: dict[str, tuple[str, str]] = {}
        for key, base_url, cloud_id in conn.execute(
            sa.select(INSTALLS.c.client_key, INSTALLS.c.base_url, INSTALLS.c.cloud_id).order_by(
                INSTALLS.c.last_seen
            )
        ):
            site = site_of(base_url)
            self._by_site[site] = (key, base_url)
            self._by_site[urlsplit(site).netloc.lower()] = (key, base_url)
            if cloud_id:
                self._by_cloud[cloud_id] = (key, base_url)

    def resolve(self, site: str | None = None, cloud_id: str | None = None) -> tuple[str | None, str | None]:
        """``(client_key, base_url)`` of the install, or ``(None, the site as given)``."""
        if cloud_id and cloud_id in self._by_cloud:
            return self._by_cloud[cloud_id]
        if not site:
            return None, None
        key = site_of(site) if "://" in site else site.lower().strip("/")
        found = self._by_site.get(key)
        return found if found else (None, site_of(site) if "://" in site else site)


def site_of(url: str) -> str:
    """A site's root URL: ``https://acme.atlassian.net/wiki`` becomes ``https://acme.atlassian.net``."""
    url = url.rstrip("/")
    return url[: -len("/wiki")] if url.endswith("/wiki") else url


def stored_record(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], str]:
    """The record as kept: credential-looking fields removed (their paths returned), and the
    SHA-256 of its canonical JSON (sorted keys, no spaces, UTF-8), which anyone can recompute."""
    removed: list[str] = []
    kept = _without_credentials(raw, "", removed)
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return kept, removed, hashlib.sha256(text.encode()).hexdigest()


def _without_credentials(value: Any, path: str, removed: list[str]) -> Any:
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if str(key).lower().replace("-", "_") in _CREDENTIAL_KEYS and item not in (None, ""):
                removed.append(where)
                continue
            out[str(key)] = _without_credentials(item, where, removed)
        return out
    if isinstance(value, list):
        return [_without_credentials(item, f"{path}[{i}]", removed) for i, item in enumerate(value)]
    return value


def imported_record(
    source: SourceConfig, raw: Mapping[str, Any], source_id: str, *, ts: datetime, **fields: Any
) -> ev.AuditRecord:
    """The event an imported record becomes; ``fields`` are the event's mapped columns."""
    kept, removed, digest = stored_record(raw)
    extra = {
        "source": source.name,
        "kind": source.kind,
        "source_id": source_id,
        "sha256": digest,
        "record": kept,
    }
    if removed:
        extra["removed"] = removed
    extra.update(fields.pop("extra", None) or {})
    return ev.AuditRecord(
        direction=ev.IMPORTED,
        platform=ev.ATLASSIAN,
        event_type=source.kind,
        ts=ts,
        event_id=str(uuid.uuid5(_ID_NAMESPACE, f"{source.kind}:{source.target}:{source_id}")),
        extra=extra,
        **fields,
    )


def from_epoch_ms(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value) / 1000.0, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def from_iso(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return _aware(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


def epoch_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
