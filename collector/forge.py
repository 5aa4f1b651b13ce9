"""Strict verification of the Forge Invocation Token (FIT) a Forge Remote backend receives.

When a Forge app (a Connect-on-Forge app included) invokes its remote, Forge sends
``Authorization: Bearer <FIT>``: an RS256 JWS signed with a key from Forge's JWKS
(``https://forge.cdn.prod.atlassian-dev.net/.well-known/jwks.json``), ``iss`` =
``forge/invocation-token``, ``aud`` = the app's ARI. Its claims (Atlassian's "Forge Remote
essentials", section "The Forge Invocation Token") are::

    app.id              ari:cloud:ecosystem::app/<uuid>          (equals aud)
    app.installationId  ari:cloud:ecosystem::installation/<uuid> (the Forge tenant key)
    app.apiBaseUrl      https://api.atlassian.com/ex/confluence/<cloudId> (product calls go here)
    app.appVersion      "2.0.0" (older tokens: app.version)
    app.environment     {type: DEVELOPMENT | STAGING | PRODUCTION, id: <environment ARI>}
    app.module          {type: "xen:macro" | "core:endpoint" ..., key: <module key>}
    app.license         optional (paid apps in production)
    context             optional: cloudId, siteUrl, moduleKey, extension ... (UI invocations)
    principal           optional: the invoking user's accountId (UI modules only)
    iat, nbf, exp, jti

The same strict JWS parser, header rules, clock leeway and lifetime cap as
:mod:`collector.tokens` apply; every refusal is one :class:`~collector.errors.TokenRejected`
subclass with its stored reason code. The module is pure: the clock, the key source (a
JWKS URL, file or directory, see :mod:`collector.jwks`) and the installation lookup are
injected.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

from collector import errors
from collector.tokens import (
    Endpoint,
    KeySource,
    ParsedToken,
    RsaKeyCache,
    VerifyPolicy,
    _show,
    carrying,
    check_header,
    check_times,
    parse_token,
    token_fingerprint,
    token_hash,
    validate_kid,
    verify_rs256,
)

FORGE_ISSUER = "forge/invocation-token"
DEFAULT_JWKS_URL = "https://forge.cdn.prod.atlassian-dev.net/.well-known/jwks.json"
ENVIRONMENT_TYPES = ("DEVELOPMENT", "STAGING", "PRODUCTION")

#: What an invocation is, by the route it reaches (see :mod:`collector.routes`).
RESOLVER = "resolver"  # a UI module's invokeRemote / requestRemote: a user is in session
EVENT = "event"  # a product event (avi:confluence:created:page ...): retried up to 4 times
TRIGGER = "trigger"  # a scheduled trigger: retried, no user
LIFECYCLE = "lifecycle"  # avi:forge:installed:app / avi:forge:upgraded:app
INVOCATIONS = (RESOLVER, EVENT, TRIGGER, LIFECYCLE)

_UUIDISH = r"[0-9A-Za-z][0-9A-Za-z-]{0,63}"
APP_ARI = re.compile(rf"ari:cloud:ecosystem::app/{_UUIDISH}")
INSTALLATION_ARI = re.compile(rf"ari:cloud:ecosystem::installation/{_UUIDISH}")
_CLOUD_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")
_ACCOUNT_ID = re.compile(r"[0-9A-Za-z:_-]{1,128}")
_TEXT = re.compile(r"[^\x00-\x1f\x7f]{1,255}")
#: The product tokens in x-forge-oauth-* are opaque but JWTs; they may be larger than a FIT.
MAX_PRODUCT_TOKEN = 16 * 1024
_DEFAULT_POLICY = VerifyPolicy()


# --------------------------------------------------------------------------- injected lookups


@dataclass(frozen=True)
class KnownInstallation:
    """What the registry knows of a Forge installation, for the checks that need history."""

    installation_id: str
    active: bool
    cloud_id: str | None = None
    #: The Connect clientKey of the same site, once linked: the tenant its events are filed under.
    connect_client_key: str | None = None

    @property
    def tenant_key(self) -> str:
        return self.connect_client_key or self.installation_id


@runtime_checkable
class InstallationLookup(Protocol):
    def forge_installation(self, installation_id: str) -> KnownInstallation | None:
        """The installation ``installation_id`` as last seen, or None when never seen."""


@dataclass(frozen=True)
class ForgeExpectation:
    """What a route declares about the invocations it takes; None means "not checked".

    ``principal`` is ``required`` on UI resolver routes (a user invoked them), ``absent`` is
    never demanded (events may or may not carry one), ``optional`` accepts either.
    """

    invocation: str = RESOLVER
    module_key: str | None = None
    environment: str | None = None  # an environment type (PRODUCTION) or id (its ARI)
    principal: Literal["required", "optional"] = "optional"

    def __post_init__(self) -> None:
        if self.invocation not in INVOCATIONS:
            raise ValueError(f"invocation must be one of {', '.join(INVOCATIONS)}")
        if self.principal not in ("required", "optional"):
            raise ValueError("principal must be 'required' or 'optional'")


# --------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class VerifiedInvocation:
    """A FIT that passed every check, with what the audit log may keep of it."""

    header: dict[str, Any] = field(repr=False)
    claims: dict[str, Any] = field(repr=False)
    app_id: str
    installation_id: str
    api_base_url: str
    environment_type: str
    environment_id: str
    module_key: str
    module_type: str
    app_version: str | None
    principal: str | None
    cloud_id: str | None
    site_url: str | None
    fingerprint: str
    token_hash: str
    expires_at: int

    def summary(self) -> dict[str, Any]:
        """The claims worth recording (never the token or its signature)."""
        return {
            "iss": FORGE_ISSUER,
            "aud": self.app_id,
            "iat": self.claims.get("iat"),
            "exp": self.expires_at,
            "installation_id": self.installation_id,
            "cloud_id": self.cloud_id,
            "site_url": self.site_url,
            "api_base_url": self.api_base_url,
            "environment": self.environment_type,
            "environment_id": self.environment_id,
            "module_key": self.module_key,
            "module_type": self.module_type,
            "app_version": self.app_version,
            "principal": self.principal,
        }


# --------------------------------------------------------------------------- claim readers


def _member(claims: Mapping[str, Any], path: str, *, required: bool) -> Any:
    value: Any = claims
    for name in path.split("."):
        if not isinstance(value, dict) or name not in value:
            if required:
                raise errors.MissingClaim(f"the Forge token has no {path} claim")
            return None
        value = value[name]
    return value


def _text(
    claims: Mapping[str, Any],
    path: str,
    *,
    required: bool = True,
    form: re.Pattern[str] = _TEXT,
    what: str = "a non-empty string",
) -> str | None:
    value = _member(claims, path, required=required)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not form.fullmatch(value):
        raise errors.InvalidClaim(f"{path} must be {what}, not {_show(value)}")
    return value


def _object(claims: Mapping[str, Any], path: str, *, required: bool = True) -> Mapping[str, Any] | None:
    value = _member(claims, path, required=required)
    if value is None and not required:
        return None
    if not isinstance(value, Mapping):
        raise errors.InvalidClaim(f"{path} must be an object, not {_show(value)}")
    return value


def _https_url(
    claims: Mapping[str, Any], path: str, *, required: bool, http_hosts: frozenset[str]
) -> str | None:
    value = _text(claims, path, required=required, what="an https URL")
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - a malformed port raises here, not later
    except ValueError as exc:
        raise errors.InvalidClaim(f"{path} is not a URL: {_show(value, 80)}") from exc
    secure = parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in http_hosts)
    if not secure or not parts.hostname or parts.username or parts.password or parts.query or parts.fragment:
        raise errors.InvalidClaim(f"{path} must be an https URL without credentials, not {_show(value, 80)}")
    return value.rstrip("/")


# --------------------------------------------------------------------------- verification


class ForgeVerifier:
    """Verifies Forge Invocation Tokens for one or more Forge apps (their ARIs in ``app_ids``).

    ``keys`` gives the PEM public key for a ``kid`` (:mod:`collector.jwks`); ``installations``
    (optional) lets the verifier refuse tokens of uninstalled installations and tokens whose
    site differs from the one the installation is known on; ``clock`` returns epoch seconds.
    ``http_api_hosts`` lists hosts whose ``apiBaseUrl`` may be plain http (a loopback
    simulator in tests and demos; empty in production).
    """

    def __init__(
        self,
        app_ids: Iterable[str],
        *,
        keys: KeySource | None,
        installations: InstallationLookup | None = None,
        clock: Callable[[], float] = time.time,
        policy: VerifyPolicy = _DEFAULT_POLICY,
        http_api_hosts: Iterable[str] = (),
    ) -> None:
        self.app_ids = frozenset(app_ids)
        for app_id in self.app_ids:
            if not APP_ARI.fullmatch(app_id):
                raise errors.ConfigurationError(
                    f"a Forge app id is an ARI such as ari:cloud:ecosystem::app/<uuid>, not {app_id!r}"
                )
        self._keys = RsaKeyCache(keys, "Forge JWKS source")
        self._installations = installations
        self._clock = clock
        self.policy = policy
        self._http_hosts = frozenset(http_api_hosts)

    def verify(self, token: str | None, expect: ForgeExpectation = ForgeExpectation()) -> VerifiedInvocation:
        """Verify ``token`` for a route that declares ``expect``; raises a ``TokenRejected``."""
        parsed = parse_token(token, max_size=self.policy.max_size)
        with carrying(parsed):
            check_header(parsed.header, Endpoint.FORGE)
            kid = validate_kid(parsed.header.get("kid"))
            verify_rs256(self._keys.get(kid), parsed)
            claims = parsed.claims
            iss = _text(claims, "iss")
            if iss != FORGE_ISSUER:
                raise errors.UnknownIssuer(f"iss {_show(iss)} is not {FORGE_ISSUER!r}")
            invocation = self._read_claims(parsed, token or "")
            self._check_audience(claims, invocation.app_id)
            self._check_context(invocation, expect)
            self._check_installation(invocation, lifecycle=expect.invocation == LIFECYCLE)
            return invocation

    def _read_claims(self, parsed: ParsedToken, token: str) -> VerifiedInvocation:
        claims = parsed.claims
        exp = check_times(claims, self._clock(), self.policy)
        _object(claims, "app")
        app_id = _text(claims, "app.id", form=APP_ARI, what="an app ARI")
        installation_id = _text(
            claims, "app.installationId", form=INSTALLATION_ARI, what="an installation ARI"
        )
        api_base_url = _https_url(claims, "app.apiBaseUrl", required=True, http_hosts=self._http_hosts)
        _object(claims, "app.environment")
        env_type = _text(claims, "app.environment.type")
        if env_type not in ENVIRONMENT_TYPES:
            raise errors.InvalidClaim(f"app.environment.type must be one of {', '.join(ENVIRONMENT_TYPES)}")
        env_id = _text(claims, "app.environment.id")
        _object(claims, "app.module")
        module_key = _text(claims, "app.module.key")
        module_type = _text(claims, "app.module.type")
        version = _text(claims, "app.appVersion", required=False) or _text(
            claims, "app.version", required=False
        )
        principal = _text(claims, "principal", required=False, form=_ACCOUNT_ID, what="an accountId")
        cloud_id = site_url = None
        if _object(claims, "context", required=False) is not None:
            cloud_id = _text(claims, "context.cloudId", required=False, form=_CLOUD_ID, what="a cloud id")
            site_url = _https_url(claims, "context.siteUrl", required=False, http_hosts=self._http_hosts)
        _text(claims, "jti", required=False)
        return VerifiedInvocation(
            header=parsed.header, claims=claims, app_id=app_id, installation_id=installation_id,
            api_base_url=api_base_url, environment_type=env_type, environment_id=env_id,
            module_key=module_key, module_type=module_type, app_version=version, principal=principal,
            cloud_id=cloud_id or _cloud_id_of(api_base_url), site_url=site_url,
            fingerprint=token_fingerprint(token), token_hash=token_hash(parsed), expires_at=exp,
        )  # fmt: skip

    def _check_audience(self, claims: Mapping[str, Any], app_id: str) -> None:
        aud = _member(claims, "aud", required=True)
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise errors.InvalidClaim("aud must be a string or a list of strings")
        if not self.app_ids:
            raise errors.WrongAudience("no Forge app id is configured, so aud cannot match it")
        if not any(a in self.app_ids for a in audiences):
            raise errors.WrongAudience(f"aud {_show(aud, 80)} is not one of this app's ARIs")
        if app_id not in audiences:
            raise errors.WrongAudience(f"app.id {_show(app_id, 80)} differs from aud {_show(aud, 80)}")

    @staticmethod
    def _check_context(inv: VerifiedInvocation, expect: ForgeExpectation) -> None:
        if expect.module_key is not None and inv.module_key != expect.module_key:
            raise errors.ContextMismatch(
                f"the token is for module {_show(inv.module_key)}; "
                f"this route takes {_show(expect.module_key)}"
            )
        wanted = expect.environment
        if wanted is not None and wanted not in (inv.environment_type, inv.environment_id):
            raise errors.ContextMismatch(
                f"the token is from the {inv.environment_type} environment; "
                f"this route takes {_show(wanted, 80)}"
            )
        if expect.principal == "required" and inv.principal is None:
            raise errors.MissingClaim("the Forge token has no principal, which this UI route requires")

    def _check_installation(self, inv: VerifiedInvocation, *, lifecycle: bool) -> None:
        if self._installations is None:
            return
        known = self._installations.forge_installation(inv.installation_id)
        if known is None:
            return
        if not known.active and not lifecycle:  # an installed event is what makes it active again
            raise errors.InactiveInstall(f"the Forge installation {inv.installation_id} is uninstalled")
        if known.cloud_id and inv.cloud_id and known.cloud_id != inv.cloud_id:
            raise errors.ContextMismatch(
                f"the token's cloudId {_show(inv.cloud_id)} is not the site installation "
                f"{inv.installation_id} belongs to"
            )

def _cloud_id_of(api_base_url: str) -> str | None:
    """The cloudId in ``.../ex/<product>/<cloudId>``, the documented apiBaseUrl form."""
    parts = urlsplit(api_base_url).path.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-3] == "ex" and _CLOUD_ID.fullmatch(parts[-1]):
        return parts[-1]
    return None


# --------------------------------------------------------------------------- deliveries


def retry_count(body: Mapping[str, Any] | None) -> int:
    """How many times Forge already tried this delivery: ``retryContext.retryCount`` (at the
    top of the body or under ``payload``), 0 for a first delivery."""
    if not isinstance(body, Mapping):
        return 0
    for holder in (body, body.get("payload")):
        context = holder.get("retryContext") if isinstance(holder, Mapping) else None
        if isinstance(context, Mapping):
            count = context.get("retryCount")
            if type(count) is int and 0 <= count < 100:
                return count
    return 0


def delivery_key(installation_id: str, body: Mapping[str, Any] | None) -> str:
    """A name for one event delivery, equal across its retries: SHA-256 of the installation
    and the body without its ``retryContext`` (the one part Forge changes between tries)."""

    def strip(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: strip(v) for k, v in value.items() if k != "retryContext"}
        return value

    canonical = json.dumps(strip(body or {}), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{installation_id}\n{canonical}".encode()).hexdigest()


# --------------------------------------------------------------------------- product tokens


@dataclass(frozen=True)
class ProductToken:
    """An ``x-forge-oauth-system`` / ``x-forge-oauth-user`` token: opaque except for ``exp``
    (Atlassian: "the exp claim represents the expiration time"); never shown or stored."""

    kind: Literal["system", "user"]
    value: str = field(repr=False)
    expires_at: int | None
    fingerprint: str

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def product_token(kind: Literal["system", "user"], value: str | None) -> ProductToken | None:
    """Read a product token from its header; None when the header is absent or empty."""
    if not value or not value.strip():
        return None
    value = value.strip()
    if value.lower().startswith("bearer "):
        value = value[7:].strip()
    return ProductToken(kind, value, product_token_expiry(value), token_fingerprint(value))


def product_token_expiry(value: str) -> int | None:
    """The ``exp`` of a product token, or None when it cannot be read (opaque: still usable)."""
    try:
        exp = parse_token(value, max_size=MAX_PRODUCT_TOKEN).claims.get("exp")
    except errors.TokenRejected:
        return None
    return exp if type(exp) is int else None


# --------------------------------------------------------------------------- the request


def extract_bearer(authorization_header: str | None) -> str | None:
    """The FIT of a request: ``Authorization: Bearer <token>`` (None when absent or another scheme)."""
    if not authorization_header:
        return None
    scheme, _, rest = authorization_header.strip().partition(" ")
    return rest.strip() or None if scheme.lower() == "bearer" else None


@dataclass(frozen=True)
class ForgeInvocation:
    """What the middleware established about one Forge invocation, handed to the handler.

    ``system_token`` and ``user_token`` are the ``x-forge-oauth-system`` / ``-user`` tokens
    (None when the manifest does not ask for them, or no user is in session); the outgoing
    client uses them and never records them. ``redelivery`` is True when this delivery of
    an event was already received (a retry after a failure or timeout): the handler should
    not act on it twice.
    """

    verified: VerifiedInvocation
    invocation: str
    tenant_key: str
    system_token: ProductToken | None = field(default=None, repr=False)
    user_token: ProductToken | None = field(default=None, repr=False)
    trace_id: str | None = None
    span_id: str | None = None
    retry_count: int = 0
    redelivery: bool = False
    #: The site as the log names it: the linked Connect install's baseUrl, else the site URL.
    site_base_url: str | None = None

    @property
    def installation_id(self) -> str:
        return self.verified.installation_id

    @property
    def api_base_url(self) -> str:
        return self.verified.api_base_url

    @property
    def principal(self) -> str | None:
        return self.verified.principal


def product_of(api_base_url: str) -> str | None:
    """``confluence`` for ``https://api.atlassian.com/ex/confluence/<cloudId>``."""
    parts = api_base_url.split("/ex/", 1)
    return parts[1].split("/", 1)[0][:40] or None if len(parts) == 2 else None
