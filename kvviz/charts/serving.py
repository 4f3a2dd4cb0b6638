"""Plotly figures and table rows for the Serving page: the block pool, the batch per step, bytes held, prefix reuse.

Pure functions of ``kvviz.serving.records`` objects: they draw what the engine recorded and compute nothing about
the model; they know nothing of Streamlit. Each request keeps one colour on every chart (``request_colour``).
"""

from __future__ import annotations

from typing import Sequence

import pandas  # noqa: F401  (see kvviz/charts/memory.py: plotly must find pandas fully imported)
import plotly.graph_objects as go

from kvviz.charts.style import FORMULA, GENERATED, NAIVE, PROMPT, base_layout, measured_on
from kvviz.kv_formula import format_bytes
from kvviz.serving.records import (
    BlockSizePoint,
    PressureTimeline,
    PrefixRun,
    PromptDesignRun,
    PromptDesignScenarioResult,
    ServingStep,
    ServingTrace,
)

# Colour-blind-safe qualitative colours (Tol's muted set), one per request; free and cached blocks stay grey.
REQUEST_COLOURS = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255",
                   "#AA4499", "#6699CC", "#661100", "#888888")
SHARED = "#000000"  # outline of a block held by two or more requests
CACHED_BLOCK = "#BBBBBB"  # held by no request, kept for prefix reuse
FREE_BLOCK = "#F2F2F2"
HIT = "#009E73"  # green: a block found in the prefix cache
MISS = "#D55E00"  # vermillion: a block computed
USED = "#0072B2"  # bytes holding real tokens
WASTE = "#E69F00"  # bytes reserved and not written
GRID_COLUMNS = 16


def request_colour(index: int) -> str:
    return REQUEST_COLOURS[index % len(REQUEST_COLOURS)]


def _note(trace: ServingTrace) -> str:
    return (f"{measured_on(trace.model, trace.device, trace.dtype)} · blocks of {trace.block_size} tokens × "
            f"{format_bytes(trace.block_bytes)}")


def _legend_below(fig: go.Figure) -> go.Figure:
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.25, "xanchor": "left", "x": 0.0},
                      margin={"b": 100})
    return fig


def _empty(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


# ----- the pool ---------------------------------------------------------------------------------------------------

def pool_grid_figure(trace: ServingTrace, step: ServingStep, columns: int = GRID_COLUMNS) -> go.Figure:
    """Every block of the pool as a square: coloured by its owner, outlined black when shared, grey when cached."""
    order = {rid: index for index, rid in enumerate(r.request_id for r in trace.requests)}
    by_id = {block.block_id: block for block in step.blocks}
    xs, ys, colours, outlines, widths, labels, hovers = [], [], [], [], [], [], []
    for position, block_id in enumerate(sorted(trace.pool_block_ids)):
        xs.append(position % columns)
        ys.append(position // columns)
        block = by_id.get(block_id)
        if block is None:
            colours.append(FREE_BLOCK)
            outlines.append("#CCCCCC")
            widths.append(1)
            labels.append("")
            hovers.append(f"block {block_id}: free")
            continue
        fill = f"{block.tokens}/{trace.block_size} positions written"
        if block.cached:
            colours.append(CACHED_BLOCK)
            labels.append("c")
            hovers.append(f"block {block_id}: cached, held by no request; {fill}; a later prompt with the same "
                          "prefix can reuse it")
        else:
            colours.append(request_colour(order.get(block.owners[0], 0)))
            labels.append(f"×{block.ref_count}" if block.ref_count > 1 else "")
            hovers.append(f"block {block_id}: held by {', '.join(block.owners)} (reference count {block.ref_count}); "
                          f"{fill}" + ("; hashed: reusable by a later prompt" if block.hashed else ""))
        shared = block.ref_count > 1
        outlines.append(SHARED if shared else "#FFFFFF")
        widths.append(3 if shared else 1)
    rows = (len(xs) + columns - 1) // columns if xs else 1
    fig = go.Figure(go.Scatter(
        x=xs, y=ys, mode="markers+text", text=labels, textfont={"color": "#FFFFFF", "size": 10},
        marker={"symbol": "square", "size": 24, "color": colours, "line": {"color": outlines, "width": widths}},
        hovertext=hovers, hoverinfo="text", showlegend=False,
    ))
    for rid, index in order.items():  # a legend entry per request that holds a block
        if any(rid in block.owners for block in step.blocks):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=rid,
                                     marker={"symbol": "square", "size": 12, "color": request_colour(index)}))
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="cached",
                             marker={"symbol": "square", "size": 12, "color": CACHED_BLOCK}))
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="free",
                             marker={"symbol": "square", "size": 12, "color": FREE_BLOCK,
                                     "line": {"color": "#CCCCCC", "width": 1}}))
    held = sum(1 for block in step.blocks if block.ref_count > 0)
    cached = sum(1 for block in step.blocks if block.cached)
    base_layout(fig, f"The pool after step {step.index}: {held} blocks held, {cached} cached, "
                     f"{step.free_blocks} free", note=_note(trace))
    fig.update_xaxes(visible=False, range=[-0.7, columns - 0.3])
    fig.update_yaxes(visible=False, autorange="reversed", range=[rows - 0.3, -0.7])
    fig.update_layout(height=150 + 32 * rows, plot_bgcolor="#FFFFFF",
                      legend={"orientation": "h", "yanchor": "top", "y": -0.02, "xanchor": "left", "x": 0.0},
                      margin={"b": 60})
    return fig


