"""Cache policies: shrink the KV cache (evict or quantise) and score each policy against the full cache, live.

Layout only. The settings sit at the top; the run area is a fragment that advances the comparison a few tokens per
rerun (so Stop lands between two of them) and draws every view from the run's records.
"""

import streamlit as st

from kvviz.charts import policies as charts
from kvviz.charts.style import measured_on
from kvviz.models import DEFAULT_MODEL, REGISTRY
from kvviz.policies import report
from kvviz.policies.eviction import ALL_POLICY_NAMES
from kvviz.policies.quality import SHIPPED_TEXT_NAME
from kvviz.policies.quantised import QUANT_BACKENDS
from kvviz.ui import policies as sessions
from kvviz.ui.resources import model_or_stop
from kvviz.ui.step_widgets import rerun_fragment, show_figure

BUDGETS = (8, 16, 32, 64, 128, 256, 512)

st.title("Cache policies — evict, quantise, and what it costs")
st.caption(
    "When memory runs out, servers shrink the KV cache: keep only recent tokens, keep a few first tokens too "
    "(StreamingLLM), keep the tokens that drew the most attention (H2O, SnapKV), or store keys and values in fewer "
    "bits. Here each policy reads the same text as the live model, token by token, beside the full cache: "
    f"*{SHIPPED_TEXT_NAME}*. Perplexity scores the text's real next token; top-1 agreement and KL compare each "
    "next-token distribution with the full cache's. Every number is measured on this run."
)

model_key = st.selectbox("Model", list(REGISTRY), index=list(REGISTRY).index(DEFAULT_MODEL), key="policies_model",
                         help="SmolLM2 is the real default model; the tiny models are random and instant.")
loaded = model_or_stop(model_key)
text_config = loaded.model.config.get_text_config(decoder=True)
LAYERS = int(text_config.num_hidden_layers)
KV_HEADS = int(getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads)


def read_settings() -> sessions.LabSettings:
    state = st.session_state
    return sessions.LabSettings(
        model=loaded.key, policies=tuple(state.get("policies_names", ("window", "sinks"))),
        budgets=tuple(sorted(state.get("policies_budgets", (64,)))), sinks=int(state.get("policies_sinks", 4)),
        tokens=int(state.get("policies_tokens", 384)), prompt_tokens=int(state.get("policies_prompt", 16)),
        watch_layer=min(int(state.get("policies_layer", 0)), LAYERS - 1),
        watch_head=min(int(state.get("policies_head", 0)), KV_HEADS - 1),
        backend=str(state.get("policies_backend", "hqq")),
    )


with st.container(border=True):
    left, right = st.columns([3, 2])
    left.multiselect("Policies (the full cache always runs and is shown, as the reference)",
                     [name for name in ALL_POLICY_NAMES if name != "full"], default=["window", "sinks"],
                     key="policies_names")
    right.multiselect("Budgets (tokens kept per layer and KV head)", BUDGETS, default=[64], key="policies_budgets",
                      help="Each evicting policy runs once per budget; the quantised caches hold every token.")
    first, second, third, fourth = st.columns(4)
    first.number_input("Tokens of the text", 32, 4096, 384, step=32, key="policies_tokens",
                       help="The README's benchmark is 2,000 tokens at a budget of 256: every policy took 62 min on "
                            "a busy 2-core CPU; window, sinks and the full cache alone take minutes.")
    second.number_input("Prompt (tokens in the first call)", 1, 4095, 16, key="policies_prompt",
                        help="Fed in one prefill; the rest one token at a time, each followed by eviction.")
    third.number_input("Sink tokens (sinks policy)", 0, 64, 4, key="policies_sinks")
    fourth.selectbox("int4/int2 backend", list(QUANT_BACKENDS), key="policies_backend",
                     help="Optional packages: pip install -r requirements-quant.txt")
    first, second, _ = st.columns([1, 1, 2])
    first.number_input("Watched layer (keep/evict map, quantisation)", 0, LAYERS - 1, 0, key="policies_layer")
    second.number_input("Watched KV head", 0, KV_HEADS - 1, 0, key="policies_head")
    with st.expander("What each policy keeps, and what it costs"):
        for name in ALL_POLICY_NAMES:
            st.markdown(f"**{name}** — {report.describe(name, int(st.session_state.get('policies_sinks', 4)))}")


