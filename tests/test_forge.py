"""Forge Invocation Token verification (pure: no network), deliveries and product tokens."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from collector import errors
from collector.forge import (
    ForgeExpectation,
    ForgeVerifier,
    KnownInstallation,
    delivery_key,
    extract_bearer,
    product_token,
    retry_count,
)
from collector.signing import sign_hs256
from collector.tokens import VerifyPolicy, token_fingerprint
from tests.forgekit import (
    API_BASE_URL,
    APP_ID,
    CLOUD_ID,
    DROP,
    ENV_ID,
    INSTALLATION_ID,
    KID,
    MODULE_KEY,
    NOW,
    OTHER_APP_ID,
    OTHER_CLOUD_ID,
    OTHER_INSTALLATION_ID,
    PRINCIPAL,
    SITE_URL,
    BrokenKeys,
    Installations,
    MemoryKeys,
    b64,
    fit,
    fit_claims,
    forge_key,
    hs256,
    other_key,
    raw_json,
    signature_of,
    unsigned,
)

CONNECT_CLIENT_KEY = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"  # what a Connect token's iss looks like
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{32}")
ANY = ForgeExpectation()


def keys() -> MemoryKeys:
    return MemoryKeys({KID: forge_key().public_pem})


def verifier(app_ids=(APP_ID,), **options: Any) -> ForgeVerifier:
    kw: dict[str, Any] = {"keys": keys(), "clock": lambda: NOW}
    kw.update(options)
    return ForgeVerifier(app_ids, **kw)


def verify(token, expect: ForgeExpectation = ANY, **options: Any):
    return verifier(**options).verify(token, expect)


def installed(active: bool = True, cloud_id: str | None = CLOUD_ID) -> Installations:
    return Installations(KnownInstallation(INSTALLATION_ID, active=active, cloud_id=cloud_id))


@pytest.fixture(scope="module", autouse=True)
def _keys_once():
    """Generate both RSA keys once, up front (forgekit caches them for the process)."""
    forge_key(), other_key()


# --------------------------------------------------------------------------- one case per code


@dataclass
class Call:
    """One verification: the token, the route's expectation and the verifier's options."""

    token: Any
    expect: ForgeExpectation = ANY
    options: dict[str, Any] = field(default_factory=dict)

    def run(self):
        return verify(self.token, self.expect, **self.options)


def call(token, expect: ForgeExpectation = ANY, **options: Any) -> Call:
    return Call(token, expect, options)


def _edited_after_signing() -> str:
    head, _, sig = fit().split(".")
    forged = b64(raw_json(fit_claims({"app.installationId": OTHER_INSTALLATION_ID})))
    return f"{head}.{forged}.{sig}"


def _pem_hs256() -> str:
    # The classic RS/HS confusion: HMAC keyed with the public key text everybody can fetch.
    return sign_hs256(fit_claims(), forge_key().public_pem, kid=KID)


# (code, case id, builder of the Call). Every code the Forge verifier can raise appears.
CASES: list[tuple[str, str, Any]] = [
    ("missing_token", "none", lambda: call(None)),
    ("missing_token", "empty", lambda: call("")),
    ("missing_token", "blank", lambda: call("  \t")),
    ("too_large", "8 KiB + 1 of junk", lambda: call("a" * 8193)),
    ("too_large", "a signed FIT with a padded claim", lambda: call(fit({"padding": "x" * 9000}))),
    ("too_large", "a custom cap", lambda: call(fit(), policy=VerifyPolicy(max_size=256))),
    ("malformed", "two parts", lambda: call(fit().rsplit(".", 1)[0])),
    ("malformed", "four parts", lambda: call(fit() + ".AAAA")),
    ("malformed", "'Bearer ' prefix left on", lambda: call("Bearer " + fit())),
    ("malformed", "claims are not JSON", lambda: call(f"{b64(b'{}')}.{b64(b'not json')}.AAAA")),
    ("unsupported_header", "jku", lambda: call(fit(
        header={"alg": "RS256", "typ": "JWT", "kid": KID, "jku": "https://evil.example/jwks.json"},
        key=other_key()))),
    ("unsupported_header", "x5u", lambda: call(fit(
        header={"alg": "RS256", "kid": KID, "x5u": "https://evil.example/cert.pem"}, key=other_key()))),
    ("unsupported_header", "embedded jwk", lambda: call(fit(
        header={"alg": "RS256", "kid": KID, "jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}},
        key=other_key()))),
    ("unsupported_header", "typ not JWT", lambda: call(fit(
        header={"alg": "RS256", "typ": "at+jwt", "kid": KID}))),
    ("alg_not_allowed", "alg none", lambda: call(unsigned({"alg": "none", "typ": "JWT", "kid": KID},
                                                          fit_claims()))),
    ("alg_not_allowed", "HS256 keyed with the JWKS public key PEM", lambda: call(_pem_hs256())),
    ("alg_not_allowed", "HS256 keyed with the PEM, no kid", lambda: call(
        hs256({"alg": "HS256", "typ": "JWT"}, fit_claims(), forge_key().public_pem))),
    ("alg_not_allowed", "RS512", lambda: call(fit(header={"alg": "RS512", "typ": "JWT", "kid": KID}))),
    ("alg_not_allowed", "rs256 in lower case", lambda: call(fit(
        header={"alg": "rs256", "typ": "JWT", "kid": KID}))),
    ("alg_not_allowed", "no alg", lambda: call(fit(header={"typ": "JWT", "kid": KID}))),
    ("missing_kid", "no kid", lambda: call(fit(header={"alg": "RS256", "typ": "JWT"}))),
    ("missing_kid", "kid ../../etc/passwd", lambda: call(fit(kid="../../etc/passwd"))),
    ("missing_kid", "kid is a URL", lambda: call(fit(kid="https://evil.example/key"))),
    ("missing_kid", "kid is a number", lambda: call(fit(header={"alg": "RS256", "kid": 7}))),
    ("missing_kid", "kid is empty", lambda: call(fit(kid=""))),
    ("unknown_kid", "kid not in the key set", lambda: call(fit(kid="rotated-away-key"))),
    ("unknown_kid", "no key source configured", lambda: call(fit(), keys=None)),
    ("unknown_kid", "the key source fails", lambda: call(fit(), keys=BrokenKeys())),
    ("unknown_kid", "the source hands out a non-PEM", lambda: call(
        fit(), keys=MemoryKeys({KID: "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"}))),
    ("unknown_issuer", "iss is a Connect clientKey", lambda: call(fit({"iss": CONNECT_CLIENT_KEY}))),
    ("unknown_issuer", "iss differs in case", lambda: call(fit({"iss": "Forge/Invocation-Token"}))),
    ("bad_signature", "signed by another key", lambda: call(fit(key=other_key()))),
    ("bad_signature", "claims edited after signing", lambda: call(_edited_after_signing())),
    ("bad_signature", "signature removed", lambda: call(fit().rsplit(".", 1)[0] + ".")),
    ("bad_signature", "invalid claims, forged signature: the signature is checked first",
     lambda: call(fit({"exp": 1.5, "iss": "x", "app": "nope"}, key=other_key()))),
    ("missing_claim", "no app.installationId", lambda: call(fit({"app.installationId": DROP}))),
    ("missing_claim", "no principal on a UI route", lambda: call(
        fit({"principal": DROP}), ForgeExpectation(principal="required"))),
    ("missing_claim", "principal null on a UI route", lambda: call(
        fit({"principal": None}), ForgeExpectation(principal="required"))),
    ("missing_claim", "no iss", lambda: call(fit({"iss": DROP}))),
    ("missing_claim", "no exp", lambda: call(fit({"exp": DROP}))),
    ("missing_claim", "no app", lambda: call(fit({"app": DROP}))),
    ("missing_claim", "no app.id", lambda: call(fit({"app.id": DROP}))),
    ("missing_claim", "no app.apiBaseUrl", lambda: call(fit({"app.apiBaseUrl": DROP}))),
    ("missing_claim", "no app.environment", lambda: call(fit({"app.environment": DROP}))),
    ("missing_claim", "no app.module.key", lambda: call(fit({"app.module.key": DROP}))),
    ("missing_claim", "no aud", lambda: call(fit({"aud": DROP}))),
    ("invalid_claim", "installationId not an ARI", lambda: call(
        fit({"app.installationId": "8e7d6c5b-4a39-4281-9f0e-1d2c3b4a5968"}))),
    ("invalid_claim", "installationId is an app ARI", lambda: call(fit({"app.installationId": APP_ID}))),
    ("invalid_claim", "apiBaseUrl http:// not on loopback", lambda: call(
        fit({"app.apiBaseUrl": f"http://api.atlassian.com/ex/confluence/{CLOUD_ID}"}))),
    ("invalid_claim", "apiBaseUrl http://127.0.0.1 without http_api_hosts", lambda: call(
        fit({"app.apiBaseUrl": "http://127.0.0.1:8080/ex/confluence/x"}))),
    ("invalid_claim", "apiBaseUrl with credentials", lambda: call(
        fit({"app.apiBaseUrl": "https://user:pw@api.atlassian.com/ex/confluence/x"}))),
    ("invalid_claim", "apiBaseUrl with a query", lambda: call(
        fit({"app.apiBaseUrl": "https://api.atlassian.com/ex/confluence/x?redirect=evil"}))),
    ("invalid_claim", "exp as float", lambda: call(fit({"exp": NOW + 55.0}))),
    ("invalid_claim", "exp before iat", lambda: call(fit({"iat": NOW, "exp": NOW - 1}))),
    ("invalid_claim", "environment.type 'prod'", lambda: call(fit({"app.environment.type": "prod"}))),
    ("invalid_claim", "environment.type lower case", lambda: call(
        fit({"app.environment.type": "production"}))),
    ("invalid_claim", "app is a string", lambda: call(fit({"app": APP_ID}))),
    ("invalid_claim", "app.id not an ARI", lambda: call(fit({"app.id": APP_ID.removeprefix("ari:")}))),
    ("invalid_claim", "principal with a space", lambda: call(fit({"principal": "557058 admin"}))),
    ("invalid_claim", "context.cloudId with a slash", lambda: call(fit({"context.cloudId": "../x"}))),
    ("invalid_claim", "context.siteUrl over http", lambda: call(
        fit({"context.siteUrl": "http://acme.atlassian.net"}))),
    ("invalid_claim", "aud is a number", lambda: call(fit({"aud": 5}))),
    ("invalid_claim", "module key with a newline", lambda: call(fit({"app.module.key": "a\nb"}))),
    ("lifetime_too_long", "two hours", lambda: call(
        fit({"iat": NOW - 5, "nbf": NOW - 5, "exp": NOW + 7195}))),
    ("lifetime_too_long", "milliseconds", lambda: call(
        fit({"iat": NOW * 1000, "nbf": NOW * 1000, "exp": NOW * 1000 + 60_000}))),
    ("expired", "just past the leeway", lambda: call(
        fit({"iat": NOW - 90, "nbf": NOW - 90, "exp": NOW - 30}))),
    ("expired", "an hour ago", lambda: call(fit({"iat": NOW - 3660, "nbf": NOW - 3660, "exp": NOW - 3600}))),
    ("not_yet_valid", "iat in the future", lambda: call(fit({"iat": NOW + 31, "nbf": NOW + 31,
                                                             "exp": NOW + 90}))),
    ("not_yet_valid", "nbf in the future", lambda: call(fit({"nbf": NOW + 31}))),
    ("wrong_audience", "aud is another app", lambda: call(
        fit({"aud": OTHER_APP_ID, "app.id": OTHER_APP_ID}))),
    ("wrong_audience", "app.id differs from aud", lambda: call(fit({"app.id": OTHER_APP_ID}))),
    ("wrong_audience", "aud list without this app", lambda: call(fit({"aud": [OTHER_APP_ID]}))),
    ("wrong_audience", "no app id configured", lambda: call(fit(), app_ids=())),
    ("context_mismatch", "module key differs from the route's", lambda: call(
        fit(), ForgeExpectation(module_key="another-macro"))),
    ("context_mismatch", "environment type differs", lambda: call(
        fit(), ForgeExpectation(environment="DEVELOPMENT"))),
    ("context_mismatch", "environment id differs", lambda: call(
        fit({"app.environment.type": "DEVELOPMENT"}), ForgeExpectation(environment=ENV_ID + "0"))),
    ("context_mismatch", "cloudId differs from the installation's", lambda: call(
        fit({"context.cloudId": OTHER_CLOUD_ID}), installations=installed())),
    ("context_mismatch", "apiBaseUrl's cloudId differs (no context)", lambda: call(
        fit({"context": DROP, "app.apiBaseUrl": f"https://api.atlassian.com/ex/confluence/{OTHER_CLOUD_ID}"}),
        installations=installed())),
    ("inactive_install", "the lookup says uninstalled", lambda: call(
        fit(), installations=installed(active=False))),
    ("inactive_install", "an event for an uninstalled installation", lambda: call(
        fit({"principal": DROP}), ForgeExpectation(invocation="event"),
        installations=installed(active=False))),
    ("inactive_install", "a trigger for an uninstalled installation", lambda: call(
        fit({"principal": DROP}), ForgeExpectation(invocation="trigger"),
        installations=installed(active=False))),
]

#: Codes that belong to Connect tokens only: the Forge verifier never raises them.
CONNECT_ONLY = {"qsh_mismatch", "context_qsh_not_allowed", "issuer_mismatch", "replayed"}


def _pem_lines() -> list[str]:
    lines = []
    for pem in (forge_key().public_pem, forge_key().private_pem, other_key().private_pem):
        lines += [line for line in pem.splitlines() if line and "-----" not in line]
    return lines


@pytest.mark.parametrize(("code", "case", "build"), CASES, ids=[f"{c}: {i}" for c, i, _ in CASES])
def test_each_rejection_raises_its_one_code(code, case, build):
    attempt = build()
    with pytest.raises(errors.TokenRejected) as caught:
        attempt.run()
    exc = caught.value
    assert exc.code == code, exc.detail
    assert type(exc) is errors.rejection_for(code)
    detail = exc.detail
    assert detail and len(detail) < 400
    assert "BEGIN" not in detail and "PRIVATE" not in detail
    assert not any(line in detail for line in _pem_lines())
    token = attempt.token
    if isinstance(token, str) and token.count(".") >= 2:
        signature = signature_of(token)
        if len(signature) >= 16:
            assert signature not in detail
        assert token not in detail


def test_every_forge_rejection_code_has_a_case():
    assert {code for code, _, _ in CASES} == set(errors.REJECTION_CODES) - CONNECT_ONLY


def test_a_flood_of_forged_tokens_never_reaches_the_installation_lookup():
    lookup = installed()
    v = verifier(installations=lookup)
    for token in (fit(key=other_key()), _edited_after_signing(), _pem_hs256(), fit(kid="unknown")):
        with pytest.raises(errors.TokenRejected):
            v.verify(token)
    assert lookup.asked == []


# --------------------------------------------------------------------------- acceptance


def test_accepts_a_fit_and_reads_every_field():
    token = fit()
    lookup = installed()
    v = verify(token, installations=lookup)
    assert lookup.asked == [INSTALLATION_ID]
    assert v.app_id == APP_ID
    assert v.installation_id == INSTALLATION_ID
    assert v.api_base_url == API_BASE_URL
    assert v.environment_type == "PRODUCTION"
    assert v.environment_id == ENV_ID
    assert v.module_key == MODULE_KEY
    assert v.module_type == "xen:macro"
    assert v.app_version == "2.0.0"
    assert v.principal == PRINCIPAL
    assert v.cloud_id == CLOUD_ID
    assert v.site_url == SITE_URL
    assert v.expires_at == NOW + 55
    assert v.header == {"alg": "RS256", "typ": "JWT", "kid": KID}
    assert v.claims == fit_claims()
    assert v.fingerprint == token_fingerprint(token)
    assert FINGERPRINT.fullmatch(v.fingerprint)
    assert v.token_hash == hashlib.sha256(token.rsplit(".", 1)[0].encode()).hexdigest()


def test_summary_and_repr_never_carry_the_token_or_signature():
    token = fit()
    v = verify(token)
    summary = v.summary()
    assert summary == {
        "iss": "forge/invocation-token", "aud": APP_ID, "iat": NOW - 5, "exp": NOW + 55,
        "installation_id": INSTALLATION_ID, "cloud_id": CLOUD_ID, "site_url": SITE_URL,
        "api_base_url": API_BASE_URL, "environment": "PRODUCTION", "environment_id": ENV_ID,
        "module_key": MODULE_KEY, "module_type": "xen:macro", "app_version": "2.0.0",
        "principal": PRINCIPAL,
    }  # fmt: skip
    head, claims, signature = token.split(".")
    for text in (json.dumps(summary), repr(v)):
        assert signature not in text and claims not in text and head not in text
        assert signature[:20] not in text
    assert "claims=" not in repr(v) and "header=" not in repr(v)


def test_fingerprint_differs_per_token():
    a, b = verify(fit()), verify(fit({"jti": "another-jti"}))
    assert FINGERPRINT.fullmatch(a.fingerprint) and FINGERPRINT.fullmatch(b.fingerprint)
    assert a.fingerprint != b.fingerprint and a.token_hash != b.token_hash


def test_older_tokens_carry_app_version():
    v = verify(fit({"app.appVersion": DROP, "app.version": "1.4.0"}))
    assert v.app_version == "1.4.0"
    assert verify(fit({"app.appVersion": DROP})).app_version is None


def test_without_context_the_cloud_id_comes_from_api_base_url():
    v = verify(fit({"context": DROP, "app.apiBaseUrl": API_BASE_URL + "/"}))
    assert v.cloud_id == CLOUD_ID
    assert v.site_url is None
    assert v.api_base_url == API_BASE_URL  # the trailing slash is dropped
    other = verify(fit({"context": DROP, "app.apiBaseUrl": "https://api.example.com/graphql"}))
    assert other.cloud_id is None


def test_http_api_base_url_only_for_configured_hosts():
    url = "http://127.0.0.1:8080/ex/confluence/local-cloud"
    v = verify(fit({"app.apiBaseUrl": url, "context": DROP}), http_api_hosts=["127.0.0.1"])
    assert v.api_base_url == url and v.cloud_id == "local-cloud"
    with pytest.raises(errors.InvalidClaim):
        verify(fit({"app.apiBaseUrl": "http://10.0.0.1/ex/confluence/x"}), http_api_hosts=["127.0.0.1"])


def test_principal_is_optional_unless_the_route_requires_it():
    assert verify(fit({"principal": DROP})).principal is None  # an event: no user
    assert verify(fit(), ForgeExpectation(principal="required")).principal == PRINCIPAL


def test_a_route_matching_the_token_accepts_it():
    for expect in (
        ForgeExpectation(module_key=MODULE_KEY),
        ForgeExpectation(environment="PRODUCTION"),
        ForgeExpectation(environment=ENV_ID),
        ForgeExpectation(invocation="event", module_key=MODULE_KEY, environment="PRODUCTION"),
    ):
        assert verify(fit(), expect).module_key == MODULE_KEY


def test_installation_lookup_accepts_known_active_and_never_seen():
    assert verify(fit(), installations=installed()).installation_id == INSTALLATION_ID
    assert verify(fit(), installations=Installations()).installation_id == INSTALLATION_ID
    # A known installation without a recorded site cannot mismatch.
    assert verify(fit({"context.cloudId": OTHER_CLOUD_ID}), installations=installed(cloud_id=None))


def test_a_lifecycle_event_may_reach_an_uninstalled_installation():
    # avi:forge:installed:app is what makes a reinstalled installation active again.
    lookup = installed(active=False)
    v = verify(fit({"principal": DROP}), ForgeExpectation(invocation="lifecycle"), installations=lookup)
    assert v.installation_id == INSTALLATION_ID and lookup.asked == [INSTALLATION_ID]
    with pytest.raises(errors.ContextMismatch):  # the site check still applies
        verify(fit({"context.cloudId": OTHER_CLOUD_ID}), ForgeExpectation(invocation="lifecycle"),
               installations=lookup)


def test_audience_may_be_a_list_and_several_apps_may_be_configured():
    assert verify(fit({"aud": [OTHER_APP_ID, APP_ID]})).app_id == APP_ID
    v = verifier(app_ids=[APP_ID, OTHER_APP_ID])
    assert v.verify(fit({"aud": OTHER_APP_ID, "app.id": OTHER_APP_ID})).app_id == OTHER_APP_ID


@pytest.mark.parametrize(
    "changes",
    [
        {"iat": NOW - 85, "nbf": NOW - 85, "exp": NOW - 29},  # expired within the leeway
        {"iat": NOW + 30, "nbf": NOW + 30, "exp": NOW + 90},  # issued within the leeway
        {"iat": NOW - 5, "nbf": NOW - 5, "exp": NOW - 5 + 3600},  # lifetime at the cap
        {"nbf": DROP},
    ],
    ids=["expired within leeway", "issued within leeway", "lifetime at the cap", "no nbf"],
)
def test_time_boundaries_accepted(changes):
    assert verify(fit(changes)).installation_id == INSTALLATION_ID


def test_one_verifier_serves_many_tokens_and_asks_the_source_each_time():
    source = keys()
    v = verifier(keys=source)
    for i in range(5):
        v.verify(fit({"jti": f"jti-{i}"}))
    assert source.calls == {KID: 5}


def test_the_clock_is_the_injected_one():
    t = [NOW]
    v = verifier(clock=lambda: t[0])
    token = fit()
    v.verify(token)
    t[0] = NOW + 55 + 30
    with pytest.raises(errors.TokenExpired):
        v.verify(token)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "app_id",
    ["my-forge-app", APP_ID.removeprefix("ari:"), "ari:cloud:ecosystem::app/", INSTALLATION_ID,
     APP_ID + "/extra", " " + APP_ID],
)
def test_a_non_ari_app_id_is_a_configuration_error(app_id):
    with pytest.raises(errors.ConfigurationError, match="ARI"):
        ForgeVerifier([APP_ID, app_id], keys=keys())


def test_a_verifier_takes_any_iterable_of_ari_app_ids():
    assert ForgeVerifier(iter([APP_ID, APP_ID]), keys=None).app_ids == frozenset({APP_ID})


def test_expectation_refuses_unknown_values():
    with pytest.raises(ValueError, match="invocation"):
        ForgeExpectation(invocation="webhook")
    with pytest.raises(ValueError, match="principal"):
        ForgeExpectation(principal="absent")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- deliveries

EVENT = {
    "eventType": "avi:confluence:created:page",
    "page": {"id": "98765", "title": "Q3 plan", "space": {"key": "ENG"}},
    "atlassianId": PRINCIPAL,
}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (None, 0),
        ({}, 0),
        (EVENT, 0),
        ({**EVENT, "retryContext": {"retryCount": 2, "retryReason": "FUNCTION_ERROR"}}, 2),
        ({"payload": {**EVENT, "retryContext": {"retryCount": 3}}}, 3),
        ({"retryContext": {"retryCount": 0}}, 0),
        ({"retryContext": {"retryCount": 99}}, 99),
        ({"retryContext": {"retryCount": 1}, "payload": {"retryContext": {"retryCount": 3}}}, 1),
    ],
    ids=["None", "empty", "first delivery", "top level", "under payload", "zero", "99", "top level first"],
)
def test_retry_count(body, expected):
    assert retry_count(body) == expected


@pytest.mark.parametrize(
    "body",
    [
        {"retryContext": {"retryCount": "2"}},
        {"retryContext": {"retryCount": 2.0}},
        {"retryContext": {"retryCount": True}},
        {"retryContext": {"retryCount": -1}},
        {"retryContext": {"retryCount": 100}},
        {"retryContext": {"retryCount": None}},
        {"retryContext": {"retryCount": [2]}},
        {"retryContext": {}},
        {"retryContext": 2},
        {"retryContext": "retryCount=2"},
        {"payload": "retryCount"},
        {"payload": {"retryContext": {"retryCount": 10**30}}},
        [{"retryContext": {"retryCount": 2}}],
        "retryCount: 2",
    ],
)
def test_retry_count_bad_types_are_zero(body):
    assert retry_count(body) == 0


def test_delivery_key_is_equal_across_retries():
    first = delivery_key(INSTALLATION_ID, EVENT)
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    retries = [
        {**EVENT, "retryContext": {"retryCount": 1, "retryReason": "FUNCTION_ERROR"}},
        {**EVENT, "retryContext": {"retryCount": 4, "retryData": {"attempt": "x"}}},
        dict(reversed(list({**EVENT, "retryContext": {"retryCount": 2}}.items()))),  # member order
    ]
    for body in retries:
        assert delivery_key(INSTALLATION_ID, body) == first
    wrapped = {"payload": EVENT}
    wrapped_retry = {"payload": {**EVENT, "retryContext": {"retryCount": 3}}}
    assert delivery_key(INSTALLATION_ID, wrapped) == delivery_key(INSTALLATION_ID, wrapped_retry)


def test_delivery_key_differs_across_installations_and_bodies():
    base = delivery_key(INSTALLATION_ID, EVENT)
    assert delivery_key(OTHER_INSTALLATION_ID, EVENT) != base
    other_page = {**EVENT, "page": {**EVENT["page"], "id": "98766"}}
    assert delivery_key(INSTALLATION_ID, other_page) != base
    other_event = {**EVENT, "eventType": "avi:confluence:updated:page"}
    assert delivery_key(INSTALLATION_ID, other_event) != base
    assert delivery_key(INSTALLATION_ID, None) == delivery_key(INSTALLATION_ID, {}) != base


# --------------------------------------------------------------------------- product tokens


def _product_jwt(**claims: Any) -> str:
    return hs256({"alg": "HS256", "typ": "JWT"}, {"sub": "app-user", **claims}, "not-our-secret")


def test_product_token_reads_exp():
    value = _product_jwt(exp=NOW + 7200)
    token = product_token("system", value)
    assert token is not None
    assert token.kind == "system"
    assert token.value == value
    assert token.expires_at == NOW + 7200
    assert token.fingerprint == token_fingerprint(value) and FINGERPRINT.fullmatch(token.fingerprint)
    assert value not in repr(token) and signature_of(value) not in repr(token)


@pytest.mark.parametrize("prefix", ["Bearer ", "bearer ", "BEARER   ", "  Bearer "])
def test_product_token_strips_a_bearer_prefix(prefix):
    value = _product_jwt(exp=NOW + 60)
    token = product_token("user", prefix + value + " ")
    assert token is not None and token.value == value and token.kind == "user"
    assert token.expires_at == NOW + 60
    assert token.fingerprint == token_fingerprint(value)


def test_product_token_expired():
    token = product_token("system", _product_jwt(exp=NOW + 60))
    assert token is not None
    assert not token.expired(NOW)
    assert not token.expired(NOW + 59.9)
    assert token.expired(NOW + 60)
    assert token.expired(NOW + 3600)


@pytest.mark.parametrize(
    "value",
    [
        "opaque-token-abc123",
        "a.b.c",
        _product_jwt(),  # no exp
        _product_jwt(exp=float(NOW + 60)),
        _product_jwt(exp=True),
        _product_jwt(exp=str(NOW + 60)),
    ],
    ids=["opaque", "three junk parts", "no exp", "float exp", "bool exp", "string exp"],
)
def test_product_token_without_a_readable_exp_never_expires(value):
    token = product_token("system", value)
    assert token is not None and token.value == value
    assert token.expires_at is None
    assert not token.expired(NOW + 10**9)


def test_product_tokens_larger_than_a_fit_are_still_read():
    value = _product_jwt(exp=NOW + 60, scopes="read:confluence-content.all " * 400)
    assert 8192 < len(value) < 16 * 1024
    token = product_token("system", value)
    assert token is not None and token.expires_at == NOW + 60


@pytest.mark.parametrize("value", [None, "", "   "])
def test_no_product_token(value):
    assert product_token("system", value) is None


# --------------------------------------------------------------------------- the request


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc.def.ghi", "abc.def.ghi"),
        ("  BEARER   abc.def.ghi  ", "abc.def.ghi"),
        ("Bearer", None),
        ("Bearer    ", None),
        ("JWT abc.def.ghi", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearerabc.def.ghi", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_bearer(header, expected):
    assert extract_bearer(header) == expected


def test_extract_bearer_then_verify():
    token = fit()
    assert verify(extract_bearer(f"Bearer {token}")).installation_id == INSTALLATION_ID


@pytest.mark.parametrize("path", ["app.apiBaseUrl", "context.siteUrl"])
def test_an_unparsable_url_claim_is_an_invalid_claim(path):
    with pytest.raises(errors.InvalidClaim):
        verify(fit({path: "https://[api.atlassian.com/ex/confluence/x"}))
