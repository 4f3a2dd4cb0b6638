"""Lessons 1 and 2: what a prefill puts in the cache, and what one decode step adds to it (and what it does not keep).

Every check reads the live records and the live cache tensors of the lesson's trace; the byte figures come from
``kvviz.live_check`` (the formula against the live tensors). What it does not do: draw, or step anything but the
lesson's own trace.
"""

from __future__ import annotations

import numpy as np

from kvviz.lessons.core import (
    Check,
    Lesson,
    LessonState,
    LessonStep,
    PageLink,
    Snapshot,
    bytes_sentence,
    check_new_prefill,
    layers_text,
    per_token_bytes,
    prefill,
    step,
)
from kvviz.live_check import check_record
from kvviz.stepper import DEFAULT_PROMPT, CompareStepper, Stepper

LONGER_PROMPT = DEFAULT_PROMPT + " Answer in one short sentence, then name one famous building in that city."
STEP_VIEW = PageLink("step_through", "See this cache on Step through", view="KV cache")


def cached_stepper(state: LessonState) -> Stepper | None:
    stepper = state.stepper
    return stepper.cached if isinstance(stepper, CompareStepper) else stepper


def new_records(state: LessonState, before: Snapshot) -> int:
    """Records added to the trace that was there when the step opened (0 when the trace was replaced)."""
    if state.trace is None or state.trace is not before.trace:
        return 0
    return len(state.trace.records) - before.records


# ----- lesson 1 --------------------------------------------------------------------------------------------------

def check_longer_prompt(state: LessonState, before: Snapshot) -> Check:
    result = check_new_prefill(state, before)
    if not result.passed:
        return result
    record = state.latest
    if record.cache_len <= before.cache_len:
        return Check(False, f"The cache holds {record.cache_len} positions, not more than the {before.cache_len} "
                            "of the shorter prompt: feed the longer prompt.")
    live = check_record(state.loaded, record, "the lesson's prefill")
    if not live.matches:
        return Check(False, live.sentence())
    return Check(True, f"The longer prompt is {record.cache_len} tokens, {record.cache_len - before.cache_len} more "
                       f"than before. The live K/V tensors hold "
                       f"{bytes_sentence(live.live_bytes, per_token_bytes(state.loaded), record.cache_len)} "
                       f"({live.formula}).")


def check_first_token_fed(state: LessonState, before: Snapshot) -> Check:
    if new_records(state, before) != 1:
        return Check(False, "No new step on this trace yet: press the button to feed one token.")
    prefill_record, record = state.trace.records[-2], state.latest
    if record.new_ids != (prefill_record.token_id,) or record.cache_len != before.cache_len + 1:
        return Check(False, "The step did not feed the token the prefill chose.")
    return Check(True, f"The step fed {record.new_texts[0]!r}, the token the prefill chose, and only now did its K "
                       f"and V enter the cache: {before.cache_len} → {record.cache_len} positions in every layer. "
                       f"It also chose the next token, {record.token_text!r}, which waits outside the cache in turn.")


LESSON_PREFILL = Lesson(
    key="prefill",
    title="What prefill puts in the cache",
    summary="Feed a prompt, count what every layer stores, and see that the first new token is not cached yet.",
    steps=(
        LessonStep(
            "Feed the prompt",
            "A **prefill** runs the whole prompt through the model in one call. In every layer each prompt token "
            "gets a key and a value vector per KV head, and the layer keeps them in its cache. The same call ends "
            "with the probabilities of the first new token.",
            "Prefill the prompt", lambda state: prefill(state, DEFAULT_PROMPT), check_new_prefill, STEP_VIEW),
        LessonStep(
            "Count the bytes",
            "Each cached position holds, in every layer, one key and one value vector per KV head. So the cache's "
            "size is a product: 2 × layers × KV heads × head dim × bytes per element × tokens. A longer prompt "
            "grows it by the same amount per token.",
            "Prefill a longer prompt", lambda state: prefill(state, LONGER_PROMPT), check_longer_prompt,
            PageLink("memory", "The formula for any model on Memory")),
        LessonStep(
            "The chosen token is not cached yet",
            "The prefill chose the first new token, but the cache holds only tokens that went through the model. "
            "That token's K and V are computed when the next step feeds it.",
            "Next token", lambda state: step(state), check_first_token_fed, STEP_VIEW),
    ),
)


# ----- lesson 2 --------------------------------------------------------------------------------------------------

