"""Teacher-forced quality of cache policies against the full cache, on one text.

``compare_policies`` feeds the same token ids to one ``PolicyCache`` per policy (and always to a full one, the
reference): the first ``prompt_tokens`` in one prefill call, then one token per call, each call followed by the
policy's eviction. Every call passes ``position_ids`` itself, because kept keys keep their original positions
(``generate()`` knows nothing of eviction, hence this loop). After every call it scores the policy's next-token
distribution against the text (perplexity) and against the full cache's (top-1 agreement, KL divergence), so no
logits are stored. Decode calls are timed with ``DeviceTimer``, the eviction and any attention scoring included.

Quantised caches (fp8, int4, int2) run in the same loop; they hold every token, so their budget is None.
``SHIPPED_TEXT`` is the default text: three chapters of a public-domain novel (see ``texts/SOURCE.md``).
What it does not do: parse arguments, print, or draw.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from kvviz.errors import InputError
from kvviz.models import LoadedModel
from kvviz.policies.eviction import PolicyCache, PolicySpec
from kvviz.policies.quantised import QuantisedPolicyCache
from kvviz.policies.records import PolicyComparison, PolicyScore
from kvviz.timing import DeviceTimer

SHIPPED_TEXT = Path(__file__).parent / "texts" / "pride_and_prejudice_ch1-3.txt"
SHIPPED_TEXT_NAME = "Pride and Prejudice, chapters I-III (Jane Austen, 1813; Project Gutenberg #1342, public domain)"

Progress = Callable[[int, int], None]  # (tokens done, tokens in all)


def shipped_text() -> str:
    return SHIPPED_TEXT.read_text(encoding="utf-8")


def text_ids(loaded: LoadedModel, text: str, tokens: int | None, at_most: bool = False) -> list[int]:
    """The first ``tokens`` token ids of ``text`` (all when None); raise ``InputError`` when it is too short,
    unless ``at_most``, which takes what there is."""
    ids = list(loaded.tokenizer(text)["input_ids"])
    if len(ids) < 2:
        raise InputError("The text is too short: it needs at least two tokens.")
    if at_most and tokens is not None:
        ids = ids[:tokens]
    elif tokens is not None:
        if tokens > len(ids):
            raise InputError(f"The text has {len(ids):,} tokens; --tokens asks for {tokens:,}.")
        ids = ids[:tokens]
    if len(ids) > loaded.card.context_length:
        raise InputError(f"{len(ids):,} tokens exceed {loaded.card.name}'s context of "
                         f"{loaded.card.context_length:,}: pass a smaller --tokens.")
    return ids


def make_cache(config: Any, spec: PolicySpec) -> PolicyCache | QuantisedPolicyCache:
    """The cache that carries out ``spec``: an evicting one, or a quantised one that holds every token."""
    if spec.name in ("fp8", "int4", "int2"):
        return QuantisedPolicyCache(config, spec.name, spec.backend)
    return PolicyCache(config, spec)


def check_budget(spec: PolicySpec, tokens: int) -> None:
    spec.validate()
    if spec.evicts and spec.budget >= tokens:
        raise InputError(f"The budget of {spec.budget:,} tokens holds the whole text ({tokens:,} tokens): nothing "
                         "would be evicted. Lower --budget or use a longer text.")


@dataclass
class _Run:
    """One policy's cache and running sums."""

    spec: PolicySpec
    cache: PolicyCache | QuantisedPolicyCache
    nll: float = 0.0
    agreements: int = 0
    kl: float = 0.0
    scored: int = 0
    decode_ms: list[float] = field(default_factory=list)


def _forward(loaded: LoadedModel, run: _Run, new_ids: Sequence[int], start: int) -> torch.Tensor:
    """Feed ``new_ids`` at original positions ``start…``, evict, and return the last log-probabilities (fp32)."""
    device = loaded.device
    input_ids = torch.tensor([list(new_ids)], device=device)  # (1, new)
    position_ids = torch.arange(start, start + len(new_ids), device=device)[None]  # (1, new)
    recorder = run.cache.attention_recorder(prefill=start == 0)
    extra = {"kvviz_recorder": recorder} if recorder is not None else {}
    out = loaded.model(input_ids=input_ids, position_ids=position_ids, past_key_values=run.cache, use_cache=True,
                       logits_to_keep=1, **extra)
    run.cache.after_call(len(new_ids))
    return torch.log_softmax(out.logits[0, -1].float(), dim=-1)


def _score(run: _Run, log_probs: torch.Tensor, reference: torch.Tensor, target: int) -> None:
    run.nll -= float(log_probs[target])
    run.agreements += int(torch.argmax(log_probs) == torch.argmax(reference))
    run.kl += float((reference.exp() * (reference - log_probs)).sum())
    run.scored += 1


@torch.inference_mode()
def compare_policies(loaded: LoadedModel, ids: Sequence[int], specs: Sequence[PolicySpec], prompt_tokens: int,
                     text_name: str = "", progress: Progress | None = None) -> PolicyComparison:
    """Score each policy in ``specs`` over ``ids``: the first ``prompt_tokens`` in one prefill, then one by one.

    The full cache always runs as the reference; it is reported only when ``specs`` asks for it.
    """
    ids = list(ids)
    if not 1 <= prompt_tokens < len(ids):
        raise InputError(f"The prompt must be 1 to {len(ids) - 1:,} tokens of the {len(ids):,} (got {prompt_tokens:,}).")
    for spec in specs:
        check_budget(spec, len(ids))
    started = time.perf_counter()
    config = loaded.model.config
    reference = _Run(PolicySpec("full", len(ids)), PolicyCache(config, PolicySpec("full", len(ids))))
    runs = [_Run(spec, make_cache(config, spec)) for spec in specs if spec.name != "full"]
    report = progress or (lambda done, total: None)
    for position in range(prompt_tokens - 1, len(ids) - 1):
        # Position p's logits predict token p + 1; the prefill's last position is prompt_tokens - 1.
        prefill = position == prompt_tokens - 1
        new_ids, start = (ids[:prompt_tokens], 0) if prefill else ([ids[position]], position)
        target = ids[position + 1]
        for run in [reference, *runs]:
            with DeviceTimer(loaded.device) as timer:
                log_probs = _forward(loaded, run, new_ids, start)
            if not prefill:
                run.decode_ms.append(timer.ms)
            if run is reference:
                reference_log_probs = log_probs
            _score(run, log_probs, reference_log_probs, target)
        report(position + 2, len(ids))
    by_name = {run.spec.name: run for run in runs} | {"full": reference}
    scores = tuple(_policy_score(by_name[spec.name]) for spec in specs)
    return PolicyComparison(
        model=loaded.card.name, text=text_name, tokens=len(ids), prompt_tokens=prompt_tokens,
        device=str(loaded.device), dtype=loaded.dtype_name, policies=scores,
        wall_seconds=time.perf_counter() - started,
    )


def _policy_score(run: _Run) -> PolicyScore:
    return PolicyScore(
        name=run.spec.name,
        budget_tokens=run.spec.budget if run.spec.evicts else None,
        bytes_held=run.cache.bytes_held(),
        perplexity=math.exp(run.nll / run.scored),
        top1_agreement=run.agreements / run.scored,
        kl=run.kl / run.scored,
        ms_per_token=sum(run.decode_ms) / len(run.decode_ms) if run.decode_ms else float("nan"),
        tokens_scored=run.scored,
        holdings=tuple(run.cache.holdings()),
    )
