"""Engine invariants: cached == naive, cache bytes == live tensors == formula, attention rows, isolation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from kvviz.errors import InputError
from kvviz.models import load_random_model, tiny_config
from kvviz.stepper import CompareStepper, NaiveStepper, Sampling, Stepper
from tiny_models import sliding_mistral

PROMPT = "The quick brown fox jumps over"


def run_pair(loaded, steps: int, prompt=PROMPT):
    cached, naive = Stepper(loaded), NaiveStepper(loaded)
    records = [(cached.prefill(prompt), naive.prefill(prompt))]
    for _ in range(steps):
        records.append((cached.step(), naive.step()))
        torch.testing.assert_close(cached.last_logits, naive.last_logits, rtol=1e-4, atol=1e-4)
    return records


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_cached_and_naive_agree_for_48_greedy_steps(name, request):
    loaded = request.getfixturevalue(name)
    records = run_pair(loaded, 48)
    assert [c.token_id for c, _ in records] == [n.token_id for _, n in records]
    # The naive path reprocesses the whole sequence; the cached path one token per step.
    prompt_len = records[0][0].sequence_length
    assert [c.tokens_processed for c, _ in records[1:]] == [1] * 48
    assert [n.tokens_processed for _, n in records[1:]] == list(range(prompt_len + 1, prompt_len + 49))


def test_sliding_window_model_caps_cache_and_still_matches_naive():
    loaded = sliding_mistral(window=8)
    records = run_pair(loaded, 12, prompt="abcdef")
    assert [c.token_id for c, _ in records] == [n.token_id for _, n in records]
    last = records[-1][0]
    for layer in last.cache_layers:
        assert layer.sliding_window == 8
        assert layer.positions_seen == 6 + 12
        assert layer.stored <= 8
        assert layer.bytes == 2 * 1 * layer.stored * 8 * 4


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_cache_bytes_match_live_tensors_and_formula(name, request):
    loaded = request.getfixturevalue(name)
    stepper = Stepper(loaded)
    record = stepper.prefill(PROMPT)
    card = loaded.card
    for expected_len in range(record.sequence_length, record.sequence_length + 5):
        live = sum(layer.keys.nbytes + layer.values.nbytes for layer in stepper.cache.layers)
        formula = 2 * card.layers * card.kv_heads * card.head_dim * 4 * expected_len
        assert record.cache_bytes == live == formula
        assert record.cache_len == expected_len
        assert all(layer.shape == (1, card.kv_heads, expected_len, card.head_dim) for layer in record.cache_layers)
        record = stepper.step()
    assert record.cache_layers[0].appended == (expected_len, expected_len + 1)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_attention_rows_sum_to_one_with_one_weight_per_cached_position(name, request):
    loaded = request.getfixturevalue(name)
    stepper = Stepper(loaded)
    prefill = stepper.prefill(PROMPT)
    n = prefill.sequence_length
    assert len(prefill.attention) == loaded.card.layers
    for block in prefill.attention:
        assert block.shape == (loaded.card.query_heads, n, n)
        # Causal: query i gives exactly zero weight to keys after it.
        assert np.all(np.triu(block.astype(np.float32), k=1) == 0)
        np.testing.assert_allclose(block.astype(np.float32).sum(-1), 1.0, atol=2e-3)
    for step in range(1, 4):
        record = stepper.step()
        for row in record.attention:
            assert row.shape == (loaded.card.query_heads, 1, n + step)
            np.testing.assert_allclose(row.astype(np.float32).sum(-1), 1.0, atol=2e-3)


def test_prefill_attention_equals_full_forward_attention(tiny_llama):
    cached = Stepper(tiny_llama)
    naive = NaiveStepper(tiny_llama, capture_attention=True)
    a = cached.prefill(PROMPT).attention
    b = naive.prefill(PROMPT).attention
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), atol=1e-3)


def test_recorded_kv_rows_are_the_appended_cache_columns():
    """Every call's recorded rows equal the live cache at exactly the positions it appended (float16 copies), on a
    model whose rows differ from position to position, so a row shifted by one position would fail."""
    config = tiny_config("tiny-llama")
    config.initializer_range = 0.5  # rows of neighbouring positions far apart (the default init makes them close)
    loaded = load_random_model(config, "tiny-llama-varied")
    stepper = Stepper(loaded, record_kv=True)
    records = [stepper.prefill(PROMPT)] + [stepper.step() for _ in range(3)]
    assert [r.cache_layers[0].appended for r in records[1:]] == [
        (len(records[0].new_ids) + i, len(records[0].new_ids) + i + 1) for i in range(3)]
    for layer_idx in range(loaded.card.layers):
        live = stepper.cache.layers[layer_idx]
        keys = np.concatenate([r.kv_rows[layer_idx][0] for r in records], axis=1)  # (kv_heads, positions, dim)
        values = np.concatenate([r.kv_rows[layer_idx][1] for r in records], axis=1)
        assert keys.shape == (loaded.card.kv_heads, live.keys.shape[2], loaded.card.head_dim)
        for recorded, cached in ((keys, live.keys[0].numpy()), (values, live.values[0].numpy())):
            np.testing.assert_allclose(recorded.astype(np.float32), cached, rtol=2e-3, atol=1e-3)
            shifted = np.abs(recorded[:, 1:].astype(np.float32) - cached[:, :-1]).max(axis=(0, 2))
            assert shifted.min() > 0.05  # what an off-by-one position would look like: far outside the tolerance


def test_two_steppers_interleaved_equal_sequential(tiny_llama):
    def run(stepper, prompt, n):
        out = [stepper.prefill(prompt)]
        out += [stepper.step() for _ in range(n)]
        return out

    seq_a = run(Stepper(tiny_llama), "alpha beta", 8)
    seq_b = run(Stepper(tiny_llama), "gamma delta epsilon", 8)
    a, b = Stepper(tiny_llama), Stepper(tiny_llama)
    inter_a, inter_b = [a.prefill("alpha beta")], [b.prefill("gamma delta epsilon")]
    for _ in range(8):
        inter_a.append(a.step())
        inter_b.append(b.step())
    for solo, mixed in ((seq_a, inter_a), (seq_b, inter_b)):
        assert [r.token_id for r in solo] == [r.token_id for r in mixed]
        assert [r.cache_bytes for r in solo] == [r.cache_bytes for r in mixed]
        for r1, r2 in zip(solo, mixed):
            for x, y in zip(r1.attention, r2.attention):
                np.testing.assert_array_equal(x, y)


def test_compare_stepper_reports_agreement(tiny_gpt2):
    stepper = CompareStepper(tiny_gpt2)
    records = [stepper.prefill(PROMPT)] + [stepper.step() for _ in range(5)]
    assert all(r.same_token for r in records)
    assert all(r.max_logit_diff < 1e-4 for r in records)
    assert all(r.ms_naive > 0 and r.ms > 0 for r in records)
    assert records[-1].naive_tokens_processed == records[-1].sequence_length


def test_compare_stepper_alternates_which_path_runs_first(tiny_gpt2, monkeypatch):
    """Order bias: whatever slows the machine right after a step must not always land on the same path."""
    stepper = CompareStepper(tiny_gpt2)
    order = []
    for path in (stepper.cached, stepper.naive):
        original = path._call
        monkeypatch.setattr(path, "_call", lambda kind, new_ids, _p=path, _f=original: order.append(_p.path) or
                            _f(kind, new_ids))
    stepper.prefill(PROMPT)
    records = [stepper.step() for _ in range(4)]
    firsts = order[2::2]  # after the prefill pair, the first path of each step
    assert firsts == ["cached", "naive", "cached", "naive"]
    assert [r.index for r in records] == [1, 2, 3, 4] and all(r.same_token for r in records)
    assert stepper.cached.ids == stepper.naive.ids


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(tiny_llama):
    def tokens(sampling):
        stepper = Stepper(tiny_llama, sampling=sampling)
        return [stepper.prefill(PROMPT).token_id] + [stepper.step().token_id for _ in range(20)]

    hot = Sampling(temperature=5.0, top_k=50, top_p=0.95, seed=7)
    assert tokens(hot) == tokens(hot)
    assert tokens(hot) != tokens(Sampling(temperature=5.0, top_k=50, top_p=0.95, seed=8))


def test_reset_empties_the_cache(tiny_llama):
    stepper = Stepper(tiny_llama)
    stepper.prefill(PROMPT)
    stepper.step()
    stepper.reset()
    assert stepper.cache.get_seq_length() == 0 and stepper.ids == []
    with pytest.raises(InputError, match="Prefill"):
        stepper.step()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda m: Stepper(m).prefill("   "), "empty"),
        (lambda m: Stepper(m).prefill("x" * 2000), "context"),
        (lambda m: Stepper(m, max_new_tokens=0), "at least 1"),
        (lambda m: Stepper(m, sampling=Sampling(temperature=-1)), "Temperature"),
        (lambda m: Stepper(m, sampling=Sampling(top_p=0)), "top-p"),
    ],
)
def test_bad_input_raises_a_clear_error(tiny_llama, make, match):
    with pytest.raises(InputError, match=match):
        make(tiny_llama)


def test_stepping_past_max_new_tokens_is_refused(tiny_llama):
    stepper = Stepper(tiny_llama, max_new_tokens=3)
    stepper.prefill(PROMPT)  # new token 1
    stepper.step()  # 2
    stepper.step()  # 3
    with pytest.raises(InputError, match="limit of 3 new tokens"):
        stepper.step()


def test_engine_imports_without_streamlit():
    """Every module of the engine (all of kvviz/ but kvviz/ui/), found by walking the package, not listed by hand."""
    code = (
        "import importlib, pkgutil, sys, kvviz\n"
        "names = [m.name for m in pkgutil.walk_packages(kvviz.__path__, 'kvviz.') if not m.name.startswith(('kvviz.ui', 'kvviz.__main__'))]\n"
        "for name in names: importlib.import_module(name)\n"
        "assert 'streamlit' not in sys.modules, 'streamlit was imported'\n"
        "assert {'kvviz.bench', 'kvviz.kv_formula', 'kvviz.kv_configs', 'kvviz.live_check', 'kvviz.charts.step', 'kvviz.heads'} <= set(names), names\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_data_modules_import_neither_torch_nor_transformers():
    """Records and benchmark results are data: reading them (a saved result, a trace) needs no model stack; nor
    does the memory arithmetic."""
    code = (
        "import sys, kvviz.records, kvviz.bench_results, kvviz.kv_formula\n"
        "loaded = sorted({'torch', 'transformers'} & set(sys.modules))\n"
        "assert not loaded, f'imported {loaded}'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_context_limit_counts_the_positions_the_cache_will_hold(tiny_llama):
    """N new tokens need P + N - 1 positions (the last chosen token is never fed): that many fit exactly."""
    context = tiny_llama.card.context_length
    prompt = [3 + i % 200 for i in range(1000)]
    stepper = Stepper(tiny_llama, capture_attention=False, max_new_tokens=context - 1000 + 1)
    stepper.prefill(prompt)
    for _ in range(context - 1000):
        record = stepper.step()
    assert record.cache_len == context
    with pytest.raises(InputError, match="exceeds the model's context"):
        Stepper(tiny_llama, capture_attention=False, max_new_tokens=context - 1000 + 2).prefill(prompt)
