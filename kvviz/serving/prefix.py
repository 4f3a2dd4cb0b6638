"""Prefix caching: where two prompts part, which full blocks a later prompt finds in the cache, and what it saves.

``prefix_report`` is pure arithmetic on token ids. ``run_prefix`` runs prompts in order through the serving
engine with sharing on, each after the previous finished, and reports per prompt its full blocks (content hash and
parent hash, exactly as transformers chains them), which were hits, and its time to first token.

The rule transformers 5.23 follows, which both functions reproduce: only full blocks are hashed, each hash covers
its parent's hash and its own tokens (so a block matches only if everything before it matched too), and the last
prompt token is always computed, because its logits choose the first new token. So a shared prefix shorter than
one block never hits, and a prompt of exactly k full blocks can reuse at most k - 1. A block is hashed at the end
of the step that fills it, and only if its request is still running then (see ``run_prefix``).

What it does not do: tokenise (callers pass ids), or evict (the pool is sized to keep every prompt's blocks).
"""

from __future__ import annotations

from typing import Sequence

from kvviz.errors import InputError
from kvviz.models import LoadedModel
from kvviz.serving.cb_api import MIN_PAGE_SIZE, block_hash, blocks_for
from kvviz.serving.engine import DEFAULT_BLOCK_SIZE, DEFAULT_MAX_BATCH_TOKENS, ServingEngine
from kvviz.serving.records import (
    PrefixBlock,
    PrefixComparison,
    PrefixPrompt,
    PrefixReport,
    PrefixRun,
    RequestOutcome,
    ServingRequest,
)


def prefix_report(ids_a: Sequence[int], ids_b: Sequence[int], block_size: int) -> PrefixReport:
    """What prompt ``ids_b`` can reuse of the cache prompt ``ids_a`` left, in whole blocks of ``block_size``."""
    if block_size < 1:
        raise InputError(f"The block size must be at least 1 token (got {block_size}).")
    shared = 0
    for token_a, token_b in zip(ids_a, ids_b):
        if token_a != token_b:
            break
        shared += 1
    diverges = shared < len(ids_b)
    # Whole blocks only, and never the block holding b's last token: its logits must be computed.
    reusable = max(0, min(shared // block_size, (len(ids_b) - 1) // block_size))
    return PrefixReport(
        block_size=block_size,
        shared_tokens=shared,
        first_divergence=shared if diverges else None,
        divergence_block=shared // block_size if diverges else None,
        reusable_blocks=reusable,
        reusable_tokens=reusable * block_size,
    )


def block_hashes(ids: Sequence[int], block_size: int) -> list[int]:
    """The chained content hash of each full block of ``ids``, as the pool's ledger keys them."""
    hashes: list[int] = []
    for index in range(len(ids) // block_size):
        parent = hashes[-1] if hashes else None
        hashes.append(block_hash(parent, list(ids[index * block_size:(index + 1) * block_size])))
    return hashes


def run_prefix(loaded: LoadedModel, prompts: Sequence[Sequence[int]], *, block_size: int = DEFAULT_BLOCK_SIZE,
               new_tokens: int = 2) -> PrefixRun:
    """Run ``prompts`` in order, each after the previous finished, with prefix sharing on; hits and TTFT per prompt.

    ``new_tokens`` must be at least 2: transformers 5.23 hashes a step's completed blocks only for requests still
    running after it (``update_batch`` skips finished ones), so a one-token request leaves nothing to reuse.
    """
    if new_tokens < 2:
        raise InputError(f"Prefix runs need at least 2 new tokens per prompt (got {new_tokens}): a request that "
                         "finishes in its prefill step leaves no reusable blocks behind.")
    if not prompts or any(not prompt for prompt in prompts):
        raise InputError("Pass at least one non-empty prompt.")
    if block_size < MIN_PAGE_SIZE:
        raise InputError(f"The block size must be at least {MIN_PAGE_SIZE} tokens (got {block_size}).")
    # Room for every prompt's blocks at once, so nothing is evicted, and no safety margin (under it transformers
    # evicts every cached block at once).
    num_blocks = sum(blocks_for(len(p) + new_tokens, block_size) for p in prompts) + 1
    longest = max(len(p) for p in prompts)
    engine = ServingEngine(loaded, block_size=block_size, num_blocks=num_blocks,
                           max_batch_tokens=max(DEFAULT_MAX_BATCH_TOKENS, longest), safety_margin=0.0)
    # A first forward pays one-off costs; a one-token request fills no block, so it leaves the prefix cache empty.
    _serve_alone(engine, ServingRequest("warm-up", (prompts[0][0],), 1))
    results = []
    for index, prompt in enumerate(prompts):
        request_id = f"prompt-{index}"
        outcome = _serve_alone(engine, ServingRequest(request_id, tuple(prompt), new_tokens))
        hit_blocks = outcome.cached_prefix_tokens // block_size
        hashes = block_hashes(prompt, block_size)
        blocks = tuple(
            PrefixBlock(index=i, content_hash=f"{h:016x}", parent_hash=f"{hashes[i - 1]:016x}" if i else None,
                        hit=i < hit_blocks, block_id=engine.batcher.block_of_hash(h))
            for i, h in enumerate(hashes)
        )
        previous = prefix_report(prompts[index - 1], prompt, block_size) if index else None
        results.append(PrefixPrompt(
            tokens=len(prompt), full_blocks=len(hashes), hit_blocks=hit_blocks,
            hit_tokens=outcome.cached_prefix_tokens, miss_blocks=len(hashes) - hit_blocks,
            first_divergence=previous.first_divergence if previous else None,
            ttft_ms=outcome.ttft_ms, blocks=blocks, generated_ids=outcome.generated_ids,
        ))
    return PrefixRun(model=loaded.key, device=str(loaded.device), dtype=loaded.dtype_name, block_size=block_size,
                     prompts=tuple(results))


def compare_prefix(loaded: LoadedModel, prompt_a: Sequence[int], prompt_b: Sequence[int], *,
                   block_size: int = DEFAULT_BLOCK_SIZE, new_tokens: int = 2) -> PrefixComparison:
    """Prompt B after prompt A (B reuses what it can of A's blocks) beside B alone on an empty cache.

    Both runs are measured the same way (``run_prefix``: each in its own engine after a warm-up request), so the
    two times to first token differ by what the prefix cache saved.
    """
    shared = run_prefix(loaded, [prompt_a, prompt_b], block_size=block_size, new_tokens=new_tokens)
    cold = run_prefix(loaded, [prompt_b], block_size=block_size, new_tokens=new_tokens)
    return PrefixComparison(shared=shared, cold=cold, report=prefix_report(prompt_a, prompt_b, block_size))


def _serve_alone(engine: ServingEngine, request: ServingRequest) -> RequestOutcome:
    engine.add(request)
    while engine.has_work():
        engine.step()
    return next(o for o in engine.outcomes() if o.request_id == request.request_id)
