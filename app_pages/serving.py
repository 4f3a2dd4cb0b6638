"""Serving: many requests on one model, their K/V in one pool of fixed-size blocks, scheduled step by step.

Layout only. The scenario controls sit at the top; the stepping area (Start, Step, Play, Stop, Run to end and every
view of the run) is a fragment, so a click re-runs that area and not the model loading. Only the open tab is drawn.
"""

import streamlit as st

from kvviz.charts import serving as charts
from kvviz.errors import KvvizError
from kvviz.models import DEFAULT_MODEL, REGISTRY
from kvviz.serving import report
from kvviz.kv_formula import GPUS
from kvviz.serving.metrics import EXAMPLES, example_metrics, fetch_metrics, live_metrics, metrics_row, parse_metrics
from kvviz.serving.prompt_design import run_prompt_design
from kvviz.serving.pressure import project_on_gpu, projectable_presets, run_pressure, trace_concurrency
from kvviz.serving.workload import library_prompt
from kvviz.ui import serving as sessions
from kvviz.ui.resources import model_or_stop
from kvviz.ui.step_widgets import rerun_fragment, show_figure

st.title("Serving — many requests, one paged KV cache")
st.caption(
    "A server answers many requests at once on one copy of the model. Here the live model does that with "
    "transformers' own serving code: each request's keys and values live in fixed-size **blocks** of one shared "
    "pool (paged attention), requests join and leave the running batch between steps (continuous batching), and "
    "full blocks whose tokens another request already computed are reused (prefix caching). Every block, byte and "
    "millisecond below is read from that run."
)

model_key = st.selectbox("Model", list(REGISTRY), index=list(REGISTRY).index(DEFAULT_MODEL), key="serving_model",
                         help="SmolLM2 is the real default model; the tiny models are random and instant.")
loaded = model_or_stop(model_key)

TABS = ["Blocks and batching", "Prefix caching", "Prompt design", "Memory pressure", "Production metrics"]
blocks_tab, prefix_tab, design_tab, pressure_tab, metrics_tab = st.tabs(TABS, key="serving_tab", on_change="rerun")


def read_settings() -> sessions.ScenarioSettings:
    state = st.session_state
    return sessions.ScenarioSettings(
        model=loaded.key, requests=int(state.get("serving_requests", 6)),
        new_tokens=int(state.get("serving_new_tokens", 16)), block_size=int(state.get("serving_block_size", 16)),
        arrive_every=int(state.get("serving_arrive_every", 2)), pool_blocks=int(state.get("serving_pool", 0)),
        prefix_sharing=bool(state.get("serving_sharing", True)),
    )


def scenario_controls() -> None:
    with st.container(border=True):
        left, middle, right = st.columns(3)
        left.slider("Requests", 1, 12, 6, key="serving_requests",
                    help="Each is one shared instruction and a different question (see kvviz/serving/workload.py).")
        middle.slider("New tokens per request", 2, 64, 16, key="serving_new_tokens",
                      help="Greedy decoding; end-of-sequence is ignored so every request gets exactly this many.")
        right.select_slider("Block size (tokens)", sessions.BLOCK_SIZES, 16, key="serving_block_size",
                            help="Positions of K and V per block, in every layer. vLLM's default is 16.")
        left, middle, right = st.columns(3)
        left.slider("A new request arrives every … steps", 0, 8, 2, key="serving_arrive_every",
                    help="0: all arrive at once.")
        middle.number_input("Pool size (blocks; 0 = room for every request)", 0, 4096, 0, key="serving_pool",
                            help="A small pool makes requests wait and, when decoding runs out of blocks, "
                                 "preempts one: its blocks are freed and it is recomputed later.")
        right.toggle("Prefix caching", True, key="serving_sharing",
                     help="Reuse full blocks whose tokens (and everything before them) were computed already.")


