"""Cache surgery: change what a stepper's cache holds, on a copy, and see the next-token distribution move.

The stepper's cache holds every token fed so far; its last call fed the newest token (``ids[-1]``) and chose the
next one from that call's logits. Surgery rebuilds that call on a copy: the copy holds the first ``n - 1``
positions (everything before the newest token), the operation is applied to it, and the newest token is fed again
at its original position ``n - 1`` (passed as ``position_ids``: once rows are dropped the cache's length no longer
says where the token sits). The same call on an unchanged copy is the "untouched" distribution; it must equal the
stepper's own logits, and ``SurgeryResult.untouched_diff`` says by how much it does (0 on the CPU in float32).
The newest token's own key and value are computed afresh by that call, so surgery reaches positions ``0 … n - 2``.

Operations, on chosen positions, layers and KV heads (all when none are chosen):
- ``drop``: the rows are removed from the chosen layers (every KV head: a layer's tensors stay rectangular).
- ``zero``: keys and values set to zero. A zero key still scores 0, so the position keeps some attention weight
  (exp(0) against the others' exp(score)); a zero value adds nothing to the output for that weight.
- ``swap``: two positions exchange their key and value rows. Attention sums over the cached rows in any order, so
  this changes nothing beyond float rounding: where a token sat lives only in what its key and value encode
  (RoPE's rotation in the key, for SmolLM2), not in its slot.
- ``swap_values``: two positions exchange only their values: a query that finds one token's key reads the other's
  value.
Layout as in ``kvviz/cache.py``: ``(batch, kv_heads, seq, head_dim)``. What it does not do: change the stepper or
its cache (everything works on copies), choose tokens, or draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import DynamicCache

from kvviz.errors import InputError
from kvviz.models import LoadedModel
from kvviz.records import Candidate

ACTIONS = ("drop", "zero", "swap", "swap_values")
ACTION_LABELS = {
    "drop": "Drop the positions",
    "zero": "Zero their keys and values",
    "swap": "Swap two positions (key and value)",
    "swap_values": "Swap two positions' values only",
}
DOING = {  # the operation as a sentence says it: "after dropping positions 3, 4"
    "drop": "dropping positions",
    "zero": "zeroing the keys and values of positions",
    "swap": "swapping the keys and values of positions",
    "swap_values": "swapping only the values of positions",
}
TOP = 10


@dataclass(frozen=True)
class SurgeryOp:
    """What to change: ``positions`` (original token positions), in ``layers`` and KV ``heads`` (None: all)."""

    action: str
    positions: tuple[int, ...]
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None

    def doing(self, limit: int | None = None) -> str:
        """The operation as a sentence says it, "zeroing the keys and values of positions 3, 4"; past ``limit``
        positions the list ends with an ellipsis."""
        shown = self.positions if limit is None else self.positions[:limit]
        more = "…" if len(shown) < len(self.positions) else ""
        return f"{DOING[self.action]} {', '.join(map(str, shown))}{more}"


@dataclass(frozen=True)
class SurgeryResult:
    """The newest token fed again with the changed copy (``after``) and with an unchanged one (``before``)."""

    op: SurgeryOp
    query_position: int
    query_text: str
    before: tuple[Candidate, ...]
    after: tuple[Candidate, ...]
    kl: float  # KL(before ‖ after) of the next-token distributions, nats
    max_logit_diff: float
    untouched_diff: float  # max |Δ| between the unchanged copy's logits and the stepper's own
    rows_changed: int  # (position, layer, KV head) rows the operation touched

    @property
    def top_changed(self) -> bool:
        return self.before[0].token_id != self.after[0].token_id


def validate(op: SurgeryOp, cached_positions: int, layers: int, kv_heads: int) -> None:
    """Raise ``InputError`` unless ``op`` can be applied to positions ``0 … cached_positions - 1``."""
    if op.action not in ACTIONS:
        raise InputError(f"Unknown surgery '{op.action}': choose from {', '.join(ACTIONS)}.")
    if cached_positions < 1:
        raise InputError("Surgery needs at least one position before the newest token: step once more.")
    if not op.positions:
        raise InputError("Choose at least one position to operate on.")
    if len(set(op.positions)) != len(op.positions):
        raise InputError("Each position may be chosen once.")
    bad = [p for p in op.positions if not 0 <= p < cached_positions]
    if bad:
        raise InputError(f"Position {bad[0]} is not before the newest token: choose from 0 to {cached_positions - 1}.")
    if op.action in ("swap", "swap_values") and len(op.positions) != 2:
        raise InputError("A swap needs exactly two positions.")
    if op.action == "drop" and len(op.positions) >= cached_positions:
        raise InputError("Dropping every position leaves nothing to attend to but the newest token: keep one.")
    if op.layers is not None and (not op.layers or any(not 0 <= layer < layers for layer in op.layers)):
        raise InputError(f"Layers must be between 0 and {layers - 1}.")
    if op.heads is not None:
        if op.action == "drop":
            raise InputError("Drop removes whole rows from a layer, in every KV head; to silence one head, zero it.")
        if not op.heads or any(not 0 <= head < kv_heads for head in op.heads):
            raise InputError(f"KV heads must be between 0 and {kv_heads - 1}.")


def copy_cache(cache: Any, config: Any, length: int) -> DynamicCache:
    """A ``DynamicCache`` holding clones of the first ``length`` positions of every layer of ``cache``."""
    copy = DynamicCache(config=config)
    for index, layer in enumerate(cache.layers):
        copy.update(layer.keys[..., :length, :].clone(), layer.values[..., :length, :].clone(), index)
    return copy


def apply(op: SurgeryOp, cache: DynamicCache) -> int:
    """Change ``cache`` in place (a copy: see ``copy_cache``); return the (position, layer, head) rows touched."""
    layers = range(len(cache.layers)) if op.layers is None else op.layers
    touched = 0
    for index in layers:
        layer = cache.layers[index]
        kv_heads, held = layer.keys.shape[1], layer.keys.shape[-2]
        heads = list(range(kv_heads)) if op.heads is None else list(op.heads)
        if op.action == "drop":
            keep = [p for p in range(held) if p not in set(op.positions)]
            layer.keys, layer.values = layer.keys[..., keep, :], layer.values[..., keep, :]
        elif op.action == "zero":
            rows = list(op.positions)
            for head in heads:
                layer.keys[:, head, rows, :] = 0
                layer.values[:, head, rows, :] = 0
        else:
            first, second = op.positions
            tensors = (layer.keys, layer.values) if op.action == "swap" else (layer.values,)
            for tensor in tensors:
                for head in heads:
                    tensor[:, head, [first, second], :] = tensor[:, head, [second, first], :]
        touched += len(op.positions) * (kv_heads if op.action == "drop" else len(heads))
    return touched


@torch.inference_mode()
def run_surgery(loaded: LoadedModel, cache: Any, ids: Sequence[int], op: SurgeryOp,
                reference_logits: torch.Tensor | None = None) -> SurgeryResult:
    """Feed ``ids[-1]`` again over a changed copy of ``cache`` (which holds ``ids``) and over an unchanged one.

    ``reference_logits`` (the stepper's last logits, float32 CPU) is compared with the unchanged copy's.
    """
    n = len(ids)
    held = cache.get_seq_length() if cache is not None else 0
    if cache is None or n == 0 or held != n:
        raise InputError("Surgery needs a cached trace: press Prefill on the cached path first.")
    config = loaded.model.config
    text_config = config.get_text_config(decoder=True)
    kv_heads = int(cache.layers[0].keys.shape[1])
    validate(op, n - 1, int(text_config.num_hidden_layers), kv_heads)
    untouched = _next_logits(loaded, copy_cache(cache, config, n - 1), ids[-1], n - 1)
    changed_cache = copy_cache(cache, config, n - 1)
    touched = apply(op, changed_cache)
    changed = _next_logits(loaded, changed_cache, ids[-1], n - 1)
    before, after = torch.log_softmax(untouched, dim=-1), torch.log_softmax(changed, dim=-1)
    reference = untouched if reference_logits is None else reference_logits.float()
    return SurgeryResult(
        op=op, query_position=n - 1, query_text=loaded.tokenizer.decode([int(ids[-1])]),
        before=_candidates(loaded, before), after=_candidates(loaded, after),
        kl=float((before.exp() * (before - after)).sum()),
        max_logit_diff=float((untouched - changed).abs().max()),
        untouched_diff=float((untouched - reference).abs().max()), rows_changed=touched,
    )


def _next_logits(loaded: LoadedModel, cache: DynamicCache, token: int, position: int) -> torch.Tensor:
    """float32 CPU logits after feeding ``token`` at original ``position`` over ``cache``."""
    device = loaded.device
    out = loaded.model(input_ids=torch.tensor([[int(token)]], device=device),
                       position_ids=torch.tensor([[position]], device=device), past_key_values=cache,
                       use_cache=True, logits_to_keep=1)
    return out.logits[0, -1].float().cpu()


def _candidates(loaded: LoadedModel, log_probs: torch.Tensor) -> tuple[Candidate, ...]:
    top = torch.topk(log_probs, min(TOP, log_probs.numel()))
    return tuple(Candidate(int(i), loaded.tokenizer.decode([int(i)]), float(p.exp()))
                 for p, i in zip(top.values, top.indices))
