"""Route policies: which authentication a path needs, and the template it is recorded under."""

from __future__ import annotations

import pytest

from collector.routes import CONTEXT, LIFECYCLE, PUBLIC, REQUEST, Route, RoutePolicy, is_state_changing


def test_rules_match_in_order_with_methods_and_parameters():
    policy = RoutePolicy({
        "GET /atlassian-connect.json": "public",
        "POST /installed": "lifecycle",
        "/api/pages/{page_id}": "context",
        "/static/{rest:path}": "public",
    })
    assert policy.match("GET", "/atlassian-connect.json") == (policy.routes[0], True)
    assert policy.match("post", "/installed")[0].auth == LIFECYCLE
    assert policy.match("GET", "/installed") == (policy.default, False)  # method-specific rule
    route, declared = policy.match("DELETE", "/api/pages/42")
    assert (route.auth, route.template, declared) == (CONTEXT, "/api/pages/{page_id}", True)
    assert policy.match("GET", "/api/pages/42/children")[0] is policy.default  # {name} is one segment
    assert policy.match("GET", "/static/css/site.css")[0].auth == PUBLIC  # {name:path} is the rest


def test_an_undeclared_path_needs_a_host_signed_token_by_default():
    policy = RoutePolicy({"/health": "public"})
    assert policy.match("GET", "/admin")[0].auth == REQUEST
    assert RoutePolicy(default="public").match("GET", "/anything")[0].auth == PUBLIC


def test_the_first_matching_rule_wins():
    policy = RoutePolicy([("/api/me", "request"), ("/api/{name}", "context")])
    assert policy.match("GET", "/api/me")[0].auth == REQUEST
    assert policy.match("GET", "/api/other")[0].auth == CONTEXT


def test_regex_characters_in_patterns_are_literal():
    policy = RoutePolicy({"/a.b/(x)": "public"})
    assert policy.match("GET", "/a.b/(x)")[0].auth == PUBLIC
    assert policy.match("GET", "/aXb/(x)")[0].auth == REQUEST


@pytest.mark.parametrize(("rules", "message"), [
    ({"/x": "jwt"}, "auth must be one of"),
    ({"x": "public"}, "starting with '/'"),
    ({"G3T /x": "public"}, "not an HTTP method"),
])
def test_invalid_rules_are_refused_when_the_policy_is_built(rules, message):
    with pytest.raises(ValueError, match=message):
        RoutePolicy(rules)


def test_a_lifecycle_default_is_refused():
    with pytest.raises(ValueError, match="default"):
        RoutePolicy(default="lifecycle")


def test_coerce_accepts_a_policy_a_mapping_or_nothing():
    policy = RoutePolicy({"/x": "public"})
    assert RoutePolicy.coerce(policy) is policy
    assert RoutePolicy.coerce({"/x": "public"}).routes == (Route("/x", "public"),)
    assert RoutePolicy.coerce(None).routes == ()


def test_state_changing_methods():
    methods = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "delete")
    assert [m for m in methods if is_state_changing(m)] == ["POST", "PUT", "PATCH", "DELETE", "delete"]
