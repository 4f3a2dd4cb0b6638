"""Attention: the causal attention matrix stacked from cached rows, the model view, the token view and head types.

Widgets and layout only: the engine (``kvviz.attention_matrix``, ``kvviz.heads``) computes and
``kvviz.ui.attention_widgets`` memoises per session. Reads the same session trace as the Step-through page.
"""

import itertools

import streamlit as st

from kvviz import heads as hd
from kvviz.attention_matrix import CHECK_MAX_TOKENS, has_attention, trace_length
from kvviz.charts.attention import MAX_SIDE, position_label
from kvviz.errors import KvvizError
from kvviz.exports.png import chart_config
from kvviz.models import DEFAULT_MODEL, REGISTRY
from kvviz.ui import attention_widgets as aw
from kvviz.ui.resources import get_model
from kvviz.ui.session import ATTENTION_BUDGET_TEXT, get_session

DEFAULT_PROMPT = "Explain in three short sentences why the sky is blue."

st.title("Attention — what does each new token look at?")
st.markdown(
    "With a KV cache, each decode step computes **one new row** of the attention matrix: the new token's query "
    "against every cached key. Stack the rows and you get the matrix a single forward pass over the whole text "
    "computes — checked below on the live model, for every layer and head."
)

session = get_session()
models = list(REGISTRY)
with st.expander("Generate on this page", expanded=session.trace is None):
    with st.form("attention-generate"):
        left, right = st.columns([1, 3])
        model_name = left.selectbox(
            "Model", models, index=models.index(session.model_key) if session.model_key in models
            else models.index(DEFAULT_MODEL))
        new_tokens = left.slider("New tokens", 1, 300, 60, help="Greedy; stops early at end-of-sequence.")
        chat = left.checkbox("Chat template", value=True)
        prompt = right.text_area("Prompt", DEFAULT_PROMPT, height=130)
        generate_clicked = st.form_submit_button("Generate", type="primary")
    st.caption("This page shares the session's trace with Step through: stepping there shows up here, and "
               "Generate here replaces it.")

if generate_clicked:
    try:
        loaded = get_model(model_name)
    except KvvizError as error:
        st.error(str(error))
        st.stop()
else:
    loaded = aw.loaded_model(session)
    if loaded is None or session.trace is None:
        st.info("No trace yet: press **Generate** above, or prefill and step on the Step-through page.")
        st.stop()
    if not has_attention(session.attention_trace()):
        st.warning("This trace was recorded without attention rows; press Generate to record one with them.")
        st.stop()

card = loaded.card

st.subheader("The matrix, one cached row at a time")
strongest = aw.induction_probe(loaded, hd.PROBE_HALF_LENGTH, hd.PROBE_SEED)
default_layer, default_head, _ = hd.find_heads(strongest.scores, "previous").best
pick_layer, pick_head, pick_pool = st.columns([1, 2, 1])
layer = pick_layer.selectbox("Layer", list(range(card.layers)), index=default_layer, key=f"attn-layer-{card.key}")
head = pick_head.selectbox("Head", list(range(card.query_heads)), index=default_head,
                           format_func=lambda h: aw.head_label(card, h), key=f"attn-head-{card.key}")
how = pick_pool.radio("Long traces pool blocks by", ["max", "mean"], horizontal=True, key="attn-pool")
matrix_col, side_col = st.columns([2, 1], gap="medium")
matrix_slot = matrix_col.empty()

if generate_clicked:
    draws = itertools.count()  # each live redraw needs its own element key
    try:
        with side_col, st.spinner("Generating: each step adds one row…"):
            done = aw.generate(
                session, loaded, prompt, chat_template=chat, new_tokens=new_tokens,
                on_progress=lambda t: matrix_slot.plotly_chart(
                    aw.build_head_figure(t, layer, head, how), key=f"attn-live-{next(draws)}",
                    config=chart_config("attention-matrix")),
            )
        st.toast(done)
    except KvvizError as error:
        st.error(str(error))
        st.stop()

trace = session.attention_trace()
stopped_at = session.capture_stopped_at()
if stopped_at:
    st.info(f"Attention capture stopped after {stopped_at:,} of the trace's {trace_length(session.trace):,} tokens, "
            f"when this tab held {ATTENTION_BUDGET_TEXT} of attention rows; the matrix below covers the tokens "
            "captured. Reset on the Step-through page (or Generate here) to start over.")
n = trace_length(trace)
memory = aw.memory_summary(trace, card)
matrix_slot.plotly_chart(aw.head_figure(trace, layer, head, how), key="attn-matrix",
    config=chart_config("attention-matrix"))

with side_col:
    st.markdown(
        f"**{trace.model}** · {n} tokens ({trace.prompt_tokens} prompt + {len(trace.decode_steps)} stepped) · "
        f"attention rows held: **{memory['held']}** (float16)"
    )
    st.markdown(
        "**How to read it.** Row *i* is what token *i* attended to when it was computed; it can only see "
        "tokens up to itself, hence the triangle. The prompt's rows came from one prefill call (a block); every "
        "row below the dotted line was computed later by one cached decode step: the new query against all "
        "cached keys. Axis labels: blue = prompt, orange = generated; the yellow outline is the newest row."
    )
    st.caption(f"Opens on this model's strongest previous-token head (layer {default_layer}, head "
               f"{default_head}, from the induction probe below): its diagonal just below the main one is easy "
               "to spot. A bright first column is an attention sink.")
    check = aw.matrix_check(trace, loaded)
    if check.passed:
        st.success(aw.check_message(check), icon=":material/check_circle:")
    else:
        st.error(aw.check_message(check), icon=":material/error:")
    one_col, ten_col = st.columns(2)
    more = one_col.button("One more token", help="Steps this session's trace: one more cached row.",
                          width="stretch")
    more_ten = ten_col.button("Ten more tokens", width="stretch")
