"""Shared fixtures: real SQLite files, a real PostgreSQL database per test, Chromium.

PostgreSQL comes from ``CONNECT_AUDIT_TEST_PG_URL`` (``.ci/run`` starts a server and sets
it). Without it, PostgreSQL tests skip locally but fail in CI (``CI=true``), so that CI can
never go green by skipping them. The same holds for Chromium (``CONNECT_AUDIT_CHROMIUM``).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PG_URL_ENV = "CONNECT_AUDIT_TEST_PG_URL"


def _unavailable(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required in CI but is not available")
    pytest.skip(f"{what} not available (set it up as .ci/run does)")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite store file in the test's own directory."""
    return f"sqlite:///{tmp_path / 'audit.db'}"


@pytest.fixture
def pg_url() -> str:
    """A freshly created PostgreSQL database, dropped after the test."""
    base = os.environ.get(PG_URL_ENV)
    if not base:
        _unavailable(f"PostgreSQL ({PG_URL_ENV})")
    import sqlalchemy as sa

    name = f"ca_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request) -> str:
    """Runs a test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def isolated_keys(monkeypatch, tmp_path: Path) -> Path:
    """Key files and spill files under the test's own directory, no key from the environment."""
    from storekit import isolate_keys

    return isolate_keys(monkeypatch, tmp_path)


@pytest.fixture
def store(database_url):
    """The store at ``database_url`` (SQLite, then PostgreSQL), closed after the test."""
    from collector.store import Store

    with Store.open(database_url) as s:
        yield s


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = os.environ.get("CONNECT_AUDIT_CHROMIUM") or shutil.which("chromium")
    if not path or not Path(path).exists():
        _unavailable("Chromium (CONNECT_AUDIT_CHROMIUM or /usr/bin/chromium)")
    return path


def pytest_collection_modifyitems(items) -> None:
    # A test that needs a server or a browser is marked by what it uses, so that the fast
    # set (`make test-fast`) can never pick one up by a forgotten marker.
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "pg_url" in names:
            item.add_marker(pytest.mark.postgres)
        if "chromium_path" in names:
            item.add_marker(pytest.mark.browser)
