"""Figures of the Step through page: every builder on an empty trace, a real tiny-model trace and 2,000 tokens.

The real trace comes from tiny-llama stepped by the engine (cached and naive), so the checks tie what a chart
draws to what the engine measured: the K/V strip to the live cache tensors, the bytes to the formula, the work to
the tokens each path processed, the attention rows to weights that sum to one.
"""

from __future__ import annotations

import gc

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from kvviz import trace_analysis as analysis
from kvviz.charts import step as charts
from kvviz.trace_analysis import timing_summary
from kvviz.charts.style import NEWEST, NEWLINE, token_label
from kvviz.records import Trace
from stepped import stepped_trace
from synthetic import synthetic_trace

BUILDERS = {
    "candidates": charts.candidates_figure,
    "kv_strips": charts.kv_strips_figure,
    "cache_bytes": charts.cache_bytes_figure,
    "work": charts.work_figure,
    "attention_layer": lambda trace: charts.attention_layer_figure(trace, 1),
    "attention_layers": charts.attention_layers_figure,
    "latency": charts.latency_figure,
    "cumulative": charts.cumulative_figure,
}
STEPS = 6


@pytest.fixture(scope="module")
def stepped(tiny_llama):
    """tiny-llama after a prefill and ``STEPS`` decode steps, compared with the naive path, K/V rows recorded."""
    stepper, trace = stepped_trace(tiny_llama, "The quick brown fox", STEPS, compare=True, record_kv=True)
    return trace, stepper


@pytest.fixture(scope="module")
def long_trace() -> Trace:
    return synthetic_trace(prompt_tokens=100, decode_steps=1900)


def title(fig: go.Figure) -> str:
    return fig.layout.title.text


def validated(fig: go.Figure) -> go.Figure:
    """The builders skip Plotly's validation for speed; here every property they set is checked."""
    return go.Figure(fig.to_dict())


def heatmaps(fig: go.Figure) -> list[go.Heatmap]:
    return [trace for trace in fig.data if isinstance(trace, go.Heatmap)]


@pytest.mark.parametrize("name", BUILDERS)
def test_every_builder_handles_an_empty_trace(name):
    fig = validated(BUILDERS[name](Trace(model="tiny-llama", device="cpu", dtype="float32")))
    assert not fig.data
    assert "Prefill" in fig.layout.annotations[0].text
    assert title(fig).split("<br>")[0].endswith("?")  # still says which question it will answer
    pio.to_json(fig)


@pytest.mark.parametrize("name", BUILDERS)
def test_every_builder_names_its_question_units_and_what_it_ran_on(name, stepped):
    trace, _ = stepped
    fig = validated(BUILDERS[name](trace))
    assert fig.data
    question, note = title(fig).split("<br>")
    assert question.endswith("?")
    assert note.endswith("measured on tiny-llama (random weights, seed 0) · cpu · float32</sup>")  # the card name
    assert fig.layout.xaxis.title.text
    assert fig.layout.yaxis.title.text or name == "candidates"  # its y axis is the tokens themselves
    for data in fig.data:
        assert data.hovertemplate  # exact values on hover


@pytest.mark.parametrize("name", BUILDERS)
def test_every_builder_handles_a_2000_token_trace(name, long_trace):
    fig = validated(BUILDERS[name](long_trace))
    assert fig.data
    for heatmap in heatmaps(fig):
        assert len(heatmap.x) == charts.MAX_COLUMNS  # the latest positions only
        assert heatmap.x[-1].startswith("1999 ")
    assert len(pio.to_json(fig)) < 2_000_000


