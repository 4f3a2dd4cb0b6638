"""``python -m kvviz policies``: argument parsing and printing for the cache-policy comparison.

``kvviz/cli.py`` registers it through ``add_arguments(parser)``, which sets ``run`` on the parser. Bad input
(an unknown policy, a budget that cannot hold the sinks or that holds the whole text, an unreadable text, a
quantised cache whose backend is not installed) raises
``InputError``, which the CLI prints as one line with exit status 2; what can be checked before the model loads
is. What it does not do: compute (``quality.py``, ``eviction.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kvviz.errors import InputError

DEFAULT_POLICIES = "full,window,sinks,h2o,snapkv,knorm,random"
DEFAULT_TOKENS = 2_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kvviz.cli import add_model_arguments, positive_int  # the one definition of --model, --device and --dtype

    add_model_arguments(parser)
    parser.add_argument("--text", default=None,
                        help="a UTF-8 text file (default: chapters I-III of Pride and Prejudice, shipped with kvviz)")
    parser.add_argument("--policies", default=DEFAULT_POLICIES,
                        help=f"comma-separated, in the order printed (default {DEFAULT_POLICIES})")
    parser.add_argument("--budget", type=positive_int, required=True, help="tokens each layer holds per KV head")
    parser.add_argument("--sinks", type=_count, default=4, help="first tokens the sinks policy always keeps (4)")
    parser.add_argument("--tokens", type=positive_int, default=None,
                        help=f"tokens of the text to use (default: the first {DEFAULT_TOKENS:,}, or all if fewer)")
    parser.add_argument("--prompt-tokens", type=positive_int, default=None,
                        help="tokens fed in the first call, the rest one at a time (default: half the tokens)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random policy (0)")
    parser.add_argument("--quant-backend", default="hqq", choices=("hqq", "quanto"),
                        help="backend of the int4 and int2 caches (hqq, an optional package; quanto compiles on "
                             "first use)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    parser.set_defaults(run=run_policies_command)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def parse_policy_names(text: str) -> list[str]:
    """The names in a comma-separated list, in order, each once; ``InputError`` for an unknown or empty list."""
    from kvviz.policies.eviction import ALL_POLICY_NAMES as POLICY_NAMES

    names = list(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))
    if not names:
        raise InputError(f"No policy given: pass --policies with some of {', '.join(POLICY_NAMES)}.")
    for name in names:
        if name not in POLICY_NAMES:
            raise InputError(f"Unknown policy '{name}': choose from {', '.join(POLICY_NAMES)}.")
    return names


def _read_text(path: str | None) -> tuple[str, str]:
    from kvviz.policies.quality import SHIPPED_TEXT_NAME, shipped_text

    if path is None:
        return shipped_text(), SHIPPED_TEXT_NAME
    try:
        return Path(path).read_text(encoding="utf-8"), path
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"kvviz cannot read --text {path}: {error.__class__.__name__}.") from None


def run_policies_command(args: argparse.Namespace) -> int:
    from kvviz.policies.eviction import PolicySpec

    names = parse_policy_names(args.policies)
    from kvviz.policies.quantised import check_backend

    specs = [PolicySpec(name, args.budget, sinks=args.sinks, seed=args.seed, backend=args.quant_backend)
             for name in names]
    for spec in specs:
        spec.validate()
        check_backend(spec.name, spec.backend)
    text, text_name = _read_text(args.text)
    loaded = _load(args)
    from kvviz.policies.quality import compare_policies, text_ids

    ids = text_ids(loaded, text, args.tokens or DEFAULT_TOKENS, at_most=args.tokens is None)
    prompt_tokens = args.prompt_tokens or len(ids) // 2
    show_progress = not args.quiet and sys.stderr.isatty()

    def on_progress(done: int, total: int) -> None:
        if show_progress:
            sys.stderr.write(f"\r\033[K[{done / total:4.0%}] token {done:,} of {total:,}")
            sys.stderr.flush()

    result = compare_policies(loaded, ids, specs, prompt_tokens, text_name, on_progress)
    if show_progress:
        sys.stderr.write("\r\033[K")
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    _print_table(loaded, result)
    return 0


def _load(args: argparse.Namespace) -> Any:
    from transformers.utils import logging as transformers_logging

    from kvviz.models import load_model

    transformers_logging.disable_progress_bar()  # stderr is for one-line errors
    return load_model(args.model, device=args.device, dtype=args.dtype)


def _print_table(loaded: Any, result: Any) -> None:
    from kvviz.kv_formula import format_bytes

    scored = result.tokens - result.prompt_tokens
    print(f"# {loaded.card.name} on {result.device} ({result.dtype}); text: {result.text}")
    print(f"# {result.tokens:,} tokens: {result.prompt_tokens:,} in one prefill, then one at a time; {scored:,} next "
          "tokens scored; top1 and KL are against the full cache; ms/token is a decode step, eviction included")
    print(f"{'policy':8s} {'budget':>6s} {'bytes_held':>10s} {'perplexity':>10s} {'top1':>6s} {'KL_nats':>8s} "
          f"{'ms/token':>8s}")
    for policy in result.policies:
        budget = "-" if policy.budget_tokens is None else str(policy.budget_tokens)
        print(f"{policy.name:8s} {budget:>6s} {format_bytes(policy.bytes_held):>10s} {policy.perplexity:10.3f} "
              f"{policy.top1_agreement:6.1%} {policy.kl:8.4f} {policy.ms_per_token:8.1f}")
    print(f"# wall time {result.wall_seconds:.1f} s")
