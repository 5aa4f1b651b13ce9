"""Which authentication each of an app's routes demands.

A Connect app has four kinds of route, and the kind decides how an incoming request is
checked (see :mod:`collector.middleware`):

``request``
    The host signed this exact request: an HS256 JWT whose ``qsh`` must equal the hash of
    the method, path and query actually received (page loads with ``?jwt=``, webhooks).
``context``
    Also accepts a *context token* (``qsh`` = ``context-qsh``), the token ``AP.context.getToken()``
    hands the app's own front end for calls back to the app's API.
``lifecycle``
    A signed lifecycle callback (``installed``, ``enabled``, ...): RS256 with a ``kid`` whose
    public key comes from the install-key source; the JSON body is checked against the token.
``public``
    No authentication (the descriptor itself, health checks, static files). Still recorded,
    with auth method ``none``.
``forge:resolver``, ``forge:event``, ``forge:trigger``, ``forge:lifecycle``
    A Forge Remote endpoint: a Forge Invocation Token as ``Authorization: Bearer`` (RS256,
    Forge's JWKS, see :mod:`collector.forge`), from a UI module's resolver, a product event,
    a scheduled trigger or Forge's ``installed``/``upgraded`` lifecycle events. A
    :class:`Route` built with ``forge=ForgeExpectation(...)`` may also pin the module key, the
    environment and whether ``principal`` is required.

Patterns are paths relative to the app's baseUrl. ``{name}`` matches one path segment and
``{name:path}`` the rest of the path; a pattern may start with a method (``"POST /hooks"``).
The first matching rule wins, in the order given; an unmatched path gets the policy's
default, ``request``, so that a route nobody declared is never left open by accident.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from collector.forge import INVOCATIONS, ForgeExpectation

REQUEST = "request"
CONTEXT = "context"
LIFECYCLE = "lifecycle"
PUBLIC = "public"
FORGE = "forge"
KINDS = (REQUEST, CONTEXT, LIFECYCLE, PUBLIC, FORGE)
#: The spellings of Forge kinds in a mapping: ``{"POST /forge/events": "forge:event"}``.
FORGE_KINDS = tuple(f"{FORGE}:{name}" for name in INVOCATIONS)

#: Methods that do not change state; a token on any other method is single-use (replay guard).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(path))?\}")
_METHOD = re.compile(r"^[A-Z]+$")


def is_state_changing(method: str) -> bool:
    """True when a request with ``method`` may change state, so its token must not be reused."""
    return method.upper() not in SAFE_METHODS


@dataclass(frozen=True, slots=True)
class Route:
    """One rule: requests whose path matches ``template`` (and ``method``, if set) need ``auth``.

    A Forge route has ``auth="forge"`` and an :class:`~collector.forge.ForgeExpectation` in
    ``forge`` (``auth="forge:event"`` is shorthand for the expectation's invocation kind).
    """

    template: str
    auth: str
    method: str | None = None
    forge: ForgeExpectation | None = None
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.auth in FORGE_KINDS:
            invocation = self.auth.partition(":")[2]
            if self.forge is not None and self.forge.invocation != invocation:
                raise ValueError(f"route {self.template!r}: {self.auth} contradicts its Forge expectation")
            object.__setattr__(self, "forge", self.forge or ForgeExpectation(invocation=invocation))
            object.__setattr__(self, "auth", FORGE)
        elif self.auth == FORGE and self.forge is None:
            object.__setattr__(self, "forge", ForgeExpectation())
        if self.auth not in KINDS:
            raise ValueError(
                f"route {self.template!r}: auth must be one of {', '.join(KINDS[:-1] + FORGE_KINDS)}"
            )
        if self.forge is not None and self.auth != FORGE:
            raise ValueError(f"route {self.template!r}: only a forge route takes a Forge expectation")
        if not self.template.startswith("/"):
            raise ValueError(f"route {self.template!r}: a pattern is a path starting with '/'")
        if self.method is not None and not _METHOD.match(self.method):
            raise ValueError(f"route {self.template!r}: {self.method!r} is not an HTTP method")
        object.__setattr__(self, "_regex", _compile(self.template))

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method.upper():
            return False
        return self._regex.fullmatch(path) is not None


def _compile(template: str) -> re.Pattern[str]:
    parts, pos = [], 0
    for m in _PARAM.finditer(template):
        parts.append(re.escape(template[pos : m.start()]))
        parts.append(".+" if m.group(2) else "[^/]+")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts))


def _parse_rule(key: str, auth: str | ForgeExpectation) -> Route:
    method, _, path = key.strip().rpartition(" ")
    forge = auth if isinstance(auth, ForgeExpectation) else None
    return Route(template=path.strip(), auth=FORGE if forge else auth, method=method.strip().upper() or None,
                 forge=forge)


class RoutePolicy:
    """An ordered set of :class:`Route` rules with a default for paths no rule matches.

    Build it from a mapping (``{"/installed": "lifecycle", "GET /page": "request"}``), from
    :class:`Route` objects, or from ``(pattern, auth)`` pairs. A Forge route's value may be a
    :class:`~collector.forge.ForgeExpectation` (``{"POST /forge/macro":
    ForgeExpectation("resolver", module_key="my-macro", principal="required")}``).
    """

    def __init__(
        self,
        rules: Mapping[str, str | ForgeExpectation] | Iterable[Route | tuple[str, str]] = (),
        *,
        default: str = REQUEST,
    ) -> None:
        if default not in KINDS or default == LIFECYCLE:
            raise ValueError("the default route policy must be 'request', 'context' or 'public'")
        items = rules.items() if isinstance(rules, Mapping) else rules
        self.routes: tuple[Route, ...] = tuple(
            item if isinstance(item, Route) else _parse_rule(*item) for item in items
        )
        self.default = Route(template="/{path:path}", auth=default)

    @classmethod
    def coerce(cls, routes: RoutePolicy | Mapping[str, str] | Iterable | None) -> RoutePolicy:
        if isinstance(routes, RoutePolicy):
            return routes
        return cls(routes or ())

    def match(self, method: str, path: str) -> tuple[Route, bool]:
        """The rule for a request, and whether a declared rule (not the default) matched."""
        for route in self.routes:
            if route.matches(method, path):
                return route, True
        return self.default, False

    def has_forge(self) -> bool:
        return any(r.auth == FORGE for r in self.routes)

    def lifecycle_paths(self) -> tuple[str, ...]:
        return tuple(r.template for r in self.routes if r.auth == LIFECYCLE)

    def __repr__(self) -> str:
        rules = ", ".join(f"{r.method + ' ' if r.method else ''}{r.template}={_kind(r)}" for r in self.routes)
        return f"RoutePolicy({rules}; default={self.default.auth})"



def _kind(route: Route) -> str:
    return f"{FORGE}:{route.forge.invocation}" if route.forge is not None else route.auth
