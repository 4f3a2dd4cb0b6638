"""Drills-page state: the seed read from (and written to) the URL, practice answers, and one mock interview per
browser session, with its clock.

A session's mock interview keeps its own questions (drawn when it starts), so changing the seed or the model while
it runs does not change what is being graded. Answers live in the widgets' session-state keys; ``finish_mock``
reads them and grades them with ``kvviz.drills.mock.score_mock``.
What it does not do: pick or grade questions itself (``kvviz.drills``), or lay anything out (``app_pages/drills.py``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

from kvviz.drills.bank import Bank
from kvviz.drills.grading import grade
from kvviz.drills.mock import (
    MOCK_SECONDS,
    SEED_MAX,
    MockResult,
    mock_questions,
    parse_seed,
    score_mock,
)
from kvviz.drills.numeric import LiveModel
from kvviz.drills.records import ChoiceQuestion, Grade, Question

SEED_KEY = "drills_seed"
_OPENED = "drills_link_read"
_MESSAGE = "drills_link_message"
_MOCK = "kvviz_drills_mock"
_PRACTICE = "kvviz_drills_practice"  # question id -> (the question as asked, the grade of its last check)


def answer_key(prefix: str, question_id: str) -> str:
    return f"drills_{prefix}_{question_id}"


WIDGET_KEYS = (SEED_KEY, "drills_model", "drills_mode", "drills_topic")
_KEPT = "kvviz_drills_kept"  # widget key -> its last value, kept where Streamlit does not drop it


def restore_widgets(keys: tuple[str, ...] = WIDGET_KEYS) -> None:
    """Put back the values Streamlit dropped: it forgets a widget's state after a run that does not draw it, so
    every visit to another page would reset the seed, the model and the interview's answers."""
    kept = st.session_state.setdefault(_KEPT, {})
    for key in keys:
        if key not in st.session_state and key in kept:
            st.session_state[key] = kept[key]


def keep_widgets(keys: tuple[str, ...] = WIDGET_KEYS) -> None:
    """Remember the widgets' current values (after they are drawn) for ``restore_widgets``."""
    kept = st.session_state.setdefault(_KEPT, {})
    for key in keys:
        if key in st.session_state:
            kept[key] = st.session_state[key]


def open_seed() -> str:
    """On this session's first run: the URL's seed (or a fresh one) into the seed widget's key; the message for a
    seed the page could not use ('' when it could)."""
    if not st.session_state.get(_OPENED):
        st.session_state[_OPENED] = True
        fresh = random.SystemRandom().randint(0, 999_999)
        seed, message = parse_seed(st.query_params.get_all("seed") or None, fresh)
        st.session_state[SEED_KEY] = seed
        st.session_state[_MESSAGE] = message
    restore_widgets()
    return str(st.session_state.get(_MESSAGE, ""))


def sync_url(seed: int) -> None:
    """Every run writes the seed in use into the URL, so the address bar is always a link to this set."""
    if st.query_params.get("seed") != str(seed):
        st.query_params["seed"] = str(seed)


def current_seed() -> int:
    value = st.session_state.get(SEED_KEY, 0)
    return int(value) if 0 <= int(value) <= SEED_MAX else 0


# ----- practice -------------------------------------------------------------------------------------------------

def practice_grade(question: Question) -> Grade | None:
    """The grade of the last check of ``question`` as it is asked now; None when another seed or model drew other
    numbers since (that grade was against them)."""
    checked = st.session_state.setdefault(_PRACTICE, {}).get(question.id)
    return checked[1] if checked is not None and checked[0] == question else None


def check_practice(question: Question) -> None:
    """Button callback: grade the answer in the question's widget and keep the grade for the page to show."""
    verdict = grade(question, st.session_state.get(answer_key("practice", question.id)))
    st.session_state.setdefault(_PRACTICE, {})[question.id] = (question, verdict)


# ----- mock interview -------------------------------------------------------------------------------------------

@dataclass
class MockSession:
    seed: int
    questions: list[Question]
    started: float  # time.monotonic() at the start
    limit: float = MOCK_SECONDS
    result: MockResult | None = None

    def elapsed(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.started

    def remaining(self, now: float | None = None) -> float:
        return max(0.0, self.limit - self.elapsed(now))


def get_mock() -> MockSession | None:
    return st.session_state.get(_MOCK)


def start_mock(bank: Bank, seed: int, live: LiveModel | None, clock: Callable[[], float] = time.monotonic) -> None:
    """Button callback: a new interview of ``seed``'s 10 questions, its answers cleared and its clock started."""
    questions = mock_questions(bank, seed, live)
    mock = MockSession(seed, questions, clock())
    kept = st.session_state.setdefault(_KEPT, {})
    for key in mock_keys(mock):
        st.session_state.pop(key, None)
        kept.pop(key, None)
    st.session_state[_MOCK] = mock


def mock_keys(mock: MockSession) -> tuple[str, ...]:
    return tuple(answer_key("mock", str(number)) for number in range(1, len(mock.questions) + 1))


def finish_mock(clock: Callable[[], float] = time.monotonic) -> None:
    """Button callback (and the timer's end): grade what was answered, once."""
    mock = get_mock()
    if mock is None or mock.result is not None:
        return
    restore_widgets(mock_keys(mock))  # answers given before a visit to another page
    answers = [st.session_state.get(key) for key in mock_keys(mock)]
    mock.result = score_mock(mock.seed, mock.questions, answers, mock.elapsed(clock()), mock.limit)


def clear_mock() -> None:
    st.session_state.pop(_MOCK, None)


# ----- shared widgets -------------------------------------------------------------------------------------------

def answer_widget(question: Question, key: str, number: int | None = None) -> None:
    """The question (numbered in an interview) and its answer input: one radio option per choice, nothing chosen at
    first, or a text box."""
    st.markdown(f"**{number}.** {question.prompt}" if number else question.prompt)
    label = "Your answer" + (f" to question {number}" if number else "")
    if isinstance(question, ChoiceQuestion):
        options = question.options
        st.radio(label, list(range(len(options))), index=None, key=key,
                 format_func=lambda index: options[index].text, label_visibility="collapsed")
    else:
        st.text_input(f"{label} (in {question.unit}; other units of the same kind are converted)", key=key,
                      placeholder=f"e.g. 12.5 {question.unit}")


def answered(keys: tuple[str, ...]) -> int:
    """How many of these answer widgets hold an answer."""
    values = [st.session_state.get(key) for key in keys]
    return sum(value is not None and str(value).strip() != "" for value in values)


def show_answer(question: Question, verdict: Grade | None) -> None:
    """The verdict (unless None), why every option is right or wrong (or the working), and the link to the view
    that shows it."""
    from kvviz.drills.links import describe

    if verdict is not None:
        (st.success if verdict.correct else st.error)(verdict.message)
    if isinstance(question, ChoiceQuestion):
        lines = [f"- {':green[:material/check_circle:]' if option.correct else ':red[:material/cancel:]'} "
                 f"**{option.text}** {option.explanation}"
                 for option in question.options]
        st.markdown("\n".join(lines))
    else:
        st.markdown(question.explanation)
    if question.misconception:
        st.caption(f"The misconception this confronts: “{question.misconception}”")
    st.markdown(f"See it in the app: [{describe(question.link)}]({question.link.href})")
