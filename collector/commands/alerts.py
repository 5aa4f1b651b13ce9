"""``connect-audit alerts``: send the highlights that the alert rules pick to webhooks and Slack.

Runs every ``--every`` seconds (default 60) until interrupted, or once with ``--once``. Each
highlight is delivered once per destination (deduplicated by its alert id across runs and
processes), retried with backoff, and every delivery and failure is recorded in the log.
Exit status with ``--once``: 0 when everything due was delivered (or nothing was due), 1 when
a delivery failed (it is tried again on the next run), 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse

from collector.commands import add_database_option


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "alerts",
        help="send the highlights the alert rules pick to webhooks (HMAC-signed) and Slack",
        description=(
            "Find the window's highlights and deliver those the configuration's rules pick (by "
            "default every high one) to its destinations: a JSON webhook signed with HMAC-SHA256, or a "
            "Slack incoming webhook. At least once, deduplicated by alert id, retried with backoff; "
            "every delivery and failure is an audit event. See docs/cli.md for the file's format."
        ),
    )
    add_database_option(parser)
    parser.add_argument("--config", metavar="FILE",
                        help="the alert configuration (TOML; default: CONNECT_AUDIT_ALERTS)")
    parser.add_argument("--since", metavar="ISO", default="24h",
                        help="how far back highlights are looked for (default 24h)")
    parser.add_argument("--once", action="store_true", help="run once and exit (1 if a delivery failed)")
    parser.add_argument("--every", metavar="SECONDS", type=float, default=60.0,
                        help="seconds between runs when not --once (default 60)")
    parser.add_argument("--attempts", metavar="N", type=int, default=5,
                        help="tries per delivery within a run (default 5)")
    parser.add_argument("--backoff", metavar="SECONDS", type=float, default=1.0,
                        help="the first pause between tries, doubled after each (default 1)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be sent, send and record nothing")
    parser.add_argument("--json", action="store_true", help="print each run's report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time
    from datetime import UTC, datetime

    from collector.alerts import AlertConfig, Alerter
    from collector.commands._support import database_errors
    from collector.errors import ConfigurationError
    from collector.filters import parse_time
    from collector.store import Store

    if args.every <= 0 or args.backoff < 0 or args.attempts < 1:
        raise ConfigurationError("--every must be positive, --backoff at least 0 and --attempts at least 1")
    config = AlertConfig.load(args.config)
    parse_time(args.since)  # a malformed --since fails now, not at the first run
    with Store.open(args.database, create=False) as store, database_errors(f"alerting from {store.url}"):
        alerter = Alerter(store, config, attempts=args.attempts, backoff=args.backoff)
        if args.dry_run:
            now = datetime.now(UTC)
            for item in alerter.due(since=parse_time(args.since, now=now), now=now):
                h = item.highlight
                state = "sent before" if item.sent_before else "would send"
                print(f"{state} {item.alert_id} ({h.severity} {h.kind}) to {item.destination.label}: "
                      f"{h.summary}")
            return 0
        while True:
            now = datetime.now(UTC)
            report = alerter.run_once(since=parse_time(args.since, now=now), now=now)
            _print(report, args.json)
            if args.once:
                return 1 if report.failed else 0
            time.sleep(args.every)


def _print(report, as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps(report.as_dict()), flush=True)
        return
    for item in report.delivered:
        print(f"sent {item['alert_id']} ({item['severity']} {item['kind']}) to {item['destination']}")
    for item in report.failed:
        print(f"NOT sent {item['alert_id']} ({item['severity']} {item['kind']}) to {item['destination']}: "
              f"{item['problem']}")
    print(f"{len(report.delivered)} sent, {len(report.failed)} failed, {report.already} sent before",
          flush=True)
