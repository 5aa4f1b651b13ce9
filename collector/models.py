"""The audit store's tables (SQLModel), shared by SQLite and PostgreSQL.

Timestamps are timezone-aware UTC everywhere. SQLite has no time zone type, so
:class:`UTCDateTime` refuses naive values on the way in and marks values read back
as UTC, which keeps both backends returning the same objects.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


class UTCDateTime(sa.types.TypeDecorator):
    """A DateTime column that only ever holds and returns aware UTC datetimes."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        # SQLite stores text: drop the offset so that every stored value has one
        # format and text order equals time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(**kw) -> Field:
    return Field(sa_type=UTCDateTime, **kw)


class Install(SQLModel, table=True):
    """A tenant that installed the app, as its latest signed lifecycle callback left it."""

    __tablename__ = "installs"

    client_key: str = Field(primary_key=True)
    app_key: str
    product: str = "confluence"
    base_url: str
    display_url: str | None = None
    oauth_client_id: str | None = None
    # Fernet ciphertext of the shared secret; the key lives outside the database.
    shared_secret_enc: str
    declared_scopes: str = ""  # space-separated, upper case, from the app descriptor
    status: str = "installed"  # installed | enabled | disabled | uninstalled
    description: str | None = None
    first_seen: datetime = _ts()
    last_seen: datetime = _ts()
    # Set when a Connect-on-Forge callback names them (installationId, cloudId); the link to
    # a Forge installation is kept on ForgeInstallation.connect_client_key.
    cloud_id: str | None = None
    forge_installation_id: str | None = None


class ForgeInstallation(SQLModel, table=True):
    """A Forge installation of the app, learnt from its first verified invocation token or
    from Forge's installed/upgraded lifecycle events, and linked to the Connect install of
    the same site (same cloudId, installation id or site URL) when there is one, so that a
    Connect-on-Forge app's history reads as one tenant before and after the move."""

    __tablename__ = "forge_installations"

    installation_id: str = Field(primary_key=True)  # ari:cloud:ecosystem::installation/<uuid>
    app_id: str
    environment_type: str | None = None
    environment_id: str | None = None
    cloud_id: str | None = Field(default=None, index=True)
    site_url: str | None = None
    api_base_url: str | None = None
    app_version: str | None = None
    connect_client_key: str | None = Field(default=None, index=True)
    status: str = "installed"  # installed | uninstalled
    first_seen: datetime = _ts()
    last_seen: datetime = _ts()
    #: When the first Forge traffic of a linked site was seen: the day it moved from Connect.
    linked_at: datetime | None = _ts(default=None, nullable=True)


class Person(SQLModel, table=True):
    """A person the app acted as, by the name the product gives them (``displayName``), learnt
    by :mod:`collector.people` through the product's user API as the app user. Names are the
    product's data: shown as text, refreshed daily, never the key (the account id stays in the
    log and the export)."""

    __tablename__ = "people"

    tenant_client_key: str = Field(primary_key=True)
    account_id: str = Field(primary_key=True)
    display_name: str | None = None  # None: the product does not know (or no longer shows) them
    status: str = "known"  # known | unknown
    fetched_at: datetime = _ts()


class AuditEvent(SQLModel, table=True):
    """One recorded event; ``seq`` is its place in the hash chain."""

    __tablename__ = "audit_events"

    seq: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True)
    ts: datetime = _ts(index=True)
    direction: str
    event_type: str
    platform: str
    auth_method: str
    identity_kind: str
    tenant_client_key: str | None = None
    tenant_base_url: str | None = None
    product: str | None = None
    account_id: str | None = None
    method: str | None = None
    path: str | None = None
    path_template: str | None = None
    required_scope: str | None = None
    declared_scopes: str | None = None
    status: int | None = None
    outcome: str
    reason: str | None = None
    detail: str | None = None
    latency_ms: float | None = None
    request_id: str | None = None
    instance_id: str | None = None
    token_fingerprint: str | None = None
    claims: str | None = None  # canonical JSON of the claims summary
    extra: str | None = None  # canonical JSON
    prev_hash: str
    hash: str


