"""The Step through page's share link: open a session from its URL, keep its URL up to date, show the link.

``open_link`` runs at the top of the page on a session's first run and sets the sidebar's widgets to the link's
values before they are drawn; ``replay_link`` runs once the model has loaded and prefills and steps as the link
says; ``current_state`` reads what the page shows now, ``sync_url`` writes it into the browser's address bar and
``show_link`` offers it for copying. Parsing and encoding live in ``kvviz.share``; stepping goes through
``kvviz.ui.session``. What it does not do: open models that are not built in (a link must not make the server
download or read whatever a URL names), or keep more than one pending link per session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import streamlit as st

from kvviz.errors import KvvizError
from kvviz.models import REGISTRY, LoadedModel
from kvviz.share import (
    LINK_MAX_STEPS,
    MAX_NEW_TOKENS_MAX,
    PANELS,
    LinkState,
    query_to_state,
    state_to_query,
)
from kvviz.stepper import encode_prompt, new_tokens_room
from kvviz.ui import session as sessions
from kvviz.ui.step_widgets import attention_layers

_OPENED = "kvviz_link_read"  # set on a session's first run of the home page: the URL is read once
_PENDING = "kvviz_link_pending"  # (state, messages) between open_link and replay_link


def layer_key(layers: int) -> str:
    """The session-state key of the attention tab's layer slider (one per layer count, so a new model starts fresh)."""
    return f"attention_layer_{layers}"


def open_link(defaults: LinkState, max_new_tokens: int) -> None:
    """On this session's first run: read the URL's parameters and set the sidebar's widgets to them.

    ``max_new_tokens`` is the sidebar's default limit; a link with more steps raises it to fit them.
    """
    if st.session_state.get(_OPENED):
        return
    st.session_state[_OPENED] = True
    params = st.query_params.to_dict()
    if not params:
        return
    state, messages = query_to_state(params, list(REGISTRY), defaults)
    values: dict[str, Any] = {"model_choice": state.model, "prompt": state.prompt, "chat_template": state.chat,
                              "compare": state.compare, "sample": state.sampling, "present": state.present}
    if state.sampling:
        values.update(temperature=state.temperature, top_k=state.top_k, seed=state.seed)
    if state.tab is not None:
        values["panel"] = PANELS[state.tab]
    if state.steps is not None:
        current = int(st.session_state.get("max_new_tokens", max_new_tokens))
        values["max_new_tokens"] = min(max(current, state.steps + 1), MAX_NEW_TOKENS_MAX)
    for key, value in values.items():
        st.session_state[key] = value
    st.session_state[_PENDING] = (state, messages)


def replay_link(loaded: LoadedModel, read_settings: Callable[[], dict[str, Any]]) -> None:
    """Once per link: prefill and step as the link says (when it has ``steps``); its messages become the page's."""
    pending = st.session_state.pop(_PENDING, None)
    if pending is None:
        return
    state, messages = pending
    messages = list(messages)
    session = sessions.get_session()
    failed = False
    if state.steps is not None and loaded.key == state.model:
        settings = read_settings()
        try:
            prompt_tokens = len(encode_prompt(loaded, settings["prompt"], settings["chat_template"]))
            room = new_tokens_room(loaded.card.context_length, prompt_tokens)
            steps = min(state.steps, max(room - 1, 0))
            if steps < state.steps:
                messages.append(f"The link asks for {state.steps} steps, but only {steps} fit the model's context "
                                f"of {loaded.card.context_length:,} tokens after this prompt: stepped {steps}.")
            settings["max_new_tokens"] = max(min(settings["max_new_tokens"], room), steps + 1)
            with st.spinner(f"Opening the link: prefill and {steps} step{'' if steps == 1 else 's'}…"):
                sessions.prefill(session, loaded, **settings)
                for _ in range(steps):
                    sessions.step(session)
        except KvvizError as error:
            messages.append(str(error))
            failed = True
        if state.layer is not None and session.trace is not None:
            layers = attention_layers(session.trace.records[-1])
            if layers > 1:
                if state.layer > layers - 1:
                    messages.append(f"The link asks for layer {state.layer}, but {loaded.card.name} has {layers} "
                                    f"layers (0 to {layers - 1}): showing layer {layers - 1}.")
                st.session_state[layer_key(layers)] = min(state.layer, layers - 1)
    if messages:
        session.message = ("error" if failed else "warning", " ".join(messages))


def current_state(settings: dict[str, Any]) -> LinkState | None:
    """The link to what the page shows now: the trace's settings and step count, or the sidebar's settings before
    a prefill. None when the model is not one a link can open."""
    session = sessions.get_session()
    trace = session.trace if session.started else None
    model = session.model_key if trace is not None else st.session_state.get("model_choice")
    if model not in REGISTRY:
        return None
    built = session.settings if trace is not None else settings
    sampling = built["sampling"]
    tab = next((name for name, label in PANELS.items() if label == st.session_state.get("panel")), None)
    layer = None
    if trace is not None:
        layer = st.session_state.get(layer_key(attention_layers(trace.records[-1])))
    return LinkState(
        model=model, prompt=built["prompt"], chat=bool(built["chat_template"]),
        steps=len(trace.records) - 1 if trace is not None else None,
        temperature=sampling.temperature, top_k=sampling.top_k, seed=sampling.seed, compare=bool(built["compare"]),
        layer=layer, tab=None if tab == "cache" else tab, present=bool(st.session_state.get("present", False)),
    )


def query_string(state: LinkState) -> str:
    """``state`` as a query string, spaces as %20 (as a browser writes them)."""
    return urlencode(state_to_query(state), quote_via=quote)


def sync_url(state: LinkState | None) -> None:
    """Put ``state`` in the browser's address bar (only when it changed, so a rerun sends nothing new)."""
    if state is None:
        return
    query = state_to_query(state)
    if st.query_params.to_dict() != query:
        st.query_params.from_dict(query)


def show_link(state: LinkState | None) -> None:
    """A Share popover with the link in a code box (its copy button copies it)."""
    with st.popover("Share", icon=":material/link:", help="A link that opens this page in the same state."):
        if state is None:
            st.caption("Links open the built-in models only: choose one of them to get a link.")
            return
        base = (st.context.url or "").rstrip("/")
        st.code(f"{base}/?{query_string(state)}", language=None, wrap_lines=True)
        steps = "the prefill" if state.steps == 0 else f"the prefill and {state.steps} steps"
        what = (f"Opening it replays {steps} with the same settings"
                + (f" and seed {state.seed}" if state.sampling else " (greedy)") + ", so it shows the same tokens."
                if state.steps is not None else "Opening it fills in these settings; press Prefill there.")
        if state.steps is not None and state.steps > LINK_MAX_STEPS:
            what += (f" A link replays at most {LINK_MAX_STEPS} steps, so this one opens at step {LINK_MAX_STEPS} "
                     f"of {state.steps}.")
        st.caption(f"Copy it with the button at the right of the box. {what}")
