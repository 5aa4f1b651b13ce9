"""Ingest: events per second through the Recorder against a raw executemany floor.

Both sides write the same synthetic events (collector.synthetic) into the same schema
(created by Store.open, so the same indexes), with the same durability (WAL,
synchronous=FULL on SQLite; synchronous_commit=on on PostgreSQL) and one transaction per
batch:

* floor: a raw ``sqlite3`` (or ``psycopg``) ``executemany`` of pre-built tuples in
  1000-row batches, each row hash-chained with SHA-256 over its values and the previous
  hash, the cheapest honest way to write the same rows;
* recorder: ``Recorder.record()`` for every event then ``flush()``, i.e. the real path:
  queue, background writer, canonical serialisation, hash chain, signed checkpoints,
  with ``batch_size=1000`` like the floor (so both commit and fsync equally often).
  While a burst is queued the writer defers the dashboard's rollup fold (up to 50,000
  events or 10 s); the figure with that fold counted (timed until ``close()`` returns) is
  printed beside it.


The two alternate for ``--rounds`` rounds (default 3; shared machines drift, and drift hits
both alike); the median of the per-round ratios is printed with its spread. The goal
(issue 6) is recorder/floor >= 0.5. PostgreSQL runs too when
``--pg-url`` or ``CONNECT_AUDIT_TEST_PG_URL`` is given (a scratch database is created and
dropped).

With ``--instances N`` (PostgreSQL), N app instances, each a process with its own store
connection and Recorder, write the events at once (one chain, taken in turn under its lock),
against N processes that write the same rows by raw ``COPY`` (1000 rows a transaction, each
process its own hash chain, no lock): the figure of several app instances sharing one
PostgreSQL store. The chain the instances leave is verified after each round.

    python bench/ingest.py [--events 50000] [--rounds 3] [--pg-url URL]
    python bench/ingest.py --pg-url URL --instances 4 --skip-sqlite --events 200000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import format_ratio, median_spread

from collector import chain, partitions, synthetic
from collector.recorder import Recorder
from collector.store import Store

GOAL = 0.5
FLOOR_BATCH = 1000
COLUMNS = [c.name for c in chain.EVENTS.columns]


def make_records(n: int, seed: int = 7) -> list:
    rng = random.Random(seed)
    end = datetime.now(UTC)
    start = end - timedelta(days=30)
    tenants = synthetic.make_tenants(rng, 25, start, end)
    traffic = synthetic._Traffic(rng, tenants, start, end - start)
    return [traffic.event(traffic.ts((i + 0.5) / n)) for i in range(n)]


def floor_tuples(records: list, *, sqlite: bool) -> list[tuple]:
    """Plain tuples of every column (seq, prev_hash and hash filled in while timing)."""
    out = []
    for rec in records:
        row = chain.event_row(rec)
        row["seq"] = row["hash"] = None
        if sqlite:
            row["ts"] = row["ts"].isoformat(" ", "microseconds")[:26]
        out.append(tuple(row[c] for c in COLUMNS))
    return out


def _chained(tuples: list[tuple], start_seq: int, prev: str) -> tuple[list[tuple], str]:
    seq_i, prev_i, hash_i = COLUMNS.index("seq"), COLUMNS.index("prev_hash"), COLUMNS.index("hash")
    out = []
    sha256 = hashlib.sha256
    for offset, values in enumerate(tuples):
        row = list(values)
        row[seq_i] = start_seq + offset
        row[prev_i] = prev
        prev = row[hash_i] = sha256("\x1f".join(map(str, row)).encode()).hexdigest()
        out.append(tuple(row))
    return out, prev


def floor_sqlite(path: Path, tuples: list[tuple], batch: int = FLOOR_BATCH) -> float:
    Store.open(f"sqlite:///{path}").close()  # same schema and indexes as the recorder's store
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    sql = chain._SQLITE_INSERT
    started = time.perf_counter()
    prev = chain.GENESIS
    for i in range(0, len(tuples), batch):
        rows, prev = _chained(tuples[i : i + batch], i + 1, prev)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(tuples) / elapsed


def floor_postgres(url: str, tuples: list[tuple], batch: int = FLOOR_BATCH) -> float:
    import psycopg
    import sqlalchemy as sa

    _ready_months(url, tuples)
    dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    sql = "INSERT INTO audit_events ({}) VALUES ({})".format(  # noqa: S608
        ", ".join(COLUMNS), ", ".join(["%s"] * len(COLUMNS))
    )
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        prev = chain.GENESIS
        for i in range(0, len(tuples), batch):
            rows, prev = _chained(tuples[i : i + batch], i + 1, prev)
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(sql, rows)
        elapsed = time.perf_counter() - started
    return len(tuples) / elapsed


def _ready_months(url: str, tuples: list[tuple]) -> None:
    """The store, and the month partitions the rows need (PostgreSQL has no default partition;
    the recorder makes them itself, a raw writer has to be given them)."""
    ts_i = COLUMNS.index("ts")
    with Store.open(url) as store, store.write_transaction() as conn:
        partitions.cover(conn, (t[ts_i] for t in tuples))


# --------------------------------------------------------------------------- several instances


def _copy_instance(dsn: str, tuples: list[tuple], first_seq: int, go, done) -> None:
    """One process's share through ``COPY`` (1000 rows a transaction, its own hash chain)."""
    import psycopg

    copy = f"COPY audit_events ({', '.join(COLUMNS)}) FROM STDIN"
    with psycopg.connect(dsn) as conn:
        go.wait()
        prev = chain.GENESIS
        for i in range(0, len(tuples), FLOOR_BATCH):
            rows, prev = _chained(tuples[i : i + FLOOR_BATCH], first_seq + i, prev)
            with conn.transaction(), conn.cursor() as cur, cur.copy(copy) as sink:
                for row in rows:
                    sink.write_row(row)
    now = time.perf_counter()
    done.put((now, now))


