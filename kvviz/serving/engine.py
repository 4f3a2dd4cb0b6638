"""Serve many requests on one model with a paged KV cache, one scheduler step at a time, and record every step.

``ServingEngine`` wraps transformers' own continuous batching (through ``cb_api``): requests join and leave the
running batch at step boundaries (continuous batching); their K/V live in fixed-size blocks of one shared pool
(paged attention); full blocks with the same token prefix are stored once and reused by later prompts (prefix
caching); when the pool runs short a request is sent back to the queue and recomputed later (preemption). After
each step it turns the scheduler's and pool's state into a ``ServingStep`` record. ``run_requests`` drives it
over a set of requests with arrival steps; ``run_sequential`` runs the same requests one after another with
kvviz's plain cached ``Stepper``, the baseline whose greedy tokens the batched run must reproduce.

Decoding is greedy and ignores end-of-sequence tokens, so each request produces exactly its new-token count.
What it does not do: sample, stream text, draw, or touch Streamlit.
"""

from __future__ import annotations

from typing import Sequence

import torch

from kvviz.errors import InputError
from kvviz.models import LoadedModel
from kvviz.serving.accounting import HOLDING_STATES, KvSize, context_waste_fraction, step_memory, waste_fractions
from kvviz.serving.cb_api import PagedBatcher, PoolSnapshot, RequestSnapshot, Scheduled, blocks_for
from kvviz.serving.records import (
    BatchEntry,
    BlockView,
    RequestOutcome,
    RequestView,
    SequentialRun,
    ServingRequest,
    ServingStep,
    ServingSummary,
    ServingTrace,
)
from kvviz.stepper import Stepper
from kvviz.timing import DeviceTimer

DEFAULT_BLOCK_SIZE = 16
DEFAULT_MAX_BATCH_TOKENS = 256


