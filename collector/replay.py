"""The store-backed replay guard: a token used once on a state-changing call is refused again.

The verifier (``collector.tokens``) stays pure and asks an injected guard; this one keeps
the keys in the audit store's ``replay_keys`` table, so the guarantee holds across threads,
processes and app instances that share a store. Only ``(iss, sha256 of the signed part)``
is kept, never the token, and only until the token expires: after ``exp`` the verifier
refuses it anyway, so the key has nothing left to guard.

First use is decided by one atomic statement (an insert that does nothing on conflict),
so two requests racing with the same token cannot both win, on SQLite or PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from collector.models import ReplayKey
from collector.store import Store

KEYS: sa.Table = ReplayKey.__table__
#: How often (seconds) expired keys are deleted, at most, by one guard.
PURGE_INTERVAL = 300.0


class StoreReplayGuard:
    """``first_use(iss, token_hash, expires_at)``: True the first time, False for a replay."""

    def __init__(self, store: Store, *, purge_interval: float = PURGE_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock  # the verifier's clock: a key lives as long as the verifier honours its token
        self.purge_interval = purge_interval
        self._next_purge = 0.0
        self._lock = threading.Lock()
        insert = sqlite_insert if store.dialect == "sqlite" else pg_insert
        stmt = insert(KEYS).values(
            iss=sa.bindparam("iss"),
            token_hash=sa.bindparam("token_hash"),
            expires_at=sa.bindparam("expires_at"),
        )
        # A key whose token has expired may be taken again (its row is simply stale).
        # RETURNING says whether a row was written (driver rowcounts for upserts vary).
        self._stmt = stmt.on_conflict_do_update(
            index_elements=[KEYS.c.iss, KEYS.c.token_hash],
            set_={"expires_at": stmt.excluded.expires_at},
            where=KEYS.c.expires_at < sa.bindparam("now"),
        ).returning(KEYS.c.iss)

    def first_use(self, iss: str, token_hash: str, expires_at: datetime) -> bool:
        """Atomically remember ``(iss, token_hash)``; False if it was already used and unexpired."""
        if expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware (UTC)")
        now = datetime.fromtimestamp(self.clock(), UTC)
        params = {"iss": iss, "token_hash": token_hash, "expires_at": expires_at, "now": now}
        with self.store.transaction() as conn:
            inserted = conn.execute(self._stmt, params).first() is not None
        self._maybe_purge(now)
        return inserted

    def purge_expired(self, now: datetime | None = None) -> int:
        """Delete keys whose tokens have expired; returns how many."""
        now = now or datetime.fromtimestamp(self.clock(), UTC)
        with self.store.transaction() as conn:
            return conn.execute(sa.delete(KEYS).where(KEYS.c.expires_at < now)).rowcount

    def _maybe_purge(self, now: datetime) -> None:
        tick = time.monotonic()
        with self._lock:
            if tick < self._next_purge:
                return
            self._next_purge = tick + self.purge_interval
        self.purge_expired(now)
