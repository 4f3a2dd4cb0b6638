"""What a serving run leaves behind: one record per scheduler step, one outcome per request, a run summary.

Plain data only (frozen dataclasses of ints, floats, strings and tuples): this module imports neither torch nor
transformers, so pages, charts and result files can read a trace anywhere. ``to_dict()`` gives the JSON shape the
CLI prints. What it does not do: compute anything from the model (``engine.py``, ``accounting.py``).

Words used throughout: a *block* holds the K and V of ``block_size`` consecutive positions of one sequence in every
layer; a request's *block table* lists its blocks in sequence order; a block *shared* by several requests has a
reference count of 2 or more; a *cached* block is held by no request but keeps its content (a full block with a
content hash) so a later prompt with the same prefix can reuse it; *free* blocks hold nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

REQUEST_STATES = ("waiting", "prefilling", "decoding", "preempted", "done")


@dataclass(frozen=True)
class ServingRequest:
    """A request to serve: prompt token ids, how many new tokens, and the scheduler step it arrives at."""

    request_id: str
    prompt_ids: tuple[int, ...]
    new_tokens: int
    arrival_step: int = 0

    @property
    def max_cache_tokens(self) -> int:
        """The most positions its cache ever holds: the last chosen token is never fed back."""
        return len(self.prompt_ids) + self.new_tokens - 1


@dataclass(frozen=True)
class BatchEntry:
    """One request's share of a step's batch."""

    request_id: str
    prefill_tokens: int  # prompt tokens fed this step (a long prompt is split across steps: chunked prefill)
    decode_tokens: int  # 0 or 1: the token chosen last step, fed back
    cached_prefix_tokens: int  # prompt tokens found in the prefix cache when this request was admitted
    produced_token: bool
    admitted: bool = False  # joined the batch this step (first time, or again after a preemption)
    queried_tokens: int = 0  # when admitted: tokens looked up in the prefix cache (prompt + any folded output)


@dataclass(frozen=True)
class RequestView:
    """A request after a step."""

    request_id: str
    state: str  # one of REQUEST_STATES
    tokens_held: int
    generated: int
    block_table: tuple[int, ...]
    last_block_fill: int  # positions used in its last block (block_size when full; 0 without blocks)


@dataclass(frozen=True)
class BlockView:
    """A block that is not free after a step."""

    block_id: int
    owners: tuple[str, ...]
    ref_count: int  # requests holding it; 0 for a cached block
    cached: bool  # held by no request, kept for prefix reuse
    hashed: bool  # full and content-hashed: a later prompt with the same prefix can reuse it
    tokens: int  # positions written in it


@dataclass(frozen=True)
class StepMemory:
    """Bytes after a step: the paged pool beside a contiguous per-request reservation, on the same schedule.

    Paged: ``reserved`` is every block some request holds; ``used`` counts the positions written in them once
    (a shared block once); ``internal_fragmentation`` is the rest, the unfilled tail of each last block; ``cached``
    is kept for reuse and handed out again under pressure. Contiguous: every admitted request reserves its maximum
    length (prompt + new tokens - 1) up front, as a static per-sequence cache would; ``over_reservation`` is the
    part not yet (or never) written, and shared prefixes are stored once per request. Contiguous context: every
    admitted request reserves the model's whole context length, as servers before paged attention did (they could
    not know how long an answer would grow, so each sequence got ``max_model_len`` positions);
    ``contiguous_context_over_reservation`` is that reservation less the positions written.
    """

    paged_reserved: int
    paged_used: int
    paged_internal_fragmentation: int
    paged_cached: int
    contiguous_reserved: int
    contiguous_used: int
    contiguous_over_reservation: int
    contiguous_context_reserved: int
    contiguous_context_over_reservation: int


@dataclass(frozen=True)
class ServingStep:
    """One scheduler step: who arrived, the batch, every request and block after it, memory, time."""

    index: int
    arrived: tuple[str, ...]
    batch: tuple[BatchEntry, ...]
    requests: tuple[RequestView, ...]
    blocks: tuple[BlockView, ...]
    free_blocks: int
    preempted: tuple[str, ...]  # sent back to the queue this step, their blocks freed (to be recomputed)
    sat_out: tuple[str, ...]  # holding blocks but left out of this batch: no free block, or a budget was spent
    finished: tuple[str, ...]
    memory: StepMemory
    ms: float  # the whole step: scheduling, forward, bookkeeping (device-synchronised)
    forward_ms: float

    @property
    def prefill_tokens(self) -> int:
        return sum(entry.prefill_tokens for entry in self.batch)

    @property
    def decode_tokens(self) -> int:
        return sum(entry.decode_tokens for entry in self.batch)


@dataclass(frozen=True)
class RequestOutcome:
    """What one request got."""

    request_id: str
    prompt_tokens: int
    new_tokens: int
    arrival_step: int
    first_token_step: int
    finish_step: int
    ttft_ms: float  # from the start of its arrival step to the end of the step that chose its first token
    cached_prefix_tokens: int  # prompt tokens reused from the prefix cache at (first) admission
    preemptions: int
    generated_ids: tuple[int, ...]
    logprobs: tuple[float, ...]


@dataclass(frozen=True)
class ServingSummary:
    """The run in a few numbers. Waste fractions are averaged over steps (byte-steps wasted / byte-steps held)."""

    requests: int
    steps: int
    tokens_generated: int
    block_size: int
    num_blocks: int
    block_bytes: int
    bytes_per_token: int
    block_bytes_match_formula: bool
    paged_bytes_peak: int
    paged_used_bytes_peak: int
    contiguous_bytes_reserved: int  # peak
    waste_fraction_paged: float
    waste_fraction_contiguous: float
    preemptions: int
    prefix_cached_tokens: int
    batched_seconds: float
    tokens_per_s_batched: float
    sequential_seconds: float | None = None
    tokens_per_s_sequential: float | None = None
    outputs_match_sequential: bool | None = None
    max_logprob_diff: float | None = None
    contiguous_context_bytes_reserved: int = 0  # peak, every admitted request holding the model's whole context
    waste_fraction_contiguous_context: float = 0.0


@dataclass(frozen=True)
class ServingTrace:
    """A whole serving run on one model: the requests, every step, every outcome, and its summary."""

    model: str
    device: str
    dtype: str
    block_size: int
    num_blocks: int
    block_bytes: int
    max_batch_tokens: int
    prefix_sharing: bool
    pool_block_ids: tuple[int, ...]
    requests: tuple[ServingRequest, ...]
    steps: tuple[ServingStep, ...]
    outcomes: tuple[RequestOutcome, ...]
    summary: ServingSummary
    context_length: int = 0  # the model's maximum positions per sequence (what a whole-context reservation holds)

    def outcome(self, request_id: str) -> RequestOutcome:
        return next(o for o in self.outcomes if o.request_id == request_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SequentialRun:
    """The same requests one after another, each with kvviz's plain cached ``Stepper``."""

    outputs: dict[str, tuple[int, ...]]
    logprobs: dict[str, tuple[float, ...]]
    seconds: float
    tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


