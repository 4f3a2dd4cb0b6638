"""Lessons-page state and layout: one learner's progress through a lesson, and the hand-off to the other pages.

Each browser session keeps a ``LessonProgress``: the lesson's ``LessonState`` on the chosen model, the step it is
on, the snapshot taken when that step opened, and the checks passed so far. After every action the trace the lesson
built becomes the session's Step-through trace (``kvviz.ui.session``) and a serving run becomes the Serving page's
(``kvviz.ui.serving``), so a link opens that page in the state the lesson built; stepping there appends to the same
trace, and a Prefill there is adopted by the lesson, so **Check** can confirm a step done on another page.
What it does not do: decide what a step does or whether it passed (``kvviz/lessons``), or compute anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from kvviz.errors import KvvizError
from kvviz.lessons.catalogue import available_lessons
from kvviz.lessons.core import (
    Check,
    Lesson,
    LessonState,
    LessonStep,
    PageLink,
    Snapshot,
    snapshot,
)
from kvviz.lessons.paged import ARRIVE_EVERY, BLOCK_SIZE, NEW_TOKENS, REQUESTS
from kvviz.models import LoadedModel
from kvviz.ui import serving as serving_sessions
from kvviz.ui import session as sessions
from kvviz.ui.server import run_on_model

_KEY = "kvviz_lessons"
PAGES_DIR = Path(__file__).resolve().parents[2] / "app_pages"


@dataclass
class LessonProgress:
    """Where one learner is: the lesson, its step, the state as that step opened, and the checks passed so far."""

    state: LessonState | None = None
    lesson_key: str = ""
    step_index: int = 0
    opened: Snapshot | None = None
    passed: list[Check] = field(default_factory=list)
    current: Check | None = None  # the current step's latest check
    message: str | None = None  # an action's error, shown until the next action

    def step(self, lesson: Lesson) -> LessonStep | None:
        return lesson.steps[self.step_index] if self.step_index < len(lesson.steps) else None


def get_progress() -> LessonProgress:
    if _KEY not in st.session_state:
        st.session_state[_KEY] = LessonProgress()
    return st.session_state[_KEY]


def progress_model(progress: LessonProgress) -> str | None:
    """The model the learner's lessons run on (None before the first)."""
    return progress.state.loaded.key if progress.state is not None else None


def page_exists(name: str) -> bool:
    return (PAGES_DIR / f"{name}.py").is_file()


def lessons() -> list[Lesson]:
    return available_lessons(page_exists)


def open_lesson(progress: LessonProgress, lesson: Lesson, loaded: LoadedModel) -> None:
    """Start ``lesson`` at its first step; the state is kept across lessons unless the model changed."""
    if progress.state is None or progress.state.loaded is not loaded:
        progress.state = LessonState(loaded)
    progress.lesson_key = lesson.key
    progress.step_index = 0
    progress.passed = []
    progress.current = None
    progress.message = None
    progress.opened = snapshot(progress.state)


def adopt_session_trace(progress: LessonProgress) -> None:
    """Take over a trace the learner started on another page (a Prefill there) on the lesson's model."""
    session = sessions.get_session()
    state = progress.state
    if state is None or not session.started or session.trace is state.trace or session.model_key != state.loaded.key:
        return
    state.stepper, state.trace, state.settings = session.stepper, session.trace, dict(session.settings)


def run_action(progress: LessonProgress, step: LessonStep) -> None:
    """The step's action, then its check; an engine error becomes the progress's message."""
    progress.message = None
    state = progress.state
    try:
        # One call in this session's turn on the model's worker (a lesson's action is a few steps or one short run).
        run_on_model(state.loaded, sessions.get_session().id, lambda: step.action(state), "lesson")
    except KvvizError as error:
        progress.message = str(error)
        return
    publish(progress.state)
    progress.current = step.check(progress.state, progress.opened)


def on_check(lesson: Lesson) -> None:
    """Check the live state again without acting: for a step the learner did on another page."""
    progress = get_progress()
    step = progress.step(lesson)
    if step is None or progress.state is None:
        return
    adopt_session_trace(progress)
    progress.current = step.check(progress.state, progress.opened)


def on_next(lesson: Lesson) -> None:
    progress = get_progress()
    if progress.current is None or not progress.current.passed:
        return
    progress.passed.append(progress.current)
    progress.step_index += 1
    progress.current = None
    progress.message = None
    progress.opened = snapshot(progress.state)


# ----- the hand-off to the other pages -------------------------------------------------------------------------

