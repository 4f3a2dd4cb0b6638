"""Speed-page figures: latency per step, cumulative time, speedup over naive, roofline and bandwidth used.

Each builder takes a ``BenchResult`` (or nothing measured yet) and returns a Plotly figure whose title is the
question it answers and whose note names the model, device and dtype. Pure functions: no Streamlit, no model,
no arithmetic beyond turning measured numbers into plotted ones.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from kvviz.bench_results import PATHS, BenchResult, PathResult
from kvviz.charts.style import (
    CACHED, ENGINE, FORMULA, GENERATED, KEYS, NAIVE, PROMPT, VALUES, base_layout, measured_on,
)
from kvviz.report import bandwidth_roof_name

# One colour per path on every Speed chart. The app's cached stepper keeps the app-wide "cached" blue and the
# naive path the app-wide vermillion; the other paths take the remaining Okabe–Ito colours.
PATH_COLOURS: dict[str, str] = {
    "naive": NAIVE, "dynamic": KEYS, "kvviz": CACHED, "static": VALUES, "graphs": GENERATED, "generate": PROMPT,
    "llamacpp": ENGINE,
}
POSITION_AXIS = "position (tokens in context)"


def path_colour(path: str) -> str:
    return PATH_COLOURS.get(path, FORMULA)


def _rgba(hex_colour: str, alpha: float) -> str:
    red, green, blue = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


def _note(result: BenchResult | None, estimated: bool = False) -> str:
    """What the figure was measured on; ``estimated`` says its FLOPs and bytes are estimates over measured times."""
    if result is None:
        return ""
    env = result.environment
    note = measured_on(env.model_name, f"{env.device} ({env.device_name})", env.dtype)
    if estimated:
        note = "estimated FLOPs and bytes ÷ times " + note
    config = result.config
    note += f" · prompt {config.prompt_tokens} tokens · median of {config.repeats} runs"
    if "naive" in config.paths and config.naive_repeats != config.repeats:
        note += f" (naive: {config.naive_repeats})"
    return note + ("" if result.complete else " · stopped early")


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str, result: BenchResult | None,
            estimated: bool = False) -> go.Figure:
    """The shared layout, with the legend under the plot so that it never covers the title's note."""
    base_layout(fig, title, x_title, y_title, _note(result, estimated))
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.2, "xanchor": "left", "x": 0.0},
                      margin={"b": 90})
    return fig


def _log_ticks(values: np.ndarray) -> list[float]:
    """1-2-5 ticks spanning ``values``: Plotly's own log ticks label 200 and 500 as a bare "2" and "5"."""
    positive = values[np.isfinite(values) & (values > 0)]
    if not positive.size:
        return []
    low, high = np.floor(np.log10(positive.min())), np.ceil(np.log10(positive.max()))
    ticks = [m * 10.0**e for e in range(int(low), int(high) + 1) for m in (1, 2, 5)]
    return [t for t in ticks if positive.min() / 2 <= t <= positive.max() * 2]


def _empty(fig: go.Figure, text: str = "Run a benchmark to see this chart.") -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return fig


def _stepped(result: BenchResult | None) -> list[PathResult]:
    """Measured paths that have a per-step series, in the canonical order."""
    if result is None:
        return []
    return [p for p in result.measured if len(p.steps)]


