"""Accounts (admin only): local dashboard accounts and their roles."""

import streamlit as st

from dashboard import auth, queries, ui

user = ui.current_user()
if user is None or not user.is_admin:
    st.error("Only an admin can manage accounts.")
    st.stop()

st.title("Accounts")
store = ui.accounts()
st.caption("Passwords are stored only as scrypt hashes, beside the audit store.")
ui.table([{"account": name, "role": role} for name, role in store.list()], key="accounts")

st.subheader("Add an account or set a password")
with st.form("account_form", clear_on_submit=True):
    name = st.text_input("Account name")
    role = st.selectbox("Role", auth.ROLES, index=1)
    password = st.text_input("Password", type="password")
    submitted = st.form_submit_button("Save")
if submitted:
    try:
        existed = name.strip() in dict(store.list())
        store.set_password(name.strip(), password, role)
        queries.record_admin_event("account_saved", actor=user.name, allowed=True, account=name.strip(),
                                   detail=f"Account {name.strip()[:64]} saved with role {role}")
        if name.strip() == user.name:
            st.success("Saved. Your sessions have ended: sign in again with the new password.")
        elif existed:
            st.success("Saved. The account's open sessions have ended.")
        else:
            st.success("Saved.")
    except auth.AuthError as exc:
        st.error(str(exc))

st.subheader("Remove an account")
others = [n for n, _ in store.list() if n != auth.ADMIN]
if others:
    victim = st.selectbox("Account", others, key="remove_account")
    if st.button("Remove", key="remove_button"):
        try:
            store.remove(victim)
            queries.record_admin_event("account_removed", actor=user.name, allowed=True, account=victim,
                                       detail=f"Account {victim} removed")
            st.rerun()
        except auth.AuthError as exc:
            st.error(str(exc))
else:
    st.caption("No other accounts.")
