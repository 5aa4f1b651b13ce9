"""Helpers for the attack and fault tests: an app wrapped by the real middleware, called
in-process (WSGI environ / ASGI scope built the way servers build them), and a scanner that
looks for leaked secrets in files, text and database rows.

Nothing of the code under test is replaced: the :class:`~collector.app.ConnectAudit` behind
the harness has a real SQLite store, a real recorder thread, a real install registry fed by a
signed ``installed`` callback through the middleware, and a directory of install keys.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from collector import signing
from collector.middleware import ENVIRON_KEY, connect_context

APP_KEY = "com.example.fuzzed"
#: The app lives under a context path, so that stripping it is exercised on every request.
APP_BASE_URL = "https://app.example.com/connect"
ROUTES = {
    "GET /public": "public",
    "POST /installed": "lifecycle",
    "/ctx/{name}": "context",
}
DESCRIPTOR = {
    "key": APP_KEY,
    "baseUrl": APP_BASE_URL,
    "scopes": ["READ", "WRITE"],
    "lifecycle": {"installed": "/installed"},
    "modules": {"webhooks": [{"event": "page_created", "url": "/hook"}]},
}
APP_BODY = b"the app's own answer\n"


class ErrorLog(logging.Handler):
    """Collects WARNING+ records of the collector's loggers (an exception the middleware
    swallowed would show up here)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> ErrorLog:
        logging.getLogger("collector").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("collector").removeHandler(self)


def wsgi_app(environ: dict, start_response) -> list[bytes]:
    """The wrapped app: 200 with a fixed body; it checks the context it was handed."""
    ctx = environ.get(ENVIRON_KEY)
    assert ctx is not None, "the middleware let a request through without a context"
    assert connect_context(environ) is ctx
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(APP_BODY)))])
    return [APP_BODY]


async def asgi_app(scope: dict, receive, send) -> None:
    ctx = (scope.get("state") or {}).get("connect_audit")
    assert ctx is not None, "the middleware let a request through without a context"
    length = str(len(APP_BODY)).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", length)]})
    await send({"type": "http.response.body", "body": APP_BODY})


def rsa_pair() -> tuple[str, str]:
    from collector.signing import rsa_key_pair

    return rsa_key_pair()


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    seconds: float


