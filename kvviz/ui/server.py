"""Streamlit glue for a shared server: its settings, the model workers every session's calls go through, and
the registry of sessions, each one per server process.

What it does not do: decide anything (``kvviz.server`` holds the queue, the settings and their checks) or draw.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, TypeVar

import streamlit as st

from kvviz.models import LoadedModel
from kvviz.server.queue import WorkerPool, set_torch_threads
from kvviz.server.sessions import SessionRegistry
from kvviz.server.settings import CONFIG_ENV, DEFAULT_CONFIG, MODE_ENV, ServerSettings, load_settings

T = TypeVar("T")


@functools.lru_cache(maxsize=4)
def _settings_for(mode: str, config: str | None, modified: float | None) -> ServerSettings:
    environ = {MODE_ENV: mode} | ({CONFIG_ENV: config} if config else {})
    return load_settings(environ)


def server_settings() -> ServerSettings:
    """This server's settings (read again only when the environment or the file changes; raises ``InputError``
    for a bad file)."""
    config = os.environ.get(CONFIG_ENV)
    path = Path(config or DEFAULT_CONFIG)
    modified = path.stat().st_mtime if path.is_file() else None
    return _settings_for(os.environ.get(MODE_ENV, ""), config, modified)


@st.cache_resource(show_spinner=False)
def worker_pool() -> WorkerPool:
    """The one pool of model workers of this server process."""
    set_torch_threads(server_settings().torch_threads)
    return WorkerPool()


@st.cache_resource(show_spinner=False)
def session_registry() -> SessionRegistry:
    """The one registry of browser sessions of this server process."""
    return SessionRegistry()


def run_on_model(loaded: LoadedModel, session: str, call: Callable[[], T], kind: str) -> T:
    """Run ``call`` (which uses ``loaded``'s model) on that model's worker, in ``session``'s turn."""
    return worker_pool().worker(loaded.key).run(session, call, kind)


def loaded_model_names() -> list[str]:
    """The models this process holds now."""
    from kvviz.ui.resources import model_store

    return [f"{name} ({loaded.loaded_from}, loaded in {loaded.load_seconds:.1f} s)"
            for (name, _, _), loaded in model_store().items()]


RESTARTED = ("This tab's earlier session is gone from the server (it restarted, or the session was closed while the "
             "tab was disconnected), so this is a fresh session: its cache starts empty. Settings in the address bar "
             "were kept.")


def reconnected_without_session() -> bool:
    """Whether this browser tab had a session before this one: on a reconnect Streamlit's page sends the id of its
    earlier session as a third websocket subprotocol. It is only asked when a session starts, so a tab that finds
    its session again on the same server (a short network drop) never gets here."""
    try:
        protocols = st.context.headers.get("Sec-Websocket-Protocol") or ""
    except Exception:  # noqa: BLE001 - no request context (bare runs, AppTest): not a reconnect
        return False
    return len([part for part in protocols.split(",") if part.strip()]) >= 3
