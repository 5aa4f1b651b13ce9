# ruff: noqa: S608 - the SQL names fixed identifiers of this module only, never input
"""PostgreSQL: the events table becomes a table partitioned by month of ``ts``
(collector.partitions), so that a query over a range reads only its months and retention
drops whole months. SQLite keeps its single table (nothing changes there).

The conversion copies every row, unchanged, into a new partitioned table with one
partition per month that holds rows (and the current month and the next ones), drops the
old table and takes its name, then builds the old table's indexes and grants on the new
one. It runs in the migration's single transaction: a process killed half-way leaves the
store as it was, at revision 0008, and the next open converts it again.

A partitioned table's keys must include the partition column: the primary key becomes
``(seq, ts)`` and the unique ``event_id`` becomes unique ``(event_id, ts)``. Every writer
stamps an event's ``ts`` when it makes its ``event_id``, so a retried event still collides;
``seq`` stays unique because only the chain lock's holder assigns it, contiguously, and
``verify`` proves it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from collector import partitions

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TABLE = partitions.PARENT
STAGED = f"{TABLE}_staged"
PRIMARY_KEY = f"{TABLE}_pkey"
UNIQUE_EVENT_ID = f"{TABLE}_event_id_key"

log = logging.getLogger("collector.store")


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql" or partitions.is_partitioned(conn):
        return
    rows = conn.exec_driver_sql(f"SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass('{TABLE}')")
    estimate = rows.scalar() or 0
    if estimate > 100_000:  # minutes, not seconds: say why the open is slow
        log.warning("connect-audit: converting %s (about %d events) to monthly partitions; the store "
                    "opens when it is done, and a stop half-way leaves it unconverted", TABLE, estimate)
    saved = _indexes_and_grants(conn)
    conn.exec_driver_sql(f'CREATE TABLE "{STAGED}" (LIKE "{TABLE}") PARTITION BY RANGE (ts)')
    for month in _months_to_hold(conn):
        partitions.create(conn, month, parent=STAGED)
    _swap(conn, saved, primary_key="(seq, ts)", unique="(event_id, ts)")


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql" or not partitions.is_partitioned(conn):
        return
    saved = _indexes_and_grants(conn)
    conn.exec_driver_sql(f'CREATE TABLE "{STAGED}" (LIKE "{TABLE}")')
    _swap(conn, saved, primary_key="(seq)", unique="(event_id)")


def _swap(conn: sa.Connection, saved: list[str], *, primary_key: str, unique: str) -> None:
    """Copy every row into the staged table, put it in the old one's place, rebuild the rest.

    The keys and indexes are built after the copy: one sort per index instead of an index
    update per row.
    """
    conn.exec_driver_sql(f'INSERT INTO "{STAGED}" SELECT * FROM "{TABLE}"')
    conn.exec_driver_sql(f'DROP TABLE "{TABLE}"')
    conn.exec_driver_sql(f'ALTER TABLE "{STAGED}" RENAME TO "{TABLE}"')
    conn.exec_driver_sql(f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{PRIMARY_KEY}" PRIMARY KEY {primary_key}')
    conn.exec_driver_sql(f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{UNIQUE_EVENT_ID}" UNIQUE {unique}')
    for statement in saved:
        conn.exec_driver_sql(statement)
    partitions.forget()


def _indexes_and_grants(conn: sa.Connection) -> list[str]:
    """The statements that rebuild the table's own indexes (the keys aside) and its grants,
    as the catalog states them, so that an index or grant a DBA added survives too."""
    indexes = conn.execute(sa.text(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid = to_regclass(:t) AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY i.indexrelid"
    ), {"t": TABLE}).scalars().all()
    # A partitioned table's index cannot be CONCURRENTLY built, and "ON ONLY" would leave
    # partitions without it: the plain definition is what each must read.
    statements = [d.replace(" ON ONLY ", " ON ") for d in indexes]
    grants = conn.execute(sa.text(
        "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
        "WHERE table_schema = current_schema() AND table_name = :t AND grantee <> current_user"
    ), {"t": TABLE}).all()
    statements += [f'GRANT {privilege} ON "{TABLE}" TO {_role(grantee)}' for grantee, privilege in grants]
    return statements


def _role(grantee: str) -> str:
    return "PUBLIC" if grantee == "PUBLIC" else '"' + grantee.replace('"', '""') + '"'


def _months_to_hold(conn: sa.Connection) -> list[datetime]:
    """Each month that holds a row, and the current month with the ones the recorder keeps ahead."""
    held = conn.exec_driver_sql(
        f"SELECT DISTINCT date_trunc('month', ts AT TIME ZONE 'UTC') FROM \"{TABLE}\""
    ).scalars().all()
    months = {m.replace(tzinfo=UTC) for m in held} | set(partitions.coming_months(datetime.now(UTC)))
    return sorted(months)

