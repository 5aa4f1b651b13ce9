"""The demo's month (collector.simulator.month): a reproducible story with a working rhythm and
its incidents where the summary says they are; the simulated clock."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from collector.simulator.month import (
    DAY,
    HOUR,
    INCIDENTS,
    LEAK,
    LEAK_BEFORE_END,
    LEAK_CALLS,
    SITES,
    SimulatedClock,
    SkewedClock,
    incident_time,
    timeline,
)

END = datetime(2026, 12, 7, 10, 0, tzinfo=UTC).timestamp()  # a Monday


def local(at: float, site: str) -> datetime:
    return datetime.fromtimestamp(at, UTC) + timedelta(hours=SITES[site][0])


@pytest.fixture(scope="module")
def story():
    return timeline(3000, 5, end=END)


def test_the_story_is_reproducible_from_its_seed_and_end():
    assert [s.at for s in timeline(300, 1, end=END).steps] == [s.at for s in timeline(300, 1, end=END).steps]
    assert [s.at for s in timeline(300, 1, end=END).steps] != [s.at for s in timeline(300, 2, end=END).steps]


def test_it_has_exactly_n_requests_in_time_order_within_its_days(story):
    assert story.requests == 3000
    times = [s.at for s in story.steps]
    assert times == sorted(times)
    assert story.end == END and story.start == END - 30 * DAY
    assert all(story.start <= t < story.end for t in times)


def test_every_incident_happens_on_a_working_day_of_its_site_and_inside_the_month(story):
    planned = [i for _, i in story.happened if i is not LEAK]
    assert planned == sorted(INCIDENTS, key=lambda i: incident_time(story.start, i))
    for at, incident in story.happened:
        if incident is LEAK:
            continue
        assert local(at, incident.site).weekday() < 5, incident
        assert story.start < at < story.end


def test_people_work_office_hours_in_their_own_zone(story):
    acme = [s.at for s in story.steps if s.action and s.action.tenant == "acme"
            and s.action.kind not in ("forge_schedule", "bad_token")]
    hours = Counter(local(at, "acme").hour for at in acme)
    office, night = sum(hours[h] for h in range(9, 17)), sum(hours[h] for h in range(0, 6))
    assert office > 10 * night
    days = Counter(local(at, "acme").weekday() for at in acme)
    assert min(days[d] for d in range(5)) > 3 * max(days[5], days[6])


def test_no_site_is_used_before_it_installs_or_long_after_it_uninstalls(story):
    when = {(i.name, i.site): at for at, i in story.happened}
    for step in story.steps:
        if step.action is None:
            continue
        site = step.action.tenant
        assert step.at >= when[("install", site)], step
        if ("uninstall", site) in when:
            assert step.at < when[("uninstall", site)] + DAY, step


def test_the_storm_is_an_hour_of_expired_tokens_on_one_site(story):
    storm = next(at for at, i in story.happened if i.name == "storm")
    expired = [s for s in story.steps
               if s.action and s.action.arg == "expired" and s.action.kind == "bad_token"]
    assert len(expired) >= 100
    assert all(storm <= s.at < storm + HOUR and s.action.tenant == "acme" for s in expired)


def test_changes_that_last_have_an_end(story):
    changes = Counter((s.change[0], s.change[2]) for s in story.steps if s.change)
    for name in ("toggle", "scope_gap", "skew", "storm"):
        assert changes[(name, "start")] == changes[(name, "end")] == 1, name
    assert changes[("install", "start")] == 4 and changes[("install", "end")] == 0


def test_the_leak_is_a_quarter_hour_of_script_calls_on_the_last_day(story):
    [at] = [at for at, i in story.happened if i is LEAK]
    assert at == story.end - LEAK_BEFORE_END
    calls = [s for s in story.steps if s.action and s.action.kind == "leaked_script"]
    assert len(calls) == LEAK_CALLS and {s.action.tenant for s in calls} == {"acme"}
    assert all(at <= s.at < at + 20 * 60 for s in calls)


def test_a_shorter_story_keeps_what_fits():
    short = timeline(200, 1, days=7, end=END)
    assert short.requests == 200
    assert {i.name for _, i in short.happened} < {i.name for i in (*INCIDENTS, LEAK)}
    assert all(short.start <= s.at < short.end for s in short.steps)


def test_the_simulated_clock_runs_from_where_it_is_set_and_never_backwards():
    clock = SimulatedClock(1_000_000.0)
    assert 1_000_000.0 <= clock() < 1_000_001.0
    clock.set(2_000_000.0)
    assert 2_000_000.0 <= clock() < 2_000_001.0
    clock.set(1_500_000.0)  # the past: ignored
    assert clock() >= 2_000_000.0
    skewed = SkewedClock(clock)
    skewed.skew = -420
    assert abs((clock() - skewed()) - 420) < 1
