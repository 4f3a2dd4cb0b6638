"""The Serving page under AppTest on a tiny model, its charts and its sentences against the records they show."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kvviz.charts import serving as charts
from kvviz.serving import report
from kvviz.serving.engine import ServingScenario
from kvviz.serving.prefix import compare_prefix, prefix_report
from kvviz.serving.records import ServingRequest

PAGE = str(Path(__file__).parent.parent / "app_pages" / "serving.py")


def open_page(**state: object) -> AppTest:
    """The Serving page on tiny-llama (chosen before the first run, so the default model is never loaded here)."""
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["serving_model"] = "tiny-llama"
    at.session_state["serving_requests"] = 3
    at.session_state["serving_new_tokens"] = 4
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    assert not at.exception, at.exception
    return at


def serving(at: AppTest):
    return at.session_state["kvviz_serving"]


def chart_titles(at: AppTest) -> list[str]:
    import json

    return [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]


def test_idle_page_says_to_press_start_and_draws_nothing():
    at = open_page()
    assert any("Press **Start**" in info.value for info in at.info)
    assert not at.get("plotly_chart")
    assert at.button(key="serving_stop").disabled


def test_start_runs_the_first_step_and_draws_the_pool_tables_and_charts():
    at = click(open_page(), "serving_start")
    trace = serving(at).scenario.trace()
    assert len(trace.steps) == 1
    first = trace.steps[0]
    assert any(m.value.startswith(f"Step 0: one forward pass fed {first.prefill_tokens} tokens") for m in at.markdown)
    titles = chart_titles(at)
    assert titles[0].startswith(f"The pool after step 0: {sum(b.ref_count > 0 for b in first.blocks)} blocks held")
    assert len(titles) == 4
    table = at.dataframe[0].value
    assert list(table["request"]) == ["r0"] and list(table["state"]) == ["decoding"]
    assert table["block table"][0] == " → ".join(str(b) for b in first.requests[0].block_table)


def test_step_then_run_to_end_serves_every_request_and_states_the_waste():
    at = click(click(open_page(), "serving_start"), "serving_step")
    assert len(serving(at).scenario.steps) == 2
    at = click(at, "serving_run_all")
    scenario = serving(at).scenario
    assert scenario.done
    trace = scenario.trace()
    assert [o.generated_ids != () for o in trace.outcomes] == [True] * 3
    assert report.waste_sentence(trace) in [m.value for m in at.markdown]
    # The step slider shows an earlier step's pool.
    at.slider(key="serving_view_step").set_value(1).run()
    assert chart_titles(at)[0].startswith("The pool after step 1:")


def test_play_steps_until_every_request_is_done_and_stop_is_then_disabled():
    at = click(click(open_page(), "serving_start"), "serving_play")
    session = serving(at)
    assert session.scenario.done and not session.playing
    assert at.button(key="serving_stop").disabled


def test_compare_with_one_at_a_time_reports_both_rates_and_the_same_tokens():
    at = click(click(click(open_page(), "serving_start"), "serving_run_all"), "serving_compare")
    session = serving(at)
    summary = session.scenario.trace(session.sequential).summary
    assert summary.outputs_match_sequential is True
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Batched · tokens/s": f"{summary.tokens_per_s_batched:,.1f}",
                       "One at a time · tokens/s": f"{summary.tokens_per_s_sequential:,.1f}", "Same tokens": "yes"}
    assert report.throughput_sentence(summary) in [m.value for m in at.markdown]


def test_a_pool_too_small_for_a_request_is_a_message_not_a_traceback():
    at = click(open_page(serving_pool=2), "serving_start")
    assert serving(at).scenario is None
    assert [e.value for e in at.error] and "too small" in at.error[0].value


def test_prefix_tab_shows_ttft_and_why_the_prefix_hit():
    at = open_page(serving_tab="Prefix caching", serving_prefix_a="The same words then A", serving_prefix_b="The "
                   "same words then B, longer", serving_prefix_block=4)
    click(at, "serving_prefix_run")
    comparison = serving(at).prefix
    assert comparison.outputs_match
    assert comparison.hit.hit_tokens == comparison.report.reusable_tokens > 0
    markdown = [m.value for m in at.markdown]
    assert report.ttft_sentence(comparison.cold_prompt.ttft_ms, comparison.hit.ttft_ms, comparison.hit.hit_tokens,
                                comparison.hit.tokens) in markdown
    for sentence in report.prefix_miss_sentences(comparison.report, comparison.shared.prompts[0].tokens,
                                                 comparison.hit.tokens):
        assert sentence in markdown
    blocks = at.dataframe[0].value
    assert list(blocks["found in cache"]).count("hit") == comparison.hit.hit_blocks


def test_an_empty_prefix_prompt_is_a_message():
    at = click(open_page(serving_tab="Prefix caching", serving_prefix_a="  "), "serving_prefix_run")
    assert [e.value for e in at.error] == ["Both prompts need some text."]


# ----- charts -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_trace(request):
    """Two requests with the same 8-token prefix, arriving together: their first two blocks are shared."""
    from kvviz.models import load_model

    loaded = load_model("tiny-llama")
    prefix = tuple(b"abcdefgh")
    requests = [ServingRequest("r0", prefix + (1, 2, 3), 6), ServingRequest("r1", prefix + (4, 5), 6, arrival_step=1)]
    scenario = ServingScenario(loaded, requests, block_size=4, num_blocks=20)
    scenario.run()
    return scenario.trace()


def test_pool_grid_draws_every_block_once_and_marks_shared_and_cached_blocks(shared_trace):
    step = next(s for s in shared_trace.steps if any(b.ref_count > 1 for b in s.blocks))
    fig = charts.pool_grid_figure(shared_trace, step)
    grid = fig.data[0]
    assert len(grid.x) == shared_trace.num_blocks
    shared = [b for b in step.blocks if b.ref_count > 1]
    assert list(grid.text).count("×2") == len(shared) == 2
    assert list(grid.marker.line.color).count(charts.SHARED) == 2
    last = shared_trace.steps[-1]
    cached = [b for b in last.blocks if b.cached]
    assert cached and list(charts.pool_grid_figure(shared_trace, last).data[0].marker.color).count(
        charts.CACHED_BLOCK) == len(cached)


def test_memory_bars_show_used_and_waste_of_the_step(shared_trace):
    step = shared_trace.steps[1]
    fig = charts.memory_bars_figure(shared_trace, step)
    used, waste = fig.data[0], fig.data[1]
    assert used.x[0] == step.memory.paged_used and waste.x[0] == step.memory.paged_internal_fragmentation
    assert used.x[1] == step.memory.contiguous_used and waste.x[1] == step.memory.contiguous_over_reservation


def test_batch_chart_stacks_prefill_and_decode_tokens_per_step(shared_trace):
    fig = charts.batch_figure(shared_trace)
    assert list(fig.data[0].y) == [s.prefill_tokens for s in shared_trace.steps]
    assert list(fig.data[1].y) == [s.decode_tokens for s in shared_trace.steps]


# ----- sentences --------------------------------------------------------------------------------------------------

def test_a_divergence_inside_a_block_is_explained_with_its_block_and_the_reused_count():
    report_b = prefix_report(list(range(40)), list(range(21)) + [99] * 10, block_size=8)
    sentences = report.prefix_miss_sentences(report_b, 40, 31)
    assert sentences[0] == "The prompts share their first 21 tokens and part at token 21, which falls in block 2 " \
                           "(tokens 16–23)."
    assert sentences[1] == "So B reuses 2 full blocks (16 tokens) and computes the other 15."
    assert sentences[2].startswith("The 5 shared tokens at the start of block 2 are computed again")


def test_a_shared_prefix_under_one_block_is_told_it_can_never_hit():
    sentences = report.prefix_miss_sentences(prefix_report([1, 2, 3, 4, 5], [1, 2, 3, 9, 9], 16), 5, 5)
    assert "So B reuses nothing: no full block of B matches A." in sentences
    assert any(s.startswith("A shared prefix shorter than one block (16 tokens) can never hit") for s in sentences)


def test_an_identical_prompt_of_whole_blocks_is_told_why_its_last_block_is_computed():
    ids = list(range(32))
    sentences = report.prefix_miss_sentences(prefix_report(ids, ids, 16), 32, 32)
    assert sentences[1] == "So B reuses 1 full block (16 tokens) and computes the other 16."
    assert sentences[-1].startswith("B's last block is computed even though it matches")


def test_compare_prefix_reuses_the_whole_blocks_the_report_predicts():
    from kvviz.models import load_model

    loaded = load_model("tiny-llama")
    a, b = list(b"a common start, then one"), list(b"a common start, then two words")
    comparison = compare_prefix(loaded, a, b, block_size=4)
    assert comparison.report.reusable_blocks == len(b"a common start, then ") // 4 == 5
    assert comparison.hit.hit_blocks == 5 and comparison.cold_prompt.hit_blocks == 0
    assert comparison.outputs_match


def test_block_size_sweep_trades_waste_and_reuse_against_block_table_length():
    from kvviz.models import load_model
    from kvviz.serving.block_size import block_size_sweep

    loaded = load_model("tiny-llama")
    shared = tuple(b"a shared instruction of forty bytes or so, question ")  # 52 tokens, then a digit
    requests = [ServingRequest(f"r{i}", shared + tuple(b"%d?" % i), 5, arrival_step=2 * i) for i in range(3)]
    small, large = block_size_sweep(loaded, requests, sizes=(4, 32))
    assert (small.block_size, large.block_size) == (4, 32)
    assert small.prefix_cached_tokens == 2 * (len(shared) // 4) * 4  # r1 and r2 reuse the whole blocks of the prefix
    assert large.prefix_cached_tokens == 2 * 32
    assert small.waste_fraction_paged < large.waste_fraction_paged
    assert small.block_table_entries_peak > large.block_table_entries_peak
    sentence = report.block_size_sentence((small, large))
    assert f"{small.prefix_cached_tokens} prompt tokens came from the prefix cache" in sentence


def test_the_sweep_button_draws_the_trade_off(monkeypatch):
    from kvviz.serving import block_size

    monkeypatch.setattr(block_size, "SWEEP_SIZES", (4, 16))
    at = click(click(open_page(), "serving_start"), "serving_sweep")
    points = serving(at).block_sweep
    assert [p.block_size for p in points] == [4, 16]
    assert "The block-size trade-off, measured on the same requests" in chart_titles(at)[-1]
    assert report.block_size_sentence(points) in [m.value for m in at.markdown]


# ----- memory pressure and production metrics -----------------------------------------------------------------------

def test_pressure_tab_serves_under_pressure_and_projects_llama_on_an_h100():
    at = open_page(serving_tab="Memory pressure", serving_pressure_requests=4, serving_pressure_tokens=8,
                   serving_pressure_fraction=0.3)
    # The projection needs no run: Llama-3.1-8B in bf16 on an H100 at 90 %, 8,192-token requests.
    assert [m.value for m in at.metric] == ["56.72×"]
    click(at, "serving_pressure_run")
    run = serving(at).pressure
    assert run.trace.summary.outputs_match_sequential is True
    assert run.timeline.steps_with_waiting > 0
    markdown = [m.value for m in at.markdown]
    assert report.pressure_sentence(run) in markdown
    assert chart_titles(at)[0].startswith("Memory pressure: the pool and the queue, step by step")


def test_metrics_tab_reads_the_vllm_example_beside_the_live_run():
    at = click(open_page(), "serving_start")
    at.session_state["serving_tab"] = "Production metrics"
    at.run()
    at.segmented_control(key="serving_metrics_example").set_value("vLLM").run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["source"]) == ["server", "this page's run"]
    assert list(table["engine"]) == ["vllm", "kvviz"]
    assert table["prefix hit rate"][0] == "60.0%"


def test_broken_metrics_text_is_one_clear_error():
    at = open_page(serving_tab="Production metrics", serving_metrics_text="vllm:num_requests_running{engine=0 14\n")
    assert len(at.error) == 1 and at.error[0].value.startswith("Could not read the metrics text")


def test_prompt_design_tab_charts_both_variants_of_every_scenario():
    at = click(open_page(serving_tab="Prompt design", serving_design_block=8), "serving_design_run")
    run = serving(at).design
    assert run.block_size == 8 and len(run.scenarios) == 4
    assert all(s.friendly.hit_rate_after_first > s.hostile.hit_rate_after_first for s in run.scenarios)
    assert [e.label for e in at.expander] == [f"{s.title}: {report.design_sentence(s)}" for s in run.scenarios]
    fig_titles = chart_titles(at)
    assert fig_titles[0].startswith("Prompt design and the prefix cache")
    table = at.dataframe[0].value
    friendly = run.scenarios[0].friendly
    assert list(table["found in cache"])[:len(friendly.hit_tokens)] == list(friendly.hit_tokens)


def test_the_step_slider_follows_each_new_step_after_looking_back():
    at = click(click(click(open_page(), "serving_start"), "serving_step"), "serving_step")
    at.slider(key="serving_view_step").set_value(0).run()
    assert chart_titles(at)[0].startswith("The pool after step 0:")
    click(at, "serving_step")
    assert at.slider(key="serving_view_step").value == 3
    assert chart_titles(at)[0].startswith("The pool after step 3:")
