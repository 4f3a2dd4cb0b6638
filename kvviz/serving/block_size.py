"""The block-size trade-off, measured: the same requests served once per block size.

Small blocks leave little unwritten space in each request's last block and let shorter shared prefixes be reused,
but every request then needs a longer block table and the pool more blocks to track (vLLM's default, 16, sits in
between). ``block_size_sweep`` serves one set of requests once per block size, each with a pool sized for every
request at full length, and records what each run held, wasted and reused.

What it does not do: choose a block size for you, or time anything finer than the whole run (``engine.py``).
"""

from __future__ import annotations

from typing import Sequence

from kvviz.errors import InputError
from kvviz.models import LoadedModel
from kvviz.serving.accounting import default_pool_blocks
from kvviz.serving.engine import ServingScenario
from kvviz.serving.records import BlockSizePoint, ServingRequest

SWEEP_SIZES = (4, 8, 16, 32, 64, 128, 256)


def block_size_sweep(loaded: LoadedModel, requests: Sequence[ServingRequest],
                     sizes: Sequence[int] | None = None) -> tuple[BlockSizePoint, ...]:
    """Serve ``requests`` once per block size in ``sizes`` (default ``SWEEP_SIZES``); one point per size, in order."""
    sizes = SWEEP_SIZES if sizes is None else sizes
    if not sizes:
        raise InputError("Give at least one block size.")
    points = []
    for size in sizes:
        blocks = default_pool_blocks([r.max_cache_tokens for r in requests], size)
        scenario = ServingScenario(loaded, requests, block_size=size, num_blocks=blocks)
        scenario.run()
        trace = scenario.trace()
        summary = trace.summary
        peak_step = max(trace.steps, key=lambda step: step.memory.paged_reserved)
        points.append(BlockSizePoint(
            block_size=size,
            steps=summary.steps,
            paged_bytes_peak=summary.paged_bytes_peak,
            paged_used_bytes_at_peak=peak_step.memory.paged_used,
            waste_fraction_paged=summary.waste_fraction_paged,
            prefix_cached_tokens=summary.prefix_cached_tokens,
            prompt_tokens=sum(len(r.prompt_ids) for r in requests),
            block_table_entries_peak=max(sum(len(v.block_table) for v in step.requests) for step in trace.steps),
            seconds=summary.batched_seconds,
        ))
    return tuple(points)
