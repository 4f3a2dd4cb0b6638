"""KV-cache and weights memory, the arithmetic: precisions, cache geometry, the formulas, GPU fits.

What it does:
- Sizes the KV cache of any decoder from its attention geometry, per layer type: full attention (every token),
  sliding window (capped at the window), multi-head latent attention (DeepSeek-style: one compressed latent of
  ``kv_lora_rank`` plus the decoupled RoPE key of ``qk_rope_head_dim`` per token and layer, shared by all heads,
  so not ×2). Hybrid models (Gemma-3: five sliding layers to one full) are counted layer type by layer type. This
  is kvviz's one KV-size formula: FLOPs (``costs.py``), bytes moved (``roofline.py``, ``bench.py``) and the step
  chart's line all count through it.
- Precisions: fp32, fp16, bf16, fp8, and int8 / int4 with the overhead of one fp16 scale and one fp16 zero-point
  per group of ``group_size`` elements (groups never span two heads).
- Fits a model on a GPU: weights + cache against the card's memory, largest batch and context that fit.

Units: KiB, MiB, GiB, TiB are powers of 1,024 (1 GiB = 2³⁰ bytes = 1.074 GB); every figure also has exact bytes.
What it does not do: read configs or hold presets (``kv_configs.py``), check a live cache (``live_check.py``),
parse the command line (``cli.py``), draw (``charts/memory.py``); model activations, CUDA context, allocator
fragmentation or paged-block rounding. It imports neither torch nor transformers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable

from kvviz.errors import InputError

KIB, MIB, GIB, TIB = 2**10, 2**20, 2**30, 2**40
MAX_CONTEXT = 1_048_576  # the largest context the page and the fit search consider (1M tokens)
MAX_BATCH = 65_536  # the largest batch the page and the CLI accept
DEFAULT_RESERVE = 0.10  # share of GPU memory kept back for activations, the CUDA context and fragmentation
DEFAULT_CACHE_GROUP = 64  # transformers' QuantizedCache default q_group_size
WEIGHT_GROUP = 128  # the usual GPTQ / AWQ group size for int4 / int8 weights


# ----- precisions -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Precision:
    """How one element is stored: ``bits`` each, plus ``group_bits`` of metadata per group of ``group_size``."""

    key: str
    label: str
    bits: int
    group_size: int = 0  # 0: no per-group metadata (float formats; fp8's per-tensor scale is negligible)
    group_bits: int = 0  # per group: an fp16 scale and an fp16 zero-point

    @property
    def quantised(self) -> bool:
        return self.group_size > 0

    def vector_bits(self, length: int) -> int:
        """Bits to store one vector of ``length`` elements; its groups never span two vectors (heads)."""
        groups = math.ceil(length / self.group_size) if self.quantised else 0
        return length * self.bits + groups * self.group_bits

    def bytes_per_element(self, length: int = 128) -> float:
        """Average storage per element for vectors of ``length`` (metadata included), for display."""
        return self.vector_bits(length) / 8 / length

    def with_group_size(self, group_size: int) -> Precision:
        if not self.quantised:
            return self
        if group_size <= 0:
            raise InputError(f"The quantisation group size must be at least 1 element (got {group_size}).")
        return replace(self, group_size=group_size)


def _float(key: str, label: str, bits: int) -> Precision:
    return Precision(key, label, bits)


def _int(key: str, bits: int, group_size: int) -> Precision:
    return Precision(key, f"{key} (+ fp16 scale and zero-point per {group_size} elements)", bits, group_size, 32)


FP32 = _float("fp32", "float32 (4 bytes)", 32)
FP16 = _float("fp16", "float16 (2 bytes)", 16)
BF16 = _float("bf16", "bfloat16 (2 bytes)", 16)
FP8 = _float("fp8", "float8 e4m3 (1 byte; one scale per tensor, not counted)", 8)

CACHE_PRECISIONS: dict[str, Precision] = {
    p.key: p
    for p in (FP32, FP16, BF16, FP8, _int("int8", 8, DEFAULT_CACHE_GROUP), _int("int4", 4, DEFAULT_CACHE_GROUP))
}
WEIGHT_PRECISIONS: dict[str, Precision] = {
    p.key: p for p in (FP32, FP16, BF16, FP8, _int("int8", 8, WEIGHT_GROUP), _int("int4", 4, WEIGHT_GROUP))
}
_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
            "float8": "fp8", "float8_e4m3fn": "fp8", "e4m3": "fp8", "f32": "fp32", "f16": "fp16"}  # f16: ggml's name


def parse_precision(name: str, table: dict[str, Precision] | None = None) -> Precision:
    """A precision by key or alias (``bfloat16`` → bf16); ``InputError`` names the choices otherwise."""
    choices = table or CACHE_PRECISIONS
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in choices:
        raise InputError(f"Unknown dtype '{name}': use {', '.join(choices)}.")
    return choices[key]


def precision_of_torch_dtype(dtype_name: str) -> Precision:
    """The precision of a live tensor's dtype name ('float32', 'bfloat16', 'float16')."""
    return parse_precision(dtype_name.removeprefix("torch."), CACHE_PRECISIONS)


