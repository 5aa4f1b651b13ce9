"""The end-to-end scenario both example apps must pass, over real HTTP on loopback.

``tests/test_e2e_flask.py`` and ``tests/test_e2e_fastapi.py`` subclass :class:`Scenario`
with their framework; each runs once on SQLite and once on PostgreSQL against one stack
per module (the simulated Confluence with its four sites, the example app, the store).
Tests that change an install's state use their own site, so their order does not matter,
except the last, which checks that no credential reached the store or the log.
"""

from __future__ import annotations

import pytest
from e2e_support import assert_no_credentials_stored, provision_database, running_stack

from collector.errors import UnknownTenant
from collector.simulator import LIFECYCLE_MISBEHAVIOURS, MISBEHAVIOURS

GENERIC_401 = "Unauthorized: the request's Atlassian Connect token was not accepted."


def stack_fixture(kind: str):
    """A module-scoped ``stack`` fixture for one example app, on SQLite and PostgreSQL."""

    @pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
    def stack(request, tmp_path_factory):
        with provision_database(request.param, tmp_path_factory.mktemp(kind)) as url, \
                running_stack(kind, url) as running:
            yield running

    return stack


def only(events: list[dict], **match) -> dict:
    found = [e for e in events if all(e[k] == v for k, v in match.items())]
    assert len(found) == 1, f"expected one event matching {match}, got {len(found)}: {events}"
    return found[0]



#: Misbehaviours that keep a valid signature and spoil a claim, the qsh or the token's reuse.
SIGNED_MISBEHAVIOURS = frozenset({"no_qsh", "float_exp", "long_lived", "expired", "future",
                                  "wrong_qsh", "context_token", "replay"})

