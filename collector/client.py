"""Outgoing calls from the app to a tenant's REST API: signed, timed, recorded, explained.

``audit.client(client_key)`` returns a :class:`TenantClient`; it hands out ``requests``
sessions bound to the tenant's baseUrl:

* :meth:`TenantClient.as_app` signs each call as the app user (an HS256 JWT, ``qsh`` over
  the path relative to the baseUrl, 3 minutes of life);
* :meth:`TenantClient.as_user` acts as one user (``ACT_AS_USER``): the OAuth 2.0 JWT bearer
  grant exchanges a 60-second assertion at ``<authorization server>/oauth2/token`` for an
  access token, cached per tenant, user and scopes until shortly before it expires.

Paths are relative to the tenant's baseUrl, as in Atlassian's own Connect libraries::

    session = audit.client(ctx.client_key).as_user(ctx.account_id)
    session.get("/rest/api/search", params={"cql": 'type = page AND title ~ "plan"'})

Every call becomes one outgoing audit event: tenant, acting identity, method, the
site-relative path (``/wiki/rest/api/search?...``) and its template, the scope the scope map
says the call needs, the install's declared scopes, status, outcome, latency, the request
id of the incoming request being handled (so one page load's events share it). A 403 is
classified: ``scope`` when the declared scopes do not cover the call (or the product itself
says the call is outside the app's authorized scopes: the site may not have approved the
descriptor's current scopes), otherwise ``permission`` (the acting user lacks the right).

For a Forge invocation, ``audit.forge_client(ctx)`` returns a :class:`ForgeClient` bound to
the invocation's ``app.apiBaseUrl`` (``https://api.atlassian.com/ex/confluence/<cloudId>``):
:meth:`ForgeClient.as_app` sends the ``x-forge-oauth-system`` token (recorded as the app user,
``forge_system``), :meth:`ForgeClient.as_user` the ``x-forge-oauth-user`` token (recorded as the
invoking user, ``forge_user``). Paths keep the product prefix (``/wiki/rest/api/content``). An
expired or absent token is refused before the call (:class:`~collector.errors.ForgeTokenExpired`,
:class:`~collector.errors.ForgeTokenUnavailable`) and recorded; a 403 is ``scope`` when the
manifest's scopes hold neither the classic nor the granular scopes the operation needs (the
event's detail names both), otherwise ``permission``.

Assertions, access tokens and Forge product tokens are credentials: they are never logged,
stored or put in an exception message. A token is recorded by its fingerprint (a hash) only.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import requests

from collector import events, signing
from collector.context import current_context, note_forbidden
from collector.errors import ForgeTokenExpired, ForgeTokenUnavailable, TokenExchangeFailed, UnknownTenant
from collector.scopes import classify_forbidden, missing_oauth_scopes, normalise_scopes, satisfies

if TYPE_CHECKING:
    from collector.forge import ForgeInvocation, ProductToken
    from collector.scopes import OAuthScopes, RequiredScope, ScopeMap


class ClientHost(Protocol):
    """What the outgoing client works with (a :class:`~collector.app.ConnectAudit` is one): named
    here so that the client depends on these, not on the facade."""

    app_key: str
    authorization_server: str
    access_tokens: AccessTokenCache
    scope_map: ScopeMap
    http_adapter: Any
    forge_scopes: tuple[str, ...]
    registry: Any  # install_secret(clientKey) -> InstallSecret | None

    def clock(self) -> float: ...

    def tenant(self, client_key: str | None) -> Any: ...  # TenantInfo | None, no secret

    def record(self, rec: events.AuditRecord) -> None: ...

log = logging.getLogger("collector.client")

#: Refresh a cached access token this long before the server says it expires (seconds).
REFRESH_MARGIN = 60.0
#: The longest product error message copied into an event's detail.
MAX_DETAIL = 300
SCOPE_MESSAGE = "not in an authorized api scope"
DEFAULT_TIMEOUT = 30.0


class AccessTokenCache:
    """Access tokens by (clientKey, accountId, scopes), until shortly before they expire.

    Held by :class:`~collector.app.ConnectAudit`, so every session of the process shares it;
    values are kept in memory only.
    """

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str, tuple[str, ...]], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, tuple[str, ...]], now: float) -> str | None:
        with self._lock:
            entry = self._tokens.get(key)
            if entry is None:
                return None
            if entry[1] <= now:
                del self._tokens[key]
                return None
            return entry[0]

    def put(self, key: tuple[str, str, tuple[str, ...]], token: str, expires_in: float, now: float) -> None:
        margin = min(REFRESH_MARGIN, expires_in / 2)
        with self._lock:
            self._tokens[key] = (token, now + expires_in - margin)

    def discard(self, key: tuple[str, str, tuple[str, ...]]) -> None:
        with self._lock:
            self._tokens.pop(key, None)

    def __len__(self) -> int:
        return len(self._tokens)

    def __repr__(self) -> str:
        return f"AccessTokenCache({len(self)} tokens)"


@dataclass(frozen=True)
class _Identity:
    kind: str  # events.APP_USER | events.USER
    account_id: str | None = None
    scopes: tuple[str, ...] | None = None  # requested token scopes (as a user)
    auth_method: str | None = None  # None: the Connect method for the kind

    @property
    def method(self) -> str:
        if self.auth_method is not None:
            return self.auth_method
        return events.APP_JWT if self.kind == events.APP_USER else events.USER_BEARER


class TenantClient:
    """Calls to one tenant, as the app user or as a user; see the module docstring."""

    def __init__(self, audit: ClientHost, client_key: str, *, adapter: Any = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        tenant = audit.tenant(client_key)
        if tenant is None or not tenant.active:
            state = "no install" if tenant is None else f"an install that is {tenant.status}"
            raise UnknownTenant(f"the clientKey {str(client_key)[:80]!r} has {state}; it cannot be called")
        self.audit = audit
        self.client_key = client_key
        self.base_url = tenant.base_url
        self.tenant_base_url = tenant.base_url  # the site, as the log names it
        self.product = tenant.product
        self.oauth_client_id = tenant.oauth_client_id
        self.declared_scopes = tenant.declared_scopes.strip()
        self.adapter = adapter if adapter is not None else audit.http_adapter
        self.timeout = timeout

    def as_app(self) -> ConnectSession:
        """A session whose calls are signed as the app user (JWT)."""
        return ConnectSession(self, _Identity(events.APP_USER))

    def as_user(self, account_id: str, scopes: Any = None) -> ConnectSession:
        """A session acting as ``account_id`` (needs ``ACT_AS_USER``); ``scopes`` narrows
        the access token (default: the scopes the site granted the app)."""
        if not account_id:
            raise ValueError("as_user needs the accountId of the user to act as")
        requested = tuple(signing.normalise_requested_scopes(scopes)) if scopes else None
        return ConnectSession(self, _Identity(events.USER, account_id, requested))

    def shared_secret(self) -> str:
        """The install's current shared secret (read each time: a reinstall replaces it)."""
        secret = self.audit.registry.install_secret(self.client_key)
        if secret is None or not secret.active:
            raise UnknownTenant(f"the clientKey {self.client_key[:80]!r} is no longer installed")
        return secret.shared_secret

    def __repr__(self) -> str:
        return f"TenantClient({self.base_url!r})"


