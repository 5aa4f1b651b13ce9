"""Highlights on synthetic stores: a steady one gives none; each planted anomaly is found as its kind."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest
from highlightkit import ACME, DAY, DAYS, GLOBEX, NOW, SITES, call, fill, incoming
from storekit import env_for_child, tamper

from collector import events as ev
from collector import highlights
from collector.recorder import Recorder
from collector.rollups import refresh_rollups

pytestmark = pytest.mark.usefixtures("isolated_keys")

def kinds(found):
    return sorted({h.kind for h in found})


def test_a_steady_store_has_no_highlights(database_url):
    with fill(database_url, anomalies=False) as store:
        assert highlights.find(store, since=NOW - timedelta(hours=24), now=NOW, names=SITES) == []


def test_each_planted_anomaly_is_found_as_its_kind(database_url):
    with fill(database_url, anomalies=True) as store:
        found = highlights.find(store, since=NOW - timedelta(hours=24), now=NOW, names=SITES)
    by_kind = {}
    for h in found:
        by_kind.setdefault(h.kind, []).append(h)
    assert kinds(found) == sorted(set(highlights.KINDS) - {"chain"})

    [storm] = by_kind["rejections_above_baseline"]
    assert storm.tenant == ACME and storm.platform == "connect" and storm.count == 40 + 1
    assert storm.first_seen == NOW.replace(hour=4) and storm.severity == "high"
    assert "acme.atlassian.net" in storm.summary and "incoming tokens rejected" in storm.summary
    assert storm.filter.outcome == "rejected" and storm.filter.tenant == ACME
    assert storm.filter.since <= NOW.replace(hour=4, minute=20) < storm.filter.until

    [locked] = by_kind["denials_above_baseline"]
    assert locked.tenant == GLOBEX and locked.count == 26 and locked.first_seen == NOW.replace(hour=6)
    [unauthorized] = by_kind["unauthorized_above_baseline"]
    assert unauthorized.tenant == ACME and unauthorized.count == 15 and unauthorized.filter.status == "401"

    [delete] = by_kind["first_write"]
    assert delete.tenant == GLOBEX and delete.severity == "high" and "first DELETE call" in delete.summary
    assert [h.tenant for h in by_kind["first_endpoint"]] == [GLOBEX]
    [scope] = by_kind["first_scope"]
    assert scope.filter.scope == "DELETE" and scope.severity == "medium"

    [grace] = by_kind["first_acted_as_user"]
    assert grace.tenant == ACME and grace.count == 1 and "1 person" in grace.summary
    [busy] = by_kind["acting_as_users_above_baseline"]
    assert busy.tenant == ACME and busy.count == 62 and busy.first_seen == NOW.replace(hour=9)

    changes = {h.tenant: h for h in by_kind["lifecycle"]}
    assert changes[ACME].severity == "high" and "acme-corp.example.com" in changes[ACME].summary
    assert "uninstalled the app" in changes[GLOBEX].summary
    assert len(by_kind["lifecycle"]) == 2  # Acme's installed callback is the reinstall its change describes
    # Most severe first, then newest.
    ranks = [highlights.SEVERITIES.index(h.severity) for h in found]
    assert ranks == sorted(ranks)
    assert all(set(h.as_dict()) >= {"kind", "severity", "tenant", "platform", "first_seen", "last_seen",
                                     "count", "summary", "filter"} for h in found)


def test_a_slow_rise_that_no_single_hour_shows_is_found_over_its_day(sqlite_url):
    # Three more 403s an hour on Acme all morning: under the hourly minimum, plain over the day.
    slow = tuple(call(DAY + timedelta(hours=h, minutes=30, seconds=i), ACME, status=403, outcome=ev.DENIED,
                      reason="scope") for h in range(12) for i in range(3))
    with fill(sqlite_url, anomalies=False, extra=slow) as store:
        [rise] = highlights.find(store, since=NOW - timedelta(hours=24), now=NOW, names=SITES)
    assert rise.kind == "denials_above_baseline" and rise.tenant == ACME
    assert rise.count == 12 * 4 and rise.first_seen == DAY
    # The day so far: it ends at "now", noon.
    day = DAY.strftime("%a %d %b")
    assert f"from {day} 00:00 UTC to {day} 12:00 UTC" in rise.summary
    assert "48 of 216 calls refused with 403 (22%)" in rise.summary and rise.summary.endswith("; usually 7%")


def test_a_quiet_site_does_not_alarm_on_a_few_events(sqlite_url):
    with fill(sqlite_url, anomalies=False) as store:
        with Recorder(store, rollup_interval=None) as rec:
            for i in range(5):  # five rejections in an hour: above the usual one, under min_count
                rec.record(incoming(NOW.replace(hour=3) + timedelta(seconds=i), GLOBEX, outcome=ev.REJECTED))
        refresh_rollups(store, limit=None)
        found = highlights.find(store, since=NOW - timedelta(hours=24), now=NOW, names=SITES)
        assert found == []
        strict = highlights.Rules(min_count=3)
        assert kinds(highlights.find(store, since=NOW - timedelta(hours=24), now=NOW, names=SITES,
                                     rules=strict)) == ["rejections_above_baseline"]


def test_a_cut_or_rewritten_chain_is_a_high_highlight(sqlite_url):
    with fill(sqlite_url, anomalies=False) as store:
        with store.engine.connect() as conn:
            cp = conn.exec_driver_sql("SELECT max(seq) FROM checkpoints").scalar()
        tamper(store, "UPDATE audit_events SET path = '/evil' WHERE seq = :s", s=cp)
        # The hash column still matches: the checkpoint vouches for the hash, and a rewrite
        # that recomputes it is what this catches.
        tamper(store, "UPDATE audit_events SET hash = CASE WHEN substr(hash, 1, 1) = 'f' THEN 'e' "
                      "ELSE 'f' END || substr(hash, 2) WHERE seq = :s", s=cp)  # another first digit
        [rewritten] = highlights.find(store, since=NOW - timedelta(hours=24), now=NOW, names=SITES)
        assert rewritten.kind == "chain" and rewritten.severity == "high" and "rewritten" in rewritten.summary
        tamper(store, "DELETE FROM audit_events WHERE seq >= :s", s=cp)
        [cut] = highlights.find(store, since=NOW - timedelta(hours=24), now=NOW, names=SITES)
        assert cut.kind == "chain" and "cut from its end" in cut.summary


def test_the_command_prints_the_highlights_as_json_and_text(sqlite_url, tmp_path):
    fill(sqlite_url, anomalies=True).close()
    env = env_for_child(tmp_path)
    since = (NOW - timedelta(hours=24)).isoformat()
    run = subprocess.run([sys.executable, "-m", "collector.cli", "highlights", "--database", sqlite_url,
                          "--since", since, "--until", NOW.isoformat(), "--json"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    items = json.loads(run.stdout)
    assert {i["kind"] for i in items} == set(highlights.KINDS) - {"chain"}
    storm = next(i for i in items if i["kind"] == "rejections_above_baseline")
    assert storm["first_seen"] == NOW.replace(hour=4).isoformat().replace("+00:00", "Z")
    assert storm["filter"]["outcome"] == "rejected"
    text = subprocess.run([sys.executable, "-m", "collector.cli", "highlights", "--database", sqlite_url,
                           "--since", since, "--until", NOW.isoformat()],
                          capture_output=True, text=True, env=env, timeout=120)
    assert text.returncode == 0
    first = text.stdout.splitlines()[0]
    assert first.startswith("high") and "acme" in text.stdout
    bad = subprocess.run([sys.executable, "-m", "collector.cli", "highlights", "--database", sqlite_url,
                          "--since", "yesterday-ish"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "yesterday-ish" in bad.stderr


def test_a_person_met_on_a_sites_first_day_does_not_hide_one_met_later(sqlite_url):
    # Over the whole history Ada is met in the sites' first hour (not yet settled, so not a
    # highlight); Grace, met on Acme three days later, still is.
    start = NOW - timedelta(days=DAYS)
    grace = (call(start + timedelta(days=3, minutes=7), ACME, kind=ev.USER, account="grace",
                  auth=ev.USER_BEARER),)
    with fill(sqlite_url, anomalies=False, extra=grace) as store:
        found = highlights.find(store, since=start, now=NOW, names=SITES)
    [met] = [h for h in found if h.kind == "first_acted_as_user"]
    assert met.tenant == ACME and met.count == 1 and met.first_seen == grace[0].ts
