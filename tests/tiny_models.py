"""Tiny random models with a particular cache layout, shared by the tests that need one (no download)."""

from __future__ import annotations

from transformers import MistralConfig

from kvviz.models import LoadedModel, load_random_model


def sliding_mistral(window: int, vocab_size: int = 257, max_positions: int = 256) -> LoadedModel:
    """A 2-layer Mistral-style model whose layers all attend over a sliding window of ``window`` tokens."""
    config = MistralConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=8, sliding_window=window,
                           max_position_embeddings=max_positions)
    return load_random_model(config, "tiny-mistral-sliding")