def _recorder_instance(url: str, records: list, go, done) -> None:
    """One app instance: its own store connection and Recorder, its share recorded then flushed."""
    with Store.open(url) as store:
        recorder = Recorder(store, queue_size=len(records) + 1, batch_size=FLOOR_BATCH).start()
        go.wait()
        for rec in records:
            recorder.record(rec)
        recorder.flush()
        flushed = time.perf_counter()
        recorder.close()  # (its deferred rollup fold and last checkpoint)
        done.put((flushed, time.perf_counter()))


def _concurrently(target, shares: list[tuple]) -> tuple[float, float]:
    """Start one process per share, release them at once; seconds until the last one's events
    were all written, and until the last one was closed."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    go, done = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*share, go, done)) for share in shares]
    for proc in procs:
        proc.start()
    time.sleep(2.0)  # every process connected and waiting
    started = time.perf_counter()
    go.set()
    ends = [done.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(timeout=120)
        if proc.exitcode != 0:
            raise SystemExit(f"an instance failed (exit {proc.exitcode})")
    return max(e[0] for e in ends) - started, max(e[1] for e in ends) - started


def instances_copy(url: str, tuples: list[tuple], n: int) -> float:
    import sqlalchemy as sa

    _ready_months(url, tuples)
    dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    size = -(-len(tuples) // n)
    shares = [(dsn, tuples[k * size : (k + 1) * size], 1 + k * size) for k in range(n)]
    return len(tuples) / _concurrently(_copy_instance, shares)[0]


def instances_recorder(url: str, records: list, n: int) -> tuple[float, float]:
    Store.open(url).close()  # created and migrated once, not by four openers at the same moment
    size = -(-len(records) // n)
    shares = [(url, records[k * size : (k + 1) * size]) for k in range(n)]
    written, closed = _concurrently(_recorder_instance, shares)
    with Store.open(url) as store:
        report = chain.verify(store)
        if not report.ok or report.events_checked != len(records):
            raise SystemExit(f"the {n} instances left a bad chain: {report}")
    return len(records) / written, len(records) / closed


def through_recorder(url: str, records: list) -> float:
    store = Store.open(url)
    # Same batch size as the floor: both sides then commit (and fsync) equally often.
    recorder = Recorder(store, queue_size=len(records) + 1, batch_size=FLOOR_BATCH).start()
    started = time.perf_counter()
    for rec in records:
        recorder.record(rec)
    recorder.flush()
    elapsed = time.perf_counter() - started
    # What the writer still does after the burst, once every event is acknowledged: the
    # rollup fold it deferred while events were queued, and the last checkpoint.
    recorder.close()
    after = time.perf_counter() - started - elapsed
    store.close()
    return len(records) / elapsed, len(records) / (elapsed + after)


def fresh_records(records: list) -> list:
    # New event ids per round: each round writes into a fresh store anyway, but records
    # must not be shared objects mutated by a previous round.
    out = []
    for rec in records:
        clone = type(rec)(**rec.as_dict())
        clone.event_id = str(uuid.uuid4())
        out.append(clone)
    return out


def pg_scratch(base: str):
    import sqlalchemy as sa

    name = f"ca_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def compare(label: str, rounds: int, floor_fn, recorder_fn, *, goal: float | None = GOAL) -> float:
    """Floor and recorder back to back, ``rounds`` times: each round's ratio, then their
    median and spread (what the README quotes)."""
    import statistics

    ratios, ratios_all, floors, recs = [], [], [], []
    for r in range(rounds):
        f = floor_fn()
        c, c_all = recorder_fn()
        ratios.append(c / f)
        ratios_all.append(c_all / f)
        floors.append(f)
        recs.append(c)
        print(f"  {label} round {r + 1}: floor {f:,.0f} events/s, recorder {c:,.0f} events/s "
              f"({c_all:,.0f} with the rollup fold after the burst)", flush=True)
    ratio = median_spread(ratios)
    verdict = ("no goal" if goal is None
               else ("meets" if ratio[0] >= goal else "MISSES") + f" the >= {goal}x goal")
    print(
        f"{label}: floor {statistics.median(floors):,.0f} events/s, recorder "
        f"{statistics.median(recs):,.0f} events/s (medians), ratio {format_ratio(ratio, rounds)}; "
        f"{verdict}; with the deferred rollup fold counted: "
        f"{format_ratio(median_spread(ratios_all), rounds)}"
    )
    return ratio[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-url", default=os.environ.get("CONNECT_AUDIT_TEST_PG_URL"))
    parser.add_argument("--instances", type=int, default=1, metavar="N",
                        help="PostgreSQL also: N app instances (processes, a Recorder each) writing "
                             "the events at once, against N processes writing them by raw COPY")
    parser.add_argument("--skip-sqlite", action="store_true", help="PostgreSQL only")
    args = parser.parse_args(argv)

    records = make_records(args.events)
    print(f"ingest: {args.events:,} synthetic events, {args.rounds} rounds", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="ca-bench-ingest-"))
    os.environ["CONNECT_AUDIT_DATA_DIR"] = str(tmp)  # PostgreSQL stores keep their keys here
    counter = iter(range(1_000_000))
    try:
        sqlite_tuples = floor_tuples(records, sqlite=True)

        def sqlite_floor() -> float:
            return floor_sqlite(tmp / f"floor-{next(counter)}.db", sqlite_tuples)

        def sqlite_recorder() -> float:
            return through_recorder(f"sqlite:///{tmp / f'rec-{next(counter)}.db'}", fresh_records(records))

        ratios = [] if args.skip_sqlite else [compare("sqlite", args.rounds, sqlite_floor, sqlite_recorder)]
        if args.pg_url:
            pg_tuples = floor_tuples(records, sqlite=False)

            def pg_floor() -> float:
                url, drop = pg_scratch(args.pg_url)
                try:
                    return floor_postgres(url, pg_tuples)
                finally:
                    drop()

            def pg_recorder() -> float:
                url, drop = pg_scratch(args.pg_url)
                try:
                    return through_recorder(url, fresh_records(records))
                finally:
                    drop()

            ratios.append(compare("postgresql", args.rounds, pg_floor, pg_recorder))
            if args.instances > 1:
                n = args.instances

                def pg_copy_n() -> float:
                    url, drop = pg_scratch(args.pg_url)
                    try:
                        return instances_copy(url, pg_tuples, n)
                    finally:
                        drop()

                def pg_recorder_n() -> tuple[float, float]:
                    url, drop = pg_scratch(args.pg_url)
                    try:
                        return instances_recorder(url, fresh_records(records), n)
                    finally:
                        drop()

                label = f"postgresql, {n} app instances against {n} raw COPY writers"
                compare(label, args.rounds, pg_copy_n, pg_recorder_n, goal=None)
        else:
            print("postgresql: skipped (give --pg-url or set CONNECT_AUDIT_TEST_PG_URL)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(r >= GOAL for r in ratios) else 1


if __name__ == "__main__":
    sys.exit(main())
