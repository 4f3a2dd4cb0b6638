"""Memory: how big is the KV cache for any model, context, batch and dtype, and is the formula right?

Widgets and figures only: every size comes from ``kvviz.kv_formula`` (models from ``kvviz.kv_configs``), every
figure from ``kvviz.charts.memory``, and the live check runs in the engine (``kvviz.live_check``) on the shared model.
"""

from __future__ import annotations

from dataclasses import replace

import streamlit as st

from kvviz import explain
from kvviz import kv_configs as configs
from kvviz import kv_formula as mem
from kvviz import live_check
from kvviz.charts import memory as charts
from kvviz.errors import KvvizError
from kvviz.exports.png import chart_config
from kvviz.models import DEFAULT_MODEL, REGISTRY
from kvviz.ui.resources import get_model
from kvviz.ui.session import get_session

FROM_CONFIG = "From a config.json…"
DEFAULT_FOCUS = "Llama-3.1-70B"
DEFAULT_COMPARE = ["Llama-3.1-8B", "Mistral-7B-v0.1", "DeepSeek-V3", "Llama-2-13B"]
LIVE_KEY = "memory_live_check"

st.title("Memory — how big is the KV cache?")
st.caption(
    "Every layer keeps one key and one value vector per KV head for every token: "
    "**2 × layers × KV heads × head dim × bytes per element** per token. "
    "Sizes are in binary units: 1 GiB = 2³⁰ bytes = 1.074 GB; hover any chart for exact bytes."
)

presets = {spec.name: spec for spec in configs.all_presets()}
names = list(presets)

with st.container(border=True):
    left, middle, right, far = st.columns([1.4, 1, 1, 1])
    with left:
        focus_name = st.selectbox("Model", names + [FROM_CONFIG], index=names.index(DEFAULT_FOCUS), key="mem_model")
    with middle:
        context = st.number_input("Context (tokens per sequence)", min_value=1, max_value=mem.MAX_CONTEXT,
                                  value=131_072, step=1024, key="mem_context")
        batch = st.number_input("Batch (sequences at once)", min_value=1, max_value=mem.MAX_BATCH, value=1,
                                key="mem_batch")
    with right:
        weights_key = st.selectbox("Weights dtype", list(mem.WEIGHT_PRECISIONS), index=2, key="mem_weights")
        cache_key = st.selectbox("KV cache dtype", list(mem.CACHE_PRECISIONS), index=2, key="mem_cache")
        group_size = st.number_input("int8/int4 group size (elements per scale + zero-point)", min_value=1,
                                     max_value=4096, value=mem.DEFAULT_CACHE_GROUP, key="mem_group",
                                     disabled=not mem.CACHE_PRECISIONS[cache_key].quantised)
    with far:
        gpu_name = st.selectbox("GPU", [gpu.name for gpu in mem.GPUS.values()], index=4, key="mem_gpu")
        reserve = st.slider("Reserve for activations and CUDA context", 0, 30, 10, format="%d%%",
                            key="mem_reserve") / 100

focus = presets.get(focus_name)
if focus_name == FROM_CONFIG:
    with st.container(border=True):
        st.markdown("**Your model** — paste a `config.json` or give a local model folder; it is read with "
                    "transformers' own config classes (no remote code) and the parameters are counted on the "
                    "meta device.")
        pasted = st.text_area("config.json", height=160, key="mem_config_text",
                              placeholder='{"model_type": "llama", "num_hidden_layers": 32, ...}')
        folder = st.text_input("…or a local folder / config.json path", key="mem_config_path")
        try:
            if pasted.strip():
                focus = configs.spec_from_config_text(pasted)
            elif folder.strip():
                focus = configs.spec_from_config_path(folder)
        except KvvizError as error:
            st.error(str(error))
    if focus is None:
        st.info("Paste a config.json or give a folder to size your model.")
        st.stop()

if not focus.parameters:
    st.warning(f"transformers cannot build {focus.name} as a causal language model, so kvviz could not count its "
               "parameters: the weights below are 0 and the fit covers the KV cache only, unless you give the "
               "count here.")
    given = st.number_input("Parameters (from the model card)", min_value=0, max_value=10**13, value=0, step=10**6,
                            key=f"mem_parameters_{focus.name}")  # a count typed for one model is not reused for the next
    if given:
        focus = replace(focus, parameters=int(given))

