"""The audit store: opening, schema and migrations, SQLite settings, errors in one sentence."""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel
from storekit import isolate_keys, migrate

from collector import partitions
from collector import store as store_mod
from collector.errors import ConfigurationError, StoreUnavailable
from collector.models import AuditEvent
from collector.store import Store


@pytest.fixture(autouse=True)
def _keys(monkeypatch, tmp_path):
    isolate_keys(monkeypatch, tmp_path)


def test_open_creates_the_current_schema_on_both_backends(database_url):
    with Store.open(database_url) as store:
        assert store.schema_version() == store_mod.SCHEMA_HEAD
        assert store.dialect in ("sqlite", "postgresql")
        with store.engine.connect() as conn:
            opts = {"compare_type": True, "include_name": partitions.include_name}
            diffs = compare_metadata(MigrationContext.configure(conn, opts=opts), SQLModel.metadata)
        if store.dialect == "postgresql":
            # The one documented difference: a partitioned table's unique keys include its
            # partition column (migration 0009), so event_id is unique with ts there.
            described = sorted((kind, tuple(c.name for c in key.columns)) for kind, key in diffs)
            assert described == [("add_constraint", ("event_id",)), ("remove_constraint", ("event_id", "ts"))]
            diffs = []
        # The migrations and the models describe the same schema: any model change needs a revision.
        assert diffs == []
        names = set(sa.inspect(store.engine).get_table_names())
        assert {"installs", "audit_events", "replay_keys", "checkpoints"} <= names


def test_reopening_skips_migrations_and_keeps_data(database_url):
    with Store.open(database_url) as store, store.write_transaction() as conn:
        conn.execute(sa.text("INSERT INTO rollup_state (name, last_seq) VALUES ('probe', 7)"))
    with Store.open(database_url, create=False) as store, store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT last_seq FROM rollup_state WHERE name = 'probe'")).scalar() == 7


def test_a_failed_migration_leaves_the_store_as_it_was(sqlite_url):
    Store.open(sqlite_url).close()
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as raw:
        # A half-built schema without a version: revision 0001 cannot apply cleanly.
        raw.execute("DROP TABLE rollup_state")
        raw.execute("DELETE FROM alembic_version")
    with pytest.raises(StoreUnavailable, match="already exists"):
        Store.open(sqlite_url)
    with sqlite3.connect(path) as raw:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    # The upgrade ran in one transaction (transactional DDL): nothing was half-applied.
    assert "rollup_state" not in tables and "audit_events" in tables


def test_a_store_from_a_newer_version_is_refused(sqlite_url):
    Store.open(sqlite_url).close()
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as raw:
        raw.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreUnavailable, match="newer than this connect-audit"):
        Store.open(sqlite_url)


def test_sqlite_runs_in_wal_with_a_busy_timeout_and_the_chosen_durability(tmp_path):
    for durability, expected in (("full", 2), ("normal", 1)):
        url = f"sqlite:///{tmp_path / durability / 'audit.db'}"
        with Store.open(url, durability=durability) as store, store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == expected
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 60_000


def test_postgresql_durability_maps_to_synchronous_commit(pg_url):
    for durability, expected in (("full", "on"), ("normal", "off")):
        with Store.open(pg_url, durability=durability) as store, store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == expected
            assert conn.exec_driver_sql("SHOW timezone").scalar() == "UTC"


def test_unknown_durability_is_a_configuration_error(sqlite_url):
    with pytest.raises(ConfigurationError, match="unknown durability 'fast'"):
        Store.open(sqlite_url, durability="fast")


def test_write_transactions_take_the_sqlite_write_lock_at_begin(sqlite_url):
    with Store.open(sqlite_url, lock_timeout=0.2) as store:
        other = Store.open(sqlite_url, lock_timeout=0.2)
        try:
            with store.write_transaction():
                # A second writer cannot even begin while the first holds the lock...
                with pytest.raises(StoreUnavailable, match="locked"), other.write_transaction():
                    pass
                # ...but readers are not blocked (WAL).
                with other.session() as session:
                    assert session.exec(sa.select(sa.func.count()).select_from(AuditEvent)).one()[0] == 0
        finally:
            other.close()


def test_sqlite_timestamps_are_stored_in_sqlalchemys_text_format(sqlite_url):
    from storekit import record

    from collector import chain

    ts = datetime(2026, 3, 4, 5, 6, 7, 89, tzinfo=UTC)
    with Store.open(sqlite_url) as store:
        with store.write_transaction() as conn:
            chain.append(conn, [chain.event_row(record(1, ts=ts))])
        with store.engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT ts FROM audit_events").scalar()
            bound = sa.select(sa.literal(ts, AuditEvent.__table__.c.ts.type))
            via_sqlalchemy = conn.execute(
                sa.select(sa.func.count()).select_from(AuditEvent).where(AuditEvent.ts == ts)
            ).scalar()
        assert stored == "2026-03-04 05:06:07.000089"
        assert via_sqlalchemy == 1, bound  # filters bound by SQLAlchemy find the fast-path rows
        with store.session() as session:
            assert session.exec(sa.select(AuditEvent.ts)).one()[0] == ts


@pytest.mark.parametrize("attempt", range(8))  # the race is short: run it several times
def test_concurrent_first_opens_migrate_once(tmp_path, attempt):
    url = f"sqlite:///{tmp_path / 'race' / 'audit.db'}"
    errors: list[BaseException] = []

    def opener():
        try:
            Store.open(url).close()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Store.open(url) as store:
        assert store.schema_version() == store_mod.SCHEMA_HEAD