@st.fragment
def stepping_area() -> None:
    session = sessions.get_session()
    sessions.play_tick(session)
    with st.container(horizontal=True, vertical_alignment="center"):
        st.button("Start", key="serving_start", type="primary", on_click=sessions.on_start,
                  args=(loaded, read_settings), help="A new run with the settings above; runs its first step.")
        st.button("Step", key="serving_step", on_click=sessions.on_step, help="One scheduler step: one forward pass.")
        st.button("Play", key="serving_play", on_click=sessions.on_play, help="Step until every request is done.")
        st.button("Stop", key="serving_stop", on_click=sessions.on_stop, disabled=not session.playing)
        if st.button("Run to end", key="serving_run_all"):
            with st.spinner("Serving every request…"):
                sessions.run_to_end(session)
    sessions.show_message(session)
    scenario = session.scenario
    if scenario is None:
        st.info("Press **Start** to serve the requests: the first step admits the first request and prefills it.")
        return
    if sessions.settings_changed(session, read_settings()):
        st.info("The settings changed since the last Start: press Start to apply them.")
    trace = scenario.trace()
    latest = trace.steps[-1]
    shown = latest
    if not session.playing and len(trace.steps) > 1:
        index = st.slider("Show step", 0, len(trace.steps) - 1, len(trace.steps) - 1, key=sessions.VIEW_STEP_KEY)
        shown = trace.steps[index]
    with st.container(horizontal=True, vertical_alignment="center"):
        done = sum(1 for view in latest.requests if view.state == "done")
        st.markdown(f"**Step {latest.index}** · {done} of {len(scenario.requests)} requests done · "
                    f"{latest.free_blocks} of {trace.num_blocks} blocks free")
        if session.playing:
            st.badge("playing", icon=":material/play_arrow:", color="blue")
    st.markdown(report.step_sentence(trace, shown))

    left, right = st.columns([3, 2], gap="medium")
    with left:
        show_figure(charts.pool_grid_figure(trace, shown), "serving_chart_pool")
    with right:
        st.caption("Each square is one block: the K and V of "
                   f"{trace.block_size} consecutive positions of one sequence in all {loaded.card.layers} layers "
                   f"({trace.block_bytes:,} bytes here). A request's blocks need not be next to each other; its block "
                   "table (below) says where each part of its sequence lives. A black outline with ×N marks a block "
                   "N requests read at once (the same prefix, stored once). Grey **c** blocks belong to no request "
                   "any more but keep their content for a later prompt with the same prefix; they are handed out "
                   "again when free blocks run short.")
    st.dataframe(charts.block_table_rows(trace, shown), hide_index=True, key="serving_tables",
                 column_config={"block table": st.column_config.TextColumn(width="large")})
    show_figure(charts.memory_bars_figure(trace, shown), "serving_chart_waste")
    st.markdown(report.context_reservation_sentence(trace, shown))
    st.caption("Paged: a request holds only the blocks its tokens fill, so the only unwritten bytes are the tail of "
               "each request's last block (internal fragmentation). Contiguous: a request reserves room for its "
               "whole answer when it is admitted (here its own prompt + new tokens; servers that did not know the "
               "answer's length reserved the model's whole context).")
    left, right = st.columns(2, gap="medium")
    with left:
        show_figure(charts.batch_figure(trace, shown.index), "serving_chart_batch")
    with right:
        show_figure(charts.memory_steps_figure(trace, shown.index), "serving_chart_bytes")
    st.caption("One forward pass per step feeds every running request at once: new requests' prompt tokens (in "
               "chunks when long) beside one token for each request already decoding. Requests join when the "
               "scheduler has blocks for them and leave the moment they finish, not when the whole batch does.")

    if scenario.done:
        st.markdown(report.waste_sentence(trace))
        if session.sequential is None:
            if st.button("Compare with one request at a time", key="serving_compare",
                         help="Runs the same requests one after another with the plain cached stepper."):
                with st.spinner("Running every request alone…"):
                    sessions.compare_sequential(session, loaded)
                rerun_fragment()
        else:
            summary = scenario.trace(session.sequential).summary
            left, middle, right = st.columns(3)
            left.metric("Batched · tokens/s", f"{summary.tokens_per_s_batched:,.1f}")
            middle.metric("One at a time · tokens/s", f"{summary.tokens_per_s_sequential:,.1f}")
            right.metric("Same tokens", "yes" if summary.outputs_match_sequential else "NO")
            st.markdown(report.throughput_sentence(summary))

    block_size_area(session)
    if session.playing:
        rerun_fragment()


