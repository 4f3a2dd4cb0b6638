"""Presenter mode: large type, a high-contrast colour-blind-safe palette, the sidebar collapsed, keyboard shortcuts.

It is on with ``?present=1`` in the URL or the sidebar's toggle (session-state key ``present``); app.py collapses the
sidebar for such a link. ``apply_style`` injects the CSS; ``shortcut`` gives a step button its key. What it does not
do: recolour the Plotly charts (they already use the Okabe–Ito palette; ``enlarge`` only raises their text size) or
change any number on the page.
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from kvviz.charts.style import GENERATED, NEWEST, PROMPT

KEY = "present"
FIGURE_FONT_SIZE = 17  # Plotly's default is 12: too small at the back of a room
# Streamlit reserves C and R, so Reset is X.
SHORTCUTS = {"prefill": "F", "next": "N", "play": "P", "stop": "S", "reset": "X"}

# Chips in the page's own concept colours, solid instead of tinted, with black text (WCAG contrast: sky blue 9.1,
# orange 9.3, yellow 15.9). The appended chip gets a black ring inside a yellow one, visible in both themes.
_CSS = f"""
<style>
html {{ font-size: 20px; }}
[data-testid="stMainBlockContainer"] {{ max-width: 100%; padding-top: 2rem; }}
[data-testid="stMarkdownContainer"] p, [data-testid="stMarkdownContainer"] li {{ font-size: 1.15rem; }}
.kvviz-stream {{ font-size: 1.35rem; line-height: 2.3; }}
.kvviz-chip.kvviz-prompt {{ background: {PROMPT}; border-color: {PROMPT}; color: #000; }}
.kvviz-chip.kvviz-generated {{ background: {GENERATED}; border-color: {GENERATED}; color: #000; }}
.kvviz-chip.kvviz-appended {{ outline: 3px solid #000; outline-offset: 0; box-shadow: 0 0 0 6px {NEWEST}; }}
.kvviz-chip.kvviz-newest {{ background: {NEWEST}; color: #000; border: 3px dashed #000; }}
</style>
"""


def presenting() -> bool:
    return bool(st.session_state.get(KEY, False))


def shortcut(button: str) -> str | None:
    """The keyboard shortcut of a step button in presenter mode; None otherwise."""
    return SHORTCUTS[button] if presenting() else None


def shortcut_help() -> str:
    return " · ".join(f"**{key}** {name}" for name, key in
                      zip(("Prefill", "Next token", "Play", "Stop", "Reset"), SHORTCUTS.values()))


def enlarge(fig: go.Figure) -> go.Figure:
    """The figure's default text in presenter size (text a chart sizes itself keeps its size)."""
    size = FIGURE_FONT_SIZE
    # Streamlit's chart theme replaces the layout's base font, so every part is sized on its own.
    fig.update_layout(font={"size": size}, title_font_size=size + 3, legend_font_size=size,
                      hoverlabel_font_size=size)
    fig.update_xaxes(tickfont_size=size, title_font_size=size)
    fig.update_yaxes(tickfont_size=size, title_font_size=size)
    return fig


def apply_style() -> None:
    """Inject the presenter CSS when presenter mode is on."""
    if presenting():
        st.html(_CSS)
