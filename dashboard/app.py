"""Connect Audit's dashboard: ``streamlit run dashboard/app.py`` (or ``uvicorn dashboard.app:app``).

Streamlit's own ASGI app (``st.App``) serving the page script ``dashboard/main.py``, with the
sign-in edge in front of it (:mod:`dashboard.edge`): the local sign-in form and the session
cookie that lets a signed-in person reload, open new tabs and follow shared links.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run dashboard/app.py` puts dashboard/ on sys.path, not the project root; make
# `import dashboard` work from a source checkout as it does from an installed package.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from dashboard import edge  # noqa: E402

app = st.App(Path(__file__).resolve().with_name("main.py"), **edge.app_options())
