"""Step through (home): feed a prompt to a real model, then add one token at a time and watch its KV cache.

Layout only. The sidebar picks the model and the prompt; the stepping area is a fragment, so Prefill, Next token,
Play, Stop and Reset re-run that area and not the sidebar or the model loading; the one-layer attention chart is a
fragment of its own, so choosing a layer redraws only that chart. The panels below the token stream are tabs of
which only the open one is drawn. The engine steps the model (through
``kvviz.ui.session``), the figures come from ``kvviz.charts.step``; nothing here computes on tensors. The URL
carries the page's state (``kvviz.ui.share_links``): a link opens the same tokens, and ``present=1`` opens it in
presenter mode (``kvviz.ui.presenter``).
"""

from __future__ import annotations

import streamlit as st

from kvviz.charts import step as charts
from kvviz.errors import KvvizError
from kvviz.explain import explanation
from kvviz.models import REGISTRY, LoadedModel
from kvviz.records import Trace
from kvviz.share import (
    MAX_NEW_TOKENS_MAX,
    SEED_MAX,
    TEMPERATURE_MAX,
    TEMPERATURE_MIN,
    TEMPERATURE_STEP,
    TOP_K_MAX,
    LinkState,
)
from kvviz.share import PANELS as SHARE_PANELS
from kvviz.stepper import DEFAULT_PROMPT, Sampling
from kvviz.trace_analysis import timing_summary
from kvviz.ui import exports, presenter, share_links
from kvviz.ui import session as sessions
from kvviz.ui import step_widgets as widgets
from kvviz.ui import surgery
from kvviz.ui.resources import get_model

OTHER_MODEL = "other"
# The sidebar's defaults, shared by its widgets and by read_settings().
DEFAULTS = dict(prompt=DEFAULT_PROMPT, chat_template=True, sample=False, temperature=0.8, top_k=50, seed=0,
                max_new_tokens=64, compare=True)


def read_settings(loaded: LoadedModel | None) -> dict:
    """The sidebar's current choices, read from session state.

    Prefill's callback calls this when the click arrives rather than keeping the values of the last full run: a
    prompt typed just before pressing Prefill is then the prompt that gets fed.
    """
    def value(key: str):
        return st.session_state.get(key, DEFAULTS[key])

    sampling = Sampling()
    if value("sample"):
        sampling = Sampling(temperature=float(value("temperature")), top_k=int(value("top_k")), seed=int(value("seed")))
    has_template = loaded is not None and loaded.chat_template_available
    return dict(prompt=value("prompt"), chat_template=bool(value("chat_template") and has_template),
                compare=bool(value("compare")), sampling=sampling, max_new_tokens=int(value("max_new_tokens")))


# A link's settings go into the sidebar's widgets before they are drawn; an unknown model keeps the current one.
share_links.open_link(LinkState(
    model=st.session_state.get("model_choice", "") if st.session_state.get("model_choice") in REGISTRY
    else next(iter(REGISTRY)),
    prompt=DEFAULTS["prompt"], chat=DEFAULTS["chat_template"], compare=DEFAULTS["compare"]),
    DEFAULTS["max_new_tokens"])

st.title("Step through the KV cache")
st.caption(
    "A real language model runs here, on this server. **Prefill** feeds your prompt and stores every layer's keys "
    "and values in the cache; each **Next token** feeds only the newest token, computes its keys and values once, "
    "and reads all the earlier ones back from the cache instead of recomputing them."
)

