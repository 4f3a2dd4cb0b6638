"""Per-call attention capture, with no global hooks and no per-model state.

How: a stateless attention function is registered once in transformers' ``AttentionInterface`` under the name
``"kvviz"`` (with the SDPA mask builder, so masks are exactly what SDPA would get) and a model is switched to it
with ``model.set_attn_implementation("kvviz")``. transformers forwards extra keyword arguments of the model call
down to the attention function, so a stepper passes its own ``AttentionRecorder`` per call::

    recorder = AttentionRecorder()
    model(input_ids, past_key_values=cache, kvviz_recorder=recorder)   # timed: the same SDPA maths as without
    recorder.compute()                                                  # not timed: the weights, in float32

The function always computes the layer's output with ``sdpa_attention_forward``, so a call with a recorder does
the same attention maths as one without (benchmarks, the naive path): timings compare like with like. With a
recorder it also hands over references to the layer's queries, its keys (the cache's own tensor: nothing is
copied) and its mask; ``compute()`` then works out the weights the eager way, softmax(QK^T·scale + mask) in
float32, after the timed forward. They are the weights SDPA applied, up to float32 rounding (the Attention page
checks them against transformers' eager attention). Many browser sessions share one model: each call carries its
own recorder, so they never see each other's weights.

What it does not do: choose what to keep for the UI (the stepper does), time anything, or support attention
variants it does not implement (learned sinks, ALiBi/position bias); those layers record nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION_NAME = "kvviz"


class AttentionRecorder:
    """Collects, for one model call, what each layer attended with; ``compute()`` turns it into weights.

    During the forward it only keeps references (no arithmetic, no host–device synchronisation), so recording
    adds nothing measurable to the timed call. ``compute()`` and ``to_numpy()`` run after it.
    """

    def __init__(self) -> None:
        self._held: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float, float | None]] = {}
        self._weights: dict[int, torch.Tensor] = {}

    def hold(self, layer_idx: int, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None,
             scaling: float, softcap: float | None) -> None:
        """Keep what this layer attended with: ``query`` (B, q_heads, q_len, d), ``key`` (B, kv_heads, kv_len, d)."""
        self._held[layer_idx] = (query.detach(), key.detach(), mask, scaling, softcap)

    def record(self, layer_idx: int, weights: torch.Tensor) -> None:
        self._weights[layer_idx] = weights[0].detach()  # (heads, q, kv): batch 1

    def compute(self) -> None:
        """The weights of every held layer, softmax(QK^T·scale + mask) in float32; the references are dropped."""
        for layer_idx, (query, key, mask, scaling, softcap) in sorted(self._held.items()):
            self.record(layer_idx, attention_weights(query, key, mask, scaling, softcap))
        self._held.clear()

    @property
    def layers(self) -> list[int]:
        return sorted(self._weights)

    def to_numpy(self, dtype: np.dtype = np.float16) -> list[np.ndarray]:
        """One array per layer, in layer order, each ``(heads, q_len, kv_len)``; computes held layers first."""
        self.compute()
        return [self._weights[i].float().cpu().numpy().astype(dtype) for i in self.layers]


def attention_weights(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float,
                      softcap: float | None = None) -> torch.Tensor:
    """Eager attention weights in float32, ``(B, q_heads, q_len, kv_len)``; keys shared by a group of query heads
    (GQA) are repeated to every query head of the group."""
    key = repeat_kv(key, query.shape[1] // key.shape[1])  # (B, q_heads, kv_len, head_dim)
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling  # (B, q_heads, q_len, kv_len)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores + _additive_mask(mask, query.shape[-2], key.shape[-2], scores.device)
    return torch.softmax(scores, dim=-1)


def kvviz_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # (B, q_heads, q_len, head_dim)
    key: torch.Tensor,  # (B, kv_heads, kv_len, head_dim)
    value: torch.Tensor,  # (B, kv_heads, kv_len, head_dim)
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    kvviz_recorder: AttentionRecorder | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDPA, always; with ``kvviz_recorder`` the layer's queries, keys and mask are also handed to it."""
    output = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                    **kwargs)
    unsupported = kwargs.get("position_bias") is not None or getattr(module, "sinks", None) is not None
    if kvviz_recorder is not None and not unsupported:
        kvviz_recorder.hold(module.layer_idx, query, key, attention_mask,
                            scaling if scaling is not None else query.shape[-1] ** -0.5, kwargs.get("softcap"))
    return output


def _additive_mask(mask: torch.Tensor | None, q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """0 where a query may look, -inf where it may not, broadcastable to ``(B, heads, q_len, kv_len)``.

    SDPA's mask builder returns None when plain causality suffices; then queries are the *last* ``q_len``
    positions of the ``kv_len`` keys (bottom-right aligned, as with a cache).
    """
    if mask is None:
        query_positions = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
        allowed = torch.arange(kv_len, device=device)[None, :] <= query_positions  # (q_len, kv_len)
    elif mask.dtype == torch.bool:
        allowed = mask[..., -kv_len:]
    else:
        return mask[..., -kv_len:].float()
    zeros = torch.zeros((), device=device)
    return torch.where(allowed, zeros, torch.tensor(float("-inf"), device=device))


def _register() -> None:
    # Registration maps a name to two stateless functions; it is idempotent and holds no per-call data.
    AttentionInterface.register(ATTENTION_NAME, kvviz_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def install_attention(model: Any) -> None:
    """Switch ``model`` to the recorder-aware attention (SDPA's maths on every call, with or without a recorder)."""
    _register()
    model.set_attn_implementation(ATTENTION_NAME)
