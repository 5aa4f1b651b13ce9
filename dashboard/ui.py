"""Presentation helpers shared by the pages: the sign-in gate, the filter bar, safe tables.

Logged values are attacker-controlled (paths, account ids, tenant URLs, claims), so they
are only ever shown through elements that render text as text: ``st.dataframe``,
``st.text``, ``st.code`` and ``st.json``. They never go into Markdown (which would turn
``![x](http://...)`` into an image request), into a widget label unless escaped by
:func:`md_escape` (the filter chips), or anywhere near ``unsafe_allow_html``.
"""

from __future__ import annotations

import contextlib
import functools
import html
import json
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# Imported here, fully, before any chart is built: altair looks numpy and pandas up in
# sys.modules without taking the import lock, so while one script thread was still
# importing numpy another saw it half-initialised ("numpy has no attribute ndarray").
import altair as alt
import numpy  # noqa: F401
import pandas  # noqa: F401
import streamlit as st

from dashboard import auth, edge, narrate, queries, signin

FILTER_STATE = "connect_audit_filter"

# --------------------------------------------------------------------------- sign-in


def client_address() -> str:
    """The browser's address as Streamlit saw it; "local" for a browser on this machine (Streamlit
    gives none then) or where no real connection exists (Streamlit's AppTest)."""
    address = getattr(st.context, "ip_address", None)
    return address if isinstance(address, str) and address else "local"


def accounts() -> auth.Accounts:
    return auth.shared_accounts()


def accounts_file() -> auth.Accounts:
    """The accounts file without creating the local admin (single sign-on keeps only its
    revoked cookies and session records there)."""
    return auth.Accounts(auth.accounts_path())


def current_user() -> auth.User | None:
    return st.session_state.get(auth.SESSION_KEY)


#: Where a tab keeps its session id when the pages run without the sign-in edge (AppTest).
TAB_SESSION = "connect_audit_session_id"
_ENDED = "connect_audit_ended"  # why the last session ended, for the sign-in screen


def _presented_session() -> str | None:
    """The session id this tab presents: the edge's cookie (sent with the websocket), else the
    one the in-page form left in the tab."""
    if edge.serving():
        return edge.presented_session(getattr(st.context, "cookies", None) or {})
    return st.session_state.get(TAB_SESSION)


def signed_in_user() -> auth.User | None:
    """The signed-in user, or None; renders nothing (unless an OIDC account has no role).

    Checked on every action, not once per tab: a session that ran out, was signed out elsewhere or
    whose account changed ends here at the next click."""
    if auth.oidc_configured(st.secrets):
        return _require_oidc_user() if st.user.is_logged_in else None
    check = signin.check(accounts(), _presented_session(), client_address())
    if check.session is None:
        st.session_state.pop(auth.SESSION_KEY, None)
        if check.was is not None:
            st.session_state[_ENDED] = check.ended
        return None
    user = signin.user_of(check.session)
    st.session_state[auth.SESSION_KEY] = user
    return user


def sign_in_screen() -> NoReturn:
    """Render the way in for a visitor :func:`signed_in_user` found no user for, and stop."""
    if auth.oidc_configured(st.secrets):
        _require_oidc_user()  # renders the provider's button (or the no-role page) and stops
    if edge.serving():
        _sign_in_link()
    else:
        _local_sign_in()
    st.stop()
    raise AssertionError("unreachable")  # st.stop() raises


def _here() -> str:
    """This page's address with its filters: where to come back to after signing in."""
    page = st.session_state.get("connect_audit_page") or ""
    query = "&".join(f"{quote(k)}={quote(v)}" for k, v in st.query_params.to_dict().items())
    return f"/{page}" + (f"?{query}" if query else "")


def _ended_notice() -> str | None:
    ended = st.session_state.pop(_ENDED, None)
    if ended == "signed_out":
        return "You signed out."
    return signin.ended_sentence(ended, accounts().session_store())


def _sign_in_link() -> None:
    """A tab whose session ended: the way back is the sign-in form, then this very page."""
    st.title("Connect Audit")
    st.info(_ended_notice() or "Sign in to see the audit log.")
    # A same-tab link (Markdown links open a new tab); our own text and an escaped address only.
    href = html.escape(edge.sign_in_url(_here()), quote=True)
    st.html(f'<a href="{href}" target="_self" style="display:inline-block;padding:.45rem 1rem;'
            'border-radius:.5rem;background:#ff4b4b;color:#fff;text-decoration:none">Sign in</a>')


