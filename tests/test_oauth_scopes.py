"""The shipped OAuth 2.0 scope data, its lookup by concrete call, and what an app lacks."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from collector.scopes import OAuthScopes, ScopeMap, missing_oauth_scopes

ROOT = Path(__file__).parent.parent
DATA = ROOT / "collector" / "data"
CONNECT = json.loads((DATA / "confluence-connect-scopes.json").read_text(encoding="utf-8"))
OAUTH = json.loads((DATA / "confluence-oauth-scopes.json").read_text(encoding="utf-8"))


def _key(op: dict) -> tuple[str, str, str]:
    return (op["api"], op["method"], op["path"])


def test_every_connect_operation_has_an_oauth_entry_in_the_same_order():
    assert [(*_key(op), op["operation_id"]) for op in OAUTH["operations"]] == [
        (*_key(op), op["operation_id"]) for op in CONNECT["operations"]
    ]
    assert len(OAUTH["operations"]) == 396


def test_sources_are_the_connect_files_sources():
    assert [(s["repo"], s["path"], s["commit"], s["api"], s["sha256"]) for s in OAUTH["sources"]] == [
        (s["repo"], s["path"], s["commit"], s["api"], s["sha256"]) for s in CONNECT["sources"]
    ]
    assert all(0 <= op["source"] < len(OAUTH["sources"]) for op in OAUTH["operations"])
    assert all(OAUTH["sources"][op["source"]]["api"] == op["api"] for op in OAUTH["operations"])


def test_families_hold_the_right_kind_of_name():
    for op in OAUTH["operations"]:
        assert all(name.endswith(":confluence") for name in op["granular"]), op
        assert not any(re.fullmatch(r"[a-z]+:confluence-.+", name) for name in op["granular"]), op
        if op["api"] == "v2":
            assert op["classic"] == [], op  # the v2 spec declares granular scopes only


@pytest.mark.parametrize(
    ("method", "path", "classic", "granular"),
    [
        # /content/123 is GET /wiki/rest/api/content/{id}, last published in the 2024 copy
        ("GET", "/wiki/rest/api/content/123", ("read:confluence-content.summary",),
         ("read:content-details:confluence",)),
        ("GET", "/wiki/rest/api/content?spaceKey=DEV", ("read:confluence-content.summary",),
         ("read:content-details:confluence",)),
        ("PUT", "https://x.atlassian.net/wiki/rest/api/content/9", ("write:confluence-content",),
         ("read:content-details:confluence", "write:content:confluence")),
        ("GET", "/rest/api/content/123/child/attachment/att9/download",
         ("readonly:content.attachment:confluence",), ("read:attachment:confluence",)),
        ("GET", "/wiki/rest/api/audit", (), ("read:audit-log:confluence",)),  # no classic scope exists
        ("GET", "/wiki/api/v2/pages/77", (), ("read:page:confluence",)),
        ("DELETE", "/wiki/api/v2/pages/77", (), ("delete:page:confluence",)),
        ("GET", "/wiki/rest/atlassian-connect/1/app/module/dynamic", (), ()),  # Connect only
    ],
)  # fmt: skip
def test_oauth_scopes(method, path, classic, granular):
    assert ScopeMap.default().oauth_scopes(method, path) == OAuthScopes(classic, granular)


def test_oauth_scopes_of_an_unknown_operation():
    scopes = ScopeMap.default()
    assert scopes.oauth_scopes("GET", "/wiki/rest/api/no-such-thing/1/2/3") is None
    assert scopes.oauth_scopes("PATCH", "/wiki/rest/api/content/1") is None


def test_every_operation_is_found_from_a_concrete_path():
    scopes = ScopeMap.default()
    for op in OAUTH["operations"]:
        concrete = re.sub(r"\{[^}]+\}", "v42", op["path"])
        assert scopes.oauth_scopes(op["method"], concrete) == OAuthScopes(
            tuple(op["classic"]), tuple(op["granular"])
        ), op


GET_CONTENT = OAuthScopes(("read:confluence-content.summary",), ("read:content-details:confluence",))
PUT_CONTENT = OAuthScopes(
    ("write:confluence-content",), ("read:content-details:confluence", "write:content:confluence")
)


@pytest.mark.parametrize(
    ("granted", "needed", "missing"),
    [
        (["read:confluence-content.summary"], GET_CONTENT, None),  # classic suffices
        (["read:content-details:confluence"], GET_CONTENT, None),  # so does granular
        ("offline_access read:content-details:confluence", GET_CONTENT, None),  # a token's scope field
        ([], GET_CONTENT, GET_CONTENT),
        (["read:content-details:confluence"], PUT_CONTENT,
         OAuthScopes(("write:confluence-content",), ("write:content:confluence",))),
        (["READ:CONFLUENCE-CONTENT.SUMMARY"], GET_CONTENT, GET_CONTENT),  # names are case-sensitive
        # a family the operation lacks is never satisfied by default
        (["read:confluence-content.all"], OAuthScopes((), ("read:page:confluence",)),
         OAuthScopes((), ("read:page:confluence",))),
        ([], OAuthScopes((), ()), None),  # nothing known to be missing
    ],
)  # fmt: skip
def test_missing_oauth_scopes(granted, needed, missing):
    assert missing_oauth_scopes(granted, needed) == missing


def test_missing_oauth_scopes_for_a_looked_up_call():
    needed = ScopeMap.default().oauth_scopes("GET", "/wiki/api/v2/pages/77")
    assert needed is not None
    assert missing_oauth_scopes({"read:page:confluence"}, needed) is None
    assert missing_oauth_scopes({"read:confluence-content.all"}, needed) == OAuthScopes(
        (), ("read:page:confluence",)
    )


def test_the_data_file_ships_in_the_package():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["collector"]
    assert any(Path("data/confluence-oauth-scopes.json").match(p) for p in patterns)
