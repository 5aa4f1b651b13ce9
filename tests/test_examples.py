"""The example apps are documentation: docs/integrating.md quotes them, so check the quotes are
still true, and that each app's descriptor and route policy agree with each other."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from collector.routes import LIFECYCLE, PUBLIC, REQUEST, RoutePolicy
from collector.simulator.examples import examples_dir, load_example

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("flask", "fastapi", "django")


def integrating_section() -> str:
    return (ROOT / "docs" / "integrating.md").read_text(encoding="utf-8")


def test_every_python_line_the_readme_quotes_is_in_an_example():
    example_lines = set()
    for folder in ("flask_app", "fastapi_app", "django_app"):
        source = (examples_dir() / folder / "app.py").read_text()
        example_lines |= {line.strip() for line in source.splitlines()}
    blocks = re.findall(r"```python\n(.*?)```", integrating_section(), flags=re.S)
    assert len(blocks) >= 3
    quoted = [line.strip() for block in blocks for line in block.splitlines() if line.strip()]
    missing = [line for line in quoted if line not in example_lines]
    assert not missing, f"docs/integrating.md quotes lines the examples no longer have: {missing}"


def test_both_examples_ship_the_same_descriptor_and_routes():
    flask_dir, fastapi_dir = examples_dir() / "flask_app", examples_dir() / "fastapi_app"
    assert json.loads((flask_dir / "atlassian-connect.json").read_text()) == json.loads(
        (fastapi_dir / "atlassian-connect.json").read_text())
    assert load_example("flask").ROUTES == load_example("fastapi").ROUTES == load_example("django").ROUTES
    assert flask_dir / "atlassian-connect.json" == load_example("django").DESCRIPTOR


@pytest.mark.parametrize("kind", KINDS)
def test_the_route_policy_covers_every_url_the_descriptor_declares(kind):
    module = load_example(kind)
    descriptor = json.loads(module.DESCRIPTOR.read_text())
    assert descriptor["scopes"] == ["READ", "WRITE", "ACT_AS_USER"]
    policy = RoutePolicy(module.ROUTES)
    assert policy.match("GET", "/atlassian-connect.json")[0].auth == PUBLIC
    for url in descriptor["lifecycle"].values():
        route, declared = policy.match("POST", url)
        assert declared and route.auth == LIFECYCLE, url
    urls = [p["url"] for p in descriptor["modules"]["generalPages"]]
    urls += [h["url"] for h in descriptor["modules"]["webhooks"]]
    for url in urls:
        method = "POST" if url.startswith("/webhooks") else "GET"
        route, declared = policy.match(method, url.split("?", 1)[0])
        assert declared and route.auth == REQUEST, url
