"""The WSGI middleware over real HTTP: verification per route kind, the context handed to
the handler, generic refusals, and what each request leaves in the audit store."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest
import requests

# Helper modules hold asserts too: have pytest explain their failures (registered before import).
pytest.register_assert_rewrite("e2e_scenario", "e2e_support", "middleware_support")

from middleware_support import (  # noqa: E402
    ACCOUNT,
    CLIENT_KEY,
    KID,
    ROUTES,
    echo_wsgi,
    events,
    install,
    install_payload,
    key_pair,
    lifecycle_token,
    make_audit,
    request_token,
)

from collector import signing  # noqa: E402
from collector.middleware import ENVIRON_KEY, WsgiMiddleware  # noqa: E402
from collector.simulator import ServerThread  # noqa: E402


@pytest.fixture
def served(sqlite_url, tmp_path):
    server = ServerThread()
    audit = make_audit(sqlite_url, tmp_path / "keys", server.url)
    install(audit)
    server.mount(WsgiMiddleware(echo_wsgi, audit, ROUTES)).start()
    try:
        yield server.url, audit
    finally:
        server.stop()
        audit.close()


def get(url: str, path: str, *, token: str | None = None, via: str = "query", **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if token and via == "header":
        headers["Authorization"] = f"JWT {token}"
    elif token:
        path += ("&" if "?" in path else "?") + f"jwt={token}"
    return requests.request(kwargs.pop("method", "GET"), url + path, headers=headers, timeout=10, **kwargs)


def test_request_route_hands_the_verified_context_to_the_handler(served):
    url, audit = served
    token = request_token(url, "GET", f"{url}/items/42?b=2&a=1")
    response = get(url, "/items/42?b=2&a=1", token=token)
    assert response.status_code == 200
    body = response.json()
    assert body["client_key"] == CLIENT_KEY and body["account_id"] == ACCOUNT
    assert body["base_url"] == "https://site.atlassian.net/wiki"
    assert (body["auth"], body["route"], body["qsh_kind"]) == ("request", "/items/{item_id}", "computed")
    assert body["current_is_same"] is True
    assert body["request_id"] == response.headers["X-Request-Id"]
    [event] = events(audit, body["request_id"])
    assert event["direction"] == "incoming" and event["auth_method"] == "app_jwt"
    assert event["identity_kind"] == "user" and event["account_id"] == ACCOUNT
    assert event["path"] == "/items/42?b=2&a=1"  # as received, minus the jwt parameter
    assert event["path_template"] == "/items/{item_id}"
    assert (event["status"], event["outcome"], event["reason"]) == (200, "allowed", None)
    assert event["tenant_client_key"] == CLIENT_KEY and event["declared_scopes"] == "READ WRITE"
    assert event["token_fingerprint"].startswith("sha256:") and token not in json.dumps(event, default=str)
    assert json.loads(event["claims"])["iss"] == CLIENT_KEY


def test_token_in_the_authorization_header(served):
    url, _ = served
    token = request_token(url, "GET", f"{url}/items/7")
    assert get(url, "/items/7", token=token, via="header").status_code == 200


def test_refusal_is_a_generic_401_and_the_reason_goes_to_the_log(served):
    url, audit = served
    token = request_token(url, "GET", f"{url}/items/42", now=1_000_000)
    response = get(url, "/items/42", token=token)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("JWT")
    assert "expired" not in response.text and "Request id:" in response.text
    [event] = events(audit, response.headers["X-Request-Id"])
    assert (event["outcome"], event["reason"], event["status"]) == ("rejected", "expired", 401)
    # Signed with the tenant's secret, refused for its age: the refusal is the tenant's.
    assert event["tenant_client_key"] == CLIENT_KEY and event["account_id"] is None
    claims = json.loads(event["claims"])
    assert claims["verified"] is False and claims["iss"] == CLIENT_KEY


def test_undeclared_routes_need_a_token_and_public_routes_do_not(served):
    url, audit = served
    refused = get(url, "/not/declared")
    assert refused.status_code == 401
    [event] = events(audit, refused.headers["X-Request-Id"])
    assert (event["reason"], event["auth_method"], event["path_template"]) == ("missing_token", "none", None)
    public = get(url, "/atlassian-connect.json")
    assert public.status_code == 200 and public.json()["auth"] == "public"
    [event] = events(audit, public.headers["X-Request-Id"])
    assert (event["auth_method"], event["identity_kind"]) == ("none", "anonymous")
    assert event["outcome"] == "allowed"


@pytest.mark.parametrize(("code", "outcome", "reason"), [
    (403, "denied", "permission"), (404, "allowed", None), (503, "error", None),
])
def test_the_apps_own_status_is_recorded(served, code, outcome, reason):
    url, audit = served
    path = f"/status/{code}"
    response = get(url, path, token=request_token(url, "GET", url + path))
    assert response.status_code == code
    [event] = events(audit, response.headers["X-Request-Id"])
    assert (event["status"], event["outcome"], event["reason"]) == (code, outcome, reason)


def test_an_exception_in_the_app_is_recorded_as_an_error(served):
    url, audit = served
    response = get(url, "/boom", token=request_token(url, "GET", url + "/boom"))
    assert response.status_code == 500
    boom = [e for e in events(audit) if e["path"] == "/boom"]
    assert len(boom) == 1 and (boom[0]["outcome"], boom[0]["status"]) == ("error", 500)
    assert boom[0]["detail"] == "the app raised an exception"


def test_a_request_token_is_single_use_on_a_state_changing_method(served):
    url, audit = served
    token = request_token(url, "POST", f"{url}/items/hook")
    first = get(url, "/items/hook", token=token, via="header", method="POST", json={"n": 1})
    again = get(url, "/items/hook", token=token, via="header", method="POST", json={"n": 1})
    assert (first.status_code, again.status_code) == (200, 401)
    assert events(audit, first.headers["X-Request-Id"])[0]["event_type"] == "webhook"
    assert events(audit, again.headers["X-Request-Id"])[0]["reason"] == "replayed"
    token = request_token(url, "GET", f"{url}/items/1")
    assert [get(url, "/items/1", token=token).status_code for _ in range(2)] == [200, 200]


def test_context_tokens_work_on_context_routes_only_and_may_be_reused(served):
    url, audit = served
    token = request_token(url, "POST", "ignored", context=True)
    replies = [get(url, "/ctx", token=token, via="header", method="POST") for _ in range(2)]
    assert [r.status_code for r in replies] == [200, 200]  # AP.context tokens are reusable
    assert replies[0].json()["qsh_kind"] == "context"
    assert events(audit, replies[0].headers["X-Request-Id"])[0]["auth_method"] == "context_jwt"
    refused = get(url, "/items/1", token=token, via="header")
    assert refused.status_code == 401
    [event] = events(audit, refused.headers["X-Request-Id"])
    assert (event["reason"], event["auth_method"]) == ("context_qsh_not_allowed", "context_jwt")
    signed = request_token(url, "GET", f"{url}/ctx")  # a request token is fine on a context route
    assert get(url, "/ctx", token=signed).json()["qsh_kind"] == "computed"


def test_a_caller_cannot_choose_the_request_id_of_its_event(served):
    # The review's finding: X-Request-Id was taken from the caller, so a forged request could
    # share a real request's id. Now the collector mints every id; an untrusted caller's is dropped.
    url, audit = served
    real = get(url, "/items/1", token=request_token(url, "GET", f"{url}/items/1"))
    forged = get(url, "/items/1", headers={"X-Request-Id": real.headers["X-Request-Id"],
                                           "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})
    assert forged.status_code == 401
    assert forged.headers["X-Request-Id"] != real.headers["X-Request-Id"]
    [mine] = events(audit, real.headers["X-Request-Id"])
    [theirs] = events(audit, forged.headers["X-Request-Id"])
    assert mine["outcome"] == "allowed" and theirs["reason"] == "missing_token"
    assert theirs["extra"] is None  # nothing of the caller's ids is kept from an untrusted address


def test_a_trusted_proxy_s_ids_are_kept_beside_ours_under_their_own_names(sqlite_url, tmp_path):
    server = ServerThread()
    audit = make_audit(sqlite_url, tmp_path / "keys", server.url, trusted_proxies="127.0.0.0/8")
    install(audit)
    server.mount(WsgiMiddleware(echo_wsgi, audit, ROUTES)).start()
    try:
        url = server.url
        parent = "00-" + "0af7651916cd43dd8448eb211c80319c" + "-b7ad6b7169203331-01"
        response = get(url, "/items/1", token=request_token(url, "GET", f"{url}/items/1"),
                       headers={"X-Request-Id": "lb-7f3a.1", "traceparent": parent})
        hostile = get(url, "/items/1", headers={"X-Request-Id": "<script>", "traceparent": "nonsense"})
        [event] = events(audit, response.headers["X-Request-Id"])
        [refused] = events(audit, hostile.headers["X-Request-Id"])
    finally:
        server.stop()
        audit.close()
    assert response.headers["X-Request-Id"] not in ("lb-7f3a.1", parent)
    assert json.loads(event["extra"]) == {"upstream_request_id": "lb-7f3a.1", "traceparent": parent}
    assert refused["extra"] is None  # malformed ids are not kept even from a trusted proxy


_LAST_IAT = [0]


def _callback(url: str, event: str, payload: dict) -> requests.Response:
    body = json.dumps(payload).encode()
    # A distinct iat per callback: lifecycle tokens are single-use, and two sent in one second
    # would otherwise be the same token (refused as replayed). A second or two ahead is in leeway.
    _LAST_IAT[0] = max(int(time.time()), _LAST_IAT[0] + 1)
    token = signing.lifecycle_token(private_key_pem=key_pair()[0], kid=KID, client_key=payload["clientKey"],
                                    app_base_url=url, method="POST", url=f"{url}/{event}", now=_LAST_IAT[0])
    return requests.post(f"{url}/{event}", data=body, timeout=10, headers={
        "Authorization": f"JWT {token}", "Content-Type": "application/json"})


def test_a_signed_reinstall_that_moves_the_install_to_a_foreign_host_is_refused(served):
    # The review's finding: a signed installed for a known clientKey silently replaced its
    # shared secret and baseUrl (to https://evil.example/wiki).
    url, audit = served
    hijack = {**install_payload("https://evil.example/wiki"), "sharedSecret": "attacker-chosen-secret-0123"}
    response = _callback(url, "installed", hijack)
    assert response.status_code == 403 and b"install policy" in response.content
    kept = audit.registry.install_secret(CLIENT_KEY)
    original = install_payload()
    assert (kept.base_url, kept.shared_secret) == (original["baseUrl"], original["sharedSecret"])
    [event] = events(audit, response.headers["X-Request-Id"])
    assert (event["outcome"], event["reason"]) == ("rejected", "host_not_allowed")
    assert event["event_type"] == "installed"
    assert event["tenant_client_key"] == CLIENT_KEY and "evil.example" in event["detail"]
    moved = _callback(url, "installed", install_payload("https://other.atlassian.net/wiki"))
    assert moved.status_code == 403
    assert events(audit, moved.headers["X-Request-Id"])[0]["reason"] == "host_moved"


def test_a_reinstall_that_changes_the_install_is_recorded_as_its_own_lifecycle_change(served):
    url, audit = served
    payload = {**install_payload("https://site.atlassian.net/"), "sharedSecret": "a-rotated-secret-01234"}
    response = _callback(url, "installed", payload)
    assert response.status_code == 200
    callback, change = sorted(events(audit, response.headers["X-Request-Id"]), key=lambda e: e["seq"])
    assert (callback["event_type"], change["event_type"]) == ("installed", "install_changed")
    assert change["direction"] == "lifecycle" and change["tenant_client_key"] == CLIENT_KEY
    assert json.loads(change["extra"]) == {"old_base_url": "https://site.atlassian.net/wiki",
                               "new_base_url": "https://site.atlassian.net/", "host_moved": False,
                               "secret_rotated": True, "old_product": "confluence",
                               "new_product": "confluence"}
    assert "a-rotated-secret" not in json.dumps([callback, change], default=str)
    same = _callback(url, "installed", payload)  # the same body again changes nothing
    assert [e["event_type"] for e in events(audit, same.headers["X-Request-Id"])] == ["installed"]


@pytest.mark.parametrize("event", ["uninstalled", "installed"])
def test_an_uninstall_for_a_key_never_installed_creates_nothing(served, event):
    url, audit = served
    stranger = {**install_payload(event="uninstalled"), "clientKey": "never-installed-key"}
    if event == "installed":  # an install from a foreign host creates nothing either
        stranger = {**install_payload("https://evil.example/wiki"), "clientKey": "never-installed-key"}
    response = _callback(url, event, stranger)
    assert response.status_code == (204 if event == "uninstalled" else 403)
    assert audit.registry.get("never-installed-key") is None
    [record] = events(audit, response.headers["X-Request-Id"])
    assert record["outcome"] == "rejected" and record["tenant_client_key"] == "never-installed-key"
    assert record["reason"] == ("unknown_install" if event == "uninstalled" else "host_not_allowed")


def test_signed_lifecycle_callback_updates_the_registry_and_the_app_still_reads_the_body(served):
    url, audit = served
    payload = install_payload(event="uninstalled")
    body = json.dumps(payload).encode()
    response = requests.post(f"{url}/uninstalled", data=body, timeout=10, headers={
        "Authorization": f"JWT {lifecycle_token(url, url + '/uninstalled')}",
        "Content-Type": "application/json"})
    assert response.status_code == 200
    assert response.json()["event_type"] == "uninstalled" and response.json()["body_length"] == len(body)
    assert audit.registry.get(CLIENT_KEY).status == "uninstalled"
    [event] = events(audit, response.headers["X-Request-Id"])
    assert (event["direction"], event["event_type"], event["auth_method"]) == (
        "lifecycle", "uninstalled", "lifecycle_jwt")
    assert event["tenant_client_key"] == CLIENT_KEY and event["identity_kind"] == "anonymous"
    stale = get(url, "/items/1", token=request_token(url, "GET", f"{url}/items/1"))
    assert stale.status_code == 401
    assert events(audit, stale.headers["X-Request-Id"])[0]["reason"] == "inactive_install"


def test_lifecycle_body_must_match_the_route_and_the_token(served):
    url, audit = served
    wrong_event = json.dumps(install_payload(event="installed")).encode()
    token = lifecycle_token(url, url + "/uninstalled")
    response = requests.post(f"{url}/uninstalled", data=wrong_event, timeout=10,
                             headers={"Authorization": f"JWT {token}"})
    assert response.status_code == 400 and "Bad Request" in response.text
    [event] = events(audit, response.headers["X-Request-Id"])
    assert event["outcome"] == "error" and "does not match the route" in event["detail"]
    assert audit.registry.get(CLIENT_KEY).status == "installed"
    garbage = requests.post(f"{url}/uninstalled", data=b"not json", timeout=10,
                            headers={"Authorization": f"JWT {lifecycle_token(url, url + '/uninstalled')}"})
    assert garbage.status_code == 401
    assert events(audit, garbage.headers["X-Request-Id"])[0]["reason"] == "issuer_mismatch"


def test_a_store_failure_never_breaks_the_request(served, caplog):
    url, audit = served
    audit.recorder.close()  # every later record() raises RecorderClosed
    with caplog.at_level(logging.ERROR, logger="collector.middleware"):
        response = get(url, "/items/1", token=request_token(url, "GET", f"{url}/items/1"))
    assert response.status_code == 200
    assert any("could not record" in r.getMessage() for r in caplog.records)


def _environ(path_info: str, query: str, *, script_name: str = "") -> dict:
    from wsgiref.util import setup_testing_defaults

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path_info, "QUERY_STRING": query,
               "SCRIPT_NAME": script_name, "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    return environ


def _call(app, environ) -> tuple[str, bytes]:
    """Call a WSGI app as a server must (PEP 3333): iterate the body, then close it."""
    seen = []
    result = app(environ, lambda status, headers, exc_info=None: seen.append(status))
    try:
        body = b"".join(result)
    finally:
        result.close()
    return seen[0], body


def test_servers_without_raw_uri_get_the_path_re_encoded_for_the_qsh(sqlite_url, tmp_path):
    """PATH_INFO is decoded by the server; the qsh is over the encoded path the host signed."""
    base = "http://app.test/prefix"
    with make_audit(sqlite_url, tmp_path / "keys", base) as audit:
        install(audit)
        app = WsgiMiddleware(echo_wsgi, audit, ROUTES)
        token = request_token(base, "GET", f"{base}/items/a%20b?x=1")
        environ = _environ("/items/a b", f"x=1&jwt={token}", script_name="/prefix")
        status, body = _call(app, environ)
        assert status.startswith("200"), body
        assert environ[ENVIRON_KEY].route == "/items/{item_id}"
        [event] = events(audit)
        assert event["path"] == "/items/a%20b?x=1"


@pytest.mark.postgres
def test_an_unreachable_store_is_a_503_and_the_event_is_spilled_not_lost(pg_url, tmp_path):
    import sqlalchemy as sa

    server = ServerThread()
    spill = tmp_path / "spill"
    spill.mkdir()
    audit = make_audit(pg_url, tmp_path / "keys", server.url, recorder_options={"spill_dir": spill})
    install(audit)
    server.mount(WsgiMiddleware(echo_wsgi, audit, ROUTES)).start()
    try:
        name = sa.engine.make_url(pg_url).database
        admin = sa.create_engine(pg_url.replace(f"/{name}", "/postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:  # the store disappears under the running app
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
        token = request_token(server.url, "GET", f"{server.url}/items/1")
        response = get(server.url, "/items/1", token=token)
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert "Service Unavailable" in response.text
        assert audit.flush(timeout=30)
        spilled = "".join(p.read_text() for p in spill.glob("*"))
        assert response.headers["X-Request-Id"] in spilled and '"outcome":"error"' in spilled.replace(" ", "")
    finally:
        server.stop()
        audit.recorder.close(timeout=5)
        audit.store.close()


@pytest.mark.postgres
def test_a_forge_invocation_while_the_store_is_gone_is_a_json_503_and_spilled(pg_url, tmp_path):
    """Forge's contract wants JSON on a non-2xx answer; the verdict waits for the store (the
    installation lookup), so the invocation is refused for now (Forge retries events) and
    its event goes to the spill file."""
    import time as clock

    import sqlalchemy as sa
    from forgekit import APP_ID, fit_claims, forge_key, rs256
    from forgekit import KID as FORGE_KID

    keys = tmp_path / "forge-keys"
    keys.mkdir()
    (keys / f"{FORGE_KID}.pem").write_text(forge_key().public_pem)
    server = ServerThread()
    spill = tmp_path / "spill"
    spill.mkdir()
    now = int(clock.time())
    audit = make_audit(pg_url, tmp_path / "keys", server.url, recorder_options={"spill_dir": spill},
                       forge_app_ids=[APP_ID], forge_jwks=str(keys))
    server.mount(WsgiMiddleware(echo_wsgi, audit, {**ROUTES, "POST /forge/events": "forge:event"})).start()
    try:
        name = sa.engine.make_url(pg_url).database
        admin = sa.create_engine(pg_url.replace(f"/{name}", "/postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
        claims = fit_claims({"iat": now, "nbf": now, "exp": now + 60})
        token = rs256({"alg": "RS256", "typ": "JWT", "kid": FORGE_KID}, claims, forge_key().private_pem)
        event = {"eventType": "avi:confluence:created:page"}
        response = requests.post(f"{server.url}/forge/events", json=event,
                                 headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert response.headers["Content-Type"] == "application/json"
        assert response.json()["requestId"] == response.headers["X-Request-Id"]
        assert audit.flush(timeout=30)
        spilled = "".join(p.read_text() for p in spill.glob("*")).replace(" ", "")
        assert response.headers["X-Request-Id"] in spilled and '"platform":"forge"' in spilled
        assert token.rsplit(".", 1)[1] not in spilled
    finally:
        server.stop()
        audit.recorder.close(timeout=5)
        audit.store.close()


def test_a_refusal_after_the_signature_verified_is_attributed_to_its_tenant(served):
    # An expired or replayed token was signed with the tenant's secret: the refusal is that
    # site's, and filtering the log by tenant must show it. A forged one names no tenant.
    url, audit = served
    stale = request_token(url, "GET", f"{url}/items/1", now=time.time() - 3600)
    expired = get(url, "/items/1", token=stale)
    forged = request_token(url, "GET", f"{url}/items/1")
    forged = forged[:-4] + ("AAAA" if not forged.endswith("AAAA") else "BBBB")
    bad = get(url, "/items/1", token=forged)
    assert (expired.status_code, bad.status_code) == (401, 401)
    [exp_event] = events(audit, expired.headers["X-Request-Id"])
    [bad_event] = events(audit, bad.headers["X-Request-Id"])
    assert exp_event["reason"] == "expired" and bad_event["reason"] == "bad_signature"
    assert exp_event["tenant_client_key"] == CLIENT_KEY
    assert exp_event["tenant_base_url"] == install_payload()["baseUrl"]
    assert bad_event["tenant_client_key"] is None
