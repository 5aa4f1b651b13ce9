"""Request-path overhead: what the collector adds to every request of the app it wraps.

Stacks serve the same request (a Confluence page load: ``GET /panel?...`` with the host's
JWT in the ``Authorization`` header), called in-process as a WSGI server calls them,
interleaved in rounds (A B C D, A B C D ...) so that a noisy neighbour hits all of them:

* **floor**: the app behind a minimal middleware that does only a bare PyJWT HS256
  ``jwt.decode`` of the token (signature and ``exp``; no qsh, no install lookup, nothing
  recorded), what "verify a Connect JWT" costs at the least;
* **collector, writer thread**: the same app behind :meth:`ConnectAudit.wsgi_middleware`
  with recording on: strict verification (qsh included), the install registry, and one
  audit event per request queued to the recorder, whose background writer thread inserts
  it into a real SQLite store (WAL, ``synchronous=FULL``) in a temporary directory (the
  default, ``CONNECT_AUDIT_WRITER=thread``);
* **collector, writer process**: the same with ``writer="process"``: the store work runs in a
  writer process beside this one (``CONNECT_AUDIT_WRITER=process``);
* **collector, writer held back until idle**: the writer thread waits until the round is
  over, as if it worked only in a server's idle time: the request thread's own cost.

Between stacks every writer is left to finish its work (the rollup fold after a burst
included), so that no stack is timed while another's writer is busy. A stack's figure for a
round is its time over the floor's in the same round; the report gives the median over the
rounds and the spread.

Two apps are measured: ``flask`` (a small Flask view, the shape of the example app) and
``bare`` (a WSGI callable that does nothing, so the ratio is the collector against PyJWT
alone, the harshest view). The goal (issues 6 and 14) is collector/floor <= 1.3.

It then shows where the time goes and that recording is off the request thread:

* the request thread's CPU time per request (``time.thread_time``) against the writer's CPU
  time per event (the writer thread's from ``/proc/self/task/<tid>/stat``, the writer
  process's from ``/proc/<pid>/stat``);
* ``Recorder.record()`` alone (the only recording work on the request thread), the verifier
  alone, and the backlog the writer still had when the timed loop ended;
* ``--against REV``: the same measurement of this tree and of a git revision's collector
  (for example the previous release), each run in a process of its own, alternately
  (A B A B), ``--repeat`` times (default 3), with the median and spread over the runs;
* ``--profile``: a cProfile of the collector stack's request thread, to find hot spots.
* ``--gil-probe``: the floor alone, beside a thread busy outside the GIL, and beside one
  busy inside it: what a background thread's Python work costs a back-to-back loop.

    python bench/overhead.py [--requests 3000] [--rounds 5] [--app flask|bare|both] [--profile]
                             [--gil-probe] [--against REV [--repeat 3]]
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# --against runs another revision's collector: the directory holding it comes first.
sys.path.insert(0, os.environ.get("_CONNECT_AUDIT_BENCH_CODE") or sys.path[0])

import jwt

from collector import signing
from collector.app import ConnectAudit
from collector.events import AuditRecord

GOAL = 1.3
ROOT = Path(__file__).resolve().parent.parent
CODE_ENV = "_CONNECT_AUDIT_BENCH_CODE"
APP_KEY = "com.example.bench"
APP_BASE = "https://audit-app.example.com"
CLIENT_KEY = str(uuid.uuid4())
SECRET = secrets.token_urlsafe(32)
# A page load as Confluence sends it: the general page's URL with the usual context parameters.
TARGET = (
    "/panel?pageId=123456&spaceKey=DS&xdm_e=https%3A%2F%2Fexample.atlassian.net"
    "&xdm_c=channel-com.example.bench__panel&cp=%2Fwiki&xdm_deprecated_addon_key_do_not_use=com.example.bench"
    "&lic=active&cv=1001.0.0-abc&tz=Europe%2FBerlin&loc=en-GB&user_id=&user_key="
)
ROUTES = {"POST /installed": "lifecycle", "GET /panel": "request"}


# ----------------------------------------------------------------------------- the two stacks


def bare_app(environ: dict, start_response: Callable) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]


def flask_app() -> Callable:
    from flask import Flask, request

    app = Flask("bench")

    @app.get("/panel")
    def panel():
        return f"<p>page {request.args.get('pageId', '')} in {request.args.get('spaceKey', '')}</p>"

    return app.wsgi_app


class PyJwtOnly:
    """The floor: take the token from the header, ``jwt.decode`` it, call the app."""

    def __init__(self, app: Callable, secret: str) -> None:
        self.app = app
        self.secret = secret

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        header = environ.get("HTTP_AUTHORIZATION", "")
        try:
            environ["claims"] = jwt.decode(header[4:], self.secret, algorithms=["HS256"])
        except jwt.InvalidTokenError:
            start_response("401 Unauthorized", [("Content-Length", "0")])
            return [b""]
        return self.app(environ, start_response)


def collector_stack(app: Callable, root: Path, *, deferred: bool = False,
                    writer: str = "thread") -> tuple[Callable, ConnectAudit]:
    """The app behind the collector; ``deferred`` holds the writer back until ``flush()``
    (a batch size and an interval no round reaches), as if it ran in the server's idle time;
    ``writer`` is where the recorder's store work runs (a thread here, or a writer process)."""
    root.mkdir(parents=True, exist_ok=True)
    options: dict = {"spill_dir": root / "spill"}
    if writer != "thread":
        options["writer"] = writer
    if deferred:
        options.update(queue_size=1_000_000, batch_size=1_000_000, flush_interval=3600.0)
    audit = ConnectAudit(
        app_key=APP_KEY, base_url=APP_BASE, database=f"sqlite:///{root / 'audit.db'}",
        install_keys=str(root), descriptor={"key": APP_KEY, "scopes": ["READ"]},
        recorder_options=options,
    )
    audit.apply_lifecycle("installed", {
        "key": APP_KEY, "clientKey": CLIENT_KEY, "sharedSecret": SECRET,
        "baseUrl": "https://example.atlassian.net/wiki", "productType": "confluence",
    })
    return audit.wsgi_middleware(app, ROUTES), audit


