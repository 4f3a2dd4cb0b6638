"""The causal attention matrix stacked from cached rows equals one full forward pass; pooling and long traces."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest

from kvviz import attention_matrix as am
from kvviz.charts import attention as charts
from kvviz.models import ModelCard
from kvviz.records import StepRecord, Trace
from kvviz.stepper import DEFAULT_PROMPT
from kvviz.trace_analysis import kv_head_of, query_groups, query_heads_sharing
from stepped import stepped_trace
from tiny_models import sliding_mistral

PROMPT = "The cat sat on the mat. The cat"


def cached_trace(loaded, steps: int, prompt: str = PROMPT, chat_template: bool = False) -> Trace:
    return stepped_trace(loaded, prompt, steps, chat_template=chat_template)[1]


def causal_rows(rng: np.random.Generator, heads: int, queries: range, length: int) -> np.ndarray:
    """Random float16 rows ``(heads, len(queries), length)`` that sum to 1 over keys 0..query."""
    raw = rng.random((heads, len(queries), length), dtype=np.float32)
    allowed = np.arange(length)[None, :] <= np.asarray(queries)[:, None]
    raw = raw * allowed
    return (raw / raw.sum(axis=-1, keepdims=True)).astype(np.float16)


def synthetic_attention_trace(prompt_tokens: int, steps: int, layers: int = 1, heads: int = 3,
                              seed: int = 0) -> Trace:
    """A trace shaped exactly like a cached stepper's (prefill block, then one row per step), no model."""
    rng = np.random.default_rng(seed)
    trace = Trace(model="synthetic", device="cpu", dtype="float32")
    for index in range(steps + 1):
        length = prompt_tokens + index
        queries = range(length) if index == 0 else range(length - 1, length)
        new = len(queries)
        attention = tuple(causal_rows(rng, heads, queries, length) for _ in range(layers))
        ids = tuple(int(t) for t in rng.integers(0, 256, size=new))
        trace.append(StepRecord(
            index=index, kind="prefill" if index == 0 else "decode", path="cached", input_ids=ids, new_ids=ids,
            new_texts=tuple(f"t{t}" for t in ids), token_id=0, token_text="t0", is_eos=False, candidates=(),
            sequence_length=length, cache_layers=(), cache_bytes=0, ms=1.0, tokens_processed=new, flops=0.0,
            attention=attention,
        ))
    return trace


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_stacked_cached_rows_equal_full_forward_attention(name, request):
    loaded = request.getfixturevalue(name)
    trace = cached_trace(loaded, steps=12)
    full = am.full_forward_attention(loaded, trace.token_ids())
    n = len(trace.token_ids())
    assert am.trace_length(trace) == n == trace.prompt_tokens + 12
    for layer, reference in enumerate(full):
        stacked = am.layer_matrix(trace, layer)
        assert stacked.shape == reference.shape == (loaded.card.query_heads, n, n)
        np.testing.assert_allclose(stacked, reference.astype(np.float32), atol=1e-3)
    check = am.check_against_full_forward(trace, loaded)
    assert check.passed and check.max_abs_diff <= 1e-3
    assert (check.tokens_checked, check.prompt_rows, check.decode_rows) == (n, trace.prompt_tokens, 12)
    assert (check.layers, check.heads) == (loaded.card.layers, loaded.card.query_heads)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_stacked_cached_rows_equal_transformers_own_eager_attention(name, request):
    """An independent reference: the same weights in a copy run by transformers' eager attention with
    ``output_attentions=True``, so a mistake in kvviz's own attention function (scale, mask, GQA) cannot cancel."""
    import torch
    from transformers import AutoModelForCausalLM

    loaded = request.getfixturevalue(name)
    trace = cached_trace(loaded, steps=8)
    # A copy of the config: from_config writes the attention implementation into the config it is given, which
    # would switch the shared fixture model to eager attention too.
    config = copy.deepcopy(loaded.model.config)
    reference_model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    reference_model.load_state_dict(loaded.model.state_dict())
    reference_model.eval()
    with torch.inference_mode():
        out = reference_model(torch.tensor([trace.token_ids()]), use_cache=False, output_attentions=True)
    assert len(out.attentions) == loaded.card.layers
    assert loaded.model.config._attn_implementation == "kvviz"  # the shared model is untouched
    for layer, reference in enumerate(out.attentions):
        np.testing.assert_allclose(am.layer_matrix(trace, layer), reference[0].float().numpy(), atol=1e-3)


