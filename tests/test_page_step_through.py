"""The Step through page under Streamlit's AppTest, on the instant tiny models (no browser, no real weights).

Each test drives the page through its widgets, as a person would, and checks what the page then holds and shows:
the cache length, the messages, the charts. Bad input must end in an st.error / st.warning, never an exception.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kvviz.stepper import Sampling
from kvviz.ui.step_widgets import token_chips_html

APP = str(Path(__file__).resolve().parents[1] / "app.py")
BUTTONS = {"prefill": "Prefill", "next": "Next token", "play": "Play", "stop": "Stop", "reset": "Reset"}


def open_page(model: str = "tiny-llama", **state: object) -> AppTest:
    """The home page with ``model`` chosen before the first run (so the default model is never loaded here)."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["model_choice"] = model
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def session(at: AppTest):
    return at.session_state["kvviz_session"]


def cache_len(at: AppTest) -> int:
    trace = session(at).trace
    return 0 if trace is None else trace.records[-1].cache_len


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    assert not at.exception, at.exception
    return at


def chart_spec(at: AppTest, title_start: str) -> dict:
    """The Plotly JSON of the chart whose title starts with ``title_start``."""
    for element in at.get("plotly_chart"):
        spec = json.loads(element.proto.spec)
        if spec["layout"]["title"]["text"].startswith(title_start):
            return spec
    raise AssertionError(f"no chart titled {title_start!r}")


def texts(elements) -> list[str]:
    return [element.value for element in elements]


def test_home_page_renders_with_its_controls():
    at = open_page()
    assert at.title[0].value == "Step through the KV cache"
    assert {key: at.button(key=key).label for key in BUTTONS} == BUTTONS
    assert any("Press **Prefill**" in text for text in texts(at.info))
    assert not at.error
    # The model card in the sidebar names the geometry of the cache.
    card = " ".join(texts(at.sidebar.markdown))
    assert "| layers | 4 |" in card and "| KV heads | 2 (GQA, 2 query heads each) |" in card


def test_prefill_then_next_token_grows_the_cache_by_exactly_one_position():
    at = click(open_page(), "prefill")
    prompt_tokens = cache_len(at)
    assert prompt_tokens == len("What is the capital of France?")  # the tiny models' tokenizer is byte-level
    assert len(chart_spec(at, "What does every layer")["data"][0]["x"]) == prompt_tokens

    click(at, "next")
    assert cache_len(at) == prompt_tokens + 1
    # The K/V strip has one more column, and it is the one framed as appended this step.
    spec = chart_spec(at, "What does every layer")
    assert len(spec["data"][0]["x"]) == prompt_tokens + 1
    frame = spec["layout"]["shapes"][0]
    assert (frame["x0"], frame["x1"]) == (prompt_tokens - 0.5, prompt_tokens + 0.5)
    status = next(text for text in texts(at.markdown) if "tokens in the cache" in text)
    assert status.startswith(f"**step 1** · {prompt_tokens + 1} tokens in the cache")
    assert any("same token" in text for text in texts(at.markdown))  # the match badge


def test_reset_empties_the_cache():
    at = click(click(click(open_page(), "prefill"), "next"), "reset")
    assert session(at).trace is None and cache_len(at) == 0
    assert not at.get("plotly_chart")
    assert any("Press **Prefill**" in text for text in texts(at.info))


def test_play_generates_the_asked_number_of_tokens_and_stops():
    at = click(open_page(), "prefill")
    before = cache_len(at)
    at.number_input(key="play_tokens").set_value(3).run()
    click(at, "play")
    assert cache_len(at) == before + 3
    assert session(at).play_remaining == 0