@dataclass
class Harness:
    """One app behind both middlewares, sharing a ConnectAudit (store, registry, recorder)."""

    root: Path
    client_key: str = field(default_factory=lambda: f"tenant-{uuid.uuid4()}")
    shared_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    sent: int = 0

    def __post_init__(self) -> None:
        from collector.app import ConnectAudit

        keys = self.root / "install-keys"
        keys.mkdir(parents=True, exist_ok=True)
        self.kid = f"fuzz-{uuid.uuid4().hex}"
        self._private, public = rsa_pair()
        (keys / self.kid).write_text(public)
        self.database = f"sqlite:///{self.root / 'audit.db'}"
        self.audit = ConnectAudit(
            app_key=APP_KEY, base_url=APP_BASE_URL, descriptor=DESCRIPTOR, database=self.database,
            install_keys=str(keys), recorder_options={"spill_dir": self.root / "spill"},
        )
        self.wsgi = self.audit.wsgi_middleware(wsgi_app, ROUTES)
        self.asgi = self.audit.asgi_middleware(asgi_app, ROUTES)
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self.install()

    def close(self) -> None:
        self._loop.close()
        self.audit.close()

    # -- tokens ------------------------------------------------------------------------

    def token(self, method: str, target: str, *, account_id: str | None = None, context: bool = False) -> str:
        """A host token for ``method`` on ``target`` (path and query relative to the app)."""
        return signing.request_token(
            client_key=self.client_key, shared_secret=self.shared_secret, method=method,
            url=APP_BASE_URL + target, base_url=APP_BASE_URL, now=time.time(),
            account_id=account_id or f"user-{uuid.uuid4().hex[:12]}", context=context,
        )

    def install(self) -> None:
        body = json.dumps({
            "key": APP_KEY, "clientKey": self.client_key, "sharedSecret": self.shared_secret,
            "baseUrl": "https://fuzz.atlassian.net/wiki", "productType": "confluence",
            "eventType": "installed", "oauthClientId": uuid.uuid4().hex,
        }).encode()
        token = signing.lifecycle_token(
            private_key_pem=self._private, kid=self.kid, client_key=self.client_key,
            app_base_url=APP_BASE_URL, method="POST", url=APP_BASE_URL + "/installed", now=time.time(),
        )
        headers = {"Authorization": f"JWT {token}", "Content-Type": "application/json"}
        response = self.call_wsgi("POST", "/installed", headers=headers, body=body)
        assert response.status == 200, response

    # -- calls -------------------------------------------------------------------------

    def call_wsgi(self, method: str, target: str, *, headers: dict[str, str] | None = None,
                  body: bytes = b"", raw_uri: bool = True) -> Response:
        """Call the WSGI middleware as werkzeug would (``RAW_URI`` kept unless told not to)."""
        path, _, query = target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "SCRIPT_NAME": "", "QUERY_STRING": query,
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"), "SERVER_NAME": "app.example.com",
            "SERVER_PORT": "443", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "https",
            "wsgi.input": io.BytesIO(body), "wsgi.errors": io.StringIO(), "wsgi.version": (1, 0),
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
            "CONTENT_LENGTH": str(len(body)) if body else "",
        }
        if raw_uri:
            environ["RAW_URI"] = environ["REQUEST_URI"] = target
        for name, value in (headers or {}).items():
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = value
            else:
                environ[f"HTTP_{key}"] = value
        seen: dict[str, Any] = {}

        def start_response(status: str, response_headers: list, exc_info=None):
            seen["status"], seen["headers"] = int(status.split(" ", 1)[0]), list(response_headers)
            return lambda data: None

        started = time.perf_counter()
        result = self.wsgi(environ, start_response)
        try:
            payload = b"".join(result)
        finally:
            getattr(result, "close", lambda: None)()
        elapsed = time.perf_counter() - started
        with self._lock:
            self.sent += 1
        return Response(seen["status"], seen["headers"], payload, elapsed)

    def call_asgi(self, method: str, target: str, *, headers: dict[str, str] | None = None,
                  body: bytes = b"") -> Response:
        """Call the ASGI middleware with the scope uvicorn would build."""
        path, _, query = target.partition("?")
        raw_path = path.encode("utf-8")
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "https", "path": unquote_to_bytes(path).decode("utf-8", "replace"),
            "raw_path": raw_path, "query_string": query.encode("latin-1", "replace"), "root_path": "",
            # A header is bytes on the wire: what Latin-1 cannot carry arrives as '?'.
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1", "replace"))
                        for k, v in (headers or {}).items()],
            "client": ("127.0.0.1", 50000), "server": ("app.example.com", 443),
        }
        messages: list[dict] = []
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            if pending:
                return pending.pop()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            messages.append(message)

        started = time.perf_counter()
        self._loop.run_until_complete(self.asgi(scope, receive, send))
        elapsed = time.perf_counter() - started
        with self._lock:
            self.sent += 1
        start = next(m for m in messages if m["type"] == "http.response.start")
        payload = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        hdrs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])]
        return Response(start["status"], hdrs, payload, elapsed)


# ---------------------------------------------------------------------------- secrets


def jwt_parts(token: str) -> list[str]:
    """The forms of a JWT worth searching for: the whole token and its signature segment."""
    parts = token.split(".")
    out = [token]
    if len(parts) == 3 and len(parts[2]) >= 16:
        out.append(parts[2])
    return out


def needles_of(secret: str) -> list[str]:
    """A secret and the encodings it could be stored in (base64 of it, hex of it)."""
    out = [secret]
    raw = secret.encode()
    if len(secret) >= 12:
        out.append(base64.b64encode(raw).decode().rstrip("="))
        out.append(base64.urlsafe_b64encode(raw).decode().rstrip("="))
        out.append(raw.hex())
    return out


@dataclass
class Finding:
    where: str
    what: str
    needle: str

    def __str__(self) -> str:
        return f"{self.what} ({self.needle[:12]}...) found in {self.where}"


