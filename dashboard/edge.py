"""The dashboard's HTTP edge, in front of Streamlit: sign-in that survives a reload.

Streamlit keeps its state per browser tab (one websocket), and its script cannot set a cookie.
So the local sign-in happens here, in plain HTTP, through Streamlit's own ``st.App`` routes and
middleware (see ``dashboard/app.py``):

* ``GET /-/sign-in?next=/activity?range=7d`` shows the form (no JavaScript); ``POST`` checks it
  (:func:`dashboard.signin.attempt`) and answers with the session cookie, ``HttpOnly``,
  ``SameSite=Strict``, ``Secure`` (and named ``__Host-...``) over HTTPS, then sends the browser on
  to ``next``, so a shared link keeps its page and filters.
* :class:`SessionGate` sends a page load without a good session to the form, and ``/overview``
  to ``/`` (Streamlit serves its default page only there).

The pages check the same cookie on every action (:func:`dashboard.ui.signed_in_user`), so an
idle timeout, a sign-out or a password change ends a tab that is already open. With single
sign-on configured this edge stands aside: Streamlit's ``st.login`` cookie does the same job.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from dashboard import auth, sessions, signin

SIGN_IN_PATH = "/-/sign-in"
SECURE_ENV = "CONNECT_AUDIT_SESSION_COOKIE_SECURE"
#: Paths Streamlit itself serves (assets, websocket, auth callbacks) and ours: never gated here.
_OPEN_PREFIXES = ("/_stcore", "/static", "/component", "/media", "/app/static", "/-/", "/auth",
                  "/oauth2callback", "/favicon", "/robots.txt", "/manifest.json")
_MAX_FORM = 16 * 1024
_HEADERS = {
    # The form is ours alone: no script, no framing, nothing fetched from elsewhere.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}

_serving = False


def serving() -> bool:
    """True in a process whose Streamlit server was built with this edge (the pages then read the
    session from the cookie; without it, from the tab, as in Streamlit's AppTest)."""
    return _serving


def app_options() -> dict[str, Any]:
    """The ``routes`` and ``middleware`` to give ``st.App``."""
    from starlette.middleware import Middleware
    from starlette.routing import Route

    global _serving
    _serving = True
    return {"routes": [Route(SIGN_IN_PATH, sign_in_page, methods=["GET", "POST"])],
            "middleware": [Middleware(SessionGate)]}


# --------------------------------------------------------------------------- helpers


def accounts() -> auth.Accounts:
    return auth.shared_accounts()


def safe_next(value: str | None) -> str:
    """A destination on this site only (a path, never ``//host`` or a scheme): no open redirect."""
    value = (value or "").strip()
    if (not value.startswith("/") or value.startswith(("//", "/\\", SIGN_IN_PATH))
            or any(ord(c) < 32 for c in value) or urlsplit(value).netloc):
        return "/"
    return value


def sign_in_url(next_path: str, ended: str | None = None) -> str:
    query = f"next={quote(safe_next(next_path), safe='')}"
    return f"{SIGN_IN_PATH}?{query}&ended={ended}" if ended else f"{SIGN_IN_PATH}?{query}"


def presented_session(cookies: Any) -> str | None:
    """The session id a request carries (the ``__Host-`` cookie over HTTPS, else the plain one)."""
    value = cookies.get(sessions.SECURE_COOKIE) or cookies.get(sessions.COOKIE)
    return value if isinstance(value, str) and value else None


def address_of(request: Any) -> str:
    host = request.client.host if request.client else ""
    return "local" if host in ("", "127.0.0.1", "::1", "localhost") else host


def _secure(request: Any) -> bool:
    return request.url.scheme == "https" or os.environ.get(SECURE_ENV, "").lower() in {"1", "true", "yes"}


def _set_session_cookie(response: Any, request: Any, session_id: str, lifetime: float) -> None:
    secure = _secure(request)
    response.set_cookie(sessions.SECURE_COOKIE if secure else sessions.COOKIE, session_id,
                        max_age=int(lifetime), path="/", secure=secure, httponly=True, samesite="strict")


def _clear_session_cookies(response: Any) -> None:
    for name in (sessions.COOKIE, sessions.SECURE_COOKIE):
        response.delete_cookie(name, path="/", secure=name == sessions.SECURE_COOKIE, httponly=True,
                               samesite="strict")


def _same_origin(request: Any) -> bool:
    """A form post from our own page (the login-CSRF check): Origin, else Sec-Fetch-Site."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        return origin == f"{request.url.scheme}://{request.url.netloc}"
    return request.headers.get("sec-fetch-site", "same-origin") in {"same-origin", "none"}


# --------------------------------------------------------------------------- the form


async def sign_in_page(request: Any) -> Any:
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import HTMLResponse, RedirectResponse

    next_path = safe_next(request.query_params.get("next"))
    if request.method == "GET":
        presented = presented_session(request.cookies)
        if presented is None and request.headers.get("sec-fetch-site") == "cross-site":
            # A link from another site (chat, mail) does not carry a SameSite=Strict cookie; one
            # hop from this site does, so a person who is signed in is not asked again.
            return HTMLResponse(_bounce(str(request.url)), headers=_HEADERS)
        check = await run_in_threadpool(signin.check, accounts(), presented, address_of(request))
        if check.session is not None:
            return RedirectResponse(next_path, status_code=303)
        ended = request.query_params.get("ended") or check.ended
        store = accounts().session_store()
        return HTMLResponse(_form(next_path, notice=signin.ended_sentence(ended, store)), headers=_HEADERS)
    if not _same_origin(request):
        return HTMLResponse(_form(next_path, error="This sign-in did not come from this site's own form."),
                            status_code=403, headers=_HEADERS)
    body = await request.body()
    if len(body) > _MAX_FORM:
        return HTMLResponse(_form(next_path, error="That form was too large."), status_code=413,
                            headers=_HEADERS)
    fields = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    next_path = safe_next(fields.get("next") or next_path)
    store = accounts()
    result = await run_in_threadpool(signin.attempt, store, fields.get("account", ""),
                                     fields.get("password", ""), address_of(request))
    if result.session_id is None:
        status = 429 if result.throttled else 401
        extra = {"Retry-After": str(int(result.retry_after) + 1)} if result.throttled else {}
        return HTMLResponse(_form(next_path, error=result.error, account=fields.get("account", "")),
                            status_code=status, headers={**_HEADERS, **extra})
    response = RedirectResponse(next_path, status_code=303)
    _set_session_cookie(response, request, result.session_id, store.session_store().lifetime)
    return response


_STYLE = """
body{margin:0;font-family:"Source Sans Pro","Source Sans 3",system-ui,-apple-system,"Segoe UI",sans-serif;
color:#31333f;background:#fff;display:flex;justify-content:center}
main{width:min(420px,90vw);margin-top:12vh}
h1{font-size:2.2rem;font-weight:700;margin:0 0 .25rem}
p.caption{color:#808495;margin:0 0 1.5rem}
form{border:1px solid rgba(49,51,63,.2);border-radius:.5rem;padding:1.25rem}
label{display:block;font-size:.9rem;margin:.25rem 0}
input[type=text],input[type=password]{box-sizing:border-box;width:100%;padding:.55rem .75rem;
border:1px solid transparent;border-radius:.5rem;background:#f0f2f6;font:inherit;margin-bottom:1rem}
input:focus{outline:none;border-color:#ff4b4b}
button{background:#ff4b4b;color:#fff;border:0;border-radius:.5rem;padding:.5rem 1rem;font:inherit;
cursor:pointer}
button:hover{background:#ff3333}
.error,.notice{border-radius:.5rem;padding:.75rem 1rem;margin-bottom:1rem}
.error{background:rgba(255,43,43,.09);color:#7d353b}
.notice{background:rgba(28,131,225,.1);color:#004280}
"""


def _form(next_path: str, *, error: str | None = None, notice: str | None = None, account: str = "") -> str:
    esc = html.escape
    message = (f'<div class="error" role="alert">{esc(error)}</div>' if error else
               f'<div class="notice" role="status">{esc(notice)}</div>' if notice else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>Sign in · Connect Audit</title><style>{_STYLE}</style></head>
<body><main>
<h1>Connect Audit</h1>
<p class="caption">Sign in to see the audit log.</p>
{message}
<form method="post" action="{SIGN_IN_PATH}?next={esc(quote(next_path, safe=''))}">
<input type="hidden" name="next" value="{esc(next_path)}">
<label for="account">Account</label>
<input type="text" id="account" name="account" value="{esc(account[:64])}" autocomplete="username"
 autocapitalize="none" spellcheck="false" required autofocus>
<label for="password">Password</label>
<input type="password" id="password" name="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>
</main></body></html>"""


def _bounce(url: str) -> str:
    target = html.escape(url, quote=True)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="0;url={target}"><title>Connect Audit</title></head>'
            f'<body><p><a href="{target}">Continue to Connect Audit</a></p></body></html>')


# --------------------------------------------------------------------------- the gate


class SessionGate:
    """ASGI middleware: a page load needs a good session (else the form, keeping the address);
    ``/overview`` is ``/``. Assets, the websocket and Streamlit's own routes pass untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        response = await self._answer(scope)
        if response is None:
            await self.app(scope, receive, send)
        elif isinstance(response, _PassThrough):
            secure = scope.get("scheme") == "https"
            await self.app(scope, receive, _with_cookie(send, response.name, response.value, secure))
        else:
            await response(scope, receive, send)

    async def _answer(self, scope: dict[str, Any]) -> Any:
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import RedirectResponse

        request = Request(scope)
        path = scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        here = f"{path}?{query}" if query else path
        if path.rstrip("/") == "/overview":
            return RedirectResponse(f"/?{query}" if query else "/", status_code=307)
        if path.startswith(_OPEN_PREFIXES) or "text/html" not in request.headers.get("accept", ""):
            return None
        if auth.oidc_configured(_secrets()):
            # The pages show its button; Streamlit's cookie is the session.
            return _single_sign_on(request, here)
        presented = presented_session(request.cookies)
        check = await run_in_threadpool(signin.check, accounts(), presented, address_of(request))
        if check.session is not None:
            return None
        ended = None if check.ended == sessions.UNKNOWN else check.ended
        response = RedirectResponse(sign_in_url(here, ended), status_code=303)
        if presented:
            _clear_session_cookies(response)
        return response


#: Where a single sign-on visitor was going: the provider's redirect back always lands on ``/``.
NEXT_COOKIE = "connect_audit_next"
NEXT_FOR = 600


def _single_sign_on(request: Any, here: str) -> Any:
    """Keep a shared link's destination across the provider's round trip (``st.login`` comes back
    to ``/``): remember it, signed out, in a short-lived cookie, and go there when the provider
    sends the person back signed in."""
    from starlette.responses import RedirectResponse

    signed_in = any(name.startswith(auth.OIDC_COOKIE) for name in request.cookies)
    wanted = request.cookies.get(NEXT_COOKIE)
    if not signed_in:
        if here == "/":
            return None
        # Lax, not Strict: it must come back with the redirect that starts at the provider.
        return _PassThrough(NEXT_COOKIE, safe_next(here))
    # Only at the end of the provider's redirect (from another origin), not when / is typed later.
    came_back = request.headers.get("sec-fetch-site") in {"cross-site", "same-site"}
    if wanted and request.url.path == "/" and came_back:
        response = RedirectResponse(safe_next(unquote(wanted)), status_code=303)
        response.delete_cookie(NEXT_COOKIE, path="/", httponly=True, samesite="lax")
        return response
    return None


@dataclass(frozen=True, slots=True)
class _PassThrough:
    """Serve the page as usual, with one cookie added to Streamlit's answer."""

    name: str
    value: str


def _with_cookie(send: Any, name: str, value: str, secure: bool) -> Any:
    from http.cookies import SimpleCookie

    jar = SimpleCookie()
    jar[name] = quote(value, safe="")  # %XX only: a cookie value cannot hold / ? = as they are
    jar[name].update({"path": "/", "max-age": str(NEXT_FOR), "httponly": True, "samesite": "Lax"})
    if secure:
        jar[name]["secure"] = True
    header = jar.output(header="").strip().encode("latin-1")

    async def sending(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", header)]}
        await send(message)

    return sending


def _secrets() -> Any:
    import streamlit as st

    return st.secrets
