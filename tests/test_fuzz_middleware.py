"""Property tests of the incoming middleware under attack: mutated tokens, mutated requests,
odd methods, paths and query strings, huge headers, against BOTH the WSGI and the ASGI
middleware (called in-process the way servers call them), plus a smaller run over real HTTP
(the WSGI server the demo uses, built on http.server, and uvicorn, on loopback).

What must hold for every request:

* the answer is the app's own (200) exactly when the token is the unaltered, valid token for
  a request that canonicalises to the one it was signed for; otherwise it is the generic 401
  (400 only for a verified lifecycle callback whose body does not fit); nothing else, and
  the 401 body never names the reason;
* no exception escapes the middleware, and the collector logs no warning or error;
* every request takes bounded time, a megabyte of header included;
* every request is recorded exactly once, a refusal with one of the public reason codes.

The oracle for "does the altered request still match its token" is the specified canonical
request (:func:`collector.qsh.query_string_hash`), tested on its own against Atlassian's
interoperability vectors; for the token itself it is simply "is it the same string".
"""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa
from attackkit import APP_BASE_URL, APP_BODY, ErrorLog, Harness, Response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.errors import REJECTION_CODES
from collector.qsh import query_string_hash

#: Generous: an in-process request costs about a millisecond; a megabyte header a few.
TIME_BOUND = 2.0
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
#: What an attacker can put in a token: base64url, the separators and padding of other
#: encodings, whitespace, quoting, percent signs, Latin-1 (all an HTTP header can carry).
TOKEN_ALPHABET = B64URL + ".=+/ \t%\"',;:\\" + "".join(chr(c) for c in range(0xA0, 0x100))
PROPERTY = settings(max_examples=150, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SMALL = settings(PROPERTY, max_examples=50)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = Harness(tmp_path_factory.mktemp("fuzz"))
    yield h
    h.close()


def _incoming_events(h: Harness) -> list[tuple]:
    assert h.audit.flush(timeout=30)
    engine = sa.create_engine(h.database)
    try:
        with engine.connect() as conn:
            return list(conn.exec_driver_sql(
                "SELECT outcome, reason, status FROM audit_events"
                " WHERE direction IN ('incoming', 'lifecycle')"
            ))
    finally:
        engine.dispose()


def run_property(h: Harness, prop: Callable[[], None]) -> None:
    """Run a hypothesis property, then check what it left behind: one event per request, only
    public reason codes, no warning from the collector, the recorder healthy."""
    before = len(_incoming_events(h))
    sent_before = h.sent
    with ErrorLog() as errors:
        prop()
    # The middleware records a request once the server has sent its response, so the client
    # can hold the last answer a moment before its event is queued: wait for it (bounded).
    deadline = time.monotonic() + 10
    rows = _incoming_events(h)
    while len(rows) - before < h.sent - sent_before and time.monotonic() < deadline:
        time.sleep(0.02)
        rows = _incoming_events(h)
    assert len(rows) - before == h.sent - sent_before, "a request was not recorded exactly once"
    for outcome, reason, status in rows:
        if outcome == "rejected":
            assert reason in REJECTION_CODES, reason
            assert status == 401
    assert not errors.records, [r.getMessage() for r in errors.records]
    stats = h.audit.recorder.stats()
    assert stats["spilled"] == 0 and stats["last_error"] is None, stats


def assert_refused(r: Response) -> None:
    assert r.status == 401, (r.status, r.body[:200])
    head = r.body.split(b"Request id:")[0].decode()
    assert head.startswith("Unauthorized"), r.body
    for code in REJECTION_CODES:
        assert code not in head, f"the 401 body names the reason {code}"
    assert ("WWW-Authenticate", 'JWT realm="atlassian-connect"') in r.headers or any(
        k.lower() == "www-authenticate" for k, _ in r.headers)
    assert r.seconds < TIME_BOUND, r.seconds


def assert_answered(r: Response) -> None:
    assert r.status == 200, (r.status, r.body[:200])
    assert r.body == APP_BODY
    assert r.seconds < TIME_BOUND, r.seconds


def call(h: Harness, interface: str, method: str, target: str, headers: dict[str, str] | None = None,
         body: bytes = b"") -> Response:
    if interface == "wsgi":
        return h.call_wsgi(method, target, headers=headers, body=body)
    return h.call_asgi(method, target, headers=headers, body=body)


# ----------------------------------------------------------------------------- token mutations


@st.composite
def token_mutation(draw) -> Callable[[str], str]:
    """One way to spoil a token: byte flips, inserts, deletes, segment surgery, padding,
    truncation, a forged header; composed up to three times."""

    def one(draw) -> Callable[[str], str]:
        kind = draw(st.sampled_from([
            "flip", "insert", "delete", "truncate", "drop_segment", "dup_segment", "swap_segments",
            "replace_segment", "pad", "extra_segment", "swapcase", "forge_header", "whitespace",
        ]))
        pos = draw(st.floats(0, 1, allow_nan=False))
        text = draw(st.text(TOKEN_ALPHABET, min_size=1, max_size=8))
        k, j = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        header = draw(st.sampled_from([
            '{"alg":"none","typ":"JWT"}', '{"alg":"HS512","typ":"JWT"}', '{"alg":"hs256","typ":"JWT"}',
            '{"alg":"HS256","typ":"JWT","crit":["exp"]}', '{"alg":"HS256","jku":"https://evil.example/k"}',
            '{"alg":"RS256","kid":"../../etc/passwd"}', '{"alg":"HS256","alg":"none"}', '[]', '{}',
            '{"alg":"HS256","typ":"JWT"} ', '{"alg":"HS256","typ":"JWT","b64":false}',
        ]))

        ws = draw(st.sampled_from([" ", "\t", "\xa0", "  "]))

        def apply(token: str) -> str:
            i = int(pos * len(token))
            segs = token.split(".")
            if kind == "flip":
                return token[:i] + text[0] + token[i + 1:]
            if kind == "insert":
                return token[:i] + text + token[i:]
            if kind == "delete":
                return token[:i] + token[i + len(text):]
            if kind == "truncate":
                return token[:i]
            if kind == "drop_segment" and len(segs) > 1:
                return ".".join(segs[:k % len(segs)] + segs[k % len(segs) + 1:])
            if kind == "dup_segment":
                return ".".join([*segs[: k % len(segs) + 1], segs[k % len(segs)], *segs[k % len(segs) + 1:]])
            if kind == "swap_segments" and len(segs) == 3:
                segs[k], segs[j] = segs[j], segs[k]
                return ".".join(segs)
            if kind == "replace_segment":
                segs[k % len(segs)] = text
                return ".".join(segs)
            if kind == "pad":
                segs[k % len(segs)] += "=" * (1 + j)
                return ".".join(segs)
            if kind == "extra_segment":
                return token + "." + text
            if kind == "swapcase":
                return token.swapcase()
            if kind == "forge_header" and len(segs) == 3:
                import base64

                segs[0] = base64.urlsafe_b64encode(header.encode()).decode().rstrip("=")
                return ".".join(segs)
            if kind == "whitespace":
                return token[:i] + ws + token[i:]
            return token

        return apply

    fns = [one(draw) for _ in range(draw(st.integers(1, 3)))]

    def mutate(token: str) -> str:
        for fn in fns:
            token = fn(token)
        return token

    return mutate


def _effective_header_token(value: str) -> str:
    # What a careful reader of "Authorization: JWT <value>" takes as the token: the value
    # without surrounding whitespace (str.strip: what every Python server framework does).
    return value.strip()


DELIVERY = st.sampled_from(["header", "query", "lowercase-scheme", "both-places"])


@pytest.mark.slow
@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_mutated_tokens_are_refused(harness, interface):
    def prop_body(mutate, delivery):
        target = f"/page/{uuid.uuid4().hex[:6]}?space=DEV&x=1"
        original = harness.token("GET", target)
        mutated = mutate(original)
        headers: dict[str, str] = {}
        if delivery == "query":
            target = f"{target}&jwt={quote(mutated, safe='')}"
            effective = mutated
        else:
            scheme = "jwt" if delivery == "lowercase-scheme" else "JWT"
            headers["Authorization"] = f"{scheme} {mutated}"
            effective = _effective_header_token(mutated)
            if delivery == "both-places":
                # The header wins over the query, so a valid token in the query must not
                # rescue a spoilt one in the header.
                target = f"{target}&jwt={original}"
                if not effective:
                    effective = original
        r = call(harness, interface, "GET", target, headers)
        if effective == original:
            assert_answered(r)
        else:
            assert_refused(r)

    @PROPERTY
    @given(mutate=token_mutation(), delivery=DELIVERY)
    def prop(mutate, delivery):
        prop_body(mutate, delivery)

    run_property(harness, prop)


# ----------------------------------------------------------------------------- request mutations

_PATH_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)


