"""Per-browser-session state: each session has its own stepper and trace in ``st.session_state``.

Every page reads the same ``SessionTrace`` so that stepping on the home page is visible on the others. The model
itself is shared (``resources.py``); nothing here is shared between sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from kvviz.records import Trace

_KEY = "kvviz_session"


@dataclass
class SessionTrace:
    """What one browser session is stepping: its stepper, its trace and the settings that built them."""

    model_key: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    stepper: Any = None  # Stepper or CompareStepper
    trace: Trace | None = None

    def clear(self) -> None:
        self.stepper = None
        self.trace = None


def get_session() -> SessionTrace:
    if _KEY not in st.session_state:
        st.session_state[_KEY] = SessionTrace()
    return st.session_state[_KEY]
