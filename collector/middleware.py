"""Incoming middleware: verify every request the host sends the app, and record it.

:class:`WsgiMiddleware` wraps a WSGI app (Flask, Django) and :class:`AsgiMiddleware` an
ASGI app (FastAPI, Starlette; pure ASGI, so streaming responses and background tasks are
untouched). Both run the same steps, held in :class:`Gate`:

1. match the path against the :class:`~collector.routes.RoutePolicy` (``request``,
   ``context``, ``lifecycle`` or ``public``);
2. verify the token for that kind of route; a lifecycle callback's JSON body goes, once its
   signed token verified, to :meth:`InstallRegistry.apply_lifecycle`;
3. on rejection answer a generic ``401`` (the precise reason code goes to the audit log, never
   to the caller, who may be probing); on success hand the verified context to the handler;
4. record one :class:`~collector.events.AuditRecord` with the app's own status (its 403s
   included), the latency, the path without the ``jwt`` parameter and its route template,
   through the recorder's queue (no database I/O on the request thread).

The verified context (a :class:`ConnectContext`) reaches the handler as

* WSGI: ``environ["connect_audit.context"]`` (Flask: ``request.environ[...]``);
* ASGI: ``scope["state"]["connect_audit"]`` (Starlette/FastAPI: ``request.state.connect_audit``);
* either: :func:`connect_context` (given a request, environ or scope) or
  :func:`current_context` (no argument; valid while the handler runs).

The request id comes from the ``X-Request-Id`` header when it is a plain token, else a new
one; it is echoed in the response and stamped on the outgoing calls the handler makes
through :class:`~collector.client.TenantClient`, so one page load's events share it.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, unquote_plus

from collector import events, forge
from collector.context import (  # re-exported: the handler's view of a request
    _CURRENT,
    ENVIRON_KEY,
    STATE_KEY,
    ConnectContext,
    connect_context,
    current_context,
    note_forbidden,
)
from collector.errors import (
    ConnectAuditError,
    LifecycleRefused,
    MissingToken,
    StoreUnavailable,
    TokenRejected,
)
from collector.proxies import NO_TRUSTED_PROXIES, TrustedProxies
from collector.routes import CONTEXT, FORGE, LIFECYCLE, PUBLIC, Route, RoutePolicy, is_state_changing

if TYPE_CHECKING:
    from collector.forge import ForgeInvocation
    from collector.tokens import VerifiedToken

__all__ = ["ENVIRON_KEY", "STATE_KEY", "AsgiMiddleware", "Collaborators", "ConnectContext", "Gate",
           "WsgiMiddleware", "connect_context", "current_context", "note_forbidden"]

log = logging.getLogger("collector.middleware")

REQUEST_ID_HEADER = "X-Request-Id"
LIFECYCLE_EVENTS = ("installed", "uninstalled", "enabled", "disabled")
#: A lifecycle body is about 1 KB; a larger one is not read further (and then fails verification).
MAX_LIFECYCLE_BODY = 256 * 1024
#: Longest claim value copied into a record of a *rejected* token (its claims are unverified).
_MAX_UNVERIFIED = 200

_TRACE_ID = re.compile(r"[0-9a-fA-F]{1,64}")
#: The request headers a Forge route reads besides Authorization (lower case, as in ASGI).
FORGE_HEADERS = ("x-forge-oauth-system", "x-forge-oauth-user", "x-b3-traceid", "x-b3-spanid")
#: How long a Forge event delivery is remembered to recognise its retries (4 tries, 60 s apart).
DELIVERY_MEMORY = 3600
_REFUSALS = {
    401: b"Unauthorized: the request's Atlassian Connect token was not accepted.\n",
    400: b"Bad Request: the lifecycle callback could not be applied.\n",
    403: b"Forbidden: this app's install policy refused the lifecycle callback.\n",
    503: b"Service Unavailable: the app cannot verify requests right now; retry shortly.\n",
}

_REASONS = {204: "No Content", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            503: "Service Unavailable"}

# ---------------------------------------------------------------------- the shared steps


@dataclass(slots=True)
class Exchange:
    """One request on its way through the gate, until it is recorded."""

    method: str
    path: str  # raw (percent-encoded) path relative to the app's baseUrl
    query: str  # raw query string, jwt included
    route: Route
    declared: bool
    request_id: str
    ts: Any  # when the request arrived, on the collector's injected clock
    started: float = field(default_factory=time.perf_counter)
    token: str | None = None
    verified: VerifiedToken | None = None
    context: ConnectContext | None = None
    rejection: TokenRejected | None = None
    failure: str | None = None  # why a request could not be handled (nothing wrong with its token)
    failure_status: int = 400
    event_type: str = "request"
    forbidden: str | None = None  # cause of the last 403 the product gave while handling it
    tenant_base_url: str | None = None
    product: str | None = None
    declared_scopes: str | None = None
    forge: ForgeInvocation | None = None
    forge_extra: dict[str, Any] | None = None  # trace id, retry count: known before verification
    upstream: dict[str, str] | None = None  # a trusted proxy's X-Request-Id / traceparent
    lifecycle_refusal: LifecycleRefused | None = None  # the install policy said no
    install_change: Any = None  # what a reinstall changed (collector.installs.InstallChange)


@dataclass(frozen=True)
class Collaborators:
    """Everything the gate works with, given explicitly (:meth:`ConnectAudit.collaborators`
    builds it), so that the middleware knows its dependencies and not the facade."""

    verifier: Any  # collector.tokens.TokenVerifier: Connect tokens
    forge_verifier: Any  # collector.forge.ForgeVerifier: Forge invocation tokens
    registry: Any  # collector.installs.InstallRegistry: Forge installations and their link
    replay: Any  # a collector.tokens.ReplayGuard: remembers Forge deliveries across instances
    tenant: Callable[[str | None], Any]  # clientKey -> TenantInfo (no secret), cached
    apply_lifecycle: Callable[[str, Mapping[str, Any]], Any]  # a verified lifecycle body -> registry
    record: Callable[[events.AuditRecord], None]  # queue one event (no I/O on this thread)
    app_url: Callable[[str, str], str]  # (path, query) -> the URL the host called
    lifecycle_event_for: Callable[[str], str | None]  # the descriptor's lifecycle URLs
    is_webhook_path: Callable[[str], bool]  # the descriptor's webhook URLs
    clock: Callable[[], float]
    instance_id: str
    forge_scopes: tuple[str, ...] = ()
    trusted_proxies: TrustedProxies = NO_TRUSTED_PROXIES


class Gate:
    """Verification and recording shared by the WSGI and ASGI middleware (no I/O of its own
    beyond what the verifier and install registry do).

    ``audit`` is the :class:`Collaborators`, or an object that builds them (a
    :class:`~collector.app.ConnectAudit`)."""

    def __init__(self, audit: Any, routes: RoutePolicy | Mapping[str, str] | Iterable | None):
        self.audit = audit if isinstance(audit, Collaborators) else audit.collaborators()
        self.policy = RoutePolicy.coerce(routes)
        self.trusts_proxies = bool(self.audit.trusted_proxies.networks)

    def begin(self, method: str, path: str, query: str, peer: str | None = None,
              forwarded: Mapping[str, str | None] | None = None) -> Exchange:
        """Start an exchange. ``peer`` is the connection's address; ``forwarded`` holds the
        request's ``x-request-id`` and ``traceparent``, kept only when ``peer`` is a trusted proxy."""
        method = method.upper()
        route, declared = self.policy.match(method, unquote(path) if "%" in path else path)
        # Always our own id, so that no caller can make its request pose as part of another.
        # 32 random hex digits (uuid4().hex would cost twice as much for the same).
        ex = Exchange(method=method, path=path or "/", query=query, route=route, declared=declared,
                      request_id=os.urandom(16).hex(), ts=events.at(self.audit.clock()))
        if forwarded and peer and self.trusts_proxies:
            ex.upstream = self.audit.trusted_proxies.upstream(peer, forwarded)
        if route.auth == LIFECYCLE:
            ex.event_type = self.audit.lifecycle_event_for(path) or "lifecycle"
        elif route.auth == FORGE:
            ex.event_type = _FORGE_EVENT_TYPES[route.forge.invocation]
        elif self.audit.is_webhook_path(path):
            ex.event_type = "webhook"
        return ex

    def admit(self, ex: Exchange, authorization: str | None, body: bytes | None,
              forge_headers: Mapping[str, str] | None = None) -> None:
        """Verify the request; afterwards exactly one of context, rejection, failure is set.

        ``forge_headers`` are the :data:`FORGE_HEADERS` the request carried (Forge routes)."""
        if ex.route.auth == PUBLIC:
            ex.context = ConnectContext(route=self._template(ex), auth=PUBLIC, request_id=ex.request_id)
            return
        try:
            if ex.route.auth == FORGE:
                self._verify_forge(ex, authorization, body, forge_headers or {})
                return
            self._verify(ex, authorization, body)
        except StoreUnavailable as exc:
            # No verdict on the token: the install's secret or the replay table is out of
            # reach. Refuse for now (503, retryable); the event goes to the spill file.
            ex.context = None
            ex.failure, ex.failure_status = _safe_text(exc), 503

    def _verify(self, ex: Exchange, authorization: str | None, body: bytes | None) -> None:
        from collector.tokens import Endpoint, extract_token

        try:
            ex.token = extract_token(authorization, ex.query)
            if not ex.token:
                raise MissingToken()
            url = self.audit.app_url(ex.path, ex.query)
            if ex.route.auth == LIFECYCLE:
                self._admit_lifecycle(ex, url, body)
                return
            endpoint = Endpoint.CONTEXT if ex.route.auth == CONTEXT else Endpoint.REQUEST
            # The verifier keeps context tokens reusable (their front end caches them).
            ex.verified = self.audit.verifier.verify_request(
                ex.token, ex.method, url, endpoint=endpoint, state_changing=is_state_changing(ex.method)
            )
        except TokenRejected as exc:
            ex.rejection = exc
            if exc.client_key:  # signed by this tenant, refused for a later reason
                self._describe_tenant(ex, exc.client_key)
            return
        self._describe_tenant(ex, ex.verified.client_key)
        ex.context = self._context(ex)

    def _verify_forge(self, ex: Exchange, authorization: str | None, body: bytes | None,
                      headers: Mapping[str, str]) -> None:
        payload = _json_object(body)
        expect = ex.route.forge
        ex.forge_extra = _forge_extra(headers, payload, expect.invocation)
        if expect.invocation == forge.EVENT and isinstance(payload, dict):
            event_type = payload.get("eventType")
            if isinstance(event_type, str) and 0 < len(event_type) <= 100:
                ex.event_type = event_type
        try:
            ex.token = forge.extract_bearer(authorization)
            verified = self.audit.forge_verifier.verify(ex.token, expect)
        except TokenRejected as exc:
            ex.rejection = exc
            return
        if expect.invocation == forge.LIFECYCLE and not self._apply_forge_lifecycle(ex, payload, verified):
            return
        known = self.audit.registry.observe_forge(verified, now=ex.ts)
        retry = ex.forge_extra.get("retry_count", 0)
        redelivery = False
        if expect.invocation in (forge.EVENT, forge.TRIGGER, forge.LIFECYCLE):
            key = forge.delivery_key(verified.installation_id, payload)
            ex.forge_extra["delivery"] = key[:32]
            until = datetime.fromtimestamp(self.audit.clock() + DELIVERY_MEMORY, UTC)
            guard_key = f"forge-delivery:{verified.installation_id}"
            seen = not self.audit.replay.first_use(guard_key, key, until)
            # Two triggers may carry the same body an hour apart; only a delivery that says it
            # is a retry (retryContext) is matched against the ones already received.
            redelivery = seen and retry > 0
            if redelivery:
                ex.event_type = "retry"  # the same delivery again: not a second action
        self._describe_forge_tenant(ex, verified, known)
        ex.forge = forge.ForgeInvocation(
            verified=verified, invocation=expect.invocation, tenant_key=known.tenant_key,
            system_token=forge.product_token("system", headers.get("x-forge-oauth-system")),
            user_token=forge.product_token("user", headers.get("x-forge-oauth-user")),
            trace_id=ex.forge_extra.get("trace_id"), span_id=ex.forge_extra.get("span_id"),
            retry_count=retry, redelivery=redelivery, site_base_url=ex.tenant_base_url,
        )
        ex.forge_extra.update(_product_token_notes(ex.forge))
        ex.context = ConnectContext(
            route=self._template(ex), auth=FORGE, request_id=ex.request_id, client_key=known.tenant_key,
            base_url=ex.tenant_base_url, account_id=verified.principal,
            event_type=ex.event_type if expect.invocation != forge.RESOLVER else None,
            platform=events.FORGE, forge=ex.forge,
        )

    def _apply_forge_lifecycle(self, ex: Exchange, payload: dict[str, Any] | None, verified: Any) -> bool:
        from collector.installs import FORGE_LIFECYCLE_EVENTS

        claimed = payload.get("eventType") if payload else None
        if claimed not in FORGE_LIFECYCLE_EVENTS:
            ex.failure = f"the Forge body's eventType {str(claimed)[:60]!r} is not a lifecycle event"
            return False
        ex.event_type = claimed.rsplit(":", 2)[-2]  # avi:forge:installed:app -> installed
        try:
            self.audit.registry.apply_forge_lifecycle(claimed, payload, verified, now=ex.ts)
        except StoreUnavailable:
            raise
        except (ConnectAuditError, ValueError, TypeError, KeyError) as exc:
            ex.failure = f"the Forge {ex.event_type} event could not be applied: {_safe_text(exc)}"
            return False
        return True

    def _describe_forge_tenant(self, ex: Exchange, inv: Any, known: Any) -> None:
        ex.product = forge.product_of(inv.api_base_url)
        ex.tenant_base_url = inv.site_url or inv.api_base_url
        if known.connect_client_key:
            self._describe_tenant(ex, known.connect_client_key)
        ex.declared_scopes = " ".join(self.audit.forge_scopes) or None

    def _describe_tenant(self, ex: Exchange, client_key: str) -> None:
        # Read now, on the verification path, so that recording needs no store access.
        tenant = self.audit.tenant(client_key)
        if tenant is not None:
            ex.tenant_base_url, ex.product = tenant.base_url, tenant.product
            ex.declared_scopes = tenant.declared_scopes

    def _admit_lifecycle(self, ex: Exchange, url: str, body: bytes | None) -> None:
        payload = _json_object(body)
        client_key = payload.get("clientKey") if payload else None
        claimed = payload.get("eventType") if payload else None
        if claimed in LIFECYCLE_EVENTS:
            ex.event_type = claimed
        # A body without a clientKey cannot match the token's iss: issuer_mismatch.
        ex.verified = self.audit.verifier.verify_lifecycle(
            ex.token, ex.method, url, body_client_key=client_key if isinstance(client_key, str) else ""
        )
        # The token proved who sent the body; now check the body says what the route means.
        expected = self.audit.lifecycle_event_for(ex.path)
        if claimed not in LIFECYCLE_EVENTS or (expected and expected != claimed):
            ex.failure = f"lifecycle body eventType {str(claimed)[:40]!r} does not match the route"
            return
        try:
            ex.install_change = self.audit.apply_lifecycle(claimed, payload)
        except StoreUnavailable:
            raise
        except LifecycleRefused as exc:
            # Signed by Atlassian, refused by the app's policy: answered here, never by the app.
            ex.lifecycle_refusal = exc
            self._describe_tenant(ex, ex.verified.client_key)
            return
        except (ConnectAuditError, ValueError, TypeError, KeyError) as exc:
            ex.failure = f"the {claimed} callback could not be applied: {_safe_text(exc)}"
            return
        self._describe_tenant(ex, ex.verified.client_key)
        ex.context = self._context(ex, event_type=claimed)

    def _context(self, ex: Exchange, *, event_type: str | None = None) -> ConnectContext:
        v = ex.verified
        return ConnectContext(
            route=self._template(ex), auth=ex.route.auth, request_id=ex.request_id,
            client_key=v.client_key, base_url=ex.tenant_base_url, account_id=v.account_id,
            event_type=event_type, token=v,
        )

    @staticmethod
    def _template(ex: Exchange) -> str | None:
        return ex.route.template if ex.declared else None

    def refusal(self, ex: Exchange) -> tuple[int, list[tuple[str, str]], bytes]:
        """The response for a refused request: generic, with only the request id to quote.

        Forge's remote contract wants a JSON body on every non-2xx answer, so Forge routes get
        one (``401`` stays reserved for a token that was not accepted, as the contract says)."""
        refused = ex.lifecycle_refusal
        if refused is not None and refused.status == 204:  # what the host expects; nothing to say
            return 204, [(REQUEST_ID_HEADER, ex.request_id), ("Cache-Control", "no-store")], b""
        status = refused.status if refused is not None else ex.failure_status if ex.failure else 401
        on_forge = ex.route.auth == FORGE
        if on_forge:
            message = _REFUSALS[status].decode().strip()
            message = message.replace("Atlassian Connect token", "Forge Invocation Token")
            body = json.dumps({"error": message, "requestId": ex.request_id}).encode()
            kind = "application/json"
        else:
            body = _REFUSALS[status] + f"Request id: {ex.request_id}\n".encode()
            kind = "text/plain; charset=utf-8"
        headers = [("Content-Type", kind), ("Content-Length", str(len(body))),
                   (REQUEST_ID_HEADER, ex.request_id), ("Cache-Control", "no-store")]
        if status == 401:
            challenge = 'Bearer realm="forge"' if on_forge else 'JWT realm="atlassian-connect"'
            headers.append(("WWW-Authenticate", challenge))
        elif status == 503:
            headers.append(("Retry-After", "5"))
        return status, headers, body

    def finish(self, ex: Exchange, status: int | None, *, crashed: bool = False) -> None:
        """Record the exchange; never raises into the server (a failure here is logged)."""
        try:
            rec = self._record(ex, status, crashed=crashed)
            if ex.upstream:
                rec.extra = {**(rec.extra or {}), **ex.upstream}
            self.audit.record(rec)
            if ex.install_change is not None and rec.outcome == events.ALLOWED:
                self.audit.record(_install_change_record(rec, ex.install_change))
        except Exception:
            log.exception("connect-audit could not record %s %s", ex.method, ex.path)

    def _record(self, ex: Exchange, status: int | None, *, crashed: bool) -> events.AuditRecord:
        if ex.route.auth == FORGE:
            return self._record_forge(ex, status, crashed=crashed)
        lifecycle = ex.route.auth == LIFECYCLE
        rec = events.AuditRecord(
            direction=events.LIFECYCLE if lifecycle else events.INCOMING,
            outcome=events.ALLOWED,
            event_type=ex.event_type,
            ts=ex.ts,
            method=ex.method,
            path=_recorded_path(ex.path, ex.query),
            path_template=self._template(ex),
            status=status,
            latency_ms=round((time.perf_counter() - ex.started) * 1000, 3),
            request_id=ex.request_id,
            instance_id=self.audit.instance_id,
        )
        if ex.route.auth == PUBLIC:
            return _with_status(rec, status, crashed)
        rec.auth_method = _auth_method(ex)
        if ex.rejection is not None:
            rec.outcome, rec.reason, rec.detail = events.REJECTED, ex.rejection.code, ex.rejection.detail
            rec.claims, rec.token_fingerprint = _unverified_summary(ex.token, ex.rejection.parsed)
            if ex.rejection.client_key:
                rec.tenant_client_key = ex.rejection.client_key
                rec.tenant_base_url, rec.product = ex.tenant_base_url, ex.product
            if rec.claims and rec.claims.get("qsh_kind") == "context" and rec.auth_method == events.APP_JWT:
                rec.auth_method = events.CONTEXT_JWT
            log.info("rejected %s %s: %s (%s)", ex.method, rec.path, rec.reason, ex.request_id)
            return rec
        v = ex.verified
        if v is None:  # the store was unavailable before the token could be judged
            rec.outcome, rec.detail = events.ERROR, ex.failure
            return rec
        rec.tenant_client_key, rec.account_id = v.client_key, v.account_id
        rec.tenant_base_url, rec.product = ex.tenant_base_url, ex.product
        rec.identity_kind = events.USER if v.account_id and not lifecycle else events.ANONYMOUS
        rec.token_fingerprint, rec.claims = v.fingerprint, v.summary()
        rec.declared_scopes = ex.declared_scopes
        if ex.lifecycle_refusal is not None:
            refused = ex.lifecycle_refusal
            rec.outcome, rec.reason, rec.detail = events.REJECTED, refused.code, refused.detail
            rec.status = status
            log.info("refused %s callback: %s (%s)", ex.event_type, refused.code, ex.request_id)
            return rec
        if ex.failure:
            rec.outcome, rec.detail = events.ERROR, ex.failure
            return rec
        return _with_status(rec, status, crashed, ex.forbidden)


    def _record_forge(self, ex: Exchange, status: int | None, *, crashed: bool) -> events.AuditRecord:
        lifecycle = ex.route.forge.invocation == "lifecycle"
        rec = events.AuditRecord(
            direction=events.LIFECYCLE if lifecycle else events.INCOMING,
            outcome=events.ALLOWED, platform=events.FORGE, auth_method=events.FORGE_INVOCATION,
            event_type=ex.event_type, ts=ex.ts, method=ex.method, path=_recorded_path(ex.path, ex.query),
            path_template=self._template(ex), status=status,
            latency_ms=round((time.perf_counter() - ex.started) * 1000, 3),
            request_id=ex.request_id, instance_id=self.audit.instance_id,
            extra=ex.forge_extra or None,
        )
        if ex.rejection is not None:
            rec.outcome, rec.reason, rec.detail = events.REJECTED, ex.rejection.code, ex.rejection.detail
            rec.claims, rec.token_fingerprint = _unverified_forge_summary(ex.token, ex.rejection.parsed)
            log.info("rejected Forge %s %s: %s (%s)", ex.method, rec.path, rec.reason, ex.request_id)
            return rec
        inv = ex.forge
        if inv is None:  # the store was unavailable, or a lifecycle body could not be applied
            rec.outcome, rec.detail = events.ERROR, ex.failure
            return rec
        rec.tenant_client_key, rec.account_id = inv.tenant_key, inv.principal
        rec.tenant_base_url, rec.product = ex.tenant_base_url, ex.product
        rec.identity_kind = events.USER if inv.principal else events.APP_USER
        rec.token_fingerprint, rec.claims = inv.verified.fingerprint, inv.verified.summary()
        rec.declared_scopes = ex.declared_scopes
        return _with_status(rec, status, crashed, ex.forbidden)


