"""Figures for the Step through page: a ``Trace`` in, a Plotly ``Figure`` out.

Each builder answers one question (its title), labels its axes with units, puts exact values in the hover and
names the model, device and dtype it was measured on, in the house layout of ``kvviz.charts.style``. Every builder
accepts an empty trace (it then says what to press) and stays quick on a 2,000-token trace: per-position heatmaps
draw at most ``MAX_COLUMNS`` of the latest positions and say so. The page redraws its figures after every token,
so they are assembled as plain dicts and handed to Plotly once, unvalidated (validation would cost ~10 ms per
chart); the tests validate every builder's output instead.

What it does not do: analyse the trace (``kvviz.trace_analysis`` gathers the arrays: vector lengths, the newest
query's attention, the head groups), run the model, import Streamlit, or keep state between calls.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go

from kvviz.charts.style import (
    CACHED, FORMULA, GENERATED, KEYS, NAIVE, NEWEST, OVERHEAD, SEQUENTIAL, VALUES, base_layout, measured_on, token_label,
)
from kvviz.errors import InputError
from kvviz.kv_formula import (  # format_bytes: the Step through page writes its byte counts with it
    MIB, ModelSpec, Precision, format_bytes, kv_bytes_per_token, kv_cache_bytes, precision_of_torch_dtype,
    spec_from_windows,
)
from kvviz.records import StepRecord, Trace
from kvviz.trace_analysis import MAX_COLUMNS, appended_positions, kv_norms, latest, newest_attention, query_groups

# Heatmap scales that fade to transparent at zero, so they read on a light and on a dark background.
_KEYS_SCALE = [[0.0, "rgba(0,158,115,0.04)"], [1.0, KEYS]]
_VALUES_SCALE = [[0.0, "rgba(204,121,167,0.04)"], [1.0, VALUES]]


# ----- small helpers ------------------------------------------------------------------------------------------------

def position_labels(trace: Trace, start: int = 0, stop: int | None = None) -> list[str]:
    """Unique category labels ``"12 ␣Paris"`` for positions ``start..stop`` of the trace's context."""
    texts = trace.token_texts()
    stop = len(texts) if stop is None else stop
    return [f"{position} {token_label(texts[position])}" for position in range(start, stop)]


def note(trace: Trace) -> str:
    """What a figure was measured on."""
    return measured_on(trace.model, trace.device, trace.dtype)


@dataclass(frozen=True)
class CacheGeometry:
    """The cache as transformers holds it, read off the latest record (``[1, kv_heads, T, head_dim]`` per layer, each
    with its own window), as the layer-by-layer spec that ``kvviz.kv_formula`` sizes."""

    spec: ModelSpec
    precision: Precision
    dtype: str

    @property
    def layers(self) -> int:
        return self.spec.layers

    @property
    def kv_heads(self) -> int:
        return self.spec.kv_heads

    @property
    def head_dim(self) -> int:
        return self.spec.head_dim

    @property
    def element_bytes(self) -> int:
        return self.precision.bits // 8

    @property
    def windows(self) -> tuple[int | None, ...]:
        """Per layer: its sliding window, None for a full-attention layer."""
        return tuple(self.spec.groups[group].attended_window for group in self.spec.layout)

    @property
    def bytes_per_token(self) -> int:
        """2 (K and V) · layers · kv_heads · head_dim · bytes per element (while no window is full)."""
        return kv_bytes_per_token(self.spec, self.precision)

    def bytes_at(self, tokens: np.ndarray) -> np.ndarray:
        """Cache bytes after a call that leaves ``tokens`` positions seen, as ``kvviz.kv_formula.kv_cache_bytes`` counts
        them between two calls (a sliding layer then holds at most ``window - 1`` tokens)."""
        return np.asarray([kv_cache_bytes(self.spec, int(t), 1, self.precision, between_calls=True) if t > 0 else 0
                           for t in tokens], dtype=np.int64)

    def breakpoints(self) -> tuple[int, ...]:
        """Token counts where a window fills and the line bends."""
        return tuple(sorted({w - 1 for w in self.windows if w is not None}))

    def formula_text(self) -> str:
        text = (f"2 · {self.layers} layers · {self.kv_heads} KV heads · {self.head_dim} dims · "
                f"{self.element_bytes} B = {self.bytes_per_token:,} B per token")
        sliding = sum(w is not None for w in self.windows)
        if sliding:
            window = min(w for w in self.windows if w is not None)
            text += (f", {sliding} of {self.layers} layers sliding (window {window:,}: they hold at most "
                     f"{window - 1:,} tokens between calls)")
        return text


