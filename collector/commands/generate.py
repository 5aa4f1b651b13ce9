"""``connect-audit generate``: fill a store with synthetic but realistic audit events.

For benchmarks, the dashboard's scale tests and demos without a live app: events go
through the real recorder (queue, batches, hash chain, checkpoints) into the real store,
and each tenant is installed through the install registry. ``--database`` is required so
that synthetic traffic never lands in the default store by accident.
"""

from __future__ import annotations

import argparse


def _count(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not 0 < value < 36_500:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days between 0 and 36500")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "generate",
        help="write synthetic, realistic audit events (for benchmarks and scale tests)",
        description=(
            "Write N synthetic events into the store through the real recorder: Zipf-sized tenants "
            "installed through the registry, about 10% of calls as users, a few % of 403s and "
            "rejected tokens, spread over D days up to now, hash chain and checkpoints included."
        ),
    )
    parser.add_argument(
        "--database", metavar="URL", required=True, help="the store to fill (created if needed)"
    )
    parser.add_argument("--events", metavar="N", type=_count, required=True, help="how many events to write")
    parser.add_argument(
        "--tenants", metavar="T", type=_count, default=25, help="number of tenants (default 25)"
    )
    parser.add_argument(
        "--days", metavar="D", type=_days, default=30.0, help="time span in days (default 30)"
    )
    parser.add_argument(
        "--seed", metavar="S", type=int, default=0, help="random seed (default 0): same seed, same data"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from collector.commands._support import ProgressBar, database_errors
    from collector.store import Store
    from collector.synthetic import generate

    # Synthetic data: commit without an fsync each (durability "normal"); a crash of the
    # machine mid-run can only cost the last batches of a run one would simply repeat.
    with Store.open(args.database, durability="normal") as store, database_errors(f"writing to {store.url}"):
        bar = ProgressBar("generate", args.events)
        result = generate(
            store, args.events, tenants=args.tenants, days=args.days, seed=args.seed, progress=bar.update
        )
        bar.finish()
        where = store.url
    print(
        f"generated {result.events} events for {result.tenants} tenants over {result.days:g} days "
        f"into {where} in {result.seconds:.1f} s ({result.rate:,.0f} events/s, seed {result.seed})",
        file=sys.stderr,
    )
    return 0
