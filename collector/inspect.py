"""Explain one token to a person: the verdict, the exact reason, and what to do about it.

:func:`inspect_token` is the engine of ``connect-audit token inspect`` and of the
dashboard's token debugger. It runs the same :class:`~collector.tokens.TokenVerifier` as the
middleware, then adds what helps a developer: the decoded header and claims (even for a
malformed token, when they can be read), the times in UTC and relative to "now", clock
skew, a hint when a time looks like milliseconds, and, when a request is given, the
canonical request, both qsh values and the diagnosis of a mismatch.

Pure: ``now`` and the lookups are passed in. The report never contains the shared secret,
the token or its signature; it does contain the claims, which Connect never uses for
secrets.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from collector import errors
from collector.qsh import CONTEXT_QSH, canonical_request, context_path, diagnose
from collector.tokens import (
    Endpoint,
    InstallLookup,
    KeySource,
    TokenVerifier,
    VerifyPolicy,
    clean_pasted_token,
    parse_token,
    token_fingerprint,
)

#: Epoch values above this are far beyond year 5000 in seconds: they are milliseconds.
_MILLISECONDS_THRESHOLD = 100_000_000_000
_DISPLAY_LIMIT = 64 * 1024


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _utc(epoch: float) -> str | None:
    try:
        return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


def _relative(seconds: float) -> str:
    """``3 min ago`` / ``in 2 h`` for a signed offset from now (negative is the past)."""
    size = abs(seconds)
    if size < 1:
        return "now"
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if size >= length:
            amount = f"{size / length:.0f} {unit}"
            break
    else:
        amount = f"{size:.0f} s"
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


def _lenient_part(segment: str) -> dict[str, Any] | None:
    """Decode a header or claims segment loosely, for display only."""
    try:
        raw = base64.urlsafe_b64decode(segment.rstrip("=") + "=" * (-len(segment.rstrip("=")) % 4))
        value = json.loads(raw)  # json.loads(bytes) also reads UTF-16/32, which helps display
    except (binascii.Error, ValueError, RecursionError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def decode_for_display(token: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(header, claims) as decoded, strictly if possible, else loosely; None where unreadable."""
    try:
        parsed = parse_token(token, max_size=_DISPLAY_LIMIT)
        return parsed.header, parsed.claims
    except errors.TokenRejected:
        pass
    if not token or len(token) > _DISPLAY_LIMIT:
        return None, None
    parts = token.split(".")
    header = _lenient_part(parts[0]) if parts else None
    claims = _lenient_part(parts[1]) if len(parts) > 1 else None
    return header, claims


def _time_field(value: Any, now: float) -> dict[str, Any] | None:
    if type(value) is not int:
        return None
    utc = _utc(value)
    return {"epoch": value, "utc": utc, "relative": _relative(value - now) if utc else None}


def _times(claims: dict[str, Any] | None, now: float) -> dict[str, Any]:
    claims = claims or {}
    times: dict[str, Any] = {name: _time_field(claims.get(name), now) for name in ("iat", "nbf", "exp")}
    iat, exp = claims.get("iat"), claims.get("exp")
    times["age_seconds"] = int(now - iat) if type(iat) is int else None
    times["expires_in_seconds"] = int(exp - now) if type(exp) is int else None
    times["lifetime_seconds"] = exp - iat if type(iat) is int and type(exp) is int else None
    # How far the issuer's clock is ahead, when iat (in seconds) says it was issued later
    # than now: the usual cause of not_yet_valid.
    ahead = type(iat) is int and now < iat <= _MILLISECONDS_THRESHOLD
    times["issuer_ahead_seconds"] = int(iat - now) if ahead else None
    return times