def has_writer_process() -> bool:
    """Whether the code under test can run its writer in a process (older code cannot)."""
    import inspect

    from collector.recorder import Recorder

    return "writer" in inspect.signature(Recorder).parameters


# ----------------------------------------------------------------------------- driving


def environ_factory(token: str) -> Callable[[], dict]:
    path, _, query = TARGET.partition("?")
    template = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": query,
        "RAW_URI": TARGET, "REQUEST_URI": TARGET, "SERVER_NAME": "audit-app.example.com",
        "SERVER_PORT": "443", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "https",
        "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False, "HTTP_HOST": "audit-app.example.com",
        "HTTP_AUTHORIZATION": f"JWT {token}", "HTTP_USER_AGENT": "Confluence", "CONTENT_LENGTH": "",
    }

    def make() -> dict:
        env = template.copy()
        env["wsgi.input"] = io.BytesIO(b"")
        env["wsgi.errors"] = sys.stderr
        return env

    return make


def _start_response(status: str, headers: list, exc_info=None) -> Callable:
    if not status.startswith("200"):
        raise SystemExit(f"the stack answered {status}: the benchmark request is not accepted")
    return lambda data: None


def serve(stack: Callable, make_env: Callable[[], dict], n: int) -> tuple[float, float]:
    """n requests; returns (wall seconds, request-thread CPU seconds) per request."""
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    for _ in range(n):
        result = stack(make_env(), _start_response)
        for _chunk in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return (time.perf_counter() - wall0) / n, (time.thread_time() - cpu0) / n


def thread_cpu(thread: threading.Thread | None) -> float:
    """CPU seconds (user + system) a thread of this process has used, from procfs."""
    if thread is None or thread.native_id is None:
        return 0.0
    try:
        fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fmt(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} µs"


# ----------------------------------------------------------------------------- measurements


STACKS = {
    "thread": "collector, writer thread",
    "process": "collector, writer process",
    "held": "collector, writer held back until idle",
}


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) the process ``pid`` has used, from procfs."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(audit: ConnectAudit, writer_cpu: Callable[[], float]) -> None:
    """Flush, then wait until the writer is idle: the rollup fold it runs after a burst must not
    land in the next stack's timing (it would slow whichever stack comes next)."""
    audit.flush()
    last, deadline = writer_cpu(), time.monotonic() + 10.0
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = writer_cpu()
        if now == last:
            return
        last = now


