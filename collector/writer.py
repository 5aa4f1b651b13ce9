"""The writer process: the recorder's store work (hashing, SQLite or PostgreSQL, rollups) in a
process of its own, so that it never competes with the application's threads for the GIL.

Why a process: the request thread is at the floor when the recorder's writer is idle, but a
writer *thread* holds the GIL for its canonical serialisation and the driver's parameter
binding, and every hand-over of the GIL between it and a request thread costs the request
far more than the writer's own time (``bench/overhead.py`` measures both). In its own
process the same work runs on another core and the application keeps only the hand-over:
a batch of records pickled onto a pipe, a few microseconds per event.

This module is the pipe between the two; the child's program is
:func:`collector.recorder.run_writer_process`. The parent sends frames (a 4-byte length,
then a pickle) on the child's stdin: first the configuration, then batches of
records as tuples of :class:`~collector.events.AuditRecord` fields. The child answers each
frame on its stdout: ``("ready", pid)`` once its store is open, ``("ok", stats)`` once a
batch is durable (committed, or fsync'd to a spill file), ``("closed", stats)`` after its
recorder has drained and signed its last checkpoint when stdin reaches its end.
Everything else about writing (spill files while the store is down, their re-ingestion,
checkpoints, the rollup fold, dropping events already stored) is the ordinary in-process
:class:`~collector.recorder.Recorder`, run inside the child.

The database URL, password included, travels over the pipe, never on a command line or in
the environment where ``ps`` would show it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import operator
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, BinaryIO

from collector.events import AuditRecord

log = logging.getLogger(__name__)

#: The record's fields in constructor order: a record crosses the pipe as a plain tuple
#: (pickling a tuple costs a fraction of pickling a dataclass instance).
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(AuditRecord))
_values_of = operator.attrgetter(*FIELDS)
_FRAME = struct.Struct("<I")
#: How long the parent waits for a new writer process to open its store.
START_TIMEOUT = 60.0


class WriterGone(Exception):
    """Raised when the writer process cannot start, or exits before answering a frame."""


class WriterProcess:
    """The parent's handle on one writer process (used by the recorder's feeding thread only)."""

    def __init__(self, config: dict[str, Any], entry: str) -> None:
        self.config = config
        self.entry = entry  # "module:function", the child's program
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        """Start the child and wait until its store is open; raises :class:`WriterGone`."""
        env = dict(os.environ)
        # The child imports this package from where the parent found it, whatever its cwd.
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            # bufsize=0: no buffered bytes that a fork() of the application could copy and
            # flush twice into the pipe; every frame is one write of its own.
            module, function = self.entry.split(":")
            program = f"from {module} import {function}; raise SystemExit({function}())"
            self.proc = subprocess.Popen(  # noqa: S603  (this interpreter, our own module)
                [sys.executable, "-c", program], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, bufsize=0, env=env, close_fds=True,
            )
        except OSError as exc:
            raise WriterGone(f"the writer process cannot be started: {exc}") from exc
        answer = self._ask(self.config)
        if answer[0] != "ready":
            self.stop(timeout=5.0)
            raise WriterGone(f"the writer process could not open the store: {answer[1]}")

    def write(self, records: list[AuditRecord]) -> dict[str, Any]:
        """Hand ``records`` over and return the child's counters once they are durable."""
        try:
            payload = [_values_of(r) for r in records]
            data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError):
            # A claims or extra value that does not pickle: send its stored text instead
            # (the child stores exactly that text, so the event and its hash are the same).
            data = pickle.dumps([_portable(r) for r in records], protocol=pickle.HIGHEST_PROTOCOL)
        return self._ask_raw(data)[1]

    def stop(self, timeout: float | None) -> dict[str, Any] | None:
        """End of input: the child drains, signs its last checkpoint and exits; its counters."""
        proc = self.proc
        if proc is None:
            return None
        final = None
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()
        with contextlib.suppress(WriterGone, OSError, ValueError):
            answer = read_frame(proc.stdout)
            final = answer[1] if answer[0] == "closed" else None
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError, ValueError):
            proc.stdout.close()
        self.proc = None
        return final

    def forget(self) -> None:
        """After fork(), in the forked child: drop this copy of the pipes, touching nothing else."""
        proc, self.proc = self.proc, None
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()  # unbuffered: closing this process's descriptor only

    def _ask(self, message: Any) -> tuple:
        return self._ask_raw(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def _ask_raw(self, data: bytes) -> tuple:
        proc = self.proc
        if proc is None:
            raise WriterGone("the writer process is not running")
        try:
            write_frame(proc.stdin, data)
            return read_frame(proc.stdout)
        except (OSError, ValueError, WriterGone) as exc:
            code = proc.poll()
            if code is None:
                proc.kill()
                code = proc.wait()
            self.proc = None
            raise WriterGone(f"the writer process (pid {proc.pid}) exited with code {code}") from exc


def _portable(rec: AuditRecord) -> tuple:
    from collector.chain import canonical_json

    values = list(_values_of(rec))
    for name in ("claims", "extra"):
        i = FIELDS.index(name)
        values[i] = canonical_json(values[i])
    return tuple(values)


def write_frame(out: BinaryIO, data: bytes) -> None:
    view = memoryview(_FRAME.pack(len(data)) + data)
    while view:
        view = view[out.write(view):]


def _read_exact(src: BinaryIO, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = src.read(left)
        if not chunk:
            raise WriterGone("the pipe closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(src: BinaryIO) -> Any:
    (size,) = _FRAME.unpack(_read_exact(src, _FRAME.size))
    return pickle.loads(_read_exact(src, size))  # noqa: S301  (our own parent or child, over a pipe)


def answer(out: BinaryIO, message: Any) -> None:
    """The child's reply to the frame it was sent."""
    write_frame(out, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
