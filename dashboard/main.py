"""The dashboard's page script: the navigation, the sign-in gate, then the chosen page.

Served by ``dashboard/app.py`` (``streamlit run dashboard/app.py``), which puts the sign-in edge
in front of it. The store is the one named by ``CONNECT_AUDIT_DATABASE_URL`` (else
``data/audit.db``). Nothing of the log is rendered before sign-in (see :mod:`dashboard.auth`);
the pages read the store only through :mod:`dashboard.queries`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Streamlit puts dashboard/ on sys.path, not the project root; make
# `import dashboard` work from a source checkout as it does from an installed package.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from dashboard import ui  # noqa: E402

st.set_page_config(page_title="Connect Audit", page_icon=":material/policy:", layout="wide")

PAGES = [
    st.Page("views/overview.py", title="Overview", icon=":material/monitoring:",
            url_path="overview", default=True),
    st.Page("views/installs.py", title="Installs", icon=":material/apps:", url_path="installs"),
    st.Page("views/activity.py", title="Activity", icon=":material/list:", url_path="activity"),
    st.Page("views/who_acted.py", title="Who acted", icon=":material/group:",
            url_path="who-acted"),
    st.Page("views/denials.py", title="Denials", icon=":material/block:", url_path="denials"),
    st.Page("views/atlassian_record.py", title="Atlassian record", icon=":material/fact_check:",
            url_path="atlassian-record"),
    st.Page("views/token_debugger.py", title="Token debugger", icon=":material/key:",
            url_path="token-debugger"),
    st.Page("views/export.py", title="Export", icon=":material/download:", url_path="export"),
    st.Page("views/integrity.py", title="Integrity", icon=":material/verified:",
            url_path="integrity"),
]
ACCOUNTS = st.Page("views/accounts.py", title="Accounts", icon=":material/manage_accounts:",
                   url_path="accounts")

# The navigation is built before sign-in (hidden), so that a shared link such as
# /activity?range=7d&outcome=rejected still names its page and filters once signed in.
user = ui.signed_in_user()
pages = [*PAGES, ACCOUNTS] if user is not None and user.is_admin and user.via == "local" else PAGES
page = st.navigation(pages, position="sidebar" if user is not None else "hidden")
st.session_state["connect_audit_page"] = page.url_path  # also where a new sign-in comes back to
if user is None:
    ui.sign_in_screen()  # renders the way in and stops
ui.sidebar(user)
page.run()
