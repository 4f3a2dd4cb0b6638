"""What the Attention page costs to draw one head's matrix of a 2,000-token trace (synthetic rows, no model).

Builds the trace the tests use (20 prompt tokens + 1,980 steps, 3 heads), then times, median of 5: assembling the
matrix from the cached rows, building the pooled Plotly heatmap, and serialising it to JSON (what the browser
receives). Asserts nothing.

    python scripts/attention_render.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_attention_matrix import synthetic_attention_trace  # noqa: E402

from kvviz import attention_matrix as am  # noqa: E402
from kvviz.charts import attention as charts  # noqa: E402


def main() -> int:
    trace = synthetic_attention_trace(prompt_tokens=20, steps=1980, layers=1, heads=3)
    build, draw, ship = [], [], []
    for _ in range(5):
        start = time.perf_counter()
        matrix = am.head_matrix(trace, 0, 1)
        build.append(time.perf_counter() - start)
        start = time.perf_counter()
        figure = charts.head_heatmap(matrix, trace.token_texts(), prompt_tokens=trace.prompt_tokens, title="t",
                                     note="n", how="max")
        draw.append(time.perf_counter() - start)
        start = time.perf_counter()
        text = figure.to_json()
        ship.append(time.perf_counter() - start)
    print(f"2,000 tokens: matrix {statistics.median(build):.3f} s, figure {statistics.median(draw):.3f} s, "
          f"JSON {statistics.median(ship):.3f} s ({len(text) / 1024:.0f} KiB); heatmap cells {figure.data[0].z.shape}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