@st.composite
def request_mutation(draw):
    """Alter the method, path or query of a request after its token was signed."""
    kind = draw(st.sampled_from([
        "method_case", "method_other", "path_append", "trailing_slash", "double_slash", "encode_char",
        "dot_segment", "query_add", "query_reorder", "query_dup", "query_plus", "query_drop",
        "query_jwt_param", "query_value", "fragment",
    ]))
    other_method = draw(st.sampled_from(["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "PROPFIND",
                                         "GET ", "G\tET", "get"]))
    extra = draw(_PATH_TEXT)
    return kind, other_method, extra


def _mutate_request(method: str, path: str, query: str, kind: str, other: str, extra: str) -> tuple[str, str]:
    enc = quote(extra, safe="")
    pairs = [p for p in query.split("&") if p]
    if kind == "method_case":
        method = method.lower()
    elif kind == "method_other":
        method = other
    elif kind == "path_append":
        path += enc or "x"
    elif kind == "trailing_slash":
        path += "/"
    elif kind == "double_slash":
        path = "/" + path
    elif kind == "encode_char":
        path = path.replace("e", "%65", 1)
    elif kind == "dot_segment":
        path = path + "/../" + (enc or "x")
    elif kind == "query_add":
        pairs.append(f"{enc or 'k'}={enc}")
    elif kind == "query_reorder":
        pairs.reverse()
    elif kind == "query_dup" and pairs:
        pairs.append(pairs[0])
    elif kind == "query_plus":
        pairs.append("q=a+b")
    elif kind == "query_drop" and pairs:
        pairs.pop()
    elif kind == "query_jwt_param":
        pairs.append(f"jwt={enc or 'x'}")  # the jwt parameter is not hashed, but it is read first
    elif kind == "query_value" and pairs:
        pairs[0] = pairs[0].split("=")[0] + "=" + (enc or "changed")
    elif kind == "fragment":
        path += "#" + (enc or "f")
    return method, path + ("?" + "&".join(pairs) if pairs else "")


