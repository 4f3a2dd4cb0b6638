"""The drill bank: topics and questions read from ``bank/*.toml``, checked as they are read.

``topics.toml`` lists the topics in order (key → title); every other file holds ``[[choice]]`` questions (options
in ``[[choice.options]]``, each with ``text``, ``correct`` and ``explanation``) and ``[[numeric]]`` templates
(``quantity``, ``unit``, ``tolerance``, ``models``, ``parameters``: name → values a seed draws from). Every entry
has an ``id``, a ``topic``, a ``prompt`` and a ``link`` (``page``, optional ``view`` and ``query``).

``load_bank`` refuses a malformed bank with an ``InputError`` naming the entry; ``bank_problems`` goes further
(links resolve, every template computes for every model it names) and is what the tests run.
What it does not do: draw parameters (``numeric.py``) or pick a set (``mock.py``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from kvviz.drills.grading import UNITS
from kvviz.drills.links import link_problems
from kvviz.drills.records import ChoiceQuestion, Link, NumericTemplate, Option, Template
from kvviz.errors import InputError

BANK_DIR = Path(__file__).parent / "bank"


@dataclass(frozen=True)
class Bank:
    topics: dict[str, str]  # key -> title, in the order the page lists them
    entries: tuple[Template, ...]

    def by_id(self, question_id: str) -> Template:
        return next(entry for entry in self.entries if entry.id == question_id)

    def in_topic(self, topic: str) -> list[Template]:
        return [entry for entry in self.entries if entry.topic == topic]

    def topic_counts(self) -> dict[str, int]:
        return {topic: len(self.in_topic(topic)) for topic in self.topics}


def _require(entry: dict[str, Any], name: str, where: str) -> Any:
    if name not in entry or entry[name] in ("", [], {}):
        raise InputError(f"{where}: '{name}' is missing or empty.")
    return entry[name]


def _link(entry: dict[str, Any], where: str) -> Link:
    link = _require(entry, "link", where)
    return Link(page=_require(link, "page", where), view=link.get("view", ""), query=link.get("query", ""))


def _choice(entry: dict[str, Any], where: str) -> ChoiceQuestion:
    options = tuple(Option(_require(o, "text", where), bool(o.get("correct", False)), _require(o, "explanation", where))
                    for o in _require(entry, "options", where))
    if len(options) < 2 or sum(option.correct for option in options) != 1:
        raise InputError(f"{where}: a choice needs at least two options and exactly one correct one.")
    return ChoiceQuestion(id=entry["id"], topic=entry["topic"], prompt=_require(entry, "prompt", where),
                          options=options, link=_link(entry, where), misconception=entry.get("misconception", ""))


def _numeric(entry: dict[str, Any], where: str) -> NumericTemplate:
    from kvviz.drills.numeric import QUANTITIES

    quantity = _require(entry, "quantity", where)
    if quantity not in QUANTITIES:
        raise InputError(f"{where}: unknown quantity '{quantity}' (known: {', '.join(QUANTITIES)}).")
    unit = _require(entry, "unit", where)
    if unit.lower() not in UNITS or UNITS[unit.lower()][0] != QUANTITIES[quantity][0]:
        raise InputError(f"{where}: '{unit}' is not a unit of {QUANTITIES[quantity][0]}.")
    tolerance = float(_require(entry, "tolerance", where))
    if not 0 < tolerance <= 0.1:
        raise InputError(f"{where}: the tolerance must be above 0 and at most 0.1 (10 %).")
    parameters = tuple((name, tuple(values)) for name, values in entry.get("parameters", {}).items())
    if any(not values for _, values in parameters):
        raise InputError(f"{where}: every parameter needs at least one value.")
    return NumericTemplate(
        id=entry["id"], topic=entry["topic"], quantity=quantity, prompt=_require(entry, "prompt", where),
        explanation=_require(entry, "explanation", where), unit=unit, tolerance=tolerance,
        models=tuple(_require(entry, "models", where)), parameters=parameters, link=_link(entry, where),
        misconception=entry.get("misconception", ""),
    )


def read_bank(folder: Path) -> Bank:
    """The bank in ``folder``; ``InputError`` for a file that is not TOML or an entry that is malformed."""
    try:
        topics = tomllib.loads((folder / "topics.toml").read_text(encoding="utf-8"))["topics"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as error:
        raise InputError(f"The drill bank's topics.toml cannot be read ({error}).") from None
    entries: list[Template] = []
    for path in sorted(folder.glob("*.toml")):
        if path.name == "topics.toml":
            continue
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise InputError(f"The drill file {path.name} is not valid TOML ({error}).") from None
        for kind, build in (("choice", _choice), ("numeric", _numeric)):
            for index, entry in enumerate(data.get(kind, [])):
                where = f"{path.name}, {kind} {entry.get('id', index)}"
                _require(entry, "id", where)
                if entry.get("topic") not in topics:
                    raise InputError(f"{where}: unknown topic '{entry.get('topic')}'.")
                entries.append(build(entry, where))
    ids = [entry.id for entry in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(f"The drill bank repeats the ids {', '.join(duplicates)}.")
    return Bank({key: value["title"] for key, value in topics.items()}, tuple(entries))


@lru_cache(maxsize=1)
def load_bank() -> Bank:
    """kvviz's own bank, read once per process (it is data shipped with the code)."""
    return read_bank(BANK_DIR)


def bank_problems(bank: Bank) -> list[str]:
    """Everything that would make a question wrong or unusable: links that do not resolve, models that are not
    presets, templates that fail to compute for a model or parameter they name. Empty when the bank is sound."""
    from kvviz.drills.numeric import LIVE, QUANTITIES, fill
    from kvviz.kv_configs import PRESETS

    presets = {preset.key for preset in PRESETS}
    problems = [f"{entry.id}: {problem}" for entry in bank.entries for problem in link_problems(entry.link)]
    for entry in bank.entries:
        if isinstance(entry, NumericTemplate):
            unknown = [model for model in entry.models if model != LIVE and model not in presets]
            problems += [f"{entry.id}: '{model}' is not a preset" for model in unknown]
            if entry.quantity not in QUANTITIES:
                problems.append(f"{entry.id}: unknown quantity")
            for seed in range(8):
                try:
                    fill(entry, seed)
                except Exception as error:  # noqa: BLE001 - any failure is a broken template: report it, keep checking
                    problems.append(f"{entry.id} (seed {seed}): {type(error).__name__}: {error}")
                    break
    return problems
