"""Which Connect scope a Confluence REST call needs, and whether an app's scopes suffice.

A 403 from the product has two different causes with two different fixes: the app's
descriptor does not declare a scope that covers the call (``scope``: the developer adds
the scope, the admin re-approves), or it does and the acting user (the app user, or the
impersonated user) lacks the permission on that content (``permission``: an admin grants
it). :func:`classify_forbidden` tells them apart from the call's required scope.

The required scopes come from the packaged ``data/confluence-connect-scopes.json``: 396
operations of Confluence Cloud's v1 and v2 REST APIs with the ``x-atlassian-connect-scope``
Atlassian publishes in its OpenAPI specs, and the provenance of every value
(:attr:`ScopeMap.provenance`). The hierarchy: ``READ < WRITE < DELETE < SPACE_ADMIN <
ADMIN``, each implying the lower ones; ``ACT_AS_USER`` and ``ACCESS_EMAIL_ADDRESSES`` are
independent; ``NONE`` is always satisfied and ``INACCESSIBLE`` never.

The same operations' OAuth 2.0 scopes, the ones a Forge app declares in its manifest
(``permissions.scopes``), come from ``data/confluence-oauth-scopes.json``, copied from the
same specs: :meth:`ScopeMap.oauth_scopes` gives an operation's classic and granular
scopes, and :func:`missing_oauth_scopes` what an app would have to add. Either family
suffices: an app may use classic or granular scopes.

Pure: the data files ship inside the package and each is read once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from collector.qsh import split_target

DATA_FILE = "confluence-connect-scopes.json"
OAUTH_DATA_FILE = "confluence-oauth-scopes.json"

ORDERED = ("NONE", "READ", "WRITE", "DELETE", "SPACE_ADMIN", "ADMIN")
INDEPENDENT = frozenset({"ACT_AS_USER", "ACCESS_EMAIL_ADDRESSES"})
NEVER_GRANTED = "INACCESSIBLE"
_RANK = {name: rank for rank, name in enumerate(ORDERED)}


def normalise_scopes(scopes: str | Iterable[str] | None) -> frozenset[str]:
    """Scope names upper-cased; a string may separate them by spaces or commas.

    Descriptors may declare scopes in either case (``read``, ``act_as_user``).
    """
    if scopes is None:
        return frozenset()
    items = [scopes] if isinstance(scopes, str) else list(scopes)
    names: set[str] = set()
    for item in items:
        names.update(part.upper() for part in item.replace(",", " ").split())
    return frozenset(names)


def satisfies(declared: str | Iterable[str] | None, required: str) -> bool:
    """Whether the declared scopes cover ``required`` (by the Connect scope hierarchy)."""
    wanted = required.strip().upper()
    if wanted == "NONE":
        return True
    if wanted == NEVER_GRANTED:
        return False
    names = normalise_scopes(declared)
    if wanted in _RANK:
        rank = _RANK[wanted]
        return any(_RANK.get(name, -1) >= rank for name in names)
    return wanted in names


@dataclass(frozen=True)
class RequiredScope:
    """The scope one REST operation requires, and where that fact comes from."""

    scope: str
    api: str
    method: str
    template: str
    operation_id: str
    in_latest_spec: bool = True


def classify_forbidden(
    declared: str | Iterable[str] | None, required: RequiredScope | None
) -> Literal["scope", "permission"]:
    """Why a 403 happened: ``scope`` if the declared scopes do not cover the call, else
    ``permission`` (the scopes suffice, so the acting user lacks the right).

    An operation missing from the map is reported as ``permission``: without a known
    requirement, blaming the descriptor would send the developer the wrong way.
    """
    if required is None:
        return "permission"
    return "permission" if satisfies(declared, required.scope) else "scope"


@dataclass(frozen=True)
class OAuthScopes:
    """An operation's OAuth 2.0 scopes, one list per family; each list is needed in full.

    An empty family means the operation has no scopes of that kind (the v2 API, for one,
    has only granular scopes), not that nothing is needed.
    """

    classic: tuple[str, ...]
    granular: tuple[str, ...]


def _granted_names(granted: str | Iterable[str]) -> frozenset[str]:
    # A string is split on whitespace: that is how an OAuth token's ``scope`` field lists
    # them. Names are kept as they are, since OAuth scope names are case-sensitive.
    items = granted.split() if isinstance(granted, str) else granted
    return frozenset(name.strip() for name in items)


def missing_oauth_scopes(granted: str | Iterable[str], needed: OAuthScopes) -> OAuthScopes | None:
    """The scopes an app would have to add for an operation, or None if it has enough.

    The granted scopes suffice when they hold every classic scope or every granular scope
    of the operation. Otherwise each family of the result lists what that family lacks;
    adding either list is enough, and an empty family offers no way in. An operation for
    which the specs name no scopes is reported as None: without a known requirement,
    blaming the manifest would send the developer the wrong way. Implied scopes (one scope
    granting another) are not modelled, so only the names the spec lists count.
    """
    if not needed.classic and not needed.granular:
        return None
    names = _granted_names(granted)
    for family in (needed.classic, needed.granular):
        if family and names.issuperset(family):
            return None
    return OAuthScopes(
        classic=tuple(s for s in needed.classic if s not in names),
        granular=tuple(s for s in needed.granular if s not in names),
    )


@dataclass(frozen=True)
class _Template:
    segments: tuple[str | None, ...]  # None stands for a {parameter}
    specificity: tuple[int, ...]  # 1 for a literal segment, so max() prefers literals leftmost
    required: RequiredScope


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


class ScopeMap:
    """Matches a concrete method and path to the templated operation and its scope."""

    def __init__(self, data: dict[str, Any], sha256: str | None = None) -> None:
        self._data = data
        self._sha256 = sha256
        self._index: dict[tuple[str, int], list[_Template]] = {}
        for op in data["operations"]:
            required = RequiredScope(
                scope=op["scope"],
                api=op["api"],
                method=op["method"].upper(),
                template=op["path"],
                operation_id=op["operation_id"],
                in_latest_spec=bool(op.get("in_latest_spec", True)),
            )
            segs = tuple(
                None if s.startswith("{") and s.endswith("}") else s for s in _segments(op["path"])
            )
            template = _Template(segs, tuple(0 if s is None else 1 for s in segs), required)
            self._index.setdefault((required.method, len(segs)), []).append(template)

    @classmethod
    def default(cls) -> ScopeMap:
        """The map shipped in the package (loaded once per process)."""
        return _default_map()

    @property
    def operations(self) -> int:
        return len(self._data["operations"])

    @property
    def provenance(self) -> dict[str, Any]:
        """Where the scope facts come from: description, sources, hierarchy, file hash."""
        return {
            "about": self._data.get("about"),
            "sources": self._data.get("sources"),
            "scope_hierarchy": self._data.get("scope_hierarchy"),
            "file": DATA_FILE,
            "sha256": self._sha256,
        }

    def lookup(self, method: str, path: str) -> RequiredScope | None:
        """The operation a call hits, or None if the map has no such operation.

        ``path`` is site-relative (``/wiki/rest/api/content/123``), or a full URL; the
        query is ignored. When several templates match, literal segments beat parameters
        (``.../content/{id}/child/attachment`` over ``.../content/{id}/child/{type}``). A
        path given without Confluence's ``/wiki`` context is tried with it.
        """
        raw_path, _ = split_target(path)
        segs = _segments(raw_path)
        found = self._match(method.upper(), segs)
        if found is None and (not segs or segs[0] != "wiki"):
            found = self._match(method.upper(), ["wiki", *segs])
        return found

    def oauth_scopes(self, method: str, path: str) -> OAuthScopes | None:
        """The OAuth 2.0 scopes of the operation a call hits, or None if it is unknown.

        The call is matched as :meth:`lookup` matches it. Both families are empty for an
        operation the specs give no OAuth scopes for (the Connect dynamic-modules API).
        """
        found = self.lookup(method, path)
        if found is None:
            return None
        return _oauth_index().get((found.api, found.method, found.template))

    def _match(self, method: str, segs: list[str]) -> RequiredScope | None:
        best: _Template | None = None
        for template in self._index.get((method, len(segs)), ()):
            if best is not None and template.specificity <= best.specificity:
                continue
            if all(t is None or t == s for t, s in zip(template.segments, segs, strict=True)):
                best = template
        return best.required if best else None


@cache
def _default_map() -> ScopeMap:
    # Beside this module, not importlib.resources: collector is an implicit namespace
    # package in development checkouts, which resources.files() cannot read from.
    raw = (Path(__file__).parent / "data" / DATA_FILE).read_bytes()
    return ScopeMap(json.loads(raw), hashlib.sha256(raw).hexdigest())


@cache
def _oauth_index() -> dict[tuple[str, str, str], OAuthScopes]:
    # Read on first use only: most callers need the Connect scopes alone. Keyed like the
    # Connect map's operations, so a template found by lookup() finds its entry here.
    data = json.loads((Path(__file__).parent / "data" / OAUTH_DATA_FILE).read_bytes())
    return {
        (op["api"], op["method"].upper(), op["path"]): OAuthScopes(
            tuple(op["classic"]), tuple(op["granular"])
        )
        for op in data["operations"]
    }