# ---------------------------------------------------------------------- errors in one sentence


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("data/audit.db", "is not a database URL (for a file, write sqlite:///PATH)"),
        ("mysql://u:hunter2@db/x", "unsupported database driver 'mysql'"),
        ("postgresql+asyncpg://u:hunter2@db/x", "unsupported database driver 'postgresql+asyncpg'"),
        ("sqlite://", "an audit store must be a file"),
        ("sqlite:///:memory:", "an audit store must be a file"),
    ],
)
def test_bad_urls_are_configuration_errors(url, message):
    with pytest.raises(ConfigurationError) as info:
        Store.open(url)
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)
    assert "\n" not in str(info.value)


def test_a_url_that_does_not_parse_never_echoes_its_password():
    with pytest.raises(ConfigurationError) as info:
        Store.open("postgresql://user:hunter2@host:notaport/db")
    assert "hunter2" not in str(info.value)


def test_a_missing_store_with_create_false(tmp_path):
    with pytest.raises(StoreUnavailable, match="no audit store at"):
        Store.open(f"sqlite:///{tmp_path / 'nope.db'}", create=False)
    assert not (tmp_path / "nope.db").exists()


def test_missing_parent_directories_are_created(tmp_path):
    with Store.open(f"sqlite:///{tmp_path / 'a' / 'b' / 'audit.db'}") as store:
        assert store.key_dir == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b" / "audit.db").exists()


def test_a_parent_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreUnavailable, match="cannot create the directory"):
        Store.open(f"sqlite:///{tmp_path / 'file' / 'sub' / 'audit.db'}")


def test_a_file_that_is_not_sqlite(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 10)
    with pytest.raises(StoreUnavailable, match="is not an SQLite database"):
        Store.open(f"sqlite:///{path}")
    assert path.read_text().startswith("these are my notes")


def test_a_directory_instead_of_a_file(tmp_path):
    with pytest.raises(StoreUnavailable, match="is a directory"):
        Store.open(f"sqlite:///{tmp_path}")


def test_a_corrupt_sqlite_file(tmp_path):
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    with pytest.raises(StoreUnavailable) as info:
        Store.open(f"sqlite:///{path}")
    assert "\n" not in str(info.value)


def test_an_sqlite_database_of_another_application(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    with pytest.raises(StoreUnavailable, match="not a Connect Audit store"):
        Store.open(f"sqlite:///{path}", create=False)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_postgresql_is_one_sentence_without_the_password():
    port = _closed_port()
    with pytest.raises(StoreUnavailable) as info:
        Store.open(f"postgresql+psycopg://auditor:hunter2@127.0.0.1:{port}/audit")
    text = str(info.value)
    assert text.startswith(f"cannot reach PostgreSQL at 127.0.0.1:{port}/audit")
    assert "hunter2" not in text and "\n" not in text


def test_the_masked_url_hides_the_password(pg_url):
    password = sa.engine.make_url(pg_url).password
    with Store.open(pg_url) as store:
        assert f":{password}@" not in store.url and f":{password}@" not in repr(store)
        assert ":***@" in store.url


def test_upgrading_a_0001_store_fills_the_daily_rollup_from_the_hourly_one(database_url):
    from audit_data import build_store

    from collector import query as q

    data = build_store(database_url, events=900, hostile=False, installs=False)
    daily = sa.select(q.DAILY_ROLLUP).order_by(*q.DAILY_ROLLUP.primary_key.columns)
    with Store.open(database_url) as store:
        q.refresh_rollups(store)  # folded by the code of revision 0002: the reference
        with store.engine.connect() as conn:
            folded = [tuple(r) for r in conn.execute(daily)]
        migrate(store, "0001", down=True)
        # The revision-0001 store a user has: no daily table, hourly rollups folded.
        assert store.schema_version() == "0001"
        assert "event_rollups_daily" not in sa.inspect(store.engine).get_table_names()
    with Store.open(database_url, create=False) as store:
        assert store.schema_version() == store_mod.SCHEMA_HEAD
        with store.engine.connect() as conn:
            upgraded = [tuple(r) for r in conn.execute(daily)]
        # Sums of hourly latency sums may differ from the direct sum in the last bits.
        assert [r[:-2] + r[-1:] for r in upgraded] == [r[:-2] + r[-1:] for r in folded]
        assert [r[-2] for r in upgraded] == pytest.approx([r[-2] for r in folded])
        assert q.rollup_lag(store) == 0  # the daily watermark starts at the hourly one's
        assert q.refresh_rollups(store) == 0
        assert q.count(store, q.EventFilter()) == len(data.records)


def test_a_read_only_store_refuses_every_write_on_both_backends(database_url):
    """What the dashboard opens: the database itself refuses a write, whoever attempts it."""
    Store.open(database_url).close()  # created and migrated by a writer first
    with Store.open(database_url, read_only=True) as store:
        assert store.read_only
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar() == 0
        for statement in ("DELETE FROM audit_events", "UPDATE installs SET status = 'x'",
                          "INSERT INTO checkpoints (seq, hash, event_count, created_at, key_id, signature) "
                          "VALUES (1, 'h', 1, '2026-01-01', 'k', 's')"):
            refused = pytest.raises(sa.exc.DBAPIError, match=r"(?i)read.only|readonly")
            with refused, store.engine.begin() as conn:
                conn.execute(sa.text(statement))
    with Store.open(database_url) as store, store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar() == 0


def test_a_read_only_open_never_creates_or_upgrades_a_store(tmp_path):
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    with pytest.raises(StoreUnavailable):
        Store.open(missing, read_only=True)
    assert not (tmp_path / "none.db").exists()
    old = tmp_path / "old.db"
    with Store.open(f"sqlite:///{old}") as store, store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0002'"))
    with pytest.raises(StoreUnavailable, match="schema version 0002 and is opened read-only"):
        Store.open(f"sqlite:///{old}", read_only=True)
