"""The writer process (``Recorder(writer="process")``): the same rows as the writer thread, off
this process, and nothing lost when it dies, cannot start, or the application forks."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from storekit import count, event_ids, record, records

from collector import chain
from collector.errors import ConfigurationError
from collector.recorder import Recorder
from collector.store import Store

pytestmark = pytest.mark.usefixtures("isolated_keys")

STORED = "SELECT * FROM audit_events ORDER BY seq"


def rows(store: Store) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.exec_driver_sql(STORED)]


def test_the_writer_process_stores_byte_for_byte_what_the_writer_thread_stores(tmp_path):
    batch = records(300)
    batch.append(record(7, event_id="odd", claims={"name": "Zoë \x00 ☃", "lock": threading.Lock()},
                        path="/wiki/x?\u202e", latency_ms=float("nan")))
    stored = {}
    for writer in ("thread", "process"):
        with Store.open(f"sqlite:///{tmp_path / writer}.db") as store:
            with Recorder(store, writer=writer, batch_size=64, instance_id="app-1") as rec:
                for r in batch:
                    rec.record(r)
                assert rec.flush(30)
                assert rec.stats()["writer"] == writer
            stored[writer] = rows(store)
            assert chain.verify(store).ok
    assert len(stored["process"]) == 301
    # Same columns, same values, same hashes: the process only moves where the work is done.
    assert stored["process"] == stored["thread"]


def test_the_writer_runs_in_another_process_and_stops_with_the_recorder(database_url):
    with Store.open(database_url) as store:
        rec = Recorder(store, writer="process").start()
        for r in records(40):
            rec.record(r)
        assert rec.flush(30)
        stats = rec.stats()
        pid = rec.writer_pid
        assert stats["writer"] == "process" and stats["writer_pid"] == pid and pid != os.getpid()
        assert stats["written"] == 40 and stats["batches"] >= 1 and stats["last_error"] is None
        assert rec.close(timeout=30) is True
        assert rec.writer_pid is None
        with pytest.raises(ProcessLookupError):  # exited and reaped, not left behind
            os.kill(pid, 0)
        assert count(store) == 40 and chain.verify(store).ok
        # The child signed a checkpoint at its close: the chain's tail is vouched for.
        assert chain.verify(store).last_checkpoint["seq"] == 40


@pytest.mark.postgres
def test_the_database_url_is_not_on_the_writer_processs_command_line_or_environment(pg_url):
    # The test database's name is new for this test: it can only reach the child over the pipe.
    database = sa.engine.make_url(pg_url).database
    with Store.open(pg_url) as store, Recorder(store, writer="process") as rec:
        rec.record(record(1))
        assert rec.flush(30)
        pid = rec.writer_pid
        for name in ("cmdline", "environ"):
            seen = Path(f"/proc/{pid}/{name}").read_bytes()
            assert database.encode() not in seen and pg_url.encode() not in seen, name
        assert count(store) == 1


def test_a_killed_writer_process_is_replaced_and_loses_or_doubles_nothing(database_url):
    with Store.open(database_url) as store:
        rec = Recorder(store, writer="process", batch_size=50).start()
        for r in records(100, prefix="before"):
            rec.record(r)
        assert rec.flush(30)
        first = rec.writer_pid
        os.kill(first, signal.SIGKILL)
        for r in records(150, prefix="after"):
            rec.record(r)
        assert rec.flush(60)
        second = rec.writer_pid
        assert second is not None and second != first
        assert "exited with code -9" in rec.stats()["last_error"]
        rec.close(timeout=30)
        assert count(store) == 250
        assert event_ids(store) == {f"before-{i:07d}" for i in range(100)} | {
            f"after-{i:07d}" for i in range(150)}
        assert chain.verify(store).ok


def test_a_writer_process_that_cannot_start_leaves_the_writing_to_this_process(sqlite_url, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    with Store.open(sqlite_url) as store:
        with Recorder(store, writer="process") as rec:
            for r in records(30):
                rec.record(r)
            assert rec.flush(30)
            stats = rec.stats()
        assert stats["writer"] == "thread" and stats["writer_pid"] is None
        assert "the writer process cannot be started" in stats["last_error"]
        assert stats["written"] == 30 and count(store) == 30 and chain.verify(store).ok


def test_a_writer_process_that_cannot_open_the_store_says_why_and_nothing_is_lost(tmp_path):
    path = tmp_path / "audit.db"
    with Store.open(f"sqlite:///{path}") as store:
        rec = Recorder(store, writer="process")
        store._opened_with["url"] = f"sqlite:///{tmp_path / 'moved-away.db'}"  # gone, as a moved file is
        rec.start()
        for r in records(10):
            rec.record(r)
        assert rec.flush(30)
        stats = rec.stats()
        rec.close()
        assert stats["writer"] == "thread"
        assert "could not open the store" in stats["last_error"] and "moved-away.db" in stats["last_error"]
        assert count(store) == 10


def test_a_forked_worker_gets_its_own_writer_process_and_the_parents_still_stops(sqlite_url):
    with Store.open(sqlite_url) as store:
        rec = Recorder(store, writer="process").start()
        rec.record(record(0, event_id="parent-0"))
        assert rec.flush(30)
        parent_writer = rec.writer_pid
        child = os.fork()
        if child == 0:  # the worker, as gunicorn --preload forks it
            code = 1
            try:
                rec.record(record(1, event_id="worker-1"))
                ok = rec.flush(30) and rec.writer_pid not in (None, parent_writer)
                code = 0 if ok and rec.close(timeout=30) else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        rec.record(record(2, event_id="parent-2"))
        assert rec.flush(30)
        started = time.monotonic()
        assert rec.close(timeout=30) is True
        # The worker dropped its copy of the pipe: the parent's writer saw the end of its input.
        assert time.monotonic() - started < 10
        assert event_ids(store) == {"parent-0", "worker-1", "parent-2"}
        assert chain.verify(store).ok


def test_the_writer_comes_from_the_environment_and_a_wrong_name_is_refused(sqlite_url, monkeypatch):
    with Store.open(sqlite_url) as store:
        monkeypatch.setenv("CONNECT_AUDIT_WRITER", "process")
        assert Recorder(store).writer == "process"
        assert Recorder(store, writer="thread").writer == "thread"  # the argument wins
        monkeypatch.setenv("CONNECT_AUDIT_WRITER", "fork")
        with pytest.raises(ConfigurationError, match="CONNECT_AUDIT_WRITER must be one of thread, process"):
            Recorder(store)
        with pytest.raises(ConfigurationError, match="writer must be one of thread, process, not 'green'"):
            Recorder(store, writer="green")