def test_head_matrix_rows_are_the_recorded_rows_and_causal(tiny_llama):
    trace = cached_trace(tiny_llama, steps=6)
    n = am.trace_length(trace)
    layer, head = 2, 3
    matrix = am.head_matrix(trace, layer, head)
    np.testing.assert_array_equal(matrix, am.layer_matrix(trace, layer)[head])
    assert np.all(np.triu(matrix, k=1) == 0)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=2e-3)
    # The last row is exactly what the last decode step recorded, and attention_row reads the same.
    last = trace.records[-1].attention[layer][head, 0].astype(np.float32)
    np.testing.assert_array_equal(matrix[n - 1], last)
    np.testing.assert_array_equal(am.attention_row(trace, layer, head, n - 1), last)
    np.testing.assert_array_equal(am.attention_row(trace, layer, head, 3), matrix[3, :4])
    with pytest.raises(IndexError):
        am.attention_row(trace, layer, head, n)


def test_row_blocks_of_any_size_stack_to_the_same_matrix(tiny_llama):
    trace = cached_trace(tiny_llama, steps=9)
    whole = am.layer_matrix(trace, 1)
    for rows_per_block in (1, 4, 7):
        rebuilt = np.full_like(whole, np.nan)
        next_row = 0
        for first, block in am.row_blocks(trace, 1, rows_per_block=rows_per_block):
            heads, rows, width = block.shape
            assert first == next_row and rows <= rows_per_block
            assert width == first + rows  # keys after the block's last query are causally zero: left out
            rebuilt[:, first:first + rows] = 0
            rebuilt[:, first:first + rows, :width] = block
            next_row += rows
        np.testing.assert_array_equal(rebuilt, whole)
    np.testing.assert_array_equal(am.layer_matrix(trace, 1, upto=10), whole[:, :10, :10])


def test_sliding_window_rows_are_placed_at_their_absolute_positions():
    loaded = sliding_mistral(window=6)
    trace = cached_trace(loaded, steps=10, prompt="abcdefgh")
    check = am.check_against_full_forward(trace, loaded)
    assert check.passed, check
    matrix = am.head_matrix(trace, 0, 0)
    # Nothing outside the window: query i reads at most keys i-5 .. i.
    rows, cols = np.nonzero(matrix)
    assert np.all(rows - cols < 6)


def test_the_check_catches_a_wrong_row(tiny_llama):
    trace = cached_trace(tiny_llama, steps=5)
    record = trace.records[3]
    # One decode row (layer 2, head 1) replaced by "everything on the first token", as a sink would look.
    wrong = [layer.copy() for layer in record.attention]
    wrong[2][1] = 0
    wrong[2][1, :, 0] = 1
    trace.records[3] = replace(record, attention=tuple(wrong))
    check = am.check_against_full_forward(trace, tiny_llama)
    assert not check.passed and check.max_abs_diff > 0.5
    assert (check.worst_layer, check.worst_head) == (2, 1)


def test_long_traces_are_checked_on_an_exact_prefix(tiny_llama):
    trace = cached_trace(tiny_llama, steps=20)
    check = am.check_against_full_forward(trace, tiny_llama, max_tokens=35)
    assert check.passed
    assert (check.tokens_checked, check.total_tokens) == (35, am.trace_length(trace))
    assert check.prompt_rows + check.decode_rows == 35


@pytest.mark.slow
def test_default_model_stacked_matrix_equals_full_forward(smollm2):
    trace = cached_trace(smollm2, steps=8, prompt=DEFAULT_PROMPT, chat_template=True)
    check = am.check_against_full_forward(trace, smollm2)
    assert check.passed and check.max_abs_diff <= 1e-3
    assert (check.layers, check.heads, check.decode_rows) == (30, 9, 8)


def test_memory_formula_matches_what_a_trace_holds(tiny_llama):
    trace = cached_trace(tiny_llama, steps=7)
    assert trace.attention_bytes() == am.attention_bytes_formula(tiny_llama.card, trace.prompt_tokens, 7)


def test_grouped_query_heads_map_to_their_kv_head():
    card = ModelCard(key="k", name="n", source="s", architecture="llama", layers=30, query_heads=9, kv_heads=3,
                     head_dim=64, context_length=2048, licence="-")
    per = card.queries_per_kv_head
    assert [kv_head_of(h, per) for h in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2] == query_groups(9, 3)
    assert query_heads_sharing(4, per) == [3, 4, 5]
    mha = replace(card, kv_heads=9)
    assert query_heads_sharing(4, mha.queries_per_kv_head) == [4]


