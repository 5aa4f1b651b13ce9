"""Rollup upkeep: the hourly, daily and per-actor count tables folded from the log.

Aggregates read the daily and hourly rollups for the whole days and hours of a range and the
raw log only for the partial hours at its edges, which keeps them exact and independent of the
log's size. :func:`refresh_rollups` folds the events above each rollup's watermark
(``rollup_state``) incrementally; the recorder runs it on its writer thread after the events
are durable.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from collector import events as ev
from collector.database import ACTORS, DAILY_ROLLUP, EVENTS, ROLLUP, STATE, _engine, reading
from collector.errors import ConfigurationError
from collector.models import ROLLUP_DIMENSIONS

# --------------------------------------------------------------------------- rollups

ROLLUP_DIMS = ROLLUP_DIMENSIONS  # one list, on the models (collector.models.RollupDimensions)
ACTOR_DIMS = ("tenant_client_key", "account_id", "identity_kind", "method", "path_template", "outcome")


@dataclass(frozen=True)
class Rollup:
    """One rollup table: its watermark's name, its time key and grain, its dimensions."""

    name: str  # rollup_state.name
    table: sa.Table
    key: str  # the time column: "hour" or "day"
    grain_h: int  # hours per key step
    dims: tuple[str, ...]


HOURLY = Rollup("events", ROLLUP, "hour", 1, ROLLUP_DIMS)
DAILY = Rollup("days", DAILY_ROLLUP, "day", 24, ROLLUP_DIMS)
ACTOR_HOURLY = Rollup("actors", ACTORS, "hour", 1, ACTOR_DIMS)
ROLLUPS = (HOURLY, DAILY, ACTOR_HOURLY)


def _bucket_expr(dialect: str, column: sa.ColumnElement, seconds: int) -> sa.ColumnElement[int]:
    """Epoch seconds of a stored timestamp divided by ``seconds`` (floored), computed in SQL."""
    if dialect == "sqlite":
        return sa.cast(sa.func.strftime("%s", column), sa.Integer) // seconds  # floor, not true, division
    return sa.cast(sa.func.floor(sa.extract("epoch", column) / seconds), sa.BigInteger)


def _hour_expr(dialect: str, column: sa.ColumnElement, step_h: int = 1) -> sa.ColumnElement[int]:
    """The epoch hour of a timestamp, rounded down to a multiple of ``step_h``."""
    if step_h == 1:
        return _bucket_expr(dialect, column, 3600)
    return _bucket_expr(dialect, column, 3600 * step_h) * step_h


def _dim_expr(name: str) -> sa.ColumnElement:
    col = EVENTS.c[name]
    return sa.func.coalesce(col, 0 if name == "status" else "")


def _upsert(dialect: str, table: sa.Table):
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:  # pragma: no cover - the store supports only these two
        raise ConfigurationError(f"rollups are not supported on {dialect}")
    return insert(table)


