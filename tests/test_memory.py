"""KV-cache memory: hand-checked formulas, presets against their configs, formula == live cache, the CLI contract."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import DeepseekV3Config, Gemma3TextConfig

from transformers import StaticCache

from kvviz import kv_configs as configs
from kvviz import kv_formula as mem
from kvviz import live_check
from kvviz.charts.step import cache_geometry
from kvviz.costs import forward_flops
from kvviz.errors import InputError
from kvviz.models import LoadedModel, converted_smollm2_dir, load_random_model
from kvviz.roofline import step_bytes, weight_bytes_read
from kvviz.stepper import Stepper
from tiny_models import sliding_mistral

INT4 = mem.CACHE_PRECISIONS["int4"]
INT8 = mem.CACHE_PRECISIONS["int8"]


# ----- hand-checked values --------------------------------------------------------------------------------------

def test_opt_13b_is_800_kib_per_token_in_fp16():
    # The vLLM paper's figure: 2 (K, V) × 40 layers × 5,120 hidden × 2 bytes.
    assert mem.kv_bytes_per_token(configs.get_preset("opt-13b"), mem.FP16) == 819_200 == 2 * 40 * 5120 * 2


def test_llama_3_70b_is_320_kib_per_token_in_fp16():
    # Llama-3-70B and 3.1-70B share the geometry: 80 layers, 8 KV heads, head dim 128.
    spec = configs.get_preset("llama-3.1-70b")
    assert (spec.layers, spec.query_heads, spec.kv_heads, spec.head_dim) == (80, 64, 8, 128)
    assert mem.kv_bytes_per_token(spec, mem.FP16) == 320 * 1024 == 2 * 80 * 8 * 128 * 2


def test_smollm2_135m_is_22_5_kib_per_token_in_bf16():
    assert mem.kv_bytes_per_token(configs.get_preset("smollm2-135m"), mem.BF16) == 23_040 == int(22.5 * 1024)


def test_gpu_memory_is_what_the_driver_reports_not_the_name_on_the_box():
    assert mem.GPUS["h100"].memory_bytes == 81_559 * 2**20  # 79.6 GiB, not 80
    assert mem.GPUS["b200"].memory_gib == pytest.approx(179.06, abs=0.01)  # "192 GB"
    # Llama-3.1-70B in bf16 with one 128K sequence needs 171.4 GiB: more than a B200's 161.2 GiB after a 10% reserve
    # (with the nominal 192 GiB it would wrongly seem to fit).
    est = mem.estimate(configs.get_preset("llama-3.1-70b"), 131_072)
    fit = mem.fit_on_gpu(est, mem.GPUS["b200"], reserve=0.1)
    assert est.total_bytes > fit.usable_bytes and not fit.fits and fit.gpus_needed == 2


def test_llama_31_70b_at_128k_holds_40_gib_and_does_not_fit_an_h100_beside_its_weights():
    est = mem.estimate(configs.get_preset("llama-3.1-70b"), 131_072, 1, mem.BF16, mem.BF16)
    assert est.kv_bytes_per_sequence == 40 * mem.GIB
    assert est.sentence().startswith("Llama-3.1-70B at 131,072 tokens holds 40 GiB of KV cache per sequence in bf16")
    assert est.weights_bytes == 2 * 70_553_706_496
    fit = mem.fit_on_gpu(est, mem.GPUS["h100"], reserve=0.0)
    assert not fit.weights_fit and not fit.fits and fit.max_batch == 0 and fit.max_context == 0
    # An H100's driver reports 81,559 MiB, not the 80 GB on its box: that is what the weights are split over.
    assert fit.gpus_needed == math.ceil((2 * 70_553_706_496 + 40 * mem.GIB) / (81_559 * mem.MIB)) == 3
    assert "alone exceed" in fit.sentence()


def test_ignoring_gqa_overstates_the_cache_by_the_group_size():
    est = mem.estimate(configs.get_preset("llama-3.1-70b"), 8192)
    assert est.kv_bytes_per_sequence_without_sharing == 8 * est.kv_bytes_per_sequence
    assert est.sharing_factor == 8.0
    mha = mem.estimate(configs.get_preset("llama-2-13b"), 4096)
    assert mha.sharing_factor == 1.0 and not mha.spec.shares_kv


def test_deepseek_v3_caches_latent_plus_rope_key_not_times_two():
    spec = configs.get_preset("deepseek-v3")
    assert spec.attention_kind == "MLA" and spec.layers == 61
    assert mem.kv_bytes_per_token(spec, mem.BF16) == 61 * (512 + 64) * 2 == 70_272
    # Expanded to per-head keys (128 nope + 64 rope) and values (128) for each of 128 heads.
    assert mem.kv_bytes_per_token(spec.without_sharing(), mem.BF16) == 2 * 61 * 128 * (192 + 128)


def test_sliding_window_caps_the_cache_at_the_window():
    spec = configs.get_preset("mistral-7b")
    per_token = 2 * 32 * 8 * 128 * 2
    assert mem.kv_cache_bytes(spec, 1000) == 1000 * per_token
    assert mem.kv_cache_bytes(spec, 4096) == mem.kv_cache_bytes(spec, 32_768) == 4096 * per_token
    # Between two calls transformers' DynamicCache keeps window - 1: the next token completes the window.
    assert mem.kv_cache_bytes(spec, 32_768, between_calls=True) == 4095 * per_token


def test_hybrid_model_counts_each_layer_type():
    spec = configs.get_preset("gemma-3-270m")  # 15 sliding (512) + 3 full layers, 1 KV head of 256
    assert sorted((g.kind, g.layers, g.window) for g in spec.groups) == [("full", 3, None), ("sliding", 15, 512)]
    assert spec.layout == tuple([0] * 5 + [1]) * 3 or spec.layout == tuple([1] * 5 + [0]) * 3
    per_layer_token = 2 * 1 * 256 * 2
    assert mem.kv_cache_bytes(spec, 32_768) == (15 * 512 + 3 * 32_768) * per_layer_token
    assert mem.kv_cache_bytes(spec, 300) == 18 * 300 * per_layer_token


def test_quantised_caches_include_scale_and_zero_point_per_group():
    spec = configs.get_preset("llama-3.1-70b")  # 80 layers × 16 vectors (K and V of 8 heads) of 128 elements
    vectors = 80 * 16
    assert mem.kv_bytes_per_token(spec, mem.FP8) == vectors * 128
    # int8, groups of 64: 128 bytes + two groups × (fp16 scale + fp16 zero) = 136 bytes per vector.
    assert mem.kv_bytes_per_token(spec, INT8) == vectors * (128 + 2 * 4) == 174_080
    # int4, groups of 64: 64 bytes + 8 bytes of metadata = 72 bytes per vector (4.5 bits per element).
    assert mem.kv_bytes_per_token(spec, INT4) == vectors * 72 == 92_160
    assert mem.kv_bytes_per_token(spec, INT4.with_group_size(128)) == vectors * (64 + 4)
    assert mem.kv_bytes_per_token(spec, INT4.with_group_size(32)) == vectors * (64 + 16)
    assert "4.5 bits" in mem.formula_text(spec, INT4)


def test_weights_bytes_per_precision():
    params = 70_553_706_496
    assert mem.weights_bytes(params, mem.BF16) == 2 * params
    assert mem.weights_bytes(params, mem.FP8) == params
    int4 = mem.WEIGHT_PRECISIONS["int4"]  # groups of 128 with an fp16 scale and zero-point: 4.25 bits
    assert mem.weights_bytes(params, int4) == (params * 4 + math.ceil(params / 128) * 32) // 8


def test_fit_search_finds_the_largest_batch_and_context():
    est = mem.estimate(configs.get_preset("llama-3.1-8b"), 32_768, 4, mem.BF16, mem.BF16)
    fit = mem.fit_on_gpu(est, mem.GPUS["h100"], reserve=0.1)
    free = int(81_559 * 2**20 * 0.9) - est.weights_bytes  # the H100 reports 81,559 MiB
    assert fit.free_for_cache == free and fit.fits
    assert fit.max_batch == free // (32_768 * 128 * 1024)
    size = lambda context: mem.kv_cache_bytes(est.spec, context, 4, mem.BF16)  # noqa: E731
    assert size(fit.max_context) <= free < size(fit.max_context + 1)
    # An all-sliding model's cache stops growing: any context fits once the window does.
    sliding = mem.fit_on_gpu(mem.estimate(configs.get_preset("mistral-7b"), 1000), mem.GPUS["h100"])
    assert sliding.max_context == mem.MAX_CONTEXT and sliding.max_context_is_search_limit


def test_format_bytes_uses_binary_units():
    assert mem.format_bytes(40 * mem.GIB) == "40 GiB"
    assert mem.format_bytes(23_040) == "22.5 KiB"
    assert mem.format_bytes(819_200) == "800 KiB"
    assert mem.format_bytes(512) == "512 bytes"


@pytest.mark.parametrize("call, match", [
    (lambda: mem.kv_cache_bytes(configs.get_preset("gpt2"), 0), "context must be at least 1"),
    (lambda: mem.estimate(configs.get_preset("gpt2"), 10, batch=-1), "batch must be at least 1"),
    (lambda: mem.parse_precision("fp12"), "Unknown dtype 'fp12'"),
    (lambda: configs.get_preset("gpt-5"), "Unknown preset 'gpt-5'"),
    (lambda: mem.parse_gpu("v100"), "Unknown GPU"),
    (lambda: configs.spec_from_config_text("{not json"), "not valid JSON"),
    (lambda: configs.spec_from_config_text('{"num_hidden_layers": 2}'), "no 'model_type'"),
    (lambda: configs.spec_from_config_text('{"model_type": "no-such-arch"}'), "does not know the model type"),
])
def test_bad_input_raises_one_sentence(call, match):
    with pytest.raises(InputError, match=match):
        call()


# ----- presets against their configs ----------------------------------------------------------------------------

# (layers, query heads, KV heads, head dim, max context, attention) as published in each config.json.
EXPECTED = {
    "gpt2": (12, 12, 12, 64, 1024, "MHA"),
    "gpt2-medium": (24, 16, 16, 64, 1024, "MHA"),
    "gpt2-large": (36, 20, 20, 64, 1024, "MHA"),
    "gpt2-xl": (48, 25, 25, 64, 1024, "MHA"),
    "smollm2-135m": (30, 9, 3, 64, 8192, "GQA"),
    "smollm2-360m": (32, 15, 5, 64, 8192, "GQA"),
    "smollm2-1.7b": (24, 32, 32, 64, 8192, "MHA"),
    "gemma-3-270m": (18, 4, 1, 256, 32_768, "MQA, 15/18 layers sliding (512)"),
    "llama-2-7b": (32, 32, 32, 128, 4096, "MHA"),
    "llama-2-13b": (40, 40, 40, 128, 4096, "MHA"),
    "llama-2-70b": (80, 64, 8, 128, 4096, "GQA"),
    "llama-3.1-8b": (32, 32, 8, 128, 131_072, "GQA"),
    "llama-3.1-70b": (80, 64, 8, 128, 131_072, "GQA"),
    "llama-3.1-405b": (126, 128, 8, 128, 131_072, "GQA"),
    "mistral-7b": (32, 32, 8, 128, 32_768, "GQA, sliding window 4,096"),
    "qwen2.5-7b": (28, 28, 4, 128, 131_072, "GQA"),
    "qwen2.5-72b": (80, 64, 8, 128, 131_072, "GQA"),
    "deepseek-v3": (61, 128, 128, 192, 163_840, "MLA"),
    "opt-13b": (40, 40, 40, 128, 2048, "MHA"),
}


def test_every_preset_has_the_published_geometry():
    assert {preset.key for preset in configs.PRESETS} == set(EXPECTED)
    for key, expected in EXPECTED.items():
        spec = configs.get_preset(key)
        assert (spec.layers, spec.query_heads, spec.kv_heads, spec.head_dim, spec.max_context,
                spec.attention_kind) == expected, key
        assert "config.json" in spec.source and "/" in spec.source


@pytest.mark.parametrize("key", [p.key for p in configs.PRESETS])
def test_preset_parameter_count_matches_a_meta_model_built_from_its_config(key):
    preset = next(p for p in configs.PRESETS if p.key == key)
    assert configs.count_parameters(configs.preset_config(preset)) == preset.parameters


@pytest.fixture
def smollm2_folder() -> Path:
    """The converted SmolLM2 model folder (a config.json among its files), or a skip when it was never made."""
    folder = converted_smollm2_dir()
    if not folder.is_dir():
        pytest.skip("the converted SmolLM2 folder is made by the first load of the default model")
    return folder


def test_config_folder_reads_like_the_preset(smollm2_folder):
    folder = smollm2_folder
    spec = configs.spec_from_config_path(folder)
    assert spec.groups == configs.get_preset("smollm2-135m").groups
    assert spec.parameters == 134_515_008  # counted on the meta device from the folder's config


def test_pasted_config_json():
    text = json.dumps({"model_type": "mistral", "num_hidden_layers": 4, "num_attention_heads": 8,
                       "num_key_value_heads": 2, "hidden_size": 256, "sliding_window": 16, "vocab_size": 100})
    spec = configs.spec_from_config_text(text)
    assert spec.attention_kind == "GQA, sliding window 16" and spec.parameters > 0
    assert mem.kv_cache_bytes(spec, 100) == 2 * 4 * 2 * 32 * 2 * 16


# ----- formula == the live cache --------------------------------------------------------------------------------

def assert_stepwise_equal(loaded, prompt_ids: list[int], steps: int) -> None:
    """After the prefill and after each step, every layer's live bytes equal the formula."""
    stepper = Stepper(loaded, capture_attention=False)
    record = stepper.prefill(prompt_ids)
    for _ in range(steps + 1):
        check = live_check.check_record(loaded, record, "test")
        live = sum(layer.keys.nbytes + layer.values.nbytes for layer in stepper.cache.layers)
        assert check.matches, check.layers
        assert check.formula_bytes == check.live_bytes == record.cache_bytes == live
        assert check.positions == len(stepper.ids)
        record = stepper.step()


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_formula_equals_live_cache_bytes_for_tiny_models(name, request):
    loaded = request.getfixturevalue(name)
    assert_stepwise_equal(loaded, list(range(40, 60)), steps=6)
    check = live_check.measure_live_cache(loaded, prompt_tokens=24, new_tokens=5)
    card = loaded.card
    assert check.matches and check.positions == 24 + 4
    assert check.formula_bytes == 2 * card.layers * card.kv_heads * card.head_dim * 4 * (24 + 4)
    assert check.allocator_growth is None and "CUDA" in check.allocator_note


