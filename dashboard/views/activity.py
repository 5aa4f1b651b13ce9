"""Activity: the audit log itself, filtered in SQL, newest first, a keyset page at a time."""

import streamlit as st

from dashboard import queries, ui

PAGE_SIZE = 50

st.title("Activity")
flt = ui.filter_bar()

cursors = ui.page_cursors("act", "after")
after = None
with ui.guard():
    if cursors:
        after = queries.Cursor.decode(cursors[-1])
    page = queries.activity_page(flt, after=after, limit=PAGE_SIZE)
ui.keep_cursor(cursors, "after")

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

ui.pager(cursors, page.next_cursor, newer="newer", older="older")

event_id = ui.picked_id(event, rows, "event")
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
