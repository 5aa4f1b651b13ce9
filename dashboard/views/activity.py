"""Activity: the audit log itself, filtered in SQL, newest first, a keyset page at a time."""

import json

import streamlit as st

from dashboard import queries, ui

PAGE_SIZE = 50

st.title("Activity")
flt = ui.filter_bar()

# Keyset pagination: a stack of cursors; a changed filter starts again at the newest page.
signature = json.dumps(st.session_state.get(ui.FILTER_STATE, {}), sort_keys=True)
if st.session_state.get("act_signature") != signature:
    st.session_state["act_signature"] = signature
    start = st.query_params.get("after")
    st.session_state["act_cursors"] = [start] if start else []
cursors: list[str] = st.session_state["act_cursors"]
after = None
with ui.guard():
    if cursors:
        after = queries.Cursor.decode(cursors[-1])
    page = queries.activity_page(flt, after=after, limit=PAGE_SIZE)

if cursors:
    st.query_params["after"] = cursors[-1]
elif "after" in st.query_params:
    del st.query_params["after"]

# Facets group the whole range by seven dimensions: opt-in, since over months of a busy
# log they cost more than the page itself.
show_facets = st.toggle("Show facets (counts per value under the filter)", key="act_facets")
with ui.guard():
    facets = queries.facets(flt) if show_facets else None
    total = (f'{sum(n for _, n in facets["outcome"]):,}' if facets is not None
             else queries.count_label(flt))
st.caption(f"{total} matching events; page {len(cursors) + 1}, newest first.")

with ui.guard():
    sites, people = queries.tenant_sites(), queries.people()  # names for keys

if facets is not None:
    names = {"outcome": "Outcome", "direction": "Direction", "identity_kind": "Acting as",
             "tenant_client_key": "Tenant", "reason": "Reason", "status": "Status",
             "method": "Method"}
    cols = st.columns(4)
    for i, (dim, label) in enumerate(names.items()):
        with cols[i % 4]:
            st.caption(label)
            shown = (lambda v: ui.tenant_name(v, sites)) if dim == "tenant_client_key" else str
            ui.table([{"value": ui.BLANK if v is None else shown(v), "events": n}
                      for v, n in facets.get(dim, [])], key=f"facet_{dim}")

rows = page.rows
# What was done and how it ended first; the long identifiers (clientKey, accountId) last
# and narrow, so that path and status stay on screen.
event = ui.table(
    [
        {
            "time": r["ts"],
            "outcome": r["outcome"],
            "status": r["status"],
            "method": r["method"],
            "path": r["path"],
            "acting as": r["identity_kind"],
            "reason": r["reason"],
            "site": ui.site(r["tenant_base_url"]) or ui.short_key(r["tenant_client_key"]),
            "scope": r["required_scope"],
            "platform": r["platform"],
            "auth": r["auth_method"],
            "direction": r["direction"],
            "latency ms": r["latency_ms"],
            "person": ui.person(r["tenant_client_key"], r["account_id"], people),
        }
        for r in rows
    ],
    key="activity_table",
    select=True,
    height=420 if len(rows) > 10 else "auto",
    column_config={"person": st.column_config.TextColumn(
        "person", help="The name the product gives the acting user; the account id is in the detail")},
)

left, right, _ = st.columns([1, 1, 6])
if left.button("Newer", disabled=not cursors, key="newer"):
    cursors.pop()
    st.rerun()
if right.button("Older", disabled=page.next_cursor is None, key="older"):
    cursors.append(page.next_cursor.encode())
    st.rerun()

picked = ui.selected_row(event)
event_id = rows[picked]["event_id"] if picked is not None and picked < len(rows) else None
event_id = event_id or st.query_params.get("event")
if event_id:
    with ui.guard():
        detail = queries.event_detail(event_id)
    if detail is None:
        st.info("That event is not in the store (purged, or a link from another store).")
    else:
        st.query_params["event"] = event_id
        st.subheader("Event detail")
        if st.button("Close detail", key="close_detail"):
            del st.query_params["event"]
            st.rerun()
        # The event as a person reads it, then the fields it was built from. Logged values are
        # in the sentence, so it is plain text (st.text), never Markdown.
        key = detail.get("tenant_client_key") or ""
        st.text(ui.event_sentence(detail, sites, lambda account: people.get((key, account))))
        fix = queries.FIXES.get(detail.get("reason") or "")
        if fix and detail.get("outcome") in ("denied", "rejected"):
            st.caption("What to do")
            st.text(fix)
        st.caption("Claims summary (the token itself is never stored)")
        ui.table(queries.claims_summary(detail.get("claims"), zone=ui.zone()), key="claims")
        st.caption(f"Every stored field (times in {ui.zone_name()})")
        st.json(ui.shown_fields(detail), expanded=True)
