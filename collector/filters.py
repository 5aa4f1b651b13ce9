"""Which events to read: :class:`EventFilter`, its parsing from strings (URLs, CLI flags), and
its translation into one SQL condition (:func:`where_clause`) over the log or a rollup.

Every filter becomes SQL; nothing is filtered in Python. A field the rollups cannot answer
(free text, a path substring) is named by :meth:`EventFilter.raw_only_fields`, so the reads
know to go to the log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from collector import events as ev
from collector.database import EVENTS
from collector.errors import LIFECYCLE_REFUSAL_CODES, REJECTION_CODES, FilterError, ForgeTokenUnavailable

#: Every reason word the log can hold: a rejection code, a 403's cause, a refused exchange, a
#: refused lifecycle callback.
REASONS = (*REJECTION_CODES, ev.SCOPE, ev.PERMISSION, ev.TOKEN_EXCHANGE_REFUSED, ForgeTokenUnavailable.code,
           *LIFECYCLE_REFUSAL_CODES)


# --------------------------------------------------------------------------- filter

_STATUS_RE = re.compile(r"^(?:[1-5]\d\d|[1-5]xx)$")
_DURATION_RE = re.compile(r"^(\d+)\s*(m|min|h|d|w)$")
_DURATION_UNITS = {"m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str, *, now: datetime | None = None, end_of_day: bool = False) -> datetime:
    """Read an instant: ISO-8601 (a date, or a datetime; naive means UTC) or an age like ``7d``.

    Ages (``30m``, ``24h``, ``7d``, ``2w``) count back from ``now``. With ``end_of_day`` a
    bare date means the start of the next day, so ``--until 2026-01-31`` includes that day.
    """
    text = value.strip()
    match = _DURATION_RE.match(text.lower())
    if match:
        now = now or datetime.now(UTC)
        return now - timedelta(seconds=int(match.group(1)) * _DURATION_UNITS[match.group(2)])
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return start + timedelta(days=1) if end_of_day else start
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise FilterError(
            f"'{value}' is not a time: use an ISO-8601 date or datetime, or an age like 24h or 7d"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to read. Every field is optional; set fields are ANDed.

    ``since`` is inclusive and ``until`` exclusive. ``tenant`` is a clientKey, a baseUrl
    when it starts with ``http``, or a site as a person names it (``acme.atlassian.net``: any
    value with a dot, matched as that clientKey or as the site's https baseUrl, with or without
    ``/wiki``). ``status`` is a code (``403``) or a class (``4xx``).
    ``path_contains`` and ``text`` are case-insensitive substrings; ``text`` searches the
    tenant, account, path, reason, detail, scope and the event and request ids.
    """

    since: datetime | None = None
    until: datetime | None = None
    tenant: str | None = None
    platform: str | None = None
    direction: str | None = None
    identity_kind: str | None = None
    account_id: str | None = None
    method: str | None = None
    path_contains: str | None = None
    scope: str | None = None
    status: str | None = None
    outcome: str | None = None
    reason: str | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise FilterError(f"The filter's {name} must be timezone-aware (UTC)")
        _check_word("platform", self.platform, ev.PLATFORMS)
        _check_word("direction", self.direction, ev.DIRECTIONS)
        _check_word("identity kind", self.identity_kind, ev.IDENTITY_KINDS)
        _check_word("outcome", self.outcome, ev.OUTCOMES)
        _check_word("reason", self.reason, REASONS)
        if self.status is not None and not _STATUS_RE.match(str(self.status)):
            raise FilterError(
                f"'{self.status}' is not an HTTP status: use a code such as 403 or a class such as 4xx"
            )
        if self.since and self.until and self.since >= self.until:
            raise FilterError("The time range is empty: 'since' must be before 'until'")

    # -- URL state and CLI flags ---------------------------------------------------

    def to_params(self) -> dict[str, str]:
        """The set fields as strings, for ``st.query_params`` or a shareable link."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == "":
                continue
            out[f.name] = _iso(value) if isinstance(value, datetime) else str(value)
        return out

    @classmethod
    def from_params(cls, params: Mapping[str, Any], *, now: datetime | None = None) -> EventFilter:
        """Build a filter from strings (query parameters, CLI flags); unknown keys are ignored.

        Raises :class:`FilterError` with one sentence when a value is malformed.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = params.get(f.name)
            if isinstance(raw, list | tuple):
                raw = raw[-1] if raw else None
            if raw is None or str(raw).strip() == "":
                continue
            text = str(raw).strip()
            if f.name == "since":
                values[f.name] = parse_time(text, now=now)
            elif f.name == "until":
                values[f.name] = parse_time(text, now=now, end_of_day=True)
            elif f.name == "method" or (f.name == "scope" and ":" not in text):
                values[f.name] = text.upper()  # Connect scopes are upper case; OAuth scopes are not
            elif f.name in {"platform", "direction", "identity_kind", "outcome"}:
                values[f.name] = text.lower()
            else:
                values[f.name] = text
        return cls(**values)

    def replace(self, **changes: Any) -> EventFilter:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(changes)
        return type(self)(**data)

    def describe(self) -> str:
        """A short human label of the set fields (used in export file names and headings)."""
        parts = [f"{k}={v}" for k, v in self.to_params().items() if k not in {"since", "until"}]
        return ", ".join(parts) or "no filter"

    def raw_only_fields(self, dims: Sequence[str]) -> set[str]:
        """The set fields that a rollup with ``dims`` cannot answer (they need the raw log)."""
        out = set()
        for name in self.to_params():
            if name in {"since", "until"}:
                continue
            column = _ROLLUP_COLUMN.get(name)
            if column is None or column not in dims or (name == "tenant" and _names_site(self.tenant)):
                out.add(name)
        if self.direction == ev.IMPORTED or self.platform == ev.ATLASSIAN:
            out.add("direction" if self.direction else "platform")  # the rollups never count them
        return out


