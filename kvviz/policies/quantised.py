"""``QuantisedPolicyCache``: transformers' ``QuantizedCache`` with the interface of ``PolicyCache``.

A quantised cache holds every token but in fewer bits: ``fp8`` (float8 e4m3 with one scale per tensor, built into
transformers) and ``int4`` / ``int2`` (group-wise integers with a scale and zero point per group of 64, through
the ``hqq`` or ``quanto`` backend, optional packages: ``hqq==0.2.8.post1``, ``optimum-quanto==0.2.7``). The
integer backends keep the newest tokens (up to 128) in full precision and re-quantise everything when that
residual fills, as KIVI does. Bytes held are read from the live tensors: the quantised data, their scales and
zero points, and the full-precision residual.

What it does not do: evict (``eviction.py``), or install a backend (a missing one is an ``InputError``).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from transformers import QuantizedCache

from kvviz.errors import InputError
from kvviz.policies.records import LayerHolding

QUANTISED_NAMES = ("fp8", "int4", "int2")
QUANT_BACKENDS = {"hqq": ("hqq", "hqq==0.2.8.post1"), "quanto": ("optimum.quanto", "optimum-quanto==0.2.7")}
DEFAULT_QUANT_BACKEND = "hqq"  # quanto compiles a C++ extension on first use (minutes on a 2-core CPU)


def check_backend(name: str, backend: str) -> None:
    """Raise ``InputError`` when ``name`` needs a backend that is unknown or not installed (int4, int2)."""
    if name not in ("int4", "int2"):
        return
    if backend not in QUANT_BACKENDS:
        raise InputError(f"Unknown quantisation backend '{backend}': choose {' or '.join(QUANT_BACKENDS)}.")
    module, package = QUANT_BACKENDS[backend]
    if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
        raise InputError(f"The {name} cache needs the {backend} backend, which is not installed: "
                         f"pip install {package}")


class QuantisedPolicyCache(QuantizedCache):
    """A quantised cache that holds every token; ``after_call`` and ``attention_recorder`` do nothing."""

    def __init__(self, config: Any, name: str, backend: str = DEFAULT_QUANT_BACKEND) -> None:
        check_backend(name, backend)
        if name == "fp8":
            super().__init__("fp8", config)
        else:
            super().__init__(backend, config, nbits=int(name.removeprefix("int")))
        self.name = name
        self.next_position = 0
        text_config = config.get_text_config(decoder=True)
        self.kv_heads = int(getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads)

    def attention_recorder(self, prefill: bool) -> None:
        return None

    def after_call(self, new_tokens: int) -> None:
        self.next_position += new_tokens

    def layer_bytes(self, layer: Any) -> int:
        if not getattr(layer, "is_initialized", False):
            return 0
        residual = layer.keys.nbytes + layer.values.nbytes
        return residual + _bytes_of(layer._quantized_keys) + _bytes_of(layer._quantized_values)

    def bytes_held(self) -> int:
        return sum(self.layer_bytes(layer) for layer in self.layers)

    def held_positions(self, layer_idx: int, head: int) -> tuple[int, ...]:
        """Every position fed so far: a quantised cache evicts nothing."""
        return tuple(range(self.next_position))

    def holdings(self) -> list[LayerHolding]:
        every = tuple(range(self.next_position))
        return [LayerHolding(index, (every,) * self.kv_heads if self.layer_bytes(layer) else (),
                             self.layer_bytes(layer)) for index, layer in enumerate(self.layers)]


def _bytes_of(held: Any) -> int:
    """Bytes of every tensor in a backend's quantised state: tuples, metadata dicts, tensor subclasses."""
    if isinstance(held, (tuple, list)):
        return sum(_bytes_of(item) for item in held)
    if isinstance(held, dict):
        return sum(_bytes_of(value) for value in held.values())
    if isinstance(held, torch.Tensor):
        if type(held) is not torch.Tensor and hasattr(held, "__tensor_flatten__"):
            names, _ = held.__tensor_flatten__()  # a packed subclass (quanto): its inner tensors hold the bytes
            return sum(_bytes_of(getattr(held, name)) for name in names)
        return held.nbytes
    return 0
