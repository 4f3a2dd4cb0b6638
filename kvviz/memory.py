"""KV-cache and weights memory: the formulas, public model presets, GPU fits, and the check against a live cache.

What it does:
- Sizes the KV cache of any decoder from its attention geometry, per layer type: full attention (every token),
  sliding window (capped at the window), multi-head latent attention (DeepSeek-style: one compressed latent of
  ``kv_lora_rank`` plus the decoupled RoPE key of ``qk_rope_head_dim`` per token and layer, shared by all heads,
  so not ×2). Hybrid models (Gemma-3: five sliding layers to one full) are counted layer type by layer type.
- Precisions: fp32, fp16, bf16, fp8, and int8 / int4 with the overhead of one fp16 scale and one fp16 zero-point
  per group of ``group_size`` elements (groups never span two heads).
- Presets: the geometry fields of public ``config.json`` files (each cited below), read by the same code as any
  config a user brings: transformers' own config classes, kvviz.models.card_from_config for the head geometry and
  transformers' ``get_layer_types_and_kwargs`` for which layer keeps what (the function DynamicCache itself uses).
- Fits a model on a GPU: weights + cache against the card's memory, largest batch and context that fit.
- Checks the formula against a running model: the bytes of the live ``InstrumentedCache`` (exactly equal), and on
  a CUDA GPU the caching allocator's growth while generating.
- The ``python -m kvviz memory`` subcommand (``add_arguments`` / ``run``).

Units: KiB, MiB, GiB, TiB are powers of 1,024 (1 GiB = 2³⁰ bytes = 1.074 GB); every figure also has exact bytes.
What it does not do: model activations, CUDA context, allocator fragmentation or paged-block rounding; draw
(``kvviz/charts/memory.py``); or import Streamlit.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
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
            "float8": "fp8", "float8_e4m3fn": "fp8", "e4m3": "fp8"}


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
    _check_positive(context=context, batch=batch)
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


def _check_positive(**values: int) -> None:
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
    _check_positive(context=context, batch=batch)
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


# ----- reading configs ------------------------------------------------------------------------------------------

_CACHE_KINDS = {"full_attention": "full", "sliding_attention": "sliding", "chunked_attention": "sliding"}


def spec_from_config(config: Any, key: str, name: str, source: str, parameters: int | None = None,
                     note: str = "") -> ModelSpec:
    """A ``ModelSpec`` from a transformers config: the geometry reader of kvviz.models plus transformers' layer types.

    ``parameters`` None counts them on a meta-device model built from the config (no memory is allocated).
    """
    from transformers.cache_utils import get_layer_types_and_kwargs

    from kvviz.errors import ModelLoadError
    from kvviz.models import card_from_config

    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    try:
        card = card_from_config(config, key=key, name=name, source=source, licence="")
    except (ModelLoadError, TypeError, ZeroDivisionError) as error:
        raise InputError(f"Cannot read the attention geometry of this config ({error}).") from None
    # The same call DynamicCache makes to decide which layers slide, so the formula follows the live cache.
    layer_types, layer_kwargs = get_layer_types_and_kwargs(text)
    latent = getattr(text, "kv_lora_rank", None)
    per_layer: list[LayerGroup] = []
    for layer_type, kwargs in zip(layer_types, layer_kwargs):
        if layer_type == "dummy":
            raise InputError("This config shares KV caches between layers or has attention-free layers, "
                             "which kvviz does not size yet.")
        if layer_type not in _CACHE_KINDS:
            raise InputError(f"This config has '{layer_type}' layers; kvviz sizes attention caches only "
                             "(full, sliding-window and latent attention).")
        window = kwargs.get("sliding_window") if _CACHE_KINDS[layer_type] == "sliding" else None
        if latent:
            group = LayerGroup(
                "latent", 1, card.query_heads, card.query_heads,
                head_dim=int(text.qk_nope_head_dim) + int(text.qk_rope_head_dim), value_dim=int(text.v_head_dim),
                latent_dim=int(latent), rope_dim=int(text.qk_rope_head_dim),
            )
        else:
            group = LayerGroup(_CACHE_KINDS[layer_type], 1, card.query_heads, card.kv_heads, card.head_dim,
                               card.head_dim, int(window) if window else None)
        per_layer.append(group)
    if not per_layer:
        raise InputError("This config has no layers to size.")
    if parameters is None:
        parameters = count_parameters(config) or 0
    groups, layout = group_layers(per_layer)
    return ModelSpec(key=key, name=name, source=source, architecture=card.architecture, parameters=parameters,
                     max_context=card.context_length, groups=groups, layout=layout, note=note)


def spec_of_loaded(loaded: Any) -> ModelSpec:
    """The spec of a loaded model, read from its config layer by layer as the live cache lays itself out.

    A config whose layers this module cannot size (attention-free or shared-cache layers) falls back to the model
    card's geometry, every layer alike, so that stepping and benchmarking such a model still report figures.
    """
    card = loaded.card
    try:
        return spec_from_config(loaded.model.config, key=loaded.key, name=card.name, source=card.source,
                                parameters=card.parameters)
    except InputError:
        return spec_from_windows((card.sliding_window,) * card.layers, card.query_heads, card.kv_heads,
                                 card.head_dim, key=loaded.key, name=card.name, source=card.source,
                                 architecture=card.architecture, parameters=card.parameters,
                                 max_context=card.context_length)


def count_parameters(config: Any) -> int | None:
    """Parameters of the causal LM a config describes, built on the meta device (instant, no memory); None if not."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # any architecture transformers cannot build as a causal LM: the count is simply unknown
        return None
    return sum(p.numel() for p in model.parameters())


