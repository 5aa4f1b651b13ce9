"""Forwarding throughput: ``connect-audit forward`` to a syslog receiver, against a raw socket
write of the same lines, in the same run.

A store of ``--events`` generated events (default 20,000) is forwarded over ``syslog+tcp`` to
a loopback sink (a process of its own that reads and discards, and closes when the sender
half-closes, as rsyslog does). The product reads each batch from the store, maps it to ECS,
frames it as RFC 5424 and waits for the receiver's close after every batch (its at-least-once
handshake), then moves the cursor. The baseline writes the very same framed bytes, already
built, over one connection; a second baseline is the least a hand-written forwarder does
(``sqlite3`` rows dumped as JSON in a syslog frame, one connection, no cursor, no
acknowledgement, no field mapping). Rounds run A B A B (``--rounds``, default 5); the median ratio
and its spread are printed.

    .venv/bin/python bench/forward.py [--events N] [--batch N] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SINK = r"""
import socket, sys, threading
server = socket.create_server(("127.0.0.1", 0))
print(server.getsockname()[1], flush=True)
def drain(conn):
    with conn:
        while conn.recv(1 << 16):
            pass
while True:
    conn, _ = server.accept()
    threading.Thread(target=drain, args=(conn,), daemon=True).start()
"""


def _fill(url: str, events: int) -> None:
    subprocess.run(
        [sys.executable, "-m", "collector.cli", "generate", "--database", url, "--events", str(events)],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from collector.forward import Forwarder
    from collector.store import Store

    work = Path(tempfile.mkdtemp(prefix="bench-forward-"))
    os.environ["CONNECT_AUDIT_DATA_DIR"] = str(work / "data")
    url = f"sqlite:///{work / 'audit.db'}"
    print(f"generating {args.events:,} events ...", flush=True)
    _fill(url, args.events)
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE)
    port = int(sink.stdout.readline())
    target_url = f"syslog+tcp://127.0.0.1:{port}"
    try:
        with Store.open(url) as store:
            frames = _frames(store, port, args.batch)
            product, raw, hand = [], [], []
            for r in range(args.rounds):
                started = time.perf_counter()
                fwd = Forwarder(store, target_url, name=f"bench-{r}", batch_size=args.batch)
                fwd.claim()
                sent = fwd.forward_available()
                product.append(time.perf_counter() - started)
                fwd.close()
                started = time.perf_counter()
                _raw_write(port, frames)
                raw.append(time.perf_counter() - started)
                started = time.perf_counter()
                _hand_written(work / "audit.db", port, args.batch)
                hand.append(time.perf_counter() - started)
        ratios = [p / b for p, b in zip(product, raw, strict=True)]
        hand_ratios = [p / b for p, b in zip(product, hand, strict=True)]
    finally:
        sink.kill()
    n = sent
    print(
        f"\n{n:,} events, batches of {args.batch}, {args.rounds} rounds A B A B, syslog+tcp, loopback sink"
    )
    print(
        f"connect-audit forward  median {statistics.median(product):.3f} s "
        f"({n / statistics.median(product):,.0f} events/s)"
    )
    print(
        f"raw socket write       median {statistics.median(raw):.3f} s "
        f"({n / statistics.median(raw):,.0f} events/s, {sum(map(len, frames)) / n:.0f} bytes per event)"
    )
    print(
        f"hand-written forwarder median {statistics.median(hand):.3f} s "
        f"({n / statistics.median(hand):,.0f} events/s: sqlite3 rows as JSON, framed, one connection)"
    )
    print(
        f"ratio to the raw write median {statistics.median(ratios):.1f}x "
        f"(spread {min(ratios):.1f}x to {max(ratios):.1f}x)"
    )
    print(
        f"ratio to hand-written  median {statistics.median(hand_ratios):.2f}x "
        f"(spread {min(hand_ratios):.2f}x to {max(hand_ratios):.2f}x)"
    )
    return 0


def _frames(store, port: int, batch: int) -> list[bytes]:
    """The framed bytes the forwarder sends, per batch, built once for the baseline."""
    from collector.forward import Forwarder

    fwd = Forwarder(store, f"syslog+tcp://127.0.0.1:{port}", name="bench-frames", batch_size=batch)
    out, after = [], 0
    while docs := fwd._batch(after):
        out.append(fwd.target.frames(docs))
        after = docs[-1]["event"]["sequence"]
    return out


def _hand_written(path: Path, port: int, batch: int) -> None:
    """The least a forwarder must do: read the rows, write each as JSON in a syslog frame."""
    import json
    import sqlite3

    con = sqlite3.connect(path)
    cur = con.execute("SELECT * FROM audit_events ORDER BY seq")
    names = [c[0] for c in cur.description]
    with socket.create_connection(("127.0.0.1", port)) as conn:
        while rows := cur.fetchmany(batch):
            lines = (
                b"<110>1 - - connect-audit - - - " + json.dumps(dict(zip(names, r, strict=True))).encode()
                for r in rows
            )
            conn.sendall(b"".join(b"%d %s" % (len(m), m) for m in lines))
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(4096):
            pass
    con.close()


def _raw_write(port: int, frames: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        for chunk in frames:
            conn.sendall(chunk)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(4096):
            pass


if __name__ == "__main__":
    sys.exit(main())
