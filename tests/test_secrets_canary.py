"""Secrets canary: after a real end-to-end run, no credential of that run is anywhere.

The run is the demo's: the Confluence simulator installs the Flask example app on its sites
and drives a realistic mix over HTTP on loopback (page loads with ``?jwt=``, webhooks,
context-token calls, the app calling Confluence as its app user and as users through the
OAuth 2.0 JWT bearer grant, 403s, every misbehaving token, an uninstall), with every log
record of every logger captured at DEBUG. Then the store is exported by
``connect-audit export`` (CSV and NDJSON, to a file and to standard output) and by the
dashboard's export, and every dashboard page is rendered through Streamlit's AppTest (event
details, the token debugger with a real token pasted in).

The credentials of the run are collected from outside the code under test (a WSGI layer in
front of the app, the ``requests`` transport adapter of its outgoing client) and from the
simulator's own account of what it handed out (:meth:`ConfluenceSimulator.credentials`):
shared secrets, the host's JWTs, the app's JWTs, OAuth assertions and access tokens, and on
the Forge side the invocation tokens and the system and user tokens. Each is
searched (and each JWT's signature segment on its own, and base64/hex forms of the secrets) in:
the database files with their ``-wal`` and ``-shm`` while the app runs and after it stopped,
spill files (on PostgreSQL the database is taken away mid-run so that the recorder spills), key
directory, the DEBUG log, every export and its console output, and the bytes
of every element the dashboard sent to the browser. On PostgreSQL, every row of every table
is read back as text. Independently of what was captured, nothing shaped like a raw JWT may
appear either. A planted secret proves that the search finds what it looks for.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from attackkit import EndToEnd, Finding, SecretScanner, jwt_shapes, snapshot, sqlite_files

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = str(ROOT / "dashboard" / "main.py")
ADMIN_PASSWORD = "canary admin password 42"
PAGES = ("overview", "installs", "activity", "who_acted", "denials", "token_debugger", "export",
         "integrity", "accounts")
KEY_ENVS = ("CONNECT_AUDIT_SECRET_KEY", "CONNECT_AUDIT_CHECKPOINT_KEY", "CONNECT_AUDIT_DATABASE_URL",
            "CONNECT_AUDIT_ACCOUNTS_FILE")


def _isolate(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONNECT_AUDIT_DATA_DIR", str(tmp_path / "data"))
    for name in KEY_ENVS:
        monkeypatch.delenv(name, raising=False)


def _cli(args: list[str], tmp_path: Path, out: Path) -> None:
    """Run the CLI; keep its standard output and error as files to be scanned too."""
    env = {k: v for k, v in os.environ.items() if k != "CONNECT_AUDIT_DATABASE_URL"}
    proc = subprocess.run([sys.executable, "-m", "collector.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, timeout=300)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".stdout").write_bytes(proc.stdout)
    out.with_suffix(".stderr").write_bytes(proc.stderr)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]


# ---------------------------------------------------------------------------- the dashboard


def _elements(node):
    """Every node of an AppTest tree (blocks and elements) that carries a protobuf."""
    proto = getattr(node, "proto", None)
    if proto is not None:
        yield node
    children = getattr(node, "children", None)
    if isinstance(children, dict):
        for child in children.values():
            yield from _elements(child)


def rendered_bytes(at, *, skip_inputs: bool = False) -> bytes:
    """What the page sent to the browser: every element's serialised protobuf (tables are
    Arrow buffers inside it, so every cell is in these bytes verbatim)."""
    parts = []
    for node in _elements(at._tree):
        if skip_inputs and getattr(node, "type", "") in ("text_area", "text_input"):
            continue  # what the user typed into the form, echoed back to the user only
        parts.append(node.proto.SerializeToString())
    return b"\n".join(parts)


def render_dashboard(url: str, monkeypatch, out_dir: Path, sample_token: str) -> None:
    """Sign in as admin, render every page (plus event details and the token debugger with
    a real token pasted in) and write what each sent to the browser into ``out_dir``."""
    import sqlalchemy as sa
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CONNECT_AUDIT_DATABASE_URL", url)
    monkeypatch.setenv("CONNECT_AUDIT_ADMIN_PASSWORD", ADMIN_PASSWORD)
    out_dir.mkdir(parents=True, exist_ok=True)
    at = AppTest.from_file(DASHBOARD, default_timeout=120)
    at.run()
    at.text_input(key="sign_in_name").input("admin")
    at.text_input(key="sign_in_password").input(ADMIN_PASSWORD)
    at.button(key="FormSubmitter:sign_in-Sign in").click().run()
    assert not at.exception, [e.value for e in at.exception]

    def page(name: str, label: str, **params) -> None:
        at.switch_page(f"views/{name}.py")
        at.query_params.clear()
        at.query_params.update(params)
        at.run()
        assert not at.exception, (name, [e.value for e in at.exception])
        (out_dir / f"{label}.bin").write_bytes(rendered_bytes(at))

    for name in PAGES:
        page(name, name, range="all")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            ids = [row[0] for row in conn.exec_driver_sql(
                "SELECT min(event_id) FROM audit_events GROUP BY direction, outcome, auth_method")]
    finally:
        engine.dispose()
    assert len(ids) >= 6
    for event_id in ids:
        page("activity", f"event-{event_id}", range="all", event=event_id)

    at.switch_page("views/token_debugger.py").run()
    at.text_area(key="token_input").input(sample_token)
    at.button(key="FormSubmitter:token_form-Inspect").click().run()
    assert not at.exception, [e.value for e in at.exception]
    shown = rendered_bytes(at, skip_inputs=True)
    assert b"verdict" in shown.lower() or b"accepted" in shown.lower() or b"rejected" in shown.lower()
    (out_dir / "token_debugger-pasted.bin").write_bytes(shown)


def dashboard_export(url: str, monkeypatch, out_dir: Path) -> None:
    """The dashboard's own export path (what its download button serves)."""
    from collector.query import EventFilter
    from dashboard import queries

    monkeypatch.setenv("CONNECT_AUDIT_DATABASE_URL", url)
    for fmt in ("csv", "ndjson"):
        data, _ = queries.export_bytes(EventFilter(), fmt, actor="canary (test)")
        (out_dir / f"dashboard-export.{fmt}").write_bytes(data)


