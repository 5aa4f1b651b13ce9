"""The install registry: which tenants installed the app, with which secret, in which state.

It is fed only by *verified* lifecycle callbacks (the middleware checks the RS256
signature, ``aud`` and that ``iss`` equals the body's ``clientKey`` before calling
:meth:`InstallRegistry.apply_lifecycle`), and read on every incoming request through
:meth:`InstallRegistry.install_secret`, the ``InstallLookup`` the verifier uses.

* An ``installed`` callback for a clientKey that already exists is a reinstall: it
  replaces the shared secret (tokens signed with the old one then fail as
  ``bad_signature``) and keeps ``first_seen``; what it changed (baseUrl, product, whether the
  secret was rotated) is returned as an :class:`InstallChange` for the log. The app's
  :class:`~collector.hosts.HostPolicy` may refuse it.
* ``uninstalled``, ``disabled`` and ``enabled`` only change the status; tokens of an
  uninstalled or disabled tenant are refused as ``inactive_install``. For a clientKey that was
  never installed they create nothing (:class:`~collector.errors.UnknownInstall`).
* Shared secrets are stored encrypted (:class:`~collector.secretbox.SecretBox`).
* Forge installations are learnt from verified invocation tokens and from Forge's
  ``installed``/``upgraded`` lifecycle events (:meth:`InstallRegistry.observe_forge`,
  :meth:`InstallRegistry.apply_forge_lifecycle`) and linked to the Connect install of the same
  site: the Connect callback's ``installationId`` (Connect-on-Forge), the same ``cloudId``, or
  the same site URL. A linked site's Forge events are filed under its Connect clientKey.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlmodel import select

from collector.errors import UnknownInstall
from collector.forge import KnownInstallation, VerifiedInvocation
from collector.hosts import HostPolicy, host_of
from collector.models import ForgeInstallation, Install
from collector.secretbox import SecretBox
from collector.store import Store
from collector.tokens import InstallSecret

LIFECYCLE_EVENTS = ("installed", "uninstalled", "enabled", "disabled")
ACTIVE_STATUSES = ("installed", "enabled")
#: Forge's lifecycle events as a remote receives them (eventType of the body).
FORGE_LIFECYCLE_EVENTS = {"avi:forge:installed:app": "installed", "avi:forge:upgraded:app": "installed",
                          "avi:forge:uninstalled:app": "uninstalled"}
#: A verified invocation refreshes its installation's last_seen at most this often (seconds),
#: so that steady traffic does not turn into one write per request.
FORGE_TOUCH_INTERVAL = 600.0


@dataclass(frozen=True, slots=True)
class InstallChange:
    """What a reinstall (an ``installed`` callback for a known clientKey) changed. Never a secret:
    only whether the shared secret was rotated."""

    client_key: str
    old_base_url: str
    new_base_url: str
    secret_rotated: bool
    old_product: str
    new_product: str

    @property
    def changed(self) -> bool:
        return (self.secret_rotated or self.old_base_url != self.new_base_url
                or self.old_product != self.new_product)

    @property
    def host_moved(self) -> bool:
        return host_of(self.old_base_url) != host_of(self.new_base_url)

    def summary(self) -> str:
        parts = []
        if self.old_base_url != self.new_base_url:
            parts.append(f"baseUrl changed from {self.old_base_url} to {self.new_base_url}"
                         + (" (another host)" if self.host_moved else ""))
        if self.old_product != self.new_product:
            parts.append(f"product changed from {self.old_product} to {self.new_product}")
        parts.append("shared secret rotated" if self.secret_rotated else "shared secret unchanged")
        return "Reinstall: " + "; ".join(parts)

    def as_extra(self) -> dict[str, Any]:
        return {"old_base_url": self.old_base_url, "new_base_url": self.new_base_url,
                "host_moved": self.host_moved, "secret_rotated": self.secret_rotated,
                "old_product": self.old_product, "new_product": self.new_product}


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
        self._forge: dict[str, tuple[float, KnownInstallation | None]] = {}
        self._forge_touched: dict[str, float] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ writes

    def apply_lifecycle(self, event_type: str, payload: Mapping[str, Any], **options: Any) -> Install:
        """Apply one verified lifecycle callback and return the install as it now stands
        (``options`` as for :meth:`apply_lifecycle_change`)."""
        return self.apply_lifecycle_change(event_type, payload, **options)[0]

    def apply_lifecycle_change(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        declared_scopes: str | Iterable[str] = "",
        now: datetime | None = None,
        hosts: HostPolicy | None = None,
    ) -> tuple[Install, InstallChange | None]:
        """Apply one verified lifecycle callback; also return what a reinstall changed, if anything.

        ``hosts`` (the app's :class:`~collector.hosts.HostPolicy`) refuses an install or a
        reinstall from a host it does not allow, and a reinstall that moves an install to
        another host, with :class:`~collector.errors.HostNotAllowed` or
        :class:`~collector.errors.HostMoved`; nothing is written then. A callback other than
        ``installed`` for a clientKey never installed raises
        :class:`~collector.errors.UnknownInstall` and creates nothing.
        """
        if event_type not in LIFECYCLE_EVENTS:
            raise InvalidLifecyclePayload(
                f"unknown lifecycle event {event_type!r}; expected one of {', '.join(LIFECYCLE_EVENTS)}"
            )
        client_key = _required(payload, "clientKey")
        now = now or datetime.now(UTC)
        scopes = normalise_scopes(declared_scopes)
        change = None
        with self.store.session(write=True) as session:
            install = session.get(Install, client_key)
            if install is None:
                if event_type != "installed":
                    raise UnknownInstall(
                        f"a {event_type} callback arrived for clientKey {client_key[:80]!r}, "
                        "which was never installed; nothing was created"
                    )
                base_url = _required(payload, "baseUrl")
                if hosts is not None:
                    hosts.check_install(base_url)
                install = Install(
                    client_key=client_key,
                    app_key=_required(payload, "key"),
                    base_url=base_url,
                    shared_secret_enc=self.box.encrypt(_required(payload, "sharedSecret")),
                    first_seen=now,
                    last_seen=now,
                )
            elif event_type == "installed":
                change = self._reinstall(install, payload, hosts)
            _update(install, payload, event_type, scopes, now)
            session.add(install)
            linked = _link_connect_install(session, install, now)
            session.commit()
            session.refresh(install)
        self.invalidate(client_key)
        for installation_id in linked:
            self.invalidate_forge(installation_id)
        return install, change

    def _reinstall(self, install: Install, payload: Mapping[str, Any],
                   hosts: HostPolicy | None) -> InstallChange | None:
        """Check a reinstall against the policy, take its new secret, and say what it changed."""
        secret = _required(payload, "sharedSecret")
        base_url = payload.get("baseUrl") or install.base_url
        if hosts is not None:
            hosts.check_install(base_url)
            hosts.check_move(install.base_url, base_url)
        rotated = self.box.decrypt(install.shared_secret_enc) != secret
        install.shared_secret_enc = self.box.encrypt(secret)
        change = InstallChange(
            client_key=install.client_key, old_base_url=install.base_url, new_base_url=base_url,
            secret_rotated=rotated, old_product=install.product,
            new_product=payload.get("productType") or install.product,
        )
        return change if change.changed else None

    # ------------------------------------------------------------------ Forge

    def observe_forge(self, inv: VerifiedInvocation, *, now: datetime | None = None) -> KnownInstallation:
        """Learn (or refresh) the installation of a verified invocation; returns what is known.

        Writes only for a new installation, a changed site or app version, or once per
        :data:`FORGE_TOUCH_INTERVAL`; otherwise answers from the cache.
        """
        known = self.forge_installation(inv.installation_id)
        mono = time.monotonic()
        touched = self._forge_touched.get(inv.installation_id, -FORGE_TOUCH_INTERVAL)
        fresh = mono - touched < FORGE_TOUCH_INTERVAL
        if known is not None and fresh and known.cloud_id == inv.cloud_id:
            return known
        now = now or datetime.now(UTC)

        def change(row: ForgeInstallation, session: Any) -> None:
            _update_forge(row, inv, now)
            _link_forge_installation(session, row, now)

        known = _known(self._write_forge(inv, now, change))
        self._forge_touched[inv.installation_id] = mono
        with self._lock:
            self._forge[inv.installation_id] = (mono + self.cache_ttl, known)
        return known

    def apply_forge_lifecycle(
        self, event_type: str, payload: Mapping[str, Any], inv: VerifiedInvocation, *,
        now: datetime | None = None,
    ) -> ForgeInstallation:
        """Apply Forge's installed/upgraded (or uninstalled) event, delivered with ``inv``.

        The installation is the token's (the body's ``id`` is the same installation as a bare
        id); the body adds the app version and, in ``context``, the site ARI.
        """
        status = FORGE_LIFECYCLE_EVENTS.get(event_type)
        if status is None:
            raise InvalidLifecyclePayload(
                f"unknown Forge lifecycle event {event_type!r}; "
                f"expected one of {', '.join(FORGE_LIFECYCLE_EVENTS)}"
            )
        now = now or datetime.now(UTC)

        def change(row: ForgeInstallation, session: Any) -> None:
            _update_forge(row, inv, now)
            app = payload.get("app")
            if isinstance(app, Mapping) and isinstance(app.get("version"), str):
                row.app_version = app["version"][:64]
            row.cloud_id = row.cloud_id or _site_ari_cloud_id(payload.get("context"))
            row.status = status
            _link_forge_installation(session, row, now)

        row = self._write_forge(inv, now, change)
        self.invalidate_forge(inv.installation_id)
        return row

    def _write_forge(self, inv: VerifiedInvocation, now: datetime, change: Any) -> ForgeInstallation:
        """Create or update the invocation's installation row with ``change(row, session)``.

        The first invocations of a new installation often arrive together (a page with several
        macros): on PostgreSQL two of them can both find no row and both insert it. The loser's
        unique violation is no error: the row now exists, so it is read and updated instead.
        """
        from sqlalchemy.exc import IntegrityError

        for attempt in (1, 2):
            try:
                with self.store.session(write=True) as session:
                    row = session.get(ForgeInstallation, inv.installation_id)
                    if row is None:
                        row = ForgeInstallation(installation_id=inv.installation_id, app_id=inv.app_id,
                                                first_seen=now, last_seen=now)
                    change(row, session)
                    session.add(row)
                    session.commit()
                    session.refresh(row)
                    session.expunge(row)
                    return row
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def mark_forge_uninstalled(self, installation_id: str, *, now: datetime | None = None) -> bool:
        """Mark a Forge installation uninstalled; False when it was never seen.

        Forge sends remotes no uninstall event (yet): an app that learns of it otherwise (a
        product API answering 401/404 for the installation, an admin) records it here, and the
        installation's tokens are then refused as ``inactive_install``.
        """
        with self.store.session(write=True) as session:
            row = session.get(ForgeInstallation, installation_id)
            if row is None:
                return False
            row.status, row.last_seen = "uninstalled", now or datetime.now(UTC)
            session.add(row)
            session.commit()
        self.invalidate_forge(installation_id)
        return True

    def forge_installation(self, installation_id: str) -> KnownInstallation | None:
        """The verifier's lookup (:class:`~collector.forge.InstallationLookup`), cached."""
        now = time.monotonic()
        cached = self._forge.get(installation_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        with self.store.session() as session:
            row = session.get(ForgeInstallation, installation_id)
            known = _known(row) if row is not None else None
        with self._lock:
            if len(self._forge) > 100_000:
                self._forge.clear()
            self._forge[installation_id] = (now + self.cache_ttl, known)
        return known

    def invalidate_forge(self, installation_id: str | None = None) -> None:
        with self._lock:
            if installation_id is None:
                self._forge.clear()
                self._forge_touched.clear()
            else:
                self._forge.pop(installation_id, None)
                self._forge_touched.pop(installation_id, None)

    def list_forge_installations(self) -> list[ForgeInstallation]:
        with self.store.session() as session:
            return list(session.exec(select(ForgeInstallation).order_by(ForgeInstallation.first_seen)))

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


def _update_forge(row: ForgeInstallation, inv: VerifiedInvocation, now: datetime) -> None:
    row.app_id = inv.app_id
    row.environment_type, row.environment_id = inv.environment_type, inv.environment_id
    row.cloud_id = inv.cloud_id or row.cloud_id
    row.site_url = inv.site_url or row.site_url
    row.api_base_url = inv.api_base_url
    row.app_version = inv.app_version or row.app_version
    row.last_seen = now
    row.status = "installed"  # Forge invoked it: it is installed (again)


def _known(row: ForgeInstallation) -> KnownInstallation:
    active = row.status == "installed"
    return KnownInstallation(row.installation_id, active, row.cloud_id, row.connect_client_key)


def _site_root(url: str | None) -> str | None:
    """A site's root URL, for comparing a Connect baseUrl (``.../wiki``) with a Forge siteUrl."""
    if not url:
        return None
    root = url.rstrip("/")
    return root.removesuffix("/wiki").lower()


def _site_ari_cloud_id(context: Any) -> str | None:
    """The cloudId of a lifecycle body's ``context``, ``ari:cloud:confluence::site/<cloudId>``."""
    if isinstance(context, str) and "::site/" in context:
        cloud_id = context.rsplit("/", 1)[1]
        return cloud_id[:64] if cloud_id else None
    return None


def _same_site(row: ForgeInstallation, install: Install) -> bool:
    """Whether a Forge installation and a Connect install are one site: the installationId the
    Connect-on-Forge callback named, the same cloudId, or the same site URL."""
    if install.forge_installation_id and install.forge_installation_id == row.installation_id:
        return True
    if row.cloud_id and install.cloud_id == row.cloud_id:
        return True
    site = _site_root(row.site_url)
    return bool(site) and _site_root(install.base_url) == site


def _link_forge_installation(session: Any, row: ForgeInstallation, now: datetime) -> None:
    """Link a Forge installation to the Connect install of its site, if there is one."""
    if row.connect_client_key:
        return
    installs = list(session.exec(select(Install)))
    site = _site_root(row.site_url)
    # In that order: the installationId a callback named, then the cloudId, then the site URL.
    match = (next((i for i in installs if i.forge_installation_id == row.installation_id), None)
             or next((i for i in installs if row.cloud_id and i.cloud_id == row.cloud_id), None)
             or next((i for i in installs if site and _site_root(i.base_url) == site), None))
    if match is not None:
        row.connect_client_key, row.linked_at = match.client_key, now


def _link_connect_install(session: Any, install: Install, now: datetime) -> list[str]:
    """Link the Forge installations already seen for the site of a Connect install just applied
    (each unlinked one is compared with this install only)."""
    linked = []
    for row in session.exec(select(ForgeInstallation).where(ForgeInstallation.connect_client_key.is_(None))):
        if _same_site(row, install):
            row.connect_client_key, row.linked_at = install.client_key, now
            session.add(row)
            linked.append(row.installation_id)
    return linked


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
    for name, column in (("cloudId", "cloud_id"), ("installationId", "forge_installation_id")):
        value = payload.get(name)
        if isinstance(value, str) and 0 < len(value) <= 128:
            setattr(install, column, value)
    if scopes:
        install.declared_scopes = scopes