def latency_figure(result: BenchResult | None, log_y: bool = True) -> go.Figure:
    """Per-step latency of each path by position: median line and min–max band across runs."""
    fig = _layout(go.Figure(), "How long does each new token take?", POSITION_AXIS, "ms per token", result)
    paths = _stepped(result)
    if not paths:
        return _empty(fig)
    for path in paths:
        colour, steps = path_colour(path.path), path.steps
        x = list(steps.position)
        if path.runs > 1:
            fig.add_trace(go.Scatter(x=x, y=list(steps.high_ms), mode="lines", line={"width": 0},
                                     showlegend=False, hoverinfo="skip", legendgroup=path.path))
            fig.add_trace(go.Scatter(x=x, y=list(steps.low_ms), mode="lines", line={"width": 0}, fill="tonexty",
                                     fillcolor=_rgba(colour, 0.2), showlegend=False, hoverinfo="skip",
                                     legendgroup=path.path))
        fig.add_trace(go.Scatter(
            x=x, y=list(steps.median_ms), mode="lines", name=path.path, legendgroup=path.path,
            line={"color": colour, "width": 2},
            customdata=np.stack([steps.low_ms, steps.high_ms, steps.tokens_processed], axis=1),
            hovertemplate=(f"<b>{path.path}</b><br>position %{{x}}<br>%{{y:.2f}} ms "
                           "(min %{customdata[0]:.2f} – max %{customdata[1]:.2f})<br>"
                           "tokens processed %{customdata[2]}<extra></extra>"),
        ))
    generate = result.path("generate")
    if generate is not None and generate.ok and generate.ms_per_token is not None:
        first, last = min(p.steps.position[0] for p in paths), max(p.steps.position[-1] for p in paths)
        fig.add_trace(go.Scatter(
            x=[first, last], y=[generate.ms_per_token.median] * 2, mode="lines", name="generate (average)",
            line={"color": path_colour("generate"), "width": 2, "dash": "dash"},
            hovertemplate=(f"<b>generate</b><br>average {generate.ms_per_token.median:.2f} ms per token "
                           f"(min {generate.ms_per_token.low:.2f} – max {generate.ms_per_token.high:.2f})"
                           "<extra></extra>"),
        ))
    if log_y:
        every = np.concatenate([np.asarray(p.steps.low_ms + p.steps.high_ms) for p in paths])
        fig.update_yaxes(type="log", tickvals=_log_ticks(every), tickformat="~g")
    return fig


def cumulative_figure(result: BenchResult | None) -> go.Figure:
    """Time to produce the first n tokens (prefill included), with the naive fit a·n + b·n²."""
    fig = _layout(go.Figure(), "How long until the n-th new token?", "new tokens generated (n)",
                      "cumulative time (s)", result)
    if result is None or not result.measured:
        return _empty(fig)
    for path in result.measured:
        colour = path_colour(path.path)
        if len(path.steps) and path.prefill_ms is not None:
            seconds = np.cumsum([path.prefill_ms.median, *path.steps.median_ms]) / 1000.0
            n = np.arange(1, seconds.size + 1)
            fig.add_trace(go.Scatter(
                x=n, y=seconds, mode="lines", name=path.path, line={"color": colour, "width": 2},
                hovertemplate=f"<b>{path.path}</b><br>%{{x}} tokens in %{{y:.3f}} s<extra></extra>",
            ))
        elif path.total_ms is not None and path.prefill_ms is not None:
            fig.add_trace(go.Scatter(
                x=[1, result.config.tokens], y=[path.prefill_ms.median / 1000.0, path.total_ms.median / 1000.0],
                mode="lines+markers", name=f"{path.path} (first and last only)",
                line={"color": colour, "width": 2, "dash": "dash"},
                hovertemplate=f"<b>{path.path}</b><br>%{{x}} tokens in %{{y:.3f}} s<extra></extra>",
            ))
    fit = result.naive_fit()
    data = result.naive_cumulative()
    if fit is not None and data is not None:
        n = data[0]
        fig.add_trace(go.Scatter(
            x=n, y=fit.predict(n) / 1000.0, mode="lines", line={"color": FORMULA, "width": 2, "dash": "dot"},
            name=f"naive fit: {fit.a:.1f}·n + {fit.b:.3f}·n² ms (R² = {fit.r2:.3f})",
            hovertemplate="fit: %{x} tokens in %{y:.3f} s<extra></extra>",
        ))
    return fig


