"""Numeric drills: a template's parameters drawn from a seed, its answer computed by kvviz's own formulas.

Each quantity below is a thin call into the module that owns the formula (and its tests against live tensors):
cache bytes and FLOPs from ``kvviz.kv_formula``, bytes a decode step moves from ``kvviz.roofline.step_bytes``, GPU
fits from ``kv_formula.fit_on_gpu``, prefix reuse from ``kvviz.serving.prefix.prefix_report``, block counts from
``kvviz.serving.cb_api.blocks_for`` and vLLM's maximum concurrency from ``kvviz.serving.pressure``. A quantity
returns its value in the base unit of its kind (bytes, seconds, FLOPs, tokens, sequences, ratio) and the working
with the numbers in it; ``fill`` converts the value into the unit the question asks for.

Models are the Memory page's presets (``kvviz.kv_configs``) or ``live``: the model the page has loaded, in the
dtype it was loaded in (without one, the default model's preset in float32, as it runs on a CPU).
What it does not do: grade (``grading.py``) or choose which questions a set holds (``mock.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvviz import kv_formula as mem
from kvviz.drills.grading import unit_kind
from kvviz.drills.records import NumericQuestion, NumericTemplate
from kvviz.errors import InputError

LIVE = "live"
LIVE_FALLBACK = ("smollm2-135m", "float32")  # the default model as it runs on a CPU, when no model is loaded


@dataclass(frozen=True)
class LiveModel:
    """What the drills need of a loaded model: its cache geometry and the dtype its cache is held in."""

    spec: mem.ModelSpec
    dtype_name: str


@dataclass(frozen=True)
class Drawn:
    """One template's draw: the model, the cache precision and the parameters."""

    spec: mem.ModelSpec
    precision: mem.Precision
    params: dict[str, Any]
    live: bool


@dataclass(frozen=True)
class Computed:
    """A quantity's value in its kind's base unit, the working, and extra fields the texts may name."""

    value: float
    working: str
    fields: dict[str, Any]


def kv_bytes_per_token(d: Drawn) -> Computed:
    value = mem.kv_bytes_per_token(d.spec, d.precision)
    return Computed(value, f"{mem.formula_text(d.spec, d.precision)} = {value:,} bytes", {})


def layer_bytes_per_step(d: Drawn) -> Computed:
    group = d.spec.groups[d.spec.layout[0]]
    value = mem.layer_cache_bytes(group, 1, 1, d.precision)
    working = (f"2 (K, V) × {group.kv_heads} KV heads × {group.head_dim} head dim × {d.precision.bits // 8} bytes "
               f"= {value:,} bytes in each of the {d.spec.layers} layers")
    return Computed(value, working, {"layers": d.spec.layers})


def kv_cache_bytes(d: Drawn) -> Computed:
    context, batch = int(d.params["context"]), int(d.params.get("batch", 1))
    value = mem.kv_cache_bytes(d.spec, context, batch, d.precision)
    working = f"{mem.formula_text(d.spec, d.precision, context, batch)} = {value:,} bytes ({mem.format_bytes(value)})"
    return Computed(value, working, {})


def hidden_size_overestimate(d: Drawn) -> Computed:
    """How many times ``2·layers·hidden_size·bytes`` per token exceeds the real figure, for a model whose query heads
    times head dim equal its hidden size (so that estimate is the cache with one KV head per query head)."""
    wrong = mem.kv_bytes_per_token(d.spec.without_sharing(), d.precision)
    right = mem.kv_bytes_per_token(d.spec, d.precision)
    hidden = d.spec.query_heads * d.spec.head_dim
    working = (f"2 × {d.spec.layers} layers × {hidden:,} hidden × {d.precision.bits // 8} bytes = {wrong:,} bytes, "
               f"against {mem.formula_text(d.spec, d.precision)} = {right:,} bytes: {wrong / right:g}×")
    return Computed(wrong / right, working, {"hidden": hidden, "query_heads": d.spec.query_heads,
                                             "head_dim": d.spec.head_dim, "kv_heads": d.spec.kv_heads})


