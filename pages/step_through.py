"""Step through (home): under construction; the engine is usable from the CLI meanwhile."""

import streamlit as st

st.title("kvviz — step a real model and watch its KV cache")
st.info("This page is being built. Meanwhile: `python -m kvviz step --model smollm2-135m --prompt 'Hi' --compare`.")
