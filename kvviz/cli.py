"""Command line: ``python -m kvviz {models,step,bench,memory,prefix,serve}``.

Every failure the user can fix exits with status 2 and one line on stderr (``kvviz: error: …``); nothing here
prints a traceback for bad input. Subcommands other than ``models`` and ``step`` live beside the code they run
and expose ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Sequence

from kvviz.errors import KvvizError


# Subcommands implemented in kvviz/<name>.py, each with add_arguments(parser) and run(args) -> int.
FEATURE_COMMANDS: dict[str, str] = {
    "bench": "time decode paths (naive, cached, static, CUDA graphs, generate) on the same tokens",
    "memory": "KV cache size calculator",
}

# Serving subcommands, parsed and printed by kvviz/serving/cli_commands.py (add_arguments(name, parser) sets run).
SERVING_COMMANDS: dict[str, str] = {
    "prefix": "prefix caching: which full KV blocks later prompts reuse, and their time to first token",
    "serve": "continuous batching over a paged KV cache, step by step, beside one-at-a-time decoding",
}


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``kvviz: error: …``) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"kvviz: error: {message} (see --help)\n")
        sys.exit(2)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m", help="registry key, local folder or HF id")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: fp32 CPU, bf16 GPU)")


def _models(args: argparse.Namespace) -> int:
    from kvviz.models import REGISTRY, is_available

    for key, entry in REGISTRY.items():
        ok, why = is_available(key)
        print(f"{key:14s} {'available' if ok else 'MISSING  '}  {entry.description}; {why}")
    print("Any Hugging Face id (org/name) or local model folder also works when its files are reachable.")
    return 0


def _add_step_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--tokens", type=positive_int, default=20,
                        help="new tokens to generate (the prefill chooses the first)")
    parser.add_argument("--compare", action="store_true", help="also run the naive recompute and compare")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-at-eos", action="store_true", help="stop early at an end-of-sequence token")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _step(args: argparse.Namespace) -> int:
    from kvviz.models import load_model
    from kvviz.records import Trace
    from kvviz.stepper import CompareStepper, Sampling, Stepper, encode_prompt

    if not args.prompt.strip():
        raise KvvizError("The prompt is empty: pass --prompt with some text.")
    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
    sampling.validate()
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    options = dict(sampling=sampling, capture_attention=False, max_new_tokens=args.tokens)
    stepper = CompareStepper(loaded, **options) if args.compare else Stepper(loaded, **options)
    trace = Trace(model=loaded.key, device=str(loaded.device), dtype=loaded.dtype_name)
    prompt_ids = encode_prompt(loaded, args.prompt, chat_template=args.chat)
    record = stepper.prefill(prompt_ids)
    trace.append(record)
    if not args.json:
        print(f"# {loaded.card.name} on {loaded.device} ({loaded.dtype_name}); prompt {len(prompt_ids)} tokens; "
              "step 0 is the prefill")
        print(f"{'step':>4} {'token':>16} {'cache_len':>9} {'cache_bytes':>12} {'ms_cached':>9} "
              f"{'ms_naive':>9} {'match':>5}")
    for index in range(args.tokens):
        if index > 0:
            if args.stop_at_eos and record.is_eos:
                break
            record = stepper.step()
            trace.append(record)
        if not args.json:
            naive = f"{record.ms_naive:9.1f}" if record.ms_naive is not None else f"{'-':>9}"
            match = {None: "-", True: "yes", False: "NO"}[record.same_token]
            print(f"{record.index:4d} {json.dumps(record.token_text)[:16]:>16} {record.cache_len:9d} "
                  f"{record.cache_bytes:12,d} {record.ms:9.1f} {naive} {match:>5}")
    if args.json:
        print(trace.to_json())
    else:
        print("# generated: " + json.dumps("".join(r.token_text for r in trace.records)))
    return 0


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; ``argv`` (default: ``sys.argv``) names the subcommand whose full options are loaded."""
    parser = _OneLineParser(prog="python -m kvviz", description="kvviz: see the KV cache of a real transformer.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    commands.add_parser("models", help="list models and whether each is available").set_defaults(run=_models)
    step = commands.add_parser("step", help="step a model token by token and print the cache")
    _add_step_arguments(step)
    step.set_defaults(run=_step)
    # Only the chosen subcommand's module is imported: `memory` is arithmetic and should not wait for torch.
    chosen = _chosen_command(argv)
    for name, help_text in FEATURE_COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        if chosen == name:
            module = importlib.import_module(f"kvviz.{name}")
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    for name, help_text in SERVING_COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        if chosen == name:
            from kvviz.serving.cli_commands import add_arguments

            add_arguments(name, sub)
    return parser


def _chosen_command(argv: Sequence[str] | None) -> str | None:
    args = list(sys.argv[1:] if argv is None else argv)
    return next((arg for arg in args if not arg.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    if args.command in ("models", "step", "bench"):
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # this process's stderr is for one-line errors
    try:
        return args.run(args)
    except KvvizError as error:
        sys.stderr.write(f"kvviz: error: {error}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("kvviz: interrupted\n")
        return 130
