"""Tokens Connect Audit mints: outgoing app calls, user-impersonation assertions, test callbacks.

- :func:`app_token`: the app calls the host REST API as its app user (HS256 with the
  install's shared secret, ``iss`` = the app key, ``qsh`` over the path relative to the
  tenant's baseUrl, so ``/wiki`` never enters the hash), valid 3 minutes like Atlassian's.
- :func:`bearer_assertion` and :func:`token_request_form`: the OAuth 2.0 JWT bearer grant
  (``ACT_AS_USER``), exchanged at the authorization server's ``/oauth2/token`` for an
  access token that acts as one user.
- :func:`request_token` and :func:`lifecycle_token`: what the host sends *to* an app,
  minted by the simulator and the tests so that the verifier is exercised end to end.

Pure: the current time is a parameter (``now``), nothing is read or sent here, and the
returned tokens and assertions are credentials that callers must never log or store.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from collections.abc import Iterable
from typing import Any

from collector.qsh import CONTEXT_QSH, query_string_hash

#: Atlassian's authorization server for the JWT bearer grant (configurable by callers).
DEFAULT_AUTHORIZATION_SERVER = "https://oauth-2-authorization-server.services.atlassian.com"
#: The OAuth 2.0 grant type of RFC 7523 that Connect user impersonation uses.
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: Atlassian refuses assertions that live longer than this (seconds).
MAX_ASSERTION_TTL = 60


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _signing_input(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(_json(header))}.{_b64(_json(claims))}"


def sign_hs256(claims: dict[str, Any], shared_secret: str, **header: Any) -> str:
    """A compact HS256 JWS of ``claims``; extra keyword arguments go into the header."""
    if not shared_secret:
        raise ValueError("an empty shared secret cannot sign")
    signing_input = _signing_input({"alg": "HS256", "typ": "JWT", **header}, claims)
    mac = hmac.new(shared_secret.encode("utf-8"), signing_input.encode("ascii"), hashlib.sha256)
    return f"{signing_input}.{_b64(mac.digest())}"


def sign_rs256(claims: dict[str, Any], private_key_pem: str | bytes, *, kid: str) -> str:
    """A compact RS256 JWS of ``claims`` with ``kid`` in the header."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    pem = private_key_pem.encode("ascii") if isinstance(private_key_pem, str) else private_key_pem
    key = _rsa_private_key(pem)
    signing_input = _signing_input({"alg": "RS256", "typ": "JWT", "kid": kid}, claims)
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


@functools.lru_cache(maxsize=8)
def _rsa_private_key(pem: bytes) -> Any:
    # Loading a PEM validates the RSA key, which costs tens of milliseconds; a signer
    # (the simulator, a test) signs many tokens with one key, so load each key once.
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(pem, password=None)
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("RS256 needs an RSA private key")
    return key


def rsa_key_pair() -> tuple[str, str]:
    """A new 2048-bit RSA key pair as PEM text: (PKCS#8 private key, SubjectPublicKeyInfo public
    key). The one key generator of the project: the simulator, the tests and the benchmarks sign
    lifecycle callbacks and Forge invocation tokens with it. Generation takes tens of
    milliseconds, so callers make a key once and keep it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def _times(now: float, ttl: int) -> dict[str, int]:
    if ttl <= 0:
        raise ValueError("ttl must be a positive number of seconds")
    iat = int(now)
    return {"iat": iat, "exp": iat + int(ttl)}


def app_token(
    *,
    app_key: str,
    shared_secret: str,
    method: str,
    url: str,
    base_url: str,
    now: float,
    ttl: int = 180,
) -> str:
    """The JWT for an app-user call to the host: ``Authorization: JWT <token>``.

    ``url`` is the full URL called (or its path and query) and ``base_url`` the tenant's
    baseUrl (``https://site.atlassian.net/wiki``); the qsh is computed relative to it.
    """
    claims = {
        "iss": app_key,
        **_times(now, ttl),
        "qsh": query_string_hash(method, url, base_url),
    }
    return sign_hs256(claims, shared_secret)


def request_token(
    *,
    client_key: str,
    shared_secret: str,
    method: str,
    url: str,
    base_url: str,
    now: float,
    account_id: str | None = None,
    context: bool = False,
    ttl: int = 180,
) -> str:
    """A token as the host sends it to the app (simulator, tests).

    ``iss`` is the tenant's clientKey, ``sub`` the acting user's accountId when given; the
    qsh is computed over ``url`` relative to ``base_url`` (the app's baseUrl), or is
    ``context-qsh`` for a context token.
    """
    claims: dict[str, Any] = {"iss": client_key}
    if account_id is not None:
        claims["sub"] = account_id
    claims.update(_times(now, ttl))
    claims["qsh"] = CONTEXT_QSH if context else query_string_hash(method, url, base_url)
    if context:
        claims["context"] = {}
    return sign_hs256(claims, shared_secret)


def bearer_assertion(
    *,
    oauth_client_id: str,
    shared_secret: str,
    account_id: str,
    base_url: str,
    authorization_server: str = DEFAULT_AUTHORIZATION_SERVER,
    now: float,
    ttl: int = 60,
) -> str:
    """The signed assertion of the OAuth 2.0 JWT bearer grant, to act as ``account_id``.

    ``iss`` names the install's OAuth client, ``sub`` the user, ``tnt`` the tenant's
    baseUrl and ``aud`` the authorization server; Atlassian accepts at most 60 s of life.
    """
    if not 0 < ttl <= MAX_ASSERTION_TTL:
        raise ValueError(f"an assertion lives between 1 and {MAX_ASSERTION_TTL} seconds")
    claims = {
        "iss": f"urn:atlassian:connect:clientid:{oauth_client_id}",
        "sub": f"urn:atlassian:connect:useraccountid:{account_id}",
        "tnt": base_url,
        "aud": authorization_server,
        **_times(now, ttl),
    }
    return sign_hs256(claims, shared_secret)


def normalise_requested_scopes(scopes: Iterable[str]) -> list[str]:
    """Upper-case, de-duplicated scope names in first-seen order (how the server expects them)."""
    seen: dict[str, None] = {}
    for scope in scopes:
        for name in scope.replace(",", " ").split():
            seen.setdefault(name.upper(), None)
    return list(seen)


def token_request_form(assertion: str, scopes: Iterable[str]) -> dict[str, str]:
    """The form fields POSTed to ``<authorization server>/oauth2/token``.

    ``scope`` is space-separated upper-case scope names (``READ ACT_AS_USER``); with no
    scopes the field is left out and the server grants the app's descriptor scopes.
    """
    form = {"grant_type": JWT_BEARER_GRANT, "assertion": assertion}
    names = normalise_requested_scopes(scopes)
    if names:
        form["scope"] = " ".join(names)
    return form


def lifecycle_token(
    *,
    private_key_pem: str | bytes,
    kid: str,
    client_key: str,
    app_base_url: str,
    method: str,
    url: str,
    now: float,
    ttl: int = 180,
) -> str:
    """A signed lifecycle callback token as Atlassian sends it (simulator, tests).

    RS256 with ``kid``; ``iss`` is the tenant's clientKey, ``aud`` the app's baseUrl, and
    the qsh is computed over ``url`` relative to the app's baseUrl.
    """
    claims = {
        "iss": client_key,
        "aud": [app_base_url],
        **_times(now, ttl),
        "qsh": query_string_hash(method, url, app_base_url),
    }
    return sign_rs256(claims, private_key_pem, kid=kid)
