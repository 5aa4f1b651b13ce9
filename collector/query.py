"""Reading the audit log: keyset pages, streaming, and aggregates over the rollups.

This module is the reads, shared by ``connect-audit export`` and the dashboard (through
``dashboard/queries.py``), so both answer the same question with the same SQL. It builds on
three rooms, whose names it re-exports so that callers keep one import:

* :mod:`collector.filters`: :class:`EventFilter` and its SQL (:func:`where_clause`);
* :mod:`collector.database`: connections and the statement time limit (:func:`reading`);
* :mod:`collector.rollups`: the rollup tables and their upkeep (:func:`refresh_rollups`).

Pages are keyset pages on ``(ts, seq)`` descending, so page 1000 costs what page 1 does;
aggregates read whole days and hours from the rollups and only the edges from the log.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from collector import events as ev
from collector.database import (
    ACTORS,
    DAILY_ROLLUP,
    DEFAULT_TIME_LIMIT,
    EVENTS,
    ROLLUP,
    STATE,
    connect,
    reading,
    time_limit,
)
from collector.errors import FilterError, QueryTimeout
from collector.filters import REASONS, EventFilter, _column_conditions, _iso, parse_time, where_clause
from collector.rollups import (
    ACTOR_DIMS,
    ACTOR_HOURLY,
    DAILY,
    FOLD_STEP,
    HOURLY,
    ROLLUP_DIMS,
    ROLLUPS,
    Rollup,
    _dim_expr,
    _hour_expr,
    _watermarks,
    refresh_rollups,
    rollup_lag,
)

#: The readers' one import: this module's reads, and the names of the rooms it builds on.
__all__ = [  # noqa: RUF022 - grouped by the room each name comes from
    # collector.filters
    "REASONS", "EventFilter", "FilterError", "parse_time", "where_clause",
    # collector.database
    "ACTORS", "DAILY_ROLLUP", "DEFAULT_TIME_LIMIT", "EVENTS", "ROLLUP", "STATE", "QueryTimeout", "connect",
    "reading", "time_limit",
    # collector.rollups
    "ACTOR_DIMS", "ACTOR_HOURLY", "DAILY", "FOLD_STEP", "HOURLY", "ROLLUPS", "ROLLUP_DIMS", "Rollup",
    "refresh_rollups", "rollup_lag",
    # the reads
    "LIST_COLUMNS", "Cursor", "Page", "acting_users", "aggregate", "bounds", "bucket_seconds", "count",
    "count_at_most", "denial_split", "distinct_values", "facets", "get_event", "internal_events", "iter_rows",
    "overview", "page", "series", "summary", "top_values", "who_acted",
]

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