# ----- geometry -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerGroup:
    """Layers that cache the same thing per token.

    ``kind`` is "full" (every token), "sliding" (the last ``window`` tokens) or "latent" (multi-head latent
    attention: one vector of ``latent_dim`` plus the shared RoPE key of ``rope_dim``, whatever the head count).
    For "latent", ``kv_heads``/``head_dim``/``value_dim`` describe the expanded per-head keys and values the
    latent stands for (what a plain multi-head cache of the same model would store).
    """

    kind: str
    layers: int
    query_heads: int
    kv_heads: int
    head_dim: int  # key width per head
    value_dim: int  # value width per head (equal to head_dim except in MLA)
    window: int | None = None
    latent_dim: int = 0
    rope_dim: int = 0

    def vectors(self) -> tuple[int, ...]:
        """Widths of the vectors one layer caches per token (each quantised on its own)."""
        if self.kind == "latent":
            return (self.latent_dim, self.rope_dim)
        return (self.head_dim, self.value_dim) * self.kv_heads

    @property
    def elements_per_token(self) -> int:
        """Per layer per token: 2·kv_heads·head_dim for K and V, latent + RoPE key for MLA (not ×2)."""
        return sum(self.vectors())

    def bits_per_token(self, precision: Precision) -> int:
        """Per layer per token, metadata of quantised formats included."""
        return sum(precision.vector_bits(width) for width in self.vectors())

    @property
    def attended_window(self) -> int | None:
        """The window this layer's queries and cache are capped at; None when it keeps every token."""
        return self.window if self.kind == "sliding" else None

    def tokens_held(self, context: int, between_calls: bool = False) -> int:
        """Tokens this layer keeps for a context of ``context`` tokens (see ``window_tokens_held``)."""
        return window_tokens_held(context, self.attended_window, between_calls)

    def without_sharing(self) -> LayerGroup:
        """The same layers with one K/V head per query head (no GQA/MQA, MLA expanded to per-head K and V)."""
        kind = "full" if self.kind == "latent" else self.kind
        return replace(self, kind=kind, kv_heads=self.query_heads, latent_dim=0, rope_dim=0)


def window_tokens_held(context: int, window: int | None, between_calls: bool = False) -> int:
    """Tokens a layer keeps for a context of ``context`` tokens; ``window`` None for full attention.

    A sliding layer holds its window. ``between_calls`` counts as transformers' DynamicCache does between two
    forward calls: it keeps ``window - 1`` tokens, because the next token completes the window.
    """
    if window is None:
        return context
    return min(context, window - 1 if between_calls else window)


