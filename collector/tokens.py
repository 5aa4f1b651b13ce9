"""Strict verification of the JWTs an Atlassian host sends to a Connect app.

Three kinds of token reach an app, each with one pinned algorithm:

- **request** tokens (HS256, the install's shared secret, ``qsh`` of the request),
- **context** tokens (HS256, ``qsh = "context-qsh"``, only on routes declared for them),
- **lifecycle** callbacks ``installed``/``uninstalled``/``enabled``/``disabled`` (RS256,
  signed by Atlassian with the key named by ``kid``, ``aud`` = the app's baseUrl).

Every refusal raises exactly one :class:`collector.errors.TokenRejected` subclass whose
``code`` is the stored, printed, public reason; nothing else escapes for any token text.
The parsing is our own and stricter than general JWT libraries on purpose: a size cap
before any decoding, three canonical unpadded base64url segments, strict UTF-8 JSON
objects with no duplicate names, no NaN/Infinity, no lone surrogates and bounded nesting.
Header parameters that carry or point at keys (``jku``, ``x5u``, ``jwk``, ``x5c``) or
change processing (``crit``, ``b64``, ``cty``) are refused, never followed.

The module is pure: the clock, the install lookup, the replay guard and the lifecycle key
source are injected, so it runs the same in the middleware, the CLI and the dashboard.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import unquote

from collector import errors
from collector.qsh import CONTEXT_QSH, context_path, diagnose, query_string_hash

# --------------------------------------------------------------------------- vocabulary


class Endpoint(StrEnum):
    """The kind of route a token arrives at; it decides the algorithm and what qsh may be."""

    REQUEST = "request"
    CONTEXT = "context"
    LIFECYCLE = "lifecycle"
    FORGE = "forge"  # a Forge Invocation Token (see collector.forge)


#: The one algorithm accepted per endpoint kind, compared exactly.
PINNED_ALGORITHM = {
    Endpoint.REQUEST: "HS256",
    Endpoint.CONTEXT: "HS256",
    Endpoint.LIFECYCLE: "RS256",
    Endpoint.FORGE: "RS256",
}

#: Header parameters that are refused: they point at keys or change how the JWS is read.
REFUSED_HEADERS = ("crit", "b64", "cty", "jku", "x5u", "jwk", "x5c", "zip", "enc")

_MAX_DEPTH = 16
_MAX_TEXT_CLAIM = 255  # iss and sub are stored and used as keys: keep them bounded
_KID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_B64_VALUE = {c: i for i, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
)}
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PAD = (b"", b"", b"==", b"=")  # by length % 4 (1 is refused before decoding)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class VerifyPolicy:
    """Limits applied to every token: size before decoding, clock leeway, lifetime cap."""

    max_size: int = 8192
    leeway: int = 30
    max_lifetime: int = 3600


@dataclass(frozen=True)
class InstallSecret:
    """What verification needs to know of an install; the secret never shows in a repr."""

    client_key: str
    shared_secret: str = field(repr=False)
    active: bool
    base_url: str


@runtime_checkable
class InstallLookup(Protocol):
    def install_secret(self, client_key: str) -> InstallSecret | None:
        """The install whose clientKey is exactly ``client_key``, or None."""


@runtime_checkable
class ReplayGuard(Protocol):
    def first_use(self, iss: str, token_hash: str, expires_at: datetime) -> bool:
        """Atomically record (iss, token_hash) until ``expires_at``; False if already seen."""


@runtime_checkable
class KeySource(Protocol):
    def public_key(self, kid: str) -> str:
        """The PEM public key for ``kid``; raises :class:`collector.errors.UnknownKid`."""


class StaticInstalls:
    """An :class:`InstallLookup` over a fixed mapping ``{clientKey: sharedSecret}``.

    Used by ``connect-audit token inspect --installs``, the tests and the benchmark. Values
    may also be :class:`InstallSecret` objects (to mark an install inactive, say).
    """

    def __init__(self, installs: Mapping[str, str | InstallSecret], base_url: str = "") -> None:
        self._installs: dict[str, InstallSecret] = {}
        for key, value in installs.items():
            if isinstance(value, InstallSecret):
                self._installs[key] = value
            else:
                self._installs[key] = InstallSecret(key, value, True, base_url)

    def install_secret(self, client_key: str) -> InstallSecret | None:
        return self._installs.get(client_key)

    def __repr__(self) -> str:
        return f"StaticInstalls({sorted(self._installs)!r})"


class MemoryReplayGuard:
    """A :class:`ReplayGuard` in this process's memory, for a single-process app or a tool.

    Several app instances need the store-backed guard (``collector.replay``), since a
    replay may reach another instance. Entries are dropped once expired; ``clock`` gives
    epoch seconds.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seen: dict[tuple[str, str], float] = {}
        self._prune_at = 1024
        self._lock = threading.Lock()

    def first_use(self, iss: str, token_hash: str, expires_at: datetime) -> bool:
        now = self._clock()
        with self._lock:
            if len(self._seen) >= self._prune_at:  # amortised: the threshold grows with use
                self._seen = {k: exp for k, exp in self._seen.items() if exp > now}
                self._prune_at = max(1024, 2 * len(self._seen))
            known = self._seen.get((iss, token_hash))
            if known is not None and known > now:
                return False
            self._seen[(iss, token_hash)] = expires_at.timestamp()
            return True


