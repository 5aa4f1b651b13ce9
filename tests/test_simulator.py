"""The Confluence host simulator on its own, over HTTP: what it sends an app (signed
lifecycle callbacks, spoilt tokens that fail for exactly the advertised reason), what its
REST API, authorization server and key server answer, and its keep-alive server."""

from __future__ import annotations

import http.client
import json
import time

import jwt
import pytest
import requests

from collector import signing
from collector.errors import TokenRejected
from collector.keys import HttpKeySource
from collector.replay import StoreReplayGuard
from collector.simulator import LIFECYCLE_MISBEHAVIOURS, MISBEHAVIOURS, ConfluenceSimulator, ServerThread
from collector.simulator.examples import examples_dir
from collector.simulator.site import HOSTILE_TITLES
from collector.store import Store
from collector.tokens import Endpoint, InstallSecret, StaticInstalls, TokenVerifier

pytestmark = pytest.mark.slow  # one simulator per module (RSA key generation)


class RecordingApp:
    """A bare Connect app: serves its descriptor and keeps every request the host sends."""

    def __init__(self) -> None:
        self.url = ""
        self.received: list[dict] = []
        self.descriptor = json.loads((examples_dir() / "flask_app" / "atlassian-connect.json").read_text())

    def __call__(self, environ, start_response):
        if environ["PATH_INFO"] == "/atlassian-connect.json":
            body = json.dumps(self.descriptor | {"baseUrl": self.url}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        self.received.append({
            "method": environ["REQUEST_METHOD"], "target": environ["RAW_URI"],
            "authorization": environ.get("HTTP_AUTHORIZATION"),
            "body": environ["wsgi.input"].read(length) if length else b"",
        })
        start_response("204 No Content", [])
        return []


@pytest.fixture(scope="module")
def world():
    app = RecordingApp()
    with ConfluenceSimulator() as sim, ServerThread(app) as server:
        app.url = server.url
        sim.connect(server.url)
        for name in sim.tenants:
            assert sim.install(name).status_code == 204
        yield sim, app


def app_jwt(sim, tenant, method, path, *, now=None):
    return signing.app_token(app_key=sim.app.key, shared_secret=tenant.shared_secret, method=method,
                             url=tenant.base_url + path, base_url=tenant.base_url,
                             now=time.time() if now is None else now)


def rest(sim, tenant, method, path, *, token=None, bearer=None, **kwargs):
    headers = {}
    if token is not None:
        headers["Authorization"] = f"JWT {token}"
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return requests.request(method, tenant.base_url + path, headers=headers, timeout=10, **kwargs)


# ---------------------------------------------------------------------- towards the app


def test_lifecycle_callbacks_are_rs256_signed_for_the_app(world):
    sim, app = world
    installs = [r for r in app.received if r["target"] == "/installed"]
    assert len(installs) == len(sim.tenants)
    token = installs[0]["authorization"].removeprefix("JWT ")
    public_pem = HttpKeySource(sim.install_keys_url).public_key(sim.kid)
    claims = jwt.decode(token, public_pem, algorithms=["RS256"], audience=app.url)  # an independent check
    body = json.loads(installs[0]["body"])
    assert claims["iss"] == body["clientKey"] and jwt.get_unverified_header(token)["kid"] == sim.kid
    assert body["eventType"] == "installed" and body["sharedSecret"]
    assert body["baseUrl"] == sim.tenant_by_client_key(body["clientKey"]).base_url


def test_only_the_install_callback_carries_the_shared_secret(world):
    sim, app = world
    assert sim.disable("acme").status_code == 204 and sim.enable("acme").status_code == 204
    later = [json.loads(r["body"]) for r in app.received if r["target"] in ("/disabled", "/enabled")]
    assert [b["eventType"] for b in later] == ["disabled", "enabled"]
    assert all("sharedSecret" not in b for b in later)


def test_key_server_serves_only_its_own_kid(world):
    sim, _ = world
    assert requests.get(f"{sim.url}/{sim.kid}", timeout=10).text.startswith("-----BEGIN PUBLIC KEY-----")
    assert requests.get(f"{sim.url}/sim-unknown", timeout=10).status_code == 404


def _verifier(sim, store=None):
    installs = StaticInstalls({t.client_key: InstallSecret(t.client_key, t.shared_secret, True, t.base_url)
                               for t in sim.tenants.values()})
    replay = StoreReplayGuard(store) if store is not None else None
    return TokenVerifier(installs, keys=HttpKeySource(sim.install_keys_url), replay=replay,
                         app_base_url=sim.app.base_url)


@pytest.mark.parametrize("misbehave", sorted(MISBEHAVIOURS))
def test_each_spoilt_request_token_fails_for_the_advertised_reason(world, misbehave, sqlite_url):
    sim, _ = world
    tenant = sim.tenant("acme")
    url = f"{sim.app.base_url}/pages?space_key=DEV"
    method = "POST" if misbehave == "replay" else "GET"
    token = sim.request_token(tenant, method, url, user=tenant.users()[0].account_id, misbehave=misbehave)
    with Store.open(sqlite_url) as store:
        verifier = _verifier(sim, store)
        with pytest.raises(TokenRejected) as raised:
            for _ in range(2):  # a replay fails the second time; everything else the first
                verifier.verify_request(token, method, url, state_changing=method == "POST")
    assert raised.value.code == MISBEHAVIOURS[misbehave]


def test_a_good_request_token_verifies_and_carries_a_unique_jti(world):
    sim, _ = world
    tenant = sim.tenant("acme")
    url = f"{sim.app.base_url}/webhooks/page-created"
    first, second = (sim.request_token(tenant, "POST", url) for _ in range(2))
    assert first != second
    verified = _verifier(sim).verify_request(first, "POST", url)
    assert verified.client_key == tenant.client_key and verified.claims["jti"]


@pytest.mark.parametrize("misbehave", sorted(LIFECYCLE_MISBEHAVIOURS))
def test_each_spoilt_lifecycle_token_fails_for_the_advertised_reason(world, misbehave, sqlite_url):
    sim, _ = world
    tenant = sim.tenant("acme")
    url = f"{sim.app.base_url}/enabled"
    token = sim.lifecycle_token(tenant, url, misbehave=misbehave)
    with Store.open(sqlite_url) as store:
        verifier = _verifier(sim, store)
        with pytest.raises(TokenRejected) as raised:
            for _ in range(2):
                verifier.verify_lifecycle(token, "POST", url, body_client_key=tenant.client_key)
    assert raised.value.code == LIFECYCLE_MISBEHAVIOURS[misbehave]


def test_page_loads_carry_the_token_in_the_query_and_context_calls_a_context_token(world):
    sim, app = world
    user = sim.tenant("acme").users()[1].account_id
    sim.page_load("acme", user=user)
    page = app.received[-1]
    assert page["target"].startswith("/pages?space_key=DEV&") and "&jwt=" in page["target"]
    assert page["authorization"] is None
    sim.context_call("acme", "GET", "/api/me", user=user)
    token = app.received[-1]["authorization"].removeprefix("JWT ")
    verified = _verifier(sim).verify_request(token, "GET", "ignored", endpoint=Endpoint.CONTEXT)
    assert (verified.qsh_kind, verified.account_id) == ("context", user)


# ---------------------------------------------------------------------- the product's REST API


def test_rest_calls_need_valid_credentials_for_that_site(world):
    sim, _ = world
    acme, globex = sim.tenant("acme"), sim.tenant("globex")
    assert rest(sim, acme, "GET", "/rest/api/space").status_code == 401
    assert rest(sim, acme, "GET", "/rest/api/space", token=app_jwt(sim, globex, "GET", "/rest/api/space")
                ).json()["message"] == "JWT authentication failed: bad_signature"
    wrong_qsh = app_jwt(sim, acme, "GET", "/rest/api/content")
    refused = rest(sim, acme, "GET", "/rest/api/space", token=wrong_qsh)
    assert refused.json()["message"].endswith("qsh_mismatch")
    assert rest(sim, acme, "GET", "/rest/api/space", bearer="made-up").status_code == 401
    assert requests.get(f"{sim.url}/t/nowhere/wiki/rest/api/space", timeout=10).status_code == 404


def test_scopes_are_enforced_with_the_scope_map(world):
    sim, _ = world
    acme = sim.tenant("acme")  # granted READ WRITE ACT_AS_USER
    page_id = next(iter(acme.site.pages))
    for method, path in (("DELETE", f"/rest/api/content/{page_id}"), ("GET", "/rest/api/audit")):
        response = rest(sim, acme, method, path, token=app_jwt(sim, acme, method, path))
        assert response.status_code == 403
        assert response.json()["message"] == "Request not in an authorized API scope"
    globex = sim.tenant("globex")  # granted READ only
    path = "/rest/api/content"
    denied = rest(sim, globex, "POST", path, token=app_jwt(sim, globex, "POST", path), json={})
    assert denied.status_code == 403


def test_space_permissions_apply_to_the_app_user_and_to_users(world):
    sim, _ = world
    acme = sim.tenant("acme")
    path = "/rest/api/space/HR"
    assert rest(sim, acme, "GET", path, token=app_jwt(sim, acme, "GET", path)).status_code == 403
    alice = bearer(sim, acme, acme.users()[0].account_id)
    assert rest(sim, acme, "GET", path, bearer=alice).json()["key"] == "HR"
    carol = bearer(sim, acme, acme.users()[2].account_id)
    create = {"type": "page", "title": "Carol's", "space": {"key": "DEV"}}
    assert rest(sim, acme, "POST", "/rest/api/content", bearer=carol, json=create).status_code == 403
    hits = rest(sim, acme, "GET", "/rest/api/search", bearer=carol, params={"cql": "type = page"}).json()
    assert hits["size"] > 0 and all(h["content"]["space"]["key"] != "HR" for h in hits["results"])


def test_content_updates_need_the_next_version_and_bad_cql_is_echoed(world):
    sim, _ = world
    acme = sim.tenant("acme")
    alice = bearer(sim, acme, acme.users()[0].account_id)
    page = rest(sim, acme, "POST", "/rest/api/content", bearer=alice,
                json={"type": "page", "title": "Versioned", "space": {"key": "DEV"}}).json()
    path = f"/rest/api/content/{page['id']}"
    stale = rest(sim, acme, "PUT", path, bearer=alice, json={"title": "x", "version": {"number": 1}})
    assert stale.status_code == 409
    fresh = rest(sim, acme, "PUT", path, bearer=alice, json={"title": "x", "version": {"number": 2}})
    assert fresh.status_code == 200 and fresh.json()["version"]["number"] == 2
    hostile = 'title ~ "=cmd|calc"\r\n<script>'
    bad = rest(sim, acme, "GET", "/rest/api/search", bearer=alice, params={"cql": hostile})
    assert bad.status_code == 400 and hostile in bad.json()["message"]


def test_sites_are_full_of_hostile_data(world):
    sim, _ = world
    titles = {p.title for p in sim.tenant("acme").site.pages.values()}
    assert set(HOSTILE_TITLES) <= titles
    umbrella = sim.tenant("umbrella")
    assert umbrella.client_key.startswith("=")
    assert any(u.account_id[0] in "=+-@" for u in umbrella.users())
    assert "<script>" in umbrella.spec.description and "\r\n" in umbrella.spec.description


# ---------------------------------------------------------------------- the authorization server


def bearer(sim, tenant, account_id, scopes=()):
    assertion = signing.bearer_assertion(
        oauth_client_id=tenant.oauth_client_id, shared_secret=tenant.shared_secret, account_id=account_id,
        base_url=tenant.base_url, authorization_server=sim.authorization_server, now=time.time())
    response = requests.post(f"{sim.url}/oauth2/token", data=signing.token_request_form(assertion, scopes),
                             timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def _exchange(sim, claims, secret, **form):
    assertion = signing.sign_hs256(claims, secret)
    data = {"grant_type": signing.JWT_BEARER_GRANT, "assertion": assertion, **form}
    return requests.post(f"{sim.url}/oauth2/token", data=data, timeout=10)


def _claims(sim, tenant, account_id, **changes):
    now = int(time.time())
    claims = {"iss": f"urn:atlassian:connect:clientid:{tenant.oauth_client_id}",
              "sub": f"urn:atlassian:connect:useraccountid:{account_id}", "tnt": tenant.base_url,
              "aud": sim.authorization_server, "iat": now, "exp": now + 60}
    return {**claims, **changes}


def test_the_token_endpoint_checks_every_part_of_the_assertion(world):
    sim, _ = world
    acme = sim.tenant("acme")
    alice = acme.users()[0].account_id
    now = int(time.time())
    cases = {
        "wrong secret": (_claims(sim, acme, alice), "not-the-secret"),
        "wrong aud": (_claims(sim, acme, alice, aud="https://elsewhere.example"), acme.shared_secret),
        "expired": (_claims(sim, acme, alice, iat=now - 300, exp=now - 240), acme.shared_secret),
        "too long": (_claims(sim, acme, alice, exp=now + 3600), acme.shared_secret),
        "wrong iss": (_claims(sim, acme, alice, iss="urn:atlassian:connect:clientid:x"), acme.shared_secret),
        "unknown user": (_claims(sim, acme, "nobody"), acme.shared_secret),
        "unknown site": (_claims(sim, acme, alice, tnt="https://nowhere.example/wiki"), acme.shared_secret),
    }
    for case, (claims, secret) in cases.items():
        response = _exchange(sim, claims, secret)
        assert (response.status_code, response.json()["error"]) == (400, "invalid_grant"), case
    assert _exchange(sim, _claims(sim, acme, alice), acme.shared_secret).status_code == 200
    wrong_grant = requests.post(f"{sim.url}/oauth2/token", data={"grant_type": "password"}, timeout=10)
    assert wrong_grant.json()["error"] == "unsupported_grant_type"


def test_the_token_endpoint_grants_only_what_the_site_granted(world):
    sim, _ = world
    acme, globex = sim.tenant("acme"), sim.tenant("globex")
    alice = acme.users()[0].account_id
    response = _exchange(sim, _claims(sim, acme, alice), acme.shared_secret, scope="ADMIN")
    assert (response.status_code, response.json()["error"]) == (400, "invalid_scope")
    response = _exchange(sim, _claims(sim, globex, globex.users()[0].account_id), globex.shared_secret)
    assert (response.status_code, response.json()["error"]) == (401, "unauthorized_client")


# ---------------------------------------------------------------------- the HTTP server


def test_server_keeps_connections_alive_and_stops_cleanly():
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["RAW_URI"].encode(), b"|", environ["PATH_INFO"].encode("latin-1")]

    server = ServerThread(app).start()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/a%20b?x=%2F")
    first = conn.getresponse()
    assert first.read() == b"/a%20b?x=%2F|/a b" and first.getheader("Content-Length") == "17"
    local = conn.sock.getsockname()
    conn.request("HEAD", "/again")
    head = conn.getresponse()
    assert head.read() == b"" and conn.sock.getsockname() == local  # same connection
    conn.putrequest("POST", "/chunked")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"0\r\n\r\n")
    assert conn.getresponse().status == 411
    kept = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    kept.request("GET", "/x")
    kept.getresponse().read()
    server.stop()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        kept.request("GET", "/after-stop")
        kept.getresponse()
