"""The query string hash (``qsh``): what a Connect JWT says about the request it was made for.

A Connect token carries ``qsh``, the SHA-256 of a *canonical request* built from the HTTP
method, the path and the query. Both ends must build the same string byte for byte, so
these rules follow the host product's own (Java) canonicaliser, as pinned by Atlassian's
interoperability vectors (``tests/vectors``):

- the method is upper-cased;
- the context path is removed: the app's baseUrl path for requests to the app, the
  tenant's baseUrl path (``/wiki``) for requests to Confluence;
- exactly one trailing ``/`` is removed, an empty path is ``/``, and ``&`` in the path
  becomes ``%26`` (otherwise ``/a&b=c?x=y`` and ``/a?b=c&x=y`` would hash alike);
- the query is decoded (``+`` is a space) and re-encoded RFC 3986 style with upper-case
  hex (``~`` kept, ``*`` as ``%2A``, space as ``%20``); the ``jwt`` parameter is dropped;
  parameters are sorted by encoded name; repeated values are sorted by raw value (in
  Java's UTF-16 order) and joined with a literal ``,``; a valueless parameter is ``name=``;
- the parts are joined with ``&``, so a request without a query ends in ``&``.

Everything here is pure and total: any text in, a string out, never an exception, because
it runs on attacker-controlled input before anything else is known about a request.

:func:`diagnose` explains a mismatch by replaying the usual mistakes of token issuers
(context path hashed, ``+`` not decoded, trailing slash kept, ...) until one reproduces
the token's ``qsh``.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote

#: The qsh value of a context token: it vouches for the user and tenant, not for a request.
CONTEXT_QSH = "context-qsh"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_PERCENT_HEX = re.compile(r"%[0-9A-F]{2}")
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")
_PAIRS_UP_TO = 4096  # request length (URL + form body) up to which pairs of mistakes are tried
_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class _Rules:
    """How to canonicalise. The defaults are the host's rules; diagnosis varies them."""

    strip_context: bool = True
    prepend_context: bool = False  # hashes the context path too, when the URL given lacks it
    strip_first_segment: bool = False  # hashes as if the first segment were the context path
    remove_trailing_slash: bool = True
    encode_path_ampersand: bool = True
    upper_method: bool = True
    plus_is_space: bool = True
    drop_jwt: bool = True
    include_form_body: bool = False
    omit_query: bool = False
    reencode: bool = True  # False: use the query's pieces exactly as received
    encoding: str = "rfc3986"  # "rfc3986" | "form" (space as +, * kept, ~ encoded) | "lower"
    name_order: str = "encoded"  # "encoded" | "raw" | "received"
    value_order: str = "raw"  # "raw" | "encoded" | "received"


_HOST_RULES = _Rules()


def split_target(url: str) -> tuple[str, str | None]:
    """Split an absolute URL or a request target into (path, query or None).

    Hand-written rather than ``urllib.parse.urlsplit`` because that raises on some inputs
    (an unclosed IPv6 bracket) and this must accept anything.
    """
    url = url.partition("#")[0]
    match = _SCHEME.match(url)
    if match:
        rest = url[match.end() :]
        cut = len(rest)
        for sep in ("/", "?"):
            index = rest.find(sep)
            if 0 <= index < cut:
                cut = index
        url = rest[cut:]
    path, sep, query = url.partition("?")
    return path, (query if sep else None)


def context_path(base_url: str | None) -> str:
    """The path part of a baseUrl without its trailing slashes: ``/wiki``, or ``""``."""
    if not base_url:
        return ""
    path, _ = split_target(base_url)
    return path.rstrip("/")


def _strip_context(path: str, ctx: str) -> str:
    if ctx and (path == ctx or path.startswith(ctx + "/")):
        return path[len(ctx) :]
    return path


def _canonical_path(path: str, ctx: str, rules: _Rules) -> str:
    if rules.strip_context:
        path = _strip_context(path, ctx)
    elif rules.prepend_context and ctx:
        path = ctx + "/" + path.lstrip("/")
    if rules.strip_first_segment:
        head, sep, tail = path.lstrip("/").partition("/")
        path = "/" + tail if sep and head else path
    if rules.remove_trailing_slash and path.endswith("/"):
        path = path[:-1]
    if not path:
        path = "/"
    elif not path.startswith("/"):
        path = "/" + path
    if rules.encode_path_ampersand:
        path = path.replace("&", "%26")
    return path


# --------------------------------------------------------------------------- query


