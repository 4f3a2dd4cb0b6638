"""Drills: interview practice on the KV cache, by topic or as a timed 10-question mock interview.

Layout only. The questions come from the bank in ``kvviz/drills/bank`` (numeric ones drawn from the seed and
computed by kvviz's formulas on the presets and the loaded model); the session's answers, seed and interview are
kept by ``kvviz.ui.drills``.
"""

import streamlit as st

from kvviz.drills.bank import load_bank
from kvviz.drills.mock import MOCK_QUESTIONS, MOCK_SECONDS, SEED_MAX, topic_questions
from kvviz.drills.numeric import LiveModel
from kvviz.errors import KvvizError
from kvviz.models import DEFAULT_MODEL, REGISTRY
from kvviz.ui import drills as ui
from kvviz.ui.resources import get_model

st.title("Drills — interview practice on the KV cache")
st.caption(
    "Conceptual questions are multiple choice, with a reason for every option; numeric ones are drawn from public "
    "model configs (the Memory page's presets) and the model loaded here, and their answers are computed by the "
    "same formulas the other pages use. Every answer links to the view that shows it. The seed is in the address: "
    "share the link and a whole class gets the same questions with the same numbers (on the same live model)."
)

try:
    bank = load_bank()
except KvvizError as error:
    st.error(str(error))
    st.stop()

link_message = ui.open_seed()
if link_message:
    st.warning(link_message)

with st.container(border=True):
    left, middle, right = st.columns([1, 1.4, 1.2])
    seed = left.number_input("Seed", min_value=0, max_value=SEED_MAX, step=1, key=ui.SEED_KEY,
                             help="The same seed gives the same questions and numbers to everyone.")
    st.session_state.setdefault("drills_model", DEFAULT_MODEL)
    model_key = middle.selectbox("Live model (numeric questions about it)", list(REGISTRY), key="drills_model")
    st.session_state.setdefault("drills_mode", "Practice")
    mode = right.segmented_control("Mode", ["Practice", "Mock interview"], key="drills_mode")
ui.sync_url(seed)
ui.keep_widgets()

try:
    loaded = get_model(model_key)
    live = LiveModel(loaded.spec, loaded.dtype_name)
except KvvizError as error:
    st.error(f"{error} The questions about the live model use the default model's public config in float32 instead.")
    live = None


def practice() -> None:
    titles = bank.topics
    counts = bank.topic_counts()
    topic = st.selectbox("Topic", list(titles), key="drills_topic",
                         format_func=lambda key: f"{titles[key]} ({counts[key]})")
    ui.keep_widgets(("drills_topic",))
    for question in topic_questions(bank, topic, seed, live):
        with st.container(border=True):
            ui.answer_widget(question, ui.answer_key("practice", question.id))
            st.button("Check", key=f"drills_check_{question.id}", on_click=ui.check_practice, args=(question,))
            verdict = ui.practice_grade(question)
            if verdict is not None:
                ui.show_answer(question, verdict)


@st.fragment(run_every=1.0)
def clock(mock: ui.MockSession) -> None:
    """The time left, redrawn every second; at zero the interview is graded as it stands."""
    if mock.result is not None:
        return
    left = mock.remaining()
    if left <= 0:
        ui.finish_mock()
        st.rerun()
    minutes, seconds = divmod(int(left), 60)
    st.markdown(f":material/timer: **{minutes}:{seconds:02d}** left")


def mock_interview() -> None:
    mock = ui.get_mock()
    if mock is None:
        st.markdown(f"{MOCK_QUESTIONS} questions from {MOCK_QUESTIONS} topics, {MOCK_SECONDS // 60} minutes, "
                    f"seed {seed}. You get a score and a review of what you missed at the end.")
        st.button("Start the mock interview", key="drills_mock_start", type="primary", on_click=ui.start_mock,
                  args=(bank, seed, live))
        return
    if mock.result is None:
        st.caption(f"Seed {mock.seed}. Answer what you can, then finish; unanswered questions count as missed.")
        clock(mock)
        ui.restore_widgets(ui.mock_keys(mock))
        for number, question in enumerate(mock.questions, start=1):
            with st.container(border=True):
                ui.answer_widget(question, ui.answer_key("mock", str(number)), number)
        ui.keep_widgets(ui.mock_keys(mock))
        st.caption(f"{ui.answered(ui.mock_keys(mock))} of {len(mock.questions)} answered")
        st.button("Finish and score", key="drills_mock_finish", type="primary", on_click=ui.finish_mock)
        return
    result = mock.result
    st.subheader(result.sentence())
    st.progress(result.score / result.total)
    if result.missed:
        st.markdown("**Review: what was missed**")
    else:
        st.success("Nothing missed.")
    for item in result.missed:
        with st.container(border=True):
            st.markdown(f"**{item.number}.** {item.question.prompt}")
            st.error(f"Your answer: {item.grade.given or '(none)'} · Correct: **{item.grade.expected}**")
            ui.show_answer(item.question, None)
    st.button("New interview", key="drills_mock_again", on_click=ui.clear_mock)


if mode == "Mock interview":
    mock_interview()
else:
    practice()
