"""Plotly figures for the Cache policies page: quality against tokens read, the bytes-vs-quality frontier, the
keep/evict map and the KIVI quantisation errors.

Pure functions of ``kvviz.policies`` records: they draw what a run measured and compute only the rolling means
they plot; they know nothing of Streamlit or torch.
"""

from __future__ import annotations

import numpy as np
import pandas  # noqa: F401  (see kvviz/charts/memory.py: plotly must find pandas fully imported)
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from kvviz.charts.style import FORMULA, KEYS, VALUES, base_layout, measured_on
from kvviz.kv_formula import MIB, format_bytes
from kvviz.policies.kivi import QuantisationErrors
from kvviz.policies.records import PolicyComparison, PolicyScore

# Okabe–Ito colours by policy name (colour-blind safe); the full cache is black.
POLICY_COLOURS = {"full": "#000000", "window": "#D55E00", "sinks": "#0072B2", "h2o": "#009E73", "snapkv": "#CC79A7",
                  "knorm": "#E69F00", "random": "#999999", "fp8": "#56B4E9", "int4": "#F0E442", "int2": "#882255"}
DASHES = ("solid", "dash", "dot", "dashdot")
ROLLING = 32  # tokens in the rolling mean of the quality curves


def _note(result: PolicyComparison) -> str:
    return (f"{measured_on(result.model, result.device, result.dtype)} · {result.scored:,} next tokens scored after a "
            f"{result.prompt_tokens:,}-token prefill")


def rolling_perplexity(nll: tuple[float, ...], window: int = ROLLING) -> np.ndarray:
    """exp of the mean negative log-likelihood over the last ``window`` tokens (fewer at the start)."""
    values = np.asarray(nll, dtype=np.float64)
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return np.exp((sums[ends] - sums[starts]) / (ends - starts))


def _style(score: PolicyScore, budgets: list[int]) -> dict:
    dash = DASHES[budgets.index(score.budget_tokens) % len(DASHES)] if score.budget_tokens in budgets else "solid"
    return {"color": POLICY_COLOURS.get(score.name, FORMULA), "dash": dash}


def quality_curve_figure(result: PolicyComparison, window: int = ROLLING) -> go.Figure:
    """Perplexity of the last ``window`` tokens against the tokens read, one line per policy and budget."""
    fig = go.Figure()
    budgets = sorted({p.budget_tokens for p in result.policies if p.budget_tokens is not None and p.name != "full"})
    for score in result.policies:
        # The i-th scored token is predicted after reading prompt_tokens + i tokens.
        x = np.arange(result.prompt_tokens, result.prompt_tokens + score.tokens_scored)
        fig.add_trace(go.Scatter(x=x, y=rolling_perplexity(score.nll_per_token, window), mode="lines",
                                 name=score.label, line=_style(score, budgets),
                                 hovertemplate=f"{score.label}<br>after %{{x:,}} tokens<br>perplexity of the last "
                                               f"{window} tokens %{{y:,.2f}}<extra></extra>"))
    for budget in budgets:
        fig.add_vline(x=budget, line={"color": FORMULA, "dash": "dot", "width": 1},
                      annotation_text=f"budget {budget}: eviction starts", annotation_position="top left")
    base_layout(fig, "Does quality hold once the cache is full?", "tokens read",
                f"perplexity of the last {window} tokens", note=_note(result))
    highest = max((float(rolling_perplexity(p.nll_per_token, window).max()) for p in result.policies), default=10.0)
    ticks = [m * 10**e for e in range(0, 7) for m in (1, 2, 5) if m * 10**e <= 2 * highest]
    fig.update_yaxes(type="log", tickvals=ticks, ticktext=[f"{t:,}" for t in ticks])
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.2, "xanchor": "left", "x": 0.0},
                      margin={"b": 110})
    return fig