def test_kv_strip_is_the_live_cache_seen_from_the_trace(stepped):
    trace, stepper = stepped
    key_norms, value_norms, first = analysis.kv_norms(trace)
    assert first == 0
    for layer, cache_layer in enumerate(stepper.cached.cache.layers):
        keys = cache_layer.keys[0].float().numpy()  # (kv_heads, T, head_dim)
        values = cache_layer.values[0].float().numpy()
        # The records keep float16 copies, so compare at float16 precision.
        np.testing.assert_allclose(key_norms[layer], np.linalg.norm(keys, axis=(0, 2)), rtol=2e-3)
        np.testing.assert_allclose(value_norms[layer], np.linalg.norm(values, axis=(0, 2)), rtol=2e-3)


def test_kv_strip_frames_the_column_appended_this_step(stepped):
    trace, _ = stepped
    fig = charts.kv_strips_figure(trace)
    length = trace.records[-1].cache_len
    keys, values = heatmaps(fig)
    assert np.asarray(keys.z).shape == (4, length)
    assert len(keys.x) == len(values.x) == length
    frames = [(shape.xref, shape.x0, shape.x1) for shape in fig.layout.shapes]
    assert frames == [("x", length - 1.5, length - 0.5), ("x2", length - 1.5, length - 0.5)]
    assert f"[1, 2, {length}, 16]" in title(fig)  # K and V shape as transformers holds them


def test_kv_norms_window_keeps_the_latest_positions():
    trace = synthetic_trace(prompt_tokens=7, decode_steps=30, layers=2, kv_heads=1, head_dim=4)
    full_keys, _, _ = analysis.kv_norms(trace, max_columns=1000)
    keys, _, first = analysis.kv_norms(trace, max_columns=10)
    assert first == 27 and keys.shape == (2, 10)
    np.testing.assert_array_equal(keys, full_keys[:, 27:])


def test_vector_lengths_are_remembered_only_while_their_trace_lives():
    trace = synthetic_trace(prompt_tokens=5, decode_steps=3, layers=2, kv_heads=1, head_dim=4, seed=1)
    first = analysis.kv_norms(trace)
    remembered = analysis.memo_of(trace).get(("record norms",), dict)
    assert sorted(remembered) == list(range(len(trace.records)))  # one entry per record, computed once
    np.testing.assert_array_equal(analysis.kv_norms(trace)[0], first[0])  # the memo answers the same
    key = id(trace)
    assert key in analysis._MEMOS
    del trace, first, remembered
    gc.collect()
    assert key not in analysis._MEMOS


def test_cache_bytes_sit_on_the_formula_line(stepped):
    trace, _ = stepped
    fig = charts.cache_bytes_figure(trace)
    measured, formula = fig.data
    geometry = charts.cache_geometry(trace.records[-1])
    assert geometry.bytes_per_token == 2 * 4 * 2 * 16 * 4  # 2 · layers · kv_heads · head_dim · 4 bytes
    tokens = np.asarray(measured.x)
    np.testing.assert_allclose(np.asarray(measured.y) * charts.MIB, tokens * geometry.bytes_per_token)
    slope = (formula.y[1] - formula.y[0]) / (formula.x[1] - formula.x[0])
    assert slope * charts.MIB == pytest.approx(geometry.bytes_per_token)


def test_work_is_one_token_cached_and_the_whole_context_naive(stepped):
    trace, _ = stepped
    naive, cached = charts.work_figure(trace).data
    assert list(cached.y) == [1] * STEPS
    assert list(naive.y) == [r.sequence_length for r in trace.decode_steps]
    assert naive.name == "naive recompute"


def test_attention_rows_sum_to_one_and_show_the_kv_head_groups(stepped):
    trace, _ = stepped
    fig = charts.attention_layer_figure(trace, 1)
    (heatmap,) = heatmaps(fig)
    weights = np.asarray(heatmap.z, dtype=np.float64)
    assert weights.shape == (4, trace.records[-1].sequence_length)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=5e-3)  # float16 weights
    assert list(heatmap.y) == ["q0 → kv0", "q1 → kv0", "q2 → kv1", "q3 → kv1"]
    lines = [shape for shape in fig.layout.shapes if shape.type == "line"]
    assert [line.y0 for line in lines] == [1.5]  # one boundary between the two groups


