"""The retention policy over a year of generated history, on SQLite and PostgreSQL: applied in
steps, by the recorder itself or by ``purge --policy``, archived first, ``verify`` intact after."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from storekit import count, env_for_child, record

from collector import chain, retention, synthetic
from collector.errors import ConfigurationError
from collector.recorder import Recorder
from collector.retention import RetentionPolicy, apply_policy
from collector.store import Store

pytestmark = pytest.mark.usefixtures("isolated_keys")

NOW = datetime.now(UTC).replace(microsecond=0)
YEAR = 6_000  # events over 365 days


def a_year(url: str) -> Store:
    store = Store.open(url)
    synthetic.generate(store, YEAR, tenants=5, days=365, seed=3, now=NOW)
    return store


def ages(store: Store) -> tuple[datetime, int]:
    with store.engine.connect() as conn:
        oldest, n = conn.execute(sa.select(sa.func.min(chain.EVENTS.c.ts), sa.func.count())).first()
    oldest = datetime.fromisoformat(oldest) if isinstance(oldest, str) else oldest
    return (oldest.replace(tzinfo=UTC) if oldest.tzinfo is None else oldest), n


def purge_events(store: Store) -> list[dict]:
    with store.engine.connect() as conn:
        rows = (
            conn.execute(
                sa.text(
                    "SELECT extra FROM audit_events WHERE direction = 'internal' "
                    "AND event_type = 'purge' ORDER BY seq"
                )
            )
            .scalars()
            .all()
        )
    return [json.loads(r) for r in rows]


def test_a_year_kept_to_90_days_in_steps_archived_first_and_verify_intact(database_url, tmp_path):
    archive = tmp_path / "archive"
    with a_year(database_url) as store:
        before = count(store)
        policy = RetentionPolicy(days=90, archive_dir=archive)
        planned = retention.policy_plan(store, policy, now=NOW)
        run = apply_policy(store, policy, now=NOW, chunk=1_000)
        assert run.removed == planned.removed > 0 and len(run.purges) == -(-planned.removed // 1_000)
        oldest, kept = ages(store)
        assert oldest >= NOW - timedelta(days=90) - timedelta(seconds=1)
        assert kept == before - run.removed + len(run.purges)  # each step appends its purge event
        report = chain.verify(store)
        assert report.ok, report.problem
        # Every removed event is in an archive, whose digest and size the chain records.
        records = purge_events(store)
        assert [r["archive"]["file"] for r in records] == [a["file"] for a in run.archives]
        archived = 0
        for rec in records:
            data = (archive / rec["archive"]["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == rec["archive"]["sha256"]
            assert len(data) == rec["archive"]["bytes"] and rec["policy"]["days"] == 90
            lines = gzip.decompress(data).decode().splitlines()
            seqs = [json.loads(line)["seq"] for line in lines]
            assert seqs == list(range(rec["archive"]["first_seq"], rec["archive"]["last_seq"] + 1))
            assert all(len(json.loads(line)["hash"]) == 64 for line in lines)
            archived += len(lines)
        assert archived == run.removed
        assert oct(archive.stat().st_mode & 0o777) == "0o700"
        # Applied again: nothing more goes.
        assert apply_policy(store, policy, now=NOW).removed == 0


def test_an_event_budget_keeps_the_newest_events(sqlite_url):
    with a_year(sqlite_url) as store:
        run = apply_policy(store, RetentionPolicy(max_events=2_000), now=NOW, chunk=700)
        _, kept = ages(store)
        assert kept == 2_000 + len(run.purges) and chain.verify(store).ok
        # Both limits: whichever removes more wins.
        both = apply_policy(store, RetentionPolicy(days=30, max_events=1_900), now=NOW)
        oldest, _ = ages(store)
        assert both.removed > 100 and oldest >= NOW - timedelta(days=30, seconds=1) and chain.verify(store).ok


def test_the_recorder_applies_the_policy_by_itself_without_holding_up_its_writes(database_url):
    with a_year(database_url) as store:
        policy = RetentionPolicy(days=180)
        rec = Recorder(store, retention=policy, retention_delay=0.1, retention_interval=3600).start()
        for i in range(300):  # traffic goes on while the purge runs in steps
            rec.record(record(i, event_id=f"live-{i}"))
            time.sleep(0.001)
        assert rec.flush(30)
        deadline = time.monotonic() + 60
        while rec.stats()["retained"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        rec.close()
        assert rec.stats()["retained"] > 0 and rec.stats()["last_error"] is None
        oldest, _ = ages(store)
        assert oldest >= NOW - timedelta(days=180, seconds=1)
        with store.engine.connect() as conn:
            live = conn.execute(
                sa.text("SELECT count(*) FROM audit_events WHERE event_id LIKE 'live-%'")
            ).scalar()
        assert live == 300 and chain.verify(store).ok


def test_a_writer_process_applies_the_policy_too(sqlite_url):
    with a_year(sqlite_url) as store:
        rec = Recorder(
            store, writer="process", retention=RetentionPolicy(max_events=1_000), retention_delay=0.1
        ).start()
        rec.record(record(1, event_id="after"))
        assert rec.flush(30)
        deadline = time.monotonic() + 60
        while count(store) > 1_100 and time.monotonic() < deadline:
            time.sleep(0.1)
        rec.close()
        assert count(store) <= 1_100 and chain.verify(store).ok


def test_the_policy_comes_from_the_environment_and_a_wrong_value_is_refused():
    assert RetentionPolicy.from_env({}) is None
    policy = RetentionPolicy.from_env(
        {
            "CONNECT_AUDIT_RETENTION_DAYS": "365",
            "CONNECT_AUDIT_RETENTION_MAX_EVENTS": "5_000_000",
            "CONNECT_AUDIT_RETENTION_ARCHIVE": "/srv/archive",
        }
    )
    assert policy == RetentionPolicy(365.0, 5_000_000, Path("/srv/archive"))
    assert (
        policy.describe() == "keep 365 days and at most 5,000,000 events; archive what goes to /srv/archive"
    )
    for env, message in (
        ({"CONNECT_AUDIT_RETENTION_DAYS": "a year"}, "must be a number of days"),
        ({"CONNECT_AUDIT_RETENTION_DAYS": "-3"}, "positive number"),
        ({"CONNECT_AUDIT_RETENTION_MAX_EVENTS": "1e6"}, "must be a whole number"),
        ({"CONNECT_AUDIT_RETENTION_ARCHIVE": "/srv"}, "neither"),
    ):
        with pytest.raises(ConfigurationError, match=message):
            RetentionPolicy.from_env(env)


def test_purge_policy_applies_the_configured_policy(sqlite_url, tmp_path):
    a_year(sqlite_url).close()
    env = env_for_child(tmp_path)
    command = [sys.executable, "-m", "collector.cli", "purge", "--policy", "--yes", "--database", sqlite_url]
    none = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert none.returncode == 2 and "no retention policy" in none.stderr
    env.update(CONNECT_AUDIT_RETENTION_DAYS="60", CONNECT_AUDIT_RETENTION_ARCHIVE=str(tmp_path / "arch"))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "go by the policy (keep 60 days; archive what goes to" in done.stderr
    assert done.stdout.startswith("purged ") and "archived seq 1 to " in done.stdout
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and again.stdout.startswith("nothing to purge")
    verify = subprocess.run(
        [sys.executable, "-m", "collector.cli", "verify", "--database", sqlite_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert verify.returncode == 0 and verify.stdout.startswith("chain intact")
