"""Traces stepped on a real (tiny) model, and a browser session holding one as the Step through page leaves it."""

from __future__ import annotations

from kvviz.models import LoadedModel
from kvviz.records import Trace
from kvviz.stepper import CompareStepper, Sampling, Stepper
from kvviz.tracing import start_trace
from kvviz.ui.session import SessionTrace

SESSION_KEY = "kvviz_session"


def stepped_trace(loaded: LoadedModel, prompt: str, steps: int, *, compare: bool = False,
                  capture_attention: bool = True, record_kv: bool = False, max_new_tokens: int | None = None,
                  chat_template: bool = False) -> tuple[Stepper | CompareStepper, Trace]:
    """``prompt`` prefilled and ``steps`` greedy tokens stepped on ``loaded``: the stepper and its trace."""
    stepper, trace = start_trace(loaded, prompt, compare=compare, sampling=Sampling(),
                                 capture_attention=capture_attention, record_kv=record_kv,
                                 max_new_tokens=max_new_tokens, chat_template=chat_template)
    for _ in range(steps):
        trace.append(stepper.step())
    return stepper, trace


def stepped_session(loaded: LoadedModel, prompt: str, steps: int, *, capture_attention: bool,
                    max_new_tokens: int | None = None) -> SessionTrace:
    """A session whose trace is ``stepped_trace``'s."""
    stepper, trace = stepped_trace(loaded, prompt, steps, capture_attention=capture_attention,
                                   max_new_tokens=max_new_tokens)
    return SessionTrace(model_key=loaded.key, stepper=stepper, trace=trace)
