"""The lessons in the order a learner takes them, and which of them can be shown now.

A lesson that uses a page declares it (``Lesson.needs_page``); ``available_lessons`` leaves out those whose page
is not built yet, so no lesson links to a page that does not exist. What it does not do: run or draw a lesson.
"""

from __future__ import annotations

from collections.abc import Callable

from kvviz.lessons.core import Lesson
from kvviz.lessons.costs_and_bytes import LESSON_BYTES, LESSON_COST
from kvviz.lessons.matrix import LESSON_MATRIX
from kvviz.lessons.paged import LESSON_PAGED, LESSON_PREFIX
from kvviz.lessons.policies import LESSON_POLICIES
from kvviz.lessons.prefill_and_decode import LESSON_ONE_STEP, LESSON_PREFILL
from kvviz.lessons.windows import LESSON_WINDOWS

LESSONS: tuple[Lesson, ...] = (
    LESSON_PREFILL, LESSON_ONE_STEP, LESSON_COST, LESSON_BYTES, LESSON_MATRIX, LESSON_PAGED, LESSON_PREFIX,
    LESSON_POLICIES, LESSON_WINDOWS,
)


def available_lessons(page_exists: Callable[[str], bool]) -> list[Lesson]:
    """The lessons whose declared page exists (``page_exists`` answers for a page's name)."""
    return [lesson for lesson in LESSONS if lesson.needs_page is None or page_exists(lesson.needs_page)]


def lesson_by_key(key: str) -> Lesson:
    return next(lesson for lesson in LESSONS if lesson.key == key)
