"""One event as a person reads it: a plain sentence above the raw fields of a row detail.

``sentence(detail, site, names)`` turns the dict :func:`dashboard.queries.event_detail` returns
into text such as "The app acted as Jane Doe on acme.atlassian.net: DELETE content 123 was refused
(403): the descriptor lacks the DELETE scope." The reasons are explained with the one-line
explanations of :mod:`collector.errors` (a rejection class's docstring), never with new words.

Pure: no Streamlit, no store. Every value taken from the event is untrusted (a path may be
``<script>``, an account id ``=cmd|...``): it is kept as text, its control characters become
spaces and long values are clipped, and the caller shows the sentence with ``st.text``, never as
Markdown or HTML.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from collector import errors

#: Looks up a person's display name by account id (None when unknown).
Names = Callable[[str], str | None]

_LONGEST = 120  # characters of one value from the event
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_PRODUCTS = {"confluence": "Confluence", "jira": "Jira"}

# Why an outgoing call was not made (the reason of a call that never reached the product).
_OUTGOING_REFUSALS: dict[str, type[errors.ConnectAuditError]] = {
    errors.TokenExchangeFailed.code: errors.TokenExchangeFailed,
    errors.ForgeTokenUnavailable.code: errors.ForgeTokenUnavailable,
    errors.ForgeTokenExpired.code: errors.ForgeTokenExpired,
}
_LIFECYCLE_REFUSALS = {cls.code: cls for cls in errors.LIFECYCLE_REFUSALS}


def clean(value: Any, longest: int = _LONGEST) -> str:
    """An untrusted value as one line of text: control characters (newlines, tabs, carriage
    returns) become one space, and a long value is clipped with an ellipsis."""
    text = _CONTROL.sub(" ", str(value)).strip()
    return text if len(text) <= longest else text[: longest - 1].rstrip() + "\u2026"


def short_id(account_id: str) -> str:
    """An account id shortened for a sentence (the whole id stays in the fields below it)."""
    text = clean(account_id)
    return text if len(text) <= 10 else text[:8] + "\u2026"


def explanation(code: str | None, direction: str | None = None) -> str | None:
    """The one-line explanation of a reason code, from its class in :mod:`collector.errors`: the
    docstring's first clause without "Raised when". None for a code that has no class."""
    if not code:
        return None
    cls: type | None = None
    if direction == "outgoing":
        cls = _OUTGOING_REFUSALS.get(code)
    if cls is None:
        cls = _LIFECYCLE_REFUSALS.get(code)
    if cls is None:
        try:
            cls = errors.rejection_for(code)
        except KeyError:
            return None
    doc = " ".join((cls.__doc__ or "").split())
    doc = doc.removeprefix("Raised when ")
    # A note for developers after a semicolon (``code`` is stored ...) is not for this sentence.
    doc = doc.split("; ``", 1)[0]
    return doc.rstrip(".") or None


def person(detail: Mapping[str, Any], names: Names | None = None) -> str:
    """The acting person: a display name when the event or the lookup knows one, else
    "user" and the account id shortened."""
    account = detail.get("account_id")
    name = detail.get("display_name") or detail.get("acting_name")
    if not name and account and names is not None:
        try:
            name = names(str(account))
        except Exception:  # noqa: BLE001 - a failing lookup costs the name, not the sentence
            name = None
    if name:
        return clean(name, 60)
    if account:
        return f"user {short_id(str(account))}"
    return "an unnamed user"


def _product(detail: Mapping[str, Any]) -> str:
    return _PRODUCTS.get(str(detail.get("product") or "").lower(), "Confluence")


def _path(detail: Mapping[str, Any]) -> str:
    raw = str(detail.get("path") or detail.get("path_template") or "")
    return clean(raw.split("?", 1)[0]) or "/"


