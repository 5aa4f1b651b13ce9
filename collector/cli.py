"""The ``connect-audit`` command line.

Each subcommand lives in ``collector.commands.<name>`` and exposes ``register(subparsers)``
(standard library only, so ``--help`` starts fast) and ``run(args) -> int``, which imports
what it needs. Exit codes: 0 success, 1 a negative answer (a rejected token, a broken
chain), 2 a usage or configuration error, reported as one sentence, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from collector import commands
from collector.errors import ConnectAuditError

PROG = "connect-audit"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Verify, record and explain the authenticated calls of an Atlassian Connect app.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"collector.commands.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConnectAuditError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `connect-audit export ... | head` closes the pipe early; that is not an error.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
