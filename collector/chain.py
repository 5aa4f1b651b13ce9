"""Tamper evidence: the hash chain over audit events and signed checkpoints.

Every stored event carries ``prev_hash`` (the hash of the event before it, or
:data:`GENESIS` for the first) and ``hash``: SHA-256 over the event's canonical
serialisation, which includes ``prev_hash``. Editing, deleting, inserting or reordering
an event therefore breaks a link that :func:`verify` finds.

A chain alone cannot show that its *tail* was cut off, or that someone rewrote the whole
chain from some point on. Checkpoints close that gap: every N events (and when a
recorder closes) the chain head ``(seq, hash, count)`` is signed with HMAC-SHA256 using a
key that is *not* in the database (``CONNECT_AUDIT_CHECKPOINT_KEY`` or the file
``checkpoint.key`` in the store's key directory). A checkpoint vouching for a ``seq`` that
no longer exists means the tail was truncated; one whose hash differs from the stored event
means the chain was rewritten.

Retention keeps this verifiable: a purge removes a prefix of the chain and appends a
``purge`` event whose ``extra`` records the anchor it removed up to (``anchor_seq`` and
``anchor_hash``); the oldest surviving event must link to such an anchor.

Canonical form (a public contract; changing it invalidates every stored hash): a JSON
object of every stored column except ``seq`` and ``hash``, keys sorted, explicit nulls,
compact separators, ASCII only; ``ts`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC,
microseconds), ``latency_ms`` as a float, ``status`` as an integer, ``claims`` and
``extra`` as their stored canonical-JSON strings.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import math
import operator
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from json.encoder import c_make_encoder, encode_basestring_ascii
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from collector import config, keyfiles, partitions
from collector.errors import ConfigurationError
from collector.events import AuditRecord, new_event_id
from collector.models import AuditEvent, Checkpoint

if TYPE_CHECKING:
    from collector.store import Store

GENESIS = "GENESIS"
CHECKPOINT_KEY_FILE = "checkpoint.key"
PURGE_EVENT = "purge"

EVENTS: sa.Table = AuditEvent.__table__
CHECKPOINTS: sa.Table = Checkpoint.__table__
#: Columns covered by the hash, in canonical (sorted) order.
HASHED_COLUMNS: tuple[str, ...] = tuple(
    sorted(c.name for c in EVENTS.columns if c.name not in ("seq", "hash"))
)
#: Record fields copied as text (everything but ts, status, latency_ms, claims, extra).
_TEXT_FIELDS: tuple[str, ...] = tuple(
    name
    for name in HASHED_COLUMNS
    if name not in ("ts", "status", "latency_ms", "claims", "extra", "prev_hash")
)

_REQUIRED_TEXT = tuple(n for n in _TEXT_FIELDS if not EVENTS.c[n].nullable)
_text_fields_of = operator.attrgetter(*_TEXT_FIELDS)

# Built once: json.dumps() with non-default options builds a new encoder on every call,
# which costs more than the encoding itself on the writer's hot loop.
if c_make_encoder is not None:
    _iterencode = c_make_encoder(None, None, encode_basestring_ascii, None, ":", ",", False, False, False)

    def _encode_row(doc: dict[str, Any]) -> str:
        return "".join(_iterencode(doc, 0))
else:  # pragma: no cover - CPython always has the C accelerator
    _encode_row = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode

_json_compact_slow = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True, default=str
).encode

if c_make_encoder is not None:
    # No circular-reference markers: claims and extra are flat summaries built by this
    # package; a value the fast encoder refuses (a cycle, NaN) goes to the checked encoder.
    _iterencode_sorted = c_make_encoder(
        None, str, encode_basestring_ascii, None, ":", ",", True, False, False
    )

    def _json_compact(value: Any) -> str:
        try:
            return "".join(_iterencode_sorted(value, 0))
        except (ValueError, RecursionError):
            return _json_compact_slow(value)
else:  # pragma: no cover
    _json_compact = _json_compact_slow


# ---------------------------------------------------------------------- rows


def ts_text(ts: datetime) -> str:
    """The canonical text of a timestamp: UTC, microseconds, ``Z``."""
    if ts.tzinfo is None:
        raise ValueError("naive datetime in an audit event; use datetime.now(UTC)")
    if ts.utcoffset():
        ts = ts.astimezone(UTC)
    return ts.isoformat(timespec="microseconds")[:26] + "Z"


def _clean_text(value: Any) -> str | None:
    """Text exactly as both backends store it: no NUL (PostgreSQL refuses it), valid UTF-8."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    return value