def _hints(
    claims: dict[str, Any] | None, now: float, leeway: int, cleaned: bool, reason: str | None
) -> list[str]:
    hints = []
    if cleaned:
        hints.append(
            "The pasted text was cleaned up (quotes, a 'JWT'/'Bearer' prefix, a URL or "
            "whitespace were removed) before checking."
        )
    claims = claims or {}
    for name in ("iat", "exp", "nbf"):
        value = claims.get(name)
        if type(value) is int and value > _MILLISECONDS_THRESHOLD:
            hints.append(
                f"{name} ({value}) looks like milliseconds: JWT times are whole seconds since "
                f"the epoch ({value // 1000})."
            )
    iat = claims.get("iat")
    if type(iat) is int and iat <= _MILLISECONDS_THRESHOLD and iat > now + leeway:
        hints.append(
            f"The issuer's clock is about {int(iat - now)} s ahead of this one (iat is in the "
            "future); synchronise clocks with NTP."
        )
    exp = claims.get("exp")
    if reason == "expired" and type(exp) is int:
        hints.append(f"The token expired {_relative(exp - now).removesuffix(' ago')} ago, at {_utc(exp)}.")
    return hints


def _install_view(installs: InstallLookup | None, claims: dict[str, Any] | None) -> dict[str, Any] | None:
    iss = (claims or {}).get("iss")
    if installs is None or not isinstance(iss, str):
        return None
    install = installs.install_secret(iss)
    if install is None:
        return None
    return {"client_key": install.client_key, "active": install.active, "base_url": install.base_url}


#: How the hints name the inputs that were not given: the CLI's flags by default. Another
#: surface passes its own names (the dashboard names its form fields).
CLI_INPUTS: Mapping[str, str] = {
    "method": "--method",
    "url": "--url",
    "body_client_key": "--body-client-key",
    "app_id": "--app-id ari:cloud:ecosystem::app/<id>",
}


def inspect_token(
    token: str | None,
    *,
    method: str | None = None,
    url: str | None = None,
    endpoint: Endpoint | str = "request",
    installs: InstallLookup | None,
    keys: KeySource | None = None,
    app_base_url: str | None = None,
    body_client_key: str | None = None,
    now: float,
    leeway: int = 30,
    form_body: str | None = None,
    inputs: Mapping[str, str] = CLI_INPUTS,
) -> dict[str, Any]:
    """Verify ``token`` as the middleware would and report everything a person needs.

    ``method`` and ``url`` describe the request the token came with (both, or neither: then
    the qsh is not compared); ``app_base_url`` gives the context path to strip (and the
    ``aud`` lifecycle tokens must contain); ``form_body`` lets the diagnosis test whether
    the issuer hashed a form body. The pasted text is cleaned with
    :func:`~collector.tokens.clean_pasted_token` first.

    Returns a JSON-ready dict: ``verdict`` (``accepted``/``rejected``), ``reason`` (a
    rejection code or None), ``detail``, ``fix``, ``header``, ``claims``, ``fingerprint``,
    ``endpoint``, ``now``, ``times``, ``install``, ``hints``, ``qsh_checked`` and, when a
    request was given and the token has a qsh, ``canonical``, ``expected_qsh``,
    ``token_qsh`` and ``diagnosis``.
    """
    endpoint = Endpoint(endpoint)
    raw = token or ""
    cleaned = clean_pasted_token(raw)
    header, claims = decode_for_display(cleaned)
    with_request = method is not None and url is not None
    verifier = TokenVerifier(
        installs,
        keys=keys,
        clock=lambda: now,
        policy=VerifyPolicy(leeway=leeway),
        app_base_url=app_base_url,
    )
    reason: str | None = None
    try:
        if endpoint is Endpoint.LIFECYCLE and with_request:
            # Without the body's clientKey, compare iss with itself: everything else is checked.
            iss = (claims or {}).get("iss")
            fallback = iss if isinstance(iss, str) else ""
            verifier.verify_lifecycle(cleaned, method, url, body_client_key=body_client_key or fallback)
        elif with_request:
            verifier.verify_request(cleaned, method, url, endpoint=endpoint)
        else:
            verifier.verify_signature_and_claims(cleaned, endpoint=endpoint, body_client_key=body_client_key)
    except errors.TokenRejected as exc:
        reason = exc.code
        detail, fix = _sentence(exc.detail), exc.fix
    else:
        detail = _accepted_detail(endpoint, method, url, with_request, body_client_key)
        fix = None

    report: dict[str, Any] = {
        "verdict": "rejected" if reason else "accepted",
        "reason": reason,
        "detail": detail,
        "fix": fix,
        "header": header,
        "claims": claims,
        "fingerprint": token_fingerprint(cleaned) if cleaned else None,
        "endpoint": endpoint.value,
        "now": {"epoch": now, "utc": _utc(now)},
        "times": _times(claims, now),
        "install": _install_view(installs, claims),
        "forge": None,  # filled by inspect_forge_token
        "qsh_checked": False,
        "hints": _hints(claims, now, leeway, cleaned != raw.strip(), reason),
    }
    if endpoint is Endpoint.LIFECYCLE and body_client_key is None:
        report["hints"].append(
            "The token's iss was not compared with the callback body's clientKey "
            f"(give {inputs['body_client_key']})."
        )
    token_qsh = (claims or {}).get("qsh")
    if with_request and isinstance(token_qsh, str):
        report.update(_qsh_report(token_qsh, method, url, app_base_url, form_body))
    elif not with_request:
        report["hints"].append(
            f"The qsh was not compared with a request: give {inputs['method']} and {inputs['url']} "
            "to check it."
        )
    return report


