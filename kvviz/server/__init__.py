"""Serving one app to many people at once: a fair queue of model calls, server-mode settings and limits, the
sessions' bookkeeping. Nothing here imports Streamlit; ``kvviz.ui`` glues it to the pages."""