def cache_geometry(record: StepRecord | None) -> CacheGeometry | None:
    """``None`` before the first prefill, for a record without a cache (the naive path) or of an unknown dtype."""
    if record is None or not record.cache_layers or len(record.cache_layers[0].shape) != 4:
        return None
    first = record.cache_layers[0]
    _, kv_heads, _, head_dim = first.shape
    try:
        precision = precision_of_torch_dtype(first.dtype)
    except InputError:
        return None
    # The cache does not say how many query heads read it; the bytes do not depend on it.
    spec = spec_from_windows((layer.sliding_window for layer in record.cache_layers), kv_heads, kv_heads, head_dim,
                             key="cache", name="live cache", source="the latest record")
    return CacheGeometry(spec, precision, first.dtype)


def shape_text(shape: tuple[int, ...]) -> str:
    """``[1, 3, 46, 64]``: the tensor shape written as transformers holds it."""
    return "[" + ", ".join(str(size) for size in shape) + "]"


PRESS_PREFILL = "Press Prefill to feed the prompt."
_TITLE, _NOTE = "\x00title\x00", "\x00note\x00"


@functools.cache
def _house_layout() -> tuple[dict[str, Any], str]:
    """``base_layout``'s settings as a dict, and its title format, read from it once so the two never drift."""
    layout = base_layout(go.Figure(), _TITLE, "", "", _NOTE).layout.to_plotly_json()
    # Plotly's default template is ~7 KB copied and encoded with every figure; the app's theme (Streamlit's, or
    # the viewer's light/dark choice) styles the charts instead.
    layout["template"] = {}
    return layout, layout["title"]["text"]


class _Spec:
    """One figure assembled as plain dicts: data, layout, shapes and annotations."""

    def __init__(self, title: str, x_title: str, y_title: str, subtitle: str, height: int = 340) -> None:
        layout, title_format = _house_layout()
        self.layout: dict[str, Any] = copy.deepcopy(layout)
        self.layout["title"]["text"] = title_format.replace(_TITLE, title).replace(_NOTE, subtitle)
        self.layout["xaxis"]["title"] = {"text": x_title}
        self.layout["yaxis"]["title"] = {"text": y_title}
        self.layout["height"] = height
        self.data: list[dict[str, Any]] = []
        self.shapes: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def axis(self, name: str, **settings: Any) -> None:
        self.layout.setdefault(name, {}).update(settings)

    def step_axis(self, steps: int) -> None:
        """Whole-number ticks on a step axis (Plotly would otherwise label step 1.5)."""
        if steps <= 80:
            self.axis("xaxis", tick0=0, dtick=max(1, round(steps / 8)))

    def frame_columns(self, start: int, stop: int, xref: str = "x") -> None:
        """Frame the columns appended this step: the newest highlight looks the same on every chart."""
        self.shapes.append({"type": "rect", "xref": xref, "yref": "paper", "x0": start - 0.5, "x1": stop - 0.5,
                            "y0": 0.0, "y1": 1.0, "line": {"color": NEWEST, "width": 3},
                            "fillcolor": "rgba(0,0,0,0)", "layer": "above"})

    def figure(self) -> go.Figure:
        self.layout["shapes"] = self.shapes
        self.layout["annotations"] = self.annotations
        return go.Figure({"data": self.data, "layout": self.layout}, _validate=False)

    def empty(self, message: str) -> go.Figure:
        self.annotations.append({"text": message, "showarrow": False, "x": 0.5, "y": 0.5, "xref": "paper",
                                 "yref": "paper", "font": {"size": 14}})
        self.axis("xaxis", visible=False)
        self.axis("yaxis", visible=False)
        return self.figure()