def _thing(detail: Mapping[str, Any]) -> str:
    """What an outgoing call was about, as a person names it: "content 123", "the current
    user", else its path without the query."""
    raw = str(detail.get("path") or "")
    parts = urlsplit(raw)
    path = parts.path.removeprefix("/wiki").rstrip("/")
    query = parse_qs(parts.query)
    space = query.get("spaceKey", [None])[0]
    if m := re.fullmatch(r"/rest/api/content/([^/]+)(/.*)?", path):
        return f"content {clean(m.group(1), 40)}"
    if path == "/rest/api/content":
        return f"content in space {clean(space, 40)}" if space else "content"
    if m := re.fullmatch(r"/api/v2/(pages|blogposts|spaces)/([^/]+)(/.*)?", path):
        kind = {"pages": "page", "blogposts": "blog post", "spaces": "space"}[m.group(1)]
        return f"{kind} {clean(m.group(2), 40)}"
    if m := re.fullmatch(r"/rest/api/space/([^/]+)", path):
        return f"space {clean(m.group(1), 40)}"
    if path == "/rest/api/space":
        return "the spaces"
    if path == "/rest/api/user/current":
        return "the current user"
    if path == "/rest/api/search":
        return "a search"
    return _path(detail)


def _status(detail: Mapping[str, Any]) -> str:
    status = detail.get("status")
    return f" ({clean(status, 10)})" if status not in (None, "") else ""


def _refused_token(detail: Mapping[str, Any]) -> str:
    code = detail.get("reason")
    if not code:
        return "the token was rejected"
    said = explanation(code, detail.get("direction"))
    head = "the install policy refused it" if code in _LIFECYCLE_REFUSALS else "the token was rejected"
    return f"{head} ({clean(code, 40)}: {said})" if said else f"{head} ({clean(code, 40)})"


# --------------------------------------------------------------------------- outgoing


def _outgoing(detail: Mapping[str, Any], site: str, names: Names | None) -> str:
    kind = detail.get("identity_kind")
    forge = detail.get("platform") == "forge"
    if kind == "user":
        actor = f"The app acted as {person(detail, names)}" + (" (Forge asUser)" if forge else "")
    elif kind == "app_user":
        actor = "The app acted as its app user" + (" (Forge asApp)" if forge else "")
    else:
        actor = "The app called the product without acting as anyone"
    what = f"{clean(detail.get('method') or 'A call', 10)} {_thing(detail)}"
    outcome, reason = detail.get("outcome"), detail.get("reason")
    if outcome == "allowed":
        result = f"{what} succeeded{_status(detail)}"
    elif outcome == "denied":
        result = f"{what} was refused{_status(detail)}"
        scope = detail.get("required_scope")
        if reason == "scope":
            where = "manifest.yml lacks" if forge else "the descriptor lacks"
            result += f": {where} the {clean(scope, 60)} scope" if scope else f": {where} the scope it needs"
        elif reason == "permission":
            who = person(detail, names) if kind == "user" else "the app user"
            result += f": {who} lacks the permission (the scopes are fine)"
    elif outcome == "rejected":
        said = explanation(reason, "outgoing")
        if said:
            result = f"{what} was not made: {said} ({clean(reason, 40)})"
        else:
            result = f"{what} was refused{_status(detail)}: {_product(detail)} did not accept the app's token"
    elif outcome == "error":
        status = _status(detail)
        result = f"{what} failed{status}" if status else f"{what} failed before an answer came"
    else:
        result = f"{what} ended {clean(outcome or 'without an outcome', 20)}{_status(detail)}"
    return f"{actor} on {site}: {result}."


# --------------------------------------------------------------------------- incoming


