"""Export: the current filter as CSV or NDJSON, every matching row; each export is recorded."""

import streamlit as st

from dashboard import queries, ui

st.title("Export")
st.caption(
    "Every event that matches the filter, oldest first, with the same columns and formula "
    "neutralisation as `connect-audit export`. Each export is itself recorded in the log "
    "with its filter, row count and SHA-256."
)
user = ui.current_user()
flt = ui.filter_bar()
with ui.guard():
    matching = queries.count(flt)
st.text(f"{matching:,} event matches." if matching == 1 else f"{matching:,} events match.")

fmt = st.segmented_control("Format", ["csv", "ndjson"], default="csv", key="export_format",
                           format_func=lambda f: {"csv": "CSV (spreadsheets)",
                                                  "ndjson": "NDJSON (programs)"}[f])
fmt = fmt or "csv"
name = queries.export_file_name(flt, fmt)


def _produce(flt=flt, fmt=fmt, actor=f"{user.name} ({user.role}, dashboard)"):
    # Runs when the button is clicked, on Streamlit's download thread.
    data, _result = queries.export_bytes(flt, fmt, actor=actor)
    return data


st.download_button(
    f"Download {name}",
    data=_produce,
    file_name=name,
    mime="text/csv" if fmt == "csv" else "application/x-ndjson",
    type="primary",
    key="download_export",
    on_click="ignore",
    disabled=matching == 0,
)
if matching > 2_000_000:
    st.caption("For very large exports `connect-audit export -o FILE` streams to disk directly.")

st.subheader("Recent exports")
with ui.guard():
    ui.table(queries.recent_exports(), key="recent_exports")
