"""Reading model configs into the memory formula's ``ModelSpec``, and the public presets.

What it does:
- Reads any transformers config (a pasted ``config.json``, a file, a local model folder, a loaded model) with
  transformers' own config classes, kvviz.models.card_from_config for the head geometry and transformers'
  ``get_layer_types_and_kwargs`` for which layer keeps what (the function DynamicCache itself uses).
- Presets: the geometry fields of public ``config.json`` files (each cited below), read by the same code as any
  config a user brings.

What it does not do: the arithmetic (``kv_formula.py``), check a live cache (``live_check.py``), run remote code,
or download anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from kvviz.errors import InputError, first_line
from kvviz.kv_formula import LayerGroup, ModelSpec, group_layers, spec_from_windows


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
        raise InputError(f"transformers rejected this '{model_type}' config ({first_line(error)}).") from None


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
        raise InputError(f"Cannot read the attention geometry of this config ({first_line(error)}).") from None


def spec_from_config_path(path: str | Path, parameters: int | None = None) -> ModelSpec:
    """A spec from a ``config.json`` file or a local model folder holding one (read offline, no remote code)."""
    location = Path(path).expanduser()
    config_file = location / "config.json" if location.is_dir() else location
    if not config_file.is_file():
        raise InputError(f"No config.json at '{path}': pass a config.json file or a model folder that holds one.")
    try:
        text = config_file.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"Cannot read '{config_file}' ({first_line(error)}).") from None
    spec = spec_from_config_text(text, parameters)
    name = location.name if location.is_dir() else location.parent.name or spec.name
    return replace(spec, key=name, name=name, source=str(config_file))


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
