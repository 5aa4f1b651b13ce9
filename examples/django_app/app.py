"""A Confluence Connect app on Django, with Connect Audit in its request path.

The same app as ``examples/flask_app`` (same descriptor, routes and Forge remote), as a
single-file Django project. Run it (against the simulator, or a real site once
``APP_BASE_URL`` is public):

    APP_BASE_URL=http://127.0.0.1:8000 python examples/django_app/app.py runserver 8000

The collector takes three settings and one line per view (marked ``# connect-audit``):
``collector.django.ConnectAuditMiddleware`` first in ``MIDDLEWARE``, ``CONNECT_AUDIT`` (the
collector, or its keyword arguments) and ``CONNECT_AUDIT_ROUTES`` (the route policy); a view
reads the verified context with ``connect_context(request)`` and calls Confluence through
``request.connect_audit.client(...)``. In a project of your own, put the three settings in
``settings.py``; here ``create_app`` sets them so that tests can start several apps.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import sys
from pathlib import Path
from urllib.parse import urlsplit

import django
from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.utils.html import format_html, format_html_join

from collector.app import ConnectAudit
from collector.errors import ForgeTokenUnavailable, TokenExchangeFailed, UnknownTenant
from collector.forge import ForgeExpectation
from collector.middleware import connect_context

HERE = Path(__file__).resolve().parent
DESCRIPTOR = HERE.parent / "flask_app" / "atlassian-connect.json"
FORGE_MANIFEST = json.loads((HERE.parent / "flask_app" / "forge-manifest.json").read_text(encoding="utf-8"))

# The route policy, the same as the Flask and FastAPI examples' (see there for what each means).
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
    "POST /forge/resolver": ForgeExpectation(
        "resolver", module_key="recent-pages-macro", principal="required"),
    "POST /forge/events": "forge:event",
    "POST /forge/schedule": "forge:trigger",
    "POST /forge/lifecycle": "forge:lifecycle",
}


def _configure(base_url: str) -> None:
    """Django's settings, once per process (a project keeps these in settings.py)."""
    host = urlsplit(base_url).hostname or "localhost"
    if settings.configured:
        if host not in settings.ALLOWED_HOSTS:
            settings.ALLOWED_HOSTS.append(host)
        return
    settings.configure(
        DEBUG=False,
        # Nothing here is signed with it (no sessions, no CSRF cookies): the host signs requests.
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(32),
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=[host, "127.0.0.1", "localhost"],
        MIDDLEWARE=["collector.django.ConnectAuditMiddleware"],  # connect-audit: first
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
    )
    django.setup()


def create_app(*, base_url: str | None = None, database: str | None = None, install_keys: str | None = None,
               authorization_server: str | None = None, **options):
    """A WSGI app (Django's handler) with the collector in front; ``app.connect_audit`` is it."""
    from django.core.handlers.wsgi import WSGIHandler

    base_url = base_url or os.environ.get("APP_BASE_URL", "http://127.0.0.1:8000")
    _configure(base_url)
    descriptor = json.loads(DESCRIPTOR.read_text(encoding="utf-8")) | {"baseUrl": base_url}
    settings.CONNECT_AUDIT = ConnectAudit(  # connect-audit
        app_key=descriptor["key"], base_url=base_url, descriptor=descriptor, database=database,
        install_keys=install_keys, authorization_server=authorization_server,
        forge_app_ids=[FORGE_MANIFEST["app"]["id"]], forge_scopes=FORGE_MANIFEST["permissions"]["scopes"],
        **options,
    )
    settings.CONNECT_AUDIT_ROUTES = ROUTES  # connect-audit
    settings.CONNECT_AUDIT_DESCRIPTOR = descriptor
    handler = WSGIHandler()  # builds the middleware chain, which takes the collector above
    handler.connect_audit = settings.CONNECT_AUDIT
    return handler


# ---------------------------------------------------------------------- views


def answers(*methods: str):
    """Allow ``methods`` only, and turn the collector's errors into the answers the Flask
    example gives (Django has no per-app error handlers)."""

    def wrap(view):
        @functools.wraps(view)
        def handle(request, *args, **kwargs):
            if request.method not in methods:
                return HttpResponse(status=405, headers={"Allow": ", ".join(methods)})
            try:
                return view(request, *args, **kwargs)
            except ForgeTokenUnavailable:
                return JsonResponse({"error": "no usable Forge token for this call"}, status=500)
            except UnknownTenant:
                return JsonResponse({"error": "the app is not installed on this site"}, status=410)
            except TokenExchangeFailed:
                return JsonResponse({"error": "the app may not act as this user here"}, status=403)

        return handle

    return wrap


def relay(response) -> JsonResponse:
    """Answer with Confluence's status and JSON, so both sides of the call agree in the log."""
    body = response.json() if response.content else {}
    return JsonResponse(body, status=response.status_code, safe=False)


def _json(request) -> dict:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _client(request):
    ctx = connect_context(request)  # connect-audit: tenant, user, verified token
    return ctx, request.connect_audit.client(ctx.client_key)


@answers("GET")
def descriptor_json(request):
    return JsonResponse(settings.CONNECT_AUDIT_DESCRIPTOR)


