"""Streamlit glue for the Attention page: generate with a live matrix, and remember what is costly.

The page lays out widgets; this module calls the engine (``attention_matrix``, ``heads``) and the figure builders
(``charts.attention``) and keeps their results in the trace's memo (``trace_analysis.memo_of``) keyed by the
trace's length, so moving a slider never recomputes a whole-model summary. A session's trace is its own, so
nothing is shared between sessions.
"""

from __future__ import annotations

import time
from typing import Callable

import plotly.graph_objects as go
import streamlit as st

from kvviz import attention_matrix as am
from kvviz import heads as hd
from kvviz.charts import attention as charts
from kvviz.charts.style import measured_on
from kvviz.kv_formula import format_bytes
from kvviz.models import LoadedModel, ModelCard
from kvviz.records import Trace
from kvviz.stepper import Sampling, encode_prompt, new_tokens_room
from kvviz.trace_analysis import kv_head_of, memo_of, query_heads_sharing
from kvviz.ui.server import run_on_model
from kvviz.ui.session import SessionTrace, get_session, prefill, step

_PROBES_KEY = "kvviz_attention_probes"
PAGE_MAX_NEW_TOKENS = 512  # the stepper's cap for traces started here: bounds the rows a session keeps
LIVE_REFRESH_S = 0.3  # redraw the growing matrix at most this often while generating
# Whole-model views read every stored row (≈ layers × heads × T² / 2 values): measured ~4.5 s per view for
# SmolLM2 at 2,000 tokens (1 GiB of rows) on a 2-core CPU. Beyond this length they wait for a click instead of
# stalling every first render.
AUTO_WHOLE_MODEL_TOKENS = 600
_WHOLE_MODEL_ALLOWED = ("whole model allowed",)


def loaded_model(session: SessionTrace) -> LoadedModel | None:
    """The model the session's stepper runs on (the home page's or this page's)."""
    return session.stepper.loaded if session.stepper is not None else None


def head_label(card: ModelCard, head: int) -> str:
    """'head 4 · KV head 1 (shared with 3, 5)': grouped-query attention made visible in the head picker."""
    others = [h for h in query_heads_sharing(head, card.queries_per_kv_head) if h != head]
    shared = f" (shared with {', '.join(map(str, others))})" if others else ""
    return f"head {head} · KV head {kv_head_of(head, card.queries_per_kv_head)}{shared}"


def build_head_figure(trace: Trace, layer: int, head: int, how: str) -> go.Figure:
    """The chosen head's matrix stacked from the cached rows, drawn (not memoised: used while it grows)."""
    matrix = am.head_matrix(trace, layer, head)
    note = measured_on(trace.model, trace.device, trace.dtype)
    title = f"What did each token attend to? Layer {layer}, head {head}, one row per cached step"
    return charts.head_heatmap(matrix, trace.token_texts(), prompt_tokens=trace.prompt_tokens, title=title,
                               note=note, how=how)


def head_figure(trace: Trace, layer: int, head: int, how: str) -> go.Figure:
    """``build_head_figure`` memoised per trace length."""
    key = ("head figure", len(trace.records), layer, head, how)
    return memo_of(trace).get(key, lambda: build_head_figure(trace, layer, head, how))


def generate(session: SessionTrace, loaded: LoadedModel, prompt: str, *, chat_template: bool, new_tokens: int,
             on_progress: Callable[[Trace], None]) -> str:
    """Prefill and step up to ``new_tokens`` greedy tokens, calling ``on_progress`` as the matrix grows.

    Stops early at an end-of-sequence token. Returns a one-line summary for the page.
    """
    # Room for "One more token" later, up to the page's cap, as far as the context allows; never less than asked
    # for, so that a prompt too long for ``new_tokens`` is refused with the numbers the user chose.
    room = new_tokens_room(loaded.card.context_length, len(encode_prompt(loaded, prompt, chat_template)))
    limit = max(new_tokens, min(PAGE_MAX_NEW_TOKENS, room))
    record = prefill(session, loaded, prompt, chat_template=chat_template, compare=False, sampling=Sampling(),
                     max_new_tokens=limit)
    on_progress(session.trace)
    last_draw = time.perf_counter()
    made = 1
    while made < new_tokens and not record.is_eos:
        record = step(session)
        made += 1
        if time.perf_counter() - last_draw >= LIVE_REFRESH_S:
            on_progress(session.trace)
            last_draw = time.perf_counter()
    stop = " (stopped at end-of-sequence)" if record.is_eos else ""
    return f"Generated {made} tokens{stop}."


