"""The Serving page's sentences, written from the records so that each number in them is the measured one.

Every function takes plain records (``records.py``) and returns text; nothing here measures or draws. Tests check
the sentences against the records they were written from (``tests/test_serving_page.py``).
"""

from __future__ import annotations

from typing import Sequence

from kvviz.kv_formula import format_bytes
from kvviz.serving.records import (
    BlockSizePoint,
    ConcurrencyProjection,
    PressureRun,
    PromptDesignScenarioResult,
    PrefixReport,
    ServingStep,
    ServingSummary,
    ServingTrace,
)


def step_sentence(trace: ServingTrace, step: ServingStep) -> str:
    """What happened in one scheduler step, in one line."""
    parts = []
    prefill = [e for e in step.batch if e.prefill_tokens]
    decode = [e for e in step.batch if e.decode_tokens]
    if prefill:
        parts.append("prefill of " + ", ".join(
            f"{e.request_id} ({e.prefill_tokens} tokens" + (f", {e.cached_prefix_tokens} found in the prefix cache"
                                                              if e.cached_prefix_tokens else "") + ")"
            for e in prefill))
    if decode:
        parts.append(f"one decode token each for {len(decode)} request{'s' if len(decode) != 1 else ''}")
    fed = step.prefill_tokens + step.decode_tokens
    text = f"Step {step.index}: one forward pass fed {fed} token{'s' if fed != 1 else ''}: " \
           + "; ".join(parts) + f" ({step.ms:,.0f} ms)."
    if step.arrived:
        text += f" Arrived: {', '.join(step.arrived)}."
    if step.finished:
        text += f" Finished: {', '.join(step.finished)} (its partial last block is freed; full blocks stay cached)."
    if step.preempted:
        text += (f" Preempted: {', '.join(step.preempted)}: the pool ran out of blocks, so its blocks were freed and "
                 "it went back to the queue to be recomputed.")
    if step.sat_out:
        text += f" Sat out holding blocks: {', '.join(step.sat_out)}."
    return text


def waste_sentence(trace: ServingTrace) -> str:
    """The run's waste, paged against contiguous, averaged over steps."""
    s = trace.summary
    text = (f"Averaged over the {s.steps} steps, {s.waste_fraction_paged:.0%} of the paged pool's held bytes were "
            f"reserved but not written (only each request's last block is ever partly empty), against "
            f"{s.waste_fraction_contiguous:.0%} for contiguous reservations of each request's own maximum length; "
            f"peak bytes held: paged {format_bytes(s.paged_bytes_peak)}, contiguous "
            f"{format_bytes(s.contiguous_bytes_reserved)}.")
    text += (f" Reserving the model's whole context ({trace.context_length:,} tokens) per request, as servers did "
             f"before paging, would hold {format_bytes(s.contiguous_context_bytes_reserved)} at the peak and waste "
             f"{s.waste_fraction_contiguous_context:.0%}.")
    return text


def throughput_sentence(summary: ServingSummary) -> str | None:
    """Batched against one-at-a-time tokens per second, once the sequential run exists."""
    if summary.tokens_per_s_sequential is None:
        return None
    ratio = summary.tokens_per_s_batched / summary.tokens_per_s_sequential if summary.tokens_per_s_sequential else 0
    match = ("the same tokens for every request" if summary.outputs_match_sequential
             else "DIFFERENT tokens for some request (see the table)")
    return (f"Batched: {summary.tokens_generated} tokens in {summary.batched_seconds:,.1f} s = "
            f"{summary.tokens_per_s_batched:,.1f} tokens/s. One request at a time with the plain cached stepper: "
            f"{summary.sequential_seconds:,.1f} s = {summary.tokens_per_s_sequential:,.1f} tokens/s. Batching "
            f"gave {ratio:.1f}× the one-at-a-time rate. Both runs produced {match}. A decode step reads all the weights once whether it "
            "feeds one token or twelve, so feeding several requests' tokens in one pass shares that reading.")


def prefix_miss_sentences(report: PrefixReport, tokens_a: int, tokens_b: int) -> list[str]:
    """Why prompt B did (or did not) reuse prompt A's blocks: where they part, which block, the one-block floor."""
    size = report.block_size
    sentences = []
    if report.first_divergence is None:
        sentences.append(f"Prompt B ({tokens_b} tokens) is prompt A's first {tokens_b} tokens: every token matches.")
    else:
        sentences.append(f"The prompts share their first {report.shared_tokens} tokens and part at token "
                         f"{report.first_divergence}, which falls in block {report.divergence_block} "
                         f"(tokens {report.divergence_block * size}–{(report.divergence_block + 1) * size - 1}).")
    if report.reusable_blocks:
        sentences.append(f"So B reuses {report.reusable_blocks} full block{'s' if report.reusable_blocks > 1 else ''} "
                         f"({report.reusable_tokens} tokens) and computes the other {tokens_b - report.reusable_tokens}.")
    else:
        sentences.append("So B reuses nothing: no full block of B matches A.")
    if report.first_divergence is not None and report.shared_tokens % size:
        sentences.append(f"The {report.shared_tokens % size} shared tokens at the start of block "
                         f"{report.divergence_block} are computed again: a block is found by the hash of all its "
                         f"{size} tokens and its parent's hash, so one differing token changes its hash and the hash "
                         "of every block after it.")
    if report.shared_tokens < size:
        sentences.append(f"A shared prefix shorter than one block ({size} tokens) can never hit: only full blocks are "
                         "hashed. Smaller blocks lower this floor, at the cost of more blocks to track.")
    if report.shared_tokens >= tokens_b and tokens_b % size == 0:
        sentences.append("B's last block is computed even though it matches: the last prompt token's logits choose "
                         "the first new token, so at least that token must run through the model.")
    return sentences


