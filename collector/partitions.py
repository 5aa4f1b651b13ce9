"""PostgreSQL's events table by month: one partition per calendar month (UTC) of ``ts``.

On PostgreSQL, ``audit_events`` is a range-partitioned table (migration 0009), so a query
over a time range reads only the months it names, and retention removes a month by
detaching and dropping its partition instead of deleting its rows one by one. SQLite keeps
its single table: every function here is a no-op there.

There is no DEFAULT partition: a row whose month has no partition is refused by the
server. So every insert into the chain first *covers* its rows' months
(:func:`cover`, called by :mod:`collector.chain` inside the chain lock), and the recorder
creates the current month and the next :data:`AHEAD` ones well before they are needed
(:func:`keep_ahead`), so that the live path never has to. Old months appear on demand when
an import or a replay brings rows that old. A partition is made as a plain table and then
ATTACHed, which takes only a SHARE UPDATE EXCLUSIVE lock on the parent: it waits for no
reader and blocks none (CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE).

Which months exist is cached per engine and learnt only from the catalog, never from our
own uncommitted DDL: a transaction that created a partition and then rolled back leaves no
false entry. :func:`forget` clears the cache (after a drop, or when an insert was refused,
since another process's retention may have dropped a month this one remembers).
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

PARENT = "audit_events"
#: Months created beyond the current one, so that a month's first event never waits on DDL.
AHEAD = 2

_NAME = re.compile(rf"{PARENT}_\d{{4}}_\d{{2}}")
_BOUNDS = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True)
class Partition:
    """One attached partition: its table name and the half-open ``ts`` range it holds."""

    name: str
    lower: datetime
    upper: datetime


def month_of(ts: datetime) -> datetime:
    """The first instant (UTC) of ``ts``'s calendar month."""
    ts = ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
    return datetime(ts.year, ts.month, 1, tzinfo=UTC)


def next_month(month: datetime) -> datetime:
    return datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)


def name_of(month: datetime) -> str:
    return f"{PARENT}_{month:%Y_%m}"


def is_partition_name(name: str | None) -> bool:
    """Whether ``name`` is a month partition's table name (schema comparisons leave them out:
    each is part of ``audit_events``, not a table of the model)."""
    return bool(name and _NAME.fullmatch(name))


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's ``include_name`` for comparing the schema with the models: the month
    partitions are left out (migrations/env.py and the schema test share it)."""
    return not (type_ == "table" and is_partition_name(name))


def is_partitioned(conn: sa.Connection) -> bool:
    """Whether this store's events table is partitioned (PostgreSQL after migration 0009)."""
    if conn.dialect.name != "postgresql":
        return False
    return bool(conn.execute(sa.text(
        "SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(:t)"), {"t": PARENT}).first())


def partitions(conn: sa.Connection) -> list[Partition]:
    """The month partitions attached to the events table, oldest first.

    A partition whose bounds are not a plain FROM/TO range (one a DBA attached by hand with
    MINVALUE, say) is not listed: it is not ours to drop.
    """
    rows = conn.execute(sa.text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:t)"
    ), {"t": PARENT}).all()
    found = []
    for name, bound in rows:
        match = _BOUNDS.search(bound or "")
        if match:
            lower, upper = (datetime.fromisoformat(v).astimezone(UTC) for v in match.groups())
            found.append(Partition(name, lower, upper))
    return sorted(found, key=lambda p: p.lower)


def newest_seqs(conn: sa.Connection) -> list[tuple[Partition, int]]:
    """Each month partition, oldest first, with the newest ``seq`` it holds (0: empty), one
    index probe each: what retention needs to tell whether a month can go whole. Empty on
    SQLite and on an unpartitioned store."""
    if not is_partitioned(conn):
        return []
    return [(part, conn.exec_driver_sql(f'SELECT max(seq) FROM "{part.name}"').scalar() or 0)  # noqa: S608
            for part in partitions(conn)]


