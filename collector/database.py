"""The door to the store for every read: a connection from a Store, an Engine or a Connection,
and a statement time limit that turns a slow read into :class:`~collector.errors.QueryTimeout`,
a sentence a person can act on, instead of a hung page.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from collector.errors import QueryTimeout
from collector.models import (
    ActorRollup,
    AuditEvent,
    EventRollup,
    EventRollupDaily,
    RollupState,
)

#: The tables every read uses, by the names the SQL below is written with.
EVENTS = AuditEvent.__table__
ROLLUP = EventRollup.__table__
ACTORS = ActorRollup.__table__
DAILY_ROLLUP = EventRollupDaily.__table__
STATE = RollupState.__table__

#: Default statement time limit, in seconds, for interactive reads.
DEFAULT_TIME_LIMIT = 10.0


# --------------------------------------------------------------------------- connections


def _engine(source: Any) -> sa.Engine:
    if isinstance(source, sa.Engine):
        return source
    engine = getattr(source, "engine", None)
    if isinstance(engine, sa.Engine):
        return engine
    raise TypeError(f"expected a Store, an Engine or a Connection, not {type(source).__name__}")


@contextmanager
def connect(source: Any) -> Iterator[sa.Connection]:
    """A connection from a Store, an Engine, or the Connection itself (left open)."""
    if isinstance(source, sa.Connection):
        yield source
        return
    with _engine(source).connect() as conn:
        yield conn


@contextmanager
def time_limit(conn: sa.Connection, seconds: float | None) -> Iterator[None]:
    """Abort the statements run inside after ``seconds``, raising :class:`QueryTimeout`.

    SQLite has no statement timeout, so a progress handler interrupts the query once the
    deadline passes; PostgreSQL gets ``SET LOCAL statement_timeout`` in the transaction.
    """
    if not seconds:
        yield
        return
    dialect = conn.dialect.name
    message = (
        f"The query ran longer than its {seconds:g} s limit; narrow the time range "
        "or add a filter (tenant, outcome, reason) that the indexes can use"
    )
    if dialect == "sqlite":
        raw = conn.connection.driver_connection
        deadline = time.monotonic() + seconds
        fired = threading.Event()

        def _check() -> int:
            if time.monotonic() > deadline:
                fired.set()
                return 1
            return 0

        raw.set_progress_handler(_check, 20_000)
        try:
            yield
        except sa.exc.OperationalError as exc:
            if fired.is_set() or "interrupted" in str(exc).lower():
                raise QueryTimeout(message) from None
            raise
        finally:
            raw.set_progress_handler(None, 0)
        return
    if dialect == "postgresql":
        # SET LOCAL lasts until the end of the (auto-begun) transaction of this block.
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(seconds * 1000)}")
        try:
            yield
        except sa.exc.OperationalError as exc:
            if "statement timeout" in str(exc).lower() or "canceling statement" in str(exc):
                raise QueryTimeout(message) from None
            raise
        return
    yield


@contextmanager
def reading(source: Any, seconds: float | None = DEFAULT_TIME_LIMIT) -> Iterator[sa.Connection]:
    """A connection whose statements run under the time limit."""
    with connect(source) as conn, time_limit(conn, seconds):
        yield conn


