"""The dashboard through Streamlit's AppTest: sign-in first, every page, both roles, empty and
hostile stores. Stores are filled through the real recorder (see audit_data.py)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from audit_data import (
    HOSTILE_ACCOUNT,
    HOSTILE_DETAIL,
    HOSTILE_PATH,
    HOSTILE_TENANT,
    TENANTS,
    build_store,
)
from streamlit.testing.v1 import AppTest

from collector import events as ev
from collector.signing import request_token
from collector.store import Store
from dashboard import auth

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "main.py")
PAGES = ("overview", "installs", "activity", "who_acted", "denials", "atlassian_record", "token_debugger",
         "export", "integrity")
ADMIN_PASSWORD = "correct horse battery staple"
AUDITOR_PASSWORD = "auditor password 123"
SECRET_MARK = "do-not-leak"


@pytest.fixture(scope="module")
def hostile_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'audit.db'}"
    build_store(url)
    accounts = auth.Accounts(Path(url.removeprefix("sqlite:///")).parent / auth.ACCOUNTS_FILE)
    accounts.set_password("auditor1", AUDITOR_PASSWORD, auth.AUDITOR)
    return url


@pytest.fixture
def empty_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    Store.open(url).close()
    return url


def _app(url: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("CONNECT_AUDIT_DATABASE_URL", url)
    monkeypatch.setenv("CONNECT_AUDIT_ADMIN_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.delenv("CONNECT_AUDIT_ACCOUNTS_FILE", raising=False)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    return at


def _sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input(key="sign_in_name").input(name)
    at.text_input(key="sign_in_password").input(password)
    at.button(key="FormSubmitter:sign_in-Sign in").click().run()
    return at


def _signed_in(url, monkeypatch, role=auth.ADMIN) -> AppTest:
    at = _app(url, monkeypatch)
    if role == auth.ADMIN:
        return _sign_in(at, "admin", ADMIN_PASSWORD)
    return _sign_in(at, "auditor1", AUDITOR_PASSWORD)


def _open(at: AppTest, page: str, **params) -> AppTest:
    at.switch_page(f"views/{page}.py")
    at.query_params.clear()
    at.query_params.update(params)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(at: AppTest) -> list[str]:
    """Everything the page shows as plain text, tables included."""
    out: list[str] = []
    for kind in ("title", "header", "subheader", "caption", "text", "code", "error", "warning",
                 "info", "success", "markdown"):
        out += [str(e.value) for e in getattr(at, kind)]
    out += [f"{m.label} {m.value}" for m in at.metric]
    out += [json.dumps(j.value) if not isinstance(j.value, str) else j.value for j in at.json]
    out += [d.value.to_csv() for d in at.dataframe]
    return out


def _markdown(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in (*at.markdown, *at.caption, *at.title, *at.subheader))


# --------------------------------------------------------------------------- signed out


def test_signed_out_shows_nothing_of_the_log(hostile_url, monkeypatch):
    at = _app(hostile_url, monkeypatch)
    assert [t.value for t in at.title] == ["Connect Audit"]
    assert not at.dataframe and not at.metric and not at.json
    shown = "\n".join(_texts(at))
    for value in ("tenant-alpha", HOSTILE_TENANT, HOSTILE_PATH, "Overview"):
        assert value not in shown
    for page in PAGES:  # a deep link does not get past the sign-in either
        at.switch_page(f"views/{page}.py").run()
        assert not at.dataframe and not at.metric
        assert "tenant-alpha" not in "\n".join(_texts(at))
        assert at.text_input(key="sign_in_password")


def test_wrong_password_is_refused_and_failures_are_rate_limited_and_recorded(hostile_url, monkeypatch):
    at = _app(hostile_url, monkeypatch)
    _sign_in(at, "ratelimited", "wrong password")
    assert [e.value for e in at.error] == ["Wrong account or password."]
    for _ in range(5):
        _sign_in(at, "ratelimited", "wrong password")
    assert "Too many failed sign-ins" in at.error[0].value
    assert not at.dataframe
    from dashboard import queries

    with Store.open(hostile_url) as store:
        queries.use_store(store)
        mine = [e for e in queries.admin_events(200) if e["account"] == "ratelimited"]
    kinds = [e["event"] for e in reversed(mine)]
    assert kinds[:5] == ["sign_in_failed"] * 4 + ["sign_in_lockout"] and "sign_in_throttled" in kinds
    assert all(e["outcome"] == "rejected" and e["address"] == "local" for e in mine)


def test_admin_password_is_stored_only_as_a_hash(hostile_url, monkeypatch):
    _signed_in(hostile_url, monkeypatch)
    path = Path(hostile_url.removeprefix("sqlite:///")).parent / auth.ACCOUNTS_FILE
    text = path.read_text()
    assert ADMIN_PASSWORD not in text and "scrypt$" in text
    assert path.stat().st_mode & 0o077 == 0


def test_generated_admin_password_is_printed_once(tmp_path, capsys):
    accounts = auth.Accounts(tmp_path / auth.ACCOUNTS_FILE)
    import os

    saved = os.environ.pop(auth.ADMIN_PASSWORD_ENV, None)
    try:
        generated = accounts.ensure_admin()
        assert generated and generated in capsys.readouterr().out
        assert accounts.ensure_admin() is None
        assert capsys.readouterr().out == ""
    finally:
        if saved is not None:
            os.environ[auth.ADMIN_PASSWORD_ENV] = saved
    assert accounts.authenticate("admin", generated).role == auth.ADMIN
    assert accounts.authenticate("admin", generated + "x") is None


def test_oidc_configuration_and_roles():
    assert not auth.oidc_configured({})
    assert auth.oidc_configured({"auth": {"client_id": "x", "redirect_uri": "y"}})
    assert auth.oidc_configured({"auth": {"okta": {"client_id": "x"}, "cookie_secret": "s"}})
    secrets = {"connect_audit": {"admins": ["Ann@Example.com"], "auditors": ["bob@example.com"]}}
    assert auth.oidc_role({"email": "ann@example.com"}, secrets) == auth.ADMIN
    assert auth.oidc_role({"email": "bob@example.com"}, secrets) == auth.AUDITOR
    assert auth.oidc_role({"email": "eve@example.com"}, secrets) is None


# --------------------------------------------------------------------------- every page


@pytest.mark.slow
@pytest.mark.parametrize("role", [auth.ADMIN, auth.AUDITOR])
def test_every_page_renders_for_each_role_without_leaking_secrets(hostile_url, monkeypatch, role):
    at = _signed_in(hostile_url, monkeypatch, role)
    for page in PAGES:
        _open(at, page)
        shown = "\n".join(_texts(at))
        assert SECRET_MARK not in shown, page
    nav = at.session_state["connect_audit_page"]
    assert nav == "integrity"
    if role == auth.AUDITOR:
        with pytest.raises(ValueError):
            at.switch_page("views/accounts.py")
    else:
        _open(at, "accounts")
        assert {"admin", "auditor1"} <= set(at.dataframe[0].value["account"])


@pytest.mark.slow
def test_every_page_renders_on_an_empty_store(empty_url, monkeypatch):
    at = _signed_in(empty_url, monkeypatch)
    for page in PAGES:
        _open(at, page, range="all")
    _open(at, "overview", range="all")
    assert at.metric[0].value == "1"  # the one event of the log: the admin's own sign-in
    _open(at, "installs")
    assert "No tenant has installed the app yet." in [i.value for i in at.info]
    _open(at, "export", range="all", direction="incoming")
    assert "0 events match." in [t.value for t in at.text]
    assert at.get("download_button")[0].proto.disabled


def test_overview_counts_match_the_store(hostile_url, monkeypatch):
    at = _signed_in(hostile_url, monkeypatch)
    _open(at, "overview", range="all")
    with Store.open(hostile_url) as store:
        from collector import query as q

        expected = q.count(store, q.EventFilter())
    assert at.metric[0].label == "Events"
    # The store also holds the exports that other tests made: count after opening.
    assert int(at.metric[0].value.replace(",", "")) <= expected
    assert int(at.metric[1].value) == 3  # two tenants and the hostile one
    table = at.dataframe[0].value
    assert "tenant" not in table.columns  # a site by its name; the key is a click away
    assert "alpha.atlassian.net" in table["site"].tolist()


# --------------------------------------------------------------------------- hostile data


def test_activity_shows_hostile_values_verbatim_as_text(hostile_url, monkeypatch):
    at = _signed_in(hostile_url, monkeypatch)
    _open(at, "activity", range="1h")
    table = at.dataframe[-1].value
    # What happened first, the long identifiers last: path and status stay on screen.
    assert list(table.columns[:5]) == ["time (UTC)", "outcome", "status", "method", "path"]
    assert list(table.columns[-1:]) == ["person"]  # a name, or an id's start: the id is in the detail
    assert f"{HOSTILE_ACCOUNT[:8]}…" in table["person"].tolist()
    assert HOSTILE_ACCOUNT not in table["person"].tolist()
    assert HOSTILE_PATH in table["path"].tolist()
    assert "<script>" not in _markdown(at)


def test_row_detail_from_the_url_shows_claims_and_fields_as_text(hostile_url, monkeypatch):
    at = _signed_in(hostile_url, monkeypatch)
    _open(at, "activity", range="1h", outcome="rejected", reason="bad_signature")
    event_id = None
    with Store.open(hostile_url) as store:
        from collector import query as q

        event_id = q.page(store, q.EventFilter(tenant=HOSTILE_TENANT)).rows[0]["event_id"]
    _open(at, "activity", range="1h", event=event_id)
    detail = at.json[-1].value
    detail = json.loads(detail) if isinstance(detail, str) else detail
    assert detail["detail"] == HOSTILE_DETAIL
    assert detail["path"] == HOSTILE_PATH
    claims = at.dataframe[-1].value
    assert "<script>alert(2)</script>" in claims["value"].tolist()
    assert "<script>" not in _markdown(at)
    assert "![img]" not in _markdown(at)


def test_filters_live_in_the_url_and_pagination_moves_by_keyset(hostile_url, monkeypatch):
    at = _signed_in(hostile_url, monkeypatch)
    _open(at, "activity", range="all", outcome="allowed")
    assert at.selectbox(key="f_outcome").value == "allowed"
    first = at.dataframe[-1].value
    assert set(first["outcome"]) == {"allowed"} and len(first) == 50
    at.button(key="older").click().run()
    second = at.dataframe[-1].value
    assert "after" in at.query_params
    assert not set(first["time (UTC)"]) & set(second["time (UTC)"])
    assert second["time (UTC)"].max() <= first["time (UTC)"].min()
    at.button(key="newer").click().run()
    assert at.dataframe[-1].value["time (UTC)"].tolist() == first["time (UTC)"].tolist()
    at.selectbox(key="f_outcome").set_value("denied").run()
    assert at.query_params["outcome"] == "denied"
    assert set(at.dataframe[-1].value["outcome"]) == {"denied"}
    assert "after" not in at.query_params  # a new filter starts at the newest page


def test_malformed_filter_in_the_url_is_one_sentence(hostile_url, monkeypatch):
    at = _signed_in(hostile_url, monkeypatch)
    _open(at, "activity", range="all", status="forbidden")
    assert any("not an HTTP status" in e.value for e in at.error)
    assert not at.exception


# --------------------------------------------------------------------------- other pages


def test_denials_split_scope_and_permission_with_fixes(hostile_url, monkeypatch):
    at = _signed_in(hostile_url, monkeypatch)
    _open(at, "denials", range="all")
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["403: scope missing"]) > 0
    assert int(metrics["403: user lacks permission"]) > 0
    scope_table = at.dataframe[0].value
    assert set(scope_table["scope to add"]) == {"WRITE"}
    assert "scope required" in at.dataframe[1].value.columns
    # Refusals the app answered are shown apart, so that none is counted twice.
    answered = at.dataframe[2].value
    assert int(metrics["401/403 answered by the app"].replace(",", "")) == answered["events"].sum() > 0
    assert int(metrics["403: scope missing"].replace(",", "")) == scope_table["events"].sum()
    reasons = at.dataframe[-1].value
    row = reasons[reasons["reason"] == "expired"].iloc[0]
    assert "NTP" in row["fix"]


def test_who_acted_splits_app_user_and_users(hostile_url, monkeypatch):
    at = _signed_in(hostile_url, monkeypatch)
    _open(at, "who_acted", range="all")
    metrics = {m.label: int(m.value.replace(",", "")) for m in at.metric}
    assert metrics["As the app user"] > metrics["As a user"] > 0
    users = at.dataframe[-1].value
    assert "5b10ac8d…" in users["account"].tolist() and "tenant" not in users.columns


def test_people_are_shown_by_the_name_the_product_gave(hostile_url, monkeypatch):
    import sqlalchemy as sa

    from collector.models import Person

    with Store.open(hostile_url) as store:
        users = sa.text("SELECT tenant_client_key, account_id FROM audit_events WHERE identity_kind = 'user' "
                        "AND account_id = '5b10ac8d82e05b22cc7d0000' LIMIT 1")
        with store.engine.connect() as conn:
            tenant, account = conn.execute(users).one()
        with store.transaction() as conn:
            conn.execute(sa.delete(Person.__table__))
            conn.execute(sa.insert(Person.__table__), [{
                "tenant_client_key": tenant, "account_id": account, "display_name": "Jane <b>Doe</b>",
                "status": "known", "fetched_at": datetime.now(UTC)}])
    try:
        at = _signed_in(hostile_url, monkeypatch)
        _open(at, "who_acted", range="all")
        people = at.dataframe[-1].value
        assert "Jane <b>Doe</b>" in people["person"].tolist()  # the product's data, as text
        assert "<b>Doe</b>" not in _markdown(at)
    finally:
        with Store.open(hostile_url) as store, store.transaction() as conn:
            conn.execute(sa.delete(Person.__table__))


def test_installs_lists_tenants_without_secrets(hostile_url, monkeypatch):
    at = _signed_in(hostile_url, monkeypatch)
    _open(at, "installs")
    table = at.dataframe[0].value
    assert sorted(table["tenant"]) == sorted(t if len(t) <= 12 else f"{t[:8]}…" for t in TENANTS)
    assert "alpha.atlassian.net" in table["site"].tolist()
    assert set(table["status"]) == {"installed", "enabled"}
    assert SECRET_MARK not in table.to_csv()


def _paste(at: AppTest, token: str, method: str = "", url: str = "") -> AppTest:
    at.text_area(key="token_input").input(token)
    if method:
        at.selectbox(key="token_method").set_value(method)
    at.text_input(key="token_url").input(url)
    at.button(key="FormSubmitter:token_form-Inspect").click().run()
    assert not at.exception
    return at


def _token(path="/rest/api/content/1?expand=body", **kw):
    return request_token(client_key="tenant-alpha", shared_secret="secret-tenant-alpha-do-not-leak",
                         method="GET", url=path, base_url="", now=kw.pop("now", time.time()), **kw)


def test_token_debugger_admin_verifies_against_the_stored_secret(hostile_url, monkeypatch):
    at = _signed_in(hostile_url, monkeypatch)
    _open(at, "token_debugger")
    token = _token()
    _paste(at, f'  "JWT {token}"  ', "GET", "/rest/api/content/1?expand=body")
    assert [s.value for s in at.success] == ["Accepted"]
    shown = "\n".join(_texts(at))
    assert token.rsplit(".", 1)[1] not in shown  # never the signature
    assert SECRET_MARK not in shown
    assert "tenant-alpha" in shown  # iss, and the matching install

    _paste(at, token, "GET", "/rest/api/content/2")
    assert [e.value for e in at.error] == ["Rejected"]
    assert "Reason: qsh_mismatch" in [t.value for t in at.text]
    assert at.code  # the canonical request

    stale = _token(now=time.time() - 3600)
    _paste(at, stale, "GET", "/rest/api/content/1?expand=body")
    assert "Reason: expired" in [t.value for t in at.text]

    # Without a request, the hint names this form's fields, not the CLI's flags.
    _paste(at, token)
    hints = [t.value for t in at.text if t.value.startswith("Hint:")]
    assert ('Hint: The qsh was not compared with a request: give "Method" and "URL the token came with" '
            "to check it.") in hints
    assert not any("--" in h for h in hints)


def test_token_debugger_auditor_does_not_verify_and_hostile_claims_are_text(hostile_url,
                                                                             monkeypatch):
    at = _signed_in(hostile_url, monkeypatch, auth.AUDITOR)
    _open(at, "token_debugger")
    from collector.signing import sign_hs256

    hostile = sign_hs256({"iss": "tenant-alpha", "sub": "<img src=x onerror=alert(1)>",
                          "iat": int(time.time()), "exp": int(time.time()) + 60, "qsh": "=1+1"},
                         "secret-tenant-alpha-do-not-leak")
    _paste(at, hostile)
    assert not at.success  # an auditor never gets a verdict from the stored secret
    assert any("Not verified" in w.value for w in at.warning)
    claims = at.json[1].value
    claims = json.loads(claims) if isinstance(claims, str) else claims
    assert claims["sub"] == "<img src=x onerror=alert(1)>"
    assert "<img" not in _markdown(at)
    assert "Matching install" not in [s.value for s in at.subheader]


def test_token_debugger_verifies_a_forge_invocation_token_and_explains_a_product_token(
        hostile_url, monkeypatch, tmp_path):
    from collector.simulator import ConfluenceSimulator
    from collector.simulator.examples import load_example

    manifest = load_example("flask").FORGE_MANIFEST
    with ConfluenceSimulator() as sim:
        sim.forge.deploy(manifest, "http://127.0.0.1:9")
        tenant = sim.tenant("acme")
        fit = sim.forge.invocation_token(tenant, "recent-pages-macro", account=tenant.users()[1].account_id)
        system = sim.forge.product_token(tenant, None)
        expired_user = sim.forge.product_token(tenant, tenant.users()[1].account_id, ttl=-120)
        jwks = tmp_path / "jwks.json"
        jwks.write_text(json.dumps(sim.forge.jwks()))
    monkeypatch.setenv("CONNECT_AUDIT_FORGE_JWKS", str(jwks))
    monkeypatch.setenv("CONNECT_AUDIT_FORGE_APP_IDS", manifest["app"]["id"])
    at = _signed_in(hostile_url, monkeypatch, auth.AUDITOR)
    _open(at, "token_debugger")
    at.selectbox(key="token_endpoint").set_value("forge")
    _paste(at, f"Bearer {fit}")
    assert [s.value for s in at.success] == ["Accepted"]
    shown = "\n".join(_texts(at))
    tables = " ".join(str(df.value.to_dict()) for df in at.dataframe)
    assert tenant.installation_id in tables and "recent-pages-macro" in tables
    assert fit.rsplit(".", 1)[1] not in shown  # never the signature

    _paste(at, f"x-forge-oauth-system: {system}")
    assert [s.value[:6] for s in at.success] == ["Usable"]
    _paste(at, f"x-forge-oauth-user: {expired_user}")
    assert [e.value for e in at.error] == ["Rejected"]
    assert "Reason: expired" in [t.value for t in at.text]

    monkeypatch.setenv("CONNECT_AUDIT_FORGE_APP_IDS", "ari:cloud:ecosystem::app/someone-else")
    _paste(at, fit)
    assert [e.value for e in at.error] == ["Rejected"]
    assert "Reason: wrong_audience" in [t.value for t in at.text]


def test_the_dashboard_reads_through_a_store_that_refuses_writes(tmp_path, monkeypatch):
    import sqlalchemy as sa

    from dashboard import queries

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    build_store(url, events=40)
    monkeypatch.setenv("CONNECT_AUDIT_DATABASE_URL", url)
    handle = queries._open(url)
    try:
        assert handle.store.read_only
        with pytest.raises(sa.exc.DBAPIError, match=r"(?i)readonly"), handle.store.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM audit_events"))
        with handle.store.engine.connect() as conn:
            before = conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar()
        queries._direct[url] = handle
        data, result = queries.export_bytes(queries.EventFilter(outcome="rejected"), "csv", actor="admin")
        assert result.rows > 0 and result.audit_event_id and data.startswith(b"event_id,")
        with handle.store.engine.connect() as conn:  # the export's own event, through the writer
            assert conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar() == before + 1
    finally:
        queries._direct.pop(url, None)
        handle.store.close()
        if handle._writer is not None:
            handle._writer.close()


def test_export_page_counts_the_filter_and_offers_a_named_download(hostile_url, monkeypatch):
    at = _signed_in(hostile_url, monkeypatch, auth.AUDITOR)
    _open(at, "export", range="all", outcome="rejected")
    text = [t.value for t in at.text]
    assert any(t.endswith("events match.") and not t.startswith("0 ") for t in text)
    button = at.get("download_button")[0]
    assert button.proto.label.startswith("Download connect-audit_start_")
    assert button.proto.label.endswith(".csv")


def test_dashboard_export_is_recorded_and_neutralised(hostile_url, monkeypatch):
    monkeypatch.setenv("CONNECT_AUDIT_DATABASE_URL", hostile_url)
    from dashboard import queries

    with Store.open(hostile_url) as store:
        queries.use_store(store)
        data, result = queries.export_bytes(queries.EventFilter(outcome=ev.REJECTED), "csv",
                                            actor="auditor1 (auditor, dashboard)")
        recent = queries.recent_exports()
    body = data.decode()
    assert f"'{HOSTILE_TENANT}".replace('"', '""') in body
    assert recent[0]["sha256"] == result.sha256 and recent[0]["via"] == "dashboard"
    assert recent[0]["actor"] == "auditor1 (auditor, dashboard)"


def test_integrity_verifies_the_chain(hostile_url, monkeypatch):
    at = _signed_in(hostile_url, monkeypatch, auth.AUDITOR)
    _open(at, "integrity")
    assert any(t.value.startswith("Oldest event kept:") for t in at.text)
    at.button(key="verify").click().run()
    assert at.success and at.success[0].value.startswith("The chain verifies")


def test_admin_adds_an_auditor_who_can_then_sign_in(hostile_url, monkeypatch):
    at = _signed_in(hostile_url, monkeypatch)
    _open(at, "accounts")
    form = at.get("form")[0] if at.get("form") else None
    assert form is not None
    at.text_input[0].input("carol")
    at.text_input[1].input("carol's long password")
    at.button(key="FormSubmitter:account_form-Save").click().run()
    assert [s.value for s in at.success] == ["Saved."]
    other = _app(hostile_url, monkeypatch)
    _sign_in(other, "carol", "carol's long password")
    assert other.session_state[auth.SESSION_KEY].role == auth.AUDITOR
    _open(other, "denials")
    assert [t.value for t in other.title] == ["Denials"]
    # A new password for carol ends her open session at her next action.
    at.text_input[0].input("carol")
    at.text_input[1].input("carol's new long password")
    at.button(key="FormSubmitter:account_form-Save").click().run()
    assert [s.value for s in at.success] == ["Saved. The account's open sessions have ended."]
    other.run()
    assert other.text_input(key="sign_in_password") and auth.SESSION_KEY not in other.session_state
    assert other.caption[0].value == "Your account was changed, so its sessions ended. Sign in again."


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_guesser_elsewhere_cannot_lock_the_admin_out_even_across_a_restart(tmp_path):
    # The review's finding: five wrong passwords locked the real admin out for 300 s even with the
    # right password, and a restart cleared the throttle.
    path = tmp_path / auth.ACCOUNTS_FILE
    accounts = auth.Accounts(path)
    accounts.set_password("admin", "the right password", auth.ADMIN)
    clock = Clock()
    gate = auth.SignInThrottle(accounts, clock=clock)
    waits, locks = [], []
    for _ in range(8):
        verdict = gate.failed("admin", "203.0.113.9")
        waits.append(verdict.retry_after)
        locks.append(verdict.locked)
    assert waits[:3] == [0, 0, 0] and waits[3:] == [5, 10, 20, 40, 80]  # grows with each failure
    assert locks.count(True) == 1 and locks[3]  # the lockout is reported once, when it starts
    assert gate.retry_after("admin", "198.51.100.7") == 0  # the real admin, from another address
    assert accounts.authenticate("admin", "the right password") is not None
    restarted = auth.SignInThrottle(auth.Accounts(path), clock=clock)  # a new process
    assert restarted.retry_after("admin", "203.0.113.9") == 80
    clock.now += 81
    assert restarted.retry_after("admin", "203.0.113.9") == 0
    assert restarted.failed("admin", "203.0.113.9").retry_after == 160  # and it keeps growing


def test_one_address_trying_many_names_waits_and_many_addresses_trying_one_name_wait_too(tmp_path):
    clock = Clock()
    gate = auth.SignInThrottle(auth.Accounts(tmp_path / auth.ACCOUNTS_FILE), clock=clock,
                               address_free=5, account_alarm=10)
    for i in range(6):
        gate.failed(f"user{i}", "203.0.113.9")
    assert gate.retry_after("someone-new", "203.0.113.9") == 5  # the address as a whole
    assert gate.retry_after("someone-new", "192.0.2.1") == 0
    for i in range(10):  # a spread-out guess: one failure from each of ten addresses
        gate.failed("admin", f"10.0.0.{i}")
    assert gate.retry_after("admin", "10.0.0.3") == 900  # every address that failed waits the cap
    assert gate.retry_after("admin", "192.0.2.1") == 0  # a clean address still signs in


def test_the_recovery_command_resets_the_password_and_the_throttle(tmp_path, monkeypatch, capsys):
    path = tmp_path / auth.ACCOUNTS_FILE
    monkeypatch.setenv(auth.ACCOUNTS_FILE_ENV, str(path))
    monkeypatch.setenv("CONNECT_AUDIT_DATABASE_URL", f"sqlite:///{tmp_path / 'audit.db'}")
    monkeypatch.delenv(auth.ADMIN_PASSWORD_ENV, raising=False)
    Store.open(f"sqlite:///{tmp_path / 'audit.db'}").close()
    auth.Accounts(path).set_password("admin", "a forgotten password", auth.ADMIN)
    gate = auth.SignInThrottle(auth.Accounts(path))
    for _ in range(6):
        gate.failed("admin", "local")
    assert gate.retry_after("admin", "local") > 0
    assert auth.main(["reset", "admin"]) == 0
    printed = capsys.readouterr().out
    password = printed.split("new password:")[1].split()[0]
    assert auth.Accounts(path).authenticate("admin", password) is not None
    assert gate.retry_after("admin", "local") == 0 and password not in path.read_text()
    from dashboard import queries

    with Store.open(f"sqlite:///{tmp_path / 'audit.db'}") as store:
        queries.use_store(store)
        [event] = queries.admin_events()
    assert (event["event"], event["account"]) == ("password_reset", "admin") and password not in str(event)
    assert auth.main(["reset", "nobody"]) == 2
    assert "There is no account 'nobody'" in capsys.readouterr().err


def test_auth_main_prints_a_generated_password_once_and_stores_only_its_hash(tmp_path, monkeypatch, capsys):
    # `make run` calls `python -m dashboard.auth` before the server, so the password shows
    # in the terminal that started it.
    path = tmp_path / "accounts.json"
    monkeypatch.setenv(auth.ACCOUNTS_FILE_ENV, str(path))
    monkeypatch.delenv(auth.ADMIN_PASSWORD_ENV, raising=False)
    assert auth.main([]) == 0
    first = capsys.readouterr().out
    password = first.split("password")[1].split()[0]
    assert len(password) >= 20 and password not in path.read_text()
    assert auth.Accounts(path).authenticate("admin", password) is not None
    assert auth.main([]) == 0
    again = capsys.readouterr().out
    assert password not in again and "set earlier" in again


def test_a_reinstall_s_change_and_a_refused_install_show_on_the_overview_and_timeline(empty_url, monkeypatch):
    from collector.installs import InstallRegistry
    from collector.recorder import Recorder

    with Store.open(empty_url) as store, Recorder(store) as rec:
        InstallRegistry(store).apply_lifecycle("installed", {
            "key": "app", "clientKey": "ck-moved", "baseUrl": "https://acme-corp.atlassian.net/wiki",
            "sharedSecret": "s" * 32, "productType": "confluence"})
        common = {"direction": ev.LIFECYCLE, "method": "POST", "path": "/installed", "status": 200,
                  "tenant_client_key": "ck-moved", "auth_method": "lifecycle_jwt"}
        moved = ("Reinstall: baseUrl changed from https://acme.atlassian.net/wiki to "
                 "https://acme-corp.atlassian.net/wiki (another host); shared secret rotated")
        rec.write_now(ev.AuditRecord(**common, outcome=ev.ALLOWED, event_type="install_changed",
                                     detail=moved))
        rec.write_now(ev.AuditRecord(**{**common, "status": 401}, outcome=ev.REJECTED, event_type="installed",
                                     reason="bad_signature", detail="a token refusal: not an install change"))
        rec.write_now(ev.AuditRecord(**{**common, "status": 403}, outcome=ev.REJECTED,
                                     event_type="installed",
                                     reason="host_not_allowed",
                                     detail="the baseUrl host 'evil.example' is not in the allowed hosts"))
    at = _signed_in(empty_url, monkeypatch)
    _open(at, "overview", range="24h")
    assert "Install changes" in [s.value for s in at.subheader]
    table = at.dataframe[0].value
    assert list(table["event"]) == ["installed", "install_changed"]
    assert next(iter(table["reason"])) == "host_not_allowed" and "another host" in list(table["detail"])[1]
    from dashboard import queries

    with Store.open(empty_url) as store:
        queries.use_store(store)
        timeline = queries.lifecycle_timeline("ck-moved")  # the Installs page's timeline
    assert [r["event_type"] for r in timeline] == ["installed", "installed", "install_changed"]
    assert "shared secret rotated" in timeline[-1]["detail"]


def _blank_cells(at: AppTest) -> list[str]:
    """Every shown value that reads as a missing value (None, nan, an empty cell)."""
    import re

    found = []
    for frame in at.dataframe:
        for column, values in frame.value.items():
            found += [f"{column}={v!r}" for v in values
                      if v is None or (isinstance(v, float) and v != v) or str(v) in ("", "None", "nan")]
    for element in (*at.text, *at.caption, *at.markdown, *at.json):
        if re.search(r"\bNone\b|\bnull\b", str(element.value)):
            found.append(str(element.value)[:120])
    return found


@pytest.mark.parametrize("page", PAGES)
def test_no_page_shows_a_blank_as_none(hostile_url, monkeypatch, page):
    at = _signed_in(hostile_url, monkeypatch)
    _open(at, page, range="30d")
    assert _blank_cells(at) == []
    if page == "activity":
        # The row detail of an event with many empty fields (a sign-in has no path, no tenant).
        from collector import query as q

        with Store.open(hostile_url) as store:
            rows = q.page(store, q.EventFilter(direction="internal")).rows
        _open(at, page, range="30d", event=rows[0]["event_id"])
        assert at.subheader and "Event detail" in [s.value for s in at.subheader]
        assert _blank_cells(at) == []


def test_overview_counts_open_the_page_and_filters_that_produced_them(hostile_url, monkeypatch):
    from urllib.parse import parse_qsl

    at = _signed_in(hostile_url, monkeypatch)
    _open(at, "overview", range="30d")
    links = {link.proto.label.split(" ", 1)[-1]: link.proto for link in at.get("page_link")}
    assert {"events", "rejections", "denials", "errors", "Installs"} <= set(links)
    for word, outcome in (("events", None), ("rejections", "rejected"), ("errors", "error")):
        link = links[word]
        params = dict(parse_qsl(link.query_string))
        wanted = {"range": "30d", **({"outcome": outcome} if outcome else {})}
        assert link.page == "activity" and params == wanted
        _open(at, "activity", **params)
        count = int(link.label.split(" ")[0].replace(",", ""))
        assert at.caption[0].value.startswith(f"{count} matching events"), (word, at.caption[0].value)
        _open(at, "overview", range="30d")
    denials = links["denials"]
    assert denials.page == "denials" and dict(parse_qsl(denials.query_string)) == {"range": "30d"}
    assert links["Installs"].page == "installs"


@pytest.fixture(scope="module")
def highlights_url(tmp_path_factory) -> str:
    from highlightkit import fill

    url = f"sqlite:///{tmp_path_factory.mktemp('highlights') / 'audit.db'}"
    fill(url, anomalies=True).close()
    return url


def test_the_overview_shows_the_highlights_first_each_opening_its_events(highlights_url, monkeypatch):
    from urllib.parse import parse_qsl

    from highlightkit import ACME

    at = _signed_in(highlights_url, monkeypatch)
    _open(at, "overview", range="30d")
    assert at.subheader[0].value == "Highlights"
    labels = [_unescaped(link.proto.label) for link in at.get("page_link")]
    assert labels[0].startswith("HIGH: ")  # most severe first
    storm = next(link.proto for link in at.get("page_link")
                 if "incoming tokens rejected" in _unescaped(link.proto.label))
    # (no install in this store names the site: its key stands in)
    assert "key-acme (connect): 41 of 51 incoming tokens rejected" in _unescaped(storm.label)
    assert _unescaped(storm.label).endswith("; usually 9%")  # the whole sentence
    params = dict(parse_qsl(storm.query_string))
    assert storm.page == "activity" and params["outcome"] == "rejected" and params["tenant"] == ACME
    _open(at, "activity", **params)
    assert at.caption[0].value.startswith("41 matching events"), at.caption[0].value
    _open(at, "overview", range="30d")
    lower = [e for e in at.expander if "of lower severity" in e.label]
    assert len(lower) == 1  # first endpoints and routine lifecycle callbacks wait in there
    _open(at, "overview", range="30d", tenant="key-globex")
    shown = [_unescaped(link.proto.label) for link in at.get("page_link")]
    assert shown and all("key-globex" in label for label in shown if label.startswith("HIGH"))
    assert not any("key-acme" in label for label in shown)


def test_a_range_with_nothing_unusual_says_so(empty_url, monkeypatch):
    at = _signed_in(empty_url, monkeypatch)
    _open(at, "overview", range="24h")
    assert at.subheader[0].value == "Highlights"
    assert any("Nothing unusual in this range" in c.value for c in at.caption)


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory) -> str:
    from collector.cli import main

    url = f"sqlite:///{tmp_path_factory.mktemp('demo') / 'audit.db'}"
    assert main(["demo", "--database", url, "--events", "200", "--seed", "7"]) == 0
    return url


@pytest.mark.slow
@pytest.mark.parametrize("page", [*PAGES, "accounts"])
def test_no_page_of_the_demo_shows_a_blank_as_none(demo_url, monkeypatch, page):
    at = _signed_in(demo_url, monkeypatch)
    _open(at, page, range="30d")
    assert _blank_cells(at) == []


@pytest.mark.parametrize("page", ["who_acted", "denials", "overview"])
def test_tenants_are_shown_by_their_site_not_their_key(hostile_url, monkeypatch, page):
    at = _signed_in(hostile_url, monkeypatch)
    _open(at, page, range="30d")
    framed = [f.value for f in at.dataframe if "site" in f.value.columns]
    assert framed, "no table shows a site"
    sites = {s for frame in framed for s in frame["site"]}
    assert "alpha.atlassian.net" in sites and not any(str(s).startswith("http") for s in sites)
    shown = "".join(frame.to_csv() for frame in (f.value for f in at.dataframe))
    assert "tenant-alpha" not in shown and HOSTILE_TENANT not in shown  # keys are in detail views


# --------------------------------------------------------------------------- fit and finish


def _unescaped(label: str) -> str:
    """A chip's label as shown: Streamlit renders it as Markdown, in which every punctuation
    character was backslash-escaped."""
    import re

    return re.sub(r"\\(.)", r"\1", label)


def _chips(at: AppTest) -> list[str]:
    found = [p for p in at.pills if p.key == "filter_chips"]
    return [_unescaped(label) for label in found[0].options] if found else []


def test_the_time_zone_choice_changes_every_shown_time_and_is_kept_in_the_session_and_url(
        hostile_url, monkeypatch):
    import pandas as pd

    at = _signed_in(hostile_url, monkeypatch)
    at.context = {"timezone": "Asia/Kolkata", "timezone_offset": -330}  # UTC+05:30 all year
    _open(at, "activity", range="1h")
    assert at.radio(key="tz_choice").value == "UTC"  # the default, even with a browser zone known
    utc = at.dataframe[-1].value["time (UTC)"]
    assert str(utc.dt.tz) == "UTC"

    at.radio(key="tz_choice").set_value("Asia/Kolkata").run()
    assert at.query_params["tz"] == "Asia/Kolkata"
    table = at.dataframe[-1].value
    assert "time (UTC)" not in table.columns
    local = table["time (Asia/Kolkata)"]
    assert local.tolist() == utc.tolist()  # the same instants ...
    shift = local.dt.tz_localize(None) - utc.dt.tz_localize(None)
    assert set(shift) == {pd.Timedelta(hours=5, minutes=30)}  # ... on the zone's clock
    with Store.open(hostile_url) as store:
        from collector import query as q

        row = q.page(store, q.EventFilter(tenant="tenant-alpha")).rows[0]
    _open(at, "activity", range="1h", event=row["event_id"])
    assert "Every stored field (times in Asia/Kolkata)" in [c.value for c in at.caption]
    fields = at.json[-1].value
    fields = json.loads(fields) if isinstance(fields, str) else fields
    assert fields["ts"] == row["ts"].astimezone(local.dt.tz).isoformat() and fields["ts"].endswith("+05:30")

    # Kept for the session: other pages show their times in the zone too, with its name.
    _open(at, "integrity")
    oldest = next(t.value for t in at.text if t.value.startswith("Oldest event kept:"))
    assert "Asia/Kolkata" in oldest and "UTC" not in oldest
    _open(at, "overview", range="24h")
    assert any(t.value.startswith("Newest event ") and "Asia/Kolkata" in t.value for t in at.text)
    assert at.query_params["tz"] == "Asia/Kolkata"  # the URL carries it to a shared link

    at.radio(key="tz_choice").set_value("UTC").run()
    assert "tz" not in at.query_params
    _open(at, "integrity")
    assert " UTC  (seq " in next(t.value for t in at.text if t.value.startswith("Oldest event kept:"))

    # A shared link's zone wins, as its filters do, and a name that is no zone is ignored.
    other = _signed_in(hostile_url, monkeypatch)
    _open(other, "who_acted", range="all", tz="Asia/Kolkata")
    assert {"first seen (Asia/Kolkata)", "last seen (Asia/Kolkata)"} <= set(other.dataframe[-1].value.columns)
    _open(other, "who_acted", range="all", tz="../../etc/passwd")
    assert other.radio(key="tz_choice").value == "Asia/Kolkata"


def test_exports_stay_in_utc_whatever_zone_the_pages_show(hostile_url, monkeypatch):
    from dashboard import queries

    at = _signed_in(hostile_url, monkeypatch)
    _open(at, "export", range="all", outcome="rejected", tz="Asia/Kolkata")
    assert at.radio(key="tz_choice").value == "Asia/Kolkata"
    with Store.open(hostile_url) as store:
        queries.use_store(store)
        data, _ = queries.export_bytes(queries.EventFilter(outcome="rejected"), "ndjson", actor="test")
    stamps = [json.loads(line)["timestamp"] for line in data.decode().splitlines()]
    assert stamps and all(s.endswith("Z") for s in stamps)


def test_set_filters_fold_into_chips_and_removing_a_chip_clears_its_filter(hostile_url, monkeypatch):
    at = _signed_in(hostile_url, monkeypatch)
    _open(at, "activity")  # nothing set (the last 24 hours): the form, open, and no chips
    assert _chips(at) == [] and not at.expander

    _open(at, "activity", range="all", outcome="denied", tenant="tenant-alpha")
    assert _chips(at) == ["Range: All time \u00d7", "Site: alpha.atlassian.net \u00d7",
                          "Outcome: denied \u00d7"]  # the site's name, not its clientKey
    assert [e.label for e in at.expander] == ["Edit filters"]
    assert at.selectbox(key="f_outcome").value == "denied"  # the whole form, in the expander
    assert set(at.dataframe[-1].value["outcome"]) == {"denied"}

    at.pills(key="filter_chips").unselect("outcome").run()
    assert not at.exception
    assert "outcome" not in at.query_params and at.query_params["tenant"] == "tenant-alpha"
    assert at.selectbox(key="f_outcome").value == ""
    assert _chips(at) == ["Range: All time \u00d7", "Site: alpha.atlassian.net \u00d7"]
    assert len(set(at.dataframe[-1].value["outcome"])) > 1  # the filter is gone from the query too
    assert set(at.dataframe[-1].value["site"]) == {"alpha.atlassian.net"}

    at.pills(key="filter_chips").unselect("range").run()  # back to the default range
    assert at.selectbox(key="f_range").value == "24h" and at.query_params["range"] == "24h"
    assert _chips(at) == ["Site: alpha.atlassian.net \u00d7"]
    at.pills(key="filter_chips").unselect("tenant").run()
    assert _chips(at) == [] and not at.expander and "tenant" not in at.query_params


def test_a_chip_shows_a_hostile_value_escaped_and_a_typed_filter_folds_the_form(hostile_url, monkeypatch):
    at = _signed_in(hostile_url, monkeypatch)
    _open(at, "activity", range="all", text="![x](http://evil.example/t.png)")
    [chips] = [p for p in at.pills if p.key == "filter_chips"]
    label = chips.options[1]
    assert "![x](" not in label and "\\!\\[x\\]\\(" in label  # Markdown that cannot become an image
    assert _unescaped(label) == "Search: ![x](http://evil.example/t.png) \u00d7"


def test_a_row_detail_reads_as_a_sentence_above_its_fields(hostile_url, monkeypatch):
    at = _signed_in(hostile_url, monkeypatch)
    with Store.open(hostile_url) as store:
        from collector import query as q

        denied = q.page(store, q.EventFilter(tenant="tenant-alpha", outcome="denied", reason="scope",
                                             direction="outgoing", platform="connect")).rows[0]
        as_user = q.page(store, q.EventFilter(tenant="tenant-alpha", outcome="denied", reason="scope",
                                              direction="incoming", identity_kind="user")).rows[0]
        hostile = q.page(store, q.EventFilter(tenant=HOSTILE_TENANT)).rows[0]
    _open(at, "activity", range="all", event=denied["event_id"])
    number = denied["path"].rsplit("/", 1)[1]
    sentence = (f"The app acted as its app user on alpha.atlassian.net: {denied['method']} "
                f"content {number} was refused (403): the descriptor lacks the WRITE scope.")
    shown = [e for e in at.main if type(e).__name__ in ("Text", "Json")]
    kinds = [(type(e).__name__, e.value) for e in shown]
    assert ("Text", sentence) in kinds
    assert kinds.index(("Text", sentence)) < [k for k, _ in kinds].index("Json")  # above the raw fields
    assert ("Text", queries_fix("scope")) in kinds  # and what to do about it

    _open(at, "activity", range="all", event=as_user["event_id"])
    account = as_user["account_id"]
    said = [t.value for t in at.text if " as user " in t.value]
    assert said and said[0].startswith("Confluence ")
    assert (f" as user {account[:8]}\u2026 on alpha.atlassian.net: the app answered 403, passing on "
            "Confluence's refusal of its call for a missing scope.") in said[0]

    # A hostile event: its sentence is plain text (st.text), never Markdown.
    _open(at, "activity", range="all", event=hostile["event_id"])
    said = [t.value for t in at.text if "bad_signature" in t.value]
    assert said and HOSTILE_PATH.split("?")[0] in said[0]
    assert "<script>" not in _markdown(at)


def queries_fix(reason: str) -> str:
    from dashboard import queries

    return queries.FIXES[reason]


@pytest.mark.parametrize(("page", "looks_for"), [
    ("overview", "Events per hour by outcome: a spike or a gap is worth a look"),
    ("denials", "Rejected tokens per hour by reason: a burst of one reason is the fix to make first"),
])
def test_every_chart_says_what_to_look_for_and_its_time_axis_names_the_zone(hostile_url, monkeypatch, page,
                                                                            looks_for):
    at = _signed_in(hostile_url, monkeypatch)
    _open(at, page, range="24h", tz="Asia/Kolkata")
    charts = at.get("vega_lite_chart")
    assert charts, "no chart"
    specs = [json.loads(c.proto.spec) for c in charts]
    assert [s["title"] for s in specs] == [looks_for]
    assert specs[0]["encoding"]["x"]["title"] == "time (Asia/Kolkata)"


def test_integrity_shows_the_retention_policy_and_what_the_last_purges_removed(tmp_path, monkeypatch):
    from collector import synthetic
    from collector.retention import RetentionPolicy, apply_policy

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with Store.open(url) as store:
        synthetic.generate(store, 1_500, tenants=3, days=60, seed=5)
        run = apply_policy(store, RetentionPolicy(days=30, archive_dir=tmp_path / "archive"), chunk=400)
    assert run.removed > 0
    monkeypatch.setenv("CONNECT_AUDIT_RETENTION_DAYS", "30")
    monkeypatch.setenv("CONNECT_AUDIT_RETENTION_ARCHIVE", str(tmp_path / "archive"))
    at = _signed_in(url, monkeypatch)
    _open(at, "integrity")
    shown = "\n".join(_texts(at))
    assert f"Policy: keep 30 days; archive what goes to {tmp_path / 'archive'}" in shown
    [purges] = [f.value for f in at.dataframe if "archive sha256" in f.value.columns]
    assert len(purges) == min(5, len(run.purges)) and set(purges["by"]) == {"policy"}
    newest = run.archives[-1]
    assert purges["archive"].iloc[0] == newest["file"]
    assert purges["archive sha256"].iloc[0] == newest["sha256"]
    monkeypatch.setenv("CONNECT_AUDIT_RETENTION_DAYS", "forever")
    _open(at, "integrity")
    assert any("misconfigured" in e.value and "must be a number of days" in e.value for e in at.error)


def test_integrity_shows_each_forwarding_destination_and_why_one_fails(tmp_path, monkeypatch):
    from collector import synthetic
    from collector.forward import Forwarder, ForwardError

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with Store.open(url) as store:
        synthetic.generate(store, 300, tenants=2, days=2, seed=3)
    at = _signed_in(url, monkeypatch)
    _open(at, "integrity")
    assert any("Not forwarded anywhere" in c.value for c in at.caption)
    with Store.open(url) as store:
        down = Forwarder(store, "syslog+tcp://127.0.0.1:9?facility=local1", batch_size=100)
        assert down.claim()
        with pytest.raises(ForwardError):
            down.forward_available()  # nothing listens on the discard port
    _open(at, "integrity")
    [table] = [f.value for f in at.dataframe if "destination" in f.value.columns]
    assert list(table["destination"]) == ["syslog+tcp://127.0.0.1:9?facility=local1"]
    assert table["sent"].iloc[0] == 0 and table["behind"].iloc[0] >= 300
    assert any("has failed since" in e.value and "connection refused" in e.value for e in at.error)


# --------------------------------------------------------------------------- the Atlassian record

ATLASSIAN_ACTOR = "<script>alert('actor')</script>"
ATLASSIAN_SUMMARY = '=HYPERLINK("https://evil.example") ![x](http://evil.example/t.png)'


def plant_atlassian_record(url: str) -> dict:
    """Fill the store at ``url`` with Atlassian's record imported from the simulated host: on Acme
    (installed) a call the app recorded too, one it never made and one of the app's that Atlassian
    lacks; on the hostile site a call with hostile names; and a source whose key is refused.
    Returns Acme's clientKey and the unmatched rows by name (leaked, hostile, lost)."""
    from datetime import timedelta

    from collector import imports
    from collector.installs import InstallRegistry
    from collector.reconcile import reconcile
    from collector.recorder import Recorder
    from collector.simulator import ConfluenceSimulator
    from collector.simulator.audit import Entry

    with ConfluenceSimulator() as sim, Store.open(url) as store:
        sim.record.rate_limit = None
        acme = sim.tenant("acme")
        InstallRegistry(store).apply_lifecycle("installed", {
            "key": "connect-audit-example", "clientKey": acme.client_key, "baseUrl": acme.base_url,
            "sharedSecret": "s" * 32, "productType": "confluence"})
        start = time.time() - 300
        for i, (site, name, summary) in enumerate([("acme", "The app", "GET content 0"),
                                                    ("acme", "The app", "GET content 1"),
                                                    ("umbrella", ATLASSIAN_ACTOR, ATLASSIAN_SUMMARY)]):
            sim.record.add(Entry(
                id=f"ev-{i}", at=start + 5 * i, site=site, action="third_party_app_confluence_api_request",
                actor_id="557058:app", actor_name=name, auth_type="connect-token", method="GET",
                path=f"/wiki/rest/api/content/{i}", status=200, summary=summary,
                extra={"app": "connect-audit-example"}))
        with Recorder(store) as rec:  # the app's own calls: content 0 (matched) and 99 (app only)
            for number, delay in ((0, 1), (99, 12)):
                rec.write_now(ev.AuditRecord(
                    direction=ev.OUTGOING, outcome=ev.ALLOWED, auth_method="jwt", identity_kind=ev.APP_USER,
                    ts=datetime.fromtimestamp(start + delay, UTC), tenant_client_key=acme.client_key,
                    tenant_base_url=acme.base_url, method="GET", path=f"/wiki/rest/api/content/{number}",
                    status=200))
        imports.add_source(store, "org", imports.ORG_EVENTS, sim.record.org_id, sim.record.org_key,
                           api_url=sim.url, since=datetime.now(UTC) - timedelta(hours=1))
        imports.add_source(store, "bad-org", imports.ORG_EVENTS, sim.record.org_id, "not-the-key-" + "x" * 20,
                           api_url=sim.url)
        for name in ("org", "bad-org"):
            with imports.Importer(store, name, min_interval=0) as importer:
                importer.run()
        found = reconcile(store, since=datetime.now(UTC) - timedelta(hours=1))
        assert (found.matched, found.atlassian_only, found.app_only) == (1, 2, 1), found.rows
        only = {r["path"].rsplit("/", 1)[1]: r for r in found.rows}
    return {"acme": acme.client_key, "leaked": only["1"], "hostile": only["2"], "lost": only["99"]}


