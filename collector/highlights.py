"""Highlights: what in the log is worth a person's attention, found without reading the log.

Every highlight is computed from the rollups (hourly counts per tenant and dimension, and the
per-actor hours), from the small tables beside them (installs, checkpoints) and, for the few
lifecycle events the rollups point at, from the log by its tenant index: never by a scan of
the events. Each has a ``kind`` (a stable word, below), a ``severity`` (``high``, ``medium``,
``low``), the tenant and platform it concerns, its time window, a count, a sentence, and the
:class:`~collector.filters.EventFilter` of the Activity view that shows its events.

Kinds (a public contract, like the rejection codes; ``docs/cli.md`` lists them):

* ``rejections_above_baseline``, ``denials_above_baseline``, ``unauthorized_above_baseline``:
  an hour in which the share of rejected tokens, of 403s or of 401s on a site (and platform)
  rose above its own baseline: the median plus :attr:`Rules.mads` times the scaled median
  absolute deviation of that share over the previous 7 days' hours with traffic, by at least
  :attr:`Rules.min_rise`, with at least :attr:`Rules.min_count` such events in the hour (so a
  quiet site does not alarm on two events). Consecutive hours are one highlight.
* ``first_scope``, ``first_write``, ``first_endpoint``: the first call of an install that
  needed a scope, used a write or delete method, or reached an endpoint (method and path
  template) it had never called, at least a day after the install's first traffic (what a new
  install does in its first day is its getting started, not news).
* ``first_acted_as_user``: the first time the app acted as people on a site (one highlight
  per site and window, naming how many); ``acting_as_users_above_baseline``: an hour of calls
  as users far above the site's usual hours (the same robust rule, on counts).
* ``lifecycle``: an install, reinstall, baseUrl change (high: a site moving), secret rotation,
  disable, enable or uninstall.
* ``atlassian_only`` (high): calls Atlassian's imported record holds with the app's identity
  that the app never recorded (collector.reconcile): a leaked shared secret, a forgotten
  script, a second deployment. One highlight per site and window.
* ``chain``: the newest signed checkpoint names an event that is missing or has another hash
  (the log was cut or rewritten after it was signed), or events have gone unsigned for longer
  than :attr:`Rules.unsigned_events` (the recorder cannot sign: a missing checkpoint key?).
  ``connect-audit verify`` checks every link; this is the cheap look that runs each time.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from collector import events as ev
from collector.database import EVENTS, ROLLUP, reading
from collector.filters import EventFilter
from collector.models import ACTING_AS_USERS_SQL, Checkpoint, Install

KINDS = (
    "rejections_above_baseline",
    "denials_above_baseline",
    "unauthorized_above_baseline",
    "first_scope",
    "first_write",
    "first_endpoint",
    "first_acted_as_user",
    "acting_as_users_above_baseline",
    "lifecycle",
    "atlassian_only",
    "chain",
)
SEVERITIES = ("high", "medium", "low")
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
#: Scopes whose first use is worth more than a glance.
STRONG_SCOPES = ("WRITE", "DELETE", "SPACE_ADMIN", "ADMIN", "ACT_AS_USER")
FORGE_AUTH = (ev.FORGE_INVOCATION, ev.FORGE_SYSTEM, ev.FORGE_USER)
CHECKPOINTS = Checkpoint.__table__
INSTALLS = Install.__table__
HOUR = 3600


@dataclass(frozen=True)
class Rules:
    """The thresholds; the defaults suit a site with a few hundred calls a day."""

    baseline_hours: int = 7 * 24  # the hours before an hour that make its baseline
    min_baseline_hours: int = 12  # hours with traffic needed before a baseline is trusted
    min_baseline_days: int = 4  # and days, for the daily look
    mads: float = 3.0  # how many scaled median absolute deviations above the median
    min_rise: float = 0.10  # and at least this much above the median share (10 points)
    min_count: int = 10  # events in the hour, at the least
    user_rate_factor: float = 3.0  # calls as users: this many times the usual hour, at the least
    settle_hours: int = 24  # an install's first day of traffic is not "first use"
    unsigned_events: int = 10_000  # events after the newest checkpoint before that is news


@dataclass(frozen=True)
class Highlight:
    """One thing worth a look; ``filter`` selects its events on the Activity page."""

    kind: str
    severity: str
    tenant: str | None
    platform: str | None
    first_seen: datetime
    last_seen: datetime
    count: int
    summary: str
    filter: EventFilter = field(default_factory=EventFilter)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``connect-audit highlights --json``): times in ISO-8601 UTC."""
        return {
            "kind": self.kind,
            "severity": self.severity,
            "tenant": self.tenant,
            "platform": self.platform,
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "count": self.count,
            "summary": self.summary,
            "filter": self.filter.to_params(),
        }


