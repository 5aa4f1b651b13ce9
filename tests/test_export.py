"""Export: exact columns, formula neutralisation, every row streamed, each export recorded."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
from datetime import timedelta

import pytest
from audit_data import HOSTILE_ACCOUNT, HOSTILE_DETAIL, HOSTILE_PATH, HOSTILE_TENANT, build_store

from collector import cli
from collector import events as ev
from collector import query as q
from collector.export import CSV_COLUMNS, FORMULA_PREFIXES, export, neutralise
from collector.store import Store

SPEC_COLUMNS = [
    "event_id", "timestamp", "direction", "tenant_client_key", "tenant_base_url", "auth_method",
    "identity_kind", "account_id", "method", "path", "required_scope", "status", "outcome",
    "reason", "latency_ms",
]


@pytest.fixture
def filled(database_url):
    data = build_store(database_url)
    store = Store.open(database_url)
    yield store, data
    store.close()


def _exports(store):
    rows = q.page(store, q.EventFilter(direction=ev.INTERNAL), columns=(*q.LIST_COLUMNS, "extra"),
                  limit=100).rows
    return [json.loads(r["extra"]) | {"event_id": r["event_id"]} for r in rows
            if r["event_type"] == "export"]


def test_csv_columns_start_exactly_as_specified():
    assert list(CSV_COLUMNS[:15]) == SPEC_COLUMNS
    assert len(set(CSV_COLUMNS)) == len(CSV_COLUMNS)


@pytest.mark.parametrize("prefix", FORMULA_PREFIXES)
def test_neutralise_prefixes_every_formula_start(prefix):
    assert neutralise(prefix + "x") == "'" + prefix + "x"
    assert neutralise("x" + prefix) == "x" + prefix
    assert neutralise("") == ""


def test_csv_export_streams_every_row_neutralised_and_is_recorded(filled):
    store, data = filled
    out = io.BytesIO()
    result = export(store, q.EventFilter(), out, "csv", actor="tester")
    body = out.getvalue()
    assert result.rows == len(data.records)
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert result.bytes == len(body)

    rows = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
    assert rows[0] == list(CSV_COLUMNS)
    assert len(rows) - 1 == len(data.records)
    by_id = {r[0]: dict(zip(CSV_COLUMNS, r, strict=True)) for r in rows[1:]}
    assert set(by_id) == {r.event_id for r in data.records}

    hostile = next(r for r in by_id.values() if r["path"] == HOSTILE_PATH)
    assert hostile["tenant_client_key"] == "'" + HOSTILE_TENANT
    assert hostile["account_id"] == "'" + HOSTILE_ACCOUNT
    assert hostile["detail"] == "'" + HOSTILE_DETAIL  # CR/LF inside survive, quoted
    assert hostile["request_id"] == "'-2+3"
    tabbed = next(r for r in by_id.values() if r["path"].endswith("path-with-tab"))
    assert tabbed["path"] == "'\tpath-with-tab"
    assert tabbed["request_id"] == "'\rcarriage"
    assert tabbed["detail"] == "'\nnewline first"
    # No text cell anywhere starts like a formula.
    numeric = {"status", "latency_ms", "seq"}
    for row in by_id.values():
        for name, cell in row.items():
            if name not in numeric:
                assert not cell.startswith(FORMULA_PREFIXES), (name, cell)
    # ISO-8601 UTC timestamps.
    record = next(r for r in data.records if r.event_id == hostile["event_id"])
    assert hostile["timestamp"] == record.ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    recorded = _exports(store)
    assert len(recorded) == 1
    assert recorded[0]["rows"] == result.rows
    assert recorded[0]["sha256"] == result.sha256
    assert recorded[0]["actor"] == "tester"
    assert recorded[0]["event_id"] == result.audit_event_id


def test_ndjson_keeps_exact_values_and_decodes_json_columns(filled):
    store, data = filled
    out = io.BytesIO()
    flt = q.EventFilter(outcome=ev.REJECTED)
    result = export(store, flt, out, "ndjson", actor="tester")
    lines = out.getvalue().decode().splitlines()
    objs = [json.loads(line) for line in lines]
    assert result.rows == len(objs) == sum(1 for r in data.records if r.outcome == ev.REJECTED)
    assert list(objs[0]) == list(CSV_COLUMNS)
    hostile = next(o for o in objs if o["path"] == HOSTILE_PATH)
    assert hostile["tenant_client_key"] == HOSTILE_TENANT  # not neutralised: for programs
    assert hostile["claims"]["sub"] == "<script>alert(2)</script>"
    assert _exports(store)[0]["filter"] == {"outcome": "rejected"}


def test_export_file_name_says_the_range(filled):
    store, data = filled
    flt = q.EventFilter(since=data.now - timedelta(days=2), until=data.now)
    result = export(store, flt, io.BytesIO(), "csv", record=False)
    assert result.filename_suggestion == (
        f"connect-audit_{flt.since:%Y%m%dT%H%MZ}_{flt.until:%Y%m%dT%H%MZ}.csv"
    )


def test_export_writes_no_secret(filled):
    store, _ = filled
    out = io.BytesIO()
    export(store, q.EventFilter(), out, "ndjson", record=False)
    assert b"do-not-leak" not in out.getvalue()


# --------------------------------------------------------------------------- the CLI


def test_cli_filters_and_file_output(sqlite_url, tmp_path, capsys):
    data = build_store(sqlite_url)
    target = tmp_path / "out.csv"
    code = cli.main(["export", "--database", sqlite_url, "--tenant", "tenant-beta",
                     "--outcome", "denied", "--identity-kind", "app_user", "-o", str(target)])
    assert code == 0
    rows = list(csv.DictReader(target.open(newline="", encoding="utf-8")))
    expected = [r for r in data.records if r.tenant_client_key == "tenant-beta"
                and r.outcome == ev.DENIED and r.identity_kind == ev.APP_USER]
    assert sorted(r["event_id"] for r in rows) == sorted(r.event_id for r in expected)
    assert not (tmp_path / "out.csv.partial").exists()
    err = capsys.readouterr().err
    assert f"exported {len(expected)} events to {target}" in err
    with Store.open(sqlite_url) as store:
        recorded = _exports(store)
    assert recorded[0]["filter"] == {"tenant": "tenant-beta", "outcome": "denied",
                                     "identity_kind": "app_user"}
    assert recorded[0]["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()


def test_cli_streams_to_stdout_with_time_and_status_filters(sqlite_url, capsysbinary):
    data = build_store(sqlite_url, hostile=False)
    since = (data.now - timedelta(hours=30)).isoformat()
    code = cli.main(["export", "--database", sqlite_url, "--format", "ndjson", "--since", since,
                     "--status", "4xx", "--direction", "incoming", "--account",
                     "5b10ac8d82e05b22cc7d0000"])
    assert code == 0
    out = capsysbinary.readouterr().out.decode()
    got = {json.loads(line)["event_id"] for line in out.splitlines()}
    cutoff = data.now - timedelta(hours=30)
    expected = {r.event_id for r in data.records if r.ts >= cutoff and r.status
                and 400 <= r.status < 500 and r.direction == ev.INCOMING
                and r.account_id == "5b10ac8d82e05b22cc7d0000"}
    assert got == expected and got


@pytest.mark.parametrize("platform", [ev.FORGE, ev.CONNECT])
def test_cli_platform_filter_exports_one_platform(sqlite_url, capsysbinary, platform):
    data = build_store(sqlite_url, hostile=False)
    assert cli.main(["export", "--database", sqlite_url, "--format", "ndjson", "--platform", platform]) == 0
    rows = [json.loads(line) for line in capsysbinary.readouterr().out.decode().splitlines()]
    expected = {r.event_id for r in data.records if r.platform == platform}
    assert {r["event_id"] for r in rows} == expected and expected
    assert {r["platform"] for r in rows} == {platform}


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--platform", "mainframe"], "not a platform"),
        (["--since", "last tuesday"], "not a time"),
        (["--status", "forbidden"], "not an HTTP status"),
        (["--outcome", "blocked"], "not an outcome"),
        (["--identity-kind", "robot"], "not an identity kind"),
    ],
)
def test_cli_bad_filter_is_one_sentence_exit_2(sqlite_url, capsys, flags, needle):
    build_store(sqlite_url, events=5, hostile=False, installs=False)
    assert cli.main(["export", "--database", sqlite_url, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("connect-audit: error: ") and needle in err
    assert len(err.splitlines()) == 1


def test_cli_missing_store_is_an_error_not_an_empty_export(tmp_path, capsys):
    assert cli.main(["export", "--database", f"sqlite:///{tmp_path / 'nope.db'}"]) == 2
    assert "no audit store" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_as_a_process_no_traceback(sqlite_url):
    build_store(sqlite_url, events=20, hostile=False, installs=False)
    bad = subprocess.run([sys.executable, "-m", "collector.cli", "export", "--database",
                          sqlite_url, "--until", "soon"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    good = subprocess.run([sys.executable, "-m", "collector.cli", "export", "--database",
                           sqlite_url], capture_output=True, timeout=60)
    assert good.returncode == 0
    assert good.stdout.count(b"\r\n") == 21  # header + 20 rows
