"""Serving-page state: one serving scenario per browser session, stepped by buttons or by Play, and its callbacks.

Each session keeps its own ``ServingScenario`` (its own paged pool over the shared model's weights), so no session
sees or slows another's requests beyond sharing the machine. Buttons change the session in their callbacks; the
stepping area is a fragment that runs one scheduler step per rerun while Play is on, so Stop (or any click) is
seen between two steps. A ``KvvizError`` becomes the session's message, never a traceback.
What it does not do: compute serving records (``kvviz/serving``) or draw charts (``kvviz/charts/serving.py``).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import streamlit as st

from kvviz.charts.style import token_label
from kvviz.errors import InputError, KvvizError
from kvviz.models import LoadedModel
from kvviz.serving.accounting import default_pool_blocks
from kvviz.serving.block_size import block_size_sweep
from kvviz.serving.engine import ServingScenario, run_sequential
from kvviz.serving.prefix import compare_prefix
from kvviz.serving.records import (
    BlockSizePoint,
    PressureRun,
    PrefixComparison,
    PromptDesignRun,
    SequentialRun,
    ServingRequest,
)
from kvviz.serving.workload import demo_requests
from kvviz.stepper import encode_prompt

MessageLevel = Literal["info", "warning", "error"]
_SESSION_KEY = "kvviz_serving"
BLOCK_SIZES = (4, 8, 16, 32, 64, 128, 256)
VIEW_STEP_KEY = "serving_view_step"


@dataclass(frozen=True)
class ScenarioSettings:
    """What the scenario controls ask for; ``pool_blocks`` 0 means room for every request at full length."""

    model: str
    requests: int = 6
    new_tokens: int = 16
    block_size: int = 16
    arrive_every: int = 2
    pool_blocks: int = 0
    prefix_sharing: bool = True


@dataclass
class ServingSession:
    scenario: ServingScenario | None = None
    settings: ScenarioSettings | None = None
    playing: bool = False
    message: tuple[MessageLevel, str] | None = None
    sequential: SequentialRun | None = None
    prefix: PrefixComparison | None = None
    block_sweep: tuple[BlockSizePoint, ...] | None = None
    pressure: PressureRun | None = None
    design: PromptDesignRun | None = None
    prefix_texts: tuple[list[str], list[str]] = field(default_factory=lambda: ([], []))


def get_session() -> ServingSession:
    if _SESSION_KEY not in st.session_state:
        st.session_state[_SESSION_KEY] = ServingSession()
    return st.session_state[_SESSION_KEY]


def scenario_requests(loaded: LoadedModel, settings: ScenarioSettings) -> list[ServingRequest]:
    return demo_requests(loaded, settings.requests, settings.new_tokens, settings.arrive_every)


def _show_latest() -> None:
    """After a new step the step slider starts again at the latest step (it keeps a value the user chose only
    until the run moves on)."""
    st.session_state.pop(VIEW_STEP_KEY, None)


def _attempt(session: ServingSession, action: Callable[[], Any], new_steps: bool = False) -> Any:
    """Run ``action``; a ``KvvizError`` becomes the session's message. ``new_steps``: the action runs scheduler
    steps (called before the step slider is drawn), so the slider moves to the latest."""
    session.message = None
    if new_steps:
        _show_latest()
    try:
        return action()
    except KvvizError as error:
        session.message = ("error", str(error))
        session.playing = False
        return None


# ----- button callbacks -------------------------------------------------------------------------------------------

def on_start(loaded: LoadedModel, read_settings: Callable[[], ScenarioSettings]) -> None:
    """A new scenario from the controls as they are at click time; the first step runs at once."""
    session = get_session()
    session.playing = False
    settings = read_settings()

    def start() -> None:
        requests = scenario_requests(loaded, settings)
        blocks = settings.pool_blocks or default_pool_blocks([r.max_cache_tokens for r in requests],
                                                              settings.block_size)
        session.scenario = ServingScenario(loaded, requests, block_size=settings.block_size, num_blocks=blocks,
                                           prefix_sharing=settings.prefix_sharing)
        session.settings = settings
        session.sequential = None
        session.scenario.step()

    _attempt(session, start, new_steps=True)


def on_step() -> None:
    session = get_session()
    session.playing = False
    if session.scenario is None:
        session.message = ("warning", "Nothing to step yet: press Start first.")
        return
    if session.scenario.done:
        session.message = ("info", "Every request is done: press Start for a new run.")
        return
    _attempt(session, session.scenario.step, new_steps=True)


def on_play() -> None:
    session = get_session()
    if session.scenario is None or session.scenario.done:
        session.message = ("warning", "Nothing to play: press Start for a new run.")
        return
    session.message = None
    session.playing = True


def on_stop() -> None:
    session = get_session()
    if session.playing:
        session.message = ("info", "Stopped.")
    session.playing = False


def run_to_end(session: ServingSession) -> None:
    if session.scenario is not None:
        session.playing = False
        _attempt(session, session.scenario.run, new_steps=True)


def play_tick(session: ServingSession) -> None:
    """While Play is on: one more scheduler step; Play stops by itself when every request is done."""
    if not session.playing or session.scenario is None:
        return
    _attempt(session, session.scenario.step, new_steps=True)
    if session.scenario.done:
        session.playing = False


def compare_sequential(session: ServingSession, loaded: LoadedModel) -> None:
    """The same requests one at a time with the plain cached stepper (for tokens/s and the token check)."""
    if session.scenario is None:
        return
    session.sequential = _attempt(session, lambda: run_sequential(loaded, session.scenario.requests))


def sweep_block_sizes(session: ServingSession, loaded: LoadedModel, settings: ScenarioSettings) -> None:
    """The scenario's requests served once per block size (each with room for every request)."""
    session.block_sweep = _attempt(session, lambda: block_size_sweep(loaded, scenario_requests(loaded, settings)))


