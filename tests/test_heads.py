"""Head-type scores on hand-built attention matrices with known answers, the induction probe, the default model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kvviz import heads as hd
from kvviz.models import load_random_model, tiny_config
from stepped import stepped_trace

T = 8


def one_hot_rows(targets: list[int]) -> np.ndarray:
    """A ``(T, T)`` causal matrix where query i puts all its weight on key ``targets[i]``."""
    matrix = np.zeros((len(targets), len(targets)), dtype=np.float32)
    matrix[np.arange(len(targets)), targets] = 1.0
    return matrix


def uniform_rows(n: int) -> np.ndarray:
    """Query i spreads its weight evenly over keys 0..i (what a head with all-zero queries computes)."""
    return np.tril(np.ones((n, n), dtype=np.float32)) / np.arange(1, n + 1, dtype=np.float32)[:, None]


def test_known_heads_get_their_known_scores():
    sink = one_hot_rows([0] * T)
    previous = one_hot_rows([0] + list(range(T - 1)))
    self_only = one_hot_rows(list(range(T)))
    uniform = uniform_rows(T)
    scores = hd.score_matrices([np.stack([sink, previous, self_only, uniform])])
    queries = np.arange(1, T)  # sink and entropy average over queries 1..T-1, previous over 2..T-1
    assert scores.sink[0] == pytest.approx([1.0, 1 / (T - 1), 0.0, np.mean(1 / (queries + 1))])
    assert scores.previous[0] == pytest.approx([0.0, 1.0, 0.0, np.mean(1 / (np.arange(2, T) + 1))])
    assert scores.entropy[0] == pytest.approx([0.0, 0.0, 0.0, np.mean(np.log(queries + 1))], abs=1e-6)
    assert scores.spread[0] == pytest.approx([0.0, 0.0, 0.0, 1.0], abs=1e-6)  # uniform over what it can see = 1
    assert np.all(np.isnan(scores.induction))  # no tokens given: nothing to measure
    assert scores.sink.shape == (1, 4) and scores.tokens == T


def test_half_sink_half_previous_head_scores_half_on_each():
    matrix = np.zeros((T, T), dtype=np.float32)
    matrix[0, 0] = matrix[1, 0] = 1.0
    for i in range(2, T):
        matrix[i, 0] = matrix[i, i - 1] = 0.5
    scores = hd.score_matrices([matrix[None]])
    assert scores.sink[0, 0] == pytest.approx((1.0 + 0.5 * (T - 2)) / (T - 1))
    assert scores.previous[0, 0] == pytest.approx(0.5)
    assert scores.entropy[0, 0] == pytest.approx(np.log(2) * (T - 2) / (T - 1))
    # Query 1 sees 2 keys but puts all on one: 0. Queries i >= 2 split in two of i+1 keys: ln 2 / ln(i+1).
    assert scores.spread[0, 0] == pytest.approx(np.sum(np.log(2) / np.log(np.arange(3, T + 1))) / (T - 1))


def test_spread_compares_across_lengths_where_entropy_in_nats_does_not():
    short, long = hd.score_matrices([uniform_rows(10)[None]]), hd.score_matrices([uniform_rows(400)[None]])
    assert long.entropy[0, 0] > 2 * short.entropy[0, 0]  # the same behaviour, a different number of nats
    assert short.spread[0, 0] == pytest.approx(1.0) and long.spread[0, 0] == pytest.approx(1.0)
    # A head that splits evenly over the first and the previous token: spread falls as the context grows.
    two = np.zeros((400, 400), dtype=np.float32)
    two[0, 0] = two[1, 0] = 1.0
    two[np.arange(2, 400), 0] = two[np.arange(2, 400), np.arange(1, 399)] = 0.5
    spread = hd.score_matrices([two[None]]).spread[0, 0]
    assert spread == pytest.approx(np.sum(np.log(2) / np.log(np.arange(3, 401))) / 399) and spread < 0.2


def test_induction_score_reads_the_token_after_the_earlier_occurrence():
    first = [11, 12, 13, 14]
    tokens = first + first  # positions 4..7 repeat 0..3
    # An ideal induction head: query 4+j (token first[j]) reads position j+1; the first copy reads itself.
    induction = one_hot_rows([0, 1, 2, 3, 1, 2, 3, 4])
    previous = one_hot_rows([0, 0, 1, 2, 3, 4, 5, 6])
    scores = hd.score_matrices([np.stack([induction, previous])], tokens)
    assert scores.induction[0] == pytest.approx([1.0, 0.0])
    # Only the four queries of the second copy count; a token seen twice before counts both followers.
    again = [5, 6, 5, 6, 5]
    matrix = uniform_rows(5)
    score = hd.score_matrices([matrix[None]], again).induction[0, 0]
    # Query 2 (5): key 1; query 3 (6): key 2; query 4 (5): keys 1 and 3.
    assert score == pytest.approx(np.mean([1 / 3, 1 / 4, 2 / 5]))


def test_streamed_trace_scores_equal_scores_of_the_full_matrices(tiny_llama):
    from kvviz.attention_matrix import layer_matrix

    _, trace = stepped_trace(tiny_llama, "abcabcabc", 12)
    streamed = hd.score_trace(trace)
    whole = hd.score_matrices([layer_matrix(trace, layer) for layer in range(4)], trace.token_ids())
    for measure in hd.MEASURES:
        np.testing.assert_allclose(streamed.measure(measure), whole.measure(measure), atol=1e-6)
    assert streamed.sink.shape == (4, 4) and streamed.tokens == 21


def test_findings_name_the_passing_heads_or_say_none_pass():
    values = np.zeros((3, 2))
    values[1, 0], values[2, 1] = 0.9, 0.45
    scores = hd.HeadScores(sink=values, previous=values * 0.5, induction=values, entropy=values,
                           spread=values / 2, tokens=10, source="hand-built")
    finding = hd.find_heads(scores, "sink")
    assert finding.passing == ((1, 0, 0.9),) and finding.best == (1, 0, 0.9)
    assert hd.describe(finding) == "1 of 6 heads reach 0.50: L1H0 0.90."
    assert [p[:2] for p in hd.find_heads(scores, "induction").passing] == [(1, 0), (2, 1)]
    none = hd.find_heads(scores, "previous")
    assert none.passing == ()
    assert hd.describe(none) == "No head reaches 0.50; the highest is layer 1 head 0 at 0.45."
    assert hd.describe_entropy(scores) == ("Most focused: layer 0 head 0 (spread 0.00, 0.00 nats); most spread out: "
                                           "layer 1 head 0 (spread 0.45, 0.90 nats).")


def test_probe_tokens_are_seeded_distinct_ordinary_tokens_repeated_twice(tiny_llama):
    ids = hd.probe_token_ids(tiny_llama, 50, seed=3)
    assert len(ids) == 100 and ids[:50] == ids[50:]
    assert len(set(ids[:50])) == 50
    assert not set(ids) & set(tiny_llama.tokenizer.all_special_ids)
    assert ids == hd.probe_token_ids(tiny_llama, 50, seed=3)
    assert ids != hd.probe_token_ids(tiny_llama, 50, seed=4)
    with pytest.raises(ValueError):
        hd.probe_token_ids(tiny_llama, 1)


def test_probe_on_a_model_with_zero_queries_gives_the_uniform_answer():
    """Zeroed query projections make every score 0, so each head attends uniformly: the answer is arithmetic."""
    loaded = load_random_model(tiny_config("tiny-llama"), "tiny-llama-zero-queries")
    with torch.no_grad():
        for layer in loaded.model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
    half = 20
    probe = hd.run_induction_probe(loaded, half_length=half, seed=1)
    n = 2 * half
    second_copy = np.arange(half, n)  # query i reads key i-half+1 among its i+1 keys
    expected = {
        "induction": np.mean(1 / (second_copy + 1)),
        "sink": np.mean(1 / (np.arange(1, n) + 1)),
        "previous": np.mean(1 / (np.arange(2, n) + 1)),
        "entropy": np.mean(np.log(np.arange(1, n) + 1)),
        "spread": 1.0,
    }
    for measure, value in expected.items():
        np.testing.assert_allclose(probe.scores.measure(measure), value, rtol=2e-3)
    assert probe.token_ids[:half] == probe.token_ids[half:] and probe.seed == 1
    assert "2×20 random tokens (seed 1)" in probe.scores.source
    assert hd.find_heads(probe.scores, "induction").passing == ()


@pytest.mark.slow
def test_default_model_has_sinks_previous_token_and_induction_heads(smollm2):
    """Measured on SmolLM2-135M-Instruct (float32, CPU), 2×50 random tokens, seed 0."""
    probe = hd.run_induction_probe(smollm2)
    scores = probe.scores
    induction = hd.find_heads(scores, "induction")
    # Induction heads sit in the middle of the stack, after the layers that can supply previous-token info.
    assert induction.best[:2] == (18, 6) and induction.best[2] == pytest.approx(0.88, abs=0.03)
    assert {(layer, head) for layer, head, _ in induction.passing} >= {(18, 6), (17, 3), (17, 4)}
    assert all(layer >= 17 for layer, _, _ in induction.passing)
    assert np.nanmax(scores.induction[:15]) < 0.1
    previous = hd.find_heads(scores, "previous")
    assert previous.best[:2] == (16, 0) and previous.best[2] > 0.85
    assert {(16, 0), (11, 1), (2, 1), (1, 2)} <= {(layer, head) for layer, head, _ in previous.passing}
    sinks = hd.find_heads(scores, "sink")
    assert len(sinks.passing) > 100 and scores.sink[18, 8] > 0.99  # L18H8 does nothing but sink
    per_layer = (scores.sink >= 0.5).sum(axis=1)
    assert per_layer[[0, 1, 11]].tolist() == [0, 0, 0]  # these layers read content, not the first token
    assert per_layer[3:8].min() >= 7  # layers 3-7: nearly every head parks its weight on token 0
    assert np.nanmin(scores.spread) >= 0.0 and np.nanmax(scores.spread) <= 1.0 + 1e-6
    assert scores.spread[18, 8] < 0.01  # the pure sink is also the most focused head


def test_traces_too_short_to_measure_say_so_instead_of_showing_nan():
    one = hd.score_matrices([np.ones((2, 1, 1), dtype=np.float32)])  # one token: no query after position 0
    assert hd.describe_entropy(one) == "Not measurable on this trace: it needs at least 2 tokens."
    assert hd.describe(hd.find_heads(one, "sink")) == "Not measurable on this trace: it needs at least 2 tokens."
    two = hd.score_matrices([np.stack([one_hot_rows([0, 0])])], token_ids=[5, 6])
    assert hd.describe(hd.find_heads(two, "previous")) == "Not measurable on this trace: it needs at least 3 tokens."
    assert hd.describe(hd.find_heads(two, "induction")) == "Not measurable on this trace: no token occurs twice in it."
    assert "nan" not in hd.describe(hd.find_heads(two, "sink"))