def test_formula_equals_live_cache_past_a_sliding_window():
    loaded = sliding_mistral(window=8)
    assert_stepwise_equal(loaded, list(range(65, 71)), steps=10)  # 6 → 16 tokens, crossing the window of 8
    check = live_check.measure_live_cache(loaded, prompt_tokens=20, new_tokens=3)
    assert {layer.stored for layer in check.layers} == {7}  # window - 1 between calls


def test_formula_equals_live_cache_for_a_hybrid_model():
    config = Gemma3TextConfig(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                              max_position_embeddings=256)
    loaded = load_random_model(config, "tiny-gemma3-hybrid")
    assert_stepwise_equal(loaded, list(range(65, 75)), steps=4)
    check = live_check.measure_live_cache(loaded, prompt_tokens=20, new_tokens=3)
    assert [layer.kind for layer in check.layers] == ["sliding"] * 5 + ["full"]
    assert [layer.stored for layer in check.layers] == [7] * 5 + [22]


def tiny_gemma3(layer_types: list[str]) -> LoadedModel:
    """A 6-layer Gemma-3-style model (window 8) whose layers slide or not as ``layer_types`` says."""
    config = Gemma3TextConfig(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                              max_position_embeddings=256, layer_types=layer_types)
    return load_random_model(config, "tiny-gemma3-" + "".join(kind[0] for kind in layer_types))


