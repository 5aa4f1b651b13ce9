"""Integrity: the hash chain's verification, the last signed checkpoint, what is kept."""

import streamlit as st

from dashboard import queries, ui

st.title("Integrity")
with ui.guard():
    info = queries.integrity()

cols = st.columns(3)
cols[0].metric("Events kept", f"{(info['last_seq'] or 0) - (info['first_seq'] or 1) + 1:,}"
               if info["last_seq"] else "0")
cols[1].metric("Checkpoints", f"{info['checkpoints']:,}")
cols[2].metric("Not yet in rollups", f"{info['unfolded']:,}")
st.text(f"Oldest event kept: {ui.fmt_time(info['oldest'])}  (seq {info['first_seq'] or ui.BLANK})")
st.text(f"Newest event:      {ui.fmt_time(info['newest'])}  (seq {info['last_seq'] or ui.BLANK})")

st.subheader("Last checkpoint")
cp = info["last_checkpoint"]
if cp is None:
    st.info("No checkpoint has been written yet (the recorder signs one every N events and at close).")
else:
    st.text(f"seq {cp['seq']}, {cp['event_count']:,} events, signed {ui.fmt_time(cp['created_at'])} "
            f"with key {cp['key_id']}")
    st.code(cp["hash"], language=None)

st.subheader("Retention")
kept = info["retention"]
if kept["problem"]:
    st.error(f"The retention policy is misconfigured: {kept['problem']}")
elif kept["policy"]:
    st.text(f"Policy: {kept['policy']} (applied daily by the recorder; connect-audit purge --policy now)")
else:
    st.caption("No retention policy: everything is kept. Set CONNECT_AUDIT_RETENTION_DAYS (and "
               "_MAX_EVENTS, _ARCHIVE) for the recorder to apply one daily.")
if kept["purges"]:
    st.caption("The last purges, newest first: each is a chained event that names what it removed.")
    ui.table(kept["purges"], key="purges")
else:
    st.caption("Nothing has been purged from this log.")
if kept["months"]:
    st.caption("Stored by month (PostgreSQL partitions): a purge drops a month whole once every event "
               "in it goes. Counts are the database's estimates, as of its last ANALYZE.")
    ui.table(kept["months"], key="months")

st.subheader("Forwarding")
sent = info["forwarding"]
failing = [d for d in sent if d["failing since"]]
for d in failing:
    # The error can quote the receiver's answer: shown as text, never as markdown.
    st.error(f"Forwarding to {ui.md_escape(d['destination'], 200)} has failed since "
             f"{d['failing since']:%Y-%m-%d %H:%M} UTC ({d['behind']:,} events waiting): "
             f"{ui.md_escape(d['last error'] or '', 400)}")
if sent:
    st.caption("Each destination's cursor: events up to it were accepted by the receiver; the rest are "
               "sent, at least once, when it answers again.")
    ui.table(sent, key="forwarding")
else:
    st.caption("Not forwarded anywhere. connect-audit forward --to syslog+tls://... | splunk-hec://... | "
               "otlp+http://... (or CONNECT_AUDIT_FORWARD for the recorder) sends every event to a SIEM.")

st.subheader("Hash chain")
st.caption("Checks every link, hash and checkpoint signature; takes a few seconds per million events.")
if st.button("Verify the chain now", type="primary", key="verify"):
    with st.spinner("Verifying..."), ui.guard():
        st.session_state["chain_report"] = queries.verify_chain()
report = st.session_state.get("chain_report")
if report is not None:
    if report["ok"]:
        st.success(f"The chain verifies: {report['events_checked']:,} events checked.")
    else:
        st.error("The chain does NOT verify.")
        st.text(f"First bad event: seq {report['first_bad_seq']}, id {report['first_bad_event_id']}")
        st.text(f"Problem: {report['problem']}")
