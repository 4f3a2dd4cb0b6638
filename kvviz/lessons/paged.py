"""Lessons 6 and 7: paged blocks and their waste; prefix caching and prompt design. Both use the Serving page.

The actions run ``kvviz.serving`` on the live model (transformers' continuous batching and paged cache); the checks
read its records, and the sentences come from ``kvviz.serving.report``, the ones the Serving page shows. What it
does not do: draw, or keep a serving run anywhere but the lesson's state.
"""

from __future__ import annotations

import math

from kvviz.lessons.core import (
    Check,
    Lesson,
    LessonState,
    LessonStep,
    PageLink,
    Snapshot,
)
from kvviz.lessons.matrix import produced
from kvviz.models import LoadedModel
from kvviz.serving import report
from kvviz.serving.accounting import default_pool_blocks
from kvviz.serving.engine import ServingScenario, run_sequential
from kvviz.serving.prefix import compare_prefix
from kvviz.serving.prompt_design import run_prompt_design
from kvviz.serving.workload import SYSTEM_PROMPT, demo_requests, library_prompt
from kvviz.stepper import encode_prompt

PAGE = "serving"
# The scenario the lesson serves; the front end gives the Serving page's controls these values, so the page opens
# on the run the lesson built.
REQUESTS, NEW_TOKENS, BLOCK_SIZE, ARRIVE_EVERY = 4, 8, 16, 1
PREFIX_NEW_TOKENS = 2  # what compare_prefix generates per prompt by default
QUESTION_A = "When are you open on Saturday?"
QUESTION_B = "How many books can I borrow at once?"
DATE_LINE = "Today is Friday, 4 December.\n"
# The library system prompt's first three rules: the shared part when the whole of it does not fit the model's
# context (the tiny models' tokenizer spends one token per byte).
SHORT_SYSTEM_PROMPT = "".join(SYSTEM_PROMPT.splitlines(keepends=True)[:4])


def prompt_texts(loaded: LoadedModel, moved_date: bool = False) -> tuple[str, str]:
    """Prompts A and B of the prefix lesson: the Serving page's library prompts (its whole system prompt, then a
    question) when they fit the model's context, else the same with the first three rules only; ``moved_date`` puts
    a date line before B's shared part."""
    full = library_prompt(QUESTION_A), (DATE_LINE if moved_date else "") + library_prompt(QUESTION_B)
    room = loaded.card.context_length - PREFIX_NEW_TOKENS
    if all(len(encode_prompt(loaded, text)) < room for text in full):
        return full
    short = tuple(text.replace(SYSTEM_PROMPT, SHORT_SYSTEM_PROMPT) for text in full)
    return short[0], short[1]


# ----- lesson 6 --------------------------------------------------------------------------------------------------

def start_scenario(state: LessonState) -> None:
    requests = demo_requests(state.loaded, REQUESTS, NEW_TOKENS, ARRIVE_EVERY)
    blocks = default_pool_blocks([r.max_cache_tokens for r in requests], BLOCK_SIZE)
    scenario = ServingScenario(state.loaded, requests, block_size=BLOCK_SIZE, num_blocks=blocks)
    scenario.step()
    state.results["serving"] = scenario
    for name in ("served", "sequential"):
        state.results.pop(name, None)


def check_block_tables(state: LessonState, before: Snapshot) -> Check:
    if not produced(state, before, "serving"):
        return Check(False, "No serving run yet: press Start.")
    scenario = state.results["serving"]
    if len(scenario.steps) != 1:
        return Check(False, "The run should have taken exactly its first step.")
    first = scenario.steps[0]
    holding = [r for r in first.requests if r.block_table]
    if not holding or any(len(r.block_table) != math.ceil(r.tokens_held / BLOCK_SIZE) for r in holding):
        return Check(False, "A request's block table does not match the tokens it holds.")
    request = holding[0]
    table = " → ".join(str(b) for b in request.block_table)
    return Check(True, f"{report.step_sentence(scenario.trace(), first)} {request.request_id} holds "
                       f"{request.tokens_held} positions in {len(request.block_table)} blocks of {BLOCK_SIZE} "
                       f"(block table {table}); its last block has {request.last_block_fill} of {BLOCK_SIZE} "
                       "positions filled. Every block holds those positions' K and V in every layer.")


def run_to_end(state: LessonState) -> None:
    if "serving" not in state.results:
        start_scenario(state)
    scenario = state.results["serving"]
    scenario.run()
    state.results["served"] = scenario.trace()


def check_waste(state: LessonState, before: Snapshot) -> Check:
    if not produced(state, before, "served") or not state.results["serving"].done:
        return Check(False, "The run has not reached its end in this step: press Run to the end.")
    trace = state.results["served"]
    summary = trace.summary
    if not summary.block_bytes_match_formula or summary.paged_bytes_peak > summary.contiguous_bytes_reserved:
        return Check(False, "The pool's blocks do not add up to the formula's bytes.")
    return Check(True, f"All {summary.requests} requests got their {NEW_TOKENS} tokens in {summary.steps} steps. "
                       + report.waste_sentence(trace))


def compare_one_at_a_time(state: LessonState) -> None:
    scenario = state.results["serving"]
    state.results["sequential"] = run_sequential(state.loaded, scenario.requests)


def check_same_tokens(state: LessonState, before: Snapshot) -> Check:
    if not produced(state, before, "sequential"):
        return Check(False, "No one-at-a-time run yet: press the button.")
    summary = state.results["serving"].trace(state.results["sequential"]).summary
    if not summary.outputs_match_sequential:
        return Check(False, "The batched tokens differ from one request at a time.")
    return Check(True, report.throughput_sentence(summary))


