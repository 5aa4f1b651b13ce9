"""Shared helpers for the Forge tests: keys, FIT builders, an in-memory key source, JWKS
documents and two loopback servers (a WSGI app for ServerThread, and a raw socket server
for the misbehaviours a buffered WSGI server cannot show: dripping, hanging, huge bodies).

Tokens are signed here with ``cryptography`` directly, not with :mod:`collector.signing`,
so that headers the collector would never produce (no kid, ``jku``, ``alg: none``) can be
forged.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import hashlib
import hmac
import json
import socket
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from collector import errors
from collector.forge import KnownInstallation
from collector.signing import rsa_key_pair

NOW = 1_700_000_000
KID = "forge-key-2024-01"
OTHER_KID = "forge-key-2024-02"
APP_UUID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
APP_ID = f"ari:cloud:ecosystem::app/{APP_UUID}"
OTHER_APP_ID = "ari:cloud:ecosystem::app/0a0b0c0d-1111-4222-8333-444455556666"
INSTALLATION_ID = "ari:cloud:ecosystem::installation/8e7d6c5b-4a39-4281-9f0e-1d2c3b4a5968"
OTHER_INSTALLATION_ID = "ari:cloud:ecosystem::installation/11111111-2222-4333-8444-555566667777"
CLOUD_ID = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
OTHER_CLOUD_ID = "ffffffff-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
ENV_ID = f"ari:cloud:ecosystem::environment/{APP_UUID}/3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"
API_BASE_URL = f"https://api.atlassian.com/ex/confluence/{CLOUD_ID}"
SITE_URL = "https://acme.atlassian.net"
PRINCIPAL = "557058:0f9e8d7c-6b5a-4938-a7b6-c5d4e3f2a1b0"
MODULE_KEY = "my-macro"
JTI = "5f4e3d2c1b0a99887766554433221100"
#: A value for a dotted path in ``fit_claims``: remove the member instead of setting it.
DROP = object()


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class KeyPair:
    private_pem: str
    public_pem: str


@functools.cache
def forge_key() -> KeyPair:
    """The key Forge signs with (generated once per test process: RSA generation is slow)."""
    return KeyPair(*rsa_key_pair())


@functools.cache
def other_key() -> KeyPair:
    """A key nobody publishes for KID: an attacker's."""
    return KeyPair(*rsa_key_pair())


@functools.cache
def _private_key(pem: str) -> Any:
    return serialization.load_pem_private_key(pem.encode(), password=None)


class MemoryKeys:
    """A KeySource over ``{kid: PEM}``; counts lookups."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self.keys = dict(keys)
        self.calls: Counter[str] = Counter()

    def public_key(self, kid: str) -> str:
        self.calls[kid] += 1
        try:
            return self.keys[kid]
        except KeyError:
            raise errors.UnknownKid(f"no key for kid {kid}") from None


class BrokenKeys:
    """A KeySource that fails the way a network source might (not with a TokenRejected)."""

    def public_key(self, kid: str) -> str:
        raise ConnectionError("the key server is down")


class Installations:
    """An InstallationLookup over ``{installation_id: KnownInstallation}``; records lookups."""

    def __init__(self, *known: KnownInstallation) -> None:
        self.known = {k.installation_id: k for k in known}
        self.asked: list[str] = []

    def forge_installation(self, installation_id: str) -> KnownInstallation | None:
        self.asked.append(installation_id)
        return self.known.get(installation_id)


# --------------------------------------------------------------------------- tokens


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def fit_claims(changes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The claims of a valid FIT at NOW, with ``changes`` applied by dotted path
    (``{"app.installationId": DROP, "context.cloudId": "x"}``)."""
    claims: dict[str, Any] = {
        "iss": "forge/invocation-token",
        "aud": APP_ID,
        "iat": NOW - 5,
        "nbf": NOW - 5,
        "exp": NOW + 55,
        "jti": JTI,
        "app": {
            "id": APP_ID,
            "installationId": INSTALLATION_ID,
            "apiBaseUrl": API_BASE_URL,
            "appVersion": "2.0.0",
            "environment": {"type": "PRODUCTION", "id": ENV_ID},
            "module": {"type": "xen:macro", "key": MODULE_KEY},
        },
        "context": {"cloudId": CLOUD_ID, "siteUrl": SITE_URL, "moduleKey": MODULE_KEY},
        "principal": PRINCIPAL,
    }
    for path, value in (changes or {}).items():
        *parents, name = path.split(".")
        holder = claims
        for parent in parents:
            holder = holder.setdefault(parent, {})
        if value is DROP:
            holder.pop(name, None)
        else:
            holder[name] = copy.deepcopy(value)
    return claims


