"""kvviz: page configuration and navigation; each page lives in app_pages/.

The folder is not named ``pages``: with a folder of that name beside the main script, Streamlit serves its older
folder-based navigation, and runs page files without this script, until this script has called ``st.navigation``
once; a deep link as the first request, or a click in the first seconds after a start, would get that instead.
"""

import streamlit as st

from kvviz.share import parse_flag
from kvviz.ui.engine_import import import_engine

# A presenter link (?present=1) opens with the sidebar collapsed; Streamlit applies this only when a page opens.
st.set_page_config(page_title="kvviz — see the KV cache", page_icon="🔑", layout="wide",
                   initial_sidebar_state="collapsed" if parse_flag(st.query_params.get("present")) else "auto")
page = st.navigation(
    [
        st.Page("app_pages/step_through.py", title="Step through", icon="▶️", default=True),
        st.Page("app_pages/memory.py", title="Memory", icon="🧮"),
        st.Page("app_pages/attention.py", title="Attention", icon=":material/grid_on:"),
        st.Page("app_pages/speed.py", title="Speed", icon=":material/speed:"),
        st.Page("app_pages/serving.py", title="Serving", icon=":material/dns:"),
        st.Page("app_pages/cache_policies.py", title="Cache policies", icon=":material/compress:"),
        st.Page("app_pages/lessons.py", title="Lessons", icon=":material/school:"),
        st.Page("app_pages/drills.py", title="Drills", icon=":material/quiz:"),
        st.Page("app_pages/server_admin.py", title="Server", icon=":material/monitor_heart:"),
    ]
)
# Before any page runs: two sessions importing transformers at once can break it (see engine_import.py). The
# spinner shows only on the first run after a start; later runs return within its half-second delay.
with st.spinner("Starting: importing PyTorch and transformers…"):
    import_engine()
page.run()
