"""A Confluence Cloud host, simulated over real HTTP, for the demo and the end-to-end tests.

:class:`ConfluenceSimulator` plays both of Atlassian's parts towards a Connect app:

**The host calling the app.** It fetches the app's descriptor, installs it on its tenants
with signed lifecycle callbacks (RS256, a ``kid`` whose public key it serves at
``/<kid>``, so the app's install-key source is simply :attr:`~ConfluenceSimulator.url`),
and sends page loads (``?jwt=``), webhooks and context-token API calls. On request it
misbehaves the way real clients and attackers do (:data:`MISBEHAVIOURS`: stale and future
tokens, a wrong ``qsh``, a tampered signature, an unknown issuer, replays, ``alg`` tricks),
so that every rejection path of the app is reachable over HTTP.

**Forge.** :attr:`ConfluenceSimulator.forge` (:mod:`.forge`) plays Forge towards a Forge or
Connect-on-Forge remote: invocation tokens signed with keys served as a JWKS, resolvers,
product events, scheduled triggers and lifecycle events, and the ``apiBaseUrl`` REST API.

**The product the app calls.** Under each tenant's baseUrl
(``http://127.0.0.1:PORT/t/<name>/wiki``) it answers a realistic REST subset (content
list/get/create/update/delete, spaces, CQL search, current user). It authenticates the
app's JWTs strictly (the project's own verifier, ``qsh`` included) and the bearer tokens it
issues at its ``/oauth2/token`` (JWT bearer grant: the assertion is checked for HS256 with
the shared secret, ``iss``, ``sub``, ``tnt``, ``aud`` and a lifetime of at most 60 s). It
then enforces the Connect scope of each operation with the shared scope map ("Request not
in an authorized API scope", 403) and each user's space permissions (403), as Confluence
does: what an app may do is the intersection of its scopes and the acting user's rights.

Tenants differ on purpose (:data:`DEFAULT_TENANTS`): one granted narrower scopes than the
descriptor asks for (its admin has not approved the descriptor update), one meant to be
uninstalled, one whose directory and content are hostile (see :mod:`.site`).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import requests

from collector import signing
from collector.errors import TokenRejected
from collector.scopes import ScopeMap, normalise_scopes, satisfies
from collector.simulator.audit import ApiError, AtlassianRecord
from collector.simulator.forge import FORGE_API, ForgeHost, forge_ids
from collector.simulator.server import ServerThread
from collector.simulator.site import HostError, Site, User
from collector.tokens import InstallSecret, StaticInstalls, TokenVerifier

PRODUCT = "confluence"
ACCESS_TOKEN_TTL = 900
SCOPE_MESSAGE = "Request not in an authorized API scope"

#: Ways the simulated host can get a request to the app wrong, each one rejection code.
MISBEHAVIOURS = {
    "missing": "missing_token",
    "malformed": "malformed",
    "too_large": "too_large",
    "alg_none": "alg_not_allowed",
    "jku_header": "unsupported_header",
    "unknown_issuer": "unknown_issuer",
    "bad_signature": "bad_signature",
    "no_qsh": "missing_claim",
    "float_exp": "invalid_claim",
    "long_lived": "lifetime_too_long",
    "expired": "expired",
    "future": "not_yet_valid",
    "wrong_qsh": "qsh_mismatch",
    "context_token": "context_qsh_not_allowed",  # a context token on a request route
    "replay": "replayed",  # the same token twice on a state-changing request
}

#: The same for lifecycle callbacks.
LIFECYCLE_MISBEHAVIOURS = {
    "missing": "missing_token",
    "hs256": "alg_not_allowed",
    "no_kid": "missing_kid",
    "unknown_kid": "unknown_kid",
    "bad_signature": "bad_signature",
    "expired": "expired",
    "wrong_qsh": "qsh_mismatch",
    "wrong_audience": "wrong_audience",
    "issuer_mismatch": "issuer_mismatch",
    "replay": "replayed",
}


@dataclass(frozen=True)
class TenantSpec:
    """How one simulated site is set up: ``scopes`` caps what its admin granted (None: all
    the descriptor asks for); ``hostile`` fills it with hostile users, names and content."""

    name: str
    description: str = ""
    scopes: tuple[str, ...] | None = None
    hostile: bool = False
    client_key_prefix: str = ""
    host: str = ""  # its name on atlassian.net with public hosts (default: ``name``)


DEFAULT_TENANTS = (
    TenantSpec("acme", "Acme Corporation"),
    TenantSpec("globex", "Globex: the admin approved READ only", scopes=("READ",)),
    TenantSpec("initech", "Initech: uninstalls the app"),
    TenantSpec(
        "umbrella",
        "<script>alert('tenant')</script>\r\n=HYPERLINK(\"https://evil.example\")",
        hostile=True,
        client_key_prefix="=cmd|' /C calc'!A0+@-",
        host="hostile-test-data",
    ),
)


@dataclass
class Tenant:
    """One simulated site and the state of the app's install on it."""

    spec: TenantSpec
    host_url: str  # the site's origin: the simulator's own, or https://<host>.atlassian.net
    site: Site
    client_key: str
    shared_secret: str = field(repr=False)
    oauth_client_id: str
    status: str = "new"  # new | installed | enabled | disabled | uninstalled
    granted: tuple[str, ...] = ()
    # Forge: the installation of the Forge app on this site (see collector.simulator.forge)
    installation_id: str = ""
    cloud_id: str = ""
    forge_status: str = "new"  # new | installed
    forge_granted: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def site_url(self) -> str:
        """The site's root: ``https://acme.atlassian.net``, or a path on the simulator's origin."""
        public = self.host_url.startswith("https://")
        return self.host_url if public else f"{self.host_url}/t/{self.spec.name}"

    @property
    def base_url(self) -> str:
        return f"{self.site_url}/wiki"

    @property
    def active(self) -> bool:
        return self.status in ("installed", "enabled")

    def users(self) -> list[User]:
        return self.site.human_users()