def config_from_dict(values: dict[str, Any]) -> Any:
    """A transformers config from a ``config.json`` dict (its ``model_type`` picks the class); no remote code."""
    from transformers import CONFIG_MAPPING

    model_type = values.get("model_type")
    if not model_type:
        raise InputError("The config has no 'model_type', so transformers cannot tell which architecture it is.")
    if model_type not in CONFIG_MAPPING:
        raise InputError(f"transformers does not know the model type '{model_type}' (remote code is not run).")
    try:
        return CONFIG_MAPPING[model_type].from_dict(dict(values))
    except (TypeError, ValueError, KeyError, ArithmeticError) as error:  # e.g. 0 heads: a division by zero
        raise InputError(f"transformers rejected this '{model_type}' config ({_first_line(error)}).") from None


def spec_from_config_text(text: str, parameters: int | None = None) -> ModelSpec:
    """A spec from the text of a pasted ``config.json``."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"That is not valid JSON ({error.msg} at line {error.lineno}).") from None
    if not isinstance(values, dict):
        raise InputError("A config.json holds one JSON object ({...}).")
    config = config_from_dict(values)
    name = str(values.get("_name_or_path") or values.get("model_type"))
    try:
        return spec_from_config(config, key="config", name=name, source="pasted config.json", parameters=parameters)
    except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError) as error:
        raise InputError(f"Cannot read the attention geometry of this config ({_first_line(error)}).") from None


def spec_from_config_path(path: str | Path, parameters: int | None = None) -> ModelSpec:
    """A spec from a ``config.json`` file or a local model folder holding one (read offline, no remote code)."""
    location = Path(path).expanduser()
    config_file = location / "config.json" if location.is_dir() else location
    if not config_file.is_file():
        raise InputError(f"No config.json at '{path}': pass a config.json file or a model folder that holds one.")
    try:
        text = config_file.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"Cannot read '{config_file}' ({_first_line(error)}).") from None
    spec = spec_from_config_text(text, parameters)
    name = location.name if location.is_dir() else location.parent.name or spec.name
    return replace(spec, key=name, name=name, source=str(config_file))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:160] if text else type(error).__name__


# ----- presets --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    """The geometry fields of a public config.json (``source``), copied as published."""

    key: str
    name: str
    source: str  # Hugging Face repo whose config.json the fields come from
    config: tuple[tuple[str, Any], ...]
    parameters: int  # counted from the config on the meta device; the model card's rounded figure in the note
    note: str = ""


def _preset(key: str, name: str, source: str, parameters: int, note: str = "", **config: Any) -> Preset:
    return Preset(key, name, source, tuple(config.items()), parameters, note)


_GPT2 = dict(model_type="gpt2", n_positions=1024, vocab_size=50257)
_SMOLLM2 = dict(model_type="llama", head_dim=64, max_position_embeddings=8192, vocab_size=49152,
                tie_word_embeddings=True)
_LLAMA2 = dict(model_type="llama", max_position_embeddings=4096, vocab_size=32000, tie_word_embeddings=False)
_LLAMA31 = dict(model_type="llama", num_key_value_heads=8, max_position_embeddings=131072, vocab_size=128256,
                tie_word_embeddings=False)
_QWEN25 = dict(model_type="qwen2", max_position_embeddings=131072, sliding_window=131072, use_sliding_window=False,
               vocab_size=152064, tie_word_embeddings=False)
# Gemma-3's config.json lists its layer types: five local (sliding, 512 tokens) layers, then one global.
_GEMMA3_270M_LAYERS = (["sliding_attention"] * 5 + ["full_attention"]) * 3

PRESETS: tuple[Preset, ...] = (
    _preset("gpt2", "GPT-2 small", "openai-community/gpt2", 124_439_808, "124M; multi-head attention.",
            n_layer=12, n_head=12, n_embd=768, **_GPT2),
    _preset("gpt2-medium", "GPT-2 medium", "openai-community/gpt2-medium", 354_823_168, "355M.",
            n_layer=24, n_head=16, n_embd=1024, **_GPT2),
    _preset("gpt2-large", "GPT-2 large", "openai-community/gpt2-large", 774_030_080, "774M.",
            n_layer=36, n_head=20, n_embd=1280, **_GPT2),
    _preset("gpt2-xl", "GPT-2 XL", "openai-community/gpt2-xl", 1_557_611_200, "1.5B.",
            n_layer=48, n_head=25, n_embd=1600, **_GPT2),
    _preset("smollm2-135m", "SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M", 134_515_008,
            "kvviz's default model; 9 query heads share 3 KV heads.",
            hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, **_SMOLLM2),
    _preset("smollm2-360m", "SmolLM2-360M", "HuggingFaceTB/SmolLM2-360M", 361_821_120, "",
            hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
            num_key_value_heads=5, **_SMOLLM2),
    _preset("smollm2-1.7b", "SmolLM2-1.7B", "HuggingFaceTB/SmolLM2-1.7B", 1_711_376_384,
            "Multi-head attention: 32 KV heads for 32 query heads.",
            hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
            num_key_value_heads=32, **_SMOLLM2),
    _preset("gemma-3-270m", "Gemma-3-270M", "google/gemma-3-270m", 268_098_176,
            "Hybrid 5:1: 15 layers keep the last 512 tokens, 3 keep everything; one KV head.",
            model_type="gemma3_text", hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
            num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
            layer_types=list(_GEMMA3_270M_LAYERS), max_position_embeddings=32768, vocab_size=262144),
    _preset("llama-2-7b", "Llama-2-7B", "meta-llama/Llama-2-7b-hf", 6_738_415_616, "Multi-head attention.",
            hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=32, **_LLAMA2),
    _preset("llama-2-13b", "Llama-2-13B", "meta-llama/Llama-2-13b-hf", 13_015_864_320, "Multi-head attention.",
            hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
            num_key_value_heads=40, **_LLAMA2),
    _preset("llama-2-70b", "Llama-2-70B", "meta-llama/Llama-2-70b-hf", 68_976_648_192,
            "The first Llama with grouped-query attention (8 KV heads).",
            hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
            num_key_value_heads=8, **_LLAMA2),
    _preset("llama-3.1-8b", "Llama-3.1-8B", "meta-llama/Llama-3.1-8B", 8_030_261_248, "",
            hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, **_LLAMA31),
    _preset("llama-3.1-70b", "Llama-3.1-70B", "meta-llama/Llama-3.1-70B", 70_553_706_496,
            "Same attention geometry as Llama-3-70B (which has an 8K context).",
            hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64, **_LLAMA31),
    _preset("llama-3.1-405b", "Llama-3.1-405B", "meta-llama/Llama-3.1-405B", 405_853_388_800, "",
            hidden_size=16384, intermediate_size=53248, num_hidden_layers=126, num_attention_heads=128, **_LLAMA31),
    _preset("mistral-7b", "Mistral-7B-v0.1", "mistralai/Mistral-7B-v0.1", 7_241_732_096,
            "Every layer slides over 4,096 tokens (v0.2 and later dropped the window).",
            model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, sliding_window=4096,
            vocab_size=32000, tie_word_embeddings=False),
    _preset("qwen2.5-7b", "Qwen2.5-7B", "Qwen/Qwen2.5-7B", 7_615_616_512,
            "28 query heads share 4 KV heads; use_sliding_window is false, so every layer is full.",
            hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
            num_key_value_heads=4, max_window_layers=28, **_QWEN25),
    _preset("qwen2.5-72b", "Qwen2.5-72B", "Qwen/Qwen2.5-72B", 72_706_203_648, "",
            hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
            num_key_value_heads=8, max_window_layers=80, **_QWEN25),
    _preset("deepseek-v3", "DeepSeek-V3", "deepseek-ai/DeepSeek-V3", 671_026_404_352,
            "Multi-head latent attention: 512 latent + 64 RoPE-key elements per token and layer. 671B parameters "
            "without the 14B multi-token-prediction module; 37B active per token (mixture of experts).",
            model_type="deepseek_v3", hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
            num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, n_shared_experts=1,
            n_routed_experts=256, num_experts_per_tok=8, first_k_dense_replace=3, n_group=8, topk_group=4,
            kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128,
            max_position_embeddings=163840, vocab_size=129280, tie_word_embeddings=False),
    _preset("opt-13b", "OPT-13B", "facebook/opt-13b", 12_853_473_280,
            "The vLLM paper's example: 800 KB of KV cache per token in fp16.",
            model_type="opt", hidden_size=5120, ffn_dim=20480, num_hidden_layers=40, num_attention_heads=40,
            word_embed_proj_dim=5120, max_position_embeddings=2048, vocab_size=50272),
)
_PRESETS_BY_KEY = {preset.key: preset for preset in PRESETS}


def preset_config(preset: Preset) -> Any:
    """The transformers config of a preset (its class fills in every field the excerpt leaves out)."""
    return config_from_dict(dict(preset.config))


@lru_cache(maxsize=None)
def get_preset(key: str) -> ModelSpec:
    """A preset's spec by key (case-insensitive); ``InputError`` for an unknown one."""
    preset = _PRESETS_BY_KEY.get(key.strip().lower())
    if preset is None:
        raise InputError(f"Unknown preset '{key}': run `python -m kvviz memory --list` to see the presets.")
    return spec_from_config(preset_config(preset), key=preset.key, name=preset.name,
                            source=f"{preset.source} (config.json)", parameters=preset.parameters, note=preset.note)


