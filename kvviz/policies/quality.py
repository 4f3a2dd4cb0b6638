"""Teacher-forced quality of cache policies against the full cache, on one text.

``PolicyRun`` (stepwise, for a page with a Stop) and ``compare_policies`` (to the end) feed the same token ids to
one ``PolicyCache`` per policy (and always to a full one, the reference): the first ``prompt_tokens`` in one prefill
call, then one token per call, each call followed by the policy's eviction. Every call passes ``position_ids`` itself, because kept keys keep their original positions
(``generate()`` knows nothing of eviction, hence this loop). After every call it scores the policy's next-token
distribution against the text (perplexity) and against the full cache's (top-1 agreement, KL divergence), and keeps
each token's negative log-likelihood and KL (the curves), so no logits are stored. Decode calls are timed with ``DeviceTimer``, the eviction and any attention scoring included.

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
    """One policy's cache, its running sums and what it saw at every scored token."""

    spec: PolicySpec
    cache: PolicyCache | QuantisedPolicyCache
    nll: list[float] = field(default_factory=list)  # per scored token
    kl: list[float] = field(default_factory=list)  # per scored token, KL(full ‖ policy)
    agreements: int = 0
    decode_ms: list[float] = field(default_factory=list)
    watched: list[tuple[int, ...]] = field(default_factory=list)  # positions held in the watched layer and head


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
    run.nll.append(-float(log_probs[target]))
    run.agreements += int(torch.argmax(log_probs) == torch.argmax(reference))
    run.kl.append(float((reference.exp() * (reference - log_probs)).sum()))


def spec_label(spec: PolicySpec) -> str:
    """How a policy at a budget is named in tables and legends: 'sinks@64', or 'fp8' for a cache that holds all."""
    return f"{spec.name}@{spec.budget}" if spec.evicts else spec.name


class PolicyRun:
    """Every policy of ``specs`` over ``ids``, one position at a time: ``advance`` moves on, ``result`` reports.

    The first ``prompt_tokens`` go in one prefill call, then one token per call, each followed by the policy's
    eviction. The full cache always runs too, as the reference; it is reported only when ``specs`` asks for it.
    A page calls ``advance`` a few positions at a time (so a Stop can land between calls); ``result`` may be read
    before the end and then covers the tokens scored so far. ``watch`` (layer, KV head) records, after every call,
    the positions each policy holds there: the keep/evict map.
    """

    def __init__(self, loaded: LoadedModel, ids: Sequence[int], specs: Sequence[PolicySpec], prompt_tokens: int,
                 text_name: str = "", watch: tuple[int, int] | None = None) -> None:
        ids = list(ids)
        if not 1 <= prompt_tokens < len(ids):
            raise InputError(f"The prompt must be 1 to {len(ids) - 1:,} tokens of the {len(ids):,} "
                             f"(got {prompt_tokens:,}).")
        labels = [spec_label(spec) for spec in specs]
        if len(set(labels)) != len(labels):
            raise InputError("Each policy and budget may be asked for once.")
        for spec in specs:
            check_budget(spec, len(ids))
        text_config = loaded.model.config.get_text_config(decoder=True)
        if watch is not None:
            layers = int(text_config.num_hidden_layers)
            kv_heads = int(getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads)
            if not (0 <= watch[0] < layers and 0 <= watch[1] < kv_heads):
                raise InputError(f"The watched layer must be 0 to {layers - 1} and the KV head 0 to {kv_heads - 1}.")
        self.loaded, self.ids, self.specs, self.prompt_tokens = loaded, ids, list(specs), prompt_tokens
        self.text_name, self.watch = text_name, watch
        config = loaded.model.config
        full = PolicySpec("full", len(ids))
        self.reference = _Run(full, PolicyCache(config, full))
        self.runs = [_Run(spec, make_cache(config, spec)) for spec in specs if spec.name != "full"]
        self.position = prompt_tokens - 1  # the next position whose logits are scored
        self.seconds = 0.0

    @property
    def finished(self) -> bool:
        return self.position >= len(self.ids) - 1

    @property
    def tokens_read(self) -> int:
        """Tokens fed so far (0 before the prefill)."""
        return 0 if self.position == self.prompt_tokens - 1 else self.position

    @torch.inference_mode()
    def advance(self, positions: int = 1) -> None:
        """Feed up to ``positions`` more calls (the first is the prefill) to every cache and score them."""
        started = time.perf_counter()
        ids, loaded = self.ids, self.loaded
        for _ in range(positions):
            if self.finished:
                break
            # Position p's logits predict token p + 1; the prefill's last position is prompt_tokens - 1.
            position = self.position
            prefill = position == self.prompt_tokens - 1
            new_ids, start = (ids[:self.prompt_tokens], 0) if prefill else ([ids[position]], position)
            target = ids[position + 1]
            for run in [self.reference, *self.runs]:
                with DeviceTimer(loaded.device) as timer:
                    log_probs = _forward(loaded, run, new_ids, start)
                if not prefill:
                    run.decode_ms.append(timer.ms)
                if run is self.reference:
                    reference_log_probs = log_probs
                _score(run, log_probs, reference_log_probs, target)
                if self.watch is not None:
                    run.watched.append(run.cache.held_positions(*self.watch))
            self.position += 1
        self.seconds += time.perf_counter() - started

    def result(self) -> PolicyComparison:
        """The scores so far (all of the text once ``finished``)."""
        by_label = {spec_label(run.spec): run for run in self.runs} | {"full": self.reference}
        scored = [by_label[spec_label(spec)] for spec in self.specs]
        return PolicyComparison(
            model=self.loaded.card.name, text=self.text_name, tokens=len(self.ids), prompt_tokens=self.prompt_tokens,
            device=str(self.loaded.device), dtype=self.loaded.dtype_name,
            policies=tuple(_policy_score(run) for run in scored if run.nll), wall_seconds=self.seconds,
            watch=self.watch,
        )


def compare_policies(loaded: LoadedModel, ids: Sequence[int], specs: Sequence[PolicySpec], prompt_tokens: int,
                     text_name: str = "", progress: Progress | None = None,
                     watch: tuple[int, int] | None = None) -> PolicyComparison:
    """Score each policy in ``specs`` over ``ids`` (see ``PolicyRun``), to the end of the text."""
    run = PolicyRun(loaded, ids, specs, prompt_tokens, text_name, watch)
    report = progress or (lambda done, total: None)
    while not run.finished:
        run.advance()
        report(run.position + 1, len(run.ids))
    return run.result()


def _policy_score(run: _Run) -> PolicyScore:
    scored = len(run.nll)
    return PolicyScore(
        name=run.spec.name,
        budget_tokens=run.spec.budget if run.spec.evicts else None,
        bytes_held=run.cache.bytes_held(),
        perplexity=math.exp(sum(run.nll) / scored),
        top1_agreement=run.agreements / scored,
        kl=sum(run.kl) / scored,
        ms_per_token=sum(run.decode_ms) / len(run.decode_ms) if run.decode_ms else float("nan"),
        tokens_scored=scored,
        holdings=tuple(run.cache.holdings()),
        nll_per_token=tuple(run.nll),
        kl_per_token=tuple(run.kl),
        watched=tuple(run.watched),
    )
