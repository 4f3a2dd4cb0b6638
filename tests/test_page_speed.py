"""The Speed page under Streamlit's AppTest: idle, a benchmark on a tiny model, a rerun after a stop."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kvviz import report
from kvviz.bench_results import Spread

PAGE = str(Path(__file__).parent.parent / "app_pages" / "speed.py")


def _page() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=300)


def test_idle_page_explains_what_to_do_and_loads_no_model():
    at = _page().run()
    assert not at.exception
    assert at.selectbox(key="speed_model").value == "smollm2-135m"
    assert any("Run benchmark" in info.value for info in at.info)
    assert not at.get("plotly_chart") and not at.metric


def test_running_a_small_benchmark_shows_every_path_and_chart():
    at = _page().run()
    at.selectbox(key="speed_model").set_value("tiny-llama")
    at.slider(key="speed_tokens").set_value(8)
    at.slider(key="speed_prompt_tokens").set_value(8)
    at.slider(key="speed_repeats").set_value(1)
    at.button(key="speed_run").click().run()
    assert not at.exception and not at.error
    labels = [metric.label for metric in at.metric]
    assert labels == [f"{name} · ms/token" for name in ("naive", "dynamic", "kvviz", "static", "generate")]
    assert all(float(metric.value) > 0 for metric in at.metric)
    assert any("graphs" in info.value and "CUDA" in info.value for info in at.info)
    assert any(info.value.startswith("llamacpp skipped: tiny-llama has no GGUF file") for info in at.info)
    assert not any("same tokens" in warning.value for warning in at.warning)
    assert len(at.get("plotly_chart")) == 6
    table = at.dataframe[0].value
    assert list(table["path"]) == ["naive", "dynamic", "kvviz", "static", "graphs", "generate", "llamacpp"]
    assert list(table["same tokens"]) == ["yes"] * 4 + ["—", "yes", "—"]  # graphs, llamacpp skipped: nothing to compare
    assert "None" not in table.to_string() and not table.isna().any().any()
    assert any("tiny-llama" in markdown.value and "cpu" in markdown.value for markdown in at.markdown)

    at.toggle(key="speed_log_y").set_value(False).run()  # a rerun keeps the session's result
    assert len(at.metric) == 5 and len(at.get("plotly_chart")) == 6

    # Runs of one path that disagree (as when something else used the machine) get a warning that says so.
    result = at.session_state["kvviz_speed_result"]
    assert not any(w.value.startswith("Runs disagree") for w in at.warning)
    noisy = tuple(replace(p, runs=3, ms_per_token=Spread(3.0, 1.0, 9.0)) if p.path == "static" else p
                  for p in result.paths)
    at.session_state["kvviz_speed_result"] = replace(result, paths=noisy)
    at.run()
    assert not at.exception
    assert [w.value for w in at.warning if w.value.startswith("Runs disagree")] == [
        "Runs disagree: static's 3 runs 1.00–9.00 ms/token (9.0×). Something else used the machine during the "
        "benchmark (on a small machine, a browser drawing the page counts too). The medians are shown; compare "
        "paths with care, or run again on a quiet machine."]


def test_a_rerun_during_a_benchmark_is_reported_as_a_stop():
    at = _page()
    # What a click on Stop leaves behind: Streamlit interrupted the run that had marked itself running.
    at.session_state["kvviz_speed_status"] = "running"
    at.run()
    assert not at.exception
    assert any(warning.value.startswith("Stopped.") and "No timed run" in warning.value for warning in at.warning)


def test_settings_beyond_the_context_show_one_error_and_no_stale_run():
    at = _page().run()
    at.selectbox(key="speed_model").set_value("tiny-llama")
    at.slider(key="speed_tokens").set_value(1024)  # + 32 prompt tokens > tiny-llama's 1,024-token context
    at.button(key="speed_run").click().run()
    assert not at.exception
    assert [error.value for error in at.error] == [
        "Prompt tokens + tokens = 1056 exceeds the context of 1024 tokens of tiny-llama (random weights, seed 0)."]
    assert not at.get("progress")
    at.run()  # the next rerun must not mistake the refused run for a stopped one
    assert not any(warning.value.startswith("Stopped.") for warning in at.warning)


def test_the_shipped_gpu_result_draws_every_path_without_running_a_model():
    at = _page().run()
    at.button(key="speed_show_gpu").click().run()
    assert not at.exception, at.exception
    assert any("NVIDIA H200" in markdown.value for markdown in at.markdown)
    labels = [metric.label for metric in at.metric]
    assert any(label.startswith("graphs") for label in labels), labels
    assert len(at.get("plotly_chart")) >= 1 and not at.error


def test_without_llama_cpp_the_page_says_how_to_install_it(monkeypatch):
    from kvviz import llamacpp_engine

    monkeypatch.setattr(llamacpp_engine, "installed", lambda: False)
    at = _page().run()
    assert not at.exception
    hint = next(caption.value for caption in at.caption if caption.value.startswith("The llamacpp path needs"))
    assert f"pip install {llamacpp_engine.REQUIREMENT}" in hint and "about 5 minutes" in hint


@pytest.mark.slow
def test_the_llamacpp_path_runs_on_the_default_model_and_explains_the_gap(require_llamacpp):
    at = _page().run()
    at.slider(key="speed_tokens").set_value(8)
    at.slider(key="speed_repeats").set_value(1)
    at.multiselect(key="speed_paths").set_value(["kvviz", "llamacpp"])
    at.button(key="speed_run").click().run()
    assert not at.exception and not at.error
    assert [metric.label for metric in at.metric] == ["kvviz · ms/token", "llamacpp · ms/token"]
    result = at.session_state["kvviz_speed_result"]
    assert "llama.cpp beside PyTorch: where the gap comes from" in [header.value for header in at.subheader]
    shown = [markdown.value for markdown in at.markdown]
    for sentence in report.engine_sentences(result) + report.engine_gap_sentences(result):
        assert sentence in shown
    assert list(at.dataframe[0].value["path"]) == ["kvviz", "llamacpp"]


def test_a_gpt2_medium_result_sets_the_fits_beside_the_famous_figure():
    """A result of the architecture-only GPT-2 medium (synthetic here: nothing is loaded) shows the fits'
    prediction beside the published 107 s / 21.7 s and offers the full run with its estimated time."""
    from test_bench import famous_result

    result = famous_result((300.0, 4.0), (250.0, 0.01))
    at = _page()
    at.session_state["kvviz_speed_result"] = result
    at.session_state["kvviz_speed_status"] = "loaded"
    at.run()
    assert not at.exception
    assert "The famous figure: GPT-2 medium, 1,000 tokens, beside this measurement" in [h.value for h in at.subheader]
    table = at.dataframe[1].value  # after the summary table
    assert list(table["with the cache (s)"]) == ["21.7", "13.9", "260.0"]
    shown = [markdown.value for markdown in at.markdown]
    assert all(sentence in shown for sentence in report.famous_figure_sentences(result))
    assert at.button(key="speed_run_famous").label == report.famous_run_label(result)


def test_choosing_gpt2_medium_says_it_is_architecture_only():
    at = _page().run()
    at.selectbox(key="speed_model").set_value("gpt2-medium").run()
    assert not at.exception
    assert any(caption.value.startswith("**gpt2-medium: architecture only.**") and
               "Timing does not depend on the weights' values" in caption.value for caption in at.caption)


def test_the_shipped_cpu_results_show_llama_cpp_and_the_famous_figure_without_running_a_model():
    at = _page().run()
    at.button(key="speed_show_llamacpp").click().run()
    assert not at.exception and not at.error
    assert [metric.label for metric in at.metric] == [f"{name} · ms/token" for name in ("dynamic", "kvviz", "llamacpp")]
    assert "llama.cpp beside PyTorch: where the gap comes from" in [header.value for header in at.subheader]
    at.button(key="speed_show_gpt2").click().run()
    assert not at.exception and not at.error
    assert any("GPT-2 medium (architecture only, random weights)" in markdown.value for markdown in at.markdown)
    assert "The famous figure: GPT-2 medium, 1,000 tokens, beside this measurement" in [h.value for h in at.subheader]
