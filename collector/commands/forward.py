"""``connect-audit forward``: send every event to syslog, Splunk HEC or OpenTelemetry.

Runs until interrupted, sending events as they are written (every ``--every`` seconds it
looks for new ones), or sends what is there with ``--once`` and exits. At least once: the
destination's cursor is kept in the store and moves after each batch the receiver accepted.
Exit status with ``--once``: 0 when everything was sent, 1 when the destination failed or
another forwarder holds it (what was not sent goes on the next run), 2 on a usage or
configuration error. ``--status`` prints every destination's cursor and backlog.
"""

from __future__ import annotations

import argparse

from collector.commands import add_database_option


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "forward",
        help="send every event to syslog (RFC 5424), Splunk HEC or OpenTelemetry (OTLP/HTTP)",
        description=(
            "Send the log's events, in order, to a destination: syslog+tcp://HOST:PORT, "
            "syslog+tls://HOST:PORT[?ca=FILE], splunk-hec://HOST[:8088] (token in "
            "CONNECT_AUDIT_SPLUNK_HEC_TOKEN), splunk-hec+http://..., otlp+http://HOST[:4318], "
            "otlp+https://... Fields carry Elastic Common Schema names. At least once: a cursor "
            "kept in the store resumes after a restart, and a receiver that is down loses nothing. "
            "See docs/cli.md for each format and its parameters."
        ),
    )
    add_database_option(parser)
    parser.add_argument("--to", metavar="URL", help="the destination (see above); required unless --status")
    parser.add_argument(
        "--once",
        action="store_true",
        help="send what is there, print the count and exit (1 if the destination failed)",
    )
    parser.add_argument(
        "--every",
        metavar="SECONDS",
        type=float,
        default=1.0,
        help="how often to look for new events when not --once (default 1)",
    )
    parser.add_argument(
        "--batch",
        metavar="N",
        type=int,
        default=500,
        help="events per batch, the unit the receiver acknowledges (default 500)",
    )
    parser.add_argument(
        "--start",
        choices=("beginning", "now"),
        default="beginning",
        help="where a new destination starts: the first event kept (default) or the "
        "log's head; ignored once it has a cursor",
    )
    parser.add_argument("--status", action="store_true",
                        help="print every destination's cursor and backlog (with --to: that one's)")
    parser.add_argument("--json", action="store_true", help="print reports as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from collector.commands._support import database_errors
    from collector.errors import ConfigurationError
    from collector.store import Store

    if args.every <= 0 or args.batch < 1:
        raise ConfigurationError("--every must be positive and --batch at least 1")
    if not args.status and not args.to:
        raise ConfigurationError("name the destination with --to URL (or ask for --status)")
    from collector.forward import Forwarder, destination

    # A malformed destination is refused before the store is opened.
    target = destination(args.to) if args.to else None
    with Store.open(args.database, create=False) as store, database_errors(f"forwarding from {store.url}"):
        if args.status:
            if target is not None:
                target.close()
            return _status(store, args.json, target.label if target else None)
        forwarder = Forwarder(store, target, batch_size=args.batch, start=args.start)
        try:
            if args.once:
                return _once(forwarder, args.json)
            return _follow(forwarder, args.every, args.json)
        finally:
            forwarder.close()


def _once(forwarder, as_json: bool) -> int:
    from collector.commands._support import ProgressBar
    from collector.forward import ForwardError, cursors

    if not forwarder.claim():
        return _report(forwarder, 0, "another forwarder holds this destination's lease", as_json)
    backlog = next((c.behind for c in cursors(forwarder.store, forwarder.name)), 0)
    bar = (
        ProgressBar(f"forwarding to {forwarder.name}", backlog)
        if backlog > 10 * forwarder.batch_size
        else None
    )
    sent, problem = 0, None
    try:
        sent = forwarder.forward_available(progress=bar.update if bar else None)
    except ForwardError as exc:
        sent, problem = forwarder.sent, str(exc)
    if bar is not None:
        bar.finish()
    return _report(forwarder, sent, problem, as_json)


def _report(forwarder, sent: int, problem: str | None, as_json: bool) -> int:
    import json

    from collector.forward import cursors

    state = next(iter(cursors(forwarder.store, forwarder.name)), None)
    cursor, behind = (state.seq, state.behind) if state else (0, None)
    if as_json:
        print(
            json.dumps(
                {
                    "destination": forwarder.name,
                    "forwarded": sent,
                    "cursor": cursor,
                    "behind": behind,
                    "error": problem,
                }
            ),
            flush=True,
        )
    else:
        print(
            f"forwarded {sent} events to {forwarder.name} (cursor at seq {cursor}, {behind} behind)",
            flush=True,
        )
        if problem:
            print(f"NOT forwarded: {problem}; the rest goes on the next run", flush=True)
    return 1 if problem else 0


def _follow(forwarder, every: float, as_json: bool) -> int:
    import sys
    import time

    from collector.forward import attempt

    backoff = 0.0
    while True:
        before = forwarder.sent
        backoff, problem = attempt(forwarder, backoff)
        if problem:
            print(f"connect-audit forward: {problem}; trying again in {backoff:.0f} s",
                  file=sys.stderr, flush=True)
        if forwarder.sent > before:
            _report(forwarder, forwarder.sent - before, None, as_json)
        # Without the lease, look again before the holder's would run out.
        time.sleep(backoff or (every if forwarder.holds else max(every, forwarder.lease_seconds / 3)))


def _status(store, as_json: bool, only: str | None) -> int:
    import json

    from collector.forward import cursors

    states = cursors(store, only)
    if as_json:
        print(json.dumps([s.as_dict() for s in states]))
        return 0
    if not states:
        print("no destination has been forwarded to from this store")
    for s in states:
        failing = (
            f"; failing since {s.failing_since:%Y-%m-%d %H:%M:%S}Z: {s.last_error}" if s.failing_since else ""
        )
        print(
            f"{s.name}: {s.forwarded} sent, cursor at seq {s.seq}, {s.behind} behind, "
            f"updated {s.updated_at:%Y-%m-%d %H:%M:%S}Z{failing}"
        )
    return 0