def earlier_rows_unchanged(state: LessonState, positions: int) -> bool:
    """Whether every layer's live K and V for the first ``positions`` positions equal the rows recorded when those
    positions were appended (float16, as the records keep them): the cache only ever grows at its end."""
    stepper = cached_stepper(state)
    records = [r for r in state.trace.records if r.kv_rows]
    for layer, cache_layer in enumerate(stepper.cache.layers):
        recorded_k = np.concatenate([r.kv_rows[layer][0] for r in records], axis=1)[:, :positions]
        recorded_v = np.concatenate([r.kv_rows[layer][1] for r in records], axis=1)[:, :positions]
        live_k = cache_layer.keys[0, :, :positions].float().cpu().numpy().astype(np.float16)  # (kv_heads, T, hd)
        live_v = cache_layer.values[0, :, :positions].float().cpu().numpy().astype(np.float16)
        if recorded_k.shape[1] < positions or not (np.array_equal(live_k, recorded_k)
                                                   and np.array_equal(live_v, recorded_v)):
            return False
    return True


def check_one_column(state: LessonState, before: Snapshot) -> Check:
    if new_records(state, before) != 1:
        return Check(False, "No new step on this trace yet: press Next token.")
    record = state.latest
    appended = {layer.appended for layer in record.cache_layers}
    seen = {layer.positions_seen for layer in record.cache_layers}
    if seen != {before.cache_len + 1} or appended != {(before.cache_len, before.cache_len + 1)}:
        return Check(False, "The step did not add exactly one position to every layer.")
    if not earlier_rows_unchanged(state, before.cache_len):
        return Check(False, "Some earlier K/V rows changed: the cache should only grow at its end.")
    return Check(True, f"Every one of the {layers_text(len(record.cache_layers))} went from {before.cache_len} to "
                       f"{record.cache_len} positions: one new column at position {before.cache_len}. The "
                       f"{before.cache_len} columns before it still hold what was stored when they were appended "
                       "(compared at the float16 precision the records keep): nothing already cached is "
                       "recomputed or changed.")


def check_fresh_attention_row(state: LessonState, before: Snapshot) -> Check:
    if new_records(state, before) != 1 or not state.latest.attention:
        return Check(False, "No new step with attention weights yet: press Next token.")
    record = state.latest
    shapes = {row.shape for row in record.attention}
    expected = (state.loaded.card.query_heads, 1, record.cache_len)
    sums = np.concatenate([row.astype(np.float32).sum(axis=-1).ravel() for row in record.attention])
    live = check_record(state.loaded, record, "the lesson's step")
    if shapes != {expected} or not np.allclose(sums, 1.0, atol=1e-2) or not live.matches:
        return Check(False, "The new attention rows do not cover every cached position.")
    heads = state.loaded.card.query_heads
    return Check(True, f"This step computed {heads} fresh attention rows in each of "
                       f"{layers_text(len(record.attention))}, one per query head, each over all {record.cache_len} "
                       f"cached positions and summing to 1; the step before computed rows of {record.cache_len - 1}. "
                       f"None of them is stored: the cache still holds K and V only, {live.live_bytes:,} B, exactly "
                       "the formula's figure. The query is used once and dropped too.")


LESSON_ONE_STEP = Lesson(
    key="one-step",
    title="One step adds one column, and what is not cached",
    summary="A decode step appends one K/V position to every layer and computes one fresh attention row that is "
            "thrown away.",
    steps=(
        LessonStep(
            "Start a trace",
            "Feed the prompt once, so there is a cache to grow.",
            "Prefill the prompt", lambda state: prefill(state, DEFAULT_PROMPT), check_new_prefill, STEP_VIEW),
        LessonStep(
            "Add one token",
            "A **decode step** feeds one token. Each layer computes that token's query, key and value, appends the "
            "key and value to its cache (one new column), and reads every earlier key and value back instead of "
            "recomputing them.",
            "Next token", lambda state: step(state), check_one_column, STEP_VIEW),
        LessonStep(
            "What is not cached",
            "The cache keeps K and V only. The new token's **query** is compared with every cached key, giving one "
            "row of attention weights per head; the row weighs the cached values, and then query and row are "
            "dropped. The next step computes a new, longer row from scratch.",
            "Next token", lambda state: step(state), check_fresh_attention_row,
            PageLink("step_through", "The newest attention row on Step through", view="Attention")),
    ),
)
