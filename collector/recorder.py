"""The recorder: gets audit events off the request path and into the store, durably.

``record()`` runs on the caller's thread and only appends to a bounded in-memory queue
(no I/O, no hashing, no database). A background writer thread drains the queue in batches:
one write transaction per batch, in which it locks the chain head, links the batch into the
hash chain and inserts it with SQLAlchemy Core (the ORM's per-object bookkeeping would
triple the cost), writing a signed checkpoint whenever the chain crosses a multiple of
``checkpoint_every``.

What happens when things go wrong is explicit:

* **Queue full** (the store is slower than the traffic): ``when_full="block"`` (default)
  makes ``record()`` wait for room, up to ``block_timeout`` seconds (None: as long as it
  takes), then raise :class:`~collector.errors.QueueFull`; ``when_full="raise"`` raises at
  once. An event is never dropped silently.
* **Store unreachable** (server down, lock wait exceeded, disk error): the batch is
  appended to an NDJSON spill file in ``spill_dir`` and fsync'd, and the writer keeps
  spilling without waiting on the store until a retry succeeds. Spill files are
  re-ingested (each event once: ``event_id`` is unique) when a recorder next starts on the
  same store, or as soon as the store answers again.
* **Shutdown**: ``close()`` (also registered with :mod:`atexit`) drains the queue; what
  cannot be written in time is spilled, and a final checkpoint is signed.

``flush()`` returns True once every event recorded before the call is durable: committed
to the store (with the store's durability setting) or fsync'd to the spill file.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from collector import chain, config, files, partitions
from collector import forward as forward_mod
from collector import retention as retention_mod
from collector.errors import ConnectAuditError, QueueFull, RecorderClosed, StoreUnavailable
from collector.events import AuditRecord
from collector.models import AuditEvent
from collector.store import Store
from collector.writer import FIELDS, WriterGone, WriterProcess, answer, read_frame

log = logging.getLogger(__name__)

WHEN_FULL = ("block", "raise")
#: Longest pause between attempts to reach an unavailable store (seconds).
MAX_RETRY_INTERVAL = 30.0
#: How often the writer makes sure the coming months have partitions (PostgreSQL).
PARTITIONS_CHECK_INTERVAL = 3600.0
#: At most this many events are folded into the rollups per fold, so that a recorder that
#: meets a large unfolded backlog never holds the write lock for long.
ROLLUP_FOLD_LIMIT = 50_000
#: While events are still queued, folding waits (events first, derived counts later) until
#: this many events or seconds have gone unfolded: the dashboard reads that tail from the
#: log, so the bounds keep its reads small under sustained load.
ROLLUP_MAX_LAG_EVENTS = 50_000
ROLLUP_MAX_LAG_SECONDS = 10.0

_live: weakref.WeakSet[Recorder] = weakref.WeakSet()


class Recorder:
    """A bounded queue and a background batch writer in front of a :class:`Store`."""

    def __init__(
        self,
        store: Store,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.05,
        when_full: str = "block",
        block_timeout: float | None = None,
        spill_dir: Path | None = None,
        checkpoint_every: int = 1000,
        instance_id: str | None = None,
        rollup_interval: float | None = 1.0,
        writer: str | None = None,
        retention: Any = "environment",
        retention_interval: float = 86_400.0,
        retention_delay: float = 60.0,
        forward: Iterable[str] = (),
    ) -> None:
        if when_full not in WHEN_FULL:
            raise ValueError(f"when_full must be one of {WHEN_FULL}, not {when_full!r}")
        if queue_size < 1 or batch_size < 1 or checkpoint_every < 1:
            raise ValueError("queue_size, batch_size and checkpoint_every must be positive")
        self.store = store
        # "thread": the store work runs on a thread of this process; "process": in a writer
        # process of its own (collector/writer.py), off this process's GIL.
        self.writer = config.writer(writer)
        # The retention policy this recorder applies (on a thread of its own, in steps, once a
        # day, first retention_delay seconds after it starts); None: none.
        self.retention = retention_mod.RetentionPolicy.from_env() if retention == "environment" else retention
        self.retention_interval = retention_interval
        self.retention_delay = retention_delay
        # Destinations this recorder forwards the log to (collector.forward), each on a thread
        # of this process woken after every batch; a malformed URL fails in _reset_state, here.
        self.forward = tuple(forward)
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.when_full = when_full
        self.block_timeout = block_timeout
        self.spill_dir = Path(spill_dir) if spill_dir is not None else store.home
        self.checkpoint_every = checkpoint_every
        # The dashboard's rollups are folded here, on the writer thread, after the events
        # are acknowledged: at most once per interval, when less than a batch is queued or
        # the unfolded lag passes its bounds (None: never; the dashboard folds them itself).
        self.rollup_interval = rollup_interval
        self._next_fold = 0.0
        self._unfolded = 0
        self._unfolded_since = 0.0
        self.instance_id = instance_id or f"{socket.gethostname()}:{os.getpid()}"
        self._spill_tag = hashlib.sha256(_store_identity(store).encode()).hexdigest()[:12]
        self._checkpoint_key: chain.CheckpointKey | None = None
        self._reset_state()
        _live.add(self)

    def _reset_state(self) -> None:
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)  # records queued (writer)
        self._not_full = threading.Condition(self._lock)  # room in the queue (callers)
        self._settled_cv = threading.Condition(self._lock)  # progress (flush waiters)
        self._buf: deque[AuditRecord] = deque()
        self._enqueued = 0
        self._settled = 0
        self._flush_waiters = 0
        self._closing = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._spill_path: Path | None = None
        self._store_down_until = 0.0
        self._retry_interval = 0.5
        self._unsigned = 0  # events we wrote since our last checkpoint
        self._stats = {"written": 0, "spilled": 0, "reingested": 0, "batches": 0, "checkpoints": 0,
                       "retained": 0}
        self._last_error: str | None = None
        self._process: WriterProcess | None = None
        self._child_seen: dict[str, Any] = {}  # the running writer process's last counters
        self._in_process_writes = False
        self._writing = self.writer  # where the writing runs: "thread" after a fallback
        self._retention_stop = threading.Event()
        self._retention_thread: threading.Thread | None = None
        self._last_retention: dict[str, Any] | None = None
        self._partitions_due = 0.0  # (monotonic) when to make sure the coming months exist
        self._forwarders = [forward_mod.ForwardThread(self.store, url) for url in self.forward]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Recorder:
        """Start the background writer (idempotent); it first re-ingests old spill files.

        One thread does all the work, preparation included: a second CPU-bound thread would
        make the writer wait for the GIL after every row the database driver writes (the
        "convoy" effect), which measured slower than doing both in turn.
        """
        with self._lock:
            if self._closed:
                raise RecorderClosed("the recorder is closed; create a new one")
            if self._thread is not None:
                return self
            self._thread = threading.Thread(
                target=self._write_loop, name="connect-audit-recorder", daemon=True
            )
            self._thread.start()
            for forwarder in self._forwarders:
                forwarder.start()
        atexit.register(self._atexit)
        return self

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, timeout: float | None = None) -> bool:
        """Drain the queue, sign a last checkpoint and stop; True if nothing had to be spilled.

        Events still queued when ``timeout`` expires are spilled (fsync'd), never dropped.
        """
        with self._lock:
            if self._closed:
                return True
            self._closing = True
            self._retention_stop.set()
            self._not_empty.notify_all()
            self._not_full.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            leftover = [chain.event_row(r, self.instance_id) for r in self._buf]
            self._buf.clear()
            self._closed = True  # a writer still busy finishes its batch and stops
            self._not_full.notify_all()
        if leftover:
            self._spill(leftover)
            self._settle(len(leftover))
        if thread is None or not thread.is_alive():
            self._final_checkpoint()
            if thread is not None and self._in_process_writes:
                self._maybe_fold_rollups(force=True)
        self._close_spill()
        for forwarder in self._forwarders:
            forwarder.stop(timeout)
        with contextlib.suppress(Exception):
            atexit.unregister(self._atexit)
        return not leftover

    def _atexit(self) -> None:
        # At interpreter exit the request threads are gone; give the writer a bounded
        # time, then spill whatever is left.
        self.close(timeout=30.0)

    # ------------------------------------------------------------------ hot path

    def record(self, rec: AuditRecord) -> None:
        """Queue ``rec`` for writing; cheap and I/O-free (see the module docstring for a full queue)."""
        if self._thread is None and not self._closing:
            self.start()  # first event: start lazily (idempotent)
        with self._lock:
            if self._closing:
                raise RecorderClosed("the recorder is closed; the event was not recorded")
            buf = self._buf
            if len(buf) >= self.queue_size:
                self._wait_for_room()
            buf.append(rec)
            self._enqueued += 1
            n = len(buf)
            if n == 1 or n == self.batch_size:
                self._not_empty.notify()

    def _wait_for_room(self) -> None:
        if self.when_full == "raise":
            raise QueueFull(f"the audit queue is full ({self.queue_size} events); the event was not recorded")
        deadline = None if self.block_timeout is None else time.monotonic() + self.block_timeout
        while len(self._buf) >= self.queue_size:
            if self._closing:
                raise RecorderClosed("the recorder closed while waiting for room; the event was not recorded")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise QueueFull(
                    f"the audit queue stayed full for {self.block_timeout} s; the event was not recorded"
                )
            self._not_full.wait(remaining)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event recorded before this call is durable; False on timeout."""
        with self._lock:
            target = self._enqueued
            if self._settled >= target:
                return True
            self._flush_waiters += 1
            self._not_empty.notify_all()
            try:
                return self._settled_cv.wait_for(lambda: self._settled >= target, timeout)
            finally:
                self._flush_waiters -= 1

    def write_now(self, rec: AuditRecord) -> AuditEvent:
        """Write one event synchronously (for the CLI's own acts); raises if the store is down."""
        row = chain.event_row(rec, self.instance_id)
        with self.store.write_transaction() as conn:
            before = chain.head(conn)
            after = chain.append(conn, [row])
            self._maybe_checkpoint(conn, before, after)
        with self._lock:
            self._stats["written"] += 1
        return AuditEvent(**row)

    def write_now_many(self, records: list[AuditRecord], *,
                       within: Callable[[sa.Connection, int], None] | None = None) -> int:
        """Write ``records`` synchronously in one transaction, leaving out any whose event id is
        already stored, and run ``within(conn, new)`` in that same transaction (an import moves
        its cursor there, so a page and its cursor commit together or not at all). Returns how
        many were new."""
        rows = [chain.event_row(rec, self.instance_id) for rec in records]
        with self.store.write_transaction() as conn:
            rows = _without_existing(conn, rows) if rows else rows
            if rows:
                before = chain.head(conn)
                after = chain.append(conn, rows)
                self._maybe_checkpoint(conn, before, after)
            if within is not None:
                within(conn, len(rows))
        with self._lock:
            self._stats["written"] += len(rows)
        return len(rows)

    def stats(self) -> dict[str, Any]:
        """Counters for monitoring: queued, written, spilled, reingested, batches, checkpoints,
        last_error, where the writing runs (``writer``: thread or process, ``writer_pid``) and,
        per forwarding destination, what this process sent there and its last failure."""
        forwarding = [{"destination": f.forwarder.name, "sent": f.forwarder.sent, "last_error": f.last_error}
                      for f in self._forwarders]
        with self._lock:
            process = self._process
            pid = None if process is None else process.pid
            return {"queued": len(self._buf), **self._stats, "last_error": self._last_error,
                    "writer": self._writing, "writer_pid": pid, "forwarding": forwarding}

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid while one runs (``writer="process"``), else None."""
        process = self._process
        return None if process is None else process.pid

    # ------------------------------------------------------------------ writer thread

    def _next_batch(self) -> list[AuditRecord] | None:
        with self._lock:
            while not self._buf:
                if self._closing:
                    return None
                self._not_empty.wait()
            if len(self._buf) < self.batch_size and not self._closing and not self._flush_waiters:
                # Let the batch fill a little: one transaction for many events is what
                # makes the writer fast. record() wakes us early when the batch is full.
                self._not_empty.wait(self.flush_interval)
            n = min(self.batch_size, len(self._buf))
            batch = [self._buf.popleft() for _ in range(n)]
            self._not_full.notify_all()
            return batch

    def _write_loop(self) -> None:
        process = self._start_process() if self.writer == "process" else None
        if process is None:
            self._reingest_spills()  # (a writer process does this itself when it starts)
            self._start_retention()  # (and applies the retention policy itself)
        while True:
            records = self._next_batch()
            if records is None:
                break
            if process is not None:
                process = self._deliver(process, records)
                if process is not None:
                    continue
            self._write_records(records)
        if process is not None:
            self._absorb(process.stop(timeout=30.0))
            with self._lock:
                self._process = None

    def _write_records(self, records: list[AuditRecord]) -> None:
        """The store work for one batch, in this process."""
        self._in_process_writes = True
        sqlite = self.store.dialect == "sqlite"
        batch: list[chain.Prepared] = []
        for rec in records:
            try:
                batch.append(chain.prepare_record(rec, self.instance_id, sqlite=sqlite))
            except Exception as exc:  # noqa: BLE001  (one unstorable record must not stop the others)
                self._note_error(exc)
                log.error("connect-audit recorder: event %s cannot be stored: %s", rec.event_id, exc)
                self._settle(1)
        self._keep_partitions_ahead()
        try:
            self._write_batch(batch)
        except BaseException as exc:  # noqa: BLE001  (the writer must never die with events in hand)
            self._note_error(exc)
            with contextlib.suppress(Exception):
                self._spill([_unlinked(p.row) for p in batch])
        self._settle(len(batch))
        self._maybe_fold_rollups()  # after the acknowledgement: flush() never waits for it

    # ------------------------------------------------------------------ retention

    def _start_retention(self) -> None:
        if self.retention is None or self._retention_thread is not None:
            return
        self._retention_thread = threading.Thread(
            target=self._retention_loop, name="connect-audit-retention", daemon=True)
        self._retention_thread.start()

    def _retention_loop(self) -> None:
        wait = self.retention_delay
        while not self._retention_stop.wait(wait):
            wait = self.retention_interval
            self.apply_retention()

    def apply_retention(self) -> retention_mod.PolicyRun | None:
        """Apply the retention policy now (the recorder also does it daily by itself)."""
        if self.retention is None:
            return None
        started = datetime.now(UTC)
        try:
            # Short steps with a pause between them: this recorder's batches (and any other
            # writer's) take the lock in between, so a large first purge never holds them up.
            run = retention_mod.apply_policy(self.store, self.retention, instance_id=self.instance_id,
                                             checkpoint_key=self._key(), pause=0.02)
        except Exception as exc:  # noqa: BLE001  (retried at the next interval; never costs an event)
            self._note_error(exc)
            return None
        with self._lock:
            self._stats["retained"] += run.removed
            self._last_retention = {"at": started, "removed": run.removed, "purges": len(run.purges)}
        if run.removed:
            log.info("connect-audit recorder: retention removed %d events (%s)", run.removed,
                     self.retention.describe())
        return run

    # ------------------------------------------------------------------ writer process

    def _start_process(self) -> WriterProcess | None:
        """A running writer process, or None (and a logged reason): then this process writes."""
        process = WriterProcess(entry="collector.recorder:run_writer_process", config={
            "store": self.store.reopen_args(),
            "recorder": {
                "queue_size": max(self.queue_size, self.batch_size), "batch_size": self.batch_size,
                "flush_interval": self.flush_interval, "spill_dir": self.spill_dir,
                "checkpoint_every": self.checkpoint_every, "instance_id": self.instance_id,
                "rollup_interval": self.rollup_interval, "retention": self.retention,
                "retention_interval": self.retention_interval, "retention_delay": self.retention_delay,
                "forward": (),  # (forwarding runs in this process, woken by the child's answers)
            },
        })
        try:
            process.start()
        except WriterGone as exc:
            self._note_error(exc)
            log.warning("connect-audit recorder: %s; writing in this process instead", exc)
            self._writing = "thread"
            return None
        with self._lock:
            self._process, self._child_seen = process, {}
        return process

    def _deliver(self, process: WriterProcess, records: list[AuditRecord]) -> WriterProcess | None:
        """Hand a batch to the writer process, restarting it once if it died; None: write here.

        A batch is settled only on the child's answer, so a child killed mid-batch loses
        nothing: the batch goes again to its successor (or is written here), and events the
        dead child had already committed are recognised by their event_id and not doubled.
        """
        for attempt in (1, 2):
            try:
                self._absorb(process.write(records))
            except WriterGone as exc:
                self._note_error(exc)
                replacement = self._start_process() if attempt == 1 and not self._closed else None
                if replacement is None:
                    log.warning("connect-audit recorder: %s; writing in this process from now on", exc)
                    with self._lock:
                        self._process, self._writing = None, "thread"
                    return None
                process = replacement
                continue
            self._settle(len(records))
            return process
        return None

    def _absorb(self, counters: dict[str, Any] | None) -> None:
        """Add what the writer process reports since its last answer to this recorder's counters."""
        if not counters:
            return
        with self._lock:
            for key in self._stats:
                self._stats[key] += counters.get(key, 0) - self._child_seen.get(key, 0)
            if counters.get("last_error") and counters["last_error"] != self._child_seen.get("last_error"):
                self._last_error = counters["last_error"]
            self._child_seen = counters

    def _settle(self, n: int) -> None:
        with self._lock:
            self._settled += n
            self._settled_cv.notify_all()
        for forwarder in self._forwarders:
            forwarder.wake()

    def _keep_partitions_ahead(self) -> None:
        """On a partitioned PostgreSQL store, create this month's partition and the next
        ones' well before their first event (checked hourly), so no batch waits on DDL."""
        if self.store.dialect != "postgresql" or time.monotonic() < self._partitions_due:
            return
        self._partitions_due = time.monotonic() + PARTITIONS_CHECK_INTERVAL
        try:
            with self.store.write_transaction() as conn:
                made = partitions.keep_ahead(conn, datetime.now(UTC))
        except Exception as exc:  # noqa: BLE001  (each batch still covers its own months)
            self._note_error(exc)
            return
        if made:
            log.info("connect-audit recorder: created partitions %s", ", ".join(made))

    def _write_batch(self, batch: list[chain.Prepared]) -> None:
        if time.monotonic() < self._store_down_until:
            self._spill([_unlinked(p.row) for p in batch])
            return
        try:
            written = self._insert_prepared(batch)
        except StoreUnavailable as exc:
            self._note_error(exc)
            self._store_down_until = time.monotonic() + self._retry_interval
            self._retry_interval = min(self._retry_interval * 2, MAX_RETRY_INTERVAL)
            self._spill([_unlinked(p.row) for p in batch])
            return
        with self._lock:
            self._stats["written"] += written
            self._stats["batches"] += 1
        if not self._unfolded:
            self._unfolded_since = time.monotonic()
        self._unfolded += written
        self._retry_interval = 0.5
        if self._spill_path is not None:
            # The store is back: bring what was spilled during the outage home now.
            self._close_spill()
            self._reingest_spills()

    def _maybe_fold_rollups(self, *, force: bool = False) -> None:
        if self.rollup_interval is None:
            return
        now = time.monotonic()
        if not force:
            if not self._unfolded or now < self._next_fold:
                return
            with self._lock:
                busy = len(self._buf) >= self.batch_size  # more than the writer keeps up with
            lagging = (self._unfolded >= ROLLUP_MAX_LAG_EVENTS
                       or now - self._unfolded_since >= ROLLUP_MAX_LAG_SECONDS)
            if busy and not lagging:
                return  # a burst: write the events first, fold when it ends
        self._next_fold = now + self.rollup_interval
        self._unfolded = 0
        from collector import query  # the rollups' owner; imported late, off the start-up path

        try:
            query.refresh_rollups(self.store, limit=ROLLUP_FOLD_LIMIT)
        except Exception as exc:  # noqa: BLE001  (the writer thread must outlive any fold)
            # Rollups are derived data: a failed fold is retried next time and never
            # costs an event. The dashboard reads the unfolded tail from the log meanwhile.
            self._note_error(exc)

    def _insert_prepared(self, batch: list[chain.Prepared]) -> int:
        for attempt in (1, 2):
            try:
                with self.store.write_transaction() as conn:
                    if attempt == 2:
                        rows = [p.row for p in batch]
                        kept = {id(r) for r in _without_existing(conn, rows)}
                        batch = [p for p, r in zip(batch, rows, strict=True) if id(r) in kept]

                    before, after = chain.append_prepared(conn, batch)
                    self._maybe_checkpoint(conn, before, after)
                return len(batch)
            except sa.exc.IntegrityError:
                # An event_id that is already stored (a record retried by its caller):
                # drop the duplicates and try once more.
                if attempt == 2:
                    raise
        return 0

    def _insert(self, rows: list[dict[str, Any]]) -> int:
        """Append plain rows (re-ingested spill lines), skipping event ids already stored."""
        with self.store.write_transaction() as conn:
            rows = _without_existing(conn, rows)
            before = chain.head(conn)
            after = chain.append(conn, rows)
            self._maybe_checkpoint(conn, before, after)
        return len(rows)

    def _maybe_checkpoint(self, conn: sa.Connection, before: tuple[int, str], after: tuple[int, str]) -> None:
        self._unsigned += after[0] - before[0]
        if after[0] // self.checkpoint_every > before[0] // self.checkpoint_every:
            chain.write_checkpoint(conn, self._key(), after)
            self._unsigned = 0
            with self._lock:
                self._stats["checkpoints"] += 1

    def _final_checkpoint(self) -> None:
        if not self._unsigned:
            return
        try:
            with self.store.write_transaction() as conn:
                chain.write_checkpoint(conn, self._key(), chain.head(conn))
            self._unsigned = 0
            with self._lock:
                self._stats["checkpoints"] += 1
        except (StoreUnavailable, sa.exc.SQLAlchemyError) as exc:
            self._note_error(exc)

    def _key(self) -> chain.CheckpointKey:
        if self._checkpoint_key is None:
            self._checkpoint_key = chain.CheckpointKey.for_store(self.store)
        return self._checkpoint_key

    def _note_error(self, exc: BaseException) -> None:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        with self._lock:
            self._last_error = message
        log.warning("connect-audit recorder: %s", message)

    # ------------------------------------------------------------------ spill files

    def _spill(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self._spill_path is None:
            files.private_dir(self.spill_dir)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
            self._spill_path = self.spill_dir / f"spill-{self._spill_tag}-{os.getpid()}-{stamp}.ndjson"
        lines = "".join(_spill_line(row) for row in rows)
        created = not self._spill_path.exists()
        fd = os.open(self._spill_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, lines.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.spill_dir)  # so that the new file's name survives a power loss too

        with self._lock:
            self._stats["spilled"] += len(rows)
        log.warning("connect-audit recorder: %d events spilled to %s", len(rows), self._spill_path)

    def _close_spill(self) -> None:
        self._spill_path = None

    def spill_files(self) -> list[Path]:
        """Spill files of this store waiting in ``spill_dir`` (none once re-ingested)."""
        if not self.spill_dir.is_dir():
            return []
        return sorted(self.spill_dir.glob(f"spill-{self._spill_tag}-*.ndjson*"))

    def _reingest_spills(self) -> None:
        for path in self.spill_files():
            if path == self._spill_path:
                continue
            claimed = _claim(path)
            if claimed is None:
                continue
            try:
                count = self._reingest_file(claimed)
            except (StoreUnavailable, sa.exc.SQLAlchemyError, OSError) as exc:
                self._note_error(exc)
                with contextlib.suppress(OSError):
                    claimed.rename(path.with_name(path.name.split(".ndjson")[0] + ".ndjson"))
                return
            claimed.unlink()
            with self._lock:
                self._stats["reingested"] += count
            log.info("connect-audit recorder: re-ingested %d events from %s", count, path.name)

    def _reingest_file(self, path: Path) -> int:
        count = 0
        pending: list[dict[str, Any]] = []
        with path.open("r", encoding="utf-8") as fh:
            for line in fh:
                row = _parse_spill_line(line)
                if row is None:
                    continue  # a line torn by a crash mid-write was never acknowledged
                pending.append(row)
                if len(pending) >= self.batch_size:
                    count += self._insert(pending)
                    pending = []
        if pending:
            count += self._insert(pending)
        return count


# ---------------------------------------------------------------------- the writer process's side


def run_writer_process() -> int:
    """The writer process (see :mod:`collector.writer`): open the store, then write every
    batch the parent sends with an ordinary in-process recorder, answering each when durable."""
    answers = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # a stray print() must never corrupt the answers
    source = sys.stdin.buffer.raw if hasattr(sys.stdin.buffer, "raw") else sys.stdin.buffer
    logging.basicConfig(level=logging.WARNING, format=f"connect-audit writer[{os.getpid()}]: %(message)s")
    try:
        settings = read_frame(source)
    except WriterGone:
        return 0  # the parent went away before saying anything
    try:
        store = Store.open(create=False, **settings["store"])
        recorder = Recorder(store, writer="thread", **settings["recorder"]).start()
    except (ConnectAuditError, OSError) as exc:
        answer(answers, ("error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
        return 2
    answer(answers, ("ready", os.getpid()))
    try:
        _write_what_arrives(source, answers, recorder)
    finally:
        recorder.close()
        store.close()
    with contextlib.suppress(OSError):
        answer(answers, ("closed", recorder.stats()))
    return 0


def _write_what_arrives(source: Any, answers: Any, recorder: Recorder) -> None:
    event_id_at = FIELDS.index("event_id")
    while True:
        try:
            batch = read_frame(source)
        except WriterGone:
            return  # end of input: the parent closed the pipe (or exited)
        for values in batch:
            try:
                recorder.record(AuditRecord(*values))
            except (TypeError, ValueError) as exc:  # one unstorable record must not stop the others
                log.error("connect-audit writer: event %s cannot be stored: %s", values[event_id_at], exc)
        recorder.flush()
        try:
            answer(answers, ("ok", recorder.stats()))
        except OSError:
            return  # the parent is gone; what it sent is written, the rest was never sent


# ---------------------------------------------------------------------- helpers


def _store_identity(store: Store) -> str:
    if store.dialect == "sqlite":
        return str(Path(store.url).resolve())
    return store.url


def _spill_line(row: dict[str, Any]) -> str:
    doc = {k: v for k, v in row.items() if k not in ("seq", "prev_hash", "hash")}
    doc["ts"] = chain.ts_text(doc["ts"])
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True) + "\n"


def _parse_spill_line(line: str) -> dict[str, Any] | None:
    if not line.endswith("\n"):
        return None
    try:
        doc = json.loads(line)
        doc["ts"] = datetime.strptime(doc["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except (ValueError, KeyError, TypeError):
        return None
    return doc


def _claim(path: Path) -> Path | None:
    """Take a spill file for re-ingestion, unless a live process still owns it.

    The owner is the process re-ingesting it (``.ingesting.PID``) or, for a plain spill
    file, the process that spills into it (``spill-TAG-PID-STAMP.ndjson``): taking a file
    that is still being appended to could lose the lines written after it was read.
    """
    if ".ingesting." in path.name:
        owner = path.name.rsplit(".ingesting.", 1)[1]
    else:
        parts = path.name.split("-")
        owner = parts[2] if len(parts) > 3 else ""
    if owner.isdigit() and _alive(int(owner)):
        return None
    base = path.name.split(".ndjson")[0] + ".ndjson"
    claimed = path.with_name(f"{base}.ingesting.{os.getpid()}")
    try:
        path.rename(claimed)
    except FileNotFoundError:
        return None
    return claimed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover from an earlier failed attempt: take it again
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlinked(row: dict[str, Any]) -> dict[str, Any]:
    """A row as it was before linking (for the spill file: the chain is recomputed on re-ingest)."""
    return {k: v for k, v in row.items() if k not in ("seq", "hash")} | {"prev_hash": None}


def _without_existing(conn: sa.Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events = chain.EVENTS
    ids = list({row["event_id"] for row in rows})
    present: set[str] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        present.update(
            conn.execute(sa.select(events.c.event_id).where(events.c.event_id.in_(chunk))).scalars()
        )
    unique: list[dict[str, Any]] = []
    for row in rows:
        if row["event_id"] not in present:
            present.add(row["event_id"])
            unique.append(row)
    return unique


def _after_fork_in_child() -> None:
    # A forked worker (gunicorn --preload, multiprocessing) inherits the recorder object but
    # not its thread: start afresh with an empty queue (the parent writes its own events)
    # and new database connections.
    for recorder in list(_live):
        if recorder._process is not None:
            recorder._process.forget()  # the parent's writer process is the parent's
        recorder._reset_state()
        with contextlib.suppress(Exception):
            recorder.store.engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

