"""Atlassian record: Atlassian's own audit logs, imported beside the app's (``connect-audit
import``): the sources, the imported records with each one's verbatim source record, and the
reconciliation of the two per site, each unmatched call a click away from the app's own events.

Every value of an imported record is Atlassian's or a site's (names, summaries, paths): shown as
text only, in tables, ``st.text``, ``st.code`` and ``st.json``; link labels are escaped."""


import streamlit as st

from dashboard import queries, ui

PAGE_SIZE = 50

st.title("Atlassian record")
st.caption("What Atlassian's own audit logs say the app did, imported beside the app's record: "
           "a call Atlassian logged with the app's identity that the app never recorded is worth a look.")
# The filter's range and tenant hold for the imported records and the reconciliation alike.
flt = ui.filter_bar(queries.IMPORTED_FIELDS)

# --------------------------------------------------------------------------- sources

st.subheader("Sources")
with ui.guard():
    sources = queries.import_sources()
if not sources:
    st.info("No import source yet. Add one (a site's Confluence audit log, or your organization's "
            "audit log events), then read it. The credential is read from "
            "`CONNECT_AUDIT_IMPORT_CREDENTIAL` (or standard input) and stored encrypted, never shown.")
    st.code(
        "CONNECT_AUDIT_IMPORT_CREDENTIAL=<organization API key> connect-audit import add org \\\n"
        "    --kind org_events --target <organization id>\n"
        "CONNECT_AUDIT_IMPORT_CREDENTIAL=<API token> connect-audit import add acme-audit \\\n"
        "    --kind confluence_audit --target https://acme.atlassian.net --username admin@example.com\n"
        "connect-audit import run            # once; --every 300 keeps reading",
        language="bash",
    )
    st.caption("See docs/atlassian-record.md for the credentials each source needs and what it holds.")
else:
    for s in sources:
        if s["failing_since"]:
            # The error can quote Atlassian's answer: escaped, never Markdown.
            st.error(f"The source {ui.md_escape(s['name'], 64)} has failed since "
                     f"{ui.md_escape(ui.fmt_time(s['failing_since']))}: "
                     f"{ui.md_escape(s['last_error'] or '', 400)}")
    ui.table(
        [
            {
                "name": s["name"],
                "kind": s["kind"],
                "target": s["target"],
                "imported": s["imported"],
                "complete to": s["complete_to"],
                "reading now": "yes" if s["reading_now"] else "no",
                "failing since": s["failing_since"],
                "last error": s["last_error"],
                "sites": s["sites"],
                "updated": s["updated"],
            }
            for s in sources
        ],
        key="import_sources",
    )
    st.caption("Each source's record is read completely up to its \"complete to\" time; the next run "
               "(connect-audit import run) reads on from there.")

# --------------------------------------------------------------------------- imported records

st.subheader("Imported records")

cursors = ui.page_cursors("imp", "imp_after")  # keyset pages, as on Activity
after = None
with ui.guard():
    if cursors:
        after = queries.Cursor.decode(cursors[-1])
    page = queries.imported_page(flt, after=after, limit=PAGE_SIZE)
    total = queries.imported_count_label(flt)
ui.keep_cursor(cursors, "imp_after")
st.caption(f"{total} imported records; page {len(cursors) + 1}, newest first. Select one for the "
           "record as its source sent it.")

rows = page.rows
record_table = ui.table(
    [
        {
            "time": r["ts"],
            "site": ui.site(r["tenant_base_url"]) or ui.short_key(r["tenant_client_key"]),
            "action": r["action"],
            "actor": r["actor"] or ui.short_key(r["account_id"]),
            "acting as": r["identity_kind"],
            "method": r["method"],
            "path": r["path"],
            "status": r["status"],
            "message": r["detail"],
            "source": r["source"],
        }
        for r in rows
    ],
    key="imported_table",
    select=True,
    height=420 if len(rows) > 10 else "auto",
)
ui.pager(cursors, page.next_cursor, newer="imp_newer", older="imp_older")

record_id = ui.picked_id(record_table, rows, "record")
if record_id:
    with ui.guard():
        found = queries.imported_record(record_id)
    if found is None:
        st.info("That record is not in the store (purged, or a link from another store).")
    else:
        st.query_params["record"] = record_id
        event = found["event"]
        st.subheader("Source record")
        if st.button("Close record", key="close_record"):
            del st.query_params["record"]
            st.rerun()
        # Atlassian's values are in the line, so it is plain text (st.text), never Markdown.
        st.text(f"{ui.fmt_time(event['ts'])}  {event['action'] or ui.BLANK} on "
                f"{ui.site(event['tenant_base_url']) or event['tenant_client_key'] or ui.BLANK}, "
                f"from {found['kind']} source {event['source'] or ui.BLANK} "
                f"(its id {event['source_id'] or ui.BLANK})")
        st.caption("SHA-256 of the record as stored (its canonical JSON: sorted keys, no spaces, UTF-8)")
        st.code(found["sha256"] or ui.BLANK, language=None)
        if found["verified"]:
            st.caption("The stored record still hashes to it.")
        else:
            st.warning("The stored record does not hash to its SHA-256: verify the chain on the "
                       "Integrity page.")
        if found["removed"]:
            st.caption("Left out of the stored record (they looked like credentials)")
            st.text("\n".join(str(p) for p in found["removed"]))
        st.caption("The record as its source sent it")
        st.json(found["record"] if found["record"] is not None else {}, expanded=True)

# --------------------------------------------------------------------------- reconciliation

