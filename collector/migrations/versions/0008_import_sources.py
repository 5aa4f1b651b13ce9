"""Atlassian's own audit logs beside the app's (collector.imports): the sources read into the
store, each with its encrypted credential, paging cursor and lease, and a partial index of the
imported records by site and time, so that reconciling a window reads Atlassian's rows without
reading the app's.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: Word for word as collector.models states it: SQLite uses a partial index only for a query
#: whose WHERE names the same terms as literals.
IMPORTED = "direction = 'imported'"


def upgrade() -> None:
    op.create_table(
        "import_sources",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("api_url", sa.String(), nullable=False),
        sa.Column("username", sa.String(), nullable=True),
        sa.Column("credential_enc", sa.String(), nullable=False),
        sa.Column("sites", sa.String(), nullable=False),
        sa.Column("cursor", sa.String(), nullable=True),
        sa.Column("covered_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("covered_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("imported", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    where = sa.text(IMPORTED)
    op.create_index("ix_audit_events_imported", "audit_events", ["tenant_client_key", "ts", "direction"],
                    sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    op.drop_index("ix_audit_events_imported", table_name="audit_events")
    op.drop_table("import_sources")