def find(
    source: Any,
    *,
    since: datetime | None = None,
    now: datetime | None = None,
    rules: Rules = Rules(),
    names: Mapping[str, str] | None = None,
) -> list[Highlight]:
    """The highlights of ``[since, now]`` (default: the last 24 hours), most severe and newest first.

    ``names`` maps a clientKey to the site as people name it (default: from the installs).
    """
    now = now or datetime.now(UTC)
    since = since or now - timedelta(hours=24)
    found: list[Highlight] = []
    with reading(source) as conn:
        sites = dict(names) if names is not None else site_names(conn)
        window = _Window(since, now, sites, rules, _first_traffic(conn))
        found += window.rates(conn)
        found += window.first_uses(conn)
        found += window.acting_as_users(conn)
        found += window.lifecycle(conn)
        found += window.atlassian_only(conn)
        found += _chain(conn, now, rules)
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(found, key=lambda h: (rank[h.severity], -h.last_seen.timestamp(), h.kind, h.tenant or ""))


#: The calls the app made as users, in the words of their partial indexes (see the model).
_ACTING_AS_USERS = sa.text(ACTING_AS_USERS_SQL)

# --------------------------------------------------------------------------- the window


@dataclass
class _Window:
    since: datetime
    now: datetime
    sites: dict[str, str]
    rules: Rules
    first_traffic: dict[str, int]  # each site's first hour of traffic, read once per find()

    @property
    def first_hour(self) -> int:
        return int(self.since.timestamp()) // HOUR

    @property
    def last_hour(self) -> int:
        return int(self.now.timestamp()) // HOUR

    def site(self, tenant: str | None) -> str:
        if not tenant:
            return "tokens naming no known site"
        return self.sites.get(tenant) or tenant

    def span(self, first_hour: int, last_hour: int) -> tuple[datetime, datetime]:
        return _at(first_hour), min(_at(last_hour + 1), self.now)

    def activity(self, tenant: str | None, first: datetime, last: datetime, **fields: str) -> EventFilter:
        since = min(first, last - timedelta(seconds=1))
        return EventFilter(since=since, until=last + timedelta(seconds=1), tenant=tenant or None, **fields)

    # -- shares above their baseline ----------------------------------------------------

    def rates(self, conn: sa.Connection) -> list[Highlight]:
        r = ROLLUP.c
        incoming, outgoing = r.direction == ev.INCOMING, r.direction == ev.OUTGOING
        # kind: (what is counted, out of what, its words, the Activity filter's fields)
        measures = {
            # Each count is taken from the rows it is a share of: an outgoing 401 is also stored
            # as rejected, and an outgoing 403 the app passes on also makes its incoming request
            # denied, so counting across directions gave shares above 100%.
            "rejections_above_baseline": (
                sa.and_(r.outcome == ev.REJECTED, incoming),
                incoming,
                "incoming tokens rejected",
                {"outcome": ev.REJECTED, "direction": ev.INCOMING},
            ),
            "denials_above_baseline": (
                sa.and_(r.outcome == ev.DENIED, outgoing),
                outgoing,
                "calls refused with 403",
                {"outcome": ev.DENIED, "direction": ev.OUTGOING},
            ),
            "unauthorized_above_baseline": (
                sa.and_(r.status == 401, outgoing),
                outgoing,
                "calls answered 401",
                {"status": "401", "direction": ev.OUTGOING},
            ),
        }
        start = self.first_hour - self.rules.baseline_hours
        cols = []
        for kind, (counted, base, _, _) in measures.items():
            cols.append(sa.func.sum(sa.case((counted, r.n), else_=0)).label(kind))
            cols.append(sa.func.sum(sa.case((base, r.n), else_=0)).label(f"{kind}_of"))
        rows = (
            conn.execute(
                sa.select(r.tenant_client_key, r.auth_method, r.hour, *cols)
                .where(r.hour >= start, r.hour <= self.last_hour, r.direction != ev.INTERNAL)
                .group_by(r.tenant_client_key, r.auth_method, r.hour)
            )
            .mappings()
            .all()
        )
        series: dict[tuple[str, str], dict[int, dict[str, int]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(int))
        )
        for row in rows:
            hours = series[(row["tenant_client_key"], _platform(row["auth_method"]))]
            for kind in measures:
                hours[row["hour"]][kind] += row[kind] or 0
                hours[row["hour"]][f"{kind}_of"] += row[f"{kind}_of"] or 0
        found = []
        for (tenant, platform), hours in series.items():
            for kind, (_, _, what, extra) in measures.items():
                # An hour's burst (a storm), and a slower rise over whole days (a missing scope
                # until an admin approves it) that no single hour of a quiet site shows.
                hourly = self._spikes(hours, kind, 1)
                daily = [d for d in self._spikes(hours, kind, 24)
                         if not any(h[0] <= d[1] and d[0] <= h[1] for h in hourly)]
                for first, last, count, total, usual in hourly + daily:
                    share = count / total if total else 0.0
                    begin, end = self.span(first, last)
                    severity = "high" if share >= 0.5 or count >= 100 else "medium"
                    found.append(
                        Highlight(
                            kind,
                            severity,
                            tenant or None,
                            platform,
                            begin,
                            end,
                            count,
                            f"{self.site(tenant)} ({platform}): {count:,} of {total:,} {what} ({share:.0%}) "
                            f"{_between(begin, end)}; usually {usual:.0%}",
                            self.activity(tenant, begin, end, platform=platform, **extra),
                        )
                    )
        return found

    def _spikes(
        self, hours: Mapping[int, Mapping[str, int]], kind: str, step: int
    ) -> list[tuple[int, int, int, int, float]]:
        """Runs of flagged buckets of ``step`` hours (1: hours, 24: UTC days), each as
        (first hour, last hour, count, total, the usual share)."""
        rules = self.rules
        of = f"{kind}_of"
        buckets: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for hour, counts in hours.items():
            bucket = buckets[hour // step]
            bucket[0] += counts[kind]
            bucket[1] += counts[of]
        baseline = rules.baseline_hours // step
        enough = rules.min_baseline_hours if step == 1 else rules.min_baseline_days
        flagged: list[tuple[int, int, int, float]] = []
        for b in range(self.first_hour // step, self.last_hour // step + 1):
            count, total = buckets.get(b, (0, 0))
            if count < rules.min_count or not total:
                continue
            shares = [c / t for k in range(b - baseline, b) if (ct := buckets.get(k)) and (t := ct[1])
                      for c in (ct[0],)]
            if len(shares) < enough:
                continue  # too little history to call anything unusual
            usual = statistics.median(shares)
            spread = 1.4826 * statistics.median(abs(s - usual) for s in shares)
            if count / total > usual + max(rules.mads * spread, rules.min_rise):
                flagged.append((b, count, total, usual))
        return [(first * step, last * step + step - 1, count, total, usual)
                for first, last, count, total, usual in _runs(flagged)]

    # -- first uses -----------------------------------------------------------------------

    def first_uses(self, conn: sa.Connection) -> list[Highlight]:
        r = ROLLUP.c
        settled = self.first_traffic
        endpoints = self._first_seen(conn, r.method, r.path_template, present=r.method)
        scopes = self._first_seen(conn, r.required_scope, present=r.required_scope)
        earlier_writes = self._methods_used_before(conn)
        found: list[Highlight] = []
        writes: dict[tuple[str, str], list[Mapping]] = defaultdict(list)
        for row in endpoints:
            if not self._settled(settled, row["tenant_client_key"], row["first"]):
                continue
            found.append(
                self._first(
                    "first_endpoint",
                    "low",
                    row,
                    f"first call to {row['method']} {row['path_template'] or '(no template)'}",
                    method=row["method"],
                )
            )
            if (
                row["method"] in WRITE_METHODS
                and (row["tenant_client_key"], row["method"]) not in earlier_writes
            ):
                writes[(row["tenant_client_key"], row["method"])].append(row)
        for (_tenant, method), rows in writes.items():
            first = min(rows, key=lambda x: x["first"])
            merged = {**first, "last": max(x["last"] for x in rows), "n": sum(x["n"] for x in rows)}
            found.append(
                self._first(
                    "first_write",
                    "high" if method == "DELETE" else "medium",
                    merged,
                    f"first {method} call ({method} {first['path_template'] or '(no template)'})",
                    method=method,
                )
            )
        for row in scopes:
            if not self._settled(settled, row["tenant_client_key"], row["first"]):
                continue
            scope = row["required_scope"]
            strong = scope.upper() in STRONG_SCOPES or any(w in scope for w in ("write", "delete", "manage"))
            found.append(
                self._first(
                    "first_scope",
                    "medium" if strong else "low",
                    row,
                    f"first call needing the {scope} scope",
                    scope=scope,
                )
            )
        return found

    def _first_seen(self, conn: sa.Connection, *keys: sa.ColumnElement, present: sa.ColumnElement) -> list:
        """Per install and ``keys`` (an endpoint, a scope), the outgoing calls whose first hour
        falls in the window: their first and last hour, count and an auth method."""
        r = ROLLUP.c
        return conn.execute(
            sa.select(r.tenant_client_key, *keys, sa.func.min(r.hour).label("first"),
                      sa.func.max(r.hour).label("last"), sa.func.sum(r.n).label("n"),
                      sa.func.max(r.auth_method).label("auth_method"))
            .where(r.direction == ev.OUTGOING, r.tenant_client_key != "", present != "")
            .group_by(r.tenant_client_key, *keys)
            .having(sa.func.min(r.hour) >= self.first_hour)
        ).mappings().all()

    def _methods_used_before(self, conn: sa.Connection) -> set[tuple[str, str]]:
        r = ROLLUP.c
        rows = conn.execute(
            sa.select(r.tenant_client_key, r.method)
            .distinct()
            .where(r.direction == ev.OUTGOING, r.method.in_(WRITE_METHODS), r.hour < self.first_hour)
        ).all()
        return {(t, m) for t, m in rows}

    def _settled(self, settled: Mapping[str, int], tenant: str, first_hour: int) -> bool:
        start = settled.get(tenant)
        return start is not None and first_hour - start >= self.rules.settle_hours

    def _first(self, kind: str, severity: str, row: Mapping, what: str, **fields: str) -> Highlight:
        begin, end = self.span(row["first"], row["last"])
        tenant, platform = row["tenant_client_key"], _platform(row["auth_method"])
        return Highlight(
            kind,
            severity,
            tenant,
            platform,
            begin,
            end,
            int(row["n"]),
            f"{self.site(tenant)} ({platform}): {what}, {_calls(row['n'])} since {_when(begin)}",
            self.activity(tenant, begin, end, direction=ev.OUTGOING, **fields),
        )

    # -- acting as users ------------------------------------------------------------------

    def acting_as_users(self, conn: sa.Connection) -> list[Highlight]:
        r, e = ROLLUP.c, EVENTS.c
        settled = self.first_traffic
        acting = (_ACTING_AS_USERS,)  # (literal, so that the partial index answers)
        # The rollups name the sites where the app acted as users in the window; who it acted
        # as is read from the log by the site's index (the window's calls as users only), and
        # whether it had acted as each of them before, by the account's index.
        sites = (
            conn.execute(
                sa.select(r.tenant_client_key)
                .distinct()
                .where(
                    r.direction == ev.OUTGOING,
                    r.identity_kind == ev.USER,
                    r.tenant_client_key != "",
                    r.hour >= self.first_hour,
                    r.hour <= self.last_hour,
                )
            )
            .scalars()
            .all()
        )
        found = []
        for tenant in sites:
            accounts = conn.execute(
                sa.select(e.account_id, sa.func.min(e.ts), sa.func.max(e.ts))
                .where(
                    e.tenant_client_key == tenant,
                    e.ts >= self.since,
                    e.ts <= self.now,
                    *acting,
                    e.account_id.is_not(None),
                )
                .group_by(e.account_id)
                # Without statistics SQLite prefers the site-and-time index, which reads every
                # call of the window; this one holds only the calls made as users, with the person.
                .with_hint(EVENTS, "INDEXED BY ix_audit_events_acting_as_ts", "sqlite")
            ).all()
            # Each person on their own: one first met in the site's first day (not yet settled)
            # must not hide another first met later.
            candidates = [
                (account, _aware(first), _aware(last))
                for account, first, last in accounts
                if self._settled(settled, tenant, int(_aware(first).timestamp()) // HOUR)
            ]
            before = self._acted_before(conn, tenant, [c[0] for c in candidates])
            new = [c for c in candidates if c[0] not in before]
            if not new:
                continue
            first, last = min(n[1] for n in new), max(n[2] for n in new)
            who = len(new)
            found.append(
                Highlight(
                    "first_acted_as_user",
                    "medium",
                    tenant,
                    None,
                    first,
                    last,
                    who,
                    f"{self.site(tenant)}: the app acted as {who} {'person' if who == 1 else 'people'} "
                    f"it had never acted as there, first {_when(first)}",
                    self.activity(tenant, first, last, direction=ev.OUTGOING, identity_kind=ev.USER),
                )
            )
        found += self._user_rate(conn)
        return found

    def _acted_before(self, conn: sa.Connection, tenant: str, accounts: list[str]) -> set[str]:
        """Which of ``accounts`` the app had acted as at ``tenant`` before the window: one
        statement per 500 people, each person one probe of the acting-as index (a statement
        per person cost a round trip each: 1,600 of them were most of a 10M store's highlights)."""
        e = EVENTS.c
        found: set[str] = set()
        for i in range(0, len(accounts), 500):
            chunk = accounts[i : i + 500]
            # (VALUES's own column name, column1, is the one both backends share: SQLite takes
            # no column list on a VALUES alias)
            rows = ", ".join(f"(:p{n})" for n in range(len(chunk)))
            people = (
                sa.text(f"SELECT column1 AS account FROM (VALUES {rows}) AS v")  # noqa: S608  (placeholders only)
                .bindparams(**{f"p{n}": a for n, a in enumerate(chunk)})
                .columns(account=sa.String)
                .subquery("people")
            )
            earlier = (
                sa.select(e.seq)
                .where(
                    e.account_id == people.c.account,
                    e.ts < self.since,
                    e.tenant_client_key == tenant,
                    _ACTING_AS_USERS,
                )
                .exists()
            )
            found.update(conn.execute(sa.select(people.c.account).where(earlier)).scalars())
        return found

    def _user_rate(self, conn: sa.Connection) -> list[Highlight]:
        r = ROLLUP.c
        rows = conn.execute(
            sa.select(r.tenant_client_key, r.hour, sa.func.sum(r.n).label("n"))
            .where(
                r.identity_kind == ev.USER,
                r.direction == ev.OUTGOING,
                r.tenant_client_key != "",
                r.hour >= self.first_hour - self.rules.baseline_hours,
                r.hour <= self.last_hour,
            )
            .group_by(r.tenant_client_key, r.hour)
        ).all()
        series: dict[str, dict[int, int]] = defaultdict(dict)
        for tenant, hour, n in rows:
            series[tenant][hour] = n
        found = []
        for tenant, hours in series.items():
            flagged = []
            for hour in range(self.first_hour, self.last_hour + 1):
                n = hours.get(hour, 0)
                if n < self.rules.min_count:
                    continue  # (before the baseline: most hours stop here)
                usual_hours = [v for k, v in hours.items() if hour - self.rules.baseline_hours <= k < hour]
                if len(usual_hours) < self.rules.min_baseline_hours:
                    continue
                usual = statistics.median(usual_hours)
                spread = 1.4826 * statistics.median(abs(v - usual) for v in usual_hours)
                if n > max(usual + self.rules.mads * spread, usual * self.rules.user_rate_factor):
                    flagged.append((hour, n, n, usual))
            for first, last, count, _total, usual in _runs(flagged):
                begin, end = self.span(first, last)
                found.append(
                    Highlight(
                        "acting_as_users_above_baseline",
                        "medium",
                        tenant,
                        None,
                        begin,
                        end,
                        count,
                        f"{self.site(tenant)}: {count:,} calls as users {_between(begin, end)}; "
                        f"usually {usual:,.0f} an hour",
                        self.activity(tenant, begin, end, direction=ev.OUTGOING, identity_kind=ev.USER),
                    )
                )
        return found

    # -- lifecycle ------------------------------------------------------------------------

    def lifecycle(self, conn: sa.Connection) -> list[Highlight]:
        r, e = ROLLUP.c, EVENTS.c
        # The rollups say which sites had lifecycle events in which hours; the events
        # themselves (a handful) are read by the tenant index.
        hours = conn.execute(
            sa.select(r.tenant_client_key, sa.func.min(r.hour), sa.func.max(r.hour))
            .where(
                r.direction == ev.LIFECYCLE,
                r.hour >= self.first_hour,
                r.outcome == ev.ALLOWED,
                r.tenant_client_key != "",
            )
            .group_by(r.tenant_client_key)
        ).all()
        first_traffic = self.first_traffic
        found = []
        for tenant, first, last in hours:
            rows = (
                conn.execute(
                    sa.select(e.ts, e.event_type, e.platform, e.extra)
                    .where(
                        e.tenant_client_key == tenant,
                        e.ts >= max(_at(first), self.since),
                        e.ts < _at(last + 1),
                        e.direction == ev.LIFECYCLE,
                        e.outcome == ev.ALLOWED,
                    )
                    .order_by(e.ts)
                )
                .mappings()
                .all()
            )
            changes = [_aware(row["ts"]) for row in rows if row["event_type"] == "install_changed"]
            for row in rows:
                ts = _aware(row["ts"])
                if row["event_type"] == "installed" and any(
                    abs((c - ts).total_seconds()) < 1 for c in changes
                ):
                    continue  # a reinstall that changed something: its install_changed row says what
                new = first_traffic.get(tenant, 0) >= int(ts.timestamp()) // HOUR
                if (found_one := self._lifecycle(tenant, row, ts, new)) is not None:
                    found.append(found_one)
        return found

    def _lifecycle(self, tenant: str, row: Mapping, ts: datetime, new: bool) -> Highlight | None:
        kind, extra = row["event_type"], _json(row["extra"])
        if kind == "install_changed":
            if extra.get("old_base_url") != extra.get("new_base_url"):
                severity = "high"  # a site moving to another address is the change to check
                what = f"moved from {extra.get('old_base_url')} to {extra.get('new_base_url')}"
            elif extra.get("secret_rotated"):
                severity, what = "medium", "reinstalled with a new shared secret"
            else:
                return None
        elif kind == "installed":
            severity, what = "low", "installed the app" if new else "reinstalled the app"
        elif kind == "uninstalled":
            severity, what = "medium", "uninstalled the app"
        else:
            severity, what = "low", f"{kind.replace('_', ' ')} the app"
        return Highlight(
            "lifecycle",
            severity,
            tenant,
            row["platform"],
            ts,
            ts,
            1,
            f"{self.site(tenant)} ({row['platform']}): {what} {_when(ts)}",
            self.activity(tenant, ts, ts, direction=ev.LIFECYCLE),
        )


    # -- Atlassian's record ---------------------------------------------------------------

    def atlassian_only(self, conn: sa.Connection) -> list[Highlight]:
        from collector.reconcile import ATLASSIAN_ONLY, reconcile

        result = reconcile(conn, since=self.since, until=self.now, calls_only=True)
        by_site: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
        for row in result.rows:
            if row["kind"] == ATLASSIAN_ONLY:
                by_site[row["tenant"]].append(row)
        found = []
        for tenant, rows in by_site.items():
            where = self.site(tenant) if tenant else (rows[0]["site"] or "a site with no install")
            # The app did make a call that it recorded minutes away: a clock is off, not a leak.
            never = [r for r in rows if r.get("clock_gap_s") is None]
            skewed = [r for r in rows if r.get("clock_gap_s") is not None]
            if never:
                first, last = _row_span(never)
                found.append(self._atlassian_only(
                    tenant, never, "high",
                    f"{where}: {len(never):,} calls in Atlassian's record that the app never made "
                    f"{_between(first, last)}: a leaked secret?"))
            if skewed:
                first, last = _row_span(skewed)
                gap = statistics.median(r["clock_gap_s"] for r in skewed)
                found.append(self._atlassian_only(
                    tenant, skewed, "medium",
                    f"{where}: {len(skewed):,} calls in Atlassian's record that the app recorded "
                    f"{abs(gap):,.0f} s {'later' if gap > 0 else 'earlier'} {_between(first, last)}: is the "
                    "app server's clock off?"))
        return found


    def _atlassian_only(self, tenant: str | None, rows: list[dict[str, Any]], severity: str,
                        summary: str) -> Highlight:
        first, last = _row_span(rows)
        return Highlight("atlassian_only", severity, tenant, ev.ATLASSIAN, first, last, len(rows), summary,
                         self.activity(tenant, first, last, direction=ev.IMPORTED))


def _row_span(rows: list[dict[str, Any]]) -> tuple[datetime, datetime]:
    """The first and last time of reconciliation rows (in time order, ISO text)."""
    return tuple(datetime.fromisoformat(rows[i]["ts"].replace("Z", "+00:00")) for i in (0, -1))  # type: ignore[return-value]


# --------------------------------------------------------------------------- the chain


def _chain(conn: sa.Connection, now: datetime, rules: Rules) -> list[Highlight]:
    cp = conn.execute(sa.select(CHECKPOINTS).order_by(CHECKPOINTS.c.seq.desc()).limit(1)).mappings().first()
    head = conn.execute(sa.select(EVENTS.c.seq, EVENTS.c.ts).order_by(EVENTS.c.seq.desc()).limit(1)).first()
    if head is None:
        return []
    head_seq, head_ts = head[0], _aware(head[1])
    if cp is None:
        if head_seq <= rules.unsigned_events:
            return []
        return [
            _chain_highlight(
                "medium",
                head_seq,
                head_ts,
                head_ts,
                f"{head_seq:,} events and no signed checkpoint: the recorder is not signing "
                "(is its checkpoint key missing?)",
            )
        ]
    signed = conn.execute(sa.select(EVENTS.c.hash, EVENTS.c.ts).where(EVENTS.c.seq == cp["seq"])).first()
    cp_ts = _aware(cp["created_at"])
    if signed is None and cp["seq"] > head_seq:
        return [
            _chain_highlight(
                "high",
                cp["seq"] - head_seq,
                cp_ts,
                now,
                f"the log ends at seq {head_seq:,} but a checkpoint signed {_when(cp_ts)} vouches "
                f"for seq {cp['seq']:,}: events were cut from its end; run connect-audit verify",
            )
        ]
    if signed is not None and signed[0] != cp["hash"]:
        return [
            _chain_highlight(
                "high",
                1,
                cp_ts,
                now,
                f"the event at seq {cp['seq']:,} is not the one its checkpoint signed "
                f"{_when(cp_ts)}: the log was rewritten; run connect-audit verify",
            )
        ]
    if head_seq - cp["seq"] > rules.unsigned_events:
        return [
            _chain_highlight(
                "medium",
                head_seq - cp["seq"],
                cp_ts,
                head_ts,
                f"{head_seq - cp['seq']:,} events since the last signed checkpoint "
                f"({_when(cp_ts)}): the recorder is not signing (is its checkpoint key missing?)",
            )
        ]
    return []


def _chain_highlight(severity: str, count: int, first: datetime, last: datetime, summary: str) -> Highlight:
    first, last = min(first, last), max(first, last)  # a checkpoint is signed by wall time
    return Highlight("chain", severity, None, None, first, last, count, summary,
                     EventFilter(since=first - timedelta(seconds=1), until=last + timedelta(seconds=1)))


# --------------------------------------------------------------------------- helpers


def _platform(auth_method: str | None) -> str:
    return ev.FORGE if auth_method in FORGE_AUTH else ev.CONNECT


def site_names(conn: sa.Connection) -> dict[str, str]:
    """clientKey -> the site as people name it (its baseUrl's host), from the installs."""
    from urllib.parse import urlsplit

    rows = conn.execute(sa.select(INSTALLS.c.client_key, INSTALLS.c.base_url)).all()
    return {key: urlsplit(url).hostname or url for key, url in rows if url}


def _first_traffic(conn: sa.Connection) -> dict[str, int]:
    r = ROLLUP.c
    rows = conn.execute(
        sa.select(r.tenant_client_key, sa.func.min(r.hour))
        .where(r.tenant_client_key != "")
        .group_by(r.tenant_client_key)
    ).all()
    return dict(rows)


def _json(text: str | None) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _runs(flagged: list[tuple[int, int, int, float]]) -> list[tuple[int, int, int, int, float]]:
    """Consecutive flagged hours as one run: (first, last, count, total, the first hour's usual)."""
    runs: list[list] = []
    for hour, count, total, usual in flagged:
        if runs and hour == runs[-1][1] + 1:
            runs[-1][1] = hour
            runs[-1][2] += count
            runs[-1][3] += total
        else:
            runs.append([hour, hour, count, total, usual])
    return [tuple(r) for r in runs]


def _at(hour: int) -> datetime:
    return datetime.fromtimestamp(hour * HOUR, UTC)


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%a %d %b %H:%M UTC")


def _between(first: datetime, last: datetime) -> str:
    if last - first <= timedelta(hours=1):
        return f"in the hour from {_when(first)}"
    if first.hour == last.hour == 0 and first.minute == last.minute == 0:  # whole UTC days
        days = (last - first).days
        start = first.astimezone(UTC).strftime("%a %d %b")
        if days == 1:
            return f"on {start} (UTC)"
        end = (last - timedelta(days=1)).astimezone(UTC).strftime("%a %d %b")
        return f"from {start} to {end} (UTC days)"
    return f"from {_when(first)} to {last.astimezone(UTC).strftime('%a %d %b %H:%M UTC')}"


def _calls(n: int) -> str:
    return f"{n:,} call{'s' if n != 1 else ''}"
