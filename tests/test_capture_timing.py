"""Like-for-like timing: recording attention for the charts must not change the cached step or its clock.

The cached step runs the same attention maths (SDPA) whether or not it records, so its logits are bit-for-bit the
same; the weights are worked out after the timed call and timed apart (``capture_ms``). The numbers the Step
page's explanation quotes come from the formula checked against the live cache.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kvviz.attention import AttentionRecorder, attention_weights
from kvviz.explain import explanation, model_numbers
from kvviz.stepper import Stepper

PROMPT = [5, 17, 3, 99, 42, 8, 61, 7, 23, 11]


def test_recording_attention_leaves_the_logits_bit_for_bit_unchanged(tiny_llama):
    plain = Stepper(tiny_llama, capture_attention=False)
    recording = Stepper(tiny_llama, capture_attention=True, record_kv=True)
    for stepper in (plain, recording):
        stepper.prefill(PROMPT)
        for _ in range(6):
            stepper.step()
    assert torch.equal(plain.last_logits, recording.last_logits)


def test_recording_is_timed_apart_and_only_when_something_is_recorded(tiny_llama):
    recording = Stepper(tiny_llama, capture_attention=True).prefill(PROMPT)
    plain = Stepper(tiny_llama, capture_attention=False).prefill(PROMPT)
    assert recording.capture_ms is not None and recording.capture_ms > 0 and recording.attention
    assert plain.capture_ms is None and plain.attention is None


def test_the_recorder_only_holds_references_during_the_call_and_computes_eager_weights_after(tiny_llama):
    recorder = AttentionRecorder()
    with torch.inference_mode():
        tiny_llama.model(input_ids=torch.tensor([PROMPT]), use_cache=False, kvviz_recorder=recorder)
    layers = tiny_llama.card.layers
    assert recorder.layers == []  # nothing computed during the forward
    held = dict(recorder._held)
    assert sorted(held) == list(range(layers))
    weights = recorder.to_numpy(np.float32)
    assert len(weights) == layers and recorder._held == {}
    query, key, mask, scaling, softcap = held[0]
    expected = attention_weights(query, key, mask, scaling, softcap)[0].numpy()
    np.testing.assert_allclose(weights[0], expected, rtol=0, atol=0)
    np.testing.assert_allclose(weights[0].sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(weights[0][0], k=1) == 0)  # causal: no weight on later positions


def test_explanation_paragraphs_follow_the_model(tiny_llama, tiny_gpt2):
    llama, gpt2 = explanation("what_is_cached", tiny_llama), explanation("what_is_cached", tiny_gpt2)
    assert "rotary position embedding" in llama and "rotary position embedding" not in gpt2
    assert "learned position embedding" in gpt2 and "learned position embedding" not in llama
    assert "[rope]" not in llama + gpt2 and "[mha]" not in llama + gpt2 and "{" not in llama + gpt2
    numbers = model_numbers(tiny_gpt2)
    assert numbers.group_size == 1 and "one KV head per query head (multi-head" in gpt2


@pytest.mark.slow
def test_default_model_numbers_match_the_live_cache_and_weights(smollm2):
    numbers = model_numbers(smollm2)
    stepper = Stepper(smollm2, capture_attention=False)
    first = stepper.prefill(PROMPT)
    second = stepper.step()
    assert second.cache_bytes - first.cache_bytes == numbers.kv_bytes_per_token == 46_080  # measured growth
    assert numbers.weight_bytes == sum(p.numel() * 4 for p in smollm2.model.parameters())  # tied LM head
    assert numbers.crossover_tokens == 11_677  # weights / cache per token: K/V reads overtake weight reads
    text = explanation("what_is_cached", smollm2)
    for figure in ("2 · 30 · 3 · 64 · 4 B = 46,080 B", "about 11,677 tokens", "about 1,460 tokens",
                   "9 query heads share 3 KV heads", "3× smaller", "138,240 B per token"):
        assert figure in text, figure
