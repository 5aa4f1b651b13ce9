"""Audit stores for the read-side tests, built through the real recording path.

Events go through :class:`collector.recorder.Recorder` (hash chain, checkpoints) and installs
through :class:`collector.installs.InstallRegistry`, exactly as the collector writes them, so
the dashboard and export tests read what production would store, hostile values included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from collector import events as ev
from collector.events import AuditRecord
from collector.installs import InstallRegistry
from collector.recorder import Recorder
from collector.store import Store

#: Values an attacker can put in a path, an account id or a tenant URL.
HOSTILE_TENANT = "=HYPERLINK(\"http://evil.example/x\",\"click\")"
HOSTILE_ACCOUNT = "@SUM(1+1)*cmd|' /C calc'!A0"
HOSTILE_PATH = "/rest/api/content/<script>alert('x')</script>"
HOSTILE_DETAIL = "+1 line one\r\nline two <b>bold</b> ![img](http://evil.example/t.png)"
HOSTILE_REQUEST_ID = "-2+3"
HOSTILE_VALUES = (HOSTILE_TENANT, HOSTILE_ACCOUNT, HOSTILE_PATH, HOSTILE_DETAIL, HOSTILE_REQUEST_ID)

TENANTS = {
    "tenant-alpha": "https://alpha.atlassian.net/wiki",
    "tenant-beta": "https://beta.atlassian.net/wiki",
}


@dataclass
class Dataset:
    """What was written, so tests can compute expected answers independently of the SQL."""

    records: list[AuditRecord] = field(default_factory=list)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def matching(self, pred) -> list[AuditRecord]:
        return [r for r in self.records if pred(r)]


def _records(now: datetime, n: int) -> list[AuditRecord]:
    """A realistic mix over the last ~3 days: app-user and user calls, 403s, rejections."""
    out = []
    for i in range(n):
        ts = now - timedelta(minutes=7 * i + 3)
        tenant = "tenant-alpha" if i % 3 else "tenant-beta"
        kind = ev.USER if i % 4 == 0 else ev.APP_USER
        method = "POST" if i % 5 == 0 else "GET"
        outcome, status, reason, scope = ev.ALLOWED, 200, None, "READ"
        if i % 11 == 0:
            outcome, status, reason, scope = ev.DENIED, 403, ev.SCOPE, "WRITE"
        elif i % 13 == 0:
            outcome, status, reason = ev.DENIED, 403, ev.PERMISSION
        elif i % 7 == 0:
            outcome, status, reason = ev.REJECTED, 401, "expired" if i % 2 else "qsh_mismatch"
        elif i % 29 == 0:
            outcome, status = ev.ERROR, 502
        direction = ev.OUTGOING if i % 2 else ev.INCOMING
        auth = ev.USER_BEARER if kind == ev.USER else ev.APP_JWT
        platform = ev.CONNECT
        if i % 6 == 5:  # a Connect-on-Forge share of the traffic, in the same log
            platform = ev.FORGE
            auth = ev.FORGE_INVOCATION if direction == ev.INCOMING else (
                ev.FORGE_USER if kind == ev.USER else ev.FORGE_SYSTEM)
        out.append(AuditRecord(
            direction=direction,
            outcome=outcome,
            auth_method=auth,
            platform=platform,
            identity_kind=kind,
            ts=ts,
            tenant_client_key=tenant,
            tenant_base_url=TENANTS[tenant],
            product="confluence",
            account_id=f"5b10ac8d82e05b22cc7d{i % 5:04d}" if kind == ev.USER else None,
            method=method,
            path=f"/rest/api/content/{1000 + i}",
            path_template="/rest/api/content/{id}",
            required_scope=scope,
            declared_scopes="READ",
            status=status,
            reason=reason,
            latency_ms=float(5 + i % 40),
            request_id=f"req-{i}",
            token_fingerprint=f"{i:064x}",
            claims={"iss": tenant, "sub": "5b10ac8d82e05b22cc7d0001", "iat": 1764300000 + i,
                    "exp": 1764300180 + i, "qsh_kind": "request"},
        ))
    return out


def _hostile(now: datetime) -> list[AuditRecord]:
    return [
        AuditRecord(
            direction=ev.INCOMING,
            outcome=ev.REJECTED,
            auth_method=ev.APP_JWT,
            identity_kind=ev.USER,
            ts=now - timedelta(minutes=1),
            tenant_client_key=HOSTILE_TENANT,
            tenant_base_url="https://evil.example/<img src=x onerror=alert(1)>",
            account_id=HOSTILE_ACCOUNT,
            method="GET",
            path=HOSTILE_PATH,
            path_template="/rest/api/content/{id}",
            status=401,
            reason="bad_signature",
            detail=HOSTILE_DETAIL,
            request_id=HOSTILE_REQUEST_ID,
            claims={"iss": HOSTILE_TENANT, "sub": "<script>alert(2)</script>", "iat": 1, "exp": 2},
        ),
        AuditRecord(
            direction=ev.INCOMING,
            outcome=ev.ALLOWED,
            auth_method=ev.APP_JWT,
            identity_kind=ev.APP_USER,
            ts=now - timedelta(minutes=2),
            tenant_client_key="tenant-alpha",
            tenant_base_url=TENANTS["tenant-alpha"],
            method="GET",
            path="\tpath-with-tab",
            status=200,
            request_id="\rcarriage",
            detail="\nnewline first",
        ),
    ]


def build_store(url: str, *, events: int = 240, hostile: bool = True,
                installs: bool = True) -> Dataset:
    """Fill the store at ``url`` and return what was written."""
    data = Dataset()
    data.records = _records(data.now, events)
    if hostile:
        data.records += _hostile(data.now)
    with Store.open(url) as store:
        if installs:
            registry = InstallRegistry(store)
            for key, base in TENANTS.items():
                payload = {"clientKey": key, "baseUrl": base, "key": "com.example.audit-app",
                           "sharedSecret": f"secret-{key}-do-not-leak", "productType": "confluence",
                           "description": "<b>not bold</b> =1+1"}
                registry.apply_lifecycle("installed", payload, declared_scopes="READ WRITE")
            registry.apply_lifecycle("disabled", {"clientKey": "tenant-beta"})
            registry.apply_lifecycle("enabled", {"clientKey": "tenant-beta"})
            for key, base in TENANTS.items():
                data.records.append(AuditRecord(
                    direction=ev.LIFECYCLE, outcome=ev.ALLOWED, auth_method=ev.LIFECYCLE_JWT,
                    identity_kind=ev.ANONYMOUS, event_type="installed", ts=data.now - timedelta(days=3),
                    tenant_client_key=key, tenant_base_url=base, method="POST", path="/installed",
                    status=204,
                ))
        # Rollups are left unfolded so that tests see both paths: the raw log before a
        # fold and the rollups after it (the writer's own folding is tested in test_recorder).
        recorder = Recorder(store, rollup_interval=None).start()
        for rec in data.records:
            recorder.record(rec)
        recorder.close()
    return data