def block_table_rows(trace: ServingTrace, step: ServingStep) -> list[dict[str, str | int]]:
    """One row per request after ``step``: its state, tokens held, block table and last block's fill."""
    rows = []
    for view in step.requests:
        rows.append({
            "request": view.request_id,
            "state": view.state,
            "tokens in cache": view.tokens_held,
            "generated": view.generated,
            "block table": " → ".join(str(block) for block in view.block_table) or "—",
            "last block": f"{view.last_block_fill}/{trace.block_size}" if view.block_table else "—",
        })
    return rows


# ----- batch and bytes over steps ----------------------------------------------------------------------------------

def batch_figure(trace: ServingTrace, current: int | None = None) -> go.Figure:
    """Tokens fed per step, split into prompt chunks (prefill) and fed-back tokens (decode)."""
    fig = go.Figure()
    steps = trace.steps
    if not steps:
        return _empty(base_layout(fig, "Batch composition per step"), "Press Step or Play to run the scheduler.")
    x = [step.index for step in steps]
    hover = ["<br>".join(f"{e.request_id}: " + (f"prefill {e.prefill_tokens}" if e.prefill_tokens else "decode 1")
                         + (f" (reused {e.cached_prefix_tokens} cached)" if e.cached_prefix_tokens else "")
                         for e in step.batch) for step in steps]
    fig.add_trace(go.Bar(x=x, y=[s.prefill_tokens for s in steps], name="prompt tokens (prefill)",
                         marker_color=PROMPT, hovertext=hover, hoverinfo="text+y"))
    fig.add_trace(go.Bar(x=x, y=[s.decode_tokens for s in steps], name="decode tokens (one per running request)",
                         marker_color=GENERATED, hovertext=hover, hoverinfo="text+y"))
    preempted = [s for s in steps if s.preempted]
    if preempted:
        fig.add_trace(go.Scatter(x=[s.index for s in preempted], y=[s.prefill_tokens + s.decode_tokens for s in preempted],
                                 mode="markers", name="preemption", marker={"symbol": "x", "size": 11, "color": NAIVE},
                                 hovertext=[f"preempted: {', '.join(s.preempted)}" for s in preempted],
                                 hoverinfo="text"))
    if current is not None:
        fig.add_vline(x=current, line={"color": FORMULA, "dash": "dot"})
    fig.update_layout(barmode="stack", height=360)
    base_layout(fig, "Batch composition: who was in each step's one forward pass", "scheduler step", "tokens fed",
                note=_note(trace))
    return _legend_below(fig)


def memory_bars_figure(trace: ServingTrace, step: ServingStep) -> go.Figure:
    """Bytes after ``step``: what the paged pool holds beside contiguous reservations, split into used and waste."""
    m = step.memory
    rows = [
        ("paged blocks", m.paged_used, m.paged_internal_fragmentation, "unfilled tail of each last block"),
        ("contiguous, each request's own maximum", m.contiguous_used, m.contiguous_over_reservation,
         "reserved up to prompt + new tokens, not yet written"),
    ]
    names = [row[0] for row in rows]
    fig = go.Figure()
    if not any(row[1] or row[2] for row in rows):
        fig.update_layout(height=160)
        return _empty(base_layout(fig, f"KV bytes after step {step.index}", note=_note(trace)),
                      "No request holds blocks after this step.")
    fig.add_trace(go.Bar(y=names, x=[row[1] for row in rows], orientation="h", name="holding tokens",
                         marker_color=USED, hovertext=[format_bytes(row[1]) for row in rows], hoverinfo="text"))
    fig.add_trace(go.Bar(y=names, x=[row[2] for row in rows], orientation="h", name="reserved, not written (waste)",
                         marker_color=WASTE,
                         hovertext=[f"{format_bytes(row[2])}: {row[3]}" for row in rows], hoverinfo="text"))
    fig.update_layout(barmode="stack", height=120 + 45 * len(rows))
    fig.update_yaxes(autorange="reversed")
    base_layout(fig, f"KV bytes after step {step.index}: used and reserved", "bytes", "", note=_note(trace))
    fig.update_layout(margin={"l": 260})
    return fig


