"""A month of a real app's life, for ``connect-audit demo``: traffic and events on a timeline.

:func:`timeline` lays ``n`` host requests over the last ``days`` days the way a team's sites
use an app: working hours in each site's own time zone, quiet nights and weekends, a
scheduled trigger that fires around the clock. On top of that rhythm it places what an
administrator opens the dashboard to find (:data:`INCIDENTS`):

- sites installing on different days, one admin disabling and re-enabling the app, one site
  moving to Forge, one uninstalling (its stale iframes keep calling for a day), and the
  hostile test site reinstalling with a new shared secret;
- an app update whose new scope one site's admin has not approved yet (scope 403s until the
  approval, two days later);
- a space locked down on one site (permission 403s from that day on);
- the app's server clock running slow for a morning (every host token "not yet valid", every
  call the app signs refused by the host: its sync job's calls fail with 401s);
- a storm of expired tokens from one site's stale tabs;
- a team moving its wiki in: an hour of the app creating pages as its people, far above its
  usual rate of acting as users;
- on the last day, a script holding Acme's leaked shared secret calling its REST API outside
  the app: calls in Atlassian's record (:mod:`.audit`) that the app's log lacks.

:func:`play` runs the timeline in time order under a :class:`SimulatedClock` shared by the
simulator and the collector, so each event is dated when it happened in the story, through
the same code path as in production (the real middleware, verifier, client and recorder over
loopback HTTP). The sequence depends only on the seed and the end time.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from collector.simulator.forge import FORGE_MISBEHAVIOURS
from collector.simulator.host import (
    DEFAULT_TENANTS,
    LIFECYCLE_MISBEHAVIOURS,
    MISBEHAVIOURS,
    ConfluenceSimulator,
)
from collector.simulator.traffic import SEARCH_TERMS, Action, Runner

HOUR = 3600
DAY = 24 * HOUR

#: The sites of the story: as the simulator's defaults, but Globex's admin approved reading and
#: acting as users (not writing), so its people's edits are scope 403s, not refused exchanges.
TENANTS = tuple(
    replace(t, scopes=("ACT_AS_USER", "READ"), description="Globex: the admin approved reading only")
    if t.name == "globex" else t for t in DEFAULT_TENANTS)
#: Each site's time zone (hours from UTC) and share of the app's users.
SITES = {"acme": (-5, 45), "globex": (1, 25), "initech": (-8, 20), "umbrella": (0, 6)}
#: How busy an hour of a working day is, by local hour (a weekend day is a tenth of its mean).
WORKDAY = (0.03, 0.02, 0.02, 0.02, 0.03, 0.05, 0.12, 0.35, 0.8, 1.0, 1.0, 0.9,
           0.6, 0.85, 1.0, 0.95, 0.8, 0.55, 0.3, 0.2, 0.15, 0.1, 0.06, 0.04)
WEEKEND = 0.08
#: The people's mix in a month: mostly work, a few of every kind of refusal.
MIX = {
    "page_load": 24, "webhook": 10, "me": 6, "search": 10, "create_page": 7, "update_page": 6,
    "delete_page": 2, "space_pages": 9, "bad_token": 2, "bad_lifecycle": 0.6,
    "forge_resolver": 12, "forge_mine": 5, "forge_create": 1.5, "forge_event": 6, "forge_bad_token": 1.2,
}
SPACES = ("DEV",) * 5 + ("MKT",) * 3 + ("HR",)
#: Share of the requests that are the scheduled trigger and the expired-token storm.
SCHEDULE_SHARE, STORM_SHARE = 0.06, 0.04
#: Share of the requests that are the wiki import's page creations (at least MIN_IMPORT).
IMPORT_SHARE, MIN_IMPORT = 0.02, 12
#: Share of the requests that are the app's own sync job during the skew (at least MIN_JOBS).
JOB_SHARE, MIN_JOBS = 0.02, 12
#: A script holding Acme's leaked shared secret calls its REST API this long before the story's
#: end (inside the last day, so that ``connect-audit reconcile``'s default window holds it).
LEAK_BEFORE_END, LEAK_CALLS = 5 * HOUR, 14
#: When the app's nightly jobs run (seconds after midnight UTC).
NIGHTLY = 3 * HOUR
#: The app server's clock error during the skew incident (seconds; slow).
SKEW = -420


@dataclass(frozen=True)
class Incident:
    """Something that happens on a day of the story: ``day`` counts working days from the start
    when ``working`` (so it falls on a weekday), calendar days otherwise."""

    name: str
    site: str
    day: int  # a working day: 30 calendar days always hold at least 20
    hour: float  # local time of the site
    summary: str
    hours: float = 0.0  # how long it lasts (0: a moment)...
    until: tuple[int, float] | None = None  # ...or until this working day and local hour


#: Placed by the story's end, not by its start (see LEAK_BEFORE_END), on whatever day that is:
#: a script does not keep office hours.
LEAK = Incident("leak", "acme", 0, 0.0, "a script holding Acme's leaked shared secret reads its spaces and "
                "pages, outside the app (Atlassian's record holds its calls; the app's log does not)")

INCIDENTS = (
    Incident("install", "acme", 0, 9.2, "installs the app (Connect, and on Forge)"),
    Incident("install", "globex", 1, 10.7, "installs the app (its admin approved READ, not WRITE)"),
    Incident("install", "initech", 2, 15.1, "installs the app"),
    Incident("install", "umbrella", 3, 11.3, "the hostile test site installs the app"),
    Incident("toggle", "globex", 5, 13.0, "an admin disables the app, and re-enables it", hours=2.5),
    Incident("scope_gap", "acme", 7, 10.0,
             "an app update needs WRITE; the admin approves it two working days later", until=(9, 11.5)),
    Incident("move", "globex", 9, 9.5, "moves to the app's Forge version, whose manifest lacks "
             "write:confluence-content: its page edits become scope 403s"),
    Incident("rotate", "umbrella", 10, 16.0, "reinstalls with a new shared secret"),
    Incident("restrict", "acme", 11, 9.5, "the MKT space is locked down: the app may no longer read it"),
    Incident("uninstall", "initech", 13, 14.0, "uninstalls the app; stale tabs call for a day"),
    Incident("skew", "acme", 15, 9.5, "the app server's clock runs 7 minutes slow", hours=3),
    Incident("storm", "acme", 17, 14.0, "stale tabs send a storm of expired tokens", hours=1),
    Incident("import", "acme", 19, 11.0, "a team moves its wiki in: the app creates pages as its people "
             "all hour", hours=1),
)


class SimulatedClock:
    """Epoch seconds that the story sets; between two settings it runs at real speed, so that
    a request's own timings still read as they were. It never runs backwards."""

    def __init__(self, start: float) -> None:
        self._lock = threading.Lock()
        self._base, self._set_at = start, time.monotonic()

    def __call__(self) -> float:
        return self._base + (time.monotonic() - self._set_at)

    def set(self, at: float) -> None:
        with self._lock:
            now = self()
            self._base, self._set_at = max(at, now), time.monotonic()