def test_hybrid_flops_and_bytes_lie_between_all_sliding_and_all_full_and_match_the_live_cache():
    hybrid = ["sliding_attention", "full_attention"] * 3
    models = {name: tiny_gemma3(types) for name, types in
              (("sliding", ["sliding_attention"] * 6), ("hybrid", hybrid), ("full", ["full_attention"] * 6))}
    text = models["hybrid"].model.config
    weights = weight_bytes_read(models["hybrid"].model)
    context = 20  # past the window of 8: a sliding layer reads 8 positions, a full one all 20
    flops = {name: forward_flops(loaded, text.vocab_size, text.hidden_size, 1, context)
             for name, loaded in models.items()}
    moved = {name: step_bytes(weights, loaded.spec, mem.FP32, context, 1) for name, loaded in models.items()}
    assert flops["sliding"] < flops["hybrid"] < flops["full"]
    assert moved["sliding"] < moved["hybrid"] < moved["full"]
    # Per layer: 4 · 2 query heads · 16 head dim per (query, key) pair; 3 layers see 8 keys, 3 see 20.
    spec = models["hybrid"].spec
    assert mem.attention_flops(spec, 1, context) == 4 * 2 * 16 * (3 * 8 + 3 * 20)
    assert mem.kv_cache_bytes(spec, context, 1, mem.FP32) == 2 * 16 * 4 * (3 * 8 + 3 * 20)  # K+V, 1 KV head, fp32
    # A prefill of the 20 tokens: query q sees min(q, 8) keys in a sliding layer, q keys in a full one.
    assert mem.attention_flops(spec, context, context) == 4 * 2 * 16 * (3 * (36 + 12 * 8) + 3 * 210)

    # The formula's bytes are the live DynamicCache's, step by step, and the step chart draws the same line.
    loaded = models["hybrid"]
    stepper = Stepper(loaded, capture_attention=False)
    record = stepper.prefill(list(range(65, 65 + context)))
    for _ in range(3):
        live = sum(layer.keys.nbytes + layer.values.nbytes for layer in stepper.cache.layers)
        formula = mem.kv_cache_bytes(spec, record.cache_len, 1, mem.FP32, between_calls=True)
        assert formula == live == record.cache_bytes == cache_geometry(record).bytes_at([record.cache_len])[0]
        record = stepper.step()
    # A StaticCache preallocates each full layer for the whole run and each sliding layer for its window.
    cache = StaticCache(config=loaded.model.config, max_cache_len=32)
    with torch.inference_mode():
        loaded.model(input_ids=torch.tensor([list(range(65, 75))]), past_key_values=cache, use_cache=True)
    static = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert static == mem.kv_cache_bytes(spec, 32, 1, mem.FP32) == 2 * 16 * 4 * (3 * 8 + 3 * 32)


