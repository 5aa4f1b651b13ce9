"""What verifying a Forge Invocation Token costs: µs per token, JWKS cached, against PyJWT.

The token is a realistic FIT (RS256, 2048-bit key, ``kid`` in the header; ``iss``
forge/invocation-token, ``aud`` and ``app.id`` the app's ARI, the installation, apiBaseUrl,
environment, module, a UI ``context`` with its extension, ``principal``, iat/nbf/exp with
exp = iat + 300, ``jti``). Both key sets are served by a real loopback HTTP server
(:class:`~collector.simulator.server.ServerThread`), each client on its own path, and each
is read once before timing starts, so the numbers are for a warm cache:

1. ``jwt.decode+PyJWKClient``: the baseline, PyJWT as its documentation shows it:
   ``PyJWKClient(url).get_signing_key_from_jwt(token).key`` (its JWK-set cache warm), then
   ``jwt.decode(token, key, algorithms=["RS256"], audience=APP_ARI, issuer=...)``:
   signature, exp/nbf/iat, aud and iss; none of the FIT's own claims are looked at. The
   token is decoded twice (once unverified for its kid), and PyJWT 2.15 (the project's
   floor, see pyproject.toml) checks every base64url character in Python, so this
   baseline's cost grows with the token's length.
2. ``ForgeVerifier``: Connect Audit's full strict path: ``ForgeVerifier([APP_ARI],
   keys=JwksUrlSource(url)).verify(token, ForgeExpectation(...))``: the strict JWS parse,
   header rules, kid format, the cached JWKS lookup, RS256, times with leeway and lifetime
   cap, every FIT claim's form, aud == app.id, module, environment and principal expected.
   The source's ``fetches`` must stay 1 over the whole run (checked and printed).
3. ``ForgeVerifier (memory key)``: the same verifier over an in-memory key source (a
   DirectoryKeySource without the disk), to show that the JWKS cache costs nothing extra.

The candidates are timed in interleaved rounds (so a noisy neighbour hits all of them); each
one's best and median are printed, and each ratio is the median of the per-round ratios with
their spread. Goal: ForgeVerifier within 1.5x of jwt.decode+PyJWKClient. Nothing secret is
printed (no token, no private key).

    python bench/forge.py [--number N] [--rounds R]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jwt
from _timing import format_ratio, measure, ratio_rounds

from collector import errors
from collector.forge import FORGE_ISSUER, RESOLVER, ForgeExpectation, ForgeVerifier
from collector.jwks import JwksUrlSource
from collector.signing import rsa_key_pair, sign_rs256
from collector.simulator.server import ServerThread
from collector.tokens import validate_kid

GOAL = 1.5
BASELINE = "jwt.decode+PyJWKClient"
CANDIDATE = "ForgeVerifier"
MEMORY = "ForgeVerifier (memory key)"

KID = "forge-bench-2048-a1b2c3"
APP_ARI = "ari:cloud:ecosystem::app/4f1c2d3e-8a9b-4c5d-9e0f-1a2b3c4d5e6f"
INSTALLATION_ARI = "ari:cloud:ecosystem::installation/0b6e5d4c-3b2a-4918-8f7e-6d5c4b3a2918"
CLOUD_ID = "a436116f-02ce-4520-8fbb-7301462a1674"
ENVIRONMENT_ARI = (
    "ari:cloud:ecosystem::environment/4f1c2d3e-8a9b-4c5d-9e0f-1a2b3c4d5e6f/"
    "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"
)
MODULE_KEY = "audit-macro"
SITE_URL = "https://example.atlassian.net"
ACCOUNT_ID = "5b10ac8d82e05b22cc7d4ef5"
PYJWT_PATH = "/pyjwt/.well-known/jwks.json"
FORGE_PATH = "/forge/.well-known/jwks.json"


def _b64_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _jwks(public_pem: str) -> bytes:
    """The public key as Forge publishes it: ``{"keys": [{kty, kid, alg, use, n, e}]}``."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    numbers = load_pem_public_key(public_pem.encode("ascii")).public_numbers()
    jwk = {"kty": "RSA", "kid": KID, "alg": "RS256", "use": "sig",
           "n": _b64_uint(numbers.n), "e": _b64_uint(numbers.e)}
    return json.dumps({"keys": [jwk]}).encode("utf-8")


