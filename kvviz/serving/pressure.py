"""Memory pressure and maximum concurrency: what happens when the KV pool is too small, and how many requests fit.

``pressure_requests`` gives the demo questions seeded, random arrival steps; ``run_pressure`` serves them from a
pool deliberately smaller than all of them need at once, so new requests wait for room and running ones are
preempted (their blocks freed, recomputed later); ``pressure_timeline`` reads a trace step by step into blocks
held, cached and free, requests running and waiting, preemptions. The outputs still equal one-at-a-time decoding.

``max_concurrency`` is the figure vLLM prints at start-up, reproduced from its source: ``_report_kv_cache_config``
logs "Maximum concurrency for {max_model_len} tokens per request: {x:.2f}x", where
``get_max_concurrency_for_kv_cache_config`` (vllm/v1/core/kv_cache_utils.py, vllm-project/vllm 001cabc1be16) is
``num_blocks / cdiv(max_memory_usage_per_request, memory_per_block)``; for full-attention layers
``FullAttentionSpec.max_memory_usage_bytes`` (vllm/v1/kv_cache_interface.py) is ``cdiv(max_model_len, block_size)``
pages, so the figure is the pool's blocks over the blocks one request of that length needs. vLLM counts its null
block in ``num_blocks``; so does ``max_concurrency`` when given the token count vLLM logs ("GPU KV cache size").
``project_concurrency`` sizes that pool for a model on a GPU with kvviz's KV formula (the GPU's memory × the
utilisation, less the weights, in blocks: ``get_num_blocks`` divides the same way); ``live_concurrency`` reads
it off a kvviz serving engine's pool.

What it does not do: profile activation memory or CUDA graphs as vLLM does before sizing its pool (pass
``other_bytes`` if known), size pools for sliding-window or hybrid models (vLLM gives those several block
tables), or model tensor parallelism.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from kvviz.errors import InputError
from kvviz.models import LoadedModel
from kvviz.serving.accounting import HOLDING_STATES, ModelSpec, Precision, kv_bytes_per_token
from kvviz.serving.cb_api import blocks_for
from kvviz.serving.engine import DEFAULT_BLOCK_SIZE, ServingEngine, run_requests
from kvviz.serving.records import (
    ConcurrencyProjection,
    PressurePoint,
    PressureRun,
    PressureTimeline,
    ServingRequest,
    ServingTrace,
)
from kvviz.serving.workload import demo_requests

DEFAULT_POOL_FRACTION = 0.4
VLLM_BLOCK_SIZE = 16  # vLLM's default block size on CUDA


# ----- a run under pressure -------------------------------------------------------------------------------------

def pressure_requests(loaded: LoadedModel, count: int, new_tokens: int, seed: int,
                      mean_gap_steps: float) -> list[ServingRequest]:
    """The demo questions (``workload.demo_requests``) arriving at random steps: the first at step 0, then gaps
    drawn from a Poisson distribution with mean ``mean_gap_steps`` by a ``numpy`` generator seeded with ``seed``."""
    if mean_gap_steps < 0:
        raise InputError(f"The mean gap between arrivals must be 0 steps or more (got {mean_gap_steps}).")
    requests = demo_requests(loaded, count, new_tokens, arrive_every=0)
    gaps = np.random.default_rng(seed).poisson(mean_gap_steps, size=count - 1)
    arrivals = np.concatenate(([0], np.cumsum(gaps))).astype(int)
    return [ServingRequest(r.request_id, r.prompt_ids, r.new_tokens, int(step))
            for r, step in zip(requests, arrivals)]


def pressure_pool_blocks(requests: Sequence[ServingRequest], block_size: int, pool_fraction: float) -> int:
    """``pool_fraction`` of the blocks every request needs at its full length at once, and never less than the
    largest request needs alone (plus one, so it can be admitted and grow)."""
    if not 0 < pool_fraction <= 1:
        raise InputError(f"The pool fraction must be above 0 and at most 1 (got {pool_fraction}).")
    needs = [blocks_for(r.max_cache_tokens, block_size) for r in requests]
    return max(max(needs) + 1, math.ceil(pool_fraction * sum(needs)))


def run_pressure(loaded: LoadedModel, *, count: int = 8, new_tokens: int = 24, seed: int = 0,
                 mean_gap_steps: float = 1.0, block_size: int = DEFAULT_BLOCK_SIZE,
                 pool_fraction: float = DEFAULT_POOL_FRACTION, prefix_sharing: bool = False,
                 compare_sequential: bool = True) -> PressureRun:
    """Seeded arrivals (``pressure_requests``) served from a pool of ``pressure_pool_blocks`` blocks.

    Prefix sharing is off by default, so every request's blocks are its own and the pool is as short as the
    fraction says (the demo requests share an instruction; with sharing on, it is stored once and the pressure
    eases). The scheduler runs with no free-space margin: with transformers' default margin (15 % of the pool kept
    free) it stops admitting early and evicts every cached block at once, which hides preemption.
    """
    requests = pressure_requests(loaded, count, new_tokens, seed, mean_gap_steps)
    num_blocks = pressure_pool_blocks(requests, block_size, pool_fraction)
    trace = run_requests(loaded, requests, block_size=block_size, num_blocks=num_blocks, safety_margin=0.0,
                         prefix_sharing=prefix_sharing, compare_sequential=compare_sequential)
    return PressureRun(seed=seed, mean_gap_steps=mean_gap_steps, pool_fraction=pool_fraction, trace=trace,
                       timeline=pressure_timeline(trace))


def pressure_timeline(trace: ServingTrace) -> PressureTimeline:
    """The pool and the queue after every step of ``trace``."""
    points = []
    for step in trace.steps:
        states = [view.state for view in step.requests]
        points.append(PressurePoint(
            step=step.index,
            blocks_held=sum(1 for block in step.blocks if block.ref_count > 0),
            blocks_cached=sum(1 for block in step.blocks if block.cached and block.ref_count == 0),
            blocks_free=step.free_blocks,
            running=sum(states.count(state) for state in HOLDING_STATES),
            waiting=states.count("waiting") + states.count("preempted"),
            preempted=len(step.preempted),
            arrived=len(step.arrived),
            finished=len(step.finished),
        ))
    return PressureTimeline(
        pool_blocks=trace.num_blocks, block_size=trace.block_size, points=tuple(points),
        preemptions=sum(p.preempted for p in points),
        peak_waiting=max((p.waiting for p in points), default=0),
        steps_with_waiting=sum(1 for p in points if p.waiting),
        peak_blocks_held=max((p.blocks_held for p in points), default=0),
    )


# ----- maximum concurrency --------------------------------------------------------------------------------------

def max_concurrency(pool_tokens: int, tokens_per_request: int, block_size: int = VLLM_BLOCK_SIZE) -> float:
    """vLLM's "Maximum concurrency for ``tokens_per_request`` tokens per request": the pool's blocks over the
    blocks one request of that length needs, ``(pool_tokens // block_size) / ceil(tokens_per_request / block_size)``
    (``get_max_concurrency_for_kv_cache_config``, one full-attention block table)."""
    if pool_tokens < 0 or tokens_per_request < 1 or block_size < 1:
        raise InputError(f"Need a pool of 0 tokens or more, requests of at least 1 token and blocks of at least 1 "
                         f"(got {pool_tokens}, {tokens_per_request}, {block_size}).")
    return (pool_tokens // block_size) / math.ceil(tokens_per_request / block_size)


def project_concurrency(spec: ModelSpec, precision: Precision, gpu_memory_bytes: int, weight_bytes: int,
                        memory_utilization: float = 0.9, tokens_per_request: int | None = None, *,
                        block_size: int = VLLM_BLOCK_SIZE, other_bytes: int = 0) -> ConcurrencyProjection:
    """The pool vLLM would build for ``spec`` on a GPU of ``gpu_memory_bytes``, and its maximum concurrency.

    KV budget = ``int(gpu_memory_bytes × memory_utilization) - weight_bytes - other_bytes``; blocks = budget //
    (``kv_bytes_per_token`` × ``block_size``); ``tokens_per_request`` defaults to the model's context length, as
    vLLM's figure uses ``max_model_len``.
    """
    if any(group.kind == "sliding" for group in spec.groups):
        raise InputError(f"{spec.name} has sliding-window layers: vLLM sizes those with several block tables, "
                         "which this projection does not model.")
    if not 0 < memory_utilization <= 1:
        raise InputError(f"The memory utilisation must be above 0 and at most 1 (got {memory_utilization}).")
    per_token = kv_bytes_per_token(spec, precision)
    block_bytes = per_token * block_size
    budget = int(gpu_memory_bytes * memory_utilization) - weight_bytes - other_bytes
    if budget < block_bytes:
        raise InputError(f"Nothing is left for the KV cache: {memory_utilization:.0%} of the GPU's memory, less "
                         f"the weights, holds not even one block of {block_size} tokens.")
    tokens = tokens_per_request or spec.max_context
    return _projection("projection", spec.name, precision.key, block_size, per_token, block_bytes,
                       budget // block_bytes, tokens, gpu_memory_bytes=gpu_memory_bytes,
                       memory_utilization=memory_utilization, weight_bytes=weight_bytes, other_bytes=other_bytes,
                       kv_budget_bytes=budget)


def live_concurrency(engine: ServingEngine, tokens_per_request: int | None = None) -> ConcurrencyProjection:
    """The same figure for a kvviz engine's live pool: its blocks, its block bytes read off the pool tensor, and by
    default the model's context length per request."""
    tokens = tokens_per_request or engine.loaded.card.context_length
    return _projection("live pool", engine.loaded.key, engine.loaded.dtype_name, engine.block_size,
                       engine.block_bytes // engine.block_size, engine.block_bytes, engine.num_blocks, tokens)


def _projection(source: str, model: str, cache_dtype: str, block_size: int, per_token: int, block_bytes: int,
                num_blocks: int, tokens: int, **gpu: float | int | None) -> ConcurrencyProjection:
    if tokens < 1:
        raise InputError(f"A request needs at least 1 token (got {tokens}).")
    pool_tokens = num_blocks * block_size
    return ConcurrencyProjection(
        source=source, model=model, cache_dtype=cache_dtype, block_size=block_size, kv_bytes_per_token=per_token,
        block_bytes=block_bytes, num_blocks=num_blocks, pool_tokens=pool_tokens, pool_bytes=num_blocks * block_bytes,
        tokens_per_request=tokens, blocks_per_request=math.ceil(tokens / block_size),
        max_concurrency=max_concurrency(pool_tokens, tokens, block_size), **gpu,  # type: ignore[arg-type]
    )


def trace_concurrency(trace: ServingTrace, tokens_per_request: int | None = None) -> ConcurrencyProjection:
    """``live_concurrency`` for a finished run: its pool's blocks and block bytes as the trace recorded them."""
    tokens = tokens_per_request or trace.context_length
    return _projection("live pool", trace.model, trace.dtype, trace.block_size, trace.block_bytes // trace.block_size,
                       trace.block_bytes, trace.num_blocks, tokens)


def projectable_presets() -> list[ModelSpec]:
    """The public presets ``project_concurrency`` can size: those without sliding-window layers."""
    from kvviz.kv_configs import all_presets

    return [spec for spec in all_presets() if not any(group.kind == "sliding" for group in spec.groups)]


def project_on_gpu(spec: ModelSpec, cache_dtype: str, gpu_key: str, memory_utilization: float,
                   tokens_per_request: int) -> ConcurrencyProjection:
    """``project_concurrency`` for a preset with bfloat16 weights on one GPU of kvviz's table (``GPUS``)."""
    from kvviz.kv_formula import BF16, CACHE_PRECISIONS, GPUS, weights_bytes

    return project_concurrency(spec, CACHE_PRECISIONS[cache_dtype], GPUS[gpu_key].memory_bytes,
                               weights_bytes(spec.parameters, BF16), memory_utilization, tokens_per_request)
