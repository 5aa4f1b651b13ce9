"""Canonical request and qsh: Atlassian's published vectors, the rules one by one, diagnosis."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.qsh import (
    CONTEXT_QSH,
    canonical_request,
    context_path,
    diagnose,
    query_string_hash,
    split_target,
)
from collector.tokens import parse_token

VECTORS = Path(__file__).parent / "vectors"
INTEROP = json.loads((VECTORS / "jwt-signed-urls.json").read_text(encoding="utf-8"))
JS_CASES = json.loads((VECTORS / "atlassian-jwt-js-canonical.json").read_text(encoding="utf-8"))
# Signed before the host started encoding '&' in the path (see the vector file's provenance).
PRE_AMPERSAND_FIX = "BasePath RFC3986 Subdelimiters"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def token_of(signed_url: str) -> str:
    return signed_url.split("jwt=", 1)[1]


# --------------------------------------------------------------------------- published vectors


@pytest.mark.parametrize("case", INTEROP["tests"], ids=lambda c: c["name"])
def test_interop_vector_canonical_request_and_qsh(case):
    claims = parse_token(token_of(case["signedUrl"])).claims
    ours = canonical_request("GET", case["signedUrl"])
    if case["name"] == PRE_AMPERSAND_FIX:
        # The 2014 host hashed '&' in the path raw; the rule today encodes it as %26.
        assert ours == case["canonicalUrl"].replace("$&'", "$%26'")
        assert sha(case["canonicalUrl"]) == claims["qsh"]
        found = diagnose(claims["qsh"], "GET", case["signedUrl"])
        assert found.matched_mistake == "path_ampersand_not_encoded"
        assert found.mistaken_canonical == case["canonicalUrl"]
    else:
        assert ours == case["canonicalUrl"]
        assert query_string_hash("GET", case["signedUrl"]) == claims["qsh"]


@pytest.mark.parametrize("case", JS_CASES["cases"], ids=lambda c: c["name"])
def test_atlassian_jwt_js_case(case):
    url = case["path"] + (f"?{case['query']}" if case["query"] is not None else "")
    if case.get("form_body"):
        if case["include_form_body"]:
            # atlassian-jwt-js hashes form fields when asked (checkBody); we never do, and
            # diagnose() recognises exactly that mistake.
            found = diagnose(case["qsh"], case["method"], url, form_body=case["form_body"])
            assert found.matched_mistake == "form_body_params"
        else:
            assert query_string_hash(case["method"], url, case["base_url"]) == case["qsh"]
        return
    if "canonical" in case:
        assert canonical_request(case["method"], url, case["base_url"]) == case["canonical"]
    else:
        assert query_string_hash(case["method"], url, case["base_url"]) == case["qsh"]


# --------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("method", "url", "base_url", "expected"),
    [
        ("get", "/a", None, "GET&/a&"),
        ("GET", "", None, "GET&/&"),
        ("GET", "/", None, "GET&/&"),
        ("GET", "/a/", None, "GET&/a&"),
        ("GET", "/a//", None, "GET&/a/&"),  # exactly one trailing slash goes
        ("GET", "a/b", None, "GET&/a/b&"),
        ("GET", "https://example.com", None, "GET&/&"),
        ("GET", "https://example.com?x=1", None, "GET&/&x=1"),
        ("GET", "https://user@example.com:8443/p?x=1#frag", None, "GET&/p&x=1"),
        ("POST", "/a&b=c?x=y", None, "POST&/a%26b=c&x=y"),
        ("GET", "/p?q=a+b", None, "GET&/p&q=a%20b"),
        ("GET", "/p?q=a%2Bb", None, "GET&/p&q=a%2Bb"),
        ("GET", "/p?q=a*b~c", None, "GET&/p&q=a%2Ab~c"),
        ("GET", "/p?q=%7e", None, "GET&/p&q=~"),
        ("GET", "/p?q=%2f", None, "GET&/p&q=%2F"),  # upper-case hex
        ("GET", "/p?flag", None, "GET&/p&flag="),
        ("GET", "/p?a=1&&b=2&", None, "GET&/p&a=1&b=2"),
        ("GET", "/p?jwt=abc&x=1", None, "GET&/p&x=1"),
        ("GET", "/p?b=2&a=1", None, "GET&/p&a=1&b=2"),
        ("GET", "/p?a=2&a=10&a=1", None, "GET&/p&a=1,10,2"),
        ("GET", "/p?a=b&a+b=c&a%20b=d", None, "GET&/p&a=b&a%20b=c,d"),
        # Sorted by encoded name: %C3%A9 ('%') sorts before z, although raw 'é' is after 'z'.
        ("GET", "/p?z=1&%C3%A9=2", None, "GET&/p&%C3%A9=2&z=1"),
        # Repeated values in Java's UTF-16 order: U+10000 (a surrogate pair) before U+FFFF.
        ("GET", "/p?v=%EF%BF%BF&v=%F0%90%80%80", None, "GET&/p&v=%F0%90%80%80,%EF%BF%BF"),
        ("GET", "https://x.atlassian.net/wiki/rest/api/space", "https://x.atlassian.net/wiki",
         "GET&/rest/api/space&"),
        ("GET", "/wiki/rest/api/space", "https://x.atlassian.net/wiki/", "GET&/rest/api/space&"),
        ("GET", "/wiki", "/wiki", "GET&/&"),
        ("GET", "/wikipedia/x", "/wiki", "GET&/wikipedia/x&"),  # not a path-segment prefix
        ("GET", "/rest/api/space", "https://x.atlassian.net/wiki", "GET&/rest/api/space&"),
        ("GET", "/a", "https://app.example.com", "GET&/a&"),
    ],
)
def test_canonical_request_rules(method, url, base_url, expected):
    assert canonical_request(method, url, base_url) == expected
    assert query_string_hash(method, url, base_url) == sha(expected)


def test_split_target_and_context_path():
    assert split_target("https://h/p?q#f") == ("/p", "q")
    assert split_target("/p") == ("/p", None)
    assert split_target("http://[::1") == ("", None)  # urlsplit would raise here
    assert context_path("https://x.atlassian.net/wiki/") == "/wiki"
    assert context_path("https://x.atlassian.net") == ""
    assert context_path(None) == ""


@settings(max_examples=400)
@given(st.text(), st.text(), st.one_of(st.none(), st.text()))
def test_canonicalisation_never_raises(method, url, base_url):
    canonical = canonical_request(method, url, base_url)
    assert isinstance(canonical, str)
    assert len(query_string_hash(method, url, base_url)) == 64


@settings(max_examples=150)
@given(
    st.text(max_size=8),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=60),
    st.one_of(st.none(), st.text(max_size=20)),
    st.one_of(st.none(), st.text(max_size=30)),
)
def test_diagnosis_never_raises(token_qsh, url, base_url, form_body):
    found = diagnose(token_qsh, "GET", url, base_url, form_body=form_body)
    assert found.expected_canonical == canonical_request("GET", url, base_url)


# --------------------------------------------------------------------------- diagnosis


@pytest.mark.parametrize(
    ("code", "method", "url", "base_url", "form_body", "issuer_canonical"),
    [
        ("base_path_included", "GET", "/wiki/rest/api/space", "https://x.atlassian.net/wiki", None,
         "GET&/wiki/rest/api/space&"),
        ("base_path_included", "GET", "/rest/api/space", "https://x.atlassian.net/wiki", None,
         "GET&/wiki/rest/api/space&"),
        ("base_path_stripped", "GET", "/wiki/rest/api/space", None, None, "GET&/rest/api/space&"),
        ("plus_not_decoded", "GET", "/p?q=a+b", None, None, "GET&/p&q=a%2Bb"),
        ("trailing_slash_kept", "GET", "/p/", None, None, "GET&/p/&"),
        ("jwt_param_hashed", "GET", "/p?x=1&jwt=abc", None, None, "GET&/p&jwt=abc&x=1"),
        ("unsorted_params", "GET", "/p?b=1&a=2", None, None, "GET&/p&b=1&a=2"),
        ("unsorted_values", "GET", "/p?a=%3A1&a=.1", None, None, "GET&/p&a=%3A1,.1"),
        ("form_body_params", "POST", "/p", None, "a=1&b=2", "POST&/p&a=1&b=2"),
        ("form_encoded_query", "GET", "/p?q=a b*", None, None, "GET&/p&q=a+b*"),
        ("lowercase_percent_encoding", "GET", "/p?q=a/b", None, None, "GET&/p&q=a%2fb"),
        ("query_not_normalised", "GET", "/p?q=%7e", None, None, "GET&/p&q=%7e"),
        ("query_omitted", "GET", "/p?x=1", None, None, "GET&/p&"),
        ("path_ampersand_not_encoded", "GET", "/a&b", None, None, "GET&/a&b&"),
        ("method_not_uppercased", "get", "/p", None, None, "get&/p&"),
        ("method_POST", "GET", "/p", None, None, "POST&/p&"),
        ("base_path_included+plus_not_decoded", "GET", "/wiki/p?q=a+b", "/wiki", None,
         "GET&/wiki/p&q=a%2Bb"),
    ],
)
def test_diagnosis_names_the_mistake(code, method, url, base_url, form_body, issuer_canonical):
    found = diagnose(sha(issuer_canonical), method, url, base_url, form_body=form_body)
    assert found.matched_mistake == code
    assert found.mistaken_canonical == issuer_canonical
    assert found.expected_canonical == canonical_request(method, url, base_url)
    assert not found.matches
    assert found.explanation.endswith(".")


def test_diagnosis_of_a_matching_qsh_and_of_no_known_mistake():
    ok = diagnose(sha("GET&/p&x=1"), "GET", "/p?x=1")
    assert ok.matches and ok.matched_mistake is None and ok.mistaken_canonical is None
    unknown = diagnose(sha("GET&/elsewhere&"), "GET", "/p?x=1")
    assert unknown.matched_mistake is None and not unknown.matches
    assert "No usual mistake" in unknown.explanation
    context = diagnose(CONTEXT_QSH, "GET", "/p")
    assert context.matched_mistake == "context_qsh"
    assert set(ok.as_dict()) == {
        "matched_mistake", "explanation", "expected_canonical", "expected_qsh",
        "mistaken_canonical", "token_qsh",
    }  # fmt: skip


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from("ab=&+%2FC3A9~* é/?jw"), max_size=40))
def test_fast_and_general_canonicalisers_agree(query):
    # canonical_request() takes a fast path for the host's rules; diagnose() uses the general
    # one with variations. With no variation they must be the same function.
    from collector.qsh import _canonical, _Rules

    url = f"/p?{query}"
    assert _canonical("GET", url, None, None, _Rules()) == canonical_request("GET", url)
