"""Strict token verification: every rejection code, the adversarial set, properties, vectors."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector import errors
from collector.keys import DirectoryKeySource
from collector.qsh import CONTEXT_QSH, query_string_hash
from collector.tokens import (
    Endpoint,
    InstallSecret,
    MemoryReplayGuard,
    StaticInstalls,
    TokenVerifier,
    VerifyPolicy,
    clean_pasted_token,
    extract_token,
    parse_token,
    token_fingerprint,
    token_hash,
    validate_kid,
)

NOW = 1_700_000_000
SECRET = "a-shared-secret-long-enough-for-hs256-0123456789"
CK = "tenant-client-key-1"
OFF = "tenant-disabled"
APP_BASE = "https://app.example.com/connect"  # the app's context path is /connect
URL = "/connect/items?id=1&tag=b&tag=a"  # as received by the app
LIFE_URL = "/connect/installed"
KID = "2a3b4c5d-install-key"
DROP = object()
VECTORS = json.loads((Path(__file__).parent / "vectors" / "jwt-signed-urls.json").read_text())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_json(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def hs256(header_bytes: bytes, claims_bytes: bytes, secret: str = SECRET) -> str:
    """Sign raw bytes independently of collector.signing, so odd encodings can be forged."""
    signing_input = f"{b64(header_bytes)}.{b64(claims_bytes)}"
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def rs256(header: dict, claims: dict, private_key) -> str:
    signing_input = f"{b64(raw_json(header))}.{b64(raw_json(claims))}"
    signature = private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


def request_claims(**changes) -> dict:
    claims = {
        "iss": CK,
        "sub": "557058:account-1",
        "iat": NOW - 10,
        "exp": NOW + 170,
        "qsh": query_string_hash("GET", URL, APP_BASE),
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not DROP}


def request_token(header: dict | None = None, secret: str = SECRET, **changes) -> str:
    head = {"alg": "HS256", "typ": "JWT"} if header is None else header
    return hs256(raw_json(head), raw_json(request_claims(**changes)), secret)


def lifecycle_claims(**changes) -> dict:
    claims = {
        "iss": CK,
        "aud": [APP_BASE],
        "iat": NOW - 5,
        "exp": NOW + 175,
        "qsh": query_string_hash("POST", LIFE_URL, APP_BASE),
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not DROP}


@dataclass
class World:
    key: rsa.RSAPrivateKey
    other_key: rsa.RSAPrivateKey
    keys_dir: Path
    public_pem: str

    def verifier(self, **kw) -> TokenVerifier:
        installs = StaticInstalls({CK: SECRET, OFF: InstallSecret(OFF, SECRET, False, "")})
        options = {
            "keys": DirectoryKeySource(self.keys_dir),
            "replay": MemoryReplayGuard(lambda: NOW),
            "clock": lambda: NOW,
            "app_base_url": APP_BASE,
        }
        installs = kw.pop("installs", installs)
        options.update(kw)
        return TokenVerifier(installs, **options)

    def life(self, header: dict | None = None, key=None, **changes) -> str:
        head = {"alg": "RS256", "typ": "JWT", "kid": KID} if header is None else header
        return rs256(head, lifecycle_claims(**changes), key or self.key)


def _pem(key) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys_dir = tmp_path_factory.mktemp("install-keys")
    (keys_dir / KID).write_text(_pem(key))
    (keys_dir / "not-a-pem").write_text("hello")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (keys_dir / "ec-key").write_text(_pem(ec_key))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused
    (keys_dir / "small-key").write_text(_pem(small))
    return World(key, other, keys_dir, _pem(key))


def verify(w: World, token, **kw):
    v = kw.pop("verifier", None) or w.verifier()
    return v.verify_request(token, kw.pop("method", "GET"), kw.pop("url", URL), **kw)


def verify_life(w: World, token, body_client_key: str = CK, **kw):
    v = kw.pop("verifier", None) or w.verifier()
    return v.verify_lifecycle(token, "POST", kw.pop("url", LIFE_URL), body_client_key=body_client_key)


def nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


# --------------------------------------------------------------------------- one case per code
# (code, case id, action). Every code of collector.errors appears at least once.

CASES = [
    ("missing_token", "none", lambda w: verify(w, None)),
    ("missing_token", "empty", lambda w: verify(w, "")),
    ("missing_token", "blank", lambda w: verify(w, "  \n")),
    ("missing_token", "lifecycle none", lambda w: verify_life(w, None)),
    ("too_large", "8 KiB + 1", lambda w: verify(w, "a" * 8193)),
    ("too_large", "1 MB token", lambda w: verify(w, request_token() + "A" * 1_000_000)),
    ("too_large", "custom cap", lambda w: verify(
        w, request_token(), verifier=w.verifier(policy=VerifyPolicy(max_size=64)))),
    ("malformed", "two parts", lambda w: verify(w, "eyJhIjoxfQ.eyJhIjoxfQ")),
    ("malformed", "four parts (JWE-like)", lambda w: verify(w, request_token() + ".AAAA")),
    ("malformed", "padded signature", lambda w: verify(w, request_token() + "=")),
    ("malformed", "padded header", lambda w: verify(
        w, request_token().replace(".", "=.", 1))),
    ("malformed", "standard base64 alphabet", lambda w: verify(
        w, hs256(raw_json({"alg": "HS256"}), raw_json(request_claims(iss="?>?>")))
        .replace("_", "/").replace("-", "+"))),
    ("malformed", "non-canonical last character", lambda w: verify(
        w, _noncanonical(request_token()))),
    ("malformed", "duplicate claim", lambda w: verify(w, hs256(
        raw_json({"alg": "HS256"}),
        raw_json(request_claims())[:-1] + b',"iss":"someone-else"}'))),
    ("malformed", "duplicate header member", lambda w: verify(w, hs256(
        b'{"alg":"HS256","alg":"none"}', raw_json(request_claims())))),
    ("malformed", "UTF-16 claims", lambda w: verify(w, hs256(
        raw_json({"alg": "HS256"}), json.dumps(request_claims()).encode("utf-16")))),
    ("malformed", "UTF-16-LE claims without BOM", lambda w: verify(w, hs256(
        raw_json({"alg": "HS256"}), json.dumps(request_claims()).encode("utf-16-le")))),
    ("malformed", "BOM before claims", lambda w: verify(w, hs256(
        raw_json({"alg": "HS256"}), b"\xef\xbb\xbf" + raw_json(request_claims())))),
    ("malformed", "Latin-1 claims", lambda w: verify(w, hs256(
        raw_json({"alg": "HS256"}), '{"iss":"caf\xe9"}'.encode("latin-1")))),
    ("malformed", "NaN", lambda w: verify(w, hs256(
        raw_json({"alg": "HS256"}), raw_json(request_claims())[:-1] + b',"x":NaN}'))),
    ("malformed", "Infinity", lambda w: verify(w, hs256(
        raw_json({"alg": "HS256"}), raw_json(request_claims())[:-1] + b',"x":-Infinity}'))),
    ("malformed", "1e999", lambda w: verify(w, hs256(
        raw_json({"alg": "HS256"}), raw_json(request_claims())[:-1] + b',"x":1e999}'))),
    ("malformed", "nesting 40 deep", lambda w: verify(w, request_token(x=nested(40)))),
    ("malformed", "nesting 5000 deep", lambda w: verify(w, hs256(
        raw_json({"alg": "HS256"}), b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"),
        verifier=w.verifier(policy=VerifyPolicy(max_size=20000)))),
    ("malformed", "lone surrogate", lambda w: verify(w, hs256(
        raw_json({"alg": "HS256"}), raw_json(request_claims())[:-1] + b',"x":"\\ud800"}'))),
    ("malformed", "claims are an array", lambda w: verify(w, hs256(
        raw_json({"alg": "HS256"}), b"[1,2]"))),
    ("malformed", "trailing data after JSON", lambda w: verify(w, hs256(
        raw_json({"alg": "HS256"}), raw_json(request_claims()) + b"{}"))),
    ("malformed", "whitespace inside", lambda w: verify(w, request_token().replace(".", ". ", 1))),
    ("malformed", "'JWT ' prefix left on", lambda w: verify(w, "JWT " + request_token())),
    ("malformed", "not text", lambda w: verify(w, request_token().encode())),
    ("unsupported_header", "jku", lambda w: verify(
        w, request_token({"alg": "HS256", "jku": "https://evil.example/jwks"}))),
    ("unsupported_header", "x5u", lambda w: verify(
        w, request_token({"alg": "HS256", "x5u": "https://evil.example/cert"}))),
    ("unsupported_header", "jwk", lambda w: verify(
        w, request_token({"alg": "HS256", "jwk": {"kty": "oct", "k": "AAAA"}}))),
    ("unsupported_header", "x5c", lambda w: verify(w, request_token({"alg": "HS256", "x5c": ["MII"]}))),
    ("unsupported_header", "crit", lambda w: verify(w, request_token({"alg": "HS256", "crit": ["exp"]}))),
    ("unsupported_header", "b64", lambda w: verify(w, request_token({"alg": "HS256", "b64": False}))),
    ("unsupported_header", "cty", lambda w: verify(w, request_token({"alg": "HS256", "cty": "JWT"}))),
    ("unsupported_header", "typ not JWT", lambda w: verify(
        w, request_token({"alg": "HS256", "typ": "at+jwt"}))),
    ("unsupported_header", "lifecycle jku", lambda w: verify_life(
        w, w.life({"alg": "RS256", "kid": KID, "jku": "https://evil.example/k"}))),
    ("alg_not_allowed", "alg none", lambda w: verify(
        w, f"{b64(raw_json({'alg': 'none'}))}.{b64(raw_json(request_claims()))}.")),
    ("alg_not_allowed", "alg NONE", lambda w: verify(w, request_token({"alg": "NONE"}))),
    ("alg_not_allowed", "alg HS512", lambda w: verify(w, request_token({"alg": "HS512"}))),
    ("alg_not_allowed", "alg hs256 (case)", lambda w: verify(w, request_token({"alg": "hs256"}))),
    ("alg_not_allowed", "alg as a list", lambda w: verify(w, request_token({"alg": ["HS256"]}))),
    ("alg_not_allowed", "no alg", lambda w: verify(w, request_token({"typ": "JWT"}))),
    ("alg_not_allowed", "RS256 token on a request route", lambda w: verify(w, w.life())),
    ("alg_not_allowed", "alg confusion: HS256 keyed with the public key on lifecycle",
     lambda w: verify_life(w, hs256(raw_json({"alg": "HS256", "kid": KID}),
                                    raw_json(lifecycle_claims()), w.public_pem))),
    ("alg_not_allowed", "lifecycle RS512", lambda w: verify_life(
        w, w.life({"alg": "RS512", "kid": KID}))),
    ("missing_kid", "no kid", lambda w: verify_life(w, w.life({"alg": "RS256"}))),
    ("missing_kid", "kid path traversal", lambda w: verify_life(
        w, w.life({"alg": "RS256", "kid": "../../../etc/passwd"}))),
    ("missing_kid", "kid URL", lambda w: verify_life(
        w, w.life({"alg": "RS256", "kid": "https://evil.example/key"}))),
    ("missing_kid", "kid encoded slash", lambda w: verify_life(
        w, w.life({"alg": "RS256", "kid": "a%2Fb"}))),
    ("missing_kid", "kid with a dot", lambda w: verify_life(w, w.life({"alg": "RS256", "kid": "a.pem"}))),
    ("missing_kid", "kid is a number", lambda w: verify_life(w, w.life({"alg": "RS256", "kid": 7}))),
    ("missing_kid", "kid too long", lambda w: verify_life(
        w, w.life({"alg": "RS256", "kid": "k" * 129}))),
    ("unknown_kid", "no such key", lambda w: verify_life(w, w.life({"alg": "RS256", "kid": "nope"}))),
    ("unknown_kid", "no key source", lambda w: verify_life(
        w, w.life(), verifier=w.verifier(keys=None))),
    ("unknown_kid", "not a PEM", lambda w: verify_life(
        w, w.life({"alg": "RS256", "kid": "not-a-pem"}))),
    ("unknown_kid", "EC key", lambda w: verify_life(w, w.life({"alg": "RS256", "kid": "ec-key"}))),
    ("unknown_kid", "1024-bit key", lambda w: verify_life(
        w, w.life({"alg": "RS256", "kid": "small-key"}))),
    ("unknown_issuer", "not installed", lambda w: verify(w, request_token(iss="someone-else"))),
    ("unknown_issuer", "iss differs in case", lambda w: verify(w, request_token(iss=CK.upper()))),
    ("unknown_issuer", "no install lookup", lambda w: verify(
        w, request_token(), verifier=w.verifier(installs=None))),
    ("inactive_install", "disabled tenant", lambda w: verify(w, request_token(iss=OFF))),
    ("bad_signature", "another secret", lambda w: verify(w, request_token(secret=SECRET + "x"))),
    ("bad_signature", "signature removed", lambda w: verify(w, request_token().rsplit(".", 1)[0] + ".")),
    ("bad_signature", "claims swapped", lambda w: verify(w, _swap_claims(request_token()))),
    ("bad_signature", "RS256 by another key", lambda w: verify_life(w, w.life(key=w.other_key))),
    ("missing_claim", "no exp", lambda w: verify(w, request_token(exp=DROP))),
    ("missing_claim", "no iat", lambda w: verify(w, request_token(iat=DROP))),
    ("missing_claim", "no iss", lambda w: verify(w, request_token(iss=DROP))),
    ("missing_claim", "no qsh", lambda w: verify(w, request_token(qsh=DROP))),
    ("missing_claim", "lifecycle without aud", lambda w: verify_life(w, w.life(aud=DROP))),
    ("missing_claim", "lifecycle without iss", lambda w: verify_life(w, w.life(iss=DROP))),
    ("invalid_claim", "exp is a float", lambda w: verify(w, request_token(exp=NOW + 100.0))),
    ("invalid_claim", "exp is a string", lambda w: verify(w, request_token(exp=str(NOW + 100)))),
    ("invalid_claim", "iat is true", lambda w: verify(w, request_token(iat=True))),
    ("invalid_claim", "exp before iat", lambda w: verify(w, request_token(iat=NOW, exp=NOW - 5))),
    ("invalid_claim", "iss is a number", lambda w: verify(w, request_token(iss=42))),
    ("invalid_claim", "iss with NUL", lambda w: verify(w, request_token(iss="ck\u0000"))),
    ("invalid_claim", "sub is a number", lambda w: verify(w, request_token(sub=12))),
    ("invalid_claim", "qsh is a number", lambda w: verify(w, request_token(qsh=1))),
    ("invalid_claim", "nbf is null", lambda w: verify(w, request_token(nbf=None))),
    ("invalid_claim", "aud is a number", lambda w: verify_life(w, w.life(aud=5))),
    ("lifetime_too_long", "two hours", lambda w: verify(w, request_token(iat=NOW, exp=NOW + 7200))),
    ("lifetime_too_long", "milliseconds", lambda w: verify(
        w, request_token(iat=NOW * 1000, exp=NOW * 1000 + 180_000))),
    ("expired", "an hour ago", lambda w: verify(w, request_token(iat=NOW - 3700, exp=NOW - 3600))),
    ("expired", "just past the leeway", lambda w: verify(w, request_token(iat=NOW - 200, exp=NOW - 30))),
    ("expired", "lifecycle", lambda w: verify_life(w, w.life(iat=NOW - 400, exp=NOW - 200))),
    ("not_yet_valid", "iat in the future", lambda w: verify(
        w, request_token(iat=NOW + 31, exp=NOW + 200))),
    ("not_yet_valid", "nbf in the future", lambda w: verify(w, request_token(nbf=NOW + 100))),
    ("qsh_mismatch", "another query", lambda w: verify(w, request_token(), url="/connect/items?id=2")),
    ("qsh_mismatch", "another method", lambda w: verify(w, request_token(), method="DELETE")),
    ("qsh_mismatch", "lifecycle for another path", lambda w: verify_life(
        w, w.life(), url="/connect/uninstalled")),
    ("context_qsh_not_allowed", "request route", lambda w: verify(w, request_token(qsh=CONTEXT_QSH))),
    ("context_qsh_not_allowed", "lifecycle", lambda w: verify_life(w, w.life(qsh=CONTEXT_QSH))),
    ("wrong_audience", "another app", lambda w: verify_life(w, w.life(aud=["https://evil.example"]))),
    ("wrong_audience", "prefix is not enough", lambda w: verify_life(
        w, w.life(aud=[APP_BASE + ".evil.example"]))),
    ("wrong_audience", "no app baseUrl configured", lambda w: verify_life(
        w, w.life(), verifier=w.verifier(app_base_url=None), url="/installed")),
    ("issuer_mismatch", "body names another tenant", lambda w: verify_life(
        w, w.life(), body_client_key="another-tenant")),
    ("replayed", "state-changing request", lambda w: _twice(w, lambda v, t: v.verify_request(
        t, "GET", URL, state_changing=True), request_token())),
    ("replayed", "lifecycle callback", lambda w: _twice(w, lambda v, t: v.verify_lifecycle(
        t, "POST", LIFE_URL, body_client_key=CK), w.life())),
]


def _noncanonical(token: str) -> str:
    head, claims, sig = token.split(".")
    # 43 characters encode 32 bytes with 2 unused bits: setting one changes the text only.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    index = alphabet.index(sig[-1])
    return f"{head}.{claims}.{sig[:-1]}{alphabet[index ^ 1]}"


def _swap_claims(token: str) -> str:
    other = request_token(sub="someone-else")
    head, _, sig = token.split(".")
    return f"{head}.{other.split('.')[1]}.{sig}"


def _twice(w: World, call, token):
    v = w.verifier()
    call(v, token)  # the first use is accepted
    call(v, token)


@pytest.mark.parametrize(("code", "case", "action"), CASES, ids=[f"{c}: {i}" for c, i, _ in CASES])
def test_each_rejection_raises_its_one_code(world, code, case, action):
    with pytest.raises(errors.TokenRejected) as caught:
        action(world)
    assert caught.value.code == code, caught.value.detail
    assert type(caught.value) is errors.rejection_for(code)
    detail = caught.value.detail
    assert SECRET not in detail and "BEGIN" not in detail
    assert detail and len(detail) < 400


def test_every_rejection_code_has_a_case():
    # context_mismatch exists only for Forge tokens (tests/test_forge.py has a case for it)
    assert {code for code, _, _ in CASES} == set(errors.REJECTION_CODES) - {"context_mismatch"}
    assert len(errors.REJECTION_CODES) == 21


def test_the_signature_never_appears_in_a_rejection(world):
    token = request_token()
    signature = token.rsplit(".", 1)[1]
    for url in ("/connect/items?id=2", f"/connect/x?jwt={token}"):
        with pytest.raises(errors.QshMismatch) as caught:
            verify(world, token, url=url)
        assert signature not in caught.value.detail


# --------------------------------------------------------------------------- acceptance


def test_accepts_a_request_token(world):
    token = request_token()
    verified = verify(world, token)
    assert verified.client_key == CK
    assert verified.account_id == "557058:account-1"
    assert verified.qsh_kind == "computed"
    assert verified.install.client_key == CK and verified.install.active
    assert verified.fingerprint == token_fingerprint(token)
    assert verified.fingerprint.startswith("sha256:") and len(verified.fingerprint) == 7 + 32
    signing_input = token.rsplit(".", 1)[0].encode()
    assert verified.token_hash == hashlib.sha256(signing_input).hexdigest()
    assert verified.summary() == {
        "iss": CK, "sub": "557058:account-1", "iat": NOW - 10, "exp": NOW + 170,
        "qsh_kind": "computed",
    }  # fmt: skip
    assert SECRET not in repr(verified)


@pytest.mark.parametrize(
    ("iat", "exp"),
    [(NOW - 100, NOW - 29), (NOW + 30, NOW + 200), (NOW, NOW + 3600), (NOW - 5, NOW - 5 + 1)],
    ids=["expired within leeway", "issued within leeway", "lifetime at the cap", "one second"],
)
def test_time_boundaries_accepted(world, iat, exp):
    verify(world, request_token(iat=iat, exp=exp))


def test_nbf_within_leeway_is_accepted(world):
    verify(world, request_token(nbf=NOW + 30))


def test_context_tokens_only_on_context_routes(world):
    context_token = request_token(qsh=CONTEXT_QSH)
    verified = verify(world, context_token, endpoint=Endpoint.CONTEXT)
    assert verified.qsh_kind == "context"
    # A context route also takes a token made for its exact request.
    assert verify(world, request_token(), endpoint="context").qsh_kind == "computed"
    with pytest.raises(errors.ContextQshNotAllowed):
        verify(world, context_token, endpoint="request")


def test_replay_is_checked_only_on_state_changing_requests(world):
    v = world.verifier()
    token = request_token()
    for _ in range(3):
        v.verify_request(token, "GET", URL)  # reads may repeat (iframes reload)
    v.verify_request(token, "GET", URL, state_changing=True)
    with pytest.raises(errors.Replayed):
        v.verify_request(token, "GET", URL, state_changing=True)


def test_replay_guard_forgets_expired_entries():
    now = [NOW]
    guard = MemoryReplayGuard(lambda: now[0])
    from datetime import UTC, datetime

    expires = datetime.fromtimestamp(NOW + 60, UTC)
    assert guard.first_use("iss", "h", expires)
    assert not guard.first_use("iss", "h", expires)
    assert guard.first_use("other-iss", "h", expires)  # keyed by issuer and hash
    now[0] = NOW + 61
    assert guard.first_use("iss", "h", datetime.fromtimestamp(NOW + 200, UTC))


def test_app_context_path_is_stripped(world):
    token = request_token()
    # The app at https://app.example.com/connect receives /connect/items...; the host hashed
    # /items..., so a verifier without the baseUrl's path would reject it.
    verify(world, token)
    with pytest.raises(errors.QshMismatch) as caught:
        verify(world, token, verifier=world.verifier(app_base_url="https://app.example.com"))
    assert caught.value.diagnosis.matched_mistake == "base_path_stripped"


def test_qsh_mismatch_carries_the_diagnosis(world):
    token = request_token(qsh=query_string_hash("GET", "/connect/items?id=1&tag=b&tag=a"))
    with pytest.raises(errors.QshMismatch) as caught:
        verify(world, token)
    assert caught.value.diagnosis.matched_mistake == "base_path_included"
    assert "base_path_included" in caught.value.detail


def test_accepts_a_lifecycle_callback(world):
    verified = verify_life(world, world.life())
    assert verified.client_key == CK
    assert verified.header["kid"] == KID
    assert verified.install is not None  # the tenant is known to the lookup here
    # aud may be a single string, and the baseUrl may differ by a trailing slash.
    verify_life(world, world.life(aud=APP_BASE + "/"))


def test_verify_signature_and_claims_skips_only_the_request_checks(world):
    v = world.verifier()
    v.verify_signature_and_claims(request_token(qsh="anything"))
    with pytest.raises(errors.BadSignature):
        v.verify_signature_and_claims(request_token(secret="nope"))
    with pytest.raises(errors.ContextQshNotAllowed):
        v.verify_signature_and_claims(request_token(qsh=CONTEXT_QSH))
    v.verify_signature_and_claims(world.life(), endpoint="lifecycle")
    with pytest.raises(errors.IssuerMismatch):
        v.verify_signature_and_claims(world.life(), endpoint="lifecycle", body_client_key="x")


def test_misuse_of_the_api_is_a_programming_error(world):
    v = world.verifier()
    with pytest.raises(TypeError):
        v.verify_request(request_token(), None, URL)
    with pytest.raises(ValueError, match="verify_lifecycle"):
        v.verify_request(request_token(), "GET", URL, endpoint="lifecycle")


@pytest.mark.parametrize("case", VECTORS["tests"], ids=lambda c: c["name"])
def test_interop_vectors_verify(case):
    verifier = TokenVerifier(
        StaticInstalls({"jira:1234-5678-9000": VECTORS["secret"]}), clock=lambda: 1392204500
    )
    token = case["signedUrl"].split("jwt=", 1)[1]
    if case["name"] == "BasePath RFC3986 Subdelimiters":  # signed before the %26 rule
        with pytest.raises(errors.QshMismatch):
            verifier.verify_request(token, "GET", case["signedUrl"])
        return
    verified = verifier.verify_request(token, "GET", case["signedUrl"])
    assert verified.client_key == "jira:1234-5678-9000"
    assert verified.account_id == "123456789"


# --------------------------------------------------------------------------- parts


def test_parse_token_keeps_the_signature_out_of_its_repr():
    parsed = parse_token(request_token())
    assert parsed.header == {"alg": "HS256", "typ": "JWT"}
    assert parsed.claims["iss"] == CK
    assert b64(parsed.signature) not in repr(parsed)
    assert token_hash(parsed) == hashlib.sha256(parsed.signing_input).hexdigest()


def test_install_secret_and_static_installs_hide_the_secret():
    install = InstallSecret(CK, SECRET, True, "https://x.atlassian.net/wiki")
    assert SECRET not in repr(install)
    assert SECRET not in repr(StaticInstalls({CK: SECRET}))


@pytest.mark.parametrize("kid", ["abc", "0e50fccb-239d-4991-a5db-dc850ba3f236", "K_1", "a" * 128])
def test_validate_kid_accepts_strict_kids(kid):
    assert validate_kid(kid) == kid


@pytest.mark.parametrize(
    "kid", [None, "", "../x", "a/b", "a\\b", ".hidden", "a.b", "a%2e", "-lead", "a b", "é", 1, "a" * 129]
)
def test_validate_kid_refuses_everything_else(kid):
    with pytest.raises(errors.MissingKid):
        validate_kid(kid)


@pytest.mark.parametrize(
    ("header", "query", "expected"),
    [
        ("JWT abc.def.ghi", None, "abc.def.ghi"),
        ("jwt   abc.def.ghi  ", None, "abc.def.ghi"),
        ("Bearer xyz", "jwt=abc.def.ghi", "abc.def.ghi"),
        (None, "a=1&jwt=abc.def.ghi&b=2", "abc.def.ghi"),
        (None, "jwt=abc%2Edef.ghi", "abc.def.ghi"),
        ("JWT ", None, None),
        (None, "jwtx=1&xjwt=2", None),
        (None, None, None),
    ],
)
def test_extract_token(header, query, expected):
    assert extract_token(header, query) == expected


@pytest.mark.parametrize(
    "pasted",
    [
        "TOKEN",
        "  TOKEN\n",
        '"TOKEN"',
        "'JWT TOKEN'",
        "Bearer TOKEN",
        "Authorization: JWT TOKEN",
        '"TOKEN",',
        "https://app.example.com/page?x=1&jwt=TOKEN&y=2",
        "TOK\nEN",
        "`TOKEN`",
    ],
)
def test_clean_pasted_token(pasted):
    token = "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln"
    assert clean_pasted_token(pasted.replace("TOK\nEN", token[:10] + "\n" + token[10:])
                              .replace("TOKEN", token)) == token


# --------------------------------------------------------------------------- properties
# Verification is total: for any input it accepts or raises one TokenRejected, quickly.

_BOUND = settings(
    max_examples=300,
    deadline=timedelta(milliseconds=500),  # per call ~0.1 ms: generous for loaded CI
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _only_rejections(call) -> None:
    with contextlib.suppress(errors.TokenRejected):
        call()


@_BOUND
@given(st.text(max_size=400))
def test_any_text_is_accepted_or_rejected_by_code(world, text):
    v = world.verifier()
    _only_rejections(lambda: v.verify_request(text, "GET", URL, state_changing=True))
    _only_rejections(lambda: v.verify_lifecycle(text, "POST", LIFE_URL, body_client_key=CK))


@pytest.mark.slow
@_BOUND
@given(st.lists(st.tuples(st.integers(min_value=0), st.sampled_from("dir"), st.characters()),
                min_size=1, max_size=4))
def test_every_edit_of_a_valid_token_is_rejected(world, edits):
    token = request_token()
    mutated = token
    for position, kind, char in edits:
        i = position % (len(mutated) + 1)
        if kind == "d":
            mutated = mutated[:i] + mutated[i + 1 :]
        elif kind == "i":
            mutated = mutated[:i] + char + mutated[i:]
        else:
            mutated = mutated[:i] + char + mutated[i + 1 :]
    v = world.verifier()
    if mutated == token:
        v.verify_request(mutated, "GET", URL)
        return
    with pytest.raises(errors.TokenRejected):
        v.verify_request(mutated, "GET", URL)


@pytest.mark.slow
@settings(_BOUND, max_examples=150)
@given(st.dictionaries(st.text(max_size=10), _JSON, max_size=6), st.dictionaries(
    st.sampled_from(["iss", "sub", "iat", "exp", "nbf", "qsh", "aud"]), _JSON, max_size=7))
def test_any_signed_header_and_claims_are_accepted_or_rejected_by_code(world, header, claims):
    v = world.verifier()
    token = hs256(raw_json({"alg": "HS256", **header}), raw_json(claims))
    _only_rejections(lambda: v.verify_request(token, "GET", URL, endpoint="context"))


def test_redact_jwt_params_hides_every_token_in_a_line():
    from collector.tokens import redact_jwt_params

    line = '"GET /page?a=1&jwt=eyJ.abc.def&b=2 HTTP/1.1" 200 -; retry /p?jwt=x.y.z'
    redacted = redact_jwt_params(line)
    assert "eyJ.abc.def" not in redacted and "x.y.z" not in redacted
    assert redacted == '"GET /page?a=1&jwt=<redacted>&b=2 HTTP/1.1" 200 -; retry /p?jwt=<redacted>'
    assert redact_jwt_params("/page?notjwt=keep&ajwt=keep") == "/page?notjwt=keep&ajwt=keep"
