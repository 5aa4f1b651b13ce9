"""The walls of docs/architecture.md, checked from the source: a change that breaks one fails
here, naming the import that did it.

Imports are read with ``ast`` (nothing is executed). Function-local imports count, because
they run; imports under ``if TYPE_CHECKING:`` do not, because they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Protocol modules: no I/O, no database; the clock and the key sources are injected.
PURE = ("collector.qsh", "collector.tokens", "collector.forge", "collector.signing", "collector.scopes",
        "collector.errors", "collector.events", "collector.hosts", "collector.proxies")
#: What a pure module may not import: the network, the database, processes, and the I/O edges.
IMPURE = ("requests", "urllib3", "sqlalchemy", "sqlmodel", "psycopg", "socket", "subprocess", "http",
          "urllib.request", "collector.store", "collector.recorder", "collector.installs", "collector.keys",
          "collector.jwks", "collector.middleware", "collector.client", "collector.app", "collector.query",
          "collector.export", "collector.replay", "collector.simulator", "streamlit", "dashboard")
#: What the dashboard's pages may import: the query module, the UI helpers and the sign-in.
PAGE_IMPORTS = {"streamlit", "json", "dashboard", "dashboard.queries", "dashboard.ui", "dashboard.auth"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, typing: bool = False) -> set[str]:
    """Every module ``path`` imports at run time (``from a import b`` counts as a and a.b);
    with ``typing``, also those imported only for type checking."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if not typing and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            typing_only.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _sources(package: str) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


COLLECTOR = _sources("collector")


def _names(imported: set[str], prefixes: tuple[str, ...]) -> set[str]:
    return {m for m in imported for p in prefixes if m == p or m.startswith(p + ".")}


def test_the_collector_never_imports_the_dashboard_or_streamlit():
    offenders = {name: _names(_imports(path), ("dashboard", "streamlit")) for name, path in COLLECTOR.items()}
    assert not {k: v for k, v in offenders.items() if v}


@pytest.mark.parametrize("module", PURE)
def test_protocol_modules_are_pure(module):
    assert module in COLLECTOR, module
    assert not _names(_imports(COLLECTOR[module]), IMPURE)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a depth-first search), or None."""
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name)):
            return found
    return None


def test_the_collector_has_no_import_cycle():
    graph = {name: {m for m in _imports(path) if m in COLLECTOR and m != name}
             for name, path in COLLECTOR.items()}
    # The package imports its own modules lazily (collector/__init__.py): not a dependency of theirs.
    graph["collector"] = set()
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the search finds one


def test_code_in_a_handler_depends_on_the_context_module_not_the_middleware():
    assert not _names(_imports(COLLECTOR["collector.client"]), ("collector.middleware", "collector.app"))


@pytest.mark.parametrize("module", ["collector.middleware", "collector.client", "collector.context"])
def test_the_request_path_names_its_collaborators_not_the_facade(module):
    """The gate gets Collaborators and the client a ClientHost: not even their type hints need
    ConnectAudit, so the facade wires them and nothing climbs back to it."""
    assert not _names(_imports(COLLECTOR[module], typing=True), ("collector.app",))


def test_dashboard_pages_read_only_through_the_query_module():
    pages = sorted((ROOT / "dashboard" / "views").glob("*.py"))
    assert pages
    for page in pages:
        outside = {m for m in _imports(page) if m not in PAGE_IMPORTS and not m.startswith("streamlit.")}
        assert not outside, (page.name, outside)
    for path in (ROOT / "dashboard").rglob("*.py"):
        reached = _names(_imports(path), ("collector.recorder", "collector.middleware", "collector.client",
                                          "collector.simulator", "collector.app"))
        assert not reached, (path.name, reached)


def test_the_checks_see_imports_they_must_see(tmp_path):
    """The reader of imports finds function-local imports and skips typing-only ones."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import collector.app\n"
        "def f():\n    from collector import store\n    import requests\n"
    )
    found = _imports(sample)
    assert {"collector.store", "requests"} <= found and "collector.app" not in found


def test_one_event_vocabulary_the_record_the_table_and_the_export_agree():
    """AuditRecord (built on the request path), the audit_events table and the export's columns
    name the same fields: a field added to one and not the others fails here."""
    import dataclasses

    from collector.events import AuditRecord
    from collector.export import CSV_COLUMNS
    from collector.models import AuditEvent

    record = {f.name for f in dataclasses.fields(AuditRecord)}
    table = {c.name for c in AuditEvent.__table__.columns}
    chained = {"seq", "prev_hash", "hash"}  # given by the writer, not by whoever records
    assert record == table - chained
    # Every stored column is exported (ts under its documented name, timestamp), once.
    assert set(CSV_COLUMNS) == (table - {"ts"}) | {"timestamp"} and len(CSV_COLUMNS) == len(table)
