"""Speed: what the KV cache buys in time, where the naive recompute loses, how close to the hardware limit we are."""

import streamlit as st

from kvviz import llamacpp_engine, report
from kvviz.bench_results import PATH_LABELS, PATHS, BenchConfig
from kvviz.charts import speed as charts
from kvviz.errors import KvvizError
from kvviz.exports.png import chart_config
from kvviz.models import ARCHITECTURE_ONLY, ARCHITECTURE_ONLY_NOTE, DEFAULT_MODEL, REGISTRY
from kvviz.ui.resources import get_model
from kvviz.ui.speed import (
    famous_run_config, last_result, last_status, load_result, load_shipped_cpu_result, load_shipped_gpu_result,
    mark_stopped, run_with_progress,
)

st.title("Speed — what does the KV cache buy?")
st.caption(
    "Times the same greedy tokens through several decode loops on this machine: recompute everything (naive), "
    "the transformers cache, kvviz's own instrumented cache, a preallocated static cache, CUDA graphs (GPU only), "
    "`generate()`, and llama.cpp on the default model's own GGUF file. The answer depends on the model and the "
    "hardware; here you measure yours."
)

with st.container(border=True):
    left, middle, right = st.columns(3)
    model_key = left.selectbox("Model", list(REGISTRY), index=list(REGISTRY).index(DEFAULT_MODEL), key="speed_model",
                               help="The tiny models are random and instant; SmolLM2 is the real default model; "
                                    "gpt2-medium is GPT-2 medium's architecture with random weights.")
    tokens = middle.slider("New tokens per run", 4, 1024, 64, step=4, key="speed_tokens",
                           help="One prefill, then tokens − 1 decode steps. The naive path's time grows as tokens².")
    prompt_tokens = right.slider("Prompt tokens", 1, 512, 32, key="speed_prompt_tokens")
    paths = st.multiselect("Paths", list(PATHS), default=list(PATHS), key="speed_paths",
                           format_func=lambda name: PATH_LABELS[name])
    if model_key in ARCHITECTURE_ONLY:
        st.caption(f"**{model_key}: architecture only.** {ARCHITECTURE_ONLY_NOTE} Time naive and kvviz over a few "
                   "hundred tokens (a short prompt leaves room for 1,000) to set this machine beside the famous "
                   "\"107 s without the cache, 21.7 s with it\".")
    if "llamacpp" in paths and not llamacpp_engine.installed():
        st.caption(f"The llamacpp path needs llama-cpp-python, which is not installed here: "
                   f"{llamacpp_engine.INSTALL_HINT}.")
    left, middle, right = st.columns(3)
    repeats = left.slider("Timed runs (cached paths)", 1, 5, 3, key="speed_repeats")
    naive_repeats = middle.slider("Timed runs (naive)", 1, 3, 1, key="speed_naive_repeats",
                                  help="Naive is O(tokens²); its growth dwarfs run-to-run noise.")
    right.write("")
    run_column, stop_column, _ = st.columns([1, 1, 4])
    run_clicked = run_column.button("Run benchmark", type="primary", key="speed_run", width="stretch")
    stop_clicked = stop_column.button("Stop", key="speed_stop", width="stretch")

with st.expander("Load a saved result (JSON from `python -m kvviz bench --json FILE`, e.g. measured on a GPU)"):
    upload = st.file_uploader("Result file", type=["json"], key="speed_upload", label_visibility="collapsed")
    if upload is not None and st.button("Show this result", key="speed_show_upload"):
        try:
            load_result(upload.getvalue())
        except KvvizError as error:
            st.error(str(error))
    gpu_column, llamacpp_column, gpt2_column = st.columns(3)
    if gpu_column.button("Show the H200 result shipped with kvviz", key="speed_show_gpu",
                         help="SmolLM2-135M in bfloat16 on one NVIDIA H200, 1,000 tokens on every path "
                              "(scripts/gpu_ladder.sh)."):
        load_shipped_gpu_result()
    if llamacpp_column.button("Show the 2-core CPU ladder with llama.cpp", key="speed_show_llamacpp",
                              help="SmolLM2-135M on a 2-core CPU: kvviz, dynamic and llamacpp, 256 tokens (README)."):
        load_shipped_cpu_result("llamacpp")
    if gpt2_column.button("Show GPT-2 medium on a 2-core CPU", key="speed_show_gpt2",
                          help="Architecture-only GPT-2 medium, naive and kvviz, with the fits' prediction for "
                               "1,000 tokens (README)."):
        load_shipped_cpu_result("gpt2-medium")

if run_clicked:
    config = BenchConfig(tokens=tokens, prompt_tokens=prompt_tokens, paths=tuple(paths), repeats=repeats,
                         naive_repeats=naive_repeats)
    try:
        loaded = get_model(model_key)
        run_with_progress(loaded, config)
    except KvvizError as error:
        st.error(str(error))
else:
    mark_stopped()

result = last_result()
status = last_status()
if status == "stopped":
    st.warning("Stopped. " + ("Showing the runs that finished before the stop." if result is not None else
                              "No timed run had finished yet."))
if result is None:
    st.info("Choose a model and press **Run benchmark**. With SmolLM2 on a 2-core CPU, 64 tokens on every path "
            "take about a minute; the tiny models take seconds.")
    st.stop()

st.markdown(f"**Measured on** {result.environment.describe()} · torch threads: {result.environment.threads} · "
            f"prompt {result.config.prompt_tokens} tokens · {result.config.tokens} new tokens · "
            f"{result.wall_seconds:.0f} s in all")