def block_size_area(session: sessions.ServingSession) -> None:
    st.subheader("Which block size?")
    if st.button("Measure every block size from 4 to 256", key="serving_sweep",
                 help="Serves the requests set above once per block size, each with room for every request."):
        with st.spinner("Serving the requests once per block size…"):
            sessions.sweep_block_sizes(session, loaded, read_settings())
    if session.block_sweep is None:
        st.caption("Small blocks waste less of each request's last block and can reuse shorter shared prefixes; "
                   "large blocks mean fewer entries in every block table and fewer, larger reads. Press the button "
                   "to measure both sides on these requests.")
        return
    show_figure(charts.block_size_figure(session.block_sweep, f"{loaded.card.name} · {loaded.device} · "
                                         f"{loaded.dtype_name}"), "serving_chart_sweep")
    st.markdown(report.block_size_sentence(session.block_sweep))


def prefix_area() -> None:
    st.markdown("Two prompts that start with the same long system prompt and ask different questions. Prompt A "
                "runs first; prompt B then finds A's full blocks in the cache, and is measured again alone on an "
                "empty cache.")
    left, right = st.columns(2)
    text_a = left.text_area("Prompt A", library_prompt("When are you open on Saturday?"), height=150,
                            key="serving_prefix_a")
    text_b = right.text_area("Prompt B", library_prompt("How many books can I borrow at once?"), height=150,
                             key="serving_prefix_b")
    block_size = st.select_slider("Block size (tokens)", sessions.BLOCK_SIZES, 16, key="serving_prefix_block")
    session = sessions.get_session()
    if st.button("Run A, then B; then B alone", key="serving_prefix_run", type="primary"):
        try:
            with st.spinner("Running the prompts…"):
                sessions.run_prefix_comparison(session, loaded, text_a, text_b, block_size)
        except KvvizError as error:
            st.error(str(error))
    comparison = session.prefix
    if comparison is None:
        st.info("Press **Run A, then B; then B alone** to see which blocks B reuses and what that saves.")
        return
    hit, cold, prefix = comparison.hit, comparison.cold_prompt, comparison.report
    run = comparison.shared
    left, right = st.columns([2, 3], gap="medium")
    with left:
        show_figure(charts.ttft_figure(["B cold", "B after A"], [cold.ttft_ms, hit.ttft_ms], [0, hit.hit_tokens],
                                       f"{run.model} · {run.device} · {run.dtype} · blocks of {run.block_size}"),
                    "serving_chart_ttft")
        st.markdown(report.ttft_sentence(cold.ttft_ms, hit.ttft_ms, hit.hit_tokens, hit.tokens))
        st.markdown(f"B's first {len(hit.generated_ids)} tokens are "
                    + ("**the same** with and without the cached prefix."
                       if comparison.outputs_match else "**different** with the cached prefix."))
    with right:
        st.subheader("Why did my prefix hit (or miss)?")
        for sentence in report.prefix_miss_sentences(prefix, run.prompts[0].tokens, hit.tokens):
            st.markdown(sentence)
    texts_a, texts_b = session.prefix_texts
    st.html(sessions.prefix_tokens_html(texts_a, texts_b, run.block_size, prefix.first_divergence, hit.hit_blocks))
    st.caption("The two prompts' tokens side by side, one row per block of B. Green: found in the cache. Orange: a "
               "full block computed. Grey: a partial last block, which is never cached. The red token is the first "
               "where the prompts differ.")
    st.markdown(f"**Prompt B's full blocks**: {hit.hit_blocks} of {hit.full_blocks} found in the cache. Each hash "
                "covers its parent's hash and its own tokens, so a block matches only when everything before it "
                "matched too.")
    st.dataframe(charts.prefix_block_rows(run, 1), hide_index=True, key="serving_prefix_blocks")