def step_more(session: SessionTrace, count: int) -> None:
    """``count`` more tokens on the session's trace (the home page's stepper, if it started the trace)."""
    for _ in range(count):
        step(session)


def whole_model_allowed(trace: Trace) -> bool:
    """Short traces always; long ones once the user asked (remembered for this trace)."""
    return am.trace_length(trace) <= AUTO_WHOLE_MODEL_TOKENS or _WHOLE_MODEL_ALLOWED in memo_of(trace)


def allow_whole_model(trace: Trace) -> None:
    memo_of(trace).get(_WHOLE_MODEL_ALLOWED, lambda: True)


def matrix_check(trace: Trace, loaded: LoadedModel) -> am.MatrixCheck:
    return memo_of(trace).get(("matrix check", len(trace.records)),
                              lambda: run_on_model(loaded, get_session().id,
                                                   lambda: am.check_against_full_forward(trace, loaded),
                                                   "attention check"))


def check_message(check: am.MatrixCheck) -> str:
    """The check, in words: what was compared, how close, against what tolerance."""
    scope = (f"all {check.tokens_checked} tokens" if check.tokens_checked == check.total_tokens
             else f"the first {check.tokens_checked} of {check.total_tokens} tokens (causal: a prefix check is exact)")
    verdict = "match" if check.passed else "DO NOT match"
    return (f"Stacked cached rows and one full forward pass {verdict}: largest difference "
            f"{check.max_abs_diff:.1e} (layer {check.worst_layer}, head {check.worst_head}) over {check.layers} "
            f"layers × {check.heads} heads × {scope}: {check.prompt_rows} prefill rows + {check.decode_rows} "
            f"decode rows; tolerance {check.tolerance:.0e} (rows are stored as float16).")


def model_view_figure(trace: Trace, card: ModelCard, how: str) -> go.Figure:
    def build() -> go.Figure:
        thumbnails = am.pooled_layers(trace, charts.THUMBNAIL_SIDE, how)
        n = am.trace_length(trace)
        return charts.model_view(thumbnails, queries_per_kv=card.queries_per_kv_head,
                                 factor=am.pool_factor(n, charts.THUMBNAIL_SIDE), tokens=n, how=how,
                                 note=measured_on(trace.model, trace.device, trace.dtype))
    return memo_of(trace).get(("model view", len(trace.records), how), build)


def trace_scores(trace: Trace) -> hd.HeadScores:
    return memo_of(trace).get(("head scores", len(trace.records)), lambda: hd.score_trace(trace))


def induction_probe(loaded: LoadedModel, half_length: int, seed: int, rerun: bool = False) -> hd.InductionProbe:
    """The probe for this model, kept for the session apart from the trace memos (``rerun`` forces a fresh run)."""
    key = (loaded.key, loaded.dtype_name, str(loaded.device), half_length, seed)
    probes: dict[tuple, hd.InductionProbe] = st.session_state.setdefault(_PROBES_KEY, {})
    if rerun or key not in probes:
        probes[key] = run_on_model(loaded, get_session().id, lambda: hd.run_induction_probe(loaded, half_length, seed),
                                   "induction probe")
    return probes[key]


def scores_figure(scores: hd.HeadScores, measure: str, card: ModelCard) -> go.Figure:
    """A head-type map with its question as title and what it was measured on as note."""
    unit = {"entropy": "nats", "spread": "of max"}.get(measure, "weight")
    return charts.head_scores_figure(
        scores.measure(measure), title=hd.TITLES[measure], measure=measure,
        queries_per_kv=card.queries_per_kv_head, threshold=hd.THRESHOLDS.get(measure),
        note=scores.source, zmax=None if measure == "entropy" else 1.0, unit=unit,
    )


def finding_sentence(scores: hd.HeadScores, measure: str) -> str:
    if measure in ("entropy", "spread"):
        return hd.describe_entropy(scores)
    return hd.describe(hd.find_heads(scores, measure))


def token_view(trace: Trace, layer: int, head: int, query: int, skip_first: bool) -> str:
    row = am.attention_row(trace, layer, head, query)
    return charts.token_view_html(trace.token_texts(), row, query, trace.prompt_tokens, skip_first)


def memory_summary(trace: Trace, card: ModelCard) -> dict[str, str]:
    """Attention rows this trace holds, and what full capture costs at longer lengths on this model."""
    summary = {"held": format_bytes(trace.attention_bytes())}
    for tokens in (500, 1000, 2000):
        summary[f"at_{tokens}"] = format_bytes(am.attention_bytes_formula(card, 20, tokens - 20))
    return summary
