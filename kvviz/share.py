"""Share links: the Step through page's state as URL query parameters, and back.

A link names a built-in model, the prompt, whether the chat template wraps it, how many decode steps follow the
prefill, the sampling settings (only when sampling, with its seed, so the tokens are reproducible), whether the naive
comparison runs, the open panel and attention layer, and presenter mode. Opening the link prefills the same prompt
and steps the same number of times, so the page shows the same tokens and the same cache length.

``state_to_query`` writes a ``LinkState`` as a dict of strings; ``query_to_state`` reads one back and never raises:
a value it cannot use becomes the nearest valid one plus a sentence saying what it did.

What it does not do: load models, count tokens or step anything (the context limit of a model is checked where the
model is, in ``kvviz.ui.share_links``), and it does not import Streamlit, torch or transformers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

# The page's widget ranges; its sidebar uses these constants, so a link and a widget can never disagree.
TEMPERATURE_MIN, TEMPERATURE_MAX, TEMPERATURE_STEP = 0.05, 2.0, 0.05
TOP_K_MAX = 1000
SEED_MAX = 2**31 - 1
MAX_NEW_TOKENS_MAX = 4096
# Opening a link replays every step on the server before the page shows it; this bounds that wait (on a 2-core
# CPU SmolLM2 takes ~60 ms per cached step, several times that with the naive comparison on).
LINK_MAX_STEPS = 256
PANELS = {  # link value -> tab label
    "cache": "KV cache", "attention": "Attention", "cost": "Cost per step", "surgery": "Cache surgery",
}

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
_KNOWN = {"model", "prompt", "chat", "steps", "temperature", "top_k", "seed", "compare", "layer", "tab", "present"}


@dataclass(frozen=True)
class LinkState:
    """What a link reproduces. ``steps`` None: fill in the settings only, without a prefill; 0: prefill only."""

    model: str
    prompt: str
    chat: bool = True
    steps: int | None = None
    temperature: float = 0.0  # 0 = greedy; otherwise sampled with top_k and seed
    top_k: int = 50
    seed: int = 0
    compare: bool = True
    layer: int | None = None  # the attention tab's layer; None = the page's default
    tab: str | None = None  # a key of PANELS; None = the page's default
    present: bool = False

    @property
    def sampling(self) -> bool:
        return self.temperature > 0


def state_to_query(state: LinkState) -> dict[str, str]:
    """The query parameters of a link to ``state``: the core ones always, the others only when they say something."""
    query = {"model": state.model, "prompt": state.prompt, "chat": _flag(state.chat)}
    if state.steps is not None:
        query["steps"] = str(state.steps)
    if state.sampling:
        query.update(temperature=f"{state.temperature:g}", top_k=str(state.top_k), seed=str(state.seed))
    if not state.compare:
        query["compare"] = "0"
    if state.tab is not None:
        query["tab"] = state.tab
    if state.layer is not None:
        query["layer"] = str(state.layer)
    if state.present:
        query["present"] = "1"
    return query


def query_to_state(params: Mapping[str, str | Sequence[str]], models: Sequence[str],
                   defaults: LinkState) -> tuple[LinkState, list[str]]:
    """The state a link asks for, and one sentence per value that was replaced by the nearest valid one.

    Args:
        params: the query parameters (a repeated parameter counts with its last value).
        models: the model names a link may open; anything else opens ``defaults.model``.
        defaults: the state of a page opened without parameters; a missing parameter keeps its default.
    Returns:
        (state, messages); messages is empty when every parameter was used as given.
    """
    values = {name: _last(value) for name, value in params.items()}
    messages: list[str] = []
    changes: dict[str, object] = {}

    unknown = sorted(set(values) - _KNOWN)
    if unknown:
        messages.append(f"Ignored what this page does not know in the link: {', '.join(unknown)}.")
    if "model" in values:
        if values["model"] in models:
            changes["model"] = values["model"]
        else:
            messages.append(f"The link asks for the model '{values['model']}', which links cannot open (they open "
                            f"{', '.join(models)}): showing {defaults.model} instead.")
    if "prompt" in values:
        if values["prompt"].strip():
            changes["prompt"] = values["prompt"]
        else:
            messages.append("The link's prompt is empty: showing the default prompt instead.")
    for name in ("chat", "compare", "present"):
        if name in values:
            flag = _parse_flag(values[name])
            if flag is None:
                messages.append(f"{name}={values[name]!r} in the link is neither 0 nor 1: kept "
                                f"{_flag(getattr(defaults, name))}.")
            else:
                changes[name] = flag
    if "steps" in values:
        changes["steps"] = _whole(values["steps"], "steps", 0, LINK_MAX_STEPS, 0, messages,
                                  too_high="a link replays at most {high} steps")
    if "temperature" in values:
        changes["temperature"] = _temperature(values["temperature"], messages)
    if "top_k" in values:
        changes["top_k"] = _whole(values["top_k"], "top_k", 0, TOP_K_MAX, defaults.top_k, messages)
    if "seed" in values:
        changes["seed"] = _whole(values["seed"], "seed", 0, SEED_MAX, defaults.seed, messages)
    if "layer" in values:
        changes["layer"] = _whole(values["layer"], "layer", 0, None, None, messages)
    if "tab" in values:
        if values["tab"] in PANELS:
            changes["tab"] = values["tab"]
        else:
            messages.append(f"tab={values['tab']!r} in the link is not a panel of this page (they are "
                            f"{', '.join(PANELS)}): showing the default panel.")
    return replace(defaults, **changes), messages


def parse_flag(value: str | Sequence[str] | None) -> bool:
    """A 0/1 parameter (also true/false, yes/no, on/off) as a bool; anything else, or nothing, is False."""
    return bool(_parse_flag(_last(value))) if value is not None else False


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _last(value: str | Sequence[str]) -> str:
    if isinstance(value, str):
        return value
    return str(value[-1]) if value else ""


def _parse_flag(text: str) -> bool | None:
    lowered = text.strip().lower()
    return True if lowered in _TRUE else False if lowered in _FALSE else None


def _whole(text: str, name: str, low: int, high: int | None, fallback: int | None, messages: list[str],
           too_high: str = "the most is {high}") -> int | None:
    """A whole number in [low, high]; out of range: the nearest end; not a number: ``fallback``; each with a message."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        kept = "left at its default" if fallback is None else f"used {fallback}"
        messages.append(f"{name}={text!r} in the link is not a number: {kept}.")
        return fallback
    whole = round(number)
    if whole != number:
        messages.append(f"{name}={text} in the link is not a whole number: used {whole}.")
    if whole < low:
        messages.append(f"{name}={text} in the link is below {low}: used {low}.")
        return low
    if high is not None and whole > high:
        messages.append(f"{name}={text} in the link is too large ({too_high.format(high=high)}): used {high}.")
        return high
    return whole


def _temperature(text: str, messages: list[str]) -> float:
    """0 (greedy) or a temperature on the page's grid; anything else becomes the nearest such value."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        messages.append(f"temperature={text!r} in the link is not a number: greedy decoding instead.")
        return 0.0
    if number <= 0:
        if number < 0:
            messages.append(f"temperature={text} in the link is below 0: greedy decoding instead.")
        return 0.0
    nearest = round(min(max(number, TEMPERATURE_MIN), TEMPERATURE_MAX) / TEMPERATURE_STEP) * TEMPERATURE_STEP
    nearest = round(nearest, 2)
    if not math.isclose(nearest, number, abs_tol=1e-9):
        messages.append(f"temperature={text} in the link is not one the page offers ({TEMPERATURE_MIN:g} to "
                        f"{TEMPERATURE_MAX:g} in steps of {TEMPERATURE_STEP:g}): used {nearest:g}.")
    return nearest
