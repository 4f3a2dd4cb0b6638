"""The HTML report: one self-contained page of the current trace to hand out (open it anywhere, offline).

It holds the settings that built the trace, the text, the figures the page writes out (cache length and bytes, the
bytes-per-token formula, prefill and decode times), every chart of the Step through page with plotly.js inlined
once (interactive, each with its PNG download button), and the per-step table of ``kvviz.exports.table``. Every
number comes from the records or from the functions the page itself calls (``timing_summary``, ``cache_geometry``,
``format_bytes``); the charts come from ``kvviz.charts.step``.

What it does not do: fetch anything (no external script, style sheet, font or image; a test checks it), run the
model, or import Streamlit.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone

import plotly.io as pio

from kvviz.charts import step as charts
from kvviz.charts.style import token_label
from kvviz.exports.png import chart_config
from kvviz.exports.table import CSV_COLUMNS, step_rows
from kvviz.exports.trace_file import TraceSettings
from kvviz.kv_formula import format_bytes
from kvviz.records import Trace
from kvviz.trace_analysis import timing_summary

# The charts in page order, with the question each answers written by its own title.
CHART_ORDER = ("candidates", "kv_strips", "cache_bytes", "attention_layers", "attention_layer", "work", "latency",
               "cumulative")
_ATTENTION_CHARTS = {"attention_layers", "attention_layer"}

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
  padding: 0 1rem; color: #1b1b1b; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.tokens { font-family: ui-monospace, Menlo, monospace; white-space: pre-wrap; border: 1px solid #ccc;
  padding: 0.5rem; }
.prompt { background: #56B4E933; } .generated { background: #E69F0040; }
.chart { margin: 1rem 0; }
.steps { max-height: 40rem; overflow: auto; }
"""


def report_html(trace: Trace, settings: TraceSettings, layer: int | None = None,
                created: datetime | None = None) -> str:
    """The report of ``trace`` as one HTML document; ``layer`` is the one-layer attention chart's (default: the
    middle layer, as on the page)."""
    record = trace.records[-1] if trace.records else None
    when = (created or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>kvviz report: {_e(trace.model)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>The KV cache of {_e(trace.model)}, step by step</h1>",
        f"<p>A kvviz report made {when}; {_e(charts.note(trace))}. The numbers are the trace's own measurements; "
        "the charts are interactive and each has a button to download it as PNG.</p>",
        "<h2>Settings</h2>", _settings_table(settings),
    ]
    if record is None:
        parts.append("<p>The trace is empty: nothing was prefilled.</p></body></html>")
        return "\n".join(parts)
    parts += ["<h2>Text</h2>", _tokens_html(trace), "<h2>Figures</h2>", _figures_table(trace)]
    parts += ["<h2>Charts</h2>", *_charts_html(trace, layer)]
    parts += [f"<h2>Every step ({len(trace.records):,} model calls)</h2>",
              "<p>One row per model call; the columns are those of the CSV export (described in kvviz's "
              "docs/trace-format.md). Times in ms; empty: not measured.</p>",
              f'<div class="steps">{_steps_table(trace)}</div>', "</body></html>"]
    return "\n".join(parts)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _rows(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_e(name)}</th><td>{_e(value)}</td></tr>" for name, value in rows)
    return f"<table>{body}</table>"


def _settings_table(settings: TraceSettings) -> str:
    sampling = (f"temperature {settings.temperature:g}, top-k {settings.top_k or 'off'}, seed {settings.seed}"
                if settings.sampling else "greedy (temperature 0)")
    return _rows([
        ("model", settings.model), ("prompt", settings.prompt),
        ("chat template", "on" if settings.chat_template else "off"), ("sampling", sampling),
        ("naive comparison", "on" if settings.compare else "off"), ("max new tokens", f"{settings.max_new_tokens:,}"),
    ])


def _tokens_html(trace: Trace) -> str:
    prompt = "".join(trace.token_texts()[:trace.prompt_tokens])
    generated = "".join(trace.token_texts()[trace.prompt_tokens:]) + trace.records[-1].token_text
    return (f'<div class="tokens"><span class="prompt" title="prompt">{_e(prompt)}</span>'
            f'<span class="generated" title="generated">{_e(generated)}</span></div>'
            f"<p>{trace.prompt_tokens:,} prompt tokens (blue), {len(trace.records):,} generated (orange); the last "
            f"one, {_e(token_label(trace.records[-1].token_text))}, is chosen but not yet in the cache.</p>")


def _figures_table(trace: Trace) -> str:
    record = trace.records[-1]
    rows = [("tokens in the cache", f"{record.cache_len:,}"),
            ("cache bytes (K and V, all layers)", f"{format_bytes(record.cache_bytes)} ({record.cache_bytes:,} bytes)")]
    geometry = charts.cache_geometry(record)
    if geometry is not None:
        rows.append(("bytes per token", geometry.formula_text()))
        rows.append(("K and V shape per layer, each", charts.shape_text(record.cache_layers[0].shape)))
    timing = timing_summary(trace)
    if timing is not None:
        rows.append(("prefill (time to first token)", f"{timing.prefill_ms:,.1f} ms for {timing.prompt_tokens:,} "
                                                      "tokens"))
        rows.append(("decode steps", f"{timing.decode_steps:,}"))
        rows.append(("decode time, cached", f"{timing.cached_decode_ms:,.1f} ms"))
        if timing.naive_decode_ms is not None:
            speedup = f" ({timing.speedup:,.1f}× the cached time)" if timing.speedup else ""
            rows.append(("decode time, naive recompute", f"{timing.naive_decode_ms:,.1f} ms{speedup}"))
        if timing.capture_ms is not None:
            rows.append(("recording for the charts (apart from both)", f"{timing.capture_ms:,.1f} ms"))
    return _rows(rows)


def _charts_html(trace: Trace, layer: int | None) -> list[str]:
    layers = len(trace.records[-1].attention or ())
    figures = charts.all_figures(trace, layer if layer is not None else layers // 2)
    shown = [name for name in CHART_ORDER if layers or name not in _ATTENTION_CHARTS]
    out = []
    for position, name in enumerate(shown):
        # plotly.js goes inline once, with the first chart; the others use it.
        out.append('<div class="chart">' + pio.to_html(
            figures[name], full_html=False, include_plotlyjs=position == 0, include_mathjax=False,
            config=chart_config(name), div_id=f"kvviz-{name}") + "</div>")
    if not layers:
        captured = trace.with_attention()
        if captured.records:  # capture stopped at the session's memory limit part-way through the trace
            out.append(f"<p>Attention capture stopped at {captured.records[-1].sequence_length:,} tokens (its memory "
                       "limit), so the report has no attention charts.</p>")
        else:
            out.append("<p>This trace was recorded without attention weights, so it has no attention charts.</p>")
    return out


def _steps_table(trace: Trace) -> str:
    head = "".join(f"<th>{_e(column)}</th>" for column in CSV_COLUMNS)
    body = []
    for row in step_rows(trace):
        cells = []
        for column in CSV_COLUMNS:
            value = row[column]
            if column == "token":
                cells.append(f"<td>{_e(token_label(value))}</td>")
            else:
                cells.append(f'<td class="num">{"" if value is None else _e(value)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
