"""Reading the audit log: filters pushed into SQL, keyset pages, streaming, aggregates.

This module is shared by ``connect-audit export`` and the dashboard (through
``dashboard/queries.py``), so both answer the same question with the same SQL.

Three rules keep it fast on millions of events:

* every filter becomes a SQL condition (:func:`where_clause`); nothing is filtered in
  Python and nothing loads the table into memory;
* pages are keyset pages on ``(ts, seq)`` descending, so page 1000 costs what page 1 does;
* aggregates read the daily and hourly rollup tables (:func:`refresh_rollups` keeps them
  current incrementally) for the whole days and hours of a range, and the raw log only for
  the partial hours at its edges, which keeps them exact and independent of the log's size.

Every statement runs under a time limit (:func:`time_limit`) and raises
:class:`QueryTimeout`, a sentence a person can act on, instead of hanging a page.
"""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from collector import events as ev
from collector.errors import (
    REJECTION_CODES,
    ConfigurationError,
    FilterError,
    ForgeTokenUnavailable,
    QueryTimeout,
)
from collector.models import (
    ROLLUP_DIMENSIONS,
    ActorRollup,
    AuditEvent,
    EventRollup,
    EventRollupDaily,
    RollupState,
)

EVENTS = AuditEvent.__table__
ROLLUP = EventRollup.__table__
ACTORS = ActorRollup.__table__
DAILY_ROLLUP = EventRollupDaily.__table__
STATE = RollupState.__table__

#: Default statement time limit, in seconds, for interactive reads.
DEFAULT_TIME_LIMIT = 10.0


#: Every reason word the log can hold: a rejection code, a 403's cause, a refused exchange.
REASONS = (*REJECTION_CODES, ev.SCOPE, ev.PERMISSION, ev.TOKEN_EXCHANGE_REFUSED, ForgeTokenUnavailable.code)


# --------------------------------------------------------------------------- filter