class ReplayKey(SQLModel, table=True):
    """A token already used on a state-changing request, kept until it expires."""

    __tablename__ = "replay_keys"

    iss: str = Field(primary_key=True)
    token_hash: str = Field(primary_key=True)  # sha256 of the signed part, never the token
    expires_at: datetime = _ts(index=True)


class Checkpoint(SQLModel, table=True):
    """A signed statement of the chain head, so that a truncated tail is detected."""

    __tablename__ = "checkpoints"

    id: int | None = Field(default=None, primary_key=True)
    seq: int
    hash: str
    event_count: int
    created_at: datetime = _ts()
    key_id: str
    signature: str  # HMAC-SHA256 with a key kept outside the database


class ForwardCursor(SQLModel, table=True):
    """How far one forwarding destination has been sent (collector.forward): every event up
    to ``seq`` was accepted by the receiver. ``holder`` leases the destination to one
    forwarder at a time until ``lease_until``."""

    __tablename__ = "forward_cursors"

    name: str = Field(primary_key=True)  # the destination's URL (it never holds a secret)
    seq: int = Field(sa_type=sa.BigInteger)
    forwarded: int = Field(default=0, sa_type=sa.BigInteger)
    holder: str | None = None
    lease_until: datetime | None = _ts(default=None, nullable=True)
    updated_at: datetime = _ts()
    failing_since: datetime | None = _ts(default=None, nullable=True)
    last_error: str | None = None


class ImportSource(SQLModel, table=True):
    """One of Atlassian's audit logs that collector.imports reads into the store: a site's
    Confluence audit log, an organization's events, or a workspace's events. ``cursor`` is
    where the next run resumes (the source's own paging state); ``holder`` leases the source
    to one importer at a time until ``lease_until``, as forwarding does."""

    __tablename__ = "import_sources"

    name: str = Field(primary_key=True)
    kind: str  # confluence_audit | org_events | workspace_events
    target: str  # the site's URL, the organization id or the workspace id
    api_url: str  # where its API answers (the site, or https://api.atlassian.com)
    username: str | None = None  # the account an API token belongs to (Basic auth), not secret
    # Fernet ciphertext of the API token or key, as shared secrets are kept (collector.secretbox).
    credential_enc: str
    sites: str = ""  # space-separated site URLs whose calls this source is expected to hold
    cursor: str | None = None  # JSON: the source's paging state after the last complete page
    covered_since: datetime | None = _ts(default=None, nullable=True)
    covered_until: datetime | None = _ts(default=None, nullable=True)
    imported: int = Field(default=0, sa_type=sa.BigInteger)
    holder: str | None = None
    lease_until: datetime | None = _ts(default=None, nullable=True)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    failing_since: datetime | None = _ts(default=None, nullable=True)
    last_error: str | None = None


# --------------------------------------------------------------------------- read side
# Added for the dashboard and ``connect-audit export`` (collector.query): the audit log is
# read by time range plus one selective filter, newest first, so each selective column gets
# an index led by it and ending in ``ts``; keyset pages then stop after ``limit`` rows.
_events = AuditEvent.__table__.c
sa.Index("ix_audit_events_tenant_ts", _events.tenant_client_key, _events.ts)
sa.Index("ix_audit_events_account_ts", _events.account_id, _events.ts)
sa.Index("ix_audit_events_outcome_ts", _events.outcome, _events.ts)
sa.Index("ix_audit_events_reason_ts", _events.reason, _events.ts)
# The tool's own events (purges, exports, alerts) by type: a few a day, found without a scan.
sa.Index("ix_audit_events_internal_type", _events.event_type, _events.seq,
         sqlite_where=_events.direction == "internal", postgresql_where=_events.direction == "internal")
# The calls the app made as users, by site, person and time (collector.highlights: whom it
# acted as in a window, and whether it had before).
#: Stated as text because SQLite uses a partial index only for a query whose WHERE names the
#: same terms as literals: collector.highlights puts this very text in its queries.
ACTING_AS_USERS_SQL = "direction = 'outgoing' AND identity_kind = 'user'"
_acting = sa.text(ACTING_AS_USERS_SQL)
sa.Index("ix_audit_events_acting_as", _events.tenant_client_key, _events.account_id, _events.ts,
         _events.direction, _events.identity_kind, sqlite_where=_acting, postgresql_where=_acting)
