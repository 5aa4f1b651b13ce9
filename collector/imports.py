"""Atlassian's own audit logs, imported beside the app's: the sources, their cursors and the run.

Two sources, each read by its own module (:mod:`collector.sources` holds what they share):

* ``confluence_audit`` (:mod:`collector.confluence_audit`): a site's Confluence audit log,
  ``GET /wiki/rest/api/audit``, read with a Confluence administrator's API token.
* ``org_events`` (:mod:`collector.org_events`): an organization's audit log events through the
  polling endpoint ``GET /admin/v1/orgs/{orgId}/events-stream``, with an organization API key.

The Audit Log Workspace Events API (``/audit-log/v1``) is not read yet: its event object's
fields are not documented in any reference this project could reach (see docs/atlassian-record.md).

Every imported record becomes one event of the log with ``direction = "imported"`` and
``platform = "atlassian"``: in the same hash chain (so tampering with it is detected), never
counted as the app's activity (the rollups and every filter leave it out unless asked for).
Its event id is derived from the source's own record id, so an import is idempotent: a page
read twice, after a kill or an overlap, adds nothing. The record is kept as the source sent it
(minus any credential-looking field) with the SHA-256 of the stored form.

A run reads page after page and commits each page with the cursor after it, in one
transaction: a killed run resumes at the first page it had not committed. One importer at a
time reads a source (a lease in its row, as forwarding does). Credentials are encrypted at rest
with the store's secret key (:mod:`collector.secretbox`) and never shown, logged or stored in
an error.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
import sqlalchemy as sa

from collector import confluence_audit, org_events
from collector import events as ev
from collector.errors import ConfigurationError, ImportFailed, UnknownSource
from collector.models import ImportSource
from collector.sources import (
    CONFLUENCE_AUDIT,
    KINDS,
    MAX_RETRY_WAIT,
    ORG_EVENTS,
    Http,
    Page,
    Reader,
    SiteResolver,
    SourceConfig,
    _aware,
)

SOURCES = ImportSource.__table__
#: Where the organization API answers (Atlassian's API gateway).
ATLASSIAN_API = "https://api.atlassian.com"
#: How long a run holds its source's lease; renewed with every page.
LEASE_SECONDS = 120.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_READERS: dict[str, Reader] = {CONFLUENCE_AUDIT: confluence_audit, ORG_EVENTS: org_events}  # type: ignore[dict-item]
__all__ = [
    "CONFLUENCE_AUDIT",
    "KINDS",
    "ORG_EVENTS",
    "ImportRun",
    "Importer",
    "Page",
    "SiteResolver",
    "SourceConfig",
    "SourceState",
    "add_source",
    "import_all",
    "remove_source",
    "source_states",
]


# --------------------------------------------------------------------------- sources and runs


@dataclass(frozen=True, slots=True)
class SourceState:
    """A source as ``connect-audit import list`` and the dashboard show it (no credential)."""

    name: str
    kind: str
    target: str
    api_url: str
    username: str | None
    sites: tuple[str, ...]
    imported: int
    covered_since: datetime | None
    covered_until: datetime | None
    updated_at: datetime
    failing_since: datetime | None
    last_error: str | None
    holder: str | None
    lease_until: datetime | None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = (
                _iso(value)
                if isinstance(value, datetime)
                else (list(value) if isinstance(value, tuple) else value)
            )
        return out


@dataclass(slots=True)
class ImportRun:
    """What one run did: records new to the store, records already there, pages read."""

    source: str
    imported: int = 0
    duplicates: int = 0
    pages: int = 0
    covered_until: datetime | None = None
    error: str | None = None
    status: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "pages": self.pages,
            "covered_until": _iso(self.covered_until) if self.covered_until else None,
            "error": self.error,
            "status": self.status,
        }


# --------------------------------------------------------------------------- the registry


def add_source(
    store: Any,
    name: str,
    kind: str,
    target: str,
    credential: str,
    *,
    username: str | None = None,
    api_url: str | None = None,
    sites: tuple[str, ...] = (),
    since: datetime | None = None,
    now: datetime | None = None,
) -> SourceState:
    """Register (or replace) a source; the credential is encrypted before it is stored.
    ``since`` is where its first run starts (default: 7 days before now)."""
    from collector.secretbox import SecretBox

    _check_source(name, kind, target, credential, username, api_url, sites)
    now = now or datetime.now(UTC)
    row = {
        "name": name,
        "kind": kind,
        "target": target.rstrip("/"),
        "api_url": (api_url or _default_api(kind, target)).rstrip("/"),
        "username": username or None,
        "credential_enc": SecretBox.for_store(store).encrypt(credential),
        "sites": " ".join(s.rstrip("/") for s in sites),
        "cursor": None,
        "covered_since": since or now - timedelta(days=7),
        "covered_until": None,
        "imported": 0,
        "holder": None,
        "lease_until": None,
        "created_at": now,
        "updated_at": now,
        "failing_since": None,
        "last_error": None,
    }
    with store.write_transaction() as conn:
        conn.execute(SOURCES.delete().where(SOURCES.c.name == name))
        conn.execute(SOURCES.insert().values(**row))
    return source_states(store, name)[0]


def remove_source(store: Any, name: str) -> None:
    """Forget a source and its credential (its imported records stay in the log)."""
    with store.write_transaction() as conn:
        if conn.execute(SOURCES.delete().where(SOURCES.c.name == name)).rowcount == 0:
            raise UnknownSource(f"there is no import source named {name!r} (see: connect-audit import list)")


def source_states(store: Any, name: str | None = None) -> list[SourceState]:
    """Every source (or the one named), without its credential."""
    query = sa.select(SOURCES).order_by(SOURCES.c.name)
    if name is not None:
        query = query.where(SOURCES.c.name == name)
    with store.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    if name is not None and not rows:
        raise UnknownSource(f"there is no import source named {name!r} (see: connect-audit import list)")
    return [_state(row) for row in rows]


def _state(row: Mapping[str, Any]) -> SourceState:
    return SourceState(
        name=row["name"],
        kind=row["kind"],
        target=row["target"],
        api_url=row["api_url"],
        username=row["username"],
        sites=tuple(row["sites"].split()),
        imported=row["imported"],
        covered_since=_aware(row["covered_since"]),
        covered_until=_aware(row["covered_until"]),
        updated_at=_aware(row["updated_at"]),
        failing_since=_aware(row["failing_since"]),
        last_error=row["last_error"],
        holder=row["holder"],
        lease_until=_aware(row["lease_until"]),
    )


def _check_source(
    name: str,
    kind: str,
    target: str,
    credential: str,
    username: str | None,
    api_url: str | None,
    sites: tuple[str, ...],
) -> None:
    if not _NAME.match(name or ""):
        raise ConfigurationError(
            f"{name!r} is not a source name: use up to 64 letters, digits, '.', '_' or '-'"
        )
    if kind not in KINDS:
        raise ConfigurationError(f"{kind!r} is not a source kind: use one of {', '.join(KINDS)}")
    if not credential or not credential.strip():
        raise ConfigurationError(f"the {kind} source {name!r} needs a credential (an API token or key)")
    if kind == CONFLUENCE_AUDIT and not _is_url(target):
        raise ConfigurationError(
            f"{target!r} is not a site URL: give the site as https://your-site.atlassian.net"
        )
    if kind != CONFLUENCE_AUDIT and not re.match(r"^[A-Za-z0-9:._/-]{1,200}$", target or ""):
        raise ConfigurationError(f"{target!r} is not an organization or workspace id")
    for url in (api_url, *sites):
        if url is not None and not _is_url(url):
            raise ConfigurationError(f"{url!r} is not an http(s) URL")
        if url is not None and "@" in urlsplit(url).netloc:
            raise ConfigurationError("a source URL must not hold credentials: give the token separately")


def _is_url(value: str) -> bool:
    parts = urlsplit(value or "")
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _default_api(kind: str, target: str) -> str:
    return target if kind == CONFLUENCE_AUDIT else ATLASSIAN_API


# --------------------------------------------------------------------------- a run


def reader_for(kind: str) -> Reader:
    try:
        return _READERS[kind]
    except KeyError:
        raise ConfigurationError(f"{kind!r} is not a source kind: use one of {', '.join(KINDS)}") from None


class Importer:
    """Reads one source into the store, page by page, from its cursor."""

    def __init__(
        self,
        store: Any,
        name: str,
        *,
        adapter: requests.adapters.BaseAdapter | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
        min_interval: float | None = None,
        max_wait: float = MAX_RETRY_WAIT,
        holder: str | None = None,
        page_limit: int | None = None,
        instance_id: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.name = name
        self.clock = clock
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.page_limit = page_limit
        self.instance_id = instance_id  # stamped on the imported events (default: host and pid)
        state = source_states(store, name)[0]
        self.reader = reader_for(state.kind)
        pace = getattr(self.reader, "MIN_INTERVAL", 0.0) if min_interval is None else min_interval
        self.http = Http(
            adapter=adapter, min_interval=pace, sleep=sleep, monotonic=monotonic, max_wait=max_wait
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Importer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def run(self, *, progress: Callable[[ImportRun], None] | None = None) -> ImportRun:
        """Import every page available now; failures are reported in the result (and kept
        on the source's row), never half-written."""
        from collector.recorder import Recorder

        result = ImportRun(self.name)
        if not self._claim():
            result.error = "another importer holds this source's lease"
            return result
        recorder = Recorder(self.store, retention=None, rollup_interval=None, instance_id=self.instance_id)
        try:
            source, cursor = self._load()
            with self.store.engine.connect() as conn:
                sites = SiteResolver(conn)
            for page in self.reader.pages(self.http, source, cursor, self.clock()):
                records = self._records(page, source, sites)
                new = recorder.write_now_many(records, within=lambda c, n, p=page: self._advance(c, p, n))
                result.pages += 1
                result.imported += new
                result.duplicates += len(records) - new
                result.covered_until = page.covered_until or result.covered_until
                if progress is not None:
                    progress(result)
                if self.page_limit is not None and result.pages >= self.page_limit:
                    break
            self._finish(None)
        except ImportFailed as exc:
            result.error, result.status = str(exc), exc.status
            self._finish(result.error)
        finally:
            recorder.close()
            self._release()
        return result

    def _records(self, page: Page, source: SourceConfig, sites: SiteResolver) -> list[ev.AuditRecord]:
        out = []
        for raw in page.records:
            if not isinstance(raw, Mapping):
                raise ImportFailed(f"{source.kind} {source.name}: a record is not a JSON object")
            out.append(self.reader.to_record(raw, source, sites, page.context))
        return out

    # -- the source's row -------------------------------------------------------------

    def _load(self) -> tuple[SourceConfig, dict[str, Any] | None]:
        from collector.secretbox import SecretBox

        with self.store.engine.connect() as conn:
            row = conn.execute(sa.select(SOURCES).where(SOURCES.c.name == self.name)).mappings().one()
        source = SourceConfig(
            name=row["name"],
            kind=row["kind"],
            target=row["target"],
            api_url=row["api_url"],
            username=row["username"],
            credential=SecretBox.for_store(self.store).decrypt(row["credential_enc"]),
            sites=tuple(row["sites"].split()),
            covered_since=_aware(row["covered_since"]),
        )
        cursor = json.loads(row["cursor"]) if row["cursor"] else None
        return source, cursor

    def _claim(self) -> bool:
        now = self.clock()
        with self.store.write_transaction() as conn:
            held = (
                SOURCES.c.lease_until.is_(None)
                | (SOURCES.c.lease_until < now)
                | (SOURCES.c.holder == self.holder)
            )
            done = conn.execute(
                SOURCES.update()
                .where(SOURCES.c.name == self.name, held)
                .values(holder=self.holder, lease_until=now + timedelta(seconds=LEASE_SECONDS))
            ).rowcount
        return bool(done)

    def _advance(self, conn: sa.Connection, page: Page, n: int) -> None:
        now = self.clock()
        values: dict[str, Any] = {
            "cursor": json.dumps(page.cursor, sort_keys=True),
            "updated_at": now,
            "lease_until": now + timedelta(seconds=LEASE_SECONDS),
            "imported": SOURCES.c.imported + n,
        }
        if page.covered_until is not None:
            values["covered_until"] = page.covered_until
        conn.execute(
            SOURCES.update()
            .where(SOURCES.c.name == self.name, SOURCES.c.holder == self.holder)
            .values(**values)
        )

    def _finish(self, error: str | None) -> None:
        now = self.clock()
        values: dict[str, Any] = {"updated_at": now, "last_error": error}
        if error is None:
            values["failing_since"] = None
        with self.store.write_transaction() as conn:
            conn.execute(SOURCES.update().where(SOURCES.c.name == self.name).values(**values))
            if error is not None:
                conn.execute(
                    SOURCES.update()
                    .where(SOURCES.c.name == self.name, SOURCES.c.failing_since.is_(None))
                    .values(failing_since=now)
                )

    def _release(self) -> None:
        with self.store.write_transaction() as conn:
            conn.execute(
                SOURCES.update()
                .where(SOURCES.c.name == self.name, SOURCES.c.holder == self.holder)
                .values(holder=None, lease_until=None)
            )


def import_all(store: Any, names: list[str] | None = None, **options: Any) -> list[ImportRun]:
    """Run every source (or the ones named) once, in name order."""
    runs = []
    for state in source_states(store) if not names else [source_states(store, n)[0] for n in names]:
        with Importer(store, state.name, **options) as importer:
            runs.append(importer.run())
    return runs


# --------------------------------------------------------------------------- small helpers


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
