"""Where the public keys that sign Forge Invocation Tokens come from.

Forge publishes its signing keys as a JSON Web Key Set at
``https://forge.cdn.prod.atlassian-dev.net/.well-known/jwks.json``; a FIT names its key in
the header's ``kid``. This module reads such a set from a URL (cached, re-read on an unknown
``kid`` at most once a minute, with a bounded body and a deadline on the whole read), from a
JWKS file (tests, air-gapped sites) or takes PEM files from a directory, and hands the
verifier PEM text through the same :class:`~collector.tokens.KeySource` protocol as the
Connect install keys. Everything fails closed: a key that cannot be had is ``unknown_kid``.

Choose a source with :func:`jwks_source`: ``--jwks`` or ``forge_jwks=``, else the
``CONNECT_AUDIT_FORGE_JWKS`` environment variable, else Atlassian's URL.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from collector import errors
from collector.forge import DEFAULT_JWKS_URL
from collector.keys import DirectoryKeySource, is_local_source, is_loopback, resolve_spec
from collector.tokens import KeySource, validate_kid

log = logging.getLogger("collector.jwks")

JWKS_ENV = "CONNECT_AUDIT_FORGE_JWKS"
#: Forge's set holds a handful of keys (a few KiB); far more is not a key set.
MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 64


# --------------------------------------------------------------------------- parsing (pure)


def _b64_int(value: Any, name: str) -> int:
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise ValueError(f"{name} is not a base64url string")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{name} is not base64url") from exc
    return int.from_bytes(raw, "big")


def jwk_to_pem(jwk: Mapping[str, Any]) -> str:
    """The PEM public key of an RSA signing JWK (``kty`` RSA, ``n``, ``e``; ``alg`` RS256 and
    ``use`` sig when given). Raises ValueError for anything else."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers

    if jwk.get("kty") != "RSA":
        raise ValueError("not an RSA key")
    if jwk.get("alg", "RS256") != "RS256" or jwk.get("use", "sig") != "sig":
        raise ValueError("not an RS256 signing key")
    if any(name in jwk for name in ("d", "p", "q")):
        raise ValueError("a private key has no place in a published key set")
    numbers = RSAPublicNumbers(_b64_int(jwk.get("e"), "e"), _b64_int(jwk.get("n"), "n"))
    key = numbers.public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode("ascii")


def parse_jwks(data: bytes) -> dict[str, str]:
    """``{kid: PEM}`` of the usable keys in a JWKS document; raises ValueError when the
    document is not a key set at all. Keys without a strict ``kid`` or not RS256 are skipped
    (a set may carry keys for other uses), never guessed at."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError("the JWKS is not JSON") from exc
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise ValueError("the JWKS has no 'keys' list")
    found: dict[str, str] = {}
    for jwk in keys[:MAX_KEYS]:
        if not isinstance(jwk, dict):
            continue
        try:
            kid = validate_kid(jwk.get("kid"))
            found[kid] = jwk_to_pem(jwk)
        except (errors.TokenRejected, ValueError, TypeError):
            continue
    return found


# --------------------------------------------------------------------------- sources (I/O)


class JwksFileSource:
    """Keys from a JWKS file, re-read when the file changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seen: tuple[float, int] | None = None
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()

    def public_key(self, kid: str) -> str:
        kid = validate_kid(kid)
        with self._lock:
            self._reload()
            pem = self._keys.get(kid)
        if pem is None:
            raise errors.UnknownKid(f"the JWKS file {self.path} has no key for kid {kid}")
        return pem

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
            if self._seen == (stat.st_mtime, stat.st_size):
                return
            with self.path.open("rb") as fh:
                data = fh.read(MAX_JWKS_BYTES + 1)
        except OSError as exc:
            raise errors.UnknownKid(f"the JWKS file {self.path} cannot be read ({exc.strerror})") from exc
        if len(data) > MAX_JWKS_BYTES:
            raise errors.UnknownKid(f"the JWKS file {self.path} is larger than {MAX_JWKS_BYTES} bytes")
        try:
            self._keys = parse_jwks(data)
        except ValueError as exc:
            raise errors.UnknownKid(f"the JWKS file {self.path} is not a key set: {exc}") from exc
        self._seen = (stat.st_mtime, stat.st_size)

    def __repr__(self) -> str:
        return f"JwksFileSource({str(self.path)!r})"