# ----- sidebar: model, prompt, sampling -----------------------------------------------------------------------------
with st.sidebar:
    st.header("Model")
    choice = st.selectbox(
        "Model", [*REGISTRY, OTHER_MODEL], key="model_choice",
        format_func=lambda key: key if key in REGISTRY else "a Hugging Face id or local folder…",
        help="smollm2-135m has real weights and runs offline; the tiny models are random and instant.",
    )
    model_name = choice
    if choice == OTHER_MODEL:
        model_name = st.text_input("Hugging Face id or local folder", key="model_other",
                                   placeholder="HuggingFaceTB/SmolLM2-360M-Instruct or /path/to/model").strip()
    else:
        st.caption(REGISTRY[choice].description)

    loaded: LoadedModel | None = None
    failed: dict[str, str] = st.session_state.setdefault("kvviz_failed_loads", {})
    if not model_name:
        st.warning("Type a Hugging Face id (org/name) or the path of a local model folder.")
    elif model_name in failed:
        st.error(failed[model_name])
        if st.button("Try loading it again", key="retry_load"):
            failed.pop(model_name, None)
            st.rerun()
    else:
        try:
            loaded = get_model(model_name)
        except KvvizError as error:
            failed[model_name] = str(error)
            st.error(str(error))
        except Exception as error:  # noqa: BLE001 - an arbitrary model can fail in any way; the page must survive
            failed[model_name] = f"Could not load '{model_name}' ({type(error).__name__}: {error})."
            st.error(failed[model_name])
    if loaded is not None:
        st.markdown(widgets.model_card_markdown(loaded))

    st.header("Prompt")
    st.text_area("Prompt", value=DEFAULTS["prompt"], key="prompt", height=100)
    has_template = loaded is not None and loaded.chat_template_available
    st.toggle(
        "Wrap in the chat template", value=DEFAULTS["chat_template"], key="chat_template", disabled=not has_template,
        help="Instruct models answer best inside their chat template (system, user and assistant turns)."
        if has_template else "This model has no chat template: the prompt is fed as it is.",
    )

    if loaded is not None:
        current = read_settings(loaded)
        st.caption(widgets.prompt_caption(loaded, current["prompt"], current["chat_template"]))

    st.header("Sampling")
    if st.toggle("Sample instead of greedy", value=DEFAULTS["sample"], key="sample",
                 help="Greedy always takes the most likely token, so every run is the same."):
        st.slider("Temperature", TEMPERATURE_MIN, TEMPERATURE_MAX, DEFAULTS["temperature"], TEMPERATURE_STEP,
                  key="temperature")
        st.number_input("Top-k (0 = off)", 0, TOP_K_MAX, DEFAULTS["top_k"], key="top_k")
        st.number_input("Seed", 0, SEED_MAX, DEFAULTS["seed"], key="seed")

    st.header("Run")
    st.number_input("Max new tokens", 1, MAX_NEW_TOKENS_MAX, DEFAULTS["max_new_tokens"], key="max_new_tokens",
                    help="The prefill chooses the first new token, each step one more.")
    st.toggle("Compare with naive recompute", value=DEFAULTS["compare"], key="compare",
              help="Also run the model without a cache over the whole sequence, every step, and compare.")

    st.header("View")
    st.toggle("Presenter mode", value=False, key=presenter.KEY,
              help="Large type, high-contrast colours and keyboard shortcuts for the step buttons: "
                   + presenter.shortcut_help() + ". A link with present=1 opens in it, with the sidebar closed.")

    st.header("Trace file")
    exports.import_controls(loaded, lambda: read_settings(loaded))

presenter.apply_style()

settings = read_settings(loaded)
session = sessions.get_session()
if loaded is not None and session.started and session.model_key != loaded.key:
    session.clear()
    session.message = ("info", f"Switched to {loaded.card.name}: press Prefill to start with it.")
if loaded is not None:
    share_links.replay_link(loaded, lambda: read_settings(loaded))
sessions.apply_max_new_tokens(session, settings["max_new_tokens"])


PANELS = list(SHARE_PANELS.values())  # the tab labels; a share link names them by their keys


def cache_panel(trace: Trace) -> None:
    record = trace.records[-1]
    geometry = charts.cache_geometry(record)
    if geometry is not None:
        first_layer = record.cache_layers[0]
        st.markdown(
            f"Every layer holds **K** and **V**, each of shape **{charts.shape_text(first_layer.shape)}** "
            f"({first_layer.dtype}): {charts.format_bytes(first_layer.bytes)} per layer, "
            f"**{charts.format_bytes(record.cache_bytes)}** in all. "
            f"Per token: {geometry.formula_text()}."
        )
    st.caption(
        "Each row is one layer; each column is one position, coloured by the length of its key or value vector. "
        "One column is added per step (framed) and nothing already cached changes: that is the whole trick."
    )
    widgets.show_figure(charts.kv_strips_figure(trace), "kv_strips")
    left, right = st.columns([3, 2], gap="medium")
    with left:
        widgets.show_figure(charts.cache_bytes_figure(trace), "cache_bytes")
        st.caption("Memory grows by the same amount with every token: the measured bytes sit on the formula's line.")
    with right, st.expander("Per-layer cache tensors", expanded=True):
        st.dataframe(widgets.layer_table(record), hide_index=True, height=300)