def group_layers(per_layer: Iterable[LayerGroup]) -> tuple[tuple[LayerGroup, ...], tuple[int, ...]]:
    """Layers in order, each a one-layer ``LayerGroup``, gathered into groups of equal layers, and the layout
    (for each layer, the index of its group) that ``ModelSpec`` keeps."""
    groups: list[LayerGroup] = []
    layout: list[int] = []
    for group in per_layer:
        for index, existing in enumerate(groups):
            if replace(existing, layers=1) == group:
                groups[index] = replace(existing, layers=existing.layers + 1)
                layout.append(index)
                break
        else:
            layout.append(len(groups))
            groups.append(group)
    return tuple(groups), tuple(layout)


@dataclass(frozen=True)
class ModelSpec:
    """What sizing a model's memory needs: its parameters, context and cache geometry, with where they came from."""

    key: str
    name: str
    source: str
    architecture: str
    parameters: int  # 0 when unknown
    max_context: int
    groups: tuple[LayerGroup, ...]
    layout: tuple[int, ...]  # for each layer in order, the index of its group
    note: str = ""

    @property
    def layers(self) -> int:
        return len(self.layout)

    @property
    def query_heads(self) -> int:
        return self.groups[0].query_heads

    @property
    def kv_heads(self) -> int:
        return self.groups[0].kv_heads

    @property
    def head_dim(self) -> int:
        return self.groups[0].head_dim

    @property
    def attention_kind(self) -> str:
        """'MHA', 'GQA', 'MQA' or 'MLA', with 'sliding window' / 'hybrid' when windows apply."""
        first = self.groups[0]
        if first.kind == "latent":
            kind = "MLA"
        elif first.kv_heads == first.query_heads:
            kind = "MHA"
        else:
            kind = "MQA" if first.kv_heads == 1 else "GQA"
        kinds = {group.kind for group in self.groups}
        if kinds == {"sliding"}:
            return f"{kind}, sliding window {self.groups[0].window:,}"
        if "sliding" in kinds:
            sliding = sum(g.layers for g in self.groups if g.kind == "sliding")
            window = next(g.window for g in self.groups if g.kind == "sliding")
            return f"{kind}, {sliding}/{self.layers} layers sliding ({window:,})"
        return kind

    def geometry(self) -> str:
        """One line: layers, heads and what each layer caches."""
        first = self.groups[0]
        if first.kind == "latent":
            return (f"{self.layers} layers, {first.query_heads} query heads, latent {first.latent_dim} "
                    f"+ RoPE key {first.rope_dim} per token and layer")
        return (f"{self.layers} layers, {first.query_heads} query heads, {first.kv_heads} KV heads, "
                f"head dim {first.head_dim}")

    def without_sharing(self) -> ModelSpec:
        """The same model as if it had one KV head per query head (what GQA / MQA / MLA save)."""
        return replace(self, key=f"{self.key}-one-kv-head-per-query-head",
                       name=f"{self.name} with one KV head per query head",
                       groups=tuple(group.without_sharing() for group in self.groups))

    @property
    def shares_kv(self) -> bool:
        return any(g.kind == "latent" or g.kv_heads < g.query_heads for g in self.groups)


def spec_from_windows(windows: Iterable[int | None], query_heads: int, kv_heads: int, head_dim: int, *, key: str,
                      name: str, source: str, architecture: str = "", parameters: int = 0,
                      max_context: int = 0) -> ModelSpec:
    """A spec of layers that differ only in their window, in order (None: a full-attention layer)."""
    groups, layout = group_layers(
        LayerGroup("sliding" if window else "full", 1, query_heads, kv_heads, head_dim, head_dim, window or None)
        for window in windows
    )
    return ModelSpec(key=key, name=name, source=source, architecture=architecture, parameters=parameters,
                     max_context=max_context, groups=groups, layout=layout)


# ----- the formulas ---------------------------------------------------------------------------------------------

def kv_bytes_per_token(spec: ModelSpec, precision: Precision = BF16) -> int:
    """Bytes one more token adds to one sequence's cache while no window is full (2·layers·kv_heads·head_dim·bytes)."""
    bits = sum(group.layers * group.bits_per_token(precision) for group in spec.groups)
    return math.ceil(bits / 8)