_FORGE_EVENT_TYPES = {"resolver": "request", "event": "event", "trigger": "scheduled_trigger",
                      "lifecycle": "lifecycle"}


def _forge_extra(headers: Mapping[str, str], payload: dict[str, Any] | None,
                 invocation: str) -> dict[str, Any]:
    """What a Forge invocation tells besides its token: trace ids and, for events, the retry count."""
    extra: dict[str, Any] = {"invocation": invocation}
    for header, name in (("x-b3-traceid", "trace_id"), ("x-b3-spanid", "span_id")):
        value = headers.get(header)
        if value and _TRACE_ID.fullmatch(value.strip()):
            extra[name] = value.strip().lower()
    if invocation != "resolver":
        extra["retry_count"] = forge.retry_count(payload)
    return extra


def _product_token_notes(inv: ForgeInvocation) -> dict[str, Any]:
    """Which product tokens came with the invocation: fingerprint and expiry, never the token."""
    notes = {}
    for token in (inv.system_token, inv.user_token):
        if token is not None:
            notes[f"{token.kind}_token"] = {"fingerprint": token.fingerprint, "exp": token.expires_at}
    return notes


def _unverified_forge_summary(token: str | None, parsed: Any) -> tuple[dict[str, Any] | None, str | None]:
    """Claims of a refused FIT, for debugging: marked unverified, strings truncated."""
    if not token:
        return None, None
    from collector.tokens import token_fingerprint

    fingerprint = token_fingerprint(token)
    claims = getattr(parsed, "claims", None)
    if not isinstance(claims, Mapping):
        return None, fingerprint
    app = claims.get("app") if isinstance(claims.get("app"), Mapping) else {}
    module = app.get("module") if isinstance(app.get("module"), Mapping) else {}
    summary: dict[str, Any] = {"verified": False}
    shown = {name: claims.get(name) for name in ("iss", "aud", "iat", "exp", "principal")}
    shown.update(installation_id=app.get("installationId"), module_key=module.get("key"))
    for name, value in shown.items():
        if isinstance(value, str):
            summary[name] = value[:_MAX_UNVERIFIED]
        elif isinstance(value, int) and not isinstance(value, bool):
            summary[name] = value
    return summary, fingerprint


