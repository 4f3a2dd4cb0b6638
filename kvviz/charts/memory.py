"""Plotly figures for the Memory page: cache size vs context, what KV sharing saves, fits on a GPU, formula vs live.

Pure functions of ``kvviz.kv_formula`` objects: they size nothing themselves beyond calling its formulas, and know
nothing of Streamlit. Sizes are drawn in GiB (2³⁰ bytes) and every hover shows the exact bytes.
"""

from __future__ import annotations

import math
from typing import Sequence

# Imported before any figure is built: plotly looks pandas up in sys.modules without importing it, so while another
# session's thread is still importing pandas a figure would see a half-initialised module and fail. This import
# waits for that import to finish.
import pandas  # noqa: F401
import plotly.graph_objects as go

from kvviz.charts.style import CACHED, FORMULA, NAIVE, base_layout, measured_on
from kvviz.kv_formula import (
    GIB,
    KIB,
    MAX_CONTEXT,
    Fit,
    MemoryEstimate,
    ModelSpec,
    Precision,
    format_bytes,
    kv_cache_bytes,
)
from kvviz.live_check import LiveCheck

# Okabe–Ito (then Tol's wine), one colour per compared model; grey and yellow stay free for formulas and highlights.
MODEL_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#882255")
WEIGHTS = "#A0A0A0"  # grey: the weights, a fixed cost beside the cache
KV_CACHE = CACHED  # the cache is what the cached path keeps
LIMIT = NAIVE  # vermillion: the GPU's memory, the line not to cross


def model_colour(index: int) -> str:
    return MODEL_COLOURS[index % len(MODEL_COLOURS)]


FIRST_CONTEXT = 256  # the context axes start here: below it every cache is tiny
HEIGHT = 460


def context_grid(spec: ModelSpec, points: int = 160, first: int = FIRST_CONTEXT, last: int = MAX_CONTEXT) -> list[int]:
    """Contexts from ``first`` to ``last``, evenly spaced on a log axis, plus each window's edge (sharp plateaus)."""
    span = math.log(last / first)
    grid = {round(first * math.exp(span * i / (points - 1))) for i in range(points)}
    for group in spec.groups:
        if group.window:
            grid |= {group.window - 1, group.window, group.window + 1}
    grid.add(spec.max_context)
    return sorted(c for c in grid if first <= c <= last)


def _hover_bytes(count: int) -> str:
    return f"{format_bytes(count)} ({count:,} bytes)"


def _token_label(count: int) -> str:
    if count >= 1024 * 1024 and count % (1024 * 1024) == 0:
        return f"{count // (1024 * 1024)}M"
    if count >= 1024 and count % 1024 == 0:
        return f"{count // 1024}K"
    return f"{count:,}"


def _context_axis(fig: go.Figure, first: int = FIRST_CONTEXT, last: int = MAX_CONTEXT) -> None:
    """Log axis of tokens with ticks at powers of two labelled 1K, 4K … 1M (K = 1,024)."""
    ticks = [2**k for k in range(int(math.log2(first)), int(math.log2(last)) + 1, 2)]
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=[_token_label(t) for t in ticks],
                     range=[math.log10(first) - 0.05, math.log10(last) + 0.05])


def _bytes_axis(fig: go.Figure, values: Sequence[float], log: bool, axis: str = "y") -> None:
    """Label a bytes axis in binary units: powers of 32 on a log axis, round steps of one unit on a linear one."""
    positive = [v for v in values if v > 0]
    if not positive:
        return
    low, high = min(positive), max(positive)
    if log:
        ticks = [2.0**k for k in range(0, 51, 5) if low / 40 <= 2.0**k <= high * 40]
    else:
        unit = max((u for u in (1, KIB, KIB**2, GIB, KIB**4) if high >= u), default=1)
        raw = high / unit / 5
        step = next(m * 10**e for e in range(-1, 6) for m in (1, 2, 5) if m * 10**e >= raw) * unit
        ticks = [step * i for i in range(int(high / step) + 2)]
    update = {"type": "log" if log else "linear", "tickvals": ticks, "ticktext": [format_bytes(t) for t in ticks]}
    if not log:
        update["range"] = [0, high * 1.12]
    (fig.update_yaxes if axis == "y" else fig.update_xaxes)(**update)


def _legend_below(fig: go.Figure) -> None:
    """Legends go under the plot: above it they collide with the two-line titles."""
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.2, "xanchor": "left", "x": 0.0},
                      margin={"l": 70, "r": 20, "t": 80, "b": 110}, height=HEIGHT)