def _mode(points: int) -> str:
    return "lines+markers" if points <= 100 else "lines"


# ----- token stream -------------------------------------------------------------------------------------------------

def candidates_figure(trace: Trace) -> go.Figure:
    """The latest step's top-10 next-token candidates with their probabilities; the chosen one highlighted."""
    spec = _Spec("Which tokens could come next?", "probability (%)", "", note(trace))
    record = latest(trace)
    if record is None or not record.candidates:
        return spec.empty(PRESS_PREFILL)
    # Two candidates can decode to the same text; a zero-width suffix keeps each its own bar.
    labels = [f"{token_label(c.text)}  " + "\u200b" * index for index, c in enumerate(record.candidates)]
    chosen = [c.token_id == record.token_id for c in record.candidates]
    spec.data.append({
        "type": "bar", "orientation": "h", "y": labels,
        "x": np.array([100.0 * c.probability for c in record.candidates]),
        "marker": {"color": [NEWEST if is_chosen else GENERATED for is_chosen in chosen],
                   "line": {"color": ["#333333" if is_chosen else GENERATED for is_chosen in chosen], "width": 1.5}},
        "customdata": [[c.token_id, c.probability, "(chosen)" if is_chosen else ""]
                       for c, is_chosen in zip(record.candidates, chosen)],
        "hovertemplate": "%{y}<br>id %{customdata[0]}<br>p = %{customdata[1]:.6f} %{customdata[2]}<extra></extra>",
        "text": [f"{100.0 * c.probability:.1f}%" for c in record.candidates], "textposition": "outside",
        "cliponaxis": False, "showlegend": False,
    })
    spec.axis("yaxis", autorange="reversed", type="category")
    spec.axis("xaxis", range=[0, 115])  # room for the percentage written after the longest bar
    spec.layout["margin"] = {"l": 110, "r": 20, "t": 70, "b": 45}
    return spec.figure()


# ----- cache ---------------------------------------------------------------------------------------------------------

def kv_strips_figure(trace: Trace) -> go.Figure:
    """Each layer's K and V cache as a strip over positions; the column appended this step framed."""
    record = latest(trace)
    geometry = cache_geometry(record)
    shape = shape_text(record.cache_layers[0].shape) if geometry else "[1, kv_heads, T, head_dim]"
    spec = _Spec("What does every layer's cache hold?", "position in the context (token)", "layer",
                 f"K and V, each {shape} · {note(trace)}", height=420)
    norms = kv_norms(trace)
    if norms is None or geometry is None:
        return spec.empty(PRESS_PREFILL if record is None else "This trace was recorded without K/V rows.")
    key_norms, value_norms, first = norms
    labels = position_labels(trace, first, first + key_norms.shape[1])
    layers = [f"L{layer}" for layer in range(key_norms.shape[0])]
    start, stop = appended_positions(record)
    for column, (z, name, scale, colour) in enumerate(((key_norms, "keys", _KEYS_SCALE, KEYS),
                                                       (value_norms, "values", _VALUES_SCALE, VALUES))):
        axis = "x" if column == 0 else "x2"
        symbol = "‖K‖" if column == 0 else "‖V‖"
        spec.data.append({
            "type": "heatmap", "z": z, "x": labels, "y": layers, "colorscale": scale, "name": name,
            "xaxis": axis, "yaxis": "y",
            "colorbar": {"title": {"text": symbol}, "x": 0.47 if column == 0 else 1.0, "len": 0.9, "thickness": 12},
            "hovertemplate": f"{name}<br>%{{y}} · position %{{x}}<br>vector length {symbol} = %{{z:.3f}}"
                             "<extra></extra>",
        })
        spec.frame_columns(start - first, stop - first, xref=axis)
        spec.annotations.append({"text": ("Keys (K)", "Values (V)")[column], "xref": f"{axis} domain",
                                 "yref": "paper", "x": 0.0, "y": 1.0, "yanchor": "bottom", "xanchor": "left",
                                 "showarrow": False, "font": {"color": colour, "size": 13}})
    readable = len(labels) <= 80
    axis_style = {"type": "category", "showticklabels": readable, "tickangle": -90,
                  "title": {"text": "position in the context (token)"}}
    spec.axis("xaxis", **axis_style, domain=[0.0, 0.44])
    spec.axis("xaxis2", **axis_style, domain=[0.53, 0.97], anchor="y")
    spec.axis("yaxis", autorange="reversed", type="category")
    spec.layout["height"] = 460 if readable else 400
    spec.layout["margin"] = {"l": 60, "r": 20, "t": 90, "b": 50}
    if first:
        spec.annotations.append({"text": f"latest {len(labels)} of {record.sequence_length} positions",
                                 "showarrow": False, "xref": "paper", "yref": "paper", "x": 1.0, "y": 1.0,
                                 "yanchor": "bottom", "xanchor": "right"})
    return spec.figure()