def sizes(conn: sa.Connection) -> list[tuple[Partition, int]]:
    """Each month partition with the planner's estimate of its rows (``pg_class.reltuples``,
    as of the last ANALYZE or autovacuum; 0 for one never analysed): free to read at any size,
    unlike a count. Empty on SQLite and on an unpartitioned store."""
    if not is_partitioned(conn):
        return []
    found = partitions(conn)
    estimates = dict(conn.execute(sa.text(
        "SELECT relname, reltuples::bigint FROM pg_class WHERE relname = ANY(:names)"
    ), {"names": [p.name for p in found]}).all())
    return [(p, max(int(estimates.get(p.name) or 0), 0)) for p in found]


def create(conn: sa.Connection, month: datetime, *, parent: str = PARENT) -> str:
    """Make and attach the partition for ``month`` (in the caller's transaction); its name.

    The partitioned indexes and keys are built on the new, empty table as it is attached.
    """
    name = name_of(month)
    conn.exec_driver_sql(f'CREATE TABLE "{name}" (LIKE "{parent}")')
    # (DDL takes no bind parameters: the bounds are written out, from datetimes only)
    conn.exec_driver_sql(
        f'ALTER TABLE "{parent}" ATTACH PARTITION "{name}" FOR VALUES '
        f"FROM ('{_literal(month)}') TO ('{_literal(next_month(month))}')"
    )
    return name


def _literal(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00")


class _Known:
    """What one engine's catalog said: whether the table is partitioned, and which months exist."""

    def __init__(self, partitioned: bool, months: set[datetime]) -> None:
        self.partitioned = partitioned
        self.months = months


_known: weakref.WeakKeyDictionary[sa.Engine, _Known] = weakref.WeakKeyDictionary()
_known_lock = threading.Lock()


def _learn(conn: sa.Connection) -> _Known:
    partitioned = is_partitioned(conn)
    months = set()
    if partitioned:
        for part in partitions(conn):
            month = part.lower
            while month < part.upper:  # a hand-made multi-month partition covers each month
                months.add(month)
                month = next_month(month)
    return _Known(partitioned, months)


def _state(conn: sa.Connection) -> _Known:
    with _known_lock:
        known = _known.get(conn.engine)
    if known is None:
        known = _learn(conn)
        with _known_lock:
            _known[conn.engine] = known
    return known


def cover(conn: sa.Connection, stamps: Iterable[datetime]) -> list[str]:
    """Make sure every month of ``stamps`` has a partition; the names of those created.

    Call it in the chain lock's transaction, before inserting the rows. A no-op on SQLite and
    on an unpartitioned store; one catalog query when a month is not yet known.
    """
    if conn.dialect.name != "postgresql":
        return []
    known = _state(conn)
    if not known.partitioned:
        return []
    wanted = _months(stamps) - known.months
    if not wanted:
        return []
    fresh = _learn(conn)  # another process may have made them since
    with _known_lock:
        _known[conn.engine] = fresh
    return [create(conn, month) for month in sorted(wanted - fresh.months)]


def _months(stamps: Iterable[datetime]) -> set[datetime]:
    pairs = set()
    for ts in stamps:  # a batch's thousands of stamps: no object per stamp on the usual path
        if ts.tzinfo is not UTC:
            ts = ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
        pairs.add((ts.year, ts.month))
    return {datetime(year, month, 1, tzinfo=UTC) for year, month in pairs}


def coming_months(now: datetime) -> list[datetime]:
    """``now``'s month and the :data:`AHEAD` months after it: those kept ready."""
    months = [month_of(now)]
    for _ in range(AHEAD):
        months.append(next_month(months[-1]))
    return months


def keep_ahead(conn: sa.Connection, now: datetime) -> list[str]:
    """Create the partitions of :func:`coming_months` that are missing; their names."""
    return cover(conn, coming_months(now))


def forget(engine: sa.Engine | None = None) -> None:
    """Drop what the cache knows (of one engine, or of all): the next :func:`cover` asks the catalog."""
    with _known_lock:
        if engine is None:
            _known.clear()
        else:
            _known.pop(engine, None)


def drop(conn: sa.Connection, part: Partition) -> None:
    """Detach and drop one partition (in the caller's transaction; the rows go with it)."""
    conn.exec_driver_sql(f'ALTER TABLE "{PARENT}" DETACH PARTITION "{part.name}"')
    conn.exec_driver_sql(f'DROP TABLE "{part.name}"')
    forget(conn.engine)
