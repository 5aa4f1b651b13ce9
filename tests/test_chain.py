"""Tamper evidence: canonical form, hash links, signed checkpoints, verify, purge."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storekit import count, record, records, tamper

from collector import chain, retention
from collector.errors import ConfigurationError
from collector.recorder import Recorder
from collector.store import Store

# Key files under the test's own directory; `store` (conftest) opens `database_url`.
pytestmark = pytest.mark.usefixtures("isolated_keys")


def fill(store: Store, n: int, *, checkpoint_every: int = 10, flush_every: int | None = None) -> None:
    with Recorder(store, checkpoint_every=checkpoint_every) as rec:
        for i, r in enumerate(records(n), 1):
            rec.record(r)
            if flush_every and i % flush_every == 0:
                assert rec.flush(timeout=30)  # one batch each: a checkpoint per multiple
        assert rec.flush(timeout=30)


# ---------------------------------------------------------------------- canonical form


def test_canonical_form_is_sorted_compact_with_explicit_nulls_and_utc_micro_timestamps():
    ts = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    row = chain.event_row(record(1, ts=ts, account_id=None, event_id="e-1"))
    row["prev_hash"] = chain.GENESIS
    doc = json.loads(chain.canonical(row))
    assert list(doc) == sorted(doc) == list(chain.HASHED_COLUMNS)
    assert "seq" not in doc and "hash" not in doc
    assert doc["ts"] == "2026-01-02T03:04:05.000000Z"
    assert doc["account_id"] is None and '"account_id":null' in chain.canonical(row).decode()
    assert doc["claims"] == '{"exp":1700000181,"iat":1700000001,"iss":"app","qsh_kind":"computed","sub":null}'
    assert b" " not in chain.canonical(row).replace(b"READ WRITE", b"")


def test_the_same_instant_in_another_time_zone_hashes_the_same():
    utc = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    other = utc.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Kolkata"))
    a = chain.event_row(record(1, ts=utc, event_id="x"))
    b = chain.event_row(record(1, ts=other, event_id="x"))
    a["prev_hash"] = b["prev_hash"] = chain.GENESIS
    assert chain.event_hash(a) == chain.event_hash(b)


_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=()), max_size=40) | st.none()


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=_text,
    account=_text,
    detail=st.text(max_size=60),
    latency=st.floats(allow_nan=True, allow_infinity=True) | st.none(),
    status=st.integers(min_value=0, max_value=999) | st.none(),
    micro=st.integers(min_value=0, max_value=999_999),
)
def test_any_stored_event_rehashes_identically_after_a_round_trip(
    sqlite_url, path, account, detail, latency, status, micro
):
    # Whatever text arrives (NUL, surrogates, CR/LF, formula prefixes), the hash computed at
    # write time must equal the hash recomputed from what the database gives back.
    ts = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=micro)
    with Store.open(sqlite_url) as store:
        rec = record(
            3, ts=ts, path=path, account_id=account, detail=detail, latency_ms=latency, status=status
        )
        twin = record(
            4, ts=ts, path=path, account_id=account, detail=detail, latency_ms=latency, status=status
        )
        with store.write_transaction() as conn:
            chain.append(conn, [chain.event_row(rec)])  # the generic path (purge, re-ingest)
            # The recorder's fast path: precomputed around prev_hash, outside the lock.
            chain.append_prepared(conn, [chain.prepare_record(twin, sqlite=True)])
        report = chain.verify(store)
        assert report.ok, report.problem
        tamper(store, "DELETE FROM audit_events")


def test_a_negative_zero_latency_is_stored_as_zero_and_verifies(store):
    # Found by the property test above: SQLite gives a stored -0.0 back as 0.0.
    with store.write_transaction() as conn:
        chain.append(conn, [chain.event_row(record(1, latency_ms=-0.0))])
        chain.append_prepared(conn, [chain.prepare_record(record(2, latency_ms=-0.0),
                                                          sqlite=store.dialect == "sqlite")])
    assert chain.verify(store).ok


_records = st.builds(
    lambda i, path, account, detail, latency, status, extra, micro: record(
        i, path=path, account_id=account, detail=detail, latency_ms=latency, status=status, extra=extra,
        ts=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=micro), instance_id=None),
    st.integers(min_value=0, max_value=10_000), _text, _text, st.text(max_size=60),
    st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 10**6) | st.none(),
    st.integers(min_value=0, max_value=999) | st.none(),
    st.none() | st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=3),
    st.integers(min_value=0, max_value=999_999),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rec=_records, sqlite=st.booleans(), prev=st.sampled_from([chain.GENESIS, "ab" * 32]))
def test_the_fast_path_is_byte_equal_to_the_reference_encoder(rec, sqlite, prev):
    """prepare_record (the recorder's) against canonical(event_row(...)) (the contract)."""
    fast = chain.prepare_record(rec, "host:1", sqlite=sqlite)
    row = chain.event_row(rec, "host:1")
    row["prev_hash"] = prev
    digest = fast.prefix.copy()
    digest.update(json.dumps(prev).encode() + fast.suffix)
    assert digest.hexdigest() == chain.event_hash(row)
    stored = fast.row
    stored["prev_hash"] = prev
    assert {k: v for k, v in stored.items() if k != "ts"} == {k: v for k, v in row.items() if k != "ts"}


def test_text_is_normalised_to_what_both_backends_store(store):

    rec = record(1, path="/a\x00b", detail="caf\u00e9 \ud800 end", latency_ms=float("nan"))
    with Recorder(store) as r:
        r.record(rec)
        assert r.flush(10)
    assert chain.verify(store).ok
    with store.engine.connect() as conn:
        path, detail, latency = conn.exec_driver_sql(
            "SELECT path, detail, latency_ms FROM audit_events"
        ).one()
    assert path == "/a\ufffdb" and detail == "caf\u00e9 ? end" and latency is None


# ---------------------------------------------------------------------- verify


def test_an_untouched_chain_verifies(store):
    fill(store, 35)
    report = chain.verify(store)
    assert report.ok and report.events_checked == 35 and report.problem is None
    assert report.last_checkpoint["seq"] == 35  # a checkpoint on close covers the tail
    with store.engine.connect() as conn:
        first = conn.exec_driver_sql("SELECT seq, prev_hash FROM audit_events ORDER BY seq LIMIT 1").one()
    assert tuple(first) == (1, chain.GENESIS)


@pytest.mark.parametrize("sizes", [(1, 2, 3), (31, 32, 33), (63, 100, 7)])
def test_batches_of_any_size_are_stored_whole_and_in_chain_order(store, sizes):
    # SQLite writes a batch as multi-row statements of 32, 16, 8, 4, 2 and 1 rows: every
    # split must keep each row's values in its own columns and the seqs contiguous.
    made = list(records(sum(sizes)))
    it = iter(made)
    for size in sizes:
        batch = [chain.prepare_record(next(it), "host:1", sqlite=store.dialect == "sqlite")
                 for _ in range(size)]
        with store.write_transaction() as conn:
            chain.append_prepared(conn, batch)
    assert chain.verify(store).ok
    with store.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT seq, event_id, path FROM audit_events ORDER BY seq").all()
    assert [tuple(r) for r in stored] == [(i, r.event_id, r.path) for i, r in enumerate(made, 1)]


def test_an_empty_store_verifies(store):
    report = chain.verify(store)
    assert report.ok and report.events_checked == 0 and report.last_checkpoint is None


def test_an_edited_event_is_named(store):
    fill(store, 20)
    tamper(store, "UPDATE audit_events SET status = 403 WHERE seq = 12")
    report = chain.verify(store)
    assert not report.ok
    assert report.first_bad_seq == 12 and report.first_bad_event_id == "e-0000011"
    assert "altered" in report.problem


def test_an_edit_with_recomputed_hashes_is_caught_by_a_checkpoint(store):
    fill(store, 20, checkpoint_every=5, flush_every=5)
    # The attacker rewrites event 7 and re-links every later event so that all hashes and
    # links are consistent again; only the signed checkpoints can tell.
    with store.engine.begin() as conn:
        rows = [dict(r._mapping) for r in conn.execute(chain.EVENTS.select().order_by(chain.EVENTS.c.seq))]
    rows[6]["outcome"] = "denied"
    prev = rows[5]["hash"]
    for row in rows[6:]:
        row["prev_hash"] = prev
        prev = chain.event_hash(row)
        tamper(
            store,
            "UPDATE audit_events SET outcome = :o, prev_hash = :p, hash = :h WHERE seq = :s",
            o=row["outcome"],
            p=row["prev_hash"],
            h=prev,
            s=row["seq"],
        )
    report = chain.verify(store)
    assert not report.ok and report.first_bad_seq == 10
    assert "checkpoint" in report.problem and "rewritten" in report.problem


def test_an_impossible_stored_value_is_reported_not_raised(sqlite_url):
    with Store.open(sqlite_url) as store:
        fill(store, 5)
        tamper(store, "UPDATE audit_events SET ts = 'yesterday', latency_ms = 'slow' WHERE seq = 3")
        report = chain.verify(store)
    assert not report.ok and report.first_bad_seq == 3 and "altered" in report.problem


def test_a_deleted_event_is_named(store):

    fill(store, 20)
    tamper(store, "DELETE FROM audit_events WHERE seq = 8")
    report = chain.verify(store)
    assert not report.ok and report.first_bad_seq == 9
    assert "between seq 7 and seq 9 were deleted" in report.problem


def test_reordered_events_are_named(store):
    fill(store, 20)
    # Swap the places of events 5 and 6 (content, links and hashes move with them).
    tamper(store, "UPDATE audit_events SET seq = -5 WHERE seq = 5")
    tamper(store, "UPDATE audit_events SET seq = 5 WHERE seq = 6")
    tamper(store, "UPDATE audit_events SET seq = 6 WHERE seq = -5")
    report = chain.verify(store)
    assert not report.ok and report.first_bad_seq == 5
    assert "reordered" in report.problem


def test_an_inserted_event_is_named(store):
    fill(store, 10)
    forged = chain.event_row(record(99, event_id="forged"))
    forged.update(seq=11, prev_hash="0" * 64)
    forged["hash"] = chain.event_hash(forged)
    with store.write_transaction() as conn:
        # Make room at seq 6 and insert a self-consistent forged event there.
        for seq in range(10, 5, -1):
            conn.execute(
                sa.text("UPDATE audit_events SET seq = :new WHERE seq = :old"), {"new": seq + 1, "old": seq}
            )
        forged["seq"] = 6
        chain.insert(conn, [forged])
    report = chain.verify(store)
    assert not report.ok and report.first_bad_seq == 6 and report.first_bad_event_id == "forged"


def test_a_truncated_tail_is_caught_by_the_last_checkpoint(store):
    fill(store, 30)
    tamper(store, "DELETE FROM audit_events WHERE seq > 25")
    report = chain.verify(store)
    assert not report.ok
    assert "removed from the end" in report.problem and report.first_bad_seq == 26


def test_deleting_the_first_events_without_a_purge_is_caught(store):
    fill(store, 20)
    tamper(store, "DELETE FROM audit_events WHERE seq <= 4")
    report = chain.verify(store)
    assert not report.ok and report.first_bad_seq == 5
    assert "no recorded purge" in report.problem


def test_a_forged_checkpoint_is_caught(store):
    fill(store, 10)
    tamper(store, "UPDATE checkpoints SET signature = :s", s="f" * 64)
    report = chain.verify(store)
    assert not report.ok and "invalid signature" in report.problem


def test_verify_needs_the_checkpoint_key_and_never_invents_one(store):
    fill(store, 5)
    key = store.key_dir / chain.CHECKPOINT_KEY_FILE
    key.unlink()
    with pytest.raises(ConfigurationError, match="checkpoint key is missing"):
        chain.verify(store)
    assert not key.exists()


def test_the_checkpoint_key_can_come_from_the_environment(store, monkeypatch):
    monkeypatch.setenv("CONNECT_AUDIT_CHECKPOINT_KEY", "k" * 32)
    fill(store, 5)
    assert not (store.key_dir / chain.CHECKPOINT_KEY_FILE).exists()
    assert chain.verify(store).ok
    monkeypatch.setenv("CONNECT_AUDIT_CHECKPOINT_KEY", "another key of enough length")
    report = chain.verify(store)
    assert not report.ok and "not with the key in use" in report.problem


def test_progress_is_reported(store):
    fill(store, 25)
    seen = []
    chain.verify(store, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (25, 25)


# ---------------------------------------------------------------------- retention


def test_purge_keeps_the_chain_verifiable_and_is_itself_recorded(store):
    now = datetime.now(UTC)
    old = records(12, start=now - timedelta(days=40), step=timedelta(hours=1), prefix="old")
    new = records(8, start=now - timedelta(days=2), step=timedelta(hours=1), prefix="new")
    with Recorder(store, checkpoint_every=5) as rec:
        for r in old + new:
            rec.record(r)
        assert rec.flush(10)
    result = retention.purge(store, timedelta(days=30), now=now)
    assert result.plan.removed == 12 and result.plan.up_to_seq == 12
    assert count(store) == 8 + 1
    report = chain.verify(store)
    assert report.ok, report.problem
    with store.engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT direction, event_type, extra, seq FROM audit_events WHERE event_type = 'purge'"
        ).one()
    extra = json.loads(row[2])
    assert row[0] == "internal" and row[3] == 21
    assert extra["anchor_seq"] == 12 and extra["removed"] == 12
    # A later unrecorded deletion is still caught after the purge.
    tamper(store, "DELETE FROM audit_events WHERE seq = 13")
    assert not chain.verify(store).ok


def test_purge_removes_only_a_prefix(store):
    now = datetime.now(UTC)
    mixed = [
        record(0, ts=now - timedelta(days=50), event_id="a"),
        record(1, ts=now - timedelta(days=1), event_id="b"),
        record(2, ts=now - timedelta(days=50), event_id="late-but-old"),
    ]
    with Recorder(store) as rec:
        for r in mixed:
            rec.record(r)
    result = retention.purge(store, timedelta(days=30), now=now)
    assert result.plan.removed == 1  # "late-but-old" stays: it follows a kept event
    assert chain.verify(store).ok


def test_purging_twice_and_purging_the_purge_event(store):
    now = datetime.now(UTC)
    with Recorder(store) as rec:
        for r in records(10, start=now - timedelta(days=100), step=timedelta(days=1)):
            rec.record(r)
    retention.purge(store, timedelta(days=95), now=now - timedelta(days=80))
    assert chain.verify(store).ok
    retention.purge(store, timedelta(days=1), now=now + timedelta(days=1))
    report = chain.verify(store)
    assert report.ok, report.problem
    assert count(store) == 1  # only the newest purge event is left


def test_nothing_to_purge(store):
    fill(store, 3)
    result = retention.purge(store, timedelta(days=1))
    assert result.event_id is None and result.plan.removed == 0
    assert count(store) == 3
