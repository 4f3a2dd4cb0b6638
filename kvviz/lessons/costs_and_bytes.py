"""Lessons 3 and 4: the cost of a step, cached against naive, and why decode is memory-bound; the byte formula and GQA.

Token counts, FLOPs and bytes come from the live records, ``kvviz.costs`` / ``kvviz.kv_formula`` (the FLOP count
each record carries, the attention FLOPs per layer), ``kvviz.roofline.step_bytes`` (bytes a call must move) and
``kvviz.live_check`` (the formula against the live tensors). Timings are measured and shown, never checked: they
depend on the machine. What it does not do: draw, or time anything itself.
"""

from __future__ import annotations

from kvviz.kv_formula import (
    attention_flops,
    format_bytes,
    formula_text,
    kv_cache_bytes,
    precision_of_torch_dtype,
)
from kvviz.lessons.core import (
    Check,
    Lesson,
    LessonState,
    LessonStep,
    PageLink,
    Snapshot,
    check_new_prefill,
    per_token_bytes,
    prefill,
    step,
)
from kvviz.lessons.prefill_and_decode import new_records
from kvviz.live_check import check_record
from kvviz.records import StepRecord
from kvviz.roofline import step_bytes, weight_bytes_read
from kvviz.stepper import DEFAULT_PROMPT

STEPS_PER_ACTION = 8
COST_VIEW = PageLink("step_through", "The cost panel on Step through", view="Cost per step")


# ----- lesson 3 --------------------------------------------------------------------------------------------------

def check_compared_steps(state: LessonState, before: Snapshot) -> Check:
    added = new_records(state, before)
    if added != STEPS_PER_ACTION:
        return Check(False, f"{added} of {STEPS_PER_ACTION} new steps on this trace: press the button.")
    records = state.trace.records[-added:]
    if any(r.ms_naive is None for r in records):
        return Check(False, "These steps ran without the naive path beside them: restart at the lesson's first step.")
    if any(r.tokens_processed != 1 or r.naive_tokens_processed != r.sequence_length for r in records):
        return Check(False, "A cached step processed more than its one new token.")
    latest = records[-1]
    same = sum(bool(r.same_token) for r in records)
    worst = max(r.max_logit_diff for r in records)
    return Check(True, f"Each of the {added} cached steps fed 1 token; the naive call fed the whole context every "
                       f"time, {records[0].sequence_length} tokens at the first of them and {latest.sequence_length} "
                       f"at the last. Both chose the same token {same} times out of {added} (largest logit "
                       f"difference {worst:.1e}). Measured at the last step: cached {latest.ms:,.1f} ms, naive "
                       f"{latest.ms_naive:,.1f} ms.")


def check_flops_growth(state: LessonState, before: Snapshot) -> Check:
    added = new_records(state, before)
    if added != STEPS_PER_ACTION:
        return Check(False, f"{added} of {STEPS_PER_ACTION} new steps on this trace: press the button.")
    first, last = state.trace.records[-added], state.trace.records[-1]
    spec = state.loaded.spec
    attention_growth = attention_flops(spec, 1, last.sequence_length) - attention_flops(spec, 1, first.sequence_length)
    if last.flops - first.flops != attention_growth or attention_growth <= 0:
        return Check(False, "The cached step's arithmetic did not grow by attention's part alone.")
    share = attention_flops(spec, 1, last.sequence_length) / last.flops
    return Check(True, f"From {first.sequence_length} to {last.sequence_length} tokens of context the cached step's "
                       f"estimated arithmetic grew from {first.flops / 1e6:,.2f} to {last.flops / 1e6:,.2f} MFLOP: "
                       f"{attention_growth:,.0f} FLOPs more, all of it attention over the longer cache (now "
                       f"{share:.1%} of the step). Projections and MLP cost the same every step. The naive call "
                       f"redoes them for all {last.sequence_length} tokens.")


def intensity(record: StepRecord, state: LessonState) -> tuple[float, float]:
    """(FLOPs, bytes that must move) of one cached call, by the roofline's estimate."""
    precision = precision_of_torch_dtype(state.loaded.dtype_name)
    moved = step_bytes(weight_bytes_read(state.loaded.model), state.loaded.spec, precision, record.sequence_length,
                       record.tokens_processed)
    return record.flops, moved


def check_memory_bound(state: LessonState, before: Snapshot) -> Check:
    if new_records(state, before) != 1:
        return Check(False, "No new step on this trace yet: press Next token.")
    prefill_flops, prefill_bytes = intensity(state.trace.records[0], state)
    step_flops, step_bytes_moved = intensity(state.latest, state)
    prefill_ratio, step_ratio = prefill_flops / prefill_bytes, step_flops / step_bytes_moved
    if not step_ratio < prefill_ratio:
        return Check(False, "The step did more arithmetic per byte than the prefill.")
    prompt = state.trace.prompt_tokens
    return Check(True, f"The prefill did {prefill_flops / 1e9:,.2f} GFLOP while moving at least "
                       f"{format_bytes(prefill_bytes)}: {prefill_ratio:,.1f} FLOPs per byte, because each weight it "
                       f"read served {prompt} tokens. This decode step did {step_flops / 1e6:,.1f} MFLOP for "
                       f"{format_bytes(step_bytes_moved)} (every weight and the whole cache, for one token): "
                       f"{step_ratio:,.2f} FLOPs per byte. Processors can do several times more arithmetic per byte "
                       "they read from memory than that, so a decode step waits on memory: it is memory-bound.")


