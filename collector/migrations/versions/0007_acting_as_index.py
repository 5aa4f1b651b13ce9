"""Two indexes of the calls the app made as users (outgoing, identity user), for the highlights
that ask whom the app acted as in a window (by site and time, the person included, so the
index alone answers) and whether it had acted as each before (by site, person and time):
partial, so they hold only those calls, and covering (SQLite checks a partial index's own
condition on the row unless the index holds its columns), so both questions read the index
alone at any store size.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: The condition, word for word as the highlights' queries state it: SQLite uses a partial
#: index only for a query whose WHERE names the same terms as literals.
ACTING_AS_USERS = "direction = 'outgoing' AND identity_kind = 'user'"


def upgrade() -> None:
    where = sa.text(ACTING_AS_USERS)
    condition = ["direction", "identity_kind"]
    op.create_index("ix_audit_events_acting_as", "audit_events",
                    ["tenant_client_key", "account_id", "ts", *condition],
                    sqlite_where=where, postgresql_where=where)
    op.create_index("ix_audit_events_acting_as_ts", "audit_events",
                    ["tenant_client_key", "ts", "account_id", *condition],
                    sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    op.drop_index("ix_audit_events_acting_as_ts", table_name="audit_events")
    op.drop_index("ix_audit_events_acting_as", table_name="audit_events")
