"""The handler's view of a request: what the middleware established, and where to find it.

Kept apart from :mod:`collector.middleware` so that code running inside a handler (the
outgoing client, an app's own helpers) depends on this small module only, not on the
middleware that produced it.

The verified context (a :class:`ConnectContext`) reaches the handler as

* WSGI: ``environ["connect_audit.context"]`` (Flask: ``request.environ[...]``);
* ASGI: ``scope["state"]["connect_audit"]`` (Starlette/FastAPI: ``request.state.connect_audit``);
* either: :func:`connect_context` (given a request, environ or scope) or
  :func:`current_context` (no argument; valid while the handler runs).
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from collector import events

if TYPE_CHECKING:
    from collector.forge import ForgeInvocation
    from collector.tokens import VerifiedToken

ENVIRON_KEY = "connect_audit.context"
STATE_KEY = "connect_audit"


class InFlight(Protocol):
    """The request being handled, as this module needs it (the middleware's exchange)."""

    context: ConnectContext | None
    forbidden: str | None


_CURRENT: contextvars.ContextVar[InFlight | None] = contextvars.ContextVar(
    "connect_audit_exchange", default=None
)


@dataclass(frozen=True, slots=True)
class ConnectContext:
    """What the middleware established about the request being handled.

    ``client_key`` and ``base_url`` name the tenant (None on ``public`` routes),
    ``account_id`` the user the host says is acting (None for webhooks, lifecycle callbacks
    and anonymous users), ``token`` the :class:`~collector.tokens.VerifiedToken` itself, and
    ``event_type`` the lifecycle event (``installed`` ...) on lifecycle routes.
    """

    route: str | None
    auth: str
    request_id: str
    client_key: str | None = None
    base_url: str | None = None
    account_id: str | None = None
    event_type: str | None = None
    token: VerifiedToken | None = field(default=None, repr=False)
    platform: str = events.CONNECT
    #: On Forge routes: the verified invocation, its product tokens, trace id and retry count.
    forge: ForgeInvocation | None = field(default=None, repr=False)

    @property
    def authenticated(self) -> bool:
        return self.client_key is not None


def connect_context(source: Any) -> ConnectContext | None:
    """The verified context of a request, from a Flask/werkzeug or Starlette request, a WSGI
    environ or an ASGI scope; None when the middleware did not run or the route is public."""
    environ = getattr(source, "environ", None)
    if isinstance(environ, Mapping):
        return environ.get(ENVIRON_KEY)
    scope = getattr(source, "scope", source)
    if isinstance(scope, Mapping):
        if ENVIRON_KEY in scope:
            return scope[ENVIRON_KEY]
        state = scope.get("state")
        if isinstance(state, Mapping):
            return state.get(STATE_KEY)
    return None


def current_context() -> ConnectContext | None:
    """The context of the request this thread or task is handling (None outside a request)."""
    ex = _CURRENT.get()
    return ex.context if ex is not None else None


def note_forbidden(cause: str) -> None:
    """Remember why the product refused a call made while handling the current request, so
    that the app's own 403, if it passes the refusal on, is recorded with the same cause."""
    ex = _CURRENT.get()
    if ex is not None:
        ex.forbidden = cause