try:
    weights = mem.WEIGHT_PRECISIONS[weights_key]
    cache = mem.CACHE_PRECISIONS[cache_key].with_group_size(int(group_size))
    gpu = next(g for g in mem.GPUS.values() if g.name == gpu_name)
    est = mem.estimate(focus, int(context), int(batch), weights, cache)
    fit = mem.fit_on_gpu(est, gpu, reserve)
    alternatives = mem.precision_alternatives(focus, int(context), int(batch), weights, cache, gpu, reserve)
except KvvizError as error:
    st.error(str(error))
    st.stop()

# ----- the answer first -------------------------------------------------------------------------------------------
st.subheader(est.sentence())
st.caption(f"{focus.name}: {focus.attention_kind}; {focus.geometry()}. Source: {focus.source}. {focus.note}")
st.markdown(f"Per token: {mem.formula_text(focus, cache)} = **{est.kv_bytes_per_token:,} bytes**.")
cols = st.columns(5)
cols[0].metric("KV cache per token", mem.format_bytes(est.kv_bytes_per_token),
               help=f"{est.kv_bytes_per_token:,} bytes in {cache.label}")
cols[1].metric("KV cache per sequence", mem.format_bytes(est.kv_bytes_per_sequence),
               help=f"{est.kv_bytes_per_sequence:,} bytes at {est.context:,} tokens")
cols[2].metric(f"KV cache × batch {est.batch:,}", mem.format_bytes(est.kv_bytes_total),
               help=f"{est.kv_bytes_total:,} bytes")
cols[3].metric(f"Weights ({weights.key})", mem.format_bytes(est.weights_bytes),
               help=f"{focus.parameters:,} parameters → {est.weights_bytes:,} bytes")
cols[4].metric(f"Total vs {gpu.name}", mem.format_bytes(est.total_bytes),
               delta=f"{mem.format_bytes(abs(fit.usable_bytes - est.total_bytes))} "
                     f"{'to spare' if fit.fits else 'too much'}",
               delta_color="normal" if fit.fits else "inverse")
(st.success if fit.fits else st.error)(fit.sentence())
if focus.shares_kv:
    st.info(est.sharing_sentence())

left, right = st.columns(2)
left.plotly_chart(charts.gpu_fit_figure(alternatives), config=chart_config("gpu-fit"))
right.plotly_chart(charts.max_batch_figure(alternatives), config=chart_config("max-batch"))

# ----- across models ----------------------------------------------------------------------------------------------
st.subheader("Across models")
left, right = st.columns([4, 1])
compare_names = left.multiselect(f"Compare {focus.name} with", names, default=DEFAULT_COMPARE, key="mem_compare")
log_y = right.toggle("Log scale for sizes", value=True, key="mem_log")
compared = [focus] + [presets[name] for name in compare_names if presets[name] != focus]
left, right = st.columns(2)
left.plotly_chart(charts.cache_vs_context_figure(compared, cache, int(context), int(batch), log_y=log_y),
                  config=chart_config("cache-vs-context"))
right.plotly_chart(
    charts.sharing_figure([mem.estimate(spec, int(context), 1, weights, cache) for spec in compared], log_y=log_y),
    config=chart_config("weights-and-cache"),
)

with st.expander("How these numbers are computed"):
    st.markdown(
        f"""
- **Full attention**: per token and layer, a key and a value of `head_dim` for each of the `kv_heads`:
  2 × kv_heads × head_dim elements. Grouped-query attention (GQA) lets several query heads share one KV head,
  multi-query attention (MQA) has a single KV head: the cache shrinks by query heads ÷ KV heads.
  Ignoring GQA (using the query-head count) is the commonest calculator bug: 8× too big for Llama-3.1-70B.
- **Sliding window** layers keep only the last `window` tokens, so they stop growing (Mistral-7B-v0.1: 4,096).
  Hybrid models are counted layer by layer: Gemma-3 has five sliding layers for each full one.
- **Multi-head latent attention** (DeepSeek-V3) caches one compressed latent (`kv_lora_rank` = 512) plus one
  shared RoPE key (`qk_rope_head_dim` = 64) per token and layer — not ×2, and not per head. transformers caches
  exactly these two tensors.
- **Quantised caches**: fp8 is one byte per element (its per-tensor scale is negligible); int8 and int4 also store
  one fp16 scale and one fp16 zero-point per group of {mem.DEFAULT_CACHE_GROUP} elements by default (the layout of
  transformers' QuantizedCache), so int4 costs 4.5 bits per element, not 4. That cache also keeps the newest
  `residual_length` tokens (128 by default) unquantised, a fixed extra the formula leaves out: for Llama-3.1-70B
  in bf16 that is 40 MiB per sequence. int4/int8 *weights* use groups of
  {mem.WEIGHT_GROUP}.
- **Weights** = parameters × bytes per parameter. **Fits** compare weights + cache with the memory the GPU's driver
  reports (`nvidia-smi`'s total: an "H100 80 GB" has 79.6 GiB, a "B200 192 GB" 179.1 GiB) less the reserve; activations, the CUDA context and fragmentation are
  what the reserve is for.
- Every preset's numbers come from the model's public `config.json` on Hugging Face, read by transformers'
  config classes and the same geometry reader kvviz uses for the models it runs.
"""
    )
    st.dataframe(
        [{"preset": s.key, "model": s.name, "attention": s.attention_kind, "layers": s.layers,
          "query heads": s.query_heads, "KV heads": s.kv_heads, "head dim": s.head_dim,
          "parameters": f"{s.parameters:,}", "max context": f"{s.max_context:,}",
          "KV per token (bf16)": mem.format_bytes(mem.kv_bytes_per_token(s)), "source": s.source}
         for s in presets.values()],
        hide_index=True,
    )