def test_naive_comparison_can_be_turned_off():
    at = click(open_page(compare=False), "prefill")
    click(at, "next")
    assert session(at).trace.records[-1].ms_naive is None
    assert any("naive comparison off" in text for text in texts(at.markdown))


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"prompt": "   "}, "The prompt is empty"),
        ({"prompt": "x" * 1100}, "exceeds the model's context of 1024 tokens"),
    ],
)
def test_bad_prompt_shows_the_engines_message(state, expected):
    at = click(open_page(**state), "prefill")
    assert any(expected in text for text in texts(at.error))
    assert session(at).trace is None
    assert at.button(key="prefill").label == "Prefill"  # the page is still there, ready for another try


def test_stepping_past_max_new_tokens_warns_and_keeps_the_trace():
    at = click(open_page(max_new_tokens=2), "prefill")
    click(at, "next")
    length = cache_len(at)
    click(at, "next")
    assert any("Reached the limit of 2 new tokens" in text for text in texts(at.warning))
    assert cache_len(at) == length
    # Raising the limit lets the same trace go on without a new prefill.
    at.number_input(key="max_new_tokens").set_value(3).run()
    click(at, "next")
    assert cache_len(at) == length + 1


def test_next_token_before_prefill_says_what_to_do():
    at = click(open_page(), "next")
    assert any("press Prefill first" in text for text in texts(at.warning))


def test_unknown_model_id_shows_an_error_and_the_page_stays_usable():
    at = open_page(model="other", model_other="no-such-model")
    assert any("Unknown model 'no-such-model'" in text for text in texts(at.sidebar.error))
    assert any("Choose a model that loads" in text for text in texts(at.info))
    at.sidebar.selectbox(key="model_choice").select("tiny-gpt2").run()
    assert not at.exception
    click(at, "prefill")
    assert cache_len(at) > 0


