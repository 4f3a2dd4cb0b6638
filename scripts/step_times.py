"""Cached ms per token at new tokens 10, 100 and 500 beside one naive forward over the same context (SmolLM2).

One cached run of 502 decode steps after a 32-token benchmark prompt (recording and attention capture off); the
cached figure at step n is the median of the 5 steps around it. The naive figure is the median of 3 full forward
passes (``NaiveStepper.prefill``) over the same tokens, after one untimed pass. Asserts nothing.

    python scripts/step_times.py [--device cpu] [--dtype float32]
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
from kvviz.stepper import NaiveStepper, Stepper  # noqa: E402

STEPS = (10, 100, 500)
PROMPT_TOKENS = 32


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    loaded = load_model("smollm2-135m", device=args.device, dtype=args.dtype)
    print(f"loaded in {time.perf_counter() - start:.1f} s ({loaded.loaded_from}) on {loaded.device}, "
          f"{loaded.dtype_name}")
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


if __name__ == "__main__":
    raise SystemExit(main())
