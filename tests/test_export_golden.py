"""The export's bytes are pinned: fixed rows, on SQLite and on PostgreSQL, export to exactly the
files under ``tests/vectors/`` (written by the export as it was before it was made faster).

The rows go straight into the table, not through the recorder, so that every value (ids,
times, hashes) is fixed; they cover what the writer must get right byte for byte: NULLs and
empty text, quotes, commas and line breaks inside cells, every formula prefix, non-ASCII
text, JSON columns (valid and not), microseconds and whole seconds, integral and fractional
latencies.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector import chain
from collector import query as q
from collector.export import CSV_COLUMNS, export
from collector.store import Store

VECTORS = Path(__file__).parent / "vectors"
BASE = {
    "direction": "outgoing", "event_type": "call", "platform": "connect", "auth_method": "jwt",
    "identity_kind": "app", "outcome": "allowed",
}
TEXT = (
    "plain", "", "with,comma", 'with "quotes"', "line\nbreak", "cr\rreturn", "crlf\r\nend",
    "=SUM(A1)", "+1", "-2+3", "@cmd", "\ttab first", "\rcr first", "\nlf first",
    "naïve café — ✓ 日本", " leading space", "trailing space ", '"', ",", "'already quoted",
)
LATENCIES = (None, 0.0, 3.0, 12.345, 0.001, 1234567.891, 250.5, 99999.999)


def _row(i: int) -> dict:
    text = TEXT[i % len(TEXT)]
    micro = 0 if i % 3 == 0 else (i * 7919) % 1_000_000
    return BASE | {
        "seq": i + 1,
        "event_id": f"00000000-0000-4000-8000-{i:012d}",
        "ts": datetime(2026, 11, 1 + i % 28, i % 24, (i * 7) % 60, (i * 13) % 60, micro, tzinfo=UTC),
        "tenant_client_key": text if i % 4 == 0 else f"tenant-{i % 5}",
        "tenant_base_url": None if i % 6 == 0 else f"https://site{i % 5}.atlassian.net",
        "product": "confluence",
        "account_id": text if i % 5 == 1 else None,
        "method": "GET" if i % 2 else "POST",
        "path": f"/wiki/rest/api/content/{i}" if i % 3 else text,
        "path_template": "/wiki/rest/api/content/{id}",
        "required_scope": "READ" if i % 2 else None,
        "declared_scopes": "READ WRITE",
        "status": None if i % 7 == 0 else (200, 403, 401, 500)[i % 4],
        "outcome": ("allowed", "denied", "rejected", "error")[i % 4],
        "reason": text if i % 4 == 2 else None,
        "detail": text,
        "latency_ms": LATENCIES[i % len(LATENCIES)],
        "request_id": text if i % 3 == 1 else f"req-{i}",
        "instance_id": "host:1",
        "token_fingerprint": f"{i:064x}"[:16] if i % 2 else None,
        "claims": '{"iss":"' + str(i) + '","sub":"café"}' if i % 2 else ("not json" if i % 5 == 0 else None),
        "extra": '{"n":' + str(i) + ',"t":"a,b"}' if i % 3 == 0 else None,
        "prev_hash": f"{i:064x}",
        "hash": f"{i + 1:064x}",
    }


ROWS = [_row(i) for i in range(len(TEXT) * 3)]


@pytest.fixture
def golden_store(database_url):
    store = Store.open(database_url)
    with store.engine.begin() as conn:
        # as stored (their fixed seq and hashes), through the chain's insert, which makes
        # the months' partitions on PostgreSQL
        chain.insert(conn, [dict(r) for r in ROWS])
    yield store
    store.close()


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_export_bytes_match_the_golden_file(golden_store, fmt):
    out = io.BytesIO()
    result = export(golden_store, q.EventFilter(), out, fmt, record=False, batch=7)
    assert result.rows == len(ROWS)
    expected = (VECTORS / f"export-golden.{fmt}").read_bytes()
    assert out.getvalue() == expected
    if fmt == "csv":  # the header is today's column list, in order
        assert expected.split(b"\r\n", 1)[0].decode() == ",".join(CSV_COLUMNS)


def test_golden_rows_cover_what_the_writer_must_get_right():
    """A guard on the fixture itself: the cases the docstring promises are in the rows."""
    cells = [str(v) for row in ROWS for v in row.values() if v is not None]
    for needle in ("\r\n", "\n", '"', ",", "=", "+", "@", "\t", "é", ""):
        assert any(needle in c for c in cells), needle
    assert {r["latency_ms"] for r in ROWS} >= set(LATENCIES)
    assert any(r["ts"].microsecond == 0 for r in ROWS) and any(r["ts"].microsecond for r in ROWS)


# -- the SQLite fast path (collector.csv_lines) against csv.writer, on arbitrary cells ----------

# Most cells plain (so that the fast path writes most rows), a few hostile ones per row.
_PLAIN_CELL = st.one_of(st.none(), st.text("abcXYZ019 /-_.:é日=+@'", max_size=10))
_HOSTILE_CELL = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.sampled_from([",", '"', "\r", "\n", "\x00", "a\x00b", "=1,2", '{"a":1,"b":"c"}', "\x00,"]),
)
_REAL_CELL = st.one_of(
    st.none(), st.floats(allow_nan=False), st.integers(-10**6, 10**6).map(lambda i: i / 1000),
    st.sampled_from([0.0, -0.0, 1e-05, 0.30000000000000004, 1e15, 1e12, 999999999999.999]),
)
_TEXT_COLUMNS = [c for c in CSV_COLUMNS if c not in {"timestamp", "status", "latency_ms", "seq"}]


@st.composite
def _rows(draw):
    rows = []
    for seq in range(1, draw(st.integers(1, 6)) + 1):
        row = ROWS[0] | {"seq": seq, "event_id": f"e-{seq}", "latency_ms": draw(_REAL_CELL),
                         "status": draw(st.one_of(st.none(), st.integers(-2**40, 2**40)))}
        for name in _TEXT_COLUMNS[1:]:
            row[name] = draw(_PLAIN_CELL)
        for name in draw(st.lists(st.sampled_from(_TEXT_COLUMNS[1:]), max_size=2)):
            row[name] = draw(_HOSTILE_CELL)
        for name in _TEXT_COLUMNS[1:]:  # NOT NULL columns get text
            if row[name] is None and not q.EVENTS.c[name].nullable:
                row[name] = ""
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    store = Store.open(f"sqlite:///{tmp_path_factory.mktemp('fast') / 'audit.db'}")
    yield store
    store.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_rows())
def test_sqlite_lines_are_exactly_what_csv_writer_writes(scratch, rows):
    from collector import export as exp

    with scratch.engine.begin() as conn:
        conn.execute(sa.delete(q.EVENTS))
        conn.execute(sa.insert(q.EVENTS), rows)
    slow, fast = io.BytesIO(), io.BytesIO()
    for out, write in ((slow, "python"), (fast, "sqlite")):
        sink = exp._HashingSink(out)
        if write == "python":
            exp._write_csv(exp._stream_chunks(scratch, q.EventFilter(), neutral=True, batch=4), sink, None)
        else:
            exp._write_csv_lines(exp._stream_lines_sqlite(scratch, q.EventFilter(), batch=4), sink, None)
        sink.finish()
    assert fast.getvalue() == slow.getvalue()
