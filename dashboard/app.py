"""drgrade dashboard: ``streamlit run dashboard/app.py``.

A router only (``st.navigation`` over the page files in ``dashboard/views/``); every page is thin:
widgets, calls into :mod:`models`, figures from :mod:`dashboard.figures`. Torch-free.
Settings come from the environment: ``RUNS_DIR`` (trained variants), ``DRGRADE_DATA`` (the
Data page's default folder), ``DRGRADE_MAX_UPLOAD_MB`` (per-file upload limit).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run dashboard/app.py` puts dashboard/ (not the repository) on sys.path.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from dashboard.settings import runs_root  # noqa: E402

# Not "pages/": a folder of that name next to the entry file puts Streamlit in its legacy
# multipage mode whenever a server's first request opens a page URL directly (a bookmark),
# which then runs that page without this router (no navigation, no settings).
_PAGES = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="drgrade", page_icon=":material/visibility:", layout="wide")

PAGES = [
    st.Page(_PAGES / "grade.py", title="Grade", icon=":material/upload_file:", default=True),
    st.Page(_PAGES / "compare.py", title="Compare", icon=":material/compare:"),
    st.Page(_PAGES / "operating_point.py", title="Operating point", icon=":material/tune:"),
    st.Page(_PAGES / "model_card.py", title="Model card", icon=":material/description:"),
    st.Page(_PAGES / "data.py", title="Data", icon=":material/dataset:"),
]

page = st.navigation(PAGES)
st.sidebar.caption(f"Runs: `{runs_root()}`")
page.run()