def _oidc_cookie() -> str | None:
    cookies = getattr(st.context, "cookies", None)
    value = cookies.get(auth.OIDC_COOKIE) if cookies is not None else None
    return value if isinstance(value, str) else None


def _oidc_sign_in(notice: str | None = None) -> None:
    st.session_state.pop(auth.SESSION_KEY, None)
    st.title("Connect Audit")
    st.write(notice or "Sign in to see the audit log.")
    st.button("Sign in with single sign-on", on_click=st.login, type="primary")
    st.stop()


def _require_oidc_user() -> auth.User:
    cookie = _oidc_cookie()
    if not st.user.is_logged_in or auth.is_revoked(accounts_file(), cookie):
        _oidc_sign_in(_ended_notice())
    identity = st.user.to_dict()
    name = str(identity.get("email") or identity.get("sub") or "unknown")[:64]
    role = auth.oidc_role(identity, st.secrets)
    if role is None:
        if st.session_state.get("connect_audit_refused") != cookie:
            st.session_state["connect_audit_refused"] = cookie
            queries.record_admin_event("sign_in_failed", actor=name, allowed=False, address=client_address(),
                                       detail="Single sign-on identity has no role here")
        st.title("Connect Audit")
        st.error(f"You are signed in as {name}, but that account has no role in Connect Audit. "
                 "Ask an administrator to add you to an admin or auditor group.")
        st.button("Sign out", on_click=sign_out_oidc)
        st.stop()
    user = auth.User(name, role, "oidc")
    if cookie:
        # The same idle timeout, lifetime and end-on-role-change as a local session.
        store = accounts_file().session_store()
        check = store.track(cookie, name, role)
        if check.session is None:
            auth.revoke_cookie(accounts_file(), cookie)
            signin.record_end(check, client_address(), store)
            _oidc_sign_in(signin.ended_sentence(check.ended, store))
        if check.started:
            queries.record_admin_event("sign_in", actor=name, allowed=True, address=client_address(),
                                       detail=f"Signed in ({role}, single sign-on)")
    st.session_state[auth.SESSION_KEY] = user
    return user


def sign_out_oidc() -> None:
    """End a single sign-on session: revoke its identity cookie, then let Streamlit clear it."""
    cookie = _oidc_cookie()
    if cookie:
        auth.revoke_cookie(accounts_file(), cookie)
        accounts_file().session_store().end_cookie(cookie)
    st.logout()