# ---------------------------------------------------------------------------- a spill


def spill_during_an_outage(run: EndToEnd, url: str) -> list[Path]:
    """Take the PostgreSQL database away under the running app (no new connections, the
    open ones terminated), send page loads, and copy the spill files the recorder writes."""
    import sqlalchemy as sa

    name = sa.engine.make_url(url).database
    admin = sa.create_engine(os.environ["CONNECT_AUDIT_TEST_PG_URL"], isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
        try:
            users = run.sim.tenant("acme").users()
            for i in range(12):
                run.sim.page_load("acme", user=users[i % len(users)].account_id)
            run.flush()  # returns once every event is written or fsync'd to a spill file
            spills = sorted((run.root / "spill").glob("spill-*"))
            return snapshot(spills, run.root / "spill-during-outage")
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
    finally:
        admin.dispose()


# ---------------------------------------------------------------------------- the test


def test_the_scanner_finds_what_it_looks_for(tmp_path):
    """The control: a secret, a JWT and a JWT's signature alone are each found when present."""
    import secrets as pysecrets
    import time

    from collector import signing

    secret = pysecrets.token_urlsafe(32)
    token = signing.request_token(client_key="k", shared_secret=secret, method="GET", url="/x",
                                  base_url="https://a.example", now=time.time())
    scanner = SecretScanner()
    scanner.add("shared secret", secret)
    scanner.add("host JWT", token, jwt=True)
    (tmp_path / "a.log").write_text(f"line with {secret} inside\n")
    (tmp_path / "b.db").write_bytes(b"\x00\x01" + token.split(".")[2].encode() + b"\x00")
    (tmp_path / "c.txt").write_text("nothing here\n")
    findings, scanned = scanner.scan_tree(tmp_path)
    assert {Path(f.where).name for f in findings} == {"a.log", "b.db"}
    assert len(scanned) == 3
    assert jwt_shapes(f"x {token} y".encode())
    assert not jwt_shapes(b"sha256:0123456789abcdef eyJhbGciOi.notajwt")


@pytest.mark.slow
def test_no_secret_survives_an_end_to_end_run(database_url, tmp_path, monkeypatch):
    _isolate(monkeypatch, tmp_path)
    work = tmp_path / "run"
    work.mkdir()
    findings: list[Finding] = []
    shapes: list[tuple[str, list[str]]] = []
    sqlite = database_url.startswith("sqlite")

    with EndToEnd(work, database_url, actions=150) as run:
        run.flush()
        captured = run.captured
        # The capture is the premise of the test: it must have seen every kind of secret.
        counts = {k: len(getattr(captured, k)) for k in
                  ("shared_secrets", "host_jwts", "app_jwts", "assertions", "access_tokens",
                   "forge_fits", "forge_product_tokens")}
        assert all(counts.values()), counts
        scanner = captured.scanner()
        for value in run.sim.credentials():
            scanner.add("simulator credential", value, jwt=value.count(".") == 2)
        assert run.statuses.get(401) and run.statuses.get(403), run.statuses
        if not sqlite:
            spilled = spill_during_an_outage(run, database_url)
            assert spilled and sum(p.stat().st_size for p in spilled) > 1000, spilled

        # While the app is up: the WAL holds the recent pages before any checkpoint.
        if sqlite:
            live = snapshot(sqlite_files(database_url), work / "store-while-running")
            assert any(p.name.endswith("-wal") for p in live), live

        exports = work / "exports"
        exports.mkdir()
        _cli(["export", "--format", "csv", "-o", str(exports / "all.csv"), "--database", database_url],
             tmp_path, exports / "cli-csv-file")
        _cli(["export", "--format", "ndjson", "-o", str(exports / "all.ndjson"), "--database", database_url],
             tmp_path, exports / "cli-ndjson-file")
        _cli(["export", "--format", "csv", "--database", database_url], tmp_path, exports / "cli-csv-stdout")
        _cli(["export", "--format", "ndjson", "--outcome", "rejected", "--database", database_url],
             tmp_path, exports / "cli-ndjson-rejected")
        assert (exports / "all.csv").stat().st_size > 10_000
        dashboard_export(database_url, monkeypatch, exports)
        sample = next(t for t in sorted(captured.host_jwts) if t.count(".") == 2 and len(t) < 2000)
        render_dashboard(database_url, monkeypatch, work / "pages", sample)

    # After the app stopped: everything on disk under the run, the store included (copied
    # by another process: the dashboard still holds it open in this one).
    if sqlite:
        snapshot(sqlite_files(database_url), work / "store-after-run")
    tree_findings, scanned = scanner.scan_tree(tmp_path, skip=sqlite_files(database_url) if sqlite else ())
    findings += tree_findings
    shapes += [(str(p), jwt_shapes(p.read_bytes())) for p in scanned]
    names = {p.name for p in scanned}
    assert {"debug.log", "all.csv", "all.ndjson", "dashboard-export.csv", "overview.bin",
            "token_debugger-pasted.bin"} <= names, sorted(names)
    if sqlite:
        assert {"audit.db", "audit.db-wal", "audit.db-shm"} <= names, sorted(names)
    assert (work / "logs" / "debug.log").stat().st_size > 10_000  # DEBUG really was captured
    if not sqlite:
        rows_findings, rows = scanner.scan_database(database_url)
        assert rows > 100
        findings += rows_findings

    by_place: dict[str, set[str]] = {}
    for f in findings:
        by_place.setdefault(f.where, set()).add(f"{f.what} {f.needle[:10]}...")
    leaked_shapes = {where: found for where, found in shapes if found}
    assert not by_place and not leaked_shapes, "\n".join(
        [f"{len(v)} secrets in {k}: {sorted(v)[:3]}" for k, v in sorted(by_place.items())]
        + [f"{len(v)} raw JWTs in {k}: {v[:2]}" for k, v in sorted(leaked_shapes.items())])


@pytest.mark.slow
def test_demo_command_leaves_no_raw_jwt(tmp_path):
    """``connect-audit demo`` as a user runs it: its store, WAL and console output hold
    nothing shaped like a JWT (its secrets are unknown from outside, their shape is not)."""
    db = tmp_path / "demo.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_AUDIT_")}
    env["CONNECT_AUDIT_DATA_DIR"] = str(tmp_path / "data")
    proc = subprocess.run([sys.executable, "-m", "collector.cli", "demo", "--events", "80", "--seed", "5",
                           "--database", f"sqlite:///{db}"], cwd=ROOT, env=env, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert b"Recorded" in proc.stdout
    leaks = {"stdout": jwt_shapes(proc.stdout), "stderr": jwt_shapes(proc.stderr)}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            leaks[str(path)] = jwt_shapes(path.read_bytes())
    assert not any(leaks.values()), {k: v for k, v in leaks.items() if v}
