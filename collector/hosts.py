"""Which hosts may install the app, and whether an install may move to another host.

A signed ``installed`` callback is proof that Atlassian sent it, not that the site it names is
one the app should serve: an app is safer when it refuses installs from hosts that are not
Atlassian's (atlassian-connect-express calls this its registration allow list) and when a known
install cannot be silently re-pointed at another host. Pure: no I/O, no store.

Patterns are host names, case-insensitive: ``acme.atlassian.net`` matches that host only,
``*.atlassian.net`` matches any host under it (not ``atlassian.net`` itself), and a lone ``*``
matches every host (the policy is then off). A baseUrl must be https, except on the loopback
hosts, which a simulator or a test serves over plain http.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from collector.errors import ConfigurationError, HostMoved, HostNotAllowed

ALLOWED_HOSTS_ENV = "CONNECT_AUDIT_ALLOWED_HOSTS"
ALLOW_HOST_MOVES_ENV = "CONNECT_AUDIT_ALLOW_HOST_MOVES"

#: The hosts of Atlassian's cloud sites: the ones atlassian-connect-express allows in production
#: (atlassian.net, jira.com and the developer sites on jira-dev.com) and Atlassian Government Cloud.
ATLASSIAN_HOSTS: tuple[str, ...] = ("*.atlassian.net", "*.jira.com", "*.jira-dev.com",
                                    "*.atlassian-us-gov-mod.net")
#: The hosts a local simulator serves sites on (allowed over plain http).
LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")


def host_of(url: str | None) -> str:
    """The lower-case host of a URL ('' when it has none)."""
    try:
        return (urlsplit(url or "").hostname or "").rstrip(".").lower()
    except ValueError:
        return ""


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """The allowed-hosts patterns and whether a reinstall may move an install to another host."""

    patterns: tuple[str, ...] = ATLASSIAN_HOSTS
    allow_moves: bool = False

    def __post_init__(self) -> None:
        for pattern in self.patterns:
            bare = pattern.removeprefix("*.")
            plain = bool(bare) and not any(c in bare for c in "*/:@")
            if pattern != "*" and pattern not in LOOPBACK_HOSTS and not plain:
                raise ConfigurationError(
                    f"{pattern!r} is not a host pattern: use a host (acme.atlassian.net), "
                    "a wildcard under a domain (*.atlassian.net) or * for any host"
                )

    def allows(self, host: str) -> bool:
        host = host.rstrip(".").lower()
        if not host:
            return False
        for pattern in self.patterns:
            pattern = pattern.lower()
            if pattern == "*" or host == pattern:
                return True
            if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        return False

    def check_install(self, base_url: str) -> None:
        """Raise :class:`HostNotAllowed` unless ``base_url`` is https (or loopback) on an allowed host."""
        host = host_of(base_url)
        scheme = base_url.partition(":")[0].lower() if host else ""
        if not self.allows(host):
            raise HostNotAllowed(f"the baseUrl host {host or '(none)'!r} is not in the allowed hosts "
                                 f"({', '.join(self.patterns)})")
        if scheme != "https" and not (scheme == "http" and host in LOOPBACK_HOSTS):
            raise HostNotAllowed(f"the baseUrl of host {host!r} is {scheme or 'no'} URL, not https")

    def check_move(self, old_base_url: str, new_base_url: str) -> None:
        """Raise :class:`HostMoved` when the host changes and moves are not allowed."""
        old, new = host_of(old_base_url), host_of(new_base_url)
        if old != new and not self.allow_moves:
            raise HostMoved(f"the reinstall would move the install from {old!r} to {new!r}")

    @classmethod
    def configure(cls, allowed_hosts: Iterable[str] | str | None = None, allow_moves: bool | None = None,
                  *, loopback: bool = False) -> HostPolicy:
        """The policy from arguments, else ``CONNECT_AUDIT_ALLOWED_HOSTS`` and
        ``CONNECT_AUDIT_ALLOW_HOST_MOVES``, else the default (Atlassian's hosts, no moves).

        With ``loopback`` (install keys read from this machine: a simulator's), the loopback
        hosts are allowed beside the default or configured patterns."""
        if allowed_hosts is None:
            allowed_hosts = os.environ.get(ALLOWED_HOSTS_ENV) or None
        if isinstance(allowed_hosts, str):
            allowed_hosts = allowed_hosts.replace(",", " ").split()
        patterns = tuple(dict.fromkeys(p.strip() for p in allowed_hosts or ATLASSIAN_HOSTS if p.strip()))
        if loopback:
            patterns = tuple(dict.fromkeys((*patterns, *LOOPBACK_HOSTS)))
        if allow_moves is None:
            allow_moves = _flag(os.environ.get(ALLOW_HOST_MOVES_ENV, ""))
        return cls(patterns, allow_moves)


def _flag(value: str) -> bool:
    word = value.strip().lower()
    if word in ("", "0", "false", "no", "off"):
        return False
    if word in ("1", "true", "yes", "on"):
        return True
    raise ConfigurationError(f"{ALLOW_HOST_MOVES_ENV}={value!r}: use 1 or 0")