def test_formula_equals_live_cache_for_latent_attention():
    config = DeepseekV3Config(
        vocab_size=257, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, n_group=2,
        topk_group=1, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=8, max_position_embeddings=256,
    )
    loaded = load_random_model(config, "tiny-deepseek-v3")
    assert_stepwise_equal(loaded, list(range(65, 75)), steps=3)
    check = live_check.measure_live_cache(loaded, prompt_tokens=12, new_tokens=2)
    # transformers 5.23 caches the latent and the RoPE key themselves, so the live tensors hold exactly the formula.
    assert check.matches
    # layers × (latent + RoPE key) × fp32 × tokens
    assert check.formula_bytes == check.live_bytes == 3 * (16 + 8) * 4 * 13 == 3_744


@pytest.mark.slow
def test_formula_equals_live_cache_for_the_default_model(smollm2):
    check = live_check.measure_live_cache(smollm2, prompt_tokens=128, new_tokens=16)
    assert check.matches and check.positions == 143
    assert check.formula_bytes == check.live_bytes == 2 * 30 * 3 * 64 * 4 * 143  # fp32 on the CPU
    assert check.formula == "2 (K, V) × 30 layers × 3 KV heads × 64 head dim × 4 bytes × 143 tokens"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_allocator_growth_matches_the_formula():
    from kvviz.models import load_model

    loaded = load_model("smollm2-135m", device="cuda", dtype="bfloat16")
    check = live_check.measure_live_cache(loaded, prompt_tokens=256, new_tokens=32)
    assert check.matches
    assert check.allocator_growth is not None and abs(check.allocator_error) < 0.02