class _JwksApp:
    """A WSGI app serving one JWKS document on two paths, counting the reads of each."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.reads = {PYJWT_PATH: 0, FORGE_PATH: 0}
        self._lock = threading.Lock()

    def __call__(self, environ: dict, start_response):
        path = environ["PATH_INFO"]
        if path not in self.reads:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        with self._lock:
            self.reads[path] += 1
        start_response("200 OK", [("Content-Type", "application/json")])
        return [self.body]


class _MemoryKeys:
    """A :class:`~collector.tokens.KeySource` over ``{kid: PEM}`` held in memory."""

    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = dict(keys)

    def public_key(self, kid: str) -> str:
        kid = validate_kid(kid)
        pem = self._keys.get(kid)
        if pem is None:
            raise errors.UnknownKid(f"no key in memory for kid {kid}")
        return pem


def fit_claims(now: float) -> dict:
    """A Forge Invocation Token's claims for a Confluence macro's resolver call."""
    iat = int(now)
    return {
        "iss": FORGE_ISSUER,
        "aud": APP_ARI,
        "app": {
            "id": APP_ARI,
            "installationId": INSTALLATION_ARI,
            "apiBaseUrl": f"https://api.atlassian.com/ex/confluence/{CLOUD_ID}",
            "appVersion": "2.0.0",
            "environment": {"type": "PRODUCTION", "id": ENVIRONMENT_ARI},
            "module": {"type": "xen:macro", "key": MODULE_KEY},
        },
        "context": {
            "cloudId": CLOUD_ID,
            "siteUrl": SITE_URL,
            "moduleKey": MODULE_KEY,
            "localId": "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a5b",
            "extension": {
                "type": "macro",
                "content": {"id": "123456", "type": "page"},
                "space": {"id": "98304", "key": "DS"},
                "isEditing": False,
                "references": [],
            },
        },
        "principal": ACCOUNT_ID,
        "iat": iat,
        "nbf": iat,
        "exp": iat + 300,
        "jti": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
    }


def candidates(now: float, base_url: str, private_pem: str, public_pem: str):
    """The timed callables (each checked to accept the token) and the JWKS source."""
    token = sign_rs256(fit_claims(now), private_pem, kid=KID)

    client = jwt.PyJWKClient(base_url + PYJWT_PATH)
    source = JwksUrlSource(base_url + FORGE_PATH)
    verifier = ForgeVerifier([APP_ARI], keys=source, clock=lambda: now + 1)
    in_memory = ForgeVerifier([APP_ARI], keys=_MemoryKeys({KID: public_pem}), clock=lambda: now + 1)
    expect = ForgeExpectation(
        invocation=RESOLVER, module_key=MODULE_KEY, environment="PRODUCTION", principal="required"
    )

    def baseline() -> object:
        key = client.get_signing_key_from_jwt(token).key
        return jwt.decode(token, key, algorithms=["RS256"], audience=APP_ARI, issuer=FORGE_ISSUER)

    def ours() -> object:
        return verifier.verify(token, expect)

    def ours_memory() -> object:
        return in_memory.verify(token, expect)

    # Each path must accept the token, or the comparison means nothing; these first calls
    # also read each JWKS once, so every timed call finds the key set cached.
    assert baseline()["app"]["installationId"] == INSTALLATION_ARI
    assert ours().installation_id == INSTALLATION_ARI
    assert ours_memory().installation_id == INSTALLATION_ARI
    funcs = {BASELINE: baseline, CANDIDATE: ours, MEMORY: ours_memory}
    return funcs, source, len(token)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=3000, help="calls per round (default 3000)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    args = parser.parse_args(argv)

    private_pem, public_pem = rsa_key_pair()
    jwks_app = _JwksApp(_jwks(public_pem))
    with ServerThread(jwks_app) as server:
        funcs, source, token_size = candidates(time.time(), server.url, private_pem, public_pem)
        del private_pem  # only the token is needed from here on
        measure(funcs, max(1, args.number // 10), 1)  # warm caches and the allocator
        samples = measure(funcs, args.number, args.rounds)
    # The JWKS was read once per client, before timing: every timed call hit a warm cache.
    assert source.fetches == 1, f"JwksUrlSource read the JWKS {source.fetches} times"
    assert jwks_app.reads == {PYJWT_PATH: 1, FORGE_PATH: 1}, jwks_app.reads
    best = {name: min(values) for name, values in samples.items()}
    median = {name: statistics.median(values) for name, values in samples.items()}

    print(f"Forge FIT verify, JWKS cached, µs per token ({args.rounds} rounds x {args.number} "
          f"calls, Python {sys.version.split()[0]}, PyJWT {jwt.__version__}, RS256 2048-bit, "
          f"token {token_size} bytes)")
    print(f"{'':<28}{'best':>10}{'median':>10}")
    for name in funcs:
        print(f"{name:<28}{best[name]:>10.1f}{median[name]:>10.1f}")
    ratio = ratio_rounds(samples, CANDIDATE, BASELINE)
    ratio_memory = ratio_rounds(samples, MEMORY, BASELINE)
    cache_cost = ratio_rounds(samples, CANDIDATE, MEMORY)
    print(f"JWKS reads over the run: JwksUrlSource.fetches = {source.fetches}, "
          f"PyJWKClient = {jwks_app.reads[PYJWT_PATH]} (server-side count)")
    width = len(f"{MEMORY} / {BASELINE}")
    print(f"{f'{CANDIDATE} / {BASELINE}':<{width}} = {format_ratio(ratio, args.rounds)}  "
          f"(goal <= {GOAL:g}x: {'met' if ratio[0] <= GOAL else 'NOT met'})")
    print(f"{f'{MEMORY} / {BASELINE}':<{width}} = {format_ratio(ratio_memory, args.rounds)}")
    print(f"{f'{CANDIDATE} (JWKS) / {MEMORY}':<{width}} = {format_ratio(cache_cost, args.rounds)}  "
          f"(what the cached JWKS lookup adds)")
    verdict = "met" if ratio[0] <= GOAL else "NOT met"
    print(f"verdict: goal {verdict}: the full strict FIT check costs a median {ratio[0]:.2f}x "
          f"jwt.decode+PyJWKClient (medians {median[CANDIDATE]:.1f} vs {median[BASELINE]:.1f} µs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
