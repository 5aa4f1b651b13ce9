"""One module per ``connect-audit`` subcommand; see :mod:`collector.cli`."""

from __future__ import annotations

import argparse

DATABASE_HELP = "the audit store (default: CONNECT_AUDIT_DATABASE_URL or data/audit.db)"


def add_database_option(parser: argparse.ArgumentParser) -> None:
    """The ``--database URL`` option the store commands share (resolved by collector.config)."""
    parser.add_argument("--database", metavar="URL", help=DATABASE_HELP)
