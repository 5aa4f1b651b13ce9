"""The Forge half of the simulated host: Forge's invocation service and the product API behind
``app.apiBaseUrl``, over the same loopback server as :class:`~.host.ConfluenceSimulator`.

:class:`ForgeHost` plays Forge towards a Forge (or Connect-on-Forge) app's remote backend:

* it signs Forge Invocation Tokens with its own RS256 keys and serves them as a JWKS at
  ``<url>/.well-known/jwks.json`` (the app's ``forge_jwks``);
* it invokes the remote's endpoints as the manifest declares them (:data:`MANIFEST` shape: the
  ``remotes``, ``endpoints``, ``modules`` and ``permissions.scopes`` of ``manifest.yml`` as a
  dict): UI resolvers (with a ``principal``), product events and scheduled triggers (retried
  up to 4 times with ``retryContext`` when the remote answers non-2xx, as Forge does), and the
  ``avi:forge:installed:app`` / ``avi:forge:upgraded:app`` lifecycle events;
* it hands the remote ``x-forge-oauth-system`` and ``x-forge-oauth-user`` tokens (JWTs whose
  ``exp`` is their expiry) and answers product calls at
  ``<url>/ex/confluence/<cloudId>/wiki/...`` with them, enforcing the manifest's OAuth scopes
  (classic or granular, from the shipped scope data) and each user's space permissions;
* on request it spoils the token (:data:`FORGE_MISBEHAVIOURS`), one way per rejection code.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import requests

from collector import signing
from collector.scopes import missing_oauth_scopes
from collector.simulator.site import HostError

if TYPE_CHECKING:
    from collector.simulator.host import ConfluenceSimulator, Tenant

FIT_TTL = 300
SYSTEM_TOKEN_TTL = 2 * 3600
USER_TOKEN_TTL = 4 * 3600
MAX_ATTEMPTS = 4  # Forge's remote contract: events and triggers are tried up to 4 times
SCOPE_MESSAGE = "Unauthorized; scope does not match"
#: Where a remote calls product APIs with Forge's tokens (the invocation's ``apiBaseUrl``).
FORGE_API = "https://api.atlassian.com"

#: Ways the simulated Forge can get an invocation wrong, each one rejection code.
FORGE_MISBEHAVIOURS = {
    "missing": "missing_token",
    "malformed": "malformed",
    "too_large": "too_large",
    "jku_header": "unsupported_header",
    "alg_none": "alg_not_allowed",
    "hs256_with_public_key": "alg_not_allowed",  # RS/HS confusion: the JWKS key as HMAC secret
    "no_kid": "missing_kid",
    "kid_traversal": "missing_kid",
    "unknown_kid": "unknown_kid",
    "wrong_issuer": "unknown_issuer",
    "bad_signature": "bad_signature",
    "no_installation": "missing_claim",
    "no_principal": "missing_claim",  # on a route that requires one
    "bad_installation": "invalid_claim",
    "http_api_base": "invalid_claim",
    "long_lived": "lifetime_too_long",
    "expired": "expired",
    "future": "not_yet_valid",
    "wrong_audience": "wrong_audience",
    "other_module": "context_mismatch",  # on a route that pins its module key
    "other_site": "context_mismatch",  # a cloudId of another site for a known installation
}


@dataclass
class ForgeApp:
    """What the simulated Forge learnt from the app's manifest."""

    app_id: str
    base_url: str
    scopes: tuple[str, ...]
    endpoints: dict[str, dict[str, Any]]  # endpoint key -> {"path", "system", "user"}
    resolvers: dict[str, str]  # module key -> endpoint key
    events: dict[str, str]  # event name -> endpoint key
    schedules: dict[str, str]  # scheduled trigger key -> endpoint key
    environment_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class _ProductToken:
    tenant: str
    account_id: str | None  # None: the app's bot user (system token)
    expires_at: float


