"""Every ``connect-audit`` command, given bad input, answers in one sentence: never a traceback.

The commands are discovered from the parser itself (``connect-audit --help`` lists the same
set), so a command added later is swept too without touching this file. For each command the
faults that its options admit are derived from those options:

* ``--database``: a string that is no URL, an unsupported driver, an in-memory database, an
  unreachable PostgreSQL server (whose password must not be echoed), a text file, a directory,
  a file with the SQLite magic and garbage after it, an SQLite database of another program, a
  store of a newer schema, a missing file (for commands that only read a store) and a path
  whose directory cannot be created; and a bad ``CONNECT_AUDIT_DATABASE_URL`` instead of the flag;
* input files (metavar ``FILE``): missing, a directory, not JSON, JSON of the wrong shape;
* output files (``-o``): in a directory that cannot exist, or naming a directory;
* filters (an argument group titled "filters"): malformed times, statuses and vocabulary
  words, an empty time range; SQL and LIKE metacharacters must simply match nothing;
* numeric options: a word where a number belongs.

Each answer must be: a non-zero exit (2, the CLI's usage/configuration code), exactly one
message line ``connect-audit...: error: ...`` (argparse's usage lines aside) naming what is
wrong, and no ``Traceback``, no library exception name, no password. A control run per
command (the same arguments on a healthy store) proves that the fault, not the base
arguments, is what the command refused.

Tests run as root, so "unreadable" is played with files that are not databases rather than
with permissions, which root ignores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from collector.cli import build_parser

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: A password that must never reach stderr.
PG_PASSWORD = "pw-canary-7f3a"
#: A directory that cannot be created, even by root (procfs refuses mkdir).
UNCREATABLE_DIR = "/proc/connect-audit-no-such-dir"
#: A well-formed HS256 token (its issuer is unknown to any store: a *rejection*, not a fault).
SAMPLE_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJpc3MiOiJ0ZW5hbnQtZm9vIiwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDAxODAsInFzaCI6ImNvbnRleHQtcXNoIn0."
    "c2lnbmF0dXJlLW5vdC12YWxpZC1hdC1hbGwtaGVyZS14eHh4eHh4eHh4eA"
)


# --------------------------------------------------------------------------- the commands


def _leaves(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> Iterator[
    tuple[tuple[str, ...], argparse.ArgumentParser]
]:
    """Every runnable (sub)command: a parser without further subcommands."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, (*prefix, name))


COMMANDS: dict[tuple[str, ...], argparse.ArgumentParser] = dict(_leaves(build_parser()))


@dataclass(frozen=True)
class Known:
    """What a command needs to run at all, and how it answers on a healthy store."""

    args: tuple[str, ...] = ()
    ok_exit: int = 0
    #: A missing SQLite file means "create a new store" (writers), not an error (readers).
    creates_store: bool = False
    extra_faults: tuple[tuple[str, tuple[str, ...], str], ...] = field(default=())


