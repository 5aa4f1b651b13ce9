# ruff: noqa: S105, S603, S310 - a maintenance script: fixed commands, loopback only
"""Re-take the README's dashboard screenshots: ``python docs/screenshots/capture.py``.

Fills a throw-away store with ``connect-audit demo`` (what ``make run`` shows: a month of the
example app against the simulator, seed 5), serves it
with ``streamlit run dashboard/app.py`` on a loopback port, signs in as admin in headless
Chromium and saves one PNG per main page next to this file.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PASSWORD = "screenshot password"
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGES = ("Overview", "Installs", "Activity", "Who acted", "Denials", "Token debugger", "Export",
         "Integrity")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settle(page) -> None:
    page.wait_for_timeout(400)
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden", timeout=60_000)
    for grid in page.locator("[data-testid='stDataFrame']").all():
        grid.locator("canvas").first.wait_for(state="attached", timeout=60_000)
    page.wait_for_timeout(800)


APP_BASE_URL = "https://audit-demo.example.com/app"
SERVER_LOG = Path(tempfile.gettempdir()) / "connect-audit-capture-server.log"


def _sample_token(url: str) -> str:
    """A token from the store's first tenant whose signer hashed the app's context path (the
    commonest qsh mistake), so that the screenshot shows a verified signature and a diagnosis."""
    from collector.installs import InstallRegistry
    from collector.signing import request_token
    from collector.store import Store

    with Store.open(url, create=False) as store:
        registry = InstallRegistry(store)
        install = registry.list_installs()[0]
        secret = registry.install_secret(install.client_key).shared_secret
    return request_token(client_key=install.client_key, shared_secret=secret, method="GET",
                         url=f"{APP_BASE_URL}/macro/summary?space=DOCS&page=42",
                         base_url="https://audit-demo.example.com", now=time.time(),
                         account_id="5b10ac8d82e05b22cc7d4ef5")


def _inspect(page, token: str) -> None:
    page.get_by_role("textbox", name="Token", exact=True).fill(f"JWT {token}")
    page.get_by_role("combobox").first.click()  # Method
    page.get_by_role("option", name="GET", exact=True).click()
    page.get_by_role("textbox", name="URL the token came with").fill(
        "/app/macro/summary?page=42&space=DOCS")
    page.get_by_role("textbox", name="App base URL").fill(APP_BASE_URL)
    page.get_by_role("button", name="Inspect").click()
    page.get_by_text("qsh_mismatch").first.wait_for(timeout=60_000)


def _check_no_error(page, title: str) -> None:
    if page.get_by_text("This app has encountered an error").count():
        raise SystemExit(f"capture: the {title} page shows an error (server log: {SERVER_LOG}); "
                         "not saving a broken screenshot")


def main() -> int:
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("CONNECT_AUDIT_CHROMIUM") or shutil.which("chromium")
    if not chromium:
        print("capture: Chromium not found (set CONNECT_AUDIT_CHROMIUM)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/audit.db"
        subprocess.run([sys.executable, "-m", "collector.cli", "demo", "--database", url,
                        "--seed", "5"], check=True, cwd=ROOT)
        token = _sample_token(url)
        port = _port()
        env = {**os.environ, "CONNECT_AUDIT_DATABASE_URL": url,
               "CONNECT_AUDIT_ADMIN_PASSWORD": PASSWORD}
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard/app.py", "--server.address",
             "127.0.0.1", "--server.port", str(port), "--server.headless", "true"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=SERVER_LOG.open("w"),
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2):
                        break
                except OSError:
                    time.sleep(0.3)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1500})
                page.goto(base)
                page.get_by_role("textbox", name="Account").fill("admin")
                page.get_by_role("textbox", name="Password").fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                page.get_by_role("heading", name="Overview", exact=True).wait_for(timeout=60_000)
                for title in PAGES:
                    page.get_by_role("link", name=title, exact=True).first.click()
                    page.get_by_role("heading", name=title, exact=True).wait_for(timeout=60_000)
                    if title == "Token debugger":
                        _inspect(page, token)
                    if title in {"Overview", "Denials", "Who acted", "Activity"}:
                        page.goto(page.url.split("?")[0] + "?range=30d")  # the demo's month
                        page.get_by_role("heading", name=title, exact=True).wait_for(timeout=60_000)
                    _settle(page)
                    page.wait_for_timeout(3000)  # charts draw after the script has finished
                    _check_no_error(page, title)
                    name = title.lower().replace(" ", "-")
                    page.screenshot(path=str(HERE / f"{name}.png"))
                    print(f"saved docs/screenshots/{name}.png")
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
