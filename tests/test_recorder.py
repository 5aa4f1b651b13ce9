"""The recorder: queue, background batches, full-queue policies, spill and re-ingest."""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import sqlalchemy as sa
from storekit import count, env_for_child, event_ids, record, records

from collector import chain
from collector.errors import QueueFull
from collector.models import AuditEvent
from collector.recorder import Recorder, RecorderClosed
from collector.store import CHAIN_LOCK_KEY, Store

# Key files under the test's own directory; `store` (conftest) opens `database_url`.
pytestmark = pytest.mark.usefixtures("isolated_keys")


@contextlib.contextmanager
def write_lock_held(store: Store):
    """Another session holds the chain's write lock, as a long-running writer would."""
    if store.dialect == "sqlite":
        raw = sqlite3.connect(store.url, isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            raw.execute("ROLLBACK")
            raw.close()
        return
    engine = sa.create_engine(store.engine.url)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": CHAIN_LOCK_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": CHAIN_LOCK_KEY})
            conn.commit()
    engine.dispose()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_recorded_events_are_written_in_batches_and_chained(store, writer):
    with Recorder(store, batch_size=50, writer=writer) as rec:
        for r in records(240):
            rec.record(r)
        assert rec.flush(timeout=30)
        stats = rec.stats()
    assert count(store) == 240
    assert stats["written"] == 240 and stats["queued"] == 0 and stats["spilled"] == 0
    assert 5 <= stats["batches"] < 240 and stats["last_error"] is None
    assert chain.verify(store).ok
    with store.engine.connect() as conn:
        seqs = [r[0] for r in conn.exec_driver_sql("SELECT seq FROM audit_events ORDER BY seq")]
        instance = conn.exec_driver_sql("SELECT DISTINCT instance_id FROM audit_events").scalars().all()
    assert seqs == list(range(1, 241))  # contiguous: a gap would itself reveal a deletion
    assert len(instance) == 1 and instance[0].endswith(f":{__import__('os').getpid()}")


def test_record_returns_while_the_store_is_busy(store):
    # record() only enqueues: it returns even though the writer cannot get the lock.
    with Recorder(store, queue_size=1000) as rec:
        with write_lock_held(store):
            for r in records(100):
                rec.record(r)
            assert count(store) == 0
            assert not rec.flush(timeout=0.2)  # not durable yet, and flush says so
        assert rec.flush(timeout=30)
    assert count(store) == 100


def test_full_queue_with_raise_policy_refuses_loudly_and_loses_nothing_accepted(store):
    accepted = []
    with Recorder(store, queue_size=5, batch_size=1, when_full="raise") as rec:
        with write_lock_held(store), pytest.raises(QueueFull, match="queue is full"):
            for r in records(50):
                rec.record(r)
                accepted.append(r.event_id)
        assert rec.flush(timeout=30)
    assert 5 <= len(accepted) < 50
    assert event_ids(store) == set(accepted)


def test_full_queue_with_block_policy_waits_then_gives_up_after_block_timeout(store):
    with Recorder(store, queue_size=3, batch_size=1, block_timeout=0.3) as rec:
        with write_lock_held(store):
            started = time.monotonic()
            with pytest.raises(QueueFull, match="stayed full"):
                for r in records(20):
                    rec.record(r)
            assert time.monotonic() - started >= 0.3
        assert rec.flush(timeout=30)


