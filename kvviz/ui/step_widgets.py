"""Widgets of the Step through page that are more than one Streamlit call: token chips, model card, match badge.

The HTML and table builders are plain functions of a ``Trace`` / ``LoadedModel`` (tested without a browser); the
``show_*`` functions put them on the page. Nothing here steps the model or computes model outputs.
"""

from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from streamlit.errors import StreamlitAPIException

from kvviz.charts.step import cache_geometry, shape_text
from kvviz.charts.style import GENERATED, NEWEST, PROMPT, token_label
from kvviz.errors import KvvizError
from kvviz.exports.png import chart_config
from kvviz.kv_formula import format_bytes
from kvviz.models import LoadedModel
from kvviz.records import StepRecord, Trace
from kvviz.stepper import encode_prompt
from kvviz.trace_analysis import appended_positions, latest
from kvviz.ui import presenter
from kvviz.ui.session import SessionTrace

# Beyond this many tokens the stream shows the latest ones only: a chip per token stops being readable anyway.
MAX_CHIPS = 600

_CHIP_CSS = f"""
<style>
.kvviz-stream {{ line-height: 2.1; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.85rem; }}
.kvviz-chip {{ display: inline-block; white-space: pre; margin: 0 2px 2px 0; padding: 0 4px; border-radius: 4px;
  line-height: 1.6; border: 1px solid transparent; }}
.kvviz-prompt {{ background: {PROMPT}33; border-color: {PROMPT}; }}
.kvviz-generated {{ background: {GENERATED}40; border-color: {GENERATED}; }}
.kvviz-appended {{ outline: 3px solid {NEWEST}; outline-offset: 0; }}
.kvviz-newest {{ background: {NEWEST}; color: #000; border: 2px dashed #000; font-weight: 600; }}
.kvviz-legend {{ font-size: 0.8rem; margin-bottom: 0.4rem; }}
.kvviz-legend .kvviz-chip {{ margin-right: 0.8rem; }}
</style>
"""


def _chip(text: str, classes: str, tooltip: str) -> str:
    shown = html.escape(token_label(text) if text.strip() == "" or "\n" in text else text)
    return f'<span class="kvviz-chip {classes}" title="{html.escape(tooltip, quote=True)}">{shown}</span>'


def token_chips_html(trace: Trace, max_chips: int = MAX_CHIPS) -> str:
    """The context as chips (prompt, generated, appended this step) and the newest chosen token after them.

    Hovering a chip shows its position, token id and where it came from. A newline token is followed by a line
    break so a chat transcript reads as one.
    """
    record = latest(trace)
    if record is None:
        return ""
    texts, ids = trace.token_texts(), trace.token_ids()
    prompt_tokens = trace.prompt_tokens
    start, stop = appended_positions(record)
    first = max(len(texts) - max_chips, 0)
    parts = [_CHIP_CSS, '<div class="kvviz-legend">',
             _chip("prompt", "kvviz-prompt", "tokens of the prompt, cached by the prefill"),
             _chip("generated", "kvviz-generated", "tokens the model chose and that were fed back"),
             _chip("appended this step", "kvviz-generated kvviz-appended",
                   "their K and V were added to the cache by the latest call"),
             _chip("newest", "kvviz-newest", "chosen by the latest call; its K and V enter the cache at the next step"),
             "</div>", '<div class="kvviz-stream">']
    if first:
        parts.append(f"<span>… {first} earlier tokens … </span>")
    for position in range(first, len(texts)):
        generated = position >= prompt_tokens
        classes = "kvviz-generated" if generated else "kvviz-prompt"
        if start <= position < stop:
            classes += " kvviz-appended"
        origin = f"chosen by step {position - prompt_tokens}" if generated else "prompt"
        tooltip = f"position {position} · id {ids[position]} · {token_label(texts[position])} · {origin} · in the cache"
        parts.append(_chip(texts[position], classes, tooltip))
        if "\n" in texts[position]:
            parts.append("<br>")
    chosen = next((c.probability for c in record.candidates if c.token_id == record.token_id), None)
    probability = f" (p = {chosen:.3f})" if chosen is not None else ""
    parts.append(_chip(record.token_text, "kvviz-newest",
                       f"position {len(texts)} · id {record.token_id} · {token_label(record.token_text)} · chosen by "
                       f"step {record.index}{probability} · not in the cache yet: its K and V are computed when the "
                       "next step feeds it"))
    parts.append("</div>")
    return "".join(parts)


