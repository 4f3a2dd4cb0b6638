"""Stepper (cached) and NaiveStepper (recompute everything): the only code that calls the model.

Both have the same interface — ``prefill(prompt)``, ``step()``, ``reset()`` — and return one ``StepRecord`` per
call. ``Stepper`` feeds the prompt once, then one token per step, reading earlier keys and values from its own
``InstrumentedCache``. ``NaiveStepper`` feeds the whole sequence every step with ``use_cache=False``: the
quadratic baseline, kept on purpose. ``CompareStepper`` drives one of each over the same tokens and fills the
record's ``ms_naive``, ``max_logit_diff`` and ``same_token``.

Each stepper owns its cache, its sampling generator and its attention recorder, and treats the model as
read-only, so many steppers (browser sessions) can share one loaded model. Sequence is batch 1.
What it does not do: tokenise for display beyond token texts, draw, or aggregate timings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

from kvviz.attention import AttentionRecorder
from kvviz.cache import InstrumentedCache
from kvviz.costs import forward_flops
from kvviz.errors import InputError
from kvviz.models import LoadedModel
from kvviz.records import Candidate, StepRecord
from kvviz.timing import DeviceTimer

TOP_CANDIDATES = 10
DEFAULT_PROMPT = "What is the capital of France?"


@dataclass(frozen=True)
class Sampling:
    """Token choice. temperature 0 is greedy (argmax); otherwise sample with an explicit seed."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k cut
    top_p: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 <= self.temperature <= 10.0:
            raise InputError(f"Temperature must be between 0 and 10 (got {self.temperature}).")
        if self.top_k < 0:
            raise InputError(f"top-k must be 0 (off) or a positive number of tokens (got {self.top_k}).")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top-p must be in (0, 1] (got {self.top_p}).")


def new_tokens_room(context: int, prompt_tokens: int) -> int:
    """How many new tokens a prompt of ``prompt_tokens`` leaves room for in a ``context``-position model.

    N new tokens: the prefill chooses the first, N - 1 steps feed one each, so the cache ends at P + N - 1.
    """
    return context - prompt_tokens + 1


