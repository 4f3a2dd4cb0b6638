"""Per-call attention capture, with no global hooks and no per-model state.

How: a stateless attention function is registered once in transformers' ``AttentionInterface`` under the name
``"kvviz"`` (with the SDPA mask builder, so masks are exactly what SDPA would get) and a model is switched to it
with ``model.set_attn_implementation("kvviz")``. transformers forwards extra keyword arguments of the model call
down to the attention function, so a stepper passes its own ``AttentionRecorder`` per call::

    recorder = AttentionRecorder()
    model(input_ids, past_key_values=cache, kvviz_recorder=recorder)

Without a recorder the function *is* ``sdpa_attention_forward`` (benchmarks and naive paths pay nothing). With
one, it computes the attention the eager way (softmax(QK^T·scale + mask)·V in float32), keeps the weights of the
queries of this call, and returns the output computed from those very weights. Many browser sessions share one
model: each call carries its own recorder, so they never see each other's weights.

What it does not do: choose what to keep for the UI (the stepper does), or support attention variants it does
not implement (learned sinks, ALiBi/position bias); those calls fall back to SDPA and record nothing.
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
    """Collects, for one model call, each layer's attention weights ``(heads, q_len, kv_len)``.

    The weights stay on the model's device until ``to_numpy`` copies them to the CPU at the end of the call;
    only then does the host wait for the device.
    """

    def __init__(self) -> None:
        self._weights: dict[int, torch.Tensor] = {}

    def record(self, layer_idx: int, weights: torch.Tensor) -> None:
        self._weights[layer_idx] = weights[0].detach()  # (heads, q, kv): batch 1

    @property
    def layers(self) -> list[int]:
        return sorted(self._weights)

    def to_numpy(self, dtype: np.dtype = np.float16) -> list[np.ndarray]:
        """One array per layer, in layer order, each ``(heads, q_len, kv_len)``."""
        return [self._weights[i].float().cpu().numpy().astype(dtype) for i in self.layers]


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
    """SDPA when nobody records; eager maths with the weights handed to ``kvviz_recorder`` otherwise."""
    unsupported = kwargs.get("position_bias") is not None or getattr(module, "sinks", None) is not None
    if kvviz_recorder is None or unsupported:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]
    key = repeat_kv(key, groups)  # (B, q_heads, kv_len, head_dim)
    value = repeat_kv(value, groups)
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scaling  # (B, q_heads, q_len, kv_len)
    softcap = kwargs.get("softcap")
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores + _additive_mask(attention_mask, query.shape[-2], key.shape[-2], scores.device)
    weights = torch.softmax(scores, dim=-1)
    kvviz_recorder.record(module.layer_idx, weights)
    output = torch.matmul(weights.to(value.dtype), value)  # (B, q_heads, q_len, head_dim)
    return output.transpose(1, 2).contiguous(), weights  # (B, q_len, q_heads, head_dim)


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
    """Switch ``model`` to the recorder-aware attention (identical to SDPA for calls without a recorder)."""
    _register()
    model.set_attn_implementation(ATTENTION_NAME)
