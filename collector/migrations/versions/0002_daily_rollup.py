"""Daily event rollup, so that ranges of weeks read tens of thousands of rows, not hundreds.

The table is filled from the hourly rollup in the same transaction, and its watermark
starts where the hourly one stands: the hourly rollup is exact up to its watermark, so
summing its hours per UTC day is exact too, and a store of any size upgrades in one pass
over the (small) hourly table instead of a refold of the whole log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Written out, not read from collector.models: a revision describes the schema as it was when
# it was written, and must not change when the models do.
DIMS = (
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
)


def upgrade() -> None:
    op.create_table(
        "event_rollups_daily",
        sa.Column("day", sa.Integer(), nullable=False),
        *(
            sa.Column(name, sa.Integer() if name == "status" else sa.String(), nullable=False)
            for name in DIMS
        ),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("latency_sum", sa.Float(), nullable=False),
        sa.Column("latency_n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", *DIMS),
    )
    dims = ", ".join(DIMS)
    # hour and 24 are both integers, so "/" is integer division on SQLite and PostgreSQL
    # (hours since 1970 are positive: truncation is the floor).
    op.execute(
        f"INSERT INTO event_rollups_daily (day, {dims}, n, latency_sum, latency_n) "  # noqa: S608
        f"SELECT hour / 24, {dims}, sum(n), sum(latency_sum), sum(latency_n) "
        f"FROM event_rollups GROUP BY hour / 24, {dims}"
    )
    op.execute(
        "INSERT INTO rollup_state (name, last_seq, oldest_hour) "
        "SELECT 'days', last_seq, oldest_hour FROM rollup_state WHERE name = 'events'"
    )


def downgrade() -> None:
    op.execute("DELETE FROM rollup_state WHERE name = 'days'")
    op.drop_table("event_rollups_daily")
