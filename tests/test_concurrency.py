"""Concurrent writers: four processes recording into one store at the same time.

SQLite serialises writers with BEGIN IMMEDIATE and a busy timeout; PostgreSQL with an
advisory lock on the chain head. Either way: no "database is locked", no lost event, no
spill, and one intact chain.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from storekit import count, env_for_child, event_ids, isolate_keys

from collector import chain
from collector.store import Store

WRITER = str(Path(__file__).resolve().parent / "writer_process.py")
PROCESSES = 4
EVENTS = 800

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _keys(monkeypatch, tmp_path):
    isolate_keys(monkeypatch, tmp_path)


def test_four_processes_write_one_store_concurrently(database_url, tmp_path):
    Store.open(database_url).close()  # created once, so every writer shares one key file
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                WRITER,
                database_url,
                "--events",
                str(EVENTS),
                "--prefix",
                f"p{k}",
                "--flush-every",
                "100",
                "--wait-for-go",
            ],
            env=env_for_child(tmp_path),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(PROCESSES)
    ]
    # Start them together: interpreter start-up on a busy machine would otherwise let one
    # writer finish before the last one begins, and the test would prove nothing.
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "database is locked" not in err
        stats = json.loads(out.strip().splitlines()[-1])
        assert stats["written"] == EVENTS and stats["spilled"] == 0 and stats["last_error"] is None
    with Store.open(database_url) as store:
        expected = {f"p{k}-{i:06d}" for k in range(PROCESSES) for i in range(EVENTS)}
        assert event_ids(store) == expected
        assert count(store) == PROCESSES * EVENTS
        report = chain.verify(store)
        assert report.ok, report.problem
        assert report.events_checked == PROCESSES * EVENTS
        with store.engine.connect() as conn:
            instances = conn.exec_driver_sql("SELECT count(DISTINCT instance_id) FROM audit_events").scalar()
            interleaved = conn.exec_driver_sql(
                "SELECT count(*) FROM audit_events a JOIN audit_events b ON b.seq = a.seq + 1 "
                "WHERE a.instance_id <> b.instance_id"
            ).scalar()
    assert instances == PROCESSES
    assert interleaved > PROCESSES  # the writers really ran at the same time