# --------------------------------------------------------------------------- extraction


def extract_token(authorization_header: str | None, query_string: str | None) -> str | None:
    """The token of a request: ``Authorization: JWT <token>``, else the ``jwt`` query parameter.

    Another scheme in the header (``Bearer``, ``Basic``) is not a Connect token and is
    ignored. Returns None when neither place has one.
    """
    if authorization_header:
        scheme, _, rest = authorization_header.strip().partition(" ")
        if scheme.lower() == "jwt" and rest.strip():
            return rest.strip()
    if query_string:
        for piece in query_string.split("&"):
            name, sep, value = piece.partition("=")
            if sep and name == "jwt" and value:
                return unquote(value) if "%" in value else value
    return None


_JWT_IN_URL = re.compile(r"(?:^|[?&#])jwt=([^&#\s\"']+)")
_JWT_PARAM_VALUE = re.compile(r"(?<=[?&]jwt=)[^&#\s\"']+")


def redact_jwt_params(text: str) -> str:
    """``text`` (a URL, a request line, a log message) with every ``jwt=`` value redacted.

    A page load carries its token in the query string, so any line that quotes the URL
    (an access log, an error message) would otherwise carry a bearer credential.
    """
    return _JWT_PARAM_VALUE.sub("<redacted>", text)


def clean_pasted_token(text: str) -> str:
    """Undo the usual damage of a copied token: quotes, ``JWT ``/``Bearer `` prefixes, whitespace.

    Accepts a bare token, an ``Authorization`` header line, a URL or query string with
    ``jwt=``, and tokens wrapped over several lines. Never raises; what it returns is then
    checked strictly by :func:`parse_token`.
    """
    s = text.strip()
    match = _JWT_IN_URL.search(s)
    if match:
        s = unquote(match.group(1))
    for _ in range(3):  # nested wrappers such as '"JWT eyJ..."',
        s = s.strip().rstrip(",;").strip()
        while len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"`":
            s = s[1:-1].strip()
        lowered = s.lower()
        if lowered.startswith("authorization:"):
            s = s[len("authorization:") :]
            continue
        for prefix in ("jwt ", "bearer "):
            if lowered.startswith(prefix):
                s = s[len(prefix) :]
                break
    return "".join(s.split())


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParsedToken:
    """A structurally valid compact JWS whose signature has not been checked yet."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes = field(repr=False)


class _DuplicateName(ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        names = [name for name, _ in pairs]
        dup = next(n for n in names if names.count(n) > 1)
        raise _DuplicateName(f"duplicate member {_show(dup)}")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


_JSON = json.JSONDecoder(
    object_pairs_hook=_object, parse_constant=_no_constant, parse_float=_finite_float
)


def _show(value: Any, limit: int = 40) -> str:
    """A short, printable rendering of an attacker-controlled value for a detail sentence."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _b64decode(segment: str, part: str) -> bytes:
    if len(segment) % 4 == 1 or not _B64URL.fullmatch(segment):
        raise errors.MalformedToken(f"the {part} is not unpadded base64url")
    rem = len(segment) % 4
    # Canonical form: the unused low bits of the last character must be zero, so that one
    # byte string has exactly one encoding (a re-encoded token must not verify as new).
    if (rem == 2 and _B64_VALUE[segment[-1]] & 0x0F) or (rem == 3 and _B64_VALUE[segment[-1]] & 0x03):
        raise errors.MalformedToken(f"the {part} is not canonical base64url")
    try:
        # What base64.urlsafe_b64decode does, minus its Python-level argument handling.
        return binascii.a2b_base64(segment.encode("ascii").translate(_URLSAFE_TO_STANDARD) + _PAD[rem])
    except (binascii.Error, ValueError) as exc:  # unreachable after the checks, kept as a net
        raise errors.MalformedToken(f"the {part} is not base64url") from exc