def _decode(text: str, plus_is_space: bool) -> str:
    if plus_is_space and "+" in text:
        text = text.replace("+", " ")
    if "%" in text:
        # errors="replace": invalid UTF-8 after decoding becomes U+FFFD instead of raising.
        text = unquote(text, encoding="utf-8", errors="replace")
    return text


@lru_cache(maxsize=4096)
def _percent_encode(text: str) -> str:
    # errors="replace" turns a lone surrogate into "?", as Java's String.getBytes does.
    return quote(text, safe="", encoding="utf-8", errors="replace")


def _encode(text: str, style: str) -> str:
    if style == "rfc3986":
        # Hot path of every verification: most names and values need no encoding at all,
        # and the rest repeat from request to request (xdm_e, cp, tz...), hence the cache.
        return text if _UNRESERVED.fullmatch(text) else _percent_encode(text)
    if style == "form":
        return quote(text, safe="*", encoding="utf-8", errors="replace").replace(
            "%20", "+"
        ).replace("~", "%7E")
    encoded = _percent_encode(text)
    if style == "lower":
        return _PERCENT_HEX.sub(lambda m: m.group(0).lower(), encoded)
    return encoded


def _java_order(value: str) -> bytes:
    """Sort key equal to Java's String.compareTo (UTF-16 code units)."""
    # Always bytes: a str key for ASCII values cannot be compared with the bytes key of a
    # non-ASCII value (a TypeError on ``?a=x&a=%C3%A9``).
    return value.encode("utf-16-be", "surrogatepass")


def _collect(query: str, rules: _Rules, into: dict[str, list[str]]) -> None:
    for piece in query.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        if rules.reencode:
            name = _decode(name, rules.plus_is_space)
            value = _decode(value, rules.plus_is_space)
        if not name or (rules.drop_jwt and name == "jwt"):
            continue
        into.setdefault(name, []).append(value)


@lru_cache(maxsize=4096)
def _form_decode(text: str) -> str:
    return _decode(text, True)


def _encode_value(text: str) -> str:
    return text if _UNRESERVED.fullmatch(text) else _percent_encode(text)


def _host_piece(piece: str) -> tuple[str, str, str, str, str] | None:
    """One ``name=value`` piece under the host's rules: (encoded name, value, name, encoded
    value, ``encoded name=encoded value``), or None for a piece that is not hashed. The order
    makes a list of pieces sort as the host sorts them (by encoded name, then value)."""
    name, _, value = piece.partition("=")
    if "%" in name or "+" in name:
        name = _form_decode(name)
    if not name or name == "jwt":
        return None
    if "%" in value or "+" in value:
        value = _form_decode(value)
    encoded_name, encoded_value = _encode_value(name), _encode_value(value)
    return encoded_name, value, name, encoded_value, f"{encoded_name}={encoded_value}"


# Pieces repeat from request to request (xdm_e, cp, tz, lic, loc...), so one cache lookup
# per piece replaces decoding and re-encoding it. Long pieces, and the jwt parameter (new
# on every request), bypass the cache: it holds at most 4096 short strings.
_cached_piece = lru_cache(maxsize=4096)(_host_piece)
_CACHED_PIECE_LEN = 256


def _host_query(query: str) -> str:
    """The host's rules only, written for speed: this runs on every verified request."""
    entries = []
    for piece in query.split("&"):
        if piece:
            if len(piece) <= _CACHED_PIECE_LEN and not piece.startswith("jwt="):
                entry = _cached_piece(piece)
            else:
                entry = _host_piece(piece)
            if entry is not None:
                entries.append(entry)
    if len({entry[2] for entry in entries}) == len(entries):
        # Every name once (the usual case): sorting the pieces is sorting by encoded name.
        entries.sort()
        return "&".join([entry[4] for entry in entries])
    return _grouped_query(entries)


def _grouped_query(entries: list[tuple[str, str, str, str, str]]) -> str:
    """The canonical query when a name repeats: its values sorted (Java order) and joined by ','."""
    groups: dict[str, list[tuple[str, str, str, str, str]]] = {}
    for entry in entries:
        groups.setdefault(entry[2], []).append(entry)
    keyed = []
    for group in groups.values():
        name = group[0][0]
        ordered = sorted(group, key=lambda entry: _java_order(entry[1]))
        text = f"{name}={','.join(entry[3] for entry in ordered)}"
        keyed.append((name, [entry[1] for entry in group], text))
    keyed.sort()
    return "&".join([entry[2] for entry in keyed])


