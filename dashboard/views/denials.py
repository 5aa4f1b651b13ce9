"""Denials: 403s by cause (scope or permission) and rejected tokens by reason, with the fix."""

import streamlit as st

from dashboard import queries, ui

st.title("Denials")
flt = ui.filter_bar(("range", "tenant", "platform", "direction"))
with ui.guard():
    sites = queries.tenant_sites()  # a site by its host name, the key beside it
    data = queries.denials(flt)

split = data["split"]
cols = st.columns(4)
cols[0].metric(
    "403: scope missing",
    f"{split['by_reason'].get('scope', 0):,}",
    help="Confluence refused the app's call: the descriptor lacks the scope.",
)
cols[1].metric(
    "403: user lacks permission",
    f"{split['by_reason'].get('permission', 0):,}",
    help="Confluence refused the app's call: the acting user lacks the right.",
)
cols[2].metric(
    "401/403 answered by the app",
    f"{split['answered_total']:,}",
    help="Incoming requests the app refused, or answered 403 after Confluence refused it.",
)
cols[3].metric("Rejected tokens", f"{sum(r['events'] for r in data['rejections']):,}")

st.subheader("403 because the descriptor (or manifest) lacks a scope")
st.caption(queries.FIXES["scope"])
ui.table(
    [
        {
            "site": ui.tenant_name(r["tenant"], sites),
            "scope to add": r["scope"],
            "method": r["method"],
            "endpoint": r["path_template"],
            "events": r["count"],
        }
        for r in split["scope"]
    ],
    key="denied_scope",
)
st.subheader("403 because the acting user lacks the permission")
st.caption(queries.FIXES["permission"])
ui.table(
    [
        {
            "site": ui.tenant_name(r["tenant"], sites),
            "scope required": r["scope"],
            "method": r["method"],
            "endpoint": r["path_template"],
            "events": r["count"],
        }
        for r in split["permission"]
    ],
    key="denied_permission",
)
st.subheader("401 and 403 the app answered")
st.caption(
    "Requests to the app that it refused. A 403 it passed on after Confluence refused "
    "its call is counted above once, as Confluence's refusal; here it shows its cause."
)
ui.table(
    [
        {
            "site": ui.tenant_name(r["tenant"], sites),
            "method": r["method"],
            "endpoint": r["path_template"],
            "cause": queries.ANSWERED_CAUSES.get(r["reason"] or "", r["reason"]),
            "events": r["count"],
        }
        for r in split["answered"]
    ],
    key="denied_answered",
)

st.subheader("Rejected tokens by reason")
step = ui.bucket_name(data["bucket_s"])
ui.bar_chart(
    data["rejection_series"],
    x="time",
    y="events",
    color="reason",
    title=f"Rejected tokens per {step} by reason: a burst of one reason is the fix to make first",
    time_unit="time",
)
ui.table(
    [{"reason": r["reason"], "events": r["events"], "fix": r["fix"]} for r in data["rejections"]],
    key="rejections",
)