with st.expander("What each cache design gives up"):
    st.markdown(explain.text("cache_designs"))

# ----- the formula against a live cache ---------------------------------------------------------------------------
st.header("Is the formula right? Ask a running model")
st.caption("The same formula, applied to a model kvviz actually runs, next to the bytes of the key and value "
           "tensors its cache holds right now.")


def show_check(check: live_check.LiveCheck, key: str) -> None:
    """One live check: the sum in words, formula and live bytes side by side, per-layer chart, allocator."""
    st.markdown(f"From {check.how}. Formula: {check.formula} = **{check.formula_bytes:,} bytes**.")
    a, b, c = st.columns(3)
    a.metric("Formula", f"{check.formula_bytes:,} bytes", help=mem.format_bytes(check.formula_bytes))
    b.metric("Live cache (sum of K/V nbytes)", f"{check.live_bytes:,} bytes",
             help=mem.format_bytes(check.live_bytes))
    c.metric("Difference", f"{check.live_bytes - check.formula_bytes:,} bytes",
             delta="exactly equal" if check.matches else "mismatch",
             delta_color="normal" if check.matches else "inverse", delta_arrow="off")
    (st.success if check.matches else st.error)(check.sentence())
    st.plotly_chart(charts.live_check_figure(check), key=f"mem_live_chart_{key}",
        config=chart_config(f"live-check-{key}"))
    if check.allocator_growth is None:
        st.info(check.allocator_note)
    else:
        st.metric("CUDA allocator growth while generating", f"{check.allocator_growth:,} bytes",
                  delta=f"{check.allocator_error:+.2%} vs the formula", delta_color="off")
        st.caption(check.allocator_note)


with st.form("memory_live"):
    a, b, c = st.columns([1.4, 1, 1])
    keys = list(REGISTRY)
    live_model = a.selectbox("Model to run", keys, index=keys.index(DEFAULT_MODEL), key="mem_live_model",
                             format_func=lambda key: f"{key} — {REGISTRY[key].description}")
    prompt_tokens = b.number_input("Prompt tokens", min_value=1, max_value=2048, value=128, key="mem_live_prompt")
    new_tokens = c.number_input("New tokens", min_value=1, max_value=256, value=16, key="mem_live_new")
    run = st.form_submit_button("Run a prefill and steps, then compare", type="primary", key="mem_live_run")
if run:
    try:
        loaded = get_model(live_model)
        with st.spinner(f"Running {loaded.card.name} on {loaded.device}…"):
            st.session_state[LIVE_KEY] = live_check.measure_live_cache(loaded, int(prompt_tokens), int(new_tokens))
    except KvvizError as error:
        st.error(str(error))

fresh: live_check.LiveCheck | None = st.session_state.get(LIVE_KEY)
if fresh is not None:
    show_check(fresh, "fresh")

# This session's own trace, read again on every run so that stepping on the home page shows up here.
session = get_session()
if session.stepper is not None and session.trace is not None and session.trace.records:
    st.subheader("Your trace from the Step through page")
    try:
        show_check(live_check.check_record(session.stepper.loaded, session.trace.records[-1],
                                    how="your trace on the Step through page"), "trace")
    except KvvizError as error:
        st.error(str(error))
elif fresh is None:
    st.info("Press the button to run the model (SmolLM2-135M loads in a few seconds), or step a prompt on the "
            "Step through page: its cache shows up here too.")