@pytest.mark.slow
@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_requests_altered_after_signing(harness, interface):
    @PROPERTY
    @given(mutation=request_mutation(), delivery=st.sampled_from(["header", "query"]))
    def prop(mutation, delivery):
        method, path, query = "GET", f"/page/{uuid.uuid4().hex[:6]}", "space=DEV&b=2&a=1"
        token = harness.token(method, f"{path}?{query}")
        new_method, new_target = _mutate_request(method, path, query, *mutation)
        headers = {}
        if delivery == "header":
            headers["Authorization"] = f"JWT {token}"
            target = new_target
        else:
            target = new_target + ("&" if "?" in new_target else "?") + f"jwt={token}"
        same = query_string_hash(new_method, APP_BASE_URL + new_target, APP_BASE_URL) == query_string_hash(
            method, f"{APP_BASE_URL}{path}?{query}", APP_BASE_URL)
        if delivery == "query" and mutation[0] == "query_jwt_param":
            same = False  # the first jwt parameter is the spoilt one
        r = call(harness, interface, new_method, target, headers)
        if same:
            assert_answered(r)
        else:
            assert_refused(r)

    run_property(harness, prop)


# ----------------------------------------------------------------------------- valid odd requests

ODD_METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "PROPFIND",
                               "MKCOL", "M-SEARCH", "get", "Post"])