class ServingEngine:
    """One paged pool on one model; ``add`` requests, then ``step()`` until ``has_work()`` is False."""

    def __init__(self, loaded: LoadedModel, *, block_size: int = DEFAULT_BLOCK_SIZE, num_blocks: int,
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, prefix_sharing: bool = True,
                 safety_margin: float | None = None) -> None:
        if num_blocks < 1:
            raise InputError(f"The pool needs at least one block (got {num_blocks}).")
        if max_batch_tokens < 1:
            raise InputError(f"The batch needs room for at least one token (got {max_batch_tokens}).")
        self.loaded = loaded
        self.block_size = block_size
        self.max_batch_tokens = max_batch_tokens
        self.batcher = PagedBatcher(loaded.model, page_size=block_size, num_blocks=num_blocks,
                                    max_batch_tokens=max_batch_tokens, allow_block_sharing=prefix_sharing,
                                    safety_margin=safety_margin)
        self.size = KvSize.of(loaded.model.config, loaded.dtype_name, loaded.key)
        self.requests: dict[str, ServingRequest] = {}
        self.steps: list[ServingStep] = []
        self.next_step = 0  # index the next step will get; skips ahead when the engine idles until an arrival
        self._elapsed_ms = 0.0
        self._arrival_ms: dict[str, float] = {}
        self._just_arrived: list[str] = []
        self._unadmitted: set[str] = set()  # added or preempted, not scheduled since
        self._admitted: set[str] = set()
        self._preempted: set[str] = set()  # waiting again after a preemption
        self._preemptions: dict[str, int] = {}
        self._folded: dict[str, int] = {}  # tokens generated before the last preemption, now part of the prompt
        self._cached_prefix: dict[str, int] = {}
        self._first_token: dict[str, tuple[int, float]] = {}  # step, ttft ms
        self._finished: dict[str, tuple[int, tuple[int, ...], tuple[float, ...]]] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.batcher.block_ids)

    @property
    def block_bytes(self) -> int:
        return self.batcher.block_bytes

    # ----- requests ---------------------------------------------------------------------------------------------
    def add(self, request: ServingRequest) -> None:
        """Queue a request; it joins the batch at the next step the scheduler has room for it."""
        self.check(request)
        self.requests[request.request_id] = request
        self.batcher.add(request.request_id, list(request.prompt_ids), request.new_tokens)
        self._arrival_ms[request.request_id] = self._elapsed_ms
        self._just_arrived.append(request.request_id)
        self._unadmitted.add(request.request_id)
        self._preemptions[request.request_id] = 0

    def check(self, request: ServingRequest) -> None:
        """Raise ``InputError`` if this engine could never serve ``request`` (or already has one of that name)."""
        if request.request_id in self.requests:
            raise InputError(f"Two requests are called '{request.request_id}'.")
        if not request.prompt_ids:
            raise InputError(f"Request {request.request_id} has an empty prompt.")
        if request.new_tokens < 1:
            raise InputError(f"Request {request.request_id} asks for {request.new_tokens} new tokens; "
                             "ask for at least 1.")
        context = self.loaded.card.context_length
        if request.max_cache_tokens + 1 > context:
            raise InputError(f"Request {request.request_id} needs {request.max_cache_tokens + 1} positions; the model "
                             f"has {context}.")
        needed = blocks_for(request.max_cache_tokens, self.block_size)
        if needed > self.num_blocks:
            raise InputError(
                f"The pool of {self.num_blocks} blocks of {self.block_size} tokens is too small for request "
                f"{request.request_id}, which needs {needed} blocks ({request.max_cache_tokens} tokens): "
                "use more blocks."
            )

    def has_work(self) -> bool:
        return self.batcher.has_work()

    # ----- one step ---------------------------------------------------------------------------------------------
    def step(self) -> ServingStep:
        """Run one scheduler step (schedule, one forward over the whole batch, bookkeeping) and record it."""
        if not self.has_work():
            raise InputError("Nothing to serve: add a request first.")
        device = self.loaded.device
        with DeviceTimer(device) as whole:
            scheduled = self.batcher.schedule()
            if not scheduled:
                raise InputError(f"The scheduler could not fit any waiting request in the pool of {self.num_blocks} "
                                 "blocks: use more blocks.")
            with DeviceTimer(device) as forward:
                self.batcher.forward()
            self.batcher.update()
        index = self.next_step
        self.next_step += 1
        self._elapsed_ms += whole.ms
        record = self._record(index, scheduled, whole.ms, forward.ms)
        self.steps.append(record)
        return record

    def _record(self, index: int, scheduled: list[Scheduled], ms: float, forward_ms: float) -> ServingStep:
        snapshots = {snap.request_id: snap for snap in self.batcher.requests()}
        preempted = self._note_preemptions(snapshots)
        batch = tuple(self._batch_entry(item, index) for item in scheduled)
        finished = []
        for done in self.batcher.take_finished():
            self._finished[done.request_id] = (index, done.generated_ids, done.logprobs)
            finished.append(done.request_id)
        pool = self.batcher.pool()
        views = tuple(self._request_view(rid, snapshots.get(rid), pool) for rid in self.requests)
        blocks = self._block_views(views, pool)
        max_tokens = {rid: request.max_cache_tokens for rid, request in self.requests.items()}
        arrived, self._just_arrived = tuple(self._just_arrived), []
        in_batch = {entry.request_id for entry in batch}
        sat_out = tuple(v.request_id for v in views if v.state in HOLDING_STATES and v.request_id not in in_batch)
        return ServingStep(
            index=index, arrived=arrived, batch=batch, requests=views, blocks=blocks, free_blocks=pool.free_blocks,
            preempted=preempted, sat_out=sat_out, finished=tuple(finished),
            memory=step_memory(views, blocks, self.block_bytes, max_tokens, self.size,
                               self.loaded.card.context_length),
            ms=ms, forward_ms=forward_ms,
        )

    def _note_preemptions(self, snapshots: dict[str, RequestSnapshot]) -> tuple[str, ...]:
        # The scheduler preempts inside ``schedule()``: an admitted request found waiting again lost its blocks.
        preempted = tuple(rid for rid in sorted(self._admitted)
                          if rid in snapshots and snapshots[rid].status == "waiting")
        for rid in preempted:
            self._folded[rid] = snapshots[rid].generated
            self._admitted.discard(rid)
            self._unadmitted.add(rid)
            self._preempted.add(rid)
            self._preemptions[rid] += 1
        return preempted

    def _batch_entry(self, item: Scheduled, index: int) -> BatchEntry:
        rid = item.request_id
        cached, queried = 0, 0
        admitted = rid in self._unadmitted
        if admitted:  # admitted now: what it skipped was found in the prefix cache
            cached = item.past_tokens
            queried = len(self.requests[rid].prompt_ids) + self._folded.get(rid, 0)
            self._cached_prefix.setdefault(rid, cached)
            self._unadmitted.discard(rid)
            self._preempted.discard(rid)
            self._admitted.add(rid)
        if item.produces_token and rid not in self._first_token:
            self._first_token[rid] = (index, self._elapsed_ms - self._arrival_ms[rid])
        return BatchEntry(
            request_id=rid,
            prefill_tokens=0 if item.decoding else item.query_tokens,
            decode_tokens=item.query_tokens if item.decoding else 0,
            cached_prefix_tokens=cached,
            produced_token=item.produces_token,
            admitted=admitted,
            queried_tokens=queried,
        )

    def _request_view(self, rid: str, snap: RequestSnapshot | None, pool: PoolSnapshot) -> RequestView:
        if rid in self._finished:
            return RequestView(rid, "done", 0, len(self._finished[rid][1]), (), 0)
        if snap is None:
            return RequestView(rid, "waiting", 0, 0, (), 0)
        state = "preempted" if snap.status == "waiting" and rid in self._preempted else snap.status
        table = pool.tables.get(rid, ())
        fill = min(self.block_size, max(0, snap.tokens_held - (len(table) - 1) * self.block_size)) if table else 0
        return RequestView(rid, state, snap.tokens_held, snap.generated, table, fill)

    def _block_views(self, views: Sequence[RequestView], pool: PoolSnapshot) -> tuple[BlockView, ...]:
        owners: dict[int, list[str]] = {}
        tokens: dict[int, int] = {}
        for view in views:
            for position, block in enumerate(view.block_table):
                owners.setdefault(block, []).append(view.request_id)
                written = min(self.block_size, max(0, view.tokens_held - position * self.block_size))
                tokens[block] = max(tokens.get(block, 0), written)
        blocks = []
        for block in sorted(set(owners) | set(pool.cached)):
            held_by = tuple(owners.get(block, ()))
            blocks.append(BlockView(
                block_id=block,
                owners=held_by,
                ref_count=pool.ref_counts.get(block, 1) if held_by else 0,
                cached=block in pool.cached,
                hashed=block in pool.hashes,
                tokens=tokens.get(block, self.block_size),  # a cached block is full: only full blocks are kept
            ))
        return tuple(blocks)

    # ----- results ----------------------------------------------------------------------------------------------
    def outcomes(self) -> tuple[RequestOutcome, ...]:
        outcomes = []
        for rid, request in self.requests.items():
            finish_step, generated, logprobs = self._finished.get(rid, (-1, (), ()))
            first_step, ttft = self._first_token.get(rid, (-1, float("nan")))
            outcomes.append(RequestOutcome(
                request_id=rid, prompt_tokens=len(request.prompt_ids), new_tokens=request.new_tokens,
                arrival_step=request.arrival_step, first_token_step=first_step, finish_step=finish_step,
                ttft_ms=ttft, cached_prefix_tokens=self._cached_prefix.get(rid, 0),
                preemptions=self._preemptions.get(rid, 0), generated_ids=generated, logprobs=logprobs,
            ))
        return tuple(outcomes)

    def trace(self, sequential: SequentialRun | None = None) -> ServingTrace:
        """Everything so far as plain data; with ``sequential``, the summary compares the two runs."""
        outcomes = self.outcomes()
        return ServingTrace(
            model=self.loaded.key, device=str(self.loaded.device), dtype=self.loaded.dtype_name,
            block_size=self.block_size, num_blocks=self.num_blocks, block_bytes=self.block_bytes,
            max_batch_tokens=self.max_batch_tokens, prefix_sharing=self.batcher.prefix_sharing,
            pool_block_ids=self.batcher.block_ids, requests=tuple(self.requests.values()), steps=tuple(self.steps),
            outcomes=outcomes, summary=self._summary(outcomes, sequential),
            context_length=self.loaded.card.context_length,
        )

    def _summary(self, outcomes: Sequence[RequestOutcome], sequential: SequentialRun | None) -> ServingSummary:
        tokens = sum(len(o.generated_ids) for o in outcomes)
        seconds = sum(step.ms for step in self.steps) / 1000.0
        paged_waste, contiguous_waste = waste_fractions(self.steps)
        match, diff = None, None
        if sequential is not None:
            match = all(o.generated_ids == sequential.outputs.get(o.request_id) for o in outcomes)
            diffs = [abs(a - b) for o in outcomes
                     for a, b in zip(o.logprobs, sequential.logprobs.get(o.request_id, ()))]
            diff = max(diffs, default=0.0)
        return ServingSummary(
            requests=len(outcomes), steps=len(self.steps), tokens_generated=tokens,
            block_size=self.block_size, num_blocks=self.num_blocks, block_bytes=self.block_bytes,
            bytes_per_token=self.block_bytes // self.block_size,
            block_bytes_match_formula=self.block_bytes == self.size.per_token * self.block_size,
            paged_bytes_peak=max((s.memory.paged_reserved for s in self.steps), default=0),
            paged_used_bytes_peak=max((s.memory.paged_used for s in self.steps), default=0),
            contiguous_bytes_reserved=max((s.memory.contiguous_reserved for s in self.steps), default=0),
            waste_fraction_paged=paged_waste, waste_fraction_contiguous=contiguous_waste,
            preemptions=sum(o.preemptions for o in outcomes),
            prefix_cached_tokens=sum(o.cached_prefix_tokens for o in outcomes),
            batched_seconds=seconds, tokens_per_s_batched=tokens / seconds if seconds > 0 else 0.0,
            sequential_seconds=sequential.seconds if sequential else None,
            tokens_per_s_sequential=sequential.tokens_per_s if sequential else None,
            outputs_match_sequential=match, max_logprob_diff=diff,
            contiguous_context_bytes_reserved=max((s.memory.contiguous_context_reserved for s in self.steps),
                                                  default=0),
            waste_fraction_contiguous_context=context_waste_fraction(self.steps),
        )


