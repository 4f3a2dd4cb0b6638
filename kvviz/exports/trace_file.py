"""The trace file: a Step through trace as JSON (format ``kvviz-trace``, version 1), read back safely, and the check
of a replay against it.

A file holds what rebuilt the trace (built-in model, prompt, chat template, comparison, sampling with its seed, the
token limit), what it was measured on, and one object per model call with the ``kvviz.exports.table`` columns plus
the ids fed and the top candidates. Loading it does not show the recorded numbers: the page replays the settings
through the stepper and ``check_replay`` says whether the replayed tokens and cache lengths equal the recorded ones.
The format is documented in ``docs/trace-format.md``.

``read_trace_file`` accepts any bytes and either returns a validated ``TraceFile`` or raises ``InputError`` with one
sentence: too large, not UTF-8, not JSON, nested too deep, another format or version, a missing or mistyped field,
a value out of the page's range, a model that is not built in, or steps that do not follow from one another.
Fields it does not need are ignored, never evaluated.

What it does not do: run the model (the UI replays through ``kvviz.ui.session``), keep anything between calls, or
import Streamlit, torch or transformers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from kvviz.charts.style import token_label
from kvviz.errors import InputError
from kvviz.exports.table import step_row
from kvviz.kv_formula import format_bytes
from kvviz.records import Trace
from kvviz.share import LINK_MAX_STEPS, MAX_NEW_TOKENS_MAX, SEED_MAX, TEMPERATURE_MAX, TEMPERATURE_MIN, TOP_K_MAX

FORMAT = "kvviz-trace"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 8 * 2**20  # a 4,096-step trace with its candidates is about 5 MiB
MAX_PROMPT_CHARS = 200_000
MAX_FILE_STEPS = MAX_NEW_TOKENS_MAX  # the page's own limit on new tokens
# Loading a file replays its steps on the server before the page shows them: the same bound as a share link.
REPLAY_MAX_STEPS = LINK_MAX_STEPS
CANDIDATES_KEPT = 10


@dataclass(frozen=True)
class TraceSettings:
    """What built a trace, as the page's sidebar holds it. ``temperature`` 0 is greedy (then top_k and seed are 0)."""

    model: str  # a built-in model's registry key
    prompt: str
    chat_template: bool
    compare: bool
    temperature: float
    top_k: int
    seed: int
    max_new_tokens: int

    @property
    def sampling(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class RecordedStep:
    """What a replay is checked against, for one model call."""

    index: int
    kind: str  # "prefill" or "decode"
    new_ids: tuple[int, ...]  # the tokens this call added to the context
    token_id: int  # the token it chose
    token: str
    cache_len: int


@dataclass(frozen=True)
class TraceFile:
    """A read and validated trace file."""

    settings: TraceSettings
    measured_on: tuple[str, str, str]  # model name, device, dtype of the recording
    steps: tuple[RecordedStep, ...]  # the prefill, then the decode steps in order

    @property
    def decode_steps(self) -> int:
        return len(self.steps) - 1

    @property
    def replay_steps(self) -> int:
        """Decode steps a replay runs: all of them, up to ``REPLAY_MAX_STEPS``."""
        return min(self.decode_steps, REPLAY_MAX_STEPS)


def settings_of(model: str, settings: Mapping[str, Any]) -> TraceSettings:
    """The ``TraceSettings`` of a session's settings dict (prompt, chat_template, compare, sampling, max_new_tokens);
    ``sampling`` is anything with ``temperature``, ``top_k`` and ``seed`` (``kvviz.stepper.Sampling``)."""
    sampling = settings["sampling"]
    return TraceSettings(
        model=model, prompt=str(settings["prompt"]), chat_template=bool(settings["chat_template"]),
        compare=bool(settings["compare"]), temperature=float(sampling.temperature), top_k=int(sampling.top_k),
        seed=int(sampling.seed), max_new_tokens=int(settings["max_new_tokens"]),
    )


# ----- writing ------------------------------------------------------------------------------------------------------

def trace_to_dict(trace: Trace, settings: TraceSettings, created: datetime | None = None) -> dict[str, Any]:
    """The file's JSON object for ``trace``, built by ``settings``."""
    steps = []
    for record in trace.records:
        step = step_row(record)
        step["new_ids"] = list(record.new_ids)
        step["candidates"] = [{"token_id": c.token_id, "token": c.text, "probability": c.probability}
                              for c in record.candidates[:CANDIDATES_KEPT]]
        steps.append(step)
    when = (created or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": when.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "settings": {
            "model": settings.model, "prompt": settings.prompt, "chat_template": settings.chat_template,
            "compare": settings.compare,
            "sampling": {"temperature": settings.temperature, "top_k": settings.top_k, "seed": settings.seed},
            "max_new_tokens": settings.max_new_tokens,
        },
        "measured_on": {"model": trace.model, "device": trace.device, "dtype": trace.dtype},
        "prompt_tokens": trace.prompt_tokens,
        "token_ids": trace.token_ids(),
        "steps": steps,
    }


