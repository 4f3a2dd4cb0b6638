"""Lessons: short guided paths through the KV cache, each step an action on the live model and a check of its state.

Layout only. The lessons and their checks live in ``kvviz.lessons``; the learner's progress and the hand-off to the
other pages (a lesson's trace becomes the session's, so its links open them in that state) in ``kvviz.ui.lessons``.
"""

import streamlit as st

from kvviz.models import DEFAULT_MODEL, REGISTRY
from kvviz.ui import lessons as ui
from kvviz.ui.resources import model_or_stop

st.title("Lessons")
st.caption(
    "Each lesson is a few steps. A step says what to look for, does one thing on the live model when you press its "
    "button, then checks the model's state before you move on. Every number in a check is read from that state or "
    "computed from it with the app's tested formulas. "
    "The links open the page a step uses, showing what the lesson built."
)

progress = ui.get_progress()
models = [key for key in REGISTRY if key != "gpt2-medium"]  # architecture only: random weights, slow on a CPU
# Coming back from a page a lesson linked to, the widgets start afresh: they reopen on the learner's model and lesson.
model_index = models.index(ui.progress_model(progress) or DEFAULT_MODEL)
left, right = st.columns([1, 2])
model_key = left.selectbox("Model", models, index=model_index, key="lessons_model",
                           help="SmolLM2 is the real default model; the tiny models are random and instant.")
loaded = model_or_stop(model_key)

available = ui.lessons()
keys = [lesson.key for lesson in available]
numbers = {lesson.key: number for number, lesson in enumerate(available, start=1)}
chosen = right.selectbox("Lesson", keys, key="lessons_choice",
                         index=keys.index(progress.lesson_key) if progress.lesson_key in keys else 0,
                         format_func=lambda key: f"{numbers[key]}. {available[numbers[key] - 1].title}")
lesson = available[numbers[chosen] - 1]

if progress.lesson_key != lesson.key or progress.state is None or progress.state.loaded is not loaded:
    ui.open_lesson(progress, lesson, loaded)
ui.show_lesson(lesson, numbers[chosen])
