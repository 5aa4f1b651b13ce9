"""Where the public keys that sign lifecycle callbacks come from.

Atlassian signs ``installed``/``uninstalled``/``enabled``/``disabled`` callbacks with RS256
and names the key in the JWT header's ``kid``; the PEM for kid ``K`` is published at
``<base>/K`` (by default ``https://connect-install-keys.atlassian.com/K``). This module
fetches it from such a base URL, with a cache, or reads it from a local directory (tests,
air-gapped installs). Both validate ``kid`` strictly *before* using it, so a kid can never
name another file or URL.

Choose a source with :func:`key_source`: ``--install-keys``, else the
``CONNECT_AUDIT_INSTALL_KEYS`` environment variable, else Atlassian's CDN.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from collector import config, errors
from collector.tokens import KeySource, validate_kid

#: A PEM RSA public key is well under 2 KiB; anything much larger is not a key.
MAX_KEY_BYTES = 16 * 1024
_PEM_BEGIN = "-----BEGIN PUBLIC KEY-----"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is this machine: the only place plain-http key sources may live."""
    return host in _LOOPBACK_HOSTS


def _check_pem(text: str, kid: str, where: str) -> str:
    pem = text.strip()
    if not pem.startswith(_PEM_BEGIN):
        raise errors.UnknownKid(f"{where} for kid {kid} is not a PEM public key")
    return pem + "\n"


class DirectoryKeySource:
    """Keys as files in a directory: ``<dir>/<kid>`` or ``<dir>/<kid>.pem``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def public_key(self, kid: str) -> str:
        kid = validate_kid(kid)
        root = self.path.resolve()
        for name in (kid, f"{kid}.pem"):
            candidate = root / name
            # validate_kid already excludes separators; the resolved-parent check keeps a
            # symlink planted in the directory from pointing the lookup elsewhere.
            if candidate.is_file() and candidate.resolve().parent == root:
                with candidate.open("rb") as fh:
                    data = fh.read(MAX_KEY_BYTES + 1)
                if len(data) > MAX_KEY_BYTES:
                    raise errors.UnknownKid(f"the key file for kid {kid} is too large")
                return _check_pem(data.decode("ascii", "replace"), kid, "the key file")
        raise errors.UnknownKid(f"no key file for kid {kid} in {self.path}")

    def __repr__(self) -> str:
        return f"DirectoryKeySource({str(self.path)!r})"


@dataclass(frozen=True)
class _Entry:
    at: float
    pem: str | None  # None: the server said there is no such key (cached briefly)
    reason: str = ""


class HttpKeySource:
    """Keys fetched from ``<base_url>/<kid>`` over HTTP(S), cached for ``ttl`` seconds.

    Responses are read up to 16 KiB and redirects are not followed. A kid the server does
    not know is remembered for a minute, so a flood of tokens naming it cannot turn into a
    flood of outgoing requests; transport failures are not cached. The cache keeps at most
    ``max_entries`` kids (least recently used go first).
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: Any = None,
        ttl: float = 3600.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        negative_ttl: float = 60.0,
        max_entries: int = 256,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self.ttl = ttl
        self.timeout = timeout
        self._clock = clock
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def public_key(self, kid: str) -> str:
        kid = validate_kid(kid)
        now = self._clock()
        with self._lock:
            entry = self._cache.get(kid)
            if entry is not None:
                fresh = now - entry.at < (self.ttl if entry.pem else self.negative_ttl)
                if fresh:
                    self._cache.move_to_end(kid)
                    if entry.pem is None:
                        raise errors.UnknownKid(entry.reason)
                    return entry.pem
        entry = self._fetch(kid, now)
        with self._lock:
            self._cache[kid] = entry
            self._cache.move_to_end(kid)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        if entry.pem is None:
            raise errors.UnknownKid(entry.reason)
        return entry.pem

    def _session_or_default(self) -> Any:
        if self._session is None:
            import requests

            self._session = requests.Session()
        return self._session

    def _fetch(self, kid: str, now: float) -> _Entry:
        import requests

        url = f"{self.base_url}/{kid}"
        try:
            response = self._session_or_default().get(
                url, timeout=self.timeout, stream=True, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise errors.UnknownKid(
                f"the install-key server could not be reached for kid {kid} ({type(exc).__name__})"
            ) from exc
        try:
            if response.status_code in (404, 410):
                return _Entry(now, None, f"the install-key server has no key for kid {kid}")
            if response.status_code != 200:
                raise errors.UnknownKid(
                    f"the install-key server answered {response.status_code} for kid {kid}"
                )
            body = b""
            for chunk in response.iter_content(4096):
                body += chunk
                if len(body) > MAX_KEY_BYTES:
                    raise errors.UnknownKid(f"the install-key server sent too much for kid {kid}")
        except requests.RequestException as exc:
            raise errors.UnknownKid(
                f"the key for kid {kid} could not be read ({type(exc).__name__})"
            ) from exc
        finally:
            response.close()
        return _Entry(now, _check_pem(body.decode("ascii", "replace"), kid, "the response"))

    def __repr__(self) -> str:
        return f"HttpKeySource({self.base_url!r})"


def resolve_spec(spec: str, what: str) -> str | Path:
    """A key-source spec as an ``http(s)://`` URL (returned as given) or a local path.

    Plain ``http://`` is accepted for loopback hosts only (a test server): a key fetched over
    an unauthenticated channel from elsewhere would let anyone on the path sign tokens.
    ``what`` names the setting in the error sentences. Shared by the install keys and the
    Forge JWKS, which differ only in what they build from the answer.
    """
    parts = urlsplit(spec)
    if parts.scheme == "https":
        return spec
    if parts.scheme == "http":
        if not is_loopback(parts.hostname):
            raise errors.ConfigurationError(
                f"{what} over plain http: accepted from loopback only, not from {spec}"
            )
        return spec
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme and len(parts.scheme) > 1:
        raise errors.ConfigurationError(f"unsupported {what} source {spec!r}")
    return Path(spec)  # a plain path (a one-letter "scheme" is a Windows drive)


def is_local_source(source: Any) -> bool:
    """Whether install keys come from this machine (a directory, a loopback URL): a simulator's
    or a test's, whose sites are then served on loopback over plain http."""
    if isinstance(source, HttpKeySource):
        return is_loopback(urlsplit(source.base_url).hostname)
    return isinstance(source, DirectoryKeySource)


def key_source(spec: str | None = None) -> KeySource:
    """The key source a spec names: a directory, a ``file://`` URL or an ``http(s)://`` base URL
    (plain http on loopback only). ``None`` means ``CONNECT_AUDIT_INSTALL_KEYS``, else
    Atlassian's CDN.
    """
    spec = spec or os.environ.get(config.INSTALL_KEYS_ENV) or config.DEFAULT_INSTALL_KEYS_URL
    where = resolve_spec(spec, "install keys")
    if isinstance(where, str):
        return HttpKeySource(where)
    if not where.is_dir():
        raise errors.ConfigurationError(f"the install-keys directory {where} does not exist")
    return DirectoryKeySource(where)
