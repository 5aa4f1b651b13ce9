"""PostgreSQL's events table by month (collector.partitions, migration 0009): the conversion
of an existing store, pruning, whole-month retention, partitions made ahead and on demand,
and a conversion killed half-way. Real PostgreSQL throughout; the month arithmetic is pure."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from storekit import env_for_child, isolate_keys, migrate

from collector import chain, partitions, query, retention, synthetic
from collector import events as ev
from collector import store as store_mod
from collector.errors import StoreUnavailable
from collector.events import AuditRecord
from collector.export import export
from collector.recorder import Recorder
from collector.store import Store

NOW = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _keys(monkeypatch, tmp_path):
    isolate_keys(monkeypatch, tmp_path)


def _month(year: int, month: int) -> datetime:
    return datetime(year, month, 1, tzinfo=UTC)


# ------------------------------------------------------------------ month arithmetic (pure)


def test_months_are_utc_calendar_months_and_roll_over_the_year():
    assert partitions.month_of(datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == _month(2026, 12)
    # an instant given in another zone belongs to its UTC month
    tokyo = datetime(2026, 12, 31, 23, 30, tzinfo=UTC).astimezone(ZoneInfo("Asia/Tokyo"))  # Jan 1 there
    assert partitions.month_of(tokyo) == _month(2026, 12)
    new_york = datetime(2027, 1, 1, 0, 30, tzinfo=UTC).astimezone(ZoneInfo("America/New_York"))  # Dec 31
    assert partitions.month_of(new_york) == _month(2027, 1)
    assert partitions.next_month(_month(2026, 12)) == _month(2027, 1)
    assert partitions.next_month(_month(2027, 1)) == _month(2027, 2)
    assert partitions.name_of(_month(2027, 1)) == "audit_events_2027_01"
    assert partitions.is_partition_name("audit_events_2027_01")
    assert not partitions.is_partition_name("audit_events")
    assert not partitions.is_partition_name("audit_events_x")


def test_sqlite_keeps_its_single_table(sqlite_url):
    with Store.open(sqlite_url) as store, store.write_transaction() as conn:
        assert not partitions.is_partitioned(conn)
        assert partitions.cover(conn, [NOW]) == [] and partitions.keep_ahead(conn, NOW) == []


# ------------------------------------------------------------------ helpers


def _fill(store: Store, events: int = 3_000, days: float = 100) -> None:
    """``events`` generated over ``days`` before NOW (four months), then a late event: an old
    ``ts`` written after everything else, as a slow instance's would be."""
    synthetic.generate(store, events, days=days, seed=3, now=NOW)
    with Recorder(store) as rec:
        rec.record(AuditRecord(direction=ev.INCOMING, outcome=ev.ALLOWED, auth_method=ev.APP_JWT,
                               identity_kind=ev.ANONYMOUS, event_type="late", ts=NOW - timedelta(days=95),
                               tenant_client_key="late-tenant", method="GET", path="/late", status=200))


def _rows(store: Store) -> list[tuple]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(chain.EVENTS).order_by(chain.EVENTS.c.seq))]


def _answers(store: Store) -> dict:
    """What the dashboard and the export read, for a before-and-after comparison."""
    out = io.BytesIO()
    export(store, query.EventFilter(), out, "csv", record=False)
    window = query.EventFilter(since=NOW - timedelta(days=40), until=NOW - timedelta(days=10))
    return {
        "csv": out.getvalue(),
        "count": query.count(store, query.EventFilter()),
        "window": query.count(store, window),
        "denied": query.count(store, query.EventFilter(outcome="denied", since=NOW - timedelta(days=70))),
        "page": query.page(store, window, limit=200).rows,
        "summary": query.summary(store, window),
    }


def _partition_of_each_row(store: Store) -> dict[str, set[str]]:
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT tableoid::regclass::text, to_char(ts AT TIME ZONE 'UTC', "
                                    "'YYYY_MM') FROM audit_events").all()
    found: dict[str, set[str]] = {}
    for table, month in rows:
        found.setdefault(table, set()).add(month)
    return found


# ------------------------------------------------------------------ a new store


def test_a_new_postgresql_store_is_partitioned_with_the_coming_months(pg_url):
    with Store.open(pg_url) as store, store.engine.connect() as conn:
        assert partitions.is_partitioned(conn)
        names = [p.name for p in partitions.partitions(conn)]
    month = partitions.month_of(datetime.now(UTC))
    expected = []
    for _ in range(partitions.AHEAD + 1):
        expected.append(partitions.name_of(month))
        month = partitions.next_month(month)
    assert names == expected


