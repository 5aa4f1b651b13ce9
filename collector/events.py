"""What one audit event says, independent of where it is stored.

An :class:`AuditRecord` is built on the request path (middleware, outgoing client,
lifecycle handler, CLI) and handed to the recorder, which assigns its place in the hash
chain. The vocabulary below is the stored contract: values are plain strings so that
SQL filters, CSV cells and the dashboard all read the same words.

Nothing here is Connect-shaped on purpose: ``platform`` (``connect``, ``forge``) and
``auth_method`` are open vocabularies; Forge traffic is recorded in the same events, with
``platform="forge"`` and ``auth_method`` ``forge_invocation`` (incoming), ``forge_system``
(asApp) or ``forge_user`` (asUser).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

# direction
INCOMING = "incoming"
OUTGOING = "outgoing"
LIFECYCLE = "lifecycle"
INTERNAL = "internal"  # the tool's own acts: export, purge, checkpoint
#: A record of Atlassian's own audit logs, imported (collector.imports): Atlassian's evidence
#: beside the app's, in the same chain, never counted as the app's activity.
IMPORTED = "imported"
DIRECTIONS = (INCOMING, OUTGOING, LIFECYCLE, INTERNAL, IMPORTED)

# auth_method
APP_JWT = "app_jwt"  # HS256 JWT signed with the shared secret (either direction)
CONTEXT_JWT = "context_jwt"  # HS256 JWT whose qsh is "context-qsh"
USER_BEARER = "user_bearer"  # OAuth 2.0 JWT bearer grant, acting as a user
LIFECYCLE_JWT = "lifecycle_jwt"  # RS256 signed install/uninstall/enable/disable
FORGE_INVOCATION = "forge_invocation"  # RS256 Forge Invocation Token (incoming, Forge's JWKS)
FORGE_SYSTEM = "forge_system"  # outgoing as the app (asApp): the x-forge-oauth-system token
FORGE_USER = "forge_user"  # outgoing as the invoking user (asUser): the x-forge-oauth-user token
NO_AUTH = "none"
AUTH_METHODS = (APP_JWT, CONTEXT_JWT, USER_BEARER, LIFECYCLE_JWT, FORGE_INVOCATION, FORGE_SYSTEM, FORGE_USER,
                NO_AUTH)
FORGE_AUTH_METHODS = (FORGE_INVOCATION, FORGE_SYSTEM, FORGE_USER)

# identity_kind
APP_USER = "app_user"
USER = "user"
ANONYMOUS = "anonymous"
IDENTITY_KINDS = (APP_USER, USER, ANONYMOUS)

# outcome
ALLOWED = "allowed"  # authenticated and answered below 400 (or a 4xx that is not 401/403)
DENIED = "denied"  # 403 from the product (reason: scope | permission)
REJECTED = "rejected"  # the token was refused (reason: a rejection code)
ERROR = "error"  # transport failure or 5xx
OUTCOMES = (ALLOWED, DENIED, REJECTED, ERROR)

# reason for a 403
SCOPE = "scope"  # the descriptor's scopes do not cover the call
PERMISSION = "permission"  # scopes cover it; the acting user lacks the right

#: An outgoing call as a user whose access token was refused by the authorization server.
TOKEN_EXCHANGE_REFUSED = "token_exchange_refused"  # noqa: S105 (a reason word)

# platform
CONNECT = "connect"
FORGE = "forge"
ATLASSIAN = "atlassian"  # imported records: what Atlassian's audit logs say
PLATFORMS = (CONNECT, FORGE, ATLASSIAN)


def utcnow() -> datetime:
    return datetime.now(UTC)


def at(epoch_seconds: float) -> datetime:
    """The aware UTC datetime of an injected clock's reading (events are stamped by the
    collector's clock, so a simulated clock dates them too)."""
    return datetime.fromtimestamp(epoch_seconds, UTC)


def new_event_id() -> str:
    """A random (version 4) UUID in its usual text form, ``str(uuid.uuid4())``, built without
    the UUID object: one is made for every event, on the request thread."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(slots=True)
class AuditRecord:
    """One event as the collector saw it; never holds a token, secret or assertion."""

    direction: str
    outcome: str
    auth_method: str = NO_AUTH
    identity_kind: str = ANONYMOUS
    event_type: str = "request"  # request | webhook | installed | uninstalled | ... | export | purge
    platform: str = CONNECT
    ts: datetime = field(default_factory=utcnow)
    event_id: str = field(default_factory=new_event_id)
    tenant_client_key: str | None = None
    tenant_base_url: str | None = None
    product: str | None = None
    account_id: str | None = None
    method: str | None = None
    path: str | None = None  # without the jwt query parameter
    path_template: str | None = None
    required_scope: str | None = None
    declared_scopes: str | None = None  # space-separated, as in the descriptor
    status: int | None = None
    reason: str | None = None
    detail: str | None = None
    latency_ms: float | None = None
    request_id: str | None = None
    instance_id: str | None = None
    token_fingerprint: str | None = None
    claims: dict[str, Any] | None = None  # iss, sub, iat, exp, qsh_kind (a summary)
    extra: dict[str, Any] | None = None  # e.g. an export's filter, row count and sha256

    def __post_init__(self) -> None:
        if self.ts.tzinfo is None:
            raise ValueError("AuditRecord.ts must be timezone-aware (UTC)")
        if self.ts.tzinfo is not UTC:  # datetime.now(UTC), the usual value, is already normal
            self.ts = self.ts.astimezone(UTC)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
