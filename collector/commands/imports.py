"""``connect-audit import``: read Atlassian's own audit logs into the store, beside the app's.

``import add`` registers a source (a site's Confluence audit log, or an organization's audit
log events) with its credential, which is read from an environment variable or standard input
and stored encrypted; ``import list`` shows the sources without their credentials; ``import
run`` reads each source from its cursor (once, or every ``--every`` seconds); ``import remove``
forgets one. Exit status of ``run``: 0 when every source was read, 1 when one failed (what it
read stays; the next run resumes), 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse

from collector.commands import add_database_option

CREDENTIAL_ENV = "CONNECT_AUDIT_IMPORT_CREDENTIAL"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "import",
        help="read Atlassian's audit logs (Confluence audit log, organization events) into the store",
        description=(
            "Import Atlassian's own record beside the app's: a site's Confluence audit log "
            "(GET /wiki/rest/api/audit, with a Confluence administrator's API token) or an "
            "organization's audit log events (GET /admin/v1/orgs/{orgId}/events-stream, with an "
            "organization API key). Imported records keep their source's id (a run is idempotent), "
            "their verbatim content and its SHA-256, and join the hash chain as direction "
            "'imported'. See docs/atlassian-record.md."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add",
        help="register a source (replacing one of the same name)",
        description="Register an import source. The credential is read from "
        f"the variable --credential-env names (default {CREDENTIAL_ENV}), else "
        "from standard input, and stored encrypted; it is never printed.",
    )
    add_database_option(add)
    add.add_argument("name", help="a name for the source, e.g. acme-audit or org")
    add.add_argument(
        "--kind",
        required=True,
        choices=("confluence_audit", "org_events"),
        help="confluence_audit: a site's audit log; org_events: an organization's events",
    )
    add.add_argument(
        "--target",
        required=True,
        metavar="SITE_OR_ORG",
        help="the site (https://acme.atlassian.net) or the organization id",
    )
    add.add_argument(
        "--username",
        metavar="EMAIL",
        help="confluence_audit: the administrator's email (Basic auth with the API token); "
        "without it the credential is sent as an OAuth 2.0 bearer token",
    )
    add.add_argument(
        "--api-url",
        metavar="URL",
        help="where the API answers (default: the site, or https://api.atlassian.com)",
    )
    add.add_argument(
        "--site",
        action="append",
        default=[],
        metavar="URL",
        help="org_events: a site whose app calls the organization's log should hold "
        "(repeatable; default: the sites its events name)",
    )
    add.add_argument(
        "--since", metavar="WHEN", help="where the first run starts (ISO date or age like 7d; default 7d)"
    )
    add.add_argument(
        "--credential-env",
        metavar="VAR",
        default=CREDENTIAL_ENV,
        help=f"the environment variable holding the API token or key (default {CREDENTIAL_ENV})",
    )
    add.set_defaults(func=run_add)

    listing = actions.add_parser("list", help="list the sources (never their credentials)")
    add_database_option(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=run_list)

    remove = actions.add_parser("remove", help="forget a source and its credential (its records stay)")
    add_database_option(remove)
    remove.add_argument("name")
    remove.set_defaults(func=run_remove)

    run = actions.add_parser("run", help="read each source (or the named ones) from its cursor")
    add_database_option(run)
    run.add_argument("names", nargs="*", metavar="NAME", help="the sources to read (default: all)")
    run.add_argument(
        "--every",
        metavar="SECONDS",
        type=float,
        help="keep running, reading every SECONDS (default: read once and exit)",
    )
    run.add_argument("--json", action="store_true", help="print each run's report as JSON")
    run.set_defaults(func=run_run)


def _credential(var: str) -> str:
    import getpass
    import os
    import sys

    from collector.errors import ConfigurationError

    value = os.environ.get(var, "").strip()
    if not value:
        value = getpass.getpass("API token or key: ") if sys.stdin.isatty() else sys.stdin.readline()
    value = value.strip()
    if not value:
        raise ConfigurationError(f"no credential: set {var} or give it on standard input")
    return value


def run_add(args: argparse.Namespace) -> int:
    from collector.filters import parse_time
    from collector.imports import add_source
    from collector.store import Store

    since = parse_time(args.since) if args.since else None
    credential = _credential(args.credential_env)
    with Store.open(args.database) as store:
        state = add_source(
            store,
            args.name,
            args.kind,
            args.target,
            credential,
            username=args.username,
            api_url=args.api_url,
            sites=tuple(args.site),
            since=since,
        )
    print(
        f"added {state.kind} source {state.name!r} for {state.target} (reads from {state.api_url}); "
        f"run it with: connect-audit import run {state.name}"
    )
    return 0


def run_list(args: argparse.Namespace) -> int:
    import json

    from collector.imports import source_states
    from collector.store import Store

    with Store.open(args.database, create=False) as store:
        states = source_states(store)
    if args.json:
        print(json.dumps([s.as_dict() for s in states]))
        return 0
    if not states:
        print("no import source (add one with: connect-audit import add)")
    for s in states:
        covered = f"complete to {s.covered_until:%Y-%m-%d %H:%M:%S}Z" if s.covered_until else "not read yet"
        failing = (
            f"; failing since {s.failing_since:%Y-%m-%d %H:%M:%S}Z: {s.last_error}" if s.failing_since else ""
        )
        print(f"{s.name}: {s.kind} {s.target}, {s.imported} imported, {covered}{failing}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from collector.imports import remove_source
    from collector.store import Store

    with Store.open(args.database, create=False) as store:
        remove_source(store, args.name)
    print(f"removed import source {args.name!r} (its imported records stay in the log)")
    return 0


def run_run(args: argparse.Namespace) -> int:
    import time

    from collector.errors import ConfigurationError
    from collector.store import Store

    if args.every is not None and args.every <= 0:
        raise ConfigurationError("--every must be positive")
    with Store.open(args.database, create=False) as store:
        while True:
            failed = _run_once(store, args.names, args.json)
            if args.every is None:
                return 1 if failed else 0
            time.sleep(args.every)


def _run_once(store, names: list[str], as_json: bool) -> bool:
    import json
    import sys

    from collector.imports import Importer, source_states

    states = [source_states(store, n)[0] for n in names] if names else source_states(store)
    if not states:
        print("no import source (add one with: connect-audit import add)", file=sys.stderr)
    failed = False
    for state in states:

        def progress(run, name=state.name):
            if run.pages % 10 == 0:
                print(f"{name}: {run.pages} pages, {run.imported} new records", file=sys.stderr, flush=True)

        with Importer(store, state.name) as importer:
            run = importer.run(progress=progress)
        failed = failed or run.error is not None
        if as_json:
            print(json.dumps(run.as_dict()), flush=True)
            continue
        until = f", complete to {run.covered_until:%Y-%m-%d %H:%M:%S}Z" if run.covered_until else ""
        print(
            f"{run.source}: imported {run.imported} new records ({run.duplicates} already there) "
            f"from {run.pages} pages{until}",
            flush=True,
        )
        if run.error:
            print(f"{run.source}: NOT complete: {run.error}", flush=True)
    return failed