class ForgeHost:
    """Forge's side of the simulator; reached as ``simulator.forge``."""

    def __init__(self, sim: ConfluenceSimulator) -> None:
        self.sim = sim
        self.kid = f"forge-{uuid.uuid4().hex[:16]}"
        self._private_key, self._public_pem = signing.rsa_key_pair()
        self._token_secret = secrets.token_urlsafe(32)
        self._tokens: dict[str, _ProductToken] = {}
        self.app: ForgeApp | None = None
        #: Page ids whose next read fails with a 503 (once each): how the demo shows Forge retrying
        #: an event delivery after the remote answered an error.
        self.flaky_pages: set[str] = set()
        #: Counters: jwks (JWKS reads), invocations, attempts, rest_calls.
        self.stats = sim.stats

    # ------------------------------------------------------------------ setup

    @property
    def jwks_url(self) -> str:
        return f"{self.sim.url}/.well-known/jwks.json"

    def api_base_url(self, tenant: Tenant) -> str:
        origin = FORGE_API if self.sim.public_hosts else self.sim.url
        return f"{origin}/ex/confluence/{tenant.cloud_id}"

    def site_url(self, tenant: Tenant) -> str:
        return tenant.site_url

    def deploy(self, manifest: Mapping[str, Any], app_base_url: str) -> ForgeApp:
        """Read a manifest (``manifest.yml`` as a dict) whose remote is the app at ``app_base_url``."""
        endpoints = {}
        for ep in manifest.get("endpoints") or []:
            auth = ep.get("auth") or {}
            endpoints[ep["key"]] = {
                "path": (ep.get("route") or {}).get("path", "/"),
                "system": bool((auth.get("appSystemToken") or {}).get("enabled")),
                "user": bool((auth.get("appUserToken") or {}).get("enabled")),
            }
        modules = manifest.get("modules") or {}
        resolvers = {
            m["key"]: m["resolver"]["endpoint"]
            for kind in ("macro", "confluence:contentAction")
            for m in modules.get(kind, [])
            if "endpoint" in (m.get("resolver") or {})
        }
        events = {e: t["endpoint"] for t in modules.get("trigger", []) for e in t.get("events", [])}
        schedules = {t["key"]: t["endpoint"] for t in modules.get("scheduledTrigger", [])}
        self.app = ForgeApp(
            app_id=manifest["app"]["id"],
            base_url=app_base_url.rstrip("/"),
            scopes=tuple((manifest.get("permissions") or {}).get("scopes") or ()),
            endpoints=endpoints,
            resolvers=resolvers,
            events=events,
            schedules=schedules,
        )
        return self.app

    def _app(self) -> ForgeApp:
        if self.app is None:
            raise RuntimeError("call simulator.forge.deploy(manifest, app_base_url) first")
        return self.app

    # ------------------------------------------------------------------ invocations

    def install(self, name: str, *, upgrade: bool = False) -> requests.Response:
        """Install (or upgrade) the Forge app on tenant ``name``: Forge's lifecycle event."""
        tenant, app = self.sim.tenant(name), self._app()
        tenant.forge_status = "installed"
        tenant.forge_granted = app.scopes
        event = "avi:forge:upgraded:app" if upgrade else "avi:forge:installed:app"
        bare = lambda ari: ari.rsplit("/", 1)[-1]  # noqa: E731 - lifecycle bodies carry bare ids
        body = {
            "eventType": event,
            "id": bare(tenant.installation_id),
            "upgraderAccountId" if upgrade else "installerAccountId": tenant.users()[0].account_id,
            "app": {"id": bare(app.app_id), "version": "2.0.0", "name": "Connect Audit example"},
            "environment": {"id": app.environment_id},
            "context": f"ari:cloud:confluence::site/{tenant.cloud_id}",
        }
        return self.deliver(name, event, body)

    def resolver(
        self,
        name: str,
        module_key: str,
        payload: Any = None,
        *,
        user: str | None = None,
        misbehave: str | None = None,
        token_ttl: int | None = None,
    ) -> requests.Response:
        """A UI module's ``invokeRemote``: the user ``user`` (default: the site's first) invoked it.

        ``token_ttl`` sets the life of the product tokens sent along (negative: already expired).
        """
        tenant, app = self.sim.tenant(name), self._app()
        endpoint = app.endpoints[app.resolvers[module_key]]
        account = user or tenant.users()[0].account_id
        return self._invoke(
            tenant, endpoint, module_key, "xen:macro", payload or {}, account, misbehave, token_ttl
        )

    def deliver(
        self,
        name: str,
        event: str,
        body: Mapping[str, Any] | None = None,
        *,
        misbehave: str | None = None,
        attempts: int = MAX_ATTEMPTS,
    ) -> requests.Response:
        """Deliver a product or lifecycle event; retried (``retryContext``) on a non-2xx answer."""
        tenant, app = self.sim.tenant(name), self._app()
        key = app.events.get(event)
        if key is None:
            raise RuntimeError(f"the manifest subscribes to no {event} event")
        return self._deliver(
            tenant,
            app.endpoints[key],
            "core:endpoint",
            f"trigger-{key}",
            dict(body or {"eventType": event}),
            misbehave,
            attempts,
        )

    def schedule(
        self, name: str, trigger_key: str, *, misbehave: str | None = None, attempts: int = MAX_ATTEMPTS
    ) -> requests.Response:
        """Fire a scheduled trigger (no user: no principal, no user token)."""
        tenant, app = self.sim.tenant(name), self._app()
        endpoint = app.endpoints[app.schedules[trigger_key]]
        body = {
            "context": {"cloudId": tenant.cloud_id, "moduleKey": trigger_key},
            "userAccess": {"enabled": False},
        }
        return self._deliver(tenant, endpoint, "core:endpoint", trigger_key, body, misbehave, attempts)

    def _deliver(
        self,
        tenant: Tenant,
        endpoint: dict[str, Any],
        module_type: str,
        module_key: str,
        body: dict[str, Any],
        misbehave: str | None,
        attempts: int,
    ) -> requests.Response:
        response = None
        for attempt in range(attempts):
            if attempt:
                body = {
                    **body,
                    "retryContext": {
                        "retryCount": attempt,
                        "retryReason": "INVALID_REMOTE_INVOCATION_ERROR",
                        "retryData": None,
                    },
                }
            response = self._invoke(tenant, endpoint, module_key, module_type, body, None, misbehave)
            if 200 <= response.status_code < 300:
                break
        return response

    def _invoke(
        self,
        tenant: Tenant,
        endpoint: dict[str, Any],
        module_key: str,
        module_type: str,
        body: Any,
        account: str | None,
        misbehave: str | None,
        token_ttl: int | None = None,
    ) -> requests.Response:
        if misbehave is not None and misbehave not in FORGE_MISBEHAVIOURS:
            raise ValueError(f"unknown Forge misbehaviour {misbehave!r}")
        app = self._app()
        self.stats["forge_attempts"] += 1
        headers = {
            "Content-Type": "application/json",
            "x-b3-traceid": secrets.token_hex(16),
            "x-b3-spanid": secrets.token_hex(8),
        }
        token = self.invocation_token(tenant, module_key, module_type, account, misbehave=misbehave)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if endpoint["system"]:
            headers["x-forge-oauth-system"] = self.product_token(tenant, None, ttl=token_ttl)
        if endpoint["user"] and account:
            headers["x-forge-oauth-user"] = self.product_token(tenant, account, ttl=token_ttl)
        url = app.base_url + endpoint["path"]
        return self.sim.http.post(url, data=json.dumps(body).encode(), headers=headers, timeout=25)

    # ------------------------------------------------------------------ tokens

    def claims(
        self, tenant: Tenant, module_key: str, module_type: str, account: str | None
    ) -> dict[str, Any]:
        """The claims of a FIT as Forge mints them (Forge Remote essentials' table)."""
        app, now = self._app(), int(self.sim.clock())
        claims: dict[str, Any] = {
            "iss": "forge/invocation-token",
            "aud": app.app_id,
            "iat": now,
            "nbf": now,
            "exp": now + FIT_TTL,
            "jti": secrets.token_hex(20),
            "app": {
                "id": app.app_id,
                "installationId": tenant.installation_id,
                "apiBaseUrl": self.api_base_url(tenant),
                "appVersion": "2.0.0",
                "environment": {
                    "type": "PRODUCTION",
                    "id": f"ari:cloud:ecosystem::environment/{app.app_id.rsplit('/', 1)[1]}/"
                    f"{app.environment_id}",
                },
                "module": {"type": module_type, "key": module_key},
                "installation": {
                    "id": tenant.installation_id,
                    "contexts": [
                        {
                            "name": "confluence",
                            "apiBaseUrl": self.api_base_url(tenant),
                            "cloudId": tenant.cloud_id,
                        }
                    ],
                },
            },
            "context": {
                "cloudId": tenant.cloud_id,
                "siteUrl": self.site_url(tenant),
                "moduleKey": module_key,
            },
        }
        if account:
            claims["principal"] = account
        return claims

    def invocation_token(
        self,
        tenant: Tenant,
        module_key: str,
        module_type: str = "xen:macro",
        account: str | None = None,
        *,
        misbehave: str | None = None,
    ) -> str | None:
        """A FIT for one invocation, spoilt as ``misbehave`` says."""
        claims = self.claims(tenant, module_key, module_type, account)
        key, kid = self._private_key, self.kid
        if misbehave == "missing":
            return None
        if misbehave == "malformed":
            return "eyJhbGciOiJSUzI1NiJ9.not-json.sig"
        if misbehave in ("alg_none", "jku_header", "hs256_with_public_key"):
            return self._crafted(claims, misbehave)
        spoil = _CLAIM_SPOILERS.get(misbehave)
        if spoil is not None:
            spoil(claims, tenant)
        if misbehave == "no_kid":
            kid = ""
        elif misbehave == "kid_traversal":
            kid = "../../../etc/passwd"
        elif misbehave == "unknown_kid":
            kid = f"forge-unknown-{uuid.uuid4().hex[:12]}"
        elif misbehave == "bad_signature":
            key = self.sim.foreign_key()
        token = signing.sign_rs256(claims, key, kid=kid) if kid else _sign_without_kid(claims, key)
        self.sim._remember(token)
        return token

    def _crafted(self, claims: dict[str, Any], misbehave: str) -> str:
        if misbehave == "hs256_with_public_key":
            token = signing.sign_hs256(claims, self._public_pem, kid=self.kid)
        elif misbehave == "jku_header":
            token = signing.sign_hs256(
                claims, "x", alg="RS256", kid=self.kid, jku="https://evil.example/jwks.json"
            )
        else:
            token = signing.sign_hs256(claims, "x", kid=self.kid, alg="none")
        self.sim._remember(token)
        return token

    def product_token(self, tenant: Tenant, account: str | None, *, ttl: int | None = None) -> str:
        """An ``x-forge-oauth-system`` (account None) or ``-user`` token: a JWT with ``exp``."""
        now = self.sim.clock()
        ttl = ttl if ttl is not None else (USER_TOKEN_TTL if account else SYSTEM_TOKEN_TTL)
        claims = {
            "iss": "forge/simulator",
            "sub": account or "app-bot",
            "iat": int(now),
            "exp": int(now) + ttl,
            "jti": uuid.uuid4().hex,
        }
        token = signing.sign_hs256(claims, self._token_secret)
        self._tokens[token] = _ProductToken(tenant.name, account, now + ttl)
        self.sim._remember(token)
        return token

    # ------------------------------------------------------------------ the HTTP side

    def jwks(self) -> dict[str, Any]:
        """The key set, as Forge publishes it (RSA public keys with kid, alg and use)."""
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        self.stats["jwks"] += 1
        numbers = load_pem_public_key(self._public_pem.encode()).public_numbers()
        b64 = lambda n: signing._b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))  # noqa: E731
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "kid": self.kid,
                    "alg": "RS256",
                    "use": "sig",
                    "n": b64(numbers.n),
                    "e": b64(numbers.e),
                }
            ]
        }

    def rest(self, environ: dict, method: str, path: str) -> tuple[int, Any]:
        """A product call at ``/ex/confluence/<cloudId>/wiki/...`` with a Forge product token."""
        parts = path.split("/", 4)  # '', 'ex', 'confluence', cloudId, rest
        tenant = next(
            (t for t in self.sim.tenants.values() if len(parts) == 5 and t.cloud_id == parts[3]), None
        )
        if tenant is None or not parts[4].startswith("wiki/"):
            raise HostError(404, "No site at this address")
        site_path = "/" + parts[4]
        user = self._authenticate(environ, tenant)
        self.sim.identified(tenant, site_path, on_behalf=None if user.is_app else user)
        required = self.sim.scope_map.lookup(method, site_path)
        needed = self.sim.scope_map.oauth_scopes(method, site_path)
        if required is None or needed is None:
            raise HostError(404, f"No API at {site_path} for {method}")
        if missing_oauth_scopes(tenant.forge_granted, needed) is not None:
            raise HostError(403, SCOPE_MESSAGE)
        handler = self.sim.rest_handler(required.operation_id)
        if handler is None:
            raise HostError(501, f"The simulator does not implement {required.operation_id}")
        page_id = site_path.rstrip("/").rsplit("/", 1)[-1]
        if required.operation_id == "getContentById" and page_id in self.flaky_pages:
            self.flaky_pages.discard(page_id)
            raise HostError(503, "Service Unavailable: try again later")
        return handler(self.sim, tenant, user, environ, site_path)

    def _authenticate(self, environ: dict, tenant: Tenant) -> Any:
        scheme, _, credential = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        self.sim._remember(credential.strip())
        self.stats["forge_rest_calls"] += 1
        token = self._tokens.get(credential.strip()) if scheme.lower() == "bearer" else None
        if token is None or token.tenant != tenant.name or token.expires_at <= self.sim.clock():
            raise HostError(401, "Unauthorized; the token is invalid or expired")
        if tenant.forge_status != "installed":
            raise HostError(401, "The app is not installed on this site")
        user = tenant.site.app_user if token.account_id is None else tenant.site.user(token.account_id)
        if user is None:
            raise HostError(401, "The token's user no longer exists")
        return user


