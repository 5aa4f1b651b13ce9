"""``connect-audit reconcile``: line Atlassian's record of the app's calls up with the app's own.

Prints how many calls matched, how many Atlassian logged with the app's identity that the app
never recorded (``atlassian_only``: a leaked secret, a forgotten script, a second deployment)
and how many the app recorded that Atlassian's record lacks (``app_only``), then the unmatched
rows. With ``--json``: ``{matched, atlassian_only, app_only, window, rows: [...]}``. Exit
status: 0 when nothing is unmatched, 1 otherwise, 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse

from collector.commands import add_database_option


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "reconcile",
        help="match Atlassian's imported record of the app's calls to the app's own log",
        description=(
            "Match each call Atlassian logged with the app's identity (imported with connect-audit "
            "import) to the app's outgoing events: same site, time within --tolerance, same method "
            "and path, same identity. Unmatched calls are atlassian_only; outgoing events that a "
            "covered site's record lacks are app_only. Exit 0 when nothing is unmatched, 1 otherwise."
        ),
    )
    add_database_option(parser)
    parser.add_argument(
        "--since", metavar="ISO", help="start of the window (ISO date/time or age like 7d; default 24h)"
    )
    parser.add_argument("--until", metavar="ISO", help="end of the window (default: now)")
    parser.add_argument(
        "--tenant", metavar="KEY", help="one site: a clientKey, baseUrl or acme.atlassian.net"
    )
    parser.add_argument(
        "--tolerance",
        metavar="SECONDS",
        type=float,
        default=5.0,
        help="the largest gap between the app's and Atlassian's time of a call (default 5)",
    )
    parser.add_argument(
        "--settle",
        metavar="SECONDS",
        type=float,
        default=60.0,
        help="how long Atlassian may take to log a call: app events this close to the end of an "
        "import are not judged app_only yet (default 60)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from collector.commands._support import database_errors
    from collector.errors import ConfigurationError
    from collector.filters import parse_time
    from collector.reconcile import reconcile
    from collector.store import Store

    if args.tolerance < 0 or args.settle < 0:
        raise ConfigurationError("--tolerance and --settle must not be negative")
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until, end_of_day=True) if args.until else None
    if since and until and since >= until:
        raise ConfigurationError("the window is empty: --since must be before --until")
    with Store.open(args.database, create=False) as store, database_errors(f"reconciling {store.url}"):
        result = reconcile(
            store, since=since, until=until, tenant=args.tenant, tolerance=args.tolerance, settle=args.settle
        )
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        _print(result)
    return 0 if result.clean else 1


def _print(result) -> None:
    w = result.window
    print(
        f"window {w['since']} to {w['until']} (tolerance {w['tolerance_s']:g} s)"
        + (f", site {w['tenant']}" if w["tenant"] else "")
    )
    print(f"matched {result.matched}, atlassian_only {result.atlassian_only}, app_only {result.app_only}")
    for row in result.rows:
        who = row["account_id"] if row["identity_kind"] == "user" else "app user"
        where = row["site"] or row["tenant"] or "(unknown site)"
        print(
            f"  {row['kind']:<14} {row['ts']}  {where}  {row['method'] or '?'} {row['path'] or '?'}  "
            f"{row['status'] if row['status'] is not None else '-'}  as {who}  event {row['event_id']}"
        )
