"""``connect-audit demo``: a month of an app's life against the simulated Confluence, for real.

Starts the Confluence host simulator and the Flask example app on ephemeral loopback ports
(so several demos run at once, against different stores or the same one), and plays the last
``--days`` days (default 30) under a simulated clock shared by the simulator and the
collector (:mod:`collector.simulator.month`): sites install on different days and use the app
in their working hours, with quiet nights and weekends; the app calls Confluence as its app
user and as users; and the month has its incidents (a scope missing after an update, a
space locked down, the app server's clock running slow, a storm of expired tokens) and its
lifecycle changes (a disable and re-enable, a move to Forge, a reinstall with a new secret,
an uninstall). Sites have their Atlassian names (``acme.atlassian.net``), delivered to the
loopback simulator by the app's HTTP transport; hostile content lives on one site named as
such (``hostile-test-data.atlassian.net``). Every event is recorded by the collector exactly
as in production, into ``--database``. Progress goes to stderr, a summary to stdout.

``--if-empty`` makes it a no-op on a store that already has events: ``make run`` seeds the
embedded default this way before starting the dashboard.
"""

from __future__ import annotations

import argparse
import sys

from collector.commands import add_database_option

DEFAULT_EVENTS = 3000
DEFAULT_DAYS = 30
#: The site that runs the app on Forge from its install; the month's ``move`` site follows.
FORGE_FROM_START = "acme"


def _count(text: str, low: int = 1, high: int = 1_000_000, what: str = "") -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text!r} must be between {low} and {high}{what}")
    return value


def _days(text: str) -> int:
    return _count(text, 1, 365, " days")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="play a month of the example app against a simulated Confluence and record it",
        description=(
            "Start a simulated Confluence Cloud and the Flask example app on loopback and play the "
            "last DAYS days under a simulated clock: sites install on different days and work in "
            "their office hours; the month has its incidents (a missing scope after an update, a "
            "locked space, a slow server clock, an expired-token storm) and lifecycle changes "
            "(a disable, a move to Forge, a reinstall with a new secret, an uninstall). Every "
            "call is recorded in the audit store by the real collector."
        ),
    )
    add_database_option(parser)
    parser.add_argument("--events", metavar="N", type=_count, default=DEFAULT_EVENTS,
                        help=f"how many requests the host sends the app (default {DEFAULT_EVENTS}); "
                             "the app's own calls to Confluence and the lifecycle callbacks come on top")
    parser.add_argument("--days", metavar="DAYS", type=_days, default=DEFAULT_DAYS,
                        help=f"how many days of history, ending now (default {DEFAULT_DAYS}); "
                             "a shorter story keeps the incidents that fit")
    parser.add_argument("--if-empty", action="store_true",
                        help="do nothing if the store already holds events")
    parser.add_argument("--seed", metavar="S", type=int, default=None,
                        help="random seed of the month (default: a new one each run)")
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

    from collector.people import Directory
    from collector.simulator import ConfluenceSimulator, ServerThread
    from collector.simulator.examples import load_example
    from collector.simulator.month import TENANTS, SimulatedClock, SkewedClock, play, timeline

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    story = timeline(args.events, seed, days=args.days)
    clock = SimulatedClock(story.start)
    app_clock = SkewedClock(clock)  # the app's server: its clock runs slow for one morning
    flask_example = load_example("flask")
    instance_id = f"demo-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    with ConfluenceSimulator(tenants=TENANTS, seed=seed, clock=clock, public_hosts=True,
                             plain_sites=True) as sim, \
            database_errors("the demo"):
        server = ServerThread()
        app = flask_example.create_app(
            base_url=server.url, database=url, install_keys=sim.install_keys_url,
            authorization_server=sim.authorization_server, instance_id=instance_id, durability="normal",
            forge_jwks=sim.forge.jwks_url, clock=app_clock, http_adapter=sim.transport(),
        )
        audit = app.extensions["connect_audit"]
        try:
            with server.mount(app):
                print(f"connect-audit demo: Confluence simulator at {sim.url}, example app at {server.url}, "
                      f"store {audit.store.url}", file=sys.stderr)
                sim.connect(server.url)
                sim.forge.deploy(flask_example.FORGE_MANIFEST, server.url)
                bar = ProgressBar("connect-audit demo", story.requests, unit="requests")
                # Each night the app learns the names of the people it acted as (collector.people);
                # the simulator sets no rate limit, so the lookups need no pacing here.
                people = Directory(audit, min_interval=0.0)
                play(sim, story, clock, app_clock, forge_from_start=FORGE_FROM_START, progress=bar.update,
                     nightly=people.refresh, job=lambda site: _sync_job(audit, sim, site))
                bar.finish()
                audit.flush()
                record = _import_record(audit.store, sim, story, clock, instance_id)
            summary = _summary(audit.store, instance_id)
            summary["record"] = record
        finally:
            audit.close()
    _print_summary(summary, story, sim, time.monotonic() - started, audit.store.url, seed)
    return 0


def _sync_job(audit, sim, site: str):
    """The app's own sync job: a call as the app user that no host request asked for, signed on
    the app server's clock (so, during the skew, refused by the host with a 401)."""
    return audit.client(sim.tenant(site).client_key).as_app().get("/rest/api/space")


