"""A seed's question set and the mock interview: 10 questions from 10 topics, a time limit, a score and a review.

The same seed gives the same questions with the same numbers to everyone (a class opens one link), and the seed
travels in the URL as ``?seed=N``; ``parse_seed`` reads it and never raises: anything else becomes a message and a
valid seed.

What it does not do: keep time or answers between reruns (``kvviz/ui/drills.py`` does, per browser session).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from kvviz.drills.bank import Bank
from kvviz.drills.grading import grade
from kvviz.drills.numeric import LiveModel, fill
from kvviz.drills.records import (
    Grade,
    NumericTemplate,
    Question,
    Template,
)

MOCK_QUESTIONS = 10
MOCK_SECONDS = 15 * 60
SEED_MAX = 2**31 - 1


def realise(entry: Template, seed: int, live: LiveModel | None = None) -> Question:
    """A bank entry as asked under ``seed``: a choice as it is, a numeric template with its parameters drawn."""
    return fill(entry, seed, live) if isinstance(entry, NumericTemplate) else entry


def topic_questions(bank: Bank, topic: str, seed: int, live: LiveModel | None = None) -> list[Question]:
    """Every question of ``topic`` as ``seed`` asks it, in the bank's order."""
    return [realise(entry, seed, live) for entry in bank.in_topic(topic)]


def mock_ids(bank: Bank, seed: int, count: int = MOCK_QUESTIONS) -> list[str]:
    """The ids of the mock interview of ``seed``: one question from each of ``count`` topics drawn at random (all
    topics, then a second round, when there are fewer), in a seeded order."""
    rng = random.Random(f"mock/{seed}")
    topics = list(bank.topics)
    rng.shuffle(topics)
    chosen: list[str] = []
    pools = {topic: [entry.id for entry in bank.in_topic(topic)] for topic in topics}
    for pool in pools.values():
        rng.shuffle(pool)
    while len(chosen) < min(count, len(bank.entries)):
        for topic in topics:
            if pools[topic] and len(chosen) < count:
                chosen.append(pools[topic].pop())
    return chosen


def mock_questions(bank: Bank, seed: int, live: LiveModel | None = None) -> list[Question]:
    return [realise(bank.by_id(question_id), seed, live) for question_id in mock_ids(bank, seed)]


@dataclass(frozen=True)
class ReviewItem:
    """One question of a finished interview with its grade (the review lists the missed ones)."""

    number: int  # 1-based, in the interview's order
    question: Question
    grade: Grade


@dataclass(frozen=True)
class MockResult:
    seed: int
    items: tuple[ReviewItem, ...]
    seconds: float  # time taken, capped at the limit
    timed_out: bool

    @property
    def score(self) -> int:
        return sum(item.grade.correct for item in self.items)

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def missed(self) -> list[ReviewItem]:
        return [item for item in self.items if not item.grade.correct]

    def sentence(self) -> str:
        minutes, seconds = divmod(round(self.seconds), 60)
        unanswered = sum(not item.grade.answered for item in self.items)
        text = f"Score: {self.score} / {self.total} in {minutes}:{seconds:02d}"
        if self.timed_out:
            text += " (time ran out)"
        if unanswered:
            text += f"; {unanswered} left unanswered"
        return text + "."


def score_mock(seed: int, questions: Sequence[Question], answers: Sequence[str | int | None], seconds: float,
               limit: float = MOCK_SECONDS) -> MockResult:
    """Grades every answer (None: not answered) against its question, in order."""
    items = tuple(ReviewItem(number, question, grade(question, answer))
                  for number, (question, answer) in enumerate(zip(questions, answers), start=1))
    return MockResult(seed, items, min(seconds, limit), seconds >= limit)


def parse_seed(value: str | Sequence[str] | None, fallback: int) -> tuple[int, str]:
    """The seed a URL asks for, or ``fallback`` and the reason when it gives none that is usable."""
    if value is None:
        return fallback, ""
    text = value if isinstance(value, str) else (str(value[-1]) if value else "")
    try:
        seed = int(text.strip())
    except ValueError:
        return fallback, f"seed={text!r} in the link is not a whole number: showing the set of seed {fallback}."
    if not 0 <= seed <= SEED_MAX:
        return fallback, (f"seed={text} in the link is outside 0 to {SEED_MAX:,}: showing the set of seed "
                          f"{fallback}.")
    return seed, ""