def _install_change_record(callback: events.AuditRecord, change: Any) -> events.AuditRecord:
    """A reinstall's change as its own lifecycle event beside the callback's (same request id),
    so that a site moving or a secret rotating is a row one can filter on, not a detail."""
    return events.AuditRecord(
        direction=events.LIFECYCLE, outcome=events.ALLOWED, event_type="install_changed", ts=callback.ts,
        method=callback.method, path=callback.path, path_template=callback.path_template,
        status=callback.status, request_id=callback.request_id, instance_id=callback.instance_id,
        auth_method=callback.auth_method, identity_kind=events.ANONYMOUS,
        tenant_client_key=change.client_key, tenant_base_url=change.new_base_url, product=callback.product,
        token_fingerprint=callback.token_fingerprint, detail=change.summary(), extra=change.as_extra(),
    )


def _with_status(rec: events.AuditRecord, status: int | None, crashed: bool,
                 forbidden: str | None = None) -> events.AuditRecord:
    if crashed or status is None or status >= 500:
        rec.outcome = events.ERROR
        rec.detail = "the app raised an exception" if crashed else None
        if crashed and rec.status is None:
            rec.status = 500
    elif status in (401, 403):
        rec.outcome = events.DENIED
        if status == 403 and forbidden:
            # The app passed on Confluence's refusal: same cause as the outgoing call.
            rec.reason = forbidden
            rec.detail = f"the app answered 403 after Confluence refused a call ({forbidden})"
        else:
            # The app refused on its own: its rules say this user may not do this.
            rec.reason, rec.detail = events.PERMISSION, f"the app answered {status}"
    return rec