class Scenario:
    # ------------------------------------------------------------------ lifecycle

    def test_lifecycle_installs_every_site_from_signed_callbacks(self, stack):
        for name, tenant in stack.sim.tenants.items():
            row = stack.install_row(tenant.client_key)
            assert row is not None, name
            assert row["status"] == "installed"
            assert row["base_url"] == tenant.base_url
            assert row["product"] == "confluence"
            assert row["declared_scopes"].split() == ["ACT_AS_USER", "READ", "WRITE"]
            assert tenant.shared_secret not in row["shared_secret_enc"]
            installed = only(stack.events(direction="lifecycle", tenant_client_key=tenant.client_key,
                                          event_type="installed"))
            assert installed["auth_method"] == "lifecycle_jwt"
            assert installed["status"] == 204 and installed["outcome"] == "allowed"
            assert installed["path"] == "/installed" and installed["path_template"] == "/installed"
            assert installed["token_fingerprint"].startswith("sha256:")

    # ------------------------------------------------------------------ calls that work

    def test_page_load_calls_confluence_as_the_app_user(self, stack):
        alice = stack.user("acme", 0)
        response = stack.sim.page_load("acme", user=alice)
        assert response.status_code == 200
        assert "&lt;script&gt;alert(" in response.text and "<script>alert(" not in response.text
        events = stack.events(response.headers["X-Request-Id"])
        assert [e["direction"] for e in events] == ["outgoing", "incoming"]
        outgoing, incoming = events
        assert outgoing["auth_method"] == "app_jwt" and outgoing["identity_kind"] == "app_user"
        assert outgoing["path"].startswith("/wiki/rest/api/content?")
        assert outgoing["path_template"] == "/wiki/rest/api/content"
        assert outgoing["required_scope"] == "READ" and outgoing["status"] == 200
        assert outgoing["tenant_base_url"] == stack.sim.tenant("acme").base_url
        assert incoming["auth_method"] == "app_jwt" and incoming["identity_kind"] == "user"
        assert incoming["account_id"] == alice
        assert incoming["path"].startswith("/pages?space_key=DEV&") and "jwt=" not in incoming["path"]
        assert incoming["path_template"] == "/pages" and incoming["outcome"] == "allowed"
        assert incoming["latency_ms"] >= outgoing["latency_ms"] > 0
        assert '"qsh_kind":"computed"' in incoming["claims"]

    def test_webhook_is_recorded_as_a_webhook(self, stack):
        response = stack.sim.webhook("acme", "page_created")
        assert response.status_code == 204
        incoming = only(stack.events(response.headers["X-Request-Id"]), direction="incoming")
        assert incoming["event_type"] == "webhook" and incoming["method"] == "POST"
        assert incoming["identity_kind"] == "anonymous" and incoming["outcome"] == "allowed"

    def test_context_call_acts_as_the_user(self, stack):
        bob = stack.user("acme", 1)
        response = stack.sim.context_call("acme", "GET", "/api/me", user=bob)
        assert response.status_code == 200 and response.json()["accountId"] == bob
        events = stack.events(response.headers["X-Request-Id"])
        outgoing = only(events, direction="outgoing")
        assert outgoing["auth_method"] == "user_bearer" and outgoing["identity_kind"] == "user"
        assert outgoing["account_id"] == bob and outgoing["path"] == "/wiki/rest/api/user/current"
        incoming = only(events, direction="incoming")
        assert incoming["auth_method"] == "context_jwt" and incoming["path_template"] == "/api/me"

    def test_search_text_stays_a_search_term(self, stack):
        bob = stack.user("acme", 1)
        plain = stack.sim.context_call("acme", "GET", "/api/search", user=bob, params={"q": "e"})
        assert plain.status_code == 200 and plain.json()["results"]  # "e": most titles
        # Unescaped, this would close the CQL string and add a clause (a 400 from the parser,
        # or a different query); escaped, it is a title nobody wrote: no results.
        for text in ('e" AND type = "page', 'e\\" AND type = page AND title ~ "'):
            sneaky = stack.sim.context_call("acme", "GET", "/api/search", user=bob, params={"q": text})
            assert sneaky.status_code == 200, sneaky.text
            assert sneaky.json()["results"] == []

    # ------------------------------------------------------------------ 403s

    def test_scope_403_when_the_descriptor_lacks_the_scope(self, stack):
        page_id = next(iter(stack.sim.tenant("acme").site.pages))
        alice = stack.user("acme", 0)
        response = stack.sim.context_call("acme", "DELETE", f"/api/pages/{page_id}", user=alice)
        assert response.status_code == 403
        events = stack.events(response.headers["X-Request-Id"])
        outgoing = only(events, direction="outgoing")
        assert (outgoing["outcome"], outgoing["reason"]) == ("denied", "scope")
        assert outgoing["required_scope"] == "DELETE"
        assert outgoing["detail"] == "Request not in an authorized API scope"
        incoming = only(events, direction="incoming")
        assert (incoming["status"], incoming["outcome"], incoming["reason"]) == (403, "denied", "scope")
        assert page_id in stack.sim.tenant("acme").site.pages  # nothing was deleted

    def test_permission_403_when_the_user_may_not_write(self, stack):
        carol = stack.user("acme", 2)  # reads DEV, may not write there
        response = stack.sim.context_call("acme", "POST", "/api/pages", user=carol,
                                          json_body={"title": "Carol's page", "space": "DEV"})
        assert response.status_code == 403
        events = stack.events(response.headers["X-Request-Id"])
        outgoing = only(events, direction="outgoing")
        assert (outgoing["outcome"], outgoing["reason"], outgoing["required_scope"]) == (
            "denied", "permission", "WRITE")
        assert outgoing["identity_kind"] == "user" and outgoing["account_id"] == carol
        assert only(events, direction="incoming")["reason"] == "permission"

    def test_permission_403_when_the_app_user_may_not_read(self, stack):
        response = stack.sim.context_call("acme", "GET", "/api/spaces/HR/pages", user=stack.user("acme", 0))
        assert response.status_code == 403
        outgoing = only(stack.events(response.headers["X-Request-Id"]), direction="outgoing")
        assert (outgoing["identity_kind"], outgoing["reason"]) == ("app_user", "permission")

    def test_site_without_act_as_user_refuses_the_token_exchange(self, stack):
        response = stack.sim.context_call("globex", "GET", "/api/me", user=stack.user("globex", 1))
        assert response.status_code == 403
        events = stack.events(response.headers["X-Request-Id"])
        refused = only(events, direction="outgoing")
        assert refused["outcome"] == "rejected" and refused["auth_method"] == "user_bearer"
        assert "ACT_AS_USER" in refused["detail"] and '"stage":"token_exchange"' in refused["extra"]

    def test_created_page_with_hostile_title_round_trips(self, stack):
        title = "=HYPERLINK(\"https://evil.example\")\r\n<script>x</script>"
        response = stack.sim.context_call("acme", "POST", "/api/pages", user=stack.user("acme", 1),
                                          json_body={"title": title, "space": "DEV"})
        assert response.status_code == 200 and response.json()["title"] == title
        outgoing = only(stack.events(response.headers["X-Request-Id"]), direction="outgoing")
        assert outgoing["required_scope"] == "WRITE" and outgoing["outcome"] == "allowed"

    def test_hostile_identities_are_recorded_verbatim(self, stack):
        tenant = stack.sim.tenant("umbrella")
        mallory = stack.user("umbrella", 3)
        assert mallory.startswith("=")
        response = stack.sim.context_call("umbrella", "GET", "/api/me", user=mallory)
        assert response.status_code == 200
        events = stack.events(response.headers["X-Request-Id"])
        assert {e["account_id"] for e in events} == {mallory}
        assert {e["tenant_client_key"] for e in events} == {tenant.client_key}

    # ------------------------------------------------------------------ refused tokens

    @pytest.mark.parametrize("misbehave", sorted(MISBEHAVIOURS))
    def test_each_request_rejection_is_a_generic_401_with_the_reason_in_the_log(self, stack, misbehave):
        if misbehave == "replay":
            response = stack.sim.webhook("acme", "page_created", misbehave="replay")
        else:
            response = stack.sim.page_load("acme", user=stack.user("acme", 0), misbehave=misbehave)
        assert response.status_code == 401
        assert response.text.startswith(GENERIC_401)
        assert MISBEHAVIOURS[misbehave] not in response.text
        events = stack.events(response.headers["X-Request-Id"])
        assert len(events) == 1, "a refused request must not reach the app (no outgoing call)"
        event = events[0]
        assert (event["outcome"], event["status"]) == ("rejected", 401)
        assert event["reason"] == MISBEHAVIOURS[misbehave]
        # A token whose signature verified (its claims are what is wrong) is the tenant's
        # refusal; one that proves nothing about its signer is attributed to no one.
        signed = misbehave in SIGNED_MISBEHAVIOURS
        expected_tenant = stack.sim.tenant("acme").client_key if signed else None
        assert event["tenant_client_key"] == expected_tenant and event["account_id"] is None
        assert event["detail"]

    @pytest.mark.parametrize("misbehave", sorted(LIFECYCLE_MISBEHAVIOURS))
    def test_each_lifecycle_rejection_leaves_the_install_alone(self, stack, misbehave):
        tenant = stack.sim.tenant("acme")
        before = stack.install_row(tenant.client_key)
        response = stack.sim.disable("acme", misbehave=misbehave)
        assert response.status_code == 401
        event = only(stack.events(response.headers["X-Request-Id"]))
        assert event["direction"] == "lifecycle" and event["event_type"] == "disabled"
        assert (event["outcome"], event["reason"]) == ("rejected", LIFECYCLE_MISBEHAVIOURS[misbehave])
        if misbehave == "replay":  # its first delivery was genuine: re-enable the site
            assert stack.install_row(tenant.client_key)["status"] == "disabled"
            assert stack.sim.enable("acme").status_code == 204
        else:
            assert stack.install_row(tenant.client_key)["status"] == before["status"]

    def test_uninstalled_site_is_refused_as_inactive(self, stack):
        tenant = stack.sim.tenant("initech")
        response = stack.sim.uninstall("initech")
        assert response.status_code == 204
        assert stack.install_row(tenant.client_key)["status"] == "uninstalled"
        uninstalled = only(stack.events(response.headers["X-Request-Id"]))
        assert (uninstalled["direction"], uninstalled["event_type"]) == ("lifecycle", "uninstalled")
        assert uninstalled["tenant_client_key"] == tenant.client_key and uninstalled["outcome"] == "allowed"
        stale = stack.sim.page_load("initech", user=stack.user("initech", 0))
        assert stale.status_code == 401
        assert only(stack.events(stale.headers["X-Request-Id"]))["reason"] == "inactive_install"
        with pytest.raises(UnknownTenant):
            stack.audit.client(tenant.client_key)

    # ------------------------------------------------------------------ nothing leaked

    def test_no_credential_reaches_the_store_or_the_log(self, stack):
        # Its own traffic first: under pytest-xdist the other tests may run elsewhere.
        alice, bob = stack.user("acme", 0), stack.user("acme", 1)
        assert stack.sim.page_load("acme", user=alice).status_code == 200  # token in ?jwt=, app JWT out
        assert stack.sim.webhook("acme", "page_created").status_code == 204
        assert stack.sim.context_call("acme", "GET", "/api/search", user=bob, params={"q": "plan"}).ok
        assert stack.sim.context_call("umbrella", "GET", "/api/me", user=stack.user("umbrella", 1)).ok
        for misbehave in ("bad_signature", "expired", "wrong_qsh"):
            assert stack.sim.page_load("acme", user=alice, misbehave=misbehave).status_code == 401
        assert stack.sim.webhook("acme", "page_created", misbehave="replay").status_code == 401
        assert stack.sim.enable("acme", misbehave="wrong_audience").status_code == 401
        assert stack.sim.context_call("acme", "GET", "/api/me", user=stack.user("acme", 2)).ok
        assert stack.sim.stats["token_requests"] > 0  # assertions and access tokens are among the needles
        searched = assert_no_credentials_stored(stack)
        assert searched >= 20  # secrets, tokens both ways, signatures, an assertion, access tokens
