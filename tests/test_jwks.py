"""Forge JWKS sources: parsing, files, a real loopback HTTP server, and source selection."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from collector import errors
from collector.forge import DEFAULT_JWKS_URL, ForgeVerifier
from collector.jwks import (
    JWKS_ENV,
    MAX_JWKS_BYTES,
    MAX_KEYS,
    JwksFileSource,
    JwksUrlSource,
    jwk_to_pem,
    jwks_source,
    parse_jwks,
)
from collector.keys import DirectoryKeySource
from collector.simulator.server import ServerThread
from tests.forgekit import (
    APP_ID,
    INSTALLATION_ID,
    KID,
    NOW,
    OTHER_KID,
    JwksApp,
    RawServer,
    fit,
    forge_key,
    jwks_bytes,
    other_key,
    read_request_head,
    response_head,
    rsa_jwk,
)


@pytest.fixture(scope="module", autouse=True)
def _keys_once():
    forge_key(), other_key()


GOOD = object()  # stands for good_jwks() in parameters (the keys are made lazily)


def good_jwks() -> bytes:
    return jwks_bytes(rsa_jwk(forge_key().public_pem, KID))


def forge_verifier(source) -> ForgeVerifier:
    return ForgeVerifier([APP_ID], keys=source, clock=lambda: NOW)


@pytest.fixture
def served():
    """A ServerThread serving the Forge JWKS at every path; yields (server, app)."""
    app = JwksApp(good_jwks())
    server = ServerThread(app).start()
    try:
        yield server, app
    finally:
        server.stop()


# --------------------------------------------------------------------------- jwk_to_pem


def test_jwk_to_pem_round_trip():
    for pair in (forge_key(), other_key()):
        assert jwk_to_pem(rsa_jwk(pair.public_pem, KID)) == pair.public_pem
    bare = {k: v for k, v in rsa_jwk(forge_key().public_pem, KID).items() if k in ("kty", "n", "e")}
    assert jwk_to_pem(bare) == forge_key().public_pem  # alg and use are optional


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kty": "EC"}, "not an RSA key"),
        ({"kty": "oct"}, "not an RSA key"),
        ({"alg": "RS512"}, "RS256"),
        ({"alg": "HS256"}, "RS256"),
        ({"use": "enc"}, "RS256"),
        ({"d": "AQAB"}, "private"),
        ({"p": "AQAB"}, "private"),
        ({"n": 12345}, "n is not"),
        ({"n": ""}, "n is not"),
        ({"e": None}, "e is not"),
        ({"n": "A" * 3000}, "n is not"),
    ],
)
def test_jwk_to_pem_refuses(change, message):
    jwk = {**rsa_jwk(forge_key().public_pem, KID), **change}
    with pytest.raises(ValueError, match=message):
        jwk_to_pem(jwk)


# --------------------------------------------------------------------------- parse_jwks


def test_parse_jwks_keeps_usable_rsa_keys_and_skips_the_rest():
    pem, other = forge_key().public_pem, other_key().public_pem
    doc = jwks_bytes(
        {"kty": "EC", "kid": "ec-key", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
        rsa_jwk(pem, None),  # no kid
        rsa_jwk(pem, "../../etc/passwd"),  # a kid that is not strictly formatted
        rsa_jwk(pem, "k" * 129),
        rsa_jwk(pem, 42),  # type: ignore[arg-type]
        rsa_jwk(pem, "rs512-key", alg="RS512"),
        rsa_jwk(pem, "enc-key", use="enc"),
        rsa_jwk(pem, "private-key", d="AQAB"),
        rsa_jwk(pem, "broken-n", n="!!"),
        "not an object",  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        rsa_jwk(pem, KID),
        rsa_jwk(other, OTHER_KID),
    )
    assert parse_jwks(doc) == {KID: pem, OTHER_KID: other}


def test_parse_jwks_accepts_an_empty_set():
    assert parse_jwks(b'{"keys": []}') == {}


def test_parse_jwks_reads_at_most_max_keys():
    pem = forge_key().public_pem
    doc = jwks_bytes(*(rsa_jwk(pem, f"key-{i}") for i in range(MAX_KEYS + 6)))
    found = parse_jwks(doc)
    assert len(found) == MAX_KEYS
    assert f"key-{MAX_KEYS - 1}" in found and f"key-{MAX_KEYS}" not in found


@pytest.mark.parametrize(
    "data",
    [b"", b"<html>Forge is down</html>", b"\xff\xfe{}", b'{"keys": [', b"[" * 100_000 + b"]" * 100_000],
    ids=["empty", "html", "not utf-8", "truncated", "deeply nested"],
)
def test_parse_jwks_refuses_non_json(data):
    with pytest.raises(ValueError, match="not JSON"):
        parse_jwks(data)


@pytest.mark.parametrize(
    "data",
    [b"{}", b'{"keys": {}}', b'{"keys": null}', b'{"Keys": []}', b"[]", b'"keys"', b"42"],
)
def test_parse_jwks_refuses_a_document_without_a_keys_list(data):
    with pytest.raises(ValueError, match="no 'keys' list"):
        parse_jwks(data)


# --------------------------------------------------------------------------- JwksFileSource


def _write(path: Path, data: bytes, *, bump: int = 0) -> None:
    path.write_bytes(data)
    if bump:  # make the change visible even on file systems with a coarse mtime
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))


def test_file_source_reads_keys(tmp_path):
    path = tmp_path / "jwks.json"
    _write(path, good_jwks())
    source = JwksFileSource(path)
    assert source.public_key(KID) == forge_key().public_pem
    with pytest.raises(errors.UnknownKid, match="no key for kid"):
        source.public_key(OTHER_KID)
    with pytest.raises(errors.MissingKid):
        source.public_key("../jwks.json")
    assert forge_verifier(source).verify(fit()).installation_id == INSTALLATION_ID


def test_file_source_reloads_when_the_file_changes(tmp_path):
    path = tmp_path / "jwks.json"
    _write(path, good_jwks())
    source = JwksFileSource(path)
    assert source.public_key(KID) == forge_key().public_pem
    _write(path, jwks_bytes(rsa_jwk(other_key().public_pem, OTHER_KID)), bump=5)  # a key rotation
    assert source.public_key(OTHER_KID) == other_key().public_pem
    with pytest.raises(errors.UnknownKid):
        source.public_key(KID)
    token = fit(kid=OTHER_KID, key=other_key())
    assert forge_verifier(source).verify(token).installation_id == INSTALLATION_ID


def test_file_source_too_large_is_unknown_kid(tmp_path):
    path = tmp_path / "jwks.json"
    good = good_jwks()
    _write(path, good[:-1] + b" " * (MAX_JWKS_BYTES - len(good)) + b"}")  # exactly at the cap
    assert path.stat().st_size == MAX_JWKS_BYTES
    source = JwksFileSource(path)
    assert source.public_key(KID) == forge_key().public_pem
    _write(path, good[:-1] + b" " * (MAX_JWKS_BYTES + 1 - len(good)) + b"}", bump=5)
    with pytest.raises(errors.UnknownKid, match="larger than"):
        source.public_key(KID)


@pytest.mark.parametrize("content", [None, b"not json", b'{"nokeys": 1}'], ids=["missing", "junk", "no keys"])
def test_file_source_unreadable_is_unknown_kid(tmp_path, content):
    path = tmp_path / "jwks.json"
    if content is not None:
        _write(path, content)
    with pytest.raises(errors.UnknownKid):
        JwksFileSource(path).public_key(KID)


# --------------------------------------------------------------------------- JwksUrlSource


def test_url_source_fetches_once_for_many_verifications(served):
    server, app = served
    source = JwksUrlSource(f"{server.url}/.well-known/jwks.json")
    verifier = forge_verifier(source)
    for i in range(25):
        assert verifier.verify(fit({"jti": f"jti-{i}"})).installation_id == INSTALLATION_ID
    assert app.hits == {"/.well-known/jwks.json": 1}
    assert source.fetches == 1


def test_url_source_rereads_after_ttl(served):
    server, app = served
    t = [1000.0]
    source = JwksUrlSource(server.url + "/jwks", ttl=300, clock=lambda: t[0])
    source.public_key(KID)
    t[0] += 299
    source.public_key(KID)
    assert app.total == 1
    t[0] += 1
    source.public_key(KID)
    assert app.total == 2


def test_unknown_kids_trigger_at_most_one_refresh_per_interval(served):
    server, app = served
    t = [1000.0]
    source = JwksUrlSource(server.url + "/jwks", refresh_interval=60, clock=lambda: t[0])
    verifier = forge_verifier(source)
    verifier.verify(fit())
    assert app.total == 1

    def flood() -> None:
        for _ in range(100):
            with pytest.raises(errors.UnknownKid):
                verifier.verify(fit(kid=secrets.token_hex(8)))

    flood()  # within the interval of the first read: no request at all
    assert app.total == 1
    t[0] += 60
    flood()
    assert app.total == 2  # exactly one extra request for 100 unknown kids
    assert source.fetches == 2
    t[0] += 59
    flood()
    assert app.total == 2
    assert verifier.verify(fit()).installation_id == INSTALLATION_ID  # the known key still works


def test_an_unknown_kid_picks_up_a_rotated_key(served):
    server, app = served
    t = [1000.0]
    source = JwksUrlSource(server.url + "/jwks", clock=lambda: t[0])
    verifier = forge_verifier(source)
    verifier.verify(fit())
    app.serve(jwks_bytes(rsa_jwk(forge_key().public_pem, KID), rsa_jwk(other_key().public_pem, OTHER_KID)))
    rotated = fit(kid=OTHER_KID, key=other_key())
    with pytest.raises(errors.UnknownKid):
        verifier.verify(rotated)  # too soon after the last read
    t[0] += 60
    assert verifier.verify(rotated).installation_id == INSTALLATION_ID
    assert app.total == 2


def test_junk_from_the_server_keeps_the_keys_already_held(served):
    server, app = served
    t = [1000.0]
    source = JwksUrlSource(server.url + "/jwks", ttl=300, refresh_interval=60, clock=lambda: t[0])
    verifier = forge_verifier(source)
    verifier.verify(fit())
    app.serve(b"<html>502 Bad Gateway</html>", content_type="text/html")
    t[0] += 300  # the cached set is stale and the next read gets junk
    assert verifier.verify(fit()).installation_id == INSTALLATION_ID
    assert app.total == 2
    t[0] += 60
    with pytest.raises(errors.UnknownKid, match="last read failed") as caught:
        verifier.verify(fit(kid=OTHER_KID, key=other_key()))
    assert "502 Bad Gateway" not in caught.value.detail
    assert app.total == 3
    assert verifier.verify(fit()).installation_id == INSTALLATION_ID


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"<html>oops</html>", "200 OK"),
        (b'{"error": "no keys here"}', "200 OK"),
        (b"", "200 OK"),
        (b"Internal Server Error", "500 Internal Server Error"),
        (GOOD, "500 Internal Server Error"),  # a good body on an error status
        (GOOD, "404 Not Found"),
        (GOOD, "204 No Content"),
    ],
    ids=["html", "json without keys", "empty", "HTTP 500", "keys on HTTP 500", "HTTP 404", "HTTP 204"],
)
def test_a_bad_first_read_is_unknown_kid(served, body, status):
    server, app = served
    app.serve(good_jwks() if body is GOOD else body, status=status)
    source = JwksUrlSource(server.url + "/jwks")
    with pytest.raises(errors.UnknownKid, match="last read failed") as caught:
        forge_verifier(source).verify(fit())
    if not status.startswith("200"):
        assert f"HTTP {status.split()[0]}" in caught.value.detail
    assert app.total == 1


def test_a_redirect_is_not_followed(served):
    server, app = served
    app.routes["/jwks"] = ("302 Found", [("Location", f"{server.url}/real-jwks")], b"")
    source = JwksUrlSource(server.url + "/jwks")
    with pytest.raises(errors.UnknownKid, match="HTTP 302"):
        source.public_key(KID)
    assert app.hits == {"/jwks": 1}  # /real-jwks, which would have served the keys, was never asked


def test_max_bytes_on_a_normal_server(served):
    server, _ = served
    assert len(good_jwks()) > 200
    with pytest.raises(errors.UnknownKid, match="more than 200 bytes"):
        JwksUrlSource(server.url + "/jwks", max_bytes=200).public_key(KID)
    assert JwksUrlSource(server.url + "/jwks", max_bytes=len(good_jwks())).public_key(KID)


class CountingSession(requests.Session):
    """A real requests session that counts the body bytes the source actually consumed."""

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False
        self.consumed = 0
        self.kwargs: list[dict] = []

    def get(self, url, **kwargs):
        self.kwargs.append(kwargs)
        response = super().get(url, **kwargs)
        original = response.raw.read1

        def counted(*args, **kw):
            chunk = original(*args, **kw)
            self.consumed += len(chunk)
            return chunk

        response.raw.read1 = counted
        return response


def test_a_10_mb_body_is_cut_off_at_max_bytes():
    size = 10 * 1024 * 1024

    def huge(conn: socket.socket, stopping: threading.Event) -> None:
        read_request_head(conn)
        conn.sendall(response_head(size))
        piece = b" " * 65536
        for _ in range(size // len(piece)):
            if stopping.is_set():
                return
            conn.sendall(piece)

    session = CountingSession()
    with RawServer(huge) as server:
        source = JwksUrlSource(server.url + "/jwks", session=session, timeout=5)
        started = time.monotonic()
        with pytest.raises(errors.UnknownKid, match=f"more than {MAX_JWKS_BYTES} bytes"):
            source.public_key(KID)
        elapsed = time.monotonic() - started
    assert MAX_JWKS_BYTES < session.consumed <= MAX_JWKS_BYTES + 8192
    assert session.consumed < size // 10
    assert session.kwargs[0]["stream"] is True  # a bounded read needs a streamed body
    assert elapsed < 3


def _drip(gap: float, step: int, finished: list[bool]):
    body = good_jwks()

    def handler(conn: socket.socket, stopping: threading.Event) -> None:
        read_request_head(conn)
        conn.sendall(response_head(len(body)))
        for i in range(0, len(body), step):
            if stopping.wait(gap):
                return
            conn.sendall(body[i : i + step])
        finished.append(True)

    return handler, len(body)


@pytest.mark.slow
def test_a_server_dripping_bytes_is_cut_off_at_the_timeout():
    finished: list[bool] = []
    body_len = len(good_jwks())
    step = 4
    gap = 3.6 / (body_len / step)  # every gap far below the timeout; the whole drip ~3.6 s
    handler, _ = _drip(gap, step, finished)
    with RawServer(handler) as server:
        source = JwksUrlSource(server.url + "/jwks", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(errors.UnknownKid):
            source.public_key(KID)
        elapsed = time.monotonic() - started
    assert elapsed < 3, f"the read took {elapsed:.1f} s with timeout=0.5"
    assert not finished  # cut off before the server was done


def test_a_server_pausing_longer_than_the_timeout_is_cut_off():
    finished: list[bool] = []
    handler, _ = _drip(1.0, 16, finished)  # the first bytes come only after a full second
    with RawServer(handler) as server:
        source = JwksUrlSource(server.url + "/jwks", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(errors.UnknownKid, match="last read failed"):
            source.public_key(KID)
        elapsed = time.monotonic() - started
    assert elapsed < 3
    assert not finished


def test_a_server_that_never_answers_is_unknown_kid_within_the_timeout():
    def silent(conn: socket.socket, stopping: threading.Event) -> None:
        read_request_head(conn)
        stopping.wait(10)

    t = [1000.0]
    with RawServer(silent) as server:
        source = JwksUrlSource(server.url + "/jwks", timeout=0.5, clock=lambda: t[0])
        started = time.monotonic()
        with pytest.raises(errors.UnknownKid, match="last read failed"):
            source.public_key(KID)
        elapsed = time.monotonic() - started
        with pytest.raises(errors.UnknownKid):
            source.public_key(KID)  # within the refresh interval: not tried again
        assert server.connections == 1
    assert 0.4 < elapsed < 3


def test_a_closed_port_is_unknown_kid():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(errors.UnknownKid, match="unreachable"):
        JwksUrlSource(f"http://127.0.0.1:{port}/jwks", timeout=0.5).public_key(KID)


def test_url_source_checks_the_kid_before_any_request(served):
    server, app = served
    with pytest.raises(errors.MissingKid):
        JwksUrlSource(server.url + "/jwks").public_key("../../etc/passwd")
    assert app.total == 0


# --------------------------------------------------------------------------- jwks_source


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(JWKS_ENV, raising=False)


@pytest.mark.parametrize(
    "url",
    [
        "https://forge.cdn.prod.atlassian-dev.net/.well-known/jwks.json",
        "http://127.0.0.1:8080/jwks.json",
        "http://localhost:9/jwks",
        "http://[::1]:8080/jwks",
    ],
)
def test_jwks_source_urls(no_env, url):
    source = jwks_source(url)
    assert isinstance(source, JwksUrlSource) and source.url == url
    assert source.fetches == 0  # choosing a source reads nothing


@pytest.mark.parametrize(
    "spec",
    [
        "http://forge.cdn.prod.atlassian-dev.net/.well-known/jwks.json",
        "http://localhost.evil.example/jwks",
        "http://10.0.0.1/jwks",
        "ftp://127.0.0.1/jwks.json",
    ],
)
def test_jwks_source_refuses(no_env, spec):
    with pytest.raises(errors.ConfigurationError):
        jwks_source(spec)


def test_jwks_source_directory_and_file(no_env, tmp_path):
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / f"{KID}.pem").write_text(forge_key().public_pem)
    directory = jwks_source(str(keys_dir))
    assert isinstance(directory, DirectoryKeySource)
    assert forge_verifier(directory).verify(fit()).installation_id == INSTALLATION_ID

    path = tmp_path / "jwks.json"
    path.write_bytes(good_jwks())
    for spec in (str(path), path.as_uri()):
        source = jwks_source(spec)
        assert isinstance(source, JwksFileSource) and source.path == path
        assert source.public_key(KID) == forge_key().public_pem


def test_jwks_source_missing_path(no_env, tmp_path):
    for spec in (str(tmp_path / "nowhere.json"), (tmp_path / "nowhere.json").as_uri()):
        with pytest.raises(errors.ConfigurationError, match="does not exist"):
            jwks_source(spec)


def test_jwks_source_defaults_to_forge(no_env):
    for spec in (None, ""):
        source = jwks_source(spec)
        assert isinstance(source, JwksUrlSource) and source.url == DEFAULT_JWKS_URL


def test_jwks_source_honours_the_environment(monkeypatch, tmp_path):
    path = tmp_path / "env-jwks.json"
    path.write_bytes(good_jwks())
    monkeypatch.setenv(JWKS_ENV, str(path))
    source = jwks_source()
    assert isinstance(source, JwksFileSource) and source.path == path
    assert isinstance(jwks_source("https://example.com/jwks.json"), JwksUrlSource)  # explicit wins
    monkeypatch.setenv(JWKS_ENV, "http://jwks.example.com/jwks.json")
    with pytest.raises(errors.ConfigurationError):
        jwks_source()

