"""ConnectAudit: the one object an app developer constructs.

It owns everything the collector needs in a running app: the audit store, the install
registry fed by signed lifecycle callbacks, the store-backed replay guard, the token
verifier, the recorder (a bounded queue in front of the store) and the scope map. The app
then wraps itself with :meth:`ConnectAudit.wsgi_middleware` or
:meth:`ConnectAudit.asgi_middleware` and calls the product through
:meth:`ConnectAudit.client`::

    audit = ConnectAudit(app_key="com.example.app", base_url="https://app.example.com",
                         descriptor="atlassian-connect.json")
    app.wsgi_app = audit.wsgi_middleware(app.wsgi_app, {
        "POST /installed": "lifecycle", "POST /uninstalled": "lifecycle",
        "GET /atlassian-connect.json": "public", "/api/{rest:path}": "context",
    })
    ...
    pages = audit.client(ctx.client_key).as_app().get("/rest/api/content").json()

The descriptor is where the declared scopes come from (they explain 403s), and it names
the lifecycle and webhook URLs, which the middleware uses to label events.

A Forge (or Connect-on-Forge) app also gives ``forge_app_ids`` (its app ARI from
``manifest.yml``), optionally ``forge_jwks`` (default: Forge's production JWKS) and
``forge_scopes`` (the manifest's ``permissions.scopes``, which explain a Forge call's 403), then
declares its Forge remote routes (``"POST /forge/events": "forge:event"``) and calls the
product with :meth:`ConnectAudit.forge_client`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector import config, events
from collector.errors import ConfigurationError
from collector.events import AuditRecord
from collector.routes import RoutePolicy

Routes = RoutePolicy | Mapping[str, str] | Iterable | None

#: How long install metadata is reused before the store is asked again (seconds).
TENANT_CACHE_TTL = 5.0


@dataclass(frozen=True)
class TenantInfo:
    """An install as the middleware and client need it: never the shared secret."""

    client_key: str
    base_url: str
    product: str
    status: str
    oauth_client_id: str | None
    declared_scopes: str

    @property
    def active(self) -> bool:
        return self.status in ("installed", "enabled")


class ConnectAudit:
    """The collector, configured for one Connect app.

    ``app_key`` and ``base_url`` are the descriptor's ``key`` and ``baseUrl`` (the lifecycle
    tokens' audience). ``descriptor`` is the descriptor as a dict or a JSON file path.
    ``database`` is a store URL (default: ``CONNECT_AUDIT_DATABASE_URL``, else
    ``data/audit.db``). ``install_keys`` is where lifecycle public keys come from: a
    directory or a base URL (default: ``CONNECT_AUDIT_INSTALL_KEYS``, else Atlassian's CDN).
    ``authorization_server`` is where user-impersonation assertions are exchanged (default:
    Atlassian's). ``clock`` returns epoch seconds (tests inject one). ``recorder_options``
    go to :class:`~collector.recorder.Recorder` (``queue_size``, ``when_full``,
    ``block_timeout``, ``spill_dir``, ...); ``durability`` to the store. ``http_adapter`` is
    the ``requests`` transport adapter for outgoing calls (injectable for tests; by default
    one pooled adapter shared by every session, so calls reuse connections).

    ``allowed_hosts`` (default: ``CONNECT_AUDIT_ALLOWED_HOSTS``, else Atlassian's site hosts) are
    the host patterns a site may install from; ``allow_host_moves`` (default:
    ``CONNECT_AUDIT_ALLOW_HOST_MOVES``, else no) lets a reinstall move an install to another host
    (see :mod:`collector.hosts`). ``trusted_proxies`` (default: ``CONNECT_AUDIT_TRUSTED_PROXIES``,
    else none) are the addresses whose ``X-Request-Id`` and ``traceparent`` are kept, as
    ``upstream_request_id`` and ``traceparent`` beside the collector's own request id.
    """

    def __init__(
        self,
        *,
        app_key: str,
        base_url: str,
        descriptor: Mapping[str, Any] | str | Path | None = None,
        database: str | None = None,
        install_keys: str | None = None,
        authorization_server: str | None = None,
        clock: Callable[[], float] = time.time,
        instance_id: str | None = None,
        durability: str = "full",
        recorder_options: Mapping[str, Any] | None = None,
        leeway: int = 30,
        max_token_lifetime: int = 3600,
        http_adapter: Any = None,
        forge_app_ids: Iterable[str] | str | None = None,
        forge_jwks: str | None = None,
        forge_scopes: Iterable[str] | str | None = None,
        allowed_hosts: Iterable[str] | str | None = None,
        allow_host_moves: bool | None = None,
        trusted_proxies: Iterable[str] | str | None = None,
    ) -> None:
        from collector.forward import from_env as forward_from_env
        from collector.hosts import HostPolicy
        from collector.installs import InstallRegistry
        from collector.keys import is_local_source, key_source
        from collector.proxies import TrustedProxies
        from collector.recorder import Recorder
        from collector.replay import StoreReplayGuard
        from collector.scopes import ScopeMap, normalise_scopes
        from collector.signing import DEFAULT_AUTHORIZATION_SERVER
        from collector.store import Store
        from collector.tokens import TokenVerifier, VerifyPolicy

        if not app_key:
            raise ConfigurationError("app_key is required: the descriptor's 'key'")
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"base_url must be the app's http(s) baseUrl, not {base_url!r}")
        self.app_key = app_key
        self.base_url = base_url.rstrip("/")
        self.descriptor = _load_descriptor(descriptor)
        self.declared_scopes = tuple(sorted(normalise_scopes(self.descriptor.get("scopes"))))
        self._lifecycle_paths = _lifecycle_paths(self.descriptor)
        self._webhook_paths = frozenset(_webhook_paths(self.descriptor))
        self.clock = clock
        self.authorization_server = (authorization_server or DEFAULT_AUTHORIZATION_SERVER).rstrip("/")
        self.scope_map = ScopeMap.default()
        keys = key_source(install_keys)  # a bad setting fails here, before the store opens
        # Install keys read from this machine are a simulator's: its sites are loopback http.
        self.host_policy = HostPolicy.configure(allowed_hosts, allow_host_moves,
                                                loopback=is_local_source(keys))
        self.trusted_proxies = TrustedProxies.configure(trusted_proxies)
        self.forge_app_ids = _names(forge_app_ids)
        self.forge_scopes = _names(forge_scopes)
        forge_keys = _forge_keys(forge_jwks) if self.forge_app_ids or forge_jwks else None
        self.store = Store.open(config.database_url(database), durability=durability)
        try:
            self.registry = InstallRegistry(self.store)
            self.replay = StoreReplayGuard(self.store, clock=clock)
            self.verifier = TokenVerifier(
                self.registry, keys=keys, replay=self.replay, clock=clock,
                policy=VerifyPolicy(leeway=leeway, max_lifetime=max_token_lifetime),
                app_base_url=self.base_url,
            )
            self.forge_verifier = _forge_verifier(self, forge_keys, leeway, max_token_lifetime)
            options = dict(recorder_options or {})
            options.setdefault("forward", forward_from_env())  # CONNECT_AUDIT_FORWARD
            self.recorder = Recorder(self.store, instance_id=instance_id, **options)
            self.recorder.start()
        except BaseException:
            self.store.close()
            raise
        self.instance_id = self.recorder.instance_id
        from requests.adapters import HTTPAdapter

        from collector.client import AccessTokenCache

        # One pooled transport for every outgoing session, so calls reuse connections.
        self._owned_adapter = None if http_adapter is not None else HTTPAdapter(pool_connections=16,
                                                                                pool_maxsize=64)
        self.http_adapter = http_adapter if http_adapter is not None else self._owned_adapter

        self.access_tokens = AccessTokenCache()
        self._people = None
        self._tenants: dict[str, tuple[float, TenantInfo | None]] = {}
        self._tenant_lock = threading.Lock()

    # ------------------------------------------------------------------ wiring

    def wsgi_middleware(self, app: Callable, routes: Routes = None):
        """Wrap a WSGI app (Flask: ``app.wsgi_app = audit.wsgi_middleware(app.wsgi_app, routes)``)."""
        from collector.middleware import WsgiMiddleware

        return WsgiMiddleware(app, self, routes)

    def asgi_middleware(self, app: Callable, routes: Routes = None):
        """Wrap an ASGI app (FastAPI/Starlette: ``app.add_middleware(...)`` or wrap the app)."""
        from collector.middleware import AsgiMiddleware

        return AsgiMiddleware(app, self, routes)

    def client(self, client_key: str, *, adapter: Any = None):
        """A :class:`~collector.client.TenantClient` for the tenant ``client_key``.

        Raises :class:`~collector.errors.UnknownTenant` when the tenant has no active install.
        """
        from collector.client import TenantClient

        return TenantClient(self, client_key, adapter=adapter)

    def forge_client(self, source: Any, *, adapter: Any = None):
        """A :class:`~collector.client.ForgeClient` for a verified Forge invocation: the handler's
        :class:`~collector.middleware.ConnectContext` (or its ``forge``). Raises ValueError when
        the request was not a verified Forge invocation."""
        from collector.client import ForgeClient

        invocation = getattr(source, "forge", source)
        if invocation is None or not hasattr(invocation, "api_base_url"):
            raise ValueError("forge_client needs the context of a verified Forge invocation")
        return ForgeClient(self, invocation, adapter=adapter)

    def collaborators(self):
        """What the middleware's gate works with, each by name (a middleware ``Collaborators``)."""
        from collector.middleware import Collaborators

        return Collaborators(
            verifier=self.verifier, forge_verifier=self.forge_verifier, registry=self.registry,
            replay=self.replay, tenant=self.tenant, apply_lifecycle=self.apply_lifecycle, record=self.record,
            app_url=self.app_url, lifecycle_event_for=self.lifecycle_event_for,
            is_webhook_path=self.is_webhook_path, clock=self.clock, instance_id=self.instance_id,
            forge_scopes=self.forge_scopes, trusted_proxies=self.trusted_proxies,
        )

    # ------------------------------------------------------------------ used by middleware and client

    def app_url(self, path: str, query: str = "") -> str:
        """The URL the host called: the app's baseUrl, the path under it, the query."""
        return f"{self.base_url}{path}" + (f"?{query}" if query else "")

    def is_webhook_path(self, path: str) -> bool:
        return path in self._webhook_paths

    def lifecycle_event_for(self, path: str) -> str | None:
        """The lifecycle event the descriptor sends to ``path`` (None if it names no such URL)."""
        return self._lifecycle_paths.get(path)

    def apply_lifecycle(self, event_type: str, payload: Mapping[str, Any]) -> Any:
        """Store a verified lifecycle callback in the install registry under the host policy.

        Returns what a reinstall changed (an :class:`~collector.installs.InstallChange`) or None;
        raises a :class:`~collector.errors.LifecycleRefused` when the policy refuses it."""
        try:
            scopes = self.declared_scopes
            return self.registry.apply_lifecycle_change(
                event_type, dict(payload), declared_scopes=scopes, hosts=self.host_policy,
                now=events.at(self.clock()))[1]
        finally:
            with self._tenant_lock:
                self._tenants.pop(payload.get("clientKey"), None)

    def tenant(self, client_key: str | None) -> TenantInfo | None:
        """What the registry knows of an install (no secret), cached for a few seconds
        because the middleware asks on every request; a lifecycle callback handled here
        refreshes it at once."""
        if not client_key:
            return None
        now = time.monotonic()
        with self._tenant_lock:
            cached = self._tenants.get(client_key)
        if cached is not None and cached[0] > now:
            return cached[1]
        install = self.registry.get(client_key)
        info = None if install is None else TenantInfo(
            client_key=install.client_key, base_url=install.base_url.rstrip("/"), product=install.product,
            status=install.status, oauth_client_id=install.oauth_client_id,
            declared_scopes=install.declared_scopes or " ".join(self.declared_scopes),
        )
        with self._tenant_lock:
            if len(self._tenants) > 10_000:
                self._tenants.clear()
            self._tenants[client_key] = (now + TENANT_CACHE_TTL, info)
        return info

    def record(self, rec: AuditRecord) -> None:
        """Queue one event (no I/O on the caller's thread)."""
        if rec.instance_id is None:
            rec.instance_id = self.instance_id
        self.recorder.record(rec)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event recorded so far is durable (tests, shutdown hooks)."""
        return self.recorder.flush(timeout)

    @property
    def people(self):
        """The :class:`~collector.people.Directory` of the people this app acted as: their names,
        learnt from the product as the app user (``audit.people.start()`` refreshes them in the
        background; ``audit.people.refresh()`` once)."""
        if self._people is None:
            from collector.people import Directory

            self._people = Directory(self)
        return self._people

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop learning names, drain the recorder (nothing is dropped), then release the store."""
        if self._people is not None:
            self._people.stop()
        try:
            self.recorder.close()
        finally:
            if self._owned_adapter is not None:
                self._owned_adapter.close()
            self.store.close()

    def __enter__(self) -> ConnectAudit:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ConnectAudit(app_key={self.app_key!r}, base_url={self.base_url!r}, store={self.store.url!r})"


def _names(value: Iterable[str] | str | None) -> tuple[str, ...]:
    """App ids or scopes given as one string (space or comma separated) or a list."""
    if value is None:
        return ()
    items = value.replace(",", " ").split() if isinstance(value, str) else [str(v).strip() for v in value]
    return tuple(dict.fromkeys(item for item in items if item))


def _forge_keys(spec: str | None) -> Any:
    from collector.jwks import jwks_source

    return jwks_source(spec)


def _forge_verifier(audit: ConnectAudit, keys: Any, leeway: int, max_lifetime: int) -> Any:
    """The FIT verifier; with no Forge app configured it refuses every FIT as wrong_audience."""
    from collector.forge import ForgeVerifier
    from collector.jwks import is_local
    from collector.tokens import VerifyPolicy

    # Keys from this machine are a simulator's: its apiBaseUrls are loopback http too.
    loopback = keys is not None and is_local(keys)
    return ForgeVerifier(
        audit.forge_app_ids, keys=keys, installations=audit.registry, clock=audit.clock,
        policy=VerifyPolicy(leeway=leeway, max_lifetime=max_lifetime),
        http_api_hosts=("127.0.0.1", "localhost") if loopback else (),
    )


def _load_descriptor(descriptor: Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    if descriptor is None:
        return {}
    if isinstance(descriptor, Mapping):
        return dict(descriptor)
    path = Path(descriptor)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read the app descriptor {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigurationError(f"the app descriptor {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigurationError(f"the app descriptor {path} is not a JSON object")
    return data


def _lifecycle_paths(descriptor: Mapping[str, Any]) -> dict[str, str]:
    lifecycle = descriptor.get("lifecycle") or {}
    return {url.split("?", 1)[0]: event for event, url in lifecycle.items()
            if isinstance(url, str) and url.startswith("/")}


def _webhook_paths(descriptor: Mapping[str, Any]) -> Iterable[str]:
    for hook in (descriptor.get("modules") or {}).get("webhooks") or []:
        url = hook.get("url") if isinstance(hook, Mapping) else None
        if isinstance(url, str) and url.startswith("/"):
            yield url.split("?", 1)[0]
