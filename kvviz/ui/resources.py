"""Process-wide resources: one loaded model per (name, device, dtype), shared read-only by every session.

``st.cache_resource`` keeps a ``ModelStore`` for the life of the server process; the store holds the loaded
models. The loading itself runs outside any cached function, on purpose: Streamlit records the elements a cached
function draws and replays them on every later hit, which would show a finished load as a spinning "Loading…"
box in every new session. Here the first load shows a live status box with the engine's progress messages (the
one-off GGUF conversion of the default model takes ~20 s), and later calls return at once and draw nothing.

A per-model lock makes two sessions that ask for the same model at the same moment load it once; the store keeps
the progress messages of a load under way, so a session that arrives during it (for example while ``preload``
loads the default model at the server's start) sees the same progress, live, until the model is ready. Loading
errors are not stored: a failed load raises ``ModelLoadError`` for the page to show, and the next attempt tries
again. In server mode only the models on the server's allow-list load (``kvviz.server.settings``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable

import streamlit as st

from kvviz.errors import KvvizError, first_line
from kvviz.models import LoadedModel, load_model
from kvviz.ui.server import server_settings

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
        self._progress: dict[ModelKey, list[str]] = {}  # messages of the loads under way

    def get(self, key: ModelKey) -> LoadedModel | None:
        with self._guard:
            loaded = self._models.get(key)
            if loaded is not None:
                self._models.move_to_end(key)
            return loaded

    def load(self, key: ModelKey, loader: Callable[[Callable[[str], None]], LoadedModel],
             progress: Callable[[str], None] | None = None) -> LoadedModel:
        """The model under ``key``, calling ``loader(report)`` unless another caller has loaded it meanwhile; each
        message the loader reports is kept for ``progress_of`` and passed on to ``progress``."""
        with self._guard:
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:
            loaded = self.get(key)
            if loaded is None:
                messages = self._progress.setdefault(key, [])

                def report(message: str) -> None:
                    messages.append(message)
                    if progress is not None:
                        progress(message)

                try:
                    loaded = loader(report)
                finally:
                    with self._guard:
                        self._progress.pop(key, None)
                with self._guard:
                    self._models[key] = loaded
                    while len(self._models) > self.max_models:
                        self._models.popitem(last=False)
        return loaded

    def items(self) -> list[tuple[ModelKey, LoadedModel]]:
        with self._guard:
            return list(self._models.items())

    def progress_of(self, key: ModelKey) -> list[str] | None:
        """The messages so far of a load of ``key`` under way (a copy), or None when none is under way."""
        with self._guard:
            messages = self._progress.get(key)
            return None if messages is None else list(messages)

    def wait(self, key: ModelKey, seconds: float) -> LoadedModel | None:
        """Wait up to ``seconds`` for a load of ``key`` under way to end; the model, if it is loaded by then."""
        with self._guard:
            lock = self._loading.get(key)
        if lock is not None and lock.acquire(timeout=seconds):
            lock.release()
        return self.get(key)


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
    server_settings().check_model(key[0])
    store = model_store()
    loaded = store.get(key)
    if loaded is not None:
        return loaded
    if store.progress_of(key) is not None:
        loaded = _follow_load(store, key)
        if loaded is not None:
            return loaded
    with st.status(f"Loading {key[0]}…", expanded=True) as status:
        try:
            loaded = store.load(key, lambda report: load_model(key[0], device=device, dtype=dtype, progress=report),
                                progress=status.write)
        except Exception:
            status.update(label=f"Could not load {key[0]}", state="error", expanded=False)
            raise
        status.update(label=f"Loaded {loaded.card.name} in {loaded.load_seconds:.1f} s", state="complete",
                      expanded=False)
    return loaded


def _follow_load(store: ModelStore, key: ModelKey) -> LoadedModel | None:
    """Show, live, the progress of a load of ``key`` that another caller started (the server's preload, or another
    session); the model once it is loaded, or None when that load failed (the caller then tries itself)."""
    started = time.monotonic()
    with st.status(f"Loading {key[0]} (it started before you arrived)…", expanded=True) as status:
        shown = 0
        while True:
            loaded = store.wait(key, 0.5)
            messages = store.progress_of(key) or []
            for message in messages[shown:]:
                status.write(message)
            shown = max(shown, len(messages))
            if loaded is not None:
                status.update(label=f"Loaded {loaded.card.name} (waited {time.monotonic() - started:.1f} s)",
                              state="complete", expanded=False)
                return loaded
            if store.progress_of(key) is None:  # the load ended without a model: it failed
                status.update(label=f"Loading {key[0]} failed; trying again", state="error", expanded=False)
                return None


def preload(names: tuple[str, ...], log: Callable[[str], None] = print) -> list[threading.Thread]:
    """Start loading ``names`` in the background (one thread, in order), as the server starts; ``log`` reports
    each start, end and failure. Sessions that arrive meanwhile follow the progress (``get_model``)."""
    store = model_store()

    def load_all() -> None:
        for name in names:
            key: ModelKey = (name, None, None)
            log(f"kvviz: preloading {name}")
            try:
                loaded = store.load(key, lambda report, name=name: load_model(name, progress=report))
            except Exception as error:  # noqa: BLE001 - a failed preload must not stop the server; sessions retry
                log(f"kvviz: preloading {name} failed: {first_line(error)}")
                continue
            log(f"kvviz: preloaded {name} in {loaded.load_seconds:.1f} s")

    thread = threading.Thread(target=load_all, name="kvviz-preload", daemon=True)
    thread.start()
    return [thread]


def model_or_stop(name: str) -> LoadedModel:
    """The shared model for a page that cannot do anything without it: on failure the page shows the message and
    stops there (the other pages and sessions go on)."""
    try:
        return get_model(name)
    except KvvizError as error:
        st.error(str(error))
        st.stop()