def test_full_queue_with_block_policy_resumes_when_the_writer_catches_up(store):
    done = threading.Event()
    with Recorder(store, queue_size=4, batch_size=2) as rec:
        with write_lock_held(store):

            def produce():
                for r in records(30):
                    rec.record(r)
                done.set()

            producer = threading.Thread(target=produce)
            producer.start()
            time.sleep(0.3)
            assert not done.is_set()  # blocked on the full queue, not dropping
        producer.join(30)
        assert done.is_set()
        assert rec.flush(timeout=30)
    assert count(store) == 30


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_unreachable_store_spills_and_the_next_start_reingests_once(database_url, tmp_path, writer):
    store = Store.open(database_url, lock_timeout=0.1)  # (a writer process opens it the same way)
    try:
        with write_lock_held(store):
            rec = Recorder(store, writer=writer).start()
            for r in records(25):
                rec.record(r)
            assert rec.flush(timeout=30)  # durable: in the spill file
            stats = rec.stats()
            assert stats["spilled"] == 25 and stats["written"] == 0 and stats["last_error"]
            rec.close(timeout=5)
            spills = rec.spill_files()
            assert len(spills) == 1 and spills[0].parent == store.key_dir
            lines = spills[0].read_text().splitlines()
            assert len(lines) == 25 and json.loads(lines[0])["event_id"] == "e-0000000"
        assert count(store) == 0
        with Recorder(store) as again:
            assert wait_for(lambda: again.stats()["reingested"] == 25)
        assert again.spill_files() == []
        assert event_ids(store) == {f"e-{i:07d}" for i in range(25)}
        with Recorder(store) as third:  # nothing left to re-ingest, nothing doubled
            third.record(record(99, event_id="after"))
        assert count(store) == 26
        assert chain.verify(store).ok
    finally:
        store.close()


