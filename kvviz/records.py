"""StepRecord and Trace: the plain CPU data every page and the CLI render.

A ``StepRecord`` is what one call of a stepper produced: which token it chose and with what alternatives, what the
cache holds, the attention of the queries of that call, how long it took, and (in compare mode) how the naive
recompute agreed. It holds no tensors: only ints, floats, strings and NumPy arrays. A ``Trace`` is the list of
records of one prompt plus what it ran on, with a JSON export. ``LayerCacheStat`` is one layer's line of a
record's cache report (``InstrumentedCache.layer_stats`` fills it in).

What it does not do: compute model outputs, or import torch or transformers (a test checks it): records are data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LayerCacheStat:
    """One layer's cache after a call."""

    layer: int
    positions_seen: int  # tokens that went through this layer's cache so far
    stored: int  # tokens whose K/V are held now (smaller than positions_seen for a full sliding window)
    shape: tuple[int, ...]  # of the key tensor: (batch, kv_heads, stored, head_dim)
    dtype: str
    bytes: int  # keys + values, from the live tensors
    sliding_window: int | None
    appended: tuple[int, int]  # [start, stop) absolute positions appended by the last call


@dataclass(frozen=True)
class Candidate:
    token_id: int
    text: str
    probability: float


@dataclass(frozen=True)
class StepRecord:
    """One prefill or decode call. ``index`` 0 is the prefill; decode steps count from 1."""

    index: int
    kind: str  # "prefill" or "decode"
    path: str  # "cached" or "naive"
    input_ids: tuple[int, ...]  # tokens fed to the model in this call (the naive path feeds all of them)
    new_ids: tuple[int, ...]  # tokens this call added to the sequence's context (prompt for prefill, 1 after)
    new_texts: tuple[str, ...]
    token_id: int  # the token chosen from this call's logits
    token_text: str
    is_eos: bool
    candidates: tuple[Candidate, ...]
    sequence_length: int  # tokens in the context after this call, before the chosen token is fed
    cache_layers: tuple[LayerCacheStat, ...]  # empty for the naive path: it keeps no cache
    cache_bytes: int
    ms: float  # device-synchronised time of the forward pass and the token choice (capture not included)
    tokens_processed: int
    flops: float
    attention: tuple[np.ndarray, ...] | None = None  # per layer (q_heads, q_len, kv_len) float16, or None
    kv_rows: tuple[tuple[np.ndarray, np.ndarray], ...] | None = None  # per layer K, V (kv_heads, new, head_dim)
    ms_naive: float | None = None
    naive_tokens_processed: int | None = None
    max_logit_diff: float | None = None
    same_token: bool | None = None
    # Device-synchronised time spent after the step turning what it attended with into attention weights and
    # copying them and the K/V rows to the CPU for the charts; None when nothing was recorded.
    capture_ms: float | None = None

    @property
    def cache_len(self) -> int:
        """Positions held by the first layer's cache (what a user calls "the cache length")."""
        return self.cache_layers[0].positions_seen if self.cache_layers else 0

    def summary(self) -> dict[str, Any]:
        """The CLI's per-step JSON object."""
        return {
            "index": self.index,
            "kind": self.kind,
            "token_id": self.token_id,
            "token": self.token_text,
            "cache_len": self.cache_len,
            "cache_bytes": self.cache_bytes,
            "ms_cached": round(self.ms, 3) if self.path == "cached" else None,
            "ms_naive": round(self.ms_naive, 3) if self.ms_naive is not None else
            (round(self.ms, 3) if self.path == "naive" else None),
            "capture_ms": round(self.capture_ms, 3) if self.capture_ms is not None else None,
            "tokens_processed": self.tokens_processed,
            "flops": self.flops,
            "max_logit_diff": self.max_logit_diff,
            "same_token": self.same_token,
        }


@dataclass
class Trace:
    """All records of one prompt, with what they were measured on."""

    model: str
    device: str
    dtype: str
    records: list[StepRecord] = field(default_factory=list)

    def append(self, record: StepRecord) -> None:
        self.records.append(record)

    @property
    def prefill(self) -> StepRecord | None:
        return self.records[0] if self.records and self.records[0].kind == "prefill" else None

    @property
    def decode_steps(self) -> list[StepRecord]:
        return [r for r in self.records if r.kind == "decode"]

    @property
    def prompt_tokens(self) -> int:
        return len(self.prefill.new_ids) if self.prefill else 0

    def token_ids(self) -> list[int]:
        """Every token in the context so far: prompt, then each token fed by a decode step."""
        return [token for record in self.records for token in record.new_ids]

    def token_texts(self) -> list[str]:
        return [text for record in self.records for text in record.new_texts]

    def attention_bytes(self) -> int:
        return sum(a.nbytes for r in self.records if r.attention for a in r.attention)

    def with_attention(self) -> "Trace":
        """The leading records that carry attention rows: this trace itself unless capture stopped part-way."""
        count = next((i for i, r in enumerate(self.records) if not r.attention), len(self.records))
        if count == len(self.records):
            return self
        return Trace(self.model, self.device, self.dtype, self.records[:count])

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "prompt_tokens": self.prompt_tokens,
            "prefill_ms": round(self.prefill.ms, 3) if self.prefill else None,
            # One entry per generated token: the prefill chose the first, each decode step one more.
            "steps": [r.summary() for r in self.records],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)