@st.fragment
def run_area() -> None:
    session = sessions.get_session()
    sessions.tick(session)
    with st.container(horizontal=True, vertical_alignment="center"):
        st.button("Run the comparison", key="policies_run", type="primary", on_click=sessions.on_run,
                  args=(loaded, read_settings))
        st.button("Stop", key="policies_stop", on_click=sessions.on_stop, disabled=not session.running)
    if session.message is not None:
        level, text = session.message
        getattr(st, level)(text)
    run = session.run
    if run is None:
        st.info("Press **Run the comparison**: every chosen policy reads the text beside the full cache.")
        return
    done = max(run.position - run.prompt_tokens + 1, 0)
    scored_all = len(run.ids) - run.prompt_tokens
    st.progress(done / scored_all, text=f"{done:,} of {scored_all:,} next tokens scored · {run.seconds:,.1f} s")
    if session.settings is not None and session.settings != read_settings():
        st.info("The settings changed since this run started: press Run to apply them.")
    result = run.result()
    if result.policies:
        views(session, result)
    if session.running:
        rerun_fragment()


def views(session: sessions.LabSession, result) -> None:
    st.dataframe([report.score_row(score) for score in result.policies], hide_index=True, key="policies_table")
    st.markdown(report.run_sentence(result))
    collapse = report.collapse_sentence(result)
    if collapse:
        st.markdown(collapse)
    st.caption("Perplexity is exp(mean negative log-likelihood) of the text's next tokens, teacher-forced: every "
               "policy reads the same true text, not its own output. KL(full ‖ policy) is in nats per token. Bytes "
               "are those of the live K and V tensors at the end (quantised data, scales and zero points, and the "
               "full-precision residual). ms/token times one decode call, the eviction and any attention scoring "
               "included.")
    show_figure(charts.quality_curve_figure(result), "policies_chart_curve")
    st.caption("Each line is the perplexity of the last tokens read. The full cache's line is what the text costs "
               "the model; a policy's line leaves it once its budget is full and the policy starts choosing. "
               "StreamingLLM found that window attention collapses as soon as the first tokens leave the window, "
               "because many heads park their spare attention on them (attention sinks), and that keeping four of "
               "them restores it.")
    quality = st.segmented_control("Frontier quality axis", ["kl", "perplexity"], default="kl",
                                   key="policies_frontier_axis",
                                   format_func={"kl": "KL to the full cache", "perplexity": "perplexity"}.get)
    show_figure(charts.frontier_figure(result, quality or "kl"), "policies_chart_frontier")
    st.caption("Down and to the left is better: fewer bytes for the same quality. An evicting policy at a budget "
               "holds a fixed number of tokens however long the text; a quantised cache holds every token in fewer "
               "bits, so its bytes keep growing with the text.")
    labels = [score.label for score in result.policies]
    first_evicting = next((i for i, score in enumerate(result.policies) if score.budget_tokens is not None), 0)
    chosen = st.selectbox("Keep/evict map of", labels, index=first_evicting, key="policies_map_of")
    score = next(score for score in result.policies if score.label == chosen)
    if score.watched:
        show_figure(charts.keep_map_figure(result, score), "policies_chart_map")
        st.caption("One row per call (the first is the prefill), one column per position of the text. Window and "
                   "sinks hold the same positions in every head; H2O, SnapKV, knorm and random choose per KV head.")
    if session.kivi is None:
        if st.button("Measure quantisation error on the watched layer", key="policies_kivi"):
            sessions.measure_kivi(session)
            rerun_fragment()
    else:
        note = (f"{measured_on(result.model, result.device, result.dtype)} · the full cache's {session.kivi.tokens:,} "
                "tokens · round-to-nearest min–max in groups of 32 (tokens of a channel, or channels of a token)")
        show_figure(charts.kivi_figure(session.kivi, note), "policies_chart_kivi")
        st.markdown(report.kivi_sentence(session.kivi))
        st.caption("Both groupings use the same quantiser and the same bits (computed here in float32, not a "
                   "backend's kernel). Grouped per token, a key's range must stretch over its largest channels, so "
                   "the rest are rounded coarsely; grouped per channel, each channel gets its own range.")


run_area()
