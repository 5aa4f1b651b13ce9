"""``connect-audit qsh METHOD URL``: the canonical request and query string hash of a request.

The first thing to compare when a host or an app answers 401: compute what the qsh of a
request must be, by the host's own rules, and set it beside the ``qsh`` claim of the token
(``connect-audit token inspect`` does the comparison and explains a difference).
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "qsh",
        help="print the canonical request and qsh of a request",
        description=(
            "Print the canonical request (method, path without the context path, sorted "
            "and re-encoded query) and its SHA-256, the value a Connect JWT's qsh claim "
            "must have for this request."
        ),
    )
    parser.add_argument("method", metavar="METHOD", help="the HTTP method (GET, POST, ...)")
    parser.add_argument(
        "url", metavar="URL", help="the absolute URL, or the path with its query string"
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        help=(
            "the baseUrl whose path is removed first: the app's baseUrl for requests to the "
            "app, the site's (https://example.atlassian.net/wiki) for requests to Confluence"
        ),
    )
    parser.add_argument(
        "--json", action="store_true", help='print {"canonical": ..., "qsh": ...}'
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from collector.qsh import canonical_request, query_string_hash

    canonical = canonical_request(args.method, args.url, args.base_url)
    qsh = query_string_hash(args.method, args.url, args.base_url)
    if args.json:
        print(json.dumps({"canonical": canonical, "qsh": qsh}, ensure_ascii=False))
    else:
        print(canonical)
        print(qsh)
    return 0