def cache_vs_context_figure(specs: Sequence[ModelSpec], cache: Precision, context: int, batch: int = 1,
                            log_y: bool = True) -> go.Figure:
    """KV cache bytes against context, one line per model; dotted beyond the context each was trained for."""
    fig = go.Figure()
    drawn: list[int] = []
    for index, spec in enumerate(specs):
        grid = context_grid(spec)
        sizes = [kv_cache_bytes(spec, c, batch, cache) for c in grid]
        drawn += sizes
        inside = [i for i, c in enumerate(grid) if c <= spec.max_context]
        beyond = [i for i, c in enumerate(grid) if c >= spec.max_context]
        for part, dash, suffix, show in ((inside, "solid", "", True), (beyond, "dot", " (beyond its context)", False)):
            if not part:
                continue
            fig.add_trace(go.Scatter(
                x=[grid[i] for i in part], y=[sizes[i] for i in part], mode="lines",
                name=spec.name, legendgroup=spec.key, showlegend=show or not inside,
                line={"color": model_colour(index), "dash": dash, "width": 2.5},
                customdata=[_hover_bytes(sizes[i]) for i in part],
                hovertemplate=f"<b>{spec.name}</b>{suffix}<br>%{{x:,}} tokens<br>%{{customdata}}<extra></extra>",
            ))
    fig.add_vline(x=context, line_dash="dash", line_color=FORMULA)
    # On a log axis an annotation's x is the log10 of the value (add_vline's own annotation misplaces it).
    fig.add_annotation(x=math.log10(context), y=1.0, yref="paper", yanchor="bottom", showarrow=False,
                       text=f"{context:,} tokens", font={"color": FORMULA})
    who = "per sequence" if batch == 1 else f"batch of {batch:,}"
    base_layout(fig, "How does the cache grow with the context?", "context (tokens, log scale; K = 1,024)",
                "KV cache" + (" (log scale)" if log_y else ""),
                note=f"{who} · {cache.key} cache · dotted: beyond the trained context")
    _legend_below(fig)
    _context_axis(fig)
    _bytes_axis(fig, drawn, log_y)
    return fig


def sharing_figure(estimates: Sequence[MemoryEstimate], log_y: bool = True) -> go.Figure:
    """Per model: the cache as built next to the same model with one KV head per query head."""
    fig = go.Figure()
    names = [f"{est.spec.name}<br>{est.spec.attention_kind.split(',')[0]} " +
             (f"÷{est.sharing_factor:,.1f}" if est.spec.shares_kv else "(no sharing)") for est in estimates]
    colours = [model_colour(i) for i in range(len(estimates))]
    built = [est.kv_bytes_per_sequence for est in estimates]
    unshared = [est.kv_bytes_per_sequence_without_sharing for est in estimates]
    fig.add_trace(go.Bar(
        x=names, y=built, name="as built", marker={"color": colours},
        customdata=[_hover_bytes(b) for b in built],
        hovertemplate="<b>%{x}</b><br>as built: %{customdata}<extra></extra>",
    ))
    fig.add_trace(go.Bar(
        x=names, y=unshared, name="one KV head per query head",
        marker={"color": colours, "opacity": 0.45, "pattern": {"shape": "/"}},
        customdata=[_hover_bytes(b) for b in unshared],
        hovertemplate="<b>%{x}</b><br>one KV head per query head: %{customdata}<extra></extra>",
    ))
    first = estimates[0] if estimates else None
    note = (f"per sequence at {first.context:,} tokens · cache in {first.cache_precision.key}" if first
            else "choose a model")
    base_layout(fig, "What does sharing KV heads save?", "",
                "KV cache per sequence" + (" (log scale)" if log_y else ""), note=note)
    fig.update_layout(barmode="group")
    fig.update_xaxes(tickangle=0)
    _legend_below(fig)
    _bytes_axis(fig, built + unshared, log_y)
    return fig


def _pair_label(fit: Fit) -> str:
    est = fit.estimate
    return f"{est.weights_precision.key} weights + {est.cache_precision.key} cache"