class ServingScenario:
    """A fixed set of requests served one scheduler step at a time: each joins at its arrival step.

    What ``run_requests`` does in one call, split so a page can draw after every step (and stop between steps).
    ``step()`` adds the requests that have arrived, skips idle steps until the next arrival, and runs one step.
    """

    def __init__(self, loaded: LoadedModel, requests: Sequence[ServingRequest], *,
                 block_size: int = DEFAULT_BLOCK_SIZE, num_blocks: int,
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, prefix_sharing: bool = True,
                 safety_margin: float | None = None) -> None:
        if not requests:
            raise InputError("No requests to serve.")
        if len({r.request_id for r in requests}) < len(requests):
            raise InputError("Two requests share a name; give each request its own id.")
        self.engine = ServingEngine(loaded, block_size=block_size, num_blocks=num_blocks,
                                    max_batch_tokens=max_batch_tokens, prefix_sharing=prefix_sharing,
                                    safety_margin=safety_margin)
        for request in requests:  # refuse before the first step, not when a late arrival turns up
            self.engine.check(request)
        self.requests = tuple(requests)
        self._pending = sorted(requests, key=lambda r: r.arrival_step)

    @property
    def done(self) -> bool:
        return not self._pending and not self.engine.has_work()

    @property
    def steps(self) -> list[ServingStep]:
        return self.engine.steps

    def step(self) -> ServingStep | None:
        """One scheduler step (after adding what has arrived); ``None`` once every request is done."""
        while not self.done:
            while self._pending and self._pending[0].arrival_step <= self.engine.next_step:
                self.engine.add(self._pending.pop(0))
            if self.engine.has_work():
                return self.engine.step()
            self.engine.next_step = self._pending[0].arrival_step  # idle until the next arrival: no step to record
        return None

    def run(self) -> None:
        while self.step() is not None:
            pass

    def trace(self, sequential: SequentialRun | None = None) -> ServingTrace:
        return self.engine.trace(sequential)