st.subheader("Reconciliation")
tolerance = st.columns([1, 3])[0].number_input(
    "Tolerance (seconds)", min_value=0.0, max_value=600.0, value=5.0, step=1.0, format="%.1f",
    key="rec_tolerance",
    help="The largest gap between Atlassian's time of a call and the app's for the two to match.",
)
with st.spinner("Lining up the two records..."), ui.guard():
    rec = queries.reconciliation(flt, tolerance)
st.caption(f"From {ui.fmt_time(rec['since'])} to {ui.fmt_time(rec['until'])}. A call Atlassian logged with "
           "the app's identity matches the app's own outgoing event on the same site, within "
           f"{rec['tolerance_s']:g} s, with the same method, path and identity.")
cols = st.columns(3)
cols[0].metric("Matched", f"{rec['matched']:,}")
cols[1].metric("Atlassian only", f"{rec['atlassian_only']:,}",
               help="Calls with the app's identity that the app never recorded: a leaked secret, "
                    "a forgotten script, a second deployment.")
cols[2].metric("App only", f"{rec['app_only']:,}",
               help="The app's calls that Atlassian's record should hold (a site and time a source has "
                    "read completely) but does not.")

st.caption("Per site: matched % is matched / (matched + Atlassian only), the share of Atlassian's calls "
           "that the app recorded too.")
ui.table(
    [
        {
            "site": ui.site(s["site"]) or ui.short_key(s["site"]),
            "matched %": round(100 * s["matched_share"], 1) if s["matched_share"] is not None else None,
            "matched": s["matched"],
            "atlassian only": s["atlassian_only"],
            "app only": s["app_only"],
        }
        for s in rec["sites"]
    ],
    key="rec_sites",
)


def _unmatched_rows(found: list[dict]) -> list[dict]:
    return [
        {
            "time": r["time"],
            "method": r["method"],
            "path": r["path"],
            "status": r["status"],
            "site": ui.site(r["site"]) or ui.short_key(r["tenant"]),
            "acting as": r["identity_kind"],
            "account": ui.short_key(r["account_id"]),
            # Atlassian's calls: their source, and how far away the app's same call is when it
            # made one outside the tolerance (a clock that is off, not a call it never made).
            **({"source": r["source"], "clock gap s": r.get("clock_gap_s")} if "source" in r else {}),
        }
        for r in found
    ]


def _pick(table, found: list[dict]) -> str | None:
    i = ui.selected_row(table)
    return found[i]["event_id"] if i is not None and i < len(found) else None


theirs, ours = rec["atlassian_rows"], rec["app_rows"]
left, right = st.columns(2)
with left:
    st.caption("Atlassian only: calls with the app's identity the app never recorded")
    gap = st.column_config.Column("clock gap s", help="Seconds from Atlassian's time to the app's same call, "
                                  "outside the tolerance: the app made it and one of the clocks is off")
    theirs_table = ui.table(_unmatched_rows(theirs), key="rec_atlassian_only", select=True,
                            column_config={"clock gap s": gap})
    if rec["atlassian_only"] > len(theirs):
        st.caption(f"The newest {len(theirs):,} of {rec['atlassian_only']:,}.")
with right:
    st.caption("App only: the app's calls Atlassian's record lacks")
    ours_table = ui.table(_unmatched_rows(ours), key="rec_app_only", select=True)
    if rec["app_only"] > len(ours):
        st.caption(f"The newest {len(ours):,} of {rec['app_only']:,}.")

# The row last selected in either table is the one shown (and kept in the URL, to share).
now_picked = (_pick(theirs_table, theirs), _pick(ours_table, ours))
before = st.session_state.get("rec_picked", (None, None))
if now_picked != before:
    st.session_state["rec_picked"] = now_picked
    changed = now_picked[0] if now_picked[0] != before[0] else now_picked[1]
    if changed:
        st.query_params["unmatched"] = changed
    elif "unmatched" in st.query_params:
        del st.query_params["unmatched"]

chosen_id = st.query_params.get("unmatched")
chosen = next((r for r in (*theirs, *ours) if r["event_id"] == chosen_id), None) if chosen_id else None
if chosen_id and chosen is None:
    st.info("That call is not unmatched in this range and tolerance.")
elif chosen is None:
    if theirs or ours:
        st.caption("Select an unmatched call for the app's own events around it.")
else:
    site = ui.site(chosen["site"]) or ui.short_key(chosen["tenant"]) or "every site"
    atlassian_side = "source" in chosen
    st.subheader("Atlassian only" if atlassian_side else "App only")
    st.text(f"{ui.fmt_time(chosen['time'])}  {chosen['method'] or ui.BLANK} {chosen['path'] or ui.BLANK} "
            f"({chosen['status'] or ui.BLANK}) on {site}, acting as {chosen['identity_kind'] or ui.BLANK}"
            + (f", from source {chosen['source'] or ui.BLANK}" if atlassian_side else ""))
    minutes = int(queries.AROUND.total_seconds() // 60)
    st.page_link("views/activity.py", icon=":material/list:", query_params=chosen["activity"],
                 label=ui.md_escape(f"The app's calls on {site} within {minutes} minutes of it", 200))
    if atlassian_side:
        with ui.guard():
            source_record = queries.imported_record(chosen["event_id"])
        if source_record is not None:
            # Where the call came from (the record's address, its time, its path) is in the record.
            with st.expander("Its record as Atlassian sent it"):
                st.code(source_record["sha256"] or ui.BLANK, language=None)
                st.json(source_record["record"] if source_record["record"] is not None else {})
        if chosen["nearest"]:
            st.caption("The app's own calls on that site nearest in time")
            for n in chosen["nearest"]:
                st.page_link("views/activity.py", icon=":material/schedule:", query_params=n["activity"],
                             label=ui.md_escape(f"Event {n['event_id']}", 120))
        else:
            st.caption("The app recorded no call on that site near it.")