class SecretScanner:
    """Knows the secrets of a run by label and searches bytes, text, files and rows for them."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}  # needle -> label

    def add(self, label: str, value: str | None, *, jwt: bool = False) -> None:
        if not value or len(value) < 8:
            return  # too short to be a credential, or to search without false positives
        forms = jwt_parts(value) if jwt else [value]
        for form in forms:
            for needle in needles_of(form):
                self.secrets.setdefault(needle, label)

    def add_all(self, label: str, values: Iterable[str], *, jwt: bool = False) -> None:
        for value in values:
            self.add(label, value, jwt=jwt)

    def __len__(self) -> int:
        return len(self.secrets)

    def scan_text(self, where: str, text: str | bytes) -> list[Finding]:
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        found = []
        for needle, label in self.secrets.items():
            if needle.encode() in data:
                found.append(Finding(where, label, needle))
        return found

    def scan_file(self, path: Path) -> list[Finding]:
        """Raw bytes of a file (SQLite pages, WAL frames, logs, exports): a secret stored in
        clear text anywhere in the file, deleted rows and free pages included, shows up."""
        return self.scan_text(str(path), path.read_bytes())

    def scan_tree(self, root: Path, *, skip: Iterable[Path] = ()) -> tuple[list[Finding], list[Path]]:
        skipped = {Path(p).resolve() for p in skip}
        findings, scanned = [], []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if path.resolve() in skipped:
                continue
            scanned.append(path)
            findings += self.scan_file(path)
        return findings, scanned

    def scan_database(self, url: str) -> tuple[list[Finding], int]:
        """Every row of every table, each column cast to text in SQL (PostgreSQL or SQLite)."""
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        findings, rows = [], 0
        try:
            with engine.connect() as conn:
                for table in sa.inspect(conn).get_table_names():
                    columns = [c["name"] for c in sa.inspect(conn).get_columns(table)]
                    cast = "::text" if engine.dialect.name == "postgresql" else ""
                    quoted = ", ".join(f'COALESCE(CAST("{c}"{cast} AS TEXT), \'\')' for c in columns)
                    sql = f'SELECT {quoted} FROM "{table}"'  # noqa: S608  (names from the catalogue)
                    for row in conn.exec_driver_sql(sql):
                        rows += 1
                        findings += self.scan_text(f"{table} row", "\x1f".join(row))
        finally:
            engine.dispose()
        return findings, rows


def sqlite_files(database_url: str) -> list[Path]:
    """The database file of an SQLite URL and its ``-wal``/``-shm`` companions, if present."""
    db = Path(database_url.removeprefix("sqlite:///"))
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-journal")) if p.exists()]


def snapshot(paths: Iterable[Path], dest: Path) -> list[Path]:
    """Copy files by another process (``cp``) and return the copies.

    Reading an SQLite file from a process that has it open is not harmless: closing *any*
    descriptor of the file drops every POSIX lock the process holds on it, SQLite's
    included, and another process may then write under the nose of ours (the store gets
    corrupted). A copy made by ``cp`` leaves this process's locks alone.
    """
    import subprocess

    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in paths:
        target = dest / path.name
        subprocess.run(["cp", str(path), str(target)], check=True)
        copies.append(target)
    return copies


# ---------------------------------------------------------------------------- end to end

JWT_SHAPE = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")


def jwt_shapes(data: bytes) -> list[str]:
    """Anything in ``data`` that looks like a compact JWS (two JSON segments and a signature)."""
    return [m.group(0).decode()[:40] for m in JWT_SHAPE.finditer(data)]


@dataclass
class Captured:
    """Every credential that crossed the wire during a run, seen from outside the code under
    test: a WSGI layer in front of the app (host -> app) and the ``requests`` transport
    adapter the app's outgoing client was given (app -> host, token exchange included)."""

    shared_secrets: set[str] = field(default_factory=set)
    host_jwts: set[str] = field(default_factory=set)  # host -> app: page loads, webhooks, lifecycle
    app_jwts: set[str] = field(default_factory=set)  # app -> host as the app user
    assertions: set[str] = field(default_factory=set)  # OAuth 2.0 JWT bearer grant
    access_tokens: set[str] = field(default_factory=set)  # issued by /oauth2/token, used as Bearer
    forge_fits: set[str] = field(default_factory=set)  # Forge -> app: invocation tokens (Bearer)
    forge_product_tokens: set[str] = field(default_factory=set)  # x-forge-oauth-system / -user
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, value: str | None) -> None:
        if value:
            with self.lock:
                getattr(self, kind).add(value)

    def scanner(self) -> SecretScanner:
        scanner = SecretScanner()
        scanner.add_all("shared secret", self.shared_secrets)
        scanner.add_all("host JWT", self.host_jwts, jwt=True)
        scanner.add_all("app JWT", self.app_jwts, jwt=True)
        scanner.add_all("OAuth assertion", self.assertions, jwt=True)
        scanner.add_all("access token", self.access_tokens)
        scanner.add_all("Forge invocation token", self.forge_fits, jwt=True)
        scanner.add_all("Forge product token", self.forge_product_tokens, jwt=True)
        return scanner


def capturing_adapter(captured: Captured):
    """A ``requests`` HTTPAdapter that notes the credentials of every outgoing request."""
    from urllib.parse import parse_qs

    from requests.adapters import HTTPAdapter

    class CapturingAdapter(HTTPAdapter):
        def send(self, request, **kwargs):
            scheme, _, credential = (request.headers.get("Authorization") or "").partition(" ")
            if scheme.upper() == "JWT":
                captured.add("app_jwts", credential.strip())
            elif scheme.lower() == "bearer":
                captured.add("access_tokens", credential.strip())
            exchange = request.url.split("?", 1)[0].endswith("/oauth2/token")
            if exchange and request.body:
                body = request.body.decode() if isinstance(request.body, bytes) else request.body
                for assertion in parse_qs(body).get("assertion", []):
                    captured.add("assertions", assertion)
            response = super().send(request, **kwargs)
            if exchange:
                with contextlib.suppress(ValueError):
                    captured.add("access_tokens", response.json().get("access_token"))
            return response

    return CapturingAdapter(pool_connections=4, pool_maxsize=16)