def measure(app_name: str, requests: int, rounds: int, profile: bool, breakdown_too: bool = True) -> dict:
    """Each round serves the floor and every collector stack in turn (A B C D, A B C D ...);
    a stack's figure for the round is its time over the floor's in that same round. Between
    stacks every writer is left to finish (``settle``), so no stack pays for another's."""
    app = flask_app() if app_name == "flask" else bare_app
    token = signing.request_token(client_key=CLIENT_KEY, shared_secret=SECRET, method="GET",
                                  url=APP_BASE + TARGET, base_url=APP_BASE, now=time.time(), ttl=3600)
    make_env = environ_factory(token)
    kinds = [k for k in STACKS if k != "process" or has_writer_process()]
    wall = {k: [] for k in ("floor", *kinds)}
    cpu = {k: [] for k in ("floor", *kinds)}
    backlog = {k: [] for k in kinds}
    drain = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="ca-overhead-") as tmp:
        stacks, audits = {"floor": PyJwtOnly(app, SECRET)}, {}
        try:
            for kind in kinds:
                stacks[kind], audits[kind] = collector_stack(
                    app, Path(tmp) / kind, deferred=kind == "held",
                    writer="process" if kind == "process" else "thread")
            for warm in stacks.values():  # imports, caches, the first install lookup
                serve(warm, make_env, 200)
            cpu_of = {kind: functools.partial(thread_cpu, audit.recorder._thread)
                      for kind, audit in audits.items()}
            if "process" in audits:
                cpu_of["process"] = functools.partial(process_cpu, audits["process"].recorder.writer_pid)
            for kind, audit in audits.items():
                settle(audit, cpu_of[kind])
            cpu0 = {kind: cpu_of[kind]() for kind in ("thread", "process") if kind in audits}
            written0 = {k: a.recorder.stats()["written"] for k, a in audits.items()}
            for _ in range(rounds):
                for kind, stack in stacks.items():
                    w, c = serve(stack, make_env, requests)
                    wall[kind].append(w)
                    cpu[kind].append(c)
                    if kind in ("thread", "process"):
                        # What the writer had not yet written when the loop ended; drained
                        # outside the timing, as a server does between requests.
                        backlog[kind].append(audits[kind].recorder.stats()["queued"])
                        t0 = time.perf_counter()
                        audits[kind].flush()
                        drain[kind].append(time.perf_counter() - t0)
                    if kind in audits:
                        settle(audits[kind], cpu_of[kind])
            writer_cpu = {kind: cpu_of[kind]() - spent for kind, spent in cpu0.items()}
            written = {k: audits[k].recorder.stats()["written"] - written0[k] for k in writer_cpu}
            record_cost = time_record(audits["thread"])
            verify_cost, decode_cost = time_verify(audits["thread"], token)
            steps = breakdown(stacks["thread"], audits["thread"], token, app) if breakdown_too else []
            if profile:
                run_profile(stacks["thread"], make_env, requests, audits["thread"])
        finally:
            for audit in audits.values():
                audit.close()
    ratios = {k: [w / f for w, f in zip(wall[k], wall["floor"], strict=True)] for k in kinds}
    print(f"\napp = {app_name}: {rounds} rounds of {requests} requests; median per request (spread), "
          "and the ratio to the floor in the same round")
    print(f"  {'floor (bare PyJWT)':<42}{fmt(statistics.median(wall['floor']))} "
          f"({_spread(wall['floor'])})")
    for kind in kinds:
        median = statistics.median(ratios[kind])
        verdict = "" if kind == "held" else f"   goal <= {GOAL}x: {'met' if median <= GOAL else 'MISSED'}"
        print(f"  {STACKS[kind]:<42}{fmt(statistics.median(wall[kind]))}  {median:5.2f}x "
              f"({min(ratios[kind]):.2f}x to {max(ratios[kind]):.2f}x){verdict}")
    print("  where the time goes:")
    print(f"    bare jwt.decode                         {fmt(decode_cost)}")
    print(f"    TokenVerifier.verify_request (strict)   {fmt(verify_cost)}")
    print(f"    Recorder.record() (request thread)      {fmt(record_cost)}")
    print(f"    request thread CPU, floor               {fmt(min(cpu['floor']))}/request")
    for kind in kinds:
        print(f"    request thread CPU, {kind + ' writer' if kind != 'held' else 'writer held back':<20}"
              f"{fmt(min(cpu[kind]))}/request")
    for kind, spent in writer_cpu.items():
        where = "thread" if kind == "thread" else "process, beside this one"
        per_event = spent / written[kind] if written[kind] else 0.0
        print(f"    writer {kind} CPU{'':<{25 - len(kind)}}{fmt(per_event)}/event "
              f"({written[kind]} events, {where})")
        print(f"    {kind} writer backlog at a round's end   {max(backlog[kind])} events max; "
              f"drained in {max(drain[kind]) * 1000:.0f} ms max")
    if steps:
        print("  request-thread CPU per step (best of 5, thread_time):")
    for label, cost in steps:
        print(f"    {label:<45}{fmt(cost)}")
    return {"app": app_name, "floor_us": statistics.median(wall["floor"]) * 1e6,
            "ratios": {k: statistics.median(v) for k, v in ratios.items()},
            "spread": {k: [min(v), max(v)] for k, v in ratios.items()}}


