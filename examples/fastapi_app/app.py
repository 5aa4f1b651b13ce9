"""A Confluence Connect app on FastAPI, with Connect Audit in its request path.

Run it (against the simulator, or a real site once ``APP_BASE_URL`` is public):

    APP_BASE_URL=http://127.0.0.1:8000 uvicorn --factory examples.fastapi_app.app:create_app

The collector takes four lines (marked ``# connect-audit``): construct ``ConnectAudit``,
add the ASGI middleware with the route policy, read the verified context in a handler, and
call Confluence through ``audit.client(...)``. Handlers that call Confluence are plain
``def`` functions: ``requests`` blocks, so FastAPI runs them in its thread pool.

The app is also the remote backend of its Connect-on-Forge version (``forge-manifest.json``,
``manifest.yml`` as JSON): the ``/forge/...`` routes take Forge Invocation Tokens and call
Confluence at the invocation's ``apiBaseUrl`` through ``audit.forge_client(ctx)``.
"""

from __future__ import annotations

import json
import os
from contextlib import asynccontextmanager
from html import escape
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from collector.app import ConnectAudit
from collector.errors import ForgeTokenUnavailable, TokenExchangeFailed, UnknownTenant
from collector.forge import ForgeExpectation
from collector.middleware import AsgiMiddleware, connect_context

DESCRIPTOR = Path(__file__).with_name("atlassian-connect.json")
FORGE_MANIFEST = json.loads(Path(__file__).with_name("forge-manifest.json").read_text(encoding="utf-8"))

# How each route is authenticated ("request": a JWT the host signed for this exact request;
# "context": also a context token from AP.context.getToken(); "lifecycle": a signed install
# callback; "public": none). The patterns become the route templates in the audit log; a
# route not listed here needs a "request" token.
ROUTES = {
    "GET /atlassian-connect.json": "public",
    "POST /installed": "lifecycle",
    "POST /uninstalled": "lifecycle",
    "POST /enabled": "lifecycle",
    "POST /disabled": "lifecycle",
    "GET /pages": "request",
    "POST /webhooks/page-created": "request",
    "/api/search": "context",
    "/api/me": "context",
    "/api/pages": "context",
    "/api/pages/{page_id}": "context",
    "/api/spaces/{space_key}/pages": "context",
    # Forge Remote endpoints (forge-manifest.json): a Forge Invocation Token as a bearer token
    # The macro's resolver: only that module may call it, and only with a user in session.
    "POST /forge/resolver": ForgeExpectation(
        "resolver", module_key="recent-pages-macro", principal="required"),
    "POST /forge/events": "forge:event",
    "POST /forge/schedule": "forge:trigger",
    "POST /forge/lifecycle": "forge:lifecycle",
}