def _plain(values: tuple[Any, ...]) -> bool:
    """True when every value is None or ASCII text without NUL (the usual case, checked in C)."""
    try:
        joined = "".join(filter(None, values))
    except TypeError:
        return False
    return joined.isascii() and "\x00" not in joined


def _latency(value: float | None) -> float | None:
    """A latency as stored: None for no number, and -0.0 as 0.0 (SQLite reads a stored -0.0
    back as 0.0, which would rehash differently and read as tampering)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value) + 0.0


def canonical_json(value: Any) -> str | None:
    """The stored form of ``claims`` / ``extra``: compact, sorted, ASCII JSON (or None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return _clean_text(value)
    return _json_compact(value)


def event_row(rec: AuditRecord, instance_id: str | None = None) -> dict[str, Any]:
    """The stored values of ``rec`` (``prev_hash`` still None; no ``seq`` or ``hash``).

    Values are normalised here, once, to exactly what the database gives back, so that
    the hash computed now equals the hash recomputed by :func:`verify` later.
    """
    values = _text_fields_of(rec)
    if not _plain(values):
        values = tuple(map(_clean_text, values))
    row: dict[str, Any] = dict(zip(_TEXT_FIELDS, values, strict=True))
    if row["instance_id"] is None:
        row["instance_id"] = instance_id
    for name in _REQUIRED_TEXT:
        if row[name] is None:
            # A record built with an explicit None must still be stored, not dropped by a
            # NOT NULL violation in the background writer.
            row[name] = new_event_id() if name == "event_id" else "unknown"
    ts = rec.ts
    if ts.tzinfo is None:
        raise ValueError("AuditRecord.ts must be timezone-aware (UTC)")
    row["ts"] = ts.astimezone(UTC) if ts.utcoffset() else ts
    row["status"] = None if rec.status is None else int(rec.status)
    latency = rec.latency_ms
    row["latency_ms"] = _latency(latency)
    row["claims"] = canonical_json(rec.claims)
    row["extra"] = canonical_json(rec.extra)
    row["prev_hash"] = None
    return row


def canonical(row: Mapping[str, Any]) -> bytes:
    """The bytes that are hashed for one event row (see the module docstring)."""
    doc = {name: row[name] for name in HASHED_COLUMNS}
    doc["ts"] = ts_text(doc["ts"])
    latency = doc["latency_ms"]
    if latency is not None and latency.__class__ is not float:
        doc["latency_ms"] = float(latency)
    return _encode_row(doc).encode()


def event_hash(row: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(row)).hexdigest()


# ---------------------------------------------------------------------- appending


def head(conn: sa.Connection) -> tuple[int, str]:
    """``(seq, hash)`` of the newest event, or ``(0, GENESIS)`` for an empty chain.

    Call it inside :meth:`Store.write_transaction`, which holds the chain lock, so that
    nobody appends between reading the head and linking to it.
    """
    found = conn.execute(
        sa.select(EVENTS.c.seq, EVENTS.c.hash).order_by(EVENTS.c.seq.desc()).limit(1)
    ).first()
    return (found[0], found[1]) if found else (0, GENESIS)


def link(rows: Iterable[dict[str, Any]], after: tuple[int, str]) -> tuple[int, str]:
    """Give each row its ``seq``, ``prev_hash`` and ``hash`` after ``after``; return the new head.

    Sequence numbers are assigned here, contiguously, rather than by the database: a gap
    in ``seq`` is then itself evidence of a deletion (database sequences leave gaps on
    every rollback).
    """
    seq, prev = after
    sha256 = hashlib.sha256
    for row in rows:
        seq += 1
        row["seq"] = seq
        row["prev_hash"] = prev
        prev = row["hash"] = sha256(canonical(row)).hexdigest()
    return seq, prev


_INSERT_COLUMNS = tuple(c.name for c in EVENTS.columns)
_TS_INDEX = _INSERT_COLUMNS.index("ts")
_insert_values_of = operator.itemgetter(*_INSERT_COLUMNS)
_SQLITE_INSERT = "INSERT INTO {} ({}) VALUES ({})".format(  # noqa: S608  (fixed identifiers only)
    EVENTS.name, ", ".join(_INSERT_COLUMNS), ", ".join("?" * len(_INSERT_COLUMNS))
)


def _sqlite_values(row: dict[str, Any]) -> tuple[Any, ...]:
    values = list(_insert_values_of(row))
    # The exact text SQLAlchemy's SQLite DATETIME stores (so reads and filters agree),
    # formatted here once instead of by a bind processor per row.
    values[_TS_INDEX] = values[_TS_INDEX].isoformat(" ", "microseconds")[:26]
    return tuple(values)


def insert(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Insert linked rows in one round trip (SQLAlchemy Core; no ORM objects)."""
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(_SQLITE_INSERT, [_sqlite_values(r) for r in rows])
    else:
        partitions.cover(conn, (r["ts"] for r in rows))
        with _refused_rows_refresh(conn):
            conn.execute(EVENTS.insert(), rows)


@contextlib.contextmanager
def _refused_rows_refresh(conn: sa.Connection) -> Iterator[None]:
    """An insert PostgreSQL refused may name a month another process's retention dropped
    while this one still remembered it: forget the months, so that the retry creates it."""
    try:
        yield
    except sa.exc.IntegrityError:
        partitions.forget(conn.engine)
        raise


def append(conn: sa.Connection, rows: list[dict[str, Any]]) -> tuple[int, str]:
    """Link ``rows`` after the current head and insert them; returns the new head."""
    new_head = link(rows, head(conn))
    insert(conn, rows)
    return new_head


# ---------------------------------------------------------------------- prepared rows
# The recorder's fast path. Everything about an event's hash that does not depend on the
# previous event (the canonical text around ``prev_hash``, the SHA-256 state of the part
# before it, the SQLite parameter tuple) is computed *outside* the chain lock, on the
# recorder's preparing thread, while the writing thread is inside SQLite (which releases
# the GIL). Under the lock only the last step remains: one hash update per event.

_PREV = HASHED_COLUMNS.index("prev_hash")
_BEFORE_PREV = HASHED_COLUMNS[:_PREV]
_AFTER_PREV = HASHED_COLUMNS[_PREV + 1 :]


_PREPARED_COLUMNS = (*_BEFORE_PREV, "prev_hash", *_AFTER_PREV, "seq", "hash")
_P_TS = len(_BEFORE_PREV) + 1 + _AFTER_PREV.index("ts")
#: Rows per multi-row INSERT on SQLite. The sqlite3 module releases the GIL around every
#: statement step, and executemany steps once per row: each row then costs a GIL hand-off
#: with the application's request threads (measured: a third more writer CPU per event and
#: twice the backlog under load). One statement per 32 rows steps once per chunk; 32 rows
#: of 29 columns stay under the smallest variable limit SQLite has shipped with (999).
_SQLITE_CHUNK = 32
_SQLITE_ROW = "(" + ", ".join("?" * len(_PREPARED_COLUMNS)) + ")"
#: The statement for k rows, for k = 32, 16, 8, 4, 2, 1: a batch is cut into full chunks
#: and its remainder's binary digits, so that a handful of statements is ever compiled.
_SQLITE_INSERT_ROWS = {
    k: "INSERT INTO {} ({}) VALUES {}".format(  # noqa: S608  (fixed identifiers only)
        EVENTS.name, ", ".join(_PREPARED_COLUMNS), ", ".join([_SQLITE_ROW] * k)
    )
    for k in (_SQLITE_CHUNK >> i for i in range(_SQLITE_CHUNK.bit_length()))
}
# psycopg's executemany pipelines the rows; measured faster than a multi-row VALUES statement.
_PG_COPY = "COPY {} ({}) FROM STDIN".format(EVENTS.name, ", ".join(_PREPARED_COLUMNS))


class Prepared:
    """An event with its hash precomputed up to ``prev_hash`` and its parameters laid out.

    ``head`` and ``tail`` are the stored values of the columns sorting before and after
    ``prev_hash`` (``ts`` in the database's form), so that linking under the lock is one
    hash update and one tuple per event.
    """

    __slots__ = ("hash", "head", "prefix", "prev_hash", "seq", "suffix", "tail", "ts")

    def __init__(self, head: tuple, tail: tuple, ts: datetime, prefix: Any, suffix: bytes) -> None:
        self.head = head
        self.tail = tail
        self.ts = ts
        self.prefix = prefix  # hashlib sha256 state over the canonical text before prev_hash
        self.suffix = suffix
        self.seq: int | None = None
        self.prev_hash: str | None = None
        self.hash: str | None = None

    @property
    def row(self) -> dict[str, Any]:
        """The event as a row dict (built on demand: only spills and duplicates need it)."""
        row = dict(zip(_BEFORE_PREV, self.head, strict=True))
        row.update(zip(_AFTER_PREV, self.tail, strict=True))
        row["ts"], row["prev_hash"] = self.ts, self.prev_hash
        if self.seq is not None:
            row["seq"], row["hash"] = self.seq, self.hash
        return row


_B_TEXT = tuple(n for n in _BEFORE_PREV if n in _TEXT_FIELDS)
_A_TEXT = tuple(n for n in _AFTER_PREV if n in _TEXT_FIELDS)
_b_text_of = operator.attrgetter(*_B_TEXT)
_a_text_of = operator.attrgetter(*_A_TEXT)
_before_of = operator.attrgetter(*_BEFORE_PREV)
_after_of = operator.attrgetter(*_AFTER_PREV)

assert set(_REQUIRED_TEXT) <= set(_B_TEXT)  # all NOT NULL text columns sort before prev_hash


_B_INDEX = {name: i for i, name in enumerate(_BEFORE_PREV)}
_A_INDEX = {name: i for i, name in enumerate(_AFTER_PREV)}
_B_TEXT_AT = tuple(_B_INDEX[name] for name in _B_TEXT)
_A_TEXT_AT = tuple(_A_INDEX[name] for name in _A_TEXT)
_B_REQUIRED_AT = tuple((_B_INDEX[name], name) for name in _REQUIRED_TEXT)
_B_INSTANCE, _B_LATENCY = _B_INDEX["instance_id"], _B_INDEX["latency_ms"]
_B_CLAIMS, _B_EXTRA = _B_INDEX["claims"], _B_INDEX["extra"]
_A_STATUS, _A_TS = _A_INDEX["status"], _A_INDEX["ts"]
# The canonical text around prev_hash with the member names written once, here: filling
# the values into these costs a third of encoding a dict per half for every event.
_BEFORE_FORMAT = "{" + ",".join(f"{encode_basestring_ascii(n)}:%s" for n in _BEFORE_PREV) + ',"prev_hash":'
_AFTER_FORMAT = "," + ",".join(f"{encode_basestring_ascii(n)}:%s" for n in _AFTER_PREV) + "}"


def _json_values(values: list[Any]) -> tuple[str, ...]:
    """Each value as the canonical encoder writes it: text escaped to ASCII, None as null,
    and the only numbers an event holds (a finite float, an int) by their repr."""
    return tuple([encode_basestring_ascii(v) if v.__class__ is str else _json_scalar(v) for v in values])


def _json_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):  # a str subclass (an enum member) is written as its text
        return encode_basestring_ascii(value)
    return float.__repr__(value) if isinstance(value, float) else int.__repr__(value)


def prepare_record(rec: AuditRecord, instance_id: str | None = None, *, sqlite: bool) -> Prepared:
    """The recorder's per-event work, done once and outside any lock: the two canonical halves
    around ``prev_hash``, built straight from the record.

    This is the one fast path. The contract is :func:`canonical` of :func:`event_row`, the
    reference encoder: ``prefix + json(prev_hash) + suffix`` equals it byte for byte, which a
    property test (``tests/test_chain.py``) holds over generated records.
    """
    bt, at = _b_text_of(rec), _a_text_of(rec)
    # Every column in canonical order straight from the record; the few non-text ones are
    # replaced below, in place, so the order stays canonical.
    before = list(_before_of(rec))
    after = list(_after_of(rec))
    if not _plain(bt + at):
        for i, value in zip(_B_TEXT_AT, bt, strict=True):
            before[i] = _clean_text(value)
        for i, value in zip(_A_TEXT_AT, at, strict=True):
            after[i] = _clean_text(value)
    if before[_B_INSTANCE] is None:
        before[_B_INSTANCE] = instance_id
    for i, name in _B_REQUIRED_AT:
        if before[i] is None:
            before[i] = new_event_id() if name == "event_id" else "unknown"
    ts = rec.ts
    if ts.tzinfo is None:
        raise ValueError("AuditRecord.ts must be timezone-aware (UTC)")
    if ts.utcoffset():
        ts = ts.astimezone(UTC)
    after[_A_STATUS] = None if rec.status is None else int(rec.status)
    latency = rec.latency_ms
    before[_B_LATENCY] = _latency(latency)
    before[_B_CLAIMS] = canonical_json(rec.claims)
    before[_B_EXTRA] = canonical_json(rec.extra)
    text = ts.isoformat(timespec="microseconds")[:26]
    after[_A_TS] = text + "Z"
    prefix = hashlib.sha256((_BEFORE_FORMAT % _json_values(before)).encode())
    suffix = (_AFTER_FORMAT % _json_values(after)).encode()
    # SQLite: the exact text SQLAlchemy's DATETIME stores; PostgreSQL: the aware datetime.
    after[_A_TS] = f"{text[:10]} {text[11:]}" if sqlite else ts
    return Prepared(tuple(before), tuple(after), ts, prefix, suffix)


def append_prepared(conn: sa.Connection, batch: list[Prepared]) -> tuple[tuple[int, str], tuple[int, str]]:
    """Link and insert prepared rows after the current head; returns ``(before, after)`` heads."""
    before = head(conn)
    seq, prev = before
    params: list[tuple] = []
    for item in batch:
        seq += 1
        digest = item.prefix.copy()
        digest.update(encode_basestring_ascii(prev).encode())
        digest.update(item.suffix)
        item.seq, item.prev_hash = seq, prev
        prev = item.hash = digest.hexdigest()
        params.append((*item.head, item.prev_hash, *item.tail, seq, prev))
    if batch and conn.dialect.name == "sqlite":
        _sqlite_insert_rows(conn, params)
    elif batch:
        partitions.cover(conn, (item.ts for item in batch))
        with _refused_rows_refresh(conn):
            _pg_copy_rows(conn, params)
    return before, (seq, prev)


def _pg_copy_rows(conn: sa.Connection, params: list[tuple]) -> None:
    """Insert rows with ``COPY ... FROM STDIN`` on the transaction's own connection: the
    chain lock is held while they go in, and COPY takes a third of an executemany's time.

    A driver error becomes the SQLAlchemy error an INSERT would have raised (IntegrityError
    for a duplicate event_id, OperationalError for a lost server), so callers tell them apart
    as before; a connection that broke is invalidated, so the pool never hands it out again.
    """
    import psycopg

    raw = conn.connection.dbapi_connection
    try:
        with raw.cursor() as cur, cur.copy(_PG_COPY) as copy:
            for row in params:
                copy.write_row(row)
    except psycopg.Error as exc:
        if raw.closed or raw.broken:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(_PG_COPY, None, exc, psycopg.Error) from exc


def _sqlite_insert_rows(conn: sa.Connection, params: list[tuple]) -> None:
    """Insert rows with multi-row statements of 32, then 16, 8, 4, 2, 1 rows."""
    i, n = 0, len(params)
    while i < n:
        k = _SQLITE_CHUNK if n - i >= _SQLITE_CHUNK else 1 << ((n - i).bit_length() - 1)
        conn.exec_driver_sql(_SQLITE_INSERT_ROWS[k], tuple(itertools.chain.from_iterable(params[i : i + k])))
        i += k


# ---------------------------------------------------------------------- checkpoints


class CheckpointKey:
    """The HMAC key that signs checkpoints; never stored in the database."""

    def __init__(self, key: bytes, *, source: str) -> None:
        if len(key) < 16:
            raise ConfigurationError(f"the checkpoint key in {source} is too short (at least 16 bytes)")
        self._key = key
        self.source = source
        self.key_id = hashlib.sha256(b"connect-audit checkpoint key id\x00" + key).hexdigest()[:16]

    @classmethod
    def for_store(cls, store: Store, *, create: bool = True) -> CheckpointKey | None:
        """The environment's key, else ``checkpoint.key`` in ``store.key_dir``.

        With ``create=False`` (verification) a missing key file gives None instead of a
        new key: a verifier must never invent the key it checks against.
        """
        env = os.environ.get(config.CHECKPOINT_KEY_ENV, "")
        if env.strip():
            return cls(env.strip().encode(), source=config.CHECKPOINT_KEY_ENV)
        path: Path = store.key_dir / CHECKPOINT_KEY_FILE
        if create:
            return cls(
                keyfiles.load_or_create(path, lambda: secrets.token_hex(32).encode()), source=str(path)
            )
        try:
            return cls(keyfiles._read(path), source=str(path))
        except FileNotFoundError:
            return None

    def sign(self, seq: int, hash_: str, event_count: int, created_at: datetime) -> str:
        message = f"connect-audit checkpoint v1|{seq}|{hash_}|{event_count}|{ts_text(created_at)}"
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def check(self, cp: Mapping[str, Any]) -> bool:
        expected = self.sign(cp["seq"], cp["hash"], cp["event_count"], cp["created_at"])
        return hmac.compare_digest(expected, cp["signature"])

    def __repr__(self) -> str:
        return f"CheckpointKey(source={self.source!r}, key_id={self.key_id!r})"


def write_checkpoint(
    conn: sa.Connection, key: CheckpointKey, at: tuple[int, str], now: datetime | None = None
) -> None:
    """Sign and store a checkpoint of the head ``at`` (inside the write transaction)."""
    seq, hash_ = at
    if seq <= 0:
        return
    created = now or datetime.now(UTC)
    conn.execute(
        CHECKPOINTS.insert(),
        {
            "seq": seq,
            "hash": hash_,
            "event_count": seq,  # seq is contiguous from 1, so it counts every event ever chained
            "created_at": created,
            "key_id": key.key_id,
            "signature": key.sign(seq, hash_, seq, created),
        },
    )


# ---------------------------------------------------------------------- verification


@dataclass
class ChainReport:
    """What :func:`verify` found; ``ok`` is False as soon as one link or checkpoint fails."""

    ok: bool
    events_checked: int
    first_bad_seq: int | None = None
    first_bad_event_id: str | None = None
    problem: str | None = None
    last_checkpoint: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Progress = Callable[[int, int], None]
_PAGE = 20_000


class _Verifier:
    def __init__(self, store: Store, progress: Progress | None) -> None:
        self.store = store
        self.progress = progress
        self.report = ChainReport(ok=True, events_checked=0)

    def fail(self, seq: int | None, event_id: str | None, problem: str) -> None:
        if self.report.ok or (seq is not None and (self.report.first_bad_seq or 0) > seq):
            self.report.ok = False
            self.report.first_bad_seq = seq
            self.report.first_bad_event_id = event_id
            self.report.problem = problem

    def run(self) -> ChainReport:
        with self.store.engine.connect() as conn:
            checkpoints = [
                dict(r._mapping) for r in conn.execute(sa.select(CHECKPOINTS).order_by(CHECKPOINTS.c.seq))
            ]
            bounds = conn.execute(sa.select(sa.func.min(EVENTS.c.seq), sa.func.max(EVENTS.c.seq))).first()
        first_seq, last_seq = bounds if bounds and bounds[0] is not None else (None, 0)
        key = CheckpointKey.for_store(self.store, create=False) if checkpoints else None
        if checkpoints and key is None:
            raise ConfigurationError(
                f"the checkpoint key is missing (no {config.CHECKPOINT_KEY_ENV} and no "
                f"{self.store.key_dir / CHECKPOINT_KEY_FILE}); verify where the store was written, "
                "or provide the key"
            )
        by_seq = self._check_signatures(checkpoints, key)
        if first_seq is not None:
            self._scan(first_seq, last_seq, by_seq)
        self._check_tail(checkpoints, key, last_seq)
        return self.report

    def _check_signatures(self, checkpoints: list[dict], key: CheckpointKey | None) -> dict[int, dict]:
        by_seq: dict[int, dict] = {}
        for cp in checkpoints:
            assert key is not None
            if cp["key_id"] != key.key_id:
                self.fail(
                    cp["seq"],
                    None,
                    f"checkpoint #{cp['id']} (seq {cp['seq']}) was signed with key {cp['key_id']}, not with "
                    f"the key in use ({key.key_id}): a forged checkpoint, or writers that do not share "
                    f"{config.CHECKPOINT_KEY_ENV}",
                )
            elif not key.check(cp):
                self.fail(
                    cp["seq"], None, f"checkpoint #{cp['id']} (seq {cp['seq']}) has an invalid signature"
                )
            else:
                by_seq[cp["seq"]] = cp
        return by_seq

    def _scan(self, first_seq: int, last_seq: int, checkpoints: dict[int, dict]) -> None:
        total = last_seq - first_seq + 1
        prev_seq: int | None = None
        prev_hash = ""
        anchors: dict[int, str] = {}
        first: tuple[int, str, str] | None = None
        columns = [EVENTS.c[name] for name in (*HASHED_COLUMNS, "seq", "hash")]
        if self.store.dialect == "sqlite":
            # Read SQLite's timestamp text as it is: parsing it into a datetime only to print
            # it again is most of the cost of a verify.
            columns[_H_TS] = sa.type_coerce(EVENTS.c.ts, sa.String()).label("ts")
        after = first_seq - 1
        with self.store.engine.connect() as conn:
            while after < last_seq:
                query = (
                    sa.select(*columns)
                    .where(EVENTS.c.seq > after, EVENTS.c.seq <= last_seq)
                    .order_by(EVENTS.c.seq)
                    .limit(_PAGE)
                )
                rows = conn.execute(query).all()
                conn.rollback()  # end the read transaction: do not pin the WAL for minutes
                if not rows:
                    break
                for values in rows:
                    row = dict(zip(_ROW_KEYS, values, strict=True))
                    seq, event_id = row["seq"], row["event_id"]
                    if _stored_hash(row) != row["hash"]:
                        self.fail(
                            seq, event_id, f"event seq {seq} was altered: its content does not match its hash"
                        )
                    if prev_seq is None:
                        first = (seq, event_id, row["prev_hash"])
                    elif row["prev_hash"] != prev_hash:
                        if seq != prev_seq + 1:
                            self.fail(
                                seq, event_id, f"events between seq {prev_seq} and seq {seq} were deleted"
                            )
                        else:
                            self.fail(
                                seq,
                                event_id,
                                f"event seq {seq} does not link to seq {prev_seq}: events were reordered, "
                                "inserted or replaced",
                            )
                    elif seq != prev_seq + 1:
                        self.fail(
                            seq,
                            event_id,
                            f"event seq {seq} follows seq {prev_seq}: sequence numbers were changed",
                        )
                    cp = checkpoints.get(seq)
                    if cp is not None and cp["hash"] != row["hash"]:
                        self.fail(
                            seq,
                            event_id,
                            f"event seq {seq} differs from what checkpoint #{cp['id']} signed: "
                            "the chain was rewritten",
                        )
                    if row["event_type"] == PURGE_EVENT and row["direction"] == "internal" and row["extra"]:
                        anchor = _purge_anchor(row["extra"])
                        if anchor:
                            anchors[anchor[0]] = anchor[1]
                    prev_seq, prev_hash = seq, row["hash"]
                    self.report.events_checked += 1
                after = rows[-1][-2]
                if self.progress:
                    self.progress(self.report.events_checked, total)
        if first is not None:
            self._check_start(first, anchors)

    def _check_start(self, first: tuple[int, str, str], anchors: dict[int, str]) -> None:
        seq, event_id, prev = first
        if seq == 1 and prev == GENESIS:
            return
        if anchors.get(seq - 1) == prev:
            return
        self.fail(
            seq,
            event_id,
            f"the oldest event (seq {seq}) follows events that are gone, and no recorded purge removed them",
        )

    def _check_tail(self, checkpoints: list[dict], key: CheckpointKey | None, last_seq: int) -> None:
        if not checkpoints:
            return
        latest = checkpoints[-1]
        self.report.last_checkpoint = {
            "id": latest["id"],
            "seq": latest["seq"],
            "hash": latest["hash"],
            "event_count": latest["event_count"],
            "created_at": ts_text(latest["created_at"]),
            "key_id": latest["key_id"],
        }
        if latest["seq"] > last_seq:
            self.fail(
                last_seq + 1 if last_seq else 1,
                None,
                f"the chain ends at seq {last_seq} but checkpoint #{latest['id']} vouches for seq "
                f"{latest['seq']}: events were removed from the end",
            )


_H_TS = HASHED_COLUMNS.index("ts")
_ROW_KEYS = (*HASHED_COLUMNS, "seq", "hash")


def _stored_hash(row: dict[str, Any]) -> str:
    """:func:`event_hash` of a row as read back, whose ``ts`` may be SQLite's raw text.

    A value no writer could have produced (a NULL or unparsable timestamp, a text latency)
    gives an impossible hash, i.e. "altered", rather than an exception.
    """
    try:
        return _rehash(row)
    except (TypeError, ValueError, AttributeError):
        return "unhashable"


def _rehash(row: dict[str, Any]) -> str:
    ts = row["ts"]

    if ts.__class__ is str:
        if len(ts) == 26 and ts[10] == " ":
            text = f"{ts[:10]}T{ts[11:]}Z"
        else:  # not the format this package writes: parse it like SQLAlchemy would
            text = ts_text(datetime.fromisoformat(ts).replace(tzinfo=UTC))
        doc = {name: row[name] for name in HASHED_COLUMNS}
        doc["ts"] = text
        latency = doc["latency_ms"]
        if latency is not None and latency.__class__ is not float:
            doc["latency_ms"] = float(latency)
        return hashlib.sha256(_encode_row(doc).encode()).hexdigest()
    return event_hash(row)


def _purge_anchor(extra: str) -> tuple[int, str] | None:

    try:
        doc = json.loads(extra)
        return int(doc["anchor_seq"]), str(doc["anchor_hash"])
    except (ValueError, KeyError, TypeError):
        return None


def verify(store: Store, *, progress: Progress | None = None) -> ChainReport:
    """Check every link, hash and checkpoint of ``store``; name the first bad event.

    ``progress(done, total)`` is called after each page of events (for a progress bar).
    Reads in pages of short transactions, so it can run next to live writers; events
    appended after it started are not checked.
    """
    return _Verifier(store, progress).run()