def trace_to_json(trace: Trace, settings: TraceSettings, created: datetime | None = None) -> str:
    # allow_nan=False: a reader in another language gets standard JSON (the records' numbers are finite).
    return json.dumps(trace_to_dict(trace, settings, created), ensure_ascii=False, allow_nan=False)


# ----- reading ------------------------------------------------------------------------------------------------------

class _Invalid(Exception):
    """A field's problem, as the end of the sentence that ``read_trace_file`` raises."""


def read_trace_file(data: bytes | str, models: Sequence[str]) -> TraceFile:
    """A trace file's bytes, validated; raises ``InputError`` with one sentence when they are not one.

    Args:
        data: the file's contents.
        models: the model keys a file may name (the built-in ones: a file must not make the server load whatever
            it names).
    """
    size = len(data.encode("utf-8") if isinstance(data, str) else data)
    if size > MAX_FILE_BYTES:
        raise InputError(f"That file is {format_bytes(size)}; a trace file may be at most "
                         f"{format_bytes(MAX_FILE_BYTES)}.")
    try:
        text = data if isinstance(data, str) else data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError("That file is not a kvviz trace: it is not UTF-8 text.") from None
    try:
        parsed = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise InputError(f"That file is not a kvviz trace: it is not JSON ({error.msg} at line {error.lineno}).") \
            from None
    except RecursionError:
        raise InputError("That file is not a kvviz trace: its JSON is nested too deeply.") from None
    except ValueError as error:  # NaN/Infinity, or an integer too long to convert
        raise InputError(f"That file is not a kvviz trace: {error}.") from None
    try:
        return _trace_file(parsed, models)
    except _Invalid as error:
        raise InputError(f"That file is not a usable kvviz trace: {error}.") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"it holds {name}, which standard JSON does not allow")


def _trace_file(parsed: Any, models: Sequence[str]) -> TraceFile:
    top = _object(parsed, "the file")
    if top.get("format") != FORMAT:
        raise _Invalid(f"its \"format\" is {_shown(top.get('format'))}, not \"{FORMAT}\"")
    version = top.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise _Invalid(f"its format_version is {_shown(version)}; this version of kvviz reads version "
                       f"{FORMAT_VERSION}")
    settings = _settings(_field(top, "settings", dict, "the file"), models)
    measured = _field(top, "measured_on", dict, "the file")
    measured_on = tuple(_text(measured, name, "measured_on", 200) for name in ("model", "device", "dtype"))
    raw_steps = _field(top, "steps", list, "the file")
    if not raw_steps:
        raise _Invalid("it has no steps (a trace starts with its prefill)")
    if len(raw_steps) > MAX_FILE_STEPS:
        raise _Invalid(f"it has {len(raw_steps):,} steps; a trace holds at most {MAX_FILE_STEPS:,}")
    steps = tuple(_step(raw, position) for position, raw in enumerate(raw_steps))
    for previous, step in zip(steps, steps[1:]):
        if step.new_ids != (previous.token_id,):
            raise _Invalid(f"step {step.index} feeds {list(step.new_ids)}, but step {previous.index} chose "
                           f"{previous.token_id}: the steps do not follow from one another")
    return TraceFile(settings=settings, measured_on=measured_on, steps=steps)  # type: ignore[arg-type]


