"""How many ATen operations one decode step of the graphs path dispatches: the kernels a CUDA graph of it replays.

One ``StaticDecoder`` step (the model on one token, the argmax, the buffer updates) after a 32-token benchmark
prompt, eager, watched by a ``TorchDispatchMode`` that counts every ATen call. Views (reshape, transpose, slice …)
only relabel memory and launch nothing; every other call launches about one kernel on a GPU (a matmul may launch
two, a fused attention one). It counts, it does not time: run it anywhere, the CPU included. Asserts nothing.

    python scripts/step_ops.py [--model smollm2-135m] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvviz.bench import benchmark_prompt  # noqa: E402
from kvviz.models import load_model  # noqa: E402
from kvviz.static_decode import StaticDecoder  # noqa: E402

VIEWS = {"view", "_unsafe_view", "reshape", "_reshape_alias", "transpose", "t", "permute", "unsqueeze", "squeeze",
         "expand", "slice", "select", "as_strided", "alias", "detach", "split", "unbind", "lift_fresh"}


class OpCounter(TorchDispatchMode):
    """Counts ATen calls by name while active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - the dispatcher's signature
        self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    prompt = benchmark_prompt(loaded, 32)
    with torch.inference_mode():
        decoder = StaticDecoder(loaded.model, len(prompt) + 4)
        decoder.prefill(prompt)
        decoder.decode(1)  # the first step may allocate or choose kernels once: count the second
        counter = OpCounter()
        with counter:
            decoder.decode(1)
    launches = {name: n for name, n in counter.calls.items() if name not in VIEWS}
    layers = loaded.card.layers
    print(f"{loaded.card.name}, {loaded.dtype_name}, {layers} layers: one decode step dispatches "
          f"{sum(counter.calls.values())} ATen calls, {sum(launches.values())} of them not views "
          f"(about {sum(launches.values()) / layers:.0f} per layer)")
    print(", ".join(f"{name} {n}" for name, n in sorted(launches.items(), key=lambda item: -item[1])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