def test_rows_land_in_their_month_and_verify_passes(pg_url):
    with Store.open(pg_url) as store:
        _fill(store)
        by_table = _partition_of_each_row(store)
        assert len(by_table) >= 4
        for table, months in by_table.items():
            assert months == {table.removeprefix("audit_events_")}
        assert chain.verify(store).ok


# ------------------------------------------------------------------ converting a store


def test_converting_a_0008_store_keeps_every_row_answer_index_grant_and_the_chain(pg_url):
    with Store.open(pg_url) as store:
        _fill(store)
        migrate(store, "0008", down=True)
        # The store a user of the previous release has: one plain table, at revision 0008.
        assert store.schema_version() == "0008"
        with store.write_transaction() as conn:
            assert not partitions.is_partitioned(conn)
            assert not [n for n in sa.inspect(conn).get_table_names() if partitions.is_partition_name(n)]
            conn.exec_driver_sql("CREATE INDEX dba_request_id ON audit_events (request_id)")
            conn.exec_driver_sql("DROP ROLE IF EXISTS ca_reader_0009")
            conn.exec_driver_sql("CREATE ROLE ca_reader_0009")
            conn.exec_driver_sql("GRANT SELECT ON audit_events TO ca_reader_0009")
        with Recorder(store) as rec:  # written by the 0008 table's path, after a purge too
            rec.record(AuditRecord(direction=ev.OUTGOING, outcome=ev.DENIED, auth_method=ev.APP_JWT,
                                   identity_kind=ev.APP_USER, event_type="call", ts=NOW - timedelta(days=20),
                                   tenant_client_key="t-0008", method="GET", path="/wiki/x", status=403))
        retention.purge(store, timedelta(days=99), now=NOW)
        before_rows, before = _rows(store), _answers(store)
        before_report = chain.verify(store)
        assert before_report.ok
    try:
        with Store.open(pg_url, create=False) as store:
            assert store.schema_version() == store_mod.SCHEMA_HEAD
            with store.engine.connect() as conn:
                assert partitions.is_partitioned(conn)
                indexes = {i["name"] for i in sa.inspect(conn).get_indexes("audit_events")}
                grants = conn.exec_driver_sql(
                    "SELECT privilege_type FROM information_schema.role_table_grants "
                    "WHERE table_name = 'audit_events' AND grantee = 'ca_reader_0009'").scalars().all()
            assert _rows(store) == before_rows
            assert _answers(store) == before
            after_report = chain.verify(store)
            assert after_report.ok and after_report.events_checked == before_report.events_checked
            assert "dba_request_id" in indexes and "ix_audit_events_acting_as_ts" in indexes
            assert grants == ["SELECT"]
            for table, months in _partition_of_each_row(store).items():
                assert months == {table.removeprefix("audit_events_")}
    finally:
        with sa.create_engine(pg_url).begin() as conn:
            conn.exec_driver_sql("DROP OWNED BY ca_reader_0009")
            conn.exec_driver_sql("DROP ROLE ca_reader_0009")


