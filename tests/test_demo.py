"""``connect-audit demo``: the simulator and the Flask example over real HTTP, recording a
realistic mix into a store; ``--if-empty``; several demos at once on one store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from collector import chain, highlights
from collector.cli import main
from collector.simulator.traffic import plan
from collector.store import Store

ROOT = Path(__file__).resolve().parents[1]


def event_rows(url: str) -> list[dict]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM audit_events ORDER BY seq"))
            return [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()


def test_the_traffic_mix_is_reproducible_from_its_seed():
    names = ["acme", "globex", "initech", "umbrella"]
    assert plan(200, 7, names) == plan(200, 7, names)
    assert plan(200, 7, names) != plan(200, 8, names)
    kinds = Counter(action.kind for action in plan(2000, 1, names))
    assert {"page_load", "webhook", "me", "search", "create_page", "update_page", "delete_page",
            "space_pages", "bad_token", "bad_lifecycle", "forge_resolver", "forge_mine", "forge_create",
            "forge_event", "forge_schedule", "forge_bad_token"} == set(kinds)


def ts_of(row: dict) -> datetime:
    value = row["ts"]
    value = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@pytest.mark.slow
def test_demo_records_a_month_with_its_incidents_and_an_intact_chain(sqlite_url, capsys):
    assert main(["demo", "--database", sqlite_url, "--events", "900", "--seed", "11"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Recorded ") and "from 900 requests" in out and "(seed 11)" in out
    assert "100.0% 900/900 requests" in err
    rows = event_rows(sqlite_url)
    assert {r["direction"] for r in rows} == {"incoming", "outgoing", "lifecycle", "imported"}
    assert {"allowed", "denied", "rejected"} <= {r["outcome"] for r in rows}
    reasons = {r["reason"] for r in rows}
    assert {"scope", "permission", "inactive_install", "expired", "not_yet_valid"} <= reasons
    assert len(reasons - {None, "scope", "permission"}) >= 8  # many kinds of refused token
    methods = {r["auth_method"] for r in rows}
    assert methods >= {"app_jwt", "context_jwt", "user_bearer", "lifecycle_jwt", "none"}
    assert len({r["tenant_client_key"] for r in rows} - {None}) == 4
    # Sites by their Atlassian names; hostile data on the one site named for it
    sites = {r["tenant_base_url"] for r in rows} - {None}
    hosts = ("acme", "globex", "initech", "hostile-test-data")
    assert sites == {f"https://{h}.atlassian.net/wiki" for h in hosts}
    hostile = {r["account_id"] for r in rows if r["account_id"] and r["account_id"][0] in "=+-@"}
    hostile_sites = {r["tenant_base_url"] for r in rows if r["account_id"] in hostile} - {None}
    assert hostile and hostile_sites == {"https://hostile-test-data.atlassian.net/wiki"}
    # A month: events on at least 25 distinct days over 30, quieter at weekends
    days = Counter(ts_of(r).date() for r in rows)
    span = max(days) - min(days)
    assert span >= timedelta(days=27) and len(days) >= 25
    weekday = [n for d, n in days.items() if d.weekday() < 5]
    weekend = [n for d, n in days.items() if d.weekday() >= 5]
    assert sum(weekend) / len(weekend) < 0.5 * sum(weekday) / len(weekday)
    # The incidents, on the days the summary names
    by_day = lambda reason: Counter(ts_of(r).date() for r in rows if r["reason"] == reason)  # noqa: E731
    storm_day = by_day("expired").most_common(1)[0]
    assert storm_day[1] >= 20 and storm_day[0].strftime("%a %d %b") in out
    assert "stale tabs send a storm of expired tokens" in out
    skew_day = by_day("not_yet_valid").most_common(1)[0][0]
    skew_line = next(line for line in out.splitlines() if "clock runs 7 minutes slow" in line)
    assert skew_line.lstrip().startswith(skew_day.strftime("%a %d %b"))
    lifecycle = [r for r in rows if r["direction"] == "lifecycle"]
    assert len({ts_of(r).date() for r in lifecycle if r["event_type"] == "installed"}) >= 4
    assert any(r["event_type"] == "uninstalled" for r in lifecycle)
    # Connect-on-Forge: Forge traffic in the same log, and globex's move mid-month
    forge = [r for r in rows if r["platform"] == "forge"]
    assert {r["auth_method"] for r in forge} >= {"forge_invocation", "forge_system", "forge_user"}
    assert {"scope", "permission"} <= {r["reason"] for r in forge}
    assert "By platform:" in out and f"forge      {len(forge):>7,}" in out
    moved = [r for r in forge if r["direction"] == "lifecycle"]
    assert len({r["tenant_client_key"] for r in moved}) == 2  # acme from its install, globex mid-month
    recorded = [r for r in rows if r["direction"] != "imported"]  # the app's, not Atlassian's record
    assert len(recorded) > 900 and f"Recorded {len(recorded):,} events" in out
    with Store.open(sqlite_url, create=False) as store:
        assert chain.verify(store).ok
        # The month's incidents and changes are highlights: the storm among them, on its day.
        found = highlights.find(store, since=min(ts_of(r) for r in rows), now=max(ts_of(r) for r in rows))
    kinds = {h.kind for h in found}
    assert kinds >= {"rejections_above_baseline", "first_write", "first_scope", "first_endpoint", "lifecycle",
                     "first_acted_as_user"}
    assert "chain" not in kinds
    storm = [h for h in found if h.kind == "rejections_above_baseline"]
    assert any(h.first_seen.date() == storm_day[0] and h.severity == "high" for h in storm)
    assert any(h.kind == "lifecycle" and "uninstalled the app" in h.summary for h in found)
    # The wiki import: an hour of pages created as people, far above acme's usual rate.
    [burst] = [h for h in found if h.kind == "acting_as_users_above_baseline"]
    assert "acme.atlassian.net" in burst.summary and burst.count >= 12
    assert "a team moves its wiki in" in out
    # A rate is a share of the rows it counts: never more of them than there are (an outgoing
    # 401 is stored as rejected too, and must not count as an incoming rejection).
    for h in found:
        if h.kind.endswith("_above_baseline") and h.kind != "acting_as_users_above_baseline":
            shares = re.search(r"([\d,]+) of ([\d,]+)", h.summary).groups()
            part, whole = (int(x.replace(",", "")) for x in shares)
            assert part <= whole, h.summary
    # The skew: the app's own sync job signs on the slow clock, and the host answers 401.
    [refused] = [h for h in found if h.kind == "unauthorized_above_baseline"]
    assert "acme.atlassian.net" in refused.summary and refused.count >= 12 and refused.severity == "high"
    # Atlassian's record, imported by the demo: the leaked script's calls are the calls the app
    # never made, and every other call of the month is matched.
    assert "a script holding Acme's leaked shared secret" in out
    [leak] = [h for h in found if h.kind == "atlassian_only"]
    assert leak.severity == "high" and leak.count == 14 and "acme.atlassian.net" in leak.summary
    for window in ([], ["--since", "30d"]):
        assert main(["reconcile", "--database", sqlite_url, *window, "--json"]) == 1
        report = json.loads(capsys.readouterr().out)
        assert (report["atlassian_only"], report["app_only"]) == (14, 0), window
        assert {(r["site"], r["identity_kind"]) for r in report["rows"]} == {
            ("https://acme.atlassian.net/wiki", "app_user")}
        assert report["matched"] > (500 if window else 10)


@pytest.mark.slow
def test_if_empty_seeds_an_empty_default_store_and_then_does_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CONNECT_AUDIT_DATABASE_URL", raising=False)
    monkeypatch.setenv("CONNECT_AUDIT_DATA_DIR", str(tmp_path))  # the embedded default, in tmp
    assert main(["demo", "--if-empty", "--events", "40"]) == 0
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    count = len(event_rows(url))
    assert count > 40
    capsys.readouterr()
    assert main(["demo", "--if-empty"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and f"already has {count:,} events; nothing to do" in err
    assert len(event_rows(url)) == count


@pytest.mark.parametrize("events", ["0", "-5", "many"])
def test_events_must_be_a_positive_whole_number(events, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--events", events])
    assert exited.value.code == 2 and "--events" in capsys.readouterr().err


def test_an_unreachable_store_is_one_sentence(tmp_path, capsys):
    assert main(["demo", "--database", f"sqlite:///{tmp_path}", "--events", "5"]) == 2  # a directory
    err = capsys.readouterr().err
    assert err.startswith("connect-audit: error: ") and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.slow
def test_two_demos_at_once_share_one_store(database_url):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "collector.cli", "demo", "--database", database_url, "--events", "60"]
    procs = [subprocess.Popen([*command, "--seed", str(seed)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [p.communicate(timeout=240) for p in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert out.startswith("Recorded ")
    rows = event_rows(database_url)
    instances = Counter(r["instance_id"] for r in rows)
    assert len(instances) == 2 and all(n > 60 for n in instances.values())
    assert len({r["tenant_client_key"] for r in rows} - {None}) == 8  # each demo has its own installs
    with Store.open(database_url, create=False) as store:
        assert chain.verify(store).ok
