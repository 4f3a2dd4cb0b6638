"""InstrumentedCache: transformers' ``DynamicCache`` that reports what it holds and what each call appended.

Layout, as transformers holds it: every layer keeps keys and values of shape ``(batch, kv_heads, seq, head_dim)``.
The model calls ``update(key_states, value_states, layer_idx)`` once per layer per forward; this class passes the
call to ``DynamicCache`` (so it works with any decoder model transformers supports, sliding-window layers
included) and notes which positions were appended. With ``record_rows=True`` it also keeps the appended K/V rows
of the current call, copied to the CPU by ``take_appended_rows()`` (off in benchmarks: the copy synchronises).

With recording off the bookkeeping reads only tensor shapes, which needs no host–device synchronisation.
What it does not do: time anything, run the model, or know about tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from kvviz.records import LayerCacheStat


class InstrumentedCache(DynamicCache):
    """A ``DynamicCache`` with per-layer stats; pass it as ``past_key_values`` to any causal LM."""

    def __init__(self, config: Any, record_rows: bool = False) -> None:
        super().__init__(config=config)
        self.record_rows = record_rows
        self._appended: dict[int, tuple[int, int]] = {}
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        before = self.get_seq_length(layer_idx) if layer_idx < len(self.layers) else 0
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        self._appended[layer_idx] = (before, before + key_states.shape[-2])
        if self.record_rows:
            self._rows[layer_idx] = (key_states.detach(), value_states.detach())  # (B, kv_heads, new, head_dim)
        return keys, values

    def layer_stats(self) -> list[LayerCacheStat]:
        stats = []
        for index, layer in enumerate(self.layers):
            keys = getattr(layer, "keys", None)
            values = getattr(layer, "values", None)
            if keys is None or not getattr(layer, "is_initialized", False):
                stats.append(LayerCacheStat(index, 0, 0, (0,), "-", 0, None, (0, 0)))
                continue
            window = getattr(layer, "sliding_window", None) if getattr(layer, "is_sliding", False) else None
            stats.append(LayerCacheStat(
                layer=index,
                positions_seen=layer.get_seq_length(),
                stored=keys.shape[-2],
                shape=tuple(keys.shape),
                dtype=str(keys.dtype).removeprefix("torch."),
                bytes=keys.nbytes + values.nbytes,
                sliding_window=int(window) if window is not None else None,
                appended=self._appended.get(index, (0, 0)),
            ))
        return stats

    def total_bytes(self) -> int:
        return sum(stat.bytes for stat in self.layer_stats())

    def take_appended_rows(self) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """The K and V rows appended by the last call, per layer, as float16 ``(kv_heads, new, head_dim)``."""
        if not self.record_rows:
            return None
        rows = [
            (keys[0].float().cpu().numpy().astype(np.float16), values[0].float().cpu().numpy().astype(np.float16))
            for _, (keys, values) in sorted(self._rows.items())
        ]
        self._rows.clear()
        return rows
