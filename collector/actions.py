"""The tool's own acts, recorded in the log like every event: exports, sign-ins, account changes.

They are written synchronously (the act is not done until its record is durable) through the
recorder, the log's one writer; callers outside the collector (the dashboard) come through here
rather than reaching into the recorder.
"""

from __future__ import annotations

from collector.events import AuditRecord
from collector.recorder import Recorder
from collector.store import Store


def write_internal(store: Store, record: AuditRecord, *, recorder: Recorder | None = None) -> str:
    """Append one of the tool's own events (an export, a sign-in) synchronously, through
    ``recorder`` or a short-lived one, and return its event id."""
    if recorder is not None:
        recorder.write_now(record)
        return record.event_id
    own = Recorder(store)
    try:
        own.write_now(record)
    finally:
        own.close()
    return record.event_id
