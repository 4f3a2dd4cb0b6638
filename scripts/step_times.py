"""Cached ms per token at new tokens 10, 100 and 500 beside one naive forward over the same context (SmolLM2).

One cached run of 502 decode steps after a 32-token benchmark prompt (recording and attention capture off); the
cached figure at step n is the median of the 5 steps around it. The naive figure is the median of 3 full forward
passes (``NaiveStepper.prefill``) over the same tokens, after one untimed pass.

With ``--page``: what the Step-through page measures at about 40, 300 and 600 tokens in the context, with the
page's own stepper (``CompareStepper``, attention capture and K/V recording on, as a browser tab runs it). For each
context length the prompt is that many tokens of the benchmark text, then 5 decode steps; each figure is the median
of those 5. ``cached`` is the model call with the cache, ``naive`` the call over the whole sequence without one
(both run the same SDPA attention); ``recording`` is the time spent after the cached call on the attention weights
and K/V rows for the charts, which neither path includes. Asserts nothing.

    python scripts/step_times.py [--page] [--device cpu] [--dtype float32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvviz.bench import benchmark_prompt  # noqa: E402
from kvviz.models import load_model  # noqa: E402
from kvviz.stepper import CompareStepper, NaiveStepper, Stepper  # noqa: E402

STEPS = (10, 100, 500)
PROMPT_TOKENS = 32
PAGE_CONTEXTS = (40, 300, 600)
PAGE_STEPS = 5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--page", action="store_true", help="the Step page's timings at 40, 300 and 600 tokens")
    args = parser.parse_args()
    start = time.perf_counter()
    loaded = load_model("smollm2-135m", device=args.device, dtype=args.dtype)
    print(f"loaded in {time.perf_counter() - start:.1f} s ({loaded.loaded_from}) on {loaded.device}, "
          f"{loaded.dtype_name}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if args.page:
        return page_table(loaded)
    prompt = benchmark_prompt(loaded, PROMPT_TOKENS)
    stepper = Stepper(loaded, capture_attention=False)
    stepper.prefill(prompt)
    ms = [stepper.step().ms for _ in range(max(STEPS) + 2)]
    print("| new token | cached ms/token (median of 5 around it) | naive ms (one forward over the context) |")
    print("|---|---|---|")
    for step in STEPS:
        cached = statistics.median(ms[step - 3: step + 2])
        ids = stepper.ids[: PROMPT_TOKENS + step]
        naive = NaiveStepper(loaded, capture_attention=False)
        naive.prefill(ids)  # untimed warm-up at this length
        forward = statistics.median(naive.prefill(ids).ms for _ in range(3))
        # Position as ``kvviz bench`` counts it: decode step n runs at position prompt + n (P + n tokens in context).
        print(f"| {step} (position {PROMPT_TOKENS + step}) | {cached:.1f} | {forward:,.1f} |")
    return 0


def page_table(loaded) -> int:
    print("| tokens in the context | cached ms | naive ms | naive / cached | recording for the charts, ms |")
    print("|---|---|---|---|---|")
    for context in PAGE_CONTEXTS:
        stepper = CompareStepper(loaded, capture_attention=True, record_kv=True)
        stepper.prefill(benchmark_prompt(loaded, context - 1))
        records = [stepper.step() for _ in range(PAGE_STEPS)]
        cached = statistics.median(r.ms for r in records)
        naive = statistics.median(r.ms_naive for r in records)
        recording = statistics.median(r.capture_ms for r in records)
        print(f"| {records[0].sequence_length}–{records[-1].sequence_length} | {cached:.1f} | {naive:,.1f} | "
              f"{naive / cached:.1f}× | {recording:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
