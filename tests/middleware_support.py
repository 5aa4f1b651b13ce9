"""Shared pieces of the middleware tests: a real ConnectAudit on a real store, an install
put in place through the registry, host-side token minting, and echo apps (WSGI and ASGI)
that answer with the context the middleware handed them."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from collector import signing
from collector.app import ConnectAudit
from collector.middleware import connect_context, current_context

APP_KEY = "com.example.middleware-test"
CLIENT_KEY = "11111111-2222-3333-4444-555555555555"
SECRET = "s3cret-shared-secret-for-the-middleware-tests-0123456789"
KID = "test-kid-1"
ACCOUNT = "557058:alice"

ROUTES = {
    "GET /atlassian-connect.json": "public",
    "POST /installed": "lifecycle",
    "POST /uninstalled": "lifecycle",
    "/items/{item_id}": "request",
    "/ctx": "context",
    "/status/{code}": "request",
    "/boom": "request",
}

DESCRIPTOR = {
    "key": APP_KEY,
    "scopes": ["read", "write"],
    "lifecycle": {"installed": "/installed", "uninstalled": "/uninstalled"},
    "modules": {"webhooks": [{"event": "page_created", "url": "/items/hook"}]},
}


@functools.cache
def key_pair() -> tuple[str, str]:
    """An RSA key pair for signing lifecycle callbacks (made once: generation is slow)."""
    return signing.rsa_key_pair()


def make_audit(database_url: str, key_dir: Path, base_url: str, **options) -> ConnectAudit:
    key_dir.mkdir(exist_ok=True)
    (key_dir / KID).write_text(key_pair()[1])
    return ConnectAudit(app_key=APP_KEY, base_url=base_url, descriptor=DESCRIPTOR, database=database_url,
                        install_keys=str(key_dir), **options)


def install_payload(base_url: str = "https://site.atlassian.net/wiki", event: str = "installed") -> dict:
    return {"key": APP_KEY, "clientKey": CLIENT_KEY, "sharedSecret": SECRET, "baseUrl": base_url,
            "productType": "confluence", "eventType": event, "oauthClientId": "oauth-client-1"}


def install(audit: ConnectAudit) -> None:
    audit.apply_lifecycle("installed", install_payload())


def request_token(app_base_url: str, method: str, url: str, *, context: bool = False,
                  account_id: str | None = ACCOUNT, now: float | None = None) -> str:
    return signing.request_token(client_key=CLIENT_KEY, shared_secret=SECRET, method=method, url=url,
                                 base_url=app_base_url, now=time.time() if now is None else now,
                                 account_id=account_id, context=context)


def lifecycle_token(app_base_url: str, url: str, *, client_key: str = CLIENT_KEY) -> str:
    return signing.lifecycle_token(private_key_pem=key_pair()[0], kid=KID, client_key=client_key,
                                   app_base_url=app_base_url, method="POST", url=url, now=time.time())


def _describe(ctx, body: bytes) -> dict:
    current = current_context()
    return {
        "client_key": ctx.client_key if ctx else None,
        "account_id": ctx.account_id if ctx else None,
        "base_url": ctx.base_url if ctx else None,
        "auth": ctx.auth if ctx else None,
        "route": ctx.route if ctx else None,
        "request_id": ctx.request_id if ctx else None,
        "event_type": ctx.event_type if ctx else None,
        "qsh_kind": ctx.token.qsh_kind if ctx and ctx.token else None,
        "current_is_same": current is ctx,
        "body_length": len(body),
    }


def echo_wsgi(environ, start_response):
    """Answers with the verified context; /status/N answers N; /boom raises."""
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("the handler failed")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    status = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
    payload = json.dumps(_describe(connect_context(environ), body)).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    start_response(f"{status} X", headers)
    return [payload]


async def echo_asgi(scope, receive, send):
    """The same as :func:`echo_wsgi` as a bare ASGI app (lifespan handled too)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/boom":
        raise RuntimeError("the handler failed")
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    status = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
    payload = json.dumps(_describe(connect_context(scope), body)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


def events(audit: ConnectAudit, request_id: str | None = None) -> list[dict]:
    """The store's audit events (after a flush), oldest first, optionally for one request.

    A server may hand the client its response a moment before the middleware queues the
    event (it records once the body is sent), so with ``request_id`` wait for it.
    """
    import sqlalchemy as sa

    from collector.models import AuditEvent

    query = sa.select(AuditEvent.__table__)
    if request_id is not None:
        query = query.where(AuditEvent.request_id == request_id)
    deadline = time.monotonic() + 10
    while True:
        assert audit.flush(timeout=30)
        with audit.store.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query.order_by(AuditEvent.seq))]
        if rows or request_id is None or time.monotonic() > deadline:
            return rows
        time.sleep(0.01)
