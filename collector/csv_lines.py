"""CSV lines built by SQLite: the export's rows as bytes, with no per-cell work in Python.

Writing 29 cells per row through :mod:`csv` costs more than reading them, so on SQLite the
database joins each row into its CSV line (``printf``), hands it over as UTF-8 bytes, and
Python only joins a batch of lines. The bytes must be exactly what ``csv.writer`` (minimal
quoting, ``"\\r\\n"``) writes from the same cells, so a row SQLite cannot write exactly is
spotted in the same read and rewritten by ``csv.writer``:

* a text cell holding a comma, a quote, CR, LF (it needs quoting) or NUL (``printf`` stops
  there): SQLite returns the row's text cells joined, and Python looks for those five bytes,
  which costs one ``in`` per byte per row instead of a quoting ``CASE`` per cell;
* a real SQLite may not print as Python's ``repr`` does (``0.30000000000000004``, which
  needs 17 digits; 1e-05, which SQLite prints as ``1.0e-05``): only a real with at most
  three decimals under 1e12 (every latency the collector records) is left to SQLite.

The JSON columns (``claims``, ``extra``) hold commas and quotes in nearly every row, so SQLite
quotes them itself; a NUL in them is spotted like the rest. In the synthetic month about 1 %
of rows are rewritten (a comma in ``detail``); a store of hostile text costs at most what the
plain ``csv.writer`` path costs. The golden files in ``tests/vectors`` and a property test
hold both paths to the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa


def _text(col: sa.ColumnElement) -> sa.ColumnElement[str]:
    return sa.func.coalesce(col, "")


def _quoted(written: sa.ColumnElement, stored: sa.ColumnElement) -> sa.ColumnElement[str]:
    """A text cell quoted as ``csv`` does when it holds a comma, quote, CR or LF.

    The test and the doubling of quotes read the stored value: a formula prefix (``'``) is
    none of those, and the written value is an expression SQLite would evaluate again for
    each use."""
    needs = stored.op("GLOB")(sa.literal('*[,"\r\n]*', sa.String()))
    prefix = sa.func.substr(written, 1, sa.func.length(written) - sa.func.length(stored))
    quoted = (sa.literal('"', sa.String()).concat(prefix).concat(sa.func.replace(stored, '"', '""'))
              .concat('"'))
    return _text(sa.case((needs, quoted), else_=written))


def _integer_is_exact(col: sa.ColumnElement) -> sa.ColumnElement[bool]:
    """SQLite's text of an integer is Python's ``str`` of it."""
    return sa.func.typeof(col).in_(("integer", "null"))


def _real_is_exact(col: sa.ColumnElement) -> sa.ColumnElement[bool]:
    """SQLite's text of this real is Python's ``repr`` of it: a value with at most three
    decimals (the collector rounds latencies so) and under 1e12 has at most 15 significant
    digits, which SQLite prints in full, without an exponent, as ``repr`` does (0.0 too:
    SQLite stores -0.0 as 0.0, so ``csv`` reads 0.0 as well). Every other value (1e-05,
    0.30000000000000004, 1e15) is left to ``csv``."""
    return sa.or_(col.is_(None), sa.and_(
        sa.func.typeof(col) == "real", sa.func.abs(col) < 1e12, sa.func.round(col, 3) == col))


def line_select(cells: Sequence[tuple[sa.ColumnElement, sa.ColumnElement, str]],
                seq: sa.ColumnElement) -> sa.Select:
    """``SELECT line, probe, exact, seq`` over ``cells``: (written value, stored value, kind),
    kind ``text``, ``json``, ``integer``, ``real`` or ``fixed`` (text that is never unsafe: the
    formatted timestamp). ``probe`` is the stored text cells joined (``||`` keeps a NUL,
    ``printf`` would not); ``exact`` is false when a number or JSON cell needs ``csv.writer``.
    """
    parts: list[sa.ColumnElement[str]] = []
    probe: list[sa.ColumnElement[str]] = []
    exact: list[sa.ColumnElement[bool]] = []
    for written, stored, kind in cells:
        if kind in ("integer", "real"):
            parts.append(_text(sa.cast(written, sa.String())))
            exact.append(_integer_is_exact(stored) if kind == "integer" else _real_is_exact(stored))
        elif kind == "json":
            parts.append(_quoted(written, stored))
            nul = sa.cast(sa.func.char(0), sa.LargeBinary())
            exact.append(sa.func.instr(sa.cast(_text(stored), sa.LargeBinary()), nul) == 0)
        else:
            parts.append(_text(written))
            if kind == "text":
                probe.append(_text(stored))
    line = sa.func.printf(",".join(["%s"] * len(parts)) + "\r\n", *parts)
    joined = probe[0]
    for cell in probe[1:]:
        joined = joined.concat(cell)
    return sa.select(
        sa.cast(line, sa.LargeBinary()).label("line"),
        sa.cast(joined, sa.LargeBinary()).label("probe"),
        sa.case((sa.and_(*exact), 1), else_=0).label("exact"),
        seq.label("seq"),
    )


def lines(rows: Sequence[tuple[bytes, bytes, int, int]], rewrite) -> Iterator[bytes]:
    """The batch's lines in order; rows the fast path cannot write exactly come from
    ``rewrite(seqs)`` (a mapping of seq to line), asked once per batch."""
    # Spelled out rather than any(...) over _UNSAFE: this line runs once per exported row.
    unsafe = [seq for _, p, exact, seq in rows
              if not exact or b"," in p or b'"' in p or b"\r" in p or b"\n" in p or b"\x00" in p]
    if not unsafe:
        return (row[0] for row in rows)
    fixed = rewrite(unsafe)
    return (fixed.get(row[3], row[0]) for row in rows)


def batches(conn: sa.Connection, stmt: sa.Select, size: int) -> Iterator[list[Any]]:
    """Raw row tuples from ``stmt``, ``size`` at a time: the lines are bytes already, so the
    driver's rows are used as they come, without a result object per row."""
    result = conn.execute(stmt)
    try:
        while rows := result.cursor.fetchmany(size):
            yield rows
    finally:
        result.close()