@pytest.fixture(scope="module")
def atlassian(tmp_path_factory) -> dict:
    url = f"sqlite:///{tmp_path_factory.mktemp('atlassian') / 'audit.db'}"
    planted = plant_atlassian_record(url)
    accounts = auth.Accounts(Path(url.removeprefix("sqlite:///")).parent / auth.ACCOUNTS_FILE)
    accounts.set_password("auditor1", AUDITOR_PASSWORD, auth.AUDITOR)
    return {"url": url, **planted}


def _frame(at: AppTest, *columns: str):
    """The one table that has all of ``columns``."""
    [frame] = [f.value for f in at.dataframe if set(columns) <= set(f.value.columns)]
    return frame


def test_the_atlassian_record_says_how_to_add_a_source_when_there_is_none(empty_url, monkeypatch):
    at = _signed_in(empty_url, monkeypatch)
    _open(at, "atlassian_record", range="all")
    assert [t.value for t in at.title] == ["Atlassian record"]
    assert any(i.value.startswith("No import source yet") for i in at.info)
    commands = "\n".join(c.value for c in at.code)
    assert "connect-audit import add" in commands and "connect-audit import run" in commands
    assert {m.label: m.value for m in at.metric} == {"Matched": "0", "Atlassian only": "0", "App only": "0"}
    assert _blank_cells(at) == []


