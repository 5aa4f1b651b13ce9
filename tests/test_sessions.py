"""The dashboard's session store: ids hashed at rest, idle and absolute expiry, and every account
change ending the account's sessions. A real accounts file, a fake clock."""

from __future__ import annotations

import json

import pytest

from dashboard import auth, edge, sessions

PASSWORD = "a long enough password"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def accounts(tmp_path, monkeypatch):
    monkeypatch.setenv(auth.ADMIN_PASSWORD_ENV, "the admin password")
    store = auth.Accounts(tmp_path / auth.ACCOUNTS_FILE)
    store.ensure_admin(out=open("/dev/null", "w"))  # noqa: SIM115
    store.set_password("carol", PASSWORD, auth.AUDITOR)
    store.set_password("dave", PASSWORD, auth.AUDITOR)
    return store


def _store(accounts, clock, **options):
    return accounts.session_store(idle=options.get("idle", 1800.0), lifetime=options.get("lifetime", 43200.0),
                                  clock=clock)


def test_an_id_has_256_bits_and_only_its_hash_is_kept(accounts):
    store = _store(accounts, Clock())
    ids = {store.start("carol", auth.AUDITOR) for _ in range(20)}
    assert len(ids) == 20 and all(len(i) >= 43 for i in ids)  # 32 random bytes, url-safe base64
    text = accounts.path.read_text()
    assert not any(i in text for i in ids)
    kept = json.loads(text)["sessions"]
    assert set(kept) == {sessions.digest(i) for i in ids}
    assert all(set(r) == {"account", "role", "via", "created", "seen"} for r in kept.values())


def test_a_session_is_good_until_idle_then_ends_once(accounts):
    clock = Clock()
    store = _store(accounts, clock)
    sid = store.start("carol", auth.AUDITOR)
    clock.now += 1799
    assert store.check(sid).session.account == "carol"
    clock.now += 1799  # each check is an action: idle counts from the last one
    assert store.check(sid).session is not None
    clock.now += 1800
    ended = store.check(sid)
    assert (ended.session, ended.ended, ended.was.account) == (None, sessions.IDLE, "carol")
    assert store.check(sid) == sessions.Check(None, sessions.UNKNOWN)  # recorded once, then gone


def test_activity_does_not_stretch_the_absolute_lifetime(accounts):
    clock = Clock()
    store = _store(accounts, clock, idle=600.0, lifetime=3600.0)
    sid = store.start("carol", auth.AUDITOR)
    for _ in range(11):
        clock.now += 300
        assert store.check(sid).session is not None
    clock.now += 300  # 3600 s after sign-in
    assert store.check(sid).ended == sessions.LIFETIME


def test_the_last_action_is_written_at_most_once_a_minute(accounts):
    clock = Clock()
    store = _store(accounts, clock)
    sid = store.start("carol", auth.AUDITOR)
    before = accounts.path.stat().st_mtime_ns
    clock.now += 30
    store.check(sid)
    assert accounts.path.stat().st_mtime_ns == before
    clock.now += 31
    store.check(sid)
    assert json.loads(accounts.path.read_text())["sessions"][sessions.digest(sid)]["seen"] == clock.now


def test_sign_out_ends_only_that_session(accounts):
    store = _store(accounts, Clock())
    first, second = store.start("carol", auth.AUDITOR), store.start("carol", auth.AUDITOR)
    assert store.end(first).account == "carol"
    assert store.check(first).ended == sessions.UNKNOWN
    assert store.check(second).session is not None
    assert store.end(first) is None and store.end(None) is None


@pytest.mark.parametrize("change", ["password", "role", "removal", "terminal reset"])
def test_an_account_change_ends_its_sessions_at_once(accounts, change):
    store = _store(accounts, Clock())
    carol, dave = store.start("carol", auth.AUDITOR), store.start("dave", auth.AUDITOR)
    if change == "password":
        accounts.set_password("carol", "another long password")
    elif change == "role":
        accounts.set_password("carol", PASSWORD, auth.ADMIN)
    elif change == "removal":
        accounts.remove("carol")
    else:
        import os

        os.environ[auth.ACCOUNTS_FILE_ENV] = str(accounts.path)
        try:
            auth.reset("carol", out=open("/dev/null", "w"))  # noqa: SIM115
        finally:
            del os.environ[auth.ACCOUNTS_FILE_ENV]
    assert store.check(carol).session is None
    assert store.check(dave).session.account == "dave"


