"""The install registry: which tenants installed the app, with which secret, in which state.

It is fed only by *verified* lifecycle callbacks (the middleware checks the RS256
signature, ``aud`` and that ``iss`` equals the body's ``clientKey`` before calling
:meth:`InstallRegistry.apply_lifecycle`), and read on every incoming request through
:meth:`InstallRegistry.install_secret`, the ``InstallLookup`` the verifier uses.

* An ``installed`` callback for a clientKey that already exists is a reinstall: it
  replaces the shared secret (tokens signed with the old one then fail as
  ``bad_signature``) and keeps ``first_seen``.
* ``uninstalled``, ``disabled`` and ``enabled`` only change the status; tokens of an
  uninstalled or disabled tenant are refused as ``inactive_install``.
* Shared secrets are stored encrypted (:class:`~collector.secretbox.SecretBox`).
* The registry keeps the *current* state only. The lifecycle *history* is kept as audit
  events: the caller (the lifecycle route of the middleware) records one event per
  callback through the recorder, with ``direction="lifecycle"`` and ``event_type`` the
  lifecycle name, so it is chained and tamper-evident like every other event.

Lookups are cached per process for ``cache_ttl`` seconds (5 by default), because they sit
on every request's hot path; :meth:`apply_lifecycle` invalidates the entry at once in this
process, and other processes sharing the store see a change within ``cache_ttl``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlmodel import select

from collector.errors import UnknownTenant
from collector.models import Install
from collector.secretbox import SecretBox
from collector.store import Store
from collector.tokens import InstallSecret

LIFECYCLE_EVENTS = ("installed", "uninstalled", "enabled", "disabled")
ACTIVE_STATUSES = ("installed", "enabled")


class InvalidLifecyclePayload(ValueError):
    """Raised when a verified lifecycle body lacks a field the registry needs."""


def normalise_scopes(scopes: str | Iterable[str]) -> str:
    """Descriptor scopes as stored: upper case, space-separated, de-duplicated, in order."""
    items = scopes.replace(",", " ").split() if isinstance(scopes, str) else list(scopes)
    seen: dict[str, None] = {}
    for item in items:
        name = str(item).strip().upper().replace("-", "_")
        if name:
            seen.setdefault(name, None)
    return " ".join(seen)


class InstallRegistry:
    """Installs in the audit store, with a short per-process cache for the verifier."""

    def __init__(self, store: Store, box: SecretBox | None = None, *, cache_ttl: float = 5.0) -> None:
        self.store = store
        self.box = box or SecretBox.for_store(store)
        self.cache_ttl = cache_ttl
        self._cache: dict[str, tuple[float, InstallSecret | None]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ writes

    def apply_lifecycle(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        declared_scopes: str | Iterable[str] = "",
        now: datetime | None = None,
    ) -> Install:
        """Apply one verified lifecycle callback and return the install as it now stands."""
        if event_type not in LIFECYCLE_EVENTS:
            raise InvalidLifecyclePayload(
                f"unknown lifecycle event {event_type!r}; expected one of {', '.join(LIFECYCLE_EVENTS)}"
            )
        client_key = _required(payload, "clientKey")
        now = now or datetime.now(UTC)
        scopes = normalise_scopes(declared_scopes)
        with self.store.session(write=True) as session:
            install = session.get(Install, client_key)
            secret = payload.get("sharedSecret")
            if install is None:
                if event_type != "installed" and not secret:
                    raise UnknownTenant(
                        f"a {event_type} callback arrived for clientKey {client_key!r}, "
                        "which was never installed"
                    )
                install = Install(
                    client_key=client_key,
                    app_key=_required(payload, "key"),
                    base_url=_required(payload, "baseUrl"),
                    shared_secret_enc=self.box.encrypt(_required(payload, "sharedSecret")),
                    first_seen=now,
                    last_seen=now,
                )
            elif event_type == "installed":
                install.shared_secret_enc = self.box.encrypt(_required(payload, "sharedSecret"))
            _update(install, payload, event_type, scopes, now)
            session.add(install)
            session.commit()
            session.refresh(install)
        self.invalidate(client_key)
        return install

    def invalidate(self, client_key: str | None = None) -> None:
        """Forget cached lookups (one clientKey, or all)."""
        with self._lock:
            if client_key is None:
                self._cache.clear()
            else:
                self._cache.pop(client_key, None)

    # ------------------------------------------------------------------ reads

    def install_secret(self, client_key: str) -> InstallSecret | None:
        """The verifier's lookup: the install's secret and whether it is active, or None."""
        now = time.monotonic()
        cached = self._cache.get(client_key)
        if cached is not None and cached[0] > now:
            return cached[1]
        install = self.get(client_key)
        found = None
        if install is not None:
            found = InstallSecret(
                client_key=install.client_key,
                shared_secret=self.box.decrypt(install.shared_secret_enc),
                active=install.status in ACTIVE_STATUSES,
                base_url=install.base_url,
            )
        # Unknown clientKeys are cached too: a flood of tokens naming a made-up tenant must
        # not turn into a flood of queries.
        with self._lock:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[client_key] = (now + self.cache_ttl, found)
        return found

    def get(self, client_key: str) -> Install | None:
        with self.store.session() as session:
            return session.get(Install, client_key)

    def list_installs(self) -> list[Install]:
        with self.store.session() as session:
            return list(session.exec(select(Install).order_by(Install.base_url, Install.client_key)))


def _required(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidLifecyclePayload(f"the lifecycle payload has no {name}")
    return value


def _update(
    install: Install, payload: Mapping[str, Any], event_type: str, scopes: str, now: datetime
) -> None:
    install.status = event_type
    install.last_seen = now
    install.app_key = payload.get("key") or install.app_key
    install.base_url = payload.get("baseUrl") or install.base_url
    install.product = payload.get("productType") or install.product
    install.display_url = payload.get("displayUrl") or install.display_url
    install.oauth_client_id = payload.get("oauthClientId") or install.oauth_client_id
    install.description = payload.get("description") or install.description
    if scopes:
        install.declared_scopes = scopes