def frontier_figure(result: PolicyComparison, quality: str = "kl") -> go.Figure:
    """Bytes held at the end against quality (mean KL to the full cache, or perplexity), one point per policy."""
    fig = go.Figure()
    axis = {"kl": "mean KL to the full cache (nats, lower is better)", "perplexity": "perplexity (lower is better)"}
    for score in result.policies:
        y = score.kl if quality == "kl" else score.perplexity
        fig.add_trace(go.Scatter(
            x=[score.bytes_held / MIB], y=[y], mode="markers+text", name=score.label, text=[score.label],
            textposition="top center", marker={"size": 12, "color": POLICY_COLOURS.get(score.name, FORMULA)},
            customdata=[[format_bytes(score.bytes_held), score.perplexity, score.kl, 100 * score.top1_agreement]],
            hovertemplate=(f"{score.label}<br>holds %{{customdata[0]}}<br>perplexity %{{customdata[1]:.3f}}<br>"
                           "KL %{customdata[2]:.4f} nats<br>top-1 agreement %{customdata[3]:.1f}%<extra></extra>"),
            showlegend=False))
    base_layout(fig, "What does each policy cost in memory, and in quality?", "K and V held at the end (MiB)",
                axis[quality], note=_note(result))
    if quality == "kl":
        fig.update_yaxes(rangemode="tozero")
    return fig


def keep_map_figure(result: PolicyComparison, score: PolicyScore) -> go.Figure:
    """Which positions ``score``'s policy held in the watched layer and KV head after each call."""
    calls = len(score.watched)
    tokens = result.prompt_tokens + max(calls - 1, 0)
    held = np.zeros((calls, tokens), dtype=np.int8)  # (calls, positions)
    for call, positions in enumerate(score.watched):
        held[call, list(positions)] = 1
        fed = result.prompt_tokens + call
        held[call, fed:] = -1  # not read yet
    fig = go.Figure(go.Heatmap(
        z=held, x=np.arange(tokens), y=np.arange(result.prompt_tokens, result.prompt_tokens + calls),
        zmin=-1, zmax=1, showscale=False,
        colorscale=[[0.0, "#FFFFFF"], [0.33, "#FFFFFF"], [0.33, "#D55E00"], [0.67, "#D55E00"], [0.67, "#0072B2"],
                    [1.0, "#0072B2"]],  # -1 not read yet, 0 evicted, 1 held
        hovertemplate="after %{y:,} tokens read<br>position %{x:,}: %{customdata}<extra></extra>",
        customdata=np.where(held == 1, "held", np.where(held == 0, "evicted", "not read yet")),
    ))
    layer, head = result.watch if result.watch is not None else (0, 0)
    base_layout(fig, f"What does {score.label} keep? Layer {layer}, KV head {head}", "position in the text",
                "tokens read", note=f"{_note(result)} · blue: held · vermillion: evicted · white: not read yet")
    fig.update_yaxes(autorange="reversed")
    return fig


def kivi_figure(errors: QuantisationErrors, note: str) -> go.Figure:
    """Keys' error per channel and values' error per token, relative to their size, grouped both ways."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, specs=[[{"secondary_y": True}, {}]],
                        subplot_titles=("Keys: error per channel (bars: mean |K|)", "Values: error per token"))
    channels = np.arange(len(errors.key_magnitude))
    fig.add_trace(go.Bar(x=channels, y=errors.key_magnitude, name="mean |K| of the channel",
                         marker_color="rgba(127,127,127,0.35)"), 1, 1, secondary_y=True)
    for grouping, colour, show in (("token", KEYS, True), ("channel", VALUES, True)):
        fig.add_trace(go.Scatter(x=channels, y=100 * errors.key_relative(grouping), name=f"grouped per {grouping}",
                                 mode="lines+markers", marker={"size": 4}, line={"color": colour},
                                 legendgroup=grouping, showlegend=show), 1, 1)
        fig.add_trace(go.Scatter(x=np.arange(errors.tokens), y=100 * errors.value_relative(grouping),
                                 name=f"grouped per {grouping}", mode="lines", line={"color": colour},
                                 legendgroup=grouping, showlegend=False), 1, 2)
    base_layout(fig, f"Where does {errors.bits}-bit rounding hurt? Layer {errors.layer}", note=note)
    fig.update_xaxes(title_text="key channel", row=1, col=1)
    fig.update_xaxes(title_text="token position", row=1, col=2)
    fig.update_yaxes(title_text="error / channel's mean |K| (%)", type="log", row=1, col=1, secondary_y=False)
    fig.update_yaxes(title_text="mean |K|", showgrid=False, row=1, col=1, secondary_y=True)
    fig.update_yaxes(title_text="error / token's mean |V| (%)", row=1, col=2)
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.2, "xanchor": "left", "x": 0.0},
                      margin={"t": 100, "b": 100})
    return fig
