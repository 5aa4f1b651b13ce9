"""Importing Atlassian's audit logs (collector.imports and its two readers) from the simulated
host over loopback HTTP: paging, a cursor that resumes after a kill, a 429's Retry-After waited
out, a 401 reported as such, duplicates ignored, the verbatim record and its SHA-256, and the
import credentials nowhere but in their ciphertext."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from collector import chain, imports
from collector.simulator import ConfluenceSimulator
from collector.simulator.audit import Entry
from collector.store import Store

ROOT = Path(__file__).resolve().parent.parent


class FakeTime:
    """The host's clock and the importer's sleep in one: a wait moves the host's time on."""

    def __init__(self) -> None:
        self.now = time.time()
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def sim(clock):
    with ConfluenceSimulator(clock=clock) as host:
        yield host


def _plant(
    sim: ConfluenceSimulator, n: int, *, site: str = "acme", start: float | None = None, calls: bool = True
) -> list[Entry]:
    """``n`` entries in Atlassian's record, a second apart, ending a minute ago."""
    start = start if start is not None else sim.clock() - 60 - n
    out = []
    for i in range(n):
        entry = Entry(
            id=f"ev-{site}-{i:05d}",
            at=start + i,
            site=site,
            action="third_party_app_confluence_api_request" if calls else "app_installed",
            actor_id="557058:app",
            actor_name="The app",
            auth_type="connect-token" if calls else None,
            method="GET" if calls else None,
            path=f"/wiki/rest/api/content/{i}" if calls else None,
            status=200 if calls else None,
            summary=f"entry {i}",
            extra={"app": "connect-audit-example"},
        )
        sim.record.add(entry)
        out.append(entry)
    return out


def _org_source(store, sim, *, key: str | None = None, name: str = "org", since: float | None = None) -> None:
    imports.add_source(
        store,
        name,
        imports.ORG_EVENTS,
        sim.record.org_id,
        key or sim.record.org_key,
        api_url=sim.url,
        since=datetime.fromtimestamp(since or sim.clock() - 7 * 86400, UTC),
    )


def _confluence_source(store, sim, *, site: str = "acme", token: str | None = None) -> None:
    email, admin = sim.record.admin_credentials()
    imports.add_source(
        store,
        f"{site}-audit",
        imports.CONFLUENCE_AUDIT,
        sim.tenant(site).site_url,
        token or admin,
        username=email,
        since=datetime.fromtimestamp(sim.clock() - 7 * 86400, UTC),
    )


def _imported(store) -> list[dict]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM audit_events WHERE direction = 'imported' ORDER BY seq"))
        return [dict(r._mapping) for r in rows]


def _run(store, name: str, clock: FakeTime, **options) -> imports.ImportRun:
    with imports.Importer(
        store,
        name,
        sleep=clock.sleep,
        clock=lambda: datetime.fromtimestamp(clock(), UTC),
        **{"min_interval": 0.0, **options},
    ) as importer:
        return importer.run()


# --------------------------------------------------------------------------- organization events