def kv_cache_bytes(spec: ModelSpec, context: int, batch: int = 1, precision: Precision = BF16,
                   between_calls: bool = False) -> int:
    """Bytes of K/V cache for ``batch`` sequences of ``context`` tokens, windows capped layer type by layer type."""
    check_positive(context=context, batch=batch)
    bits = sum(group.layers * group.tokens_held(context, between_calls) * group.bits_per_token(precision)
               for group in spec.groups)
    return batch * math.ceil(bits / 8)


def layer_cache_bytes(group: LayerGroup, context: int, batch: int, precision: Precision,
                      between_calls: bool = False) -> int:
    """One layer's K/V bytes (what ``LayerCacheStat.bytes`` reports for that layer)."""
    return batch * math.ceil(group.tokens_held(context, between_calls) * group.bits_per_token(precision) / 8)


def attention_pairs(context: int, new_tokens: int, window: int | None = None) -> int:
    """(query, key) pairs of one layer in a call of ``new_tokens`` queries, the last of ``context`` positions.

    Each query sees itself and the keys before it, at most ``window`` of them (None: every one). Query ``q``
    (1-based position) sees ``min(q, window)`` keys; the queries run from ``context - new_tokens + 1`` to ``context``.
    """
    first = context - new_tokens + 1
    uncapped = new_tokens if window is None else max(0, min(context, window) - first + 1)
    # Queries up to the window see q keys each (an arithmetic series); the rest see the whole window.
    pairs = uncapped * (2 * first + uncapped - 1) // 2
    return pairs + (new_tokens - uncapped) * (window or 0)


def attention_flops(spec: ModelSpec, new_tokens: int, context: int) -> float:
    """FLOPs of the attention itself, layer by layer: per (query, key) pair and query head, 2·head_dim for QKᵀ and
    2·value_dim for the weighted sum of V (4·q_heads·head_dim per pair when keys and values are equally wide)."""
    return float(sum(
        group.layers * 2 * group.query_heads * (group.head_dim + group.value_dim)
        * attention_pairs(context, new_tokens, group.attended_window)
        for group in spec.groups
    ))


def weights_bytes(parameters: int, precision: Precision = BF16) -> int:
    """Bytes of the weights with every parameter at ``precision`` (quantised formats with their group metadata)."""
    groups = math.ceil(parameters / precision.group_size) if precision.quantised else 0
    return math.ceil((parameters * precision.bits + groups * precision.group_bits) / 8)


def formula_text(spec: ModelSpec, precision: Precision, context: int | None = None, batch: int = 1,
                 between_calls: bool = False) -> str:
    """The sum the formula does, in words: per token when ``context`` is None, else for that many tokens.

    e.g. '2 (K, V) × 80 layers × 8 KV heads × 128 head dim × 2 bytes'. Quantised formats are written in bits per
    element, metadata included.
    """
    if precision.quantised:
        width = spec.groups[0].vectors()[0]
        size = f"{precision.vector_bits(width) / width:g} bits"
    else:
        size = f"{precision.bits // 8} byte{'s' if precision.bits > 8 else ''}"
    parts = []
    for group in spec.groups:
        if group.kind == "latent":
            text = f"{group.layers} layers × ({group.latent_dim} latent + {group.rope_dim} RoPE key) × {size}"
        else:
            kind = f"{group.kind} " if len(spec.groups) > 1 or group.kind == "sliding" else ""
            text = (f"2 (K, V) × {group.layers} {kind}layers × "
                    f"{group.kv_heads} KV head{'s' if group.kv_heads > 1 else ''} × {group.head_dim} head dim × {size}")
        if context is not None:
            held = group.tokens_held(context, between_calls)
            text += f" × {held:,} tokens" + (" (window)" if held < context else "")
        parts.append(text)
    total = " + ".join(f"({part})" for part in parts) if len(parts) > 1 else parts[0]
    return f"{batch:,} × ({total})" if batch > 1 else total


def check_positive(**values: int) -> None:
    """``InputError`` naming the first value below 1 (``check_positive(context=0)``)."""
    for name, value in values.items():
        if value <= 0:
            raise InputError(f"The {name} must be at least 1 (got {value:,}).")