def _spread(samples: list[float]) -> str:
    return f"{min(samples) * 1e6:.1f} to {max(samples) * 1e6:.1f} µs"


def cpu_cost(fn: Callable[[], object], n: int = 3000, repeat: int = 5) -> float:
    """Best-of-``repeat`` CPU seconds of this thread per call (immune to being descheduled)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.thread_time()
        for _ in range(n):
            fn()
        best = min(best, (time.thread_time() - t0) / n)
    return best


def breakdown(stack: Callable, audit: ConnectAudit, token: str, app: Callable) -> list[tuple[str, float]]:
    """CPU per request of each step the middleware takes on the request thread, measured
    one by one, beside the floor's only step (``jwt.decode``) and the app itself."""
    from collector.qsh import query_string_hash
    from collector.tokens import parse_token

    gate = stack.gate
    path, _, query = TARGET.partition("?")
    header = f"JWT {token}"
    url = APP_BASE + TARGET
    make_env = environ_factory(token)

    def admitted():
        ex = gate.begin("GET", path, query, None)
        gate.admit(ex, header, None)
        return ex

    pool = [admitted() for _ in range(3000)]
    it = iter(pool * 5)
    begin = cpu_cost(lambda: gate.begin("GET", path, query, None))
    admit = cpu_cost(admitted) - begin
    finish = cpu_cost(lambda: gate.finish(next(it), 200), n=3000, repeat=5)
    audit.flush()
    rows = [
        ("floor: jwt.decode", cpu_cost(lambda: jwt.decode(token, SECRET, algorithms=["HS256"]))),
        ("the app itself", cpu_cost(lambda: list(app(make_env(), _start_response)))),
        ("collector: begin (route match, request id)", begin),
        ("collector: admit (verify, tenant, context)", admit),
        ("  of which parse_token (strict JWS)", cpu_cost(lambda: parse_token(token))),
        ("  of which query_string_hash", cpu_cost(lambda: query_string_hash("GET", url, APP_BASE))),
        ("collector: finish (AuditRecord + record())", finish),
        ("collector: whole middleware + app", cpu_cost(lambda: list(stack(make_env(), _start_response)))),
        ("floor: whole middleware + app",
         cpu_cost(lambda: list(PyJwtOnly(app, SECRET)(make_env(), _start_response)))),
    ]
    audit.flush()
    return rows


def time_record(audit: ConnectAudit, n: int = 20_000) -> float:
    """``Recorder.record()`` alone, the request thread's whole share of recording."""
    records = [AuditRecord(direction="incoming", outcome="allowed", method="GET", path="/panel",
                           status=200, tenant_client_key=CLIENT_KEY) for _ in range(n)]
    record = audit.recorder.record
    t0 = time.thread_time()  # CPU of this thread: waiting for the GIL is not record()'s cost
    for rec in records:
        record(rec)
    elapsed = (time.thread_time() - t0) / n
    audit.flush()
    return elapsed


def time_verify(audit: ConnectAudit, token: str, n: int = 5000) -> tuple[float, float]:
    verify = audit.verifier.verify_request
    url = APP_BASE + TARGET
    t0 = time.perf_counter()
    for _ in range(n):
        verify(token, "GET", url)
    verify_cost = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        jwt.decode(token, SECRET, algorithms=["HS256"])
    return verify_cost, (time.perf_counter() - t0) / n


