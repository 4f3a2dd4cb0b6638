"""The real default model (SmolLM2-135M-Instruct from its GGUF package): offline, CPU."""

from __future__ import annotations

import pytest

from kvviz.stepper import CompareStepper, DEFAULT_PROMPT

pytestmark = pytest.mark.slow


def test_card_describes_grouped_query_attention(smollm2):
    card = smollm2.card
    assert (card.layers, card.query_heads, card.kv_heads, card.head_dim) == (30, 9, 3, 64)
    assert card.attention_kind == "GQA" and card.queries_per_kv_head == 3
    assert "Q4_1" in card.note and card.licence == "Apache-2.0"


def test_cached_and_naive_agree_for_16_steps_and_answer_sensibly(smollm2):
    stepper = CompareStepper(smollm2, capture_attention=False)
    records = [stepper.prefill(DEFAULT_PROMPT, chat_template=True)]
    records += [stepper.step() for _ in range(16)]
    assert all(r.same_token for r in records)
    assert max(r.max_logit_diff for r in records) < 1e-3
    text = "".join(r.token_text for r in records)
    assert "Paris" in text
    # 30 layers × 3 KV heads × 64 dims × K and V × 4 bytes (float32) = 46,080 bytes per token.
    growth = {b.cache_bytes - a.cache_bytes for a, b in zip(records, records[1:])}
    assert growth == {46_080}