SEGMENT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=10)
QUERY_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=10)


@st.composite
def odd_request(draw) -> tuple[str, str]:
    """A request a real client could send: odd methods, percent-encoded paths with any text,
    query strings encoded in the styles clients use (RFC 3986, form, with reserved characters
    left raw), repeated and valueless parameters."""
    method = draw(ODD_METHODS)
    segs = draw(st.lists(SEGMENT, min_size=1, max_size=4))
    safe = draw(st.sampled_from(["", "!$'()*,;=:@~", "~"]))
    path = "/page/" + "/".join(quote(s, safe=safe) for s in segs)
    pairs = draw(st.lists(st.tuples(QUERY_TEXT.filter(lambda s: s != "jwt"), QUERY_TEXT,
                                    st.sampled_from(["rfc", "form", "bare"])), max_size=5))
    parts = []
    for name, value, style in pairs:
        if style == "rfc":
            parts.append(f"{quote(name, safe='')}={quote(value, safe='')}")
        elif style == "form":
            parts.append(f"{quote_plus(name)}={quote_plus(value)}")
        else:
            parts.append(quote(name, safe="") or "flag")
    query = "&".join(parts)
    return method.upper() if draw(st.booleans()) else method, path + ("?" + query if query else "")


@pytest.mark.slow
@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_valid_tokens_for_odd_requests_reach_the_app(harness, interface):
    """Signed for exactly what is sent, any method, path and query reaches the app."""

    @PROPERTY
    @given(request=odd_request())
    def prop(request):
        method, target = request
        token = harness.token(method, target)
        r = call(harness, interface, method, target, {"Authorization": f"JWT {token}"})
        assert_answered(r)

    run_property(harness, prop)


@pytest.mark.slow
def test_a_server_without_raw_uri_never_crashes(harness):
    """wsgiref gives only the decoded PATH_INFO: the path is re-encoded, so an unusual
    encoding may no longer match its token; the answer is then a 401, never a crash."""

    @SMALL
    @given(request=odd_request())
    def prop(request):
        method, target = request
        token = harness.token(method, target)
        r = harness.call_wsgi(method, target, headers={"Authorization": f"JWT {token}"}, raw_uri=False)
        if r.status == 401:
            assert_refused(r)
        else:
            assert_answered(r)

    run_property(harness, prop)


# ----------------------------------------------------------------------------- headers


@st.composite
def hostile_headers(draw) -> tuple[dict[str, str], bool]:
    """Header sets that must not confuse the token reader; returns (headers, carries_valid)."""
    size = draw(st.sampled_from([9 * 1024, 64 * 1024, 1024 * 1024]))
    kind = draw(st.sampled_from([
        "huge_token", "huge_three_segments", "scheme_only", "bearer", "basic", "empty", "two_tokens",
        "huge_request_id", "hostile_request_id", "many_headers", "control_chars",
    ]))
    return kind, size