def _sign_without_kid(claims: dict[str, Any], key: str) -> str:
    token = signing.sign_rs256(claims, key, kid="x")
    # Re-sign with a header that has no kid at all: the verifier must refuse before any lookup.
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT"}').rstrip(b"=").decode()
    signing_input = f"{header}.{token.split('.')[1]}"
    signature = signing._rsa_private_key(key.encode()).sign(
        signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    return f"{signing_input}.{signing._b64(signature)}"


def _spoil_app(name: str, value: Any) -> Any:
    def spoil(claims: dict[str, Any], tenant: Tenant) -> None:
        if value is None:
            claims["app"].pop(name, None)
        else:
            claims["app"][name] = value(tenant) if callable(value) else value

    return spoil


def _times(shift: int = 0, ttl: int | None = None) -> Any:
    def spoil(claims: dict[str, Any], tenant: Tenant) -> None:
        now = claims["iat"] + shift
        claims["iat"] = claims["nbf"] = now
        claims["exp"] = now + (ttl if ttl is not None else FIT_TTL)

    return spoil


_CLAIM_SPOILERS = {
    "wrong_issuer": lambda c, t: c.update(iss=t.client_key),
    "no_installation": _spoil_app("installationId", None),
    "bad_installation": _spoil_app("installationId", "installation-1234"),
    "http_api_base": _spoil_app("apiBaseUrl", "http://api.example.com/ex/confluence/x"),
    "no_principal": lambda c, t: c.pop("principal", None),
    "long_lived": _times(ttl=7 * 24 * 3600),
    "expired": _times(shift=-3600),
    "future": _times(shift=3600),
    "wrong_audience": lambda c, t: c.update(aud=f"ari:cloud:ecosystem::app/{uuid.uuid4()}"),
    "other_module": lambda c, t: c["app"]["module"].update(key="some-other-module"),
    "other_site": lambda c, t: c["context"].update(cloudId=str(uuid.uuid4())),
    "too_large": lambda c, t: c.update(padding="x" * 9000),
}


def forge_ids() -> tuple[str, str]:
    """A new (installation ARI, cloudId) pair for a simulated site."""
    return f"ari:cloud:ecosystem::installation/{uuid.uuid4()}", str(uuid.uuid4())
