"""``connect-audit demo``: run the example app against the simulated Confluence, for real.

Starts the Confluence host simulator and the Flask example app on ephemeral loopback ports
(so several demos run at once, against different stores or the same one), lets the host
install the app on its sites with signed lifecycle callbacks, then drives a realistic mix
of requests over HTTP (page loads, webhooks, context-token calls; the app calling
Confluence as its app user and as users; scope and permission 403s; every way a token is
refused; hostile data; a site that uninstalls). The app is also a Connect-on-Forge app: one
site runs it on Forge from the start, one moves from Connect to Forge part-way, and their
Forge invocations (resolvers, product events and retried deliveries, scheduled triggers,
refused invocation tokens) and asApp/asUser calls are recorded in the same log. Every event
is recorded by the collector exactly as in production, into ``--database``. Progress goes to
stderr, a summary to stdout.

``--if-empty`` makes it a no-op on a store that already has events: ``make run`` seeds the
embedded default this way before starting the dashboard.
"""

from __future__ import annotations

import argparse
import sys

from collector.commands import add_database_option

DEFAULT_EVENTS = 600
#: The site that runs the app on Forge from the start; traffic's ``move`` site switches mid-demo.
FORGE_FROM_START = "acme"


def _count(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 1 and 1000000")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the example app against a simulated Confluence and record the traffic",
        description=(
            "Start a simulated Confluence Cloud and the Flask example app on loopback, install the "
            "app (Connect, and on Forge for some sites, one of which moves mid-demo), drive N "
            "realistic requests over HTTP (including 403s, refused tokens and hostile data) and "
            "record every call in the audit store."
        ),
    )
    add_database_option(parser)
    parser.add_argument("--events", metavar="N", type=_count, default=DEFAULT_EVENTS,
                        help=f"how many requests the host sends the app (default {DEFAULT_EVENTS}); "
                             "the app's own calls to Confluence come on top")
    parser.add_argument("--if-empty", action="store_true",
                        help="do nothing if the store already holds events")
    parser.add_argument("--seed", metavar="S", type=int, default=None,
                        help="random seed of the traffic mix (default: a new one each run)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import random
    import time
    import uuid

    from collector import config
    from collector.commands._support import ProgressBar, database_errors

    url = config.database_url(args.database)
    if args.if_empty:
        existing = _existing_events(url)
        if existing:
            print(f"connect-audit demo: the store already has {existing:,} events; nothing to do",
                  file=sys.stderr)
            return 0

    from collector.simulator import ConfluenceSimulator, ServerThread
    from collector.simulator.examples import load_example
    from collector.simulator.traffic import drive, plan

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    flask_example = load_example("flask")
    instance_id = f"demo-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    with ConfluenceSimulator(seed=seed) as sim, database_errors("the demo"):
        server = ServerThread()
        app = flask_example.create_app(
            base_url=server.url, database=url, install_keys=sim.install_keys_url,
            authorization_server=sim.authorization_server, instance_id=instance_id, durability="normal",
            forge_jwks=sim.forge.jwks_url,
        )
        audit = app.extensions["connect_audit"]
        try:
            with server.mount(app):
                print(f"connect-audit demo: Confluence simulator at {sim.url}, example app at {server.url}, "
                      f"store {audit.store.url}", file=sys.stderr)
                sim.connect(server.url)
                for name in sim.tenants:
                    response = sim.install(name)
                    if response.status_code != 204:
                        raise RuntimeError(f"installing on {name} failed with HTTP {response.status_code}")
                sim.forge.deploy(flask_example.FORGE_MANIFEST, server.url)
                response = sim.forge.install(FORGE_FROM_START)  # Connect-on-Forge from the start
                if response.status_code != 200:
                    raise RuntimeError(f"the Forge install on {FORGE_FROM_START} failed: "
                                       f"HTTP {response.status_code}")
                bar = ProgressBar("connect-audit demo", args.events, unit="requests")
                drive(sim, plan(args.events, seed, list(sim.tenants)), progress=bar.update)
                bar.finish()
            audit.flush()
            summary = _summary(audit.store, instance_id)
        finally:
            audit.close()
    _print_summary(summary, args.events, time.monotonic() - started, audit.store.url, seed)
    return 0


def _existing_events(url: str) -> int:
    import sqlalchemy as sa

    from collector.store import Store

    with Store.open(url) as store, store.engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar_one()


def _summary(store, instance_id: str) -> dict:
    import sqlalchemy as sa

    from collector.models import AuditEvent

    mine = AuditEvent.instance_id == instance_id
    count = sa.func.count()

    def by(column, *where):
        query = sa.select(column, count).where(mine, *where).group_by(column)
        return conn.execute(query.order_by(count.desc(), column)).all()

    with store.engine.connect() as conn:
        return {
            "outcomes": dict(by(AuditEvent.outcome)),
            "directions": dict(by(AuditEvent.direction)),
            "platforms": dict(by(AuditEvent.platform)),
            "forge_retries": conn.execute(sa.select(count).where(
                mine, AuditEvent.platform == "forge", AuditEvent.event_type == "retry")).scalar_one(),
            "tenants": sorted(by(AuditEvent.tenant_base_url, AuditEvent.tenant_base_url.is_not(None))),
            "reasons": by(AuditEvent.reason, AuditEvent.reason.is_not(None)),
        }


def _print_summary(summary: dict, requests: int, seconds: float, store_url: str, seed: int) -> None:
    total = sum(summary["outcomes"].values())
    out = sys.stdout
    out.write(f"Recorded {total:,} events from {requests:,} requests in {seconds:.1f} s "
              f"into {store_url} (seed {seed}).\n\n")
    out.write("By outcome:\n")
    for outcome in ("allowed", "denied", "rejected", "error"):
        out.write(f"  {outcome:<10} {summary['outcomes'].get(outcome, 0):>7,}\n")
    out.write("By direction:\n")
    for direction in ("incoming", "outgoing", "lifecycle"):
        out.write(f"  {direction:<10} {summary['directions'].get(direction, 0):>7,}\n")
    out.write("By platform:\n")
    for platform in ("connect", "forge"):
        out.write(f"  {platform:<10} {summary['platforms'].get(platform, 0):>7,}\n")
    out.write(f"  (Forge deliveries retried: {summary['forge_retries']:,}, recorded as retries, "
              "not as new actions)\n")
    out.write("Refusals and 403s by reason:\n")
    for reason, count in summary["reasons"]:
        out.write(f"  {reason:<24} {count:>7,}\n")
    out.write("Tenants:\n")
    for base_url, count in summary["tenants"]:
        out.write(f"  {base_url:<48} {count:>7,}\n")
    out.write("\nBrowse them with: make run   (or: .venv/bin/python -m dashboard.serve)\n")
