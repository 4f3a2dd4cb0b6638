"""What a lesson is made of: steps with a text, one action on the live model, and a check of the state it leaves.

A ``Lesson`` is a short list of ``LessonStep``s. A step's ``action`` runs on the live model through the engine (a
prefill, a decode step, a full forward pass, a serving run) and changes a ``LessonState``; its ``check`` reads that
state against a ``Snapshot`` taken when the step opened and returns a ``Check``: whether the step's point now holds
and the sentence that says so with the live numbers. Comparing with the snapshot is what makes a check fail when
its action was skipped: a cache that did not grow, a result that was not produced during this step.

``LessonState`` holds plain things: the loaded model (shared, read-only), the stepper and trace the lesson built
(the same objects a front end can hand to its other pages) and named results of other engine runs. The helpers at
the end are the actions and checks several lessons share; they call the stepper, ``kvviz.tracing`` and the
formula modules, and compute nothing of their own.

What it does not do: draw, import Streamlit, keep anything between calls outside a ``LessonState``, or hold the
lessons themselves (``catalogue.py`` lists them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvviz.errors import InputError
from kvviz.kv_formula import format_bytes, kv_bytes_per_token, precision_of_torch_dtype
from kvviz.models import LoadedModel
from kvviz.records import StepRecord, Trace
from kvviz.stepper import CompareStepper, Sampling, Stepper, encode_prompt
from kvviz.tracing import start_trace

# Room a lesson's trace leaves for decode steps: the learner may step on the linked pages too.
LESSON_MAX_NEW_TOKENS = 256


@dataclass
class LessonState:
    """What one learner's lessons have built: a trace on the live model and the results of other engine runs."""

    loaded: LoadedModel
    stepper: Stepper | CompareStepper | None = None
    trace: Trace | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # what built the trace (prompt, chat_template, compare, …)
    results: dict[str, Any] = field(default_factory=dict)  # named outcomes of engine runs other than stepping

    @property
    def latest(self) -> StepRecord | None:
        return self.trace.records[-1] if self.trace is not None and self.trace.records else None


@dataclass(frozen=True)
class Snapshot:
    """The state as a step opened: its checks compare against this, so a skipped action cannot pass."""

    trace: Trace | None
    records: int
    cache_len: int
    results: dict[str, Any]


def snapshot(state: LessonState) -> Snapshot:
    latest = state.latest
    return Snapshot(trace=state.trace, records=len(state.trace.records) if state.trace is not None else 0,
                    cache_len=latest.cache_len if latest is not None else 0, results=dict(state.results))


@dataclass(frozen=True)
class Check:
    """A step's verdict on the live state and the sentence that states it (or what is still missing)."""

    passed: bool
    sentence: str


@dataclass(frozen=True)
class PageLink:
    """A page (the file name in ``app_pages/`` without ``.py``) and, optionally, the view inside it to open."""

    page: str
    label: str
    view: str | None = None  # a tab of that page, by its label
    focus: str | None = None  # a result in ``LessonState.results`` holding the (layer, head) to open the page on


@dataclass(frozen=True)
class LessonStep:
    title: str
    text: str  # a few sentences of Markdown
    action_label: str  # the button that runs ``action``
    action: Callable[[LessonState], None]
    check: Callable[[LessonState, Snapshot], Check]
    link: PageLink | None = None


@dataclass(frozen=True)
class Lesson:
    key: str
    title: str
    summary: str  # one sentence: what the learner will see
    steps: tuple[LessonStep, ...]
    needs_page: str | None = None  # a page this lesson uses that may not be built yet; the lesson is hidden without it
    # A lesson that runs on a model of its own instead of the learner's, e.g. for a cache layout the default lacks.
    model_note: str = ""


def run_step(step: LessonStep, state: LessonState) -> Check:
    """Snapshot, run the step's action, check: what a front end does when the learner presses the action button."""
    before = snapshot(state)
    step.action(state)
    return step.check(state, before)


# ----- shared actions --------------------------------------------------------------------------------------------

def prefill(state: LessonState, prompt: str, *, compare: bool = False, chat_template: bool = True) -> None:
    """Start a new trace on the lesson's model: the prompt in one call (the chat template when the model has one)."""
    chat = chat_template and state.loaded.chat_template_available
    stepper, trace = start_trace(state.loaded, prompt, compare=compare, sampling=Sampling(), capture_attention=True,
                                 record_kv=True, max_new_tokens=LESSON_MAX_NEW_TOKENS, chat_template=chat)
    state.stepper, state.trace = stepper, trace
    state.settings = {"prompt": prompt, "chat_template": chat, "compare": compare, "sampling": Sampling(),
                      "max_new_tokens": LESSON_MAX_NEW_TOKENS}


def step(state: LessonState, count: int = 1) -> None:
    """``count`` decode steps on the lesson's trace, each record appended as it comes."""
    if state.stepper is None or state.trace is None:
        raise InputError("Nothing to step yet: run the lesson's first step (the prefill) again.")
    for _ in range(count):
        state.trace.append(state.stepper.step())


def prompt_ids(state: LessonState) -> list[int]:
    """The token ids the lesson's current prompt encodes to, as its prefill fed them."""
    return encode_prompt(state.loaded, state.settings["prompt"], state.settings["chat_template"])


# ----- shared checks ---------------------------------------------------------------------------------------------

def layers_text(count: int) -> str:
    return f"{count} layer{'' if count == 1 else 's'}"


def check_new_prefill(state: LessonState, before: Snapshot, *, compare: bool = False) -> Check:
    """A trace started during this step, whose prefill put every prompt token in every layer's cache."""
    if state.trace is None or state.trace is before.trace or state.latest is None:
        return Check(False, "No new prefill yet: press the button to feed the prompt.")
    record = state.trace.records[0]
    ids = prompt_ids(state)
    held = {layer.positions_seen for layer in record.cache_layers}
    if record.kind != "prefill" or list(record.new_ids) != ids or held != {len(ids)}:
        return Check(False, f"The prefill did not store the {len(ids)} prompt tokens in every layer.")
    if compare and record.ms_naive is None:
        return Check(False, "This trace has no naive path beside it: run the prefill of this step.")
    return Check(True, f"The cache now holds {len(ids)} positions in each of {layers_text(len(record.cache_layers))}: "
                       f"all {len(ids)} prompt tokens went through the model in one call "
                       f"({record.tokens_processed} tokens processed), and every layer kept its K and V of each.")


def per_token_bytes(loaded: LoadedModel) -> int:
    """Bytes one more token adds to every layer's cache of ``loaded`` while no window is full (the formula)."""
    return kv_bytes_per_token(loaded.spec, precision_of_torch_dtype(loaded.dtype_name))


def bytes_sentence(measured: int, per_token: int, tokens: int) -> str:
    return (f"{format_bytes(measured)} ({measured:,} B) = {tokens} tokens × {per_token:,} B per token, "
            "as the formula says")