class JwksUrlSource:
    """Keys from a JWKS URL, cached for ``ttl`` seconds.

    A ``kid`` not in the cached set makes the source re-read the set, but at most once per
    ``refresh_interval`` (60 s): a flood of tokens naming made-up kids costs one request a
    minute, not one per token. A read is bounded in size (``max_bytes``) and in total time
    (``timeout`` for the whole body, not per chunk, so a server that drips bytes is cut off);
    redirects are not followed. When a re-read fails, the keys already held stay in use (they
    were authentic) and unknown kids are refused.
    """

    def __init__(
        self,
        url: str,
        *,
        session: Any = None,
        ttl: float = 3600.0,
        refresh_interval: float = 60.0,
        timeout: float = 5.0,
        max_bytes: int = MAX_JWKS_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._session = session
        self.ttl = ttl
        self.refresh_interval = refresh_interval
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._clock = clock
        self._keys: dict[str, str] = {}
        self._fetched_at: float | None = None  # last successful read
        self._tried_at: float | None = None  # last attempt, successful or not
        self._last_error = ""
        self._lock = threading.Lock()  # guards the fields above, held briefly
        self._fetch_lock = threading.Lock()  # held for a whole read
        #: Reads attempted so far (the tests and the benchmark read it).
        self.fetches = 0

    def public_key(self, kid: str) -> str:
        kid = validate_kid(kid)
        pem = self._fresh(kid)
        if pem is None:
            # One reader at a time: tokens with keys already held never wait for it, and
            # concurrent unknown kids share one read.
            with self._fetch_lock:
                now = self._clock()
                with self._lock:
                    stale = self._fetched_at is None or now - self._fetched_at >= self.ttl
                    wanted = (kid not in self._keys or stale) and self._may_try(now)
                    if wanted:
                        self._tried_at = now
                        self.fetches += 1
                if wanted:
                    self._refresh(now)
                with self._lock:
                    pem = self._keys.get(kid)
        if pem is None:
            why = f" (last read failed: {self._last_error})" if self._last_error else ""
            raise errors.UnknownKid(f"the Forge JWKS has no key for kid {kid}{why}")
        return pem

    def _fresh(self, kid: str) -> str | None:
        with self._lock:
            fresh = self._fetched_at is not None and self._clock() - self._fetched_at < self.ttl
            return self._keys.get(kid) if fresh else None

    def _may_try(self, now: float) -> bool:
        return self._tried_at is None or now - self._tried_at >= self.refresh_interval

    def _refresh(self, now: float) -> None:
        try:
            keys = parse_jwks(self._read())
        except (errors.UnknownKid, ValueError) as exc:
            with self._lock:
                self._last_error = str(exc)
            log.warning("the Forge JWKS at %s could not be read: %s", self.url, exc)
            return
        with self._lock:
            self._keys, self._fetched_at, self._last_error = keys, now, ""

    def _read(self) -> bytes:
        import requests

        deadline = time.monotonic() + self.timeout
        try:
            response = self._session_or_default().get(
                self.url,
                timeout=self.timeout,
                stream=True,
                allow_redirects=False,
                headers={"Accept": "application/json"},
            )
        except requests.RequestException as exc:
            raise errors.UnknownKid(f"unreachable ({type(exc).__name__})") from exc
        try:
            if response.status_code != 200:
                raise errors.UnknownKid(f"HTTP {response.status_code}")
            return self._body(response, deadline)
        except requests.RequestException as exc:
            raise errors.UnknownKid(f"the read failed ({type(exc).__name__})") from exc
        finally:
            response.close()

    def _body(self, response: Any, deadline: float) -> bytes:
        """The body, bounded in size and in total time. ``read1`` returns what one socket read
        gives (iter_content would wait for a whole chunk), so a server dripping bytes meets the
        deadline check after every drop; the socket timeout bounds a server that sends nothing."""
        import urllib3

        body = bytearray()
        try:
            while True:
                chunk = response.raw.read1(8192)
                if not chunk:
                    return bytes(body)
                body += chunk
                if len(body) > self.max_bytes:
                    raise errors.UnknownKid(f"more than {self.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise errors.UnknownKid(f"slower than {self.timeout:g} s")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise errors.UnknownKid(f"the read failed ({type(exc).__name__})") from exc

    def _session_or_default(self) -> Any:
        if self._session is None:
            import requests

            self._session = requests.Session()
            self._session.trust_env = False
        return self._session

    def __repr__(self) -> str:
        return f"JwksUrlSource({self.url!r})"


def is_local(source: KeySource) -> bool:
    """Whether keys come from this machine (a file, a directory, a loopback URL): a simulator or
    a test, whose invocation tokens may then name a loopback ``http`` apiBaseUrl."""
    if isinstance(source, JwksUrlSource):
        return is_loopback(urlsplit(source.url).hostname)
    return isinstance(source, JwksFileSource) or is_local_source(source)


def jwks_source(spec: str | None = None) -> KeySource:
    """The key source a spec names: an ``https://`` JWKS URL (``http://`` on loopback only), a
    JWKS file, or a directory of ``<kid>.pem`` files. ``None`` means ``CONNECT_AUDIT_FORGE_JWKS``,
    else Forge's production JWKS."""
    spec = spec or os.environ.get(JWKS_ENV) or DEFAULT_JWKS_URL
    where = resolve_spec(spec, "Forge JWKS")
    if isinstance(where, str):
        return JwksUrlSource(where)
    if where.is_dir():
        return DirectoryKeySource(where)
    if where.is_file():
        return JwksFileSource(where)
    raise errors.ConfigurationError(f"the Forge JWKS file or directory {where} does not exist")