class ConnectSession(requests.Session):
    """A ``requests.Session`` bound to one tenant that signs and records every call."""

    def __init__(self, client: TenantClient, identity: _Identity) -> None:
        super().__init__()
        self.client = client
        self.identity = identity
        self.base_url = client.base_url
        self._shared_adapter = client.adapter
        self.mount("https://", client.adapter)
        self.mount("http://", client.adapter)
        self.headers["Accept"] = "application/json"
        self.trust_env = False  # no proxies or .netrc credentials picked up from the environment

    # ------------------------------------------------------------------ requests hooks

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        """``url`` is relative to the tenant's baseUrl (``/rest/api/content``) or under it."""
        kwargs.setdefault("timeout", self.client.timeout)
        return super().request(method, self._absolute(str(url)), *args, **kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = request.url or ""
        if not self._under_base(url):
            # A redirect away from the tenant: never carry the tenant's credentials along.
            request.headers.pop("Authorization", None)
            return super().send(request, **kwargs)
        call = _Call(self, request)
        self._authorise(request, call)
        started = time.perf_counter()
        try:
            response = super().send(request, **kwargs)
        except requests.RequestException as exc:
            call.finish(None, time.perf_counter() - started, failure=exc)
            raise
        call.finish(response, time.perf_counter() - started)
        if response.status_code == 401 and self.identity.kind == events.USER:
            self.client.audit.access_tokens.discard(self._token_key())
        return response

    def close(self) -> None:
        # The pooled adapter is shared with every other session of the app: keep it open.
        for prefix, adapter in list(self.adapters.items()):
            if adapter is not self._shared_adapter:
                adapter.close()
            del self.adapters[prefix]

    # ------------------------------------------------------------------ 403s

    def oauth_scopes(self, method: str, path: str) -> OAuthScopes | None:
        """The OAuth scopes a call needs; a Connect call is judged by its Connect scope instead."""
        return None

    def forbidden_cause(self, call: _Call, message: str | None) -> str:
        """``scope`` or ``permission`` for a 403 the product gave ``call``."""
        declared = normalise_scopes(self.client.declared_scopes)
        if self.identity.scopes:  # a user token is limited to the scopes it was issued for
            declared = frozenset(s for s in self.identity.scopes if satisfies(declared, s))
        cause = classify_forbidden(declared, call.required)
        if cause == events.PERMISSION and message and SCOPE_MESSAGE in message.lower():
            # The descriptor declares the scope but the site has not granted it (an update
            # awaiting the admin's approval): still a scope problem, not a user's right.
            cause = events.SCOPE
        return cause

    # ------------------------------------------------------------------ signing

    def _authorise(self, request: requests.PreparedRequest, call: _Call) -> None:
        audit = self.client.audit
        if self.identity.kind == events.APP_USER:
            now = audit.clock()
            token = signing.app_token(
                app_key=audit.app_key, shared_secret=self.client.shared_secret(),
                method=request.method or "GET", url=request.url or "", base_url=self.base_url, now=now,
            )
            request.headers["Authorization"] = f"JWT {token}"
            from collector.tokens import token_fingerprint

            call.fingerprint = token_fingerprint(token)
            call.claims = {"iss": audit.app_key, "iat": int(now), "exp": int(now) + 180,
                           "qsh_kind": "computed"}
            return
        request.headers["Authorization"] = f"Bearer {self._access_token(call)}"
        scopes = " ".join(self.identity.scopes or ()) or None
        call.claims = {"sub": self.identity.account_id, "scopes": scopes}

    def _token_key(self) -> tuple[str, str, tuple[str, ...]]:
        return (self.client.client_key, self.identity.account_id or "", self.identity.scopes or ())

    def _access_token(self, call: _Call) -> str:
        audit = self.client.audit
        key = self._token_key()
        cached = audit.access_tokens.get(key, audit.clock())
        if cached is not None:
            return cached
        if not self.client.oauth_client_id:
            call.refuse(None, "the install has no oauthClientId, so it cannot act as a user")
            raise TokenExchangeFailed("the install has no oauthClientId; acting as a user needs ACT_AS_USER")
        now = audit.clock()
        assertion = signing.bearer_assertion(
            oauth_client_id=self.client.oauth_client_id, shared_secret=self.client.shared_secret(),
            account_id=self.identity.account_id or "", base_url=self.base_url,
            authorization_server=audit.authorization_server, now=now,
        )
        form = signing.token_request_form(assertion, self.identity.scopes or ())
        started = time.perf_counter()
        try:
            with requests.Session() as session:
                session.trust_env = False
                session.mount("https://", self.client.adapter)
                session.mount("http://", self.client.adapter)
                response = session.post(f"{audit.authorization_server}/oauth2/token", data=form,
                                        headers={"Accept": "application/json"}, allow_redirects=False,
                                        timeout=self.client.timeout)
                # Session.__exit__ closes mounted adapters; the shared one must stay open.
                session.adapters.clear()
        except requests.RequestException as exc:
            call.refuse(None, f"the authorization server could not be reached ({type(exc).__name__})",
                        elapsed=time.perf_counter() - started, outcome=events.ERROR)
            raise TokenExchangeFailed(
                f"the authorization server could not be reached ({type(exc).__name__})") from None
        body = _json(response)
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if response.status_code != 200 or not isinstance(token, str) or not token:
            reason = " ".join(str(body.get(k, "")) for k in ("error", "error_description")).strip()
            reason = _clip(reason or response.reason or "no access token in the response")
            call.refuse(response.status_code, f"the token exchange was refused: {reason}",
                        elapsed=time.perf_counter() - started)
            raise TokenExchangeFailed(
                f"the authorization server refused to act as {self.identity.account_id!r} on "
                f"{self.base_url} (HTTP {response.status_code}): {reason}")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 900.0
        audit.access_tokens.put(key, token, lifetime, audit.clock())
        return token

    # ------------------------------------------------------------------ URLs

    def _absolute(self, url: str) -> str:
        if url.startswith("/"):
            return self.base_url + url
        if self._under_base(url):
            return url
        raise ValueError(
            f"{url[:120]!r} is not under the tenant's baseUrl {self.base_url}; "
            "give a path relative to it (e.g. /rest/api/content)"
        )

    def _under_base(self, url: str) -> bool:
        base = self.base_url
        return url == base or url.startswith((base + "/", base + "?"))

    def site_path(self, url: str) -> str:
        """The path and query relative to the site root (``/wiki/rest/api/...``), as recorded."""
        rel = url[len(self.base_url):] if self._under_base(url) else urlsplit(url).path
        base_path = urlsplit(self.base_url).path.rstrip("/")
        prefix = "/wiki" if base_path.endswith("/wiki") else base_path
        return prefix + (rel if rel.startswith(("/", "?")) or not rel else "/" + rel)


class _Call:
    """One outgoing call being made; becomes one audit event."""

    def __init__(self, session: ConnectSession, request: requests.PreparedRequest) -> None:
        self.session = session
        self.method = (request.method or "GET").upper()
        self.path = session.site_path(request.url or "")
        audit = session.client.audit
        self.required: RequiredScope | None = audit.scope_map.lookup(self.method, self.path)
        self.oauth: OAuthScopes | None = session.oauth_scopes(self.method, self.path)
        incoming = current_context()
        self.request_id = incoming.request_id if incoming is not None else uuid.uuid4().hex
        self.ts = events.at(audit.clock())
        self.fingerprint: str | None = None
        self.claims: dict[str, Any] | None = None
        self.scope_note: dict[str, list[str]] | None = None
        self.done = False

    def _record(self) -> events.AuditRecord:
        client, identity = self.session.client, self.session.identity
        return events.AuditRecord(
            direction=events.OUTGOING,
            outcome=events.ALLOWED,
            auth_method=identity.method,
            platform=events.FORGE if identity.method in events.FORGE_AUTH_METHODS else events.CONNECT,
            identity_kind=identity.kind,
            ts=self.ts,
            tenant_client_key=client.client_key,
            tenant_base_url=client.tenant_base_url,
            product=client.product,
            account_id=identity.account_id,
            method=self.method,
            path=self.path,
            path_template=self.required.template if self.required else None,
            required_scope=self._required_scope(),
            declared_scopes=client.declared_scopes or None,
            request_id=self.request_id,
            token_fingerprint=self.fingerprint,
            claims=self.claims,
        )

    def _required_scope(self) -> str | None:
        if self.oauth is not None:
            return " ".join(self.oauth.classic or self.oauth.granular) or None
        return self.required.scope if self.required else None

    def finish(self, response: requests.Response | None, elapsed: float, *,
               failure: BaseException | None = None) -> None:
        rec = self._record()
        rec.latency_ms = round(elapsed * 1000, 3)
        if response is None:
            rec.outcome = events.ERROR
            rec.detail = f"transport failure: {type(failure).__name__}"
        else:
            rec.status = response.status_code
            self._judge(rec, response)
        self._emit(rec)

    def refuse(self, status: int | None, detail: str, *, elapsed: float = 0.0,
               outcome: str = events.REJECTED, reason: str = events.TOKEN_EXCHANGE_REFUSED,
               stage: str = "token_exchange") -> None:
        """Record a call that never reached the product: it had no usable token."""
        rec = self._record()
        rec.status, rec.outcome, rec.detail = status, outcome, detail
        rec.reason = reason if outcome == events.REJECTED else None
        rec.latency_ms = round(elapsed * 1000, 3)
        rec.extra = {"stage": stage}
        self._emit(rec)

    def _judge(self, rec: events.AuditRecord, response: requests.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        message = _product_message(response)
        rec.detail = message
        if status >= 500:
            rec.outcome = events.ERROR
        elif status == 401:
            rec.outcome = events.REJECTED
        elif status == 403:
            rec.outcome = events.DENIED
            rec.reason = self._forbidden_cause(message)
            note_forbidden(rec.reason)
            if self.scope_note:
                rec.extra = {**(rec.extra or {}), **self.scope_note}
                rec.detail = _missing_scope_detail(self.scope_note, message)

    def _forbidden_cause(self, message: str | None) -> str:
        return self.session.forbidden_cause(self, message)

    def _emit(self, rec: events.AuditRecord) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.session.client.audit.record(rec)
        except Exception:
            log.exception("connect-audit could not record an outgoing %s %s", rec.method, rec.path)


# ---------------------------------------------------------------------- Forge


class ForgeClient:
    """Calls back to the product for one Forge invocation, at its ``app.apiBaseUrl``.

    Built by :meth:`~collector.app.ConnectAudit.forge_client` from the
    :class:`~collector.context.ConnectContext` (or its ``forge`` invocation) of a verified
    Forge route; the tokens are the invocation's own.
    """

    def __init__(self, audit: ClientHost, invocation: ForgeInvocation, *, adapter: Any = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        from collector.forge import product_of

        self.audit = audit
        self.invocation = invocation
        self.client_key = invocation.tenant_key
        self.base_url = invocation.api_base_url.rstrip("/")
        self.tenant_base_url = invocation.site_base_url or self.base_url
        self.product = product_of(self.base_url)
        self.declared_scopes = " ".join(audit.forge_scopes)
        self.adapter = adapter if adapter is not None else audit.http_adapter
        self.timeout = timeout

    def as_app(self) -> ForgeSession:
        """A session that calls as the app (its bot user) with the system token."""
        return ForgeSession(self, _Identity(events.APP_USER, auth_method=events.FORGE_SYSTEM),
                            self.invocation.system_token)

    def as_user(self) -> ForgeSession:
        """A session that calls as the invoking user (``principal``) with the user token."""
        identity = _Identity(events.USER, self.invocation.principal, auth_method=events.FORGE_USER)
        return ForgeSession(self, identity, self.invocation.user_token)

    def __repr__(self) -> str:
        return f"ForgeClient({self.base_url!r})"


class ForgeSession(ConnectSession):
    """A ``requests.Session`` bound to one Forge invocation's apiBaseUrl and product token."""

    def __init__(self, client: ForgeClient, identity: _Identity, token: ProductToken | None) -> None:
        super().__init__(client, identity)  # type: ignore[arg-type]  (same attributes as TenantClient)
        self._token = token

    def _authorise(self, request: requests.PreparedRequest, call: _Call) -> None:
        kind = "system" if self.identity.kind == events.APP_USER else "user"
        token, now = self._token, self.client.audit.clock()
        if token is None:
            detail = f"the invocation carried no x-forge-oauth-{kind} token"
            call.refuse(None, detail, reason=ForgeTokenUnavailable.code, stage="forge_token")
            raise ForgeTokenUnavailable(f"{detail}; {ForgeTokenUnavailable.fix}")
        call.fingerprint = token.fingerprint
        call.claims = {"token": kind, "exp": token.expires_at, "sub": self.identity.account_id}
        if token.expired(now):
            detail = f"the Forge {kind} token expired {int(now - token.expires_at)} s ago"
            call.refuse(None, detail, reason=ForgeTokenExpired.code, stage="forge_token")
            raise ForgeTokenExpired(f"{detail}; {ForgeTokenExpired.fix}")
        request.headers["Authorization"] = f"Bearer {token.value}"

    def oauth_scopes(self, method: str, path: str) -> OAuthScopes | None:
        """A Forge call needs OAuth scopes (classic or granular), not the Connect scope."""
        return self.client.audit.scope_map.oauth_scopes(method, path)

    def forbidden_cause(self, call: _Call, message: str | None) -> str:
        granted = self.client.declared_scopes.split()
        missing = missing_oauth_scopes(granted, call.oauth) if call.oauth is not None else None
        if missing is not None:
            call.scope_note = {"missing_classic": list(missing.classic),
                               "missing_granular": list(missing.granular)}
            return events.SCOPE
        if message and any(m in message.lower() for m in (SCOPE_MESSAGE, "scope does not match")):
            return events.SCOPE  # the manifest declares it but the installation has not granted it
        return events.PERMISSION

    def site_path(self, url: str) -> str:
        """The path under apiBaseUrl (``/wiki/rest/api/...``), as recorded and looked up."""
        rel = url[len(self.base_url):] if self._under_base(url) else urlsplit(url).path
        return rel if rel.startswith("/") else "/" + rel


def _missing_scope_detail(note: dict[str, list[str]], message: str | None) -> str:
    parts = []
    if note["missing_classic"]:
        parts.append("classic " + " ".join(note["missing_classic"]))
    if note["missing_granular"]:
        parts.append("granular " + " ".join(note["missing_granular"]))
    advice = "add to manifest.yml permissions.scopes: " + (" or ".join(parts) or "the operation's scopes")
    return _clip(f"{advice} ({message})" if message else advice)


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _product_message(response: requests.Response) -> str | None:
    body = _json(response)
    message = body.get("message") or body.get("errorMessage") or response.reason
    return _clip(str(message)) if message else None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"
