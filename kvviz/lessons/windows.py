"""Lesson 8: sliding windows. The cache of a layer that attends over the last W tokens stops growing.

The built-in models have no window, so this lesson runs on a model of its own: a two-layer Mistral-style model
with random weights and a window of ``WINDOW`` tokens, built from a config in code (no download; its text is
meaningless, its cache layout is what matters). Checks read its live records and ``kvviz.live_check`` (the formula
caps each sliding layer at its window). What it does not do: hand this model's trace to the other pages, which
show the learner's own model.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import MistralConfig

from kvviz.errors import InputError
from kvviz.lessons.core import (
    Check,
    Lesson,
    LessonState,
    LessonStep,
    PageLink,
    Snapshot,
    layers_text,
)
from kvviz.live_check import check_record
from kvviz.models import LoadedModel, load_random_model
from kvviz.records import Trace
from kvviz.stepper import Sampling, Stepper
from kvviz.tracing import start_trace

WINDOW = 8
PROMPT = "A window caps what each layer keeps."
STEPS = 4
MODEL = "window model"
TRACE = "window trace"


@dataclass(frozen=True)
class WindowRun:
    """The window model's stepper and trace, and how many records the trace had when this object was made: each
    action stores a new one, so a check can tell what its step added."""

    stepper: Stepper
    trace: Trace
    records: int


def window_model() -> LoadedModel:
    """A tiny random Mistral-style model whose every layer slides over the last ``WINDOW`` tokens."""
    config = MistralConfig(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=8, sliding_window=WINDOW,
                           max_position_embeddings=512)
    return load_random_model(config, f"tiny-mistral-window-{WINDOW}")


def start(state: LessonState) -> None:
    loaded = state.results.get(MODEL) or window_model()
    state.results[MODEL] = loaded
    stepper, trace = start_trace(loaded, PROMPT, compare=False, sampling=Sampling(), capture_attention=True,
                                 max_new_tokens=64)
    state.results[TRACE] = WindowRun(stepper, trace, len(trace.records))


def step(state: LessonState, count: int) -> None:
    if TRACE not in state.results:
        raise InputError("Run the lesson's first step (the prefill) again.")
    run = state.results[TRACE]
    for _ in range(count):
        run.trace.append(run.stepper.step())
    state.results[TRACE] = WindowRun(run.stepper, run.trace, len(run.trace.records))


def window_trace(state: LessonState) -> Trace | None:
    run = state.results.get(TRACE)
    return run.trace if run is not None else None


def records_added(state: LessonState, before: Snapshot) -> int:
    """Records this step added to the window trace that was there when it opened (0 for a new trace)."""
    run, earlier = state.results.get(TRACE), before.results.get(TRACE)
    if run is None or earlier is None or earlier.trace is not run.trace:
        return 0
    return len(run.trace.records) - earlier.records


def check_capped_prefill(state: LessonState, before: Snapshot) -> Check:
    run = state.results.get(TRACE)
    earlier = before.results.get(TRACE)
    if run is None or (earlier is not None and earlier.trace is run.trace):
        return Check(False, "No prefill on the window model yet: press the button.")
    record = run.trace.records[0]
    stored = {layer.stored for layer in record.cache_layers}
    live = check_record(state.results[MODEL], record, "the lesson's prefill")
    if {layer.positions_seen for layer in record.cache_layers} != {len(record.new_ids)} or \
            stored != {WINDOW - 1} or not live.matches:
        return Check(False, "The window model's layers do not hold their window.")
    return Check(True, f"{len(record.new_ids)} prompt tokens went through each of "
                       f"{layers_text(len(record.cache_layers))}, but each keeps only {WINDOW - 1}: between two calls "
                       f"transformers holds window − 1 = {WINDOW - 1} positions, because the next token completes "
                       f"the window of {WINDOW}. {live.sentence()}")


def check_flat_cache(state: LessonState, before: Snapshot) -> Check:
    if records_added(state, before) != STEPS:
        return Check(False, f"No {STEPS} new steps on the window model yet: press the button.")
    trace = window_trace(state)
    earlier, record = trace.records[-STEPS - 1], trace.records[-1]
    if record.cache_len != earlier.cache_len + STEPS or record.cache_bytes != earlier.cache_bytes or \
            {layer.stored for layer in record.cache_layers} != {WINDOW - 1}:
        return Check(False, "The window model's cache did not stay at its window.")
    return Check(True, f"{STEPS} more tokens went through the cache ({earlier.cache_len} → {record.cache_len} "
                       f"positions seen), yet it still holds {WINDOW - 1} per layer and "
                       f"{record.cache_bytes:,} B in all: each step drops the oldest position as it adds one.")


def check_window_rows(state: LessonState, before: Snapshot) -> Check:
    if records_added(state, before) != 1:
        return Check(False, "No new step on the window model yet: press Next token.")
    record = window_trace(state).records[-1]
    if not record.attention or {row.shape[-1] for row in record.attention} != {WINDOW}:
        return Check(False, "The new attention rows do not span the window.")
    return Check(True, f"This step's attention rows have {WINDOW} entries although the context is "
                       f"{record.sequence_length} tokens: the {WINDOW - 1} cached keys and the new token's own. "
                       "Memory and attention work per step stay flat however long the text gets; what lies "
                       "further back is reachable only through what the layers carried forward.")


LESSON_WINDOWS = Lesson(
    key="windows",
    title="Sliding windows",
    summary="On a model whose layers attend over the last 8 tokens only, watch the cache stop growing.",
    model_note=f"This lesson runs on a tiny Mistral-style model with random weights and a sliding window of "
               f"{WINDOW} tokens, built here without a download: its text is meaningless, its cache is real.",
    steps=(
        LessonStep(
            "Prefill a model with a window",
            f"In a **sliding-window** layer each token attends only to the last {WINDOW} tokens, itself included, "
            "so older keys and values are never read again and need not be kept.",
            "Prefill the window model", start, check_capped_prefill,
            PageLink("memory", "Sliding windows for public models on Memory")),
        LessonStep(
            "Keep stepping",
            "A full-attention cache grows by one position per token. A sliding layer's cache, once its window is "
            "full, stays the same size.",
            f"Step {STEPS} tokens", lambda state: step(state, STEPS), check_flat_cache),
        LessonStep(
            "What a step attends to",
            "The new query is compared with the keys the layer still holds and its own key.",
            "Next token", lambda state: step(state, 1), check_window_rows),
    ),
)