LESSON_PAGED = Lesson(
    key="paged",
    title="Paged blocks and their waste",
    summary="Serve several requests at once from one pool of fixed-size blocks and see how little of it sits empty.",
    needs_page=PAGE,
    steps=(
        LessonStep(
            "Start serving",
            "A server holds many sequences at once. With **paged attention** each sequence's K and V live in "
            f"fixed-size blocks ({BLOCK_SIZE} positions here) of one shared pool, listed in its block table, so "
            "it holds only the blocks its tokens fill, the last one partly. Here requests arrive one per scheduler "
            "step.",
            "Start", start_scenario, check_block_tables,
            PageLink(PAGE, "The pool on Serving", view="Blocks and batching")),
        LessonStep(
            "Run to the end",
            "Only a request's last block can be partly empty. A contiguous cache instead reserves each sequence's "
            "maximum length up front, and servers before paging reserved the model's whole context.",
            "Run to the end", run_to_end, check_waste,
            PageLink(PAGE, "Memory over time on Serving", view="Blocks and batching")),
        LessonStep(
            "Batching changes nothing in the answers",
            "Serve the same requests one at a time with the plain cached stepper: the tokens must be the same, and "
            "the time shows what batching shares.",
            "Run them one at a time", compare_one_at_a_time, check_same_tokens,
            PageLink(PAGE, "Throughput on Serving", view="Blocks and batching")),
    ),
)


# ----- lesson 7 --------------------------------------------------------------------------------------------------

def run_prefix_pair(state: LessonState, moved_date: bool) -> None:
    text_a, text_b = prompt_texts(state.loaded, moved_date)
    ids_a, ids_b = encode_prompt(state.loaded, text_a), encode_prompt(state.loaded, text_b)
    state.results["prefix"] = compare_prefix(state.loaded, ids_a, ids_b, block_size=BLOCK_SIZE,
                                              new_tokens=PREFIX_NEW_TOKENS)
    state.results["prefix texts"] = (text_a, text_b)


def check_prefix_hit(state: LessonState, before: Snapshot) -> Check:
    if not produced(state, before, "prefix"):
        return Check(False, "No prefix run yet: press the button.")
    comparison = state.results["prefix"]
    hit, cold, prefix = comparison.hit, comparison.cold_prompt, comparison.report
    if state.results["prefix texts"] != prompt_texts(state.loaded, False) or not 0 < hit.hit_blocks == prefix.reusable_blocks \
            or not comparison.outputs_match:
        return Check(False, "Prompt B did not reuse the blocks it shares with prompt A.")
    return Check(True, f"{report.ttft_sentence(cold.ttft_ms, hit.ttft_ms, hit.hit_tokens, hit.tokens)} "
                       + " ".join(report.prefix_miss_sentences(prefix, comparison.shared.prompts[0].tokens,
                                                               hit.tokens))
                       + " B's tokens are the same either way.")


def check_prefix_miss(state: LessonState, before: Snapshot) -> Check:
    if not produced(state, before, "prefix"):
        return Check(False, "No prefix run yet: press the button.")
    comparison = state.results["prefix"]
    hit, prefix = comparison.hit, comparison.report
    if state.results["prefix texts"] != prompt_texts(state.loaded, True) or hit.hit_blocks != 0 or prefix.reusable_blocks != 0:
        return Check(False, "Prompt B still reused blocks of prompt A.")
    return Check(True, f"Prompt B, one date line longer at the top, found {hit.hit_blocks} of its {hit.full_blocks} "
                       "full blocks in the cache. "
                       + " ".join(report.prefix_miss_sentences(prefix, comparison.shared.prompts[0].tokens,
                                                               hit.tokens)))


def measure_designs(state: LessonState) -> None:
    state.results["prompt design"] = run_prompt_design(state.loaded, block_size=BLOCK_SIZE)


def check_designs(state: LessonState, before: Snapshot) -> Check:
    if not produced(state, before, "prompt design"):
        return Check(False, "No prompt designs measured yet: press the button.")
    run = state.results["prompt design"]
    if not all(s.friendly.hit_rate_after_first > s.hostile.hit_rate_after_first for s in run.scenarios):
        return Check(False, "A cache-friendly layout did not find more of its prompt in the cache.")
    return Check(True, " ".join(f"{s.title}: {report.design_sentence(s)}." for s in run.scenarios))


LESSON_PREFIX = Lesson(
    key="prefix",
    title="Prefix caching and prompt design",
    summary="Reuse the blocks of a shared system prompt, break the reuse with one line, and measure four prompt "
            "layouts.",
    needs_page=PAGE,
    steps=(
        LessonStep(
            "Two prompts, one system prompt",
            "Prompts A and B start with the same long system prompt and ask different questions. A server with "
            "**prefix caching** keeps A's full blocks under a hash of their tokens (chained with the hash of the "
            "block before), so B finds them and computes only the rest.",
            "Run A, then B; then B alone", lambda state: run_prefix_pair(state, False), check_prefix_hit,
            PageLink(PAGE, "The blocks B reused on Serving", view="Prefix caching")),
        LessonStep(
            "One line at the top",
            "Now put a date line before B's system prompt. The tokens after it are the same as before, but every "
            "block's hash covers everything before it.",
            "Run A, then the dated B", lambda state: run_prefix_pair(state, True), check_prefix_miss,
            PageLink(PAGE, "Why the prefix missed on Serving", view="Prefix caching")),
        LessonStep(
            "Prompt design",
            "Four common habits, each written in a cache-friendly and a cache-hostile way, run through the prefix "
            "cache: what share of each prompt is found in the cache?",
            "Measure the four designs", measure_designs, check_designs,
            PageLink(PAGE, "The four designs on Serving", view="Prompt design")),
    ),
)