@dataclass(frozen=True)
class _AccessToken:
    tenant: str
    account_id: str
    scopes: tuple[str, ...]
    expires_at: float


@dataclass
class AppInfo:
    """What the host learnt from the app's descriptor."""

    key: str
    base_url: str
    scopes: tuple[str, ...]
    lifecycle: dict[str, str]
    pages: list[str]
    webhooks: dict[str, str]
    descriptor: dict[str, Any] = field(repr=False)


class ConfluenceSimulator:
    """The simulated host: an HTTP server on loopback plus the client side that calls the app."""

    def __init__(
        self,
        *,
        tenants: Iterable[TenantSpec] = DEFAULT_TENANTS,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        port: int = 0,
        public_hosts: bool = False,
        plain_sites: bool = False,
    ) -> None:
        self.clock = clock
        self._server = ServerThread(self.wsgi, port=port)
        self.url = self._server.url
        #: Sites at their Atlassian names (``https://acme.atlassian.net``), Forge's API at
        #: ``https://api.atlassian.com`` and the authorization server at Atlassian's address,
        #: reached through :meth:`transport` (the app's HTTP adapter), not through DNS.
        self.public_hosts = public_hosts
        #: Hostile content only on the hostile site; the others read like a real team's.
        self.plain_sites = plain_sites
        #: Sites whose user API answers 429 (Retry-After: 120), as a rate-limited site does.
        self.throttled: set[str] = set()
        self.kid = f"sim-{uuid.uuid4().hex}"
        self._private_key, self._public_pem = signing.rsa_key_pair()
        self.scope_map = ScopeMap.default()
        self.tenants: dict[str, Tenant] = {}
        for spec in tenants:
            installation_id, cloud_id = forge_ids()
            origin = f"https://{spec.host or spec.name}.atlassian.net" if public_hosts else self.url
            self.tenants[spec.name] = Tenant(
                spec=spec, host_url=origin,
                site=Site(spec.name, seed=seed, hostile=spec.hostile, plain=plain_sites),
                client_key=f"{spec.client_key_prefix}{uuid.uuid4()}",
                shared_secret=secrets.token_urlsafe(32), oauth_client_id=uuid.uuid4().hex,
                installation_id=installation_id, cloud_id=cloud_id,
            )
        self.app: AppInfo | None = None
        self._access: dict[str, _AccessToken] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._credentials: set[str] = set()
        #: Counters: token_requests (at /oauth2/token), rest_calls (authenticated REST calls),
        #: and for Forge jwks, forge_attempts, forge_rest_calls.
        self.stats: Counter[str] = Counter()
        #: Forge's side: the JWKS, invocations of the app's remote, the apiBaseUrl REST API.
        self.forge = ForgeHost(self)
        #: Atlassian's own record of what this host served, and its audit APIs (.audit).
        self.record = AtlassianRecord(self, clock)

    # ------------------------------------------------------------------ running

    def start(self) -> ConfluenceSimulator:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> ConfluenceSimulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def install_keys_url(self) -> str:
        """The key source for the app: the public key for kid K is ``<url>/K``."""
        return self.url

    @property
    def authorization_server(self) -> str:
        """Where the app exchanges bearer assertions: ``<url>/oauth2/token``."""
        return signing.DEFAULT_AUTHORIZATION_SERVER if self.public_hosts else self.url

    def transport(self, **options: Any) -> requests.adapters.HTTPAdapter:
        """A ``requests`` adapter that delivers the app's calls to public names (sites, Forge's
        API, the authorization server) to this simulator; give it to ``ConnectAudit(http_adapter=)``."""
        from collector.simulator.server import LoopbackTransport

        routes: dict[str, str] = {}
        if self.public_hosts:  # loopback sites are reached at their own address already
            routes = {urlsplit(t.host_url).netloc: f"{self.url}/t/{t.name}" for t in self.tenants.values()}
            for origin in (signing.DEFAULT_AUTHORIZATION_SERVER, FORGE_API):
                routes[urlsplit(origin).netloc] = self.url
        return LoopbackTransport(routes, **options)

    def tenant(self, name: str) -> Tenant:
        try:
            return self.tenants[name]
        except KeyError:
            raise KeyError(f"the simulator has no tenant {name!r}") from None

    def credentials(self) -> frozenset[str]:
        """Every secret this host handed out or received: shared secrets, the tokens it sent
        the app, the app JWTs, assertions and access tokens the app sent it, and the access
        tokens it issued. Tests search the audit store for each of these (and for each
        token's signature) to prove that none was recorded."""
        with self._lock:
            found = set(self._credentials)
        found.update(t.shared_secret for t in self.tenants.values())
        found.update(self.record.credentials())
        return frozenset(found)

    def _remember(self, *values: str | None) -> None:
        with self._lock:
            self._credentials.update(v for v in values if v)

    @staticmethod
    def rest_handler(operation_id: str) -> Callable | None:
        """The simulator's implementation of a REST operation (shared by the Connect and Forge
        sides: the same site answers both), or None."""
        return _HANDLERS.get(operation_id)

    @staticmethod
    def foreign_key() -> str:
        """A private key nobody publishes: what a forger signs with."""
        return _foreign_key()

    def tenant_by_client_key(self, client_key: str) -> Tenant | None:
        return next((t for t in self.tenants.values() if t.client_key == client_key), None)

    @property
    def http(self) -> requests.Session:
        """A session per thread for calls to the app (sessions are not shared across threads)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False  # no proxy or .netrc lookups: this host talks to loopback only
        return session

    # ------------------------------------------------------------------ the app

    def connect(self, app_base_url: str) -> AppInfo:
        """Fetch and read the app's descriptor, as the host does before an install."""
        response = self.http.get(f"{app_base_url.rstrip('/')}/atlassian-connect.json", timeout=10)
        response.raise_for_status()
        descriptor = response.json()
        modules = descriptor.get("modules") or {}
        self.app = AppInfo(
            key=descriptor["key"],
            base_url=descriptor.get("baseUrl", app_base_url).rstrip("/"),
            scopes=tuple(normalise_scopes(descriptor.get("scopes") or ["READ"])),
            lifecycle={k: v for k, v in (descriptor.get("lifecycle") or {}).items() if isinstance(v, str)},
            pages=[m["url"] for kind in ("generalPages", "adminPages") for m in modules.get(kind, [])],
            webhooks={w["event"]: w["url"] for w in modules.get("webhooks", [])},
            descriptor=descriptor,
        )
        return self.app

    def _app(self) -> AppInfo:
        if self.app is None:
            raise RuntimeError("call connect(app_base_url) before talking to the app")
        return self.app

    # ------------------------------------------------------------------ lifecycle callbacks

    def install(self, name: str, *, misbehave: str | None = None,
                granted: Iterable[str] | None = None) -> requests.Response:
        """Install the app on tenant ``name`` (a signed ``installed`` callback); again on an
        installed site, a reinstall (an app update). ``granted`` caps the scopes the site's
        admin approved (default: the tenant's spec)."""
        tenant = self.tenant(name)
        app = self._app()
        if misbehave is None:
            caps = tenant.spec.scopes if granted is None else tuple(granted)
            tenant.granted = tuple(s for s in app.scopes if caps is None or s in caps)
        again = tenant.status in ("installed", "enabled")
        response = self._lifecycle(tenant, "installed", misbehave=misbehave)
        if response.ok and misbehave is None:
            tenant.status = "installed"
            self.record.note_lifecycle(tenant, "updated" if again else "installed")
        return response

    def rotate_secret(self, name: str) -> None:
        """Give the site a new shared secret, handed to the app by its next install callback."""
        tenant = self.tenant(name)
        self._remember(tenant.shared_secret)  # the old one must not reach the log either
        tenant.shared_secret = secrets.token_urlsafe(32)

    def enable(self, name: str, *, misbehave: str | None = None) -> requests.Response:
        return self._transition(name, "enabled", misbehave)

    def disable(self, name: str, *, misbehave: str | None = None) -> requests.Response:
        return self._transition(name, "disabled", misbehave)

    def uninstall(self, name: str, *, misbehave: str | None = None) -> requests.Response:
        return self._transition(name, "uninstalled", misbehave)

    def _transition(self, name: str, event: str, misbehave: str | None) -> requests.Response:
        tenant = self.tenant(name)
        response = self._lifecycle(tenant, event, misbehave=misbehave)
        if response.ok and misbehave is None:
            tenant.status = event
            self.record.note_lifecycle(tenant, event)
        return response

    def lifecycle_payload(self, tenant: Tenant, event: str) -> dict[str, Any]:
        app = self._app()
        payload = {
            "key": app.key,
            "clientKey": tenant.client_key,
            "oauthClientId": tenant.oauth_client_id,
            "sharedSecret": tenant.shared_secret,
            "serverVersion": "6452",
            "pluginsVersion": "1001.0.0",
            "baseUrl": tenant.base_url,
            "displayUrl": tenant.base_url,
            "productType": PRODUCT,
            "description": tenant.spec.description,
            "eventType": event,
        }
        if event != "installed":
            payload.pop("sharedSecret")  # only the install hands over the secret
        return payload

    def _lifecycle(self, tenant: Tenant, event: str, *, misbehave: str | None) -> requests.Response:
        if misbehave is not None and misbehave not in LIFECYCLE_MISBEHAVIOURS:
            raise ValueError(f"unknown lifecycle misbehaviour {misbehave!r}")
        app = self._app()
        path = app.lifecycle.get(event)
        if path is None:
            raise RuntimeError(f"the app's descriptor declares no {event} lifecycle URL")
        url = app.base_url + path
        payload = self.lifecycle_payload(tenant, event)
        token = self.lifecycle_token(tenant, url, misbehave=misbehave)
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"JWT {token}"
        body = json.dumps(payload).encode()
        response = self.http.post(url, data=body, headers=headers, timeout=10)
        if misbehave == "replay":
            response = self.http.post(url, data=body, headers=headers, timeout=10)
        return response

    def lifecycle_token(self, tenant: Tenant, url: str, *, misbehave: str | None = None) -> str | None:
        """A lifecycle token for ``url``, spoilt as ``misbehave`` says."""
        app = self._app()
        now = self.clock()
        client_key, audience, kid, key, target = (tenant.client_key, app.base_url, self.kid,
                                                  self._private_key, url)
        if misbehave == "missing":
            return None
        if misbehave == "hs256":
            claims = {"iss": client_key, "aud": [audience], "iat": int(now), "exp": int(now) + 180,
                      "qsh": "0" * 64}
            return signing.sign_hs256(claims, tenant.shared_secret)
        if misbehave == "no_kid":
            kid = "../../etc/passwd"  # not a strictly formatted kid: refused before any lookup
        elif misbehave == "unknown_kid":
            kid = f"sim-unknown-{uuid.uuid4().hex}"
        elif misbehave == "bad_signature":
            key = _foreign_key()  # the right kid, someone else's key
        elif misbehave == "expired":
            now -= 3600
        elif misbehave == "wrong_qsh":
            target = url + "?tampered=1"
        elif misbehave == "wrong_audience":
            audience = "https://not-this-app.example"
        elif misbehave == "issuer_mismatch":
            client_key = f"{uuid.uuid4()}"
        token = signing.lifecycle_token(private_key_pem=key, kid=kid, client_key=client_key,
                                        app_base_url=audience, method="POST", url=target, now=now)
        self._remember(token)
        return token

    # ------------------------------------------------------------------ calls to the app

    def page_load(self, name: str, *, user: str | None = None, page: str | None = None,
                  params: Mapping[str, str] | None = None, misbehave: str | None = None,
                  space: str = "DEV") -> requests.Response:
        """Load a general page of the app in the tenant, as the browser iframe does (``?jwt=``),
        in the context of ``space``."""
        tenant = self.tenant(name)
        app = self._app()
        template = page or (app.pages[0] if app.pages else "/")
        path, _, query = template.partition("?")
        context_params = {"space.key": space, "page.id": next(iter(tenant.site.pages), "")}
        query_params = [(k, _expand(v, context_params)) for k, v in _pairs(query)]
        query_params += [("xdm_e", tenant.host_url), ("xdm_c", "channel-" + app.key), ("cp", "/wiki"),
                         ("lic", "none"), ("cv", "1001.0.0")]
        query_params += list((params or {}).items())
        return self.call_app(tenant, "GET", path, params=query_params, user=user, via="query",
                             misbehave=misbehave)

    def webhook(self, name: str, event: str, body: Mapping[str, Any] | None = None, *,
                misbehave: str | None = None) -> requests.Response:
        """Deliver a webhook the app subscribed to (POST, JWT in the Authorization header)."""
        tenant = self.tenant(name)
        path = self._app().webhooks.get(event)
        if path is None:
            raise RuntimeError(f"the app subscribed to no {event} webhook")
        if body is None:
            page = next(iter(tenant.site.pages.values()))
            body = {"timestamp": int(self.clock() * 1000), "userAccountId": tenant.users()[0].account_id,
                    "page": {"id": page.id, "title": page.title, "spaceKey": page.space_key,
                             "creatorAccountId": page.creator, "version": page.version}}
        return self.call_app(tenant, "POST", path, json_body=body, misbehave=misbehave)

    def context_call(self, name: str, method: str, path: str, *, user: str | None = None,
                     params: Mapping[str, str] | None = None, json_body: Any = None,
                     misbehave: str | None = None) -> requests.Response:
        """Call the app's API as its front end does with ``AP.context.getToken()``."""
        tenant = self.tenant(name)
        return self.call_app(tenant, method, path, params=list((params or {}).items()), json_body=json_body,
                             user=user, context=True, misbehave=misbehave)

    def call_app(self, tenant: Tenant, method: str, path: str, *, params: list[tuple[str, str]] | None = None,
                 json_body: Any = None, user: str | None = None, context: bool = False,
                 via: str = "header", misbehave: str | None = None,
                 headers: Mapping[str, str] | None = None) -> requests.Response:
        """Send one request to the app, signed as the host would sign it (or spoilt)."""
        if misbehave is not None and misbehave not in MISBEHAVIOURS:
            raise ValueError(f"unknown misbehaviour {misbehave!r}")
        app = self._app()
        query = urlencode(params or [], quote_via=quote)
        url = f"{app.base_url}{path}" + (f"?{query}" if query else "")
        token = self.request_token(tenant, method, url, user=user, context=context, misbehave=misbehave)
        out_headers = dict(headers or {})
        target = url
        if token is not None and via == "query":
            target = url + ("&" if query else "?") + "jwt=" + token
        elif token is not None:
            out_headers["Authorization"] = f"JWT {token}"
        data = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            out_headers["Content-Type"] = "application/json"
        response = self.http.request(method, target, data=data, headers=out_headers, timeout=10)
        if misbehave == "replay":
            response = self.http.request(method, target, data=data, headers=out_headers, timeout=10)
        return response

    def script_call(self, name: str, method: str, path: str, *, params: Mapping[str, str] | None = None,
                    json_body: Any = None) -> requests.Response:
        """A call to the site's REST API signed with the install's shared secret by something
        that is not the app: a script holding a leaked secret. The host serves it as the app's
        (and Atlassian's record holds it); the app's collector never sees it."""
        tenant = self.tenant(name)
        app = self._app()
        query = urlencode(list((params or {}).items()), quote_via=quote)
        public = f"{tenant.base_url}{path}" + (f"?{query}" if query else "")
        token = signing.app_token(app_key=app.key, shared_secret=tenant.shared_secret, method=method,
                                  url=public, base_url=tenant.base_url, now=self.clock())
        self._remember(token)
        target = f"{self.url}/t/{tenant.name}/wiki{path}" + (f"?{query}" if query else "")
        data = json.dumps(json_body).encode() if json_body is not None else None
        headers = {"Authorization": f"JWT {token}", "Content-Type": "application/json"}
        return self.http.request(method, target, data=data, headers=headers, timeout=10)

    def request_token(self, tenant: Tenant, method: str, url: str, *, user: str | None = None,
                      context: bool = False, misbehave: str | None = None) -> str | None:
        """A host-to-app token for ``method url``, spoilt as ``misbehave`` says."""
        app = self._app()
        now = self.clock()
        kwargs: dict[str, Any] = {
            "client_key": tenant.client_key, "shared_secret": tenant.shared_secret, "method": method,
            "url": url, "base_url": app.base_url, "now": now, "account_id": user,
            "context": context or misbehave == "context_token",
        }
        if misbehave == "missing":
            return None
        if misbehave == "malformed":
            return "not-a-jwt"
        if misbehave == "too_large":
            kwargs["account_id"] = "x" * 9000
        elif misbehave == "unknown_issuer":
            kwargs["client_key"], kwargs["shared_secret"] = f"{uuid.uuid4()}", secrets.token_urlsafe(32)
        elif misbehave == "long_lived":
            kwargs["ttl"] = 7 * 24 * 3600
        elif misbehave == "expired":
            kwargs["now"] = now - 3600
        elif misbehave == "future":
            kwargs["now"] = now + 3600
        elif misbehave == "wrong_qsh":
            kwargs["url"] = url.split("?", 1)[0] + "/other"
        elif misbehave in ("alg_none", "jku_header", "no_qsh", "float_exp"):
            token = self._crafted_token(tenant, user, misbehave, now)
            self._remember(token)
            return token
        token = signing.request_token(**kwargs)
        if misbehave is None:
            token = _with_jti(token, tenant.shared_secret)
        if misbehave == "bad_signature":
            token = _tamper(token)
        self._remember(token)
        return token

    @staticmethod
    def _crafted_token(tenant: Tenant, user: str | None, misbehave: str, now: float) -> str:
        claims: dict[str, Any] = {"iss": tenant.client_key, "iat": int(now), "exp": int(now) + 180,
                                  "qsh": "0" * 64}
        if user:
            claims["sub"] = user
        header: dict[str, str] = {}
        if misbehave == "alg_none":
            header["alg"] = "none"
        elif misbehave == "jku_header":
            header["jku"] = "https://evil.example/keys"
        elif misbehave == "no_qsh":
            del claims["qsh"]
        else:  # float_exp: milliseconds as a float, a classic issuer bug
            claims["exp"] = float(claims["exp"]) * 1000.0
        return signing.sign_hs256(claims, tenant.shared_secret, **header)

    # ------------------------------------------------------------------ the HTTP side

    def wsgi(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """The simulator's WSGI app: keys, the token endpoint, and each tenant's REST API."""
        path = environ.get("PATH_INFO", "/")
        method = environ.get("REQUEST_METHOD", "GET").upper()
        extra: list[tuple[str, str]] = []
        self._local.caller = None
        try:
            if path == "/oauth2/token":
                if method != "POST":
                    raise HostError(405, "Method not allowed")
                status, body = 200, self._token_endpoint(environ)
            elif path.startswith("/t/"):
                status, body = self._rest(environ, method, path)
            elif path == "/.well-known/jwks.json" and method == "GET":
                status, body = 200, self.forge.jwks()
            elif path.startswith("/ex/confluence/"):
                status, body = self.forge.rest(environ, method, path)
            elif path.startswith("/admin/v1/orgs/"):
                status, body, extra = self.record.org_api(environ, method, path)
            elif method == "GET" and path.count("/") == 1 and path != "/":
                return self._public_key(path[1:], start_response)
            else:
                raise HostError(404, f"Not found: {path}")
        except _OAuthError as exc:
            status, body = exc.status, {"error": exc.error, "error_description": exc.description}
        except HostError as exc:
            status, body = exc.status, {"statusCode": exc.status, "message": exc.message}
            extra = list(exc.headers)
        except ApiError as exc:
            status, body, extra = exc.status, exc.body, list(exc.headers)
        self._note_call(method, status)
        payload = b"" if body is None else json.dumps(body).encode()
        start_response(f"{status} {_REASONS.get(status, 'Status')}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(payload))), *extra])
        return [payload]

    def _note_call(self, method: str, status: int) -> None:
        """Atlassian's record of a REST call: kept when the host could tell who made it."""
        caller = getattr(self._local, "caller", None)
        if caller is not None:
            self._local.caller = None
            self.record.note_call(caller["tenant"], method, caller["path"], status, caller)

    def identified(self, tenant: Tenant, path: str, *, on_behalf: User | None = None,
                   auth_type: str | None = None) -> None:
        """Note who the REST call being served comes from (the Connect and Forge sides)."""
        person = (on_behalf.account_id, on_behalf.display_name) if on_behalf else None
        self._local.caller = {"tenant": tenant, "path": path, "auth_type": auth_type, "on_behalf": person}

    def _public_key(self, kid: str, start_response: Callable) -> Iterable[bytes]:
        if kid != self.kid:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no such key\n"]
        body = self._public_pem.encode()
        start_response("200 OK", [("Content-Type", "application/x-pem-file"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    # -- the authorization server ---------------------------------------------------

    def _token_endpoint(self, environ: dict) -> dict[str, Any]:
        form = _read_form(environ)
        if form.get("grant_type") != signing.JWT_BEARER_GRANT:
            raise _OAuthError(400, "unsupported_grant_type", "only the JWT bearer grant is supported")
        assertion = form.get("assertion") or ""
        self.stats["token_requests"] += 1
        self._remember(assertion)
        tenant, account_id = self._check_assertion(assertion)
        requested = tuple(normalise_scopes(form.get("scope", "").split())) or tenant.granted
        if "ACT_AS_USER" not in tenant.granted:
            raise _OAuthError(401, "unauthorized_client", "the app was not granted ACT_AS_USER on this site")
        refused = [s for s in requested if s != "ACT_AS_USER" and not satisfies(tenant.granted, s)]
        if refused:
            raise _OAuthError(400, "invalid_scope", f"scopes not granted to the app: {' '.join(refused)}")
        access = secrets.token_urlsafe(32)
        self._remember(access)
        with self._lock:
            now = self.clock()
            self._access = {k: v for k, v in self._access.items() if v.expires_at > now}
            self._access[access] = _AccessToken(tenant.name, account_id, requested, now + ACCESS_TOKEN_TTL)
        return {"access_token": access, "token_type": "Bearer", "expires_in": ACCESS_TOKEN_TTL,
                "scope": " ".join(requested)}

    def _check_assertion(self, assertion: str) -> tuple[Tenant, str]:
        import jwt  # pyjwt: the host's own library, independent of the code under test

        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise _OAuthError(400, "invalid_grant", "the assertion is not a JWT") from None
        tenant = next((t for t in self.tenants.values() if t.base_url == unverified.get("tnt")), None)
        if tenant is None or not tenant.active:
            raise _OAuthError(400, "invalid_grant", "unknown or inactive tenant (tnt)")
        try:
            claims = jwt.decode(
                assertion, tenant.shared_secret, algorithms=["HS256"], audience=self.authorization_server,
                options={"require": ["iss", "sub", "tnt", "aud", "iat", "exp"], "verify_exp": False,
                         "verify_iat": False},
            )
        except jwt.InvalidTokenError as exc:
            raise _OAuthError(400, "invalid_grant", f"the assertion does not verify: {exc}") from None
        now = self.clock()
        if not (claims["iat"] - 30 <= now < claims["exp"] + 30) or claims["exp"] - claims["iat"] > 60:
            raise _OAuthError(400, "invalid_grant", "the assertion is expired or lives longer than 60 s")
        if claims["iss"] != f"urn:atlassian:connect:clientid:{tenant.oauth_client_id}":
            raise _OAuthError(400, "invalid_grant", "iss is not this install's OAuth client")
        prefix = "urn:atlassian:connect:useraccountid:"
        account_id = claims["sub"][len(prefix):] if claims["sub"].startswith(prefix) else None
        if not account_id or tenant.site.user(account_id) is None:
            raise _OAuthError(400, "invalid_grant", "sub names no user of this site")
        return tenant, account_id

    # -- the product's REST API -----------------------------------------------------

    def _rest(self, environ: dict, method: str, path: str) -> tuple[int, Any]:
        _, _, name, rest = path.split("/", 3) if path.count("/") >= 3 else ("", "", "", "")
        tenant = self.tenants.get(name)
        if tenant is None or not rest.startswith("wiki/"):
            raise HostError(404, "No site at this address")
        site_path = "/" + rest  # /wiki/rest/api/...
        if site_path.rstrip("/") == "/wiki/rest/api/audit" and method == "GET" and \
                environ.get("HTTP_AUTHORIZATION", "").lower().startswith("basic "):
            return 200, self.record.confluence_audit(tenant, environ)  # a site admin's API token
        user, scopes = self._authenticate(environ, tenant, method)
        self.identified(tenant, site_path, on_behalf=None if user.is_app else user,
                        auth_type="connect-token" if user.is_app else "auth-token-for-2LO")
        required = self.scope_map.lookup(method, site_path)
        if required is None:
            raise HostError(404, f"No API at {site_path} for {method}")
        if not satisfies(scopes, required.scope):  # INACCESSIBLE operations end here too
            raise HostError(403, SCOPE_MESSAGE)
        handler = _HANDLERS.get(required.operation_id)
        if handler is None:
            raise HostError(501, f"The simulator does not implement {required.operation_id}")
        return handler(self, tenant, user, environ, site_path)

    def _authenticate(self, environ: dict, tenant: Tenant, method: str) -> tuple[User, tuple[str, ...]]:
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, credential = header.partition(" ")
        self._remember(credential.strip())
        self.stats["rest_calls"] += 1
        if not tenant.active:
            raise HostError(401, "The app is not installed on this site or is disabled")
        if scheme.lower() == "bearer" and credential:
            with self._lock:
                access = self._access.get(credential.strip())
            if access is None or access.tenant != tenant.name or access.expires_at <= self.clock():
                raise HostError(401, "The access token is invalid or expired")
            user = tenant.site.user(access.account_id)
            if user is None:
                raise HostError(401, "The access token's user no longer exists")
            return user, tuple(s for s in access.scopes if satisfies(tenant.granted, s))
        if scheme.lower() == "jwt" and credential:
            self._verify_app_jwt(credential.strip(), tenant, method, environ)
            return tenant.site.app_user, tenant.granted
        raise HostError(401, "Authentication required (JWT or Bearer)")

    def _verify_app_jwt(self, token: str, tenant: Tenant, method: str, environ: dict) -> None:
        app = self._app()
        install = InstallSecret(app.key, tenant.shared_secret, True, tenant.base_url)
        verifier = TokenVerifier(StaticInstalls({app.key: install}), clock=self.clock,
                                 app_base_url=tenant.base_url)
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
        if "://" in raw.split("?", 1)[0]:  # an absolute-form request target
            raw = "/" + raw.split("://", 1)[1].partition("/")[2]
        target = raw.lstrip("/")
        try:
            # The app signed the URL it called (the site's public name); the request reached the
            # simulator's route for the site, /t/<name>/..., on loopback.
            site_relative = target.removeprefix(f"t/{tenant.name}/")
            verifier.verify_request(token, method, f"{tenant.site_url}/{site_relative}")
        except TokenRejected as exc:
            raise HostError(401, f"JWT authentication failed: {exc.code}") from None


# ---------------------------------------------------------------------- REST handlers


def _json_body(environ: dict) -> dict[str, Any]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        data = json.loads(environ["wsgi.input"].read(min(length, 1 << 20)) or b"{}")
    except (ValueError, KeyError):
        raise HostError(400, "The request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HostError(400, "The request body must be a JSON object")
    return data


def _query(environ: dict) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))


def _int(value: str | None, default: int, *, high: int = 100) -> int:
    try:
        return max(0, min(int(value), high)) if value is not None else default
    except ValueError:
        raise HostError(400, f"Not an integer: {value}") from None


def _last(site_path: str) -> str:
    from urllib.parse import unquote

    return unquote(site_path.rstrip("/").rsplit("/", 1)[-1])


def _page_list(sim: ConfluenceSimulator, tenant: Tenant, user: User, environ: dict, _path: str):
    q = _query(environ)
    pages = tenant.site.list_pages(user, space_key=q.get("spaceKey"), title=q.get("title"),
                                   start=_int(q.get("start"), 0, high=10_000), limit=_int(q.get("limit"), 25))
    return 200, {"results": [p.as_json(tenant.site) for p in pages], "size": len(pages)}


def _page_create(sim, tenant: Tenant, user: User, environ: dict, _path: str):
    body = _json_body(environ)
    space = (body.get("space") or {}).get("key")
    title = body.get("title")
    value = ((body.get("body") or {}).get("storage") or {}).get("value", "")
    if not isinstance(space, str) or not isinstance(title, str) or not title:
        raise HostError(400, "A page needs a space key and a title")
    page = tenant.site.create_page(user, space_key=space, title=title, body=str(value))
    return 200, page.as_json(tenant.site)


def _page_get(sim, tenant: Tenant, user: User, environ: dict, path: str):
    return 200, tenant.site.get_page(_last(path), user).as_json(tenant.site)


def _page_update(sim, tenant: Tenant, user: User, environ: dict, path: str):
    body = _json_body(environ)
    version = (body.get("version") or {}).get("number")
    if not isinstance(version, int):
        raise HostError(400, "version.number is required to update content")
    page = tenant.site.get_page(_last(path), user)
    title = body.get("title") if isinstance(body.get("title"), str) else page.title
    value = ((body.get("body") or {}).get("storage") or {}).get("value", page.body)
    page = tenant.site.update_page(page.id, user, title=title, body=str(value), version=version)
    return 200, page.as_json(tenant.site)


def _page_delete(sim, tenant: Tenant, user: User, environ: dict, path: str):
    tenant.site.delete_page(_last(path), user)
    return 204, None


def _spaces(sim, tenant: Tenant, user: User, environ: dict, _path: str):
    spaces = tenant.site.list_spaces(user)
    return 200, {"results": [s.as_json() for s in spaces], "size": len(spaces)}


def _space(sim, tenant: Tenant, user: User, environ: dict, path: str):
    return 200, tenant.site.get_space(_last(path), user).as_json()


def _search(sim, tenant: Tenant, user: User, environ: dict, _path: str):
    q = _query(environ)
    pages = tenant.site.search(user, q.get("cql", ""), limit=_int(q.get("limit"), 25))
    return 200, {"results": [{"content": p.as_json(tenant.site), "title": p.title} for p in pages],
                 "size": len(pages), "cqlQuery": q.get("cql", "")}


def _current_user(sim, tenant: Tenant, user: User, environ: dict, _path: str):
    return 200, user.as_json()


def _user(sim, tenant: Tenant, user: User, environ: dict, _path: str):
    account = _query(environ).get("accountId")
    if not account:
        raise HostError(400, "accountId is required")
    found = tenant.site.user(account)
    if found is None:
        raise HostError(404, f"No user with accountId : {account}")
    return 200, found.as_json()


def _bulk_users(sim, tenant: Tenant, user: User, environ: dict, _path: str):
    if tenant.name in sim.throttled:
        raise HostError(429, "Rate limit exceeded", headers=(("Retry-After", "120"),))
    q = _query(environ)
    ids = [a for a in (q.get("accountId") or "").split(",") if a]
    if not ids:
        raise HostError(400, "accountId is required")
    limit = _int(q.get("limit"), 200, high=200)
    found = [u.as_json() for a in ids[:limit] if (u := tenant.site.user(a)) is not None]
    return 200, {"results": found, "start": 0, "limit": limit, "size": len(found)}


_HANDLERS: dict[str, Callable] = {
    "getContent": _page_list,
    "createContent": _page_create,
    "getContentById": _page_get,
    "updateContent": _page_update,
    "deleteContent": _page_delete,
    "getSpaces": _spaces,
    "getSpace": _space,
    "searchByCQL": _search,
    "getCurrentUser": _current_user,
    "getUser": _user,
    "getBulkUserLookup": _bulk_users,
}


# ---------------------------------------------------------------------- helpers


class _OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 501: "Not Implemented",
            429: "Too Many Requests", 503: "Service Unavailable"}


def _read_form(environ: dict) -> dict[str, str]:
    from urllib.parse import parse_qsl

    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    raw = environ["wsgi.input"].read(min(length, 64 * 1024)) if length > 0 else b""
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


def _pairs(query: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(query, keep_blank_values=True)


def _expand(value: str, context: Mapping[str, str]) -> str:
    for name, replacement in context.items():
        value = value.replace("{" + name + "}", replacement)
    return value


def _with_jti(token: str, secret: str) -> str:
    """Re-sign ``token`` with a unique ``jti``, so that two webhooks of the same kind sent
    in the same second are two tokens (the app's replay guard would rightly refuse the
    second otherwise). Spoilt tokens are left exactly as made."""
    import base64

    segment = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    claims["jti"] = uuid.uuid4().hex
    return signing.sign_hs256(claims, secret)


def _tamper(token: str) -> str:
    """Change one claim and keep the signature: what a forger without the secret can do."""
    import base64

    head, claims, sig = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    data["sub"] = "557058:forged-admin"
    forged = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"


_FOREIGN: list[Any] = []


def _foreign_key() -> str:
    """A second private key in PEM (made once per process: RSA generation is slow)."""
    if not _FOREIGN:
        _FOREIGN.append(signing.rsa_key_pair()[0])
    return _FOREIGN[0]
