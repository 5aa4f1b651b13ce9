"""The install registry: lifecycle callbacks, reinstalls, encrypted secrets, the lookup cache."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from collector.errors import ConfigurationError, HostMoved, HostNotAllowed, UnknownInstall
from collector.hosts import HostPolicy
from collector.installs import InstallRegistry, InvalidLifecyclePayload, normalise_scopes
from collector.secretbox import SecretBox
from collector.tokens import InstallSecret

SECRET = "shared-secret-4f1d2a0b9c8e7d6f5a4b3c2d1e0f9a8b"


def payload(client_key: str = "ck-1", secret: str = SECRET, **extra) -> dict:
    body = {
        "key": "com.example.app",
        "clientKey": client_key,
        "baseUrl": "https://acme.atlassian.net/wiki",
        "displayUrl": "https://wiki.acme.example",
        "productType": "confluence",
        "description": "Atlassian Confluence at https://acme.atlassian.net/wiki",
        "sharedSecret": secret,
        "oauthClientId": "oauth-client-1",
        "eventType": "installed",
    }
    body.update(extra)
    return body


# Key files under the test's own directory; `store` (conftest) opens `database_url`.
pytestmark = pytest.mark.usefixtures("isolated_keys")


def test_install_then_lookup(store):
    registry = InstallRegistry(store)
    install = registry.apply_lifecycle("installed", payload(), declared_scopes="read, act_as_user")
    assert install.status == "installed" and install.declared_scopes == "READ ACT_AS_USER"
    assert install.display_url == "https://wiki.acme.example" and install.oauth_client_id == "oauth-client-1"
    found = registry.install_secret("ck-1")
    assert found == InstallSecret("ck-1", SECRET, True, "https://acme.atlassian.net/wiki")
    assert SECRET not in repr(found)
    assert registry.install_secret("someone-else") is None
    assert [i.client_key for i in registry.list_installs()] == ["ck-1"]


def test_the_secret_is_encrypted_at_rest_and_the_key_lives_outside_the_database(store, tmp_path):
    InstallRegistry(store).apply_lifecycle("installed", payload())
    with store.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT shared_secret_enc FROM installs").scalar()
    assert SECRET not in stored and stored.startswith("gAAAA")  # a Fernet token
    key_file = store.key_dir / "audit.key"
    assert key_file.exists() and (key_file.stat().st_mode & 0o777) == 0o600
    if store.dialect == "sqlite":
        raw = b"".join(p.read_bytes() for p in store.key_dir.glob("audit.db*"))
        assert SECRET.encode() not in raw and key_file.read_bytes().strip() not in raw


def test_a_reinstall_replaces_the_secret_and_keeps_first_seen(store):
    registry = InstallRegistry(store)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    registry.apply_lifecycle("installed", payload(), now=t0)
    again = registry.apply_lifecycle(
        "installed", payload(secret="new-secret-value"), now=t0 + timedelta(days=3)
    )
    assert again.first_seen == t0 and again.last_seen == t0 + timedelta(days=3)
    assert registry.install_secret("ck-1").shared_secret == "new-secret-value"


def test_uninstall_disable_enable(store):
    registry = InstallRegistry(store)
    registry.apply_lifecycle("installed", payload())
    for event, active in (("disabled", False), ("enabled", True), ("uninstalled", False)):
        registry.apply_lifecycle(event, payload())
        assert registry.get("ck-1").status == event
        assert registry.install_secret("ck-1").active is active  # invalidated at once


@pytest.mark.parametrize("event", ["uninstalled", "enabled", "disabled"])
def test_a_lifecycle_event_for_a_tenant_never_installed_creates_nothing(store, event):
    # The review's finding: a signed uninstalled for an unknown clientKey created a tenant
    # (status uninstalled, secret from the body). The body here carries a secret on purpose.
    registry = InstallRegistry(store)
    with pytest.raises(UnknownInstall, match="never installed; nothing was created") as caught:
        registry.apply_lifecycle(event, payload("ck-never"))
    assert caught.value.code == "unknown_install" and caught.value.status == 204
    assert registry.get("ck-never") is None and registry.list_installs() == []


def test_a_reinstall_reports_what_it_changed_and_never_the_secret(store):
    registry = InstallRegistry(store)
    registry.apply_lifecycle("installed", payload())
    _, change = registry.apply_lifecycle_change("installed", payload())
    assert change is None  # Atlassian re-sending the same installed body changes nothing
    moved, change = registry.apply_lifecycle_change(
        "installed", payload(secret="rotated-secret", baseUrl="https://acme-corp.atlassian.net/wiki"))
    assert moved.base_url == "https://acme-corp.atlassian.net/wiki"
    assert change.as_extra() == {
        "old_base_url": "https://acme.atlassian.net/wiki", "new_base_url": "https://acme-corp.atlassian.net/wiki",
        "host_moved": True, "secret_rotated": True, "old_product": "confluence", "new_product": "confluence"}
    assert "shared secret rotated" in change.summary() and "rotated-secret" not in repr(change)


def test_the_host_policy_refuses_a_foreign_host_and_a_move_and_writes_nothing(store):
    registry = InstallRegistry(store)
    policy = HostPolicy()
    with pytest.raises(HostNotAllowed, match=r"'evil\.example' is not in the allowed hosts"):
        registry.apply_lifecycle("installed", payload("ck-evil", baseUrl="https://evil.example/wiki"),
                                 hosts=policy)
    assert registry.get("ck-evil") is None
    registry.apply_lifecycle("installed", payload(), hosts=policy)
    # The review's attack: a signed reinstall re-pointing a known install at another host.
    with pytest.raises(HostNotAllowed):
        registry.apply_lifecycle("installed", payload(secret="s2", baseUrl="https://evil.example/wiki"),
                                 hosts=policy)
    with pytest.raises(HostMoved, match=r"from 'acme\.atlassian\.net' to 'other\.atlassian\.net'"):
        registry.apply_lifecycle("installed", payload(secret="s2", baseUrl="https://other.atlassian.net/wiki"),
                                 hosts=policy)
    kept = registry.install_secret("ck-1")
    assert (kept.base_url, kept.shared_secret) == ("https://acme.atlassian.net/wiki", SECRET)
    # Allowed moves (a site rename) go through, and the change says so.
    _, change = registry.apply_lifecycle_change(
        "installed", payload(baseUrl="https://other.atlassian.net/wiki"), hosts=HostPolicy(allow_moves=True))
    assert change.host_moved and not change.secret_rotated


@pytest.mark.parametrize("missing", ["clientKey", "key", "baseUrl", "sharedSecret"])
def test_an_install_payload_missing_a_field(store, missing):
    body = payload()
    del body[missing]
    with pytest.raises(InvalidLifecyclePayload, match=f"no {missing}"):
        InstallRegistry(store).apply_lifecycle("installed", body)


def test_an_unknown_lifecycle_event(store):
    with pytest.raises(InvalidLifecyclePayload, match="unknown lifecycle event"):
        InstallRegistry(store).apply_lifecycle("upgraded", payload())


def test_other_processes_see_a_change_within_the_cache_ttl(store):
    writer = InstallRegistry(store)
    cached = InstallRegistry(store, cache_ttl=3600)
    fresh = InstallRegistry(store, cache_ttl=0)
    writer.apply_lifecycle("installed", payload())
    assert cached.install_secret("ck-1").active and fresh.install_secret("ck-1").active
    writer.apply_lifecycle("disabled", payload())
    assert cached.install_secret("ck-1").active  # still inside its TTL
    assert not fresh.install_secret("ck-1").active
    cached.invalidate("ck-1")
    assert not cached.install_secret("ck-1").active


def test_unknown_tenants_are_cached_too(store):
    registry = InstallRegistry(store, cache_ttl=3600)
    assert registry.install_secret("ck-1") is None
    InstallRegistry(store).apply_lifecycle("installed", payload())
    assert registry.install_secret("ck-1") is None  # negative answer cached
    registry.invalidate()
    assert registry.install_secret("ck-1") is not None


def test_a_wrong_key_is_a_clear_configuration_error(store, monkeypatch):
    InstallRegistry(store).apply_lifecycle("installed", payload())
    from cryptography.fernet import Fernet

    monkeypatch.setenv("CONNECT_AUDIT_SECRET_KEY", Fernet.generate_key().decode())
    with pytest.raises(
        ConfigurationError, match="cannot be decrypted with the key from CONNECT_AUDIT_SECRET_KEY"
    ):
        InstallRegistry(store).install_secret("ck-1")


def test_secret_keys_from_the_environment_and_rotation(store, monkeypatch):
    from cryptography.fernet import Fernet

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("CONNECT_AUDIT_SECRET_KEY", old)
    InstallRegistry(store).apply_lifecycle("installed", payload())
    assert not (store.key_dir / "audit.key").exists()
    monkeypatch.setenv("CONNECT_AUDIT_SECRET_KEY", f"{new},{old}")  # new first: encrypts; old still decrypts
    assert InstallRegistry(store).install_secret("ck-1").shared_secret == SECRET


def test_an_invalid_environment_key(store, monkeypatch):
    monkeypatch.setenv("CONNECT_AUDIT_SECRET_KEY", "not-a-fernet-key")
    with pytest.raises(ConfigurationError, match="is not a Fernet key"):
        SecretBox.for_store(store)


def test_the_key_file_is_shared_by_concurrent_creators(tmp_path):
    import threading

    from collector import keyfiles

    made = []
    barrier = threading.Barrier(6)

    def create():
        barrier.wait()
        made.append(
            keyfiles.load_or_create(tmp_path / "k" / "audit.key", lambda: os.urandom(16).hex().encode())
        )

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 1 and [p.name for p in (tmp_path / "k").iterdir()] == ["audit.key"]


def test_normalise_scopes():
    assert normalise_scopes("read write, READ act-as-user") == "READ WRITE ACT_AS_USER"
    assert normalise_scopes(["Read", "admin"]) == "READ ADMIN"
    assert normalise_scopes("") == ""


# --------------------------------------------------------------------------- Forge installations


def _invocation(installation: str, *, cloud_id: str = "cloud-1", site: str | None = "https://acme.atlassian.net"):
    """A verified invocation as the Forge verifier hands it over (built from a real FIT)."""
    from forgekit import KID, NOW, MemoryKeys, fit_claims, forge_key, rs256

    from collector.forge import ForgeVerifier

    claims = fit_claims({"app.installationId": installation, "context.cloudId": cloud_id,
                         "context.siteUrl": site})
    keys = MemoryKeys({KID: forge_key().public_pem})
    verifier = ForgeVerifier([claims["aud"]], keys=keys, clock=lambda: NOW)
    return verifier.verify(rs256({"alg": "RS256", "typ": "JWT", "kid": KID}, claims, forge_key().private_pem))


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_the_first_invocations_of_an_installation_may_arrive_together(backend, request):
    """Eight threads see a new installation at once: no error, one row (on PostgreSQL the losers'
    unique violations are read back as the row that now exists)."""
    import threading
    import uuid

    from collector.store import Store

    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    with Store.open(url) as store:
        for _ in range(10):  # a race: ten new installations, so that it is met, not hoped for
            installation = f"ari:cloud:ecosystem::installation/{uuid.uuid4()}"
            inv = _invocation(installation)
            registries = [InstallRegistry(store) for _ in range(8)]
            barrier, failures, seen = threading.Barrier(8), [], []

            def first_sight(registry: InstallRegistry, inv=inv, barrier=barrier, failures=failures,
                            seen=seen) -> None:
                barrier.wait()
                try:
                    seen.append(registry.observe_forge(inv))
                except Exception as exc:  # noqa: BLE001 - collected and asserted below
                    failures.append(exc)

            threads = [threading.Thread(target=first_sight, args=(r,)) for r in registries]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not failures and len(seen) == 8
            rows = InstallRegistry(store).list_forge_installations()
            rows = [r for r in rows if r.installation_id == installation]
            assert len(rows) == 1 and rows[0].cloud_id == "cloud-1"


def test_a_forge_installation_links_to_the_connect_install_of_its_site(store):
    registry = InstallRegistry(store)
    registry.apply_lifecycle("installed", payload("ck-acme", baseUrl="https://acme.atlassian.net/wiki"))
    linked = registry.observe_forge(_invocation("ari:cloud:ecosystem::installation/a-1"))
    alone = registry.observe_forge(_invocation("ari:cloud:ecosystem::installation/b-2", cloud_id="cloud-2",
                                               site="https://other.atlassian.net"))
    assert (linked.connect_client_key, linked.tenant_key) == ("ck-acme", "ck-acme")
    assert (alone.connect_client_key, alone.tenant_key) == (None, "ari:cloud:ecosystem::installation/b-2")
    # A Connect install that arrives after the Forge one links it then.
    registry.apply_lifecycle("installed", payload("ck-other", baseUrl="https://other.atlassian.net/wiki"))
    later = registry.forge_installation("ari:cloud:ecosystem::installation/b-2")
    assert later.connect_client_key == "ck-other"
    assert registry.mark_forge_uninstalled("ari:cloud:ecosystem::installation/a-1")
    assert not registry.forge_installation("ari:cloud:ecosystem::installation/a-1").active
    assert not registry.mark_forge_uninstalled("ari:cloud:ecosystem::installation/never")
