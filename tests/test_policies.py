"""Cache policies: eviction with explicit positions equals masking, budgets hold, bytes are the live tensors',
the perplexity is transformers' own, and the CLI refuses bad input with one line."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch

from kvviz.errors import InputError
from kvviz.models import load_model
from kvviz.policies.eviction import POLICY_NAMES, PolicyCache, PolicySpec
from kvviz.policies.quality import compare_policies, shipped_text, text_ids


@pytest.fixture(scope="module")
def tiny_llama():
    return load_model("tiny-llama", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def tiny_gpt2():
    return load_model("tiny-gpt2", device="cpu", dtype="float32")


def _ids(loaded, count: int) -> list[int]:
    return text_ids(loaded, shipped_text(), count)


@pytest.mark.parametrize("name", ["window", "sinks"])
@pytest.mark.parametrize("model", ["tiny_llama", "tiny_gpt2"])
def test_evicted_cache_with_explicit_positions_equals_the_full_cache_with_the_evicted_positions_masked(
        name, model, request):
    """Keys are cached after RoPE (or beside absolute embeddings), so dropping rows and passing the original
    positions must give what the full cache gives when the same rows are hidden by the attention mask."""
    loaded = request.getfixturevalue(model)
    ids = _ids(loaded, 48)
    spec = PolicySpec(name, budget=20, sinks=4)
    evicted = PolicyCache(loaded.model.config, spec)
    full = PolicyCache(loaded.model.config, PolicySpec("full", 48))
    prompt = 40
    with torch.inference_mode():
        for cache in (evicted, full):
            loaded.model(input_ids=torch.tensor([ids[:prompt]]), position_ids=torch.arange(prompt)[None],
                         past_key_values=cache, use_cache=True)
            cache.after_call(prompt)
        for position in range(prompt, len(ids)):
            held = set(evicted.positions[0][0].tolist()) | {position}
            assert len(held) == spec.budget + 1
            mask = torch.tensor([[1 if p in held else 0 for p in range(position + 1)]])  # (1, full length)
            token, where = torch.tensor([[ids[position]]]), torch.tensor([[position]])
            kept = loaded.model(input_ids=token, position_ids=where, past_key_values=evicted, use_cache=True)
            evicted.after_call(1)
            masked = loaded.model(input_ids=token, position_ids=where, past_key_values=full, use_cache=True,
                                  attention_mask=mask)
            full.after_call(1)
            assert torch.allclose(kept.logits, masked.logits, atol=1e-5, rtol=0), position
    if name == "sinks":
        assert evicted.positions[0][0].tolist()[:4] == [0, 1, 2, 3]


@pytest.mark.parametrize("name", [n for n in POLICY_NAMES if n != "full"])
def test_a_policy_whose_budget_covers_the_whole_text_equals_the_full_cache_exactly(name, tiny_llama):
    ids = _ids(tiny_llama, 40)
    spec = PolicySpec(name, budget=len(ids))
    # check_budget refuses such a budget in a comparison, so drive the caches directly.
    caches = [PolicyCache(tiny_llama.model.config, spec), PolicyCache(tiny_llama.model.config, PolicySpec("full", len(ids)))]
    logits = []
    with torch.inference_mode():
        for cache in caches:
            rows = []
            out = tiny_llama.model(input_ids=torch.tensor([ids[:8]]), position_ids=torch.arange(8)[None],
                                   past_key_values=cache, use_cache=True, kvviz_recorder=cache.attention_recorder(True))
            cache.after_call(8)
            rows.append(out.logits[0, -1])
            for position in range(8, len(ids)):
                recorder = cache.attention_recorder(False)
                extra = {"kvviz_recorder": recorder} if recorder is not None else {}
                out = tiny_llama.model(input_ids=torch.tensor([[ids[position]]]),
                                       position_ids=torch.tensor([[position]]), past_key_values=cache, use_cache=True,
                                       **extra)
                cache.after_call(1)
                rows.append(out.logits[0, -1])
            logits.append(torch.stack(rows))
    assert torch.equal(logits[0], logits[1])
    assert caches[0].positions[0].tolist() == caches[1].positions[0].tolist()


@pytest.mark.parametrize("name", [n for n in POLICY_NAMES if n != "full"])
def test_every_policy_holds_its_budget_and_reports_the_bytes_of_the_live_tensors(name, tiny_llama):
    ids = _ids(tiny_llama, 60)
    result = compare_policies(tiny_llama, ids, [PolicySpec(name, budget=16, sinks=4)], prompt_tokens=30)
    (score,) = result.policies
    card = tiny_llama.card
    # 4 layers × 2 KV heads × 16 tokens × 16 dims × (K, V) × 4 bytes (fp32)
    assert score.bytes_held == card.layers * card.kv_heads * 16 * card.head_dim * 2 * 4 == 16_384
    assert sum(h.bytes for h in score.holdings) == score.bytes_held
    for holding in score.holdings:
        assert all(len(head) == 16 and list(head) == sorted(set(head)) for head in holding.positions)
        assert all(0 <= p < len(ids) - 1 for head in holding.positions for p in head)
    assert score.tokens_scored == len(ids) - 30
    assert 0.0 <= score.top1_agreement <= 1.0 and score.kl >= 0.0 and score.ms_per_token > 0


def test_live_bytes_equal_the_sum_of_the_cache_tensors_nbytes(tiny_llama):
    cache = PolicyCache(tiny_llama.model.config, PolicySpec("knorm", budget=10))
    with torch.inference_mode():
        tiny_llama.model(input_ids=torch.tensor([_ids(tiny_llama, 25)]), position_ids=torch.arange(25)[None],
                         past_key_values=cache, use_cache=True)
    cache.after_call(25)
    live = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert cache.bytes_held() == live == sum(h.bytes for h in cache.holdings())
    assert all(layer.keys.shape[-2] == 10 for layer in cache.layers)


def test_sinks_keeps_the_first_tokens_and_window_only_the_newest(tiny_llama):
    ids = _ids(tiny_llama, 50)
    result = compare_policies(tiny_llama, ids, [PolicySpec("sinks", 12, sinks=4), PolicySpec("window", 12)], 20)
    sinks, window = result.policies
    last = len(ids) - 2  # the last token fed; the last token of the text is only predicted
    assert sinks.holdings[0].positions[0] == (0, 1, 2, 3, *range(last - 7, last + 1))
    assert window.holdings[0].positions[0] == tuple(range(last - 11, last + 1))


def test_the_same_seed_gives_the_same_random_evictions_and_another_seed_others(tiny_llama):
    ids = _ids(tiny_llama, 40)
    runs = [compare_policies(tiny_llama, ids, [PolicySpec("random", 10, seed=seed)], 20).policies[0]
            for seed in (0, 0, 1)]
    assert runs[0].holdings == runs[1].holdings and runs[0].holdings != runs[2].holdings


def test_perplexity_of_the_full_cache_is_transformers_own_loss(tiny_llama):
    ids = _ids(tiny_llama, 64)
    result = compare_policies(tiny_llama, ids, [PolicySpec("full", len(ids))], prompt_tokens=1)
    with torch.inference_mode():
        loss = tiny_llama.model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
    (full,) = result.policies
    assert full.tokens_scored == len(ids) - 1
    assert math.isclose(full.perplexity, math.exp(float(loss)), rel_tol=1e-5)
    assert full.top1_agreement == 1.0 and full.kl == pytest.approx(0.0, abs=1e-6)


def test_perplexity_over_the_tokens_after_the_prompt_matches_a_masked_label_loss(tiny_llama):
    ids = _ids(tiny_llama, 64)
    result = compare_policies(tiny_llama, ids, [PolicySpec("full", len(ids))], prompt_tokens=20)
    labels = torch.tensor([[-100] * 20 + ids[20:]])  # transformers shifts labels: token t scored from t - 1
    with torch.inference_mode():
        loss = tiny_llama.model(input_ids=torch.tensor([ids]), labels=labels).loss
    assert math.isclose(result.policies[0].perplexity, math.exp(float(loss)), rel_tol=1e-5)


@pytest.mark.parametrize(
    "spec, reason",
    [
        (PolicySpec("lru", 16), "Unknown policy"),
        (PolicySpec("sinks", 4, sinks=4), "sink tokens"),
        (PolicySpec("window", 40), "holds the whole text"),
    ],
)
def test_bad_policy_settings_raise_input_error(spec, reason, tiny_llama):
    with pytest.raises(InputError, match=reason):
        compare_policies(tiny_llama, _ids(tiny_llama, 40), [spec], prompt_tokens=20)


def test_the_shipped_text_is_the_excerpt_its_source_note_describes():
    from kvviz.policies.quality import SHIPPED_TEXT

    text = shipped_text()
    note = (SHIPPED_TEXT.parent / "SOURCE.md").read_text(encoding="utf-8")
    assert text.startswith("It is a truth universally acknowledged") and f"{len(text):,} characters" in note
    assert "[Illustration" not in text and "Gutenberg" not in text


# ----- quantised caches ------------------------------------------------------------------------------------------

def test_the_fp8_cache_holds_every_token_in_one_byte_plus_a_scale_per_tensor(tiny_llama):
    ids = _ids(tiny_llama, 60)
    result = compare_policies(tiny_llama, ids, [PolicySpec("fp8", 16), PolicySpec("full", 16)], prompt_tokens=30)
    fp8, full = result.policies
    card, fed = tiny_llama.card, len(ids) - 1
    # per layer: K and V of 2 KV heads × 59 tokens × 16 dims at 1 byte, and one float32 scale each
    assert fp8.bytes_held == card.layers * (2 * card.kv_heads * fed * card.head_dim + 2 * 4) == 15_136
    assert full.bytes_held == 4 * fp8.bytes_held - card.layers * 2 * 4 * 4
    assert fp8.budget_tokens is None and fp8.holdings[0].positions[0] == tuple(range(fed))
    assert fp8.kl > 0.0 and math.isfinite(fp8.perplexity)


@pytest.mark.skipif(importlib.util.find_spec("hqq") is None, reason="needs the optional hqq==0.2.8.post1")
def test_int4_and_int2_caches_through_hqq_hold_fewer_bytes_the_fewer_the_bits(tiny_llama):
    ids = _ids(tiny_llama, 200)
    result = compare_policies(tiny_llama, ids, [PolicySpec(n, 16) for n in ("full", "int4", "int2")], 100)
    full, int4, int2 = result.policies
    assert int2.bytes_held < int4.bytes_held < full.bytes_held
    assert int2.kl > int4.kl > 0.0
    # int4 of the 100-token prompt (0.5 byte + 8 bytes of scale and zero per 64 elements) + 99 fp32 residual tokens
    card = tiny_llama.card
    per_layer = 2 * (card.kv_heads * 100 * card.head_dim // 2 + card.kv_heads * 100 * card.head_dim // 64 * 8
                     + card.kv_heads * 99 * card.head_dim * 4)
    assert int4.bytes_held == card.layers * per_layer


# ----- the CLI --------------------------------------------------------------------------------------------------

def kvviz(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvviz", *args], capture_output=True, text=True, timeout=300)


def test_cli_json_contract(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(shipped_text()[:3000], encoding="utf-8")
    result = kvviz("policies", "--model", "tiny-llama", "--text", str(text), "--tokens", "80", "--budget", "24",
                   "--policies", "full,sinks,h2o", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert {"model", "text", "tokens", "policies"} <= set(out)
    assert out["tokens"] == 80 and out["text"] == str(text)
    assert [p["name"] for p in out["policies"]] == ["full", "sinks", "h2o"]
    for policy in out["policies"]:
        assert {"name", "budget_tokens", "bytes_held", "perplexity", "top1_agreement", "kl",
                "ms_per_token"} <= set(policy)
    full, sinks, _ = out["policies"]
    assert full["budget_tokens"] is None and sinks["budget_tokens"] == 24
    assert sinks["bytes_held"] == 4 * 2 * 24 * 16 * 2 * 4 < full["bytes_held"]


def test_cli_table_uses_the_shipped_text_by_default():
    result = kvviz("policies", "--model", "tiny-llama", "--tokens", "60", "--budget", "16",
                   "--policies", "window,knorm")
    assert result.returncode == 0, result.stderr
    assert "Pride and Prejudice" in result.stdout
    rows = [line.split()[0] for line in result.stdout.splitlines() if line and not line.startswith("#")]
    assert rows == ["policy", "window", "knorm"]


@pytest.mark.parametrize(
    "args, reason",
    [
        (["--budget", "16", "--policies", "full,lru"], "Unknown policy 'lru'"),
        (["--budget", "4", "--sinks", "4"], "sink tokens"),
        (["--budget", "60"], "holds the whole text"),
        (["--budget", "16", "--tokens", "100000"], "--tokens asks for"),
        (["--budget", "16", "--text", "/no/such/file.txt"], "cannot read"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, reason):
    base = ["policies", "--model", "tiny-llama", "--tokens", "60"]
    result = kvviz(*base, *args)
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kvviz: error:") and reason in lines[0]


@pytest.mark.parametrize("backend, package", [("hqq", "hqq==0.2.8.post1"), ("quanto", "optimum-quanto==0.2.7")])
def test_a_missing_quantisation_backend_says_what_to_install(backend, package, monkeypatch):
    from kvviz.errors import InputError
    from kvviz.policies import quantised

    monkeypatch.setattr(quantised.importlib.util, "find_spec", lambda name: None)  # as on a machine without it
    with pytest.raises(InputError, match=f"pip install {package}"):
        quantised.check_backend("int4", backend)
    quantised.check_backend("fp8", backend)  # fp8 is built into transformers: nothing to install
