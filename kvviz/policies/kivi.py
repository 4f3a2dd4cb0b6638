"""Why KIVI quantises keys per channel and values per token, measured on a live cache.

KIVI (Liu et al., 2024, "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache") observed that keys have a
few channels of large magnitude (outlier channels, the same channels at every token) while values have none. A
group that spans a key's channels (per-token grouping) must stretch its range over the outlier, so every other
channel in it is rounded coarsely; grouping along the tokens of one channel (per-channel) gives each channel its
own range. Values are read as a weighted sum of whole rows, and per-token grouping bounds each row's error.

``quantisation_errors`` takes one layer's keys and values from a cache, rounds them both ways with the same
round-to-nearest min–max quantiser (``fake_quantise``: a scale and a zero point per group, ``bits`` bits per
element) and reports the mean absolute error per key channel and per value token, each also relative to that
channel's (token's) own mean magnitude. The relative error is the one to compare: grouped per channel, an outlier
channel's absolute error is large because its values are, while grouped per token the outlier is rounded well and
every ordinary channel beside it is rounded with a step sized for the outlier. The rounding is done here in
float32 to compare the two groupings on the same footing; it is not the kernel of any backend.
What it does not do: hold a quantised cache (``quantised.py``), or run the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kvviz.errors import InputError

GROUP = 32  # elements per group either way (KIVI's group size G = 32), so the two groupings compare like for like


def fake_quantise(x: torch.Tensor, bits: int, dim: int, group: int | None = None) -> torch.Tensor:
    """Round ``x`` to ``2**bits`` levels with a min–max scale and zero point per group along ``dim``.

    Groups are ``group`` consecutive elements along ``dim`` (all of it when None); a last shorter group is allowed.
    Returns the dequantised tensor (same shape, float32).
    """
    if not 1 <= bits <= 8:
        raise InputError(f"Bits must be between 1 and 8 (got {bits}).")
    x = x.float().movedim(dim, -1)  # (..., n)
    n = x.shape[-1]
    size = n if group is None else group
    out = torch.empty_like(x)
    levels = 2**bits - 1
    for start in range(0, n, size):
        chunk = x[..., start:start + size]  # (..., g)
        low = chunk.amin(dim=-1, keepdim=True)
        high = chunk.amax(dim=-1, keepdim=True)
        scale = (high - low).clamp_min(1e-8) / levels
        out[..., start:start + size] = torch.round((chunk - low) / scale).clamp(0, levels) * scale + low
    return out.movedim(-1, dim)


@dataclass(frozen=True)
class QuantisationErrors:
    """One layer's keys and values rounded per channel and per token; means are over the layer's KV heads."""

    layer: int
    bits: int
    tokens: int
    key_magnitude: np.ndarray  # (head_dim,) mean |K| per channel
    value_magnitude: np.ndarray  # (tokens,) mean |V| per token
    key_error_per_channel_grouping: np.ndarray  # (head_dim,) mean |K - Q(K)| per channel, groups along tokens
    key_error_per_token_grouping: np.ndarray  # (head_dim,) the same with groups along channels
    value_error_per_channel_grouping: np.ndarray  # (tokens,) mean |V - Q(V)| per token, groups along tokens
    value_error_per_token_grouping: np.ndarray  # (tokens,) the same with groups along channels

    def key_relative(self, grouping: str) -> np.ndarray:
        """(head_dim,) each channel's mean absolute error over its mean |K|; ``grouping`` 'channel' or 'token'."""
        error = self.key_error_per_channel_grouping if grouping == "channel" else self.key_error_per_token_grouping
        return error / np.maximum(self.key_magnitude, 1e-12)

    def value_relative(self, grouping: str) -> np.ndarray:
        """(tokens,) each token's mean absolute error over its mean |V|."""
        error = self.value_error_per_channel_grouping if grouping == "channel" else self.value_error_per_token_grouping
        return error / np.maximum(self.value_magnitude, 1e-12)

    @property
    def key_ratio(self) -> float:
        """Mean relative error of the keys grouped per token over that grouped per channel."""
        return float(self.key_relative("token").mean() / self.key_relative("channel").mean())

    @property
    def value_ratio(self) -> float:
        """Mean relative error of the values grouped per channel over that grouped per token."""
        return float(self.value_relative("channel").mean() / self.value_relative("token").mean())

    @property
    def outlier_channel(self) -> int:
        return int(np.argmax(self.key_magnitude))


def quantisation_errors(keys: torch.Tensor, values: torch.Tensor, layer: int, bits: int = 2) -> QuantisationErrors:
    """``keys`` and ``values``: one layer's cache, ``(batch, kv_heads, seq, head_dim)``; batch 1 is used."""
    if keys.dim() != 4 or keys.shape != values.shape:
        raise InputError("Keys and values must both be (batch, kv_heads, seq, head_dim).")
    k, v = keys[0].float(), values[0].float()  # (kv_heads, seq, hd)
    tokens = k.shape[1]
    if tokens < 2:
        raise InputError("Quantisation errors need at least two cached tokens.")
    per_channel = {"dim": 1, "group": GROUP}  # groups of 32 tokens within one channel
    per_token = {"dim": 2, "group": GROUP}  # groups of 32 channels within one token
    key_channel = (k - fake_quantise(k, bits, **per_channel)).abs()  # (kv_heads, seq, hd)
    key_token = (k - fake_quantise(k, bits, **per_token)).abs()
    value_channel = (v - fake_quantise(v, bits, **per_channel)).abs()
    value_token = (v - fake_quantise(v, bits, **per_token)).abs()
    return QuantisationErrors(
        layer=layer, bits=bits, tokens=tokens,
        key_magnitude=k.abs().mean(dim=(0, 1)).numpy(),
        value_magnitude=v.abs().mean(dim=(0, 2)).numpy(),
        key_error_per_channel_grouping=key_channel.mean(dim=(0, 1)).numpy(),
        key_error_per_token_grouping=key_token.mean(dim=(0, 1)).numpy(),
        value_error_per_channel_grouping=value_channel.mean(dim=(0, 2)).numpy(),
        value_error_per_token_grouping=value_token.mean(dim=(0, 2)).numpy(),
    )
