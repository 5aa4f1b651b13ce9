"""Forge installations, and the Connect install columns that link a site across the move.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)  # collector.models.UTCDateTime's storage type


def _text(name: str, *, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.String(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "forge_installations",
        _text("installation_id", nullable=False),
        _text("app_id", nullable=False),
        _text("environment_type"),
        _text("environment_id"),
        _text("cloud_id"),
        _text("site_url"),
        _text("api_base_url"),
        _text("app_version"),
        _text("connect_client_key"),
        _text("status", nullable=False),
        sa.Column("first_seen", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
        sa.Column("linked_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("installation_id"),
    )
    op.create_index("ix_forge_installations_cloud_id", "forge_installations", ["cloud_id"])
    op.create_index(
        "ix_forge_installations_connect_client_key", "forge_installations", ["connect_client_key"]
    )
    # batch mode: SQLite cannot ALTER TABLE ADD COLUMN inside every Alembic path otherwise
    with op.batch_alter_table("installs") as batch:
        batch.add_column(_text("cloud_id"))
        batch.add_column(_text("forge_installation_id"))


def downgrade() -> None:
    with op.batch_alter_table("installs") as batch:
        batch.drop_column("forge_installation_id")
        batch.drop_column("cloud_id")
    op.drop_table("forge_installations")
