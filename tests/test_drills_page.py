"""The Drills page under AppTest on a tiny model: practice answers checked and explained, the mock interview's
10 questions, score and review, the seed in the URL, and bad query parameters turned into a message."""

from __future__ import annotations

import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

from kvviz.drills.bank import load_bank
from kvviz.drills.grading import format_answer
from kvviz.drills.mock import mock_questions
from kvviz.drills.numeric import LiveModel, fill
from kvviz.drills.records import ChoiceQuestion
from kvviz.models import load_model

PAGE = str(Path(__file__).parent.parent / "app_pages" / "drills.py")


def open_page(seed: str | None = "42", **state: object) -> AppTest:
    """The Drills page on tiny-llama (chosen before the first run, so the default model is never loaded here)."""
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["drills_model"] = "tiny-llama"
    for key, value in state.items():
        at.session_state[key] = value
    if seed is not None:
        at.query_params["seed"] = seed
    at.run()
    assert not at.exception, at.exception
    return at


def url_seed(at: AppTest) -> str:
    value = at.query_params["seed"]
    return value if isinstance(value, str) else value[-1]


def start_mock(seed: str = "42") -> AppTest:
    at = open_page(seed, drills_mode="Mock interview")
    at.button(key="drills_mock_start").click().run()
    assert not at.exception, at.exception
    return at


def live_questions(seed: int):
    loaded = load_model("tiny-llama", device="cpu", dtype="float32")
    return mock_questions(load_bank(), seed, LiveModel(loaded.spec, loaded.dtype_name))


def mock_prompts(at: AppTest) -> list[str]:
    """The numbered questions shown ('**3.** prompt'), in order."""
    return [m.value for m in at.markdown if re.match(r"^\*\*\d+\.\*\* ", m.value)]


def test_a_seed_in_the_url_is_used_and_kept_in_the_url():
    at = open_page("42")
    assert not at.warning
    assert at.number_input(key="drills_seed").value == 42
    assert url_seed(at) == "42"


def test_practice_checks_a_choice_and_explains_every_option():
    at = open_page(drills_topic="not_cached")
    question = load_bank().by_id("not-cached-query")
    at.radio(key="drills_practice_not-cached-query").set_value(question.correct_index).run()
    at.button(key="drills_check_not-cached-query").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == [f"Right. {question.options[question.correct_index].explanation}"]
    markdown = "\n".join(m.value for m in at.markdown)
    for option in question.options:
        assert option.explanation in markdown
    assert "[the Step through page: What is cached, what is not, and what it costs](./)" in markdown
    assert any("Q is cached." in c.value for c in at.caption)
    wrong = (question.correct_index + 1) % len(question.options)
    at.radio(key="drills_practice_not-cached-query").set_value(wrong).run()
    at.button(key="drills_check_not-cached-query").click().run()
    assert [e.value for e in at.error] == [f"Not this one: {question.options[wrong].explanation}"]


def test_practice_grades_a_numeric_answer_on_the_live_model_with_its_unit():
    at = open_page(drills_topic="decode_step")
    loaded = load_model("tiny-llama", device="cpu", dtype="float32")
    per_layer = loaded.spec.groups[0].kv_heads * loaded.spec.head_dim * 2 * 4  # K and V, float32
    at.text_input(key="drills_practice_num-live-layer-step").input(f"{per_layer / 1024} KiB").run()
    at.button(key="drills_check_num-live-layer-step").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == [f"Right: {format_answer(per_layer, 'bytes')} (within ±0.1 %)."]
    at.text_input(key="drills_practice_num-live-layer-step").input(f"{per_layer} ms").run()
    at.button(key="drills_check_num-live-layer-step").click().run()
    assert "measures seconds" in at.error[0].value
    # Another seed draws other numbers for the drawn questions: the old verdicts are not shown against them.
    at.button(key="drills_check_num-live-cache").click().run()
    assert len(at.error) == 2
    live = LiveModel(loaded.spec, loaded.dtype_name)
    template = load_bank().by_id("num-live-cache")
    other = next(seed for seed in range(43, 100) if fill(template, seed, live) != fill(template, 42, live))
    at.number_input(key="drills_seed").set_value(other).run()
    assert not at.exception and url_seed(at) == str(other)
    assert len(at.error) == 1 and "measures seconds" in at.error[0].value  # the unchanged question keeps its verdict