def memory_steps_figure(trace: ServingTrace, current: int | None = None) -> go.Figure:
    """Bytes reserved per step by the paged pool and by a contiguous reservation, beside the bytes really used."""
    fig = go.Figure()
    steps = trace.steps
    if not steps:
        return _empty(base_layout(fig, "KV bytes over the run"), "Press Step or Play to run the scheduler.")
    x = [s.index for s in steps]
    series = [("contiguous reserved (each request's maximum)", [s.memory.contiguous_reserved for s in steps], NAIVE,
               "dash"),
              ("paged reserved (blocks held)", [s.memory.paged_reserved for s in steps], USED, "solid"),
              ("used by real tokens (paged)", [s.memory.paged_used for s in steps], HIT, "dot")]
    for name, values, colour, dash in series:
        fig.add_trace(go.Scatter(x=x, y=[v / 2**20 for v in values], name=name, mode="lines",
                                 line={"color": colour, "dash": dash},
                                 hovertext=[format_bytes(v) for v in values], hoverinfo="text+x"))
    if current is not None:
        fig.add_vline(x=current, line={"color": FORMULA, "dash": "dot"})
    fig.update_layout(height=360)
    base_layout(fig, "KV bytes over the run", "scheduler step", "MiB", note=_note(trace))
    return _legend_below(fig)


# ----- prefix caching ---------------------------------------------------------------------------------------------

def prefix_block_rows(run: PrefixRun, prompt_index: int) -> list[dict[str, str | int]]:
    """One row per full block of a prompt: its chained hash, its parent's, and whether it was found in the cache."""
    return [{
        "block": block.index,
        "tokens": f"{block.index * run.block_size}–{(block.index + 1) * run.block_size - 1}",
        "hash": block.content_hash,
        "parent hash": block.parent_hash or "— (first block)",
        "found in cache": "hit" if block.hit else "miss",
        "pool block": "—" if block.block_id is None else str(block.block_id),
    } for block in run.prompts[prompt_index].blocks]


def ttft_figure(labels: Sequence[str], ttft_ms: Sequence[float], hits: Sequence[int], note: str) -> go.Figure:
    """Time to first token of the same prompt measured cold and with its prefix found in the cache."""
    colours = [HIT if hit else MISS for hit in hits]
    fig = go.Figure(go.Bar(x=list(labels), y=list(ttft_ms), marker_color=colours,
                           text=[f"{ms:,.0f} ms" for ms in ttft_ms], textposition="outside",
                           hovertext=[f"{hit} prompt tokens read from the cache" for hit in hits], hoverinfo="text+y"))
    fig.update_layout(height=300, yaxis={"rangemode": "tozero"})
    fig.update_yaxes(range=[0, max(ttft_ms, default=1) * 1.25])
    return base_layout(fig, "Time to first token: cold against a prefix hit", "", "ms", note=note)