@answers("POST")
def lifecycle(request):
    # The middleware verified the signed callback and updated the install registry.
    return HttpResponse(status=204)


@answers("GET")
def recent_pages(request):
    ctx, client = _client(request)
    space = request.GET.get("space_key", "DEV")
    response = client.as_app().get("/rest/api/content", params={"spaceKey": space, "limit": 10})
    if not response.ok:
        return HttpResponse(f"Confluence answered {response.status_code}", status=response.status_code)
    items = format_html_join("", "<li>{}</li>", ((p["title"],) for p in response.json()["results"]))
    return HttpResponse(format_html(
        "<!doctype html>\n<title>Recent pages</title>\n<h1>Recent pages in {}</h1>\n<ul>{}</ul>\n"
        "<p>Viewed by {}</p>", space, items, ctx.account_id or "an anonymous user"))


@answers("POST")
def page_created(request):
    _ctx, client = _client(request)
    page_id = _json(request).get("page", {}).get("id")
    if page_id:
        client.as_app().get(f"/rest/api/content/{page_id}")
    return HttpResponse(status=204)


@answers("GET")
def search(request):
    ctx, client = _client(request)
    # CQL string literal: escape backslashes and quotes so the user's text stays a search term.
    text = request.GET.get("q", "").replace("\\", "\\\\").replace('"', '\\"')
    cql = f'type = page AND title ~ "{text}"'
    return relay(client.as_user(ctx.account_id).get("/rest/api/search", params={"cql": cql}))


@answers("GET")
def me(request):
    ctx, client = _client(request)
    return relay(client.as_user(ctx.account_id).get("/rest/api/user/current"))


@answers("POST")
def create_page(request):
    ctx, client = _client(request)
    body = _json(request)
    page = {"type": "page", "title": body.get("title", ""), "space": {"key": body.get("space", "DEV")},
            "body": {"storage": {"value": body.get("body", ""), "representation": "storage"}}}
    return relay(client.as_user(ctx.account_id).post("/rest/api/content", json=page))


@answers("PUT", "DELETE")
def one_page(request, page_id: str):
    ctx, client = _client(request)
    if request.method == "DELETE":
        return relay(client.as_app().delete(f"/rest/api/content/{page_id}"))
    body = _json(request)
    change = {"type": "page", "title": body.get("title"), "version": {"number": body.get("version")}}
    return relay(client.as_user(ctx.account_id).put(f"/rest/api/content/{page_id}", json=change))


@answers("GET")
def space_pages(request, space_key: str):
    _ctx, client = _client(request)
    return relay(client.as_app().get("/rest/api/content", params={"spaceKey": space_key}))


# ---------------------------------------------------------------------- Forge Remote


@answers("POST")
def forge_resolver(request):
    ctx = connect_context(request)  # connect-audit: the verified invocation is ctx.forge
    body = _json(request)
    confluence = request.connect_audit.forge_client(ctx)
    call = body.get("call", "recent")
    if call == "mine":  # as the invoking user, with the x-forge-oauth-user token
        return relay(confluence.as_user().get("/wiki/rest/api/user/current"))
    if call == "create":  # needs write:confluence-content, which the manifest lacks: a scope 403
        page = {"type": "page", "title": "Made from a macro", "space": {"key": "DEV"}}
        return relay(confluence.as_user().post("/wiki/rest/api/content", json=page))
    space = body.get("space", "DEV")
    return relay(confluence.as_app().get("/wiki/rest/api/content", params={"spaceKey": space}))


@answers("POST")
def forge_event(request):
    ctx = connect_context(request)
    if ctx.forge.redelivery:
        return JsonResponse({"done": "already handled"})  # a retry of a delivery we acted on
    page_id = (_json(request).get("content") or {}).get("id")
    if page_id:
        response = request.connect_audit.forge_client(ctx).as_app().get(f"/wiki/rest/api/content/{page_id}")
        if response.status_code >= 500:
            return JsonResponse({"error": "Confluence failed; Forge will retry"}, status=503)
    return JsonResponse({"done": True})


@answers("POST")
def forge_schedule(request):
    ctx = connect_context(request)
    return relay(request.connect_audit.forge_client(ctx).as_app().get("/wiki/rest/api/space"))


@answers("POST")
def forge_lifecycle(request):
    # The middleware verified the token and recorded the installation.
    return JsonResponse({"done": True})


urlpatterns = [
    path("atlassian-connect.json", descriptor_json),
    path("installed", lifecycle),
    path("uninstalled", lifecycle),
    path("enabled", lifecycle),
    path("disabled", lifecycle),
    path("pages", recent_pages),
    path("webhooks/page-created", page_created),
    path("api/search", search),
    path("api/me", me),
    path("api/pages", create_page),
    path("api/pages/<str:page_id>", one_page),
    path("api/spaces/<str:space_key>/pages", space_pages),
    path("forge/resolver", forge_resolver),
    path("forge/events", forge_event),
    path("forge/schedule", forge_schedule),
    path("forge/lifecycle", forge_lifecycle),
]


if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    create_app()
    execute_from_command_line(sys.argv)
