"""Who acted: which calls ran as the app user and which as which user, per tenant and endpoint."""

import streamlit as st

from dashboard import queries, ui

st.title("Who acted")
flt = ui.filter_bar(("range", "tenant", "platform", "direction", "method"))
with ui.guard():
    sites = queries.tenant_sites()  # a site by its host name, a person by name
    people = queries.people()
    data = queries.who_acted(flt)

split = data["split"]
cols = st.columns(3)
cols[0].metric("As the app user", f"{split.get('app_user', 0):,}")
cols[1].metric("As a user", f"{split.get('user', 0):,}")
cols[2].metric("Anonymous", f"{split.get('anonymous', 0):,}")

st.subheader("Per tenant and endpoint")
ui.table(
    [
        {
            "site": ui.tenant_name(r["tenant"], sites),
            "method": r["method"],
            "endpoint": r["path_template"],
            "as app user": r["app_user"],
            "as user": r["user"],
            "anonymous": r["anonymous"],
            "total": r["total"],
        }
        for r in data["by_endpoint"]
    ],
    key="who_by_endpoint",
)
st.subheader("Users the app acted as (or that called it)")
ui.table(
    [
        {
            "person": ui.person(r["tenant"], r["account_id"], people),
            "site": ui.tenant_name(r["tenant"], sites),
            "account": ui.short_key(r["account_id"]),
            "events": r["count"],
            "first seen": r["first_seen"],
            "last seen": r["last_seen"],
        }
        for r in data["users"]
    ],
    key="who_users",
)