def design_area() -> None:
    st.markdown("Four habits that decide whether a server's prefix cache hits, each written two ways and run "
                "through the live model's prefix cache: four prompts in order, each after the one before finished. "
                "Only whole blocks that match from the very first token are reused, so anything that changes early "
                "in a prompt (a timestamp, a user name, a shuffled example) ends the reuse there.")
    session = sessions.get_session()
    block_size = st.select_slider("Block size (tokens)", sessions.BLOCK_SIZES, 16, key="serving_design_block")
    if st.button("Measure the four prompt designs", key="serving_design_run", type="primary",
                 help="32 prompts through the prefix cache; about 10 s with SmolLM2 on a quiet 2-core CPU."):
        try:
            with st.spinner("Running 8 variants × 4 prompts…"):
                session.design = run_prompt_design(loaded, block_size=block_size)
        except KvvizError as error:
            st.error(str(error))
    run = session.design
    if run is None:
        st.info("Press **Measure the four prompt designs** to run them on this model.")
        return
    show_figure(charts.prompt_design_figure(run), "serving_chart_design")
    for scenario in run.scenarios:
        with st.expander(f"{scenario.title}: {report.design_sentence(scenario)}"):
            st.markdown(scenario.lesson)
            st.dataframe(charts.design_rows(scenario), hide_index=True, key=f"serving_design_{scenario.key}")


def pressure_area() -> None:
    st.markdown("The demo requests again, arriving at seeded random steps, served from a pool deliberately smaller "
                "than they need together (prefix caching off, so every request's blocks are its own). Requests wait "
                "for room; when a running request needs a block and none is free, one is **preempted**.")
    session = sessions.get_session()
    with st.container(border=True):
        left, middle, right = st.columns(3)
        count = left.slider("Requests", 2, 12, 8, key="serving_pressure_requests")
        new_tokens = middle.slider("New tokens per request", 4, 64, 24, key="serving_pressure_tokens")
        fraction = right.slider("Pool, share of what all need at once", 0.1, 1.0, 0.4, 0.05,
                                key="serving_pressure_fraction",
                                help="Never less than the largest request needs alone, plus one block.")
        left, middle, _ = st.columns(3)
        gap = left.slider("Mean steps between arrivals", 0.0, 4.0, 1.0, 0.5, key="serving_pressure_gap")
        seed = middle.number_input("Seed", 0, 10_000, 0, key="serving_pressure_seed")
    if st.button("Serve under pressure", key="serving_pressure_run", type="primary",
                 help="Also runs each request alone, to check the tokens."):
        try:
            with st.spinner("Serving, then running each request alone…"):
                session.pressure = run_pressure(loaded, count=count, new_tokens=new_tokens, seed=int(seed),
                                                mean_gap_steps=gap, pool_fraction=fraction)
        except KvvizError as error:
            st.error(str(error))
    run = session.pressure
    if run is not None:
        trace = run.trace
        show_figure(charts.pressure_figure(run.timeline, f"{trace.model} · {trace.device} · {trace.dtype} · seed "
                                           f"{run.seed}"), "serving_chart_pressure")
        st.markdown(report.pressure_sentence(run))
        st.markdown("**This pool's maximum concurrency**: " + report.concurrency_sentence(trace_concurrency(trace)))
    else:
        st.info("Press **Serve under pressure** to watch admission, waiting and preemption.")

    st.subheader("Maximum concurrency on a real GPU (a projection)")
    st.caption("vLLM prints this figure at start-up. It is computed here from the model's public config and "
               "kvviz's KV formula (the Memory page's), not measured: vLLM also sets memory aside for activations "
               "and CUDA graphs, so the real pool is somewhat smaller.")
    presets = projectable_presets()
    names = [spec.key for spec in presets]
    left, middle, right = st.columns(3)
    key = left.selectbox("Model (public config)", names, index=names.index("llama-3.1-8b"),
                         key="serving_projection_model")
    gpu_key = middle.selectbox("GPU", list(GPUS), index=list(GPUS).index("h100"),
                               format_func=lambda k: GPUS[k].name, key="serving_projection_gpu")
    cache = right.selectbox("Cache dtype", ["bf16", "fp8"], key="serving_projection_cache")
    left, middle, _ = st.columns(3)
    utilisation = left.slider("GPU memory utilisation", 0.5, 0.98, 0.9, 0.01, key="serving_projection_util",
                              help="vLLM's --gpu-memory-utilization (default 0.9).")
    spec = presets[names.index(key)]
    tokens = middle.number_input("Tokens per request", 16, spec.max_context, min(8192, spec.max_context),
                                 key="serving_projection_tokens",
                                 help=f"vLLM uses --max-model-len; this model's context is {spec.max_context:,}.")
    try:
        projection = project_on_gpu(spec, cache, gpu_key, utilisation, int(tokens))
        st.metric(f"{spec.name} on one {GPUS[gpu_key].name}", f"{projection.max_concurrency:,.2f}×",
                  help="Requests of that many tokens the pool holds at once, all at full length.")
        st.markdown(report.concurrency_sentence(projection))
    except KvvizError as error:
        st.error(str(error))