def _check_nested(value: Any, depth: int, part: str) -> None:
    if depth > _MAX_DEPTH:
        raise errors.MalformedToken(f"the {part} nests deeper than {_MAX_DEPTH} levels")
    if isinstance(value, str):
        if not value.isascii() and _SURROGATE.search(value):
            raise errors.MalformedToken(f"the {part} contains an unpaired surrogate")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_nested(key, depth + 1, part)
            _check_nested(item, depth + 1, part)
    elif isinstance(value, list):
        for item in value:
            _check_nested(item, depth + 1, part)


def _json_object(raw: bytes, part: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")  # strict: UTF-16, Latin-1 and overlong forms fail here
        value = _JSON.decode(text)
    except UnicodeDecodeError as exc:
        raise errors.MalformedToken(f"the {part} is not UTF-8") from exc
    except _DuplicateName as exc:
        raise errors.MalformedToken(f"the {part} has a {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise errors.MalformedToken(f"the {part} is not strict JSON") from exc
    if not isinstance(value, dict):
        raise errors.MalformedToken(f"the {part} is not a JSON object")
    # Fast paths: without a \u escape no lone surrogate can exist (strict UTF-8 has none),
    # and with few brackets the nesting is bounded; typical tokens skip the walk entirely.
    if "\\u" in text or text.count("{") + text.count("[") > _MAX_DEPTH:
        _check_nested(value, 1, part)
    return value


def parse_token(token: str | None, *, max_size: int = 8192) -> ParsedToken:
    """Parse a compact JWS strictly, without checking its signature.

    Raises :class:`~collector.errors.MissingToken`, :class:`~collector.errors.TokenTooLarge`
    (checked before any decoding) or :class:`~collector.errors.MalformedToken`.
    """
    if token is None or (isinstance(token, str) and not token.strip()):
        raise errors.MissingToken("no token was given")
    if not isinstance(token, str):
        raise errors.MalformedToken("the token is not text")
    if len(token) > max_size:
        raise errors.TokenTooLarge(f"the token is {len(token)} characters; the cap is {max_size}")
    if token.count(".") != 2:
        raise errors.MalformedToken(
            f"a compact JWS has 3 dot-separated parts; this has {token.count('.') + 1}"
        )
    h64, c64, s64 = token.split(".")
    header = _json_object(_b64decode(h64, "header"), "header")
    claims = _json_object(_b64decode(c64, "claims"), "claims")
    signature = _b64decode(s64, "signature")
    return ParsedToken(header, claims, f"{h64}.{c64}".encode("ascii"), signature)


def token_fingerprint(token: str) -> str:
    """A stable, non-reversible name for a token, safe to store and show: ``sha256:<32 hex>``."""
    digest = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
    return f"sha256:{digest[:32]}"


def token_hash(parsed: ParsedToken) -> str:
    """SHA-256 (hex) of the signed part: the replay key, equal for any re-encoding of a token."""
    return hashlib.sha256(parsed.signing_input).hexdigest()


def validate_kid(kid: Any) -> str:
    """Return ``kid`` if strictly formatted (letters, digits, ``-``, ``_``; at most 128).

    The format excludes ``/``, ``.``, ``%`` and ``\\``, so a kid can never climb out of a key
    directory or change the URL it is appended to. Raises :class:`~collector.errors.MissingKid`.
    """
    if kid is None:
        raise errors.MissingKid("the header has no kid")
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise errors.MissingKid(f"the kid {_show(kid)} is not strictly formatted")
    return kid


# --------------------------------------------------------------------------- shared checks


@contextmanager
def carrying(parsed: ParsedToken) -> Iterator[None]:
    """Attach ``parsed`` to a rejection raised inside, so that whoever records the refusal
    reads the (unverified) claims without parsing the token again."""
    try:
        yield
    except errors.TokenRejected as exc:
        if exc.parsed is None:
            exc.parsed = parsed
        raise


def check_header(header: dict[str, Any], endpoint: Endpoint) -> None:
    """Refuse key-carrying or critical parameters, a typ other than JWT, and any alg but the
    one pinned for ``endpoint`` (compared exactly: ``none``, ``hs256`` and lists fail)."""
    refused = [name for name in REFUSED_HEADERS if name in header]
    if refused:
        raise errors.UnsupportedHeader(
            f"the header carries {', '.join(refused)}, which is never honoured"
        )
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
        raise errors.UnsupportedHeader(f"the header's typ {_show(typ)} is not JWT")
    pinned = PINNED_ALGORITHM[endpoint]
    alg = header.get("alg")
    if alg != pinned or type(alg) is not str:
        shown = "no alg" if alg is None else f"alg {_show(alg)}"
        raise errors.AlgorithmNotAllowed(
            f"{shown} is not allowed: {endpoint.value} tokens must be {pinned}"
        )


def check_times(claims: dict[str, Any], now: float, policy: VerifyPolicy) -> int:
    """Check exp, iat (both required integers) and nbf against ``now`` with the policy's
    leeway and lifetime cap; returns exp."""
    exp = _int_claim(claims, "exp", required=True)
    iat = _int_claim(claims, "iat", required=True)
    nbf = _int_claim(claims, "nbf", required=False)
    assert exp is not None and iat is not None
    if exp < iat:
        raise errors.InvalidClaim(f"exp ({exp}) is before iat ({iat})")
    lifetime = exp - iat
    if lifetime > policy.max_lifetime:
        raise errors.LifetimeTooLong(
            f"the lifetime exp - iat is {lifetime} s; the cap is {policy.max_lifetime} s"
        )
    leeway = policy.leeway
    if now - leeway >= exp:
        raise errors.TokenExpired(
            f"the token expired {int(now - exp)} s ago (leeway {leeway} s)"
        )
    if iat > now + leeway:
        raise errors.TokenNotYetValid(
            f"iat is {int(iat - now)} s in the future (leeway {leeway} s)"
        )
    if nbf is not None and nbf > now + leeway:
        raise errors.TokenNotYetValid(
            f"nbf is {int(nbf - now)} s in the future (leeway {leeway} s)"
        )
    return exp


def verify_rs256(key: Any, parsed: ParsedToken) -> None:
    """Check an RS256 signature (PKCS#1 v1.5, SHA-256); raises :class:`~collector.errors.BadSignature`."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    try:
        key.verify(parsed.signature, parsed.signing_input, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature as exc:
        raise errors.BadSignature(
            "the RS256 signature does not verify with the kid's public key"
        ) from exc


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class VerifiedToken:
    """A token that passed every check, with what the audit log may keep of it."""

    header: dict[str, Any]
    claims: dict[str, Any]
    client_key: str
    account_id: str | None
    qsh_kind: Literal["computed", "context"]
    fingerprint: str
    token_hash: str
    install: InstallSecret | None

    def summary(self) -> dict[str, Any]:
        """The claims worth recording (never the token, secret or signature)."""
        return {
            "iss": self.claims.get("iss"),
            "sub": self.claims.get("sub"),
            "iat": self.claims.get("iat"),
            "exp": self.claims.get("exp"),
            "qsh_kind": self.qsh_kind,
        }


def _text_claim(claims: dict[str, Any], name: str, *, required: bool) -> str | None:
    if name not in claims:
        if required:
            raise errors.MissingClaim(f"the token has no {name} claim")
        return None
    value = claims[name]
    if not isinstance(value, str) or not value:
        raise errors.InvalidClaim(f"{name} must be a non-empty string, not {_show(value)}")
    if len(value) > _MAX_TEXT_CLAIM or _CONTROL.search(value):
        raise errors.InvalidClaim(f"{name} is too long or contains control characters")
    return value


def _int_claim(claims: dict[str, Any], name: str, *, required: bool) -> int | None:
    if name not in claims:
        if required:
            raise errors.MissingClaim(f"the token has no {name} claim")
        return None
    value = claims[name]
    if type(value) is not int:  # bool is an int subclass; floats and strings are refused
        raise errors.InvalidClaim(f"{name} must be integer seconds since the epoch, not {_show(value)}")
    return value


class TokenVerifier:
    """Verifies request, context and lifecycle tokens with a named reason for every refusal.

    ``installs`` finds the shared secret by the exact ``iss``; ``keys`` gives lifecycle
    public keys by ``kid``; ``replay`` remembers tokens used on state-changing requests and
    callbacks; ``clock`` returns epoch seconds; ``app_base_url`` is the app's baseUrl, whose
    path is the context path of incoming requests and which lifecycle ``aud`` must contain.

    Failures of the injected lookups themselves (a store that is down) are not verdicts on
    the token and propagate unchanged, except for the key source, whose failures mean the
    key for ``kid`` cannot be had (``unknown_kid``).
    """

    def __init__(
        self,
        installs: InstallLookup | None,
        *,
        keys: KeySource | None = None,
        replay: ReplayGuard | None = None,
        clock: Callable[[], float] = time.time,
        policy: VerifyPolicy = VerifyPolicy(),
        app_base_url: str | None = None,
    ) -> None:
        self._installs = installs
        self._replay = replay
        self._clock = clock
        self.policy = policy
        self.app_base_url = app_base_url
        self._app_context = context_path(app_base_url)
        self._rsa_keys = RsaKeyCache(keys, "install-key source")

    # -- entry points ---------------------------------------------------------------

    def verify_request(
        self,
        token: str | None,
        method: str,
        url: str,
        *,
        endpoint: Endpoint | str = Endpoint.REQUEST,
        state_changing: bool = False,
    ) -> VerifiedToken:
        """Verify an HS256 request or context token for the request ``method url``.

        ``url`` is the URL or request target as received; the app's context path (the
        path of ``app_base_url``) is removed before the qsh is computed. A context token
        is accepted only when ``endpoint`` is :attr:`Endpoint.CONTEXT`. With a replay
        guard, a ``state_changing`` request's token is accepted once, except a context
        token, which its front end reuses by design.
        """
        if not isinstance(method, str) or not isinstance(url, str):
            raise TypeError("verify_request needs the method and URL of the request received")
        if endpoint.__class__ is not Endpoint:
            endpoint = Endpoint(endpoint)
        if endpoint is Endpoint.LIFECYCLE:
            raise ValueError("lifecycle tokens are verified with verify_lifecycle()")
        return self._verify_shared_secret(token, method, url, endpoint, state_changing)

    def verify_lifecycle(
        self, token: str | None, method: str, url: str, *, body_client_key: str
    ) -> VerifiedToken:
        """Verify an RS256 signed lifecycle callback (installed, uninstalled, ...).

        Checks the pinned algorithm, the ``kid`` and its public key, the signature, the
        times, the ``qsh`` of the callback request, that ``aud`` contains the app's
        baseUrl and that ``iss`` equals ``body_client_key``, the body's clientKey. With a
        replay guard, each callback token is accepted once.
        """
        if not isinstance(method, str) or not isinstance(url, str):
            raise TypeError("verify_lifecycle needs the method and URL of the callback received")
        if not isinstance(body_client_key, str):
            raise TypeError("verify_lifecycle needs the clientKey of the callback body")
        return self._verify_signed(token, method, url, body_client_key)

    def verify_signature_and_claims(
        self,
        token: str | None,
        *,
        endpoint: Endpoint | str = Endpoint.REQUEST,
        body_client_key: str | None = None,
    ) -> VerifiedToken:
        """Every check except those that need the request: the qsh comparison, the replay
        guard, and for lifecycle tokens without ``body_client_key`` the iss/body check.

        For tools that inspect a token out of context (``connect-audit token inspect``);
        never use it to admit a request.
        """
        endpoint = Endpoint(endpoint)
        if endpoint is Endpoint.LIFECYCLE:
            return self._verify_signed(token, None, None, body_client_key, replay=False)
        return self._verify_shared_secret(token, None, None, endpoint, False)

    # -- steps ------------------------------------------------------------------------

    def _verify_signed(
        self,
        token: str | None,
        method: str | None,
        url: str | None,
        body_client_key: str | None,
        *,
        replay: bool = True,
    ) -> VerifiedToken:
        parsed = parse_token(token, max_size=self.policy.max_size)
        with carrying(parsed):
            self._check_header(parsed.header, Endpoint.LIFECYCLE)
            kid = validate_kid(parsed.header.get("kid"))
            self._verify_rsa(self._public_key(kid), parsed)
            claims = parsed.claims
            iss = _text_claim(claims, "iss", required=True)
            exp = self._check_times(claims)
            account_id = _text_claim(claims, "sub", required=False)
            qsh_kind = self._check_qsh(claims, method, url, Endpoint.LIFECYCLE)
            self._check_audience(claims)
            if body_client_key is not None and iss != body_client_key:
                raise errors.IssuerMismatch(
                    f"the token's iss {_show(iss)} differs from the body's clientKey "
                    f"{_show(body_client_key)}"
                )
            digest = token_hash(parsed)
            if replay:
                self._check_replay(iss, digest, exp)
            install = self._installs.install_secret(iss) if self._installs is not None else None
            return VerifiedToken(
                parsed.header, claims, iss, account_id, qsh_kind,
                token_fingerprint(token), digest, install,
            )  # fmt: skip

    def _verify_shared_secret(
        self,
        token: str | None,
        method: str | None,
        url: str | None,
        endpoint: Endpoint,
        state_changing: bool,
    ) -> VerifiedToken:
        parsed = parse_token(token, max_size=self.policy.max_size)
        with carrying(parsed):
            self._check_header(parsed.header, endpoint)
            claims = parsed.claims
            iss = _text_claim(claims, "iss", required=True)
            install = self._installs.install_secret(iss) if self._installs is not None else None
            if install is None:
                raise errors.UnknownIssuer(f"no install has clientKey {_show(iss)}")
            if not install.active:
                raise errors.InactiveInstall(f"the install {_show(iss)} is uninstalled or disabled")
            secret = install.shared_secret.encode("utf-8")
            if not secret:
                raise errors.BadSignature("the install has no shared secret to verify with")
            expected = hmac.digest(secret, parsed.signing_input, "sha256")  # one-shot, in C
            if not hmac.compare_digest(expected, parsed.signature):
                raise errors.BadSignature(
                    "the HS256 signature does not verify with the install's shared secret"
                )
            try:
                exp = self._check_times(claims)
                account_id = _text_claim(claims, "sub", required=False)
                qsh_kind = self._check_qsh(claims, method, url, endpoint)
                digest = token_hash(parsed)
                # A context token is reusable by design (the front end keeps the one
                # AP.context.getToken() gave it for its whole life): only a token signed for
                # one request is single-use.
                if state_changing and not (qsh_kind == "context" and endpoint is Endpoint.CONTEXT):
                    self._check_replay(iss, digest, exp)
            except errors.TokenRejected as exc:
                exc.client_key = iss  # the signature verified: this refusal is the tenant's
                raise
            return VerifiedToken(
                parsed.header, claims, iss, account_id, qsh_kind,
                token_fingerprint(token), digest, install,
            )  # fmt: skip

    @staticmethod
    def _check_header(header: dict[str, Any], endpoint: Endpoint) -> None:
        check_header(header, endpoint)

    def _check_times(self, claims: dict[str, Any]) -> int:
        return check_times(claims, self._clock(), self.policy)

    def _check_qsh(
        self, claims: dict[str, Any], method: str | None, url: str | None, endpoint: Endpoint
    ) -> Literal["computed", "context"]:
        """Check qsh against the request; without a request (None), only its form and kind."""
        if "qsh" not in claims:
            raise errors.MissingClaim("the token has no qsh claim")
        qsh = claims["qsh"]
        if not isinstance(qsh, str):
            raise errors.InvalidClaim(f"qsh must be a string, not {_show(qsh)}")
        if qsh == CONTEXT_QSH:
            if endpoint is not Endpoint.CONTEXT:
                raise errors.ContextQshNotAllowed(
                    f"a context token (qsh 'context-qsh') reached a {endpoint.value} endpoint"
                )
            return "context"
        if method is None or url is None:
            return "computed"
        if qsh != query_string_hash(method, url, self._app_context):
            raise self._qsh_mismatch(qsh, method, url)
        return "computed"

    def _qsh_mismatch(self, qsh: str, method: str, url: str) -> errors.QshMismatch:
        # Reached only with an authentic signature, so anonymous junk cannot make the
        # verifier spend time diagnosing; the detail then tells the log what went wrong.
        found = diagnose(qsh, method, url, self._app_context)
        detail = f"the token's qsh is not the hash of {_show(found.expected_canonical, 120)}"
        if found.matched_mistake:
            detail += f" ({found.matched_mistake}: {found.explanation.rstrip('.')})"
        exc = errors.QshMismatch(detail)
        exc.diagnosis = found  # for callers that show the whole diagnosis
        return exc

    def _check_audience(self, claims: dict[str, Any]) -> None:
        if "aud" not in claims:
            raise errors.MissingClaim("the lifecycle token has no aud claim")
        aud = claims["aud"]
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise errors.InvalidClaim("aud must be a string or a list of strings")
        if not self.app_base_url:
            raise errors.WrongAudience("no app baseUrl is configured, so aud cannot match it")
        wanted = self.app_base_url.rstrip("/")
        if not any(a.rstrip("/") == wanted for a in audiences):
            raise errors.WrongAudience(
                f"aud {_show(aud, 80)} does not contain the app's baseUrl {_show(wanted, 80)}"
            )

    def _check_replay(self, iss: str, digest: str, exp: int) -> None:
        if self._replay is None:
            return
        expires_at = datetime.fromtimestamp(exp + self.policy.leeway, UTC)
        if not self._replay.first_use(iss, digest, expires_at):
            raise errors.Replayed("this token was already used; a fresh one is needed")

    # -- lifecycle keys ---------------------------------------------------------------

    def _public_key(self, kid: str) -> Any:
        return self._rsa_keys.get(kid)

    @staticmethod
    def _verify_rsa(key: Any, parsed: ParsedToken) -> None:
        verify_rs256(key, parsed)


def load_rsa_key(pem: str, kid: str) -> Any:
    """The RSA public key in ``pem`` (at least 2048 bits); raises :class:`~collector.errors.UnknownKid`."""
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise errors.UnknownKid(f"the key published for kid {kid} is not a PEM public key") from exc
    if not isinstance(key, RSAPublicKey):
        raise errors.UnknownKid(f"the key published for kid {kid} is not an RSA key")
    if key.key_size < 2048:
        raise errors.UnknownKid(f"the key published for kid {kid} is shorter than 2048 bits")
    return key


class RsaKeyCache:
    """RSA public keys by ``kid`` from a :class:`KeySource`, each PEM loaded once.

    Shared by the lifecycle and the Forge verifiers: loading a PEM validates the key, which
    costs far more than a verification, so the last 64 keys are kept (least recently used go
    first). A failing source means no key for this kid: ``unknown_kid``, never a crash.
    """

    def __init__(self, source: KeySource | None, what: str, *, size: int = 64) -> None:
        self.source = source
        self.what = what
        self.size = size
        self._keys: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, kid: str) -> Any:
        if self.source is None:
            raise errors.UnknownKid(f"no {self.what} is configured")
        try:
            pem = self.source.public_key(kid)
        except errors.TokenRejected:
            raise
        except Exception as exc:  # a failing source (network, file) means no key for this kid
            raise errors.UnknownKid(
                f"the key for kid {kid} could not be obtained ({type(exc).__name__})"
            ) from exc
        with self._lock:
            key = self._keys.get(pem)
            if key is not None:
                self._keys.move_to_end(pem)
                return key
        key = load_rsa_key(pem, kid)
        with self._lock:
            self._keys[pem] = key
            while len(self._keys) > self.size:
                self._keys.popitem(last=False)
        return key
