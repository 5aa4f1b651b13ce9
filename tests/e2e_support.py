"""Real stacks on loopback for the HTTP-edge tests: the simulated Confluence, an example app
served by a real HTTP server (werkzeug for Flask, as ``flask run`` does; uvicorn for
FastAPI), the collector writing to a real SQLite file or PostgreSQL database, and readers
for what landed in the store."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from collector.simulator import DEFAULT_TENANTS, ConfluenceSimulator
from collector.simulator.examples import load_example

PG_URL_ENV = "CONNECT_AUDIT_TEST_PG_URL"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


# ---------------------------------------------------------------------- the dashboard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_dashboard(log_path: Path, env: dict[str, str], *, port: int | None = None,
                        cwd: Path | None = None) -> Iterator[str]:
    """``streamlit run dashboard/app.py`` on a loopback port until the block ends; yields its URL.

    ``cwd`` is where Streamlit looks for ``.streamlit/`` (config and secrets): the project's
    own by default."""
    import re
    import subprocess
    import sys
    import urllib.request

    root = Path(__file__).resolve().parent.parent
    log = log_path.open("w")
    # Port 0 unless one is needed in advance (a redirect URI): the server binds a free port itself
    # and prints it, so two servers started at once by two test workers never pick the same one.
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(root / "dashboard" / "app.py"),
         "--server.address", "127.0.0.1", "--server.port", str(port or 0),
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=cwd or root, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}" if port else None
    try:
        deadline = time.monotonic() + 60
        while True:
            if base is None:
                found = re.search(r"URL: (http://127\.0\.0\.1:\d+)", log_path.read_text())
                base = found.group(1) if found else None
            try:
                if base is not None:
                    with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as resp:
                        if resp.read() == b"ok" and proc.poll() is None:
                            break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("streamlit did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ---------------------------------------------------------------------- databases


@contextlib.contextmanager
def provision_database(kind: str, directory: Path) -> Iterator[str]:
    """A fresh store URL (SQLite file in ``directory``, or a new PostgreSQL database) for a
    fixture wider than one test; skips PostgreSQL locally without a server, fails in CI."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / f'audit-{uuid.uuid4().hex[:8]}.db'}"
        return
    base = os.environ.get(PG_URL_ENV)
    if not base:
        if IN_CI:
            pytest.fail(f"PostgreSQL ({PG_URL_ENV}) is required in CI")
        pytest.skip(f"PostgreSQL ({PG_URL_ENV}) not available")
    name = f"ca_e2e_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# ---------------------------------------------------------------------- servers


class _Late:
    """A WSGI app that is plugged in after the server has its port."""

    app: Any = None

    def __call__(self, environ, start_response):
        return self.app(environ, start_response)


@contextlib.contextmanager
def serve_flask(factory) -> Iterator[tuple[str, Any]]:
    """Serve ``factory(base_url)`` with werkzeug's threaded server (what ``flask run`` uses)."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_request(self, *args) -> None:
            pass

    late = _Late()
    server = make_server("127.0.0.1", 0, late, threaded=True, request_handler=Quiet)
    url = f"http://127.0.0.1:{server.server_port}"
    late.app = factory(url)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield url, late.app
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


@contextlib.contextmanager
def serve_asgi(factory) -> Iterator[tuple[str, Any]]:
    """Serve ``factory(base_url)`` with uvicorn in a thread, lifespan included."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = factory(url)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield url, app
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


# ---------------------------------------------------------------------- the stack