def _import_record(store, sim, story, clock, instance_id: str) -> dict:
    """Atlassian's record of the month, read as a user reads it (``connect-audit import``): the
    organization's audit log and each site's Confluence audit log, through the same importers,
    then reconciled with the app's log over the story's last day. The sources are named after
    this demo's instance, so two demos into one store each read their own simulator."""
    import time
    from datetime import UTC, datetime

    from collector import imports
    from collector.reconcile import reconcile

    now = lambda: datetime.fromtimestamp(clock(), UTC)  # noqa: E731 (the story's clock)
    start = datetime.fromtimestamp(story.start, UTC)
    sim.record.rate_limit = None  # the demo reads its whole month at once
    names = [f"{instance_id}-org", *(f"{instance_id}-{name}-audit" for name in sim.tenants)]
    imports.add_source(store, names[0], imports.ORG_EVENTS, sim.record.org_id, sim.record.org_key,
                       since=start, now=now())
    email, token = sim.record.admin_credentials()
    for source, tenant in zip(names[1:], sim.tenants.values(), strict=True):
        imports.add_source(store, source, imports.CONFLUENCE_AUDIT, tenant.site_url, token,
                           username=email, since=start, now=now())
    time.sleep(0.5)  # Atlassian's record serves an event once it is processed (0.4 s here)
    runs = [imports.Importer(store, name, adapter=sim.transport(), clock=now, min_interval=0.0,
                             instance_id=instance_id).run() for name in names]
    for run in runs:
        if run.error:
            raise RuntimeError(f"the demo's import of {run.source} failed: {run.error}")
    result = reconcile(store, until=now())
    return {"imported": sum(r.imported for r in runs), "sources": len(runs), "matched": result.matched,
            "atlassian_only": result.atlassian_only, "app_only": result.app_only}


def _existing_events(url: str) -> int:
    import sqlalchemy as sa

    from collector.store import Store

    with Store.open(url) as store, store.engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar_one()


def _summary(store, instance_id: str) -> dict:
    import sqlalchemy as sa

    from collector import events
    from collector.models import AuditEvent

    # The demo's own events: the imported records it stamped with its instance are Atlassian's
    # record, summed under "record", not what the app recorded.
    mine = sa.and_(AuditEvent.instance_id == instance_id, AuditEvent.direction != events.IMPORTED)
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
            "tenants": dict(by(AuditEvent.tenant_base_url, AuditEvent.tenant_base_url.is_not(None))),
            "reasons": by(AuditEvent.reason, AuditEvent.reason.is_not(None)),
        }


#: Where each of the month's incidents shows in the dashboard.
WHERE = {
    "install": "Installs", "toggle": "Installs, and Activity: inactive_install refusals",
    "scope_gap": "Denials: scope 403s until the approval", "move": "Activity: platform forge",
    "rotate": "Installs: a reinstall that changed the secret",
    "restrict": "Denials: permission 403s in MKT", "uninstall": "Installs, and inactive_install refusals",
    "skew": "Activity: not_yet_valid refusals and host 401s", "storm": "Activity: expired refusals",
    "import": "Overview: calls as users above their usual rate; Who acted",
    "leak": "Overview: calls the app never made; Atlassian record; connect-audit reconcile",
}


def _print_summary(summary: dict, story, sim, seconds: float, store_url: str, seed: int) -> None:
    from datetime import UTC, datetime

    def day(at: float) -> str:
        return datetime.fromtimestamp(at, UTC).strftime("%a %d %b %H:%M UTC")

    def site(name: str) -> str:
        return sim.tenant(name).site_url.split("://", 1)[-1]

    total = sum(summary["outcomes"].values())
    out = sys.stdout
    out.write(f"Recorded {total:,} events from {story.requests:,} requests in {seconds:.1f} s "
              f"into {store_url} (seed {seed}).\n")
    out.write(f"History: {day(story.start)} to {day(story.end)}.\n\n")
    out.write("What to look at first (the month's incidents; every time is in the events):\n")
    for at, incident in story.happened:
        if incident.name == "install":
            continue
        out.write(f"  {day(at)}  {site(incident.site):<34} {incident.summary}\n")
        out.write(f"  {'':<20}  {'':<34} -> {WHERE[incident.name]}\n")
    out.write("\nBy outcome:\n")
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
    out.write("Sites:\n")
    installed = {i.site: at for at, i in story.happened if i.name == "install"}
    for name, at in installed.items():
        count = summary["tenants"].get(sim.tenant(name).base_url, 0)
        out.write(f"  {site(name):<34} {count:>7,} events, installed {day(at)}\n")
    record = summary["record"]
    out.write(f"Atlassian's record: {record['imported']:,} records imported from {record['sources']} sources "
              "(the organization's audit log, each site's Confluence audit log).\n")
    out.write(f"  Its last day reconciled with the app's log: {record['matched']:,} calls matched, "
              f"{record['atlassian_only']:,} atlassian_only, {record['app_only']:,} app_only "
              "(see: connect-audit reconcile).\n")
    out.write("\nBrowse them with: make run   (or: .venv/bin/python -m dashboard.serve)\n")
