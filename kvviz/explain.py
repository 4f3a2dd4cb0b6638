"""The numbers the pages' explanations quote, computed from a loaded model with the project's own formulas.

An explanation is a Markdown file in ``kvviz/text/`` with ``{placeholders}``; ``explanation(name, loaded)`` fills
them from ``model_numbers(loaded)``, so every figure a student reads is the live model's (the cache bytes per token
from the formula that is tested against the live tensors, the weight bytes from the loaded parameters).

What it does not do: draw, import Streamlit, or run the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kvviz.kv_formula import format_bytes, kv_bytes_per_token, precision_of_torch_dtype
from kvviz.models import LoadedModel
from kvviz.roofline import weight_bytes_read

TEXT_DIR = Path(__file__).parent / "text"


@dataclass(frozen=True)
class ModelNumbers:
    """What sizes one decode step of ``model``: the cache per token and the weights every step reads."""

    model: str
    dtype: str
    layers: int
    query_heads: int
    kv_heads: int
    head_dim: int
    element_bytes: int
    kv_bytes_per_token: int  # every layer's K and V for one more token (windows not yet full)
    weight_bytes: int  # weights one forward call reads
    rotary: bool  # positions enter as rotations of Q and K (RoPE) rather than a learned embedding

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 for multi-head attention)."""
        return max(self.query_heads // max(self.kv_heads, 1), 1)

    @property
    def crossover_tokens(self) -> int:
        """Cached tokens at which one sequence's K/V reads equal the weight reads of a decode step."""
        return round(self.weight_bytes / self.kv_bytes_per_token)

    def placeholders(self) -> dict[str, Any]:
        """Every field and derived figure, formatted the way the texts print them."""
        return {
            **asdict(self),
            "group_size": self.group_size,
            "kv_bytes_per_token": f"{self.kv_bytes_per_token:,}",
            "kv_per_token_text": format_bytes(self.kv_bytes_per_token),
            "kv_1000_text": format_bytes(1000 * self.kv_bytes_per_token),
            "weight_text": format_bytes(self.weight_bytes),
            "crossover": f"{self.crossover_tokens:,}",
            "crossover_batch_8": f"{round(self.crossover_tokens / 8):,}",
            "mha_kv_bytes_per_token": f"{self.kv_bytes_per_token * self.group_size:,}",
        }


def model_numbers(loaded: LoadedModel) -> ModelNumbers:
    """The live model's numbers (its first layer group's geometry; ``kv_bytes_per_token`` sums every layer)."""
    spec = loaded.spec
    precision = precision_of_torch_dtype(loaded.dtype_name)
    first = spec.groups[0]
    return ModelNumbers(
        model=loaded.card.name, dtype=loaded.dtype_name, layers=spec.layers, query_heads=first.query_heads,
        kv_heads=first.kv_heads, head_dim=first.head_dim, element_bytes=precision.bits // 8,
        kv_bytes_per_token=kv_bytes_per_token(spec, precision), weight_bytes=weight_bytes_read(loaded.model),
        rotary=uses_rotary_positions(loaded.model.config),
    )


def uses_rotary_positions(config: Any) -> bool:
    """Whether the model rotates queries and keys by position (RoPE): its config then names RoPE parameters."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return any(getattr(text, name, None) is not None for name in ("rope_parameters", "rope_theta", "rope_scaling"))


def text(name: str) -> str:
    """The Markdown of ``kvviz/text/<name>.md`` as written (for texts that quote no model's numbers)."""
    return (TEXT_DIR / f"{name}.md").read_text(encoding="utf-8")


def explanation(name: str, loaded: LoadedModel) -> str:
    """The Markdown of ``kvviz/text/<name>.md`` with its placeholders filled from ``loaded``.

    A paragraph that starts with ``[rope]`` is kept only for a model with rotary positions, ``[no-rope]`` only for
    one without; ``[gqa]`` only where query heads share KV heads, ``[mha]`` only where they do not.
    """
    numbers = model_numbers(loaded)
    applies = {"[rope] ": numbers.rotary, "[no-rope] ": not numbers.rotary,
               "[gqa] ": numbers.group_size > 1, "[mha] ": numbers.group_size == 1}
    kept = []
    for paragraph in text(name).split("\n\n"):
        marker = next((m for m in applies if paragraph.startswith(m)), None)
        if marker is not None:
            paragraph = paragraph.removeprefix(marker) if applies[marker] else ""
        if paragraph.strip():
            kept.append(paragraph)
    return "\n\n".join(kept).format(**numbers.placeholders())
