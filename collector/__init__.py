"""Connect Audit's collector: verify, sign and record an Atlassian Connect or Forge app's calls.

The names below are the public surface; everything else is internal and may change.
They load lazily (PEP 562) so that ``connect-audit --help`` and the pure protocol
modules do not pay for SQLAlchemy, requests or cryptography until they are used.
``tests/test_public_api.py`` pins this list.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # the facade an app constructs, and what its middleware hands to handlers
    "ConnectAudit": "collector.app",
    "ConnectContext": "collector.context",
    "connect_context": "collector.context",
    "Route": "collector.routes",
    # protocol core (pure)
    "canonical_request": "collector.qsh",
    "query_string_hash": "collector.qsh",
    "diagnose": "collector.qsh",
    "CONTEXT_QSH": "collector.qsh",
    "TokenVerifier": "collector.tokens",
    "VerifiedToken": "collector.tokens",
    "VerifyPolicy": "collector.tokens",
    "Endpoint": "collector.tokens",
    "InstallSecret": "collector.tokens",
    "ScopeMap": "collector.scopes",
    "ForgeVerifier": "collector.forge",
    "VerifiedInvocation": "collector.forge",
    "ForgeInvocation": "collector.forge",
    "ForgeExpectation": "collector.forge",
    "inspect_token": "collector.inspect",
    # recording and the store
    "AuditRecord": "collector.events",
    "Store": "collector.store",
    "Recorder": "collector.recorder",
    "InstallRegistry": "collector.installs",
    "EventFilter": "collector.query",
    # errors: the domain language
    "ConnectAuditError": "collector.errors",
    "TokenRejected": "collector.errors",
    "StructuralRejection": "collector.errors",
    "TrustRejection": "collector.errors",
    "ClaimRejection": "collector.errors",
    "ReplayRejection": "collector.errors",
    "REJECTION_CODES": "collector.errors",
    "MissingToken": "collector.errors",
    "TokenTooLarge": "collector.errors",
    "MalformedToken": "collector.errors",
    "UnsupportedHeader": "collector.errors",
    "AlgorithmNotAllowed": "collector.errors",
    "MissingKid": "collector.errors",
    "UnknownKid": "collector.errors",
    "UnknownIssuer": "collector.errors",
    "InactiveInstall": "collector.errors",
    "BadSignature": "collector.errors",
    "MissingClaim": "collector.errors",
    "InvalidClaim": "collector.errors",
    "LifetimeTooLong": "collector.errors",
    "TokenExpired": "collector.errors",
    "TokenNotYetValid": "collector.errors",
    "QshMismatch": "collector.errors",
    "ContextQshNotAllowed": "collector.errors",
    "WrongAudience": "collector.errors",
    "IssuerMismatch": "collector.errors",
    "Replayed": "collector.errors",
    "ContextMismatch": "collector.errors",
    "ForgeTokenUnavailable": "collector.errors",
    "ForgeTokenExpired": "collector.errors",
    "ConfigurationError": "collector.errors",
    "StoreUnavailable": "collector.errors",
    "IntegrityError": "collector.errors",
    "QueueFull": "collector.errors",
    "UnknownTenant": "collector.errors",
}

__all__ = ["__version__", *_EXPORTS]

def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'collector' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
