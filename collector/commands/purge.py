"""``connect-audit purge --older-than DAYS``: retention that keeps the chain verifiable.

Removes the oldest events (a prefix of the chain) and records the purge as a chained
``purge`` event carrying the anchor it removed up to, so ``connect-audit verify`` still
passes afterwards while an unrecorded deletion still fails it. Asks for confirmation on a
terminal; elsewhere ``--yes`` is required.
"""

from __future__ import annotations

import argparse

from collector.commands import add_database_option


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of days")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "purge",
        help="remove events older than a number of days (the purge itself is recorded)",
        description=(
            "Remove the audit events older than DAYS days. The oldest events go first and the "
            "chain stays verifiable: the purge is recorded as a chained event that names the "
            "last event it removed."
        ),
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--older-than", metavar="DAYS", type=_days, help="age in days (e.g. 180)")
    which.add_argument(
        "--policy",
        action="store_true",
        help="apply the retention policy (CONNECT_AUDIT_RETENTION_DAYS, _MAX_EVENTS, _ARCHIVE)",
    )
    add_database_option(parser)
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from datetime import timedelta

    from collector import retention
    from collector.commands._support import database_errors
    from collector.errors import ConfigurationError
    from collector.store import Store

    policy = None
    if args.policy:
        policy = retention.RetentionPolicy.from_env()
        if policy is None:
            raise ConfigurationError(
                f"no retention policy: set {retention.DAYS_ENV} and/or "
                f"{retention.MAX_EVENTS_ENV} (and {retention.ARCHIVE_ENV} to archive)"
            )
    older_than = timedelta(days=args.older_than) if policy is None else None
    with Store.open(args.database, create=False) as store, database_errors(f"purging {store.url}"):
        plan = retention.plan(store, older_than) if policy is None else retention.policy_plan(store, policy)
        why = (
            f"are older than {args.older_than:g} days"
            if policy is None
            else f"go by the policy ({policy.describe()})"
        )
        if not plan.removed:
            print(
                f"nothing to purge: no event in {store.url} "
                + (
                    f"is older than {args.older_than:g} days"
                    if policy is None
                    else f"goes by the policy ({policy.describe()})"
                )
            )
            return 0
        print(
            f"{plan.removed} events from {_when(plan.oldest_removed)} to {_when(plan.newest_removed)} "
            f"(seq up to {plan.up_to_seq}) {why}; "
            f"the oldest event kept is from {_when(plan.oldest_kept)}",
            file=sys.stderr,
        )
        if not args.yes:
            if not sys.stdin.isatty():
                raise ConfigurationError(
                    "refusing to purge without --yes when standard input is not a terminal"
                )
            answer = input(f"Remove them from {store.url}? [y/N] ").strip().lower()
            if answer not in ("y", "yes"):
                print("purge cancelled", file=sys.stderr)
                return 1
        if policy is not None:
            return _apply(store, policy, plan.removed)
        result = retention.purge(store, older_than)
    if result.event_id is None:
        print("nothing to purge: the events were removed meanwhile")
        return 0
    print(
        f"purged {result.plan.removed} events (seq up to {result.plan.up_to_seq}); "
        f"recorded as purge event {result.event_id}"
    )
    _say_dropped(result.dropped_partitions)
    return 0


def _say_dropped(names) -> None:
    if names:  # PostgreSQL: months that went whole, as partitions, rather than row by row
        print(f"dropped {len(names)} whole month{'s' if len(names) != 1 else ''}: {', '.join(names)}")


def _apply(store, policy, total: int) -> int:
    from collector import retention
    from collector.commands._support import ProgressBar

    bar = ProgressBar("purge", total) if total >= 100_000 else None
    run = retention.apply_policy(store, policy, progress=bar.update if bar else None)
    if bar:
        bar.finish()
    if not run.removed:
        print("nothing to purge: the events were removed meanwhile")
        return 0
    print(
        f"purged {run.removed} events in {len(run.purges)} step{'s' if len(run.purges) != 1 else ''} "
        f"by the policy ({policy.describe()}); recorded as purge events "
        + ", ".join(p.event_id for p in run.purges[:3])
        + (" ..." if len(run.purges) > 3 else "")
    )
    _say_dropped([name for p in run.purges for name in p.dropped_partitions])
    for archive in run.archives:
        print(
            f"archived seq {archive['first_seq']} to {archive['last_seq']} in "
            f"{policy.archive_dir / archive['file']} "
            f"(sha256 {archive['sha256']})"
        )
    return 0


def _when(ts) -> str:
    return ts.strftime("%Y-%m-%d %H:%M UTC") if ts else "-"