@pytest.mark.slow
@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_hostile_and_huge_headers(harness, interface):
    @SMALL
    @given(spec=hostile_headers(), in_query=st.booleans())
    def prop(spec, in_query):
        kind, size = spec
        target = f"/page/{uuid.uuid4().hex[:6]}?a=1"
        valid = harness.token("GET", target)
        headers: dict[str, str] = {}
        blob = ("A" * size)
        valid_in_header = False
        if kind == "huge_token":
            headers["Authorization"] = "JWT " + blob
        elif kind == "huge_three_segments":
            third = size // 3
            headers["Authorization"] = f"JWT {blob[:third]}.{blob[:third]}.{blob[:third]}"
        elif kind == "scheme_only":
            headers["Authorization"] = "JWT"
        elif kind == "bearer":
            headers["Authorization"] = f"Bearer {valid}"  # not a Connect scheme: ignored
        elif kind == "basic":
            headers["Authorization"] = "Basic YWRtaW46YWRtaW4="
        elif kind == "empty":
            headers["Authorization"] = ""
        elif kind == "two_tokens":
            headers["Authorization"] = f"JWT {valid} {valid}"
        elif kind == "huge_request_id":
            headers["Authorization"], valid_in_header = f"JWT {valid}", True
            headers["X-Request-Id"] = blob
        elif kind == "hostile_request_id":
            headers["Authorization"], valid_in_header = f"JWT {valid}", True
            headers["X-Request-Id"] = "<script>alert(1)</script>\t=1+1"
        elif kind == "many_headers":
            headers.update({f"X-Filler-{i}": "x" * 64 for i in range(500)})
        elif kind == "control_chars":
            headers["Authorization"] = "JWT \x01\x7f" + valid
        if in_query:
            target += f"&jwt={valid}"
        header_is_jwt = headers.get("Authorization", "").strip().lower().startswith("jwt ") and \
            headers["Authorization"].strip()[4:].strip()
        carries_valid = valid_in_header or (in_query and not header_is_jwt)
        r = call(harness, interface, "GET", target, headers)
        if carries_valid:
            assert_answered(r)
            rid = dict((k.lower(), v) for k, v in r.headers)["x-request-id"]
            assert rid != headers.get("X-Request-Id")  # neither huge nor hostile ids are echoed
            assert len(rid) <= 128 and rid.isalnum()
        else:
            assert_refused(r)

    run_property(harness, prop)


@pytest.mark.slow
def test_huge_query_strings(harness):
    """A megabyte query, tens of thousands of parameters, or thousands of jwt parameters."""
    for interface in ("wsgi", "asgi"):
        for query in ("a=" + "b" * 1024 * 1024, "&".join(f"p{i}={i}" for i in range(30_000)),
                      "&".join("jwt=x" for _ in range(5000)), "&" * 100_000, "%" * 100_000):
            target = f"/page/huge?{query}"
            token = harness.token("GET", target)
            refused = call(harness, interface, "GET", target)
            assert_refused(refused)
            # The header wins over thousands of bogus jwt parameters; bare '%' and '&' are
            # hashed like any other text.
            assert_answered(call(harness, interface, "GET", target, {"Authorization": f"JWT {token}"}))
    _incoming_events(harness)


# ----------------------------------------------------------------------------- lifecycle route


@pytest.mark.slow
@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_mutated_lifecycle_callbacks_are_refused(harness, interface):
    import json

    from collector import signing

    @SMALL
    @given(mutate=token_mutation(), body_kind=st.sampled_from(["ours", "garbage", "array", "huge", "empty"]))
    def prop(mutate, body_kind):
        # RS256 is deterministic: a nonce in the signed URL keeps two examples minted in the
        # same second from being each other's replay.
        target = f"/installed?nonce={uuid.uuid4().hex}"
        token = signing.lifecycle_token(
            private_key_pem=harness._private, kid=harness.kid, client_key=harness.client_key,
            app_base_url=APP_BASE_URL, method="POST", url=APP_BASE_URL + target, now=time.time(),
        )
        mutated = mutate(token)
        body = {
            "ours": json.dumps({
                "key": "com.example.fuzzed", "clientKey": harness.client_key,
                "sharedSecret": harness.shared_secret, "eventType": "installed",
                "baseUrl": "https://fuzz.atlassian.net/wiki", "productType": "confluence",
            }).encode(),
            "garbage": b"\xff\xfe{not json",
            "array": b"[1, 2, 3]",
            "huge": b'{"clientKey": "' + b"x" * 300_000 + b'"}',
            "empty": b"",
        }[body_kind]
        r = call(harness, interface, "POST", target,
                 {"Authorization": f"JWT {mutated}", "Content-Type": "application/json"}, body)
        if mutated.strip() != token:
            assert_refused(r)
        elif body_kind == "ours":
            assert_answered(r)
        else:
            # A genuine token with a body that is not this tenant's callback: refused (the
            # body's clientKey is not the token's iss) or, verified yet unusable, a 400.
            assert r.status in (400, 401), r
            assert r.seconds < TIME_BOUND

    run_property(harness, prop)


