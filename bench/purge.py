"""Retention on PostgreSQL: purging a month by dropping its partition, against deleting its rows.

A template database of ``--events`` generated events (default 1,000,000) from the first of
last month to now is made once and kept (``connect_audit_bench_purge_<N>``): last month is a
whole month of events, the oldest. Each round clones it twice (``CREATE DATABASE ...
TEMPLATE``, not timed) and on the clones times:

* **delete its rows**: the events of the oldest month (the chain prefix before the first
  event of the next month) removed with ``DELETE ... WHERE seq <= N`` in one transaction, what
  a purge on one table costs;
* **connect-audit purge**: ``retention.purge`` with that month's end as cutoff, the real path:
  the anchored purge event, the signed checkpoint, the month's partition detached and dropped,
  the prefix's rows in other months deleted.

They run A B A B (``--rounds``, default 3); the median ratio is printed with its spread, and
``verify`` is run on the purged clone. Needs a role that may create databases.

    .venv/bin/python bench/purge.py --pg-url postgresql+psycopg://USER:PW@HOST/postgres
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import sqlalchemy as sa  # noqa: E402
from _stores import PG_KEYS, pg_clone_rounds, pg_template  # noqa: E402
from _timing import format_ratio, median_spread  # noqa: E402

from collector import partitions  # noqa: E402


def _cutoff(url: str) -> datetime:
    """The end of the oldest month of events."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        oldest = conn.execute(sa.text("SELECT min(ts) FROM audit_events")).scalar()
    engine.dispose()
    return partitions.next_month(partitions.month_of(oldest))


def _since_last_month() -> float:
    """Days from the first of last month to now: the events then fill last month whole."""
    now = datetime.now(UTC)
    last_month = partitions.month_of(partitions.month_of(now) - timedelta(days=1))
    return round((now - last_month).total_seconds() / 86400 - 0.01, 2)


def _delete_rows(url: str, cutoff: datetime) -> tuple[float, int]:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        first_kept = sa.text("SELECT min(seq) - 1 FROM audit_events WHERE ts >= :c")
        up_to = conn.execute(first_kept, {"c": cutoff}).scalar()
    started = time.perf_counter()
    with engine.begin() as conn:
        removed = conn.execute(sa.text("DELETE FROM audit_events WHERE seq <= :n"), {"n": up_to}).rowcount
    elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed, removed


def _purge(url: str, cutoff: datetime) -> tuple[float, int, list[str], bool]:
    import json

    from collector import chain, retention
    from collector.store import Store

    with Store.open(url) as store:
        now = datetime.now(UTC)
        started = time.perf_counter()
        result = retention.purge(store, now - cutoff, now=now)
        elapsed = time.perf_counter() - started
        with store.engine.connect() as conn:
            extra = conn.execute(sa.select(chain.EVENTS.c.extra).where(
                chain.EVENTS.c.event_id == result.event_id)).scalar_one()
        ok = chain.verify(store).ok
    return elapsed, result.plan.removed, json.loads(extra).get("dropped_partitions", []), ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-url", metavar="URL", default=os.environ.get("CONNECT_AUDIT_TEST_PG_URL"),
                        help="a PostgreSQL database URL whose role may create databases "
                             "(default: CONNECT_AUDIT_TEST_PG_URL)")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=_since_last_month(),
                        help="the span generated (default: from the first of last month to now, so "
                             "the oldest month is a whole one)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not args.pg_url:
        print("skipped: PostgreSQL only (give --pg-url or set CONNECT_AUDIT_TEST_PG_URL)")
        return 0
    os.environ["CONNECT_AUDIT_DATA_DIR"] = str(PG_KEYS)
    admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    template = pg_template(admin, args.pg_url, f"connect_audit_bench_purge_{args.events:_}", args.events,
                           args.days)

    def one_round(r: int, delete_url: str, purge_url: str) -> tuple[float, float]:
        cutoff = _cutoff(delete_url)
        t_delete, n_delete = _delete_rows(delete_url, cutoff)
        t_purge, n_purge, dropped, ok = _purge(purge_url, cutoff)
        if n_purge != n_delete or not dropped or not ok:
            raise SystemExit(f"round {r}: purge removed {n_purge:,} (rows deleted: {n_delete:,}), "
                             f"dropped {dropped}, verify {'ok' if ok else 'FAILED'}")
        print(f"  round {r}: {n_delete:,} events before {cutoff:%Y-%m-%d}: delete rows "
              f"{t_delete:.2f} s, purge {t_purge:.2f} s (dropped {', '.join(dropped)}; verify ok)",
              flush=True)
        return t_delete, t_purge

    timed = pg_clone_rounds(admin, args.pg_url, template, args.rounds, ("delete", "purge"), one_round)
    deletes, purges = [t[0] for t in timed], [t[1] for t in timed]
    ratios = [b / a for a, b in timed]
    d, p = median_spread(deletes), median_spread(purges)
    print(f"purge of a month on PostgreSQL: delete its rows {d[0]:.2f} s ({d[1]:.2f} to {d[2]:.2f}), "
          f"connect-audit purge {p[0]:.2f} s ({p[1]:.2f} to {p[2]:.2f}); purge / delete "
          f"{format_ratio(median_spread(ratios), args.rounds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