def test_the_atlassian_record_lists_its_sources_and_imported_records_as_text(atlassian, monkeypatch):
    at = _signed_in(atlassian["url"], monkeypatch, auth.AUDITOR)
    _open(at, "atlassian_record", range="24h")
    sources = _frame(at, "name", "complete to (UTC)", "last error")
    assert list(sources["name"]) == ["bad-org", "org"] and list(sources["imported"]) == [0, 3]
    assert "HTTP 401" in sources["last error"].iloc[0] and sources["last error"].iloc[1] == "\u2014"
    assert any("has failed since" in e.value and "HTTP 401" in e.value for e in at.error)
    records = _frame(at, "action", "actor", "message")
    assert len(records) == 3 and set(records["source"]) == {"org"}
    assert set(records["action"]) == {"third_party_app_confluence_api_request"}
    assert ATLASSIAN_ACTOR in records["actor"].tolist()  # Atlassian's names, verbatim, as text
    assert ATLASSIAN_SUMMARY in records["message"].tolist()
    assert any(c.value.startswith("3 imported records; page 1") for c in at.caption)
    assert "<script>" not in _markdown(at) and "![x]" not in _markdown(at)
    assert SECRET_MARK not in "\n".join(_texts(at)) and _blank_cells(at) == []


def test_an_imported_record_opens_as_its_source_sent_it_with_its_sha256(atlassian, monkeypatch):
    from dashboard import queries

    monkeypatch.setenv("CONNECT_AUDIT_DATABASE_URL", atlassian["url"])
    with Store.open(atlassian["url"]) as store:
        queries.use_store(store)
        event_id = atlassian["hostile"]["event_id"]
        digest = queries.event_detail(event_id)["extra"]["sha256"]
    at = _signed_in(atlassian["url"], monkeypatch)
    _open(at, "atlassian_record", range="24h", record=event_id)
    assert "Source record" in [s.value for s in at.subheader]
    record = at.json[-1].value
    record = json.loads(record) if isinstance(record, str) else record
    assert record["id"] == "ev-2" and record["attributes"]["actor"]["name"] == ATLASSIAN_ACTOR
    assert record["message"]["content"] == ATLASSIAN_SUMMARY
    assert digest in [c.value for c in at.code]
    assert "The stored record still hashes to it." in [c.value for c in at.caption]
    assert "<script>" not in _markdown(at) and "![x]" not in _markdown(at)


