"""How long a second start of the default model takes, and how much of it is importing the libraries.

Runs, each ``--runs`` times in a fresh process (after one untimed run that converts the GGUF if needed):

- the whole CLI, ``python -m kvviz step --model smollm2-135m --tokens 1``, to its exit after the first token;
- the import floor: ``import torch; from transformers.models.llama import modeling_llama``, which any loader of
  transformers' Llama code pays before reading a byte of weights;
- one process that times each phase: torch, transformers, its modelling code, tokenizer, weights, first forward.

With ``--first``, it first times one first start: the CLI with ``KVVIZ_CACHE_DIR`` pointing at an empty temporary
folder, so the GGUF is dequantised and converted as on a new machine (the folder is removed afterwards).

Prints min–max and median of each. It asserts nothing: the figures depend on the machine and how busy it is.

    python scripts/start_time.py [--runs 5] [--first]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # run the commands from here, wherever the script was started

CLI = [sys.executable, "-m", "kvviz", "step", "--model", "smollm2-135m", "--prompt", "The capital of France is",
       "--tokens", "1", "--device", "cpu"]
FLOOR = [sys.executable, "-c", "import torch; from transformers.models.llama import modeling_llama"]
PHASES = r"""
import time
marks = [("start", time.perf_counter())]
def mark(name): marks.append((name, time.perf_counter()))
import torch; mark("torch")
import transformers; mark("transformers package")
import transformers.modeling_utils; mark("transformers.modeling_utils")
from kvviz.models import converted_smollm2_dir
from transformers import AutoModelForCausalLM, AutoTokenizer
folder = converted_smollm2_dir(); mark("kvviz + auto classes")
tokenizer = AutoTokenizer.from_pretrained(folder); mark("tokenizer")
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
mark("weights")
with torch.inference_mode():
    model(**tokenizer("The capital of France is", return_tensors="pt"))
mark("first forward")
for (_, before), (name, after) in zip(marks, marks[1:]):
    print(f"{name}\t{after - before:.3f}")
"""


def wall(command: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT, env={**os.environ, **(env or {})})
    return time.perf_counter() - start


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f} s (median {statistics.median(values):.2f} s, {len(values)} runs)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--first", action="store_true", help="also time one first start (GGUF conversion)")
    args = parser.parse_args()
    if args.first:
        with tempfile.TemporaryDirectory(prefix="kvviz-first-start-") as empty:
            print(f"first start (GGUF dequantised and converted), whole CLI: {wall(CLI, {'KVVIZ_CACHE_DIR': empty}):.1f} s")
    wall(CLI)  # untimed: converts the GGUF on a first start, warms the OS file cache
    print(f"whole CLI to the first token: {spread([wall(CLI) for _ in range(args.runs)])}")
    print(f"import floor (torch + transformers' Llama code): {spread([wall(FLOOR) for _ in range(args.runs)])}")
    phases: dict[str, list[float]] = {}
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", PHASES], check=True, capture_output=True, text=True,
                             cwd=ROOT).stdout
        for line in out.splitlines():
            name, seconds = line.split("\t")
            phases.setdefault(name, []).append(float(seconds))
    for name, values in phases.items():
        print(f"  {name}: {spread(values)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