def _canonical_query(query: str | None, form_body: str | None, rules: _Rules) -> str:
    if rules is _HOST_RULES:
        return _host_query(query) if query else ""
    if rules.omit_query:
        return ""
    params: dict[str, list[str]] = {}
    if query:
        _collect(query, rules, params)
    if rules.include_form_body and form_body:
        _collect(form_body, rules, params)
    if not params:
        return ""
    if rules.reencode:

        def enc(text: str) -> str:
            return _encode(text, rules.encoding)

    else:

        def enc(text: str) -> str:
            return text

    entries = [(enc(name), name, values) for name, values in params.items()]
    if rules.name_order == "encoded":
        entries.sort(key=lambda entry: entry[0])
    elif rules.name_order == "raw":
        entries.sort(key=lambda entry: _java_order(entry[1]))
    parts = []
    for name, _raw, values in entries:
        if len(values) > 1:
            if rules.value_order == "raw":
                values = sorted(values, key=_java_order)
            elif rules.value_order == "encoded":
                values = sorted(values, key=enc)
        parts.append(f"{name}={','.join(enc(v) for v in values)}")
    return "&".join(parts)


def _canonical(
    method: str, url: str, base_url: str | None, form_body: str | None, rules: _Rules
) -> str:
    path, query = split_target(url)
    method = method.upper() if rules.upper_method else method
    return (
        f"{method}&{_canonical_path(path, context_path(base_url), rules)}"
        f"&{_canonical_query(query, form_body, rules)}"
    )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


# --------------------------------------------------------------------------- public


def canonical_request(method: str, url: str, base_url: str | None = None) -> str:
    """The canonical request string for ``method`` and ``url``.

    ``url`` is an absolute URL or a path with an optional query; ``base_url`` supplies the
    context path to remove (``https://site.atlassian.net/wiki`` removes ``/wiki``; a bare
    path such as ``/wiki`` works too).
    """
    return _canonical(method, url, base_url, None, _HOST_RULES)


def query_string_hash(method: str, url: str, base_url: str | None = None) -> str:
    """The ``qsh`` claim for a request: lower-case hex SHA-256 of its canonical request."""
    return _sha256(canonical_request(method, url, base_url))


@dataclass(frozen=True)
class QshDiagnosis:
    """Why a token's ``qsh`` differs from the request's, when a usual mistake explains it."""

    matched_mistake: str | None
    explanation: str
    expected_canonical: str
    expected_qsh: str
    mistaken_canonical: str | None
    token_qsh: str = ""

    @property
    def matches(self) -> bool:
        """True when the token's qsh is the request's (nothing to diagnose)."""
        return self.token_qsh == self.expected_qsh

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Mistake:
    code: str
    explanation: str
    rules: dict[str, Any]


