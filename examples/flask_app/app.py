"""A Confluence Connect app on Flask, with Connect Audit in its request path.

Run it (against the simulator, or a real site once ``APP_BASE_URL`` is public):

    APP_BASE_URL=http://127.0.0.1:5000 flask --app examples/flask_app/app.py run

The collector takes four lines (marked ``# connect-audit``): construct ``ConnectAudit``,
wrap the WSGI app with the route policy, read the verified context in a handler, and call
Confluence through ``audit.client(...)``. Everything else is an ordinary Flask app.

The app is also the remote backend of its Connect-on-Forge version (``forge-manifest.json``,
``manifest.yml`` as JSON): the ``/forge/...`` routes take Forge Invocation Tokens and call
Confluence at the invocation's ``apiBaseUrl`` through ``audit.forge_client(ctx)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flask import Flask, jsonify, request

from collector.app import ConnectAudit
from collector.errors import ForgeTokenUnavailable, TokenExchangeFailed, UnknownTenant
from collector.forge import ForgeExpectation
from collector.middleware import connect_context

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

PAGE = """<!doctype html>
<title>Recent pages</title>
<h1>Recent pages in {{ space }}</h1>
<ul>{% for page in pages %}<li>{{ page.title }}</li>{% endfor %}</ul>
<p>Viewed by {{ account_id or "an anonymous user" }}</p>"""


def create_app(*, base_url: str | None = None, database: str | None = None, install_keys: str | None = None,
               authorization_server: str | None = None, **options) -> Flask:
    base_url = base_url or os.environ.get("APP_BASE_URL", "http://127.0.0.1:5000")
    descriptor = json.loads(DESCRIPTOR.read_text(encoding="utf-8")) | {"baseUrl": base_url}
    audit = ConnectAudit(  # connect-audit
        app_key=descriptor["key"], base_url=base_url, descriptor=descriptor, database=database,
        install_keys=install_keys, authorization_server=authorization_server,
        forge_app_ids=[FORGE_MANIFEST["app"]["id"]], forge_scopes=FORGE_MANIFEST["permissions"]["scopes"],
        **options,
    )
    app = Flask(__name__)
    app.wsgi_app = audit.wsgi_middleware(app.wsgi_app, ROUTES)  # connect-audit
    app.extensions["connect_audit"] = audit
    page_template = app.jinja_env.from_string(PAGE)  # compiled once, autoescaped

    @app.get("/atlassian-connect.json")
    def descriptor_json():
        return jsonify(descriptor)

    @app.post("/installed")
    @app.post("/uninstalled")
    @app.post("/enabled")
    @app.post("/disabled")
    def lifecycle():
        # The middleware verified the signed callback and updated the install registry.
        return "", 204

    @app.get("/pages")
    def recent_pages():
        ctx = connect_context(request)  # connect-audit: tenant, user, verified token
        space = request.args.get("space_key", "DEV")
        confluence = audit.client(ctx.client_key).as_app()
        response = confluence.get("/rest/api/content", params={"spaceKey": space, "limit": 10})
        if not response.ok:
            return f"Confluence answered {response.status_code}", response.status_code
        return page_template.render(space=space, pages=response.json()["results"], account_id=ctx.account_id)

    @app.post("/webhooks/page-created")
    def page_created():
        ctx = connect_context(request)
        page_id = (request.get_json(silent=True) or {}).get("page", {}).get("id")
        if page_id:
            audit.client(ctx.client_key).as_app().get(f"/rest/api/content/{page_id}")
        return "", 204

    @app.get("/api/search")
    def search():
        ctx = connect_context(request)
        # CQL string literal: escape backslashes and quotes so that the user's text
        # stays a search term and cannot change the query.
        text = request.args.get("q", "").replace("\\", "\\\\").replace('"', '\\"')
        cql = f'type = page AND title ~ "{text}"'
        as_user = audit.client(ctx.client_key).as_user(ctx.account_id)
        return relay(as_user.get("/rest/api/search", params={"cql": cql}))

    @app.get("/api/me")
    def me():
        ctx = connect_context(request)
        return relay(audit.client(ctx.client_key).as_user(ctx.account_id).get("/rest/api/user/current"))

    @app.post("/api/pages")
    def create_page():
        ctx = connect_context(request)
        body = request.get_json(silent=True) or {}
        page = {"type": "page", "title": body.get("title", ""), "space": {"key": body.get("space", "DEV")},
                "body": {"storage": {"value": body.get("body", ""), "representation": "storage"}}}
        as_user = audit.client(ctx.client_key).as_user(ctx.account_id)
        return relay(as_user.post("/rest/api/content", json=page))

    @app.put("/api/pages/<page_id>")
    def update_page(page_id: str):
        ctx = connect_context(request)
        body = request.get_json(silent=True) or {}
        change = {"type": "page", "title": body.get("title"), "version": {"number": body.get("version")}}
        as_user = audit.client(ctx.client_key).as_user(ctx.account_id)
        return relay(as_user.put(f"/rest/api/content/{page_id}", json=change))

    @app.delete("/api/pages/<page_id>")
    def delete_page(page_id: str):
        ctx = connect_context(request)
        return relay(audit.client(ctx.client_key).as_app().delete(f"/rest/api/content/{page_id}"))

    @app.get("/api/spaces/<space_key>/pages")
    def space_pages(space_key: str):
        ctx = connect_context(request)
        as_app = audit.client(ctx.client_key).as_app()
        return relay(as_app.get("/rest/api/content", params={"spaceKey": space_key}))

    # ---------------------------------------------------------------- Forge Remote

    @app.post("/forge/resolver")
    def forge_resolver():
        ctx = connect_context(request)  # connect-audit: the verified invocation is ctx.forge
        call = (request.get_json(silent=True) or {}).get("call", "recent")
        confluence = audit.forge_client(ctx)
        if call == "mine":  # as the invoking user, with the x-forge-oauth-user token
            return relay(confluence.as_user().get("/wiki/rest/api/user/current"))
        if call == "create":  # needs write:confluence-content, which the manifest lacks: a scope 403
            page = {"type": "page", "title": "Made from a macro", "space": {"key": "DEV"}}
            return relay(confluence.as_user().post("/wiki/rest/api/content", json=page))
        space = (request.get_json(silent=True) or {}).get("space", "DEV")
        return relay(confluence.as_app().get("/wiki/rest/api/content", params={"spaceKey": space}))

    @app.post("/forge/events")
    def forge_event():
        ctx = connect_context(request)
        body = request.get_json(silent=True) or {}
        if ctx.forge.redelivery:
            return jsonify(done="already handled"), 200  # a retry of a delivery we acted on
        page_id = (body.get("content") or {}).get("id")
        if page_id:
            response = audit.forge_client(ctx).as_app().get(f"/wiki/rest/api/content/{page_id}")
            if response.status_code >= 500:
                return jsonify(error="Confluence failed; Forge will retry"), 503
        return jsonify(done=True), 200

    @app.post("/forge/schedule")
    def forge_schedule():
        ctx = connect_context(request)
        return relay(audit.forge_client(ctx).as_app().get("/wiki/rest/api/space"))

    @app.post("/forge/lifecycle")
    def forge_lifecycle():
        # The middleware verified the token and recorded the installation (and its link to
        # the Connect install of the same site).
        return jsonify(done=True), 200

    @app.errorhandler(ForgeTokenUnavailable)
    def no_forge_token(exc):
        return jsonify(error="no usable Forge token for this call"), 500

    @app.errorhandler(UnknownTenant)
    def not_installed(exc):
        return jsonify(error="the app is not installed on this site"), 410

    @app.errorhandler(TokenExchangeFailed)
    def cannot_act_as_user(exc):
        return jsonify(error="the app may not act as this user here"), 403

    return app


def relay(response):
    """Answer with Confluence's status and JSON, so both sides of the call agree in the log."""
    body = response.json() if response.content else {}
    return jsonify(body), response.status_code
