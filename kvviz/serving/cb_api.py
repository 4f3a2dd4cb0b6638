"""The one door into transformers' continuous-batching internals: a paged KV pool stepped one scheduler step at a time.

Checked against transformers 5.23.0 (CPU). Everything here other than ``init_continuous_batching``, ``add_request``
and ``ContinuousBatchingConfig`` is private to transformers and may change in any release; ``tests/test_serving.py``
has a contract test that fails loudly when a name used here moves. What is used, and where it lives in 5.23.0
(``generation/continuous_batching/``):

- ``ContinuousBatchingManager._create_batch_processor`` (continuous_api.py:1156) builds the ``PagedAttentionCache``,
  the FIFO scheduler and the batch processor without starting the background thread;
- ``ContinuousBatchProcessor.prepare_next_batch`` (:482), ``_generation_step`` (:635) and ``update_batch`` (:538)
  are the three halves of one step of the manager's own loop (``_generation_loop_body``, :1077), called here in turn;
- the pool: ``PagedAttentionCache.num_sectors``, ``use_prefix_sharing``, ``pool`` (``CachePool.num_free_sectors``,
  ``count_free_blocks``: cache_pool.py:111, :134) and ``cache_allocators["full_attention"]`` with its typed view
  of the flat pool tensor ``cache_tensor`` (cache_allocator.py:198; full_attention.py:84-88), ``layer_indices``,
  ``blocks_per_sector``, ``block_table`` (request id → block ids) and ``ledger`` (``BlockLedger``,
  cache_allocator.py:34: ``shared_ref_counts``, ``block_to_hash``/``hash_to_block``, ``cached_blocks``);
- ``compute_block_hash`` (cache_allocator.py:25): blake2b over the parent block's hash and the block's tokens;
- ``RequestState`` fields (requests.py:89): ``status``, ``position_offset``, ``generated_tokens``,
  ``initial_tokens`` and ``_true_initial_tokens`` (set when a request was preempted by a soft reset).

The shared model is never modified. The manager would switch the model's attention implementation (it accepts only
``"paged|eager"``, ``"sdpa"`` and flash variants, and refuses kvviz's recorder-aware ``"kvviz"``), and it only
switches back in ``stop()`` once its background thread ran, which this step-by-step use never starts. Every
browser session shares one loaded model, so instead ``paged_twin`` builds a second module tree over the *same*
weight tensors with its own config set to ``"sdpa"``.

What it does not do: decide what a step means for a person (``engine.py``), keep history, or support models with
sliding-window layers (prefix sharing is off there, and each layer type gets its own pool of blocks).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from kvviz.errors import InputError

TRANSFORMERS_CHECKED = "5.23.0"
FULL_ATTENTION = "full_attention"
PAGED_ATTENTION = "sdpa"  # one of the names the manager accepts; the same maths as kvviz's own attention
MIN_PAGE_SIZE = 4  # ContinuousBatchingConfig refuses smaller pages (initialization.py BOUNDS)


def paged_twin(model: Any) -> Any:
    """A second module tree over the same weight tensors, with its own config using SDPA attention.

    ``deepcopy`` with every parameter and buffer pre-seeded in the memo copies modules and the config but not one
    tensor, so it costs a few milliseconds and no weight memory; the original model keeps its attention
    implementation, so other sessions stepping it are unaffected.
    """
    tensors = list(model.parameters()) + list(model.buffers())
    twin = copy.deepcopy(model, memo={id(t): t for t in tensors})
    twin.set_attn_implementation(PAGED_ATTENTION)
    return twin.eval()


def block_hash(parent: int | None, tokens: list[int]) -> int:
    """The content hash transformers gives a full block: blake2b (8 bytes) of the parent's hash and the tokens."""
    from transformers.generation.continuous_batching.cache_allocators.cache_allocator import compute_block_hash

    return compute_block_hash(parent, list(tokens))


@dataclass(frozen=True)
class Scheduled:
    """One request in the batch of a step, as the scheduler chose it (before the forward)."""

    request_id: str
    query_tokens: int  # tokens fed this step
    past_tokens: int  # tokens already in the cache (or matched from the prefix cache) before this step
    decoding: bool  # True: one generated token fed back; False: prompt (or re-prefill) tokens
    produces_token: bool  # the last prompt chunk, or a decode step: the step chooses a new token