def test_a_model_that_fails_to_load_shows_why(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    at = open_page(model="other", model_other=str(folder))
    assert any("Could not load" in text for text in texts(at.sidebar.error))
    assert not at.exception


def test_changed_settings_ask_for_a_new_prefill():
    at = click(open_page(), "prefill")
    at.text_area(key="prompt").set_value("Another prompt").run()
    assert any("press Prefill to apply them" in text for text in texts(at.info))


def test_two_sessions_never_see_each_others_tokens():
    first, second = open_page(), open_page(prompt="A different prompt")
    click(first, "prefill")
    click(second, "prefill")
    click(first, "next")
    assert session(first).trace is not session(second).trace
    assert "".join(session(first).trace.token_texts()).startswith("What is the capital of France?")
    assert "".join(session(second).trace.token_texts()) == "A different prompt"
    assert cache_len(first) == len("What is the capital of France?") + 1
    assert cache_len(second) == len("A different prompt")


def test_token_chips_escape_html_and_mark_the_newest_token():
    at = click(click(open_page(prompt="<b>hi</b>"), "prefill"), "next")
    html = token_chips_html(session(at).trace)
    assert "<b>" not in html.split('<div class="kvviz-stream">')[1]
    assert html.count('class="kvviz-chip kvviz-newest"') == 2  # the legend's sample and the chosen token
    assert html.count("kvviz-appended") == 1 + 1 + 1  # the CSS rule, the legend's sample, the appended chip


def test_the_layer_slider_picks_the_attention_layer_shown():
    at = click(open_page(panel="Attention"), "prefill")
    assert "in layer 2?" in chart_spec(at, "Where does the newest token")["layout"]["title"]["text"]  # the middle
    at.slider(key="attention_layer_4").set_value(3).run()
    assert not at.exception
    assert "in layer 3?" in chart_spec(at, "Where does the newest token")["layout"]["title"]["text"]


def test_prefill_feeds_the_prompt_typed_just_before_the_click():
    at = open_page()
    at.text_area(key="prompt").set_value("Hello")
    at.button(key="prefill").click().run()
    assert not at.exception
    assert "".join(session(at).trace.token_texts()) == "Hello"


def test_sampling_settings_reach_the_stepper():
    at = click(open_page(sample=True, temperature=1.5, top_k=5, seed=7), "prefill")
    assert session(at).settings["sampling"] == Sampling(temperature=1.5, top_k=5, top_p=1.0, seed=7)


def test_the_sidebar_says_how_many_tokens_the_prompt_becomes():
    at = open_page(prompt="Hello")
    assert "5 tokens; the model's context holds 1,024." in texts(at.sidebar.caption)
    at.text_area(key="prompt").set_value("").run()
    assert "The prompt is empty: type a few words to start." in texts(at.sidebar.caption)


def chart_titles(at: AppTest) -> list[str]:
    specs = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    return [spec["layout"]["title"]["text"].split("<br>")[0] for spec in specs]


@pytest.mark.parametrize(
    ("panel", "charts"),
    [
        ("KV cache", ["What does every layer's cache hold?", "How much memory does the cache hold as it grows?"]),
        ("Attention", ["Where does the newest token", "Does every layer look at the same tokens?"]),
        ("Cost per step", ["How many tokens does each step push through the model?",
                           "How long does each new token take?", "How much time has each path spent generating?"]),
    ],
)
def test_only_the_open_tab_draws_its_charts(panel, charts):
    at = click(click(open_page(panel=panel), "prefill"), "next")
    titles = chart_titles(at)
    assert len(titles) == 1 + len(charts)
    assert all(title.startswith(start) for title, start in zip(titles, ["Which tokens could come next?", *charts]))


def test_past_the_attention_budget_the_attention_panel_says_capture_stopped(monkeypatch):
    from kvviz.ui import session as sessions

    at = click(open_page(panel="Attention"), "prefill")
    monkeypatch.setattr(sessions, "ATTENTION_BUDGET_BYTES", session(at).trace.attention_bytes() + 1)
    click(at, "next")
    click(at, "next")
    assert cache_len(at) == len("What is the capital of France?") + 2
    notes = [text for text in texts(at.info) if text.startswith("Attention capture stopped at")]
    assert len(notes) == 1 and "its limit of" in notes[0], texts(at.info)
    assert not at.error


def test_a_one_layer_model_from_a_folder_steps_and_draws_without_a_layer_slider(tmp_path):
    """A slider needs two ends: with one layer the page says which layer it shows instead."""
    from kvviz.models import byte_tokenizer, load_random_model, tiny_config

    config = tiny_config("tiny-llama")
    config.num_hidden_layers = 1
    loaded = load_random_model(config, "one-layer")
    folder = tmp_path / "one-layer-llama"
    loaded.model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    at = click(open_page(model="other", model_other=str(folder), panel="Attention"), "prefill")
    click(at, "next")
    assert not at.error and cache_len(at) > 0
    assert len(session(at).trace.records[-1].cache_layers) == 1
    assert "Layer 0, the model's only layer." in texts(at.caption)
    assert not any(slider.label == "Layer" for slider in at.slider)


def test_cost_panel_times_the_recording_apart_from_both_paths(monkeypatch):
    from kvviz.ui import session as sessions

    at = click(click(open_page(panel="Cost per step"), "prefill"), "next")
    metrics = {metric.label: metric.value for metric in at.metric}
    assert {"Decode time, cached", "Decode time, naive", "Recording for the charts"} <= set(metrics)
    latency = chart_spec(at, "How long does each new token take?")
    assert [trace["name"] for trace in latency["data"]] == [
        "naive recompute", "cached", "recording (apart)"]
    from kvviz.charts.step import latency_figure

    trace = session(at).trace
    figure = latency_figure(trace)  # the builder the page drew with: its y values are the records' own
    assert list(figure.data[1].y) == [trace.records[-1].ms] and list(figure.data[2].y) == [trace.records[-1].capture_ms]
    assert any("the naive call took" in text for text in texts(at.caption))
    # Past the attention budget the recording line ends; the page says why the cached line does not move.
    monkeypatch.setattr(sessions, "ATTENTION_BUDGET_BYTES", session(at).trace.attention_bytes() + 1)
    click(click(at, "next"), "next")
    assert any(text.startswith("Attention capture stopped at") and "never included the recording" in text
               for text in texts(at.caption))
