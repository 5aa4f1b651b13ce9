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
