"""An event as a person reads it (dashboard/narrate.py): every direction, outcome, platform and
acting identity, the reasons explained in collector/errors.py's words, hostile values kept as text."""

from __future__ import annotations

import pytest

from collector import errors
from dashboard import narrate

SITE = "acme.atlassian.net"
ACCOUNT = "5b10ac8d82e05b22cc7d0001"


def _event(**fields):
    """An event detail as dashboard.queries.event_detail returns it (every stored column)."""
    base = {
        "seq": 7, "event_id": "e-1", "direction": "outgoing", "event_type": "request", "platform": "connect",
        "auth_method": "app_jwt", "identity_kind": "app_user", "tenant_client_key": "ck-acme",
        "tenant_base_url": "https://acme.atlassian.net/wiki", "product": "confluence", "account_id": None,
        "method": "GET", "path": "/wiki/rest/api/content/123", "path_template": "/wiki/rest/api/content/{id}",
        "required_scope": "READ", "declared_scopes": "READ", "status": 200, "outcome": "allowed",
        "reason": None, "detail": None, "latency_ms": 12.5, "request_id": "r-1", "instance_id": "i-1",
        "token_fingerprint": None, "claims": None, "extra": None, "prev_hash": "0" * 64, "hash": "1" * 64,
    }
    return {**base, **fields}


# --------------------------------------------------------------------------- outgoing


def test_an_outgoing_scope_denial_as_a_named_user_reads_as_the_issue_says():
    event = _event(identity_kind="user", auth_method="user_bearer", account_id=ACCOUNT, method="DELETE",
                   required_scope="DELETE", status=403, outcome="denied", reason="scope",
                   display_name="Jane Doe")
    assert narrate.sentence(event, SITE) == (
        "The app acted as Jane Doe on acme.atlassian.net: DELETE content 123 was refused (403): "
        "the descriptor lacks the DELETE scope.")


def test_an_outgoing_forge_denial_names_the_manifest_and_the_app_user():
    scope = _event(platform="forge", auth_method="forge_user", identity_kind="user", account_id=ACCOUNT,
                   method="POST", path="/wiki/rest/api/content", required_scope="write:confluence-content",
                   status=403, outcome="denied", reason="scope")
    assert narrate.sentence(scope, SITE) == (
        "The app acted as user 5b10ac8d\u2026 (Forge asUser) on acme.atlassian.net: POST content was "
        "refused (403): manifest.yml lacks the write:confluence-content scope.")
    permission = _event(platform="forge", auth_method="forge_system",
                        path="/wiki/rest/api/content?spaceKey=HR",
                        status=403, outcome="denied", reason="permission")
    assert narrate.sentence(permission, SITE) == (
        "The app acted as its app user (Forge asApp) on acme.atlassian.net: GET content in space HR was "
        "refused (403): the app user lacks the permission (the scopes are fine).")


def test_an_outgoing_call_that_succeeded_failed_or_was_never_made():
    allowed = _event(path="/wiki/rest/api/user/current")
    assert narrate.sentence(allowed, SITE) == (
        "The app acted as its app user on acme.atlassian.net: GET the current user succeeded (200).")
    failed = _event(status=None, outcome="error", detail="transport failure: ConnectionError")
    assert narrate.sentence(failed, SITE).endswith("GET content 123 failed before an answer came.")
    unavailable = _event(status=503, outcome="error")
    assert narrate.sentence(unavailable, SITE).endswith("GET content 123 failed (503).")
    exchange = _event(identity_kind="user", account_id=ACCOUNT, method="PUT", status=401, outcome="rejected",
                      reason="token_exchange_refused")
    said = narrate.sentence(exchange, SITE)
    assert said.startswith(
        "The app acted as user 5b10ac8d\u2026 on acme.atlassian.net: PUT content 123 was not made: ")
    assert "the authorization server will not exchange an assertion for an access token" in said
    refused = _event(status=401, outcome="rejected")  # the product said 401 to the app's own token
    assert narrate.sentence(refused, SITE).endswith(
        "GET content 123 was refused (401): Confluence did not accept the app's token.")


