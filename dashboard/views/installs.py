"""Installs: every tenant (Connect, Forge, or both once a site moved), its scopes and status,
and its lifecycle timeline."""

import streamlit as st

from dashboard import queries, ui

st.title("Installs")
with ui.guard():
    installs = queries.installs()

if not installs:
    st.info("No tenant has installed the app yet.")
    st.stop()

st.caption(f"{len(installs)} tenants. Select one to see its lifecycle and activity.")
event = ui.table(
    [
        {
            "site": ui.site(i["base_url"]) or ui.short_key(i["client_key"]),
            "platform": i["platform"],
            "on Forge since": i["forge_since"],
            "status": i["status"],
            "tenant": ui.short_key(i["client_key"]),
            "Forge installation": ui.short_key(i["forge_installation"]),
            "product": str(i["product"] or "").title(),
            "declared scopes": i["declared_scopes"],
            "first seen": i["first_seen"],
            "last seen": i["last_seen"],
        }
        for i in installs
    ],
    key="installs_table",
    select=True,
    # The site, its platform and the date of the move first; the keys' starts narrow, after them
    # (the whole keys are in the tenant's detail below).
    column_config={name: st.column_config.TextColumn(name, width="small", help="Select: whole key")
                   for name in ("tenant", "Forge installation")},
)
picked = ui.selected_row(event)
if picked is None:
    st.stop()

chosen = installs[picked]
st.subheader("Tenant")
st.text(f"{ui.site(chosen['base_url'])} ({str(chosen['product'] or '').title()})\n"
        f"base URL {chosen['base_url']}\nclientKey {chosen['client_key']}")
if chosen["description"]:
    st.text(chosen["description"])
if chosen["forge_installation"] and chosen["platform"] != "forge":
    st.text(f"Forge installation {chosen['forge_installation']} ({chosen['forge_status']}), "
            f"linked {ui.fmt_time(chosen['forge_since'])}: its Forge events are filed under this tenant.")
st.page_link("views/activity.py", label="Open its activity", icon=":material/list:",
             query_params={"tenant": chosen["client_key"], "range": "30d"})
st.subheader("Lifecycle timeline")
with ui.guard():
    timeline = queries.lifecycle_timeline(chosen["client_key"])
ui.table(
    [
        {"time": r["ts"], "event": r["event_type"], "outcome": r["outcome"],
         "reason": r["reason"], "status": r["status"], "detail": r["detail"]}
        for r in timeline
    ],
    key="timeline",
)
