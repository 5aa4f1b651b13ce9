"""An index of the tool's own events (purges, exports, alerts) by type, so the Integrity page
finds the last retention runs without reading the log: partial (``direction = 'internal'``),
so it holds a few rows per day whatever the traffic.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    internal = sa.text("direction = 'internal'")
    op.create_index("ix_audit_events_internal_type", "audit_events", ["event_type", "seq"],
                    sqlite_where=internal, postgresql_where=internal)


def downgrade() -> None:
    op.drop_index("ix_audit_events_internal_type", table_name="audit_events")