def _accepted_detail(
    endpoint: Endpoint, method: str | None, url: str | None, with_request: bool, body_key: str | None
) -> str:
    if not with_request:
        return "The signature and claims are valid; the qsh was not compared with a request."
    if endpoint is Endpoint.LIFECYCLE and body_key is None:
        return (
            f"The callback token is valid for {method.upper()} {url}; its iss was not "
            "compared with the body's clientKey."
        )
    return f"The token is valid for {method.upper()} {url}."


def _qsh_report(
    token_qsh: str, method: str, url: str, app_base_url: str | None, form_body: str | None
) -> dict[str, Any]:
    base = context_path(app_base_url)
    found = diagnose(token_qsh, method, url, base, form_body=form_body)
    return {
        "qsh_checked": True,
        "canonical": canonical_request(method, url, base),
        "expected_qsh": found.expected_qsh,
        "token_qsh": token_qsh,
        "context_token": token_qsh == CONTEXT_QSH,
        "diagnosis": None if found.matches else found.as_dict(),
    }


# --------------------------------------------------------------------------- Forge

_PRODUCT_HEADERS = {"x-forge-oauth-system:": "system", "x-forge-oauth-user:": "user"}
_PRODUCT_USE = {
    "system": "calls to the invocation's app.apiBaseUrl as the app's bot user (asApp), "
    "sent as 'Authorization: Bearer <token>'",
    "user": "calls to the invocation's app.apiBaseUrl as the invoking user (asUser), "
    "sent as 'Authorization: Bearer <token>'",
    None: "calls to app.apiBaseUrl as the app (x-forge-oauth-system) or as the invoking user "
    "(x-forge-oauth-user), sent as 'Authorization: Bearer <token>'",
}


def _product_kind(text: str) -> tuple[str | None, str]:
    """The kind named by a pasted ``x-forge-oauth-...:`` header line, and the rest."""
    stripped = text.strip()
    for prefix, kind in _PRODUCT_HEADERS.items():
        if stripped.lower().startswith(prefix):
            return kind, stripped[len(prefix) :]
    return None, text


def _is_invocation_token(claims: dict[str, Any] | None) -> bool:
    from collector.forge import FORGE_ISSUER

    return bool(claims) and (claims.get("iss") == FORGE_ISSUER or isinstance(claims.get("app"), dict))


