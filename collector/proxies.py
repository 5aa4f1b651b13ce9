"""Whose request ids to believe: the proxies in front of the app that the configuration trusts.

Every event's ``request_id`` is minted by the collector. A caller's ``X-Request-Id`` was once
taken as the event's id, so a forged request could pose as part of a real one by naming the
real one's id. Now a caller's ``X-Request-Id`` and W3C ``traceparent`` are kept only when the
connection comes from a trusted proxy (a load balancer that sets them itself), and only as
separate, clearly named fields: ``upstream_request_id`` and ``traceparent`` in the event's
``extra``. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from collector.errors import ConfigurationError

TRUSTED_PROXIES_ENV = "CONNECT_AUDIT_TRUSTED_PROXIES"

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The networks (addresses or CIDR ranges) whose forwarded request ids are kept."""

    networks: tuple[Network, ...] = ()

    @classmethod
    def configure(cls, spec: Iterable[str] | str | None = None) -> TrustedProxies:
        """From a list or a comma/space-separated string, else ``CONNECT_AUDIT_TRUSTED_PROXIES``,
        else none (no caller's id is kept)."""
        if spec is None:
            spec = os.environ.get(TRUSTED_PROXIES_ENV, "")
        items = spec.replace(",", " ").split() if isinstance(spec, str) else [str(s).strip() for s in spec]
        networks = []
        for item in items:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ConfigurationError(
                    f"trusted proxy {item!r} is not an IP address or CIDR range (such as 10.0.0.0/8)"
                ) from None
        return cls(tuple(networks))

    def trusts(self, peer: str | None) -> bool:
        if not self.networks or not peer:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def upstream(self, peer: str | None, headers: Mapping[str, str | None]) -> dict[str, str] | None:
        """The forwarded ids worth keeping (``x-request-id``, ``traceparent`` of ``headers``), when
        ``peer`` is trusted and they are well-formed; else None."""
        if not self.trusts(peer):
            return None
        kept = {}
        rid = headers.get("x-request-id")
        if rid and _REQUEST_ID.fullmatch(rid):
            kept["upstream_request_id"] = rid
        parent = headers.get("traceparent")
        if parent and _TRACEPARENT.fullmatch(parent.strip()):
            kept["traceparent"] = parent.strip()
        return kept or None


#: Trust no proxy: every caller's ids are dropped (the default).
NO_TRUSTED_PROXIES = TrustedProxies()