#: Filter field -> rollup column; fields absent here (path_contains, text) need the raw log.
_ROLLUP_COLUMN = {
    "tenant": "tenant_client_key",
    # Every Forge event, and no other, has a Forge auth method: the rollups answer by platform.
    "platform": "auth_method",
    "direction": "direction",
    "identity_kind": "identity_kind",
    "account_id": "account_id",
    "method": "method",
    "scope": "required_scope",
    "status": "status",
    "outcome": "outcome",
    "reason": "reason",
}


def _check_word(label: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        article = "an" if label[:1] in "aeiou" else "a"
        # A long list (the reason codes) is named, not spelled out, to keep one short sentence.
        rest = allowed[len(REJECTION_CODES):]
        choices = f"one of {', '.join(allowed)}" if len(allowed) <= 8 else (
            f"a rejection code such as {allowed[0]} or {REJECTION_CODES[-1]} (see docs/debugging.md), "
            f"or {', '.join(rest)}"
        )
        raise FilterError(f"'{value}' is not {article} {label}: use {choices}")


def _like(column: sa.ColumnElement, needle: str) -> sa.ColumnElement[bool]:
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.ilike(f"%{escaped}%", escape="\\")


_TEXT_COLUMNS = (
    "tenant_client_key",
    "tenant_base_url",
    "account_id",
    "path",
    "reason",
    "detail",
    "required_scope",
    "event_id",
    "request_id",
)


def _status_condition(column: sa.ColumnElement, status: str) -> sa.ColumnElement[bool]:
    if status.endswith("xx"):
        low = int(status[0]) * 100
        return sa.and_(column >= low, column < low + 100)
    return column == int(status)


def _column_conditions(flt: EventFilter, c: Any) -> list[sa.ColumnElement[bool]]:
    """The filter's plain column tests, shared by the log and the rollup tables."""
    conds = [c[name] == getattr(flt, name)
             for name in ("direction", "identity_kind", "account_id", "method", "outcome", "reason")
             if getattr(flt, name)]
    has_direction = "direction" in c  # the actor rollup has none (nor any imported row)
    if flt.platform == ev.ATLASSIAN:
        conds.append(c.direction == ev.IMPORTED if has_direction else sa.false())
    elif flt.platform:
        forge = c.auth_method.in_(ev.FORGE_AUTH_METHODS)
        conds.append(forge if flt.platform == ev.FORGE else sa.not_(forge))
    if flt.direction is None and flt.platform != ev.ATLASSIAN and has_direction:
        # Atlassian's imported records are not the app's activity: they are read when asked
        # for by name (direction imported or platform atlassian), as the Atlassian record page does.
        conds.append(c.direction != ev.IMPORTED)
    if flt.scope:
        conds.append(c.required_scope == flt.scope)
    if flt.status:
        conds.append(_status_condition(c.status, flt.status))
    return conds


def _names_site(tenant: str | None) -> bool:
    """A tenant filter that may be a site's name or address (clientKeys are UUIDs: no dot)."""
    return bool(tenant) and (tenant.startswith("http") or "." in tenant)


def where_clause(flt: EventFilter, table: sa.Table = EVENTS) -> sa.ColumnElement[bool]:
    """The filter as one SQL condition over ``audit_events`` (``true`` when nothing is set)."""
    c = table.c
    conds: list[sa.ColumnElement[bool]] = []
    if flt.since is not None:
        conds.append(c.ts >= flt.since)
    if flt.until is not None:
        conds.append(c.ts < flt.until)
    if flt.tenant:
        if flt.tenant.startswith("http"):
            conds.append(c.tenant_base_url == flt.tenant.rstrip("/"))
        elif _names_site(flt.tenant):
            site = flt.tenant.strip().rstrip("/")
            urls = [f"https://{site}", f"https://{site}/wiki"]
            conds.append(sa.or_(c.tenant_client_key == flt.tenant, c.tenant_base_url.in_(urls)))
        else:
            conds.append(c.tenant_client_key == flt.tenant)
    conds += _column_conditions(flt, c)
    if flt.path_contains:
        conds.append(_like(c.path, flt.path_contains))
    if flt.text:
        conds.append(sa.or_(*(_like(c[name], flt.text) for name in _TEXT_COLUMNS)))
    return sa.and_(sa.true(), *conds)