def speedup_figure(result: BenchResult | None) -> go.Figure:
    """Naive step time over each cached path's step time, by position; 1× is break-even."""
    fig = _layout(go.Figure(), "How many times faster than recomputing everything, step by step?", POSITION_AXIS,
                      "naive step ÷ this path's step, same position (×)", result)
    naive = result.path("naive") if result is not None else None
    paths = [p for p in _stepped(result) if p.path != "naive"]
    if naive is None or not naive.ok or not len(naive.steps) or not paths:
        return _empty(fig, "Needs the naive path and at least one cached path.")
    naive_ms = dict(zip(naive.steps.position, naive.steps.median_ms))
    for path in paths:
        pairs = [(p, naive_ms[p] / ms) for p, ms in zip(path.steps.position, path.steps.median_ms) if p in naive_ms]
        fig.add_trace(go.Scatter(
            x=[p for p, _ in pairs], y=[s for _, s in pairs], mode="lines", name=path.path,
            line={"color": path_colour(path.path), "width": 2},
            hovertemplate=f"<b>{path.path}</b><br>position %{{x}}: %{{y:.2f}}× faster than naive<extra></extra>",
        ))
    fig.update_xaxes(range=[min(p.steps.position[0] for p in paths), max(p.steps.position[-1] for p in paths)])
    fig.add_hline(y=1.0, line={"color": FORMULA, "dash": "dot"}, annotation_text="break-even",
                  annotation_position="bottom right")
    reference = next((p.path for p in paths if p.path in ("kvviz", "dynamic")), paths[0].path)
    crossover = result.crossover_position(reference)
    if crossover is not None:
        fig.add_vline(x=crossover, line={"color": path_colour(reference), "dash": "dash"},
                      annotation_text=f"{reference} wins from position {crossover}", annotation_position="top left")
    return fig


def roofline_figure(result: BenchResult | None) -> go.Figure:
    """Achieved FLOP/s against arithmetic intensity, under the device's bandwidth and compute roofs."""
    fig = _layout(go.Figure(), "How close to the hardware limit is each step?",
                      "arithmetic intensity (estimated FLOP per estimated byte)",
                      "GFLOP/s (estimated FLOPs ÷ measured time)",
                      result, estimated=True)
    paths = _stepped(result)
    if not paths:
        return _empty(fig)
    peak = result.peak
    intensities = []
    for path in paths:
        steps = path.steps
        intensity = np.asarray(steps.flops) / np.asarray(steps.bytes_moved)
        gflops = np.asarray(steps.flops) / (np.asarray(steps.median_ms) / 1000.0) / 1e9
        intensities.append(intensity)
        fig.add_trace(go.Scatter(
            x=intensity, y=gflops, mode="markers", name=path.path,
            marker={"color": path_colour(path.path), "size": 5, "opacity": 0.8},
            customdata=np.stack([steps.position, steps.median_ms, np.asarray(steps.flops) / 1e9,
                                 np.asarray(steps.bytes_moved) / 2**20], axis=1),
            hovertemplate=(f"<b>{path.path}</b><br>position %{{customdata[0]}} · %{{customdata[1]:.2f}} ms<br>"
                           "%{customdata[2]:.3f} GFLOP, %{customdata[3]:.1f} MiB moved<br>"
                           "%{x:.2f} FLOP/byte → %{y:.1f} GFLOP/s<extra></extra>"),
        ))
    every = np.concatenate(intensities)
    ridge = peak.flops_per_s / peak.memory_bytes_per_s
    low, high = min(every.min(), ridge) / 4.0, max(every.max(), ridge) * 4.0
    x = np.geomspace(low, high, 200)
    roof = np.minimum(peak.flops_per_s, x * peak.memory_bytes_per_s) / 1e9
    fig.add_trace(go.Scatter(
        x=x, y=roof, mode="lines", line={"color": FORMULA, "width": 2},
        name="roof: min(compute, bandwidth × intensity)",
        hovertemplate="roof at %{x:.2f} FLOP/byte: %{y:.0f} GFLOP/s<extra></extra>",
    ))
    fig.update_xaxes(type="log", tickvals=_log_ticks(x), tickformat="~g")
    achieved = np.concatenate([np.asarray(t.y, dtype=float) for t in fig.data])
    fig.update_yaxes(type="log", tickvals=_log_ticks(achieved), tickformat="~g")
    fig.add_annotation(x=np.log10(low * 1.5), y=np.log10(low * 1.5 * peak.memory_bytes_per_s / 1e9),
                       text=f"{peak.memory_bytes_per_s / 1e9:.0f} GB/s ({bandwidth_roof_name(result)})",
                       showarrow=False, yshift=12,
                       xanchor="left", font={"color": FORMULA})
    return fig