def test_a_conversion_killed_half_way_leaves_the_store_unconverted_and_whole(pg_url, tmp_path):
    with Store.open(pg_url) as store:
        _fill(store, events=2_000)
        migrate(store, "0008", down=True)
        rows = _rows(store)
    blocker = sa.create_engine(pg_url)
    watcher = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")  # (activity is read per transaction)
    script = "import sys; from collector.store import Store; Store.open(sys.argv[1]).close()"
    dropping = "FROM pg_stat_activity WHERE query LIKE 'DROP TABLE%audit_events%'"
    with blocker.connect() as hold, watcher.connect() as watch:
        # A reader's lock: the conversion copies every row, then waits here to drop the old table.
        hold.exec_driver_sql("SELECT 1 FROM audit_events LIMIT 1").all()
        child = subprocess.Popen([sys.executable, "-c", script, pg_url], env=env_for_child(tmp_path))
        try:
            _wait_for(watch, f"SELECT count(*) {dropping} AND wait_event_type = 'Lock'")
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
        hold.rollback()  # the killed conversion's backend goes on, finds its client gone, rolls back
        _wait_for(watch, f"SELECT count(*) = 0 {dropping}")
    blocker.dispose()
    watcher.dispose()
    with sa.create_engine(pg_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0008"
        assert not partitions.is_partitioned(conn)
        assert conn.exec_driver_sql("SELECT to_regclass('audit_events_staged')").scalar() is None
    with Store.open(pg_url, create=False) as store:  # and the next open converts it
        assert _rows(store) == rows and chain.verify(store).ok
        with store.engine.connect() as conn:
            assert partitions.is_partitioned(conn)


def _wait_for(conn: sa.Connection, sql: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.execute(sa.text(sql)).scalar():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {sql}")


# ------------------------------------------------------------------ pruning


def test_a_query_over_a_range_reads_only_the_months_of_the_range(pg_url):
    with Store.open(pg_url) as store:
        _fill(store)
        seen: list[tuple[str, object]] = []

        def capture(conn, cursor, statement, parameters, context, executemany):
            # the range's reads (the rollups' watermark read, max(seq), is not one)
            if "FROM audit_events" in statement and "audit_events.ts >=" in statement:
                seen.append((statement, parameters))

        sa.event.listen(store.engine, "before_cursor_execute", capture)
        flt = query.EventFilter(since=datetime(2026, 10, 3, tzinfo=UTC),
                                until=datetime(2026, 10, 20, tzinfo=UTC))
        assert query.page(store, flt, limit=20).rows
        # (a text search is read from the log, not from the rollups)
        assert query.count(store, query.EventFilter(since=flt.since, until=flt.until, text="wiki"))
        sa.event.remove(store.engine, "before_cursor_execute", capture)
        assert len(seen) >= 2
        with store.engine.connect() as conn:
            for statement, parameters in seen:
                plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
                assert "audit_events_2026_10" in plan
                for other in ("2026_09", "2026_11", "2026_12"):
                    assert f"audit_events_{other}" not in plan, plan


# ------------------------------------------------------------------ retention


def test_a_purge_drops_whole_months_and_verify_still_proves_the_kept_chain(pg_url):
    with Store.open(pg_url) as store:
        _fill(store)
        rows = _rows(store)
        cutoff = datetime(2026, 11, 1, tzinfo=UTC)
        result = retention.purge(store, NOW - cutoff, now=NOW)
        up_to = result.plan.up_to_seq
        with store.engine.connect() as conn:
            names = [p.name for p in partitions.partitions(conn)]
        # September holds the late event, written last: its month is not all in the prefix,
        # so it stays (its other rows deleted one by one); August and October go whole.
        dropped = _extra_json(store, result.event_id)["dropped_partitions"]
        assert dropped == ["audit_events_2026_08", "audit_events_2026_10"]
        assert result.dropped_partitions == ("audit_events_2026_08", "audit_events_2026_10")
        assert "audit_events_2026_10" not in names and "audit_events_2026_09" in names
        kept = _rows(store)
        assert [r[0] for r in kept[:-1]] == [r[0] for r in rows if r[0] > up_to]
        assert chain.verify(store).ok


def test_the_policy_removes_a_month_in_one_step_where_rows_would_take_many(pg_url):
    with Store.open(pg_url) as store:
        synthetic.generate(store, 3_000, days=100, seed=4, now=NOW)
        run = retention.apply_policy(store, retention.RetentionPolicy(days=37.5),  # back to Nov 1
                                     now=NOW, chunk=100)
        dropped = [p for p in run.purges if "dropped_partitions" in _extra_json(store, p.event_id)]
        # August (a few days), September and October: one step each, not a step per 100 rows
        assert [list(_extra_json(store, p.event_id)["dropped_partitions"]) for p in dropped] == [
            ["audit_events_2026_08"], ["audit_events_2026_09"], ["audit_events_2026_10"]]
        assert len(run.purges) == 3 and run.removed > 1_800
        assert chain.verify(store).ok


def _extra_json(store: Store, event_id: str | None) -> dict:
    with store.engine.connect() as conn:
        found = sa.select(chain.EVENTS.c.extra).where(chain.EVENTS.c.event_id == event_id)
        return json.loads(conn.execute(found).scalar_one())


def test_a_month_drop_that_cannot_get_its_lock_removes_nothing(pg_url, monkeypatch):
    monkeypatch.setattr(retention, "DROP_LOCK_TIMEOUT", 0.3)
    with Store.open(pg_url) as store:
        synthetic.generate(store, 1_000, days=100, seed=5, now=NOW)
        rows = _rows(store)
        reader = sa.create_engine(pg_url)
        with reader.connect() as hold:
            hold.exec_driver_sql("SELECT 1 FROM audit_events LIMIT 1").all()  # a long export, say
            refused = r"could not drop audit_events_2026_08.*nothing was removed"
            with pytest.raises(StoreUnavailable, match=refused):
                retention.purge(store, timedelta(days=40), now=NOW)
        reader.dispose()
        assert _rows(store) == rows and chain.verify(store).ok
        assert retention.purge(store, timedelta(days=40), now=NOW).event_id  # with the reader gone


# ------------------------------------------------------------------ partitions made ahead and on demand


def test_the_recorder_makes_the_coming_months_before_their_first_event(pg_url):
    with Store.open(pg_url) as store:
        with store.write_transaction() as conn:
            for part in partitions.partitions(conn):
                partitions.drop(conn, part)
        with Recorder(store) as rec:
            rec.record(AuditRecord(direction=ev.INCOMING, outcome=ev.ALLOWED, auth_method=ev.APP_JWT,
                                   identity_kind=ev.ANONYMOUS, event_type="call",
                                   ts=datetime(2026, 3, 1, tzinfo=UTC)))
            rec.flush()
            assert rec.stats()["written"] == 1 and rec.stats()["spilled"] == 0
        with store.engine.connect() as conn:
            names = {p.name for p in partitions.partitions(conn)}
        month = partitions.month_of(datetime.now(UTC))
        coming = {partitions.name_of(month), partitions.name_of(partitions.next_month(month))}
        assert {"audit_events_2026_03"} | coming <= names


def test_a_month_another_process_dropped_is_made_again_for_a_late_row(pg_url):
    with Store.open(pg_url) as store, Store.open(pg_url) as other:
        old = datetime(2026, 8, 15, tzinfo=UTC)
        with Recorder(store) as rec:
            for _ in range(2):  # the first batch makes August, the second learns it is there
                rec.record(AuditRecord(direction=ev.INCOMING, outcome=ev.ALLOWED, auth_method=ev.APP_JWT,
                                       identity_kind=ev.ANONYMOUS, event_type="call", ts=old))
                rec.flush()
            # Another instance's retention removes August (this recorder still remembers it).
            retention.purge(other, timedelta(days=90), now=NOW)
            with other.engine.connect() as conn:
                assert "audit_events_2026_08" not in {p.name for p in partitions.partitions(conn)}
            rec.record(AuditRecord(direction=ev.INCOMING, outcome=ev.ALLOWED, auth_method=ev.APP_JWT,
                                   identity_kind=ev.ANONYMOUS, event_type="late", ts=old))
            rec.flush()
            stats = rec.stats()
        assert stats["written"] == 3 and stats["spilled"] == 0
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql(
                "SELECT count(*) FROM audit_events_2026_08 WHERE event_type = 'late'").scalar() == 1
        assert chain.verify(store).ok


def test_the_purge_command_says_which_months_went_whole(pg_url, capsys):
    from collector.cli import main

    with Store.open(pg_url) as store:
        synthetic.generate(store, 1_000, days=_past_three_months(), seed=6)
    # A cutoff a minute or so after the month's end (printing the days rounds them, and a
    # cutoff a second before the end would keep the month)
    older_than = (datetime.now(UTC) - _three_months_back()).total_seconds() / 86400 - 0.001
    code = main(["purge", "--older-than", f"{older_than:.4f}", "--database", pg_url, "--yes"])
    out, err = capsys.readouterr()
    assert code == 0, err
    dropped = [line for line in out.splitlines() if line.startswith("dropped ")]
    assert len(dropped) == 1 and dropped[0].startswith("dropped 1 whole month: audit_events_"), out
    assert main(["verify", "--database", pg_url]) == 0


def test_the_integrity_page_shows_the_months_kept_and_what_each_purge_dropped(pg_url, monkeypatch):
    from test_dashboard import _open, _signed_in

    with Store.open(pg_url) as store:
        synthetic.generate(store, 1_000, days=_past_three_months(), seed=6)
        result = retention.purge(store, datetime.now(UTC) - _three_months_back(), now=datetime.now(UTC))
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE audit_events")
            # (counted before the sign-in, which records an event of its own)
            held = dict(conn.exec_driver_sql(
                "SELECT tableoid::regclass::text, count(*) FROM audit_events GROUP BY 1").all())
    assert result.dropped_partitions
    at = _open(_signed_in(pg_url, monkeypatch), "integrity")
    [purges] = [d.value for d in at.dataframe if "months dropped" in d.value.columns]
    assert purges["months dropped"].iloc[0] == ", ".join(result.dropped_partitions)
    [months] = [d.value for d in at.dataframe if "partition" in d.value.columns]
    shown = dict(zip(months["partition"], months["events (estimate)"], strict=True))
    assert not set(result.dropped_partitions) & set(shown)
    assert {name for name, n in shown.items() if n} == set(held)  # analysed: the estimates are the counts
    assert all(shown[name] == n for name, n in held.items())


def _past_three_months() -> float:
    """Days from 20 days before the month three months back to now, whatever today is: the
    month before it then holds 20 days of events, all older than its end."""
    return (datetime.now(UTC) - _three_months_back()).total_seconds() / 86400 + 20


def _three_months_back() -> datetime:
    month = partitions.month_of(datetime.now(UTC))
    for _ in range(3):
        month = partitions.month_of(month - timedelta(days=1))
    return month
