"""The README's command-line and debugging examples are run exactly as written.

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
README = (ROOT / "README.md").read_text(encoding="utf-8")
ECHO_STATUS = '; echo "exit $?"'


def section(name: str) -> str:
    start = README.index(f"<!-- section: {name} -->")
    end = README.find("<!-- section:", start + 1)
    return README[start : end if end != -1 else len(README)]


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
    table = section("cli").split("With `--json` the object has these fields:", 1)[1]
    documented = set()
    for cell in re.findall(r"^\| ([^|]+) \|", table, flags=re.M):
        documented.update(re.findall(r"`([a-z_]+)`", cell))
    assert documented == set(report)