# ----- prefix caching -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrefixReport:
    """Where two token sequences part, and what the second can reuse of the first's cache in full blocks."""

    block_size: int
    shared_tokens: int  # length of the common prefix
    first_divergence: int | None  # index of the first differing token; None when one sequence is a prefix
    divergence_block: int | None  # the block that index falls in
    reusable_blocks: int
    reusable_tokens: int


@dataclass(frozen=True)
class PrefixBlock:
    """One full block of a prompt in the prefix cache."""

    index: int
    content_hash: str  # 16 hex digits
    parent_hash: str | None
    hit: bool  # reused from the cache instead of computed
    block_id: int | None  # where the pool keeps it after the prompt ran (None if evicted)


@dataclass(frozen=True)
class PrefixPrompt:
    tokens: int
    full_blocks: int
    hit_blocks: int
    hit_tokens: int
    miss_blocks: int
    first_divergence: int | None  # against the previous prompt; None for the first
    ttft_ms: float
    blocks: tuple[PrefixBlock, ...] = field(default=())
    generated_ids: tuple[int, ...] = field(default=())


@dataclass(frozen=True)
class PrefixRun:
    model: str
    device: str
    dtype: str
    block_size: int
    prompts: tuple[PrefixPrompt, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PrefixComparison:
    """Prompt A, then prompt B reusing A's blocks, beside prompt B alone on an empty cache (cold)."""

    shared: PrefixRun  # A then B, sharing on
    cold: PrefixRun  # B alone
    report: PrefixReport  # B against A, from the token ids alone

    @property
    def hit(self) -> PrefixPrompt:
        return self.shared.prompts[1]

    @property
    def cold_prompt(self) -> PrefixPrompt:
        return self.cold.prompts[0]

    @property
    def outputs_match(self) -> bool:
        """B's tokens are the same whether its prefix came from the cache or was computed."""
        return self.hit.generated_ids == self.cold_prompt.generated_ids


@dataclass(frozen=True)
class BlockSizePoint:
    """One run of the same requests at one block size (``block_size.py``)."""

    block_size: int
    steps: int
    paged_bytes_peak: int  # bytes of the blocks held, at the step holding most
    paged_used_bytes_at_peak: int  # of which written with real tokens
    waste_fraction_paged: float  # reserved but unwritten, averaged over steps
    prefix_cached_tokens: int  # prompt tokens found in the prefix cache, over all requests
    prompt_tokens: int
    block_table_entries_peak: int  # block-table entries of all requests together, at most
    seconds: float


# ----- production view ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerMetrics:
    """A serving engine's KV cache and queue in a few numbers, read from its Prometheus text (``metrics.parse_metrics``)
    or from a kvviz run (``metrics.live_metrics``), so the two can stand side by side.

    Counts (requests, tokens, preemptions, pool tokens) are summed over label sets (data-parallel engines, ranks);
    fractions (KV usage, SGLang's hit-rate gauge) are their unweighted mean, as vLLM averages KV usage over ranks.
    With several ``model_name`` labels the totals cover all of them and ``per_model`` has one entry per model.
    ``missing`` names the fields of this record the source did not have (they are None).
    """

    engine: str  # "vllm" or "sglang" (parse_metrics), "kvviz" (live_metrics); "unknown" is never produced: the
    # parser refuses text it cannot attribute to one engine
    kv_cache_usage: float | None  # fraction 0..1 of the pool held by running requests (cached-only blocks are free)
    prefix_cache_queries: int | None  # prompt tokens looked up in the prefix cache since start
    prefix_cache_hits: int | None  # of those, tokens found (and not computed)
    prefix_hit_rate: float | None  # hits / queries; SGLang: its own cache_hit_rate gauge; None without queries
    running: int | None  # requests in the running batch (prefilling or decoding)
    waiting: int | None  # requests queued, preempted ones included
    preemptions: int | None  # since start (SGLang calls them retractions)
    model: str | None = None  # the model_name label when there is exactly one
    models: tuple[str, ...] = ()
    per_model: tuple[ServerMetrics, ...] = ()  # one entry per model_name when there are several
    pool_tokens: int | None = None  # positions the KV pool holds (vLLM: blocks × block size; SGLang: max tokens)
    block_size: int | None = None  # tokens per block, where the engine reports it
    missing: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----- memory pressure and concurrency --------------------------------------------------------------------------

@dataclass(frozen=True)
class PressurePoint:
    """The pool and the queue after one step of a run under memory pressure."""

    step: int
    blocks_held: int  # held by at least one request
    blocks_cached: int  # held by none, kept for prefix reuse (handed out again when blocks run short)
    blocks_free: int
    running: int  # holding blocks (prefilling or decoding), sat-out ones included
    waiting: int  # arrived and not running: never admitted yet, or preempted
    preempted: int  # sent back to the queue this step
    arrived: int
    finished: int


@dataclass(frozen=True)
class PressureTimeline:
    """A run's pool and queue, step by step, and what pressure did to it."""

    pool_blocks: int
    block_size: int
    points: tuple[PressurePoint, ...]
    preemptions: int
    peak_waiting: int
    steps_with_waiting: int  # steps after which some arrived request was not running
    peak_blocks_held: int


@dataclass(frozen=True)
class PressureRun:
    """Seeded arrivals served from a pool deliberately too small for all of them at once."""

    seed: int
    mean_gap_steps: float
    pool_fraction: float  # the pool's share of the blocks every request at full length would need at once
    trace: ServingTrace
    timeline: PressureTimeline

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ConcurrencyProjection:
    """How many requests of ``tokens_per_request`` a KV pool holds at once, computed as vLLM computes the figure
    it prints at start-up ("Maximum concurrency for N tokens per request: X.XXx").

    ``source`` is "projection" (a GPU's memory, less the weights, shared into blocks by kvviz's KV formula) or
    "live pool" (the blocks of a kvviz serving engine); the GPU fields are None for a live pool.
    """

    source: str
    model: str
    cache_dtype: str
    block_size: int
    kv_bytes_per_token: int
    block_bytes: int
    num_blocks: int
    pool_tokens: int
    pool_bytes: int
    tokens_per_request: int
    blocks_per_request: int
    max_concurrency: float
    gpu_memory_bytes: int | None = None
    memory_utilization: float | None = None
    weight_bytes: int | None = None
    other_bytes: int | None = None  # activations, CUDA graphs and the like, when the caller knows them
    kv_budget_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----- prompt design --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PromptDesignVariantResult:
    """One way of writing a scenario's prompts, run in order through the prefix cache (each after the last)."""

    name: str  # "cache-friendly" or "cache-hostile"
    description: str
    texts: tuple[str, ...]  # each prompt as the model saw it (chat template applied where the tokenizer has one)
    prompt_tokens: tuple[int, ...]
    hit_tokens: tuple[int, ...]  # prompt tokens found in the prefix cache, not computed
    first_divergence: tuple[int | None, ...]  # where each prompt first differs from the one before (None: first)
    ttft_ms: tuple[float, ...]
    hit_rate_after_first: float  # hit tokens / prompt tokens over prompts 2.. (the first meets an empty cache)
    hit_rate_overall: float  # hit tokens / prompt tokens over every prompt, the first included
    prefill_tokens_saved: int  # = total hit tokens: positions whose K/V were reused instead of computed


@dataclass(frozen=True)
class PromptDesignScenarioResult:
    key: str
    title: str
    lesson: str
    friendly: PromptDesignVariantResult
    hostile: PromptDesignVariantResult


@dataclass(frozen=True)
class PromptDesignRun:
    """Every scenario on one model; ``seconds`` is the whole run's wall time (model already loaded)."""

    model: str
    device: str
    dtype: str
    block_size: int
    new_tokens: int
    chat_template: bool  # the prompts went through the tokenizer's chat template
    seconds: float
    scenarios: tuple[PromptDesignScenarioResult, ...]

    def scenario(self, key: str) -> PromptDesignScenarioResult:
        return next(s for s in self.scenarios if s.key == key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