for warning in report.warnings(result):
    st.warning(warning)
for path in result.paths:
    if path.status in ("skipped", "failed"):
        st.info(report.path_status_sentence(path))

measured = [p for p in result.measured if p.ms_per_token is not None]
if measured:
    for column, path in zip(st.columns(len(measured)), measured):
        speedup = result.speedup_vs_naive(path.path) if path.path != "naive" else None
        column.metric(f"{path.path} · ms/token", f"{path.ms_per_token.median:.1f}",
                      f"{speedup:.1f}× end to end" if speedup is not None else None, delta_color="off",
                      help=f"{PATH_LABELS[path.path]}. The figure under it is how many times longer naive took, end "
                           "to end: naive's total time for the run (prefill and every step) over this path's.")

tabs = st.tabs(["Per token", "By position", "Cumulative", "Speedup", "Roofline", "Bandwidth"])
with tabs[0]:
    st.plotly_chart(charts.per_token_figure(result), key="speed_chart_per_token",
        config=chart_config("speed_chart_per_token"))
with tabs[1]:
    log_y = st.toggle("Logarithmic time axis", value=True, key="speed_log_y")
    st.plotly_chart(charts.latency_figure(result, log_y=log_y), key="speed_chart_latency",
        config=chart_config("speed_chart_latency"))
with tabs[2]:
    st.plotly_chart(charts.cumulative_figure(result), key="speed_chart_cumulative",
        config=chart_config("speed_chart_cumulative"))
    growth = report.naive_growth_sentence(result)
    if growth is not None:
        st.markdown(growth)
with tabs[3]:
    st.plotly_chart(charts.speedup_figure(result), key="speed_chart_speedup",
        config=chart_config("speed_chart_speedup"))
    for sentence in report.crossover_sentences(result):
        st.markdown(sentence + ".")
with tabs[4]:
    st.plotly_chart(charts.roofline_figure(result), key="speed_chart_roofline",
        config=chart_config("speed_chart_roofline"))
    st.caption(report.peak_sentence(result))
with tabs[5]:
    st.plotly_chart(charts.bandwidth_figure(result), key="speed_chart_bandwidth",
        config=chart_config("speed_chart_bandwidth"))
    st.caption("; ".join(report.bandwidth_sentences(result)))

st.dataframe(charts.summary_rows(result), hide_index=True, key="speed_table")

engine_lines = report.engine_sentences(result)
if engine_lines:
    st.subheader("llama.cpp beside PyTorch: where the gap comes from")
    for sentence in engine_lines + report.engine_gap_sentences(result):
        st.markdown(sentence)

famous_rows = report.famous_figure_rows(result)
if famous_rows:
    st.subheader("The famous figure: GPT-2 medium, 1,000 tokens, beside this measurement")
    st.dataframe(famous_rows, hide_index=True, key="speed_famous_table")
    for sentence in report.famous_figure_sentences(result):
        st.markdown(sentence)
    if st.button(report.famous_run_label(result), key="speed_run_famous"):
        try:
            loaded = get_model(result.environment.model)
            run_with_progress(loaded, famous_run_config(result, loaded))
            st.rerun()
        except KvvizError as error:
            st.error(str(error))
st.download_button("Download the result (JSON)", result.to_json(), file_name="kvviz-bench.json",
                   mime="application/json", key="speed_download")

with st.expander("How is this measured?"):
    st.markdown(
        """
- **A run** is one prefill of the prompt and then one decode step per new token. Each path first does a short
  untimed warm-up (its first step appears apart in the table: the path's first call in this process; only
  the first path measured also pays the process's first-use costs), then the timed runs, interleaved path by path so that a machine
  getting busier slows every path alike. Lines are medians across runs; bands show min–max.
- **Each step** is timed from feeding its input to holding the chosen token id on the host, with the device
  synchronised before and after (on a GPU, kernel launches return before the work is done).
- **Paths**: *naive* feeds the whole sequence every step; *dynamic* is a plain loop over transformers'
  `DynamicCache`; *kvviz* is this app's own stepper with attention capture off (its gap to *dynamic* is the
  app's bookkeeping); *static* writes into a preallocated `StaticCache`; *graphs* replays that static step as
  one CUDA graph (GPU only); *generate* is transformers' `generate()`, which only reports its total. The loaded
  model's attention is kvviz's recorder-aware function, which always computes with transformers' own SDPA call
  (a recorder, when there is one, only keeps references; nothing records here), so *dynamic*, *static* and
  *generate* run the library's own maths.
- *llamacpp* runs llama.cpp (`llama-cpp-python`) on the default model's GGUF file, on the CPU, fed the same
  prompt token ids and choosing the argmax of its logits like every other path, timed by the same loop; its own
  counters are shown beside the wall clock. It reads the Q4_1 weights as stored, where the PyTorch paths read
  them dequantised, and keeps its own f16 cache, whose size is checked against kvviz's formula.
- **Same tokens**: every path's greedy tokens are compared with the reference; a difference is shown, never hidden.
  llama.cpp is also fed the reference's tokens one by one (untimed), which shows whether a difference is one
  near-tie or a different model.
- **Roofline**: FLOPs and bytes per step are estimates (weights + K/V read and written; activations left out).
  The peaks come from a table of known GPUs, or are measured here (a large memory copy, a large matmul).
- Other sessions using this server's model at the same time slow the measurement down; on a shared machine,
  run the CLI on a quiet one: `python -m kvviz bench --model smollm2-135m --tokens 256 --json out.json`.
"""
    )