def all_presets() -> list[ModelSpec]:
    return [get_preset(preset.key) for preset in PRESETS]


# ----- formula vs the live cache --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerCheck:
    """One layer of a live cache next to the formula."""

    layer: int
    kind: str
    positions_seen: int
    stored: int
    formula_bytes: int
    live_bytes: int


@dataclass(frozen=True)
class LiveCheck:
    """The formula's bytes next to the bytes of the cache a real model holds, and (CUDA) the allocator's growth."""

    model: str
    device: str
    dtype: str
    batch: int
    positions: int  # tokens that went through the cache
    formula_bytes: int
    live_bytes: int
    layers: tuple[LayerCheck, ...]
    how: str  # what produced the cache
    formula: str = ""  # the sum, in words
    allocator_growth: int | None = None  # bytes torch.cuda.memory_allocated grew by while generating
    allocator_note: str = ""

    @property
    def matches(self) -> bool:
        return self.formula_bytes == self.live_bytes and all(l.formula_bytes == l.live_bytes for l in self.layers)

    @property
    def allocator_error(self) -> float | None:
        """Relative difference of the allocator's growth from the formula (None without CUDA)."""
        if self.allocator_growth is None or not self.formula_bytes:
            return None
        return (self.allocator_growth - self.formula_bytes) / self.formula_bytes

    def sentence(self) -> str:
        verdict = "exactly equal" if self.matches else "DIFFERENT"
        return (f"{self.model} on {self.device} ({self.dtype}), {self.positions:,} tokens: the formula says "
                f"{self.formula_bytes:,} bytes, the live K/V tensors hold {self.live_bytes:,} bytes — {verdict}.")

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "layers"},
                "matches": self.matches, "allocator_error": self.allocator_error,
                "layers": [asdict(layer) for layer in self.layers]}


