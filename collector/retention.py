"""Retention: remove old events without breaking the chain's verifiability.

A purge removes a *prefix* of the chain: every event up to the newest ``seq`` such that it
and all events before it are older than the cutoff. (An old event written after a newer one,
by a slow instance say, is kept until everything before it can go too: the chain can only
lose its beginning.) In the same write transaction it appends a ``purge`` event
(``direction="internal"``) whose ``extra`` records the anchor: the ``seq`` and ``hash`` of
the last removed event. :func:`collector.chain.verify` accepts an oldest event whose
``prev_hash`` matches a recorded anchor, and nothing else, so a deletion that is not a
recorded purge is still caught. Checkpoints of removed events and expired replay keys go
too.

On PostgreSQL, whose events table is partitioned by month (:mod:`collector.partitions`),
the months of the prefix that hold nothing else are detached and dropped whole, and only the
prefix's remaining rows are deleted one by one.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from collector import chain, files, partitions
from collector.errors import ConfigurationError, StoreUnavailable
from collector.events import INTERNAL, NO_AUTH, AuditRecord
from collector.models import ReplayKey
from collector.store import Store

EVENTS = chain.EVENTS


@dataclass(frozen=True)
class PurgePlan:
    """What a purge with this cutoff would remove (computed without writing)."""

    cutoff: datetime
    up_to_seq: int  # 0: nothing to remove
    removed: int
    oldest_removed: datetime | None
    newest_removed: datetime | None
    oldest_kept: datetime | None


@dataclass(frozen=True)
class PurgeResult:
    plan: PurgePlan
    event_id: str | None  # the recorded purge event (None when nothing was removed)
    #: The month partitions detached and dropped whole (PostgreSQL), oldest first.
    dropped_partitions: tuple[str, ...] = ()


def plan(store: Store, older_than: timedelta, *, now: datetime | None = None) -> PurgePlan:
    """Compute what :func:`purge` would remove, for a confirmation prompt."""
    with store.engine.connect() as conn:
        return _plan(conn, (now or datetime.now(UTC)) - older_than)


def _plan(conn: sa.Connection, cutoff: datetime) -> PurgePlan:
    return _plan_up_to(conn, _last_before(conn, cutoff), cutoff)


def _last_before(conn: sa.Connection, cutoff: datetime) -> int:
    """The newest seq such that it and every event before it are older than ``cutoff``."""
    first_new = conn.execute(sa.select(sa.func.min(EVENTS.c.seq)).where(EVENTS.c.ts >= cutoff)).scalar()
    if first_new is None:
        first_new = (conn.execute(sa.select(sa.func.max(EVENTS.c.seq))).scalar() or 0) + 1
    return first_new - 1


def _plan_up_to(conn: sa.Connection, up_to: int, cutoff: datetime) -> PurgePlan:
    stats = conn.execute(
        sa.select(sa.func.count(), sa.func.min(EVENTS.c.ts), sa.func.max(EVENTS.c.ts)).where(
            EVENTS.c.seq <= up_to
        )
    ).first()
    removed = stats[0] if stats else 0
    oldest_kept = _oldest_kept(conn, up_to)
    return PurgePlan(
        cutoff=cutoff,
        up_to_seq=up_to if removed else 0,
        removed=removed,
        oldest_removed=stats[1] if removed else None,
        newest_removed=stats[2] if removed else None,
        oldest_kept=_aware(oldest_kept),
    )


def _oldest_kept(conn: sa.Connection, up_to: int) -> datetime | None:
    """The oldest ``ts`` after the prefix. On a partitioned store, month by month from the
    oldest, passing by the months the prefix holds whole (their newest seq says so at once):
    read through the whole table's time index, the months about to go cost a scan of every
    one of their rows first (0.3 s a million)."""
    for part, newest in partitions.newest_seqs(conn):
        if newest > up_to:
            return conn.exec_driver_sql(
                f'SELECT min(ts) FROM "{part.name}" WHERE seq > %(n)s', {"n": up_to}).scalar()  # noqa: S608
    # SQLite, an unpartitioned store, or kept rows only in a partition not of ours: the table
    return conn.execute(sa.select(sa.func.min(EVENTS.c.ts)).where(EVENTS.c.seq > up_to)).scalar()


def purge(
    store: Store,
    older_than: timedelta,
    *,
    now: datetime | None = None,
    instance_id: str | None = None,
    checkpoint_key: chain.CheckpointKey | None = None,
) -> PurgeResult:
    """Remove the events older than ``older_than`` (a chain prefix) and record the purge."""
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    now = now or datetime.now(UTC)
    key = checkpoint_key or chain.CheckpointKey.for_store(store)
    with store.write_transaction() as conn:
        the_plan = _plan(conn, now - older_than)
        if not the_plan.removed:
            return PurgeResult(the_plan, None)
        extra = {"older_than_days": older_than.total_seconds() / 86400}
        event_id, dropped = _remove(conn, the_plan, now=now, key=key, instance_id=instance_id, extra=extra)
    return PurgeResult(the_plan, event_id, dropped)


def _remove(conn: sa.Connection, the_plan: PurgePlan, *, now: datetime, key: chain.CheckpointKey,
            instance_id: str | None, extra: dict[str, Any],
            why: str | None = None) -> tuple[str, tuple[str, ...]]:
    """In the caller's chain-lock transaction: delete the plan's prefix, append the purge event
    naming its anchor, sign the new head; returns the purge event's id and the partitions
    dropped whole."""
    last = sa.select(EVENTS.c.hash).where(EVENTS.c.seq == the_plan.up_to_seq)
    anchor_hash = conn.execute(last).scalar_one()
    dropped = _drop_whole_months(conn, the_plan.up_to_seq, the_plan.cutoff)
    if dropped:
        extra = {**extra, "dropped_partitions": dropped}
    # (what the dropped months held is gone already; this takes the prefix's other rows)
    conn.execute(sa.delete(EVENTS).where(EVENTS.c.seq <= the_plan.up_to_seq))
    conn.execute(sa.delete(chain.CHECKPOINTS).where(chain.CHECKPOINTS.c.seq <= the_plan.up_to_seq))
    conn.execute(sa.delete(ReplayKey.__table__).where(ReplayKey.__table__.c.expires_at < now))
    record = AuditRecord(
        direction=INTERNAL,
        outcome="allowed",
        auth_method=NO_AUTH,
        event_type=chain.PURGE_EVENT,
        ts=now,
        instance_id=instance_id,
        detail=why or f"removed {the_plan.removed} events older than {the_plan.cutoff.isoformat()}",
        extra={
            "cutoff": chain.ts_text(the_plan.cutoff),
            **extra,
            "removed": the_plan.removed,
            "anchor_seq": the_plan.up_to_seq,
            "anchor_hash": anchor_hash,
            "oldest_removed": chain.ts_text(_aware(the_plan.oldest_removed)),
            "newest_removed": chain.ts_text(_aware(the_plan.newest_removed)),
        },
    )
    row = chain.event_row(record, instance_id)
    new_head = chain.append(conn, [row])
    # Sign the new head at once: the purge event itself must not be truncatable.
    chain.write_checkpoint(conn, key, new_head, now)
    return row["event_id"], tuple(dropped)


#: How long a month's drop waits for the readers of the events table (seconds). Detaching
#: a partition takes the table's ACCESS EXCLUSIVE lock, which waits for running queries (an
#: export, say) and, once waiting, holds new ones back: better to give up and retry later.
DROP_LOCK_TIMEOUT = 10.0
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock_timeout that ran out


def _drop_whole_months(conn: sa.Connection, up_to: int, cutoff: datetime) -> list[str]:
    """On a partitioned PostgreSQL store, detach and drop every month partition that ends
    before ``cutoff`` and holds only events of the prefix being removed; their names.

    A month is dropped whole only when every one of its rows is in the prefix (``seq`` up to
    ``up_to``): a late or imported row with an old ``ts`` and a new ``seq`` keeps its month
    until the prefix reaches it, and the prefix's rows in other months are deleted one by one.
    """
    whole = [p for p, newest in partitions.newest_seqs(conn) if p.upper <= cutoff and newest <= up_to]
    if not whole:
        return []
    previous = conn.exec_driver_sql("SHOW lock_timeout").scalar()
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(DROP_LOCK_TIMEOUT * 1000)}ms'")
    for part in whole:
        try:
            partitions.drop(conn, part)
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            raise StoreUnavailable(
                f"retention could not drop {part.name}: queries held the events table for more "
                f"than {DROP_LOCK_TIMEOUT:g} s (a long export?); nothing was removed, and the next "
                "run tries again"
            ) from exc
    conn.execute(sa.text("SELECT set_config('lock_timeout', :v, true)"), {"v": previous})
    return [p.name for p in whole]


# --------------------------------------------------------------------------- the policy

DAYS_ENV = "CONNECT_AUDIT_RETENTION_DAYS"
MAX_EVENTS_ENV = "CONNECT_AUDIT_RETENTION_MAX_EVENTS"
ARCHIVE_ENV = "CONNECT_AUDIT_RETENTION_ARCHIVE"
#: Events removed per transaction: each holds the chain's write lock for a moment only, so
#: the recorder's batches go in between the steps of a large first purge.
CHUNK = 5_000


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep ``days`` days of events and at most ``max_events`` (either or both), archiving
    what goes to ``archive_dir`` first when it is set."""

    days: float | None = None
    max_events: int | None = None
    archive_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.days is None and self.max_events is None:
            raise ConfigurationError("a retention policy needs days, max_events or both")
        if self.days is not None and not 0 < self.days < float("inf"):
            raise ConfigurationError(f"retention days must be a positive number, not {self.days!r}")
        if self.max_events is not None and self.max_events < 1:
            raise ConfigurationError(f"retention max_events must be at least 1, not {self.max_events!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetentionPolicy | None:
        """The policy ``CONNECT_AUDIT_RETENTION_DAYS`` / ``_MAX_EVENTS`` / ``_ARCHIVE`` set (None: none)."""
        env = os.environ if env is None else env
        days, budget, archive = (env.get(n, "").strip() for n in (DAYS_ENV, MAX_EVENTS_ENV, ARCHIVE_ENV))
        if not days and not budget:
            if archive:
                raise ConfigurationError(
                    f"{ARCHIVE_ENV} is set but neither {DAYS_ENV} nor {MAX_EVENTS_ENV} is")
            return None
        try:
            parsed_days = float(days) if days else None
        except ValueError:
            raise ConfigurationError(f"{DAYS_ENV} must be a number of days, not {days!r}") from None
        try:
            parsed_budget = int(budget.replace("_", "")) if budget else None
        except ValueError:
            raise ConfigurationError(f"{MAX_EVENTS_ENV} must be a whole number, not {budget!r}") from None
        return cls(parsed_days, parsed_budget, Path(archive).expanduser().absolute() if archive else None)

    def as_dict(self) -> dict[str, Any]:
        return {"days": self.days, "max_events": self.max_events,
                "archive": str(self.archive_dir) if self.archive_dir else None}

    def describe(self) -> str:
        parts = []
        if self.days is not None:
            parts.append(f"keep {self.days:g} days")
        if self.max_events is not None:
            parts.append(f"at most {self.max_events:,} events")
        text = " and ".join(parts)
        return text + (f"; archive what goes to {self.archive_dir}" if self.archive_dir else "")


@dataclass
class PolicyRun:
    """What one application of the policy removed: one purge event per step."""

    policy: RetentionPolicy
    removed: int = 0
    purges: list[PurgeResult] = field(default_factory=list)
    archives: list[dict[str, Any]] = field(default_factory=list)


def apply_policy(store: Store, policy: RetentionPolicy, *, now: datetime | None = None, chunk: int = CHUNK,
                 instance_id: str | None = None, checkpoint_key: chain.CheckpointKey | None = None,
                 pause: float = 0.0, progress: Any = None) -> PolicyRun:
    """Remove, in steps of ``chunk`` events, what the policy no longer keeps.

    Each step is one purge as :func:`purge` records it (its anchor, a signed checkpoint), with
    the policy and, when archiving, the archive's file, size and SHA-256 in its ``extra``: the
    chain vouches for the archive. ``pause`` seconds between steps leave the lock to writers.
    """
    now = now or datetime.now(UTC)
    key = checkpoint_key or chain.CheckpointKey.for_store(store)
    # (a budget alone removes by count: its purges name the run's time as their cutoff)
    cutoff = now - timedelta(days=policy.days) if policy.days is not None else now
    run = PolicyRun(policy)
    target: int | None = None
    while True:
        with store.write_transaction() as conn:
            first = conn.execute(sa.select(sa.func.min(EVENTS.c.seq))).scalar()
            if target is None:
                # Fixed for the run: each step appends its own purge event, which must not
                # push the event budget's line forward (the run would never end).
                target = _policy_target(conn, policy, cutoff)
            if first is None or target < first:
                return run
            step_end = max(min(target, first + chunk - 1), _whole_month_end(conn, target, cutoff))
            the_plan = _plan_up_to(conn, step_end, cutoff)
            extra: dict[str, Any] = {"policy": policy.as_dict()}
            if policy.archive_dir is not None:
                extra["archive"] = _archive(conn, policy.archive_dir, first, the_plan.up_to_seq)
                run.archives.append(extra["archive"])
            why = (f"retention ({policy.describe()}): removed {the_plan.removed} events "
                   f"up to seq {the_plan.up_to_seq}")
            event_id, dropped = _remove(conn, the_plan, now=now, key=key, instance_id=instance_id,
                                        extra=extra, why=why)
        run.purges.append(PurgeResult(the_plan, event_id, dropped))
        run.removed += the_plan.removed
        if progress:
            progress(run.removed)
        if pause:
            time.sleep(pause)


def _whole_month_end(conn: sa.Connection, target: int, cutoff: datetime) -> int:
    """On a partitioned store, the newest seq of the oldest month that can go whole within
    ``target`` (0: none): a policy step then drops that month instead of deleting ``chunk``
    of its rows, since a drop costs the same moment of the lock whatever the month holds."""
    for part, newest in partitions.newest_seqs(conn):
        if part.upper > cutoff:
            return 0
        if newest:
            return newest if newest <= target else 0
    return 0


def policy_plan(store: Store, policy: RetentionPolicy, *, now: datetime | None = None) -> PurgePlan:
    """What :func:`apply_policy` would remove, in all its steps, for a confirmation prompt."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(days=policy.days) if policy.days is not None else now
    with store.engine.connect() as conn:
        return _plan_up_to(conn, _policy_target(conn, policy, cutoff), cutoff)


def _policy_target(conn: sa.Connection, policy: RetentionPolicy, cutoff: datetime) -> int:
    """The newest seq the policy removes (0: none): by age, by the event budget, or both."""
    target = _last_before(conn, cutoff) if policy.days is not None else 0
    if policy.max_events is not None:
        newest = conn.execute(sa.select(sa.func.max(EVENTS.c.seq))).scalar() or 0
        # seq has no gaps in the kept chain, so the newest max_events are the last ones by seq
        target = max(target, newest - policy.max_events)
    return target


def _archive(conn: sa.Connection, directory: Path, first: int, last: int) -> dict[str, Any]:
    """Write events ``first..last`` as gzip'd NDJSON (every stored column, the chain's own
    ``seq``, ``prev_hash`` and ``hash`` included), fsync'd, before they are deleted."""
    files.private_dir(directory)
    name = f"audit-archive-{first:012d}-{last:012d}.ndjson.gz"
    final, partial = directory / name, directory / (name + ".partial")
    digest, size = hashlib.sha256(), 0
    rows = conn.execute(sa.select(EVENTS).where(EVENTS.c.seq >= first, EVENTS.c.seq <= last)
                        .order_by(EVENTS.c.seq)).mappings()
    with files.open_private(partial, "wb") as raw:
        hashing = _HashingWriter(raw, digest)
        with gzip.GzipFile(filename="", mode="wb", fileobj=hashing, mtime=0) as gz:
            for row in rows:
                doc = dict(row)
                doc["ts"] = chain.ts_text(_aware(doc["ts"]))
                gz.write(json.dumps(doc, sort_keys=True, ensure_ascii=True).encode() + b"\n")
        raw.flush()
        os.fsync(raw.fileno())
        size = hashing.size
    os.replace(partial, final)
    return {"file": name, "sha256": digest.hexdigest(), "bytes": size, "events": last - first + 1,
            "first_seq": first, "last_seq": last}


class _HashingWriter:
    """A file object that hashes and counts the bytes as they are written."""

    def __init__(self, out: Any, digest: Any) -> None:
        self.out, self.digest, self.size = out, digest, 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def _aware(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    if isinstance(ts, str):  # aggregate over a SQLite text column skips the type decorator
        ts = datetime.fromisoformat(ts)
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