def test_the_same_code_on_another_direction_is_explained_by_its_own_class():
    # "expired" is an incoming token's TokenExpired and an outgoing Forge call's ForgeTokenExpired.
    outgoing = _event(platform="forge", auth_method="forge_system", status=None, outcome="rejected",
                      reason="expired")
    assert "the Forge system or user token's exp has passed before an outgoing call" in narrate.sentence(
        outgoing, SITE)
    incoming = _event(direction="incoming", platform="forge", auth_method="forge_invocation",
                      identity_kind="anonymous", tenant_client_key=None, tenant_base_url=None,
                      path="/forge/resolver", method="POST", status=401, outcome="rejected", reason="expired",
                      extra={"invocation": "resolver"})
    assert narrate.sentence(incoming, None) == (
        "An unverified caller invoked the app's resolver (/forge/resolver): the token was rejected "
        "(expired: exp is in the past, beyond the leeway).")


# --------------------------------------------------------------------------- incoming


def test_an_incoming_rejection_after_the_signature_verified_names_the_product_and_the_user():
    event = _event(direction="incoming", identity_kind="user", account_id=ACCOUNT, path="/macro?pageId=1",
                   status=401, outcome="rejected", reason="qsh_mismatch",
                   detail="the token's qsh is not the hash of 'GET&/macro&pageId=1'")
    assert narrate.sentence(event, SITE) == (
        "Confluence called the app's /macro as user 5b10ac8d\u2026 on acme.atlassian.net: the token was "
        f"rejected (qsh_mismatch: {narrate.explanation('qsh_mismatch')}).")


def test_an_incoming_call_whose_token_proves_nothing_names_no_caller_and_no_site():
    event = _event(direction="incoming", identity_kind="anonymous", auth_method="none",
                   tenant_client_key=None, tenant_base_url=None, path="/pages", status=401,
                   outcome="rejected", reason="missing_token")
    assert narrate.sentence(event, None) == (
        "An unverified caller called the app's /pages: the token was rejected "
        "(missing_token: a request that needs a token carries none).")


def test_incoming_calls_that_were_answered_refused_or_failed():
    names = {ACCOUNT: "Ann Lee"}.get
    forge = _event(direction="incoming", platform="forge", auth_method="forge_invocation",
                   identity_kind="user", account_id=ACCOUNT, method="POST", path="/forge/resolver",
                   extra={"invocation": "resolver"})
    assert narrate.sentence(forge, SITE, names) == (
        "Forge invoked the app's resolver (/forge/resolver) as Ann Lee on acme.atlassian.net: "
        "the app answered 200.")
    passed_on = _event(direction="incoming", auth_method="context_jwt", identity_kind="user",
                       account_id=ACCOUNT,
                       method="DELETE", path="/api/pages/123", status=403, outcome="denied", reason="scope")
    assert narrate.sentence(passed_on, SITE) == (
        "Confluence sent DELETE to the app's /api/pages/123 as user 5b10ac8d\u2026 on acme.atlassian.net: "
        "the app answered 403, passing on Confluence's refusal of its call for a missing scope.")
    own_rules = {**passed_on, "reason": "permission", "method": "PUT"}
    assert narrate.sentence(own_rules, SITE).endswith(
        "the app answered 403 (its own rules, or Confluence refused the acting user).")
    webhook = _event(direction="incoming", event_type="webhook", identity_kind="anonymous", method="POST",
                     path="/webhooks/page-created", status=500, outcome="error")
    assert narrate.sentence(webhook, SITE) == (
        "Confluence sent the app a webhook at /webhooks/page-created on acme.atlassian.net: "
        "the app failed (500).")
    descriptor = _event(direction="incoming", auth_method="none", identity_kind="anonymous",
                        tenant_client_key=None,
                        tenant_base_url=None, product=None, path="/atlassian-connect.json")
    assert narrate.sentence(descriptor, None) == (
        "An anonymous caller called the app's /atlassian-connect.json: the app answered 200.")


# --------------------------------------------------------------------------- lifecycle, the tool's own acts


