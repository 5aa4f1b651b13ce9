"""Outgoing app JWTs, JWT-bearer assertions and simulated host tokens, cross-checked with PyJWT."""

from __future__ import annotations

import hashlib

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from collector import errors
from collector.keys import DirectoryKeySource
from collector.qsh import CONTEXT_QSH
from collector.signing import (
    DEFAULT_AUTHORIZATION_SERVER,
    JWT_BEARER_GRANT,
    app_token,
    bearer_assertion,
    lifecycle_token,
    request_token,
    sign_hs256,
    token_request_form,
)
from collector.tokens import StaticInstalls, TokenVerifier, parse_token

NOW = 1_700_000_000
SECRET = "shared-secret-of-the-install-0123456789abcdef"
SITE = "https://example.atlassian.net/wiki"
APP = "https://app.example.com"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_app_token_hashes_the_path_relative_to_the_tenant_base_url():
    token = app_token(
        app_key="com.example.audit",
        shared_secret=SECRET,
        method="get",
        url=f"{SITE}/rest/api/content/123?expand=body.storage&status=current",
        base_url=SITE,
        now=NOW + 0.9,
    )
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {
        "iss": "com.example.audit",
        "iat": NOW,
        "exp": NOW + 180,
        # /wiki never enters the hash
        "qsh": sha("GET&/rest/api/content/123&expand=body.storage&status=current"),
    }
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}


def test_app_token_is_what_a_strict_host_accepts():
    url = f"{SITE}/api/v2/pages?limit=5"
    token = app_token(
        app_key="com.example.audit", shared_secret=SECRET, method="GET", url=url,
        base_url=SITE, now=NOW,
    )  # fmt: skip
    host = TokenVerifier(
        StaticInstalls({"com.example.audit": SECRET}), clock=lambda: NOW + 60, app_base_url=SITE
    )
    assert host.verify_request(token, "GET", url).client_key == "com.example.audit"


def test_request_token_as_the_host_sends_it():
    url = f"{APP}/panel?pageId=1&spaceKey=DS"
    token = request_token(
        client_key="tenant-1", shared_secret=SECRET, method="GET", url=url, base_url=APP,
        now=NOW, account_id="5b10ac8d82e05b22cc7d4ef5",
    )  # fmt: skip
    claims = parse_token(token).claims
    assert claims["iss"] == "tenant-1" and claims["sub"] == "5b10ac8d82e05b22cc7d4ef5"
    assert claims["qsh"] == sha("GET&/panel&pageId=1&spaceKey=DS")
    verifier = TokenVerifier(StaticInstalls({"tenant-1": SECRET}), clock=lambda: NOW, app_base_url=APP)
    assert verifier.verify_request(token, "GET", "/panel?spaceKey=DS&pageId=1").account_id == (
        "5b10ac8d82e05b22cc7d4ef5"
    )


def test_context_request_token():
    token = request_token(
        client_key="tenant-1", shared_secret=SECRET, method="GET", url="/ignored",
        base_url=APP, now=NOW, context=True,
    )  # fmt: skip
    assert parse_token(token).claims["qsh"] == CONTEXT_QSH
    verifier = TokenVerifier(StaticInstalls({"tenant-1": SECRET}), clock=lambda: NOW)
    assert verifier.verify_request(token, "GET", "/any", endpoint="context").qsh_kind == "context"


def test_bearer_assertion_claims():
    assertion = bearer_assertion(
        oauth_client_id="oauth-client-1",
        shared_secret=SECRET,
        account_id="5b10ac8d82e05b22cc7d4ef5",
        base_url=SITE,
        authorization_server=DEFAULT_AUTHORIZATION_SERVER,
        now=NOW,
    )
    claims = jwt.decode(
        assertion, SECRET, algorithms=["HS256"], audience=DEFAULT_AUTHORIZATION_SERVER,
        options={"verify_exp": False},
    )  # fmt: skip
    assert claims == {
        "iss": "urn:atlassian:connect:clientid:oauth-client-1",
        "sub": "urn:atlassian:connect:useraccountid:5b10ac8d82e05b22cc7d4ef5",
        "tnt": SITE,
        "aud": DEFAULT_AUTHORIZATION_SERVER,
        "iat": NOW,
        "exp": NOW + 60,
    }


@pytest.mark.parametrize("ttl", [0, 61, 3600])
def test_bearer_assertion_lifetime_is_capped_at_60_seconds(ttl):
    with pytest.raises(ValueError, match="60"):
        bearer_assertion(
            oauth_client_id="c", shared_secret=SECRET, account_id="a", base_url=SITE,
            authorization_server=DEFAULT_AUTHORIZATION_SERVER, now=NOW, ttl=ttl,
        )  # fmt: skip


def test_token_request_form():
    form = token_request_form("ASSERTION", ["read", "ACT_AS_USER", "READ", "write, delete"])
    assert form == {
        "grant_type": JWT_BEARER_GRANT,
        "assertion": "ASSERTION",
        "scope": "READ ACT_AS_USER WRITE DELETE",
    }
    assert "scope" not in token_request_form("ASSERTION", [])
    assert JWT_BEARER_GRANT == "urn:ietf:params:oauth:grant-type:jwt-bearer"


def test_lifecycle_token_verifies_with_the_published_key(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "kid-1").write_bytes(public_pem)
    token = lifecycle_token(
        private_key_pem=private_pem, kid="kid-1", client_key="tenant-1",
        app_base_url=f"{APP}/connect", method="POST", url=f"{APP}/connect/installed", now=NOW,
    )  # fmt: skip
    # An independent library agrees on the signature and the claims...
    claims = jwt.decode(
        token, public_pem, algorithms=["RS256"], audience=f"{APP}/connect",
        options={"verify_exp": False},
    )  # fmt: skip
    assert claims["qsh"] == sha("POST&/installed&")
    assert jwt.get_unverified_header(token)["kid"] == "kid-1"
    # ...and the strict verifier accepts it as a callback to /connect/installed.
    verifier = TokenVerifier(
        None, keys=DirectoryKeySource(tmp_path), clock=lambda: NOW, app_base_url=f"{APP}/connect"
    )
    verified = verifier.verify_lifecycle(token, "POST", "/connect/installed", body_client_key="tenant-1")
    assert verified.client_key == "tenant-1"


def test_tokens_signed_by_pyjwt_verify_and_ours_decode_in_pyjwt():
    claims = {"iss": "tenant-1", "iat": NOW, "exp": NOW + 100, "qsh": sha("GET&/x&")}
    theirs = jwt.encode(claims, SECRET, algorithm="HS256")
    verifier = TokenVerifier(StaticInstalls({"tenant-1": SECRET}), clock=lambda: NOW)
    verifier.verify_request(theirs, "GET", "/x")
    ours = sign_hs256(claims, SECRET)
    assert jwt.decode(ours, SECRET, algorithms=["HS256"], options={"verify_exp": False}) == claims


def test_signing_refuses_what_cannot_be_a_valid_token():
    with pytest.raises(ValueError, match="empty shared secret"):
        sign_hs256({"iss": "x"}, "")
    with pytest.raises(ValueError, match="ttl"):
        app_token(app_key="a", shared_secret=SECRET, method="GET", url="/", base_url=SITE, now=NOW, ttl=0)


def test_an_unknown_signer_is_refused_by_name():
    token = app_token(app_key="a", shared_secret=SECRET, method="GET", url="/", base_url=SITE, now=NOW)
    with pytest.raises(errors.UnknownIssuer):
        TokenVerifier(StaticInstalls({}), clock=lambda: NOW).verify_request(token, "GET", "/")