def model_card_markdown(loaded: LoadedModel) -> str:
    """The numbers that size a KV cache, as a small Markdown table."""
    card = loaded.card
    parameters = ""
    if card.parameters >= 1e6:
        parameters = f", {card.parameters / 1e6:,.0f} M parameters"
    elif card.parameters:
        parameters = f", {card.parameters:,} parameters"
    window = f", sliding window {card.sliding_window}" if card.sliding_window else ""
    sharing = f"{card.kv_heads} ({card.attention_kind}" + (
        f", {card.queries_per_kv_head} query heads each)" if card.attention_kind == "GQA" else ")")
    return (
        f"| **{card.name}** | {card.architecture}{parameters}{window} |\n|---|---:|\n"
        f"| layers | {card.layers} |\n"
        f"| query heads | {card.query_heads} |\n"
        f"| KV heads | {sharing} |\n"
        f"| head dim | {card.head_dim} |\n"
        f"| dtype | {loaded.dtype_name} |\n"
        f"| device | {loaded.device} |\n"
        f"| context | {card.context_length:,} tokens |\n\n"
        f"Loaded from {loaded.loaded_from} in {loaded.load_seconds:.1f} s. {card.note}"
    )


def prompt_caption(loaded: LoadedModel, prompt: str, chat_template: bool) -> str:
    """How many tokens the prompt becomes (what the prefill will put in the cache), against the model's context."""
    try:
        tokens = len(encode_prompt(loaded, prompt, chat_template=chat_template))
    except KvvizError as error:
        return str(error)
    wrapped = " with the chat template" if chat_template else ""
    return f"{tokens:,} tokens{wrapped}; the model's context holds {loaded.card.context_length:,}."


def layer_table(record: StepRecord) -> pd.DataFrame:
    """One row per layer: the K (= V) tensor shape as transformers holds it, and the bytes of K and V together."""
    return pd.DataFrame({
        "layer": [layer.layer for layer in record.cache_layers],
        "K and V shape, each": [shape_text(layer.shape) for layer in record.cache_layers],
        "dtype": [layer.dtype for layer in record.cache_layers],
        "bytes (K + V)": [layer.bytes for layer in record.cache_layers],
        "size": [format_bytes(layer.bytes) for layer in record.cache_layers],
    })


def attention_layers(record: StepRecord) -> int:
    """How many layers' attention the record carries (0 when it was recorded without attention)."""
    return len(record.attention or ())


def grouped_query_caption(record: StepRecord) -> str | None:
    """One sentence on grouped-query attention for this record's model, or None for plain multi-head attention."""
    geometry = cache_geometry(record)
    if geometry is None or not record.attention:
        return None
    query_heads = record.attention[0].shape[0]
    if geometry.kv_heads >= query_heads:
        return None
    per_kv_head = query_heads // geometry.kv_heads
    return (
        f"Grouped-query attention: {query_heads} query heads share {geometry.kv_heads} KV heads, {per_kv_head} "
        "query heads per KV head (white lines). The cache stores K and V per KV head only, which makes it "
        f"{per_kv_head}× smaller than with one KV head per query head."
    )


def show_match_badge(record: StepRecord) -> None:
    """Did the naive recompute choose the same token, and how far apart were the two logit vectors?"""
    if record.same_token is None or record.max_logit_diff is None:
        st.badge("naive comparison off", icon=":material/remove:", color="gray")
    elif record.same_token:
        st.badge(f"naive recompute: same token · max |Δlogit| {record.max_logit_diff:.1e}",
                 icon=":material/check:", color="green")
    else:
        st.badge(f"naive recompute chose another token · max |Δlogit| {record.max_logit_diff:.1e}",
                 icon=":material/close:", color="red")


def show_message(session: SessionTrace) -> None:
    if session.message is None:
        return
    level, text = session.message
    {"error": st.error, "warning": st.warning, "info": st.info}[level](text)


def show_figure(fig: go.Figure, key: str) -> None:
    """A chart under its own key: two charts with identical figures (two empty states) must not share an id. Its
    toolbar downloads it as a PNG named after the key; in presenter mode its text is enlarged."""
    if presenter.presenting():
        presenter.enlarge(fig)
    st.plotly_chart(fig, key=key, config=chart_config(key))


def rerun_fragment() -> None:
    """Run the calling fragment again (Play's next token); a full-app run cannot do that, so it reruns the app."""
    try:
        st.rerun(scope="fragment")
    except StreamlitAPIException:
        st.rerun()