_STATUS_RE = re.compile(r"^(?:[1-5]\d\d|[1-5]xx)$")
_DURATION_RE = re.compile(r"^(\d+)\s*(m|min|h|d|w)$")
_DURATION_UNITS = {"m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str, *, now: datetime | None = None, end_of_day: bool = False) -> datetime:
    """Read an instant: ISO-8601 (a date, or a datetime; naive means UTC) or an age like ``7d``.

    Ages (``30m``, ``24h``, ``7d``, ``2w``) count back from ``now``. With ``end_of_day`` a
    bare date means the start of the next day, so ``--until 2026-01-31`` includes that day.
    """
    text = value.strip()
    match = _DURATION_RE.match(text.lower())
    if match:
        now = now or datetime.now(UTC)
        return now - timedelta(seconds=int(match.group(1)) * _DURATION_UNITS[match.group(2)])
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return start + timedelta(days=1) if end_of_day else start
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise FilterError(
            f"'{value}' is not a time: use an ISO-8601 date or datetime, or an age like 24h or 7d"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to read. Every field is optional; set fields are ANDed.

    ``since`` is inclusive and ``until`` exclusive. ``tenant`` is a clientKey, or a baseUrl
    when it starts with ``http``. ``status`` is a code (``403``) or a class (``4xx``).
    ``path_contains`` and ``text`` are case-insensitive substrings; ``text`` searches the
    tenant, account, path, reason, detail, scope and the event and request ids.
    """

    since: datetime | None = None
    until: datetime | None = None
    tenant: str | None = None
    platform: str | None = None
    direction: str | None = None
    identity_kind: str | None = None
    account_id: str | None = None
    method: str | None = None
    path_contains: str | None = None
    scope: str | None = None
    status: str | None = None
    outcome: str | None = None
    reason: str | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise FilterError(f"The filter's {name} must be timezone-aware (UTC)")
        _check_word("platform", self.platform, ev.PLATFORMS)
        _check_word("direction", self.direction, ev.DIRECTIONS)
        _check_word("identity kind", self.identity_kind, ev.IDENTITY_KINDS)
        _check_word("outcome", self.outcome, ev.OUTCOMES)
        _check_word("reason", self.reason, REASONS)
        if self.status is not None and not _STATUS_RE.match(str(self.status)):
            raise FilterError(
                f"'{self.status}' is not an HTTP status: use a code such as 403 or a class such as 4xx"
            )
        if self.since and self.until and self.since >= self.until:
            raise FilterError("The time range is empty: 'since' must be before 'until'")

    # -- URL state and CLI flags ---------------------------------------------------

    def to_params(self) -> dict[str, str]:
        """The set fields as strings, for ``st.query_params`` or a shareable link."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == "":
                continue
            out[f.name] = _iso(value) if isinstance(value, datetime) else str(value)
        return out

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, now: datetime | None = None) -> EventFilter:
        """Build a filter from strings (query parameters, CLI flags); unknown keys are ignored.

        Raises :class:`FilterError` with one sentence when a value is malformed.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = params.get(f.name)
            if isinstance(raw, list | tuple):
                raw = raw[-1] if raw else None
            if raw is None or str(raw).strip() == "":
                continue
            text = str(raw).strip()
            if f.name == "since":
                values[f.name] = parse_time(text, now=now)
            elif f.name == "until":
                values[f.name] = parse_time(text, now=now, end_of_day=True)
            elif f.name == "method" or (f.name == "scope" and ":" not in text):
                values[f.name] = text.upper()  # Connect scopes are upper case; OAuth scopes are not
            elif f.name in {"platform", "direction", "identity_kind", "outcome"}:
                values[f.name] = text.lower()
            else:
                values[f.name] = text
        return cls(**values)

    def replace(self, **changes: Any) -> EventFilter:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(changes)
        return type(self)(**data)

    def describe(self) -> str:
        """A short human label of the set fields (used in export file names and headings)."""
        parts = [f"{k}={v}" for k, v in self.to_params().items() if k not in {"since", "until"}]
        return ", ".join(parts) or "no filter"

    def raw_only_fields(self, dims: Sequence[str]) -> set[str]:
        """The set fields that a rollup with ``dims`` cannot answer (they need the raw log)."""
        out = set()
        for name in self.to_params():
            if name in {"since", "until"}:
                continue
            column = _ROLLUP_COLUMN.get(name)
            if column is None or column not in dims or (
                name == "tenant" and str(self.tenant).startswith("http")
            ):
                out.add(name)
        return out


#: Filter field -> rollup column; fields absent here (path_contains, text) need the raw log.
_ROLLUP_COLUMN = {
    "tenant": "tenant_client_key",
    # Every Forge event, and no other, has a Forge auth method: the rollups answer by platform.
    "platform": "auth_method",
    "direction": "direction",
    "identity_kind": "identity_kind",
    "account_id": "account_id",
    "method": "method",
    "scope": "required_scope",
    "status": "status",
    "outcome": "outcome",
    "reason": "reason",
}


def _check_word(label: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        article = "an" if label[:1] in "aeiou" else "a"
        # A long list (the reason codes) is named, not spelled out, to keep one short sentence.
        rest = allowed[len(REJECTION_CODES):]
        choices = f"one of {', '.join(allowed)}" if len(allowed) <= 8 else (
            f"a rejection code such as {allowed[0]} or {REJECTION_CODES[-1]} (see docs/debugging.md), "
            f"or {', '.join(rest)}"
        )
        raise FilterError(f"'{value}' is not {article} {label}: use {choices}")


def _like(column: sa.ColumnElement, needle: str) -> sa.ColumnElement[bool]:
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.ilike(f"%{escaped}%", escape="\\")


_TEXT_COLUMNS = (
    "tenant_client_key",
    "tenant_base_url",
    "account_id",
    "path",
    "reason",
    "detail",
    "required_scope",
    "event_id",
    "request_id",
)


def _status_condition(column: sa.ColumnElement, status: str) -> sa.ColumnElement[bool]:
    if status.endswith("xx"):
        low = int(status[0]) * 100
        return sa.and_(column >= low, column < low + 100)
    return column == int(status)


def _column_conditions(flt: EventFilter, c: Any) -> list[sa.ColumnElement[bool]]:
    """The filter's plain column tests, shared by the log and the rollup tables."""
    conds = [c[name] == getattr(flt, name)
             for name in ("direction", "identity_kind", "account_id", "method", "outcome", "reason")
             if getattr(flt, name)]
    if flt.platform:
        forge = c.auth_method.in_(ev.FORGE_AUTH_METHODS)
        conds.append(forge if flt.platform == ev.FORGE else sa.not_(forge))
    if flt.scope:
        conds.append(c.required_scope == flt.scope)
    if flt.status:
        conds.append(_status_condition(c.status, flt.status))
    return conds


def where_clause(flt: EventFilter, table: sa.Table = EVENTS) -> sa.ColumnElement[bool]:
    """The filter as one SQL condition over ``audit_events`` (``true`` when nothing is set)."""
    c = table.c
    conds: list[sa.ColumnElement[bool]] = []
    if flt.since is not None:
        conds.append(c.ts >= flt.since)
    if flt.until is not None:
        conds.append(c.ts < flt.until)
    if flt.tenant:
        if flt.tenant.startswith("http"):
            conds.append(c.tenant_base_url == flt.tenant.rstrip("/"))
        else:
            conds.append(c.tenant_client_key == flt.tenant)
    conds += _column_conditions(flt, c)
    if flt.path_contains:
        conds.append(_like(c.path, flt.path_contains))
    if flt.text:
        conds.append(sa.or_(*(_like(c[name], flt.text) for name in _TEXT_COLUMNS)))
    return sa.and_(sa.true(), *conds)


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


# --------------------------------------------------------------------------- rows

#: Columns of a listing row (the activity table); the detail adds the rest.
LIST_COLUMNS = (
    "seq",
    "event_id",
    "ts",
    "direction",
    "event_type",
    "tenant_client_key",
    "tenant_base_url",
    "platform",
    "auth_method",
    "identity_kind",
    "account_id",
    "method",
    "path",
    "required_scope",
    "status",
    "outcome",
    "reason",
    "latency_ms",
)


@dataclass(frozen=True, slots=True)
class Cursor:
    """The keyset position after which the next page starts (newest first)."""

    ts: datetime
    seq: int

    def encode(self) -> str:
        return f"{_iso(self.ts)}~{self.seq}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            stamp, seq = text.rsplit("~", 1)
            return cls(parse_time(stamp), int(seq))
        except (ValueError, FilterError):
            raise FilterError(f"'{text}' is not a page cursor") from None


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[dict[str, Any]]
    next_cursor: Cursor | None


def _order_desc(table: sa.Table = EVENTS) -> tuple[sa.ColumnElement, ...]:
    return (table.c.ts.desc(), table.c.seq.desc())


def _after(cursor: Cursor, table: sa.Table = EVENTS) -> sa.ColumnElement[bool]:
    # Spelled as OR rather than a row value so that both backends use the ts index.
    c = table.c
    return sa.or_(c.ts < cursor.ts, sa.and_(c.ts == cursor.ts, c.seq < cursor.seq))


def page(
    source: Any,
    flt: EventFilter,
    *,
    after: Cursor | None = None,
    limit: int = 50,
    columns: Sequence[str] = LIST_COLUMNS,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT,
) -> Page:
    """One page of matching events, newest first, and the cursor of the next page (or None)."""
    limit = max(1, min(int(limit), 1000))
    cond = where_clause(flt)
    if after is not None:
        cond = sa.and_(cond, _after(after))
    stmt = (
        sa.select(*(EVENTS.c[name] for name in columns))
        .where(cond)
        .order_by(*_order_desc())
        .limit(limit + 1)
    )
    with reading(source, time_limit_s) as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = Cursor(rows[-1]["ts"], rows[-1]["seq"]) if more and rows else None
    return Page(rows, nxt)


def get_event(source: Any, event_id: str) -> dict[str, Any] | None:
    """Every column of one event, or None."""
    with reading(source) as conn:
        row = conn.execute(sa.select(EVENTS).where(EVENTS.c.event_id == event_id)).first()
    return dict(row._mapping) if row else None


def count(source: Any, flt: EventFilter, *, time_limit_s: float | None = DEFAULT_TIME_LIMIT) -> int:
    """How many events match (rollups for whole hours when the filter allows it)."""
    return sum(n for _, n in aggregate(source, flt, ("outcome",), time_limit_s=time_limit_s))


def iter_rows(
    source: Any,
    flt: EventFilter,
    *,
    columns: Sequence[str] | None = None,
    batch: int = 5000,
    newest_first: bool = False,
) -> Iterator[sa.Row]:
    """Every matching row, streamed: a server-side cursor on PostgreSQL, a lazy cursor on SQLite.

    Memory stays bounded by ``batch`` whatever the row count. Rows come in chain order
    (``seq`` ascending) unless ``newest_first``. No time limit: exports are long by nature.
    """
    cols = [EVENTS.c[name] for name in columns] if columns else [EVENTS]
    order = _order_desc() if newest_first else (EVENTS.c.seq.asc(),)
    stmt = sa.select(*cols).where(where_clause(flt)).order_by(*order)
    with connect(source) as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch).execute(stmt)
        try:
            yield from result
        finally:
            result.close()


