"""Initial audit store schema: installs, audit events, replay keys, checkpoints, rollups.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)  # collector.models.UTCDateTime's storage type


def _text(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "installs",
        _text("client_key"),
        _text("app_key"),
        _text("product"),
        _text("base_url"),
        _text("display_url", nullable=True),
        _text("oauth_client_id", nullable=True),
        _text("shared_secret_enc"),
        _text("declared_scopes"),
        _text("status"),
        _text("description", nullable=True),
        sa.Column("first_seen", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
        sa.PrimaryKeyConstraint("client_key"),
    )
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.Integer(), nullable=False),
        _text("event_id"),
        sa.Column("ts", TS, nullable=False),
        _text("direction"),
        _text("event_type"),
        _text("platform"),
        _text("auth_method"),
        _text("identity_kind"),
        _text("tenant_client_key", nullable=True),
        _text("tenant_base_url", nullable=True),
        _text("product", nullable=True),
        _text("account_id", nullable=True),
        _text("method", nullable=True),
        _text("path", nullable=True),
        _text("path_template", nullable=True),
        _text("required_scope", nullable=True),
        _text("declared_scopes", nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        _text("outcome"),
        _text("reason", nullable=True),
        _text("detail", nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        _text("request_id", nullable=True),
        _text("instance_id", nullable=True),
        _text("token_fingerprint", nullable=True),
        _text("claims", nullable=True),
        _text("extra", nullable=True),
        _text("prev_hash"),
        _text("hash"),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index("ix_audit_events_ts", "audit_events", ["ts"])
    op.create_index("ix_audit_events_tenant_ts", "audit_events", ["tenant_client_key", "ts"])
    op.create_index("ix_audit_events_account_ts", "audit_events", ["account_id", "ts"])
    op.create_index("ix_audit_events_outcome_ts", "audit_events", ["outcome", "ts"])
    op.create_index("ix_audit_events_reason_ts", "audit_events", ["reason", "ts"])
    op.create_table(
        "replay_keys",
        _text("iss"),
        _text("token_hash"),
        sa.Column("expires_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("iss", "token_hash"),
    )
    op.create_index("ix_replay_keys_expires_at", "replay_keys", ["expires_at"])
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        _text("hash"),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        _text("key_id"),
        _text("signature"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "event_rollups",
        sa.Column("hour", sa.Integer(), nullable=False),
        _text("tenant_client_key"),
        _text("direction"),
        _text("identity_kind"),
        _text("auth_method"),
        _text("outcome"),
        _text("reason"),
        sa.Column("status", sa.Integer(), nullable=False),
        _text("method"),
        _text("path_template"),
        _text("required_scope"),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("latency_sum", sa.Float(), nullable=False),
        sa.Column("latency_n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "hour",
            "tenant_client_key",
            "direction",
            "identity_kind",
            "auth_method",
            "outcome",
            "reason",
            "status",
            "method",
            "path_template",
            "required_scope",
        ),
    )
    op.create_table(
        "actor_rollups",
        sa.Column("hour", sa.Integer(), nullable=False),
        _text("tenant_client_key"),
        _text("account_id"),
        _text("identity_kind"),
        _text("method"),
        _text("path_template"),
        _text("outcome"),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("first_ts", TS, nullable=False),
        sa.Column("last_ts", TS, nullable=False),
        sa.PrimaryKeyConstraint(
            "hour", "tenant_client_key", "account_id", "identity_kind", "method", "path_template", "outcome"
        ),
    )
    op.create_table(
        "rollup_state",
        _text("name"),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("oldest_hour", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    for table in (
        "rollup_state",
        "actor_rollups",
        "event_rollups",
        "checkpoints",
        "replay_keys",
        "audit_events",
        "installs",
    ):
        op.drop_table(table)