def attention_panel(trace: Trace) -> None:
    st.caption(
        "The newest query (the last token fed) weighs every cached key; the weights in a row sum to 1. This read "
        "of the whole cache is the part of a step that still grows with the context."
    )
    if not widgets.attention_layers(trace.records[-1]):
        stopped_at = sessions.get_session().capture_stopped_at()
        if stopped_at:
            st.info(f"Attention capture stopped at {stopped_at:,} tokens: this tab then held "
                    f"{charts.format_bytes(trace.attention_bytes())} of attention rows, its limit of "
                    f"{sessions.ATTENTION_BUDGET_TEXT}. The cache and the timings go on; Reset to start a new trace "
                    "with attention.")
        else:
            st.info("This trace was recorded without attention weights.")
        return
    left, right = st.columns([3, 2], gap="medium")
    with left:
        attention_layer_panel()
    with right:
        widgets.show_figure(charts.attention_layers_figure(trace), "attention_layers")


def cost_panel(trace: Trace) -> None:
    st.caption(
        f"Wall-clock milliseconds on {trace.device} in {trace.dtype}, device-synchronised, one model call per step. "
        "**Cached**: the call feeds the newest token and reads every cached key and value. **Naive**: the call "
        "feeds the whole sequence with no cache, so it recomputes every token's keys, values and activations; it "
        "reads nothing back. Both calls run the same attention code (PyTorch's scaled-dot-product attention) and "
        "include choosing the token. Recording the attention weights and K/V rows for these charts happens after "
        "the cached call and is timed apart (dotted line); drawing is in neither. The two paths take turns running "
        "first, because a browser drawing the last token on the same CPU slows whichever runs first; the Speed "
        "page measures without that noise."
    )
    timing = timing_summary(trace)
    if timing is not None:
        with st.container(horizontal=True):
            naive_ttft = f" · naive {timing.prefill_naive_ms:,.0f} ms" if timing.prefill_naive_ms is not None else ""
            st.metric("Time to first token (prefill)", f"{timing.prefill_ms:,.0f} ms", border=True,
                      help=f"The prefill processes all {trace.prompt_tokens} prompt tokens in one call{naive_ttft}.")
            st.metric("Decode time, cached", f"{timing.cached_decode_ms / 1000:,.2f} s", border=True,
                      help=f"{timing.decode_steps} steps after the first token; the recording for the charts is "
                           "not included")
            if timing.naive_decode_ms is not None:
                speedup = f"{timing.speedup:,.1f}× the cached time" if timing.speedup else None
                st.metric("Decode time, naive", f"{timing.naive_decode_ms / 1000:,.2f} s", delta=speedup,
                          delta_color="off", delta_arrow="off", border=True,
                          help="The same decode steps without a cache: total over all steps so far, prefill "
                               "excluded, divided by the cached total.")
            if timing.capture_ms is not None:
                st.metric("Recording for the charts", f"{timing.capture_ms / 1000:,.2f} s", border=True,
                          help="Attention weights (computed in float32 after each cached call) and K/V rows copied "
                               "to the CPU; timed apart and not counted in either path.")
        if timing.decode_steps and trace.prompt_tokens > 1:
            st.caption(f"The prefill pushed {trace.prompt_tokens} tokens through the model in {timing.prefill_ms:,.0f} "
                       f"ms, {timing.prefill_ms_per_token:,.1f} ms per token; the latest decode step "
                       f"took {timing.latest_ms:,.1f} ms for one token. A prefill uses each weight it reads for "
                       "every prompt token (compute-bound); a decode step reads every weight and the whole cache for "
                       "one token (memory-bound).")
        if timing.latest_ratio is not None:
            st.caption(f"At the latest step ({timing.latest_context:,} tokens in the context) the naive call took "
                       f"{timing.latest_ratio:,.1f}× as long as the cached one. On the cached path the projections "
                       "and the MLP cost the same every step, while attention's arithmetic and the K/V bytes it "
                       "reads grow with the context; the naive path redoes all of it for every token, every step.")
    stopped_at = sessions.get_session().capture_stopped_at()
    if stopped_at:
        st.caption(f"Attention capture stopped at {stopped_at:,} tokens (its memory limit): the dotted recording line "
                   "ends there. The cached line does not change, because it never included the recording.")
    widgets.show_figure(charts.work_figure(trace), "work")
    left, right = st.columns(2, gap="medium")
    with left:
        widgets.show_figure(charts.latency_figure(trace), "latency")
    with right:
        widgets.show_figure(charts.cumulative_figure(trace), "cumulative")