def gpu_fit_figure(fits: Sequence[Fit]) -> go.Figure:
    """Weights + KV cache stacked against one GPU's memory, one bar per (weights, cache) precision pair."""
    fig = go.Figure()
    labels = [f"{_pair_label(fit)}<br><b>{format_bytes(fit.estimate.total_bytes)}: "
              f"{'fits' if fit.fits else f'needs {fit.gpus_needed} GPUs'}</b>" for fit in fits]
    weights = [fit.estimate.weights_bytes / GIB for fit in fits]
    caches = [fit.estimate.kv_bytes_total / GIB for fit in fits]
    for name, colour, sizes in (("weights", WEIGHTS, [fit.estimate.weights_bytes for fit in fits]),
                                ("KV cache", KV_CACHE, [fit.estimate.kv_bytes_total for fit in fits])):
        fig.add_trace(go.Bar(
            y=labels, x=[size / GIB for size in sizes], orientation="h", name=name, marker={"color": colour},
            customdata=[_hover_bytes(size) for size in sizes], hovertemplate=f"{name}: %{{customdata}}<extra></extra>",
        ))
    title, note, right = "Does it fit on the GPU?", "choose a model", 1.0
    if fits:
        gpu, est = fits[0].gpu, fits[0].estimate
        right = max([w + c for w, c in zip(weights, caches)] + [gpu.memory_gib]) * 1.08
        fig.add_vline(x=gpu.memory_gib, line_color=LIMIT, line_width=3)
        fig.add_vline(x=fits[0].usable_bytes / GIB, line_color=LIMIT, line_dash="dot")
        fig.add_annotation(x=gpu.memory_gib, y=1.0, yref="paper", yanchor="bottom", showarrow=False,
                           text=f"{gpu.name}: {gpu.memory_gib:.1f} GiB", font={"color": LIMIT})
        title = f"Does {est.spec.name} fit on one {gpu.name}?"
        note = f"{est.batch:,} × {est.context:,} tokens · memory only, dotted line: after the reserve"
    base_layout(fig, title, "memory (GiB)", "", note=note)
    fig.update_layout(barmode="stack", legend={"traceorder": "normal"})
    _legend_below(fig)
    fig.update_layout(margin={"l": 200, "r": 20, "t": 100, "b": 110})
    fig.update_xaxes(range=[0, right])
    fig.update_yaxes(autorange="reversed")
    return fig


def max_batch_figure(fits: Sequence[Fit]) -> go.Figure:
    """How many sequences fit beside the weights, against the context of each, one line per precision pair."""
    fig = go.Figure()
    for index, fit in enumerate(fits):
        est = fit.estimate
        free = max(fit.free_for_cache, 0)
        grid = context_grid(est.spec, points=120)
        batches = [free // kv_cache_bytes(est.spec, c, 1, est.cache_precision) for c in grid]
        fig.add_trace(go.Scatter(
            x=grid, y=[b if b > 0 else None for b in batches], mode="lines", name=_pair_label(fit),
            line={"color": model_colour(index), "width": 3 if index == 0 else 2, "dash": "solid" if index == 0
                  else "dash"},
            hovertemplate=f"{_pair_label(fit)}<br>%{{x:,}} tokens each: %{{y:,}} sequences<extra></extra>",
        ))
    title, note = "How many sequences fit?", "choose a model"
    if fits:
        chosen = fits[0]
        if chosen.max_batch > 0:
            fig.add_trace(go.Scatter(
                x=[chosen.estimate.context], y=[chosen.max_batch], mode="markers", name="your setting",
                marker={"color": "#F0E442", "size": 13, "line": {"color": "#000000", "width": 1}},
                hovertemplate="%{x:,} tokens: %{y:,} sequences<extra>your setting</extra>",
            ))
        title = f"How many sequences fit on one {chosen.gpu.name}?"
        note = f"{chosen.estimate.spec.name} beside its weights · no line: not even one sequence fits"
    fig.add_vline(x=fits[0].estimate.context if fits else FIRST_CONTEXT, line_dash="dash", line_color=FORMULA)
    base_layout(fig, title, "context per sequence (tokens, log scale; K = 1,024)", "sequences (log scale)",
                note=note)
    _legend_below(fig)
    _context_axis(fig)
    fig.update_yaxes(type="log", tickformat=",")
    return fig


def live_check_figure(check: LiveCheck | None) -> go.Figure:
    """Bytes per layer of a live cache (bars) with the formula's prediction on top (grey diamonds)."""
    fig = go.Figure()
    if check is not None:
        layers = [layer.layer for layer in check.layers]
        fig.add_trace(go.Bar(
            x=layers, y=[layer.live_bytes for layer in check.layers], name="live K/V tensors (nbytes)",
            marker={"color": KV_CACHE},
            customdata=[[layer.kind, layer.stored, f"{layer.live_bytes:,}"] for layer in check.layers],
            hovertemplate="layer %{x} (%{customdata[0]}): %{customdata[1]:,} tokens held<br>"
                          "live: %{customdata[2]} bytes<extra></extra>",
        ))
        fig.add_trace(go.Scatter(
            x=layers, y=[layer.formula_bytes for layer in check.layers], mode="markers", name="formula",
            marker={"color": FORMULA, "symbol": "diamond", "size": 11, "line": {"color": "#FFFFFF", "width": 1}},
            customdata=[f"{layer.formula_bytes:,}" for layer in check.layers],
            hovertemplate="layer %{x}: formula %{customdata} bytes<extra></extra>",
        ))
        note = f"{measured_on(check.model, check.device, check.dtype)} · {check.positions:,} tokens"
    else:
        note = "run a model to measure"
    base_layout(fig, "Does the formula match the live cache?", "layer", "K + V bytes", note=note)
    _legend_below(fig)
    fig.update_layout(height=380)
    if check is not None:
        _bytes_axis(fig, [layer.live_bytes for layer in check.layers] +
                    [layer.formula_bytes for layer in check.layers], log=False)
    return fig
