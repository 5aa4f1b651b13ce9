"""A realistic mix of host-to-app traffic, for ``connect-audit demo`` and the load tests.

:func:`plan` draws ``n`` actions from a seeded generator (so ``--seed`` reproduces a run's
mix); :func:`drive` sends them to the app over HTTP from a few threads, as a busy site
would. The mix covers what the audit log must show: page loads, webhooks and context-token
API calls; calls the app makes as its app user and as users; 403s from missing scopes and
from missing permissions; every way a token can be refused; hostile titles and queries; a
site that disables and re-enables the app; and a site that uninstalls it part-way, after
which its stale iframes keep calling.

Forge traffic comes from sites where the Connect-on-Forge app is installed on Forge
(:data:`FORGE_KINDS`: resolver calls as the app and as the user, scope and permission 403s,
product events, a delivery Forge retries after the remote failed, scheduled triggers, and every
way an invocation token is refused). A site that moves to Forge part-way (``move``) keeps its
Connect install, and from then on its actions arrive as Forge invocations.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests

from collector.simulator.forge import FORGE_MISBEHAVIOURS
from collector.simulator.host import LIFECYCLE_MISBEHAVIOURS, MISBEHAVIOURS, ConfluenceSimulator
from collector.simulator.site import HOSTILE_TITLES, PLAIN_TITLES, WRITE

SEARCH_TERMS = ("plan", "notes", "release", "runbook", '"; DROP TABLE pages; --', "=cmd|' /C calc'!A0",
                "<script>alert(1)</script>", "report\r\nX-Injected: 1", "@SUM(1)", "")
PLAIN_TERMS = SEARCH_TERMS[:4]
TENANT_WEIGHTS = {"acme": 45, "globex": 20, "initech": 15, "umbrella": 20}


@dataclass(frozen=True)
class Action:
    """One request the host sends (which may make the app call back several times)."""

    kind: str
    tenant: str
    arg: str | None = None
    choice: int = 0  # picks a user, page or title deterministically from the seed


#: kind -> weight in the mix
MIX = {
    "page_load": 20, "webhook": 10, "me": 8, "search": 10, "create_page": 8, "update_page": 5,
    "delete_page": 4, "space_pages": 8, "bad_token": 12, "bad_lifecycle": 3,
    "forge_resolver": 10, "forge_mine": 5, "forge_create": 3, "forge_event": 6, "forge_schedule": 2,
    "forge_bad_token": 5,
}
#: The Forge kinds, and what a Connect action becomes on a site that moved to Forge.
FORGE_KINDS = frozenset(k for k in MIX if k.startswith("forge_"))
ON_FORGE = {"page_load": "forge_resolver", "space_pages": "forge_resolver", "me": "forge_mine",
            "search": "forge_mine", "create_page": "forge_create", "update_page": "forge_create",
            "delete_page": "forge_resolver", "webhook": "forge_event", "bad_token": "forge_bad_token",
            "bad_lifecycle": "forge_bad_token"}
MACRO = "recent-pages-macro"
PAGE_EVENT = "avi:confluence:created:page"


def plan(n: int, seed: int, tenants: list[str]) -> list[Action]:
    """``n`` actions; the sequence depends only on ``seed`` and the tenant names."""
    rng = random.Random(seed)  # a reproducible mix, not a secret
    names = [t for t in TENANT_WEIGHTS if t in tenants] or list(tenants)
    weights = [TENANT_WEIGHTS.get(t, 10) for t in names]
    kinds, kind_weights = list(MIX), list(MIX.values())
    actions = []
    for _ in range(n):
        kind = rng.choices(kinds, kind_weights)[0]
        tenant = rng.choices(names, weights)[0]
        arg = None
        if kind == "bad_token":
            arg = rng.choice(sorted(MISBEHAVIOURS))
        elif kind == "bad_lifecycle":
            arg = rng.choice(sorted(LIFECYCLE_MISBEHAVIOURS))
        elif kind == "search":
            arg = rng.choice(SEARCH_TERMS)
        elif kind == "space_pages" or kind == "forge_resolver":
            arg = rng.choice(("DEV", "DEV", "MKT", "HR"))
        elif kind == "forge_bad_token":
            arg = rng.choice(sorted(FORGE_MISBEHAVIOURS))
        actions.append(Action(kind, tenant, arg, rng.randrange(1 << 30)))
    return actions


class Runner:
    def __init__(self, sim: ConfluenceSimulator, *, job: Callable[[str], object] | None = None) -> None:
        self.sim = sim
        self.job = job  # job(site): a call the app makes by itself (the demo's sync job)
        self.statuses: Counter[int] = Counter()
        self.failures = 0
        self.moved: set[str] = set()  # sites whose traffic now arrives through Forge
        self._lock = threading.Lock()

    def _kind(self, action: Action) -> str:
        if action.kind == "app_job" and self.job is None:
            return "page_load"
        on_forge = self.sim.tenant(action.tenant).forge_status == "installed" and self.sim.forge.app
        if action.kind in FORGE_KINDS and not on_forge:
            return "page_load"  # the site has no Forge installation (yet): Connect traffic
        if action.tenant in self.moved and action.kind in ON_FORGE:
            return ON_FORGE[action.kind]
        return action.kind

    def run(self, action: Action) -> None:
        try:
            kind = self._kind(action)
            if kind == "forge_bad_token" and action.kind != kind:
                action = Action(kind, action.tenant, sorted(FORGE_MISBEHAVIOURS)[action.choice % len(
                    FORGE_MISBEHAVIOURS)], action.choice)
            response = getattr(self, f"_{kind}")(action)
        except requests.RequestException:
            with self._lock:
                self.failures += 1
            return
        with self._lock:
            self.statuses[response.status_code] += 1

    def _user(self, action: Action) -> str:
        users = self.sim.tenant(action.tenant).users()
        return users[action.choice % len(users)].account_id

    def _author(self, action: Action, space: str = "DEV") -> str:
        """Who writes: on a real team's site, someone the space lets write (a reader has no edit
        button); on a test site, anyone, so that every refusal is reachable."""
        if not self._plain(action.tenant):
            return self._user(action)
        site = self.sim.tenant(action.tenant).site
        writers = [u for u in site.human_users() if u.can(site.spaces[space], WRITE)] or site.human_users()
        return writers[action.choice % len(writers)].account_id

    def _page_id(self, action: Action) -> str:
        site = self.sim.tenant(action.tenant).site
        pages = list(site.pages)
        if self._plain(action.tenant):  # the team edits its open spaces, not the restricted one
            pages = [p for p, page in site.pages.items() if page.space_key != "HR"] or pages
        return pages[action.choice % len(pages)]

    def _plain(self, name: str) -> bool:
        """A site whose content is a real team's (the demo's), not hostile test data."""
        return self.sim.plain_sites and not self.sim.tenant(name).spec.hostile

    def _page_load(self, a: Action):
        if self._plain(a.tenant):  # a team's macros show pages of its open spaces
            space = ("DEV", "DEV", "MKT")[a.choice % 3]
            return self.sim.page_load(a.tenant, user=self._user(a), space=space)
        return self.sim.page_load(a.tenant, user=self._user(a))

    def _webhook(self, a: Action):
        return self.sim.webhook(a.tenant, "page_created")

    def _me(self, a: Action):
        return self.sim.context_call(a.tenant, "GET", "/api/me", user=self._user(a))

    def _search(self, a: Action):
        term = a.arg or ""
        if self._plain(a.tenant) and term not in PLAIN_TERMS:
            term = PLAIN_TERMS[a.choice % len(PLAIN_TERMS)]
        params = {"q": term}
        return self.sim.context_call(a.tenant, "GET", "/api/search", user=self._user(a), params=params)

    def _create_page(self, a: Action):
        titles = PLAIN_TITLES if self._plain(a.tenant) else HOSTILE_TITLES
        title = titles[a.choice % len(titles)] + f" #{a.choice % 10_000}"
        space = ("DEV", "DEV", "MKT", "HR")[a.choice % 4]
        if self._plain(a.tenant):
            space = ("DEV", "DEV", "MKT")[a.choice % 3]
        return self.sim.context_call(a.tenant, "POST", "/api/pages", user=self._author(a, space),
                                     json_body={"title": title, "space": space, "body": f"<p>{title}</p>"})

    def _update_page(self, a: Action):
        page_id = self._page_id(a)
        page = self.sim.tenant(a.tenant).site.pages.get(page_id)
        version = (page.version if page else 1) + (1 if a.choice % 5 else 3)  # now and then a stale edit
        space = page.space_key if page else "DEV"
        return self.sim.context_call(a.tenant, "PUT", f"/api/pages/{page_id}", user=self._author(a, space),
                                     json_body={"title": f"Edited {a.choice % 1000}", "version": version})

    def _delete_page(self, a: Action):
        return self.sim.context_call(a.tenant, "DELETE", f"/api/pages/{self._page_id(a)}", user=self._user(a))

    def _space_pages(self, a: Action):
        return self.sim.context_call(a.tenant, "GET", f"/api/spaces/{a.arg}/pages", user=self._user(a))

    def _bad_token(self, a: Action):
        if a.arg == "replay":
            return self.sim.webhook(a.tenant, "page_created", misbehave="replay")
        return self.sim.page_load(a.tenant, user=self._user(a), misbehave=a.arg)

    # -- Forge ---------------------------------------------------------------------

    def _forge_resolver(self, a: Action):
        space = a.arg or ("DEV", "DEV", "MKT", "HR")[a.choice % 4]
        return self.sim.forge.resolver(a.tenant, MACRO, {"space": space}, user=self._user(a))

    def _forge_mine(self, a: Action):
        return self.sim.forge.resolver(a.tenant, MACRO, {"call": "mine"}, user=self._user(a))

    def _forge_create(self, a: Action):
        return self.sim.forge.resolver(a.tenant, MACRO, {"call": "create"}, user=self._user(a))

    def _forge_event(self, a: Action):
        page_id = self._page_id(a)
        if a.choice % 4 == 0:
            self.sim.forge.flaky_pages.add(page_id)  # the app fails once; Forge retries the delivery
        body = {"eventType": PAGE_EVENT, "atlassianId": self._user(a),
                "content": {"id": page_id, "type": "page"}, "eventId": f"evt-{a.choice}"}
        return self.sim.forge.deliver(a.tenant, PAGE_EVENT, body)

    def _app_job(self, a: Action):
        return self.job(a.tenant)

    def _leaked_script(self, a: Action):
        """Not the app: a script signing with the site's leaked shared secret, calling the site's
        REST API directly. The host serves it as the app's; the app's collector never sees it."""
        if a.choice % 3 == 0:
            return self.sim.script_call(a.tenant, "GET", f"/rest/api/content/{self._page_id(a)}")
        return self.sim.script_call(a.tenant, "GET", "/rest/api/space", params={"limit": "50"})

    def _forge_schedule(self, a: Action):
        return self.sim.forge.schedule(a.tenant, "hourly-digest")

    def _forge_bad_token(self, a: Action):
        return self.sim.forge.resolver(a.tenant, MACRO, user=self._user(a), misbehave=a.arg)

    def _bad_lifecycle(self, a: Action):
        tenant = self.sim.tenant(a.tenant)
        misbehave = a.arg
        if misbehave == "replay" and not tenant.active:
            # A replay's first delivery is genuine and would re-enable a disabled or
            # uninstalled site; Atlassian never sends that, so spoil this one differently.
            misbehave = "expired"
        return self.sim.enable(a.tenant, misbehave=misbehave)


def drive(sim: ConfluenceSimulator, actions: list[Action], *, workers: int = 4,
          progress: Callable[[int, int], None] | None = None,
          uninstall: str | None = "initech", toggle: str | None = "globex",
          move: str | None = "globex") -> Counter[int]:
    """Send ``actions`` to the app from ``workers`` threads; returns the app's status counts.

    Part-way through, ``toggle`` is disabled and re-enabled (calls in between are refused as
    an inactive install), ``uninstall`` uninstalls the app for good, and (when the simulator
    has a Forge app deployed) ``move`` installs the Forge app and sends its traffic through
    Forge from then on.
    """
    runner = Runner(sim)
    total = len(actions)
    milestones = {int(total * 0.4): ("disable", toggle), int(total * 0.5): ("enable", toggle),
                  int(total * 0.75): ("uninstall", uninstall)}
    if move and sim.forge.app is not None and move in sim.tenants:
        milestones[int(total * 0.6)] = ("move", move)
    done = 0
    chunk = max(1, min(50, total // 20 or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="demo-host") as pool:
        for start in range(0, total, chunk):
            for index in range(start, min(start + chunk, total)):
                action, name = milestones.get(index, (None, None))
                if action == "move":
                    sim.forge.install(name)
                    runner.moved.add(name)
                elif action and name in sim.tenants and sim.tenant(name).status != "uninstalled":
                    getattr(sim, action)(name)
            list(pool.map(runner.run, actions[start : start + chunk]))
            done = min(start + chunk, total)
            if progress is not None:
                progress(done, total)
    if runner.failures:
        runner.statuses[0] += runner.failures  # 0: no HTTP answer at all
    return runner.statuses