def cache_bytes_figure(trace: Trace) -> go.Figure:
    """Measured cache bytes after every call, with the formula's straight line over them."""
    spec = _Spec("How much memory does the cache hold as it grows?", "tokens in the cache", "cache size (MiB)",
                 note(trace))
    records = [r for r in trace.records if r.cache_layers]
    geometry = cache_geometry(latest(trace))
    if not records or geometry is None:
        return spec.empty(PRESS_PREFILL)
    tokens = np.array([r.cache_len for r in records])
    measured = np.array([r.cache_bytes for r in records], dtype=np.float64)
    spec.data.append({
        "type": "scatter", "x": tokens, "y": measured / MIB, "mode": _mode(len(records)), "name": "measured",
        "line": {"color": CACHED, "width": 2}, "marker": {"size": 6},
        "customdata": np.stack([np.array([r.index for r in records]), measured], axis=1),
        "hovertemplate": "step %{customdata[0]}<br>%{x} tokens<br>%{customdata[1]:,.0f} B<extra>measured</extra>",
    })
    end = int(tokens.max())
    line_x = np.array([0, *(t for t in geometry.breakpoints() if t < end), end])
    spec.data.append({
        "type": "scatter", "x": line_x, "y": geometry.bytes_at(line_x) / MIB, "mode": "lines",
        "name": "formula", "line": {"color": FORMULA, "dash": "dash", "width": 2},
        "hovertemplate": f"{geometry.formula_text()}<br>%{{x}} tokens → %{{y:.3f}} MiB<extra>formula</extra>",
    })
    spec.axis("xaxis", rangemode="tozero")
    spec.axis("yaxis", rangemode="tozero")
    return spec.figure()


def work_figure(trace: Trace) -> go.Figure:
    """Tokens pushed through the model per decode step: 1 on the cached path, the whole context when naive."""
    spec = _Spec("How many tokens does each step push through the model?", "decode step", "tokens processed",
                 note(trace))
    steps = trace.decode_steps
    if not steps:
        return spec.empty(PRESS_PREFILL if not trace.records else "Press Next token: the prefill is not a decode step.")
    x = np.array([r.index for r in steps])
    measured_naive = all(r.naive_tokens_processed is not None for r in steps)
    naive = [r.naive_tokens_processed if measured_naive else r.sequence_length for r in steps]
    spec.data.append({
        "type": "scatter", "x": x, "y": np.array(naive), "mode": _mode(len(steps)),
        "name": "naive recompute" if measured_naive else "naive (would process)",
        "line": {"color": NAIVE, "width": 2, "dash": "solid" if measured_naive else "dot"},
        "hovertemplate": "step %{x}<br>%{y} tokens<extra>naive</extra>",
    })
    spec.data.append({
        "type": "scatter", "x": x, "y": np.array([r.tokens_processed for r in steps]), "mode": _mode(len(steps)),
        "name": "cached", "line": {"color": CACHED, "width": 2},
        "hovertemplate": "step %{x}<br>%{y} token(s)<extra>cached</extra>",
    })
    spec.axis("yaxis", rangemode="tozero")
    spec.step_axis(len(steps))
    return spec.figure()


# ----- attention -----------------------------------------------------------------------------------------------------

