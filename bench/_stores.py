"""Shared by the scale benchmarks: a SQLite store of N generated events, reused across runs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ensure_store(path: Path, events: int) -> None:
    """Fill ``path`` with ``events`` events by ``connect-audit generate`` unless it has them."""
    if path.exists():
        con = sqlite3.connect(path)
        try:
            have = con.execute("SELECT count(*) FROM audit_events").fetchone()[0]
        except sqlite3.DatabaseError:
            have = 0
        finally:
            con.close()
        if have >= events:
            print(f"reusing {path} ({have:,} events)")
            return
        print(f"{path} has {have:,} events; regenerating")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    print(f"generating {events:,} events into {path} ...", flush=True)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "collector.cli", "generate", "--database", f"sqlite:///{path}",
         "--events", str(events)],
        check=True, cwd=ROOT,
    )
    print(f"generated in {time.perf_counter() - started:.0f} s")