def _auth_method(ex: Exchange) -> str:
    if ex.route.auth == LIFECYCLE:
        return events.LIFECYCLE_JWT
    if ex.verified is not None:
        return events.CONTEXT_JWT if ex.verified.qsh_kind == "context" else events.APP_JWT
    if not ex.token:
        return events.NO_AUTH
    return events.APP_JWT


def _unverified_summary(token: str | None, parsed: Any) -> tuple[dict[str, Any] | None, str | None]:
    """Claims of a refused token, for debugging: marked unverified, strings truncated.

    ``parsed`` is the token as the verifier parsed it (None when it could not be parsed:
    then there are no claims to show, only the fingerprint)."""
    if not token:
        return None, None
    from collector.tokens import token_fingerprint

    claims = getattr(parsed, "claims", None)
    if not isinstance(claims, Mapping):
        return None, token_fingerprint(token)
    summary: dict[str, Any] = {"verified": False}
    for name in ("iss", "sub", "iat", "exp"):
        value = claims.get(name)
        if isinstance(value, str):
            summary[name] = value[:_MAX_UNVERIFIED]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            summary[name] = value
    qsh = claims.get("qsh")
    if isinstance(qsh, str):
        summary["qsh_kind"] = "context" if qsh == "context-qsh" else "computed"
    return summary, token_fingerprint(token)


