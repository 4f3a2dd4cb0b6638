"""Share links: the pure encoding (kvviz.share) and the Step through page opened from a link (AppTest, tiny models).

A link must bring back the same tokens and the same cache length; a link with values the page cannot use must open
the nearest valid state with a message, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from streamlit.testing.v1 import AppTest

from kvviz.share import (
    LINK_MAX_STEPS,
    LinkState,
    parse_flag,
    query_to_state,
    state_to_query,
)
from kvviz.stepper import Sampling

MODELS = ["smollm2-135m", "tiny-llama", "tiny-gpt2"]
DEFAULTS = LinkState(model="smollm2-135m", prompt="What is the capital of France?")
APP = str(Path(__file__).resolve().parents[1] / "app.py")


# ----- the pure module ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("state", [
    LinkState(model="tiny-llama", prompt="Hello & good bye?", chat=False, steps=5),
    LinkState(model="tiny-gpt2", prompt="a=b\nc", steps=0, temperature=0.75, top_k=7, seed=123, compare=False),
    LinkState(model="smollm2-135m", prompt="Hi", steps=3, layer=2, tab="attention", present=True),
    LinkState(model="smollm2-135m", prompt="Hi"),  # no steps: the link fills in the settings only
])
def test_a_state_survives_the_trip_through_a_url(state):
    url = "/?" + urlencode(state_to_query(state))
    params = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    assert query_to_state(params, MODELS, DEFAULTS) == (state, [])


def test_greedy_links_carry_no_sampling_parameters_and_sampled_ones_carry_the_seed():
    greedy = state_to_query(LinkState(model="tiny-llama", prompt="x", steps=2, top_k=9, seed=4))
    assert greedy == {"model": "tiny-llama", "prompt": "x", "chat": "1", "steps": "2"}
    sampled = state_to_query(LinkState(model="tiny-llama", prompt="x", steps=2, temperature=1.5, top_k=9, seed=4))
    assert (sampled["temperature"], sampled["top_k"], sampled["seed"]) == ("1.5", "9", "4")


def test_an_empty_query_gives_the_defaults_without_messages():
    assert query_to_state({}, MODELS, DEFAULTS) == (DEFAULTS, [])


def test_a_repeated_parameter_counts_with_its_last_value():
    state, messages = query_to_state({"steps": ["2", "4"]}, MODELS, DEFAULTS)
    assert state.steps == 4 and not messages


@pytest.mark.parametrize(("params", "field", "expected", "message"), [
    ({"model": "gpt-17"}, "model", "smollm2-135m", "which links cannot open"),
    ({"model": "/etc/passwd"}, "model", "smollm2-135m", "which links cannot open"),
    ({"prompt": "   "}, "prompt", DEFAULTS.prompt, "prompt is empty"),
    ({"steps": "many"}, "steps", 0, "steps='many' in the link is not a number"),
    ({"steps": "-3"}, "steps", 0, "below 0"),
    ({"steps": "2.6"}, "steps", 3, "not a whole number: used 3"),
    ({"steps": "1e9"}, "steps", LINK_MAX_STEPS, f"a link replays at most {LINK_MAX_STEPS} steps"),
    ({"steps": "nan"}, "steps", 0, "not a number"),
    ({"temperature": "hot"}, "temperature", 0.0, "greedy decoding instead"),
    ({"temperature": "-1"}, "temperature", 0.0, "below 0"),
    ({"temperature": "9"}, "temperature", 2.0, "used 2"),
    ({"temperature": "0.01"}, "temperature", 0.05, "used 0.05"),
    ({"temperature": "0.73"}, "temperature", 0.75, "used 0.75"),
    ({"top_k": "5000"}, "top_k", 1000, "used 1000"),
    ({"seed": "x"}, "seed", 0, "used 0"),
    ({"seed": "-1"}, "seed", 0, "below 0"),
    ({"layer": "two"}, "layer", None, "left at its default"),
    ({"chat": "maybe"}, "chat", True, "neither 0 nor 1"),
    ({"tab": "secret"}, "tab", None, "not a panel of this page"),
    ({"colour": "red"}, "model", "smollm2-135m", "does not know in the link: colour"),
])
def test_a_value_the_page_cannot_use_becomes_the_nearest_valid_one_with_a_message(params, field, expected, message):
    state, messages = query_to_state(params, MODELS, DEFAULTS)
    assert getattr(state, field) == expected
    assert len(messages) == 1 and message in messages[0], messages


def test_good_values_beside_a_bad_one_are_kept():
    state, messages = query_to_state({"model": "tiny-gpt2", "steps": "oops", "chat": "0"}, MODELS, DEFAULTS)
    assert (state.model, state.steps, state.chat) == ("tiny-gpt2", 0, False)
    assert len(messages) == 1


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("0", False), ("x", False),
                                                 (None, False), (["0", "1"], True)])
def test_parse_flag(value, expected):
    assert parse_flag(value) is expected


# ----- the page opened from a link --------------------------------------------------------------------------------------

def open_link(query: dict[str, str], **state: object) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    at.query_params.update(query)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def trace_of(at: AppTest):
    return at.session_state["kvviz_session"].trace


def shown_link(at: AppTest) -> str:
    links = [code.value for code in at.code if "?model=" in code.value]
    assert len(links) == 1, [code.value for code in at.code]
    return links[0]


def warnings(at: AppTest) -> list[str]:
    return [element.value for element in at.warning]


def test_a_link_reproduces_the_tokens_and_cache_length_in_a_new_session():
    first = open_link({}, model_choice="tiny-llama", prompt="Once upon", sample=True, temperature=1.2, top_k=20,
                      seed=11)
    first.button(key="prefill").click().run()
    for _ in range(4):
        first.button(key="next").click().run()
    assert not first.exception
    original = trace_of(first)
    assert original.records[-1].cache_len == len("Once upon") + 4

    link = shown_link(first)
    query = dict(parse_qsl(urlsplit(link).query))
    assert query["steps"] == "4" and query["seed"] == "11" and query["model"] == "tiny-llama"
    assert first.query_params["steps"] in ("4", ["4"])  # the page's own URL carries the state too

    second = open_link(query)
    replayed = trace_of(second)
    assert replayed is not original
    assert replayed.token_ids() == original.token_ids()
    assert replayed.records[-1].token_id == original.records[-1].token_id
    assert replayed.records[-1].cache_len == original.records[-1].cache_len
    assert not warnings(second) and not second.error
    assert shown_link(second) == link  # and its own link is the same link
    # The replayed trace goes on like the original: the next token is the same on both.
    first.button(key="next").click().run()
    second.button(key="next").click().run()
    assert trace_of(second).token_ids() == trace_of(first).token_ids()
    assert trace_of(second).records[-1].cache_len == len("Once upon") + 5


def test_a_link_with_bad_values_opens_the_nearest_valid_state_and_says_why():
    at = open_link({"model": "no-such-model", "prompt": "Hi there", "steps": "lots", "temperature": "-2"},
                   model_choice="tiny-gpt2")
    assert any("which links cannot open" in text for text in warnings(at))
    assert any("steps='lots'" in text for text in warnings(at))
    assert any("temperature=-2" in text and "greedy" in text for text in warnings(at))
    assert not at.error
    # The page keeps the model it has, feeds the link's prompt, and stops after the prefill (steps=0), greedy.
    assert at.session_state["model_choice"] == "tiny-gpt2"
    trace = trace_of(at)
    assert "".join(trace.token_texts()) == "Hi there" and len(trace.records) == 1
    assert at.session_state["kvviz_session"].settings["sampling"] == Sampling()
    query = dict(parse_qsl(urlsplit(shown_link(at)).query))
    assert query == {"model": "tiny-gpt2", "prompt": "Hi there", "chat": "0", "steps": "0"}


def test_a_link_to_a_tiny_model_with_too_many_steps_for_its_context_stops_at_the_context():
    prompt = "x" * 1000  # the tiny models' byte tokenizer: 1,000 tokens of a 1,024-token context
    at = open_link({"model": "tiny-llama", "prompt": prompt, "chat": "0", "steps": "200", "compare": "0"})
    trace = trace_of(at)
    assert len(trace.records) - 1 == 24 and trace.records[-1].cache_len == 1024  # every step the context allows
    assert any("fit the model's context" in text for text in warnings(at))
    assert not at.error


def test_a_link_without_steps_fills_in_the_settings_and_waits_for_prefill():
    at = open_link({"model": "tiny-gpt2", "prompt": "Just settings", "chat": "0"})
    assert trace_of(at) is None
    assert at.text_area(key="prompt").value == "Just settings"
    assert at.session_state["model_choice"] == "tiny-gpt2"


def test_a_link_opens_the_attention_tab_at_its_layer():
    at = open_link({"model": "tiny-llama", "prompt": "Look here", "steps": "1", "tab": "attention", "layer": "3"})
    assert at.slider(key="attention_layer_4").value == 3
    query = dict(parse_qsl(urlsplit(shown_link(at)).query))
    assert (query["tab"], query["layer"]) == ("attention", "3")
    # A layer the model does not have becomes its last layer, with a message.
    at = open_link({"model": "tiny-llama", "prompt": "Look here", "steps": "1", "tab": "attention", "layer": "40"})
    assert at.slider(key="attention_layer_4").value == 3
    assert any("has 4 layers" in text for text in warnings(at))


# ----- presenter mode -------------------------------------------------------------------------------------------------

def presenter_css(at: AppTest) -> list[str]:
    return [element.proto.body for element in at.get("html") if "html { font-size" in element.proto.body]


def test_a_presenter_link_gives_the_step_buttons_their_shortcuts_and_injects_the_large_type():
    at = open_link({"model": "tiny-llama", "prompt": "Slides", "steps": "2", "present": "1"})
    shortcuts = {key: at.button(key=key).proto.shortcut for key in ("prefill", "next", "play", "stop", "reset")}
    assert shortcuts == {"prefill": "f", "next": "n", "play": "p", "stop": "s", "reset": "x"}  # as Streamlit stores them
    assert len(presenter_css(at)) == 1
    assert {json.loads(chart.proto.spec)["layout"]["font"]["size"] for chart in at.get("plotly_chart")} == {17}
    assert at.sidebar.toggle(key="present").value is True
    assert dict(parse_qsl(urlsplit(shown_link(at)).query))["present"] == "1"  # the link keeps presenter mode
    # The N shortcut is the Next token button: pressing it steps like a click.
    at.button(key="next").click().run()
    assert len(trace_of(at).records) - 1 == 3


def test_without_presenter_mode_there_are_no_shortcuts_and_no_presenter_css():
    at = open_link({"model": "tiny-llama", "prompt": "Slides", "steps": "0"})
    assert at.button(key="next").proto.shortcut == ""
    assert not presenter_css(at)
    assert all("font" not in json.loads(chart.proto.spec)["layout"] for chart in at.get("plotly_chart"))
    assert "present" not in dict(parse_qsl(urlsplit(shown_link(at)).query))
    at.sidebar.toggle(key="present").set_value(True).run()
    assert at.button(key="next").proto.shortcut == "n" and len(presenter_css(at)) == 1
    assert dict(parse_qsl(urlsplit(shown_link(at)).query))["present"] == "1"


def test_a_model_that_is_not_built_in_gets_no_link_and_the_page_says_why(tmp_path):
    from kvviz.models import byte_tokenizer, load_random_model, tiny_config

    folder = tmp_path / "local-llama"
    load_random_model(tiny_config("tiny-llama"), "local").model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    at = open_link({}, model_choice="other", model_other=str(folder))
    at.button(key="prefill").click().run()
    assert trace_of(at) is not None
    assert not [code for code in at.code if "?model=" in code.value]
    assert "Links open the built-in models only: choose one of them to get a link." in [c.value for c in at.caption]


def test_the_share_popover_says_when_a_trace_is_longer_than_a_link_replays(monkeypatch):
    from kvviz.ui import share_links

    monkeypatch.setattr(share_links, "LINK_MAX_STEPS", 1)
    at = open_link({"model": "tiny-llama", "prompt": "Long", "steps": "1"})
    at.button(key="next").click().run()
    assert dict(parse_qsl(urlsplit(shown_link(at)).query))["steps"] == "2"
    assert any("A link replays at most 1 steps, so this one opens at step 1 of 2." in caption.value
               for caption in at.caption)
