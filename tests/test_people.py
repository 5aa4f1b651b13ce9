"""collector.people over loopback HTTP: names learnt from the simulated Confluence's user API as
the app user, every lookup recorded, paced and refreshed daily, a 429 backed off, an uninstalled
site skipped; the dashboard's query of names."""

from __future__ import annotations

import pytest

# Helper modules hold asserts too: have pytest explain their failures (registered before import).
pytest.register_assert_rewrite("e2e_support")

from e2e_support import Clock, provision_database, running_stack  # noqa: E402

from collector import query  # noqa: E402
from collector.people import Directory, names  # noqa: E402

pytestmark = pytest.mark.slow  # one stack per module


@pytest.fixture(scope="module")
def clock():
    return Clock()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, clock):
    with provision_database("sqlite", tmp_path_factory.mktemp("people")) as url, \
            running_stack("flask", url, clock=clock) as running:
        for name in ("acme", "umbrella"):
            for index in range(3):  # the app acts as three people on each site
                user = running.user(name, index)
                assert running.sim.context_call(name, "GET", "/api/me", user=user).ok
        hostile = running.sim.tenant("umbrella").users()[3].account_id  # its id holds a comma
        assert running.sim.context_call("umbrella", "GET", "/api/me", user=hostile).ok
        running.audit.flush()
        query.refresh_rollups(running.audit.store)  # the recorder folds lazily: fold now
        yield running


def lookups(stack) -> list[dict]:
    return [e for e in stack.events() if e["direction"] == "outgoing" and "/rest/api/user" in e["path"]
            and not e["path"].endswith("/current")]


def test_names_are_learnt_once_through_the_user_api_as_the_app_user(stack, clock):
    directory = Directory(stack.audit, min_interval=0.0)
    sites = {stack.sim.tenant("acme").client_key, stack.sim.tenant("umbrella").client_key}
    assert set(directory.due()) == sites
    report = directory.refresh()
    assert report.asked == 7 and report.named == 7 and report.unknown == 0 and not report.skipped_sites
    with stack.audit.store.engine.connect() as conn:
        learnt = names(conn)
    acme = stack.sim.tenant("acme")
    assert learnt[(acme.client_key, stack.user("acme", 0))] == "Alice Admin"
    hostile = stack.sim.tenant("umbrella").users()[3]
    assert learnt[(stack.sim.tenant("umbrella").client_key, hostile.account_id)] == hostile.display_name
    calls = lookups(stack)
    # one bulk call per site, and the id with a comma asked on its own
    assert sorted(e["path_template"] for e in calls) == [
        "/wiki/rest/api/user", "/wiki/rest/api/user/bulk", "/wiki/rest/api/user/bulk"]
    assert all((e["auth_method"], e["identity_kind"], e["outcome"]) == ("app_jwt", "app_user", "allowed")
               for e in calls)
    # fresh names are not asked again; a day later they are
    assert directory.due() == {} and directory.refresh().calls == 0
    clock.offset = 25 * 3600
    try:
        assert sum(len(v) for v in directory.due().values()) == 7
    finally:
        clock.offset = 0.0


def test_a_site_that_answers_429_is_left_alone_for_its_retry_after(stack, clock):
    slept: list[float] = []
    directory = Directory(stack.audit, refresh_after=0.0, min_interval=0.5, sleep=slept.append)
    stack.sim.throttled.add("acme")
    try:
        report = directory.refresh()
        acme = stack.sim.tenant("acme").client_key
        assert report.skipped_sites == {acme: "rate limited"} and report.asked == 4  # umbrella still asked
        assert slept and all(0 < s <= 0.5 for s in slept)  # calls are paced
        again = directory.refresh()
        assert again.skipped_sites == {acme: "rate limited"}
        assert [e for e in lookups(stack) if e["status"] == 429 and e["tenant_client_key"] == acme]
        stack.sim.throttled.discard("acme")
        clock.offset = 121  # past Retry-After: 120
        assert acme not in directory.refresh().skipped_sites
    finally:
        stack.sim.throttled.discard("acme")
        clock.offset = 0.0


def test_an_uninstalled_site_is_skipped_not_an_error(stack, clock):
    directory = Directory(stack.audit, refresh_after=0.0, min_interval=0.0)
    assert stack.sim.uninstall("umbrella").ok  # the module's last test: it stays uninstalled
    clock.offset = 300  # after the names the test before learnt (at +121 s)
    try:
        report = directory.refresh()
    finally:
        clock.offset = 0.0
    assert report.skipped_sites == {stack.sim.tenant("umbrella").client_key: "UnknownTenant"}
    assert report.asked == 3
