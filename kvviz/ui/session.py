"""Per-browser-session state: each session has its own stepper and trace in ``st.session_state``.

Every page reads the same ``SessionTrace`` so that stepping on the home page is visible on the others. The model
itself is shared (``resources.py``); nothing here is shared between sessions. The functions below only call the
stepper and append its records; they compute nothing themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from kvviz.models import LoadedModel
from kvviz.records import StepRecord, Trace
from kvviz.stepper import CompareStepper, Sampling, Stepper

_KEY = "kvviz_session"


@dataclass
class SessionTrace:
    """What one browser session is stepping: its stepper, its trace and the settings that built them."""

    model_key: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    stepper: Stepper | CompareStepper | None = None
    trace: Trace | None = None

    def clear(self) -> None:
        self.stepper = None
        self.trace = None


def get_session() -> SessionTrace:
    if _KEY not in st.session_state:
        st.session_state[_KEY] = SessionTrace()
    return st.session_state[_KEY]


def prefill(session: SessionTrace, loaded: LoadedModel, prompt: str, *, chat_template: bool, compare: bool,
            sampling: Sampling, max_new_tokens: int, record_kv: bool = True) -> StepRecord:
    """Start a new trace: build this session's stepper and run the prefill (raises ``KvvizError`` on bad input)."""
    options = dict(sampling=sampling, capture_attention=True, record_kv=record_kv, max_new_tokens=max_new_tokens)
    stepper = CompareStepper(loaded, **options) if compare else Stepper(loaded, **options)
    record = stepper.prefill(prompt, chat_template=chat_template)
    session.model_key = loaded.key
    session.settings = dict(prompt=prompt, chat_template=chat_template, compare=compare, sampling=sampling,
                            max_new_tokens=max_new_tokens)
    session.stepper = stepper
    session.trace = Trace(model=loaded.card.name, device=str(loaded.device), dtype=loaded.dtype_name)
    session.trace.append(record)
    return record


def step(session: SessionTrace) -> StepRecord:
    """One more token on this session's trace (raises ``KvvizError`` when there is nothing to step)."""
    if session.stepper is None or session.trace is None:
        from kvviz.errors import InputError

        raise InputError("Nothing to step yet: press Prefill first.")
    record = session.stepper.step()
    session.trace.append(record)
    return record
