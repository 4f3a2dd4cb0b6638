"""What the Step-through page measures at about 40, 300 and 600 tokens in the context, on the default model.

The page's own stepper (``CompareStepper`` with attention capture and K/V recording on, as a browser tab runs it):
for each context length the prompt is that many tokens of the benchmark text, then 5 decode steps; each figure is
the median of those 5 steps. ``cached`` is the model call with the cache, ``naive`` the call over the whole
sequence without one; both run the same SDPA attention. ``recording`` is the time spent after the cached call on
the attention weights and K/V rows for the charts, which neither path includes. Asserts nothing.

    python scripts/step_page_times.py [--device cpu] [--dtype float32]
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
from kvviz.stepper import CompareStepper  # noqa: E402

CONTEXTS = (40, 300, 600)
STEPS = 5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    args = parser.parse_args()
    loaded = load_model("smollm2-135m", device=args.device, dtype=args.dtype)
    print(f"# {loaded.card.name} on {loaded.device}, {loaded.dtype_name}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| tokens in the context | cached ms | naive ms | naive / cached | recording for the charts, ms |")
    print("|---|---|---|---|---|")
    for context in CONTEXTS:
        stepper = CompareStepper(loaded, capture_attention=True, record_kv=True)
        stepper.prefill(benchmark_prompt(loaded, context - 1))
        records = [stepper.step() for _ in range(STEPS)]
        cached = statistics.median(r.ms for r in records)
        naive = statistics.median(r.ms_naive for r in records)
        recording = statistics.median(r.capture_ms for r in records)
        print(f"| {records[0].sequence_length}–{records[-1].sequence_length} | {cached:.1f} | {naive:,.1f} | "
              f"{naive / cached:.1f}× | {recording:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