@pytest.mark.parametrize("n, factor", [(10, 3), (12, 4), (7, 1), (9, 9)])
def test_pooling_matches_brute_force(n, factor):
    rng = np.random.default_rng(n)
    matrix = causal_rows(rng, 1, range(n), n)[0].astype(np.float32)
    for how, reduce in (("max", np.max), ("mean", np.mean)):
        pooled = am.pool_causal(matrix, factor, how)
        side = -(-n // factor)
        assert pooled.shape == (side, side)
        for a in range(side):
            for b in range(side):
                cells = [matrix[i, j] for i in range(a * factor, min(n, (a + 1) * factor))
                         for j in range(b * factor, min(n, (b + 1) * factor)) if j <= i]
                if cells:
                    assert pooled[a, b] == pytest.approx(reduce(cells), abs=1e-6)
                else:
                    assert np.isnan(pooled[a, b])


def test_streamed_pooling_of_every_layer_equals_pooling_each_full_matrix(tiny_llama):
    trace = cached_trace(tiny_llama, steps=13)
    n = am.trace_length(trace)
    factor = am.pool_factor(n, 8)
    thumbnails = am.pooled_layers(trace, 8, "mean")
    assert thumbnails.shape == (4, 4, -(-n // factor), -(-n // factor))
    for layer in range(4):
        for head in range(4):
            np.testing.assert_allclose(thumbnails[layer, head],
                                       am.pool_causal(am.head_matrix(trace, layer, head), factor, "mean"),
                                       atol=1e-6)


def test_a_2000_token_trace_ships_a_bounded_figure():
    trace = synthetic_attention_trace(prompt_tokens=20, steps=1980, layers=1, heads=3)
    assert am.trace_length(trace) == 2000
    # Rows are compact: 3 heads × 2 bytes × (20² + the 1,980 growing rows) — and that is what the trace reports.
    card = ModelCard(key="s", name="s", source="s", architecture="s", layers=1, query_heads=3, kv_heads=1,
                     head_dim=8, context_length=4096, licence="-")
    assert trace.attention_bytes() == am.attention_bytes_formula(card, 20, 1980) < 13 * 2**20
    matrix = am.head_matrix(trace, 0, 2)
    assert matrix.shape == (2000, 2000)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=3e-3)
    fig = charts.head_heatmap(matrix, trace.token_texts(), prompt_tokens=20, title="t", note="synthetic")
    z = np.asarray(fig.data[0].z)
    assert z.size <= charts.MAX_SIDE ** 2 and z.shape == (250, 250)  # 8×8 blocks of 2,000
    assert "max-pooled 8×8 blocks" in fig.layout.title.text
    # Max-pooling keeps each block's largest weight, so no peak of the full matrix is lost.
    assert np.nanmax(z) == pytest.approx(matrix.max(), abs=1e-6)
    mean_fig = charts.head_heatmap(matrix, trace.token_texts(), prompt_tokens=20, title="t", how="mean")
    assert "mean-pooled" in mean_fig.layout.title.text
    assert len(fig.layout.xaxis.tickvals) <= charts.MAX_TICKS
    thumbnails = am.pooled_layers(trace, charts.THUMBNAIL_SIDE)
    view = charts.model_view(thumbnails, queries_per_kv=3, factor=100, tokens=2000)
    assert np.asarray(view.data[0].z).size <= 30 * 9 * (charts.THUMBNAIL_SIDE + 2) ** 2


def test_short_matrices_are_drawn_cell_for_cell_with_token_labels():
    trace = synthetic_attention_trace(prompt_tokens=5, steps=4)
    matrix = am.head_matrix(trace, 0, 0)
    fig = charts.head_heatmap(matrix, trace.token_texts(), prompt_tokens=5, title="t")
    z = np.asarray(fig.data[0].z, dtype=float)
    np.testing.assert_allclose(np.tril(z), np.tril(matrix), atol=1e-7)
    assert np.all(np.isnan(z[np.triu_indices(9, k=1)]))
    assert list(fig.data[0].x) == [charts.position_label(t, i) for i, t in enumerate(trace.token_texts())]
    assert "pooled" not in fig.layout.title.text
    empty = charts.head_heatmap(np.zeros((0, 0)), [], prompt_tokens=0, title="empty")
    assert len(empty.data) == 0


def test_position_labels_show_whitespace_and_stay_unique():
    assert charts.position_label("\n", 3) == "3·⏎"
    assert charts.position_label(" ", 4) == "4·␣"
    assert charts.position_label(" the", 5) == "5· the"
    assert charts.position_label("x" * 40, 6).endswith("…")
    assert len({charts.position_label("a", i) for i in range(5)}) == 5


def test_token_view_shades_visible_keys_and_fades_later_ones():
    weights = np.array([0.7, 0.1, 0.2], dtype=np.float32)
    html = charts.token_view_html(["<a>", "b", "c", "d"], weights, query=2, prompt_tokens=2)
    assert "&lt;a&gt;" in html  # token text is escaped
    assert "weight 0.7000" in html and "weight 0.2000" in html
    assert "not visible" in html  # token 3 comes after the query
    assert html.count("outline:2px") == 1
    relative = charts.token_view_html(["a", "b", "c"], weights, query=2, prompt_tokens=3, skip_first=True)
    assert "rgba(0,114,178,1.000)" in relative  # 0.2 is the largest after the sink, so it is fully shaded