def int4_compression(d: Drawn) -> Computed:
    group = int(d.params["group_size"])
    int4 = mem.CACHE_PRECISIONS["int4"].with_group_size(group)
    bf16, packed = mem.kv_bytes_per_token(d.spec, mem.BF16), mem.kv_bytes_per_token(d.spec, int4)
    working = (f"bf16: {bf16:,} bytes per token; int4 with an fp16 scale and zero-point per {group} elements: "
               f"{mem.formula_text(d.spec, int4)} = {packed:,} bytes; {bf16:,} / {packed:,} = {bf16 / packed:.3f}×")
    return Computed(bf16 / packed, working, {})


def decode_attention_flops(d: Drawn) -> Computed:
    context = int(d.params["context"])
    value = mem.attention_flops(d.spec, 1, context)
    group = d.spec.groups[0]
    working = (f"{d.spec.layers} layers × {context:,} keys × 2 × {group.query_heads} query heads × "
               f"({group.head_dim} + {group.value_dim}) = {value:,.0f} FLOPs")
    return Computed(value, working, {})


def naive_over_cached_attention(d: Drawn) -> Computed:
    context = int(d.params["context"])
    naive, cached = mem.attention_flops(d.spec, context, context), mem.attention_flops(d.spec, 1, context)
    pairs = mem.attention_pairs(context, context)
    working = (f"recomputing all {context:,} positions scores {pairs:,} (query, key) pairs per layer "
               f"(1 + 2 + … + {context:,}); the cached step scores {context:,}: {naive / cached:,.1f}×")
    return Computed(naive / cached, working, {})


def decode_floor_seconds(d: Drawn) -> Computed:
    from kvviz.roofline import KNOWN_GPUS, step_bytes

    gpu = next(g for g in KNOWN_GPUS if g.label == d.params["gpu"])
    context = int(d.params["context"])
    weights = mem.weights_bytes(d.spec.parameters, mem.BF16)
    moved = step_bytes(weights, d.spec, d.precision, context, 1)
    seconds = moved / gpu.memory_bytes_per_s
    working = (f"weights {mem.format_bytes(weights)} + the K/V cache at {context:,} positions "
               f"{mem.format_bytes(mem.kv_cache_bytes(d.spec, context, 1, d.precision))} + the new row = "
               f"{moved:,.0f} bytes; / {gpu.memory_bytes_per_s / 1e12:g} TB/s = {seconds * 1e3:.3f} ms")
    return Computed(seconds, working, {"bandwidth": f"{gpu.memory_bytes_per_s / 1e12:g} TB/s"})


def max_batch_on_gpu(d: Drawn) -> Computed:
    gpu = mem.GPUS[d.params["gpu"]]
    context = int(d.params["context"])
    fit = mem.fit_on_gpu(mem.estimate(d.spec, context, 1, mem.BF16, d.precision), gpu)
    working = (f"{mem.format_bytes(fit.usable_bytes)} usable − weights {mem.format_bytes(fit.estimate.weights_bytes)} "
               f"= {mem.format_bytes(fit.free_for_cache)} for the cache; one sequence needs "
               f"{mem.format_bytes(fit.estimate.kv_bytes_per_sequence)}: {fit.max_batch:,} sequences")
    return Computed(fit.max_batch, working, {"gpu_name": gpu.name, "gpu_memory": mem.format_bytes(gpu.memory_bytes)})


def last_block_waste(d: Drawn) -> Computed:
    from kvviz.serving.cb_api import blocks_for

    tokens, block = int(d.params["tokens"]), int(d.params["block_size"])
    blocks = blocks_for(tokens, block)
    per_token = mem.kv_bytes_per_token(d.spec, d.precision)
    empty = blocks * block - tokens
    working = (f"{tokens:,} tokens need {blocks:,} blocks of {block} = {blocks * block:,} slots; {empty} stay empty "
               f"× {per_token:,} bytes per token = {empty * per_token:,} bytes")
    return Computed(empty * per_token, working, {"blocks": blocks})


