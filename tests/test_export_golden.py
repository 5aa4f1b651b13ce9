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
        conn.execute(sa.insert(q.EVENTS), ROWS)
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
