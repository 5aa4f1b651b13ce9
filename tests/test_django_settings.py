"""``collector.django``: what ``settings.CONNECT_AUDIT`` may be, and the error when it is missing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from collector.app import ConnectAudit
from collector.django import audit_from_settings
from collector.errors import ConfigurationError


def _options(tmp_path) -> dict:
    return {"app_key": "com.example.django", "base_url": "https://app.example.com",
            "database": f"sqlite:///{tmp_path / 'audit.db'}", "install_keys": str(tmp_path)}


def test_missing_settings_say_what_to_set():
    with pytest.raises(ConfigurationError, match=r"settings\.CONNECT_AUDIT is not set"):
        audit_from_settings(SimpleNamespace())


@pytest.mark.parametrize("form", ["instance", "keywords", "factory"])
def test_an_instance_its_keywords_or_a_factory(tmp_path, form):
    built = ConnectAudit(**_options(tmp_path)) if form == "instance" else None
    value = {"instance": built, "keywords": _options(tmp_path),
             "factory": lambda: ConnectAudit(**_options(tmp_path))}[form]
    audit = audit_from_settings(SimpleNamespace(CONNECT_AUDIT=value))
    try:
        assert isinstance(audit, ConnectAudit) and audit.app_key == "com.example.django"
        if built is not None:
            assert audit is built
    finally:
        audit.close()