class Clock:
    """Real time plus an adjustable offset (seconds), shared by the simulator and the app."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Stack:
    """The simulator and an example app wired together, with the app's ConnectAudit."""

    kind: str
    sim: ConfluenceSimulator
    app_url: str
    audit: Any
    database_url: str
    log_records: list[logging.LogRecord] = field(default_factory=list, repr=False)
    _engine: sa.Engine | None = field(default=None, repr=False)

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = sa.create_engine(self.database_url)
        return self._engine

    def user(self, tenant: str, index: int) -> str:
        """Account ids: 0 Alice (admin everywhere), 1 Bob (writes DEV), 2 Carol (reads only)."""
        return self.sim.tenant(tenant).users()[index].account_id

    def events(self, request_id: str | None = None, **where: Any) -> list[dict[str, Any]]:
        """Audit events, oldest first, optionally filtered by request id and column values.

        The middleware records a request once the server has sent the response (latency
        includes sending the body), so the client can hold the response a moment before
        its event is queued: with ``request_id``, wait for its incoming or lifecycle event.
        """
        deadline = time.monotonic() + 10
        while True:
            assert self.audit.flush(timeout=30), "the recorder did not flush"
            rows = self._select(request_id, where)
            if request_id is None or any(r["direction"] in ("incoming", "lifecycle") for r in rows):
                return rows
            if time.monotonic() > deadline:
                return rows
            time.sleep(0.01)

    def _select(self, request_id: str | None, where: dict[str, Any]) -> list[dict[str, Any]]:
        clauses, params = [], {}
        if request_id is not None:
            where = {**where, "request_id": request_id}
        for i, (column, value) in enumerate(where.items()):
            clauses.append(f"{column} = :p{i}")
            params[f"p{i}"] = value
        # Column names come from the test code, values are bound parameters.
        sql = "SELECT * FROM audit_events" + (" WHERE " + " AND ".join(clauses) if clauses else "")  # noqa: S608
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text(sql + " ORDER BY seq"), params)]

    def install_row(self, client_key: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            query = sa.text("SELECT * FROM installs WHERE client_key = :k")
            row = conn.execute(query, {"k": client_key}).first()
        return dict(row._mapping) if row else None

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


@contextlib.contextmanager
def running_stack(kind: str, database_url: str, *, tenants=DEFAULT_TENANTS, install: bool = True,
                  clock=time.time, host_clock=None, **options: Any) -> Iterator[Stack]:
    """Start the simulator and the ``kind`` example ("flask" or "fastapi") on loopback, and
    (by default) install the app on every simulated site. ``clock`` is the app's clock,
    ``host_clock`` the simulator's (by default the same)."""
    module = load_example(kind)
    serve = serve_asgi if kind == "fastapi" else serve_flask  # werkzeug serves Django's WSGI app too
    with ConfluenceSimulator(tenants=tenants, clock=host_clock or clock) as sim:

        def factory(url: str):
            return module.create_app(base_url=url, database=database_url, install_keys=sim.install_keys_url,
                                     authorization_server=sim.authorization_server, clock=clock,
                                     forge_jwks=sim.forge.jwks_url, **options)

        with serve(factory) as (url, app), _collector_logs() as records:
            audit = {"flask": lambda: app.extensions["connect_audit"], "django": lambda: app.connect_audit,
                     "fastapi": lambda: app.state.connect_audit}[kind]()
            stack = Stack(kind, sim, url, audit, database_url, records)
            try:
                sim.connect(url)
                sim.forge.deploy(module.FORGE_MANIFEST, url)  # Forge knows the app's remote too
                if install:
                    for name in sim.tenants:
                        assert sim.install(name).status_code == 204, name
                yield stack
            finally:
                if kind != "fastapi":
                    audit.close()  # FastAPI's lifespan closes it when uvicorn stops
                stack.dispose()


class _ListHandler(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _collector_logs() -> Iterator[list[logging.LogRecord]]:
    """Everything the collector logs (at DEBUG and up) while the stack runs."""
    logger = logging.getLogger("collector")
    records: list[logging.LogRecord] = []
    handler, level = _ListHandler(records), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# ---------------------------------------------------------------------- secrets


def credential_needles(sim: ConfluenceSimulator) -> set[str]:
    """Every credential the simulator saw, and each token's signature on its own."""
    needles = set()
    for value in sim.credentials():
        if len(value) >= 20:
            needles.add(value)
        parts = value.split(".")
        if len(parts) == 3 and len(parts[2]) >= 20:
            needles.add(parts[2])
    return needles


def assert_no_credentials_stored(stack: Stack) -> int:
    """Search every row of every table, and for SQLite the database files' bytes, for any
    credential; returns how many needles were searched for."""
    stack.audit.flush(timeout=30)
    needles = credential_needles(stack.sim)
    assert needles, "the simulator saw no credentials: the scenario did not run"
    with stack.engine.connect() as conn:
        tables = sa.inspect(conn).get_table_names()
        for table in tables:
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):  # noqa: S608 - our own table names
                text = "\x1f".join("" if v is None else str(v) for v in row)
                leaked = [n for n in needles if n in text]
                assert not leaked, f"a credential is stored in table {table}: {leaked[0][:12]}..."
    if stack.database_url.startswith("sqlite:///"):
        db = Path(stack.database_url.removeprefix("sqlite:///"))
        blob = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
        assert blob, "the SQLite store files are empty"
        leaked = [n for n in needles if n.encode() in blob]
        assert not leaked, f"a credential is in the SQLite file bytes: {leaked[0][:12]}..."
    for record in stack.log_records:
        text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
        leaked = [n for n in needles if n in text]
        assert not leaked, f"a credential was logged by {record.name}: {leaked[0][:12]}..."
    return len(needles)