def run_prefix_comparison(session: ServingSession, loaded: LoadedModel, text_a: str, text_b: str,
                          block_size: int) -> None:
    """Prompt B after prompt A beside B alone (``compare_prefix``); keeps both prompts' token texts for the view."""
    if not text_a.strip() or not text_b.strip():
        raise InputError("Both prompts need some text.")
    ids_a, ids_b = encode_prompt(loaded, text_a), encode_prompt(loaded, text_b)
    session.prefix = compare_prefix(loaded, ids_a, ids_b, block_size=block_size)
    session.prefix_texts = ([loaded.tokenizer.decode([t]) for t in ids_a],
                            [loaded.tokenizer.decode([t]) for t in ids_b])


def settings_changed(session: ServingSession, settings: ScenarioSettings) -> bool:
    return session.settings is not None and session.settings != settings


# ----- prefix views -----------------------------------------------------------------------------------------------

def _token_spans(texts: Sequence[str], start: int, stop: int, divergence: int | None) -> str:
    spans = []
    for position in range(start, min(stop, len(texts))):
        shown = html.escape(token_label(texts[position]))
        style = "background:#D55E00;color:#fff;" if position == divergence else ""
        spans.append(f"<span title='token {position}' style='padding:0 1px;border-radius:3px;{style}'>{shown}</span>")
    return " ".join(spans)


def prefix_tokens_html(texts_a: Sequence[str], texts_b: Sequence[str], block_size: int, first_divergence: int | None,
                       reusable_blocks: int) -> str:
    """Both prompts side by side, one row per block: what B reused, where the two part, what B computed."""
    rows = []
    for block in range((max(len(texts_a), len(texts_b)) + block_size - 1) // block_size):
        start, stop = block * block_size, (block + 1) * block_size
        if block < reusable_blocks:
            status, colour = "reused", "#d9f2e6"
        elif stop > len(texts_b):
            status, colour = ("partial: never cached" if start < len(texts_b) else "—"), "#f2f2f2"
        elif first_divergence is not None and start <= first_divergence < stop:
            status, colour = "computed: the prompts part here", "#fbe3d6"
        else:
            status, colour = "computed", "#fbe3d6"
        rows.append(f"<tr style='background:{colour}'><td style='text-align:right;padding:2px 6px'>{block}</td>"
                    f"<td style='padding:2px 6px'>{_token_spans(texts_a, start, stop, first_divergence)}</td>"
                    f"<td style='padding:2px 6px'>{_token_spans(texts_b, start, stop, first_divergence)}</td>"
                    f"<td style='padding:2px 6px;white-space:nowrap'>{status}</td></tr>")
    head = ("<tr><th>block</th><th>prompt A</th><th>prompt B</th><th>B's block</th></tr>")
    return ("<div style='max-height:460px;overflow-y:auto;font-family:monospace;font-size:12px'>"
            f"<table style='border-collapse:collapse;width:100%'>{head}{''.join(rows)}</table></div>")


def show_message(session: ServingSession) -> None:
    if session.message is not None:
        level, text = session.message
        getattr(st, level)(text)
