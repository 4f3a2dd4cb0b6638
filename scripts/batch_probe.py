"""Would batching sessions' decode steps help? Time B sessions' next tokens as B separate batch-1 forwards (what the
model worker does now) against one batch-B forward (what batching across sessions would do at best).

Each of the B sequences has its own cache of the same length (a random prompt of ``--context`` tokens), so the
batched forward needs no padding or mask: this is the upper bound of what batching could gain; sessions with
different lengths would also pay for padding. Asserts nothing; prints the medians.

    python scripts/batch_probe.py [--model smollm2-135m] [--context 64] [--batches 1,2,4,8] [--steps 10] [--threads 0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import DynamicCache  # noqa: E402

from kvviz.models import load_model  # noqa: E402


def decode_ms(model, batch: int, context: int, steps: int, generator: torch.Generator, vocab: int) -> list[float]:
    """Milliseconds of each of ``steps`` greedy decode forwards of a batch of ``batch`` equal-length sequences."""
    ids = torch.randint(0, vocab, (batch, context), generator=generator)  # (B, T)
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device="cpu", dtype="float32")
    vocab = int(loaded.model.config.get_text_config(decoder=True).vocab_size)
    generator = torch.Generator().manual_seed(0)
    decode_ms(loaded.model, 1, args.context, 2, generator, vocab)  # warm-up
    one = statistics.median(decode_ms(loaded.model, 1, args.context, args.steps, generator, vocab))
    print(f"{loaded.card.name}, cpu float32, {torch.get_num_threads()} torch threads, context {args.context}")
    print(f"{'sessions':>8}  {'one at a time (B x batch-1)':>28}  {'batched (one batch-B)':>22}  {'batched / one at a time':>24}")
    for batch in (int(value) for value in args.batches.split(",")):
        batched = statistics.median(decode_ms(loaded.model, batch, args.context, args.steps, generator, vocab))
        print(f"{batch:>8}  {one * batch:>25,.1f} ms  {batched:>19,.1f} ms  {batched / (one * batch):>23.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
