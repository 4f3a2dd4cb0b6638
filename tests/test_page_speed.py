"""The Speed page under Streamlit's AppTest: idle, a benchmark on a tiny model, a rerun after a stop."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from streamlit.testing.v1 import AppTest

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
    assert not any("same tokens" in warning.value for warning in at.warning)
    assert len(at.get("plotly_chart")) == 6
    table = at.dataframe[0].value
    assert list(table["path"]) == ["naive", "dynamic", "kvviz", "static", "graphs", "generate"]
    assert list(table["same tokens"]) == ["yes"] * 4 + ["—", "yes"]  # graphs was skipped: nothing to compare
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