def test_org_events_are_read_page_by_page_and_kept_verbatim_with_their_sha256(store, sim, clock):
    _plant(sim, 450)
    sim.record.rate_limit = None
    _org_source(store, sim)
    run = _run(store, "org", clock)
    assert run.error is None
    assert (run.imported, run.duplicates) == (450, 0)
    assert run.pages == 4  # 200 + 200 + 50, and the empty page that says the stream is read
    rows = _imported(store)
    assert len(rows) == 450
    first = rows[0]
    assert (first["platform"], first["event_type"], first["method"]) == ("atlassian", "org_events", "GET")
    assert first["path"] == "/wiki/rest/api/content/0" and first["status"] == 200
    assert first["identity_kind"] == "app_user"
    extra = json.loads(first["extra"])
    record = extra["record"]
    assert (
        record["id"] == "ev-acme-00000"
        and record["attributes"]["action"] == "third_party_app_confluence_api_request"
    )
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert extra["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert extra["api_request"] is True and extra["source_id"] == "ev-acme-00000"
    assert first["tenant_client_key"] is None  # no install on this store: the site is kept as named
    assert first["tenant_base_url"] == sim.tenant("acme").site_url
    assert chain.verify(store).ok


def test_a_second_run_adds_nothing_and_a_new_entry_is_read_from_the_cursor(store, sim, clock):
    _plant(sim, 30)
    sim.record.rate_limit = None
    _org_source(store, sim)
    assert _run(store, "org", clock).imported == 30
    again = _run(store, "org", clock)
    assert (again.imported, again.duplicates) == (0, 0)  # the cursor is past them
    _plant(sim, 1, site="globex", start=clock() - 5)
    later = _run(store, "org", clock)
    assert later.imported == 1
    # Reading from the start again (a lost cursor) meets every record and adds none of them.
    with store.write_transaction() as conn:
        conn.execute(sa.text("UPDATE import_sources SET cursor = NULL"))
    redo = _run(store, "org", clock)
    assert (redo.imported, redo.duplicates) == (0, 31)
    assert len(_imported(store)) == 31


def test_a_429_is_waited_out_for_as_long_as_retry_after_says(store, sim, clock):
    _plant(sim, 450)
    sim.record.rate_limit, sim.record.rate_window = 2, 30.0
    _org_source(store, sim)
    run = _run(store, "org", clock)
    assert run.error is None and run.imported == 450
    waits = [s for s in clock.sleeps if s >= 1]
    assert waits, "the importer never waited: no 429 was met"
    assert all(abs(w - 30) <= 1 for w in waits)  # the whole window each time, as Retry-After said
    assert len(waits) == 2  # 5 requests (event actions + 4 pages), 2 per window


def test_the_documented_pace_spaces_requests_six_seconds_apart(store, sim, clock):
    _plant(sim, 250)
    sim.record.rate_limit = None
    _org_source(store, sim)
    with imports.Importer(
        store, "org", sleep=clock.sleep, clock=lambda: datetime.fromtimestamp(clock(), UTC), monotonic=clock
    ) as importer:
        assert importer.run().imported == 250
    # Four requests (event actions, two pages, the empty one): three gaps of the documented 10 a minute.
    assert clock.sleeps == [pytest.approx(6.0)] * 3


def test_a_refused_key_is_reported_as_a_401_and_nothing_is_imported(store, database_url, sim, clock, capsys):
    from collector.cli import main

    _plant(sim, 5)
    _org_source(store, sim, key="not-the-key-" + "x" * 20)
    run = _run(store, "org", clock)
    assert run.status == 401 and run.imported == 0
    assert "HTTP 401" in run.error and "credential was refused" in run.error
    state = imports.source_states(store, "org")[0]
    assert state.last_error == run.error and state.failing_since is not None
    assert state.holder is None  # the lease is given back
    assert _imported(store) == []
    code = main(["import", "run", "--database", database_url, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["status"] == 401 and report["imported"] == 0


def test_a_source_held_by_another_importer_is_left_alone(store, sim, clock):
    _plant(sim, 3)
    _org_source(store, sim)
    with store.write_transaction() as conn:
        conn.execute(
            sa.text("UPDATE import_sources SET holder = 'elsewhere', lease_until = :t"),
            {"t": datetime.now(UTC) + timedelta(minutes=5)},
        )
    run = _run(store, "org", clock)
    assert run.error == "another importer holds this source's lease" and run.imported == 0


# --------------------------------------------------------------------------- the Confluence audit log


def test_the_confluence_audit_log_is_paged_by_start_and_read_again_without_duplicates(store, sim, clock):
    _plant(sim, 7, calls=False)  # lifecycle records: the audit log holds administrative acts only
    _plant(sim, 4)  # API calls are not in it
    sim.record.confluence_page_cap = 3
    _confluence_source(store, sim)
    run = _run(store, "acme-audit", clock)
    assert run.error is None and (run.imported, run.pages) == (7, 3)
    rows = _imported(store)
    assert {r["event_type"] for r in rows} == {"confluence_audit"}
    record = json.loads(rows[0]["extra"])["record"]
    assert record["category"] == "Apps" and "creationDate" in record and "author" in record
    again = _run(store, "acme-audit", clock)  # the next window overlaps this one: read, not added
    assert again.imported == 0
    assert len(_imported(store)) == 7


def test_a_wrong_admin_token_is_a_401(store, sim, clock):
    _plant(sim, 2, calls=False)
    _confluence_source(store, sim, token="wrong-token-" + "y" * 20)
    run = _run(store, "acme-audit", clock)
    assert run.status == 401 and "HTTP 401" in run.error and run.imported == 0


# --------------------------------------------------------------------------- a kill


KILLED_IMPORT = """
import sys, time
from datetime import UTC, datetime
from collector import imports
from collector.store import Store
store = Store.open(sys.argv[1])
with imports.Importer(store, "org", min_interval=float(sys.argv[2])) as importer:
    print(importer.run().as_dict(), flush=True)
"""


@pytest.mark.slow
def test_an_import_killed_mid_run_resumes_at_its_last_page_and_loses_nothing(database_url, tmp_path):
    """SIGKILL while pages are being read: every page committed stays with its cursor, the
    next run reads on from there, and the store holds each record exactly once."""
    with ConfluenceSimulator() as sim:
        sim.record.rate_limit = None
        _plant(sim, 1200)
        store = Store.open(database_url)
        _org_source(store, sim)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_IMPORT, database_url, "0.5"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_imported(store)) < 400:
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        partial = len(_imported(store))
        assert 400 <= partial < 1200, partial
        assert partial % 200 == 0  # whole pages only: a page and its cursor commit together
        state = imports.source_states(store, "org")[0]
        assert state.imported == partial
        with imports.Importer(store, "org", min_interval=0, holder=None) as importer:
            # The dead importer's lease runs out; until then the source is held.
            assert importer.run().error == "another importer holds this source's lease"
        with store.write_transaction() as conn:
            conn.execute(
                sa.text("UPDATE import_sources SET lease_until = :t"),
                {"t": datetime.now(UTC) - timedelta(seconds=1)},
            )
        with imports.Importer(store, "org", min_interval=0) as importer:
            rest = importer.run()
        assert rest.error is None and rest.duplicates == 0
        assert partial + rest.imported == 1200
        rows = _imported(store)
        assert len(rows) == len({r["event_id"] for r in rows}) == 1200
        assert chain.verify(store).ok
        store.close()


# --------------------------------------------------------------------------- secrets


def test_the_import_credentials_are_stored_encrypted_and_never_shown(store, database_url, sim, clock, capsys):
    from collector.cli import main

    _plant(sim, 20)
    _plant(sim, 3, calls=False)
    sim.record.rate_limit = None
    _org_source(store, sim)
    _confluence_source(store, sim)
    _run(store, "org", clock)
    _run(store, "acme-audit", clock)
    _org_source(store, sim, key="refused-" + "z" * 24, name="bad")
    _run(store, "bad", clock)
    assert main(["import", "list", "--database", database_url, "--json"]) == 0
    assert main(["import", "list", "--database", database_url]) == 0
    main(["import", "run", "bad", "--database", database_url])
    shown = capsys.readouterr()
    needles = {sim.record.org_key, sim.record.admin_token, "refused-" + "z" * 24}
    for needle in needles:
        assert needle not in shown.out and needle not in shown.err
    with store.engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            for row in conn.execute(sa.text(f"SELECT * FROM {table}")):  # noqa: S608 (table names from the schema)
                text = " ".join(str(v) for v in row)
                for needle in needles:
                    assert needle not in text, f"a credential is in {table}"
    if database_url.startswith("sqlite"):
        for path in Path(database_url.split("///", 1)[1]).parent.glob("*"):
            if path.is_file():
                data = path.read_bytes()
                for needle in needles:
                    assert needle.encode() not in data, f"a credential is in {path.name}"
    # The ciphertext decrypts to the credential: it is the credential's only copy.
    from collector.secretbox import SecretBox

    with store.engine.connect() as conn:
        enc = conn.execute(sa.text("SELECT credential_enc FROM import_sources WHERE name = 'org'")).scalar()
    assert SecretBox.for_store(store).decrypt(enc) == sim.record.org_key


def test_a_credential_looking_field_in_a_record_is_left_out_and_named(store, sim, clock):
    raw = {
        "id": "e1",
        "attributes": {
            "time": "2026-12-01T10:00:00Z",
            "action": "x",
            "actor": {"id": "a", "apiKey": "k-" + "q" * 30, "auth": {"tokenId": "t1"}},
        },
    }
    source = imports.SourceConfig(
        name="org", kind="org_events", target="o", api_url="http://x", username=None, credential="c"
    )
    from collector import org_events

    with store.engine.connect() as conn:
        rec = org_events.to_record(raw, source, imports.SiteResolver(conn), {"api_actions": frozenset()})
    assert rec.extra["removed"] == ["attributes.actor.apiKey"]
    assert "apiKey" not in json.dumps(rec.extra["record"])
    assert rec.extra["record"]["attributes"]["actor"]["auth"] == {"tokenId": "t1"}  # an id, not a secret


@pytest.mark.parametrize(
    "args, message",
    [
        (["--kind", "org_events", "--target", "o r g"], "is not an organization"),
        (["--kind", "confluence_audit", "--target", "acme"], "is not a site URL"),
        (
            [
                "--kind",
                "confluence_audit",
                "--target",
                "https://acme.atlassian.net",
                "--api-url",
                "https://user:pw@acme.atlassian.net",
            ],
            "must not hold credentials",
        ),
    ],
)
def test_bad_sources_are_refused_with_one_sentence(database_url, args, message, capsys, monkeypatch):
    from collector.cli import main

    monkeypatch.setenv("CONNECT_AUDIT_IMPORT_CREDENTIAL", "a-token")
    assert main(["import", "add", "s1", "--database", database_url, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_unknown_source_is_named(store, database_url, capsys):
    from collector.cli import main

    assert main(["import", "run", "nope", "--database", database_url]) == 2
    assert "no import source named 'nope'" in capsys.readouterr().err