def ttft_sentence(cold_ms: float, hit_ms: float, hit_tokens: int, prompt_tokens: int) -> str:
    saving = 1 - hit_ms / cold_ms if cold_ms > 0 else 0.0
    return (f"Time to first token of prompt B: {cold_ms:,.0f} ms cold, {hit_ms:,.0f} ms with {hit_tokens} of its "
            f"{prompt_tokens} tokens found in the prefix cache ({saving:.0%} less). Both are measured on this model, "
            "each as the time from the request's arrival to its first token.")


def block_size_sentence(points: Sequence[BlockSizePoint]) -> str:
    """The measured ends of the block-size sweep."""
    small, large = points[0], points[-1]
    return (f"At {small.block_size} tokens per block, {small.waste_fraction_paged:.0%} of the held bytes were "
            f"unwritten and {small.prefix_cached_tokens} prompt tokens came from the prefix cache, with up to "
            f"{small.block_table_entries_peak} block-table entries; at {large.block_size}, "
            f"{large.waste_fraction_paged:.0%} unwritten, {large.prefix_cached_tokens} reused, "
            f"{large.block_table_entries_peak} entries. A prefix is reused only in whole blocks, so larger blocks "
            "find less of it.")


def context_reservation_sentence(trace: ServingTrace, step: ServingStep) -> str:
    """What reserving the model's whole context per request would have held after ``step`` (too big to draw)."""
    m = step.memory
    if not m.contiguous_context_reserved:
        return "No request holds memory after this step."
    times = m.contiguous_context_reserved / m.paged_reserved if m.paged_reserved else float("inf")
    return (f"Not drawn, because it would dwarf both bars: reserving the model's whole context "
            f"({trace.context_length:,} tokens) for each running request, as servers did before paging, would hold "
            f"{format_bytes(m.contiguous_context_reserved)} after this step, {times:,.0f}× the paged pool's "
            f"{format_bytes(m.paged_reserved)}, with {m.contiguous_context_over_reservation / m.contiguous_context_reserved:.1%} "
            "of it never written.")


def pressure_sentence(run: PressureRun) -> str:
    """What the short pool did to the requests, from the timeline."""
    t, s = run.timeline, run.trace.summary
    text = (f"A pool of {t.pool_blocks} blocks ({run.pool_fraction:.0%} of what all {s.requests} requests need at "
            f"full length at once): at the busiest step {t.peak_blocks_held} blocks were held, up to "
            f"{t.peak_waiting} requests waited, and some request waited after {t.steps_with_waiting} of the "
            f"{s.steps} steps. ")
    if t.preemptions:
        text += (f"{t.preemptions} preemption{'s' if t.preemptions > 1 else ''}: a running request needed a new block "
                 "and none was free, so one request's blocks were freed and it went back to the queue, to be "
                 "recomputed from its prompt and the tokens it had already produced. ")
    else:
        text += "No request was preempted: waiting for admission was enough. "
    if s.outputs_match_sequential is not None:
        text += ("Every request still produced the same tokens as when run alone."
                 if s.outputs_match_sequential else "Some request produced DIFFERENT tokens from a run alone.")
    return text


def concurrency_sentence(projection: ConcurrencyProjection) -> str:
    """vLLM's start-up figure, with the arithmetic behind it."""
    p = projection
    where = ""
    if p.gpu_memory_bytes is not None:
        where = (f"{p.memory_utilization:.0%} of {format_bytes(p.gpu_memory_bytes)} less "
                 f"{format_bytes(p.weight_bytes)} of weights leaves {format_bytes(p.kv_budget_bytes)} for the cache: ")
    return (f"{where}{p.num_blocks:,} blocks of {p.block_size} tokens × {format_bytes(p.block_bytes)} "
            f"({format_bytes(p.kv_bytes_per_token)} per token, {p.cache_dtype}) = {p.pool_tokens:,} tokens. A request "
            f"of {p.tokens_per_request:,} tokens needs {p.blocks_per_request:,} blocks, so vLLM would print "
            f"\"Maximum concurrency for {p.tokens_per_request:,} tokens per request: {p.max_concurrency:.2f}x\".")


def design_sentence(scenario: PromptDesignScenarioResult) -> str:
    """Both variants' measured hit rates, after the first prompt."""
    friendly, hostile = scenario.friendly, scenario.hostile
    return (f"{friendly.hit_rate_after_first:.0%} of prompt tokens found in the cache ({friendly.name}) against "
            f"{hostile.hit_rate_after_first:.0%} ({hostile.name})")