def _settings(raw: dict[str, Any], models: Sequence[str]) -> TraceSettings:
    where = "settings"
    model = _text(raw, "model", where, 200)
    if model not in models:
        raise _Invalid(f"it was recorded on {_shown(model)}, and a trace file opens the built-in models only "
                       f"({', '.join(models)})")
    prompt = _text(raw, "prompt", where, MAX_PROMPT_CHARS)
    if not prompt.strip():
        raise _Invalid("its prompt is empty")
    sampling = _field(raw, "sampling", dict, where)
    temperature = _number(sampling, "temperature", "settings.sampling")
    if temperature != 0 and not TEMPERATURE_MIN <= temperature <= TEMPERATURE_MAX:
        raise _Invalid(f"its temperature {temperature:g} is neither 0 (greedy) nor between {TEMPERATURE_MIN:g} and "
                       f"{TEMPERATURE_MAX:g}")
    return TraceSettings(
        model=model, prompt=prompt, chat_template=_field(raw, "chat_template", bool, where),
        compare=_field(raw, "compare", bool, where), temperature=temperature,
        top_k=_whole(sampling, "top_k", "settings.sampling", 0, TOP_K_MAX),
        seed=_whole(sampling, "seed", "settings.sampling", 0, SEED_MAX),
        max_new_tokens=_whole(raw, "max_new_tokens", where, 1, MAX_NEW_TOKENS_MAX),
    )


def _step(raw: Any, position: int) -> RecordedStep:
    where = f"steps[{position}]"
    step = _object(raw, where)
    kind = "prefill" if position == 0 else "decode"
    if step.get("kind") != kind:
        raise _Invalid(f"{where}.kind is {_shown(step.get('kind'))}, expected \"{kind}\"")
    index = _whole(step, "index", where, 0, MAX_FILE_STEPS)
    if index != position:
        raise _Invalid(f"{where}.index is {index}, expected {position}")
    new_ids = _field(step, "new_ids", list, where)
    if not new_ids or (kind == "decode" and len(new_ids) != 1):
        raise _Invalid(f"{where}.new_ids holds {len(new_ids)} ids; a prefill feeds at least one, a decode step one")
    if any(type(token) is not int or token < 0 for token in new_ids):
        raise _Invalid(f"{where}.new_ids holds something other than token ids (whole numbers from 0)")
    return RecordedStep(
        index=index, kind=kind, new_ids=tuple(new_ids), token_id=_whole(step, "token_id", where, 0, None),
        token=_text(step, "token", where, 10_000), cache_len=_whole(step, "cache_len", where, 0, None),
    )


_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", bool: "true or false"}


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"{where} is not a JSON object")
    return value


def _field(raw: dict[str, Any], name: str, kind: type, where: str) -> Any:
    if name not in raw:
        raise _Invalid(f"{where} has no \"{name}\"")
    value = raw[name]
    if type(value) is not kind:
        raise _Invalid(f"{where}.{name} is not {_TYPE_NAMES[kind]}")
    return value


def _text(raw: dict[str, Any], name: str, where: str, limit: int) -> str:
    value = _field(raw, name, str, where)
    if len(value) > limit:
        raise _Invalid(f"{where}.{name} is longer than {limit:,} characters")
    return value


