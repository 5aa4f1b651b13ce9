"""What strict verification costs: µs per token, against two baselines measured in this run.

1. ``jwt.decode``: PyJWT's HS256 decode of the same token (signature and exp only: no qsh,
   no install lookup, no strictness). The floor for "verify an HS256 JWT in Python".
2. ``atlassian-jwt``: the official Python package's ``Authenticator.authenticate`` (token
   taken from the Authorization header, qsh checked, then ``jwt.decode``).
3. ``TokenVerifier``: Connect Audit's path as the middleware runs it: the token taken from
   the Authorization header, the strict parse, the pinned algorithm, the install lookup,
   HMAC, every claim check, the qsh of the request (with the app's context path removed).

The candidates are timed in interleaved rounds (so a noisy neighbour hits all of them); each
one's best and median are printed, and each ratio is the median of the per-round ratios with
their spread. Goals (issue 2): faster than atlassian-jwt, and within 2x of a bare
``jwt.decode``.

    python bench/verify.py [--number N] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import atlassian_jwt
import jwt
from _timing import format_ratio, measure, ratio_rounds

from collector.signing import request_token
from collector.tokens import StaticInstalls, TokenVerifier, extract_token

SECRET = "bench-shared-secret-of-a-realistic-length-0123456789abcdef"
CLIENT_KEY = "8d2f6c0e-5c1a-4f6e-9a57-3b2c1d0e9f8a"
APP_BASE = "https://audit-app.example.com"
# A page load as Confluence sends it to an app: the usual context parameters.
URL = (
    "/panel?pageId=123456&spaceKey=DS&xdm_e=https%3A%2F%2Fexample.atlassian.net"
    "&xdm_c=channel-com.example.audit__panel&cp=%2Fwiki&xdm_deprecated_addon_key_do_not_use="
    "com.example.audit&lic=active&cv=1000.0.0-abc&tz=Europe%2FBerlin&loc=en-GB"
)


class _Authenticator(atlassian_jwt.Authenticator):
    def get_shared_secret(self, client_key: str) -> str:
        return SECRET


def candidates(now: float):
    token = request_token(
        client_key=CLIENT_KEY,
        shared_secret=SECRET,
        method="GET",
        url=APP_BASE + URL,
        base_url=APP_BASE,
        now=now,
        account_id="5b10ac8d82e05b22cc7d4ef5",
    )
    header = f"JWT {token}"
    verifier = TokenVerifier(
        StaticInstalls({CLIENT_KEY: SECRET}), clock=lambda: now + 1, app_base_url=APP_BASE
    )
    authenticator = _Authenticator()
    headers = {"Authorization": header}

    def bare() -> object:
        return jwt.decode(token, SECRET, algorithms=["HS256"])

    def atlassian() -> object:
        return authenticator.authenticate("GET", URL, headers)

    def ours() -> object:
        return verifier.verify_request(extract_token(header, None), "GET", URL)

    # Each path must accept the token, or the comparison means nothing.
    assert bare()["iss"] == CLIENT_KEY
    assert atlassian().client_key == CLIENT_KEY
    assert ours().client_key == CLIENT_KEY
    return {"jwt.decode": bare, "atlassian-jwt": atlassian, "TokenVerifier": ours}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=5000, help="calls per round (default 5000)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    args = parser.parse_args(argv)

    funcs = candidates(time.time())
    measure(funcs, max(1, args.number // 10), 1)  # warm caches and the allocator
    samples = measure(funcs, args.number, args.rounds)
    best = {name: min(values) for name, values in samples.items()}
    median = {name: statistics.median(values) for name, values in samples.items()}

    print(f"verify path, µs per token ({args.rounds} rounds x {args.number} calls, Python "
          f"{sys.version.split()[0]}, PyJWT {jwt.__version__})")
    print(f"{'':<16}{'best':>10}{'median':>10}")
    for name in funcs:
        print(f"{name:<16}{best[name]:>10.1f}{median[name]:>10.1f}")
    vs_bare = ratio_rounds(samples, "TokenVerifier", "jwt.decode")
    vs_atlassian = ratio_rounds(samples, "TokenVerifier", "atlassian-jwt")
    print(f"TokenVerifier / jwt.decode     = {format_ratio(vs_bare, args.rounds)}  (goal <= 2x: "
          f"{'met' if vs_bare[0] <= 2 else 'NOT met'})")
    print(f"TokenVerifier / atlassian-jwt  = {format_ratio(vs_atlassian, args.rounds)}  (goal < 1x: "
          f"{'met' if vs_atlassian[0] < 1 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
