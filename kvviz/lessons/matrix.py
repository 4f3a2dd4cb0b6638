"""Lesson 5: the attention matrix is the cached rows stacked; attention sinks and induction heads.

The checks read the trace's attention rows through ``kvviz.attention_matrix`` (stacking, the comparison with one
full forward pass) and ``kvviz.heads`` (head scores, the induction probe); what they report depends on the model,
so they check that each result was computed on the live trace during the step, never a score's value. What it
does not do: draw or store anything beyond the lesson's state.
"""

from __future__ import annotations

import numpy as np

from kvviz import heads
from kvviz.attention_matrix import (
    check_against_full_forward,
    layer_matrix,
    trace_length,
)
from kvviz.lessons.core import (
    Check,
    Lesson,
    LessonState,
    LessonStep,
    PageLink,
    Snapshot,
    check_new_prefill,
    prefill,
    step,
)
from kvviz.lessons.prefill_and_decode import new_records

PROMPT = "Explain in three short sentences why the sky is blue."
STEPS = 6
FOCUS = "attention head"  # the (layer, head) the Attention page opens on


def produced(state: LessonState, before: Snapshot, name: str) -> bool:
    """Whether result ``name`` was computed during this step (not left over from an earlier one)."""
    return name in state.results and state.results[name] is not before.results.get(name)


def check_stacked_rows(state: LessonState, before: Snapshot) -> Check:
    if new_records(state, before) != STEPS:
        return Check(False, f"{max(new_records(state, before), 0)} of {STEPS} new steps on this trace: press the "
                            "button.")
    n = trace_length(state.trace)
    prompt = state.trace.prompt_tokens
    matrix = layer_matrix(state.trace, 0)  # (H, n, n)
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    if matrix.shape[1:] != (n, n) or np.abs(matrix[:, upper]).max() > 0 or \
            not np.allclose(matrix.sum(axis=-1), 1.0, atol=1e-2):
        return Check(False, "The stacked rows do not form a causal matrix.")
    return Check(True, f"Layer 0's matrix is now {n} × {n} per head: rows 0–{prompt - 1} came in one block from the "
                       f"prefill, rows {prompt}–{n - 1} one per decode step, each the new query against every "
                       "cached key. Nothing sits above the diagonal (no token sees a later one) and every row sums "
                       "to 1.")


def run_full_forward(state: LessonState) -> None:
    state.results["matrix check"] = check_against_full_forward(state.trace, state.loaded)


def check_full_forward(state: LessonState, before: Snapshot) -> Check:
    if not produced(state, before, "matrix check"):
        return Check(False, "No comparison yet: press the button to run the full forward pass.")
    result = state.results["matrix check"]
    if result.total_tokens != trace_length(state.trace) or not result.passed:
        return Check(False, f"The stacked rows differ from the full pass by {result.max_abs_diff:.1e} "
                            f"(tolerance {result.tolerance:.0e}).")
    return Check(True, f"One forward pass over all {result.tokens_checked} tokens, with no cache, gives the same "
                       f"matrix in all {result.layers} layers × {result.heads} heads: the largest difference is "
                       f"{result.max_abs_diff:.1e} (float16 rows, tolerance {result.tolerance:.0e}). "
                       f"{result.prompt_rows} rows came from the prefill, {result.decode_rows} from cached steps.")


def score_sinks(state: LessonState) -> None:
    scores = heads.score_trace(state.trace)
    state.results["head scores"] = scores
    layer, head, _ = heads.find_heads(scores, "sink").best
    state.results[FOCUS] = (layer, head)


def check_sinks(state: LessonState, before: Snapshot) -> Check:
    if not produced(state, before, "head scores"):
        return Check(False, "No head scores yet: press the button to score every head.")
    scores = state.results["head scores"]
    if scores.tokens != trace_length(state.trace):
        return Check(False, "The scores are not of this trace.")
    finding = heads.find_heads(scores, "sink")
    share = float(np.nanmean(scores.sink))
    return Check(True, f"Sink score (the mean weight a head puts on the first token), over this trace's {scores.tokens} "
                       f"tokens: {heads.describe(finding)} Averaged over every head it is {share:.2f}.")


def run_probe(state: LessonState) -> None:
    probe = heads.run_induction_probe(state.loaded)
    state.results["induction probe"] = probe
    layer, head, _ = heads.find_heads(probe.scores, "induction").best
    state.results[FOCUS] = (layer, head)


def check_induction(state: LessonState, before: Snapshot) -> Check:
    if not produced(state, before, "induction probe"):
        return Check(False, "No probe yet: press the button to run it.")
    probe = state.results["induction probe"]
    if len(probe.token_ids) != 2 * probe.half_length or probe.scores.tokens != len(probe.token_ids):
        return Check(False, "The probe did not run over its repeated tokens.")
    finding = heads.find_heads(probe.scores, "induction")
    return Check(True, f"Over {probe.half_length} random tokens repeated twice: {heads.describe(finding)} An induction "
                       "head in the second copy looks at the token that followed the current one in the first copy, "
                       "the pattern that lets a model continue a sequence it has seen.")


LESSON_MATRIX = Lesson(
    key="matrix",
    title="The attention matrix is the cached rows, stacked",
    summary="Build the attention matrix one cached row at a time, check it against a full forward pass, and find "
            "attention sinks and induction heads.",
    steps=(
        LessonStep(
            "Prefill",
            "The prefill computes attention for every prompt token at once: a triangular block of rows, one per "
            "prompt token.",
            "Prefill the prompt", lambda state: prefill(state, PROMPT), check_new_prefill,
            PageLink("attention", "The matrix on Attention")),
        LessonStep(
            "Add rows",
            "Each cached decode step adds exactly one row: the new query against every cached key. Stacked under "
            "the prefill's block, the rows form the whole causal matrix.",
            f"Step {STEPS} tokens", lambda state: step(state, STEPS), check_stacked_rows,
            PageLink("attention", "The matrix on Attention")),
        LessonStep(
            "Check it against a full pass",
            "If the cache is right, one forward pass over all the tokens without a cache must produce the same "
            "matrix, row for row.",
            "Run one full forward pass", run_full_forward, check_full_forward,
            PageLink("attention", "The check on Attention")),
        LessonStep(
            "Attention sinks",
            "Many heads put much of their weight on the first token whatever it is, a resting place for attention "
            "called a sink. Score every head on this trace.",
            "Score every head", score_sinks, check_sinks,
            PageLink("attention", "The strongest sink head on Attention", focus=FOCUS)),
        LessonStep(
            "Induction heads",
            "Feed random tokens twice in a row. In the second copy, an induction head attends to the token just "
            "after the current token's earlier occurrence, and so predicts what comes next.",
            "Run the induction probe", run_probe, check_induction,
            PageLink("attention", "The strongest induction head on Attention", focus=FOCUS)),
    ),
)
