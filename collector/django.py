"""Django integration: ``collector.django.ConnectAuditMiddleware`` in ``settings.MIDDLEWARE``.

Settings (read when Django builds its middleware chain, once per handler):

* ``CONNECT_AUDIT``: the :class:`~collector.app.ConnectAudit` to use, or a mapping of its
  keyword arguments (``app_key``, ``base_url``, ``descriptor``, ``database``, ...), or a
  zero-argument callable that returns one.
* ``CONNECT_AUDIT_ROUTES``: the route policy, as for Flask and FastAPI (``{"POST /installed":
  "lifecycle", "/api/pages/{page_id}": "context", ...}``); a route not listed needs a
  ``request`` token.

The same gate as the WSGI and ASGI middleware verifies and records every request: a refused
token gets the same generic 401 and its reason code in the log. In a view,
``connect_context(request)`` (or ``request.connect_context``) is the verified context and
``request.connect_audit`` the collector, for ``audit.client(ctx.client_key).as_app()``.

Put it first in ``MIDDLEWARE`` (before ``CsrfViewMiddleware``, which has nothing to check on
JWT-authenticated routes: the host signs them, no cookie is involved), so that every request is
recorded, refusals included. Django's sync request path only (WSGI, or ASGI through Django's
adapter, which runs it in a thread).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from collector.errors import ConfigurationError
from collector.middleware import _CURRENT, ENVIRON_KEY, Gate, _reads_body, wsgi_begin, wsgi_forge_headers

__all__ = ["ConnectAuditMiddleware", "audit_from_settings"]


def audit_from_settings(settings: Any = None) -> Any:
    """The :class:`~collector.app.ConnectAudit` that ``settings.CONNECT_AUDIT`` names."""
    if settings is None:
        from django.conf import settings
    configured = getattr(settings, "CONNECT_AUDIT", None)
    if configured is None:
        raise ConfigurationError(
            "settings.CONNECT_AUDIT is not set: give a ConnectAudit, its keyword arguments, or a "
            "callable that returns one")
    if isinstance(configured, Mapping):
        from collector.app import ConnectAudit

        return ConnectAudit(**configured)
    if callable(configured) and not hasattr(configured, "collaborators"):
        return configured()
    return configured


class ConnectAuditMiddleware:
    """Verify and record every request Django serves (new-style middleware)."""

    def __init__(self, get_response: Callable) -> None:
        from django.conf import settings

        self.get_response = get_response
        self.audit = audit_from_settings(settings)
        self.gate = Gate(self.audit, getattr(settings, "CONNECT_AUDIT_ROUTES", None))

    def __call__(self, request: Any) -> Any:
        meta = request.META  # the WSGI environ's keys, whatever server runs Django
        ex = wsgi_begin(self.gate, meta, request.method)
        # Django reads the body once and keeps it (request.body), so the view can read it too.
        body = request.body if _reads_body(ex.route) else None
        self.gate.admit(ex, meta.get("HTTP_AUTHORIZATION"), body, wsgi_forge_headers(ex, meta))
        if ex.context is None:
            return self._refuse(ex)
        meta[ENVIRON_KEY] = ex.context
        request.connect_context = ex.context
        request.connect_audit = self.audit
        token = _CURRENT.set(ex)  # outgoing calls made by the view link their 403s to this request
        try:
            response = self.get_response(request)
        except BaseException:
            self.gate.finish(ex, 500, crashed=True)
            raise
        finally:
            _CURRENT.reset(token)
        if not response.has_header("X-Request-Id"):
            response["X-Request-Id"] = ex.request_id
        self.gate.finish(ex, response.status_code)
        return response

    def _refuse(self, ex: Any) -> Any:
        from django.http import HttpResponse

        status, headers, payload = self.gate.refusal(ex)
        response = HttpResponse(payload, status=status)
        for name, value in headers:
            if name.lower() != "content-length":
                response[name] = value
        self.gate.finish(ex, status)
        return response
