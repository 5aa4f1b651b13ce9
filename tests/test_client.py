"""The outgoing client against the simulated Confluence over HTTP: signing as the app user
and as a user, the access-token cache, 403 classification, refusals and transport errors,
and the audit event each call leaves."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import requests
from requests.adapters import HTTPAdapter

# Helper modules hold asserts too: have pytest explain their failures (registered before import).
pytest.register_assert_rewrite("e2e_scenario", "e2e_support", "middleware_support")

from e2e_support import Clock, assert_no_credentials_stored, provision_database, running_stack  # noqa: E402

from collector.client import ConnectSession  # noqa: E402
from collector.errors import TokenExchangeFailed, UnknownTenant  # noqa: E402
from collector.simulator.host import ACCESS_TOKEN_TTL  # noqa: E402

pytestmark = pytest.mark.slow  # one stack per module, about 2 s to start


class Clocks:
    def __init__(self) -> None:
        self.app, self.host = Clock(), Clock()

    def shift(self, seconds: float, *, host: bool = True) -> None:
        self.app.offset = seconds
        self.host.offset = seconds if host else 0.0


@pytest.fixture(scope="module")
def clocks():
    return Clocks()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, clocks):
    with provision_database("sqlite", tmp_path_factory.mktemp("client")) as url, \
            running_stack("flask", url, clock=clocks.app, host_clock=clocks.host) as running:
        yield running


@pytest.fixture
def acme(stack):
    return stack.audit.client(stack.sim.tenant("acme").client_key)


def last_outgoing(stack) -> dict:
    """The newest outgoing event (a call is queued for recording before it returns)."""
    return [e for e in stack.events() if e["direction"] == "outgoing"][-1]


def test_as_app_signs_with_a_jwt_and_records_the_call(stack, acme):
    session = acme.as_app()
    assert isinstance(session, requests.Session) and session.base_url == stack.sim.tenant("acme").base_url
    response = session.get("/rest/api/space")
    assert response.status_code == 200 and {s["key"] for s in response.json()["results"]} == {"DEV", "MKT"}
    event = last_outgoing(stack)
    assert (event["auth_method"], event["identity_kind"]) == ("app_jwt", "app_user")
    assert event["account_id"] is None and event["method"] == "GET"
    assert event["path"] == event["path_template"] == "/wiki/rest/api/space"
    assert (event["required_scope"], event["declared_scopes"]) == ("READ", "ACT_AS_USER READ WRITE")
    assert (event["status"], event["outcome"], event["reason"]) == (200, "allowed", None)
    assert event["tenant_client_key"] == acme.client_key and event["product"] == "confluence"
    assert event["latency_ms"] > 0 and event["token_fingerprint"].startswith("sha256:")
    assert json.loads(event["claims"])["iss"] == stack.audit.app_key
    assert len(event["request_id"]) == 32  # outside an incoming request: a fresh id


def test_query_parameters_are_signed_and_recorded(stack, acme):
    response = acme.as_app().get("/rest/api/search", params={"cql": 'space = DEV AND title ~ "runbook"'})
    assert response.status_code == 200
    expected = "/wiki/rest/api/search?cql=space+%3D+DEV+AND+title+~+%22runbook%22"
    assert last_outgoing(stack)["path"] == expected


def test_a_403_for_a_scope_the_descriptor_lacks_is_a_scope_denial(stack, acme):
    page_id = next(iter(stack.sim.tenant("acme").site.pages))
    response = acme.as_app().delete(f"/rest/api/content/{page_id}")
    assert response.status_code == 403
    event = last_outgoing(stack)
    assert (event["outcome"], event["reason"], event["required_scope"]) == ("denied", "scope", "DELETE")


def test_a_403_the_scopes_allow_is_a_permission_denial(stack, acme):
    response = acme.as_app().get("/rest/api/space/HR")
    assert response.status_code == 403
    event = last_outgoing(stack)
    assert (event["outcome"], event["reason"], event["path_template"]) == (
        "denied", "permission", "/wiki/rest/api/space/{spaceKey}")
    assert event["detail"] == "User not permitted to read in space : HR"


def test_a_site_that_granted_less_than_the_descriptor_is_still_a_scope_denial(stack):
    globex = stack.audit.client(stack.sim.tenant("globex").client_key)  # its admin approved READ only
    response = globex.as_app().post("/rest/api/content", json={"title": "t", "space": {"key": "DEV"}})
    assert response.status_code == 403
    event = last_outgoing(stack)
    assert event["declared_scopes"] == "ACT_AS_USER READ WRITE"  # the descriptor covers WRITE...
    assert event["reason"] == "scope"  # ...but the product says the call is outside the granted scopes


def test_as_user_exchanges_an_assertion_once_and_caches_the_access_token(stack, acme, clocks):
    bob = stack.user("acme", 1)
    before = stack.sim.stats["token_requests"]
    as_bob = acme.as_user(bob)
    assert as_bob.get("/rest/api/user/current").json()["accountId"] == bob
    assert acme.as_user(bob).get("/rest/api/user/current").status_code == 200
    assert stack.sim.stats["token_requests"] == before + 1  # the second session reused the token
    acme.as_user(bob, scopes=["READ"]).get("/rest/api/user/current")
    assert stack.sim.stats["token_requests"] == before + 2  # other scopes, other token
    clocks.shift(ACCESS_TOKEN_TTL - 30)  # inside the refresh margin
    try:
        assert acme.as_user(bob).get("/rest/api/user/current").status_code == 200
    finally:
        clocks.shift(0)
    assert stack.sim.stats["token_requests"] == before + 3
    event = last_outgoing(stack)
    assert (event["auth_method"], event["identity_kind"], event["account_id"]) == ("user_bearer", "user", bob)
    assert event["token_fingerprint"] is None


def test_a_user_token_narrowed_to_read_is_denied_writes_for_scope(stack, acme):
    alice = stack.user("acme", 0)  # may write anywhere: only the token's scope stops her
    response = acme.as_user(alice, scopes=["READ"]).post(
        "/rest/api/content", json={"title": "narrow", "space": {"key": "DEV"}})
    assert response.status_code == 403
    assert last_outgoing(stack)["reason"] == "scope"


def test_a_user_without_the_right_is_denied_for_permission(stack, acme):
    carol = stack.user("acme", 2)
    response = acme.as_user(carol).post("/rest/api/content", json={"title": "c", "space": {"key": "DEV"}})
    assert response.status_code == 403
    event = last_outgoing(stack)
    assert (event["reason"], event["account_id"], event["required_scope"]) == ("permission", carol, "WRITE")


def test_a_refused_token_exchange_raises_and_is_recorded(stack):
    globex = stack.audit.client(stack.sim.tenant("globex").client_key)
    with pytest.raises(TokenExchangeFailed, match="HTTP 401") as raised:
        globex.as_user(stack.user("globex", 0)).get("/rest/api/user/current")
    assert "eyJ" not in str(raised.value)  # no assertion or token in the message
    event = last_outgoing(stack)
    assert (event["outcome"], event["status"]) == ("rejected", 401)
    assert event["path"] == "/wiki/rest/api/user/current"
    assert json.loads(event["extra"]) == {"stage": "token_exchange"}


def test_a_host_401_is_a_rejected_call(stack, acme, clocks):
    clocks.shift(-7200, host=False)  # the app's clock is two hours slow: its JWT is stale on arrival
    try:
        response = acme.as_app().get("/rest/api/space")
    finally:
        clocks.shift(0)
    assert response.status_code == 401
    event = last_outgoing(stack)
    assert (event["outcome"], event["detail"]) == ("rejected", "JWT authentication failed: expired")


def test_urls_outside_the_tenant_are_refused_before_anything_is_sent(stack, acme):
    session = acme.as_app()
    count = len(stack.events())
    with pytest.raises(ValueError, match="not under the tenant's baseUrl"):
        session.get("https://evil.example/rest/api/space")
    with pytest.raises(ValueError):
        session.get(stack.sim.tenant("globex").base_url + "/rest/api/space")
    assert session.get(acme.base_url + "/rest/api/space").status_code == 200  # absolute, but under it
    assert len(stack.events()) == count + 1


def test_an_injected_transport_adapter_carries_the_calls(stack):
    class CountingAdapter(HTTPAdapter):
        sent = 0

        def send(self, request, **kwargs):
            CountingAdapter.sent += 1
            return super().send(request, **kwargs)

    adapter = CountingAdapter()
    client = stack.audit.client(stack.sim.tenant("acme").client_key, adapter=adapter)
    client.as_app().get("/rest/api/space")
    client.as_user(stack.user("acme", 0), scopes=["READ", "WRITE"]).get("/rest/api/space")
    assert CountingAdapter.sent == 3  # two calls and one token exchange


def test_a_transport_failure_is_recorded_as_an_error(stack):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/wiki"  # bound, never listening
        payload = {"key": stack.audit.app_key, "clientKey": "dead-site", "sharedSecret": "x" * 40,
                   "baseUrl": dead, "productType": "confluence"}
        stack.audit.apply_lifecycle("installed", payload)
        with pytest.raises(requests.ConnectionError):
            stack.audit.client("dead-site").as_app().get("/rest/api/space", timeout=2)
    event = last_outgoing(stack)
    assert (event["tenant_client_key"], event["outcome"], event["status"]) == ("dead-site", "error", None)
    assert event["detail"] == "transport failure: ConnectionError"


def test_unknown_and_inactive_tenants_cannot_be_called(stack):
    with pytest.raises(UnknownTenant, match="no install"):
        stack.audit.client("never-installed")
    tenant = stack.sim.tenant("initech")
    session = stack.audit.client(tenant.client_key).as_app()
    assert stack.sim.disable("initech").status_code == 204
    try:
        with pytest.raises(UnknownTenant, match="disabled"):
            stack.audit.client(tenant.client_key)
        with pytest.raises(UnknownTenant):
            session.get("/rest/api/space")  # a session made before: refused at send time
    finally:
        assert stack.sim.enable("initech").status_code == 204


def test_closing_a_session_keeps_the_shared_connection_pool(stack, acme):
    first = acme.as_app()
    first.close()
    assert isinstance(first, ConnectSession)
    assert acme.as_app().get("/rest/api/space").status_code == 200


def test_zz_the_leak_check_catches_a_secret_in_the_store(stack):
    """The end-to-end tests trust assert_no_credentials_stored: show it can fail."""
    from collector.events import INTERNAL, AuditRecord

    assert assert_no_credentials_stored(stack) > 10
    leaked = stack.sim.tenant("acme").shared_secret
    stack.audit.record(AuditRecord(direction=INTERNAL, outcome="allowed", detail=f"oops {leaked}"))
    with pytest.raises(AssertionError, match="credential is stored in table audit_events"):
        assert_no_credentials_stored(stack)


def test_events_are_stamped_by_the_collectors_clock(stack, clocks):
    # A simulated clock (the demo's month, a test's shifted time) dates the events it records:
    # the incoming page load and the outgoing call it makes are both at the app's clock.
    clocks.shift(-3 * 86400)
    try:
        then = clocks.app()
        response = stack.sim.page_load("acme", user=stack.sim.tenant("acme").users()[0].account_id)
        assert response.ok
        recorded = stack.events(request_id=response.headers["X-Request-Id"])
    finally:
        clocks.shift(0)
    assert {e["direction"] for e in recorded} == {"incoming", "outgoing"}
    for event in recorded:  # SQLite hands the column back as text
        ts = datetime.fromisoformat(str(event["ts"])).replace(tzinfo=UTC)
        assert abs(ts.timestamp() - then) < 60, (event["ts"], then)