def _recorded_path(path: str, query: str) -> str:
    """The path and query as received, minus the ``jwt`` parameter (a bearer credential)."""
    kept = []
    for piece in query.split("&"):
        if piece:
            name = piece.partition("=")[0]
            # Only a percent-escape can make another name decode to "jwt" ('+' is a space).
            if name == "jwt" or ("%" in name and unquote_plus(name) == "jwt"):
                continue
            kept.append(piece)
    return path + ("?" + "&".join(kept) if kept else "")


def _json_object(body: bytes | None) -> dict[str, Any] | None:
    if not body:
        return None
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _safe_text(exc: BaseException) -> str:
    # Registry errors are our own one-sentence messages; cut anything long and drop newlines.
    return " ".join(str(exc).split())[:200] or type(exc).__name__


# ---------------------------------------------------------------------- WSGI


class WsgiMiddleware:
    """WSGI middleware (PEP 3333). ``WsgiMiddleware(flask_app.wsgi_app, audit, routes)``."""

    def __init__(self, app: Callable, audit: Any, routes: RoutePolicy | Mapping | Iterable | None):
        self.app = app
        self.gate = Gate(audit, routes)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        ex = wsgi_begin(self.gate, environ, environ.get("REQUEST_METHOD", "GET"))
        body = _wsgi_body(environ) if _reads_body(ex.route) else None
        self.gate.admit(ex, environ.get("HTTP_AUTHORIZATION"), body, wsgi_forge_headers(ex, environ))
        if ex.context is None:
            status, headers, payload = self.gate.refusal(ex)
            start_response(f"{status} {_REASONS[status]}", headers)
            self.gate.finish(ex, status)
            return [payload]

        environ[ENVIRON_KEY] = ex.context
        seen: list[int] = []

        def _start_response(status: str, headers: list, exc_info=None):
            seen[:] = [int(status.split(" ", 1)[0])]
            if not any(name.lower() == "x-request-id" for name, _ in headers):
                headers = [*headers, (REQUEST_ID_HEADER, ex.request_id)]
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        token = _CURRENT.set(ex)
        try:
            result = self.app(environ, _start_response)
        except BaseException:
            self.gate.finish(ex, seen[0] if seen else 500, crashed=True)
            raise
        finally:
            _CURRENT.reset(token)
        return _RecordingIterable(result, lambda crashed: self.gate.finish(
            ex, seen[0] if seen else None, crashed=crashed))