#: Minimal valid arguments of the commands that exist. A command not listed here still gets
#: swept, with arguments derived from its parser (a placeholder per positional).
KNOWN: dict[tuple[str, ...], Known] = {
    ("qsh",): Known(("GET", "/page?b=2&a=1")),
    # Without --installs the issuer is unknown to the (empty) store: a rejection, exit 1.
    ("token", "inspect"): Known(
        (SAMPLE_TOKEN,), ok_exit=1,
        extra_faults=(
            ("method-without-url", ("--method", "GET"), "--url"),
            ("negative-leeway", ("--leeway", "-5"), "leeway"),
            ("lifecycle-without-base-url", ("--endpoint", "lifecycle"), "--app-base-url"),
            ("install-keys-missing-dir",
             ("--endpoint", "lifecycle", "--app-base-url", "https://app.example",
              "--install-keys", "/nonexistent/connect-audit-keys"), "connect-audit-keys"),
            ("install-keys-plain-http",
             ("--endpoint", "lifecycle", "--app-base-url", "https://app.example",
              "--install-keys", "http://keys.example.com"), "keys.example.com"),
        ),
    ),
    ("alerts",): Known(("--config", str(ROOT / "tests" / "vectors" / "alerts-loopback.toml"), "--once",
                        "--dry-run"),
                       extra_faults=(("missing-config", ("--config", "gone.toml"), "gone.toml"),
                                     ("bad-every", ("--every", "0"), "--every"))),
    ("forward",): Known(("--status",), extra_faults=(
        ("bad-destination", ("--to", "ftp://example.com"), "ftp://example.com"),
        ("credentials-in-url", ("--to", "syslog+tcp://u:pw@h:514"), "credentials"),
        ("bad-every", ("--every", "0"), "--every"),
        ("zero-batch", ("--batch", "0"), "--batch"))),
    ("highlights",): Known((), extra_faults=(("bad-since", ("--since", "last tuesday"), "last tuesday"),)),
    ("export",): Known(()),
    ("verify",): Known(()),
    ("purge",): Known(("--older-than", "36500"),
                      extra_faults=(("negative-days", ("--older-than", "-3"), "older-than"),)),
    ("generate",): Known(("--events", "3", "--tenants", "2", "--days", "1"), creates_store=True,
                         extra_faults=(("zero-events", ("--events", "0"), "events"),)),
    # The credential is read from the variable --credential-env names: any set variable will do.
    ("import", "add"): Known(("s1", "--kind", "org_events", "--target", "org-1", "--credential-env", "PATH"),
                             creates_store=True,
                             extra_faults=(("bad-site", ("--site", "not a url"), "not a url"),
                                           ("bad-since", ("--since", "someday"), "someday"))),
    ("import", "list"): Known(()),
    ("import", "run"): Known((), extra_faults=(("bad-every", ("--every", "0"), "--every"),)),
    # A healthy store has no source to remove: the answer is the one-sentence error.
    ("import", "remove"): Known(("nope",), ok_exit=2),
    ("reconcile",): Known((), extra_faults=(("negative-tolerance", ("--tolerance", "-1"), "--tolerance"),
                                            ("bad-until", ("--until", "soon"), "soon"))),
    ("demo",): Known(("--events", "3"), creates_store=True,
                     extra_faults=(("zero-events", ("--events", "0"), "events"),)),
}


def _derived(parser: argparse.ArgumentParser) -> Known:
    args: list[str] = []
    for action in parser._actions:
        if not action.option_strings and action.nargs not in ("?", "*"):
            args.append("x")
        elif action.option_strings and action.required:
            args += [action.option_strings[-1], "1"]
    return Known(tuple(args))


def known(command: tuple[str, ...]) -> Known:
    return KNOWN.get(command) or _derived(COMMANDS[command])


def options(command: tuple[str, ...]) -> dict[str, argparse.Action]:
    return {opt: a for a in COMMANDS[command]._actions for opt in a.option_strings}


def filter_options(command: tuple[str, ...]) -> list[argparse.Action]:
    parser = COMMANDS[command]
    return [a for g in parser._action_groups if (g.title or "").lower().startswith("filter")
            for a in g._group_actions if a.option_strings]


# --------------------------------------------------------------------------- the faults


@dataclass(frozen=True)
class Fault:
    name: str
    #: (paths fixture) -> (extra argv, extra env, text the message must contain)
    build: Callable[[Paths], tuple[list[str], dict[str, str], str]]
    #: Text the run must not print anywhere.
    secret: str | None = None


@dataclass(frozen=True)
class Paths:
    healthy: Path
    text_file: Path
    directory: Path
    corrupt: Path
    foreign: Path
    newer: Path
    missing: Path
    empty: Path
    array_json: Path
    closed_port: int


def _db(url: str, expect: str) -> Callable[[Paths], tuple[list[str], dict[str, str], str]]:
    return lambda p: (["--database", url.format(p=p)], {}, expect.format(p=p))