def attention_layer_figure(trace: Trace, layer: int) -> go.Figure:
    """One layer: each query head's attention from the newest token over every cached position."""
    record = latest(trace)
    query = token_label(trace.token_texts()[-1]) if record is not None else "…"
    spec = _Spec(f"Where does the newest token ({query}) look in layer {layer}?", "cached position (token)",
                 "query head → the KV head it reads", note(trace), height=360)
    attention = newest_attention(trace)
    if record is None or attention is None:
        return spec.empty(PRESS_PREFILL)
    weights, first = attention
    if not 0 <= layer < weights.shape[0]:
        return spec.empty(f"This model has layers 0 to {weights.shape[0] - 1}.")
    geometry = cache_geometry(record)
    query_heads = weights.shape[1]
    groups = query_groups(query_heads, geometry.kv_heads if geometry else query_heads)
    labels = position_labels(trace, first, first + weights.shape[2])
    spec.data.append({
        "type": "heatmap", "z": weights[layer], "x": labels, "y": [f"q{h} → kv{g}" for h, g in enumerate(groups)],
        "colorscale": SEQUENTIAL, "zmin": 0.0, "zmax": 1.0, "colorbar": {"title": {"text": "weight"}, "thickness": 12},
        "hovertemplate": "%{y}<br>position %{x}<br>weight %{z:.4f}<extra></extra>",
    })
    # Grouped-query attention: a line between the query heads that share one KV head.
    for boundary in range(1, query_heads):
        if groups[boundary] != groups[boundary - 1]:
            spec.shapes.append({"type": "line", "xref": "paper", "yref": "y", "x0": 0.0, "x1": 1.0,
                                "y0": boundary - 0.5, "y1": boundary - 0.5, "line": {"color": "white", "width": 3}})
    start, stop = appended_positions(record)
    spec.frame_columns(start - first, stop - first)
    readable = len(labels) <= 80
    spec.axis("xaxis", type="category", tickangle=-90, showticklabels=readable)
    spec.axis("yaxis", autorange="reversed", type="category")
    spec.layout["height"] = max(300, 120 + 26 * query_heads) + (90 if readable else 0)
    spec.layout["margin"] = {"l": 100, "r": 20, "t": 70, "b": 50}
    return spec.figure()


