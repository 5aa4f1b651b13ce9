"""A synthetic store for the highlight tests: nine steady days on two sites, and optionally the
anomalies of a bad day planted in the last of them (each kind of highlight once)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from collector import events as ev
from collector.events import AuditRecord
from collector.recorder import Recorder
from collector.rollups import refresh_rollups
from collector.store import Store

#: Noon of yesterday (UTC): recent enough for any range a page offers, a whole day behind it.
DAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
NOW = DAY.replace(hour=12)
ACME, GLOBEX = "key-acme", "key-globex"
SITES = {ACME: "acme.atlassian.net", GLOBEX: "globex.atlassian.net"}
DAYS = 9

def call(ts, tenant, *, method="GET", template="/wiki/rest/api/content/{id}", scope="READ", status=200,
         outcome=ev.ALLOWED, kind=ev.APP_USER, account=None, auth=ev.APP_JWT, reason=None):
    return AuditRecord(
        direction=ev.OUTGOING, outcome=outcome, auth_method=auth, identity_kind=kind, ts=ts,
        tenant_client_key=tenant, tenant_base_url=f"https://{SITES[tenant]}/wiki", method=method,
        path=template.replace("{id}", "1"), path_template=template, required_scope=scope, status=status,
        account_id=account, reason=reason,
    )


def incoming(ts, tenant, *, outcome=ev.ALLOWED, reason=None):
    return AuditRecord(direction=ev.INCOMING, outcome=outcome, auth_method=ev.APP_JWT, identity_kind=ev.USER,
                       ts=ts, tenant_client_key=tenant, method="GET",
                       path="/panel", path_template="/panel", status=200 if outcome == ev.ALLOWED else 401,
                       reason=reason)


def lifecycle(ts, tenant, event_type, extra=None):
    return AuditRecord(direction=ev.LIFECYCLE, outcome=ev.ALLOWED, event_type=event_type,
                       auth_method=ev.LIFECYCLE_JWT, ts=ts, tenant_client_key=tenant, method="POST",
                       path=f"/{event_type}", path_template=f"/{event_type}", status=204, extra=extra)


def steady(start: datetime, hours: int):
    """Both sites, every hour: page loads, reads as the app user, one 403, two calls as Ada."""
    yield lifecycle(start, ACME, "installed")
    yield lifecycle(start, GLOBEX, "installed")
    for h in range(hours):
        t = start + timedelta(hours=h, minutes=5)
        for tenant in (ACME, GLOBEX):
            for i in range(10):
                yield incoming(t + timedelta(seconds=i), tenant)
            yield incoming(t + timedelta(seconds=11), tenant, outcome=ev.REJECTED, reason="token_expired")
            for i in range(12):
                yield call(t + timedelta(seconds=20 + i), tenant)
            yield call(t + timedelta(seconds=40), tenant, status=403, outcome=ev.DENIED, reason="permission")
            for i in range(2):
                yield call(t + timedelta(seconds=50 + i), tenant, kind=ev.USER, account="ada",
                           auth=ev.USER_BEARER)


def planted(day: datetime):
    """The anomalies, all in the last 24 hours."""
    t = day
    # A storm of expired tokens on Acme at 04:00.
    for i in range(40):
        yield incoming(t.replace(hour=4, minute=20) + timedelta(seconds=i), ACME, outcome=ev.REJECTED,
                       reason="token_expired")
    # A space locked down on Globex at 06:00: 25 403s.
    for i in range(25):
        yield call(t.replace(hour=6, minute=30) + timedelta(seconds=i), GLOBEX, status=403,
                   outcome=ev.DENIED, reason="permission")
    # Acme answering 401 at 07:00 (stored as the client stores one: rejected, no reason code).
    for i in range(15):
        yield call(t.replace(hour=7, minute=10) + timedelta(seconds=i), ACME, status=401, outcome=ev.REJECTED)
    # Globex: a first DELETE, needing a scope never needed there before.
    yield call(t.replace(hour=8, minute=1), GLOBEX, method="DELETE", scope="DELETE")
    # Acme: the app acts as Grace for the first time, 60 times in an hour.
    for i in range(60):
        yield call(t.replace(hour=9, minute=2) + timedelta(seconds=i), ACME, kind=ev.USER, account="grace",
                   auth=ev.USER_BEARER)
    # Acme moves to another address; Globex uninstalls.
    yield lifecycle(t.replace(hour=10), ACME, "installed")
    yield lifecycle(t.replace(hour=10), ACME, "install_changed", {
        "old_base_url": "https://acme.atlassian.net/wiki", "new_base_url": "https://acme-corp.example.com/wiki",
        "host_moved": True, "secret_rotated": False, "old_product": "confluence",
        "new_product": "confluence"})
    yield lifecycle(t.replace(hour=11), GLOBEX, "uninstalled")
    # Atlassian's record: three calls as the app on Globex at 08:30 that the app never made.
    for i in range(3):
        yield imported_call(t.replace(hour=8, minute=30) + timedelta(seconds=10 * i), GLOBEX, f"leak-{i}")


def imported_call(ts, tenant, source_id, *, path="/wiki/rest/api/space"):
    """An app's API call as an organization's audit log holds it (collector.org_events' mapping)."""
    return AuditRecord(
        direction=ev.IMPORTED, platform=ev.ATLASSIAN, event_type="org_events", outcome=ev.ALLOWED,
        identity_kind=ev.APP_USER, ts=ts, tenant_client_key=tenant,
        tenant_base_url=f"https://{SITES[tenant]}/wiki", method="GET", path=path, status=200,
        extra={"source": "org", "kind": "org_events", "source_id": source_id, "api_request": True,
               "app": None},
    )


def fill(url: str, *, anomalies: bool, extra: tuple[AuditRecord, ...] = ()) -> Store:
    store = Store.open(url)
    start = NOW - timedelta(days=DAYS)
    records = list(steady(start, DAYS * 24))
    if anomalies:
        records += list(planted(DAY))
    records += extra
    records.sort(key=lambda r: r.ts)
    with Recorder(store, rollup_interval=None, batch_size=2000, queue_size=100_000) as rec:
        for r in records:
            rec.record(r)
    refresh_rollups(store, limit=None)
    return store