def test_imported_records_are_read_whatever_the_filter_s_direction_and_page_by_keyset(atlassian, monkeypatch):
    from dashboard import queries

    monkeypatch.setenv("CONNECT_AUDIT_DATABASE_URL", atlassian["url"])
    with Store.open(atlassian["url"]) as store:
        queries.use_store(store)
        flt = queries.EventFilter(direction="outgoing", platform="connect")
        first = queries.imported_page(flt, limit=2)
        second = queries.imported_page(flt, after=first.next_cursor, limit=2)
        assert queries.imported_count_label(flt) == "3"
        assert queries.imported_page(queries.EventFilter(tenant=atlassian["acme"])).rows[0]["source"] == "org"
        assert queries.imported_record(atlassian["lost"]["event_id"]) is None  # the app's own event
    assert len(first.rows) == 2 and len(second.rows) == 1 and second.next_cursor is None
    assert [r["source_id"] for r in first.rows + second.rows] == ["ev-2", "ev-1", "ev-0"]  # newest first
    assert {r["direction"] for r in first.rows + second.rows} == {"imported"}


def test_the_atlassian_record_reconciles_each_unmatched_call_a_click_from_the_app_s_events(atlassian,
                                                                                          monkeypatch):
    from urllib.parse import parse_qsl

    at = _signed_in(atlassian["url"], monkeypatch)
    _open(at, "atlassian_record", range="24h")
    assert {m.label: m.value for m in at.metric} == {"Matched": "1", "Atlassian only": "2", "App only": "1"}
    sites = _frame(at, "matched %", "atlassian only")
    acme = sites[sites["site"].str.endswith("/t/acme")].iloc[0]
    assert (acme["matched %"], acme["matched"], acme["atlassian only"], acme["app only"]) == (50.0, 1, 1, 1)
    theirs = _frame(at, "account", "source")  # side by side: Atlassian's calls, then the app's
    assert sorted(theirs["path"]) == ["/wiki/rest/api/content/1", "/wiki/rest/api/content/2"]
    ours = [f.value for f in at.dataframe if "account" in f.value.columns and "source" not in f.value.columns]
    assert [list(f["path"]) for f in ours] == [["/wiki/rest/api/content/99"]]

    # A call with the app's identity the app never made: the app's calls around it, and the nearest.
    leaked = atlassian["leaked"]
    _open(at, "atlassian_record", range="24h", unmatched=leaked["event_id"])
    links = [link.proto for link in at.get("page_link")]
    assert links and all(link.page == "activity" for link in links)
    around = dict(parse_qsl(links[0].query_string))
    at_time = datetime.fromisoformat(leaked["ts"].replace("Z", "+00:00"))
    assert around["tenant"] == atlassian["acme"] and around["direction"] == "outgoing"
    assert (datetime.fromisoformat(around["since"].replace("Z", "+00:00")), datetime.fromisoformat(
        around["until"].replace("Z", "+00:00"))) == (at_time - queries_around(), at_time + queries_around())
    nearest = [dict(parse_qsl(link.query_string))["event"] for link in links[1:]]
    assert nearest == leaked["nearest"] and len(nearest) == 2
    record = at.json[-1].value  # and its record as Atlassian sent it, beside
    assert (json.loads(record) if isinstance(record, str) else record)["id"] == "ev-1"
    _open(at, "activity", **around)
    assert at.caption[0].value.startswith("2 matching events"), at.caption[0].value

    # One of the app's calls Atlassian's record lacks: its link opens that very event.
    _open(at, "atlassian_record", range="24h", unmatched=atlassian["lost"]["event_id"])
    [link] = [link.proto for link in at.get("page_link")]
    _open(at, "activity", **dict(parse_qsl(link.query_string)))
    assert "Event detail" in [s.value for s in at.subheader]

    # The hostile site's call: its names are text, its link's label escaped.
    _open(at, "atlassian_record", range="24h", unmatched=atlassian["hostile"]["event_id"])
    assert "<script>" not in _markdown(at) and "![x]" not in _markdown(at)
    assert not any("<" in link.proto.label for link in at.get("page_link"))

    # A wider tolerance is a number away.
    at.number_input(key="rec_tolerance").set_value(15.0).run()
    assert not at.exception
    assert any("within 15 s" in c.value for c in at.caption)


def queries_around():
    from dashboard import queries

    return queries.AROUND
