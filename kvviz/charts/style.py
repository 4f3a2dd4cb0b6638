"""One colour per concept on every chart (Okabe–Ito, colour-blind safe), the shared figure layout, and one way to
write a token on an axis (the same glyphs for spaces, newlines and tabs on every page)."""

from __future__ import annotations

import plotly.graph_objects as go

CACHED = "#0072B2"  # blue: the cached path
NAIVE = "#D55E00"  # vermillion: the naive recompute path
KEYS = "#009E73"  # green: keys
VALUES = "#CC79A7"  # purple: values
PROMPT = "#56B4E9"  # sky blue: prompt tokens
GENERATED = "#E69F00"  # orange: generated tokens
NEWEST = "#F0E442"  # yellow: the newest token / column appended this step
FORMULA = "#7F7F7F"  # grey: a formula's prediction drawn over measurements
ENGINE = "#000000"  # black: an outside engine (llama.cpp) set beside kvviz's PyTorch paths
OVERHEAD = "#999999"  # light grey, dotted: work done for the charts, timed apart from the paths it serves
SEQUENTIAL = "Viridis"  # heatmaps (attention weights)
NEWLINE = "⏎"  # a token's newline, on every axis and in every text view


def base_layout(fig: go.Figure, title: str, x_title: str = "", y_title: str = "", note: str = "") -> go.Figure:
    """Title = the question the chart answers; axes carry units; ``note`` names what it was measured on."""
    text = title if not note else f"{title}<br><sup>{note}</sup>"
    fig.update_layout(
        title={"text": text, "x": 0.0, "xanchor": "left"},
        xaxis_title=x_title,
        yaxis_title=y_title,
        margin={"l": 60, "r": 20, "t": 70, "b": 50},
        hovermode="closest",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
    )
    return fig


def measured_on(model: str, device: str, dtype: str) -> str:
    return f"measured on {model} · {device} · {dtype}"


def token_label(text: str, mark_spaces: bool = True) -> str:
    """A token's text made visible: newlines as ⏎, tabs as ⇥, empty as ∅, and spaces as ␣ (with ``mark_spaces``
    every space, otherwise only in a token of spaces alone, where nothing else would show)."""
    shown = text.replace("\n", NEWLINE).replace("\t", "⇥").replace("\r", "")
    if mark_spaces or not shown.strip():
        shown = shown.replace(" ", "␣")
    return shown or "∅"
