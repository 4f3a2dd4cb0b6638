"""Bytes of a serving run: the paged pool beside two contiguous reservations (each request's own maximum length,
and the model's whole context per request), and the waste of each.

Block bytes come from the live pool tensor (``cb_api.PagedBatcher.block_bytes``); this module checks them against
kvviz's KV-size formula and does the arithmetic per step. It is the only serving module that imports
``kvviz.kv_formula`` and ``kvviz.kv_configs``, so a move of those formulas is one edit here.

What it does not do: read the pool (``cb_api.py``) or decide the schedule (``engine.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from kvviz.kv_configs import spec_from_config
from kvviz.kv_formula import (  # noqa: F401  (format_bytes is re-exported for the serving CLI)
    ModelSpec,
    Precision,
    format_bytes,
    kv_bytes_per_token,
    kv_cache_bytes,
    precision_of_torch_dtype,
)
from kvviz.serving.records import BlockView, RequestView, ServingStep, StepMemory

HOLDING_STATES = ("prefilling", "decoding")
HEADROOM = 0.85  # the FIFO scheduler stops admitting prompts when under 15 % of the pool is free


@dataclass(frozen=True)
class KvSize:
    """kvviz's formula for one model and dtype: bytes per cached position, and for a sequence of any length."""

    spec: ModelSpec
    precision: Precision

    @classmethod
    def of(cls, config: Any, dtype_name: str, key: str = "model") -> KvSize:
        spec = spec_from_config(config, key=key, name=key, source="live model", parameters=0)
        return cls(spec, precision_of_torch_dtype(dtype_name))

    @property
    def per_token(self) -> int:
        return kv_bytes_per_token(self.spec, self.precision)

    def for_tokens(self, tokens: int) -> int:
        return kv_cache_bytes(self.spec, tokens, 1, self.precision) if tokens > 0 else 0


def step_memory(requests: Sequence[RequestView], blocks: Sequence[BlockView], block_bytes: int,
                max_tokens: dict[str, int], size: KvSize, context_tokens: int) -> StepMemory:
    """Bytes after one step. ``max_tokens``: each request's maximum cache length, its contiguous reservation;
    ``context_tokens``: the model's context length, what a server reserving whole contexts gives every request."""
    held = [block for block in blocks if block.ref_count > 0]
    paged_reserved = len(held) * block_bytes
    paged_used = sum(size.for_tokens(block.tokens) for block in held)
    holding = [view for view in requests if view.state in HOLDING_STATES]
    contiguous_reserved = sum(size.for_tokens(max_tokens[view.request_id]) for view in holding)
    contiguous_used = sum(size.for_tokens(view.tokens_held) for view in holding)
    context_reserved = len(holding) * size.for_tokens(context_tokens)
    return StepMemory(
        paged_reserved=paged_reserved,
        paged_used=paged_used,
        paged_internal_fragmentation=paged_reserved - paged_used,
        paged_cached=sum(1 for block in blocks if block.cached) * block_bytes,
        contiguous_reserved=contiguous_reserved,
        contiguous_used=contiguous_used,
        contiguous_over_reservation=contiguous_reserved - contiguous_used,
        contiguous_context_reserved=context_reserved,
        contiguous_context_over_reservation=context_reserved - contiguous_used,
    )


def waste_fractions(steps: Iterable[ServingStep]) -> tuple[float, float]:
    """(paged, contiguous): bytes reserved but not written, summed over steps, over bytes reserved summed over steps.

    A sum over steps weights each state of the pool by how long it lasted in steps, as a server's memory would be.
    """
    memories = [step.memory for step in steps]
    paged_held = sum(m.paged_reserved for m in memories)
    contiguous_held = sum(m.contiguous_reserved for m in memories)
    paged = sum(m.paged_internal_fragmentation for m in memories) / paged_held if paged_held else 0.0
    contiguous = sum(m.contiguous_over_reservation for m in memories) / contiguous_held if contiguous_held else 0.0
    return paged, contiguous


def default_pool_blocks(max_cache_tokens: Iterable[int], block_size: int) -> int:
    """Enough blocks for every request at its full length at once, plus the scheduler's free-space margin."""
    needed = sum(math.ceil(tokens / block_size) for tokens in max_cache_tokens)
    return math.ceil(needed / HEADROOM) + 1


def context_waste_fraction(steps: Iterable[ServingStep]) -> float:
    """Like ``waste_fractions``, for whole-context reservations: bytes reserved but not written over bytes reserved,
    each summed over steps."""
    memories = [step.memory for step in steps]
    held = sum(m.contiguous_context_reserved for m in memories)
    return sum(m.contiguous_context_over_reservation for m in memories) / held if held else 0.0
