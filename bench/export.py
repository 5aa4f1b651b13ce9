"""Export at scale: ``connect-audit export`` of 1M events against a raw ``csv.writer``.

Both run as child processes over the same SQLite table, in the same run; each one's wall
time and peak resident memory (``wait4`` rusage) are printed. The baseline is the floor: a
``SELECT *`` in chain order written with ``csv.writer``, no neutralisation, no timestamp
formatting, no hashing, no audit event. They run A B A B (``--repeat`` rounds, default 3) and
the median ratio is printed with its spread. Goals (issue 16): ratio <= 1.3x, peak memory
under 200 MB whatever the row count.

    .venv/bin/python bench/export.py [--database PATH] [--events N]
    .venv/bin/python bench/export.py --pg-url postgresql+psycopg://USER:PW@HOST/postgres --events N

With ``--pg-url`` the same comparison runs on PostgreSQL: a database
``connect_audit_bench_<N>`` beside the one named (a role that may create databases) is filled
by ``connect-audit generate``, or reused when it holds N events, and kept for the next run;
the baseline reads it with a psycopg server-side cursor.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from _stores import ensure_pg_store, ensure_store  # noqa: E402  (bench/_stores.py)

BASELINE = """
import csv, sqlite3, sys
con = sqlite3.connect(sys.argv[1])
with open(sys.argv[2], "w", newline="") as fh:
    w = csv.writer(fh)
    cur = con.execute("SELECT * FROM audit_events ORDER BY seq")
    w.writerow([d[0] for d in cur.description])
    while True:
        rows = cur.fetchmany(2000)
        if not rows:
            break
        w.writerows(rows)
"""


PG_BASELINE = """
import csv, sys
import psycopg
with psycopg.connect(sys.argv[1]) as con, open(sys.argv[2], "w", newline="") as fh:
    w = csv.writer(fh)
    with con.cursor(name="bench") as cur:
        cur.itersize = 2000
        cur.execute("SELECT * FROM audit_events ORDER BY seq")
        first = True
        for row in cur:
            if first:
                w.writerow([d.name for d in cur.description])
                first = False
            w.writerow(row)
"""


def _run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[2:5]} failed: {err}")
    return elapsed, usage.ru_maxrss / 1024


def _report(title: str, results: dict[str, list[tuple[float, float]]], sizes: dict[str, int]) -> None:
    """Medians over the interleaved runs, each run's ratio to the baseline run beside it."""
    import statistics

    print(title)
    for name, runs in results.items():
        secs = statistics.median(t for t, _ in runs)
        peak = max(r for _, r in runs)
        print(
            f"  {name:<22}{secs:>7.2f} s   peak RSS {peak:>6.0f} MiB   "
            f"{sizes[name] / 2**20:>6.0f} MiB written"
        )
    ratios = [
        a[0] / b[0] for a, b in zip(results["connect-audit export"], results["raw csv.writer"], strict=True)
    ]
    ratio = statistics.median(ratios)
    peak = max(r for _, r in results["connect-audit export"])
    print(
        f"  ratio median {ratio:.2f}x (spread {min(ratios):.2f}x to {max(ratios):.2f}x over {len(ratios)} "
        f"A B rounds; goal <= 1.3x: {'ok' if ratio <= 1.3 else 'MISSED'}); "
        f"peak {peak:.0f} MiB (goal < 200 MB: {'ok' if peak * 1.048576 < 200 else 'MISSED'})"
    )


def _rounds(baseline: list[str], database: str, out: Path, repeat: int, env: dict[str, str] | None = None):
    """``repeat`` rounds of the baseline then the export, interleaved so that drift hits both
    alike: each one's (seconds, peak MiB) per round, and the size of what each wrote."""
    results = {"connect-audit export": [], "raw csv.writer": []}
    export = [
        sys.executable,
        "-m",
        "collector.cli",
        "export",
        "--database",
        database,
        "-o",
        str(out / "export.csv"),
    ]
    for _ in range(repeat):
        results["raw csv.writer"].append(_run([*baseline, str(out / "raw.csv")], env))
        results["connect-audit export"].append(_run(export, env))
    sizes = {
        name: (out / f).stat().st_size
        for name, f in (("connect-audit export", "export.csv"), ("raw csv.writer", "raw.csv"))
    }
    return results, sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database", metavar="PATH", default=str(ROOT / "data" / "bench-dashboard-1_000_000.db")
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="A B rounds (default 3)")
    parser.add_argument("--pg-url", metavar="URL", help="run on PostgreSQL instead (see above)")
    args = parser.parse_args()
    if args.pg_url:
        return _postgresql(args.pg_url, args.events, args.repeat)
    path = Path(args.database)
    ensure_store(path, args.events)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        out = Path(tmp)
        results, sizes = _rounds(
            [sys.executable, "-c", BASELINE, str(path)], f"sqlite:///{path}", out, args.repeat
        )
    _report(f"export of {args.events:,} events (SQLite)", results, sizes)
    return 0


def _postgresql(admin_url: str, events: int, repeat: int) -> int:
    import sqlalchemy as sa

    sa_url = ensure_pg_store(admin_url, events)
    libpq_url = sa.engine.make_url(sa_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with tempfile.TemporaryDirectory() as tmp:
        results, sizes = _rounds([sys.executable, "-c", PG_BASELINE, libpq_url], sa_url, Path(tmp), repeat,
                                 dict(os.environ))
    _report(f"export of {events:,} events (PostgreSQL, partitioned by month)", results, sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