@dataclass(frozen=True)
class MemoryEstimate:
    """Weights and KV cache of one model at one context, batch and pair of precisions."""

    spec: ModelSpec
    context: int
    batch: int
    weights_precision: Precision
    cache_precision: Precision
    kv_bytes_per_token: int
    kv_bytes_per_sequence: int
    kv_bytes_total: int
    weights_bytes: int
    kv_bytes_per_sequence_without_sharing: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes_total

    @property
    def sharing_factor(self) -> float:
        """How many times bigger the cache would be with one KV head per query head."""
        return self.kv_bytes_per_sequence_without_sharing / self.kv_bytes_per_sequence

    @property
    def beyond_max_context(self) -> bool:
        return self.context > self.spec.max_context

    def sentence(self) -> str:
        """The headline, e.g. 'Llama-3.1-70B at 131,072 tokens holds 40 GiB of KV cache per sequence in bf16.'"""
        text = (f"{self.spec.name} at {self.context:,} tokens holds {format_bytes(self.kv_bytes_per_sequence)} "
                f"of KV cache per sequence in {self.cache_precision.key}")
        if self.batch > 1:
            text += f", {format_bytes(self.kv_bytes_total)} for a batch of {self.batch:,}"
        text += "."
        if self.beyond_max_context:
            text += f" (That is beyond the {self.spec.max_context:,} tokens it was trained for.)"
        return text

    def sharing_sentence(self) -> str:
        if not self.spec.shares_kv:
            return (f"{self.spec.name} already has one KV head per query head (multi-head attention): "
                    "nothing is shared, so there is nothing for GQA to save.")
        spec = self.spec
        if spec.groups[0].kind == "latent":
            what = "multi-head latent attention"
        else:
            kind = spec.attention_kind.split(",")[0]
            what = f"{kind} ({spec.query_heads} query heads share {spec.kv_heads} KV head{'s' if spec.kv_heads != 1 else ''})"
        return (f"With one KV head per query head {self.spec.name} would hold "
                f"{format_bytes(self.kv_bytes_per_sequence_without_sharing)} per sequence at {self.context:,} "
                f"tokens: {what} makes it {self.sharing_factor:,.1f}× smaller.")

    def to_dict(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "model": spec.key,
            "name": spec.name,
            "source": spec.source,
            "attention": spec.attention_kind,
            "layers": spec.layers,
            "query_heads": spec.query_heads,
            "kv_heads": spec.kv_heads,
            "head_dim": spec.head_dim,
            "layer_groups": [asdict(group) for group in spec.groups],
            "parameters": spec.parameters,
            "max_context": spec.max_context,
            "context": self.context,
            "batch": self.batch,
            "beyond_max_context": self.beyond_max_context,
            "weights_dtype": self.weights_precision.key,
            "cache_dtype": self.cache_precision.key,
            "cache_group_size": self.cache_precision.group_size or None,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_bytes_per_sequence": self.kv_bytes_per_sequence,
            "kv_bytes_total": self.kv_bytes_total,
            "weights_bytes": self.weights_bytes,
            "total_bytes": self.total_bytes,
            "kv_bytes_per_sequence_one_kv_head_per_query_head": self.kv_bytes_per_sequence_without_sharing,
            "sharing_factor": round(self.sharing_factor, 4),
            "units": "bytes; KiB/MiB/GiB = 2^10/2^20/2^30 bytes",
            "summary": self.sentence(),
        }


def estimate(spec: ModelSpec, context: int, batch: int = 1, weights: Precision = BF16,
             cache: Precision = BF16) -> MemoryEstimate:
    """Everything the page and the CLI print about one model at one setting."""
    check_positive(context=context, batch=batch)
    per_sequence = kv_cache_bytes(spec, context, 1, cache)
    return MemoryEstimate(
        spec=spec, context=context, batch=batch, weights_precision=weights, cache_precision=cache,
        kv_bytes_per_token=kv_bytes_per_token(spec, cache),
        kv_bytes_per_sequence=per_sequence,
        kv_bytes_total=kv_cache_bytes(spec, context, batch, cache),
        weights_bytes=weights_bytes(spec.parameters, weights),
        kv_bytes_per_sequence_without_sharing=kv_cache_bytes(spec.without_sharing(), context, 1, cache),
    )


