"""Cache-policies page state: one comparison run per browser session, advanced a few tokens per rerun.

The run (``kvviz.policies.quality.PolicyRun``) belongs to the session; the page's run area is a fragment that
advances it ``CHUNK`` positions per rerun (one call on the model's worker, in this browser session's turn) while it
is running, so Stop (or any click) lands between two chunks and
the views show what was scored so far. A ``KvvizError`` becomes the session's message, never a traceback.
What it does not do: compute scores (``kvviz/policies``) or draw (``kvviz/charts/policies.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import streamlit as st

from kvviz.errors import InputError, KvvizError
from kvviz.models import LoadedModel
from kvviz.policies.eviction import PolicySpec
from kvviz.policies.kivi import QuantisationErrors, quantisation_errors
from kvviz.policies.quality import SHIPPED_TEXT_NAME, PolicyRun, shipped_text, text_ids
from kvviz.policies.quantised import QUANTISED_NAMES, check_backend
from kvviz.ui.server import run_on_model, server_settings
from kvviz.ui.session import get_session as get_step_session

MessageLevel = Literal["info", "warning", "error"]
_SESSION_KEY = "kvviz_policies"
CHUNK = 4  # positions per rerun while running: each shows progress and lets a Stop in


@dataclass(frozen=True)
class LabSettings:
    model: str
    policies: tuple[str, ...] = ("window", "sinks")
    budgets: tuple[int, ...] = (64,)
    sinks: int = 4
    tokens: int = 384
    prompt_tokens: int = 16
    watch_layer: int = 0
    watch_head: int = 0
    backend: str = "hqq"

    def specs(self) -> list[PolicySpec]:
        """The full cache first (the reference, always shown), then one spec per evicting policy and budget and one
        per quantised cache."""
        specs = [PolicySpec("full", max(self.budgets, default=self.sinks + 1), sinks=self.sinks)]
        for name in self.policies:
            if name == "full":
                continue
            if name in QUANTISED_NAMES:
                specs.append(PolicySpec(name, max(self.budgets, default=self.sinks + 1), sinks=self.sinks,
                                        backend=self.backend))
            else:
                specs.extend(PolicySpec(name, budget, sinks=self.sinks) for budget in self.budgets)
        return specs


@dataclass
class LabSession:
    run: PolicyRun | None = None
    settings: LabSettings | None = None
    running: bool = False
    message: tuple[MessageLevel, str] | None = None
    kivi: QuantisationErrors | None = None


def get_session() -> LabSession:
    if _SESSION_KEY not in st.session_state:
        st.session_state[_SESSION_KEY] = LabSession()
    return st.session_state[_SESSION_KEY]


def start_run(session: LabSession, loaded: LoadedModel, settings: LabSettings) -> None:
    """A new run with ``settings`` (not advanced yet); a bad choice becomes the session's message."""
    session.running, session.kivi = False, None
    try:
        if not settings.policies:
            raise InputError("Choose at least one policy.")
        if not settings.budgets and any(name not in QUANTISED_NAMES + ("full",) for name in settings.policies):
            raise InputError("Choose at least one budget for the evicting policies.")
        limits = server_settings()
        if limits.enabled and settings.tokens > limits.max_context:
            raise InputError(f"This server allows comparisons over at most {limits.max_context:,} tokens of text "
                             f"(asked for {settings.tokens:,}): lower the tokens of the text.")
        specs = settings.specs()
        for spec in specs:
            spec.validate()
            check_backend(spec.name, spec.backend)
        ids = text_ids(loaded, shipped_text(), settings.tokens)
        run = PolicyRun(loaded, ids, specs, settings.prompt_tokens, SHIPPED_TEXT_NAME,
                        watch=(settings.watch_layer, settings.watch_head))
    except KvvizError as error:
        session.message = ("error", str(error))
        return
    session.run, session.settings, session.running, session.message = run, settings, True, None


def on_run(loaded: LoadedModel, read_settings: Callable[[], LabSettings]) -> None:
    start_run(get_session(), loaded, read_settings())


def on_stop() -> None:
    stop(get_session())


def stop(session: LabSession) -> None:
    """End a running comparison between two chunks; what was scored so far stays."""
    if session.running and session.run is not None:
        run = session.run
        session.message = ("info", f"Stopped after {run.tokens_read:,} of {len(run.ids):,} tokens: the views show "
                                   "the tokens scored so far.")
    session.running = False


def tick(session: LabSession) -> None:
    """While running: ``CHUNK`` more positions; at the end, the quantisation errors of the watched layer."""
    if not session.running or session.run is None:
        return
    run = session.run
    try:
        # One chunk per turn on the model's worker: other sessions' steps interleave with a long comparison.
        run_on_model(run.loaded, get_step_session().id, lambda: run.advance(CHUNK), "policies")
    except KvvizError as error:
        session.running, session.message = False, ("error", str(error))
        return
    if session.run.finished:
        session.running = False
        measure_kivi(session)


def measure_kivi(session: LabSession, bits: int = 2) -> None:
    """The watched layer's keys and values from the run's full cache, rounded per channel and per token."""
    run = session.run
    if run is None or run.watch is None:
        return
    layer = run.reference.cache.layers[run.watch[0]]
    if not getattr(layer, "is_initialized", False):
        return
    try:
        session.kivi = quantisation_errors(layer.keys, layer.values, run.watch[0], bits)
    except KvvizError as error:
        session.message = ("error", str(error))