def _fold_statement(
    dialect: str, rollup: Rollup, within: sa.ColumnElement | None = None
) -> sa.Executable:
    """``INSERT ... SELECT ... GROUP BY ... ON CONFLICT`` adding the events with
    ``:lo < seq <= :hi`` (and ``within``) to ``rollup``'s counts."""
    bucket, group = _fold_bucket(dialect, rollup)
    span = sa.and_(
        EVENTS.c.seq > sa.bindparam("lo"),
        EVENTS.c.seq <= sa.bindparam("hi"),
        sa.true() if within is None else within,
        # Imported records are Atlassian's evidence, not the app's activity: never counted.
        EVENTS.c.direction != ev.IMPORTED,
    )
    dims = [_dim_expr(d).label(d) for d in rollup.dims]
    target = rollup.table
    keys = [rollup.key, *rollup.dims]
    if rollup is not ACTOR_HOURLY:
        measures = (
            sa.func.count().label("n"),
            sa.func.coalesce(sa.func.sum(EVENTS.c.latency_ms), 0.0).label("latency_sum"),
            sa.func.count(EVENTS.c.latency_ms).label("latency_n"),
        )
        select = sa.select(bucket, *dims, *measures).where(span).group_by(group, *dims)
        ins = _upsert(dialect, target).from_select([*keys, "n", "latency_sum", "latency_n"], select)
        ex = ins.excluded
        merge = {
            "n": target.c.n + ex.n,
            "latency_sum": target.c.latency_sum + ex.latency_sum,
            "latency_n": target.c.latency_n + ex.latency_n,
        }
    else:
        measures = (
            sa.func.count().label("n"),
            sa.func.min(EVENTS.c.ts).label("first_ts"),
            sa.func.max(EVENTS.c.ts).label("last_ts"),
        )
        select = (
            sa.select(bucket, *dims, *measures)
            .where(span, EVENTS.c.account_id.is_not(None))
            .group_by(group, *dims)
        )
        ins = _upsert(dialect, target).from_select([*keys, "n", "first_ts", "last_ts"], select)
        ex = ins.excluded
        least, greatest = (
            (sa.func.min, sa.func.max) if dialect == "sqlite" else (sa.func.least, sa.func.greatest)
        )
        merge = {
            "n": target.c.n + ex.n,
            "first_ts": least(target.c.first_ts, ex.first_ts),
            "last_ts": greatest(target.c.last_ts, ex.last_ts),
        }
    return ins.on_conflict_do_update(index_elements=keys, set_=merge)


def _fold_bucket(dialect: str, rollup: Rollup) -> tuple[sa.ColumnElement, sa.ColumnElement]:
    """The rollup's time key for a fold, and the expression to group the events by.

    SQLite stores ``ts`` as ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC), so events are grouped by
    the text prefix of their hour or day, and the prefix is turned into an epoch number
    once per group instead of parsing every event's timestamp (a quarter of a fold's time).
    """
    if dialect != "sqlite":
        bucket = _bucket_expr(dialect, EVENTS.c.ts, rollup.grain_h * 3600)
        return bucket.label(rollup.key), bucket
    if rollup.grain_h == 24:
        prefix, suffix = sa.func.substr(EVENTS.c.ts, 1, 10), ""
    else:
        prefix, suffix = sa.func.substr(EVENTS.c.ts, 1, 13), ":00:00"
    start = sa.func.strftime("%s", prefix + suffix if suffix else prefix)
    bucket = sa.cast(start, sa.Integer) // (rollup.grain_h * 3600)
    return bucket.label(rollup.key), prefix


@functools.cache
def _fold(dialect: str, rollup: Rollup) -> sa.Executable:
    # Built once: constructing these statements costs more Python time than running them
    # over a second of traffic, and the fold runs on the recorder's writer thread.
    return _fold_statement(dialect, rollup)


_MAX_SEQ = sa.select(sa.func.max(EVENTS.c.seq))
_OLDEST_TS = sa.select(EVENTS.c.ts).order_by(EVENTS.c.ts.asc()).limit(1)
_STATES = sa.select(STATE.c.name, STATE.c.last_seq, STATE.c.oldest_hour)
_SET_MARK = STATE.update().where(STATE.c.name == sa.bindparam("rollup")).values(
    last_seq=sa.bindparam("seq")
)
_SET_OLDEST = STATE.update().where(STATE.c.name == sa.bindparam("rollup")).values(
    oldest_hour=sa.bindparam("hour")
)

#: Events folded per transaction: the first fold of a large log runs in steps so that the
#: recorder, which needs the same write lock, never waits long.
FOLD_STEP = 200_000


@contextmanager
def _write(source: Any) -> Iterator[sa.Connection]:
    """The store's chain-append transaction when there is a Store, else a plain one.

    Holding the chain lock matters: while it is held no append is in flight, so every
    ``seq`` up to the maximum is committed and the watermark can never skip an event.
    """
    if hasattr(source, "write_transaction"):
        with source.write_transaction() as conn:
            yield conn
        return
    with _engine(source).begin() as conn:
        yield conn


