"""Find and load the example Connect apps that live in the source tree (``examples/``).

The examples are documentation that runs: docs/integrating.md quotes them, the tests serve them
and ``connect-audit demo`` drives the Flask one. They are not installed as a package (a
top-level ``examples`` package in site-packages would collide with anyone's), so they are
loaded from the checkout, next to the ``collector`` directory.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from collector.errors import ConfigurationError

EXAMPLES = {"flask": "flask_app", "fastapi": "fastapi_app", "django": "django_app"}


def examples_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "examples"


def load_example(kind: str) -> ModuleType:
    """Import ``examples/<kind>_app/app.py`` as module ``connect_audit_example_<kind>``."""
    if kind not in EXAMPLES:
        raise ConfigurationError(f"no example app {kind!r}; choose one of: {', '.join(EXAMPLES)}")
    name = f"connect_audit_example_{kind}"
    if name in sys.modules:
        return sys.modules[name]
    path = examples_dir() / EXAMPLES[kind] / "app.py"
    if not path.is_file():
        raise ConfigurationError(
            f"the example app {path} is not there: it ships with the source checkout, so run this "
            "from a clone of the repository"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        del sys.modules[name]
        raise ConfigurationError(
            f"the {kind} example needs {exc.name or 'its framework'}: pip install 'connect-audit[examples]'"
        ) from exc
    return module
