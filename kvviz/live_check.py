"""The memory formula checked against a running model: the bytes of the live cache, layer by layer.

What it does: compares a cached-path ``StepRecord``'s per-layer cache stats with ``kv_formula`` (exactly equal),
and runs a fresh ``Stepper`` to do so; on a CUDA GPU it also reads the caching allocator's growth while generating.

What it does not do: size anything itself (``kv_formula.py``), read configs (``kv_configs.py``), or draw.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass, replace
from typing import Any

from kvviz.errors import InputError
from kvviz.kv_configs import spec_from_config
from kvviz.kv_formula import check_positive, formula_text, kv_cache_bytes, layer_cache_bytes, precision_of_torch_dtype


# ----- formula vs the live cache --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerCheck:
    """One layer of a live cache next to the formula."""

    layer: int
    kind: str
    positions_seen: int
    stored: int
    formula_bytes: int
    live_bytes: int


@dataclass(frozen=True)
class LiveCheck:
    """The formula's bytes next to the bytes of the cache a real model holds, and (CUDA) the allocator's growth."""

    model: str
    device: str
    dtype: str
    batch: int
    positions: int  # tokens that went through the cache
    formula_bytes: int
    live_bytes: int
    layers: tuple[LayerCheck, ...]
    how: str  # what produced the cache
    formula: str = ""  # the sum, in words
    allocator_growth: int | None = None  # bytes torch.cuda.memory_allocated grew by while generating
    allocator_note: str = ""

    @property
    def matches(self) -> bool:
        return self.formula_bytes == self.live_bytes and all(l.formula_bytes == l.live_bytes for l in self.layers)

    @property
    def allocator_error(self) -> float | None:
        """Relative difference of the allocator's growth from the formula (None without CUDA)."""
        if self.allocator_growth is None or not self.formula_bytes:
            return None
        return (self.allocator_growth - self.formula_bytes) / self.formula_bytes

    def sentence(self) -> str:
        verdict = "exactly equal" if self.matches else "DIFFERENT"
        return (f"{self.model} on {self.device} ({self.dtype}), {self.positions:,} tokens: the formula says "
                f"{self.formula_bytes:,} bytes, the live K/V tensors hold {self.live_bytes:,} bytes — {verdict}.")

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "layers"},
                "matches": self.matches, "allocator_error": self.allocator_error,
                "layers": [asdict(layer) for layer in self.layers]}


def check_record(loaded: Any, record: Any, how: str) -> LiveCheck:
    """Compare the cache stats of a cached-path ``StepRecord`` of ``loaded`` with the formula, layer by layer."""
    if not record.cache_layers:
        raise InputError("This record holds no cache (the naive path keeps none): step with the cached path.")
    spec = spec_from_config(loaded.model.config, key=loaded.key, name=loaded.card.name, source=loaded.card.source,
                            parameters=loaded.card.parameters)
    first = record.cache_layers[0]
    precision = precision_of_torch_dtype(first.dtype)
    batch = first.shape[0]
    layers = []
    for stat in record.cache_layers:
        group = spec.groups[spec.layout[stat.layer]]
        layers.append(LayerCheck(
            layer=stat.layer, kind=group.kind, positions_seen=stat.positions_seen, stored=stat.stored,
            # DynamicCache is read between two calls: a full sliding layer holds window - 1 tokens then.
            formula_bytes=layer_cache_bytes(group, stat.positions_seen, batch, precision, between_calls=True),
            live_bytes=stat.bytes,
        ))
    return LiveCheck(
        model=loaded.card.name, device=str(loaded.device), dtype=first.dtype, batch=batch,
        positions=first.positions_seen,
        formula_bytes=kv_cache_bytes(spec, first.positions_seen, batch, precision, between_calls=True),
        live_bytes=record.cache_bytes, layers=tuple(layers), how=how,
        formula=formula_text(spec, precision, first.positions_seen, batch, between_calls=True),
    )


def live_prompt_ids(loaded: Any, tokens: int) -> list[int]:
    """A deterministic prompt of exactly ``tokens`` ids: kvviz's default prompt, repeated."""
    from kvviz.stepper import DEFAULT_PROMPT, encode_prompt

    base = encode_prompt(loaded, DEFAULT_PROMPT + " ")
    return (base * (tokens // len(base) + 1))[:tokens]


def measure_live_cache(loaded: Any, prompt_tokens: int = 128, new_tokens: int = 16) -> LiveCheck:
    """Prefill ``prompt_tokens`` and generate ``new_tokens`` with a fresh Stepper; compare its cache with the formula.

    On a CUDA device it also reads ``torch.cuda.memory_allocated`` before the prefill and after the last step: the
    growth is what the cache holds (every activation has been freed by then). A throw-away warm-up call first lets
    cuBLAS workspaces and lazily built buffers be allocated, so they are not counted as cache.
    """
    import torch

    from kvviz.stepper import Stepper

    check_positive(**{"prompt length": prompt_tokens, "number of new tokens": new_tokens})
    ids = live_prompt_ids(loaded, prompt_tokens)
    cuda = loaded.device.type == "cuda"
    before = None
    if cuda:
        warm_up = Stepper(loaded, capture_attention=False)
        warm_up.prefill(ids)
        warm_up.step()
        del warm_up
        gc.collect()
        torch.cuda.synchronize(loaded.device)
        before = torch.cuda.memory_allocated(loaded.device)
    stepper = Stepper(loaded, capture_attention=False, max_new_tokens=new_tokens)
    record = stepper.prefill(ids)
    for _ in range(new_tokens - 1):
        record = stepper.step()
    growth, note = None, ("The allocator check needs a CUDA GPU: this model runs on the CPU, where PyTorch keeps "
                          "no allocator counter to compare with.")
    if cuda:
        torch.cuda.synchronize(loaded.device)
        growth = torch.cuda.memory_allocated(loaded.device) - before
        note = ("torch.cuda.memory_allocated grew by this much from just before the prefill to just after the last "
                "step. The caching allocator rounds each block up to 512 bytes, hence a small difference. The "
                "counter is the whole process's: another browser session stepping this server's model at the same "
                "time adds its own memory to it.")
    how = f"a fresh prefill of {prompt_tokens} tokens and {new_tokens - 1} decode steps"
    check = check_record(loaded, record, how)
    del stepper  # the cache goes with it; nothing else holds it
    return replace(check, allocator_growth=growth, allocator_note=note)
