"""Start a trace: build the stepper a front end asked for, prefill the prompt, and open the ``Trace`` it fills.

The CLI's ``step`` subcommand and the app's session both start here, so a trace says the same thing wherever it
was made: ``Trace.model`` is the model's name as its card gives it (what every figure's "measured on" line and the
Attention page print), with the device and dtype it ran on.

What it does not do: step further (callers call ``stepper.step()`` and ``trace.append``), keep the trace anywhere,
or know about Streamlit.
"""

from __future__ import annotations

from typing import Sequence

from kvviz.models import LoadedModel
from kvviz.records import Trace
from kvviz.stepper import CompareStepper, Sampling, Stepper


def new_trace(loaded: LoadedModel) -> Trace:
    """An empty trace that names what it is measured on."""
    return Trace(model=loaded.card.name, device=str(loaded.device), dtype=loaded.dtype_name)


def start_trace(loaded: LoadedModel, prompt: str | Sequence[int], *, compare: bool, sampling: Sampling,
                capture_attention: bool, record_kv: bool = False, max_new_tokens: int | None = None,
                chat_template: bool = False) -> tuple[Stepper | CompareStepper, Trace]:
    """A new stepper (cached, or cached and naive side by side with ``compare``) and its trace, holding the
    prefill's record; raises ``KvvizError`` on bad input before anything is kept."""
    options = dict(sampling=sampling, capture_attention=capture_attention, record_kv=record_kv,
                   max_new_tokens=max_new_tokens)
    stepper = CompareStepper(loaded, **options) if compare else Stepper(loaded, **options)
    record = stepper.prefill(prompt, chat_template=chat_template)
    trace = new_trace(loaded)
    trace.append(record)
    return stepper, trace