LESSON_COST = Lesson(
    key="cost",
    title="Cost per step: cached against naive",
    summary="Step with the naive recompute beside the cache, see what each call processes, where the arithmetic "
            "grows, and why a decode step is memory-bound.",
    steps=(
        LessonStep(
            "Prefill with a naive path beside it",
            "This trace runs every call twice: once with the cache, once **naive**, feeding the whole sequence "
            "with no cache at all, as if caches did not exist.",
            "Prefill, cached and naive", lambda state: prefill(state, DEFAULT_PROMPT, compare=True),
            lambda state, before: check_new_prefill(state, before, compare=True), COST_VIEW),
        LessonStep(
            "Step both paths",
            "Each cached step feeds one token; the naive call feeds all of them again. Both must choose the same "
            "tokens: the cache saves work, it does not change the result.",
            f"Step {STEPS_PER_ACTION} tokens", lambda state: step(state, STEPS_PER_ACTION), check_compared_steps,
            COST_VIEW),
        LessonStep(
            "Where a cached step's work grows",
            "A cached step still reads every cached key and value: attention's arithmetic grows with the "
            "context, while the projections and the MLP cost the same for every token.",
            f"Step {STEPS_PER_ACTION} more", lambda state: step(state, STEPS_PER_ACTION), check_flops_growth,
            COST_VIEW),
        LessonStep(
            "Why decode is memory-bound",
            "Divide a call's arithmetic by the bytes it must move. A prefill uses each weight it reads for every "
            "prompt token; a decode step reads every weight and the whole cache to produce one token.",
            "Next token", lambda state: step(state), check_memory_bound,
            PageLink("speed", "Measured speed and the roofline on Speed")),
    ),
)


# ----- lesson 4 --------------------------------------------------------------------------------------------------

def check_live_bytes(state: LessonState, before: Snapshot) -> Check:
    result = check_new_prefill(state, before)
    if not result.passed:
        return result
    live = check_record(state.loaded, state.latest, "the lesson's prefill")
    if not live.matches:
        return Check(False, live.sentence())
    return Check(True, live.sentence())


def check_bytes_per_token(state: LessonState, before: Snapshot) -> Check:
    if new_records(state, before) != 1:
        return Check(False, "No new step on this trace yet: press Next token.")
    earlier, record = state.trace.records[-2], state.latest
    precision = precision_of_torch_dtype(state.loaded.dtype_name)
    grew = record.cache_bytes - earlier.cache_bytes
    formula = (kv_cache_bytes(state.loaded.spec, record.cache_len, 1, precision, between_calls=True)
               - kv_cache_bytes(state.loaded.spec, earlier.cache_len, 1, precision, between_calls=True))
    if grew != formula:
        return Check(False, f"The cache grew by {grew:,} B; the formula says {formula:,} B.")
    return Check(True, f"One token added {grew:,} B to the live cache: "
                       f"{formula_text(state.loaded.spec, precision)} = {per_token_bytes(state.loaded):,} B per "
                       "token, exactly.")


def check_grouped_heads(state: LessonState, before: Snapshot) -> Check:
    if new_records(state, before) != 1 or not state.latest.attention:
        return Check(False, "No new step with attention weights yet: press Next token.")
    record = state.latest
    card = state.loaded.card
    cached_heads = {layer.shape[1] for layer in record.cache_layers}
    row_heads = {row.shape[0] for row in record.attention}
    if cached_heads != {card.kv_heads} or row_heads != {card.query_heads}:
        return Check(False, "The cache's heads or the attention's heads are not the model's.")
    precision = precision_of_torch_dtype(state.loaded.dtype_name)
    unshared = kv_cache_bytes(state.loaded.spec.without_sharing(), record.cache_len, 1, precision, between_calls=True)
    group = card.query_heads // card.kv_heads
    if group == 1:
        return Check(True, f"The cache holds {card.kv_heads} K/V heads per layer and this step's attention has "
                           f"{card.query_heads} rows per layer: one KV head per query head (multi-head attention), "
                           f"so nothing is shared and the cache is {format_bytes(record.cache_bytes)}.")
    return Check(True, f"The cache holds {card.kv_heads} K/V heads per layer, yet this step computed "
                       f"{card.query_heads} attention rows per layer: each KV head serves {group} query heads "
                       f"(grouped-query attention). With one KV head per query head these {record.cache_len} "
                       f"tokens would need {format_bytes(unshared)} instead of {format_bytes(record.cache_bytes)}, "
                       f"{group}× more. The attention arithmetic is the same either way: it counts query heads.")


LESSON_BYTES = Lesson(
    key="bytes",
    title="The byte formula and grouped-query attention",
    summary="Check the cache's bytes against 2 × layers × KV heads × head dim × bytes per element × tokens, and "
            "see what sharing KV heads saves.",
    steps=(
        LessonStep(
            "Measure the live cache",
            "The cache is a list of tensors, one K and one V per layer, each of shape [batch, KV heads, tokens, "
            "head dim]. Their bytes can be read directly and set beside the formula.",
            "Prefill the prompt", lambda state: prefill(state, DEFAULT_PROMPT), check_live_bytes,
            PageLink("memory", "The live check on Memory")),
        LessonStep(
            "One token's worth",
            "Every new token adds one key and one value vector per KV head in every layer, so the cache grows by "
            "the same number of bytes each step.",
            "Next token", lambda state: step(state), check_bytes_per_token,
            PageLink("step_through", "Bytes per layer on Step through", view="KV cache")),
        LessonStep(
            "Grouped-query attention",
            "Many models give several query heads one shared key/value head (GQA; MQA shares one across all). The "
            "cache stores only the shared heads; every query head still computes its own attention row.",
            "Next token", lambda state: step(state), check_grouped_heads,
            PageLink("memory", "GQA, MQA and MLA for public models on Memory")),
    ),
)
