"""Crash safety: SIGKILL in the middle of heavy recording loses nothing acknowledged.

``flush()`` returning True is the acknowledgement: every event recorded before it is then
durable (committed, or fsync'd to the spill file). After a SIGKILL the store must pass
SQLite's integrity check and ``verify``, hold every acknowledged event, re-ingest the spill
file on the next start, and take new events.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from storekit import env_for_child, event_ids, isolate_keys

from collector import chain
from collector.recorder import Recorder
from collector.store import Store

WRITER = str(Path(__file__).resolve().parent / "writer_process.py")

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _keys(monkeypatch, tmp_path):
    isolate_keys(monkeypatch, tmp_path)


def run_and_kill(url: str, tmp_path: Path, *, prefix: str, kill_after: int, extra=()) -> int:
    """Start a heavy writer, SIGKILL it once ``kill_after`` events are acknowledged."""
    proc = subprocess.Popen(
        [
            sys.executable,
            WRITER,
            url,
            "--events",
            "1000000",
            "--prefix",
            prefix,
            "--flush-every",
            "250",
            *extra,
        ],
        env=env_for_child(tmp_path),
        stdout=subprocess.PIPE,
        text=True,
    )
    acked = 0
    try:
        for line in proc.stdout:
            if line.startswith("acked "):
                acked = int(line.split()[1])
                if acked >= kill_after:
                    break
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the writer is still busy
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert acked >= kill_after
    return acked


def finish_normally(url: str, tmp_path: Path, prefix: str, events: int) -> None:
    subprocess.run(
        [sys.executable, WRITER, url, "--events", str(events), "--prefix", prefix],
        env=env_for_child(tmp_path),
        check=True,
        timeout=120,
        capture_output=True,
    )


def integrity_ok(url: str) -> None:
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sigkill_loses_no_acknowledged_event_and_a_second_run_works(database_url, tmp_path):
    acked = run_and_kill(database_url, tmp_path, prefix="run1", kill_after=1500)
    integrity_ok(database_url)
    with Store.open(database_url) as store:
        report = chain.verify(store)
        assert report.ok, report.problem
        ids = event_ids(store)
    assert {f"run1-{i:06d}" for i in range(acked)} <= ids
    finish_normally(database_url, tmp_path, "run2", 300)
    integrity_ok(database_url)
    with Store.open(database_url) as store:
        assert chain.verify(store).ok
        assert {f"run2-{i:06d}" for i in range(300)} <= event_ids(store)


def test_sigkill_with_normal_durability_still_loses_nothing_committed(tmp_path):
    # synchronous=NORMAL risks the last commits on power loss, not on a process crash.
    url = f"sqlite:///{tmp_path / 'normal' / 'audit.db'}"
    acked = run_and_kill(url, tmp_path, prefix="n", kill_after=1000, extra=("--durability", "normal"))
    integrity_ok(url)
    with Store.open(url) as store:
        assert chain.verify(store).ok
        assert {f"n-{i:06d}" for i in range(acked)} <= event_ids(store)


def test_a_spill_file_left_by_a_killed_process_is_reingested_on_the_next_start(sqlite_url, tmp_path):
    Store.open(sqlite_url).close()
    path = sqlite_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the store is unavailable to the writer
    try:
        acked = run_and_kill(
            sqlite_url, tmp_path, prefix="spill", kill_after=500, extra=("--lock-timeout", "0.05")
        )
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    spills = list(Path(path).parent.glob("spill-*.ndjson"))
    assert spills, "the killed writer left its spill file behind"
    with Store.open(sqlite_url) as store:
        with Recorder(store) as rec:
            assert rec.flush(30)
        rec_stats = rec.stats()
        assert rec_stats["reingested"] >= acked
        assert {f"spill-{i:06d}" for i in range(acked)} <= event_ids(store)
        assert not list(Path(path).parent.glob("spill-*"))
        assert chain.verify(store).ok
    integrity_ok(sqlite_url)
