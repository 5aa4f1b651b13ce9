"""The dashboard in a real headless Chromium: sign in, filter, open a row, debug a token,
download a CSV. Runs ``streamlit run dashboard/app.py`` as a subprocess on a loopback port.

Screenshots are kept in ``test-artifacts/`` (gitignored) for a person to look at.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from pathlib import Path

import pytest
from audit_data import HOSTILE_PATH, HOSTILE_TENANT, build_store
from e2e_support import streamlit_dashboard

from collector.signing import request_token

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
PASSWORD = "browser test password"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def dashboard(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    build_store(url)
    env = {"CONNECT_AUDIT_DATABASE_URL": url, "CONNECT_AUDIT_ADMIN_PASSWORD": PASSWORD}
    with streamlit_dashboard(tmp_path / "streamlit.log", env) as base:
        yield {"base": base, "url": url}


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def _go(page, title: str) -> None:
    page.get_by_role("link", name=title, exact=True).first.click()
    page.get_by_role("heading", name=title, exact=True).wait_for(timeout=30_000)
    _idle(page)


def _idle(page) -> None:
    """Wait until Streamlit has finished running the script and drawn its tables."""
    page.wait_for_timeout(300)
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden", timeout=30_000)
    for grid in page.locator("[data-testid='stDataFrame']").all():
        grid.locator("canvas").first.wait_for(state="attached", timeout=30_000)
    page.wait_for_timeout(300)


def test_sign_in_filter_open_row_debug_token_and_download_csv(dashboard, chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, headless=True,
                                     args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        try:
            digest = _journey(page, dashboard["base"])
        except BaseException:
            _shot(page, "failure")
            raise
        finally:
            context.close()
            browser.close()
    # The download was recorded in the log, with the SHA-256 of the bytes received.
    from collector import query as q
    from collector.store import Store

    with Store.open(dashboard["url"]) as store:
        rows = q.page(store, q.EventFilter(direction="internal"),
                      columns=(*q.LIST_COLUMNS, "extra")).rows
    recorded = [json.loads(r["extra"]) for r in rows if r["event_type"] == "export"]
    assert recorded and recorded[0]["via"] == "dashboard"
    assert recorded[0]["sha256"] == digest
    assert recorded[0]["filter"]["text"] == "evil.example"  # kept across pages
    assert "since" in recorded[0]["filter"]  # the default range, last 24 hours


def _journey(page, base: str) -> None:
    # Signed out: a sign-in form and nothing of the log.
    page.goto(base)
    page.get_by_role("textbox", name="Password").wait_for(timeout=30_000)
    assert "tenant-alpha" not in page.content()
    _shot(page, "sign-in")

    page.get_by_role("textbox", name="Account").fill("wrong")
    page.get_by_role("textbox", name="Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("Wrong account or password.").wait_for(timeout=30_000)

    page.get_by_role("textbox", name="Account").fill("admin")
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Overview", exact=True).wait_for(timeout=30_000)
    _idle(page)
    page.locator("[data-testid='stVegaLiteChart']").first.wait_for(timeout=30_000)
    _shot(page, "overview")

    # Activity: filter with the free-text search, then open the first row.
    _go(page, "Activity")
    search = page.get_by_role("textbox", name="Search", exact=True)
    search.fill("evil.example")
    search.press("Enter")
    _idle(page)
    page.wait_for_function("() => new URL(location.href).searchParams.get('text') === 'evil.example'")
    assert "text=evil.example" in page.url
    grid = page.locator("[data-testid='stDataFrame']").last
    grid.wait_for(timeout=30_000)
    box = grid.bounding_box()
    # The first data row sits below the 35 px header; its row marker is at the left edge.
    page.mouse.click(box["x"] + 18, box["y"] + 35 + 17)
    page.get_by_role("heading", name="Event detail").wait_for(timeout=30_000)
    _idle(page)
    detail = page.locator("[data-testid='stJson']").last.inner_text()
    assert HOSTILE_PATH in detail  # shown as text, not markup
    assert page.locator("script:text('alert')").count() == 0
    page.get_by_role("heading", name="Event detail").scroll_into_view_if_needed()
    _shot(page, "activity-detail")

    # Token debugger: a token signed with tenant-alpha's shared secret, pasted sloppily.
    _go(page, "Token debugger")
    token = request_token(client_key="tenant-alpha",
                          shared_secret="secret-tenant-alpha-do-not-leak", method="GET",
                          url="/rest/api/content/1", base_url="", now=time.time())
    page.get_by_role("textbox", name="Token", exact=True).fill(f'  "Bearer {token}" ')
    page.get_by_role("button", name="Inspect").click()
    page.get_by_text("Accepted", exact=True).wait_for(timeout=30_000)
    _idle(page)
    report = "\n".join(page.locator(
        "[data-testid='stText'], [data-testid='stJson'], [data-testid='stCode'], "
        "[data-testid='stAlert'], [data-testid='stMarkdown']").all_inner_texts())
    assert "tenant-alpha" in report  # the decoded claims are shown ...
    assert token.rsplit(".", 1)[1] not in report  # ... never the signature
    _shot(page, "token-debugger")

    _go(page, "Denials")
    _shot(page, "denials")

    # Export: the session's filter (text=evil.example) as CSV, recorded in the log.
    _go(page, "Export")
    matching = page.get_by_text(re.compile(r"^[\d,]+ (events match|event matches)\.$")).inner_text()
    expected_rows = int(matching.split()[0].replace(",", ""))
    _shot(page, "export")
    with page.expect_download(timeout=60_000) as info:
        page.get_by_role("button", name="Download connect-audit_").click()
    download = info.value
    assert download.suggested_filename.startswith("connect-audit_")
    assert download.suggested_filename.endswith(".csv")
    raw = Path(download.path()).read_bytes()
    body = raw.decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(body, newline="")))
    assert len(rows) == expected_rows >= 1
    hostile = [r for r in rows if r["path"] == HOSTILE_PATH]
    assert hostile and hostile[0]["tenant_client_key"] == "'" + HOSTILE_TENANT
    assert "do-not-leak" not in body

    return hashlib.sha256(raw).hexdigest()


def test_the_browser_s_time_zone_is_offered_and_every_time_follows_the_choice(dashboard, chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, headless=True, args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, timezone_id="Europe/Paris")
        page = context.new_page()
        try:
            page.goto(dashboard["base"] + "/integrity")
            page.get_by_role("textbox", name="Account").fill("admin")
            page.get_by_role("textbox", name="Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("heading", name="Integrity", exact=True).wait_for(timeout=30_000)
            _idle(page)
            oldest = page.get_by_text(re.compile(r"^Oldest event kept:"))
            assert oldest.inner_text().split("  (")[0].endswith(" UTC")  # UTC until chosen otherwise
            page.get_by_text("Europe/Paris (your browser)").click()
            page.wait_for_function("() => new URL(location.href).searchParams.get('tz') === 'Europe/Paris'")
            _idle(page)
            assert oldest.inner_text().split("  (")[0].endswith(" Europe/Paris")
            _go(page, "Activity")  # the choice is kept across pages, in the URL too
            assert "tz=Europe%2FParis" in page.url or "tz=Europe/Paris" in page.url
            page.locator("[data-testid='stVegaLiteChart'], [data-testid='stDataFrame']").first.wait_for()
            _shot(page, "activity-time-zone")
        except BaseException:
            _shot(page, "time-zone-failure")
            raise
        finally:
            context.close()
            browser.close()


# --------------------------------------------------------------------------- a fresh demo store


@pytest.fixture
def demo_dashboard(tmp_path):
    from collector.cli import main

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    assert main(["demo", "--database", url, "--events", "600", "--seed", "5"]) == 0
    env = {"CONNECT_AUDIT_DATABASE_URL": url, "CONNECT_AUDIT_ADMIN_PASSWORD": PASSWORD}
    with streamlit_dashboard(tmp_path / "streamlit.log", env) as base:
        yield {"base": base, "url": url}


def _keys_and_ids(url: str) -> tuple[set[str], set[str], str]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            keys = set(conn.execute(sa.text("SELECT client_key FROM installs")).scalars())
            ids = set(conn.execute(sa.text(
                "SELECT DISTINCT account_id FROM audit_events WHERE account_id IS NOT NULL")).scalars())
            storm = conn.execute(sa.text(
                "SELECT substr(ts, 1, 10) FROM audit_events WHERE reason = 'expired' "
                "GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")).scalar_one()
    finally:
        engine.dispose()
    return keys, {i for i in ids if len(i) > 12}, storm


def test_a_fresh_demo_reads_in_sites_and_people_over_a_month(demo_dashboard, chromium_path):
    """Issue 15's check: on a fresh demo store no page shows a raw clientKey or account id
    outside detail views, the Overview's chart covers the month, and the storm of expired
    tokens is on the day it happened."""
    from datetime import datetime

    from playwright.sync_api import sync_playwright

    keys, ids, storm_day = _keys_and_ids(demo_dashboard["url"])
    assert keys and ids
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, headless=True, args=LAUNCH_ARGS)
        page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
        try:
            page.goto(demo_dashboard["base"] + "/?range=30d")
            page.get_by_role("textbox", name="Account").fill("admin")
            page.get_by_role("textbox", name="Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("heading", name="Overview", exact=True).wait_for(timeout=30_000)
            _idle(page)
            axis = page.locator("[data-testid='stVegaLiteChart'] [aria-label^='X-axis']").first
            label = axis.get_attribute("aria-label")
            found = re.findall(r"(\d{2} \w+ \d{4})", label)
            first, last = (datetime.strptime(d, "%d %B %Y") for d in (found[0], found[-1]))
            assert (last - first).days >= 27, label  # the chart covers the month
            _shot(page, "demo-overview")
            for title in ("Overview", "Installs", "Activity", "Who acted", "Denials"):
                _go(page, title)
                deadline = time.monotonic() + 30
                while True:  # a grid's accessible table fills once the grid has drawn (slow under load)
                    grids = page.locator("[data-testid='stDataFrame'] table").all()
                    shown = page.inner_text("body") + " ".join(t.text_content() or "" for t in grids)
                    if "atlassian.net" in shown or time.monotonic() > deadline:
                        break
                    _idle(page)
                assert "atlassian.net" in shown, title
                # The app's own user lookups (collector.people) carry the ids they ask about in
                # their recorded path: that is the call as made, not an id shown for a person.
                shown = re.sub(r"accountId=\S*", "accountId=…", shown)
                leaked = [k for k in keys | ids if k in shown]
                assert not leaked, (title, leaked[:3])
                _shot(page, f"demo-{title.lower().replace(' ', '-')}")
            # The storm: Activity on its day, rejected, shows the expired tokens
            page.goto(f"{demo_dashboard['base']}/activity?since={storm_day}&until={storm_day}"
                      "&outcome=rejected&reason=expired")
            page.get_by_role("heading", name="Activity", exact=True).wait_for(timeout=30_000)
            page.get_by_text("matching events").first.wait_for(timeout=30_000)
            deadline = time.monotonic() + 30
            while True:  # the grid's accessible table fills once the grid has drawn
                _idle(page)
                tables = page.locator("[data-testid='stDataFrame'] table").all()
                grid = " ".join(t.text_content() or "" for t in tables)
                if grid.count(storm_day) >= 10 or time.monotonic() > deadline:
                    break
            assert grid.count(storm_day) >= 10 and "expired" in grid, page.inner_text("body")[:2000]
        except BaseException:
            _shot(page, "demo-failure")
            raise
        finally:
            browser.close()


# --------------------------------------------------------------------------- the Atlassian record


@pytest.fixture
def atlassian_dashboard(tmp_path):
    from test_dashboard import plant_atlassian_record

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    planted = plant_atlassian_record(url)
    env = {"CONNECT_AUDIT_DATABASE_URL": url, "CONNECT_AUDIT_ADMIN_PASSWORD": PASSWORD}
    with streamlit_dashboard(tmp_path / "streamlit.log", env) as base:
        yield {"base": base, "url": url, **planted}


def test_the_atlassian_record_shows_hostile_names_as_text_and_a_row_opens_the_app_s_calls(
        atlassian_dashboard, chromium_path):
    from playwright.sync_api import sync_playwright
    from test_dashboard import ATLASSIAN_ACTOR

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, headless=True, args=LAUNCH_ARGS)
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        try:
            page.goto(atlassian_dashboard["base"] + "/atlassian-record")
            page.get_by_role("textbox", name="Account").fill("admin")
            page.get_by_role("textbox", name="Password").fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("heading", name="Atlassian record", exact=True).wait_for(timeout=30_000)
            _idle(page)
            deadline = time.monotonic() + 30
            while True:  # a grid's accessible table fills once the grid has drawn
                grids = " ".join(t.text_content() or "" for t in
                                 page.locator("[data-testid='stDataFrame'] table").all())
                if ATLASSIAN_ACTOR in grids or time.monotonic() > deadline:
                    break
                _idle(page)
            assert ATLASSIAN_ACTOR in grids  # Atlassian's name for the actor, as text
            assert page.locator("script:text('alert')").count() == 0
            _shot(page, "atlassian-record")
            # The Atlassian-only table, newest first: its second row is the call on Acme the app
            # never made. A click on it, then on its link, opens the app's own calls around it.
            grid = page.locator("[data-testid='stDataFrame']").nth(3)
            grid.scroll_into_view_if_needed()
            _idle(page)
            box = grid.bounding_box()
            page.mouse.click(box["x"] + 18, box["y"] + 35 + 35 + 17)
            link = page.get_by_role("link", name=re.compile("within 2 minutes of it"))
            link.wait_for(timeout=30_000)
            link.scroll_into_view_if_needed()
            _shot(page, "atlassian-record-unmatched")
            link.click()
            page.get_by_role("heading", name="Activity", exact=True).wait_for(timeout=30_000)
            page.get_by_text("2 matching events").first.wait_for(timeout=30_000)
            assert "direction=outgoing" in page.url and atlassian_dashboard["acme"] in page.url
        except BaseException:
            _shot(page, "atlassian-record-failure")
            raise
        finally:
            browser.close()