# ----- the CLI --------------------------------------------------------------------------------------------------

def kvviz(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvviz", "memory", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_json_contract():
    result = kvviz("--preset", "llama-3.1-70b", "--context", "131072", "--batch", "2", "--cache-dtype", "fp8",
                   "--gpu", "h100", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert {"model", "source", "attention", "layers", "kv_heads", "head_dim", "context", "batch", "weights_dtype",
            "cache_dtype", "kv_bytes_per_token", "kv_bytes_per_sequence", "kv_bytes_total", "weights_bytes",
            "total_bytes", "kv_bytes_per_sequence_one_kv_head_per_query_head", "summary", "fit"} <= set(out)
    assert out["kv_bytes_per_token"] == 163_840 and out["kv_bytes_per_sequence"] == 20 * mem.GIB
    assert out["kv_bytes_total"] == 40 * mem.GIB and out["weights_bytes"] == 2 * 70_553_706_496
    assert out["cache_dtype"] == "fp8" and out["weights_dtype"] == "bf16"
    assert out["fit"]["fits"] is False and out["fit"]["gpus_needed"] == 3


def test_cli_table_and_list():
    result = kvviz("--preset", "SmolLM2-135M", "--context", "8192", "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    assert "22.5 KiB" in result.stdout and "180 MiB" in result.stdout  # 23,040 bytes × 8,192 tokens
    listing = kvviz("--list")
    assert listing.returncode == 0
    for key in ("gpt2-xl", "gemma-3-270m", "deepseek-v3", "qwen2.5-72b"):
        assert key in listing.stdout


def test_cli_config_folder(smollm2_folder):
    folder = smollm2_folder
    result = kvviz("--config", str(folder), "--context", "100", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kv_bytes_per_sequence"] == 23_040 * 100


def run_in_process(args: list[str], capsys) -> tuple[int, str, str]:
    """``main()`` in this process: the same parser and error path as the subprocess, without a new interpreter."""
    from kvviz.cli import main

    try:
        status = main(["memory", *args])
    except SystemExit as exit_:  # argparse's usage errors exit from inside the parser
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_config_with_zero_heads_is_one_line_not_a_traceback(tmp_path, capsys):
    config = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 0,
              "num_key_value_heads": 0, "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(config))
    status, out, err = run_in_process(["--config", str(tmp_path), "--context", "10"], capsys)
    lines = err.strip().splitlines()
    assert status == 2 and out == "" and len(lines) == 1 and lines[0].startswith("kvviz: error:"), err


@pytest.mark.parametrize("args, reason", [
    (["--preset", "gpt-9", "--context", "10"], "Unknown preset 'gpt-9'"),
    (["--preset", "gpt2", "--context", "0"], "--context: must be at least 1"),
])
def test_cli_errors_exit_2_with_one_line(args, reason):
    result = kvviz(*args)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvviz: error:") and reason in lines[0], result.stderr


@pytest.mark.parametrize("args, reason", [
    (["--preset", "gpt2", "--context", "-5"], "--context"),
    (["--preset", "gpt2", "--context", "10", "--batch", "0"], "--batch: must be at least 1"),
    (["--preset", "gpt2", "--context", "ten"], "expected a whole number"),
    (["--preset", "gpt2", "--context", "10", "--dtype", "fp12"], "Unknown dtype 'fp12'"),
    (["--preset", "gpt2", "--context", "10", "--cache-dtype", "int3"], "Unknown dtype 'int3'"),
    (["--preset", "gpt2", "--context", "10", "--group-size", "0"], "--group-size: must be at least 1"),
    (["--preset", "gpt2"], "Pass --context"),
    (["--context", "10"], "Choose a model"),
    (["--preset", "gpt2", "--config", "x", "--context", "10"], "not allowed with argument"),
    (["--config", "/no/such/folder", "--context", "10"], "No config.json"),
    (["--preset", "gpt2", "--context", "10", "--gpu", "v100"], "Unknown GPU"),
    (["--preset", "gpt2", "--context", "10", "--gpu", "h100", "--reserve", "1.5"], "--reserve"),
    (["--preset", "gpt2", "--context", "99999999999999"], "the context is at most 1,048,576"),
    (["--preset", "gpt2", "--context", "10", "--batch", "100000"], "the batch is at most 65,536"),
])
def test_cli_nonsense_values_exit_2_with_one_line(args, reason, capsys):
    status, out, err = run_in_process(args, capsys)
    assert status == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvviz: error:") and reason in lines[0], err


# ----- figures --------------------------------------------------------------------------------------------------

def test_figures_draw_the_formula_and_survive_empty_input():
    from kvviz.charts import memory as charts

    for empty in (charts.cache_vs_context_figure([], mem.BF16, 1000), charts.sharing_figure([]),
                  charts.gpu_fit_figure([]), charts.max_batch_figure([]), charts.live_check_figure(None)):
        assert empty.layout.title.text
    mistral, llama = configs.get_preset("mistral-7b"), configs.get_preset("llama-3.1-70b")
    fig = charts.cache_vs_context_figure([llama, mistral], mem.BF16, 131_072)
    solid = {trace.name: trace for trace in fig.data if trace.line.dash == "solid"}
    assert set(solid) == {"Llama-3.1-70B", "Mistral-7B-v0.1"}
    llama_line = dict(zip(solid["Llama-3.1-70B"].x, solid["Llama-3.1-70B"].y))
    assert llama_line[131_072] == 40 * mem.GIB  # plotted in bytes, ticks labelled in binary units
    assert max(solid["Mistral-7B-v0.1"].y) == mem.kv_cache_bytes(mistral, 4096)  # the window's plateau
    fits = mem.precision_alternatives(llama, 131_072, 1, mem.BF16, mem.BF16, mem.GPUS["h100"])
    bars = charts.gpu_fit_figure(fits)
    assert [round(x * mem.GIB) for x in bars.data[1].x][0] == 40 * mem.GIB
    assert "needs 3 GPUs" in bars.data[0].y[0] and "fits" in bars.data[0].y[-1]
    saving = charts.sharing_figure([mem.estimate(llama, 8192)])
    assert saving.data[1].y[0] == 8 * saving.data[0].y[0]