def format_bytes(count: float) -> str:
    """'40 GiB', '22.5 KiB', '11.25 GiB', '131.4 GiB': binary units, trailing zeros dropped."""
    value, unit = float(count), "bytes"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, next_unit
    if unit == "bytes":
        return f"{int(value):,} bytes"
    decimals = 2 if abs(value) < 100 else 1
    text = f"{value:,.{decimals}f}".rstrip("0").rstrip(".")
    return f"{text} {unit}"


# ----- GPUs and fits --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GPU:
    """A GPU by the memory its driver reports, not the name on the box.

    The marketing figure is neither GB nor GiB of usable memory: an "H100 80 GB" reports 81,559 MiB (79.6 GiB), a
    "B200 192 GB" 183,359 MiB (179.1 GiB). ``memory_mib`` is ``nvidia-smi``'s ``memory.total`` for the card
    (SXM/PCIe variants of one name report the same), the figure a fit must be made against.
    """

    key: str
    name: str
    memory_mib: int

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    @property
    def memory_gib(self) -> float:
        return self.memory_mib / 1024


GPUS: dict[str, GPU] = {g.key: g for g in (
    GPU("t4", "T4 16 GB", 15_360),
    GPU("l4", "L4 24 GB", 23_034),
    GPU("a100-40", "A100 40 GB", 40_960),
    GPU("a100-80", "A100 80 GB", 81_920),
    GPU("h100", "H100 80 GB", 81_559),
    GPU("h200", "H200 141 GB", 143_771),
    GPU("b200", "B200 192 GB", 183_359),
)}


def parse_gpu(name: str) -> GPU:
    key = name.strip().lower().replace(" ", "-").removesuffix("gb").removesuffix("-")
    key = {"a100": "a100-80", "h100-80": "h100", "h200-141": "h200", "b200-192": "b200", "t4-16": "t4",
           "l4-24": "l4"}.get(key, key)
    if key not in GPUS:
        raise InputError(f"Unknown GPU '{name}': use {', '.join(GPUS)}.")
    return GPUS[key]


