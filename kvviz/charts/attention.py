"""Attention figures: one head's causal matrix, the model view (every layer × head), head-type maps, token view.

Pure functions from NumPy arrays and token texts to Plotly figures (or, for the token view, an HTML string); they
know nothing of Streamlit or of the model. Weights are coloured on Viridis with colour ∝ √weight, so the small
weights next to a sink stay visible while hover shows the exact value. Big matrices are pooled before they are
drawn (``MAX_SIDE`` cells per side at most) and the chart says how.
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from kvviz.attention_matrix import pool_causal, pool_factor
from kvviz.charts.style import GENERATED, NEWEST, NEWLINE, PROMPT, SEQUENTIAL, base_layout, token_label
from kvviz.trace_analysis import kv_head_of

# A head's matrix ships at most 256 × 256 = 65,536 cells (≈ 350 KB as float32) whatever the trace length.
MAX_SIDE = 256
THUMBNAIL_SIDE = 20  # cells per side of one model-view thumbnail (30 × 9 of them ≈ 120,000 cells)
MAX_TICKS = 40
WEIGHT_TICKS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)  # the bar is linear in weight; its colours are not


def sqrt_colorscale(name: str = SEQUENTIAL, steps: int = 24) -> list[list]:
    """A colourscale over weights in [0, 1] whose colour at w is ``name`` sampled at √w."""
    stops = np.linspace(0.0, 1.0, steps + 1)
    colours = sample_colorscale(name, list(stops))
    return [[float(s * s), colour] for s, colour in zip(stops, colours)]


def position_label(text: str, position: int, width: int = 12) -> str:
    """A unique, printable axis label: position and token text (``style.token_label``), cut to ``width``."""
    shown = token_label(text, mark_spaces=False)
    shown = shown if len(shown) <= width else shown[: width - 1] + "…"
    return f"{position}·{shown}"


def _ticks(count: int) -> list[int]:
    step = max(1, -(-count // MAX_TICKS))
    return list(range(0, count, step))


def _coloured(label: str, generated: bool) -> str:
    return f"<span style='color:{GENERATED if generated else PROMPT}'>{html.escape(label)}</span>"


def head_heatmap(matrix: np.ndarray, token_texts: Sequence[str], *, prompt_tokens: int, title: str,
                 note: str = "", how: str = "max", max_side: int = MAX_SIDE) -> go.Figure:
    """One head's causal matrix ``(n, n)``: queries down, keys across, token labels on both axes.

    Longer than ``max_side`` tokens, it is pooled in f×f blocks (``how``: max or mean) and says so; the newest
    query row is outlined and the boundary between prompt and generated tokens is drawn.
    """
    n = matrix.shape[0]
    fig = go.Figure()
    if n == 0:
        return base_layout(fig, title, "key position (token)", "query position (token)", note)
    factor = pool_factor(n, max_side)
    z = pool_causal(matrix, factor, how)  # (m, m), NaN above the diagonal
    m = z.shape[0]
    if factor == 1:
        labels = [position_label(t, i) for i, t in enumerate(token_texts[:n])]
        hover = "query %{y}<br>key %{x}<br>weight %{z:.4f}<extra></extra>"
    else:
        labels = [f"{a * factor}–{min(n, (a + 1) * factor) - 1}" for a in range(m)]
        word = "largest" if how == "max" else "mean"
        hover = f"queries %{{y}}<br>keys %{{x}}<br>{word} weight %{{z:.4f}}<extra></extra>"
    fig.add_trace(go.Heatmap(
        z=z, x=labels, y=labels, zmin=0.0, zmax=1.0, colorscale=sqrt_colorscale(), hoverongaps=False,
        hovertemplate=hover,
        colorbar={"title": {"text": "weight"}, "tickvals": list(WEIGHT_TICKS), "thickness": 14,
                  "ticktext": [f"{t:g}" for t in WEIGHT_TICKS]},
    ))
    ticks = _ticks(m)
    ticktext = [_coloured(labels[i], i * factor >= prompt_tokens) for i in ticks]
    pooled = "" if factor == 1 else (
        f"{how}-pooled {factor}×{factor} blocks ({m}×{m} cells of {n}×{n}) · ")
    full_note = f"{pooled}colour ∝ √weight · {note}" if note else f"{pooled}colour ∝ √weight"
    base_layout(fig, title, "key: the cached position it reads (token)", "query: the token being computed", full_note)
    axis = {"tickmode": "array", "tickvals": [labels[i] for i in ticks], "ticktext": ticktext, "showgrid": False,
            "automargin": True}
    fig.update_xaxes(**axis, tickangle=-60, constrain="domain")
    fig.update_yaxes(**axis, autorange="reversed", scaleanchor="x", constrain="domain")
    boundary = prompt_tokens / factor - 0.5
    if 0 < prompt_tokens < n:
        for kind in ("x", "y"):
            line = {"x0": boundary, "x1": boundary, "y0": -0.5, "y1": m - 0.5} if kind == "x" else \
                {"x0": -0.5, "x1": m - 0.5, "y0": boundary, "y1": boundary}
            fig.add_shape(type="line", **line, line={"color": GENERATED, "width": 1, "dash": "dot"})
    fig.add_shape(type="rect", x0=-0.5, x1=m - 0.5, y0=m - 1.5, y1=m - 0.5,
                  line={"color": NEWEST, "width": 2})
    fig.update_layout(height=680, margin={"l": 60, "b": 100, "r": 10})
    return fig


def model_view(thumbnails: np.ndarray, *, queries_per_kv: int, factor: int, tokens: int, how: str = "max",
               title: str = "Where does every head look? One thumbnail per layer and head", note: str = "",
               gap: int = 2) -> go.Figure:
    """Small multiples like BertViz's model view: layers left to right, query heads top to bottom.

    ``thumbnails`` is ``(layers, heads, s, s)`` (already pooled). They are tiled into one heatmap with NaN gaps —
    one trace instead of 270 subplots, so it draws fast — laid out so that thumbnail (l, h) is centred on x = l,
    y = h, which makes hover read the layer and head. Lines separate query heads that share a KV head.
    """
    layers, heads, s, _ = thumbnails.shape
    cell = s + gap
    mosaic = np.full((heads * cell - gap, layers * cell - gap), np.nan, dtype=np.float32)
    for layer in range(layers):
        for head in range(heads):
            mosaic[head * cell:head * cell + s, layer * cell:layer * cell + s] = thumbnails[layer, head]
    offset = (s - 1) / 2 / cell
    fig = go.Figure(go.Heatmap(
        z=mosaic, x0=-offset, dx=1 / cell, y0=-offset, dy=1 / cell, zmin=0.0, zmax=1.0,
        colorscale=sqrt_colorscale(), hoverongaps=False,
        hovertemplate="layer %{x:.0f} · head %{y:.0f}<br>weight %{z:.3f}<extra></extra>",
        colorbar={"title": {"text": "weight"}, "tickvals": list(WEIGHT_TICKS),
                  "ticktext": [f"{t:g}" for t in WEIGHT_TICKS]},
    ))
    pooled = f"{how}-pooled {factor}×{factor} · " if factor > 1 else ""
    detail = f"{tokens} tokens, each thumbnail {s}×{s} · {pooled}colour ∝ √weight"
    base_layout(fig, title, "layer", "query head (KV head it reads)", f"{detail} · {note}" if note else detail)
    _gqa_axes(fig, layers, heads, queries_per_kv)
    fig.update_layout(height=max(320, 48 * heads + 140))
    return fig


def _gqa_axes(fig: go.Figure, layers: int, heads: int, queries_per_kv: int) -> None:
    """Layer ticks across, head ticks down labelled with their KV head, and a line between KV groups."""
    layer_step = 1 if layers <= 32 else -(-layers // 32)
    fig.update_xaxes(tickmode="array", tickvals=list(range(0, layers, layer_step)),
                     ticktext=[str(i) for i in range(0, layers, layer_step)], showgrid=False, zeroline=False,
                     range=[-0.5, layers - 0.5])
    fig.update_yaxes(tickmode="array", tickvals=list(range(heads)),
                     ticktext=[f"q{h} (kv{kv_head_of(h, queries_per_kv)})" for h in range(heads)],
                     autorange="reversed", showgrid=False, zeroline=False)
    if queries_per_kv > 1:
        for boundary in range(queries_per_kv, heads, queries_per_kv):
            fig.add_shape(type="line", x0=-0.5, x1=layers - 0.5, y0=boundary - 0.5, y1=boundary - 0.5,
                          line={"color": "#7F7F7F", "width": 2})


def head_scores_figure(values: np.ndarray, *, title: str, measure: str, queries_per_kv: int,
                       threshold: float | None = None, note: str = "", zmax: float | None = None,
                       unit: str = "score") -> go.Figure:
    """A layer × head map of one head-type score; a dot marks each head at or above ``threshold``."""
    layers, heads = values.shape
    grid = values.T  # (heads, layers): layers run left to right as in the model view
    top = zmax if zmax is not None else float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
    fig = go.Figure(go.Heatmap(
        z=grid, x=list(range(layers)), y=list(range(heads)), zmin=0.0, zmax=top, colorscale=SEQUENTIAL,
        hoverongaps=False, hovertemplate=f"layer %{{x}} · head %{{y}}<br>{measure} %{{z:.3f}}<extra></extra>",
        colorbar={"title": {"text": unit}},
    ))
    mark = ""
    if threshold is not None:
        layer_idx, head_idx = np.nonzero(np.nan_to_num(values, nan=-np.inf) >= threshold)
        # Black dot, white rim: readable on every Viridis colour, in light and dark themes.
        fig.add_trace(go.Scatter(
            x=layer_idx, y=head_idx, mode="markers", name=f"≥ {threshold:.2f}", hoverinfo="skip",
            marker={"symbol": "circle", "size": 7, "color": "#000000", "line": {"color": "#FFFFFF", "width": 1}},
        ))
        mark = f"dots: {len(layer_idx)} heads ≥ {threshold:.2f} · "
    base_layout(fig, title, "layer", "query head (KV head)", f"{mark}{note}")
    _gqa_axes(fig, layers, heads, queries_per_kv)
    fig.update_layout(height=max(280, 24 * heads + 130), showlegend=False)
    return fig


def token_view_html(token_texts: Sequence[str], weights: np.ndarray, query: int, prompt_tokens: int,
                    skip_first: bool = False) -> str:
    """The text with each key token shaded by how much query ``query`` attended to it (one head or a mean).

    Shading is relative to the largest weight in the row (or the largest after position 0 with ``skip_first``,
    since a sink often takes most of it); hover shows the exact weight. Later tokens, which the query cannot see,
    are faded; the query itself is outlined in the newest-token colour.
    """
    visible = weights[1:] if skip_first and len(weights) > 1 else weights
    top = float(visible.max()) if len(visible) and visible.max() > 0 else 1.0
    spans = []
    for position, text in enumerate(token_texts):
        shown = html.escape(text.replace("\n", NEWLINE + "\n"))
        kind = "generated" if position >= prompt_tokens else "prompt"
        if position > query:
            spans.append(f"<span style='opacity:0.35' title='{position}: after the query, not visible'>"
                         f"{shown}</span>")
            continue
        weight = float(weights[position])
        alpha = min(1.0, weight / top)
        colour = "color:#ffffff;" if alpha > 0.55 else ""
        border = f"outline:2px solid {NEWEST};" if position == query else ""
        spans.append(
            f"<span title='{position} ({kind}): weight {weight:.4f}' style='background:rgba(0,114,178,{alpha:.3f});"
            f"{colour}{border}border-radius:3px;padding:1px 0'>{shown}</span>"
        )
    scale = "largest weight after position 0" if skip_first else "largest weight in the row"
    legend = (f"<div style='font-size:0.8em;opacity:0.75;margin-top:0.4em'>shade ∝ weight / {scale} "
              f"({top:.3f}); outlined: the query token; faded: tokens after it</div>")
    return ("<div style='line-height:1.9;white-space:pre-wrap;font-family:ui-monospace,monospace;"
            f"font-size:0.9em'>{''.join(spans)}</div>{legend}")
