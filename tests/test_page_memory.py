"""The Memory page, run headless with Streamlit's AppTest: the answer, the fit, and the live check on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from stepped import SESSION_KEY, stepped_session

ROOT = Path(__file__).resolve().parent.parent
PAGE = "app_pages/memory.py"


def page() -> AppTest:
    return AppTest.from_file(str(ROOT / PAGE), default_timeout=120)


def texts(elements) -> list[str]:
    return [element.value for element in elements]


def test_default_answers_why_llama_70b_at_128k_does_not_fit_an_h100():
    at = page().run()
    assert not at.exception
    assert texts(at.subheader)[0] == "Llama-3.1-70B at 131,072 tokens holds 40 GiB of KV cache per sequence in bf16."
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["KV cache per token"] == "320 KiB" and metrics["KV cache per sequence"] == "40 GiB"
    assert metrics["Weights (bf16)"] == "131.4 GiB"
    [error] = at.error
    assert "does not fit" in error.value and "alone exceed" in error.value and "3 × H100" in error.value
    assert any("8.0× smaller" in info for info in texts(at.info))
    assert "327,680 bytes" in " ".join(texts(at.markdown))
    # Four figures: fit, max batch, cache vs context, what sharing saves.
    assert len(at.get("plotly_chart")) == 4


def test_a_small_model_fits_and_the_page_says_how_many_sequences():
    at = page().run()
    at.selectbox(key="mem_model").set_value("SmolLM2-135M")
    at.number_input(key="mem_context").set_value(8192)
    at.selectbox(key="mem_gpu").set_value("T4 16 GB")
    at.run()
    assert not at.exception and not at.error
    assert texts(at.subheader)[0] == "SmolLM2-135M at 8,192 tokens holds 180 MiB of KV cache per sequence in bf16."
    [success] = at.success
    assert success.value.startswith("It fits: on one T4 16 GB") and "sequences of 8,192 tokens" in success.value


def test_quantised_cache_changes_the_answer():
    at = page().run()
    at.selectbox(key="mem_cache").set_value("int4")
    at.selectbox(key="mem_weights").set_value("int4")
    at.run()
    assert not at.exception
    assert texts(at.subheader)[0].endswith("holds 11.25 GiB of KV cache per sequence in int4.")
    assert "It fits" in at.success[0].value


def test_live_check_on_a_tiny_model_shows_formula_equal_to_live_bytes():
    at = page().run()
    at.selectbox(key="mem_live_model").set_value("tiny-llama")
    at.number_input(key="mem_live_prompt").set_value(20)
    at.number_input(key="mem_live_new").set_value(5)
    at.button(key="mem_live_run").click()
    at.run()
    assert not at.exception
    assert [error.value[:16] for error in at.error] == ["It does not fit:"]  # the default Llama-3.1-70B, not the run
    metrics = {metric.label: metric.value for metric in at.metric}
    expected = 2 * 4 * 2 * 16 * 4 * 24  # K,V × layers × KV heads × head dim × fp32 × (20 prompt + 4 fed)
    assert metrics["Formula"] == metrics["Live cache (sum of K/V nbytes)"] == f"{expected:,} bytes"
    assert metrics["Difference"] == "0 bytes"
    assert any("exactly equal" in success.value for success in at.success)
    assert any("needs a CUDA GPU" in info.value for info in at.info)  # the tests run on the CPU
    assert len(at.get("plotly_chart")) == 5


def test_live_check_uses_the_sessions_trace_from_the_step_through_page(tiny_gpt2):
    at = page()
    session = stepped_session(tiny_gpt2, "hello", 3, capture_attention=False)
    at.session_state[SESSION_KEY] = session
    at.run()
    assert not at.exception
    assert any("your trace on the Step through page" in text for text in texts(at.markdown))
    metrics = {metric.label: metric.value for metric in at.metric}
    assert metrics["Formula"] == metrics["Live cache (sum of K/V nbytes)"] == f"{session.trace.records[-1].cache_bytes:,} bytes"


def test_pasted_config_json_is_sized():
    at = page().run()
    at.selectbox(key="mem_model").set_value("From a config.json…")
    at.run()
    assert not at.exception
    assert any("Paste a config.json" in info.value for info in at.info)
    config = {"model_type": "llama", "_name_or_path": "my-llama", "num_hidden_layers": 4, "num_attention_heads": 8,
              "num_key_value_heads": 2, "hidden_size": 512, "vocab_size": 1000, "max_position_embeddings": 4096}
    at.text_area(key="mem_config_text").set_value(json.dumps(config))
    at.number_input(key="mem_context").set_value(1000)
    at.run()
    assert not at.exception and texts(at.subheader)[0].startswith("my-llama at 1,000 tokens holds")
    assert "2 (K, V) × 4 layers × 2 KV heads × 64 head dim × 2 bytes" in " ".join(texts(at.markdown))


@pytest.mark.parametrize("bad, message", [("{oops", "not valid JSON"), ('{"model_type": "nope"}', "does not know")])
def test_bad_config_json_shows_one_error(bad, message):
    at = page().run()
    at.selectbox(key="mem_model").set_value("From a config.json…")
    at.run()
    at.text_area(key="mem_config_text").set_value(bad)
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value


def test_page_is_registered_in_the_app():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.switch_page(PAGE).run()
    assert not at.exception
    assert "holds 40 GiB of KV cache" in at.subheader[0].value


def test_a_config_whose_parameters_cannot_be_counted_says_so_and_takes_the_count():
    at = page().run()
    at.selectbox(key="mem_model").set_value("From a config.json…")
    at.run()
    at.text_area(key="mem_config_text").set_value(json.dumps({"model_type": "distilbert", "_name_or_path": "d"}))
    at.run()
    assert not at.exception
    assert any("could not count its parameters" in warning.value for warning in at.warning)
    assert {m.label: m.value for m in at.metric}["Weights (bf16)"] == "0 bytes"
    at.number_input(key="mem_parameters_d").set_value(66_000_000).run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Weights (bf16)"] == "125.9 MiB"  # 66e6 × 2 bytes


def test_the_cache_designs_expander_says_what_each_design_gives_up():
    at = page()
    at.run()
    assert not at.exception, at.exception
    expanders = [e for e in at.expander if e.label == "What each cache design gives up"]
    assert len(expanders) == 1
    body = " ".join(m.value for m in expanders[0].markdown)
    for phrase in ("weight absorption", "decoupled RoPE key", "attention sinks", "block table", "one copy shared"):
        assert phrase in body, phrase
