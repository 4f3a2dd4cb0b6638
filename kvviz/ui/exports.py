"""The Step through page's export and import controls.

``export_controls`` draws an Export popover beside Share: the trace as JSON (loads back), as CSV (one row per
step) and as a self-contained HTML report. The files are built only when a button is clicked, from the records held
at that moment, so a page that steps or plays sends nothing extra. ``import_controls`` draws the uploader in the
sidebar: a file is read and validated by ``kvviz.exports.trace_file`` (size-limited, never evaluated), its settings
go into the sidebar's widgets, and the trace is replayed through ``kvviz.ui.session`` and checked against the
file. Every problem becomes the page's message, never a traceback.

What it does not do: build or parse the files itself (``kvviz.exports``), open models that are not built in, or
keep anything beyond this browser session.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Any

import streamlit as st

from kvviz.errors import KvvizError
from kvviz.exports.html_report import report_html
from kvviz.exports.table import trace_csv
from kvviz.exports.trace_file import (
    MAX_FILE_BYTES,
    REPLAY_MAX_STEPS,
    TraceFile,
    check_replay,
    read_trace_file,
    replay_message,
    settings_of,
    trace_to_json,
)
from kvviz.models import REGISTRY, LoadedModel
from kvviz.records import Trace
from kvviz.share import MAX_NEW_TOKENS_MAX
from kvviz.ui import session as sessions
from kvviz.ui.share_links import layer_key
from kvviz.ui.step_widgets import attention_layers

UPLOAD_KEY = "kvviz_trace_upload"
_PENDING = "kvviz_trace_pending"  # (TraceFile, file name) between the upload's callback and the replay
_MARKDOWN_PUNCTUATION = re.compile("([" + re.escape(string.punctuation) + "])")


def plain(text: str) -> str:
    """``text`` with every ASCII punctuation mark backslash-escaped, so Streamlit's Markdown shows it as written
    (a file name or token cannot turn into a link, an image or formatting)."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


def file_stem(model: str) -> str:
    return "kvviz-" + (re.sub(r"[^A-Za-z0-9.-]+", "-", model).strip("-") or "trace")


def export_controls(session: sessions.SessionTrace) -> None:
    """The Export popover: JSON, CSV and HTML report of what the page shows now."""
    with st.popover("Export", icon=":material/download:", help="Download this trace as JSON, CSV or an HTML report."):
        if not session.started or session.trace is None:
            st.caption("Press Prefill first: there is nothing to export yet.")
            return
        # A copy of the record list as it is now: Play may append while a file is being built on another thread.
        trace = Trace(session.trace.model, session.trace.device, session.trace.dtype, list(session.trace.records))
        settings = settings_of(session.model_key, session.settings)
        layers = attention_layers(trace.records[-1])
        layer = st.session_state.get(layer_key(layers)) if layers else None
        stem = file_stem(session.model_key)
        st.download_button("Trace as JSON", data=lambda: trace_to_json(trace, settings), file_name=f"{stem}.json",
                           mime="application/json", key="export_json", on_click="ignore",
                           icon=":material/data_object:",
                           help="Settings and every step's tokens and measurements; load it in the sidebar to "
                                "replay it.")
        st.download_button("Steps as CSV", data=lambda: trace_csv(trace), file_name=f"{stem}.csv", mime="text/csv",
                           key="export_csv", on_click="ignore", icon=":material/table:",
                           help="One row per model call: tokens, cache length and bytes, times.")
        st.download_button("HTML report", data=lambda: report_html(trace, settings, layer),
                           file_name=f"{stem}-report.html", mime="text/html", key="export_html", on_click="ignore",
                           icon=":material/description:",
                           help="One file that opens offline: settings, text, figures, every chart and the steps.")
        note = ("A trace file loads back on the built-in models only." if session.model_key not in REGISTRY
                else f"Loading the JSON replays up to {REPLAY_MAX_STEPS} steps and checks the tokens.")
        st.caption(f"{len(trace.records):,} model calls. Each chart also has a PNG download in its toolbar. {note}")


def import_controls(loaded: LoadedModel | None, read_settings: Callable[[], dict[str, Any]]) -> None:
    """The sidebar's uploader; a file uploaded on the previous click is replayed here, before the page draws."""
    st.file_uploader(
        "Load a trace (JSON)", type=["json"], key=UPLOAD_KEY, on_change=_on_upload,
        max_upload_size=MAX_FILE_BYTES // 2**20,
        help="A file saved with Export → Trace as JSON: its settings fill the sidebar and the page replays its "
             f"steps (at most {REPLAY_MAX_STEPS}), checking that the tokens are the recorded ones.",
    )
    _replay_pending(loaded, read_settings)


def _on_upload() -> None:
    """Read the new file; a usable one sets the sidebar's widgets and waits for the model to replay."""
    upload = st.session_state.get(UPLOAD_KEY)
    if upload is None:
        return
    session = sessions.get_session()
    try:
        recorded = read_trace_file(upload.getvalue(), list(REGISTRY))
    except KvvizError as error:
        session.message = ("error", plain(str(error)))
        return
    settings = recorded.settings
    values: dict[str, Any] = {
        "model_choice": settings.model, "prompt": settings.prompt, "chat_template": settings.chat_template,
        "compare": settings.compare, "sample": settings.sampling,
        "max_new_tokens": min(max(settings.max_new_tokens, recorded.replay_steps + 1), MAX_NEW_TOKENS_MAX),
    }
    if settings.sampling:
        values.update(temperature=settings.temperature, top_k=settings.top_k, seed=settings.seed)
    for key, value in values.items():
        st.session_state[key] = value
    st.session_state[_PENDING] = (recorded, _file_name(upload.name))


def _file_name(name: str) -> str:
    shown = re.sub(r"[^\w. -]+", "_", name)
    return shown if len(shown) <= 60 else shown[:57] + "…"


def _replay_pending(loaded: LoadedModel | None, read_settings: Callable[[], dict[str, Any]]) -> None:
    pending: tuple[TraceFile, str] | None = st.session_state.pop(_PENDING, None)
    if pending is None:
        return
    recorded, name = pending
    session = sessions.get_session()
    if loaded is None or loaded.key != recorded.settings.model:
        st.error(f"Could not replay {plain(name)}: its model, {recorded.settings.model}, did not load.")
        return
    steps = recorded.replay_steps
    session.play_remaining = 0
    try:
        with st.spinner(f"Replaying {plain(name)}: prefill and {steps} step{'' if steps == 1 else 's'}…"):
            sessions.prefill(session, loaded, **read_settings())
            for _ in range(steps):
                sessions.step(session)
    except KvvizError as error:
        session.message = ("error", plain(f"Could not replay {name}: {error}"))
        return
    check = check_replay(recorded, session.trace)
    session.message = ("info" if check.same else "warning", plain(replay_message(recorded, check, name)))
