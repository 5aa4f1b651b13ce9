"""Helpers for the store, chain and recorder tests: records, raw tampering, counting.

Tampering goes through plain SQL on a separate connection, as an attacker with write
access to the database would, never through the code under test.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from collector import events as ev
from collector.events import AuditRecord
from collector.store import Store

KEY_ENVS = ("CONNECT_AUDIT_SECRET_KEY", "CONNECT_AUDIT_CHECKPOINT_KEY", "CONNECT_AUDIT_DATABASE_URL",
            "CONNECT_AUDIT_KEY_DIR")


def isolate_keys(monkeypatch, tmp_path: Path) -> Path:
    """Key files and PostgreSQL spill files under the test's own directory."""
    data = tmp_path / "data"
    monkeypatch.setenv("CONNECT_AUDIT_DATA_DIR", str(data))
    for name in KEY_ENVS:
        monkeypatch.delenv(name, raising=False)
    return data


def record(i: int = 0, *, ts: datetime | None = None, **fields) -> AuditRecord:
    """A plausible outgoing call; ``i`` varies path, tenant and ids."""
    values = {
        "direction": ev.OUTGOING,
        "outcome": ev.ALLOWED,
        "auth_method": ev.APP_JWT,
        "identity_kind": ev.APP_USER,
        "tenant_client_key": f"tenant-{i % 3}",
        "tenant_base_url": f"https://t{i % 3}.atlassian.net/wiki",
        "product": "confluence",
        "method": "GET",
        "path": f"/wiki/rest/api/content/{i}",
        "path_template": "/wiki/rest/api/content/{id}",
        "required_scope": "READ",
        "declared_scopes": "READ WRITE",
        "status": 200,
        "latency_ms": 10.0 + i % 7,
        "request_id": f"req-{i}",
        "token_fingerprint": f"{i:064x}",
        "claims": {
            "iss": "app",
            "sub": None,
            "iat": 1_700_000_000 + i,
            "exp": 1_700_000_180 + i,
            "qsh_kind": "computed",
        },
    }
    values.update(fields)
    return AuditRecord(ts=ts or datetime.now(UTC), **values)


def records(
    n: int, *, start: datetime | None = None, step: timedelta = timedelta(seconds=1), prefix: str = "e"
):
    start = start or datetime.now(UTC) - n * step
    return [record(i, ts=start + i * step, event_id=f"{prefix}-{i:07d}") for i in range(n)]


def count(store: Store, table: str = "audit_events") -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()  # noqa: S608


def event_ids(store: Store) -> set[str]:
    with store.engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT event_id FROM audit_events")).scalars())


def tamper(store: Store, sql: str, **params) -> None:
    """Run ``sql`` as an attacker would: straight at the database, in its own transaction."""
    engine = sa.create_engine(store.engine.url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql), params)
    finally:
        engine.dispose()


def env_for_child(tmp_path: Path) -> dict[str, str]:
    """Environment for a child process: same key directory, importable project."""
    env = dict(os.environ)
    env["CONNECT_AUDIT_DATA_DIR"] = str(tmp_path / "data")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    for name in KEY_ENVS:
        env.pop(name, None)
    return env


def migrate(store: Store, target: str, *, down: bool = False) -> None:
    """Upgrade (or downgrade) ``store`` to revision ``target`` in one locked transaction, as
    :meth:`Store.migrate` does for the head: how a test makes the store an older release left."""
    from alembic import command
    from alembic.config import Config

    from collector import store as store_mod

    cfg = Config()
    cfg.set_main_option("script_location", str(store_mod.MIGRATIONS_DIR))
    with store.write_transaction() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, target)