def block_size_figure(points: Sequence[BlockSizePoint], note: str) -> go.Figure:
    """Waste and prefix reuse against block size, from one run of the same requests per size."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "Unwritten share of held bytes", "Prompt tokens found in the prefix cache", "Block-table entries (peak)"))
    x = [str(p.block_size) for p in points]
    fig.add_trace(go.Bar(x=x, y=[100 * p.waste_fraction_paged for p in points], marker_color=WASTE,
                         hovertext=[f"{p.waste_fraction_paged:.1%} of held bytes unwritten, averaged over {p.steps} "
                                    f"steps; peak {format_bytes(p.paged_bytes_peak)} held" for p in points],
                         hoverinfo="text", showlegend=False), row=1, col=1)
    fig.add_trace(go.Bar(x=x, y=[p.prefix_cached_tokens for p in points], marker_color=HIT,
                         hovertext=[f"{p.prefix_cached_tokens} of {p.prompt_tokens} prompt tokens reused"
                                    for p in points], hoverinfo="text", showlegend=False), row=1, col=2)
    fig.add_trace(go.Bar(x=x, y=[p.block_table_entries_peak for p in points], marker_color=USED,
                         hoverinfo="y", showlegend=False), row=1, col=3)
    fig.update_xaxes(title_text="block size (tokens)", type="category")
    fig.update_yaxes(title_text="%", row=1, col=1)
    fig.update_yaxes(title_text="tokens", row=1, col=2)
    fig.update_yaxes(title_text="entries", row=1, col=3)
    fig.update_layout(height=340)
    return base_layout(fig, "The block-size trade-off, measured on the same requests", note=note)


def pressure_figure(timeline: PressureTimeline, note: str) -> go.Figure:
    """The pool's blocks (held, cached, free) and the queue (running, waiting) after every step, preemptions marked."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.6, 0.4],
                        subplot_titles=(f"Blocks of the pool ({timeline.pool_blocks})", "Requests"))
    x = [p.step for p in timeline.points]
    for name, values, colour in (("held by requests", [p.blocks_held for p in timeline.points], USED),
                                 ("cached (reusable)", [p.blocks_cached for p in timeline.points], CACHED_BLOCK),
                                 ("free", [p.blocks_free for p in timeline.points], FREE_BLOCK)):
        fig.add_trace(go.Scatter(x=x, y=values, name=name, stackgroup="blocks", mode="lines",
                                 line={"width": 0.5, "color": colour}, fillcolor=colour), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=[p.running for p in timeline.points], name="running", mode="lines",
                             line={"color": HIT, "shape": "hv"}), row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=[p.waiting for p in timeline.points], name="waiting (preempted included)",
                             mode="lines", line={"color": WASTE, "shape": "hv"}), row=2, col=1)
    preempted = [p for p in timeline.points if p.preempted]
    if preempted:
        fig.add_trace(go.Scatter(x=[p.step for p in preempted], y=[p.waiting for p in preempted], mode="markers",
                                 name="preemption", marker={"symbol": "x", "size": 11, "color": NAIVE},
                                 hovertext=[f"{p.preempted} preempted" for p in preempted], hoverinfo="text+x"),
                      row=2, col=1)
    fig.update_xaxes(title_text="scheduler step", row=2, col=1)
    fig.update_yaxes(title_text="blocks", row=1, col=1)
    fig.update_yaxes(title_text="requests", row=2, col=1)
    fig.update_layout(height=520)
    base_layout(fig, "Memory pressure: the pool and the queue, step by step", note=note)
    return _legend_below(fig)


def prompt_design_figure(run: PromptDesignRun) -> go.Figure:
    """Hit rate and prefill tokens saved, cache-friendly against cache-hostile, for each prompt-design scenario."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Prompt tokens found in the cache (prompts 2 on)",
                                                        "Prefill tokens saved"))
    titles = [scenario.title for scenario in run.scenarios]
    for variant, colour in (("friendly", HIT), ("hostile", MISS)):
        results = [getattr(scenario, variant) for scenario in run.scenarios]
        name = results[0].name if results else variant
        fig.add_trace(go.Bar(x=titles, y=[100 * r.hit_rate_after_first for r in results], name=name,
                             marker_color=colour, legendgroup=variant,
                             hovertext=[f"{r.description}: {sum(r.hit_tokens)} of {sum(r.prompt_tokens)} prompt "
                                        f"tokens reused" for r in results], hoverinfo="text+y"), row=1, col=1)
        fig.add_trace(go.Bar(x=titles, y=[r.prefill_tokens_saved for r in results], name=name, marker_color=colour,
                             legendgroup=variant, showlegend=False), row=1, col=2)
    fig.update_yaxes(title_text="%", range=[0, 100], row=1, col=1)
    fig.update_yaxes(title_text="tokens", row=1, col=2)
    fig.update_layout(barmode="group", height=420)
    base_layout(fig, "Prompt design and the prefix cache", note=f"{measured_on(run.model, run.device, run.dtype)} · "
                f"blocks of {run.block_size} tokens")
    return _legend_below(fig)


def design_rows(scenario: PromptDesignScenarioResult) -> list[dict[str, str | int]]:
    """One row per prompt of both variants: its tokens, how many were found in the cache, its time to first token."""
    rows = []
    for variant in (scenario.friendly, scenario.hostile):
        for index, (tokens, hit, divergence, ttft) in enumerate(zip(variant.prompt_tokens, variant.hit_tokens,
                                                                    variant.first_divergence, variant.ttft_ms)):
            rows.append({"variant": variant.name, "prompt": index + 1, "tokens": tokens, "found in cache": hit,
                         "differs from the previous at token": "—" if divergence is None else str(divergence),
                         "time to first token (ms)": f"{ttft:,.0f}"})
    return rows
