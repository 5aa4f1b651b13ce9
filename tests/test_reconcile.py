"""Reconciliation (collector.reconcile, ``connect-audit reconcile``) on planted cases, on SQLite
and PostgreSQL: the app's real calls through the collector to the simulated host, Atlassian's
record of them imported over loopback, and the two lined up. Planted: exact matches, an app
clock skewed inside and outside the tolerance, calls signed with a leaked shared secret outside
the collector, and an app call Atlassian's record lacks."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from collector import chain, imports
from collector.reconcile import reconcile
from collector.store import Store
from tests.e2e_support import Clock, running_stack


def _import_org(stack, database_url: str) -> Store:
    sim = stack.sim
    sim.record.rate_limit = None
    store = Store.open(database_url)
    imports.add_source(
        store,
        "org",
        imports.ORG_EVENTS,
        sim.record.org_id,
        sim.record.org_key,
        api_url=sim.url,
        since=datetime.now(UTC) - timedelta(hours=1),
    )
    time.sleep(1.5)  # Atlassian's record serves an event once it is processed (0.4 s here)
    with imports.Importer(store, "org", min_interval=0) as importer:
        run = importer.run()
    assert run.error is None and run.imported > 0
    return store


@pytest.fixture
def planted(database_url):
    """The story: what the app did, what a leaked secret did, what Atlassian lost."""
    app_clock = Clock()
    with running_stack("flask", database_url, clock=app_clock, host_clock=time.time) as stack:
        sim = stack.sim
        alice, bob = stack.user("acme", 0), stack.user("acme", 1)
        # Exact: two page loads (the app reads as the app user), two searches as people.
        for user in (alice, bob):
            assert sim.page_load("acme", user=user).status_code == 200
            assert (
                sim.context_call("acme", "GET", "/api/search", user=user, params={"q": "plan"}).status_code
                == 200
            )
        # The app's clock 3 s slow: inside the 5 s tolerance.
        app_clock.offset = -3.0
        for user in (alice, bob):
            assert sim.context_call("acme", "GET", "/api/me", user=user).status_code == 200
        # 12 s slow: outside it; Atlassian's record and the app's disagree about this call's time.
        app_clock.offset = -12.0
        assert sim.webhook("acme", "page_created").status_code == 204
        app_clock.offset = 0.0
        # A script holding Acme's shared secret, outside the collector.
        for _ in range(2):
            assert sim.script_call("acme", "GET", "/rest/api/space").status_code == 200
        # A call Atlassian's record lost.
        assert sim.page_load("globex", user=stack.user("globex", 0)).status_code == 200
        stack.audit.flush(timeout=30)
        lost = sim.record.calls("globex")[-1]
        sim.record.entries.remove(lost)
        store = _import_org(stack, database_url)
        yield stack, store
        store.close()


def test_each_planted_case_is_found(planted):
    stack, store = planted
    sim = stack.sim
    result = reconcile(store, since=datetime.now(UTC) - timedelta(hours=1), tolerance=5, settle=1)
    acme, globex = sim.tenant("acme"), sim.tenant("globex")
    assert (result.matched, result.atlassian_only, result.app_only) == (6, 3, 2), result.rows
    only_atlassian = [r for r in result.rows if r["kind"] == "atlassian_only"]
    only_app = [r for r in result.rows if r["kind"] == "app_only"]
    # The leaked secret's two calls, on Acme, as the app user, with the app's nearest events named.
    leaked = [r for r in only_atlassian if r["path"] == "/wiki/rest/api/space"]
    assert len(leaked) == 2
    assert all(r["tenant"] == acme.client_key and r["identity_kind"] == "app_user" for r in leaked)
    assert all(r["source"] == "org" and r["source_id"] and r["nearest"] for r in leaked)
    # The 12 s skew: one call on each side, the same page.
    skewed = [r for r in only_atlassian if r["path"] not in ("/wiki/rest/api/space",)]
    assert len(skewed) == 1 and skewed[0]["path"].startswith("/wiki/rest/api/content/")
    assert skewed[0]["clock_gap_s"] == pytest.approx(-12, abs=1)  # the same call, 12 s earlier
    assert all(r["clock_gap_s"] is None for r in leaked)  # nothing of the app's is like them
    assert any(r["tenant"] == acme.client_key and r["path"].startswith(skewed[0]["path"]) for r in only_app)
    # What Atlassian lost: the Globex page load.
    assert any(
        r["tenant"] == globex.client_key and r["path"].startswith("/wiki/rest/api/content") for r in only_app
    )
    assert result.sites[acme.base_url] == {"matched": 6, "atlassian_only": 3, "app_only": 1}
    assert chain.verify(store).ok  # imported records joined the chain, and it holds


def test_a_wider_tolerance_matches_the_skewed_call(planted):
    _, store = planted
    result = reconcile(store, since=datetime.now(UTC) - timedelta(hours=1), tolerance=15, settle=1)
    assert (result.matched, result.atlassian_only, result.app_only) == (7, 2, 1)


def test_one_site_alone_and_the_command_line(planted, database_url, capsys):
    from collector.cli import main

    stack, _ = planted
    globex = stack.sim.tenant("globex")
    argv = ["reconcile", "--database", database_url, "--since", "1h", "--settle", "1"]
    assert main([*argv, "--tenant", globex.client_key, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"matched", "atlassian_only", "app_only", "window", "rows"}
    assert (report["matched"], report["atlassian_only"], report["app_only"]) == (0, 0, 1)
    assert report["window"]["tenant"] == globex.client_key and report["window"]["tolerance_s"] == 5
    assert main(["reconcile", "--database", database_url, "--since", "1h", "--settle", "1"]) == 1
    text = capsys.readouterr().out
    assert "matched 6, atlassian_only 3, app_only 2" in text and "/wiki/rest/api/space" in text
    # A window before anything happened: nothing unmatched, exit 0.
    assert (
        main(["reconcile", "--database", database_url, "--since", "2020-01-01", "--until", "2020-01-02"]) == 0
    )


def test_imported_records_are_not_the_apps_activity(planted):
    """The app's own views (filters without a direction, the rollups) never count Atlassian's
    records; asking for them by name finds them."""
    from collector.filters import EventFilter
    from collector.query import count as count_events

    _, store = planted
    everything = count_events(store, EventFilter())
    imported = count_events(store, EventFilter(direction="imported"))
    by_platform = count_events(store, EventFilter(platform="atlassian"))
    assert imported == by_platform > 0
    with store.engine.connect() as conn:
        total = conn.exec_driver_sql("SELECT count(*) FROM audit_events").scalar()
    assert everything == total - imported


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tolerance", "-1"], "--tolerance and --settle must not be negative"),
        (["--since", "2026-02-01", "--until", "2026-01-01"], "must be before"),
        (["--since", "yesterday-ish"], "yesterday-ish"),
    ],
)
def test_bad_reconcile_input_is_one_sentence(sqlite_url, args, message, capsys):
    from collector.cli import main

    Store.open(sqlite_url).close()
    assert main(["reconcile", "--database", sqlite_url, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_calls_the_app_never_made_are_a_high_highlight(planted):
    from collector import highlights

    stack, store = planted
    acme = stack.sim.tenant("acme")
    found = [h for h in highlights.find(store, since=datetime.now(UTC) - timedelta(hours=1))
             if h.kind == "atlassian_only"]
    assert [(h.severity, h.count) for h in found] == [("high", 2), ("medium", 1)]
    leak, skew = found
    assert (leak.tenant, leak.platform) == (acme.client_key, "atlassian")
    assert "never made" in leak.summary
    assert leak.filter.direction == "imported" and leak.filter.tenant == acme.client_key
    # The 12 s skew is told apart from a leak: the app recorded the same call 12 s earlier.
    assert "recorded 12 s earlier" in skew.summary and "clock" in skew.summary
    assert found == sorted(found, key=lambda x: x.severity)  # high sorts first with the rest