def _local_sign_in() -> None:
    """The in-page form, where the pages run without the sign-in edge (the session then lives in
    this tab only)."""
    st.title("Connect Audit")
    st.caption(_ended_notice() or "Sign in to see the audit log.")
    with st.form("sign_in"):
        name = st.text_input("Account", value="", key="sign_in_name")
        password = st.text_input("Password", type="password", key="sign_in_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    result = signin.attempt(accounts(), name, password, client_address())
    if result.session_id is None:
        st.error(result.error)
        return
    st.session_state[TAB_SESSION] = result.session_id
    st.session_state[auth.SESSION_KEY] = result.user
    st.rerun()


def sign_out() -> None:
    user = current_user()
    if user is not None:
        queries.record_admin_event("sign_out", actor=user.name, allowed=True,
                                   detail=f"Signed out ({user.role}, {user.via})")
    if user is not None and user.via == "local":
        accounts().session_store().end(_presented_session())
    st.session_state.pop(TAB_SESSION, None)
    st.session_state.pop(auth.SESSION_KEY, None)
    st.session_state.pop(FILTER_STATE, None)
    st.session_state[_ENDED] = "signed_out"
    if user is not None and user.via == "oidc":
        sign_out_oidc()


def sidebar(user: auth.User) -> None:
    with st.sidebar:
        st.caption("Signed in as")
        st.text(f"{user.name} ({user.role})")
        st.button("Sign out", on_click=sign_out, key="sign_out")
        time_zone_choice()
        st.caption("Store")
        st.text(queries.store_label())


# --------------------------------------------------------------------------- time zone

#: Where the session keeps the chosen time zone (an IANA name; "UTC" by default).
TZ_STATE = "connect_audit_tz"
TZ_WIDGET = "tz_choice"
#: The query parameter that carries a zone other than UTC, so that a shared link keeps it.
TZ_PARAM = "tz"


@functools.lru_cache(maxsize=64)
def _zone_info(name: str) -> tzinfo | None:
    """The zone of an IANA name, or None for a name that is not one (the name comes from the
    browser or the URL, so it is checked against the zone database, not trusted)."""
    if name == "UTC":
        return UTC
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def browser_zone() -> str | None:
    """The browser's time zone as Streamlit reports it (``st.context.timezone``), if it is a
    known zone; None where there is no browser (AppTest without a context)."""
    try:
        name = st.context.timezone
    except Exception:  # noqa: BLE001 - no script run (a script outside Streamlit)
        return None
    return name if isinstance(name, str) and _zone_info(name) is not None else None


def zone_name() -> str:
    """The chosen zone's name: "UTC" (the default) or an IANA name such as "Europe/Paris"."""
    try:
        name = st.session_state.get(TZ_STATE, "UTC")
    except Exception:  # noqa: BLE001 - no script run
        return "UTC"
    return name if isinstance(name, str) and _zone_info(name) is not None else "UTC"


def zone() -> tzinfo:
    return _zone_info(zone_name()) or UTC


def to_zone(value: datetime) -> datetime:
    """``value`` in the chosen zone (a naive value is taken as UTC, as the store keeps it)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(zone())


def time_header(name: str) -> str:
    """A time column's header, labelled with the zone its times are shown in: "time (UTC)"."""
    return f"{name} ({zone_name()})"


def time_zone_choice() -> None:
    """The sidebar's choice of the zone every shown time is in: UTC, or the browser's zone. It
    is kept in the session and, when it is not UTC, in the URL (``?tz=Europe/Paris``), so a
    shared link shows the same times; a zone named by the URL wins, as filters do."""
    url = st.query_params.get(TZ_PARAM)
    if url and _zone_info(url) is not None and url != st.session_state.get(TZ_STATE):
        st.session_state[TZ_STATE] = url
        st.session_state.pop(TZ_WIDGET, None)
    current = zone_name()
    browser = browser_zone()
    options = list(dict.fromkeys(["UTC", *([browser] if browser else []), current]))
    if st.session_state.get(TZ_WIDGET) not in options:
        st.session_state[TZ_WIDGET] = current
    # Option labels are Markdown to Streamlit: a zone's name is escaped (it came from a browser
    # or a URL, though the zone database vouched for it).
    labels = {name: md_escape(name) + (" (your browser)" if name == browser and name != "UTC" else "")
              for name in options}
    choice = st.radio(
        "Times shown in", options, key=TZ_WIDGET, format_func=labels.__getitem__,
        help="Every time on the pages is shown in this zone. Exports stay in UTC.",
    )
    st.session_state[TZ_STATE] = choice
    if choice == "UTC":
        if TZ_PARAM in st.query_params:
            del st.query_params[TZ_PARAM]
    elif st.query_params.get(TZ_PARAM) != choice:
        st.query_params[TZ_PARAM] = choice
    if browser is None:
        st.caption("Your browser did not say its time zone.")


_MD_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def md_escape(text: str, longest: int | None = None) -> str:
    """``text`` for a widget label or option, which Streamlit renders as Markdown: every ASCII
    punctuation character backslash-escaped (CommonMark), so a value cannot become a link, an
    image, emphasis, a directive or math; control characters become spaces; clipped at
    ``longest`` characters (default: a table cell's)."""
    clean = narrate.clean(text) if longest is None else narrate.clean(text, longest)
    return _MD_PUNCTUATION.sub(r"\\\1", clean)


# --------------------------------------------------------------------------- errors


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Turn a store or filter problem into one sentence on the page instead of a traceback."""
    try:
        yield
    except queries.QueryTimeout as exc:
        st.warning(str(exc))
        st.stop()
    except queries.ConnectAuditError as exc:
        st.error(str(exc))
        st.stop()


# --------------------------------------------------------------------------- filter bar

ALL_FIELDS = (
    "range", "tenant", "platform", "direction", "identity_kind", "outcome", "status", "reason",
    "method", "scope", "account_id", "path_contains", "text",
)
_EVENT_FIELDS = tuple(f for f in ALL_FIELDS if f != "range")
_URL_KEYS = (*ALL_FIELDS, "since", "until")
_LABELS = {
    "tenant": "Tenant",
    "platform": "Platform",
    "direction": "Direction",
    "identity_kind": "Acting as",
    "outcome": "Outcome",
    "status": "Status (403 or 4xx)",
    "reason": "Reason",
    "method": "Method",
    "scope": "Required scope",
    "account_id": "Account id",
    "path_contains": "Path contains",
    "text": "Search",
}
_SELECTS = {"tenant", "platform", "direction", "identity_kind", "outcome", "reason", "method", "scope"}


def _state() -> dict[str, str]:
    return st.session_state.setdefault(FILTER_STATE, {"range": "24h"})


def _adopt_url(fields: Sequence[str]) -> None:
    """A shared link wins: filter values in the URL replace the session's for these fields."""
    url = {k: v for k, v in st.query_params.to_dict().items() if k in _URL_KEYS}
    if not url:
        return
    state = _state()
    wanted = {k: v for k, v in url.items() if k in fields or k in {"since", "until"}}
    current = {k: state.get(k) for k in wanted}
    if wanted == current:
        return
    for k in (*fields, "since", "until"):
        state.pop(k, None)
    state.update(wanted)
    if "since" in wanted and "range" not in wanted:
        state["range"] = "custom"
    for k in fields:
        st.session_state.pop(f"f_{k}", None)
    st.session_state.pop("f_dates", None)


DEFAULT_RANGE = "24h"
CHIPS = "filter_chips"


def filter_bar(fields: Sequence[str] = ALL_FIELDS, *, expanded: bool = False) -> queries.EventFilter:
    """Render the filter widgets for ``fields``; keep them in the session and the URL.

    With nothing set (the last 24 hours, no other field) the form is shown open. Once a filter is
    set it folds into one line of chips, one per active filter ("Outcome: denied ×"), each
    removed by a click, and an "Edit filters" expander (open with ``expanded``) holds the form."""
    _adopt_url(fields)
    state = _state()
    page = st.session_state.get("connect_audit_page")
    if st.session_state.get("connect_audit_filter_page") != page:
        # Widget state belongs to the page that rendered it: after a page switch, seed
        # this page's widgets from the session's filter instead of the old page's widgets.
        st.session_state["connect_audit_filter_page"] = page
        for name in (*ALL_FIELDS, "dates"):
            st.session_state.pop(f"f_{name}", None)
    options = _options()
    values: dict[str, str] = {}
    active = _active(fields, state)
    if active:
        _chips(active, options)
    frame = st.expander("Edit filters", expanded=expanded) if active else st.container(border=True)
    with frame:
        if "range" in fields:
            values.update(_range_widget(state))
        others = [f for f in fields if f != "range"]
        cols = st.columns(4)
        for i, name in enumerate(others):
            with cols[i % 4]:
                value = _field_widget(name, state, options)
                if value:
                    values[name] = value
    # Fields this page does not show keep their values for the pages that do.
    for name in (*fields, "since", "until") if "range" in fields else fields:
        state.pop(name, None)
    state.update(values)
    _write_url(values)
    with guard():
        return _to_filter(values)


def _active(fields: Sequence[str], state: dict[str, str]) -> dict[str, str]:
    """The filters set for this run, field -> value: what the widgets hold (a change the user
    just made included), else the session's filter. The default range is not a filter."""
    def current(name: str) -> Any:
        key = f"f_{name}"
        return st.session_state[key] if key in st.session_state else state.get(name, "")

    active: dict[str, str] = {}
    for name in fields:
        value = current(name)
        if name == "range":
            if value and value != DEFAULT_RANGE:
                active[name] = str(value)
        elif isinstance(value, str) and value.strip():
            active[name] = value.strip()
    return active


def _chip_label(name: str, value: str, options: dict[str, Any]) -> str:
    if name == "range":
        if value == "custom":
            picked = st.session_state.get("f_dates")
            if isinstance(picked, tuple | list) and picked:
                days = [d.isoformat() for d in picked if isinstance(d, date)]
            else:
                days = [d for d in (_state().get("since"), _state().get("until")) if d]
            shown = " to ".join(d[:10] for d in days) + " (UTC)" if days else "custom dates"
        else:
            shown = queries.PRESETS.get(value, (value,))[0]
        return f"Range: {shown}"
    if name == "tenant":
        label = "Site"
        shown = site(options.get("tenant_sites", {}).get(value)) or value
    else:
        label = _LABELS[name].split(" (")[0]
        shown = value
    return f"{label}: {narrate.clean(shown, 48)}"


def _chips(active: dict[str, str], options: dict[str, Any]) -> None:
    """One line of removable chips, one per active filter (all selected; a click unselects one,
    which removes that filter). Labels are Markdown to Streamlit, so every value is escaped."""
    labels = {name: _chip_label(name, value, options) for name, value in active.items()}
    st.session_state[CHIPS] = list(active)
    st.pills(
        "Active filters", list(active), selection_mode="multi", key=CHIPS,
        format_func=lambda name: md_escape(labels[name]) + " \u00d7",
        on_change=_drop_unselected, args=(tuple(active),), label_visibility="collapsed",
        help="Click a filter to remove it; the form is under Edit filters.",
    )


def _drop_unselected(shown: tuple[str, ...]) -> None:
    """Remove the filters whose chips were unselected: from the session, the widgets and the URL."""
    kept = set(st.session_state.get(CHIPS) or ())
    state = _state()
    for name in shown:
        if name in kept:
            continue
        if name == "range":
            state["range"] = DEFAULT_RANGE
            st.session_state["f_range"] = DEFAULT_RANGE
            st.session_state.pop("f_dates", None)
            for bound in ("since", "until"):
                state.pop(bound, None)
                if bound in st.query_params:
                    del st.query_params[bound]
        else:
            state.pop(name, None)
            st.session_state[f"f_{name}"] = ""
        if name in st.query_params:
            del st.query_params[name]


@st.cache_data(ttl=30, show_spinner=False)
def _cached_options(url: str) -> dict[str, list[Any]]:
    options = queries.filter_options()
    options["tenant_sites"] = queries.tenant_sites()
    options["tenant_labels"] = tenant_labels(queries.installs())
    return options


def _options() -> dict[str, list[Any]]:
    try:
        return _cached_options(queries.store_label())
    except queries.ConnectAuditError:
        return {}


def _range_widget(state: dict[str, str]) -> dict[str, str]:
    keys = list(queries.PRESETS)
    default = state.get("range", "24h")
    st.session_state.setdefault("f_range", default if default in keys else "24h")
    choice = st.selectbox(
        "Time range", keys, key="f_range", format_func=lambda k: queries.PRESETS[k][0]
    )
    out = {"range": choice}
    if choice == "custom":
        today = datetime.now(UTC).date()
        start = _as_date(state.get("since")) or today - timedelta(days=7)
        end = _as_date(state.get("until"), end=True) or today
        st.session_state.setdefault("f_dates", (start, end))
        picked = st.date_input("From / to (UTC, inclusive)", key="f_dates")
        if isinstance(picked, tuple | list) and tuple(picked) == (start, end) and state.get("since"):
            # A link to an exact window (a highlight's hour) keeps its times until the dates change.
            out["since"] = state["since"]
            if state.get("until"):
                out["until"] = state["until"]
        elif isinstance(picked, tuple | list) and len(picked) == 2:
            out["since"] = picked[0].isoformat()
            out["until"] = picked[1].isoformat()
        elif isinstance(picked, tuple | list) and len(picked) == 1:
            out["since"] = picked[0].isoformat()
    return out


def _as_date(value: str | None, *, end: bool = False) -> date | None:
    if not value:
        return None
    try:
        parsed = queries.q.parse_time(value, end_of_day=False)
    except queries.FilterError:
        return None
    day = parsed.date()
    if end and len(value) > 10 and parsed.time() == datetime.min.time():
        day -= timedelta(days=1)
    return day


def _field_widget(name: str, state: dict[str, str], options: dict[str, list[Any]]) -> str:
    key = f"f_{name}"
    current = state.get(name, "")
    if name in _SELECTS:
        source = {
            "tenant": "tenant_client_key",
            "scope": "required_scope",
        }.get(name, name)
        choices = [""] + [str(v) for v in options.get(source, [])]
        if current and current not in choices:
            choices.append(current)
        labels = options.get("tenant_labels", {}) if name == "tenant" else {}
        st.session_state.setdefault(key, current)
        return st.selectbox(
            _LABELS[name], choices, key=key,
            format_func=lambda v: "(any)" if v == "" else labels.get(v, v),
        ) or ""
    st.session_state.setdefault(key, current)
    return st.text_input(_LABELS[name], key=key).strip()


def filter_params(fields: Sequence[str]) -> dict[str, str]:
    """The current filter's values for ``fields``, as a link's query parameters (so that a link
    from one page opens the next with the same range, tenant or platform)."""
    state = _state()
    return {k: state[k] for k in fields if state.get(k)}


def _write_url(values: dict[str, str]) -> None:
    keep = {k: v for k, v in st.query_params.to_dict().items() if k not in _URL_KEYS}
    wanted = {**keep, **values}
    if wanted != st.query_params.to_dict():
        st.query_params.from_dict(wanted)


def _to_filter(values: dict[str, str]) -> queries.EventFilter:
    params = dict(values)
    preset = params.pop("range", "24h")
    if preset in queries.PRESETS and preset != "custom":
        params.pop("since", None)
        params.pop("until", None)
        delta = queries.PRESETS[preset][1]
        if delta is not None:
            params["since"] = (datetime.now(UTC) - delta).isoformat()
    return queries.filter_from_params(params)


# --------------------------------------------------------------------------- display


#: How an empty value reads on every page (never "None", "nan" or an empty cell that looks broken).
BLANK = "\u2014"


def blank(value: Any) -> Any:
    """``value``, or :data:`BLANK` when it is empty (None, "", NaN)."""
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return BLANK
    return value


#: Pads a number shown as text: as wide as a digit, and sorted before digits (a table sorts text
#: by collation, in which spaces come first), so padded numbers sort and align as numbers.
FIGURE_SPACE = "\u2007"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and blank(value) is not BLANK


def blanks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for a table with every empty cell shown as :data:`BLANK`. A column that has one is
    shown as text throughout, so that it keeps one type. In a column of numbers each is padded to
    the widest integer part with figure spaces (the blank to one digit), so that a click on its
    header still sorts it by value, blanks first, and the numbers line up at their decimal point."""
    columns = {k for row in rows for k, v in row.items() if blank(v) is BLANK}
    if not columns:
        return rows
    numeric = {k for k in columns
               if all(_is_number(row.get(k)) or blank(row.get(k)) is BLANK for row in rows)
               and any(_is_number(row.get(k)) for row in rows)}
    widths = {k: max(len(_number_text(row[k]).split(".")[0]) for row in rows if _is_number(row.get(k)))
              for k in numeric}

    def shown(k: str, v: Any) -> Any:
        if k not in columns:
            return v
        if k not in widths:
            return _as_text(v)
        text = _number_text(v) if _is_number(v) else BLANK
        head = text.split(".")[0] if text is not BLANK else "0"
        return FIGURE_SPACE * (widths[k] - len(head)) + text

    return [{k: shown(k, v) for k, v in row.items()} for row in rows]


def _number_text(value: int | float) -> str:
    text = str(value)
    return f"{value:f}".rstrip("0").rstrip(".") if "e" in text else text


def _as_text(value: Any) -> str:
    if blank(value) is BLANK:
        return BLANK
    if isinstance(value, datetime):  # as the table shows a time column: to the second, in the zone
        return f"{to_zone(value):%Y-%m-%d %H:%M:%S}"  # the header names the zone
    return str(value)


def bucket_name(seconds: int) -> str:
    """A chart's bucket as its title says it ("Events per hour")."""
    return {3600: "hour", 21600: "6 hours", 86400: "day"}.get(seconds, "bucket")


def fmt_time(value: datetime | None) -> str:
    """A time in the chosen zone, to the second, with the zone's name: "2026-01-31 13:00:00 UTC"."""
    return f"{to_zone(value):%Y-%m-%d %H:%M:%S} {zone_name()}" if value else BLANK


def fmt_epoch(seconds: float | None) -> str:
    """Seconds since the epoch (a token's iat or exp) as :func:`fmt_time` shows a time."""
    try:
        return fmt_time(datetime.fromtimestamp(float(seconds), UTC)) if seconds is not None else BLANK
    except (OverflowError, OSError, ValueError):
        return "out of range"


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return BLANK
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def site(base_url: str | None) -> str:
    """A site as a person names it, from its base URL: ``acme.atlassian.net`` (the product's
    ``/wiki`` dropped). A port or a deeper path stays, so that sites served from one host (a
    simulator, a proxy) are still told apart: ``127.0.0.1:8080/t/acme``."""
    if not base_url:
        return ""
    parts = urlsplit(base_url)
    if not parts.hostname:
        return base_url
    return parts.netloc.rpartition("@")[2] + parts.path.rstrip("/").removesuffix("/wiki")


def short_key(key: str | None) -> str:
    """A long key (a clientKey, an account id) cut to its start, for tables: the whole key is in
    the row detail and the export."""
    if not key:
        return ""
    return key if len(key) <= 12 else f"{key[:8]}…"


def tenant_name(key: str | None, sites: Mapping[str, str]) -> str:
    """A tenant as a table shows it: its site's name, else (not installed here) its key's start."""
    return site(sites.get(key or "")) or short_key(key)


def person(tenant: str | None, account: str | None, people: Mapping[tuple[str, str], str]) -> str:
    """An acting user as a table shows them: the name the product gives them, else their id's start."""
    if not account:
        return ""
    return people.get((tenant or "", account)) or short_key(account)


def tenant_labels(installs: list[dict[str, Any]]) -> dict[str, str]:
    """clientKey (or Forge installation) -> how a select shows it: the site and its product
    (``acme.atlassian.net · Confluence``); the key's start is added only where two tenants share
    a site (two installs of one site, two demos in one store)."""
    named = {i["client_key"]: f"{site(i['base_url']) or i['client_key']} · {str(i['product'] or '').title()}"
             for i in installs}
    counts = Counter(named.values())
    return {key: label if counts[label] == 1 else f"{label} ({key[:8]}…)" for key, label in named.items()}


#: How a time column shows its times (moment.js tokens): to the second, as everywhere else.
TIME_FORMAT = "YYYY-MM-DD HH:mm:ss"


def table(rows: list[dict[str, Any]], *, key: str | None = None, select: bool = False,
          height: int | str = "auto", column_config: dict | None = None):
    """A read-only, sortable table of logged values, shown as text (never Markdown or HTML).

    A column of times is shown in the chosen zone and says which in its header ("time (UTC)");
    it stays a column of datetimes, so a click on its header sorts it in time order (a column
    with a blank in it is text, to the second, which sorts the same way). Numbers stay numbers."""
    if not rows:
        st.caption("Nothing to show.")
        return None
    times = {k for row in rows for k, v in row.items() if isinstance(v, datetime)}
    rows = blanks(rows)
    config = dict(column_config or {})
    if times:
        headers = {k: time_header(k) for k in times}
        rows = [{headers.get(k, k): (to_zone(v) if isinstance(v, datetime) else v) for k, v in row.items()}
                for row in rows]
        for name, header in headers.items():
            if name in config:
                config[header] = config.pop(name)
            elif any(isinstance(row.get(header), datetime) for row in rows):
                config[header] = st.column_config.DatetimeColumn(header, format=TIME_FORMAT,
                                                                 timezone=zone_name())
    kwargs: dict[str, Any] = {"hide_index": True, "width": "stretch", "height": height}
    if config:
        kwargs["column_config"] = config
    if select:
        return st.dataframe(rows, key=key, on_select="rerun", selection_mode="single-row",
                            **kwargs)
    return st.dataframe(rows, key=key, **kwargs)


def event_sentence(detail: Mapping[str, Any], sites: Mapping[str, str] | None = None,
                   names: narrate.Names | None = None) -> str:
    """The event as a sentence (:func:`dashboard.narrate.sentence`), its tenant named by its
    site: the install's current base URL, else the one the event recorded."""
    key = detail.get("tenant_client_key") or ""
    base = (sites or {}).get(key) or detail.get("tenant_base_url")
    return narrate.sentence(detail, site(base) or (narrate.clean(key, 60) if key else None), names)


def shown_fields(detail: Mapping[str, Any]) -> dict[str, Any]:
    """An event's stored fields for the raw view: times in the chosen zone (ISO 8601, with the
    offset), empty values as :data:`BLANK`."""
    return {k: blank(to_zone(v).isoformat() if isinstance(v, datetime) else v) for k, v in detail.items()}


def selected_row(event: Any) -> int | None:
    try:
        picked = event.selection.rows
    except AttributeError:
        return None
    return picked[0] if picked else None


def picked_id(event: Any, rows: Sequence[Mapping[str, Any]], param: str) -> str | None:
    """The event id of the table row selected, else the one the URL's ``param`` names."""
    picked = selected_row(event)
    chosen = rows[picked]["event_id"] if picked is not None and picked < len(rows) else None
    return chosen or st.query_params.get(param)


# Keyset pagination: a stack of cursors kept in the session, the newest page's cursor in the
# URL; a changed filter starts again at the newest page (or the URL's cursor, on a link).


def page_cursors(prefix: str, param: str) -> list[str]:
    """This page's stack of cursors (session keys ``{prefix}_signature``/``{prefix}_cursors``)."""
    signature = json.dumps(st.session_state.get(FILTER_STATE, {}), sort_keys=True)
    if st.session_state.get(f"{prefix}_signature") != signature:
        st.session_state[f"{prefix}_signature"] = signature
        start = st.query_params.get(param)
        st.session_state[f"{prefix}_cursors"] = [start] if start else []
    return st.session_state[f"{prefix}_cursors"]


def keep_cursor(cursors: list[str], param: str) -> None:
    """Put the page's cursor in the URL, so that a link opens this page."""
    if cursors:
        st.query_params[param] = cursors[-1]
    elif param in st.query_params:
        del st.query_params[param]


def pager(cursors: list[str], next_cursor: Any, *, newer: str, older: str) -> None:
    """The Newer and Older buttons under a keyset page."""
    left, right, _ = st.columns([1, 1, 6])
    if left.button("Newer", disabled=not cursors, key=newer):
        cursors.pop()
        st.rerun()
    if right.button("Older", disabled=next_cursor is None, key=older):
        cursors.append(next_cursor.encode())
        st.rerun()


def bar_chart(rows: list[dict[str, Any]], *, x: str, y: str, color: str, title: str,
              time_unit: str | None = None, palette: dict[str, str] | None = None) -> None:
    """A stacked bar chart over already aggregated rows (vega-lite via Altair)."""

    if not rows:
        st.caption("No events in this range.")
        return

    def _point(r: dict[str, Any]) -> dict[str, Any]:
        value = r[x]
        if not isinstance(value, datetime):
            return dict(r)
        # The chosen zone's wall-clock time, drawn on a UTC scale: the axis then reads in that
        # zone whatever the browser's own zone is. The tooltip names the zone.
        local = to_zone(value)
        return {**r, x: local.replace(tzinfo=None).isoformat() + "Z",
                "_when": f"{local:%Y-%m-%d %H:%M} {zone_name()}"}

    points = [_point(r) for r in rows]
    data = alt.Data(values=points)
    timed = bool(time_unit) and "_when" in points[0]
    x_enc = (alt.X(f"{x}:T", title=time_header(x), scale=alt.Scale(type="utc")) if timed
             else alt.X(f"{x}:N", title=None))
    chart = (
        alt.Chart(data, title=title)
        .mark_bar()
        .encode(
            x=x_enc,
            y=alt.Y(f"{y}:Q", title="events", stack=True),
            color=alt.Color(
                f"{color}:N", title=color.replace("_", " "),
                scale=alt.Scale(domain=list(palette), range=list(palette.values()))
                if palette else alt.Undefined,
            ),
            tooltip=[alt.Tooltip("_when:N", title=x) if timed else alt.Tooltip(f"{x}:N", title=x),
                     alt.Tooltip(f"{color}:N"), alt.Tooltip(f"{y}:Q")],
        )
        .properties(height=260)
    )
    st.altair_chart(chart, width="stretch")


#: Outcome colours: refusals stand out against the allowed bulk.
OUTCOME_COLORS = {"allowed": "#7fb069", "denied": "#f0a202", "rejected": "#d1495b",
                  "error": "#6c4f9c", "unknown": "#9e9e9e"}