def test_the_mock_interview_asks_10_questions_and_scores_and_reviews_them():
    at = start_mock("42")
    questions = live_questions(42)
    assert len(questions) == 10
    assert len(at.radio) + len(at.text_input) == 10
    assert any(re.fullmatch(r":material/timer: \*\*1[45]:\d\d\*\* left", m.value) for m in at.markdown)
    # Right answers to the first three, wrong answers to the next two, nothing for the rest.
    for number, question in enumerate(questions[:5], start=1):
        key = f"drills_mock_{number}"
        if isinstance(question, ChoiceQuestion):
            index = question.correct_index if number <= 3 else (question.correct_index + 1) % len(question.options)
            at.radio(key=key).set_value(index)
        else:
            value = question.answer if number <= 3 else question.answer * 3 + 7
            at.text_input(key=key).input(f"{value} {question.unit}")
    at.run()
    assert "5 of 10 answered" in [c.value for c in at.caption]
    at.button(key="drills_mock_finish").click().run()
    assert not at.exception
    assert at.subheader[0].value.startswith("Score: 3 / 10 in 0:")
    assert at.subheader[0].value.endswith("; 5 left unanswered.")
    review = mock_prompts(at)
    assert [text.split(".")[0] for text in review] == [f"**{n}" for n in range(4, 11)]
    for number, question in enumerate(questions[3:], start=4):
        assert f"**{number}.** {question.prompt}" in review
    verdicts = [e.value for e in at.error]
    assert len(verdicts) == 7 and sum(v.startswith("Your answer: (none) · Correct: **") for v in verdicts) == 5
    for verdict, question in zip(verdicts, questions[3:]):
        expected = (question.options[question.correct_index].text if isinstance(question, ChoiceQuestion)
                    else format_answer(question.answer, question.unit))
        assert verdict.endswith(f"Correct: **{expected}**")
    at.button(key="drills_mock_again").click().run()
    assert at.button(key="drills_mock_start")


def test_the_same_seed_gives_the_same_interview_and_another_seed_another():
    first, again, other = start_mock("7"), start_mock("7"), start_mock("8")
    assert mock_prompts(first) == mock_prompts(again)
    assert len(mock_prompts(first)) == 10
    assert mock_prompts(first) != mock_prompts(other)
    assert mock_prompts(first) == [f"**{n}.** {q.prompt}" for n, q in enumerate(live_questions(7), start=1)]


def test_when_time_runs_out_the_interview_is_graded_as_it_stands():
    at = start_mock("42")
    mock = at.session_state["kvviz_drills_mock"]
    mock.started -= mock.limit + 1
    at.run()
    assert not at.exception
    assert at.subheader[0].value == "Score: 0 / 10 in 15:00 (time ran out); 10 left unanswered."


def test_bad_seeds_in_the_url_bring_a_message_and_a_valid_set():
    for bad, words in (("abc", "not a whole number"), ("-1", "outside"), ("12345678901234", "outside")):
        at = open_page(bad)
        assert len(at.warning) == 1 and words in at.warning[0].value
        seed = at.number_input(key="drills_seed").value
        assert 0 <= seed <= 999_999 and url_seed(at) == str(seed)
        assert f"showing the set of seed {seed}" in at.warning[0].value
        assert at.radio  # the first topic's questions are there


def test_without_a_seed_the_page_picks_one_and_puts_it_in_the_url():
    at = open_page(None)
    assert not at.warning
    assert url_seed(at) == str(at.number_input(key="drills_seed").value)
