"""Single sign-on in a real headless Chromium through a real OpenID Connect provider on loopback
(tests/oidc_provider.py, built with Authlib's server side): each role, an identity with no
role, and a sign-out that really ends the session (a copy of the old cookie signs nobody in).

The review found that ``st.login`` failed on click (Authlib was not a dependency) and that the
only test covered configuration helpers.
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import pytest
from audit_data import build_store
from e2e_support import free_port, serve_flask, streamlit_dashboard
from oidc_provider import CLIENT_ID, CLIENT_SECRET, create_provider

from collector import query as q
from collector.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
LAUNCH_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def sso(tmp_path_factory):
    home = tmp_path_factory.mktemp("sso")
    url = f"sqlite:///{home / 'audit.db'}"
    build_store(url)
    port = free_port()
    redirect = f"http://127.0.0.1:{port}/oauth2callback"
    with serve_flask(lambda issuer: create_provider(issuer, redirect)) as (issuer, _):
        settings = home / "site" / ".streamlit"
        settings.mkdir(parents=True)
        shutil.copy(ROOT / ".streamlit" / "config.toml", settings / "config.toml")
        (settings / "secrets.toml").write_text(f"""
[auth]
redirect_uri = "{redirect}"
cookie_secret = "{secrets.token_urlsafe(32)}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
server_metadata_url = "{issuer}/.well-known/openid-configuration"

[connect_audit]
roles_claim = "groups"
admin_groups = ["connect-audit-admins"]
auditor_groups = ["connect-audit-auditors"]
""")
        env = {"CONNECT_AUDIT_DATABASE_URL": url}
        with streamlit_dashboard(home / "streamlit.log", env, port=port, cwd=settings.parent) as base:
            yield {"base": base, "url": url, "log": home / "streamlit.log"}


@pytest.fixture
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=chromium_path, headless=True, args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _sign_in(page, base: str, who: str) -> None:
    page.goto(base)
    page.get_by_role("button", name="Sign in with single sign-on").click()
    page.locator("#username").fill(who)  # the provider's own page
    page.locator("#continue").click()
    page.wait_for_url(f"{base}/**", timeout=30_000)


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"sso-{name}.png"), full_page=True)


def _sidebar_user(page) -> str:
    page.get_by_text("Signed in as").wait_for(timeout=30_000)
    return page.locator("[data-testid='stSidebar']").inner_text()


@pytest.mark.parametrize("who, role", [("alice", "admin"), ("bob", "auditor")])
def test_each_role_signs_in_through_the_provider_and_sign_out_ends_the_session(sso, browser, who, role):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        _sign_in(page, sso["base"], who)
        page.get_by_role("heading", name="Overview", exact=True).wait_for(timeout=30_000)
        assert f"{who}@example.com ({role})" in _sidebar_user(page)
        links = page.locator("[data-testid='stSidebarNav']").inner_text()
        assert "Accounts" not in links  # single sign-on people are managed in the provider
        page.reload()  # the provider's sign-in survives a reload
        page.get_by_role("heading", name="Overview", exact=True).wait_for(timeout=30_000)
        _shot(page, f"{role}-overview")
        signed_in_cookies = context.cookies()
        assert any(c["name"] == "_streamlit_user" for c in signed_in_cookies)

        page.get_by_role("button", name="Sign out").click()
        page.get_by_role("button", name="Sign in with single sign-on").wait_for(timeout=30_000)
        page.reload()
        page.get_by_role("button", name="Sign in with single sign-on").wait_for(timeout=30_000)
        assert "Overview" not in page.locator("h1").all_inner_texts()
    except BaseException:
        _shot(page, f"{role}-failure")
        raise
    finally:
        context.close()

    # A copy of the old cookie (a second browser, a stolen cookie) signs nobody in any more.
    replay = browser.new_context()
    replay.add_cookies([c for c in signed_in_cookies if c["name"].startswith("_streamlit_user")])
    again = replay.new_page()
    try:
        again.goto(sso["base"])
        again.get_by_role("button", name="Sign in with single sign-on").wait_for(timeout=30_000)
        assert not again.get_by_text("Signed in as", exact=True).count()
    finally:
        replay.close()

    with Store.open(sso["url"]) as store:
        rows = q.page(store, q.EventFilter(direction="internal"), columns=(*q.LIST_COLUMNS, "extra")).rows
    mine = [(r["event_type"], json.loads(r["extra"])["actor"]) for r in rows]
    assert ("sign_in", f"{who}@example.com") in mine and ("sign_out", f"{who}@example.com") in mine


def test_a_shared_link_keeps_its_destination_through_the_provider(sso, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        page.goto(sso["base"] + "/activity?range=7d&outcome=rejected")
        page.get_by_role("button", name="Sign in with single sign-on").click()
        page.locator("#username").fill("alice")
        page.locator("#continue").click()
        page.get_by_role("heading", name="Activity", exact=True).wait_for(timeout=30_000)
        assert page.url == sso["base"] + "/activity?range=7d&outcome=rejected"
        assert not [c for c in context.cookies() if c["name"] == "connect_audit_next"]  # used once
        page.goto(sso["base"] + "/")  # later visits to / stay on the Overview
        page.get_by_role("heading", name="Overview", exact=True).wait_for(timeout=30_000)
    except BaseException:
        _shot(page, "destination-failure")
        raise
    finally:
        context.close()


def test_an_identity_with_no_role_is_refused_with_a_clear_page(sso, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        _sign_in(page, sso["base"], "mallory")
        page.get_by_text("that account has no role in Connect Audit").wait_for(timeout=30_000)
        _shot(page, "no-role")
        assert not page.get_by_text("Signed in as", exact=True).count()
        assert not page.locator("[data-testid='stSidebarNav']").count()
        assert "tenant-alpha" not in page.content()
        page.get_by_role("button", name="Sign out").click()
        page.get_by_role("button", name="Sign in with single sign-on").wait_for(timeout=30_000)
    finally:
        context.close()
