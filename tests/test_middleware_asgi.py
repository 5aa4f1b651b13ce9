"""The ASGI middleware: over real HTTP through uvicorn, and called directly for the ASGI
details servers differ on (root_path, missing raw_path, lifespan and websocket scopes)."""

from __future__ import annotations

import asyncio
import json

import pytest
import requests

# Helper modules hold asserts too: have pytest explain their failures (registered before import).
pytest.register_assert_rewrite("e2e_scenario", "e2e_support", "middleware_support")

from e2e_support import serve_asgi  # noqa: E402
from middleware_support import (  # noqa: E402
    ACCOUNT,
    CLIENT_KEY,
    ROUTES,
    echo_asgi,
    events,
    install,
    install_payload,
    lifecycle_token,
    make_audit,
    request_token,
)

from collector.middleware import STATE_KEY, AsgiMiddleware  # noqa: E402


@pytest.fixture
def served(sqlite_url, tmp_path):
    audits = []

    def factory(url):
        audit = make_audit(sqlite_url, tmp_path / "keys", url)
        install(audit)
        audits.append(audit)
        return AsgiMiddleware(echo_asgi, audit, ROUTES)

    with serve_asgi(factory) as (url, _app):
        yield url, audits[0]
    audits[0].close()


def test_the_handler_gets_the_context_in_scope_state(served):
    url, audit = served
    token = request_token(url, "GET", f"{url}/items/9?q=a+b")
    response = requests.get(f"{url}/items/9?q=a+b&jwt={token}", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert (body["client_key"], body["account_id"]) == (CLIENT_KEY, ACCOUNT)
    assert body["route"] == "/items/{item_id}"
    assert body["current_is_same"] is True and body["request_id"] == response.headers["X-Request-Id"]
    [event] = events(audit, body["request_id"])
    assert (event["direction"], event["outcome"], event["path"]) == ("incoming", "allowed", "/items/9?q=a+b")


def test_refusal_is_generic(served):
    url, audit = served
    response = requests.get(f"{url}/items/9?jwt=abc.def.ghi", timeout=10)
    assert response.status_code == 401 and "malformed" not in response.text
    [event] = events(audit, response.headers["X-Request-Id"])
    assert (event["outcome"], event["reason"]) == ("rejected", "malformed")


def test_an_exception_in_the_app_is_recorded_and_re_raised(served):
    url, audit = served
    token = request_token(url, "GET", url + "/boom")
    response = requests.get(f"{url}/boom", headers={"Authorization": f"JWT {token}"}, timeout=10)
    assert response.status_code == 500  # uvicorn's answer to the re-raised exception
    boom = [e for e in events(audit) if e["path"] == "/boom"]
    assert len(boom) == 1 and (boom[0]["outcome"], boom[0]["status"]) == ("error", 500)


def test_lifecycle_body_is_verified_then_replayed_to_the_app(served):
    url, audit = served
    body = json.dumps(install_payload(event="uninstalled")).encode()
    token = lifecycle_token(url, url + "/uninstalled")
    headers = {"Authorization": f"JWT {token}"}
    response = requests.post(f"{url}/uninstalled", data=body, headers=headers, timeout=10)
    assert response.status_code == 200
    assert response.json()["body_length"] == len(body) and response.json()["event_type"] == "uninstalled"
    assert audit.registry.get(CLIENT_KEY).status == "uninstalled"


def _run(app, scope, messages=()):
    """Call an ASGI app directly; returns what it sent."""
    inbox = list(messages) or [{"type": "http.request", "body": b"", "more_body": False}]
    sent = []

    async def receive():
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_root_path_and_a_missing_raw_path_are_handled(sqlite_url, tmp_path):
    base = "http://app.test/prefix"
    with make_audit(sqlite_url, tmp_path / "keys", base) as audit:
        install(audit)
        seen = {}

        async def app(scope, receive, send):
            seen.update(scope["state"])
            await echo_asgi(scope, receive, send)

        token = request_token(base, "GET", f"{base}/items/a%20b")
        scope = {"type": "http", "method": "GET", "path": "/prefix/items/a b", "root_path": "/prefix",
                 "query_string": f"jwt={token}".encode(), "headers": []}
        sent = _run(AsgiMiddleware(app, audit, ROUTES), scope)
        assert sent[0]["status"] == 200
        assert seen[STATE_KEY].client_key == CLIENT_KEY
        assert (b"x-request-id", seen[STATE_KEY].request_id.encode()) in sent[0]["headers"]
        [event] = events(audit)
        assert event["path"] == "/items/a%20b" and event["path_template"] == "/items/{item_id}"


def test_non_http_scopes_pass_through_untouched(sqlite_url, tmp_path):
    with make_audit(sqlite_url, tmp_path / "keys", "http://app.test") as audit:
        received = []

        async def app(scope, receive, send):
            received.append(scope)
            if scope["type"] == "lifespan":
                await echo_asgi(scope, receive, send)

        lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}}
        sent = _run(AsgiMiddleware(app, audit, ROUTES), lifespan,
                    [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
        assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        websocket = {"type": "websocket", "path": "/ws", "headers": []}
        _run(AsgiMiddleware(app, audit, ROUTES), websocket, [{"type": "websocket.connect"}])
        assert received == [lifespan, websocket] and received[1] is websocket
        assert events(audit) == []