def bandwidth_figure(result: BenchResult | None) -> go.Figure:
    """The fraction of the device's peak memory bandwidth each step achieves (bytes it must move / its time)."""
    roof = "peak bandwidth"
    if result is not None:
        roof = f"{bandwidth_roof_name(result)} ({result.peak.memory_bytes_per_s / 1e9:.0f} GB/s)"
    fig = _layout(go.Figure(), "How much of the memory bandwidth does each step use?", POSITION_AXIS,
                      f"% of the {roof}", result, estimated=True)
    paths = _stepped(result)
    if not paths:
        return _empty(fig)
    for path in paths:
        used = result.bandwidth_used(path)
        fig.add_trace(go.Scatter(
            x=list(path.steps.position), y=100.0 * used, mode="lines", name=path.path,
            line={"color": path_colour(path.path), "width": 2},
            customdata=used * result.peak.memory_bytes_per_s / 1e9,
            hovertemplate=(f"<b>{path.path}</b><br>position %{{x}}: %{{y:.1f}}% "
                           "(%{customdata:.1f} GB/s)<extra></extra>"),
        ))
    fig.update_yaxes(rangemode="tozero")
    return fig


def per_token_figure(result: BenchResult | None) -> go.Figure:
    """Median decode time per token of every measured path, with the min–max across runs."""
    fig = _layout(go.Figure(), "What does one new token cost on each path?", "", "ms per token", result)
    if result is None or not result.measured:
        return _empty(fig)
    paths = [p for p in result.measured if p.ms_per_token is not None]
    order = {name: index for index, name in enumerate(PATHS)}
    paths.sort(key=lambda p: order.get(p.path, len(order)))
    medians = [p.ms_per_token.median for p in paths]
    fig.add_trace(go.Bar(
        x=[p.path for p in paths], y=medians, marker_color=[path_colour(p.path) for p in paths],
        error_y={"type": "data", "symmetric": False,
                 "array": [p.ms_per_token.high - p.ms_per_token.median for p in paths],
                 "arrayminus": [p.ms_per_token.median - p.ms_per_token.low for p in paths]},
        text=[f"{m:.1f}" for m in medians], textposition="outside", showlegend=False,
        customdata=[[p.ms_per_token.low, p.ms_per_token.high, p.runs] for p in paths],
        hovertemplate=("<b>%{x}</b><br>%{y:.2f} ms per token<br>min %{customdata[0]:.2f} – "
                       "max %{customdata[1]:.2f} over %{customdata[2]} runs<extra></extra>"),
    ))
    return fig


def summary_rows(result: BenchResult | None) -> list[dict[str, str | int]]:
    """One row per requested path for the page's table: status, ms per token, prefill, cold call, tokens check.

    Every row has every column and every cell is text: a value a path does not have (a skipped path's times,
    generate's per-step figures) reads "—", never a blank or "None".
    """
    if result is None:
        return []
    rows: list[dict[str, str | int]] = []
    for path in result.paths:
        row = dict.fromkeys(SUMMARY_COLUMNS, MISSING)
        row.update({"path": path.path, "status": path.status, "note": path.reason or ""})
        if path.ok:
            spread = path.ms_per_token
            speedup = result.speedup_vs_naive(path.path)
            row.update({
                "ms / token (median)": f"{spread.median:.2f}",
                "min–max": f"{spread.low:.2f} – {spread.high:.2f}",
                "prefill ms": f"{path.prefill_ms.median:.1f}",
                "first step ms (warm-up)": _ms(path.cold_first_step_ms),
                "setup ms": _ms(path.cold_setup_ms),
                "naive ÷ path, end to end": f"{speedup:.1f}×" if speedup is not None else MISSING,
                "same tokens": {True: "yes", False: f"differs at token {path.first_mismatch}", None: MISSING}[
                    path.matches_reference],
                "runs": str(path.runs),
            })
        rows.append(row)
    return rows


MISSING = "—"
SUMMARY_COLUMNS = ("path", "status", "ms / token (median)", "min–max", "prefill ms", "first step ms (warm-up)",
                   "setup ms", "naive ÷ path, end to end", "same tokens", "runs", "note")


def _ms(value: float | None) -> str:
    return f"{value:.1f}" if value is not None else MISSING