def metrics_area() -> None:
    st.markdown("A model too big for this machine runs on a server such as vLLM or SGLang. Both publish "
                "Prometheus metrics at `/metrics`; paste that text, or give its address, to read the same "
                "quantities as this page shows for the live model.")
    session = sessions.get_session()
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    url = left.text_input("Metrics address", placeholder="http://localhost:8000/metrics", key="serving_metrics_url")
    if right.button("Fetch", key="serving_metrics_fetch", help="One request, 5 s timeout, at most 2 MB."):
        try:
            st.session_state["serving_metrics_text"] = fetch_metrics(url)
        except KvvizError as error:
            st.error(str(error))
    example = st.segmented_control("Or an example", list(EXAMPLES), key="serving_metrics_example",
                                   help="Written by hand from the metric names in each server's source code, not "
                                        "scraped from a running server.")
    if example and st.session_state.get("serving_metrics_loaded") != example:
        st.session_state["serving_metrics_text"] = example_metrics(example)
        st.session_state["serving_metrics_loaded"] = example
    text = st.text_area("Metrics text", key="serving_metrics_text", height=160)
    rows = []
    if text.strip():
        try:
            server = parse_metrics(text)
            rows.append(metrics_row(server, "server"))
            if server.missing:
                st.caption("Not in this text: " + ", ".join(server.missing) + ".")
        except KvvizError as error:
            st.error(str(error))
    scenario = session.scenario
    if scenario is not None:
        rows.append(metrics_row(live_metrics(scenario.trace()), "this page's run"))
    else:
        st.caption("Run the scenario in **Blocks and batching** to see the live model's figures beside the server's.")
    if rows:
        st.dataframe(rows, hide_index=True, key="serving_metrics_table")
        st.caption("KV-cache usage is blocks held by running requests over the pool (blocks kept only for prefix "
                   "reuse count as free). Prefix queries and hits are prompt tokens looked up and found, counted at "
                   "each admission since the server started; the hit rate is hits over queries.")


if blocks_tab.open:
    with blocks_tab:
        scenario_controls()
        stepping_area()
if prefix_tab.open:
    with prefix_tab:
        prefix_area()
if design_tab.open:
    with design_tab:
        design_area()
if pressure_tab.open:
    with pressure_tab:
        pressure_area()
if metrics_tab.open:
    with metrics_tab:
        metrics_area()
