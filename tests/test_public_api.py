"""Pin the package's public surface: adding is a decision, removing is a breaking change."""

from __future__ import annotations

import subprocess
import sys

import collector
from collector import errors

PUBLIC = {
    "__version__",
    "ConnectAudit", "ConnectContext", "connect_context", "Route",
    "canonical_request", "query_string_hash", "diagnose", "CONTEXT_QSH",
    "TokenVerifier", "VerifiedToken", "VerifyPolicy", "Endpoint", "InstallSecret",
    "ScopeMap", "inspect_token",
    "AuditRecord", "Store", "Recorder", "InstallRegistry", "EventFilter",
    "ConnectAuditError", "TokenRejected", "REJECTION_CODES",
    "ConfigurationError", "StoreUnavailable", "IntegrityError", "QueueFull", "UnknownTenant",
    # Forge Remote (issue 10)
    "ForgeVerifier", "VerifiedInvocation", "ForgeInvocation", "ForgeExpectation",
    "ForgeTokenUnavailable", "ForgeTokenExpired",
    # the rejection groups (issue 14), to catch a kind of refusal at once
    "StructuralRejection", "TrustRejection", "ClaimRejection", "ReplayRejection",
} | {cls.__name__ for cls in errors.REJECTIONS}

GROUPS = (errors.StructuralRejection, errors.TrustRejection, errors.ClaimRejection, errors.ReplayRejection)


def test_every_rejection_is_in_exactly_one_group_and_says_when_it_is_raised() -> None:
    for cls in errors.REJECTIONS:
        assert [g.__name__ for g in GROUPS if issubclass(cls, g)] == [cls.__mro__[1].__name__], cls
        assert cls.__doc__.startswith("Raised when "), cls
        assert cls.fix, cls
    for group in GROUPS:
        assert group.__doc__.startswith("Raised when ") and issubclass(group, errors.TokenRejected)
    # the order of the checks runs group by group: structure, trust, claims, replay
    order = [next(i for i, g in enumerate(GROUPS) if issubclass(cls, g)) for cls in errors.REJECTIONS]
    assert order == sorted(order)


def test_public_names_are_exactly_the_pinned_set() -> None:
    assert set(collector.__all__) == PUBLIC


def test_every_public_name_resolves() -> None:
    for name in collector.__all__:
        assert getattr(collector, name) is not None, name


def test_unknown_name_is_an_attribute_error() -> None:
    try:
        collector.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("collector.NoSuchThing should not exist")


def test_every_rejection_code_is_exported_as_a_class() -> None:
    exported = {getattr(collector, cls.__name__).code for cls in errors.REJECTIONS}
    assert exported == set(collector.REJECTION_CODES)
    assert len(collector.REJECTION_CODES) == 21


def test_importing_the_package_loads_no_heavy_dependency() -> None:
    # The CLI's --help and the pure protocol modules must not pay for these.
    code = (
        "import sys, collector, collector.cli; "
        "names = ('sqlalchemy', 'sqlmodel', 'requests', 'streamlit', 'pandas'); "
        "heavy = [m for m in names if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_collector_never_imports_the_dashboard_or_streamlit() -> None:
    import re
    from pathlib import Path

    pattern = re.compile(r"^\s*(from|import)\s+(dashboard|streamlit)\b", re.MULTILINE)
    root = Path(collector.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
    assert pattern.search("    from streamlit.testing import x")  # the check itself can fire


def test_protocol_modules_do_no_io() -> None:
    # The pure modules: no database, no network, no files at import or call time.
    from pathlib import Path

    root = Path(collector.__file__).parent
    forbidden = ("sqlalchemy", "sqlmodel", "requests", "socket", "urllib.request", "http.client",
                 "collector.store", "collector.recorder", "collector.installs", "collector.keys")
    for name in ("qsh", "tokens", "signing", "scopes"):
        source = (root / f"{name}.py").read_text()
        imports = [ln for ln in source.splitlines() if ln.lstrip().startswith(("import ", "from "))]
        for line in imports:
            assert not any(f" {mod}" in line or f" {mod}." in line for mod in forbidden), (name, line)