def run_requests(loaded: LoadedModel, requests: Sequence[ServingRequest], *, block_size: int = DEFAULT_BLOCK_SIZE,
                 num_blocks: int, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, prefix_sharing: bool = True,
                 safety_margin: float | None = None, compare_sequential: bool = False) -> ServingTrace:
    """Serve ``requests`` (each joining at its arrival step) until all are done; the trace of every step.

    With ``compare_sequential`` the same requests are also run one after another with ``Stepper`` and the summary
    says whether the tokens match and how the throughputs compare.
    """
    scenario = ServingScenario(loaded, requests, block_size=block_size, num_blocks=num_blocks,
                               max_batch_tokens=max_batch_tokens, prefix_sharing=prefix_sharing,
                               safety_margin=safety_margin)
    scenario.run()
    sequential = run_sequential(loaded, requests) if compare_sequential else None
    return scenario.trace(sequential)


def run_sequential(loaded: LoadedModel, requests: Sequence[ServingRequest]) -> SequentialRun:
    """Each request alone, one after another, with kvviz's plain cached ``Stepper`` (greedy).

    ``seconds`` sums the steppers' own device-synchronised call times (forward and token choice), the work a
    one-at-a-time server would do.
    """
    outputs: dict[str, tuple[int, ...]] = {}
    logprobs: dict[str, tuple[float, ...]] = {}
    total_ms = 0.0
    for request in requests:
        stepper = Stepper(loaded, capture_attention=False, max_new_tokens=request.new_tokens)
        tokens, scores = [], []
        for index in range(request.new_tokens):
            record = stepper.prefill(list(request.prompt_ids)) if index == 0 else stepper.step()
            total_ms += record.ms
            tokens.append(record.token_id)
            scores.append(float(torch.log_softmax(stepper.last_logits, dim=-1)[record.token_id]))
        outputs[request.request_id] = tuple(tokens)
        logprobs[request.request_id] = tuple(scores)
    return SequentialRun(outputs, logprobs, total_ms / 1000.0, sum(len(t) for t in outputs.values()))