def bounds(source: Any) -> dict[str, Any]:
    """The oldest and newest event kept, the highest seq and the event count estimate."""
    c = EVENTS.c
    with reading(source) as conn:
        oldest = conn.execute(sa.select(c.ts).order_by(c.ts.asc()).limit(1)).scalar()
        newest = conn.execute(sa.select(c.ts).order_by(c.ts.desc()).limit(1)).scalar()
        last_seq = conn.execute(sa.select(sa.func.max(c.seq))).scalar()
        first_seq = conn.execute(sa.select(sa.func.min(c.seq))).scalar()
    return {"oldest": oldest, "newest": newest, "first_seq": first_seq, "last_seq": last_seq}


def distinct_values(source: Any, column: str, *, limit: int = 500) -> list[str]:
    """Values seen for a low-cardinality column, read from the rollup (cheap at any size)."""
    table = ACTORS if column == "account_id" else DAILY_ROLLUP  # the smallest that has it
    col = table.c[column]
    stmt = sa.select(col).where(col != "").group_by(col).order_by(col).limit(limit)
    with reading(source) as conn:
        return [r[0] for r in conn.execute(stmt)]


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


# --------------------------------------------------------------------------- aggregates

#: The virtual grouping key "hour" (epoch hour) is allowed besides the stored dimensions.
HOUR = "hour"


