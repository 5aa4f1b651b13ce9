"""End to end over real HTTP: the Django example app (``collector.django.ConnectAuditMiddleware``,
Django's WSGI handler served by werkzeug) against the simulated Confluence, recording into SQLite
and PostgreSQL: the same scenario as Flask and FastAPI."""

from __future__ import annotations

import pytest

# Helper modules hold asserts too: have pytest explain their failures (registered before import).
pytest.register_assert_rewrite("e2e_scenario", "e2e_support", "middleware_support")

from e2e_scenario import Scenario, stack_fixture  # noqa: E402 - after the rewrite hook

pytestmark = pytest.mark.slow

stack = stack_fixture("django")


class TestDjangoExample(Scenario):
    pass
