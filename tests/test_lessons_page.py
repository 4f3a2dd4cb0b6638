"""The Lessons page under AppTest on a tiny model: every lesson it shows runs to its end through its buttons, Next
stays hidden until a step's check passes, and the links open the other pages in the state the lesson built."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from kvviz.lessons.catalogue import lesson_by_key
from kvviz.ui.lessons import lessons as shown_lessons

ROOT = Path(__file__).resolve().parents[1]
PAGE = "app_pages/lessons.py"


def open_lessons(lesson: str | None = None, model: str = "tiny-llama") -> AppTest:
    """The app, switched to the Lessons page on ``model`` (chosen before the first run: SmolLM2 is never loaded)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.session_state["lessons_model"] = model
    if lesson is not None:
        at.session_state["lessons_choice"] = lesson
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    assert not at.exception, at.exception
    return at


def has_button(at: AppTest, key: str) -> bool:
    return any(button.key == key for button in at.button)


def test_the_page_lists_at_least_eight_lessons_with_their_numbers():
    at = open_lessons()
    options = at.selectbox(key="lessons_choice").options
    assert len(options) == len(shown_lessons()) >= 8
    assert options[0] == "1. What prefill puts in the cache"
    assert at.subheader[0].value == "Lesson 1: What prefill puts in the cache"


@pytest.mark.parametrize("key", [lesson.key for lesson in shown_lessons()])
def test_every_lesson_runs_to_its_end_through_the_page(key):
    lesson = lesson_by_key(key)
    at = open_lessons(key)
    for index, step in enumerate(lesson.steps, start=1):
        assert any(m.value == f"**Step {index} of {len(lesson.steps)}: {step.title}**" for m in at.markdown)
        assert not has_button(at, "lesson_next")
        at = click(at, "lesson_action")
        assert not at.error, [e.value for e in at.error]
        assert len(at.success) == index, [w.value for w in at.warning]  # the steps before, and this one
        at = click(at, "lesson_next")
    assert at.success[-1].value == f"Lesson complete: all {len(lesson.steps)} checks passed on the live model."


def test_check_without_the_action_warns_and_offers_no_next_step():
    at = click(open_lessons("one-step"), "lesson_check")
    assert at.warning[0].value == "No new prefill yet: press the button to feed the prompt."
    assert not has_button(at, "lesson_next")


def test_a_step_done_on_step_through_is_what_check_confirms():
    at = click(open_lessons("one-step"), "lesson_action")
    at = click(at, "lesson_next")  # step 2: add one token, done here on the Step-through page instead
    at.switch_page("app_pages/step_through.py").run()
    assert not at.exception
    at = click(at, "next")
    at.switch_page(PAGE).run()
    at = click(at, "lesson_check")
    assert at.success[-1].value.startswith("Every one of the 4 layers went from ")


def test_the_cost_lesson_opens_step_through_on_its_trace_and_its_cost_panel():
    at = open_lessons("cost")
    for _ in range(2):
        at = click(click(at, "lesson_action"), "lesson_next")
    session = at.session_state["kvviz_session"]
    steps = len(session.trace.records) - 1
    at.switch_page("app_pages/step_through.py").run()
    assert not at.exception
    status = next(m.value for m in at.markdown if m.value.startswith("**step "))
    assert status.startswith(f"**step {steps}** · {session.trace.records[-1].cache_len} tokens in the cache")
    assert at.session_state["panel"] == "Cost per step"
    assert not at.info  # the sidebar matches what built the trace: no "settings changed" note
    assert any(metric.label == "Decode time, naive" for metric in at.metric)


def test_the_paged_lesson_opens_serving_on_its_run():
    at = click(click(open_lessons("paged"), "lesson_action"), "lesson_next")
    at = click(at, "lesson_action")
    scenario = at.session_state["kvviz_lessons"].state.results["serving"]
    at.switch_page("app_pages/serving.py").run()
    assert not at.exception
    assert at.session_state["kvviz_serving"].scenario is scenario
    assert not any("changed" in info.value for info in at.info)
    assert any(m.value.startswith(f"Step {len(scenario.steps) - 1}: one forward pass fed") for m in at.markdown)


def test_the_sinks_step_opens_attention_on_the_head_it_found():
    at = open_lessons("matrix")
    for _ in range(4):
        at = click(click(at, "lesson_action"), "lesson_next") if _ < 3 else click(at, "lesson_action")
    layer, head = at.session_state["kvviz_lessons"].state.results["attention head"]
    at.switch_page("app_pages/attention.py").run()
    assert not at.exception
    assert at.selectbox(key="attn-layer-tiny-llama").value == layer
    assert at.selectbox(key="attn-head-tiny-llama").value == head
