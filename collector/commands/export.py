"""``connect-audit export``: stream every matching audit event as CSV or NDJSON.

Writes to standard output unless ``-o FILE`` is given; a file is written beside its final
name and renamed into place at the end, so an interrupted export never leaves a truncated
file that looks complete. The export is recorded in the log it reads (filter, row count,
SHA-256 of the bytes written).
"""

from __future__ import annotations

import argparse
import sys

from collector.commands import add_database_option

FILTER_FLAGS = (
    # (flag, EventFilter field, help)
    ("--since", "since", "oldest time included: ISO-8601 date/datetime (UTC) or an age like 7d"),
    ("--until", "until", "time excluded onwards; a bare date includes that whole day"),
    ("--tenant", "tenant", "a tenant's clientKey (or its baseUrl)"),
    ("--platform", "platform", "connect, forge or atlassian (imported records)"),
    ("--direction", "direction", "incoming, outgoing, lifecycle, internal or imported"),
    ("--identity-kind", "identity_kind", "app_user, user or anonymous"),
    ("--account", "account_id", "the acting user's accountId"),
    ("--outcome", "outcome", "allowed, denied, rejected or error"),
    ("--status", "status", "an HTTP status (403) or class (4xx)"),
    ("--reason", "reason", "a rejection code, or scope / permission for a 403"),
    ("--method", "method", "an HTTP method"),
    ("--scope", "scope", "the required scope (READ, WRITE, ...; for Forge an OAuth scope)"),
    ("--path", "path_contains", "text the path contains"),
    ("--text", "text", "free text searched in tenant, account, path, reason and ids"),
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="export matching audit events as CSV or NDJSON",
        description=(
            "Stream every audit event that matches the filters, oldest first, as CSV "
            "(formula-neutralised, for spreadsheets) or NDJSON (exact values, for programs). "
            "The export itself is recorded in the log."
        ),
    )
    parser.add_argument("--format", choices=("csv", "ndjson"), default="csv",
                        help="output format (default csv)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write to FILE instead of standard output")
    add_database_option(parser)
    group = parser.add_argument_group("filters (combined with AND)")
    for flag, field, text in FILTER_FLAGS:
        group.add_argument(flag, dest=f"filter_{field}", metavar="VALUE", help=text)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from collector.export import export
    from collector.query import EventFilter
    from collector.store import Store

    flt = EventFilter.from_params(
        {field: getattr(args, f"filter_{field}") for _, field, _ in FILTER_FLAGS}
    )
    actor = _actor()
    with Store.open(args.database, create=False) as store:
        if not args.output:
            result = export(store, flt, sys.stdout.buffer, args.format, actor=actor, via="cli")
            sys.stdout.flush()
        else:
            result = _export_to_file(store, flt, args.output, args.format, actor)
    where = args.output or "standard output"
    print(
        f"exported {result.rows} events to {where} ({result.bytes} bytes, sha256 {result.sha256})",
        file=sys.stderr,
    )
    return 0


def _export_to_file(store, flt, output: str, fmt: str, actor: str):
    import os
    from pathlib import Path

    from collector import files
    from collector.errors import ConfigurationError
    from collector.export import export

    target = Path(output)
    partial = target.with_name(target.name + ".partial")
    tty = sys.stderr.isatty()

    def progress(rows: int) -> None:
        if tty:
            print(f"\rexporting... {rows:,} events", end="", file=sys.stderr, flush=True)

    try:
        with files.open_private(partial) as fh:
            result = export(store, flt, fh, fmt, actor=actor, via="cli", progress=progress)
            os.fsync(fh.fileno())
        partial.replace(target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ConfigurationError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        if tty:
            print(file=sys.stderr)
    return result


def _actor() -> str:
    import getpass

    try:
        return f"{getpass.getuser()} (cli)"
    except (KeyError, OSError):
        return "unknown (cli)"
