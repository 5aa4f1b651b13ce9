"""Overview: volume, rates and the top tenants, endpoints and reasons over the chosen range."""

import streamlit as st

from dashboard import queries, ui

st.title("Overview")
flt = ui.filter_bar(("range", "tenant", "platform"))
with ui.guard():
    data = queries.overview(flt)
    sites = queries.tenant_sites()
    changes = queries.install_changes(flt)
# The highlights of a long range on a large store can outlast the page's time limit: then the
# rest of the Overview still shows, and the section says so in one sentence.
try:
    found, missed = queries.highlights(flt), None
except queries.QueryTimeout as exc:
    found, missed = [], str(exc)

# What is worth a look comes first: rates above their baseline, first uses, lifecycle changes.
SEVERITY_ICONS = {
    "high": ":material/priority_high:", "medium": ":material/warning:", "low": ":material/info:",
}
pressing = [h for h in found if h["severity"] != "low"]
st.subheader("Highlights")
if missed:
    st.warning(f"Highlights were not found in time for this range: {missed}")
elif not found:
    st.caption("Nothing unusual in this range: no failure rate above its baseline, no first use, "
               "no lifecycle change.")


def _highlight_link(h: dict, severity: str) -> None:
    """One highlight, a click from its events. A link's label does not wrap, so the whole
    sentence is its tooltip too, for a narrow window."""
    text = ui.md_escape(f"{severity}: {h['summary']}", 400)
    st.page_link("views/activity.py", label=text, help=text, icon=SEVERITY_ICONS[h["severity"]],
                 query_params=h["params"])


for h in pressing[:8]:
    _highlight_link(h, h["severity"].upper())
rest = pressing[8:] + [h for h in found if h["severity"] == "low"]
if rest:
    with st.expander(f"{len(rest)} more, of lower severity"):
        for h in rest:
            _highlight_link(h, h["severity"])

summary = data["summary"]
counts = summary["outcomes"]
# Each figure opens the page and filters that produced it (the range, tenant and platform above).
scope = ui.filter_params(("range", "since", "until", "tenant", "platform"))


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


cols = st.columns(5)
cols[0].metric("Events", f"{summary['events']:,}")
cols[0].page_link(
    "views/activity.py",
    label=_count(summary["events"], "event", "events"),
    icon=":material/list:",
    query_params=scope,
)
cols[1].metric("Tenants", f"{summary['tenants']:,}")
cols[1].page_link("views/installs.py", label="Installs", icon=":material/apps:")
cols[2].metric("Rejected tokens", f"{summary['rejection_rate']:.2%}")
cols[2].page_link(
    "views/activity.py",
    label=_count(counts.get("rejected", 0), "rejection", "rejections"),
    icon=":material/key_off:",
    query_params={**scope, "outcome": "rejected"},
)
cols[3].metric("403 denials", f"{summary['denial_rate']:.2%}")
cols[3].page_link(
    "views/denials.py",
    label=_count(counts.get("denied", 0), "denial", "denials"),
    icon=":material/block:",
    query_params=scope,
)
cols[4].metric("Errors", f"{summary['error_rate']:.2%}")
cols[4].page_link(
    "views/activity.py",
    label=_count(counts.get("error", 0), "error", "errors"),
    icon=":material/error:",
    query_params={**scope, "outcome": "error"},
)

if changes:
    # A site that moved, a rotated secret or a refused install is rare and matters: shown first.
    st.subheader("Install changes")
    st.caption("Reinstalls that changed an install, and lifecycle callbacks the install policy refused.")
    ui.table(
        [
            {
                "time": r["ts"],
                "site": ui.tenant_name(r["tenant_client_key"], sites),
                "event": r["event_type"],
                "outcome": r["outcome"],
                "reason": r["reason"],
                "detail": r["detail"],
            }
            for r in changes
        ],
        key="install_changes",
    )

fresh = data["freshness"]
st.caption("Freshness")
st.text(
    f"Newest event {ui.fmt_time(fresh['newest'])} ({ui.fmt_age(fresh['age_s'])} ago); "
    f"oldest kept {ui.fmt_time(fresh['oldest'])}; "
    f"{fresh['unfolded']:,} event{'' if fresh['unfolded'] == 1 else 's'} not yet in the rollups"
)

step = ui.bucket_name(data["bucket_s"])
ui.bar_chart(
    data["series"],
    x="time",
    y="events",
    color="outcome",
    title=f"Events per {step} by outcome: a spike or a gap is worth a look",
    time_unit="time",
    palette=ui.OUTCOME_COLORS,
)

left, middle, right = st.columns(3)
with left:
    st.subheader("Top tenants")
    ui.table(
        [
            {
                "site": ui.tenant_name(r["tenant_client_key"], sites),
                "events": r["events"],
            }
            for r in data["top_tenants"]
        ],
        key="top_tenants",
    )
with middle:
    st.subheader("Top endpoints")
    ui.table(
        [
            {"method": r["method"], "endpoint": r["path_template"], "events": r["events"]}
            for r in data["top_endpoints"]
        ],
        key="top_endpoints",
    )
with right:
    st.subheader("Top reasons")
    ui.table([{"reason": r["reason"], "events": r["events"]} for r in data["top_reasons"]], key="top_reasons")
