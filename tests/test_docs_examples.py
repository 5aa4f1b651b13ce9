"""The documentation's command-line and debugging examples are run exactly as written, and
every link between the README and the pages under docs/ leads somewhere.

Every ```console block of the ``cli`` and ``debugging`` sections is a list of ``$ command``
lines, each followed by the output it must print. Commands run in-process through
``collector.cli.main`` (``< FILE`` feeds standard input; a trailing ``; echo "exit $?"``
appends the exit status as a shell would); one is also run through a real shell.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from collector import errors
from collector.cli import main
from collector.inspect import inspect_token
from collector.tokens import StaticInstalls

ROOT = Path(__file__).parent.parent
ECHO_STATUS = '; echo "exit $?"'
PAGES = ("cli", "debugging", "integrating", "dashboard", "reliability", "performance", "architecture",
         "atlassian-record")


def section(name: str) -> str:
    """A reference page of docs/ (the README keeps only what a newcomer reads first)."""
    text = (ROOT / "docs" / f"{name}.md").read_text(encoding="utf-8")
    assert name == "architecture" or f"<!-- section: {name} -->" in text
    return text


def console_examples(name: str) -> list[tuple[str, str]]:
    """(command, expected output) pairs from the section's console blocks."""
    pairs = []
    for block in re.findall(r"```console\n(.*?)```", section(name), flags=re.S):
        command, output = None, []
        for line in block.splitlines():
            if line.startswith("$ "):
                if command is not None:
                    pairs.append((command, "\n".join(output)))
                command, output = line[2:], []
            else:
                output.append(line)
        if command is not None:
            pairs.append((command, "\n".join(output)))
    return pairs


EXAMPLES = console_examples("cli") + console_examples("debugging")


def run_in_process(command: str, monkeypatch, capsys) -> str:
    echo = command.endswith(ECHO_STATUS)
    argv = shlex.split(command.removesuffix(ECHO_STATUS))
    stdin = ""
    if "<" in argv:
        at = argv.index("<")
        stdin = (ROOT / argv[at + 1]).read_text(encoding="utf-8")
        del argv[at : at + 2]
    assert argv[0] == "connect-audit"
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    status = main(argv[1:])
    out = capsys.readouterr().out
    return out + (f"exit {status}\n" if echo else "")


def test_the_sections_have_examples():
    assert len(console_examples("cli")) >= 2
    assert len(console_examples("debugging")) >= 3


@pytest.mark.parametrize(("command", "expected"), EXAMPLES, ids=[c[:60] for c, _ in EXAMPLES])
def test_readme_example(command, expected, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert run_in_process(command, monkeypatch, capsys).rstrip("\n") == expected


def test_a_readme_example_through_a_real_shell():
    command, expected = console_examples("debugging")[0]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.rstrip("\n") == expected, done.stderr


def test_every_rejection_code_is_documented_with_cause_and_fix():
    rows = re.findall(r"^\| `([a-z_]+)` \| (.+?) \| (.+?) \|$", section("debugging"), flags=re.M)
    documented = {code: (cause, fix) for code, cause, fix in rows if code in errors.REJECTION_CODES}
    assert set(documented) == set(errors.REJECTION_CODES)
    assert all(len(cause) > 30 and len(fix) > 20 for cause, fix in documented.values())


def test_documented_json_fields_are_the_report_fields():
    report = inspect_token(
        (ROOT / "docs/examples/debugging/panel.jwt").read_text(),
        method="GET",
        url="/connect/panel?pageId=123&spaceKey=DS",
        installs=StaticInstalls({"6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9": "wrong-secret"}),
        now=1767225660,
    )
    table = section("cli").split("With `--json` the object has these fields:", 1)[1].split("\n#", 1)[0]
    documented = set()
    for cell in re.findall(r"^\| ([^|]+) \|", table, flags=re.M):
        documented.update(re.findall(r"`([a-z_]+)`", cell))
    assert documented == set(report)


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_the_readme_leads_to_every_reference_page_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in PAGES:
        assert f"](docs/{name}.md)" in readme, name
    assert len(readme.splitlines()) < 150  # a newcomer's page, not the manual
    checked = 0
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file_part, _, anchor = target.partition("#")
            path = (doc.parent / file_part).resolve() if file_part else doc
            assert path.exists(), f"{doc.name}: {target} leads nowhere"
            if anchor:
                assert anchor in _anchors(path), f"{doc.name}: no heading for #{anchor} in {path.name}"
            checked += 1
    assert checked > 15


def test_every_test_a_document_names_exists():
    # The reliability and performance pages cite the test behind each promise; a renamed or
    # deleted test must not leave a promise pointing at nothing.
    defined = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        text = path.read_text(encoding="utf-8")
        defined |= set(re.findall(r"^(?:async )?def (test_\w+)", text, flags=re.M))
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for name in re.findall(r"::(test_\w+)", doc.read_text(encoding="utf-8")):
            if name not in defined:
                missing.append(f"{doc.name}: {name}")
    assert not missing, missing
