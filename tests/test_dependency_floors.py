"""Fail when an installed security-relevant dependency is older than its last known fix.

Each floor names the advisory that sets it, so that raising a floor is a reviewed change.
"""

from __future__ import annotations

from importlib.metadata import version

import pytest
from packaging.version import Version

FLOORS = {
    # CVE-2024-53861 (iss partial match, fixed 2.10.1), CVE-2026-32597 (crit header not
    # validated, fixed 2.12.0); the project's issue sets 2.15.1 as the floor.
    "pyjwt": ("2.15.1", "CVE-2024-53861, CVE-2026-32597 and later fixes"),
    # CVE-2026-69247 / GHSA-g6cj-pr64-35w5: PKCS#7 Bleichenbacher oracle, >=44,<50.
    "cryptography": ("50.0.0", "CVE-2026-69247 (GHSA-g6cj-pr64-35w5)"),
    # CVE-2026-33682 / GHSA-7p48-42j8-8846: SSRF in the component request handler.
    "streamlit": ("1.54.0", "CVE-2026-33682 (GHSA-7p48-42j8-8846)"),
}


def below_floor(installed: str, floor: str) -> bool:
    return Version(installed) < Version(floor)


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_installed_version_is_at_or_above_floor(package: str) -> None:
    floor, advisory = FLOORS[package]
    installed = version(package)
    assert not below_floor(installed, floor), (
        f"{package} {installed} is older than {floor}, the first release with the fix for {advisory}"
    )


@pytest.mark.parametrize(
    ("installed", "floor", "expected"),
    [("2.10.0", "2.15.1", True), ("2.15.1", "2.15.1", False), ("50.0.2", "50.0.0", False),
     ("1.9.2", "1.54.0", True), ("1.54.0rc1", "1.54.0", True)],
)
def test_floor_comparison_is_by_version_not_text(installed: str, floor: str, expected: bool) -> None:
    # "1.9.2" > "1.54.0" as text; the check must compare versions.
    assert below_floor(installed, floor) is expected


def test_pyproject_floors_match_the_test_floors() -> None:
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    declared = {}
    for req in project["project"]["dependencies"]:
        name, _, spec = req.partition(">=")
        declared[name.split("[", 1)[0].strip().lower()] = spec.strip()  # streamlit[auth] is streamlit
    for package, (floor, _) in FLOORS.items():
        assert declared.get(package) == floor, f"pyproject declares {package}>={declared.get(package)}"