@dataclass(frozen=True)
class Fit:
    """How one estimate sits on one GPU (memory only: weights + KV cache against the usable memory)."""

    estimate: MemoryEstimate
    gpu: GPU
    reserve: float  # share of the GPU's memory kept back
    usable_bytes: int
    free_for_cache: int  # usable minus weights; negative when the weights alone do not fit
    max_batch: int  # sequences of the estimate's context that fit beside the weights
    max_context: int  # tokens per sequence that fit for the estimate's batch (searched up to MAX_CONTEXT)
    max_context_is_search_limit: bool  # True when even MAX_CONTEXT fits (all-sliding models, tiny models)

    @property
    def fits(self) -> bool:
        return self.estimate.total_bytes <= self.usable_bytes

    @property
    def weights_fit(self) -> bool:
        return self.free_for_cache >= 0

    @property
    def gpus_needed(self) -> int:
        """GPUs of this kind whose usable memory adds up to weights + cache (ignores parallelism overheads)."""
        return max(1, math.ceil(self.estimate.total_bytes / self.usable_bytes))

    def sentence(self) -> str:
        est, gpu = self.estimate, self.gpu
        usable = (f"{format_bytes(self.usable_bytes)} usable: {format_bytes(gpu.memory_bytes)} less a "
                  f"{self.reserve:.0%} reserve")
        weights = f"the weights ({format_bytes(est.weights_bytes)} in {est.weights_precision.key})"
        need = (f"weights + {est.batch:,} × {est.context:,}-token cache = {format_bytes(est.total_bytes)}, "
                f"about {self.gpus_needed} × {gpu.name} by memory alone")
        if not self.weights_fit:
            return (f"It does not fit: {weights} alone exceed the {gpu.name}'s {usable}, before a single token is "
                    f"cached; {need}.")
        left = f"{format_bytes(self.free_for_cache)} left for the KV cache"
        if self.fits:
            longest = (f"at least {self.max_context:,}" if self.max_context_is_search_limit
                       else f"up to {self.max_context:,}")
            return (f"It fits: on one {gpu.name} ({usable}) {weights} leave {left}: room for {self.max_batch:,} "
                    f"sequence{'s' if self.max_batch != 1 else ''} of {est.context:,} tokens, or {longest} tokens "
                    f"per sequence at batch {est.batch:,}.")
        if self.max_batch == 0:
            return (f"It does not fit: on one {gpu.name} ({usable}) {weights} leave {left}, less than the "
                    f"{format_bytes(est.kv_bytes_per_sequence)} one {est.context:,}-token sequence needs; the longest "
                    f"that fits is {self.max_context:,} tokens; {need}.")
        return (f"It does not fit at batch {est.batch:,}: {weights} leave {left}, room for {self.max_batch:,} "
                f"sequences of {est.context:,} tokens; {need}.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu.key, "gpu_name": self.gpu.name, "gpu_bytes": self.gpu.memory_bytes,
            "reserve": self.reserve, "usable_bytes": self.usable_bytes, "free_for_cache_bytes": self.free_for_cache,
            "fits": self.fits, "max_batch": self.max_batch, "max_context": self.max_context,
            "max_context_is_search_limit": self.max_context_is_search_limit, "gpus_needed": self.gpus_needed,
            "summary": self.sentence(),
        }


def fit_on_gpu(est: MemoryEstimate, gpu: GPU, reserve: float = DEFAULT_RESERVE) -> Fit:
    """Whether ``est`` fits on one ``gpu``, and the largest batch and context that would."""
    if not 0.0 <= reserve < 1.0:
        raise InputError(f"The reserve must be a share between 0 and 0.99 of the GPU's memory (got {reserve}).")
    usable = int(gpu.memory_bytes * (1.0 - reserve))
    free = usable - est.weights_bytes
    max_batch = max(free, 0) // est.kv_bytes_per_sequence
    max_context, at_limit = _longest_context(est, max(free, 0))
    return Fit(est, gpu, reserve, usable, free, int(max_batch), max_context, at_limit)


def precision_alternatives(spec: ModelSpec, context: int, batch: int, weights: Precision, cache: Precision,
                           gpu: GPU, reserve: float = DEFAULT_RESERVE) -> list[Fit]:
    """The chosen (weights, cache) precisions on ``gpu``, then the common lower-precision pairs to compare with."""
    pairs = [(weights, cache), (BF16, BF16), (FP8, FP8),
             (WEIGHT_PRECISIONS["int4"], CACHE_PRECISIONS["int4"].with_group_size(cache.group_size or
                                                                                  DEFAULT_CACHE_GROUP))]
    fits: list[Fit] = []
    seen: set[tuple[str, str]] = set()
    for weights_precision, cache_precision in pairs:
        if (weights_precision.key, cache_precision.key) in seen:
            continue
        seen.add((weights_precision.key, cache_precision.key))
        fits.append(fit_on_gpu(estimate(spec, context, batch, weights_precision, cache_precision), gpu, reserve))
    return fits


def _longest_context(est: MemoryEstimate, free: int) -> tuple[int, bool]:
    """The largest context ≤ MAX_CONTEXT whose cache for the estimate's batch fits in ``free`` bytes."""
    def size(context: int) -> int:
        return kv_cache_bytes(est.spec, context, est.batch, est.cache_precision)

    if size(MAX_CONTEXT) <= free:
        return MAX_CONTEXT, True
    low, high = 0, MAX_CONTEXT  # size(low) fits (0 tokens hold 0 bytes), size(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        if size(middle) <= free:
            low = middle
        else:
            high = middle
    return low, False
