"""``connect-audit verify``: check the audit log's hash chain and signed checkpoints.

Exit status: 0 the chain is intact, 1 it is broken (the first bad event is named),
2 a usage or configuration error (no store, unreadable store, missing checkpoint key).
"""

from __future__ import annotations

import argparse

from collector.commands import add_database_option

#: Below this many events no progress bar is drawn (the check takes well under a second).
PROGRESS_FROM = 100_000


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "verify",
        help="check the audit log's hash chain and signed checkpoints",
        description=(
            "Recompute every event's hash, check that each links to the one before it and that "
            "the signed checkpoints match, and name the first event that does not. Detects "
            "edited, deleted, inserted and reordered events and a truncated tail. Exit 0 when "
            "intact, 1 when broken, 2 on a usage or configuration error."
        ),
    )
    add_database_option(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON on standard output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    import sqlalchemy as sa

    from collector.chain import EVENTS, verify
    from collector.commands._support import ProgressBar, database_errors
    from collector.store import Store

    with Store.open(args.database, create=False) as store, database_errors(f"verifying {store.url}"):
        with store.engine.connect() as conn:
            total = conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar() or 0
        bar = ProgressBar("verify", total) if total >= PROGRESS_FROM else None
        report = verify(store, progress=bar.update if bar else None)
        if bar:
            bar.finish()
        where = store.url
    if args.json:
        print(json.dumps({"database": where, **report.as_dict()}, indent=2))
    elif report.ok:
        cp = report.last_checkpoint
        signed = (
            f"; last signed checkpoint at seq {cp['seq']} ({cp['created_at']})"
            if cp
            else "; no checkpoint yet"
        )
        print(f"chain intact: {report.events_checked} events checked in {where}{signed}")
    else:
        who = f"seq {report.first_bad_seq}" if report.first_bad_seq is not None else "the chain"
        if report.first_bad_event_id:
            who += f" (event {report.first_bad_event_id})"
        print(f"chain BROKEN at {who}: {report.problem}")
    return 0 if report.ok else 1
