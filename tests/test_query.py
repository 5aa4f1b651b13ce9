"""collector.query: filters in SQL, keyset pages, exact aggregates over rollups, time limit."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from audit_data import HOSTILE_PATH, HOSTILE_TENANT, build_store

from collector import events as ev
from collector import query as q
from collector.models import AuditEvent
from collector.store import Store


@pytest.fixture
def filled(database_url):
    data = build_store(database_url)
    store = Store.open(database_url)
    yield store, data
    store.close()


def _expected(data, flt: q.EventFilter):
    def ok(r):
        if flt.since and r.ts < flt.since:
            return False
        if flt.until and r.ts >= flt.until:
            return False
        if flt.tenant and r.tenant_client_key != flt.tenant:
            return False
        if flt.platform and r.platform != flt.platform:
            return False
        if flt.outcome and r.outcome != flt.outcome:
            return False
        if flt.identity_kind and r.identity_kind != flt.identity_kind:
            return False
        if flt.status and not (r.status and str(r.status).startswith(flt.status[0])):
            return False
        return not (flt.account_id and r.account_id != flt.account_id)

    return data.matching(ok)


# --------------------------------------------------------------------------- filter parsing


def test_from_params_parses_times_ages_and_vocabulary():
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    flt = q.EventFilter.from_params(
        {"since": "7d", "until": "2026-03-10", "outcome": "Denied", "method": "get",
         "status": "4xx", "page": "ignored"},
        now=now,
    )
    assert flt.since == now - timedelta(days=7)
    assert flt.until == datetime(2026, 3, 11, tzinfo=UTC)  # a bare date includes that day
    assert (flt.outcome, flt.method, flt.status) == ("denied", "GET", "4xx")
    assert q.EventFilter.from_params(flt.to_params()) == flt


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"since": "yesterday"}, "not a time"),
        ({"status": "40x"}, "not an HTTP status"),
        ({"outcome": "blocked"}, "not an outcome"),
        ({"direction": "sideways"}, "not a direction"),
        ({"since": "2026-02-01", "until": "2026-01-01"}, "time range is empty"),
    ],
)
def test_malformed_filters_are_one_sentence_errors(params, needle):
    with pytest.raises(q.FilterError) as info:
        q.EventFilter.from_params(params)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_naive_datetimes_are_refused():
    with pytest.raises(q.FilterError):
        q.EventFilter(since=datetime(2026, 1, 1))


def test_cursor_round_trip_and_garbage():
    cur = q.Cursor(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), 42)
    assert q.Cursor.decode(cur.encode()) == cur
    with pytest.raises(q.FilterError):
        q.Cursor.decode("not-a-cursor")


# --------------------------------------------------------------------------- pages


@pytest.mark.parametrize("tenant", ["alpha.atlassian.net", "alpha.atlassian.net/wiki",
                                    "https://alpha.atlassian.net/wiki", "tenant-alpha"])
def test_a_tenant_is_found_by_its_site_name_its_base_url_or_its_key(filled, tenant):
    store, data = filled
    flt = q.EventFilter(tenant=tenant)
    found = [r["event_id"] for r in q.page(store, flt, limit=100_000).rows]
    expected = [r.event_id for r in data.records if r.tenant_base_url == "https://alpha.atlassian.net/wiki"]
    assert expected and sorted(found) == sorted(expected)
    assert q.count(store, flt) == len(expected)  # the counts agree with the rows (rollups or not)


def test_keyset_pages_cover_every_match_once_newest_first(filled):
    store, data = filled
    flt = q.EventFilter(tenant="tenant-alpha")
    seen, after = [], None
    while True:
        page = q.page(store, flt, after=after, limit=17)
        seen.extend(page.rows)
        if page.next_cursor is None:
            break
        after = page.next_cursor
    expected = [r for r in data.records if r.tenant_client_key == "tenant-alpha"]
    assert sorted(r["event_id"] for r in seen) == sorted(r.event_id for r in expected)
    keys = [(r["ts"], r["seq"]) for r in seen]
    assert keys == sorted(keys, reverse=True)


def test_filters_select_exactly_the_matching_rows(filled):
    store, data = filled
    since = data.now - timedelta(hours=20)
    for flt in (
        q.EventFilter(since=since, outcome=ev.DENIED),
        q.EventFilter(identity_kind=ev.USER, status="4xx"),
        q.EventFilter(account_id="5b10ac8d82e05b22cc7d0004"),
        q.EventFilter(platform=ev.FORGE),
        q.EventFilter(platform=ev.CONNECT, outcome=ev.DENIED),
        q.EventFilter(since=since, until=data.now - timedelta(hours=2), tenant="tenant-beta"),
    ):
        rows = q.page(store, flt, limit=1000).rows
        assert sorted(r["event_id"] for r in rows) == sorted(r.event_id for r in _expected(data, flt))


def test_text_search_is_case_insensitive_and_treats_wildcards_literally(filled):
    store, _ = filled
    assert [r["path"] for r in q.page(store, q.EventFilter(text="<SCRIPT>")).rows] == [HOSTILE_PATH]
    assert q.page(store, q.EventFilter(path_contains="%")).rows == []
    assert q.page(store, q.EventFilter(text="content_1")).rows == []  # "_" is no wildcard
    assert q.page(store, q.EventFilter(text="content/1")).rows
    assert q.page(store, q.EventFilter(tenant=HOSTILE_TENANT)).rows[0]["path"] == HOSTILE_PATH


def test_iter_rows_streams_every_match_in_chain_order(filled):
    store, data = filled
    rows = list(q.iter_rows(store, q.EventFilter(), columns=("seq", "event_id"), batch=7))
    assert len(rows) == len(data.records)
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)


# --------------------------------------------------------------------------- aggregates


def _ranges(data):
    now = data.now
    return [
        q.EventFilter(),
        q.EventFilter(since=now - timedelta(hours=24)),
        q.EventFilter(since=now - timedelta(hours=50, minutes=13), until=now - timedelta(hours=3)),
        q.EventFilter(since=now - timedelta(minutes=40)),  # within partial hours only
    ]


def test_aggregates_are_exact_before_and_after_folding(filled):
    store, data = filled

    def check():
        for base in _ranges(data):
            for flt in (base, base.replace(outcome=ev.REJECTED), base.replace(tenant="tenant-beta"),
                        base.replace(account_id="5b10ac8d82e05b22cc7d0000"),
                        base.replace(platform=ev.FORGE), base.replace(platform=ev.CONNECT)):
                expected = _expected(data, flt)
                assert q.count(store, flt) == len(expected), flt
                by_reason = dict(q.aggregate(store, flt, ("reason",)))
                for (reason,), n in by_reason.items():
                    assert n == sum(1 for r in expected if r.reason == reason)

    check()  # nothing folded yet: everything comes from the log
    assert q.refresh_rollups(store) >= len(data.records)
    assert q.rollup_lag(store) == 0
    check()  # whole hours from the rollups, edges from the log
    assert q.refresh_rollups(store) == 0  # idempotent


def test_rollups_catch_up_with_new_events_and_stay_exact(filled):
    store, data = filled
    q.refresh_rollups(store)
    from collector.recorder import Recorder

    extra = ev.AuditRecord(direction=ev.INCOMING, outcome=ev.DENIED, status=403, reason=ev.SCOPE,
                           tenant_client_key="tenant-alpha", ts=data.now - timedelta(hours=5))
    with Recorder(store, rollup_interval=None) as rec:
        rec.write_now(extra)
    flt = q.EventFilter(outcome=ev.DENIED)
    expected = len(_expected(data, flt)) + 1
    assert q.rollup_lag(store) == 1
    assert q.count(store, flt) == expected  # the unfolded tail is read from the log
    q.refresh_rollups(store)
    assert q.count(store, flt) == expected


def test_facets_series_and_tables(filled):
    store, data = filled
    q.refresh_rollups(store)
    flt = q.EventFilter(since=data.now - timedelta(days=2))
    expected = _expected(data, flt)
    facets = q.facets(store, flt)
    assert dict(facets["outcome"]) == {
        o: sum(1 for r in expected if r.outcome == o) for o in {r.outcome for r in expected}
    }
    series = q.series(store, flt, "outcome", bucket_s=6 * 3600)
    assert sum(n for _, _, n in series) == len(expected)
    assert all(t.hour % 6 == 0 for t, _, _ in series)

    split = q.denial_split(store, flt)
    # The product's refusals (outgoing) by cause; the app's own answers apart, never both.
    outgoing = [r for r in expected if r.outcome == ev.DENIED and r.direction == ev.OUTGOING]
    assert split["by_reason"][ev.SCOPE] == sum(1 for r in outgoing if r.reason == ev.SCOPE)
    assert sum(split["by_reason"].values()) == len(outgoing)
    assert split["answered_total"] == sum(
        1 for r in expected if r.outcome == ev.DENIED and r.direction != ev.OUTGOING
    ) > 0
    assert all(row["scope"] == "WRITE" for row in split["scope"])

    who = q.who_acted(store, flt)
    assert sum(row["total"] for row in who) == len(expected)
    users = q.acting_users(store, flt.replace(identity_kind=ev.USER))
    assert sum(u["count"] for u in users) == sum(
        1 for r in expected if r.identity_kind == ev.USER and r.account_id
    )
    for u in users:
        assert u["first_seen"] <= u["last_seen"]

    summary = q.summary(store, flt)
    assert summary["events"] == len(expected)
    assert summary["denial_rate"] == pytest.approx(
        sum(1 for r in expected if r.outcome == ev.DENIED) / len(expected)
    )


def test_rollups_forget_purged_hours(sqlite_url):
    data = build_store(sqlite_url, hostile=False, installs=False)
    with Store.open(sqlite_url) as store:
        q.refresh_rollups(store)
        cutoff = data.now - timedelta(days=1)
        with store.engine.begin() as conn:  # what a purge does to the log
            conn.execute(sa.delete(AuditEvent.__table__).where(AuditEvent.__table__.c.ts < cutoff))
        q.refresh_rollups(store)
        kept = sum(1 for r in data.records if r.ts >= cutoff)
        assert q.count(store, q.EventFilter()) == kept
        assert q.count(store, q.EventFilter(since=data.now - timedelta(days=30))) == kept


def test_rollups_forget_purged_days(sqlite_url):
    data = build_store(sqlite_url, events=900, hostile=False, installs=False)
    with Store.open(sqlite_url) as store:
        q.refresh_rollups(store)
        # A cutoff in the middle of a day and of an hour: both rollups must recount it.
        cutoff = _day(data.now) - timedelta(days=2) + timedelta(hours=9, minutes=31)
        with store.engine.begin() as conn:
            conn.execute(sa.delete(AuditEvent.__table__).where(AuditEvent.__table__.c.ts < cutoff))
        q.refresh_rollups(store)
        kept = [r for r in data.records if r.ts >= cutoff]
        assert q.count(store, q.EventFilter()) == len(kept)
        per_day = defaultdict(int)
        for r in kept:
            per_day[_day(r.ts)] += 1
        daily = defaultdict(int)
        for t, _, n in q.series(store, q.EventFilter(), "direction", bucket_s=86400):
            daily[t] += n
        assert daily == per_day


def _day(ts: datetime) -> datetime:
    return ts.replace(hour=0, minute=0, second=0, microsecond=0)


def test_daily_rollup_answers_whole_days_exactly(database_url):
    # 900 events seven minutes apart: about four and a half days, so that ranges hold
    # whole UTC days (read from the daily rollup) between partial ones.
    data = build_store(database_url, events=900, hostile=False, installs=False)
    now = data.now
    ranges = [
        q.EventFilter(),
        q.EventFilter(since=now - timedelta(days=3)),
        q.EventFilter(since=now - timedelta(days=4, hours=1, minutes=13), until=now - timedelta(hours=30)),
        q.EventFilter(since=now - timedelta(days=4), outcome=ev.ALLOWED),
    ]
    with Store.open(database_url) as store:

        def check():
            for flt in ranges:
                expected = _expected(data, flt)
                assert q.count(store, flt) == len(expected), flt
                per_day = defaultdict(int)
                for r in expected:
                    per_day[(_day(r.ts), r.outcome)] += 1
                daily = q.series(store, flt, "outcome", bucket_s=86400)
                assert {(t, o): n for t, o, n in daily} == per_day, flt
                assert sum(row["total"] for row in q.who_acted(store, flt, n=None)) == len(expected)

        check()  # from the log
        q.refresh_rollups(store)
        assert q.rollup_lag(store) == 0
        check()  # whole days from the daily rollup, hours around them from the hourly one

        # Proof that whole days are read from the daily table: inflate it, and the all-time
        # count moves while an hourly series (which cannot use days) does not.
        with store.engine.begin() as conn:
            conn.execute(q.DAILY_ROLLUP.update().values(n=q.DAILY_ROLLUP.c.n + 1000))
        assert q.count(store, q.EventFilter()) > len(data.records)
        hourly = q.series(store, q.EventFilter(), "outcome", bucket_s=3600)
        assert sum(n for _, _, n in hourly) == len(data.records)


def test_bucket_is_a_whole_day_beyond_two_weeks():
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    assert q.bucket_seconds(q.EventFilter(since=now - timedelta(days=1), until=now)) == 3600
    assert q.bucket_seconds(q.EventFilter(since=now - timedelta(days=7), until=now)) == 6 * 3600
    assert q.bucket_seconds(q.EventFilter(since=now - timedelta(days=30), until=now)) == 86400


# --------------------------------------------------------------------------- time limit


def test_statement_time_limit_raises_a_clear_error(database_url):
    with (
        Store.open(database_url) as store,
        pytest.raises(q.QueryTimeout) as info,
        q.reading(store, 0.2) as conn,
    ):
        if conn.dialect.name == "sqlite":
            # A recursive CTE that would count to a billion.
            conn.exec_driver_sql(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                "WHERE x < 1000000000) SELECT count(*) FROM c"
            ).scalar()
        else:
            conn.exec_driver_sql("SELECT pg_sleep(5)").scalar()
    assert "limit" in str(info.value) and "narrow" in str(info.value)


def test_overview_and_capped_counts(filled):
    store, data = filled
    q.refresh_rollups(store)
    flt = q.EventFilter(since=data.now - timedelta(hours=30))
    expected = _expected(data, flt)
    view = q.overview(store, flt, bucket_s=6 * 3600, n=3)
    assert view["events"] == len(expected) == sum(n for _, _, n in view["series"])
    assert view["rates"][ev.DENIED] == pytest.approx(
        sum(1 for r in expected if r.outcome == ev.DENIED) / len(expected))
    top_tenant, top_n = view["top_tenants"][0]
    assert top_n == sum(1 for r in expected if r.tenant_client_key == top_tenant)
    assert view["top_reasons"]
    for reason, count_ in view["top_reasons"]:
        assert count_ == sum(1 for r in expected if r.reason == reason)
    assert len(view["top_endpoints"]) <= 3

    assert q.count_at_most(store, flt, 5) == (len(expected), True)  # rollups: exact
    text = flt.replace(text="/rest/api/content/")
    n = sum(1 for r in expected if r.path and "/rest/api/content/" in r.path)
    assert q.count_at_most(store, text, 10_000) == (n, True)
    assert q.count_at_most(store, text, 7) == (7, False)


def test_reason_filter_accepts_every_stored_reason_and_refuses_others():
    from collector.errors import REJECTION_CODES

    for reason in (*REJECTION_CODES, ev.SCOPE, ev.PERMISSION, ev.TOKEN_EXCHANGE_REFUSED):
        assert q.EventFilter.from_params({"reason": reason}).reason == reason
    with pytest.raises(q.FilterError, match="is not a reason"):
        q.EventFilter.from_params({"reason": "x"})
    with pytest.raises(q.FilterError, match="is not an outcome"):
        q.EventFilter.from_params({"outcome": "nope"})
