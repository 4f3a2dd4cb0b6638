"""Lesson 9: eviction and quantisation, scored against the full cache on a short public-domain text.

The actions run ``kvviz.policies.compare_policies`` on the live model (teacher-forced over the shipped text, the
full cache as the reference); the checks read the bytes each policy's cache held and its positions, and the
sentences quote the measured perplexity and agreement. Shown only once the Cache policies page exists. What it
does not do: draw, or choose a policy for the learner.
"""

from __future__ import annotations

from kvviz.kv_formula import format_bytes
from kvviz.lessons.core import Check, Lesson, LessonState, LessonStep, PageLink
from kvviz.lessons.matrix import produced
import torch
from transformers import DynamicCache

from kvviz.policies.eviction import PolicySpec
from kvviz.policies.kivi import quantisation_errors
from kvviz.policies.quality import compare_policies, shipped_text, text_ids
from kvviz.policies.records import PolicyScore
from kvviz.policies.report import kivi_sentence

PAGE = "cache_policies"
TOKENS, PROMPT_TOKENS, BUDGET = 64, 32, 16


def run(state: LessonState, name: str, specs: list[PolicySpec]) -> None:
    ids = text_ids(state.loaded, shipped_text(), TOKENS)
    state.results[name] = compare_policies(state.loaded, ids, specs, PROMPT_TOKENS,
                                           text_name="Pride and Prejudice, chapter I")


def score_text(score: PolicyScore, full: PolicyScore) -> str:
    return (f"{score.name}: {format_bytes(score.bytes_held)} held, perplexity {score.perplexity:,.2f} against "
            f"{full.perplexity:,.2f}, the same most likely next token as the full cache at "
            f"{score.top1_agreement:.0%} of the steps")


def check_eviction(state: LessonState, before) -> Check:
    if not produced(state, before, "eviction"):
        return Check(False, "No eviction run yet: press the button.")
    scores = {score.name: score for score in state.results["eviction"].policies}
    full = scores.pop("full")
    if not scores or any(h.tokens > BUDGET for s in scores.values() for h in s.holdings) or \
            any(s.bytes_held >= full.bytes_held for s in scores.values()):
        return Check(False, f"A policy held more than its budget of {BUDGET} tokens per layer.")
    return Check(True, f"After {TOKENS} tokens the full cache held {format_bytes(full.bytes_held)}; each evicting "
                       f"cache kept at most {BUDGET} positions per layer. "
                       + "; ".join(score_text(s, full) for s in scores.values()) + ".")


def check_quantised(state: LessonState, before) -> Check:
    if not produced(state, before, "quantised"):
        return Check(False, "No quantised run yet: press the button.")
    scores = {score.name: score for score in state.results["quantised"].policies}
    full, fp8 = scores["full"], scores["fp8"]
    if not fp8.bytes_held < full.bytes_held:
        return Check(False, "The fp8 cache held no fewer bytes than the full one.")
    return Check(True, f"The fp8 cache kept all {TOKENS} positions in {format_bytes(fp8.bytes_held)} against "
                       f"{format_bytes(full.bytes_held)} ({full.bytes_held / fp8.bytes_held:.1f}× less); "
                       + score_text(fp8, full) + ".")


KIVI_BITS = 2


@torch.inference_mode()
def round_both_ways(state: LessonState) -> None:
    """Fill a full cache with the text's first tokens and round its middle layer to 2 bits, grouped both ways."""
    loaded = state.loaded
    ids = text_ids(loaded, shipped_text(), TOKENS)
    cache = DynamicCache(config=loaded.model.config)
    loaded.model(input_ids=torch.tensor([ids], device=loaded.device), past_key_values=cache, use_cache=True,
                 logits_to_keep=1)
    layer = len(cache.layers) // 2
    state.results["kivi"] = quantisation_errors(cache.layers[layer].keys, cache.layers[layer].values, layer,
                                                KIVI_BITS)


def check_kivi(state: LessonState, before) -> Check:
    if not produced(state, before, "kivi"):
        return Check(False, "Nothing rounded yet: press the button.")
    errors = state.results["kivi"]
    if errors.tokens != TOKENS or errors.bits != KIVI_BITS:
        return Check(False, f"The rounding did not cover the {TOKENS} cached tokens at {KIVI_BITS} bits.")
    return Check(True, kivi_sentence(errors))


LESSON_POLICIES = Lesson(
    key="policies",
    title="Eviction and quantisation",
    summary="Keep fewer tokens, or every token in fewer bits, and measure what each costs against the full cache.",
    needs_page=PAGE,
    steps=(
        LessonStep(
            "Evict to a budget",
            f"A cache can be capped at a budget ({BUDGET} positions per layer here) by evicting positions after "
            "each call. **window** keeps the newest; **sinks** (StreamingLLM) also keeps the first few, where many "
            "heads park their attention. Both run over the opening of *Pride and Prejudice*, scored against the "
            "full cache on the same tokens.",
            "Run window and sinks", lambda state: run(state, "eviction", [
                PolicySpec("full", TOKENS), PolicySpec("window", BUDGET), PolicySpec("sinks", BUDGET)]),
            check_eviction, PageLink(PAGE, "Every policy on Cache policies")),
        LessonStep(
            "Quantise instead",
            "A quantised cache keeps every position but stores each element in fewer bits: **fp8** uses one byte "
            "per element and one scale per tensor.",
            "Run fp8", lambda state: run(state, "quantised", [PolicySpec("full", TOKENS), PolicySpec("fp8", BUDGET)]),
            check_quantised, PageLink(PAGE, "Quantised caches on Cache policies")),
        LessonStep(
            "Which way to group the bits",
            "Fewer bits means rounding many numbers with one shared scale, so it matters which numbers share it. "
            "KIVI observed that keys have a few channels much larger than the rest, at every token, and values do "
            "not; so it groups keys per channel (along the tokens) and values per token. Here one layer's live keys "
            f"and values are rounded to {KIVI_BITS} bits both ways with the same quantiser.",
            "Round one layer both ways", round_both_ways, check_kivi,
            PageLink(PAGE, "The rounding error per channel on Cache policies")),
    ),
)
