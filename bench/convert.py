"""Converting a PostgreSQL store to monthly partitions (migration 0009), against rewriting its table.

A store of ``--events`` generated events (default 1,000,000 over 30 days) at revision 0008,
one plain table, is made once and kept as a template (``connect_audit_bench_0008_<N>``). Each
round clones it twice (not timed) and on the clones times:

* **rewrite the table**: the floor of any conversion that keeps every row: in one transaction,
  a new plain table ``(LIKE audit_events)`` filled by ``INSERT ... SELECT *``, then its primary
  key, unique key and the table's other indexes built on it;
* **connect-audit (open the store)**: ``Store.open``, which finds revision 0008 and runs
  migration 0009: the partitioned table, a partition per month, every row copied, the keys,
  indexes and grants rebuilt, in one transaction; ``verify`` is run after.

A B rounds (``--rounds``, default 3); the median ratio with its spread. Needs a role that may
create databases.

    .venv/bin/python bench/convert.py --pg-url postgresql+psycopg://USER:PW@HOST/postgres
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import sqlalchemy as sa  # noqa: E402
from _stores import PG_KEYS, pg_clone, pg_clone_rounds, pg_exists, pg_template  # noqa: E402
from _timing import format_ratio, median_spread  # noqa: E402

from collector import chain  # noqa: E402
from collector.store import Store  # noqa: E402


def _template_0008(admin: sa.Engine, admin_url: str, events: int, days: float) -> str:
    """The generated store taken back to revision 0008 once (its downgrade), kept."""
    name = f"connect_audit_bench_0008_{events:_}"
    if pg_exists(admin, name):
        print(f"reusing template {name}")
        return name
    source = pg_template(admin, admin_url, f"connect_audit_bench_{events:_}", events, days)
    url = pg_clone(admin, admin_url, source, "0008_work")
    from storekit import migrate  # tests/storekit.py: a store taken to an older revision

    print("taking it back to revision 0008 ...", flush=True)
    with Store.open(url) as store:
        migrate(store, "0008", down=True)
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{source}_0008_work" RENAME TO "{name}"'))
    return name


def _rewrite(url: str) -> float:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        indexes = conn.execute(sa.text(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index i WHERE indrelid = 'audit_events'::regclass "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)")).scalars().all()
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE rewritten (LIKE audit_events)")
        conn.exec_driver_sql("INSERT INTO rewritten SELECT * FROM audit_events")
        conn.exec_driver_sql("ALTER TABLE rewritten ADD PRIMARY KEY (seq)")
        conn.exec_driver_sql("ALTER TABLE rewritten ADD UNIQUE (event_id)")
        for n, definition in enumerate(indexes):
            how = definition.split(" ON ", 1)[1].split(" ", 1)[1]  # "USING btree (...) [WHERE ...]"
            conn.exec_driver_sql(f"CREATE INDEX rewritten_{n} ON rewritten {how}")
    elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed


def _convert(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    store = Store.open(url)
    elapsed = time.perf_counter() - started
    report = chain.verify(store)
    store.close()
    if not report.ok:
        raise SystemExit(f"the converted store does not verify: {report.problem}")
    return elapsed, report.events_checked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-url", metavar="URL", default=os.environ.get("CONNECT_AUDIT_TEST_PG_URL"),
                        help="a PostgreSQL database URL whose role may create databases "
                             "(default: CONNECT_AUDIT_TEST_PG_URL)")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not args.pg_url:
        print("skipped: PostgreSQL only (give --pg-url or set CONNECT_AUDIT_TEST_PG_URL)")
        return 0
    os.environ["CONNECT_AUDIT_DATA_DIR"] = str(PG_KEYS)
    sys.path.insert(0, str(ROOT / "tests"))
    admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
    template = _template_0008(admin, args.pg_url, args.events, args.days)

    def one_round(r: int, rewrite_url: str, convert_url: str) -> tuple[float, float]:
        t_rewrite = _rewrite(rewrite_url)
        t_convert, n = _convert(convert_url)
        print(f"  round {r}: {n:,} events: rewrite {t_rewrite:.1f} s, conversion {t_convert:.1f} s "
              "(verify ok)", flush=True)
        return t_rewrite, t_convert

    timed = pg_clone_rounds(admin, args.pg_url, template, args.rounds, ("rewrite", "convert"), one_round)
    rewrites, converts = [t[0] for t in timed], [t[1] for t in timed]
    ratios = [b / a for a, b in timed]
    w, c = median_spread(rewrites), median_spread(converts)
    print(f"conversion to monthly partitions: rewrite the table {w[0]:.1f} s ({w[1]:.1f} to {w[2]:.1f}), "
          f"connect-audit {c[0]:.1f} s ({c[1]:.1f} to {c[2]:.1f}); conversion / rewrite "
          f"{format_ratio(median_spread(ratios), args.rounds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