# ----------------------------------------------------------------------------- over real HTTP


class _Uvicorn:
    def __init__(self, app) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error",
                                                    lifespan="off", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> int:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self.server.servers[0].sockets[0].getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def http_servers(harness):
    from collector.simulator.server import ServerThread

    wsgi_server = ServerThread(harness.wsgi).start()
    with _Uvicorn(harness.asgi) as asgi_port:
        yield {"wsgi": wsgi_server.port, "asgi": asgi_port}
    wsgi_server.stop()


def http_call(port: int, method: str, target: str, headers: dict[str, str]) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    try:
        conn.putrequest(method, target, skip_host=False, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    return Response(resp.status, resp.getheaders(), body, time.perf_counter() - started)


@pytest.mark.slow
@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_over_real_http(harness, http_servers, interface):
    """The same properties, smaller, over real HTTP: the demo's WSGI server and uvicorn."""
    port = http_servers[interface]

    @SMALL
    @given(mutate=token_mutation(), request=odd_request(), spoil=st.booleans())
    def prop(mutate, request, spoil):
        method, target = request
        method = method.upper()
        if method == "HEAD":
            method = "GET"  # a HEAD response has no body to compare
        token = harness.token(method, target)
        sent = mutate(token) if spoil else token
        sent = "".join(c for c in sent if c.isascii() and c.isprintable())  # what a header can carry
        with harness._lock:
            harness.sent += 1
        r = http_call(port, method, target, {"Authorization": f"JWT {sent}"})
        if sent.strip() == token:
            assert_answered(r)
        else:
            assert_refused(r)

    run_property(harness, prop)


# ----------------------------------------------------------------------------- pinned cases
# Inputs the properties above found; kept as plain tests so that a regression names itself.


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_repeated_parameter_with_ascii_and_non_ascii_values(harness, interface):
    """``?a=x&a=é``: repeated values are sorted in Java's UTF-16 order; mixing an ASCII and a
    non-ASCII value must not break the sort (it is the qsh of a perfectly legal request)."""
    target = "/page/mixed?a=x&a=%C3%A9"
    token = harness.token("GET", target)
    assert_answered(call(harness, interface, "GET", target, {"Authorization": f"JWT {token}"}))
    assert_refused(call(harness, interface, "GET", target, {"Authorization": f"JWT {token}x"}))


@pytest.mark.parametrize("body", [b"", b"[1, 2]", b"\xff\xfe{not json", b'{"clientKey": 42}'])
@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_lifecycle_callback_without_a_client_key_in_the_body(harness, interface, body):
    """A signed-looking callback whose body names no clientKey is refused, not a crash."""
    from collector import signing

    target = f"/installed?nonce={uuid.uuid4().hex}"
    token = signing.lifecycle_token(
        private_key_pem=harness._private, kid=harness.kid, client_key=harness.client_key,
        app_base_url=APP_BASE_URL, method="POST", url=APP_BASE_URL + target, now=time.time(),
    )
    r = call(harness, interface, "POST", target, {"Authorization": f"JWT {token}"}, body)
    assert r.status in (400, 401), r
