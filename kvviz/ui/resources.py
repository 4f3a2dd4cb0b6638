"""Process-wide resources: one loaded model per (name, device, dtype), shared read-only by every session.

``st.cache_resource`` keeps the model for the life of the server process. Loading errors are not cached: a
failed load raises ``ModelLoadError`` for the page to show, and the next attempt tries again.
"""

from __future__ import annotations

import streamlit as st

from kvviz.models import LoadedModel, load_model


@st.cache_resource(show_spinner=False, max_entries=4)
def _cached_load(name: str, device: str | None, dtype: str | None) -> LoadedModel:
    with st.status(f"Loading {name}…", expanded=True) as status:
        loaded = load_model(name, device=device, dtype=dtype, progress=status.write)
        status.update(label=f"Loaded {loaded.card.name} in {loaded.load_seconds:.1f} s", state="complete",
                      expanded=False)
    return loaded


def get_model(name: str, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """The shared model; raises ``ModelLoadError`` (not cached) when it cannot be loaded."""
    return _cached_load(name.strip(), device, dtype)
