"""``python -m kvviz prefix`` and ``python -m kvviz serve``: argument parsing and printing for the serving engine.

``kvviz/cli.py`` registers both through ``add_arguments(name, parser)``, which sets ``run`` on the parser. Bad
input raises ``InputError`` (before the model loads where it can), which the CLI prints as one line with exit
status 2. What it does not do: compute (``engine.py``, ``prefix.py``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from kvviz.errors import InputError
from kvviz.serving.accounting import default_pool_blocks

MIN_BLOCK_SIZE = 4  # transformers' smallest page; kept here so bad input fails before torch is imported


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    from kvviz.cli import add_model_arguments  # the one definition of --model, --device and --dtype

    add_model_arguments(parser)
    parser.add_argument("--block-size", type=_whole_number, default=16, help="tokens per KV block (at least 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    if name == "prefix":
        parser.add_argument("--prompt", action="append", default=[],
                            help="a prompt; repeat to run several in order, each reusing what came before")
        parser.add_argument("--new-tokens", type=_whole_number, default=2,
                            help="tokens each prompt generates (at least 2: see kvviz/serving/prefix.py)")
        parser.set_defaults(run=run_prefix_command)
    elif name == "serve":
        parser.add_argument("--requests", type=_whole_number, default=8, help="how many requests")
        parser.add_argument("--new-tokens", type=_whole_number, default=16, help="new tokens per request")
        parser.add_argument("--blocks", type=_whole_number, default=None,
                            help="blocks in the pool (default: room for every request at full length)")
        parser.add_argument("--max-batch-tokens", type=_whole_number, default=256,
                            help="most tokens one step may feed (longer prompts are split across steps)")
        parser.add_argument("--arrive-every", type=_whole_number, default=1,
                            help="request i arrives at step i × this (0: all at once)")
        parser.add_argument("--no-prefix-sharing", action="store_true", help="turn prefix caching off")
        parser.set_defaults(run=run_serve_command)
    else:
        raise ValueError(f"no serving command '{name}'")


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None


def _check_block_size(block_size: int) -> None:
    if block_size < MIN_BLOCK_SIZE:
        raise InputError(f"The block size must be at least {MIN_BLOCK_SIZE} tokens (got {block_size}).")


def _load(args: argparse.Namespace) -> Any:
    from transformers.utils import logging as transformers_logging

    from kvviz.models import load_model

    transformers_logging.disable_progress_bar()  # stderr is for one-line errors
    return load_model(args.model, device=args.device, dtype=args.dtype)


# ----- prefix ---------------------------------------------------------------------------------------------------

def run_prefix_command(args: argparse.Namespace) -> int:
    prompts = list(args.prompt)
    if not prompts:
        raise InputError("No prompt given: pass --prompt TEXT, once per prompt, at least once.")
    if any(not text.strip() for text in prompts):
        raise InputError("A prompt is empty: every --prompt needs some text.")
    _check_block_size(args.block_size)
    if args.new_tokens < 2:
        raise InputError(f"--new-tokens must be at least 2 (got {args.new_tokens}): a request that finishes in its "
                         "prefill step leaves no reusable blocks.")
    loaded = _load(args)
    from kvviz.serving.prefix import run_prefix
    from kvviz.stepper import encode_prompt

    run = run_prefix(loaded, [encode_prompt(loaded, text) for text in prompts], block_size=args.block_size,
                     new_tokens=args.new_tokens)
    if args.json:
        print(json.dumps(run.to_dict()))
        return 0
    print(f"# {loaded.card.name} on {loaded.device} ({loaded.dtype_name}); blocks of {run.block_size} tokens; "
          "prompts run in order, each reusing the full blocks of those before it")
    print(f"{'prompt':>6} {'tokens':>6} {'full_blocks':>11} {'hit_blocks':>10} {'hit_tokens':>10} "
          f"{'diverges_at':>11} {'ttft_ms':>8}")
    for index, prompt in enumerate(run.prompts):
        divergence = "-" if prompt.first_divergence is None else str(prompt.first_divergence)
        print(f"{index:6d} {prompt.tokens:6d} {prompt.full_blocks:11d} {prompt.hit_blocks:10d} {prompt.hit_tokens:10d} "
              f"{divergence:>11} {prompt.ttft_ms:8.1f}")
    return 0


# ----- serve ----------------------------------------------------------------------------------------------------

def run_serve_command(args: argparse.Namespace) -> int:
    for flag, value in (("--requests", args.requests), ("--new-tokens", args.new_tokens),
                        ("--max-batch-tokens", args.max_batch_tokens)):
        if value < 1:
            raise InputError(f"{flag} must be at least 1 (got {value}).")
    if args.blocks is not None and args.blocks < 1:
        raise InputError(f"--blocks must be at least 1 (got {args.blocks}).")
    if args.arrive_every < 0:
        raise InputError(f"--arrive-every must be 0 or more (got {args.arrive_every}).")
    _check_block_size(args.block_size)
    loaded = _load(args)
    from kvviz.serving.engine import run_requests
    from kvviz.serving.workload import demo_requests

    requests = demo_requests(loaded, args.requests, args.new_tokens, args.arrive_every)
    blocks = args.blocks or default_pool_blocks([r.max_cache_tokens for r in requests], args.block_size)
    trace = run_requests(loaded, requests, block_size=args.block_size, num_blocks=blocks,
                         max_batch_tokens=args.max_batch_tokens, prefix_sharing=not args.no_prefix_sharing,
                         compare_sequential=True)
    if args.json:
        payload = trace.to_dict()
        # One entry per request: what was asked (prompt ids, arrival) and what it got.
        payload["requests"] = [asdict(request) | asdict(outcome)
                               for request, outcome in zip(trace.requests, trace.outcomes)]
        del payload["outcomes"]
        print(json.dumps(payload))
        return 0
    _print_serve_table(loaded, trace)
    return 0


def _print_serve_table(loaded: Any, trace: Any) -> None:
    from kvviz.serving.accounting import format_bytes

    print(f"# {loaded.card.name} on {loaded.device} ({loaded.dtype_name}); {len(trace.requests)} requests; pool of "
          f"{trace.num_blocks} blocks × {trace.block_size} tokens × {format_bytes(trace.block_bytes)}")
    print(f"{'step':>4} {'prefill':>7} {'decode':>6} {'running':>7} {'waiting':>7} {'used':>4} {'cached':>6} "
          f"{'free':>4} {'paged':>10} {'contiguous':>10} {'ms':>7}")
    for step in trace.steps:
        states = [view.state for view in step.requests]
        used = sum(1 for block in step.blocks if block.ref_count > 0)
        cached = sum(1 for block in step.blocks if block.cached)
        print(f"{step.index:4d} {step.prefill_tokens:7d} {step.decode_tokens:6d} "
              f"{states.count('prefilling') + states.count('decoding'):7d} "
              f"{states.count('waiting') + states.count('preempted'):7d} {used:4d} {cached:6d} {step.free_blocks:4d} "
              f"{format_bytes(step.memory.paged_reserved):>10} {format_bytes(step.memory.contiguous_reserved):>10} "
              f"{step.ms:7.1f}" + (f"  preempted {', '.join(step.preempted)}" if step.preempted else "")
              + (f"  sat out {', '.join(step.sat_out)}" if step.sat_out else ""))
    s = trace.summary
    print(f"# peak bytes: paged {format_bytes(s.paged_bytes_peak)}, "
          f"contiguous {format_bytes(s.contiguous_bytes_reserved)}; "
          f"waste: paged {s.waste_fraction_paged:.1%}, contiguous {s.waste_fraction_contiguous:.1%}")
    print(f"# reserving the whole {trace.context_length:,}-token context per request (as servers before paged "
          f"attention did): peak {format_bytes(s.contiguous_context_bytes_reserved)}, "
          f"waste {s.waste_fraction_contiguous_context:.1%}")
    print(f"# tokens/s: batched {s.tokens_per_s_batched:.1f}, one at a time {s.tokens_per_s_sequential:.1f}; "
          f"preemptions {s.preemptions}; prompt tokens reused from the prefix cache {s.prefix_cached_tokens}")
    print(f"# outputs match one-at-a-time decoding: {'yes' if s.outputs_match_sequential else 'NO'}")
