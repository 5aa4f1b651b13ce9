"""``connect-audit token inspect TOKEN|-``: why was this JWT accepted or rejected?

Runs the verifier the middleware runs, with the same rules and rejection codes, and prints
the verdict, the reason code, a sentence of detail, the fix, the decoded header and claims,
the times relative to ``--now``, and, given ``--method`` and ``--url``, the canonical
request, both qsh values and the diagnosis of a mismatch. Exit status: 0 accepted,
1 rejected, 2 usage error. It never prints a shared secret or the token's signature.

Installs (the shared secret for ``iss``) come from ``--installs FILE``, a JSON object
``{clientKey: sharedSecret}``, or else from the audit store (``--database`` or the default).

``--endpoint forge`` inspects a Forge Invocation Token against ``--app-id ARI`` (repeatable)
and the keys of ``--jwks URL|FILE|DIR`` (default ``CONNECT_AUDIT_FORGE_JWKS``, else Forge's
JWKS), and shows the installation, principal, module, environment and times; a pasted
``x-forge-oauth-system`` / ``x-forge-oauth-user`` token shows its expiry and what it may be
used for (exit 0 while usable, 1 once expired).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

_STDIN = "-"  # the conventional name of standard input
#: Read at most this much from standard input; anything longer is reported as too_large.
_STDIN_LIMIT = 2 * 1024 * 1024


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "token",
        help="inspect a Connect JWT or a Forge token: verdict, reason, fix, claims, qsh diagnosis",
        description="Work with Connect JWTs.",
    )
    actions = parser.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    inspect = actions.add_parser(
        "inspect",
        help="verify a token and explain the verdict",
        description=(
            "Verify a token exactly as the middleware does and explain the result. Exit "
            "status 0 accepted, 1 rejected, 2 usage error."
        ),
    )
    inspect.add_argument(
        "token",
        metavar="TOKEN",
        help="the token, or - to read it from standard input (quotes and a 'JWT ' prefix are fine)",
    )
    inspect.add_argument("--method", metavar="M", help="the request's HTTP method")
    inspect.add_argument("--url", metavar="URL", help="the request's URL or path and query")
    inspect.add_argument(
        "--endpoint",
        choices=("request", "context", "lifecycle", "forge"),
        default="request",
        help="the kind of route the token reached (default request); forge: a Forge invocation "
             "token, or a pasted x-forge-oauth-system/-user token",
    )
    inspect.add_argument(
        "--app-id", metavar="ARI", action="append", default=[],
        help="forge: the app's ARI (ari:cloud:ecosystem::app/<id>), the aud a FIT must carry; repeatable",
    )
    inspect.add_argument(
        "--jwks", metavar="URL|FILE|DIR",
        help="forge: where the signing keys are (default CONNECT_AUDIT_FORGE_JWKS or Forge's JWKS)",
    )
    inspect.add_argument(
        "--installs", metavar="FILE", help="a JSON object {clientKey: sharedSecret}"
    )
    inspect.add_argument(
        "--database",
        metavar="URL",
        help="read installs from this store (default: CONNECT_AUDIT_DATABASE_URL or data/audit.db)",
    )
    inspect.add_argument(
        "--app-base-url",
        metavar="URL",
        help="the app's baseUrl: its path is stripped before hashing; lifecycle aud must contain it",
    )
    inspect.add_argument(
        "--install-keys",
        metavar="DIR|URL",
        help="where lifecycle public keys are (default CONNECT_AUDIT_INSTALL_KEYS or Atlassian's CDN)",
    )
    inspect.add_argument(
        "--body-client-key", metavar="KEY", help="the clientKey of the lifecycle callback body"
    )
    inspect.add_argument(
        "--now", metavar="EPOCH", type=float, help="check as of this time (seconds since the epoch)"
    )
    inspect.add_argument(
        "--leeway", metavar="SECONDS", type=int, default=30, help="clock leeway (default 30)"
    )
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from collector.errors import ConfigurationError
    from collector.inspect import inspect_token

    if (args.method is None) != (args.url is None):
        raise ConfigurationError("--method and --url go together: give both or neither")
    if args.leeway < 0:
        raise ConfigurationError("--leeway cannot be negative")
    if args.endpoint == "lifecycle" and not args.app_base_url:
        raise ConfigurationError(
            "--endpoint lifecycle needs --app-base-url (the aud the callback must carry)"
        )
    pasted = sys.stdin.read(_STDIN_LIMIT) if args.token == _STDIN else args.token
    if args.endpoint == "forge":
        return _inspect_forge(args, pasted)
    keys = None
    if args.endpoint == "lifecycle":
        from collector.keys import key_source

        keys = key_source(args.install_keys)
    notes: list[str] = []
    installs, close = _installs(args, notes)
    try:
        report = inspect_token(
            pasted,
            method=args.method,
            url=args.url,
            endpoint=args.endpoint,
            installs=installs,
            keys=keys,
            app_base_url=args.app_base_url,
            body_client_key=args.body_client_key,
            now=time.time() if args.now is None else args.now,
            leeway=args.leeway,
        )
    finally:
        close()
    report["hints"].extend(notes)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(render(report))
    return 0 if report["verdict"] == "accepted" else 1


def _inspect_forge(args: argparse.Namespace, pasted: str) -> int:
    import time

    from collector.errors import ConfigurationError
    from collector.forge import APP_ARI
    from collector.inspect import inspect_forge_token
    from collector.jwks import jwks_source

    for app_id in args.app_id:
        if not APP_ARI.fullmatch(app_id):
            raise ConfigurationError(f"--app-id {app_id!r} is not an app ARI (ari:cloud:ecosystem::app/<id>)")
    report = inspect_forge_token(
        pasted, app_ids=args.app_id, keys=jwks_source(args.jwks),
        now=time.time() if args.now is None else args.now, leeway=args.leeway,
    )
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else render(report))
    return 0 if report["verdict"] in ("accepted", "usable") else 1


def _installs(args: argparse.Namespace, notes: list[str]) -> tuple[Any, Any]:
    """The install lookup and a function that releases it."""
    if args.installs:
        from collector.tokens import StaticInstalls

        return StaticInstalls(load_installs_file(args.installs)), lambda: None
    if args.endpoint == "lifecycle":
        return None, lambda: None  # lifecycle tokens are checked with the kid's public key
    from collector import config
    from collector.errors import ConnectAuditError

    try:
        from collector.installs import InstallRegistry
        from collector.store import Store

        store = Store.open(config.database_url(args.database), create=False)
    except ConnectAuditError:
        if config.database_url(args.database) != config.default_database_url():  # flag or env: explicit
            raise
        notes.append(
            "No installs were available (no --installs, and the default store could not be "
            "opened), so the issuer is unknown; give --installs FILE or --database URL."
        )
        return None, lambda: None
    return InstallRegistry(store), store.close


def load_installs_file(path: str) -> dict[str, Any]:
    """Read ``{clientKey: sharedSecret}`` (or ``{clientKey: {"sharedSecret": ...}}``)."""
    from collector.errors import ConfigurationError
    from collector.tokens import InstallSecret

    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ConfigurationError(f"cannot read --installs {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigurationError(f"--installs {path} is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"--installs {path} must be a JSON object {{clientKey: sharedSecret}}")
    installs: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, str):
            installs[key] = value
        elif isinstance(value, dict) and isinstance(value.get("sharedSecret"), str):
            active = value.get("enabled", True) is not False
            installs[key] = InstallSecret(key, value["sharedSecret"], active, value.get("baseUrl", ""))
        else:
            raise ConfigurationError(
                f"--installs {path}: the value for {key!r} must be the shared secret (a string)"
            )
    return installs


_FORGE_LABELS = {
    "installation_id": "install", "principal": "principal", "module_key": "module",
    "module_type": "module typ", "environment": "env", "environment_id": "env id", "cloud_id": "cloud id",
    "site_url": "site", "api_base_url": "api base", "app_version": "version", "kind": "kind",
    "usable_for": "usable for",
}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def render(report: dict[str, Any]) -> str:
    """The human-readable form of an :func:`collector.inspect.inspect_token` report."""
    lines = []

    def row(label: str, value: Any) -> None:
        lines.append(f"{label:<10} {value}")

    verdict = report["verdict"]
    row("verdict", f"{verdict} ({report['reason']})" if report["reason"] else verdict)
    row("detail", report["detail"])
    if report.get("fix"):
        row("fix", report["fix"])
    row("header", _json(report["header"]) if report["header"] is not None else "(unreadable)")
    row("claims", _json(report["claims"]) if report["claims"] is not None else "(unreadable)")
    times = report["times"]
    for label, name in (("issued", "iat"), ("not before", "nbf"), ("expires", "exp")):
        moment = times.get(name)
        if moment and moment["utc"]:
            row(label, f"{moment['utc']} ({moment['relative']})")
        elif moment:
            row(label, f"{moment['epoch']} (not a date in seconds since the epoch)")
    if report.get("qsh_checked"):
        row("canonical", report["canonical"])
        row("expected", report["expected_qsh"])
        row("token qsh", report["token_qsh"])
        diagnosis = report.get("diagnosis")
        if diagnosis:
            mistake = diagnosis["matched_mistake"]
            explanation = diagnosis["explanation"]
            row("diagnosis", f"{mistake}: {explanation}" if mistake else explanation)
            if diagnosis.get("mistaken_canonical"):
                row("signed as", diagnosis["mistaken_canonical"])
    for name, value in (report.get("forge") or {}).items():
        if value is not None and name in _FORGE_LABELS:
            row(_FORGE_LABELS[name], value)
    row("token", report["fingerprint"] or "(none)")
    for hint in report["hints"]:
        row("hint", hint)
    return "\n".join(lines)