def capturing_wsgi(app, captured: Captured):
    """WSGI layer in front of the app: notes the host's tokens and the installs' secrets."""
    from urllib.parse import parse_qsl

    def wrapped(environ: dict, start_response):
        scheme, _, credential = (environ.get("HTTP_AUTHORIZATION") or "").partition(" ")
        if scheme.upper() == "JWT":
            captured.add("host_jwts", credential.strip())
        elif scheme.lower() == "bearer":
            captured.add("forge_fits", credential.strip())
        for header in ("HTTP_X_FORGE_OAUTH_SYSTEM", "HTTP_X_FORGE_OAUTH_USER"):
            captured.add("forge_product_tokens", environ.get(header))
        for name, value in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True):
            if name == "jwt":
                captured.add("host_jwts", value)
        if environ.get("REQUEST_METHOD") == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length > 0 else b""
            environ["wsgi.input"] = io.BytesIO(body)
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and isinstance(doc.get("sharedSecret"), str):
                captured.add("shared_secrets", doc["sharedSecret"])
        return app(environ, start_response)

    return wrapped


class HostSideLogFilter(logging.Filter):
    """Drops urllib3's lines about the *simulator's* requests to the app: they are the host's
    side of the wire (Atlassian's, in production), not something the app logs."""

    def __init__(self, app_port: int) -> None:
        super().__init__()
        self.app_port = app_port

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("urllib3") and isinstance(record.args, tuple):
            return self.app_port not in record.args and str(self.app_port) not in map(str, record.args)
        return True


@dataclass
class EndToEnd:
    """The Flask example app wrapped by the collector, driven by the Confluence simulator over
    real HTTP on loopback (what ``connect-audit demo`` runs), with every log record at DEBUG
    written to a file and every credential on the wire captured."""

    root: Path
    database: str
    actions: int = 150
    seed: int = 11
    captured: Captured = field(default_factory=Captured)

    def __enter__(self) -> EndToEnd:
        from collector.simulator import ConfluenceSimulator, ServerThread
        from collector.simulator.examples import load_example
        from collector.simulator.traffic import drive, plan

        self.log_path = self.root / "logs" / "debug.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.sim = ConfluenceSimulator(seed=self.seed).start()
        self.server = ServerThread()
        self._handler = logging.FileHandler(self.log_path, encoding="utf-8")
        self._handler.setLevel(logging.DEBUG)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        self._handler.addFilter(HostSideLogFilter(self.server.port))
        root_logger = logging.getLogger()
        self._old_level = root_logger.level
        root_logger.addHandler(self._handler)
        root_logger.setLevel(logging.DEBUG)
        self.app = load_example("flask").create_app(
            base_url=self.server.url, database=self.database, install_keys=self.sim.install_keys_url,
            authorization_server=self.sim.authorization_server, http_adapter=capturing_adapter(self.captured),
            recorder_options={"spill_dir": self.root / "spill"}, forge_jwks=self.sim.forge.jwks_url,
        )
        self.audit = self.app.extensions["connect_audit"]
        self.server.mount(capturing_wsgi(self.app, self.captured)).start()
        self.sim.connect(self.server.url)
        for name in self.sim.tenants:
            response = self.sim.install(name)
            assert response.status_code == 204, (name, response.status_code, response.text[:200])
        # Connect-on-Forge: acme on Forge from the start, globex moves part-way (drive's move)
        self.sim.forge.deploy(load_example("flask").FORGE_MANIFEST, self.server.url)
        assert self.sim.forge.install("acme").status_code == 200
        self.statuses = drive(self.sim, plan(self.actions, self.seed, list(self.sim.tenants)))
        for tenant in self.sim.tenants.values():  # what the simulator knows, beyond the wire
            self.captured.add("shared_secrets", tenant.shared_secret)
        return self

    def flush(self) -> None:
        assert self.audit.flush(timeout=60)

    def __exit__(self, *exc) -> None:
        try:
            self.server.stop()
            self.sim.stop()
            self.audit.close()
        finally:
            root_logger = logging.getLogger()
            root_logger.removeHandler(self._handler)
            root_logger.setLevel(self._old_level)
            self._handler.close()
