"""A separate process that records events through the real Recorder (for crash/concurrency tests).

    python tests/writer_process.py URL --events N --prefix P [--flush-every K] [--lock-timeout S]
        [--durability full|normal] [--wait-for-go]

Event ids are ``P-000000``, ``P-000001``, ...; after each successful ``flush()`` it prints
``acked N`` (every event before N is durable), and at the end one JSON line of stats. With
``--wait-for-go`` it prints ``ready`` once its store and recorder are open and waits for a line
on standard input, so that a test can start several writers at the same moment.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storekit import record

from collector.recorder import Recorder
from collector.store import Store


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--flush-every", type=int, default=0)
    parser.add_argument("--lock-timeout", type=float, default=None)
    parser.add_argument("--durability", default="full")
    parser.add_argument("--wait-for-go", action="store_true")
    args = parser.parse_args()
    store = Store.open(args.url, lock_timeout=args.lock_timeout, durability=args.durability)
    rec = Recorder(store, batch_size=200).start()
    if args.wait_for_go:
        print("ready", flush=True)
        sys.stdin.readline()
    for i in range(args.events):
        rec.record(record(i, event_id=f"{args.prefix}-{i:06d}"))
        if args.flush_every and (i + 1) % args.flush_every == 0 and rec.flush(timeout=60):
            print(f"acked {i + 1}", flush=True)
    rec.flush(timeout=120)
    rec.close(timeout=120)
    print(json.dumps(rec.stats()), flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