def encode_prompt(loaded: LoadedModel, prompt: str, chat_template: bool = False) -> list[int]:
    """Token ids of ``prompt``, wrapped in the model's chat template when asked and available."""
    if not prompt or not prompt.strip():
        raise InputError("The prompt is empty: type a few words to start.")
    tokenizer = loaded.tokenizer
    if chat_template and loaded.chat_template_available:
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def choose_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """Pick the next token from a 1-D float32 CPU logits row."""
    if sampling.temperature == 0.0:
        return int(torch.argmax(logits))
    scaled = logits / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(scaled, min(sampling.top_k, scaled.numel())).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < sampling.top_p  # always keeps the first
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class _BaseStepper:
    path = "base"

    def __init__(
        self,
        loaded: LoadedModel,
        sampling: Sampling | None = None,
        capture_attention: bool = True,
        record_kv: bool = False,
        max_new_tokens: int | None = None,
    ) -> None:
        self.loaded = loaded
        self.sampling = sampling or Sampling()
        self.sampling.validate()
        if max_new_tokens is not None and max_new_tokens <= 0:
            raise InputError(f"Max new tokens must be at least 1 (got {max_new_tokens}).")
        self.capture_attention = capture_attention
        self.record_kv = record_kv
        self.max_new_tokens = max_new_tokens
        text_config = loaded.model.config.get_text_config(decoder=True)
        self._vocab = int(text_config.vocab_size)
        self._hidden = int(getattr(text_config, "hidden_size", None) or text_config.n_embd)
        self._eos = set(_as_list(getattr(loaded.tokenizer, "eos_token_id", None)))
        self._eos |= set(_as_list(getattr(loaded.model.generation_config, "eos_token_id", None)))
        self.reset()

    # ----- state ------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the sequence (and empty the cache); the model is untouched."""
        self.ids: list[int] = []
        self.pending_token: int | None = None  # chosen by the last call, fed by the next step
        self.steps_taken = 0
        self.last_logits: torch.Tensor | None = None  # float32 CPU row of the last call
        self.generator = torch.Generator().manual_seed(self.sampling.seed)

    @property
    def started(self) -> bool:
        return self.pending_token is not None

    def force_pending_token(self, token_id: int) -> None:
        """Make the next step feed ``token_id`` (compare mode keeps both paths on one sequence)."""
        if not self.started:
            raise InputError("Prefill first.")
        self.pending_token = int(token_id)

    # ----- calls ------------------------------------------------------------------------------------------------
    def prefill(self, prompt: str | Sequence[int], chat_template: bool = False) -> StepRecord:
        """Reset, then feed the whole prompt; the record's token is the first generated token."""
        ids = list(prompt) if not isinstance(prompt, str) else encode_prompt(self.loaded, prompt, chat_template)
        if not ids:
            raise InputError("The prompt is empty: type a few words to start.")
        context = self.loaded.card.context_length
        new_tokens = self.max_new_tokens or 1
        if new_tokens > new_tokens_room(context, len(ids)):
            raise InputError(
                f"The prompt has {len(ids)} tokens; with {new_tokens} new tokens that exceeds the model's context of "
                f"{context} tokens. Shorten the prompt or ask for fewer new tokens."
            )
        self.reset()
        self.ids = list(ids)
        return self._call(kind="prefill", new_ids=list(ids))

    def step(self) -> StepRecord:
        """Feed the pending token and choose the next one."""
        if not self.started:
            raise InputError("Nothing to step yet: press Prefill first.")
        # The prefill already chose the first new token, so N new tokens take the prefill and N - 1 steps.
        if self.max_new_tokens is not None and self.steps_taken + 1 >= self.max_new_tokens:
            raise InputError(
                f"Reached the limit of {self.max_new_tokens} new tokens: Reset, or raise max new tokens."
            )
        if len(self.ids) + 1 > self.loaded.card.context_length:
            raise InputError(f"The context of {self.loaded.card.context_length} tokens is full: Reset to start over.")
        token = self.pending_token
        self.ids.append(token)
        self.steps_taken += 1
        return self._call(kind="decode", new_ids=[token])

    # ----- internals --------------------------------------------------------------------------------------------
    def _forward(self, new_ids: list[int], recorder: AttentionRecorder | None) -> tuple[torch.Tensor, int, Any]:
        """Run the model; return (last logits row on device, tokens processed, cache or None)."""
        raise NotImplementedError

    @torch.inference_mode()
    def _call(self, kind: str, new_ids: list[int]) -> StepRecord:
        recorder = AttentionRecorder() if self.capture_attention else None
        try:
            with DeviceTimer(self.loaded.device) as timer:
                logits, processed, cache = self._forward(new_ids, recorder)
                logits = logits.float().cpu()
                chosen = choose_token(logits, self.sampling, self.generator)
            # What the charts need beyond the step itself is timed apart, so ``ms`` compares like with like with a
            # path that records nothing (the naive one, the benchmarks).
            attention, rows, capture_ms = None, None, None
            if recorder is not None or (cache is not None and cache.record_rows):
                with DeviceTimer(self.loaded.device) as capture_timer:
                    attention = tuple(recorder.to_numpy()) if recorder is not None else None
                    rows = cache.take_appended_rows() if cache is not None else None
                capture_ms = capture_timer.ms
        except torch.OutOfMemoryError:
            self.reset()
            raise InputError("Out of memory on the model's device: Reset and use a shorter prompt.") from None
        self.last_logits = logits
        self.pending_token = chosen
        probs = torch.softmax(logits, dim=-1)
        top = torch.topk(probs, min(TOP_CANDIDATES, probs.numel()))
        tokenizer = self.loaded.tokenizer
        candidates = tuple(
            Candidate(int(i), tokenizer.decode([int(i)]), float(p)) for p, i in zip(top.values, top.indices)
        )
        layers = tuple(cache.layer_stats()) if cache is not None else ()
        return StepRecord(
            index=self.steps_taken,
            kind=kind,
            path=self.path,
            input_ids=tuple(self.ids) if self.path == "naive" else tuple(new_ids),
            new_ids=tuple(new_ids),
            new_texts=tuple(tokenizer.decode([t]) for t in new_ids),
            token_id=chosen,
            token_text=tokenizer.decode([chosen]),
            is_eos=chosen in self._eos,
            candidates=candidates,
            sequence_length=len(self.ids),
            cache_layers=layers,
            cache_bytes=sum(layer.bytes for layer in layers),
            ms=timer.ms,
            tokens_processed=processed,
            flops=forward_flops(self.loaded, self._vocab, self._hidden, processed, len(self.ids)),
            attention=attention,
            kv_rows=tuple(rows) if rows else None,
            capture_ms=capture_ms,
        )