@st.fragment
def attention_layer_panel() -> None:
    """One layer's attention in detail; its own fragment, so moving the layer slider redraws only this chart."""
    trace = sessions.get_session().trace
    if trace is None:
        return
    layers = widgets.attention_layers(trace.records[-1])
    # Keyed by the layer count so that switching to a model with fewer layers starts a fresh slider.
    if layers > 1:
        layer = st.slider("Layer", 0, layers - 1, layers // 2, key=share_links.layer_key(layers))
    else:  # a slider needs two ends: a one-layer model has nothing to choose
        layer = 0
        st.caption("Layer 0, the model's only layer.")
    widgets.show_figure(charts.attention_layer_figure(trace, layer), "attention_layer")
    share_links.sync_url(share_links.current_state(read_settings(None)))  # the chosen layer, into the address bar
    caption = widgets.grouped_query_caption(trace.records[-1])
    if caption:
        st.caption(caption)


@st.fragment
def stepping_area(loaded: LoadedModel, settings: dict) -> None:
    """Controls and every panel that changes with a step."""
    session = sessions.get_session()
    sessions.play_tick(session)

    with st.container(horizontal=True, vertical_alignment="center"):
        st.button("Prefill", key="prefill", type="primary", on_click=sessions.on_prefill,
                  args=(loaded, lambda: read_settings(loaded)), shortcut=presenter.shortcut("prefill"),
                  help="Feed the whole prompt at once; this fills the cache and chooses the first new token.")
        st.button("Next token", key="next", on_click=sessions.on_next, shortcut=presenter.shortcut("next"),
                  help="Feed the newest token: one position is added to every layer's cache.")
        st.button("Play", key="play", on_click=sessions.on_play, shortcut=presenter.shortcut("play"),
                  args=(lambda: int(st.session_state.get("play_tokens", 16)),),
                  help="Generate the number of tokens set beside it, redrawing the page after each one.")
        st.number_input("Tokens to play", 1, 4096, 16, key="play_tokens", width=120, label_visibility="collapsed")
        st.markdown("tokens")
        st.button("Stop", key="stop", on_click=sessions.on_stop, disabled=session.play_remaining <= 0,
                  shortcut=presenter.shortcut("stop"))
        st.button("Reset", key="reset", on_click=sessions.on_reset, help="Empty the cache and forget the tokens.",
                  shortcut=presenter.shortcut("reset"))
        link = share_links.current_state(settings)
        share_links.sync_url(link)
        share_links.show_link(link)
        exports.export_controls(session)

    widgets.show_message(session)
    if sessions.settings_changed(session, loaded, **settings):
        st.info("The sidebar settings changed since the last Prefill: press Prefill to apply them.")
    trace = session.trace
    if trace is None:
        st.info("Press **Prefill** to feed the prompt to the model. Its keys and values then appear below.")
        return
    record = trace.records[-1]

    # ----- token stream ---------------------------------------------------------------------------------------------
    st.subheader("Token stream")
    with st.container(horizontal=True, vertical_alignment="center"):
        step_name = "prefill" if record.kind == "prefill" else f"step {record.index}"
        naive = f" · naive {record.ms_naive:,.1f} ms" if record.ms_naive is not None else ""
        st.markdown(f"**{step_name}** · {record.cache_len} tokens in the cache · cached {record.ms:,.1f} ms{naive}")
        widgets.show_match_badge(record)
        if session.play_remaining > 0:
            st.badge(f"playing: {session.play_remaining} to go", icon=":material/play_arrow:", color="blue")
    st.caption(
        "Blue chips are the prompt, orange ones were generated; hover a chip for its position and token id. The "
        "framed chips were appended to the cache by the latest call; the yellow one was just chosen and enters the "
        "cache when the next step feeds it."
    )
    left, right = st.columns([3, 2], gap="medium")
    with left:
        st.html(widgets.token_chips_html(trace))
    with right:
        widgets.show_figure(charts.candidates_figure(trace), "candidates")

    # Only the open tab is drawn: redrawing a Plotly chart after every token costs the browser 50-250 ms on a small
    # CPU, so three charts at a time instead of eight keep a step close to the model's own time.
    cache_tab, attention_tab, cost_tab, surgery_tab = st.tabs(PANELS, key="panel", on_change="rerun")
    if cache_tab.open:
        with cache_tab:
            cache_panel(trace)
    if attention_tab.open:
        with attention_tab:
            attention_panel(trace)
    if cost_tab.open:
        with cost_tab:
            cost_panel(trace)
    if surgery_tab.open:
        with surgery_tab:
            surgery.surgery_panel(session)

    if session.play_remaining > 0:
        widgets.rerun_fragment()


if loaded is None:
    st.info("Choose a model that loads (the default, smollm2-135m, works offline) to start stepping.")
else:
    stepping_area(loaded, settings)

with st.expander("What is cached, what is not, and what it costs"):
    if loaded is None:
        st.markdown("Load a model to see these explanations with its own numbers.")
    else:
        st.markdown(explanation("what_is_cached", loaded))
