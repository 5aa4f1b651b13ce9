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
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from collector import chain
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


def plan(store: Store, older_than: timedelta, *, now: datetime | None = None) -> PurgePlan:
    """Compute what :func:`purge` would remove, for a confirmation prompt."""
    with store.engine.connect() as conn:
        return _plan(conn, (now or datetime.now(UTC)) - older_than)


def _plan(conn: sa.Connection, cutoff: datetime) -> PurgePlan:
    first_new = conn.execute(sa.select(sa.func.min(EVENTS.c.seq)).where(EVENTS.c.ts >= cutoff)).scalar()
    if first_new is None:
        first_new = (conn.execute(sa.select(sa.func.max(EVENTS.c.seq))).scalar() or 0) + 1
    up_to = first_new - 1
    stats = conn.execute(
        sa.select(sa.func.count(), sa.func.min(EVENTS.c.ts), sa.func.max(EVENTS.c.ts)).where(
            EVENTS.c.seq <= up_to
        )
    ).first()
    removed = stats[0] if stats else 0
    oldest_kept = conn.execute(sa.select(sa.func.min(EVENTS.c.ts)).where(EVENTS.c.seq > up_to)).scalar()
    return PurgePlan(
        cutoff=cutoff,
        up_to_seq=up_to if removed else 0,
        removed=removed,
        oldest_removed=stats[1] if removed else None,
        newest_removed=stats[2] if removed else None,
        oldest_kept=_aware(oldest_kept),
    )


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
        anchor_hash = conn.execute(
            sa.select(EVENTS.c.hash).where(EVENTS.c.seq == the_plan.up_to_seq)
        ).scalar_one()
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
            detail=f"removed {the_plan.removed} events older than {the_plan.cutoff.isoformat()}",
            extra={
                "cutoff": chain.ts_text(the_plan.cutoff),
                "older_than_days": older_than.total_seconds() / 86400,
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
    return PurgeResult(the_plan, row["event_id"])


def _aware(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    if isinstance(ts, str):  # aggregate over a SQLite text column skips the type decorator
        ts = datetime.fromisoformat(ts)
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
