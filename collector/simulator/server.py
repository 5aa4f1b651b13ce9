"""Serve a WSGI app on a loopback port in a background thread (werkzeug's threaded server).

The port is bound when the object is created, so the URL is known *before* the app exists:
an app whose configuration needs its own base URL (every Connect app does) is built from
:attr:`ServerThread.url` and then mounted::

    server = ServerThread()
    app = create_app(base_url=server.url)
    with server.mount(app):
        ...  # requests to server.url reach app

Port 0 (the default) takes a free ephemeral port, so any number of servers, demos and test
runs coexist on one machine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

try:
    from werkzeug.serving import WSGIRequestHandler, make_server
except ImportError as exc:  # pragma: no cover - werkzeug comes with the examples extra (Flask)
    raise ImportError(
        "the Confluence simulator needs werkzeug: pip install 'connect-audit[examples]'"
    ) from exc

LOOPBACK = "127.0.0.1"


class _QuietHandler(WSGIRequestHandler):
    """No access log line per request: the demo drives hundreds of requests a second."""

    def log_request(self, code="-", size="-") -> None:
        pass


class _Mount:
    """The WSGI callable the server holds; the real app is plugged in later."""

    def __init__(self) -> None:
        self.app: Callable | None = None

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self.app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"not mounted yet\n"]
        return self.app(environ, start_response)


class ServerThread:
    """A threaded HTTP server on ``host:port`` (loopback, an ephemeral port by default)."""

    def __init__(self, app: Callable | None = None, *, host: str = LOOPBACK, port: int = 0) -> None:
        self._mount = _Mount()
        self._mount.app = app
        self._server = make_server(host, port, self._mount, threaded=True, request_handler=_QuietHandler)
        self._server.daemon_threads = True
        self.host = host
        self.port = self._server.server_port
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
                name=f"wsgi-{self.port}", daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, wait for the serving loop to end, release the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ServerThread({self.url})"