@dataclass(frozen=True)
class RequestSnapshot:
    """Where a request stands in the scheduler after a step."""

    request_id: str
    status: str  # "waiting", "prefilling", "decoding"
    tokens_held: int  # positions whose K/V are written in the pool (or matched from the prefix cache)
    generated: int  # tokens chosen so far, counting those folded into the prompt by a preemption


@dataclass(frozen=True)
class PoolSnapshot:
    """The paged pool after a step, as plain Python data."""

    block_ids: tuple[int, ...]  # every block the pool can hand out
    tables: dict[str, tuple[int, ...]]  # request id → its blocks, in sequence order
    ref_counts: dict[int, int]  # only blocks shared by 2+ requests are listed (a count of 1 is implicit)
    cached: frozenset[int]  # blocks no request holds, kept with their content for prefix reuse
    hashes: dict[int, int]  # full blocks' content hashes
    free_blocks: int  # what the pool can still hand out (free sectors plus free blocks of claimed sectors)


@dataclass(frozen=True)
class Finished:
    request_id: str
    generated_ids: tuple[int, ...]
    logprobs: tuple[float, ...]


class PagedBatcher:
    """transformers' continuous batching (FIFO scheduler, paged cache, greedy), driven one step at a time.

    Use: ``add(...)`` requests, then per step ``schedule()`` → ``forward()`` → ``update()``; read ``requests()``,
    ``pool()`` and ``take_finished()`` between steps.
    """

    def __init__(self, model: Any, *, page_size: int, num_blocks: int, max_batch_tokens: int,
                 allow_block_sharing: bool = True, safety_margin: float | None = None) -> None:
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        if page_size < MIN_PAGE_SIZE:
            raise InputError(f"The block size must be at least {MIN_PAGE_SIZE} tokens (got {page_size}).")
        self.model = paged_twin(model)
        generation = GenerationConfig(do_sample=False, eos_token_id=-1)
        config = ContinuousBatchingConfig(
            page_size=page_size,
            num_blocks=num_blocks,  # without it the pool takes most free memory (60 % of RAM on a CPU)
            max_batch_tokens=max_batch_tokens,  # also sizes the float mask: M × (pool tokens + M)
            use_cuda_graph=False,
            use_async_batching=False,
            allow_block_sharing=allow_block_sharing,
            auto_switch_to_flash=False,
            return_logprobs=True,  # one float per token: lets tests compare with the sequential run strictly
            cpu_offload_space=0.0,  # a preempted request is soft reset (recomputed), not swapped to host memory
            safety_margin=safety_margin,
        )
        self._manager = self.model.init_continuous_batching(generation_config=generation,
                                                            continuous_batching_config=config)
        self._processor = self._manager._create_batch_processor()
        self._manager.batch_processor = self._processor
        self.cache = self._processor.cache
        if set(self.cache.cache_allocators) != {FULL_ATTENTION}:
            raise InputError("The serving view supports models whose layers all use full attention; this one has "
                             f"{', '.join(sorted(self.cache.cache_allocators))} layers.")
        self._allocator = self.cache.cache_allocators[FULL_ATTENTION]
        self.page_size = page_size
        self.blocks_per_sector = int(self._allocator.blocks_per_sector)
        # Sectors 0 and 1 are trash (padding reads and writes); blocks are numbered across the whole tensor.
        first = 2 * self.blocks_per_sector
        self.block_ids = tuple(range(first, first + self.cache.num_sectors * self.blocks_per_sector))

    # ----- sizes, read from the live tensor ---------------------------------------------------------------------
    @property
    def block_bytes(self) -> int:
        """Bytes of one block (K and V of ``page_size`` positions in every layer), read off the live pool tensor.

        The allocator views the flat uint8 pool as ``(positions, 2, kv_heads, head_dim)`` in the cache dtype, one
        page of ``page_size`` positions per layer; a block is one page for each of its layers.
        """
        view = self._allocator.cache_tensor  # (positions, 2, kv_heads, head_dim): K and V of one position, one layer
        position_bytes = view[0].numel() * view.element_size()
        return position_bytes * self.page_size * len(self._allocator.layer_indices)

    @property
    def pool_bytes(self) -> int:
        """Bytes of the blocks requests can use (the trash sectors left out)."""
        return len(self.block_ids) * self.block_bytes

    @property
    def prefix_sharing(self) -> bool:
        return bool(self.cache.use_prefix_sharing)

    # ----- requests ---------------------------------------------------------------------------------------------
    def add(self, request_id: str, prompt_ids: list[int], new_tokens: int) -> None:
        # eos -1: no early stop, so every request produces exactly ``new_tokens`` and runs are reproducible.
        self._manager.add_request(list(prompt_ids), request_id=request_id, max_new_tokens=new_tokens,
                                  eos_token_id=-1)

    def has_work(self) -> bool:
        return not self._manager.input_queue.empty() or self._processor.has_pending_requests()

    # ----- one step ---------------------------------------------------------------------------------------------
    def schedule(self) -> list[Scheduled]:
        """Admit queued requests, pick this step's batch and claim its blocks; [] when nothing can run."""
        try:
            ready = self._processor.prepare_next_batch()
        except RuntimeError as error:  # "No requests can be scheduled and no requests can be offloaded."
            raise InputError(f"The pool of {len(self.block_ids)} blocks cannot hold the waiting requests "
                             f"({error}); use more blocks.") from None
        if not ready:
            return []
        batch = []
        for future in self._processor.inputs_and_outputs.requests_in_batch:
            state = future.state
            batch.append(Scheduled(
                request_id=state.request_id,
                query_tokens=int(future.query_length),
                past_tokens=int(state.position_offset - future.query_length),  # already advanced by the batch
                decoding=bool(state.generated_tokens),
                produces_token=bool(future.has_new_token),
            ))
        return batch

    @torch.inference_mode()
    def forward(self) -> None:
        self._processor._generation_step(self.model)

    def update(self) -> None:
        """Record the chosen tokens, finish requests, hash the blocks this step completed."""
        self._processor.update_batch()

    # ----- state between steps ----------------------------------------------------------------------------------
    def requests(self) -> list[RequestSnapshot]:
        """Every request the scheduler knows (finished ones have left it)."""
        from transformers.generation.continuous_batching.requests import RequestStatus

        scheduler = self._processor.scheduler
        snapshots = []
        for state in list(scheduler.active_requests.values()) + list(scheduler.waiting_requests.values()):
            status = {RequestStatus.PENDING: "waiting", RequestStatus.PREFILLING: "prefilling",
                      RequestStatus.DECODING: "decoding"}.get(state.status, state.status.name.lower())
            held = int(state.position_offset) if state.status != RequestStatus.PENDING else 0
            snapshots.append(RequestSnapshot(state.request_id, status, held, _generated_count(state)))
        return snapshots

    def pool(self) -> PoolSnapshot:
        ledger = self._allocator.ledger
        free = self.cache.pool.num_free_sectors * self.blocks_per_sector
        free += self.cache.pool.count_free_blocks(self._allocator.index)
        return PoolSnapshot(
            block_ids=self.block_ids,
            tables={rid: tuple(blocks) for rid, blocks in self._allocator.block_table.items()},
            ref_counts=dict(ledger.shared_ref_counts),
            cached=frozenset(ledger.cached_blocks),
            hashes=dict(ledger.block_to_hash),
            free_blocks=int(free),
        )

    def block_of_hash(self, content_hash: int) -> int | None:
        """The block holding content with this hash, if the pool still has it."""
        return self._allocator.ledger.hash_to_block.get(content_hash)

    def take_finished(self) -> list[Finished]:
        """Requests finished since the last call (outputs leave the manager's queue)."""
        finished = []
        queue = self._manager.output_router.output_queue
        while not queue.empty():
            output = queue.get_nowait()
            if output.error is not None:
                raise RuntimeError(f"Request {output.request_id} failed in continuous batching: {output.error}")
            finished.append(Finished(output.request_id, tuple(int(t) for t in output.generated_tokens),
                                     tuple(float(p) for p in output.logprobs)))
        return finished


def _generated_count(state: Any) -> int:
    # A soft reset (preemption) folds the tokens generated so far into a new request's prompt.
    folded = len(state.initial_tokens) - state._true_initial_tokens if state._true_initial_tokens else 0
    return folded + len(state.generated_tokens)


def blocks_for(tokens: int, page_size: int) -> int:
    """Blocks a sequence of ``tokens`` occupies."""
    return math.ceil(tokens / page_size)
