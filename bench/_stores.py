"""Shared by the scale benchmarks: a SQLite store (or a PostgreSQL database) of N generated
events, reused across runs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def ensure_store(path: Path, events: int) -> None:
    """Fill ``path`` with ``events`` events by ``connect-audit generate`` unless it has them."""
    if path.exists():
        con = sqlite3.connect(path)
        try:
            have = con.execute("SELECT count(*) FROM audit_events").fetchone()[0]
        except sqlite3.DatabaseError:
            have = 0
        finally:
            con.close()
        if have >= events:
            print(f"reusing {path} ({have:,} events)")
            return
        print(f"{path} has {have:,} events; regenerating")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    print(f"generating {events:,} events into {path} ...", flush=True)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "collector.cli", "generate", "--database", f"sqlite:///{path}",
         "--events", str(events)],
        check=True, cwd=ROOT,
    )
    print(f"generated in {time.perf_counter() - started:.0f} s")




#: Where the PostgreSQL bench stores keep their checkpoint key (CONNECT_AUDIT_DATA_DIR).
PG_KEYS = ROOT / "data" / "bench-pg-keys"


def ensure_pg_store(admin_url: str, events: int, *, days: float = 30) -> str:
    """The URL of a PostgreSQL database ``connect_audit_bench_<events>`` beside the one
    ``admin_url`` names (a role that may create databases), filled by ``connect-audit
    generate`` unless it already holds ``events`` events. It is kept for the next run, as the
    SQLite stores are kept under data/ (``DROP DATABASE`` it to free the space); its key is
    under data/bench-pg-keys, which this sets as ``CONNECT_AUDIT_DATA_DIR``."""
    import os

    import sqlalchemy as sa

    os.environ["CONNECT_AUDIT_DATA_DIR"] = str(PG_KEYS)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        name = pg_template(admin, admin_url, f"connect_audit_bench_{events:_}", events, days)
    finally:
        admin.dispose()
    return pg_url(admin_url, name)


def pg_url(admin_url: str, name: str) -> str:
    """The URL of database ``name`` on the server ``admin_url`` names."""
    import sqlalchemy as sa

    return sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def pg_exists(admin: Any, name: str) -> bool:
    import sqlalchemy as sa

    found = sa.text("SELECT 1 FROM pg_database WHERE datname = :n")
    with admin.connect() as conn:
        return conn.execute(found, {"n": name}).first() is not None


def _analyze(url: str) -> None:
    """``ANALYZE``, as autovacuum does a while after a load: a plan timed before it is not the
    plan a running store gets (the partitioned parent is never analysed by autovacuum)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()


def _pg_count(url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("audit_events"):
                return 0
            return conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar()
    except sa.exc.DBAPIError:
        return 0
    finally:
        engine.dispose()


def pg_template(admin: Any, admin_url: str, name: str, events: int, days: float) -> str:
    """A database ``name`` of ``events`` events generated over ``days`` days and analysed, made
    once and kept (reused while it holds them; also a template to clone); its name."""
    import os

    import sqlalchemy as sa

    url = pg_url(admin_url, name)
    have = _pg_count(url) if pg_exists(admin, name) else 0
    if have >= events:
        print(f"reusing PostgreSQL database {name} ({have:,} events)")
        return name
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    print(f"generating {events:,} events over {days:g} days into PostgreSQL database {name} ...", flush=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "collector.cli", "generate", "--database", url, "--events",
                    str(events), "--days", str(days)], check=True, cwd=ROOT, env=dict(os.environ))
    print(f"generated in {time.perf_counter() - started:.0f} s")
    _analyze(url)
    return name


def pg_clone(admin: Any, admin_url: str, template: str, tag: str) -> str:
    """A fresh copy of the template database (``CREATE DATABASE ... TEMPLATE``); its URL."""
    import sqlalchemy as sa

    name = f"{template}_{tag}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    return pg_url(admin_url, name)


def pg_clone_rounds(admin: Any, admin_url: str, template: str, rounds: int, tags: tuple[str, ...],
                    run_round: Any) -> list[Any]:
    """``rounds`` times, a fresh clone of the template per tag (made before the round, not
    timed) handed to ``run_round(round_number, *urls)``; what each round returned. The clones
    are dropped at the end, and ``admin`` disposed of."""
    import sqlalchemy as sa

    results = []
    try:
        for r in range(rounds):
            results.append(run_round(r + 1, *(pg_clone(admin, admin_url, template, tag) for tag in tags)))
    finally:
        with admin.connect() as conn:
            for tag in tags:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{template}_{tag}" WITH (FORCE)'))
        admin.dispose()
    return results