class Stepper(_BaseStepper):
    """Cached decoding: each step feeds one token and reads every earlier K/V from the cache."""

    path = "cached"

    def reset(self) -> None:
        super().reset()
        self.cache = InstrumentedCache(self.loaded.model.config, record_rows=self.record_kv)

    def _forward(self, new_ids: list[int], recorder: AttentionRecorder | None) -> tuple[torch.Tensor, int, Any]:
        input_ids = torch.tensor([new_ids], device=self.loaded.device)  # (1, new)
        extra = {"kvviz_recorder": recorder} if recorder is not None else {}
        out = self.loaded.model(
            input_ids=input_ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1, **extra
        )
        return out.logits[0, -1], len(new_ids), self.cache


class NaiveStepper(_BaseStepper):
    """Recompute everything: each step runs the whole sequence through the model with no cache."""

    path = "naive"

    def __init__(self, loaded: LoadedModel, sampling: Sampling | None = None, capture_attention: bool = False,
                 max_new_tokens: int | None = None) -> None:
        super().__init__(loaded, sampling, capture_attention, record_kv=False, max_new_tokens=max_new_tokens)

    def _forward(self, new_ids: list[int], recorder: AttentionRecorder | None) -> tuple[torch.Tensor, int, Any]:
        input_ids = torch.tensor([self.ids], device=self.loaded.device)  # (1, T): the whole sequence again
        extra = {"kvviz_recorder": recorder} if recorder is not None else {}
        out = self.loaded.model(input_ids=input_ids, use_cache=False, logits_to_keep=1, **extra)
        return out.logits[0, -1], len(self.ids), None


class CompareStepper:
    """A cached and a naive stepper over the same tokens; records are the cached ones, with the comparison.

    When the two choose different tokens (a tie broken differently by rounding), the naive path is made to follow
    the cached one, so every later comparison is again over one sequence; ``same_token`` records the disagreement.
    """

    def __init__(self, loaded: LoadedModel, sampling: Sampling | None = None, capture_attention: bool = True,
                 record_kv: bool = False, max_new_tokens: int | None = None) -> None:
        self.cached = Stepper(loaded, sampling, capture_attention, record_kv, max_new_tokens)
        self.naive = NaiveStepper(loaded, sampling, max_new_tokens=max_new_tokens)

    @property
    def loaded(self) -> LoadedModel:
        return self.cached.loaded

    @property
    def started(self) -> bool:
        return self.cached.started

    def reset(self) -> None:
        self.cached.reset()
        self.naive.reset()

    def prefill(self, prompt: str | Sequence[int], chat_template: bool = False) -> StepRecord:
        record = self.cached.prefill(prompt, chat_template)
        return self._compare(record, self.naive.prefill(list(record.new_ids)))

    def step(self) -> StepRecord:
        # The two paths take turns going first. Whatever else the machine does right after a step (a browser
        # drawing the previous token on the same CPU, say) then slows each path equally often, instead of always
        # the one that runs first.
        if self.cached.steps_taken % 2:
            naive = self.naive.step()
            return self._compare(self.cached.step(), naive)
        record = self.cached.step()
        return self._compare(record, self.naive.step())

    def _compare(self, cached: StepRecord, naive: StepRecord) -> StepRecord:
        diff = float((self.cached.last_logits - self.naive.last_logits).abs().max())
        if naive.token_id != cached.token_id:
            self.naive.force_pending_token(cached.token_id)
        return replace(
            cached, ms_naive=naive.ms, naive_tokens_processed=naive.tokens_processed,
            max_logit_diff=diff, same_token=naive.token_id == cached.token_id,
        )


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
