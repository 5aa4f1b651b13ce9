"""``connect-audit highlights``: what in the log is worth a look, most severe and newest first.

Each highlight is one line: its severity, its kind, and a sentence with the site, the window
and the counts, then the Activity filter that shows its events. ``--json`` prints a list of
objects with ``kind``, ``severity``, ``tenant``, ``platform``, ``first_seen``, ``last_seen``,
``count``, ``summary`` and ``filter`` (the Activity page's query parameters). Exit status: 0
(with or without highlights), 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse

from collector.commands import add_database_option


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "highlights",
        help="list what is worth a look: failure rates above their baseline, first uses, lifecycle changes",
        description=(
            "Find, from the rollups and without scanning the log, what changed or went wrong: 401, 403 "
            "and rejection rates above each site's own baseline, an install's first use of a scope, a "
            "write or delete method or an endpoint, the first time the app acted as someone on a site, "
            "acting as users at an unusual rate, installs, moves, secret rotations and uninstalls, and a "
            "signed checkpoint the log no longer matches. Exit 0, or 2 on a usage or configuration error."
        ),
    )
    add_database_option(parser)
    parser.add_argument("--since", metavar="ISO", default="24h",
                        help="start of the window: ISO-8601 date or time, or an age like 24h or 7d "
                             "(default 24h)")
    parser.add_argument("--until", metavar="ISO",
                        help="end of the window (default: now), to look back at a past day")
    parser.add_argument("--json", action="store_true", help="print the highlights as a JSON list")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime
    from urllib.parse import urlencode

    from collector import highlights
    from collector.commands._support import database_errors
    from collector.errors import FilterError
    from collector.filters import parse_time
    from collector.store import Store

    now = datetime.now(UTC)
    until = parse_time(args.until, now=now, end_of_day=True) if args.until else now
    since = parse_time(args.since, now=until)
    if since >= until:
        raise FilterError("The window is empty: --since must be before --until")
    with Store.open(args.database, create=False, read_only=True) as store, \
            database_errors(f"reading {store.url}"):
        found = highlights.find(store, since=since, now=until)
    if args.json:
        print(json.dumps([h.as_dict() for h in found], indent=2))
        return 0
    if not found:
        print(f"no highlights from {_when(since)} to {_when(until)}")
        return 0
    for h in found:
        print(f"{h.severity:<7}{h.kind:<32}{h.summary}")
        print(f"{'':7}activity: ?{urlencode(h.filter.to_params())}")
    return 0


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")