def rs256(header: Mapping[str, Any], claims: Mapping[str, Any], private_pem: str) -> str:
    signing_input = f"{b64(raw_json(header))}.{b64(raw_json(claims))}"
    signature = _private_key(private_pem).sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


def hs256(header: Mapping[str, Any], claims: Mapping[str, Any], secret: str) -> str:
    signing_input = f"{b64(raw_json(header))}.{b64(raw_json(claims))}"
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def unsigned(header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    return f"{b64(raw_json(header))}.{b64(raw_json(claims))}."


def fit(
    changes: Mapping[str, Any] | None = None,
    *,
    header: Mapping[str, Any] | None = None,
    kid: str = KID,
    key: KeyPair | None = None,
) -> str:
    """A FIT signed RS256 (by the Forge key unless ``key``), header ``{alg, typ, kid}``
    unless ``header``."""
    head = {"alg": "RS256", "typ": "JWT", "kid": kid} if header is None else header
    return rs256(head, fit_claims(changes), (key or forge_key()).private_pem)


def signature_of(token: str) -> str:
    return token.rsplit(".", 1)[1]


# --------------------------------------------------------------------------- JWKS documents


def _b64_uint(value: int) -> str:
    return b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def rsa_jwk(public_pem: str, kid: str | None, **extra: Any) -> dict[str, Any]:
    """The JWK of an RSA public key, as Forge publishes it."""
    numbers = serialization.load_pem_public_key(public_pem.encode()).public_numbers()
    jwk: dict[str, Any] = {"kty": "RSA", "use": "sig", "alg": "RS256", "n": _b64_uint(numbers.n),
                           "e": _b64_uint(numbers.e)}  # fmt: skip
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def jwks_bytes(*jwks: Mapping[str, Any]) -> bytes:
    return json.dumps({"keys": list(jwks)}).encode()


# --------------------------------------------------------------------------- servers


class JwksApp:
    """A WSGI app serving a JWKS at any path, switchable at run time; counts requests by path.

    ``routes`` maps a path to ``(status, headers, body)``; other paths get ``default``.
    """

    def __init__(self, body: bytes, *, status: str = "200 OK") -> None:
        self.default: tuple[str, list[tuple[str, str]], bytes] = (
            status, [("Content-Type", "application/json")], body,
        )  # fmt: skip
        self.routes: dict[str, tuple[str, list[tuple[str, str]], bytes]] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return sum(self.hits.values())

    def serve(self, body: bytes, status: str = "200 OK", content_type: str = "application/json") -> None:
        self.default = (status, [("Content-Type", content_type)], body)

    def __call__(self, environ: dict, start_response: Callable) -> list[bytes]:
        path = environ["PATH_INFO"]
        with self._lock:
            self.hits[path] += 1
        status, headers, body = self.routes.get(path, self.default)
        start_response(status, list(headers))
        return [body]


class RawServer:
    """A loopback TCP server whose every connection is handed to ``handler(conn, stopping)``
    in its own thread. ``stopping`` is set when the server stops; handlers must return then."""

    def __init__(self, handler: Callable[[socket.socket, threading.Event], None]) -> None:
        self._handler = handler
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self._handler(conn, self.stopping)

    def __enter__(self) -> RawServer:
        self._accepter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._accepter.join(timeout=5)
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)


def read_request_head(conn: socket.socket) -> bytes:
    """Read until the end of the request head (the tests only send GETs without a body)."""
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def response_head(length: int | None, status: str = "200 OK") -> bytes:
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