def _incoming(detail: Mapping[str, Any], site: str, names: Names | None) -> str:
    forge = detail.get("platform") == "forge"
    outcome, reason = detail.get("outcome"), detail.get("reason")
    path, method = _path(detail), clean(detail.get("method") or "", 10)
    extra = detail.get("extra") if isinstance(detail.get("extra"), Mapping) else {}
    # A rejected token proves nothing about who sent it, unless its signature verified (then the
    # tenant is known); the sentence does not name a caller it cannot vouch for.
    verified = outcome != "rejected" or bool(detail.get("tenant_client_key"))
    caller = ("Forge" if forge else _product(detail)) if verified else "An unverified caller"
    if outcome != "rejected" and detail.get("auth_method") == "none":
        caller = "An anonymous caller"  # a public route (the descriptor): anyone may call it
    event_type = str(detail.get("event_type") or "request")
    if event_type == "retry":
        act = f"{caller} delivered an event again to the app's {path}"
    elif forge and extra.get("invocation") == "event" and event_type != "request":
        act = f"{caller} delivered the event {clean(event_type, 60)} to the app's {path}"
    elif forge and extra.get("invocation") in ("resolver", "trigger"):
        what = "scheduled trigger" if extra.get("invocation") == "trigger" else "resolver"
        act = f"{caller} invoked the app's {what} ({path})"
    elif event_type == "webhook":
        act = f"{caller} sent the app a webhook at {path}"
    elif method and method != "GET":
        act = f"{caller} sent {method} to the app's {path}"
    else:
        act = f"{caller} called the app's {path}"
    if detail.get("identity_kind") == "user":
        act += f" as {person(detail, names)}"
    if detail.get("tenant_client_key") or detail.get("tenant_base_url"):
        act += f" on {site}"
    status = detail.get("status")
    answered = f"the app answered {clean(status, 10)}" if status not in (None, "") else "the app answered"
    if outcome == "allowed":
        result = answered
    elif outcome == "denied":
        result = answered
        product = _product(detail)
        if reason == "scope":
            result += f", passing on {product}'s refusal of its call for a missing scope"
        elif reason == "permission":
            result += f" (its own rules, or {product} refused the acting user)"
    elif outcome == "rejected":
        result = _refused_token(detail)
    elif outcome == "error":
        result = f"the app failed{_status(detail)}"
    else:
        result = f"it ended {clean(outcome or 'without an outcome', 20)}"
    return f"{act}: {result}."


# --------------------------------------------------------------------------- lifecycle


def _lifecycle(detail: Mapping[str, Any], site: str) -> str:
    forge = detail.get("platform") == "forge"
    event_type = clean(detail.get("event_type") or "lifecycle", 40)
    outcome = detail.get("outcome")
    known = bool(detail.get("tenant_client_key") or detail.get("tenant_base_url"))
    where = site if known else "an unknown site"
    if event_type == "install_changed":
        change = clean(detail.get("detail") or "", 200)
        return f"The install on {where} changed" + (f": {change}." if change else ".")
    sender = "Forge" if forge else _product(detail)
    if outcome == "allowed":
        return f"{sender} sent the {event_type} callback for {where}: the app accepted it{_status(detail)}."
    if outcome == "rejected":
        article = "An" if event_type[:1].lower() in "aeiou" else "A"
        return f"{article} {event_type} callback for {where} was refused: {_refused_token(detail)}."
    return f"{sender} sent the {event_type} callback for {where}: the app failed{_status(detail)}."


# --------------------------------------------------------------------------- the tool's own acts


def _internal(detail: Mapping[str, Any]) -> str:
    extra = detail.get("extra") if isinstance(detail.get("extra"), Mapping) else {}
    actor = extra.get("actor")
    text = f"Connect Audit recorded its own act, {clean(detail.get('event_type') or 'an event', 40)}"
    if actor:
        text += f", by {clean(actor, 60)}"
    said = clean(detail.get("detail") or "", 200)
    return text + (f": {said}." if said else ".")


def sentence(detail: Mapping[str, Any], site: str | None = None, names: Names | None = None) -> str:
    """The event ``detail`` (as :func:`dashboard.queries.event_detail` returns it) as one plain
    sentence. ``site`` is the tenant's site as the pages name it (``acme.atlassian.net``);
    ``names`` looks a display name up by account id. A ``display_name`` or ``acting_name`` in
    the detail wins over the lookup; without either the account id is shown shortened."""
    where = clean(site, 80) if site else "an unknown site"
    direction = detail.get("direction")
    if direction == "outgoing":
        return _outgoing(detail, where, names)
    if direction == "incoming":
        return _incoming(detail, where, names)
    if direction == "lifecycle":
        return _lifecycle(detail, where)
    return _internal(detail)