def check_record(loaded: Any, record: Any, how: str) -> LiveCheck:
    """Compare the cache stats of a cached-path ``StepRecord`` of ``loaded`` with the formula, layer by layer."""
    if not record.cache_layers:
        raise InputError("This record holds no cache (the naive path keeps none): step with the cached path.")
    spec = spec_from_config(loaded.model.config, key=loaded.key, name=loaded.card.name, source=loaded.card.source,
                            parameters=loaded.card.parameters)
    first = record.cache_layers[0]
    precision = precision_of_torch_dtype(first.dtype)
    batch = first.shape[0]
    layers = []
    for stat in record.cache_layers:
        group = spec.groups[spec.layout[stat.layer]]
        layers.append(LayerCheck(
            layer=stat.layer, kind=group.kind, positions_seen=stat.positions_seen, stored=stat.stored,
            # DynamicCache is read between two calls: a full sliding layer holds window - 1 tokens then.
            formula_bytes=layer_cache_bytes(group, stat.positions_seen, batch, precision, between_calls=True),
            live_bytes=stat.bytes,
        ))
    return LiveCheck(
        model=loaded.card.name, device=str(loaded.device), dtype=first.dtype, batch=batch,
        positions=first.positions_seen,
        formula_bytes=kv_cache_bytes(spec, first.positions_seen, batch, precision, between_calls=True),
        live_bytes=record.cache_bytes, layers=tuple(layers), how=how,
        formula=formula_text(spec, precision, first.positions_seen, batch, between_calls=True),
    )