sa.Index("ix_audit_events_acting_as_ts", _events.tenant_client_key, _events.ts, _events.account_id,
         _events.direction, _events.identity_kind, sqlite_where=_acting, postgresql_where=_acting)

# Atlassian's imported records (direction imported) by site and time: a few per call of the
# app at most, found without reading the app's own rows (collector.reconcile, the highlights).
IMPORTED_SQL = "direction = 'imported'"
_imported = sa.text(IMPORTED_SQL)
sa.Index("ix_audit_events_imported", _events.tenant_client_key, _events.ts, _events.direction,
         sqlite_where=_imported, postgresql_where=_imported)


class RollupDimensions(SQLModel):
    """The dimensions and measures the hourly and daily event rollups share (one list, read by
    :data:`collector.query.ROLLUP_DIMS`). Dimensions are never NULL ('' and status 0 stand for
    "none") so that the composite key can be the upsert's conflict target on both SQLite and
    PostgreSQL."""

    tenant_client_key: str = Field(default="", primary_key=True)
    direction: str = Field(default="", primary_key=True)
    identity_kind: str = Field(default="", primary_key=True)
    auth_method: str = Field(default="", primary_key=True)
    outcome: str = Field(default="", primary_key=True)
    reason: str = Field(default="", primary_key=True)
    status: int = Field(default=0, primary_key=True)
    method: str = Field(default="", primary_key=True)
    path_template: str = Field(default="", primary_key=True)
    required_scope: str = Field(default="", primary_key=True)
    n: int = 0
    latency_sum: float = 0.0
    latency_n: int = 0


#: The rollups' dimension columns, in key order (the measures n, latency_sum, latency_n follow).
ROLLUP_DIMENSIONS: tuple[str, ...] = tuple(
    name for name in RollupDimensions.model_fields if name not in ("n", "latency_sum", "latency_n")
)


class EventRollup(RollupDimensions, table=True):
    """Hourly event counts per dimension combination, so aggregates never scan the log.

    Maintained incrementally from ``audit_events`` by :func:`collector.query.refresh_rollups`
    (events with ``seq`` above the watermark in :class:`RollupState`).
    """

    __tablename__ = "event_rollups"

    hour: int = Field(primary_key=True)  # epoch seconds // 3600 of the event's ts


class EventRollupDaily(RollupDimensions, table=True):
    """Daily event counts, the same dimensions as :class:`EventRollup`.

    An hourly rollup of a busy month still holds hundreds of thousands of rows; a range of
    weeks reads its whole days here (several times fewer rows) and only its first and last
    partial days from the hourly table. Folded from the log like the hourly one, under its
    own watermark (``rollup_state.name = 'days'``).
    """

    __tablename__ = "event_rollups_daily"

    day: int = Field(primary_key=True)  # epoch seconds // 86400 of the event's ts (UTC days)


class ActorRollup(SQLModel, table=True):
    """Hourly counts per acting account (rows with an accountId only): the "who acted" view."""

    __tablename__ = "actor_rollups"

    hour: int = Field(primary_key=True)
    tenant_client_key: str = Field(default="", primary_key=True)
    account_id: str = Field(primary_key=True)
    identity_kind: str = Field(default="", primary_key=True)
    method: str = Field(default="", primary_key=True)
    path_template: str = Field(default="", primary_key=True)
    outcome: str = Field(default="", primary_key=True)
    n: int = 0
    first_ts: datetime = _ts()
    last_ts: datetime = _ts()


class RollupState(SQLModel, table=True):
    """How far each rollup has consumed the log: the highest ``seq`` already counted."""

    __tablename__ = "rollup_state"

    name: str = Field(primary_key=True)
    last_seq: int = 0
    oldest_hour: int | None = None  # the first hour still backed by events (after a purge)
