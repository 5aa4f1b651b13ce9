"""Serve a WSGI app on a loopback port in a background thread, with HTTP/1.1 keep-alive.

The port is bound when the object is created, so the URL is known *before* the app exists:
an app whose configuration needs its own base URL (every Connect app does) is built from
:attr:`ServerThread.url` and then mounted::

    server = ServerThread()
    app = create_app(base_url=server.url)
    with server.mount(app):
        ...  # requests to server.url reach app

Port 0 (the default) takes a free ephemeral port, so any number of servers, demos and test
runs coexist on one machine.

Why not werkzeug's development server: it closes the connection after every response and
then waits for stray request bytes, so each call pays for a new TCP connection and a new
thread. The simulator and the app call each other hundreds of times a second in the demo;
this server keeps connections alive (one thread per connection, as ``http.server`` does)
and writes each response in one system call. It implements the parts of PEP 3333 those
apps use: bodies with a ``Content-Length`` (a chunked request body is refused with 411),
buffered or length-delimited responses, ``RAW_URI``/``REQUEST_URI`` carrying the request
target exactly as sent (the qsh is computed over it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote_to_bytes, urlsplit

from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter

from collector.tokens import redact_jwt_params

LOOPBACK = "127.0.0.1"
#: Largest request body read into memory (bytes).
MAX_BODY = 10 * 1024 * 1024

log = logging.getLogger("collector.simulator.server")


class _Mount:
    """The WSGI callable the server holds; the real app is plugged in later."""

    def __init__(self) -> None:
        self.app: Callable | None = None

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"not mounted yet\n"]
        return self.app(environ, start_response)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], mount: _Mount) -> None:
        super().__init__(address, _WsgiHandler)
        self.mount = mount
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def drop_connections(self) -> None:
        """End every kept-alive connection, so nothing is served after stop()."""
        with self.connections_lock:
            connections, self.connections = self.connections, set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _WsgiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "connect-audit"
    timeout = 30  # an idle kept-alive connection is closed after this many seconds
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args) -> None:
        # An access-log line quotes the request line, and a page load's token is in it.
        log.debug("%s %s", self.address_string(), redact_jwt_params(format % args))

    def __getattr__(self, name: str):
        # BaseHTTPRequestHandler dispatches to do_<METHOD>; every method goes to WSGI.
        if name.startswith("do_"):
            return self._run
        raise AttributeError(name)

    def _run(self) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self._plain(411, b"a chunked request body is not supported; send Content-Length\n")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._plain(413 if length > MAX_BODY else 400, b"bad Content-Length\n")
            return
        body = self.rfile.read(length) if length else b""
        environ = self._environ(body)
        status_headers: list = []

        def start_response(status: str, headers: list, exc_info=None):
            if exc_info and status_headers and status_headers[0] is True:
                raise exc_info[1].with_traceback(exc_info[2])
            status_headers[:] = [status, list(headers)]
            return lambda data: chunks.append(data)  # the legacy write() callable

        chunks: list[bytes] = []
        result = None
        try:
            result = self.server.mount(environ, start_response)
            for chunk in result:
                if chunk:
                    chunks.append(chunk)
        except Exception:
            log.exception("the WSGI app raised on %s %s", self.command, redact_jwt_params(self.path))
            self._plain(500, b"Internal Server Error\n")
            self.close_connection = True
            return
        finally:
            if result is not None and hasattr(result, "close"):
                result.close()
        if not status_headers:
            self._plain(500, b"the app never called start_response\n")
            return
        self._respond(status_headers[0], status_headers[1], b"".join(chunks))

    def _environ(self, body: bytes) -> dict:
        path, _, query = self.path.partition("?")
        if "://" in path:  # an absolute-form request target
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        host, port = self.server.server_address[:2]
        environ = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "RAW_URI": self.path,
            "REQUEST_URI": self.path,
            "SERVER_NAME": str(host),
            "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": self.request_version,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_PORT": str(self.client_address[1]),
            "CONTENT_LENGTH": str(len(body)) if body else "",
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                continue
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    def _respond(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        code = int(status.split(" ", 1)[0])
        lines = [f"{self.protocol_version} {status}"]
        has_length = False
        for name, value in headers:
            lowered = name.lower()
            if lowered in ("connection", "transfer-encoding"):
                continue  # this server decides how the message is framed
            if lowered == "content-length":
                has_length = True
                value = str(len(body))  # what is actually sent
            lines.append(f"{name}: {value}")
        if not has_length and code not in (204, 304) and code >= 200:
            lines.append(f"Content-Length: {len(body)}")
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        payload = b"" if self.command == "HEAD" or code in (204, 304) else body
        self.wfile.write(head + payload)
        self.log_request(code, len(payload))

    def _plain(self, code: int, text: bytes) -> None:
        reason = self.responses.get(code, ("Error",))[0]
        self.close_connection = True
        self._respond(f"{code} {reason}", [("Content-Type", "text/plain")], text)


class ServerThread:
    """A threaded HTTP/1.1 server on ``host:port`` (loopback, an ephemeral port by default)."""

    def __init__(self, app: Callable | None = None, *, host: str = LOOPBACK, port: int = 0) -> None:
        self._mount = _Mount()
        self._mount.app = app
        self._server = _Server((host, port), self._mount)
        self.host = host
        self.port = self._server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread: threading.Thread | None = None

    def mount(self, app: Callable) -> ServerThread:
        """Plug in the WSGI app to serve (before or after :meth:`start`)."""
        self._mount.app = app
        return self

    def start(self) -> ServerThread:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"http-{self.port}", daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, end open connections, release the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.drop_connections()
        self._server.server_close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServerThread({self.url})"


class LoopbackTransport(HTTPAdapter):
    """A ``requests`` adapter that delivers calls to public names on loopback servers.

    ``routes`` maps a host (``acme.atlassian.net``) to the URL prefix that serves it
    (``http://127.0.0.1:PORT/t/acme``): a call to ``https://acme.atlassian.net/wiki/rest/api/space``
    is sent to ``http://127.0.0.1:PORT/t/acme/wiki/rest/api/space``, and any other host goes out
    unchanged. The request the caller built (its URL, what its JWT signed) is what the response
    reports, so the app sees the site's public name end to end, and no ``/etc/hosts`` entry or
    DNS is needed.
    """

    def __init__(self, routes: dict[str, str], **options) -> None:
        options.setdefault("pool_connections", 16)
        options.setdefault("pool_maxsize", 64)
        super().__init__(**options)
        self.routes = {host.lower(): prefix.rstrip("/") for host, prefix in routes.items()}

    def send(self, request: PreparedRequest, **kwargs) -> Response:
        parts = urlsplit(request.url or "")
        prefix = self.routes.get(parts.netloc.lower())
        if prefix is None:
            return super().send(request, **kwargs)
        delivered = request.copy()
        delivered.url = prefix + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        response = super().send(delivered, **kwargs)
        response.request, response.url = request, request.url
        return response