def live_prompt_ids(loaded: Any, tokens: int) -> list[int]:
    """A deterministic prompt of exactly ``tokens`` ids: kvviz's default prompt, repeated."""
    from kvviz.stepper import DEFAULT_PROMPT, encode_prompt

    base = encode_prompt(loaded, DEFAULT_PROMPT + " ")
    return (base * (tokens // len(base) + 1))[:tokens]


def measure_live_cache(loaded: Any, prompt_tokens: int = 128, new_tokens: int = 16) -> LiveCheck:
    """Prefill ``prompt_tokens`` and generate ``new_tokens`` with a fresh Stepper; compare its cache with the formula.

    On a CUDA device it also reads ``torch.cuda.memory_allocated`` before the prefill and after the last step: the
    growth is what the cache holds (every activation has been freed by then). A throw-away warm-up call first lets
    cuBLAS workspaces and lazily built buffers be allocated, so they are not counted as cache.
    """
    import torch

    from kvviz.stepper import Stepper

    _check_positive(**{"prompt length": prompt_tokens, "number of new tokens": new_tokens})
    ids = live_prompt_ids(loaded, prompt_tokens)
    cuda = loaded.device.type == "cuda"
    before = None
    if cuda:
        warm_up = Stepper(loaded, capture_attention=False)
        warm_up.prefill(ids)
        warm_up.step()
        del warm_up
        gc.collect()
        torch.cuda.synchronize(loaded.device)
        before = torch.cuda.memory_allocated(loaded.device)
    stepper = Stepper(loaded, capture_attention=False, max_new_tokens=new_tokens)
    record = stepper.prefill(ids)
    for _ in range(new_tokens - 1):
        record = stepper.step()
    growth, note = None, ("The allocator check needs a CUDA GPU: this model runs on the CPU, where PyTorch keeps "
                          "no allocator counter to compare with.")
    if cuda:
        torch.cuda.synchronize(loaded.device)
        growth = torch.cuda.memory_allocated(loaded.device) - before
        note = ("torch.cuda.memory_allocated grew by this much from just before the prefill to just after the last "
                "step. The caching allocator rounds each block up to 512 bytes, hence a small difference. The "
                "counter is the whole process's: another browser session stepping this server's model at the same "
                "time adds its own memory to it.")
    how = f"a fresh prefill of {prompt_tokens} tokens and {new_tokens - 1} decode steps"
    check = check_record(loaded, record, how)
    del stepper  # the cache goes with it; nothing else holds it
    return replace(check, allocator_growth=growth, allocator_note=note)


# ----- command line ---------------------------------------------------------------------------------------------

def _positive(text: str) -> int:
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _at_most(limit: int, what: str) -> Any:
    def parse(text: str) -> int:
        value = _positive(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"{what} is at most {limit:,}, got {value:,}")
        return value
    return parse


def _precision_argument(table: dict[str, Precision]) -> Any:
    def parse(text: str) -> Precision:
        try:
            return parse_precision(text, table)
        except InputError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse


def _reserve(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share such as 0.1 or 10%, got '{text}'") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 0.99, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m kvviz memory``."""
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--preset", help="a model preset (see --list)")
    what.add_argument("--config", help="a config.json file or a local model folder holding one")
    what.add_argument("--list", action="store_true", help="list the presets and their bytes per token")
    parser.add_argument("--context", type=_at_most(MAX_CONTEXT, "the context"),
                        help=f"tokens per sequence, at most {MAX_CONTEXT:,} (required with --preset/--config)")
    parser.add_argument("--batch", type=_at_most(MAX_BATCH, "the batch"), default=1,
                        help=f"sequences held at once, at most {MAX_BATCH:,} (default 1)")
    parser.add_argument("--dtype", type=_precision_argument(WEIGHT_PRECISIONS), default=BF16,
                        help="weights dtype: fp32, fp16, bf16, fp8, int8, int4 (default bf16; the cache follows "
                             "unless --cache-dtype)")
    parser.add_argument("--cache-dtype", type=_precision_argument(CACHE_PRECISIONS), default=None,
                        help="KV cache dtype: fp32, fp16, bf16, fp8, int8, int4 (default: --dtype)")
    parser.add_argument("--group-size", type=_positive, default=DEFAULT_CACHE_GROUP,
                        help=f"elements per scale/zero-point group of an int8/int4 cache (default "
                             f"{DEFAULT_CACHE_GROUP})")
    parser.add_argument("--params", type=_positive, default=None,
                        help="parameter count, when a --config's architecture cannot be counted")
    parser.add_argument("--gpu", type=str, default=None, help=f"also fit on a GPU: {', '.join(GPUS)}")
    parser.add_argument("--reserve", type=_reserve, default=DEFAULT_RESERVE,
                        help="share of GPU memory kept for activations and the CUDA context (default 0.1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    """``python -m kvviz memory``: bytes of weights and KV cache for a preset or a config.json."""
    if args.list:
        return _print_list(args.json)
    if not args.preset and not args.config:
        raise InputError("Choose a model: --preset NAME (see --list) or --config PATH.")
    if args.context is None:
        raise InputError("Pass --context N: the number of tokens per sequence.")
    gpu = parse_gpu(args.gpu) if args.gpu else None
    spec = get_preset(args.preset) if args.preset else spec_from_config_path(args.config, args.params)
    if args.params:
        spec = replace(spec, parameters=args.params)
    cache_source = args.cache_dtype or CACHE_PRECISIONS[args.dtype.key]
    cache = cache_source.with_group_size(args.group_size)
    est = estimate(spec, args.context, args.batch, args.dtype, cache)
    fit = fit_on_gpu(est, gpu, args.reserve) if gpu else None
    if args.json:
        out = est.to_dict()
        if fit is not None:
            out["fit"] = fit.to_dict()
        print(json.dumps(out, indent=2))
        return 0
    for line in _report_lines(est, fit):
        print(line)
    return 0


def _report_lines(est: MemoryEstimate, fit: Fit | None) -> Iterable[str]:
    spec = est.spec
    yield f"# {spec.name} — {spec.attention_kind}; {spec.geometry()}"
    yield f"# source: {spec.source}"
    cache = est.cache_precision
    rows = [
        ("KV cache per token", est.kv_bytes_per_token, f"in {cache.label}"),
        ("KV cache per sequence", est.kv_bytes_per_sequence, f"at {est.context:,} tokens"),
        (f"KV cache, batch {est.batch:,}", est.kv_bytes_total, ""),
        ("weights", est.weights_bytes,
         f"{spec.parameters:,} parameters in {est.weights_precision.key}" if spec.parameters
         else "parameter count unknown: pass --params"),
        ("weights + KV cache", est.total_bytes, ""),
        ("one KV head per query head", est.kv_bytes_per_sequence_without_sharing,
         f"per sequence ({est.sharing_factor:,.1f}× the cache)"),
    ]
    for label, value, detail in rows:
        yield f"{label:28s} {format_bytes(value):>12s}  {value:>20,d} bytes  {detail}".rstrip()
    yield est.sentence()
    if spec.shares_kv:
        yield est.sharing_sentence()
    if fit is not None:
        yield fit.sentence()
    yield "Units: KiB/MiB/GiB = 2^10/2^20/2^30 bytes (1 GiB = 1.074 GB)."


def _print_list(as_json: bool) -> int:
    specs = all_presets()
    if as_json:
        print(json.dumps([{
            "key": s.key, "name": s.name, "source": s.source, "attention": s.attention_kind, "layers": s.layers,
            "query_heads": s.query_heads, "kv_heads": s.kv_heads, "head_dim": s.head_dim,
            "parameters": s.parameters, "max_context": s.max_context,
            "kv_bytes_per_token_bf16": kv_bytes_per_token(s, BF16),
        } for s in specs], indent=2))
        return 0
    print(f"{'preset':15s} {'attention':34s} {'layers':>6s} {'params':>8s} {'context':>9s} "
          f"{'KV/token bf16':>14s}  source")
    for s in specs:
        print(f"{s.key:15s} {s.attention_kind:34s} {s.layers:6d} {s.parameters / 1e9:7.2f}B {s.max_context:9,d} "
              f"{format_bytes(kv_bytes_per_token(s, BF16)):>14s}  {s.source}")
    print("Or --config PATH for any config.json / local model folder. Units: KiB = 1,024 bytes.")
    return 0