#: Applied to every command that takes --database: a bad URL, an unreachable server, an
#: unreadable store (a text file, a directory), a store that cannot be created, the environment.
DB_FAULTS = [
    Fault("db-not-a-url", _db("audit.db", "audit.db")),
    Fault("db-pg-unreachable",
          lambda p: (["--database", f"postgresql+psycopg://auditor:{PG_PASSWORD}@127.0.0.1:{p.closed_port}/audit"],
                     {}, f"127.0.0.1:{p.closed_port}"),
          secret=PG_PASSWORD),
    Fault("db-text-file", _db("sqlite:///{p.text_file}", "{p.text_file.name}")),
    Fault("db-directory", _db("sqlite:///{p.directory}", "{p.directory.name}")),
    Fault("db-uncreatable-dir", _db(f"sqlite:///{UNCREATABLE_DIR}/audit.db", "connect-audit-no-such-dir")),
    Fault("env-db-not-a-url", lambda p: ([], {"CONNECT_AUDIT_DATABASE_URL": "not-a-url.db"}, "not-a-url.db")),
]
#: The rarer shapes of a bad store go through the same opening code: swept on one command
#: that reads a store and one that writes it.
DEEP_DB_FAULTS = [
    Fault("db-unsupported-driver", _db("mysql://auditor@127.0.0.1/audit", "mysql")),
    Fault("db-in-memory", _db("sqlite://", "file")),
    Fault("db-corrupt-sqlite", _db("sqlite:///{p.corrupt}", "{p.corrupt.name}")),
    Fault("db-foreign-sqlite", _db("sqlite:///{p.foreign}", "{p.foreign.name}")),
    Fault("db-newer-schema", _db("sqlite:///{p.newer}", "{p.newer.name}")),
]
DEEP_COMMANDS = {("export",), ("generate",)}
MISSING_STORE = Fault("db-missing-file", _db("sqlite:///{p.missing}", "{p.missing.name}"))
#: A zero-byte file (a store truncated by a disk fault or an attacker) is no store either: a
#: command that reads or checks a store must not turn it into a fresh, "intact", empty log.
EMPTY_STORE = Fault("db-empty-file", _db("sqlite:///{p.empty}", "{p.empty.name}"))

#: Malformed values per filter (by the option's last word); the message must name the value.
MALFORMED_FILTERS = {
    "since": ["2026-02-30"],
    "until": ["tomorrowish"],
    "status": ["4x"],
    "platform": ["mainframe"],
    "direction": ["sideways"],
    "identity_kind": ["robot"],
    "outcome": ["maybe"],
    "reason": ["no_such_reason"],
}
#: Values that are not malformed but are hostile to a careless SQL or LIKE builder: the command
#: must answer normally (exit 0), matching nothing.
HOSTILE_FILTER_VALUES = ["'; DROP TABLE audit_events; --", "%_\\\" OR 1=1 --"]


def _cases() -> list[pytest.param]:
    out = []
    for command in COMMANDS:
        cid = " ".join(command)
        opts = options(command)
        if "--database" in opts:
            faults = list(DB_FAULTS) + (DEEP_DB_FAULTS if command in DEEP_COMMANDS else [])
            if opts["--database"].required:
                # The flag is mandatory (generate): the environment is not consulted at all.
                faults = [f for f in faults if not f.name.startswith("env-")]
            if known(command).creates_store:
                # A writer adopts an existing SQLite database (Store.open(create=True) adds the
                # schema beside foreign tables) and creates a missing file: neither is a fault.
                faults = [f for f in faults if f.name != "db-foreign-sqlite"]
            else:
                faults += [MISSING_STORE, EMPTY_STORE]
            out += [pytest.param(command, f, id=f"{cid}:{f.name}") for f in faults]
        for opt, action in opts.items():
            if not opt.startswith("--"):
                continue
            metavar = str(action.metavar or "")
            if action.dest == "output":
                out += [
                    pytest.param(command, Fault("output-uncreatable-dir", lambda p, o=opt: (
                        [o, f"{UNCREATABLE_DIR}/out.txt", "--database", f"sqlite:///{p.healthy}"], {},
                        "out.txt")), id=f"{cid}:output-uncreatable-dir"),
                    pytest.param(command, Fault("output-is-directory", lambda p, o=opt: (
                        [o, str(p.directory), "--database", f"sqlite:///{p.healthy}"], {},
                        p.directory.name)), id=f"{cid}:output-is-directory"),
                ]
            elif metavar == "FILE":
                for name, pick in (("missing", "missing"), ("directory", "directory"),
                                   ("not-json", "text_file"), ("wrong-shape", "array_json")):
                    out.append(pytest.param(command, Fault(f"{opt[2:]}-{name}", lambda p, o=opt, k=pick: (
                        [o, str(getattr(p, k))], {}, getattr(p, k).name)), id=f"{cid}:{opt[2:]}-{name}"))
            elif action.type in (int, float):
                out.append(pytest.param(command, Fault(f"{opt[2:]}-not-a-number", lambda p, o=opt: (
                    [o, "twelve"], {}, "twelve")), id=f"{cid}:{opt[2:]}-not-a-number"))
        for action in filter_options(command):
            key = action.dest.removeprefix("filter_")
            for value in MALFORMED_FILTERS.get(key, []):
                out.append(pytest.param(command, Fault(f"filter-{key}", lambda p, a=action, v=value: (
                    [a.option_strings[-1], v, "--database", f"sqlite:///{p.healthy}"], {}, v)),
                    id=f"{cid}:filter-{key}={value}"))
        if {"--since", "--until"} <= set(opts):
            out.append(pytest.param(command, Fault("filter-empty-range", lambda p: (
                ["--since", "2026-02-01", "--until", "2026-01-01", "--database", f"sqlite:///{p.healthy}"],
                {}, "empty")), id=f"{cid}:filter-empty-range"))
        for name, extra, expect in known(command).extra_faults:
            out.append(pytest.param(command, Fault(name, lambda p, e=extra, x=expect: (list(e), {}, x)),
                                    id=f"{cid}:{name}"))
    return out