def prefix_reused_tokens(d: Drawn) -> Computed:
    from kvviz.serving.prefix import prefix_report

    shared, length, block = int(d.params["shared"]), int(d.params["length"]), int(d.params["block_size"])
    first = list(range(shared)) + [-1] * 8  # the first prompt goes on differently after the shared tokens
    second = list(range(shared)) + [-2] * (length - shared)
    report = prefix_report(first, second, block)
    working = (f"{shared} shared tokens hold {shared // block} full blocks of {block}; the block holding the "
               f"prompt's last token (position {length - 1}) is always computed; reused: "
               f"{report.reusable_blocks} blocks = {report.reusable_tokens} tokens")
    return Computed(report.reusable_tokens, working, {})


def max_concurrency(d: Drawn) -> Computed:
    from kvviz.serving.pressure import project_on_gpu

    tokens = int(d.params["tokens"])
    projection = project_on_gpu(d.spec, d.precision.key, d.params["gpu"], 0.9, tokens)
    working = (f"pool: {projection.num_blocks:,} blocks of {projection.block_size} tokens "
               f"({mem.format_bytes(projection.block_bytes)} each); one request of {tokens:,} tokens needs "
               f"{projection.blocks_per_request:,}: {projection.max_concurrency:,.2f} requests")
    return Computed(projection.max_concurrency, working, {"gpu_name": mem.GPUS[d.params["gpu"]].name})


QUANTITIES: dict[str, tuple[str, Callable[[Drawn], Computed]]] = {  # name -> (unit kind, function)
    "kv_bytes_per_token": ("bytes", kv_bytes_per_token),
    "layer_bytes_per_step": ("bytes", layer_bytes_per_step),
    "kv_cache_bytes": ("bytes", kv_cache_bytes),
    "hidden_size_overestimate": ("ratio", hidden_size_overestimate),
    "int4_compression": ("ratio", int4_compression),
    "decode_attention_flops": ("flops", decode_attention_flops),
    "naive_over_cached_attention": ("ratio", naive_over_cached_attention),
    "decode_floor_seconds": ("seconds", decode_floor_seconds),
    "max_batch_on_gpu": ("sequences", max_batch_on_gpu),
    "last_block_waste": ("bytes", last_block_waste),
    "prefix_reused_tokens": ("tokens", prefix_reused_tokens),
    "max_concurrency": ("sequences", max_concurrency),
}


def draw(template: NumericTemplate, seed: int, live: LiveModel | None = None) -> Drawn:
    """The model and parameters ``seed`` picks for ``template``: the same seed always picks the same."""
    from kvviz.kv_configs import get_preset

    rng = random.Random(f"{seed}/{template.id}")
    model = rng.choice(template.models)
    params = {name: rng.choice(values) for name, values in template.parameters}
    if model == LIVE:
        if live is None:
            spec, dtype = get_preset(LIVE_FALLBACK[0]), LIVE_FALLBACK[1]
        else:
            spec, dtype = live.spec, live.dtype_name
        return Drawn(spec, mem.precision_of_torch_dtype(dtype), params, live=True)
    return Drawn(get_preset(model), mem.CACHE_PRECISIONS[str(params.get("dtype", "bf16"))], params, live=False)


def fill(template: NumericTemplate, seed: int, live: LiveModel | None = None) -> NumericQuestion:
    """The question ``seed`` draws from ``template``, its answer computed and given in the template's unit."""
    drawn = draw(template, seed, live)
    kind, function = QUANTITIES[template.quantity]
    computed = function(drawn)
    unit_kind_name, size = unit_kind(template.unit)
    if unit_kind_name != kind:
        raise InputError(f"Drill '{template.id}' asks in {template.unit} for a quantity measured in {kind}.")
    fields = {**drawn.params, "model": drawn.spec.name, "geometry": drawn.spec.geometry(),
              "dtype": drawn.precision.label,  # the label says the bytes per element; the key alone does not
              "note": drawn.spec.note.rstrip("."), "layers": drawn.spec.layers, "parameters": drawn.spec.parameters,
              "working": computed.working,
              **computed.fields}
    answer = computed.value / size
    return NumericQuestion(
        id=template.id, topic=template.topic, prompt=template.prompt.format(**fields), answer=answer,
        unit=template.unit, tolerance=template.tolerance, working=computed.working,
        explanation=template.explanation.format(**fields), link=template.link, misconception=template.misconception,
    )
