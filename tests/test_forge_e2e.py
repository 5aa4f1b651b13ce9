"""Forge Remote end to end over real loopback HTTP: the simulated Forge invokes the Flask and
FastAPI examples' ``/forge/...`` endpoints with invocation tokens (good and spoilt), the apps
call the simulated Confluence at ``apiBaseUrl`` with the system and user tokens, and the
collector records it all, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

pytest.register_assert_rewrite("e2e_support")

from e2e_support import assert_no_credentials_stored, provision_database, running_stack  # noqa: E402

from collector.errors import REJECTION_CODES  # noqa: E402
from collector.simulator.forge import FORGE_MISBEHAVIOURS  # noqa: E402

pytestmark = pytest.mark.slow

MACRO = "recent-pages-macro"
CONNECT_SITES = ("acme", "globex")  # installed with Connect first; umbrella is Forge-only


@pytest.fixture(scope="module", params=[
    ("flask", "sqlite"), ("fastapi", "sqlite"), ("django", "sqlite"),
    pytest.param(("flask", "postgresql"), marks=pytest.mark.postgres),
    pytest.param(("django", "postgresql"), marks=pytest.mark.postgres),
    pytest.param(("fastapi", "postgresql"), marks=pytest.mark.postgres),
], ids=lambda p: "-".join(p))
def stack(request, tmp_path_factory):
    kind, backend = request.param
    with provision_database(backend, tmp_path_factory.mktemp(f"forge-{kind}")) as url, \
            running_stack(kind, url, install=False) as running:
        for name in CONNECT_SITES:
            assert running.sim.install(name).status_code == 204
        for name in ("acme", "globex", "umbrella"):
            assert running.sim.forge.install(name).status_code == 200, name
        yield running


def _rid(response) -> str:
    return response.headers["x-request-id"]


def _incoming(stack, response) -> dict:
    rows = [r for r in stack.events(request_id=_rid(response)) if r["direction"] in ("incoming", "lifecycle")]
    assert len(rows) == 1, rows
    return rows[0]


# ---------------------------------------------------------------------- rejections


@pytest.mark.parametrize("misbehave", sorted(FORGE_MISBEHAVIOURS))
def test_each_spoilt_invocation_token_is_refused_with_its_code(stack, misbehave):
    response = stack.sim.forge.resolver("acme", MACRO, misbehave=misbehave)
    assert response.status_code == 401
    # Forge's contract: a JSON body; nothing about why, only the request id to quote
    refused = "Unauthorized: the request's Forge Invocation Token was not accepted."
    assert response.json() == {"error": refused, "requestId": _rid(response)}
    assert response.headers["www-authenticate"] == 'Bearer realm="forge"'
    row = _incoming(stack, response)
    code = FORGE_MISBEHAVIOURS[misbehave]
    assert code in REJECTION_CODES
    assert (row["platform"], row["auth_method"], row["outcome"], row["reason"]) == (
        "forge", "forge_invocation", "rejected", code)
    assert row["tenant_client_key"] is None  # nothing proves who sent a refused token
    assert not [r for r in stack.events(request_id=_rid(response)) if r["direction"] == "outgoing"]


def test_an_uninstalled_forge_installation_is_refused_as_inactive(stack):
    tenant = stack.sim.tenant("globex")
    # Forge sends remotes no uninstall event yet; the app (or an operator) records it.
    assert stack.audit.registry.mark_forge_uninstalled(tenant.installation_id)
    try:
        response = stack.sim.forge.resolver("globex", MACRO)
        assert response.status_code == 401
        assert _incoming(stack, response)["reason"] == "inactive_install"
    finally:
        assert stack.sim.forge.install("globex").status_code == 200  # installed again
    assert stack.sim.forge.resolver("globex", MACRO).status_code == 200


# ---------------------------------------------------------------------- accepted calls


def test_a_resolver_call_is_recorded_with_the_installation_module_and_principal(stack):
    user = stack.user("acme", 1)
    response = stack.sim.forge.resolver("acme", MACRO, {"space": "DEV"}, user=user)
    assert response.status_code == 200, response.text
    rows = stack.events(request_id=_rid(response))
    incoming = next(r for r in rows if r["direction"] == "incoming")
    tenant = stack.sim.tenant("acme")
    assert (incoming["platform"], incoming["auth_method"], incoming["identity_kind"]) == (
        "forge", "forge_invocation", "user")
    assert incoming["account_id"] == user
    assert incoming["tenant_client_key"] == tenant.client_key  # linked: one tenant across the move
    claims = json.loads(incoming["claims"])
    assert claims["installation_id"] == tenant.installation_id
    assert claims["cloud_id"] == tenant.cloud_id and claims["module_key"] == MACRO
    assert claims["environment"] == "PRODUCTION" and claims["principal"] == user
    extra = json.loads(incoming["extra"])
    assert len(extra["trace_id"]) == 32 and extra["invocation"] == "resolver"
    assert set(extra) >= {"system_token", "user_token"}
    assert extra["system_token"]["fingerprint"].startswith("sha256:")
    outgoing = next(r for r in rows if r["direction"] == "outgoing")
    assert (outgoing["auth_method"], outgoing["identity_kind"], outgoing["status"]) == (
        "forge_system", "app_user", 200)
    assert outgoing["path"].startswith("/wiki/rest/api/content?")
    assert outgoing["required_scope"] == "read:confluence-content.summary"
    assert outgoing["platform"] == "forge" and outgoing["tenant_client_key"] == tenant.client_key


def test_as_user_calls_carry_the_invoking_user(stack):
    user = stack.user("acme", 2)
    response = stack.sim.forge.resolver("acme", MACRO, {"call": "mine"}, user=user)
    assert response.status_code == 200 and response.json()["accountId"] == user
    outgoing = [r for r in stack.events(request_id=_rid(response)) if r["direction"] == "outgoing"]
    assert [(r["auth_method"], r["identity_kind"], r["account_id"]) for r in outgoing] == [
        ("forge_user", "user", user)]


def test_a_missing_scope_403_names_the_classic_and_granular_scopes_to_add(stack):
    response = stack.sim.forge.resolver("acme", MACRO, {"call": "create"})
    assert response.status_code == 403
    rows = stack.events(request_id=_rid(response))
    outgoing = next(r for r in rows if r["direction"] == "outgoing")
    assert (outgoing["outcome"], outgoing["reason"]) == ("denied", "scope")
    extra = json.loads(outgoing["extra"])
    assert extra["missing_classic"] == ["write:confluence-content"]
    assert "write:content:confluence" in extra["missing_granular"]
    assert "write:confluence-content" in outgoing["detail"]
    incoming = next(r for r in rows if r["direction"] == "incoming")
    assert (incoming["outcome"], incoming["reason"]) == ("denied", "scope")


def test_a_permission_403_is_not_blamed_on_scopes(stack):
    # The manifest grants read:confluence-content.summary; the app's bot user may not read HR.
    response = stack.sim.forge.resolver("acme", MACRO, {"space": "HR"})
    assert response.status_code == 403
    rows = stack.events(request_id=_rid(response))
    outgoing = next(r for r in rows if r["direction"] == "outgoing")
    assert (outgoing["status"], outgoing["outcome"], outgoing["reason"]) == (403, "denied", "permission")
    assert outgoing["auth_method"] == "forge_system" and outgoing["extra"] is None
    incoming = next(r for r in rows if r["direction"] == "incoming")
    assert (incoming["outcome"], incoming["reason"]) == ("denied", "permission")


def test_an_expired_product_token_is_refused_before_the_call_and_recorded(stack):
    calls_before = stack.sim.stats["forge_rest_calls"]
    response = stack.sim.forge.resolver("acme", MACRO, token_ttl=-60)
    assert response.status_code == 500  # the example answers JSON: no usable Forge token
    assert stack.sim.stats["forge_rest_calls"] == calls_before  # never sent: no silent 401
    outgoing = next(r for r in stack.events(request_id=_rid(response)) if r["direction"] == "outgoing")
    assert (outgoing["outcome"], outgoing["reason"], outgoing["status"]) == ("rejected", "expired", None)
    assert json.loads(outgoing["extra"]) == {"stage": "forge_token"}
    assert "expired" in outgoing["detail"]


# ---------------------------------------------------------------------- events, retries, triggers


def test_a_retried_delivery_is_recorded_once_as_an_action(stack):
    page = next(iter(stack.sim.tenant("acme").site.pages.values()))
    body = {"eventType": "avi:confluence:created:page", "content": {"id": page.id}, "atlassianId": "x"}
    first = stack.sim.forge.deliver("acme", "avi:confluence:created:page", body, attempts=1)
    retry = {"retryCount": 1, "retryReason": "TIMEOUT_ERROR", "retryData": None}
    retry_body = {**body, "retryContext": retry}
    again = stack.sim.forge.deliver("acme", "avi:confluence:created:page", retry_body, attempts=1)
    assert first.status_code == again.status_code == 200
    assert again.json() == {"done": "already handled"}  # the handler saw ctx.forge.redelivery
    action = _incoming(stack, first)
    retried = _incoming(stack, again)
    assert action["event_type"] == "avi:confluence:created:page" and action["identity_kind"] == "app_user"
    assert retried["event_type"] == "retry"
    assert json.loads(retried["extra"])["retry_count"] == 1
    assert json.loads(retried["extra"])["delivery"] == json.loads(action["extra"])["delivery"]
    assert not [r for r in stack.events(request_id=_rid(again)) if r["direction"] == "outgoing"]


def test_a_scheduled_trigger_acts_as_the_app(stack):
    response = stack.sim.forge.schedule("umbrella", "hourly-digest")
    assert response.status_code == 200
    rows = stack.events(request_id=_rid(response))
    incoming = next(r for r in rows if r["direction"] == "incoming")
    assert (incoming["event_type"], incoming["identity_kind"], incoming["account_id"]) == (
        "scheduled_trigger", "app_user", None)
    assert json.loads(incoming["extra"])["retry_count"] == 0


# ---------------------------------------------------------------------- one tenant across the move


def test_forge_installations_link_to_the_connect_install_of_the_same_site(stack):
    rows = {r.installation_id: r for r in stack.audit.registry.list_forge_installations()}
    for name in CONNECT_SITES:
        tenant = stack.sim.tenant(name)
        row = rows[tenant.installation_id]
        assert row.connect_client_key == tenant.client_key, name
        assert row.linked_at is not None and row.cloud_id == tenant.cloud_id
    forge_only = rows[stack.sim.tenant("umbrella").installation_id]
    assert forge_only.connect_client_key is None and forge_only.linked_at is None
    lifecycle = stack.events(platform="forge", direction="lifecycle", event_type="installed")
    tenants = {r["tenant_client_key"] for r in lifecycle}
    assert stack.sim.tenant("acme").client_key in tenants
    assert stack.sim.tenant("umbrella").installation_id in tenants  # filed under its installation


def test_no_invocation_or_product_token_is_stored(stack):
    stack.sim.forge.resolver("acme", MACRO, {"call": "mine"})
    assert stack.sim.forge.resolver("acme", MACRO, misbehave="bad_signature").status_code == 401
    searched = assert_no_credentials_stored(stack)
    assert searched > 10
