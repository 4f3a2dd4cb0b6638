"""Per-browser-session state: each session has its own stepper and trace in ``st.session_state``.

Every page reads the same ``SessionTrace`` so that stepping on the home page is visible on the others. The model
itself is shared (``resources.py``); nothing here is shared between sessions. The functions below only call the
stepper and append its records; they compute nothing themselves. The ``on_*`` functions are button callbacks:
they turn a ``KvvizError`` into a message kept on the session for the page to show, so a bad click never
breaks the page.

Every model call goes through the model's worker (``kvviz.ui.server.run_on_model``): the calls of all sessions
queue there and run one at a time, round-robin by session. In server mode the session's new tokens and context are
capped, and the registry of sessions sees it act (an idle session's trace is freed). A step that runs out of memory
resets only this session, with a message.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import streamlit as st
import torch

from kvviz.errors import InputError, KvvizError
from kvviz.models import LoadedModel
from kvviz.records import StepRecord, Trace
from kvviz.server.sessions import trace_bytes
from kvviz.stepper import CompareStepper, Sampling, Stepper, encode_prompt
from kvviz.tracing import start_trace
from kvviz.trace_analysis import memo_of
from kvviz.ui.server import RESTARTED, reconnected_without_session, run_on_model, server_settings, session_registry

_KEY = "kvviz_session"
# Attention rows a session keeps (float16; SmolLM2 holds 540·T bytes per step, so ~1,000 tokens fill this). Past it,
# steps go on without capturing attention, so many open tabs cannot exhaust the server's memory.
ATTENTION_BUDGET_BYTES = 256 * 2**20
ATTENTION_BUDGET_TEXT = f"{ATTENTION_BUDGET_BYTES // 2**20} MiB"

MessageLevel = Literal["error", "warning", "info"]


@dataclass
class SessionTrace:
    """What one browser session is stepping: its stepper, its trace and the settings that built them."""

    model_key: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    stepper: Stepper | CompareStepper | None = None
    trace: Trace | None = None
    play_remaining: int = 0  # tokens Play still has to generate; 0 when not playing
    message: tuple[MessageLevel, str] | None = None  # the outcome of the last action, shown until the next one
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # this session's turn in the model workers' queues

    def clear(self) -> None:
        self.stepper = None
        self.trace = None
        self.play_remaining = 0

    # ----- what the server's registry asks of a session -------------------------------------------------------------
    def held_bytes(self) -> int:
        return trace_bytes(self.trace)

    def usage(self) -> tuple[str, int]:
        tokens = self.trace.records[-1].sequence_length if self.trace is not None and self.trace.records else 0
        return self.model_key, tokens

    def free(self, reason: str) -> bool:
        if not self.started:
            return False
        self.clear()
        self.message = ("info", reason)
        return True

    def attention_trace(self) -> Trace | None:
        """The part of the trace that carries attention rows (the whole trace unless capture stopped at the
        budget); the same object on every call while the trace's captured part stays the same."""
        if self.trace is None:
            return None
        captured = self.trace.with_attention()
        if captured is self.trace:
            return captured
        # Once capture has stopped it stays off for this trace, so its captured part no longer changes: one object
        # for it, remembered with the trace, so that the memos kept with that part hold from render to render.
        return memo_of(self.trace).get(("captured part", len(captured.records)), lambda: captured)

    def capture_stopped_at(self) -> int | None:
        """Tokens in the context when attention capture stopped at the budget; None while it has not."""
        captured = self.attention_trace()
        if captured is None or captured is self.trace or not captured.records:
            return None
        return captured.records[-1].sequence_length

    @property
    def started(self) -> bool:
        return self.stepper is not None and self.trace is not None


def get_session() -> SessionTrace:
    """This browser session's state; it also tells the server's registry that the session is active and, in server
    mode, frees the traces of sessions idle past the limit."""
    if _KEY not in st.session_state:
        st.session_state[_KEY] = SessionTrace(message=("info", RESTARTED) if reconnected_without_session() else None)
    session: SessionTrace = st.session_state[_KEY]
    registry = session_registry()
    registry.touch(session.id, session)
    settings = server_settings()
    if settings.enabled:
        registry.sweep(settings.idle_seconds)
    return session


def prefill(session: SessionTrace, loaded: LoadedModel, prompt: str, *, chat_template: bool, compare: bool,
            sampling: Sampling, max_new_tokens: int, record_kv: bool = True) -> StepRecord:
    """Start a new trace: build this session's stepper and run the prefill (raises ``KvvizError`` on bad input).

    In server mode the new tokens are cut to the server's cap (the cut is noted in the session's message)."""
    limits = server_settings()
    limits.check_model(loaded.key)
    if limits.enabled:  # before the model runs: a pasted book must not cost the class a long prefill
        limits.check_context(len(encode_prompt(loaded, prompt, chat_template)))
    max_new_tokens, cut = limits.new_tokens_cap(max_new_tokens)
    stepper, trace = run_on_model(
        loaded, session.id, lambda: start_trace(loaded, prompt, compare=compare, sampling=sampling,
                                                capture_attention=True, record_kv=record_kv,
                                                max_new_tokens=max_new_tokens, chat_template=chat_template),
        "prefill")
    session.model_key = loaded.key
    session.settings = dict(prompt=prompt, chat_template=chat_template, compare=compare, sampling=sampling,
                            max_new_tokens=max_new_tokens)
    session.stepper, session.trace = stepper, trace
    if cut:  # after any message already there (the page may have just said that the session is new)
        session.message = ("info", cut) if session.message is None else (session.message[0],
                                                                         f"{session.message[1]} {cut}")
    return trace.records[-1]