# --------------------------------------------------------------------------- fixtures and runner


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> Paths:
    from collector.store import Store

    d = tmp_path_factory.mktemp("bad-input")
    healthy = d / "healthy.db"
    Store.open(f"sqlite:///{healthy}").close()
    (d / "notes.txt").write_text("These are meeting notes, not a database.\n")
    (d / "a-directory").mkdir()
    (d / "corrupt.db").write_bytes(b"SQLite format 3\x00" + b"\xde\xad\xbe\xef" * 2048)
    with sqlite3.connect(d / "foreign.db") as conn:
        conn.execute("CREATE TABLE recipes (name TEXT, minutes INTEGER)")
    with sqlite3.connect(d / "newer.db") as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES ('9999_from_the_future')")
    for crafted in ("foreign.db", "newer.db"):
        (d / crafted).chmod(0o600)  # a world-readable store adds its own warning (test_file_modes)
    (d / "installs.json").write_text(json.dumps(["not", "an", "object"]))
    (d / "zeroed.db").write_bytes(b"")
    return Paths(healthy=healthy, text_file=d / "notes.txt", directory=d / "a-directory",
                 corrupt=d / "corrupt.db", foreign=d / "foreign.db", newer=d / "newer.db",
                 missing=d / "no-such-store.db", empty=d / "zeroed.db", array_json=d / "installs.json",
                 closed_port=_closed_port())


def run_cli(argv: list[str], env_extra: dict[str, str], cwd: Path,
            timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_AUDIT_")}
    env.update({"CONNECT_AUDIT_DATA_DIR": str(cwd / "data"), "PYTHONPATH": str(ROOT), **env_extra})
    return subprocess.run([sys.executable, "-m", "collector.cli", *argv], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout, stdin=subprocess.DEVNULL)


_ERROR_LINE = re.compile(r"^connect-audit(?: [\w-]+)*: error: \S.*$")
_LEAKS = ("Traceback", "sqlalchemy.", "psycopg.", "sqlite3.", 'File "', "Error:", "Exception")


def assert_one_sentence(proc: subprocess.CompletedProcess, expect: str, secret: str | None) -> None:
    """Exit 2, one ``error:`` line naming ``expect`` (argparse usage lines aside), no traceback."""
    err = proc.stderr
    shown = f"exit {proc.returncode}\nstderr:\n{err}\nstdout:\n{proc.stdout[-2000:]}"
    for leak in _LEAKS:
        assert leak not in err, f"{leak!r} leaked to stderr\n{shown}"
    assert proc.returncode == 2, shown
    lines = [ln for ln in err.splitlines() if ln.strip()]
    message = [ln for ln in lines if not ln.startswith(("usage:", " "))]
    assert len(message) == 1, f"expected one message line\n{shown}"
    assert _ERROR_LINE.match(message[0]), shown
    assert len(message[0]) < 400, shown
    assert expect.lower() in message[0].lower(), f"the message should name {expect!r}\n{shown}"
    if secret:
        assert secret not in err + proc.stdout, shown


# --------------------------------------------------------------------------- the tests


def test_every_command_is_swept():
    """The sweep sees the commands ``connect-audit --help`` lists, the core ones among them."""
    proc = run_cli(["--help"], {}, ROOT)
    assert proc.returncode == 0, proc.stderr
    listed = set(re.findall(r"^    (\w[\w-]*)\s", proc.stdout, re.M))
    assert listed == {c[0] for c in COMMANDS}
    assert {("export",), ("qsh",), ("token", "inspect")} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=" ".join)
