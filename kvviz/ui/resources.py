"""Process-wide resources: one loaded model per (name, device, dtype), shared read-only by every session.

``st.cache_resource`` keeps a ``ModelStore`` for the life of the server process; the store holds the loaded
models. The loading itself runs outside any cached function, on purpose: Streamlit records the elements a cached
function draws and replays them on every later hit, which would show a finished load as a spinning "Loading…"
box in every new session. Here the first load shows a live status box with the engine's progress messages (the
one-off GGUF conversion of the default model takes ~20 s), and later calls return at once and draw nothing.

A per-model lock makes two sessions that ask for the same model at the same moment load it once. Loading errors
are not stored: a failed load raises ``ModelLoadError`` for the page to show, and the next attempt tries again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import streamlit as st

from kvviz.models import LoadedModel, load_model

ModelKey = tuple[str, str | None, str | None]  # (name, device, dtype)

# Models kept in memory at once; the least recently used one is dropped first.
MAX_MODELS = 4


class ModelStore:
    """Loaded models by key, with one lock per key so a model is never loaded twice concurrently."""

    def __init__(self, max_models: int = MAX_MODELS) -> None:
        self.max_models = max_models
        self._models: OrderedDict[ModelKey, LoadedModel] = OrderedDict()
        self._guard = threading.Lock()
        self._loading: dict[ModelKey, threading.Lock] = {}

    def get(self, key: ModelKey) -> LoadedModel | None:
        with self._guard:
            loaded = self._models.get(key)
            if loaded is not None:
                self._models.move_to_end(key)
            return loaded

    def load(self, key: ModelKey, loader: Callable[[], LoadedModel]) -> LoadedModel:
        """The model under ``key``, calling ``loader`` unless another caller has loaded it meanwhile."""
        with self._guard:
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:
            loaded = self.get(key)
            if loaded is None:
                loaded = loader()
                with self._guard:
                    self._models[key] = loaded
                    while len(self._models) > self.max_models:
                        self._models.popitem(last=False)
        return loaded


@st.cache_resource(show_spinner=False)
def model_store() -> ModelStore:
    """The one store of this server process."""
    return ModelStore()


def get_model(name: str, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """The shared model; raises ``ModelLoadError`` (not remembered) when it cannot be loaded.

    The first call for a model draws a status box with the loading progress where it is called; later calls
    draw nothing.
    """
    key: ModelKey = (name.strip(), device, dtype)
    store = model_store()
    loaded = store.get(key)
    if loaded is not None:
        return loaded
    with st.status(f"Loading {key[0]}…", expanded=True) as status:
        try:
            loaded = store.load(key, lambda: load_model(key[0], device=device, dtype=dtype, progress=status.write))
        except Exception:
            status.update(label=f"Could not load {key[0]}", state="error", expanded=False)
            raise
        status.update(label=f"Loaded {loaded.card.name} in {loaded.load_seconds:.1f} s", state="complete",
                      expanded=False)
    return loaded