class _RecordingIterable:
    """Passes the app's body through and records once the server closes it (so latency
    includes streaming the body, and a failure while streaming is recorded as an error)."""

    def __init__(self, result: Iterable[bytes], on_close: Callable[[bool], None]):
        self._result = result
        self._on_close = on_close
        self._crashed = False
        self._done = False

    def __iter__(self):
        try:
            yield from self._result
        except BaseException:
            self._crashed = True
            raise

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            if not self._done:
                self._done = True
                self._on_close(self._crashed)


def wsgi_begin(gate: Gate, environ: Mapping, method: str) -> Exchange:
    """Start an exchange from a WSGI environ (or Django's ``request.META``, the same keys)."""
    path, query = _wsgi_target(environ)
    # The forwarded ids are looked at only when some proxy is trusted (off the usual hot path).
    forwarded = {"x-request-id": environ.get("HTTP_X_REQUEST_ID"),
                 "traceparent": environ.get("HTTP_TRACEPARENT")} if gate.trusts_proxies else None
    return gate.begin(method, path, query, environ.get("REMOTE_ADDR"), forwarded)


def wsgi_forge_headers(ex: Exchange, environ: Mapping) -> dict[str, str] | None:
    """The :data:`FORGE_HEADERS` a WSGI environ carries, on Forge routes only."""
    if ex.route.auth != FORGE:
        return None
    return {name: environ[key] for name in FORGE_HEADERS
            if (key := "HTTP_" + name.upper().replace("-", "_")) in environ}