def _hour_split(flt: EventFilter) -> tuple[float, float]:
    """The whole hours inside [since, until): rollup hours are lo <= h < hi."""
    lo = -math.inf if flt.since is None else math.ceil(flt.since.timestamp() / 3600)
    hi = math.inf if flt.until is None else math.floor(flt.until.timestamp() / 3600)
    return lo, hi


def _cover(lo: float, hi: float, tiers: Sequence[Rollup], out: list) -> None:
    """Split the whole hours [lo, hi) into ``(rollup, lo, hi)`` segments, coarsest first:
    whole days from the daily rollup, the hours around them from the hourly one."""
    rollup, finer = tiers[0], tiers[1:]
    if not finer:
        out.append((rollup, lo, hi))
        return
    g = rollup.grain_h
    a = lo if lo == -math.inf else math.ceil(lo / g) * g
    b = hi if hi == math.inf else math.floor(hi / g) * g
    if a >= b:
        _cover(lo, hi, finer, out)
        return
    out.append((rollup, a, b))
    for x, y in ((lo, a), (b, hi)):
        if x < y:
            _cover(x, y, finer, out)


def _tiers(actors: bool, step_h: int) -> tuple[Rollup, ...]:
    """The rollups that can answer, coarsest first: days only when buckets are whole days."""
    if actors:
        return (ACTOR_HOURLY,)
    return (DAILY, HOURLY) if step_h % 24 == 0 else (HOURLY,)