def create_app(*, base_url: str | None = None, database: str | None = None, install_keys: str | None = None,
               authorization_server: str | None = None, **options) -> FastAPI:
    base_url = base_url or os.environ.get("APP_BASE_URL", "http://127.0.0.1:8000")
    descriptor = json.loads(DESCRIPTOR.read_text(encoding="utf-8")) | {"baseUrl": base_url}
    audit = ConnectAudit(  # connect-audit
        app_key=descriptor["key"], base_url=base_url, descriptor=descriptor, database=database,
        install_keys=install_keys, authorization_server=authorization_server,
        forge_app_ids=[FORGE_MANIFEST["app"]["id"]], forge_scopes=FORGE_MANIFEST["permissions"]["scopes"],
        **options,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        audit.close()  # drain the recorder on shutdown: no event is lost

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(AsgiMiddleware, audit=audit, routes=ROUTES)  # connect-audit
    app.state.connect_audit = audit

    @app.get("/atlassian-connect.json")
    def descriptor_json():
        return descriptor

    @app.post("/installed", status_code=204)
    @app.post("/uninstalled", status_code=204)
    @app.post("/enabled", status_code=204)
    @app.post("/disabled", status_code=204)
    def lifecycle():
        # The middleware verified the signed callback and updated the install registry.
        return Response(status_code=204)

    @app.get("/pages", response_class=HTMLResponse)
    def recent_pages(request: Request, space_key: str = "DEV"):
        ctx = connect_context(request)  # connect-audit: tenant, user, verified token
        confluence = audit.client(ctx.client_key).as_app()
        response = confluence.get("/rest/api/content", params={"spaceKey": space_key, "limit": 10})
        if not response.ok:
            return HTMLResponse(f"Confluence answered {response.status_code}", response.status_code)
        items = "".join(f"<li>{escape(page['title'])}</li>" for page in response.json()["results"])
        viewer = escape(ctx.account_id or "an anonymous user")
        return (f"<!doctype html><title>Recent pages</title><h1>Recent pages in {escape(space_key)}</h1>"
                f"<ul>{items}</ul><p>Viewed by {viewer}</p>")

    @app.post("/webhooks/page-created", status_code=204)
    def page_created(request: Request, body: dict):
        ctx = connect_context(request)
        page_id = (body.get("page") or {}).get("id")
        if page_id:
            audit.client(ctx.client_key).as_app().get(f"/rest/api/content/{page_id}")
        return Response(status_code=204)

    @app.get("/api/search")
    def search(request: Request, q: str = ""):
        ctx = connect_context(request)
        as_user = audit.client(ctx.client_key).as_user(ctx.account_id)
        # CQL string literal: escape backslashes and quotes so that the user's text
        # stays a search term and cannot change the query.
        text = q.replace("\\", "\\\\").replace('"', '\\"')
        return relay(as_user.get("/rest/api/search", params={"cql": f'type = page AND title ~ "{text}"'}))

    @app.get("/api/me")
    def me(request: Request):
        ctx = connect_context(request)
        return relay(audit.client(ctx.client_key).as_user(ctx.account_id).get("/rest/api/user/current"))

    @app.post("/api/pages")
    def create_page(request: Request, body: dict):
        ctx = connect_context(request)
        page = {"type": "page", "title": body.get("title", ""), "space": {"key": body.get("space", "DEV")},
                "body": {"storage": {"value": body.get("body", ""), "representation": "storage"}}}
        as_user = audit.client(ctx.client_key).as_user(ctx.account_id)
        return relay(as_user.post("/rest/api/content", json=page))

    @app.put("/api/pages/{page_id}")
    def update_page(request: Request, page_id: str, body: dict):
        ctx = connect_context(request)
        change = {"type": "page", "title": body.get("title"), "version": {"number": body.get("version")}}
        as_user = audit.client(ctx.client_key).as_user(ctx.account_id)
        return relay(as_user.put(f"/rest/api/content/{page_id}", json=change))

    @app.delete("/api/pages/{page_id}")
    def delete_page(request: Request, page_id: str):
        ctx = connect_context(request)
        return relay(audit.client(ctx.client_key).as_app().delete(f"/rest/api/content/{page_id}"))

    @app.get("/api/spaces/{space_key}/pages")
    def space_pages(request: Request, space_key: str):
        ctx = connect_context(request)
        as_app = audit.client(ctx.client_key).as_app()
        return relay(as_app.get("/rest/api/content", params={"spaceKey": space_key}))

    # ---------------------------------------------------------------- Forge Remote

    @app.post("/forge/resolver")
    def forge_resolver(request: Request, body: dict):
        ctx = connect_context(request)  # connect-audit: the verified invocation is ctx.forge
        confluence = audit.forge_client(ctx)
        if body.get("call") == "mine":  # as the invoking user, with the x-forge-oauth-user token
            return relay(confluence.as_user().get("/wiki/rest/api/user/current"))
        if body.get("call") == "create":  # needs write:confluence-content, which the manifest lacks
            page = {"type": "page", "title": "Made from a macro", "space": {"key": "DEV"}}
            return relay(confluence.as_user().post("/wiki/rest/api/content", json=page))
        space = body.get("space", "DEV")
        return relay(confluence.as_app().get("/wiki/rest/api/content", params={"spaceKey": space}))

    @app.post("/forge/events")
    def forge_event(request: Request, body: dict):
        ctx = connect_context(request)
        if ctx.forge.redelivery:
            return {"done": "already handled"}  # a retry of a delivery we acted on
        page_id = (body.get("content") or {}).get("id")
        if page_id:
            response = audit.forge_client(ctx).as_app().get(f"/wiki/rest/api/content/{page_id}")
            if response.status_code >= 500:
                return JSONResponse({"error": "Confluence failed; Forge will retry"}, 503)
        return {"done": True}

    @app.post("/forge/schedule")
    def forge_schedule(request: Request):
        ctx = connect_context(request)
        return relay(audit.forge_client(ctx).as_app().get("/wiki/rest/api/space"))

    @app.post("/forge/lifecycle")
    def forge_lifecycle():
        # The middleware verified the token and recorded the installation (and its link to
        # the Connect install of the same site).
        return {"done": True}

    @app.exception_handler(ForgeTokenUnavailable)
    def no_forge_token(request: Request, exc: ForgeTokenUnavailable):
        return JSONResponse({"error": "no usable Forge token for this call"}, 500)

    @app.exception_handler(UnknownTenant)
    def not_installed(request: Request, exc: UnknownTenant):
        return JSONResponse({"error": "the app is not installed on this site"}, 410)

    @app.exception_handler(TokenExchangeFailed)
    def cannot_act_as_user(request: Request, exc: TokenExchangeFailed):
        return JSONResponse({"error": "the app may not act as this user here"}, 403)

    return app


def relay(response) -> JSONResponse:
    """Answer with Confluence's status and JSON, so both sides of the call agree in the log."""
    return JSONResponse(response.json() if response.content else {}, response.status_code)
