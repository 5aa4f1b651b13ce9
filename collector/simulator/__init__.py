"""A Confluence Cloud host simulator, served over real HTTP on loopback.

Used by ``connect-audit demo`` and the end-to-end tests; see :mod:`.host` for what it does
and :mod:`.site` for the (deliberately hostile) content of its sites.
"""

from collector.simulator.host import (
    DEFAULT_TENANTS,
    LIFECYCLE_MISBEHAVIOURS,
    MISBEHAVIOURS,
    ConfluenceSimulator,
    Tenant,
    TenantSpec,
)
from collector.simulator.server import ServerThread

__all__ = [
    "DEFAULT_TENANTS",
    "LIFECYCLE_MISBEHAVIOURS",
    "MISBEHAVIOURS",
    "ConfluenceSimulator",
    "ServerThread",
    "Tenant",
    "TenantSpec",
]