def publish(state: LessonState) -> None:
    """Make what the lesson built the session's own: its trace for the stepping pages, its runs for Serving."""
    trace_on_model = state.trace is not None and state.trace.model == state.loaded.card.name
    if trace_on_model and state.stepper is not None:
        session = sessions.get_session()
        session.model_key, session.settings = state.loaded.key, dict(state.settings)
        session.stepper, session.trace = state.stepper, state.trace
        session.play_remaining, session.message = 0, None
        # The Step-through sidebar shows what built the trace (as a share link would set it).
        st.session_state.update({
            "model_choice": state.loaded.key, "prompt": state.settings["prompt"],
            "chat_template": state.settings["chat_template"], "compare": state.settings["compare"], "sample": False,
            "max_new_tokens": state.settings["max_new_tokens"]})
    publish_serving(state)


def publish_serving(state: LessonState) -> None:
    results = state.results
    if not any(name in results for name in ("serving", "prefix", "prompt design")):
        return
    serving = serving_sessions.get_session()
    st.session_state["serving_model"] = state.loaded.key
    if "serving" in results:
        serving.scenario = results["serving"]
        serving.settings = serving_sessions.ScenarioSettings(
            model=state.loaded.key, requests=REQUESTS, new_tokens=NEW_TOKENS, block_size=BLOCK_SIZE,
            arrive_every=ARRIVE_EVERY)
        serving.sequential = results.get("sequential")
        serving.playing = False
        st.session_state.update({
            "serving_requests": REQUESTS, "serving_new_tokens": NEW_TOKENS, "serving_block_size": BLOCK_SIZE,
            "serving_arrive_every": ARRIVE_EVERY, "serving_pool": 0, "serving_sharing": True})
        st.session_state.pop(serving_sessions.VIEW_STEP_KEY, None)
    if "prefix" in results:
        comparison = results["prefix"]
        serving.prefix = comparison
        tokenizer = state.loaded.tokenizer
        text_a, text_b = results["prefix texts"]
        serving.prefix_texts = tuple([tokenizer.decode([t]) for t in tokenizer(text)["input_ids"]]
                                     for text in (text_a, text_b))
        st.session_state.update(serving_prefix_a=text_a, serving_prefix_b=text_b,
                                serving_prefix_block=comparison.shared.block_size)
    if "prompt design" in results:
        serving.design = results["prompt design"]
        st.session_state["serving_design_block"] = results["prompt design"].block_size


def open_view(link: PageLink, state: LessonState) -> None:
    """Before a link is drawn: the view it names becomes the one its page opens on."""
    if link.view is not None:
        key = {"step_through": "panel", "serving": "serving_tab"}.get(link.page)
        if key is not None:
            st.session_state[key] = link.view
    if link.focus is not None and link.focus in state.results:
        layer, head = state.results[link.focus]
        key = state.loaded.card.key
        st.session_state[f"attn-layer-{key}"], st.session_state[f"attn-head-{key}"] = layer, head


def show_link(link: PageLink, state: LessonState) -> None:
    if not page_exists(link.page):
        return
    open_view(link, state)
    st.page_link(f"app_pages/{link.page}.py", label=link.label, icon=":material/arrow_forward:")


# ----- layout ----------------------------------------------------------------------------------------------------

def show_lesson(lesson: Lesson, number: int) -> None:
    """The lesson's finished steps, the current one with its buttons and check, or the end."""
    progress = get_progress()
    state = progress.state
    st.subheader(f"Lesson {number}: {lesson.title}")
    st.caption(lesson.summary)
    if lesson.model_note:
        st.info(lesson.model_note, icon=":material/info:")
    for index, (done, result) in enumerate(zip(lesson.steps, progress.passed), start=1):
        with st.expander(f"Step {index}: {done.title} ✓"):
            st.markdown(done.text)
            st.success(result.sentence, icon=":material/check_circle:")
    step = progress.step(lesson)
    if step is None:
        st.success(f"Lesson complete: all {len(lesson.steps)} checks passed on the live model.",
                   icon=":material/task_alt:")
        st.button("Start this lesson again", key="lesson_restart", on_click=open_lesson,
                  args=(progress, lesson, state.loaded))
        return
    index = progress.step_index + 1
    with st.container(border=True):
        st.markdown(f"**Step {index} of {len(lesson.steps)}: {step.title}**")
        st.markdown(step.text)
        with st.container(horizontal=True):
            act = st.button(step.action_label, key="lesson_action", type="primary")
            st.button("Check", key="lesson_check", on_click=on_check, args=(lesson,),
                      help="Check the live state again, e.g. after doing this step on another page.")
        if act:
            with st.spinner(f"{step.action_label}…"):
                run_action(progress, step)
        if progress.message:
            st.error(progress.message)
        result = progress.current
        if result is None:
            return
        if not result.passed:
            st.warning(result.sentence, icon=":material/pending:")
            return
        st.success(result.sentence, icon=":material/check_circle:")
        with st.container(horizontal=True, vertical_alignment="center"):
            last = index == len(lesson.steps)
            st.button("Finish the lesson" if last else "Next step", key="lesson_next", on_click=on_next,
                      args=(lesson,))
            if step.link is not None:
                show_link(step.link, state)
