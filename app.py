"""kvviz: page configuration and navigation; each page lives in pages/."""

import streamlit as st

# Imported once here, before any page runs: two sessions importing transformers at once can race.
import kvviz.attention  # noqa: F401

st.set_page_config(page_title="kvviz — see the KV cache", page_icon="🔑", layout="wide")
st.navigation(
    [
        st.Page("pages/step_through.py", title="Step through", icon="▶️", default=True),
        st.Page("pages/memory.py", title="Memory", icon="🧮"),
        st.Page("pages/attention.py", title="Attention", icon=":material/grid_on:"),
        st.Page("pages/speed.py", title="Speed", icon=":material/speed:"),
    ]
).run()