def run_profile(stack: Callable, make_env: Callable[[], dict], requests: int, audit: ConnectAudit) -> None:
    """cProfile of the request thread only (the writer thread is not traced): the functions
    with the most cumulative time per request, then the most own time."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    serve(stack, make_env, requests)
    profiler.disable()
    audit.flush()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(15)
    print(f"  profile of {requests} requests on the request thread (divide times by {requests}):")
    print(out.getvalue())


def gil_probe(requests: int, rounds: int) -> None:
    """Why a background thread costs a back-to-back request loop: the floor alone, then
    beside a thread that works *outside* the GIL (SHA-256 over 1 MiB buffers, as SQLite's
    own work is), then beside one that works *inside* it (pure Python, as the writer's
    canonical serialisation is). Only the second slows the request thread."""
    import hashlib

    token = signing.request_token(client_key=CLIENT_KEY, shared_secret=SECRET, method="GET",
                                  url=APP_BASE + TARGET, base_url=APP_BASE, now=time.time(), ttl=3600)
    make_env = environ_factory(token)
    floor = PyJwtOnly(bare_app, SECRET)
    serve(floor, make_env, 200)
    stop = threading.Event()

    def outside_gil() -> None:
        buffer = b"x" * (1 << 20)
        while not stop.is_set():
            hashlib.sha256(buffer).digest()

    def inside_gil() -> None:
        while not stop.is_set():
            sum(range(1000))

    print("\nGIL probe: the floor (bare app, PyJWT) beside a busy thread, best of "
          f"{rounds} rounds of {requests} requests")
    for label, work in (("alone", None), ("beside a thread outside the GIL", outside_gil),
                        ("beside a thread inside the GIL", inside_gil)):
        stop.clear()
        thread = threading.Thread(target=work, daemon=True) if work else None
        if thread:
            thread.start()
        runs = [serve(floor, make_env, requests) for _ in range(rounds)]
        stop.set()
        if thread:
            thread.join()
        wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
        print(f"  {label:<34}{fmt(wall)}/request wall, {fmt(cpu)} request-thread CPU")


def against(rev: str, args: argparse.Namespace) -> int:
    """This tree and ``rev``'s collector, each run in a process of its own, alternately
    (A B A B ...), ``--repeat`` times; prints the median of each figure over the runs."""
    import json
    import subprocess
    import tarfile

    with tempfile.TemporaryDirectory(prefix="ca-overhead-against-") as tmp:
        old = Path(tmp) / "code"
        old.mkdir()
        try:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "collector"],
                                     capture_output=True, check=True).stdout
        except subprocess.CalledProcessError as exc:
            raise SystemExit(f"git cannot export {rev!r}: {exc.stderr.decode().strip()}") from exc
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(old, filter="data")
        codes = {"this tree": None, rev: old}
        runs: dict[str, list[list[dict]]] = {label: [] for label in codes}
        for i in range(args.repeat):
            for label, code in codes.items():
                out = Path(tmp) / f"run-{i}-{len(runs[label])}-{'old' if code else 'new'}.json"
                env = dict(os.environ)
                env.pop(CODE_ENV, None)
                if code is not None:
                    env[CODE_ENV] = str(code)
                print(f"run {i + 1} of {args.repeat}: {label} ...", flush=True)
                subprocess.run([sys.executable, __file__, "--app", args.app, "--rounds", str(args.rounds),
                                "--requests", str(args.requests), "--json", str(out)],
                               env=env, stdout=subprocess.DEVNULL, check=True)
                runs[label].append(json.loads(out.read_text()))
    print(f"\nthis tree against {rev}: {args.repeat} runs each, alternating; the median over the runs of "
          "each run's median ratio to the floor (spread over the runs)")
    labels = list(codes)
    print(f"  {'':<36}" + "".join(f"{label:<24}" for label in labels))
    for app_name in ("flask", "bare") if args.app == "both" else (args.app,):
        for kind in STACKS:
            cells = []
            for label in labels:
                values = [r["ratios"][kind] for run in runs[label] for r in run
                          if r["app"] == app_name and kind in r["ratios"]]
                cells.append(f"{statistics.median(values):.2f}x ({min(values):.2f} to {max(values):.2f})"
                             if values else "(not in this code)")
            print(f"  {app_name + ', ' + STACKS[kind].removeprefix('collector, '):<36}"
                  + "".join(f"{c:<24}" for c in cells))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per round and stack")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--app", choices=("flask", "bare", "both"), default="both")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the collector stack")
    parser.add_argument("--gil-probe", action="store_true",
                        help="also time the floor beside a thread working outside, then inside, the GIL")
    parser.add_argument("--against", metavar="REV",
                        help="also run a git revision's collector (e.g. the previous release), each "
                             "in its own process, alternating with this tree, and print both")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each code with --against (default 3)")
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)  # a run's figures, for --against
    args = parser.parse_args(argv)
    if args.against:
        return against(args.against, args)
    apps = ("flask", "bare") if args.app == "both" else (args.app,)
    # A run for --against (--json) leaves out the per-step breakdown: only the ratios are compared.
    results = [measure(name, args.requests, args.rounds, args.profile, breakdown_too=not args.json)
               for name in apps]
    print("\nsummary (median ratio to the floor): " + "; ".join(
        f"{r['app']} " + ", ".join(f"{kind} {ratio:.2f}x" for kind, ratio in r["ratios"].items())
        for r in results) + f"; goal <= {GOAL}x")
    if args.json:
        import json

        args.json.write_text(json.dumps(results))
    if args.gil_probe:
        gil_probe(args.requests, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