def attention_layers_figure(trace: Trace) -> go.Figure:
    """Small multiples: the newest token's attention in every layer, one band of query-head rows per layer."""
    spec = _Spec("Does every layer look at the same tokens?", "cached position (token)",
                 "layer (one row per query head)", note(trace), height=360)
    record = latest(trace)
    attention = newest_attention(trace)
    if record is None or attention is None:
        return spec.empty(PRESS_PREFILL)
    weights, first = attention
    layers, query_heads, width = weights.shape
    # One heatmap with an empty row between layers draws like a column of small multiples but costs one trace.
    band = query_heads + 1
    z = np.full((layers * band, width), np.nan, dtype=np.float32)
    for layer in range(layers):
        z[layer * band: layer * band + query_heads] = weights[layer]
    rows = [f"L{row // band} q{row % band}" if row % band < query_heads else " " * (row // band + 1)
            for row in range(layers * band)]
    labels = position_labels(trace, first, first + width)
    spec.data.append({
        "type": "heatmap", "z": z, "x": labels, "y": rows, "colorscale": SEQUENTIAL, "zmin": 0.0, "zmax": 1.0,
        "hoverongaps": False, "colorbar": {"title": {"text": "weight"}, "thickness": 12},
        "hovertemplate": "%{y}<br>position %{x}<br>weight %{z:.4f}<extra></extra>",
    })
    start, stop = appended_positions(record)
    spec.frame_columns(start - first, stop - first)
    spec.axis("yaxis", autorange="reversed", type="category", tickmode="array",
              tickvals=[rows[layer * band + query_heads // 2] for layer in range(layers)],
              ticktext=[f"L{layer}" for layer in range(layers)])
    spec.axis("xaxis", type="category", tickangle=-90, showticklabels=len(labels) <= 80)
    spec.layout["height"] = min(900, max(360, 140 + round(2.2 * layers * band)))
    spec.layout["margin"] = {"l": 60, "r": 20, "t": 70, "b": 50}
    return spec.figure()


# ----- timing --------------------------------------------------------------------------------------------------------

def latency_figure(trace: Trace) -> go.Figure:
    """Milliseconds per decode step, cached vs naive (the prefill is left out: it is the time to first token)."""
    spec = _Spec("How long does each new token take?", "decode step", "latency (ms)", note(trace))
    steps = trace.decode_steps
    if not steps:
        return spec.empty(PRESS_PREFILL if not trace.records else "Press Next token to time a decode step.")
    x = np.array([r.index for r in steps])
    context = np.array([r.sequence_length for r in steps])
    if all(r.ms_naive is not None for r in steps):
        spec.data.append({
            "type": "scatter", "x": x, "y": np.array([r.ms_naive for r in steps]), "mode": _mode(len(steps)),
            "name": "naive recompute", "customdata": context, "line": {"color": NAIVE, "width": 2},
            "hovertemplate": "step %{x} · %{customdata} tokens<br>%{y:.1f} ms<extra>naive</extra>",
        })
    spec.data.append({
        "type": "scatter", "x": x, "y": np.array([r.ms for r in steps]), "mode": _mode(len(steps)),
        "name": "cached", "customdata": context, "line": {"color": CACHED, "width": 2},
        "hovertemplate": "step %{x} · %{customdata} tokens<br>%{y:.1f} ms<extra>cached</extra>",
    })
    captured = [r for r in steps if r.capture_ms is not None]
    if captured:
        # Drawn apart: the recording for these charts runs after the cached step and is not part of its time.
        spec.data.append({
            "type": "scatter", "x": np.array([r.index for r in captured]),
            "y": np.array([r.capture_ms for r in captured]), "mode": _mode(len(captured)),
            "name": "recording (apart)",
            "customdata": np.array([r.sequence_length for r in captured]),
            "line": {"color": OVERHEAD, "width": 1.5, "dash": "dot"},
            "hovertemplate": "step %{x} · %{customdata} tokens<br>%{y:.1f} ms recording for the charts, "
                             "not in either path<extra>recording</extra>",
        })
    spec.axis("yaxis", rangemode="tozero")
    spec.step_axis(len(steps))
    return spec.figure()


def cumulative_figure(trace: Trace) -> go.Figure:
    """Total decode time so far on each path (after the first token; the prefill is reported apart)."""
    spec = _Spec("How much time has each path spent generating?", "tokens generated after the first",
                 "cumulative decode time (s)", note(trace))
    steps = trace.decode_steps
    if not steps:
        return spec.empty(PRESS_PREFILL if not trace.records else "Press Next token to start the clock.")
    x = np.array([r.index for r in steps])
    if all(r.ms_naive is not None for r in steps):
        spec.data.append({
            "type": "scatter", "x": x, "y": np.cumsum([r.ms_naive for r in steps]) / 1000.0, "mode": "lines",
            "name": "naive recompute", "line": {"color": NAIVE, "width": 2}, "fill": "tozeroy",
            "fillcolor": "rgba(213,94,0,0.12)", "hovertemplate": "%{x} tokens<br>%{y:.3f} s<extra>naive</extra>",
        })
    spec.data.append({
        "type": "scatter", "x": x, "y": np.cumsum([r.ms for r in steps]) / 1000.0, "mode": "lines",
        "name": "cached", "line": {"color": CACHED, "width": 2}, "fill": "tozeroy",
        "fillcolor": "rgba(0,114,178,0.15)", "hovertemplate": "%{x} tokens<br>%{y:.3f} s<extra>cached</extra>",
    })
    spec.axis("yaxis", rangemode="tozero")
    spec.step_axis(len(steps))
    return spec.figure()


def all_figures(trace: Trace, layer: int = 0) -> dict[str, go.Figure]:
    """Every figure of the page, by name (tests and the benchmark use it)."""
    return {
        "candidates": candidates_figure(trace),
        "kv_strips": kv_strips_figure(trace),
        "cache_bytes": cache_bytes_figure(trace),
        "work": work_figure(trace),
        "attention_layer": attention_layer_figure(trace, layer),
        "attention_layers": attention_layers_figure(trace),
        "latency": latency_figure(trace),
        "cumulative": cumulative_figure(trace),
    }