def _mistakes(method: str, url: str, base_url: str | None, form_body: str | None) -> list[_Mistake]:
    """The usual mistakes that apply to this request, most common first."""
    path, query = split_target(url)
    ctx = context_path(base_url)
    names = [p.partition("=")[0] for p in (query or "").split("&") if p]
    out: list[_Mistake] = []

    def add(code: str, explanation: str, **rules: Any) -> None:
        out.append(_Mistake(code, explanation, rules))

    if ctx:
        add(
            "base_path_included",
            f"The issuer hashed the path with the context path {ctx} still in it; "
            "hash the path relative to the base URL.",
            strip_context=False,
            prepend_context=_strip_context(path, ctx) == path,
        )
    elif path.strip("/").count("/") >= 1:
        first = "/" + path.lstrip("/").partition("/")[0]
        add(
            "base_path_stripped",
            f"The issuer hashed the path without its first segment {first}: that segment "
            "is a context path, so give it as the base URL when checking.",
            strip_first_segment=True,
        )
    if len(path) > 1 and path.endswith("/"):
        add(
            "trailing_slash_kept",
            "The issuer kept the trailing slash of the path; exactly one trailing '/' "
            "is removed before hashing.",
            remove_trailing_slash=False,
        )
    if query and "+" in query:
        add(
            "plus_not_decoded",
            "The issuer treated '+' in the query as a literal plus (%2B) instead of a space "
            "(%20); decode '+' as a space before re-encoding.",
            plus_is_space=False,
        )
    if "jwt" in names:
        add(
            "jwt_param_hashed",
            "The issuer included the jwt query parameter in the hash; it must be left out.",
            drop_jwt=False,
        )
    if len(set(names)) > 1:
        add(
            "unsorted_params",
            "The issuer kept the query parameters in the order received; they must be "
            "sorted by encoded name.",
            name_order="received",
        )
        add(
            "unsorted_params",
            "The issuer sorted the query parameters by their decoded (raw) names; they "
            "must be sorted by encoded name.",
            name_order="raw",
        )
    if len(names) > len(set(names)):
        add(
            "unsorted_values",
            "The issuer sorted repeated values by their encoded form; they are sorted by "
            "raw value.",
            value_order="encoded",
        )
        add(
            "unsorted_values",
            "The issuer kept repeated values in the order received; they are sorted by "
            "raw value.",
            value_order="received",
        )
    if form_body:
        add(
            "form_body_params",
            "The issuer hashed the form body's parameters as if they were query "
            "parameters; only the URL's query counts.",
            include_form_body=True,
        )
    if query:
        add(
            "form_encoded_query",
            "The issuer encoded the query as an HTML form (space as '+', '*' kept, '~' "
            "encoded); use RFC 3986 encoding (%20, %2A, ~).",
            encoding="form",
        )
        add(
            "lowercase_percent_encoding",
            "The issuer percent-encoded with lower-case hex digits; use upper case (%2F, "
            "not %2f).",
            encoding="lower",
        )
        add(
            "query_not_normalised",
            "The issuer hashed the query parameters as received instead of decoding and "
            "re-encoding them.",
            reencode=False,
        )
        add(
            "query_omitted",
            "The issuer hashed the path without the query; the query parameters are part "
            "of the hash.",
            omit_query=True,
        )
    if "&" in path:
        add(
            "path_ampersand_not_encoded",
            "The issuer left '&' in the path unencoded; current hosts encode it as %26 "
            "(older canonicalisers did not).",
            encode_path_ampersand=False,
        )
    if method != method.upper():
        add(
            "method_not_uppercased",
            f"The issuer hashed the method as {method!r}; it must be upper-case.",
            upper_method=False,
        )
    return out


def _candidates(
    method: str, url: str, base_url: str | None, form_body: str | None
) -> Iterator[tuple[str, str, str]]:
    """(code, explanation, canonical) for single mistakes, then other methods, then pairs."""
    mistakes = _mistakes(method, url, base_url, form_body)
    for m in mistakes:
        yield m.code, m.explanation, _canonical(
            method, url, base_url, form_body, replace(_HOST_RULES, **m.rules)
        )
    upper = method.upper()
    for other in _METHODS:
        if other != upper:
            yield (
                f"method_{other}",
                f"The token was made for a {other} request, not {upper}.",
                _canonical(other, url, base_url, form_body, _HOST_RULES),
            )
    if len(url) + len(form_body or "") > _PAIRS_UP_TO:
        return  # pairs cost ~100 canonicalisations: bounded for very long requests
    for a, b in itertools.combinations(mistakes, 2):
        if a.code == b.code or set(a.rules) & set(b.rules):
            continue
        yield (
            f"{a.code}+{b.code}",
            f"{a.explanation} Also: {b.explanation}",
            _canonical(method, url, base_url, form_body, replace(_HOST_RULES, **a.rules, **b.rules)),
        )


def diagnose(
    token_qsh: str,
    method: str,
    url: str,
    base_url: str | None = None,
    *,
    form_body: str | None = None,
) -> QshDiagnosis:
    """Explain how the token's ``qsh`` was produced, when a usual mistake reproduces it.

    ``method``, ``url`` and ``base_url`` describe the request as received (as for
    :func:`canonical_request`); ``form_body`` is an ``application/x-www-form-urlencoded``
    body, if any, to test whether the issuer hashed it.
    """
    expected = canonical_request(method, url, base_url)
    expected_qsh = _sha256(expected)

    def result(code: str | None, explanation: str, mistaken: str | None) -> QshDiagnosis:
        return QshDiagnosis(code, explanation, expected, expected_qsh, mistaken, token_qsh)

    if token_qsh == expected_qsh:
        return result(None, "The token's qsh matches the request.", None)
    if token_qsh == CONTEXT_QSH:
        return result(
            "context_qsh",
            "This is a context token (qsh 'context-qsh'): it is accepted only on routes "
            "declared for context tokens, and proves no particular request.",
            None,
        )
    for code, explanation, canonical in _candidates(method, url, base_url, form_body):
        if _sha256(canonical) == token_qsh:
            return result(code, explanation, canonical)
    return result(
        None,
        "No usual mistake reproduces the token's qsh: it was made for another method, path "
        "or query (compare the canonical request with what the issuer signed).",
        None,
    )
