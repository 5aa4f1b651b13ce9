"""Lifecycle key sources: a directory, and HTTP against a real server on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from collector import errors
from collector.keys import DirectoryKeySource, HttpKeySource, key_source
from collector.signing import lifecycle_token, rsa_key_pair
from collector.tokens import TokenVerifier

NOW = 1_700_000_000
APP = "https://app.example.com"


@pytest.fixture(scope="module")
def keypair():
    private, public = rsa_key_pair()
    return private.encode(), public


class KeyServer:
    """A real HTTP server on 127.0.0.1 whose answers the test sets per path."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.hits: Counter[str] = Counter()
        self.delay = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits[self.path] += 1
                if server.delay:
                    time.sleep(server.delay)
                status, body, headers = server.routes.get(self.path, (404, b"not found", {}))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # The client may hang up early (too large, timed out): that is the point.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def running_server():
    srv = KeyServer()
    yield srv
    srv.close()


@pytest.fixture
def server(running_server, keypair):
    """The module's server with fresh routes and counters for each test."""
    running_server.routes = {
        "/kid-1": (200, keypair[1].encode(), {"Content-Type": "application/x-pem-file"})
    }
    running_server.hits.clear()
    running_server.delay = 0.0
    return running_server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- HTTP


def test_fetches_once_and_serves_from_cache(server, keypair):
    clock = Clock()
    source = HttpKeySource(server.url + "/", ttl=3600, clock=clock)
    assert source.public_key("kid-1").strip() == keypair[1].strip()
    clock.now += 3599
    source.public_key("kid-1")
    assert server.hits["/kid-1"] == 1
    clock.now += 2  # past the ttl
    source.public_key("kid-1")
    assert server.hits["/kid-1"] == 2


def test_unknown_kid_is_remembered_briefly(server):
    clock = Clock()
    source = HttpKeySource(server.url, clock=clock, negative_ttl=60)
    for _ in range(5):
        with pytest.raises(errors.UnknownKid, match="no key for kid missing"):
            source.public_key("missing")
    assert server.hits["/missing"] == 1
    clock.now += 61
    with pytest.raises(errors.UnknownKid):
        source.public_key("missing")
    assert server.hits["/missing"] == 2


def test_server_errors_are_not_cached(server):
    server.routes["/flaky"] = (503, b"busy", {})
    source = HttpKeySource(server.url)
    for _ in range(2):
        with pytest.raises(errors.UnknownKid, match="answered 503"):
            source.public_key("flaky")
    assert server.hits["/flaky"] == 2


def test_oversized_and_non_pem_answers_are_refused(server):
    server.routes["/huge"] = (200, b"-----BEGIN PUBLIC KEY-----\n" + b"A" * 40_000, {})
    server.routes["/html"] = (200, b"<html>maintenance</html>", {})
    source = HttpKeySource(server.url)
    with pytest.raises(errors.UnknownKid, match="too much"):
        source.public_key("huge")
    with pytest.raises(errors.UnknownKid, match="not a PEM"):
        source.public_key("html")


def test_redirects_are_not_followed(server, keypair):
    server.routes["/moved"] = (302, b"", {"Location": "/kid-1"})
    with pytest.raises(errors.UnknownKid, match="answered 302"):
        HttpKeySource(server.url).public_key("moved")
    assert server.hits["/kid-1"] == 0


@pytest.mark.parametrize("kid", ["../admin", "kid-1/../x", "kid-1?x=1", "kid-1#x", "%2e%2e", ""])
def test_a_bad_kid_never_reaches_the_network(server, kid):
    with pytest.raises(errors.MissingKid):
        HttpKeySource(server.url).public_key(kid)
    assert sum(server.hits.values()) == 0


def test_unreachable_and_slow_servers(server):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(errors.UnknownKid, match="could not be reached"):
        HttpKeySource(f"http://127.0.0.1:{closed_port}").public_key("kid-1")
    server.delay = 1.0
    with pytest.raises(errors.UnknownKid):
        HttpKeySource(server.url, timeout=0.2).public_key("kid-1")


def test_cache_is_bounded(server, keypair):
    for kid in ("a", "b"):
        server.routes[f"/{kid}"] = (200, keypair[1].encode(), {})
    source = HttpKeySource(server.url, max_entries=2)
    for kid in ("kid-1", "a", "b", "kid-1"):
        source.public_key(kid)
    assert server.hits["/kid-1"] == 2  # evicted by a and b, fetched again


def test_lifecycle_verification_over_http(server, keypair):
    verifier = TokenVerifier(
        None, keys=HttpKeySource(server.url), clock=lambda: NOW, app_base_url=APP
    )
    for tenant in ("tenant-1", "tenant-2"):
        token = lifecycle_token(
            private_key_pem=keypair[0], kid="kid-1", client_key=tenant, app_base_url=APP,
            method="POST", url=f"{APP}/installed", now=NOW,
        )  # fmt: skip
        assert verifier.verify_lifecycle(token, "POST", "/installed", body_client_key=tenant)
    assert server.hits["/kid-1"] == 1


# --------------------------------------------------------------------------- directory


def test_directory_source(tmp_path, keypair):
    (tmp_path / "kid-1").write_text(keypair[1])
    (tmp_path / "kid-2.pem").write_text(keypair[1])
    source = DirectoryKeySource(tmp_path)
    assert "BEGIN PUBLIC KEY" in source.public_key("kid-1")
    assert "BEGIN PUBLIC KEY" in source.public_key("kid-2")
    with pytest.raises(errors.UnknownKid, match="no key file"):
        source.public_key("kid-3")
    with pytest.raises(errors.MissingKid):
        source.public_key("../kid-1")


def test_directory_source_refuses_links_out_and_junk(tmp_path, keypair):
    outside = tmp_path / "outside.pem"
    outside.write_text(keypair[1])
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "linked").symlink_to(outside)
    (keys / "big").write_bytes(b"-----BEGIN PUBLIC KEY-----\n" + b"A" * 20_000)
    (keys / "text").write_text("not a key")
    source = DirectoryKeySource(keys)
    for kid in ("linked", "big", "text"):
        with pytest.raises(errors.UnknownKid):
            source.public_key(kid)


# --------------------------------------------------------------------------- choosing a source


def test_key_source_from_a_spec(tmp_path, monkeypatch):
    monkeypatch.delenv("CONNECT_AUDIT_INSTALL_KEYS", raising=False)
    default = key_source(None)
    assert isinstance(default, HttpKeySource)
    assert default.base_url == "https://connect-install-keys.atlassian.com"
    assert isinstance(key_source(str(tmp_path)), DirectoryKeySource)
    assert isinstance(key_source(tmp_path.as_uri()), DirectoryKeySource)
    assert isinstance(key_source("http://127.0.0.1:9/keys"), HttpKeySource)
    assert isinstance(key_source("https://keys.example.com"), HttpKeySource)
    monkeypatch.setenv("CONNECT_AUDIT_INSTALL_KEYS", str(tmp_path))
    assert isinstance(key_source(None), DirectoryKeySource)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("http://keys.example.com", "loopback"),
        ("ftp://keys.example.com", "unsupported"),
        ("/no/such/directory", "does not exist"),
    ],
)
def test_key_source_refuses_unsafe_or_missing_sources(spec, message):
    with pytest.raises(errors.ConfigurationError, match=message):
        key_source(spec)
