"""Drill records: questions, their options, links to the view that shows the answer, and grades.

Plain frozen dataclasses; they import neither torch, transformers nor Streamlit.
What it does not do: read the bank (``bank.py``), compute answers (``numeric.py``) or grade (``grading.py``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    """A page of the app (its url path, as Streamlit derives it from the file name) and the view on it.

    ``view`` names what to open there in words (a tab, a chart, an expander); ``query`` is a URL query string the
    page itself reads (the Step through page's ``tab=cost``), empty when the page reads none.
    """

    page: str
    view: str = ""
    query: str = ""

    @property
    def href(self) -> str:
        """A relative link from the Drills page: the default page is the app's root, the others ``./<page>``."""
        path = "./" if self.page == "step_through" else f"./{self.page}"
        return f"{path}?{self.query}" if self.query else path


@dataclass(frozen=True)
class Option:
    """One answer of a multiple-choice question, and why it is right or wrong."""

    text: str
    correct: bool
    explanation: str


@dataclass(frozen=True)
class ChoiceQuestion:
    """A conceptual question: several options, exactly one correct, every one explained."""

    id: str
    topic: str
    prompt: str
    options: tuple[Option, ...]
    link: Link
    misconception: str = ""  # the popular wrong belief the question confronts, when it confronts one

    @property
    def correct_index(self) -> int:
        return next(index for index, option in enumerate(self.options) if option.correct)


@dataclass(frozen=True)
class NumericTemplate:
    """A numeric question before its parameters are drawn.

    ``quantity`` names the formula in ``numeric.QUANTITIES`` that computes the answer; ``models`` are preset keys
    (``kv_configs.PRESETS``) or ``live`` (the model the page has loaded); ``parameters`` lists, per parameter, the
    values a seed draws from. ``prompt`` and ``explanation`` are format strings over the drawn values and the
    quantity's own fields (``{model}``, ``{geometry}``, ``{working}``, …).
    """

    id: str
    topic: str
    quantity: str
    prompt: str
    explanation: str
    unit: str  # the unit the answer is asked in (e.g. "MiB"); grading accepts any unit of the same kind
    tolerance: float  # relative
    models: tuple[str, ...]
    parameters: tuple[tuple[str, tuple[object, ...]], ...]
    link: Link
    misconception: str = ""


@dataclass(frozen=True)
class NumericQuestion:
    """A numeric question with its parameters drawn and its answer computed (in ``unit``)."""

    id: str
    topic: str
    prompt: str
    answer: float  # in ``unit``
    unit: str
    tolerance: float
    working: str  # the formula with the numbers in it
    explanation: str
    link: Link
    misconception: str = ""


Question = ChoiceQuestion | NumericQuestion
Template = ChoiceQuestion | NumericTemplate


@dataclass(frozen=True)
class Grade:
    """The verdict on one answer: ``answered`` False when nothing was given."""

    correct: bool
    answered: bool
    given: str  # the answer as the person gave it (an option's text for choices)
    expected: str  # the correct answer, in words
    message: str  # one sentence: why it is right or wrong