def _rollup_where(flt: EventFilter, rollup: Rollup, lo: float, hi: float) -> list:
    """The filter over one rollup's segment of whole hours [lo, hi)."""
    c = rollup.table.c
    conds: list = []
    if lo != -math.inf:
        conds.append(c[rollup.key] >= int(lo) // rollup.grain_h)
    if hi != math.inf:
        conds.append(c[rollup.key] < int(hi) // rollup.grain_h)
    if flt.tenant:
        conds.append(c.tenant_client_key == flt.tenant)
    conds += _column_conditions(flt, c)
    return conds


def _rollup_key(rollup: Rollup, name: str, step_h: int) -> sa.ColumnElement:
    if name != HOUR:
        return rollup.table.c[name]
    hour = rollup.table.c[rollup.key]
    if rollup.grain_h > 1:
        hour = hour * rollup.grain_h
    if step_h > rollup.grain_h:
        hour = hour // step_h * step_h
    return hour.label(HOUR)


def _raw_group(
    conn: sa.Connection, flt: EventFilter, by: Sequence[str], extra: sa.ColumnElement | None,
    step_h: int = 1,
) -> Iterable[tuple]:
    dialect = conn.dialect.name
    keys = [
        _hour_expr(dialect, EVENTS.c.ts, step_h).label(HOUR) if k == HOUR else _dim_expr(k).label(k)
        for k in by
    ]
    cond = where_clause(flt)
    if extra is not None:
        cond = sa.and_(cond, extra)
    stmt = sa.select(*keys, sa.func.count()).where(cond).group_by(*keys)
    return conn.execute(stmt)


@dataclass
class _Plan:
    """Where each part of a range is read: rollup segments, and filters over the raw log."""

    segments: list[tuple[Rollup, float, float]]
    raw: list[tuple[EventFilter, sa.ColumnElement[bool]]]


def _plan(conn: sa.Connection, flt: EventFilter, tiers: Sequence[Rollup]) -> _Plan:
    """Whole days and hours from the rollups; from the log, the partial hours at the
    range's edges and, inside each segment, the tail its rollup has not folded yet.

    The tail makes aggregates exact whatever the rollups' lag; it is small because the
    recorder and the dashboard fold continually (:func:`refresh_rollups`). A filter the
    rollups cannot answer, or a range inside one hour, is read from the log whole.
    """
    lo, hi = _hour_split(flt)
    if flt.raw_only_fields(tiers[0].dims) or lo >= hi:
        return _Plan([], [(flt, sa.true())])
    segments: list[tuple[Rollup, float, float]] = []
    _cover(lo, hi, tiers, segments)
    raw = [(edge, sa.true()) for edge in _edges(flt, lo, hi)]
    last, marks = _watermarks(conn)
    for rollup, a, b in segments:
        folded = marks.get(rollup.name) or 0
        if last > folded:
            middle = flt.replace(
                since=None if a == -math.inf else datetime.fromtimestamp(a * 3600, UTC),
                until=None if b == math.inf else datetime.fromtimestamp(b * 3600, UTC),
            )
            raw.append((middle, EVENTS.c.seq > folded))
    return _Plan(segments, raw)


def aggregate(
    source: Any,
    flt: EventFilter,
    by: Sequence[str],
    *,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT,
    actors: bool = False,
    step_h: int = 1,
) -> list[tuple[tuple, int]]:
    """Counts of matching events grouped by ``by`` (dimension names and/or ``"hour"``).

    Returns ``[(key_tuple, count)]`` with '' / 0 turned back into None. Whole days and hours
    come from the rollups, partial edge hours and raw-only filters from the log itself, so
    the counts are exact. ``actors`` reads the per-account rollup (rows with an accountId).
    ``step_h`` rounds ``"hour"`` down to a multiple of that many hours (a chart's bucket);
    whole-day buckets let whole days come from the daily rollup.
    """
    tiers = _tiers(actors, step_h if HOUR in by else 24)
    unknown = [k for k in by if k != HOUR and k not in tiers[0].dims]
    if unknown:
        raise ValueError(f"cannot group by {unknown}")
    totals: dict[tuple, int] = defaultdict(int)
    actor_cond = EVENTS.c.account_id.is_not(None) if actors else None
    with reading(source, time_limit_s) as conn:
        plan = _plan(conn, flt, tiers)
        for rollup, lo, hi in plan.segments:
            keys = [_rollup_key(rollup, k, step_h) for k in by]
            stmt = (
                sa.select(*keys, sa.func.sum(rollup.table.c.n))
                .where(*_rollup_where(flt, rollup, lo, hi))
                .group_by(*keys)
            )
            for *key, n in conn.execute(stmt):
                totals[tuple(key)] += int(n)
        for part, cond in plan.raw:
            extra = cond if actor_cond is None else sa.and_(cond, actor_cond)
            for *key, n in _raw_group(conn, part, by, extra, step_h):
                totals[tuple(key)] += n
    out = [(tuple(None if v in ("", 0) else v for v in key), n) for key, n in totals.items() if n]
    out.sort(key=lambda item: -item[1])
    return out


def _edges(flt: EventFilter, lo: float, hi: float) -> list[EventFilter]:
    edges = []
    if lo != -math.inf and flt.since is not None:
        start = datetime.fromtimestamp(lo * 3600, UTC)
        if flt.since < start:
            edges.append(flt.replace(until=start))
    if hi != math.inf and flt.until is not None:
        end = datetime.fromtimestamp(hi * 3600, UTC)
        if end < flt.until:
            edges.append(flt.replace(since=end))
    return edges


def _none(value: Any) -> Any:
    return None if value in ("", 0) else value


def facets(
    source: Any,
    flt: EventFilter,
    dims: Sequence[str] = ("outcome", "direction", "identity_kind", "tenant_client_key", "reason",
                           "status", "method"),
    *,
    top: int = 12,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT,
) -> dict[str, list[tuple[Any, int]]]:
    """Counts per value of each dimension under the filter, in one grouped read."""
    rows = aggregate(source, flt, dims, time_limit_s=time_limit_s)
    out: dict[str, dict[Any, int]] = {d: defaultdict(int) for d in dims}
    for key, n in rows:
        for dim, value in zip(dims, key, strict=True):
            out[dim][value] += n
    return {d: sorted(v.items(), key=lambda kv: -kv[1])[:top] for d, v in out.items()}


def bucket_seconds(flt: EventFilter, *, oldest: datetime | None = None) -> int:
    """A chart bucket that gives roughly 24 to 100 bars over the range: hour, 6 hours or day.

    Ranges over two weeks get whole UTC days, which the daily rollup answers directly.
    """
    start = flt.since or oldest
    end = flt.until or datetime.now(UTC)
    span = (end - start).total_seconds() if start else 30 * 86400
    if span <= 4 * 86400:
        return 3600
    if span <= 14 * 86400:
        return 6 * 3600
    return 86400


def series(
    source: Any,
    flt: EventFilter,
    by: str,
    *,
    bucket_s: int = 3600,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT,
    actors: bool = False,
) -> list[tuple[datetime, Any, int]]:
    """Counts per time bucket (a multiple of an hour) and per value of ``by``, oldest first."""
    per = max(1, bucket_s // 3600)
    rows = aggregate(source, flt, (HOUR, by), time_limit_s=time_limit_s, actors=actors, step_h=per)
    return [
        (datetime.fromtimestamp(int(hour or 0) * 3600, UTC), value, n)
        for (hour, value), n in sorted(rows, key=lambda kv: (int(kv[0][0] or 0), str(kv[0][1])))
    ]


def top_values(
    source: Any, flt: EventFilter, by: Sequence[str], *, n: int = 10,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT,
) -> list[tuple[tuple, int]]:
    """The ``n`` most frequent combinations of ``by`` under the filter."""
    return aggregate(source, flt, by, time_limit_s=time_limit_s)[:n]


def summary(source: Any, flt: EventFilter, *, time_limit_s: float | None = DEFAULT_TIME_LIMIT
            ) -> dict[str, Any]:
    """Totals for a range: events, tenants, outcome counts, rejection and 403 rates."""
    rows = aggregate(source, flt, ("outcome", "tenant_client_key"), time_limit_s=time_limit_s)
    total = sum(n for _, n in rows)
    by_outcome: dict[str, int] = defaultdict(int)
    tenants = set()
    for (outcome, tenant), n in rows:
        by_outcome[outcome] += n
        if tenant:
            tenants.add(tenant)

    def rate(outcome: str) -> float:
        return by_outcome.get(outcome, 0) / total if total else 0.0

    return {
        "events": total,
        "tenants": len(tenants),
        "outcomes": dict(by_outcome),
        "rejection_rate": rate(ev.REJECTED),
        "denial_rate": rate(ev.DENIED),
        "error_rate": rate(ev.ERROR),
    }


def denial_split(source: Any, flt: EventFilter, *, n: int = 20,
                 time_limit_s: float | None = DEFAULT_TIME_LIMIT) -> dict[str, Any]:
    """403s by who refused and why.

    The product's refusals of the app's own calls (outgoing) are split by cause: ``scope``
    with the scope to add, ``permission`` per endpoint; ``by_reason`` counts only those.
    The refusals the app answered to an incoming request are kept apart (``answered``),
    with their cause: when the app passes a product 403 on, the same refusal is also an
    outgoing row, and counting both would count it twice.
    """
    denied = flt.replace(outcome=ev.DENIED)
    rows = aggregate(
        source, denied,
        ("direction", "reason", "tenant_client_key", "required_scope", "method", "path_template"),
        time_limit_s=time_limit_s,
    )
    by_reason: dict[str, int] = defaultdict(int)
    scope_rows, permission_rows, answered = [], [], []
    for (direction, reason, tenant, scope, method, template), count_ in rows:
        item = {"tenant": tenant, "scope": scope, "method": method, "path_template": template,
                "count": count_}
        if direction != ev.OUTGOING:
            answered.append({**item, "direction": direction, "reason": reason})
            continue
        by_reason[reason or "unclassified"] += count_
        (scope_rows if reason == ev.SCOPE else permission_rows).append(item)
    return {"by_reason": dict(by_reason), "scope": scope_rows[:n], "permission": permission_rows[:n],
            "answered": answered[:n], "answered_total": sum(r["count"] for r in answered)}


def who_acted(source: Any, flt: EventFilter, *, n: int | None = 50,
              time_limit_s: float | None = DEFAULT_TIME_LIMIT) -> list[dict[str, Any]]:
    """Per tenant and endpoint, how many calls ran as the app user, as users, anonymously.

    Largest first; ``n=None`` returns every row (their sums are the identity split).
    """
    rows = aggregate(source, flt, ("tenant_client_key", "method", "path_template", "identity_kind"),
                     time_limit_s=time_limit_s)
    table: dict[tuple, dict[str, Any]] = {}
    for (tenant, method, template, kind), count_ in rows:
        key = (tenant, method, template)
        entry = table.setdefault(key, {"tenant": tenant, "method": method,
                                       "path_template": template, ev.APP_USER: 0, ev.USER: 0,
                                       ev.ANONYMOUS: 0, "total": 0})
        entry[kind or ev.ANONYMOUS] = entry.get(kind or ev.ANONYMOUS, 0) + count_
        entry["total"] += count_
    ranked = sorted(table.values(), key=lambda e: -e["total"])
    return ranked if n is None else ranked[:n]


def acting_users(source: Any, flt: EventFilter, *, n: int = 100,
                 time_limit_s: float | None = DEFAULT_TIME_LIMIT) -> list[dict[str, Any]]:
    """The accounts the app acted as (or that called it), per tenant: count, first and last seen."""
    rows: list[tuple] = []
    with reading(source, time_limit_s) as conn:
        plan = _plan(conn, flt, (ACTOR_HOURLY,))
        c = ACTORS.c
        keys = (c.tenant_client_key, c.account_id, c.identity_kind)
        for rollup, lo, hi in plan.segments:
            stmt = (
                sa.select(*keys, sa.func.sum(c.n), sa.func.min(c.first_ts), sa.func.max(c.last_ts))
                .where(*_rollup_where(flt, rollup, lo, hi))
                .group_by(*keys)
            )
            rows.extend(conn.execute(stmt))
        for part, cond in plan.raw:
            rows.extend(_acting_raw(conn, part, cond))
    merged: dict[tuple, dict[str, Any]] = {}
    for tenant, account, kind, count_, first, last in rows:
        first, last = _as_utc(first), _as_utc(last)
        key = (tenant or "", account, kind or "")
        entry = merged.get(key)
        if entry is None:
            merged[key] = {"tenant": _none(tenant), "account_id": account, "identity_kind": kind,
                           "count": int(count_), "first_seen": first, "last_seen": last}
        else:
            entry["count"] += int(count_)
            entry["first_seen"] = min(entry["first_seen"], first)
            entry["last_seen"] = max(entry["last_seen"], last)
    return sorted(merged.values(), key=lambda e: -e["count"])[:n]


def _acting_raw(
    conn: sa.Connection, flt: EventFilter, extra: sa.ColumnElement | None = None
) -> list[tuple]:
    c = EVENTS.c
    keys = (_dim_expr("tenant_client_key"), c.account_id, _dim_expr("identity_kind"))
    stmt = (
        sa.select(*keys, sa.func.count(), sa.func.min(c.ts), sa.func.max(c.ts))
        .where(where_clause(flt), c.account_id.is_not(None), sa.true() if extra is None else extra)
        .group_by(*keys)
    )
    return list(conn.execute(stmt))


def _as_utc(value: Any) -> datetime | None:
    """min()/max() over a SQLite text column come back as text; make them datetimes."""
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def overview(
    source: Any, flt: EventFilter, *, bucket_s: int = 3600, n: int = 10,
    time_limit_s: float | None = DEFAULT_TIME_LIMIT,
) -> dict[str, Any]:
    """Everything the overview shows, from two grouped reads instead of five.

    One read by (hour, outcome, tenant) yields the totals, the rates, the series and the top
    tenants; one by (method, template, reason) yields the top endpoints and reasons.
    """
    per = max(1, bucket_s // 3600)
    outcomes: dict[str, int] = defaultdict(int)
    tenants: dict[Any, int] = defaultdict(int)
    buckets: dict[tuple[int, Any], int] = defaultdict(int)
    for (hour, outcome, tenant), count_ in aggregate(
        source, flt, (HOUR, "outcome", "tenant_client_key"), time_limit_s=time_limit_s, step_h=per
    ):
        outcomes[outcome] += count_
        tenants[tenant] += count_
        buckets[(int(hour or 0), outcome)] += count_
    endpoints: dict[tuple, int] = defaultdict(int)
    reasons: dict[Any, int] = defaultdict(int)
    for (method, template, reason), count_ in aggregate(
        source, flt, ("method", "path_template", "reason"), time_limit_s=time_limit_s
    ):
        endpoints[(method, template)] += count_
        if reason is not None:
            reasons[reason] += count_
    total = sum(outcomes.values())

    def top(counts: dict) -> list[tuple[Any, int]]:
        return sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]

    return {
        "events": total,
        "tenants": sum(1 for t in tenants if t),
        "outcomes": dict(outcomes),
        "rates": {o: (outcomes.get(o, 0) / total if total else 0.0) for o in ev.OUTCOMES},
        "series": [
            (datetime.fromtimestamp(h * 3600, UTC), o, c)
            for (h, o), c in sorted(buckets.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))
        ],
        "top_tenants": top(tenants),
        "top_endpoints": top(endpoints),
        "top_reasons": top(reasons),
    }


def count_at_most(
    source: Any, flt: EventFilter, cap: int, *, time_limit_s: float | None = DEFAULT_TIME_LIMIT
) -> tuple[int, bool]:
    """``(n, exact)``: the match count, or ``(cap, False)`` when there are more than ``cap``.

    Filters the rollups can answer are counted exactly (cheap at any size); free-text and
    substring filters stop scanning after ``cap`` matches.
    """
    if not flt.raw_only_fields(ROLLUP_DIMS):
        return count(source, flt, time_limit_s=time_limit_s), True
    inner = sa.select(EVENTS.c.seq).where(where_clause(flt)).limit(cap + 1).subquery()
    with reading(source, time_limit_s) as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(inner)).scalar() or 0
    return (n, True) if n <= cap else (cap, False)


def internal_events(source: Any, event_type: str | None = None, *, limit: int = 20
                    ) -> list[dict[str, Any]]:
    """The tool's own acts (exports, purges), newest first.

    They carry no tenant, so ``tenant_client_key IS NULL`` lets the (tenant, ts) index find
    them without walking a busy log backwards.
    """
    c = EVENTS.c
    conds = [c.tenant_client_key.is_(None), c.direction == ev.INTERNAL]
    if event_type:
        conds.append(c.event_type == event_type)
    stmt = (
        sa.select(*(c[name] for name in (*LIST_COLUMNS, "detail", "extra")))
        .where(*conds)
        .order_by(*_order_desc())
        .limit(limit)
    )
    with reading(source) as conn:
        return [dict(r._mapping) for r in conn.execute(stmt)]