def refresh_rollups(source: Any, *, step: int = FOLD_STEP, limit: int | None = None) -> int:
    """Fold events not yet counted into the rollups; returns how many events were folded.

    Incremental (only ``seq`` above each rollup's watermark) and safe to run from several
    processes: each step runs under the store's write lock. After a purge, rollup hours and
    days older than the oldest event kept are dropped so that aggregates never count purged
    events. ``limit`` stops after about that many events, so that a caller on a write path
    (the recorder) never holds the lock for long when it finds a large backlog.
    """
    if limit is not None:
        step = max(1, min(step, limit))
    folded = 0
    while True:
        with _write(source) as conn:
            dialect = conn.dialect.name
            hi = conn.execute(_MAX_SEQ).scalar() or 0
            states = _states(conn)
            behind = 0
            for rollup in ROLLUPS:
                lo = states[rollup.name][0]
                top = min(hi, lo + step)
                if top > lo:
                    conn.execute(_fold(dialect, rollup), {"lo": lo, "hi": top})
                    conn.execute(_SET_MARK, {"rollup": rollup.name, "seq": top})
                    states[rollup.name] = (top, states[rollup.name][1])
                    behind = max(behind, top - lo)
            oldest = conn.execute(_OLDEST_TS).scalar()
            for rollup in ROLLUPS:
                _prune(conn, rollup, oldest, *states[rollup.name])
            done = all(states[rollup.name][0] >= hi for rollup in ROLLUPS)
        folded += behind
        if done or not behind or (limit is not None and folded >= limit):
            return folded


def _states(conn: sa.Connection) -> dict[str, tuple[int, int | None]]:
    """Every rollup's ``(watermark, oldest hour)``, creating the missing rows at 0."""
    stmt = _STATES.with_for_update() if conn.dialect.name == "postgresql" else _STATES
    states = {name: (int(seq), oldest) for name, seq, oldest in conn.execute(stmt)}
    missing = [rollup.name for rollup in ROLLUPS if rollup.name not in states]
    if missing:
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert

            conn.execute(insert(STATE).on_conflict_do_nothing(),
                         [{"name": name, "last_seq": 0} for name in missing])
            states = {name: (int(seq), oldest) for name, seq, oldest in conn.execute(stmt)}
        else:
            conn.execute(STATE.insert(), [{"name": name, "last_seq": 0} for name in missing])
            states.update({name: (0, None) for name in missing})
    return states


def _prune(
    conn: sa.Connection, rollup: Rollup, oldest: datetime | None, watermark: int, state: int | None
) -> None:
    """Drop what a purge removed from the log: the hours (days) before the oldest event
    kept, and recount the hour (day) holding it, which a purge may have cut in the middle.

    ``state`` is the oldest hour seen at the last fold: when the oldest event has moved
    past it, events were purged.
    """
    table = rollup.table
    if oldest is None:
        conn.execute(table.delete())
        return
    first_hour = int(oldest.timestamp()) // 3600
    if state is not None and state >= first_hour:
        return
    if state is not None:  # the oldest event moved forward: a purge happened
        first = first_hour // rollup.grain_h
        conn.execute(table.delete().where(table.c[rollup.key] <= first))
        if watermark:
            lo_ts = datetime.fromtimestamp(first * rollup.grain_h * 3600, UTC)
            within = sa.and_(EVENTS.c.ts >= lo_ts, EVENTS.c.ts < lo_ts + timedelta(hours=rollup.grain_h))
            conn.execute(_fold_statement(conn.dialect.name, rollup, within), {"lo": 0, "hi": watermark})
    conn.execute(_SET_OLDEST, {"rollup": rollup.name, "hour": first_hour})


def _watermarks(conn: sa.Connection) -> tuple[int, dict[str, int]]:
    """The newest ``seq`` in the log, and how far each rollup has folded it."""
    last = conn.execute(_MAX_SEQ).scalar() or 0
    return last, {name: int(seq) for name, seq, _oldest in conn.execute(_STATES)}


def rollup_lag(source: Any) -> int:
    """How many events the rollups have not counted yet."""
    with reading(source) as conn:
        last, marks = _watermarks(conn)
    return max(0, last - min(marks.get(rollup.name, 0) for rollup in ROLLUPS))