def test_spilled_events_come_home_as_soon_as_the_store_answers_again(sqlite_url):
    with Store.open(sqlite_url, lock_timeout=0.1) as store, Recorder(store) as rec:
        with write_lock_held(store):
            for r in records(10, prefix="outage"):
                rec.record(r)
            assert rec.flush(timeout=30)
            assert rec.stats()["spilled"] == 10
        time.sleep(0.6)  # the writer's first back-off pause after an outage is 0.5 s
        for r in records(5, prefix="later"):
            rec.record(r)
        assert rec.flush(timeout=30)
        assert wait_for(lambda: rec.stats()["reingested"] == 10)
        assert count(store) == 15 and rec.spill_files() == []
        assert chain.verify(store).ok


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_postgresql_going_away_spills_and_reingests(pg_url, writer):
    admin = sa.create_engine(
        sa.engine.make_url(pg_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    name = sa.engine.make_url(pg_url).database
    store = Store.open(pg_url)
    try:
        with Recorder(store, writer=writer) as rec:
            rec.record(record(0, event_id="before"))
            assert rec.flush(10)
            with admin.connect() as conn:
                conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                conn.execute(
                    sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                    {"d": name},
                )
            for r in records(12, prefix="down"):
                rec.record(r)
            assert rec.flush(timeout=60)
            assert rec.stats()["spilled"] == 12
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        with Recorder(store) as again:
            assert wait_for(lambda: again.stats()["reingested"] == 12, 30)
        assert count(store) == 13 and chain.verify(store).ok
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
        store.close()


def test_close_spills_what_cannot_be_written_in_time(sqlite_url):
    with Store.open(sqlite_url) as store:
        rec = Recorder(store, batch_size=5).start()
        with write_lock_held(store):
            for r in records(20):
                rec.record(r)
            assert rec.close(timeout=0.3) is False  # something had to be spilled
            with pytest.raises(RecorderClosed):
                rec.record(record(1))
        with Recorder(store) as again:
            assert again.flush(10)
            assert wait_for(lambda: count(store) == 20)
        assert chain.verify(store).ok


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_duplicate_event_id_is_stored_once(store, writer):
    with Recorder(store, writer=writer) as rec:
        rec.record(record(1, event_id="dup"))
        assert rec.flush(10)
        rec.record(record(2, event_id="dup"))
        rec.record(record(3, event_id="fresh"))
        assert rec.flush(10)
        assert rec.stats()["spilled"] == 0
    assert event_ids(store) == {"dup", "fresh"}
    assert chain.verify(store).ok


def test_write_now_is_synchronous_and_chained(store):
    rec = Recorder(store)
    event = rec.write_now(record(1, direction="internal", event_type="export", event_id="x1"))
    assert isinstance(event, AuditEvent)
    assert event.seq == 1 and event.prev_hash == chain.GENESIS and len(event.hash) == 64
    assert count(store) == 1 and chain.verify(store).ok
    rec.close()


def test_invalid_settings_are_refused(store):
    with pytest.raises(ValueError, match="when_full"):
        Recorder(store, when_full="drop")
    with pytest.raises(ValueError, match="positive"):
        Recorder(store, queue_size=0)


@pytest.mark.slow
def test_events_are_flushed_at_interpreter_exit(sqlite_url, tmp_path):
    script = textwrap.dedent(
        f"""
        from collector.recorder import Recorder
        from collector.store import Store
        from storekit import records
        store = Store.open({sqlite_url!r})
        rec = Recorder(store)
        for r in records(300):
            rec.record(r)
        # no flush, no close: the atexit hook must write them
        """
    )
    env = env_for_child(tmp_path)
    env["PYTHONPATH"] = f"{__import__('pathlib').Path(__file__).parent}:{env['PYTHONPATH']}"
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)
    with Store.open(sqlite_url) as store:
        assert count(store) == 300
        assert chain.verify(store).ok


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_the_writer_keeps_the_rollups_current(database_url, writer):
    # Issue 6: rollups are maintained at ingest, so the dashboard never meets a backlog.
    from collector import query
    from collector.events import AuditRecord
    from collector.recorder import Recorder
    from collector.store import Store

    store = Store.open(database_url)
    try:
        with Recorder(store, rollup_interval=0.0, writer=writer) as recorder:
            for i in range(250):
                recorder.record(AuditRecord(direction="incoming", outcome="allowed", path=f"/p/{i}"))
            recorder.flush()
            # Folded by the running writer once the queue drained, not by close().
            assert wait_for(lambda: query.rollup_lag(store) == 0)
        assert query.count(store, query.EventFilter()) == 250
    finally:
        store.close()


def test_rollups_can_be_left_to_the_dashboard(sqlite_url):
    from collector import query
    from collector.events import AuditRecord
    from collector.recorder import Recorder
    from collector.store import Store

    store = Store.open(sqlite_url)
    try:
        with Recorder(store, rollup_interval=None) as recorder:
            for _ in range(10):
                recorder.record(AuditRecord(direction="incoming", outcome="allowed"))
        assert query.rollup_lag(store) == 10
        assert query.refresh_rollups(store, limit=4) >= 4  # a bounded fold stops early
        assert 0 < query.rollup_lag(store) <= 6
    finally:
        store.close()


def test_a_burst_is_written_first_and_folded_within_the_lag_bound(sqlite_url, monkeypatch):
    # While more than a batch is queued the writer keeps writing events and folds only
    # when the unfolded lag reaches its bound; when the burst ends it folds the rest.
    from collector import query
    from collector import recorder as recorder_mod

    monkeypatch.setattr(recorder_mod, "ROLLUP_MAX_LAG_EVENTS", 100)
    store = Store.open(sqlite_url)
    path = sqlite_url.removeprefix("sqlite:///")
    with store.engine.begin() as conn:  # every fold moves the hourly watermark: log each move
        conn.exec_driver_sql("CREATE TABLE fold_log (last_seq INTEGER)")
        conn.exec_driver_sql(
            "CREATE TRIGGER log_fold AFTER UPDATE OF last_seq ON rollup_state "
            "WHEN new.name = 'events' BEGIN INSERT INTO fold_log VALUES (new.last_seq); END"
        )
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # the store is busy: the queue fills up
        recorder = Recorder(store, batch_size=10, rollup_interval=0.0, queue_size=1000).start()
        for rec in records(500):
            recorder.record(rec)
        blocker.execute("COMMIT")
        assert recorder.flush(timeout=60)
        assert wait_for(lambda: query.rollup_lag(store) == 0)  # folded once the burst ended
        folds = [r[0] for r in blocker.execute("SELECT last_seq FROM fold_log")]
        recorder.close()
    finally:
        blocker.close()
        store.close()
    # 50 batches; folding after each would log 50 moves. Within the burst each fold
    # waited for 100 unfolded events.
    assert folds and folds[-1] == 500
    assert 2 <= len(folds) <= 8, folds
    in_burst = [0, *folds[:-1]]  # the last fold, at the burst's end, takes what is left
    assert all(b - a >= 100 for a, b in itertools.pairwise(in_burst)), folds