def _reads_body(route: Route) -> bool:
    """Lifecycle callbacks and Forge event deliveries are read before the app (bounded): their
    body is checked or names the delivery. A resolver's body (uploads included) is left alone."""
    return route.auth == LIFECYCLE or (route.auth == FORGE and route.forge.invocation != "resolver")


def _wsgi_target(environ: Mapping) -> tuple[str, str]:
    """The raw path (relative to the app's mount point) and query the client sent.

    The qsh is computed over the path as sent, so the percent-encoded form is needed:
    servers that keep it (werkzeug, gunicorn, uWSGI) expose ``RAW_URI`` or ``REQUEST_URI``;
    otherwise ``PATH_INFO`` (already decoded, as bytes-in-latin-1) is re-encoded.
    """
    script = environ.get("SCRIPT_NAME", "")
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        if "://" in raw.split("?", 1)[0]:
            raw = "/" + raw.split("://", 1)[1].partition("/")[2]
        path, _, query = raw.partition("?")
        if script and path.startswith(quote(script)):
            path = path[len(quote(script)):]
        return path or "/", query
    decoded = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
    return quote(decoded, safe="/:@!$&'()*+,;=-._~") or "/", environ.get("QUERY_STRING", "")


def _wsgi_body(environ: dict) -> bytes:
    """Read the body (bounded) and put it back so the app can read it too."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ.get("wsgi.input")
    body = stream.read(min(length, MAX_LIFECYCLE_BODY + 1)) if stream is not None and length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body if len(body) <= MAX_LIFECYCLE_BODY else b""


# ---------------------------------------------------------------------- ASGI


class AsgiMiddleware:
    """Pure ASGI middleware (HTTP scopes; lifespan and websocket pass through untouched)."""

    def __init__(self, app: Callable, audit: Any, routes: RoutePolicy | Mapping | Iterable | None):
        self.app = app
        self.gate = Gate(audit, routes)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = _asgi_headers(scope)
        path, query = _asgi_target(scope)
        client = scope.get("client")
        ex = self.gate.begin(scope.get("method", "GET"), path, query, client[0] if client else None, headers)
        body = None
        if _reads_body(ex.route):
            body, receive = await _asgi_body(receive)
        forge_headers = None
        if ex.route.auth == FORGE:
            forge_headers = {name: headers[name] for name in FORGE_HEADERS if name in headers}
        # Verification may read the install registry and the replay table: keep that
        # database I/O off the event loop.
        await asyncio.to_thread(self.gate.admit, ex, headers.get("authorization"), body, forge_headers)
        if ex.context is None:
            status, out_headers, payload = self.gate.refusal(ex)
            self.gate.finish(ex, status)  # queued before the caller can see the answer
            await send({"type": "http.response.start", "status": status,
                        "headers": [(k.lower().encode(), v.encode()) for k, v in out_headers]})
            await send({"type": "http.response.body", "body": payload})
            return

        scope = dict(scope)
        scope["state"] = {**(scope.get("state") or {}), STATE_KEY: ex.context}
        seen: list[int] = []
        rid = ex.request_id.encode()

        async def _send(message: dict) -> None:
            if message["type"] == "http.response.start":
                seen[:] = [message["status"]]
                hdrs = list(message.get("headers") or [])
                if not any(name.lower() == b"x-request-id" for name, _ in hdrs):
                    message = {**message, "headers": [*hdrs, (b"x-request-id", rid)]}
            await send(message)

        token = _CURRENT.set(ex)
        try:
            await self.app(scope, receive, _send)
        except BaseException:
            self.gate.finish(ex, seen[0] if seen else 500, crashed=True)
            raise
        finally:
            _CURRENT.reset(token)
        self.gate.finish(ex, seen[0] if seen else None)


def _asgi_headers(scope: Mapping) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope.get("headers") or ():
        key = name.decode("latin-1").lower()
        if key not in out:  # the first occurrence wins, as in WSGI servers
            out[key] = value.decode("latin-1")
    return out


def _asgi_target(scope: Mapping) -> tuple[str, str]:
    root = scope.get("root_path", "") or ""
    raw = scope.get("raw_path")
    if raw:
        path = raw.decode("latin-1").partition("?")[0]
        if root and path.startswith(quote(root)):
            path = path[len(quote(root)):]
    else:
        path = scope.get("path", "/")
        if root and path.startswith(root):
            path = path[len(root):]
        path = quote(path, safe="/:@!$&'()*+,;=-._~")
    return path or "/", (scope.get("query_string") or b"").decode("latin-1")


async def _asgi_body(receive: Callable) -> tuple[bytes, Callable]:
    """Read the whole body (bounded) and return a ``receive`` that replays it to the app."""
    chunks: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= MAX_LIFECYCLE_BODY + 1:
            chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    replayed = False

    async def _receive() -> dict:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return (body if len(body) <= MAX_LIFECYCLE_BODY else b""), _receive
