"""A sign-in that outlives a tab, against the real server (``streamlit run dashboard/app.py``):
the edge's HTTP answers on loopback, then a real headless Chromium reloading, opening tabs,
following shared links (from another site too), signing out, replaying cookies, idling past the
timeout and having its password changed elsewhere."""

from __future__ import annotations

import http.server
import json
import threading
from urllib.parse import quote

import pytest
import requests
from audit_data import build_store
from e2e_support import streamlit_dashboard
from test_dashboard_browser import LAUNCH_ARGS, _idle, _shot

from collector import query as q
from collector.store import Store
from dashboard import auth, sessions

pytestmark = [pytest.mark.slow, pytest.mark.browser]

PASSWORD = "session test password"
SHARED = "/activity?range=7d&outcome=rejected"
HTML = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sessions') / 'audit.db'}"
    build_store(url)
    return url


@pytest.fixture(scope="module")
def server(store_url, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "streamlit.log"
    env = {"CONNECT_AUDIT_DATABASE_URL": store_url, "CONNECT_AUDIT_ADMIN_PASSWORD": PASSWORD}
    with streamlit_dashboard(log, env) as base:
        yield {"base": base, "log": log}


def _post(base: str, account: str, password: str, *, next_path: str = "/", origin: str | None = None):
    form = {"account": account, "password": password, "next": next_path}
    return requests.post(f"{base}/-/sign-in", data=form, headers={"Origin": origin or base},
                         allow_redirects=False, timeout=30)


# --------------------------------------------------------------------------- HTTP


def test_a_signed_out_page_load_goes_to_the_form_with_its_address(server):
    base = server["base"]
    resp = requests.get(base + SHARED, headers=HTML, allow_redirects=False, timeout=30)
    assert resp.status_code == 303
    assert resp.headers["location"] == f"/-/sign-in?next={quote(SHARED, safe='')}"
    form = requests.get(base + resp.headers["location"], timeout=30)
    assert form.status_code == 200 and 'name="password"' in form.text
    assert "script" not in form.text.lower()
    assert "default-src 'none'" in form.headers["content-security-policy"]
    assert form.headers["cache-control"] == "no-store" and form.headers["x-frame-options"] == "DENY"
    # Assets and Streamlit's own routes are not gated.
    assert requests.get(f"{base}/_stcore/health", timeout=30).text == "ok"


def test_overview_has_its_own_address(server):
    resp = requests.get(f"{server['base']}/overview?range=7d", headers=HTML, allow_redirects=False,
                        timeout=30)
    assert (resp.status_code, resp.headers["location"]) == (307, "/?range=7d")


def test_the_form_sets_a_strict_http_only_cookie_and_goes_on_to_the_destination(server):
    base = server["base"]
    resp = _post(base, "admin", PASSWORD, next_path=SHARED)
    assert (resp.status_code, resp.headers["location"]) == (303, SHARED)
    cookie = resp.headers["set-cookie"]
    assert cookie.startswith(f"{sessions.COOKIE}=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite", "max-age"} <= attributes and "secure" not in attributes
    assert "samesite=strict" in cookie.lower() and "max-age=43200" in cookie.lower()
    session_id = resp.cookies[sessions.COOKIE]
    assert len(session_id) >= 43
    page = requests.get(base + "/denials", headers=HTML, cookies={sessions.COOKIE: session_id},
                        allow_redirects=False, timeout=30)
    assert page.status_code == 200
    again = requests.get(f"{base}/-/sign-in?next=%2Finstalls", cookies={sessions.COOKIE: session_id},
                         allow_redirects=False, timeout=30)
    assert (again.status_code, again.headers["location"]) == (303, "/installs")
    # It is in no log line.
    assert session_id not in server["log"].read_text()


def test_refusals_wrong_password_foreign_form_and_open_redirect(server):
    base = server["base"]
    wrong = _post(base, "nobody", "wrong")
    assert wrong.status_code == 401 and "Wrong account or password." in wrong.text
    assert "set-cookie" not in wrong.headers
    foreign = _post(base, "admin", PASSWORD, origin="https://evil.example")
    assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
    away = _post(base, "admin", PASSWORD, next_path="//evil.example/phish")
    assert (away.status_code, away.headers["location"]) == (303, "/")


def test_a_dead_cookie_is_cleared_and_names_no_one(server):
    resp = requests.get(server["base"] + "/installs", headers=HTML, allow_redirects=False, timeout=30,
                        cookies={sessions.COOKIE: "made-up-session-id"})
    assert resp.status_code == 303 and resp.headers["location"].startswith("/-/sign-in?next=%2Finstalls")
    assert f'{sessions.COOKIE}="";' in resp.headers["set-cookie"] or "Max-Age=0" in resp.headers["set-cookie"]


# --------------------------------------------------------------------------- the browser


def _sign_in_form(page, password: str = PASSWORD) -> None:
    page.get_by_role("textbox", name="Password").wait_for(timeout=30_000)
    page.get_by_role("textbox", name="Account").fill("admin")
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def _heading(page, title: str) -> None:
    page.get_by_role("heading", name=title, exact=True).wait_for(timeout=30_000)
    _idle(page)


def _signed_out(page) -> None:
    page.get_by_role("textbox", name="Password").wait_for(timeout=30_000)
    assert page.url.split("?")[0].endswith("/-/sign-in")


def _browser(pw, chromium_path):
    return pw.chromium.launch(executable_path=chromium_path, headless=True, args=LAUNCH_ARGS)


class _OtherSite:
    """A page on another site (``localhost`` is not ``127.0.0.1``) with a link to the dashboard,
    as a chat message or an e-mail would be."""

    def __init__(self, target: str) -> None:
        body = f'<!doctype html><a id="shared" href="{target}">shared link</a>'.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def test_reload_new_tab_shared_links_sign_out_and_replay(server, store_url, chromium_path):
    from playwright.sync_api import sync_playwright

    base = server["base"]
    other = _OtherSite(base + SHARED)
    with sync_playwright() as pw:
        browser = _browser(pw, chromium_path)
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        try:
            # A shared link, signed out: the form, then that page with those filters.
            page.goto(base + SHARED)
            _signed_out(page)
            _shot(page, "session-sign-in")
            _sign_in_form(page)
            _heading(page, "Activity")
            assert page.url == base + SHARED
            page.get_by_text("Range: Last 7 days").first.wait_for(timeout=30_000)  # the filter's chip
            assert "Outcome: rejected" in page.inner_text("body")
            # Reload: still signed in, same page and filters.
            page.reload()
            _heading(page, "Activity")
            assert "range=7d" in page.url and "outcome=rejected" in page.url
            # A new tab of the same browser, typed address.
            tab = context.new_page()
            tab.goto(base + "/denials")
            _heading(tab, "Denials")
            # /overview is the Overview.
            tab.goto(base + "/overview")
            _heading(tab, "Overview")
            _shot(tab, "session-overview")
            # A link from another site (no SameSite=Strict cookie on that hop): still signed in.
            tab.goto(other.url)
            tab.locator("#shared").click()
            _heading(tab, "Activity")
            assert "outcome=rejected" in tab.url
            tab.close()

            # Sign out; reload: the form. The cookies from before, replayed elsewhere: the form.
            before = context.cookies()
            assert any(c["name"] == sessions.COOKIE and c["httpOnly"] and c["sameSite"] == "Strict"
                       for c in before)
            page.get_by_role("button", name="Sign out").click()
            page.get_by_text("You signed out.").wait_for(timeout=30_000)
            _shot(page, "session-signed-out")
            page.reload()
            _signed_out(page)
            fresh = browser.new_context()
            fresh.add_cookies(before)
            replay = fresh.new_page()
            replay.goto(base + "/installs")
            _signed_out(replay)
            fresh.close()
        except BaseException:
            _shot(page, "session-failure")
            raise
        finally:
            context.close()
            browser.close()
            other.close()
    kinds = [r["event_type"] for r in _admin_events(store_url)]
    assert "sign_in" in kinds and "sign_out" in kinds


def _admin_events(url: str) -> list[dict]:
    with Store.open(url) as store:
        rows = q.page(store, q.EventFilter(direction="internal"), columns=(*q.LIST_COLUMNS, "extra")).rows
    return [{**r, "extra": json.loads(r["extra"])} for r in rows]


def test_idle_timeout_and_a_password_changed_in_another_tab(tmp_path, chromium_path):
    from playwright.sync_api import sync_playwright

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    build_store(url)
    env = {"CONNECT_AUDIT_DATABASE_URL": url, "CONNECT_AUDIT_ADMIN_PASSWORD": PASSWORD,
           sessions.IDLE_ENV: "0.1"}  # six seconds
    log = tmp_path / "streamlit.log"
    with streamlit_dashboard(log, env) as base, sync_playwright() as pw:
        browser = _browser(pw, chromium_path)
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        try:
            page.goto(base + "/installs")
            _sign_in_form(page)
            _heading(page, "Installs")
            page.wait_for_timeout(7000)  # past the idle timeout
            page.get_by_role("link", name="Denials", exact=True).first.click()
            page.get_by_text("without activity").wait_for(timeout=30_000)
            _shot(page, "session-idle")
            page.get_by_role("link", name="Sign in").click()  # same tab, back to this page after
            _sign_in_form(page)
            _heading(page, "Denials")

            # Another tab changes this account's password; this tab is out at its next action.
            other = context.new_page()
            other.goto(base + "/accounts")
            _heading(other, "Accounts")
            other.get_by_role("textbox", name="Account name").fill("admin")
            other.get_by_role("textbox", name="Password").fill("a brand new admin password")
            other.get_by_role("combobox", name="Role").click()
            other.get_by_role("option", name="admin", exact=True).click()
            other.get_by_role("button", name="Save").click()
            other.get_by_text("Saved.").wait_for(timeout=30_000)
            page.get_by_role("link", name="Installs", exact=True).first.click()
            page.get_by_text("Your account was changed").wait_for(timeout=30_000)
        except BaseException:
            _shot(page, "session-idle-failure")
            raise
        finally:
            context.close()
            browser.close()
    events = _admin_events(url)
    expired = [e for e in events if e["event_type"] == "session_expired"]
    assert expired and expired[0]["extra"]["ended"] == "idle" and expired[0]["extra"]["actor"] == "admin"
    document = json.loads((tmp_path / auth.ACCOUNTS_FILE).read_text())
    assert all(len(k) == 64 for k in document.get("sessions", {}))  # hashes only
