"""Build ``Trace`` objects without running a model, for chart tests and the page benchmark.

The records have the shapes a real stepper produces (cache stats, K/V rows, attention of the latest call) with
random contents; nothing here checks model behaviour.
"""

from __future__ import annotations

import numpy as np

from kvviz.records import Candidate, LayerCacheStat, StepRecord, Trace


def synthetic_trace(prompt_tokens: int, decode_steps: int, layers: int = 30, query_heads: int = 9,
                    kv_heads: int = 3, head_dim: int = 64, compare: bool = True, seed: int = 0) -> Trace:
    """A trace shaped like SmolLM2-135M's (by default): a prefill, then ``decode_steps`` one-token steps.

    Only the latest record carries attention weights (the charts read no other), which keeps a 2,000-token
    trace small enough to build in a fraction of a second.
    """
    rng = np.random.default_rng(seed)
    trace = Trace(model="synthetic", device="cpu", dtype="float32")
    total = prompt_tokens + decode_steps
    bytes_per_token = 2 * kv_heads * head_dim * 4
    for index in range(decode_steps + 1):
        new = prompt_tokens if index == 0 else 1
        length = prompt_tokens + index
        ids = tuple(int(t) for t in rng.integers(0, 256, size=new))
        attention = None
        if index == decode_steps:
            raw = rng.random((layers, query_heads, new, length)).astype(np.float32)
            attention = tuple((block / block.sum(axis=-1, keepdims=True)).astype(np.float16) for block in raw)
        kv_rows = tuple(
            (rng.standard_normal((kv_heads, new, head_dim)).astype(np.float16),
             rng.standard_normal((kv_heads, new, head_dim)).astype(np.float16))
            for _ in range(layers)
        )
        stats = tuple(
            LayerCacheStat(layer, length, length, (1, kv_heads, length, head_dim), "float32",
                           bytes_per_token * length, None, (length - new, length))
            for layer in range(layers)
        )
        probabilities = np.sort(rng.random(10))[::-1]
        probabilities = probabilities / probabilities.sum()
        candidates = tuple(Candidate(int(i), f"t{i}", float(p)) for i, p in enumerate(probabilities))
        trace.append(StepRecord(
            index=index, kind="prefill" if index == 0 else "decode", path="cached", input_ids=ids, new_ids=ids,
            new_texts=tuple(chr(97 + t % 26) * (1 + t % 3) for t in ids), token_id=0, token_text="t0",
            is_eos=False, candidates=candidates, sequence_length=length, cache_layers=stats,
            cache_bytes=bytes_per_token * length * layers, ms=40.0 + rng.random(),
            tokens_processed=new, flops=0.0, attention=attention, kv_rows=kv_rows,
            ms_naive=(60.0 + length * 0.5) if compare else None,
            naive_tokens_processed=length if compare else None,
            max_logit_diff=1e-5 if compare else None, same_token=True if compare else None,
        ))
    assert trace.records[-1].sequence_length == total
    return trace