def _whole(raw: dict[str, Any], name: str, where: str, low: int, high: int | None) -> int:
    if name not in raw:
        raise _Invalid(f"{where} has no \"{name}\"")
    value = raw[name]
    if type(value) is not int:  # bool is an int subclass: excluded on purpose
        raise _Invalid(f"{where}.{name} is not a whole number")
    if value < low or (high is not None and value > high):
        bound = f"between {low:,} and {high:,}" if high is not None else f"at least {low:,}"
        raise _Invalid(f"{where}.{name} is {value:,}; it must be {bound}")
    return value


def _number(raw: dict[str, Any], name: str, where: str) -> float:
    if name not in raw:
        raise _Invalid(f"{where} has no \"{name}\"")
    value = raw[name]
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _Invalid(f"{where}.{name} is not a number")
    return float(value)


_PLAIN = re.compile(r'^[A-Za-z0-9 ._/"+-]*$')


def _shown(value: Any) -> str:
    """A value from the file, quoted in a message only when it is short plain text (a file must not be able to put
    markup into the page's messages); otherwise only what kind of value it is."""
    if isinstance(value, (str, int, float, bool, type(None))):
        text = json.dumps(value)
        if len(text) <= 60 and _PLAIN.match(text):
            return text
        return "a string" if isinstance(value, str) else "a number"
    return type(value).__name__


# ----- checking a replay --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReplayCheck:
    """How a replayed trace compares with the file it replayed."""

    compared: int  # model calls compared (the prefill and the replayed steps)
    recorded: int  # model calls in the file
    first_difference: int | None  # index of the first call whose tokens or cache length differ; None if none did
    detail: str  # what differed there, or ""

    @property
    def same(self) -> bool:
        return self.first_difference is None and self.compared == min(self.recorded, REPLAY_MAX_STEPS + 1)


def check_replay(recorded: TraceFile, replayed: Trace) -> ReplayCheck:
    """Compare each replayed call with the recorded one: the tokens it added, the token it chose, the cache length."""
    compared = min(len(recorded.steps), len(replayed.records))
    for want, got in zip(recorded.steps, replayed.records):
        name = "the prefill" if want.kind == "prefill" else f"step {want.index}"
        detail = ""
        if tuple(got.new_ids) != want.new_ids:
            detail = (f"{name} fed {len(got.new_ids)} tokens where the file has {len(want.new_ids)}"
                      if len(got.new_ids) != len(want.new_ids) else f"{name} fed other token ids than the file")
        elif got.token_id != want.token_id:
            detail = (f"{name} chose token id {got.token_id} ({token_label(got.token_text)}) where the file has "
                      f"id {want.token_id}")
        elif got.cache_len != want.cache_len:
            detail = f"{name} left {got.cache_len} tokens in the cache where the file has {want.cache_len}"
        if detail:
            return ReplayCheck(compared, len(recorded.steps), want.index, detail)
    return ReplayCheck(compared, len(recorded.steps), None, "")


def replay_message(recorded: TraceFile, check: ReplayCheck, file_name: str) -> str:
    """The sentences the page shows after a replay."""
    steps = recorded.replay_steps
    replayed = "the prefill" + ("" if steps == 0 else f" and {steps} step{'' if steps == 1 else 's'}")
    parts = [f"Loaded {file_name}: replayed {replayed} on this server."]
    if recorded.decode_steps > steps:
        parts.append(f"The file holds {recorded.decode_steps:,} steps; loading replays at most {REPLAY_MAX_STEPS}, "
                     f"so the page stops at step {steps}.")
    if check.first_difference is not None:
        parts.append(f"The replay differs from the file: {check.detail}. The page shows the replay.")
    elif check.compared < min(check.recorded, steps + 1):
        parts.append(f"The replay stopped after {check.compared} of the file's calls.")
    else:
        last = recorded.steps[check.compared - 1]
        parts.append(f"Every replayed token equals the recorded one, and so does the cache length ({last.cache_len:,} "
                     "tokens).")
    parts.append(f"Timings are this replay's; the file keeps those measured on {recorded.measured_on[0]} · "
                 f"{recorded.measured_on[1]} · {recorded.measured_on[2]}.")
    return " ".join(parts)