class SkewedClock:
    """Another machine's view of a clock: ``clock`` plus ``skew`` seconds (the app's server)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock, self.skew = clock, 0.0

    def __call__(self) -> float:
        return self.clock() + self.skew


@dataclass(order=True)
class Step:
    """One thing at one time: a request (``action``) or a change to the world (``change``)."""

    at: float
    order: int
    action: Action | None = field(default=None, compare=False)
    change: tuple[str, str, str] | None = field(default=None, compare=False)  # (what, site, phase)


@dataclass
class Story:
    """The month to play: its steps in time order and what happened when (for the summary)."""

    start: float
    end: float
    steps: list[Step]
    happened: list[tuple[float, Incident]]

    @property
    def requests(self) -> int:
        return sum(1 for s in self.steps if s.action is not None)


def _working_day(start: float, day: int, zone: int) -> datetime:
    """Midnight (site time, as UTC-naive arithmetic) of the ``day``-th working day from ``start``."""
    local = datetime.fromtimestamp(start, UTC) + timedelta(hours=zone)
    current = local.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    left = day
    while current.weekday() >= 5 or left > 0:
        if current.weekday() < 5:
            left -= 1
        current += timedelta(days=1)
    return current


def incident_time(start: float, incident: Incident) -> float:
    return _local_time(start, incident.site, incident.day, incident.hour)


def incident_end(start: float, incident: Incident) -> float | None:
    if incident.until is not None:
        return _local_time(start, incident.site, *incident.until)
    return incident_time(start, incident) + incident.hours * HOUR if incident.hours else None


def _local_time(start: float, site: str, day: int, hour: float) -> float:
    zone = SITES[site][0]
    return (_working_day(start, day, zone) + timedelta(hours=hour - zone)).timestamp()


def timeline(n: int, seed: int, *, days: int = 30, end: float | None = None) -> Story:
    """``n`` requests and the month's changes over the ``days`` days before ``end`` (default: now)."""
    rng = random.Random(seed)  # a reproducible story, not a secret
    end = float(int(end if end is not None else time.time()) // HOUR * HOUR)
    start = end - days * DAY
    happened = sorted(((incident_time(start, i), i) for i in INCIDENTS), key=lambda pair: pair[0])
    happened = [(t, i) for t, i in happened if t < end]  # a shorter story keeps what fits
    leak = end - LEAK_BEFORE_END
    happened = sorted([*happened, (leak, LEAK)], key=lambda pair: pair[0])
    when = {(i.name, i.site): t for t, i in happened}
    steps: list[Step] = []
    for at, incident in happened:
        steps.append(Step(at, len(steps), change=(incident.name, incident.site, "start")))
        finish = incident_end(start, incident)
        if finish is not None:
            steps.append(Step(min(finish, end - 1), len(steps), change=(incident.name, incident.site, "end")))
    storm = when.get(("storm", "acme"))
    storms = max(2, int(n * STORM_SHARE)) if storm is not None else 0
    schedules = _schedules(rng, start, end, when, int(n * SCHEDULE_SHARE))
    imported = when.get(("import", "acme"))
    imports = max(MIN_IMPORT, int(n * IMPORT_SHARE)) if imported is not None else 0
    skewed = when.get(("skew", "acme"))
    jobs = max(MIN_JOBS, int(n * JOB_SHARE)) if skewed is not None else 0
    leaks = LEAK_CALLS if n >= 10 * LEAK_CALLS else 0
    people = n - storms - imports - jobs - leaks - len(schedules)
    for i in range(leaks):  # every minute or so for a quarter of an hour
        steps.append(Step(leak + i * 65 + rng.random() * 20, len(steps),
                          Action("leaked_script", "acme", None, rng.randrange(1 << 30))))
    for at in schedules:
        trigger = Action("forge_schedule", _forge_site(at, when), choice=rng.randrange(1 << 30))
        steps.append(Step(at, len(steps), trigger))
    for _ in range(storms):
        at = storm + rng.random() * HOUR
        steps.append(Step(at, len(steps), Action("bad_token", "acme", "expired", rng.randrange(1 << 30))))
    for _ in range(jobs):  # the app's own sync job, signing on the slow clock: the host refuses it
        at = skewed + rng.random() * 25 * 60  # every few minutes, in the skew's first clock hour
        steps.append(Step(at, len(steps), Action("app_job", "acme", None, rng.randrange(1 << 30))))
    for _ in range(imports):  # the app acting as the team's people far above its usual rate
        at = imported + rng.random() * HOUR
        steps.append(Step(at, len(steps), Action("create_page", "acme", None, rng.randrange(1 << 30))))
    for at, site in _user_times(rng, start, end, when, max(people, 0)):
        steps.append(Step(at, len(steps), _user_action(rng, site)))
    steps.sort()
    return Story(start, end, steps, happened)


def _installed(site: str, at: float, when: dict) -> bool:
    installed = when.get(("install", site))
    if installed is None or at < installed:
        return False
    uninstalled = when.get(("uninstall", site))
    return uninstalled is None or at < uninstalled + DAY  # stale tabs still call for a day


def _forge_site(at: float, when: dict) -> str:
    moved = when.get(("move", "globex"))
    return "globex" if moved is not None and at > moved and int(at // HOUR) % 2 else "acme"


def _schedules(rng: random.Random, start: float, end: float, when: dict, count: int) -> list[float]:
    """The scheduled trigger: every few hours around the clock, on the sites on Forge."""
    first = when.get(("install", "acme"))
    if first is None or count <= 0:
        return []
    every = max(HOUR, (end - first) / count)
    times = (first + HOUR + k * every for k in range(count))
    return [at + rng.random() * 60 for at in times if at < end]


def _weight(site: str, at: float) -> float:
    zone, share = SITES[site]
    local = datetime.fromtimestamp(at, UTC) + timedelta(hours=zone)
    busy = WORKDAY[local.hour] if local.weekday() < 5 else WEEKEND * (0.4 + WORKDAY[local.hour])
    return share * busy


def _user_times(rng: random.Random, start: float, end: float, when: dict, n: int) -> list[tuple[float, str]]:
    """``n`` (time, site) pairs drawn by each hour's weight on the sites installed then."""
    hours: list[tuple[float, str]] = []
    weights: list[float] = []
    for at in range(int(start), int(end), HOUR):
        for site in SITES:
            if _installed(site, at, when):
                stale = when.get(("uninstall", site))
                factor = 0.15 if stale is not None and at >= stale else 1.0
                hours.append((at, site))
                weights.append(_weight(site, at) * factor)
    if not hours or n <= 0:
        return []
    picks = rng.choices(hours, weights, k=n)
    return [(at + rng.random() * HOUR, site) for at, site in picks]


def _user_action(rng: random.Random, site: str) -> Action:
    kind = rng.choices(list(MIX), list(MIX.values()))[0]
    arg = None
    if kind == "bad_token":
        arg = rng.choice(sorted(set(MISBEHAVIOURS) - {"expired"}))  # expiry is the storm's story
    elif kind == "bad_lifecycle":
        arg = rng.choice(sorted(LIFECYCLE_MISBEHAVIOURS))
    elif kind == "search":
        arg = rng.choice(SEARCH_TERMS)
    elif kind in ("space_pages", "forge_resolver"):
        arg = rng.choice(SPACES)
    elif kind == "forge_bad_token":
        arg = rng.choice(sorted(FORGE_MISBEHAVIOURS))
    return Action(kind, site, arg, rng.randrange(1 << 30))


class _World:
    """Applies the story's changes to the simulator (and the app server's clock)."""

    def __init__(self, sim: ConfluenceSimulator, runner: Runner, app_clock: SkewedClock,
                 forge_from_start: str) -> None:
        self.sim, self.runner, self.app_clock = sim, runner, app_clock
        self.forge_from_start = forge_from_start

    def apply(self, what: str, site: str, phase: str) -> None:
        getattr(self, f"_{what}")(site, phase)

    def _check(self, response, what: str) -> None:
        if response.status_code >= 300:
            raise RuntimeError(f"the demo's {what} failed: HTTP {response.status_code}")

    def _install(self, site: str, phase: str) -> None:
        self._check(self.sim.install(site), f"install on {site}")
        if site == self.forge_from_start and self.sim.forge.app is not None:
            self._check(self.sim.forge.install(site), f"Forge install on {site}")

    def _toggle(self, site: str, phase: str) -> None:
        self._check((self.sim.disable if phase == "start" else self.sim.enable)(site), f"toggle on {site}")

    def _scope_gap(self, site: str, phase: str) -> None:
        # The update's reinstall carries the new descriptor; the admin has not approved WRITE yet.
        granted = ("ACT_AS_USER", "READ") if phase == "start" else None
        self._check(self.sim.install(site, granted=granted), f"update on {site}")

    def _move(self, site: str, phase: str) -> None:
        if self.sim.forge.app is not None:
            self._check(self.sim.forge.install(site), f"Forge install on {site}")
            self.runner.moved.add(site)

    def _rotate(self, site: str, phase: str) -> None:
        self.sim.rotate_secret(site)
        self._check(self.sim.install(site), f"reinstall on {site}")

    def _restrict(self, site: str, phase: str) -> None:
        tenant = self.sim.tenant(site)
        tenant.site.restrict("MKT", keep=(tenant.users()[0].account_id,))  # its admin keeps access

    def _uninstall(self, site: str, phase: str) -> None:
        self._check(self.sim.uninstall(site), f"uninstall on {site}")

    def _skew(self, site: str, phase: str) -> None:
        self.app_clock.skew = SKEW if phase == "start" else 0.0

    def _storm(self, site: str, phase: str) -> None:
        pass  # the storm is its requests (expired tokens), placed in its hour by the timeline

    def _import(self, site: str, phase: str) -> None:
        pass  # the import is its requests (pages created as people), placed by the timeline

    def _leak(self, site: str, phase: str) -> None:
        pass  # the leak is its requests (a script's calls), placed by the timeline


def play(sim: ConfluenceSimulator, story: Story, clock: SimulatedClock, app_clock: SkewedClock, *,
         forge_from_start: str = "acme", progress: Callable[[int, int], None] | None = None,
         nightly: Callable[[], object] | None = None, job: Callable[[str], object] | None = None) -> Runner:
    """Run the story in time order: set the clock to each step's time, then take the step.
    ``nightly`` runs once a day, at the first step after 03:00 UTC (the app's daily jobs);
    ``job(site)`` is the app's own sync job, a call it makes without a request from the host
    (without one, those steps are page loads)."""
    runner = Runner(sim, job=job)
    world = _World(sim, runner, app_clock, forge_from_start)
    total, done = story.requests, 0
    last_night = int((story.start - NIGHTLY) // DAY)
    for step in story.steps:
        night = int((step.at - NIGHTLY) // DAY)
        if nightly is not None and night > last_night:
            last_night = night
            clock.set(night * DAY + NIGHTLY)
            nightly()
        clock.set(step.at)
        if step.change is not None:
            world.apply(*step.change)
            continue
        runner.run(step.action)
        done += 1
        if progress is not None and (done % 25 == 0 or done == total):
            progress(done, total)
    return runner