def inspect_forge_token(
    token: str | None,
    *,
    app_ids: tuple[str, ...] | list[str],
    keys: KeySource | None,
    now: float,
    leeway: int = 30,
    installations: Any = None,
    inputs: Mapping[str, str] = CLI_INPUTS,
) -> dict[str, Any]:
    """Explain a Forge token: an invocation token (verified as the middleware verifies it) or
    a pasted ``x-forge-oauth-system`` / ``-user`` product token (its expiry and use).

    Same report shape as :func:`inspect_token`, with ``endpoint`` ``forge`` and a ``forge``
    section: for an invocation token the installation, cloudId, site, environment, module,
    principal and app version; for a product token ``kind`` and ``usable_for``. A product
    token's verdict is ``usable`` or ``rejected`` (``expired``): it is opaque to the app and
    verified by Atlassian, so only its ``exp`` can be checked here.
    """
    from collector.forge import ForgeVerifier, product_token_expiry

    kind, rest = _product_kind(token or "")
    cleaned = clean_pasted_token(rest)
    header, claims = decode_for_display(cleaned)
    report: dict[str, Any] = {
        "header": header,
        "claims": claims,
        "endpoint": "forge",
        "install": None,
        "qsh_checked": False,
        "fingerprint": token_fingerprint(cleaned) if cleaned else None,
        "now": {"epoch": now, "utc": _utc(now)},
        "times": _times(claims, now),
        "hints": _hints(claims, now, leeway, cleaned != (token or "").strip(), None),
    }
    if kind is not None or (claims is not None and not _is_invocation_token(claims)):
        exp = product_token_expiry(cleaned) if cleaned else None
        expired = exp is not None and now >= exp
        report.update(
            {
                "verdict": "rejected" if expired else "usable",
                "reason": "expired" if expired else None,
                "detail": _product_detail(kind, exp, now),
                "fix": errors.ForgeTokenExpired.fix if expired else None,
                "forge": {
                    "token": "product",
                    "kind": kind,
                    "usable_for": _PRODUCT_USE[kind],
                },
            }
        )
        return report
    from collector.jwks import is_local

    verifier = ForgeVerifier(
        app_ids, keys=keys, installations=installations, clock=lambda: now,
        policy=VerifyPolicy(leeway=leeway),
        http_api_hosts=("127.0.0.1", "localhost") if keys is not None and is_local(keys) else (),
    )
    try:
        inv = verifier.verify(cleaned)
    except errors.TokenRejected as exc:
        report.update(
            {
                "verdict": "rejected",
                "reason": exc.code,
                "detail": _sentence(exc.detail),
                "fix": exc.fix,
                "forge": {"token": "invocation"},
            }
        )
        if exc.code == "wrong_audience" and not app_ids:
            report["hints"].append(f"Give the app's ARI ({inputs['app_id']}).")
        return report
    summary = inv.summary()
    report.update(
        {
            "verdict": "accepted",
            "reason": None,
            "fix": None,
            "detail": f"The invocation token is valid: installation {inv.installation_id}, "
            f"module {inv.module_key}.",
            "forge": {
                "token": "invocation",
                **{
                    k: summary[k]
                    for k in (
                        "installation_id",
                        "cloud_id",
                        "site_url",
                        "api_base_url",
                        "environment",
                        "environment_id",
                        "module_key",
                        "module_type",
                        "app_version",
                        "principal",
                    )
                },
            },
        }
    )
    if inv.principal is None:
        report["hints"].append("No principal: a product event, a scheduled trigger or a backend call.")
    return report


def _product_detail(kind: str | None, exp: int | None, now: float) -> str:
    what = f"A Forge {kind} token" if kind else "Not a Forge invocation token: read as a Forge product token"
    if exp is None:
        return f"{what}; it has no readable exp, so its expiry cannot be told (it is opaque to the app)."
    if now >= exp:
        return f"{what}; it expired {_relative(exp - now)}, at {_utc(exp)}."
    return f"{what}; it expires {_relative(exp - now)}, at {_utc(exp)}."