def step(session: SessionTrace) -> StepRecord:
    """One more token on this session's trace (raises ``KvvizError`` when there is nothing to step)."""
    if session.stepper is None or session.trace is None:
        raise InputError("Nothing to step yet: press Prefill first.")
    cached = session.stepper.cached if isinstance(session.stepper, CompareStepper) else session.stepper
    if cached.capture_attention and session.trace.attention_bytes() >= ATTENTION_BUDGET_BYTES:
        cached.capture_attention = False
    server_settings().check_context(session.trace.records[-1].sequence_length + 1)
    record = run_on_model(cached.loaded, session.id, session.stepper.step, "step")
    session.trace.append(record)
    return record


def settings_changed(session: SessionTrace, loaded: LoadedModel, **settings: Any) -> bool:
    """Whether the sidebar now asks for something other than what built the current trace (max tokens aside)."""
    if not session.started:
        return False
    built = {key: value for key, value in session.settings.items() if key != "max_new_tokens"}
    wanted = {key: value for key, value in settings.items() if key != "max_new_tokens"}
    return session.model_key != loaded.key or built != wanted


def apply_max_new_tokens(session: SessionTrace, max_new_tokens: int) -> None:
    """Let a running trace go on to a new limit without a new prefill (the limit is only checked per step); in
    server mode, never past the server's cap."""
    max_new_tokens, _ = server_settings().new_tokens_cap(max_new_tokens)
    if session.stepper is None or max_new_tokens < 1 or session.settings.get("max_new_tokens") == max_new_tokens:
        return
    steppers = ((session.stepper.cached, session.stepper.naive) if isinstance(session.stepper, CompareStepper)
                else (session.stepper,))
    for stepper in steppers:
        stepper.max_new_tokens = max_new_tokens
    session.settings["max_new_tokens"] = max_new_tokens


# ----- button callbacks -----------------------------------------------------------------------------------------------

def _eos_note(record: StepRecord) -> tuple[MessageLevel, str] | None:
    if not record.is_eos:
        return None
    return ("info", f"The model produced its end-of-sequence token {record.token_text!r}: its answer is complete. "
                    "Next token keeps stepping past it anyway.")


OUT_OF_MEMORY = ("The server ran out of memory during this step, so this session was reset to free its cache (the "
                 "other sessions go on). Try a shorter prompt or fewer tokens, or try again when the server is "
                 "less busy.")


def _attempt(session: SessionTrace, action: Callable[[], StepRecord | None], level: MessageLevel) -> StepRecord | None:
    """Run ``action``; a ``KvvizError`` becomes the session's message (and stops Play) instead of a traceback, and
    running out of memory resets the session with a message."""
    session.message = None
    try:
        record = action()
    except KvvizError as error:
        session.message = (level, str(error))
        session.play_remaining = 0
        return None
    except (MemoryError, torch.OutOfMemoryError):
        session.clear()
        session.message = ("error", OUT_OF_MEMORY)
        return None
    if record is not None and session.message is None:
        session.message = _eos_note(record)
    return record


def on_prefill(loaded: LoadedModel, read_settings: Callable[[], dict[str, Any]]) -> None:
    """Prefill with the settings ``read_settings`` returns at click time (prompt, chat_template, compare, ...)."""
    session = get_session()
    session.play_remaining = 0
    settings = read_settings()
    _attempt(session, lambda: prefill(session, loaded, **settings), "error")


def on_next() -> None:
    session = get_session()
    session.play_remaining = 0
    _attempt(session, lambda: step(session), "warning")


def on_play(read_tokens: Callable[[], int]) -> None:
    """Start Play for the number of tokens ``read_tokens`` returns at click time."""
    session = get_session()
    if not session.started:
        session.message = ("warning", "Nothing to play yet: press Prefill first.")
        return
    session.message = None
    session.play_remaining = max(int(read_tokens()), 0)


def on_stop() -> None:
    session = get_session()
    if session.play_remaining:
        session.message = ("info", "Stopped.")
    session.play_remaining = 0


def on_reset() -> None:
    session = get_session()
    session.clear()
    session.message = None


def play_tick(session: SessionTrace) -> StepRecord | None:
    """While Play is on: one more step. Play stops by itself at the token limit and at end-of-sequence."""
    if session.play_remaining <= 0:
        return None
    session.play_remaining -= 1
    record = _attempt(session, lambda: step(session), "warning")
    if record is not None and record.is_eos:
        session.play_remaining = 0
    return record
