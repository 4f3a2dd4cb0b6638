"""Grading: a numeric answer read with its unit and checked within a relative tolerance; a choice by its index.

Units come in kinds: bytes (bytes, B, KiB, MiB, GiB, TiB in powers of 1,024; kB, MB, GB, TB in powers of 1,000),
time (s, ms, µs), FLOPs (FLOP, kFLOP, MFLOP, GFLOP, TFLOP), and plain counts (tokens, sequences, ×). A bare number
is read in the unit the question asks for; a unit of another kind is a wrong answer that says so.

What it does not do: compute the expected answers (``numeric.py``) or remember what a person answered
(``kvviz/ui/drills.py``).
"""

from __future__ import annotations

import math
import re

from kvviz.drills.records import ChoiceQuestion, Grade, NumericQuestion, Question

# unit -> (kind, size in the kind's base unit)
UNITS: dict[str, tuple[str, float]] = {
    "bytes": ("bytes", 1), "byte": ("bytes", 1), "b": ("bytes", 1),
    "kib": ("bytes", 2**10), "mib": ("bytes", 2**20), "gib": ("bytes", 2**30), "tib": ("bytes", 2**40),
    "kb": ("bytes", 1e3), "mb": ("bytes", 1e6), "gb": ("bytes", 1e9), "tb": ("bytes", 1e12),
    "s": ("seconds", 1), "ms": ("seconds", 1e-3), "µs": ("seconds", 1e-6), "us": ("seconds", 1e-6),
    "flop": ("flops", 1), "flops": ("flops", 1), "kflop": ("flops", 1e3), "mflop": ("flops", 1e6),
    "gflop": ("flops", 1e9), "tflop": ("flops", 1e12),
    "tokens": ("tokens", 1), "token": ("tokens", 1),
    "sequences": ("sequences", 1), "sequence": ("sequences", 1),
    "blocks": ("blocks", 1), "block": ("blocks", 1),
    "×": ("ratio", 1), "x": ("ratio", 1), "times": ("ratio", 1),
}
_ANSWER = re.compile(r"^\s*([-+]?(?:\d[\d,_ ]*\.?\d*|\.\d+)(?:e[-+]?\d+)?)\s*([^\d\s].*)?$", re.IGNORECASE)


def unit_kind(unit: str) -> tuple[str, float]:
    """(kind, size) of a unit name, case-insensitive ('GiB' -> ('bytes', 2**30)); ValueError for an unknown one."""
    key = unit.strip().lower()
    if key not in UNITS:
        raise ValueError(f"unknown unit '{unit}'")
    return UNITS[key]


def read_number(text: str, unit: str) -> tuple[float | None, str]:
    """The answer ``text`` converted into ``unit``, or (None, why it cannot be read)."""
    match = _ANSWER.match(text.strip().replace("\u202f", " "))
    if not match:
        return None, f"'{text.strip()}' is not a number (write e.g. '1.5 {unit}')."
    number = float(re.sub(r"[,_ ]", "", match.group(1)))
    given_unit = (match.group(2) or "").strip() or unit
    kind, size = unit_kind(unit)
    try:
        given_kind, given_size = unit_kind(given_unit)
    except ValueError:
        return None, f"'{given_unit}' is not a unit this drill knows; answer in {unit}."
    if given_kind != kind:
        return None, f"'{given_unit}' measures {given_kind}, but the question asks for {kind} (answer in {unit})."
    return number * given_size / size, ""


def format_answer(value: float, unit: str) -> str:
    """'1,536 bytes', '2.5 GiB', '3.56 ×': four significant figures, grouped thousands."""
    if value == 0:
        text = "0"
    elif abs(value) >= 1000 or float(value).is_integer():
        text = f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 10_000 else f"{value:,.1f}"
    else:
        digits = max(0, 3 - math.floor(math.log10(abs(value))))
        text = f"{value:,.{digits}f}".rstrip("0").rstrip(".")
    return f"{text} {unit}"


def percent(share: float) -> str:
    """'1 %', '0.1 %': a relative tolerance as people write it."""
    return f"{share * 100:g} %"


def grade_numeric(question: NumericQuestion, text: str | None) -> Grade:
    expected = format_answer(question.answer, question.unit)
    if text is None or not text.strip():
        return Grade(False, False, "", expected, f"Not answered: {expected}.")
    value, problem = read_number(text, question.unit)
    if value is None:
        return Grade(False, True, text.strip(), expected, f"{problem} The answer is {expected}.")
    tolerance = question.tolerance * abs(question.answer)
    correct = abs(value - question.answer) <= tolerance
    if correct:
        return Grade(True, True, text.strip(), expected, f"Right: {expected} (within ±{percent(question.tolerance)}).")
    return Grade(False, True, text.strip(), expected,
                 f"Not quite: {format_answer(value, question.unit)} is off by more than {percent(question.tolerance)}; "
                 f"the answer is {expected}.")


def grade_choice(question: ChoiceQuestion, index: int | None) -> Grade:
    right = question.options[question.correct_index]
    if index is None:
        return Grade(False, False, "", right.text, f"Not answered: {right.text}")
    chosen = question.options[index]
    if chosen.correct:
        return Grade(True, True, chosen.text, right.text, f"Right. {chosen.explanation}")
    return Grade(False, True, chosen.text, right.text, f"Not this one: {chosen.explanation}")


def grade(question: Question, answer: str | int | None) -> Grade:
    """A choice is answered by an option's index, a numeric question by text ('1.5 GiB', '1536')."""
    if isinstance(question, ChoiceQuestion):
        return grade_choice(question, answer if isinstance(answer, int) else None)
    return grade_numeric(question, answer if isinstance(answer, str) else None)
