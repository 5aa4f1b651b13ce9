"""What the store commands share: one-sentence database errors and a progress bar on stderr.

Private to the CLI (the leading underscore keeps :mod:`collector.cli` from loading it as
a subcommand). Imported lazily from ``run()``, never at registration time.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from collector.errors import StoreUnavailable


@contextlib.contextmanager
def database_errors(what: str) -> Iterator[None]:
    """Turn any SQLAlchemy or OS error escaping ``what`` into one sentence (exit 2)."""
    import sqlalchemy as sa

    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        first = next((ln.strip() for ln in str(orig).splitlines() if ln.strip()), type(orig).__name__)
        raise StoreUnavailable(f"{what} failed: {first.rstrip('.')}") from exc
    except OSError as exc:
        raise StoreUnavailable(f"{what} failed: {exc.strerror or exc}") from exc


class ProgressBar:
    """A throttled progress line: redrawn in place on a terminal, every 10% otherwise."""

    def __init__(self, label: str, total: int, *, unit: str = "events", stream: TextIO | None = None) -> None:
        self.label = label
        self.total = max(total, 0)
        self.unit = unit
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_tenth = -1
        self.done = 0

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        if self.tty:
            if now - self._last_draw >= 0.2:
                self._last_draw = now
                self.stream.write("\r" + self._line(now))
                self.stream.flush()
            return
        tenth = int(10 * done / self.total) if self.total else 0
        if tenth > self._last_tenth and done < self.total:
            self._last_tenth = tenth
            self.stream.write(self._line(now) + "\n")
            self.stream.flush()

    def finish(self) -> None:
        line = self._line(time.monotonic())
        self.stream.write(("\r" + line if self.tty else line) + "\n")
        self.stream.flush()

    def _line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            return (
                f"{self.label}: [{bar:<30}] {frac:6.1%} {self.done:,}/{self.total:,} {self.unit}, "
                f"{rate:,.0f}/s, {elapsed:.1f} s"
            )
        return f"{self.label}: {self.done:,} {self.unit}, {rate:,.0f}/s, {elapsed:.1f} s"
