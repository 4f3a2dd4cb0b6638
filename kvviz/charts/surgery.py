"""Figure for cache surgery: the next-token distribution with the untouched cache and with the changed copy.

What it does not do: run the model or the surgery (``kvviz.surgery``), or import Streamlit.
"""

from __future__ import annotations

import plotly.graph_objects as go

from kvviz.charts.style import CACHED, NAIVE, base_layout, token_label
from kvviz.surgery import SurgeryResult


def surgery_figure(result: SurgeryResult, measured: str) -> go.Figure:
    """Grouped bars over the union of both top-10 lists: probability before and after the surgery."""
    before = {c.token_id: c for c in result.before}
    after = {c.token_id: c for c in result.after}
    order = list(dict.fromkeys([c.token_id for c in result.before] + [c.token_id for c in result.after]))
    texts = {**{i: c.text for i, c in before.items()}, **{i: c.text for i, c in after.items()}}
    # Two tokens can decode to the same text; a zero-width suffix keeps each its own bar.
    labels = [f"{token_label(texts[i])}  " + "\u200b" * n for n, i in enumerate(order)]

    def bars(found: dict, name: str, colour: str) -> go.Bar:
        values = [100.0 * found[i].probability if i in found else None for i in order]
        return go.Bar(y=labels, x=values, name=name, orientation="h", marker_color=colour,
                      customdata=[[i] for i in order],
                      hovertemplate="%{y}<br>id %{customdata[0]}<br>%{x:.3f}%<extra>" + name + "</extra>")

    fig = go.Figure([bars(before, "untouched cache", CACHED), bars(after, "after surgery", NAIVE)])
    base_layout(fig, f"Next token after {result.op.doing(limit=8)}", "probability (%)", "",
                note=measured + " · a blank bar: not in that side's top 10")
    fig.update_layout(barmode="group", yaxis={"autorange": "reversed", "type": "category"},
                      legend={"orientation": "h", "y": -0.15}, height=420)
    return fig
