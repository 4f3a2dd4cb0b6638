"""``PolicyCache``: a ``DynamicCache`` that evicts down to a token budget after each model call, by policy.

Layout as in ``kvviz/cache.py``: every layer holds keys and values of shape ``(batch, kv_heads, seq, head_dim)``.
The model calls ``update`` once per layer per forward and this class lets ``DynamicCache`` append as usual; it
also notes, per layer and KV head, the original token position of every row it holds. After the forward, the
caller runs ``after_call(new_tokens)``, which evicts every layer down to the budget: rows whose positions are
protected (the first ``sinks``, the ``recent`` newest) are always kept, the others by the policy's score.

Policies (each keeps at most ``budget`` tokens per layer and KV head):
- ``full``: keeps everything (the reference).
- ``window``: the ``budget`` newest tokens.
- ``sinks``: the first ``sinks`` tokens plus the newest (StreamingLLM).
- ``h2o``: half the budget for the newest tokens, half for the "heavy hitters", the tokens with the most attention
  accumulated over every query so far, summed over the query heads that share a KV head (H2O).
- ``snapkv``: the prompt is scored once, at the prefill, by the attention its last ``observation`` queries pay to
  each position (average-pooled over neighbours, as SnapKV does); the best-scored prompt positions and the newest
  tokens are kept. Generated tokens get no score: past the recent window they go first.
- ``knorm``: the tokens whose keys have the lowest L2 norm (Devoto et al., 2024, "A Simple and Effective L2
  Norm-Based Strategy for KV Cache Compression").
- ``random``: random scores from a seeded generator, drawn afresh at each eviction (the control).
h2o, snapkv, knorm and random choose per KV head; window and sinks hold the same positions in every head.

Keys are cached after RoPE, so a kept key keeps its original position; the caller must pass ``position_ids``
itself (by default transformers numbers new tokens from the cache's length, which is wrong once rows are gone).
What it does not do: run the model, time anything, quantise, or handle sliding-window layers (refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from kvviz.attention import attention_weights
from kvviz.errors import InputError
from kvviz.policies.quantised import DEFAULT_QUANT_BACKEND, QUANTISED_NAMES
from kvviz.policies.records import LayerHolding

POLICY_NAMES = ("full", "window", "sinks", "h2o", "snapkv", "knorm", "random")
ALL_POLICY_NAMES = POLICY_NAMES + QUANTISED_NAMES  # the quantised caches are in quantised.py
ATTENTION_SCORED = ("h2o", "snapkv")
DEFAULT_SINKS = 4
DEFAULT_OBSERVATION = 32  # SnapKV's observation window, in prompt tokens
SNAPKV_POOLING = 5  # neighbours averaged into each position's SnapKV score (odd: centred)


@dataclass(frozen=True)
class PolicySpec:
    """A policy and its settings; ``budget`` is in tokens per layer and KV head (ignored by ``full`` and the
    quantised caches, which hold every token)."""

    name: str
    budget: int
    sinks: int = DEFAULT_SINKS
    observation: int = DEFAULT_OBSERVATION
    seed: int = 0
    backend: str = DEFAULT_QUANT_BACKEND  # int4 / int2 only

    @property
    def evicts(self) -> bool:
        return self.name in POLICY_NAMES and self.name != "full"

    def validate(self) -> None:
        if self.name not in ALL_POLICY_NAMES:
            raise InputError(f"Unknown policy '{self.name}': choose from {', '.join(ALL_POLICY_NAMES)}.")
        if self.sinks < 0:
            raise InputError(f"The number of sink tokens must be 0 or more (got {self.sinks}).")
        if self.budget < self.sinks + 1:
            raise InputError(f"The budget of {self.budget} tokens must hold the {self.sinks} sink tokens and at least "
                             "one more: raise --budget or lower --sinks.")

    @property
    def protected_sinks(self) -> int:
        """How many of the first tokens are never evicted."""
        return self.sinks if self.name == "sinks" else 0

    @property
    def protected_recent(self) -> int:
        """How many of the newest tokens are never evicted."""
        if self.name == "h2o":
            return self.budget // 2
        if self.name == "snapkv":
            return self.snapkv_window
        return 0

    @property
    def snapkv_window(self) -> int:
        return max(1, min(self.observation, self.budget // 2))


class PolicyCache(DynamicCache):
    """A ``DynamicCache`` that holds at most ``spec.budget`` tokens per layer once ``after_call`` has run."""

    def __init__(self, config: Any, spec: PolicySpec) -> None:
        spec.validate()
        if spec.name not in POLICY_NAMES:
            raise InputError(f"'{spec.name}' is a quantised cache, not an eviction policy: use QuantisedPolicyCache.")
        super().__init__(config=config)
        if any(getattr(layer, "is_sliding", False) for layer in self.layers):
            raise InputError("Cache policies need full-attention layers; this model has sliding-window layers.")
        self.spec = spec
        self.next_position = 0  # original position of the next token fed
        self.positions: dict[int, torch.Tensor] = {}  # layer -> (kv_heads, held) original positions
        self.scores: dict[int, torch.Tensor] = {}  # layer -> (kv_heads, held): attention mass (h2o, snapkv)
        self.generator = torch.Generator().manual_seed(spec.seed)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        kv_heads, new = key_states.shape[1], key_states.shape[-2]
        fresh = torch.arange(self.next_position, self.next_position + new, device=keys.device)
        fresh = fresh.expand(kv_heads, new)  # (kv_heads, new)
        self.positions[layer_idx] = torch.cat([self.positions.get(layer_idx, fresh[:, :0]), fresh], dim=-1)
        if self.spec.name in ATTENTION_SCORED:
            # SnapKV never scores generated tokens (-inf: first out past the window); H2O accumulates from zero.
            start = float("-inf") if self.spec.name == "snapkv" else 0.0
            blank = torch.full((kv_heads, new), start, device=keys.device)
            self.scores[layer_idx] = torch.cat([self.scores.get(layer_idx, blank[:, :0]), blank], dim=-1)
        return keys, values

    def attention_recorder(self, prefill: bool) -> "AttentionMass | None":
        """What to pass as ``kvviz_recorder`` to the next call: the scorer this policy needs, or None."""
        if self.spec.name == "h2o" or (self.spec.name == "snapkv" and prefill):
            return AttentionMass(self)
        return None

    def after_call(self, new_tokens: int) -> None:
        """Advance past the tokens just fed and evict every layer down to the budget."""
        self.next_position += new_tokens
        if self.spec.name == "full":
            return
        for layer_idx, layer in enumerate(self.layers):
            if getattr(layer, "is_initialized", False) and layer.keys.shape[-2] > self.spec.budget:
                self._evict(layer_idx, layer)

    def _evict(self, layer_idx: int, layer: Any) -> None:
        spec, positions = self.spec, self.positions[layer_idx]  # (kv_heads, held)
        score = self._score(layer_idx, layer).clone()
        protected = (positions < spec.protected_sinks) | (positions >= self.next_position - spec.protected_recent)
        score[protected] = float("inf")
        keep = torch.topk(score, spec.budget, dim=-1).indices.sort(dim=-1).values  # (kv_heads, budget)
        batch, kv_heads, _, head_dim = layer.keys.shape
        rows = keep[None, :, :, None].expand(batch, kv_heads, spec.budget, head_dim)  # (B, kv_heads, budget, hd)
        layer.keys = layer.keys.gather(2, rows)
        layer.values = layer.values.gather(2, rows)
        self.positions[layer_idx] = positions.gather(1, keep)
        if layer_idx in self.scores:
            self.scores[layer_idx] = self.scores[layer_idx].gather(1, keep)

    def _score(self, layer_idx: int, layer: Any) -> torch.Tensor:
        """Higher is kept: ``(kv_heads, held)`` float32."""
        name, positions = self.spec.name, self.positions[layer_idx]
        if name in ("window", "sinks"):
            return positions.float()
        if name in ATTENTION_SCORED:
            return self.scores[layer_idx]
        if name == "knorm":
            return -layer.keys[0].float().norm(dim=-1)  # (kv_heads, held): lowest norm kept
        if name == "random":
            return torch.rand(positions.shape, generator=self.generator).to(positions.device)
        raise AssertionError(f"no score for policy '{name}'")

    def holdings(self) -> list[LayerHolding]:
        """Per layer: the positions held in each KV head and the bytes of the live K and V tensors."""
        out = []
        for layer_idx, layer in enumerate(self.layers):
            if not getattr(layer, "is_initialized", False):
                out.append(LayerHolding(layer_idx, (), 0))
                continue
            positions = tuple(tuple(int(p) for p in head) for head in self.positions[layer_idx].tolist())
            out.append(LayerHolding(layer_idx, positions, layer.keys.nbytes + layer.values.nbytes))
        return out

    def bytes_held(self) -> int:
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.layers
                   if getattr(layer, "is_initialized", False))

    def held_positions(self, layer_idx: int, head: int) -> tuple[int, ...]:
        """The original positions one layer holds in one KV head, ascending."""
        if layer_idx not in self.positions:
            return ()
        return tuple(int(p) for p in self.positions[layer_idx][head].tolist())


class AttentionMass:
    """A per-call attention recorder (see ``kvviz/attention.py``) that adds attention mass into a PolicyCache.

    H2O: every query's attention row is added to the positions it looked at, summed over the query heads that
    share each KV head. SnapKV (prefill only): the last ``snapkv_window`` queries' rows, average-pooled over
    ``SNAPKV_POOLING`` neighbouring positions, become the prompt's scores. It computes during the forward, so a
    timed call includes the policy's cost.
    """

    def __init__(self, cache: PolicyCache) -> None:
        self.cache = cache

    def hold(self, layer_idx: int, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None,
             scaling: float, softcap: float | None) -> None:
        spec = self.cache.spec
        if spec.name == "snapkv":
            window = min(spec.snapkv_window, query.shape[-2])
            query = query[..., -window:, :]  # (B, q_heads, window, hd): the observation window
            mask = mask[..., -window:, :] if mask is not None else None
        weights = attention_weights(query, key, mask, scaling, softcap)[0]  # (q_heads, q, held)
        kv_heads = key.shape[1]
        mass = weights.sum(dim=1)  # (q_heads, held)
        mass = mass.view(kv_heads, -1, mass.shape[-1]).sum(dim=1)  # (kv_heads, held)
        if spec.name == "snapkv":
            mass = torch.nn.functional.avg_pool1d(mass[None], SNAPKV_POOLING, stride=1,
                                                  padding=SNAPKV_POOLING // 2, count_include_pad=False)[0]
            self.cache.scores[layer_idx] = mass
        else:
            self.cache.scores[layer_idx] = self.cache.scores[layer_idx] + mass