def test_small_multiples_hold_every_layer(stepped):
    trace, _ = stepped
    (heatmap,) = heatmaps(charts.attention_layers_figure(trace))
    z = np.asarray(heatmap.z, dtype=np.float64)
    assert z.shape == (4 * (4 + 1), trace.records[-1].sequence_length)  # 4 layers of 4 heads, a gap row each
    np.testing.assert_allclose(np.nansum(z, axis=1)[[0, 5, 10, 15]], 1.0, atol=5e-3)
    assert np.isnan(z[4]).all()


def test_candidates_are_the_top_ten_with_the_chosen_one_marked(stepped):
    trace, _ = stepped
    (bars,) = charts.candidates_figure(trace).data
    record = trace.records[-1]
    assert len(bars.x) == 10
    assert list(bars.x) == sorted(bars.x, reverse=True)
    chosen = [c.token_id for c in record.candidates].index(record.token_id)
    assert bars.marker.color[chosen] == NEWEST


def test_timing_keeps_the_prefill_apart_and_sums_the_steps(stepped):
    from dataclasses import replace

    trace, _ = stepped
    # Known times: a 100 ms prefill (naive 150) and decode steps of 1, 2, 3 … ms (naive 10, 20, 30 …).
    timed = Trace(model=trace.model, device=trace.device, dtype=trace.dtype)
    for index, record in enumerate(trace.records):
        timed.append(replace(record, ms=100.0 if index == 0 else float(index),
                             ms_naive=150.0 if index == 0 else 10.0 * index))
    known = timing_summary(timed)
    assert (known.prefill_ms, known.prefill_naive_ms, known.decode_steps) == (100.0, 150.0, STEPS)
    assert known.cached_decode_ms == STEPS * (STEPS + 1) / 2 and known.naive_decode_ms == 10 * known.cached_decode_ms
    assert known.speedup == pytest.approx(10.0) and known.latest_ms == STEPS
    summary = timing_summary(trace)
    assert summary.decode_steps == STEPS
    naive, cached = charts.cumulative_figure(trace).data
    assert cached.y[-1] == pytest.approx(summary.cached_decode_ms / 1000)
    assert naive.y[-1] == pytest.approx(summary.naive_decode_ms / 1000)
    assert list(charts.latency_figure(trace).data[1].x) == list(range(1, STEPS + 1))


def test_token_labels_make_whitespace_visible():
    assert token_label(" Paris") == "␣Paris"
    assert token_label("\n") == "⏎" == NEWLINE
    assert token_label("") == "∅"
    # Axes that cannot spare a glyph per space mark spaces only in a token of spaces; newlines look the same.
    assert token_label(" the\n", mark_spaces=False) == " the⏎"
    assert token_label("  ", mark_spaces=False) == "␣␣"


def test_a_sliding_window_cache_sits_on_the_formula_line_after_the_window_fills():
    """Mistral-style layers with a window of 8 hold at most 7 tokens between calls: the line bends there."""
    from tiny_models import sliding_mistral

    _, trace = stepped_trace(sliding_mistral(window=8), "abc", 12)
    measured, formula = charts.cache_bytes_figure(trace).data
    tokens, measured_bytes = np.asarray(measured.x), np.asarray(measured.y) * charts.MIB
    assert measured_bytes.max() == 2 * 2 * 1 * 8 * 4 * 7  # 2 layers hold 7 tokens of K and V each, then stop
    on_line = np.interp(tokens, np.asarray(formula.x), np.asarray(formula.y) * charts.MIB)
    np.testing.assert_allclose(measured_bytes, on_line)
    assert list(formula.x) == [0, 7, int(tokens.max())]
    assert "2 of 2 layers sliding (window 8" in charts.cache_geometry(trace.records[-1]).formula_text()