def test_control_run_on_a_healthy_store(command, paths, tmp_path):
    """The base arguments are valid: on a healthy store the command answers without error."""
    argv = [*command, *known(command).args]
    if "--database" in options(command):
        argv += ["--database", f"sqlite:///{tmp_path / 'fresh.db'}" if known(command).creates_store
                 else f"sqlite:///{paths.healthy}"]
    proc = run_cli(argv, {}, tmp_path, timeout=240)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == known(command).ok_exit, f"exit {proc.returncode}\n{proc.stderr}\n{proc.stdout}"


@pytest.mark.parametrize(("command", "fault"), _cases())
def test_bad_input_gets_one_sentence_and_exit_2(command, fault, paths, tmp_path):
    extra, env, expect = fault.build(paths)
    argv = [*command, *known(command).args, *extra]
    proc = run_cli(argv, env, tmp_path)
    assert_one_sentence(proc, expect, fault.secret)


@pytest.mark.parametrize("value", HOSTILE_FILTER_VALUES)
@pytest.mark.parametrize("command", [c for c in sorted(COMMANDS) if filter_options(c)], ids=" ".join)
def test_sql_metacharacters_in_text_filters_match_nothing(command, value, paths, tmp_path):
    """Free-text filters are bound parameters: quotes, ``%`` and ``_`` are data, not syntax."""
    argv = [*command, *known(command).args, "--database", f"sqlite:///{paths.healthy}"]
    for action in filter_options(command):
        key = action.dest.removeprefix("filter_")
        if key not in MALFORMED_FILTERS:
            argv += [action.option_strings[-1], value]
    proc = run_cli(argv, {}, tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    if command == ("export",):
        assert "exported 0 events" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- opening a store twice


def test_a_second_open_in_the_same_process_keeps_sqlite_locks(tmp_path):
    """Opening a store that this process already has open must not drop SQLite's locks.

    POSIX advisory locks belong to the process and a file: closing *any* descriptor of the
    database file releases every lock the process's SQLite connections hold on it (SQLite's
    "How To Corrupt" guide, 2.2.1). Reading the file's header with ``open()`` while a store is
    open does exactly that; then another process closing its last connection believes it is
    alone, checkpoints and deletes the WAL under the first process's feet. The dashboard, the
    example apps' tests and any app that exports in-process open a store twice.
    """
    from collector.store import Store

    db = tmp_path / "twice.db"
    first = Store.open(f"sqlite:///{db}")
    try:
        with first.write_transaction() as conn:
            conn.exec_driver_sql("CREATE TABLE probe (x INTEGER)")
        Store.open(f"sqlite:///{db}").close()  # the second open, in the same process
        other = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA journal_mode=WAL');"
            " c.execute('INSERT INTO probe VALUES (1)'); c.commit(); c.close()"
        )
        subprocess.run([sys.executable, "-c", other, str(db)], check=True, timeout=60)
        # The first store still has a connection open: the other process was not the last
        # one out, so the WAL must still be there.
        assert Path(f"{db}-wal").exists(), "another process removed the WAL of a store still open here"
    finally:
        first.close()