def test_a_new_admin_password_from_the_environment_ends_admin_sessions(accounts, monkeypatch):
    store = _store(accounts, Clock())
    admin = store.start(auth.ADMIN, auth.ADMIN)
    accounts.ensure_admin(out=open("/dev/null", "w"))  # noqa: SIM115 - same password: nothing changes
    assert store.check(admin).session is not None
    monkeypatch.setenv(auth.ADMIN_PASSWORD_ENV, "a different admin password")
    accounts.ensure_admin(out=open("/dev/null", "w"))  # noqa: SIM115
    assert store.check(admin).session is None


def test_a_role_that_no_longer_matches_the_file_ends_the_session(accounts):
    # The file edited by hand (or by another process): the role is checked on every action too.
    store = _store(accounts, Clock())
    sid = store.start("carol", auth.AUDITOR)
    document = json.loads(accounts.path.read_text())
    document["accounts"]["carol"]["role"] = auth.ADMIN
    accounts.path.write_text(json.dumps(document))
    assert store.check(sid).ended == sessions.ACCOUNT_CHANGED


def test_single_sign_on_sessions_expire_and_end_on_a_role_change(accounts):
    clock = Clock()
    store = _store(accounts, clock)
    first = store.track("cookie-value", "ann@example.com", auth.AUDITOR)
    assert first.started and first.session.via == "oidc"
    assert not store.track("cookie-value", "ann@example.com", auth.AUDITOR).started
    assert "cookie-value" not in accounts.path.read_text()
    changed = store.track("cookie-value", "ann@example.com", auth.ADMIN)
    assert changed.ended == sessions.ACCOUNT_CHANGED
    store.track("other-cookie", "bob@example.com", auth.ADMIN)
    clock.now += 1800
    assert store.track("other-cookie", "bob@example.com", auth.ADMIN).ended == sessions.IDLE


def test_ended_sessions_are_dropped_at_the_next_sign_in(accounts):
    clock = Clock()
    store = _store(accounts, clock)
    for _ in range(5):
        store.start("carol", auth.AUDITOR)
    clock.now += 3600
    store.start("dave", auth.AUDITOR)
    assert [s.account for s in store.active()] == ["dave"]
    assert len(json.loads(accounts.path.read_text())["sessions"]) == 1


def test_timeouts_come_from_the_environment(monkeypatch):
    monkeypatch.delenv(sessions.IDLE_ENV, raising=False)
    monkeypatch.delenv(sessions.LIFETIME_ENV, raising=False)
    assert (sessions.idle_timeout(), sessions.session_lifetime()) == (1800.0, 43200.0)
    monkeypatch.setenv(sessions.IDLE_ENV, "0.5")
    monkeypatch.setenv(sessions.LIFETIME_ENV, "2")
    assert (sessions.idle_timeout(), sessions.session_lifetime()) == (30.0, 7200.0)
    for bad in ("0", "-5", "ten", "nan"):
        monkeypatch.setenv(sessions.IDLE_ENV, bad)
        with pytest.raises(sessions.SessionSettingError, match=sessions.IDLE_ENV):
            sessions.idle_timeout()


@pytest.mark.parametrize(("given", "kept"), [
    ("/activity?range=7d&outcome=rejected", "/activity?range=7d&outcome=rejected"),
    ("/", "/"),
    ("", "/"),
    (None, "/"),
    ("//evil.example/x", "/"),
    ("/\\evil.example", "/"),
    ("https://evil.example/", "/"),
    ("javascript:alert(1)", "/"),
    ("/-/sign-in?next=/x", "/"),
    ("/denials\r\nSet-Cookie: x=1", "/"),
])
def test_the_destination_after_sign_in_stays_on_this_site(given, kept):
    assert edge.safe_next(given) == kept

