"""Arithmetic cost of one forward call: FLOPs (estimate) and bytes that must move (weights + KV cache read).

Matrix multiplies dominate a decoder: each parameter of a linear layer costs 2 FLOPs (multiply + add) per token
processed, and attention costs 2·2·q_heads·head_dim FLOPs per (query, key) pair (QKᵀ and the weighted sum of V),
counted layer by layer with each layer's own window (``kvviz.kv_formula.attention_flops``). Norms, rotary embeddings
and the softmax are left out, so the figures are slight underestimates. Only the last position's logits are
computed (``logits_to_keep=1``), so the LM head counts once per call.
"""

from __future__ import annotations

from kvviz.kv_formula import attention_flops
from kvviz.models import LoadedModel, ModelCard


def linear_parameters(card: ModelCard, vocab_size: int, hidden_size: int) -> int:
    """Parameters used as matrices per token (everything but the embedding lookup and the LM head)."""
    return max(card.parameters - vocab_size * hidden_size, 0)


def forward_flops(loaded: LoadedModel, vocab_size: int, hidden_size: int, new_tokens: int, context: int) -> float:
    """FLOPs of one call processing ``new_tokens`` queries whose keys span up to ``context`` positions."""
    linear = 2.0 * linear_parameters(loaded.card, vocab_size, hidden_size) * new_tokens
    attention = attention_flops(loaded.spec, new_tokens, context)
    head = 2.0 * vocab_size * hidden_size
    return linear + attention + head
