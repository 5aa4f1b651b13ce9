"""Scope hierarchy, the shipped scope map, and the scope-or-permission cause of a 403."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from collector.scopes import (
    RequiredScope,
    ScopeMap,
    classify_forbidden,
    normalise_scopes,
    satisfies,
)

PACKAGED = Path(__file__).parent.parent / "collector" / "data" / "confluence-connect-scopes.json"
SHARED = Path(__file__).parent.parent.parent / "shared" / "data" / "confluence-connect-scopes.json"


def test_normalise_scopes():
    assert normalise_scopes("read write") == {"READ", "WRITE"}
    assert normalise_scopes(["act_as_user", "Read,delete"]) == {"ACT_AS_USER", "READ", "DELETE"}
    assert normalise_scopes(None) == frozenset()
    assert normalise_scopes("") == frozenset()


@pytest.mark.parametrize(
    ("declared", "required", "expected"),
    [
        ("READ", "READ", True),
        ("WRITE", "READ", True),
        ("READ", "WRITE", False),
        ("delete", "WRITE", True),
        ("SPACE_ADMIN", "DELETE", True),
        ("ADMIN", "SPACE_ADMIN", True),
        ("SPACE_ADMIN", "ADMIN", False),
        ("ADMIN", "ACT_AS_USER", False),  # independent scopes are neither implied...
        ("ACT_AS_USER", "READ", False),  # ...nor implying
        ("READ ACT_AS_USER", "ACT_AS_USER", True),
        ("ADMIN", "ACCESS_EMAIL_ADDRESSES", False),
        ("ACCESS_EMAIL_ADDRESSES", "access_email_addresses", True),
        ("", "NONE", True),
        ("ADMIN ACT_AS_USER ACCESS_EMAIL_ADDRESSES", "INACCESSIBLE", False),
        ("", "READ", False),
    ],
)
def test_satisfies(declared, required, expected):
    assert satisfies(declared, required) is expected


def test_lookup_prefers_literal_segments():
    scopes = ScopeMap.default()
    found = scopes.lookup("POST", "/wiki/rest/api/content/123/child/attachment")
    assert found is not None
    assert found.template == "/wiki/rest/api/content/{id}/child/attachment"
    assert found.scope == "WRITE"


@pytest.mark.parametrize(
    ("method", "path", "template", "scope"),
    [
        ("GET", "/wiki/rest/api/content/123", "/wiki/rest/api/content/{id}", "READ"),
        ("get", "/wiki/rest/api/content/123?expand=body.storage", "/wiki/rest/api/content/{id}", "READ"),
        ("DELETE", "https://x.atlassian.net/wiki/rest/api/content/9", "/wiki/rest/api/content/{id}",
         "DELETE"),
        ("GET", "/rest/api/content/123", "/wiki/rest/api/content/{id}", "READ"),  # without /wiki
        ("GET", "/wiki/api/v2/pages/77", "/wiki/api/v2/pages/{id}", "READ"),
        ("GET", "/wiki/rest/api/audit", "/wiki/rest/api/audit", "INACCESSIBLE"),
    ],
)
def test_lookup(method, path, template, scope):
    found = ScopeMap.default().lookup(method, path)
    assert found is not None
    assert (found.template, found.scope) == (template, scope)


def test_lookup_of_an_unknown_operation():
    scopes = ScopeMap.default()
    assert scopes.lookup("GET", "/wiki/rest/api/no-such-thing/1/2/3") is None
    assert scopes.lookup("PATCH", "/wiki/rest/api/content/1") is None


def test_every_operation_is_found_from_a_concrete_path():
    data = json.loads(PACKAGED.read_text(encoding="utf-8"))
    scopes = ScopeMap.default()
    assert scopes.operations == len(data["operations"]) == 396
    for op in data["operations"]:
        concrete = re.sub(r"\{[^}]+\}", "v42", op["path"])
        found = scopes.lookup(op["method"], concrete)
        assert found is not None, op
        assert (found.template, found.scope, found.operation_id) == (
            op["path"], op["scope"], op["operation_id"],
        )  # fmt: skip


def test_classify_forbidden():
    content = RequiredScope("WRITE", "v1", "PUT", "/wiki/rest/api/content/{id}", "updateContent")
    assert classify_forbidden("READ", content) == "scope"
    assert classify_forbidden("READ WRITE", content) == "permission"
    assert classify_forbidden("ADMIN", content) == "permission"
    audit = ScopeMap.default().lookup("GET", "/wiki/rest/api/audit")
    assert classify_forbidden("ADMIN", audit) == "scope"  # no scope opens an INACCESSIBLE call
    assert classify_forbidden("READ", None) == "permission"


def test_provenance_is_kept():
    provenance = ScopeMap.default().provenance
    assert provenance["sha256"] == hashlib.sha256(PACKAGED.read_bytes()).hexdigest()
    assert provenance["sources"] and all(
        {"repo", "path", "commit", "upstream_url"} <= set(s) for s in provenance["sources"]
    )
    assert "x-atlassian-connect-scope" in provenance["about"]
    assert provenance["scope_hierarchy"]["independent"] == ["ACT_AS_USER", "ACCESS_EMAIL_ADDRESSES"]


def test_packaged_copy_equals_the_shared_data():
    # CI lays ../shared beside the checkout; elsewhere it may be missing (skip, not fail).
    if not SHARED.exists():
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("../shared must be beside the checkout in CI")
        pytest.skip("../shared is not beside this checkout")
    assert PACKAGED.read_bytes() == SHARED.read_bytes()