def test_lifecycle_callbacks_accepted_rejected_refused_and_changed():
    base = {"direction": "lifecycle", "auth_method": "lifecycle_jwt", "identity_kind": "anonymous",
            "method": "POST"}
    installed = _event(**base, event_type="installed", path="/installed", status=204)
    assert narrate.sentence(installed, SITE) == (
        "Confluence sent the installed callback for acme.atlassian.net: the app accepted it (204).")
    forge = _event(**{**base, "auth_method": "forge_invocation"}, platform="forge", event_type="installed",
                   path="/forge/lifecycle")
    assert narrate.sentence(forge, SITE).startswith(
        "Forge sent the installed callback for acme.atlassian.net")
    forged = _event(**base, event_type="enabled", path="/enabled", status=401, outcome="rejected",
                    reason="wrong_audience", tenant_client_key=None, tenant_base_url=None)
    assert narrate.sentence(forged, None) == (
        "An enabled callback for an unknown site was refused: the token was rejected "
        f"(wrong_audience: {narrate.explanation('wrong_audience')}).")
    policy = _event(**base, event_type="installed", path="/installed", status=403, outcome="rejected",
                    reason="host_not_allowed")
    assert narrate.sentence(policy, "evil.example") == (
        "An installed callback for evil.example was refused: the install policy refused it "
        "(host_not_allowed: an installed callback's baseUrl is not https on a host the allowed-hosts "
        "policy names).")
    moved = _event(**base, event_type="install_changed",
                   detail="Reinstall: baseUrl changed; shared secret rotated")
    assert narrate.sentence(moved, SITE) == (
        "The install on acme.atlassian.net changed: Reinstall: baseUrl changed; shared secret rotated.")


def test_the_tool_s_own_acts_name_who_did_them():
    export = _event(direction="internal", event_type="export", identity_kind="anonymous", auth_method="none",
                    tenant_client_key=None, tenant_base_url=None, detail="exported 12 rows as csv",
                    extra={"actor": "auditor1 (auditor, dashboard)"})
    assert narrate.sentence(export, None) == (
        "Connect Audit recorded its own act, export, by auditor1 (auditor, dashboard): "
        "exported 12 rows as csv.")


# --------------------------------------------------------------------------- who acted


@pytest.mark.parametrize(("extra", "names", "shown"), [
    ({"display_name": "Jane Doe"}, {ACCOUNT: "Someone Else"}.get, "Jane Doe"),  # the event's own name wins
    ({"acting_name": "Jane Doe"}, None, "Jane Doe"),
    ({}, {ACCOUNT: "Ann Lee"}.get, "Ann Lee"),
    ({}, {}.get, "user 5b10ac8d\u2026"),  # unknown to the lookup: the id, shortened
    ({}, None, "user 5b10ac8d\u2026"),
])
def test_the_acting_user_is_named_when_known_else_shown_by_a_short_account_id(extra, names, shown):
    event = _event(identity_kind="user", account_id=ACCOUNT, **extra)
    said = narrate.sentence(event, SITE, names)
    assert said.startswith(f"The app acted as {shown} on acme.atlassian.net: ")


def test_a_failing_name_lookup_costs_the_name_not_the_sentence():
    def broken(account_id):
        raise RuntimeError("the user API is down")

    event = _event(identity_kind="user", account_id="short-id")
    assert narrate.sentence(event, SITE, broken).startswith("The app acted as user short-id on ")


# --------------------------------------------------------------------------- reasons and hostile values


def test_every_reason_code_is_explained_in_the_words_of_collector_errors():
    for cls in (*errors.REJECTIONS, *errors.LIFECYCLE_REFUSALS):
        said = narrate.explanation(cls.code)
        assert said and said[0].islower() and not said.endswith("."), cls.code
        assert said in " ".join(cls.__doc__.split()), cls.code  # reused, not reworded
    for cls in (errors.TokenExchangeFailed, errors.ForgeTokenUnavailable, errors.ForgeTokenExpired):
        assert narrate.explanation(cls.code, "outgoing") in " ".join(cls.__doc__.split())
    assert narrate.explanation("no_such_code") is None and narrate.explanation(None) is None


def test_hostile_values_stay_text_on_one_line_and_long_ones_are_clipped():
    path = "/rest/api/content/<script>alert('x')</script>\r\nX-Injected: 1"
    event = _event(direction="incoming", identity_kind="user", account_id="=cmd|' /C calc'!A0",
                   display_name="![x](http://evil.example/t.png)\n**bold**", path=path, status=401,
                   outcome="rejected", reason="bad_signature")
    said = narrate.sentence(event, "<img src=x onerror=alert(1)>")
    assert "\n" not in said and "\r" not in said
    assert "<script>alert('x')</script> X-Injected: 1" in said  # verbatim, as text: the page uses st.text
    assert "![x](http://evil.example/t.png) **bold**" in said
    assert "on <img src=x onerror=alert(1)>" in said
    long = _event(path="/x/" + "a" * 500)
    assert len(narrate.sentence(long, SITE)) < 250 and "\u2026" in narrate.sentence(long, SITE)
    assert narrate.short_id("=cmd|' /C calc'!A0") == "=cmd|' /\u2026"