if more or more_ten:
    try:
        aw.step_more(session, 1 if more else 10)
    except KvvizError as error:
        st.error(str(error))
    else:
        st.rerun()


@st.fragment
def token_section() -> None:
    st.subheader("Token view: what one query token reads")
    texts = trace.token_texts()
    query = st.select_slider("Query token", options=list(range(n)), value=n - 1,
                             format_func=lambda i: position_label(texts[i], i, width=20), key=f"attn-query-{n}")
    skip = st.checkbox("Shade relative to the largest weight after position 0 (the sink usually takes most)",
                       value=True, key="attn-skip-sink")
    st.html(aw.token_view(trace, layer, head, query, skip))
    st.caption(f"Layer {layer}, {aw.head_label(card, head)}. Hover a token for its exact weight.")


def model_view_section() -> None:
    st.subheader("Model view: every layer and head at once")
    with st.spinner("Pooling every layer's rows…"):
        st.plotly_chart(aw.model_view_figure(trace, card, how), key="attn-model-view",
            config=chart_config("attention-model-view"))
    if card.kv_heads < card.query_heads:
        st.caption(
            f"Grouped-query attention: {card.query_heads} query heads share {card.kv_heads} KV heads, "
            f"{card.queries_per_kv_head} per group (lines separate the groups; query head h reads KV head "
            f"h // {card.queries_per_kv_head}). Heads in one group read the same cached keys and values but ask "
            "their own questions, so their patterns can still differ — and the cache stores only the KV heads."
        )
    else:
        st.caption(f"Every one of the {card.query_heads} query heads has its own KV head (multi-head attention).")


@st.fragment
def head_types_section() -> None:
    st.subheader("Head types: sinks, previous-token heads, induction heads")
    half_col, seed_col, run_col = st.columns([1, 1, 2])
    half = half_col.number_input("Probe length (tokens per copy)", 10, 200, hd.PROBE_HALF_LENGTH, key="attn-half")
    seed = seed_col.number_input("Probe seed", 0, 10_000, hd.PROBE_SEED, key="attn-seed")
    run_col.write("")
    rerun = run_col.button("Run the induction probe", type="primary",
                           help="Random tokens, then the same tokens again, through the model once.")
    with st.spinner("Running the induction probe…"):
        probe = aw.induction_probe(loaded, int(half), int(seed), rerun=rerun)
    with st.spinner("Scoring every head of the trace…"):
        scores = aw.trace_scores(trace)
    st.caption(f"Sink, previous-token and spread maps are measured on the current trace ({n} tokens); the "
               f"induction map on the probe: {probe.half_length} seeded random tokens, then the same again.")
    for measure in hd.MAPS:
        source = probe.scores if measure == "induction" else scores
        chart_col, text_col = st.columns([3, 1])
        chart_col.plotly_chart(aw.scores_figure(source, measure, card), key=f"attn-type-{measure}",
            config=chart_config(f"attention-{measure}"))
        text_col.write("")
        text_col.caption(hd.MEANINGS[measure])
        text_col.markdown(aw.finding_sentence(source, measure))


token_section()
if aw.whole_model_allowed(trace):
    model_view_section()
    head_types_section()
else:
    st.info(f"This trace has {n} tokens: the model view and the head-type maps read all {memory['held']} of "
            "attention rows, which takes a few seconds on a CPU. The matrix and token view above stay instant.")
    if st.button("Compute the model view and head maps", type="primary"):
        aw.allow_whole_model(trace)
        st.rerun()

with st.expander("How much memory do these attention rows take?"):
    st.markdown(
        f"Each step keeps its new row for every layer and query head as float16: {card.layers} layers × "
        f"{card.query_heads} heads × 2 bytes × the context length. The prefill keeps its whole P×P block. This "
        f"trace holds **{memory['held']}**; with a 20-token prompt, full capture would hold "
        f"{memory['at_500']} at 500 tokens, {memory['at_1000']} at 1,000 and "
        f"{memory['at_2000']} at 2,000 — quadratic, unlike the KV cache itself, which grows linearly. "
        f"So traces started here stop at {aw.PAGE_MAX_NEW_TOKENS} new tokens, and the page never builds more "
        "than one head's matrix at a time (whole-model views are pooled block by block; past "
        f"{aw.AUTO_WHOLE_MODEL_TOKENS} tokens they wait for a click). A head's matrix of more than {MAX_SIDE} "
        f"tokens is pooled to at most {MAX_SIDE} × {MAX_SIDE} cells before it reaches the browser, and the "
        f"full-forward check runs on the first {CHECK_MAX_TOKENS} tokens."
    )
