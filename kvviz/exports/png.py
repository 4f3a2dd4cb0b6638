"""The Plotly config every chart is drawn with: its toolbar's "Download plot as a PNG" button, with a file name that
says what the chart is.

Plotly draws the PNG in the browser, so the server needs no image renderer. What it does not do: draw or render
anything itself; pages pass this dict to ``st.plotly_chart`` and the HTML report to ``plotly.io.to_html``.
"""

from __future__ import annotations

import re
from typing import Any

PNG_SCALE = 2  # twice the on-screen pixels, sharp enough for a slide


def png_file_stem(name: str) -> str:
    """``"cache_bytes"`` -> ``"kvviz-cache-bytes"``: a file name without extension (Plotly adds ``.png``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"kvviz-{slug}" if slug else "kvviz-chart"


def chart_config(name: str) -> dict[str, Any]:
    """The config of the chart ``name``: the PNG download button on, named after the chart; no Plotly logo, and no
    lasso or box selection (the charts do nothing with a selection)."""
    return {
        "displaylogo": False,
        "modeBarButtonsToRemove": ["lasso2d", "select2d"],
        "toImageButtonOptions": {"format": "png", "filename": png_file_stem(name), "scale": PNG_SCALE},
    }
