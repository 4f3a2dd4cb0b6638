"""Command line: ``python -m kvviz {models,step,bench,memory,prefix,serve,policies}``: the argument plumbing of every
subcommand.

Every failure the user can fix exits with status 2 and one line on stderr (``kvviz: error: …``); nothing here
prints a traceback for bad input. Each subcommand parses its arguments here and calls the engine: ``step`` the
steppers, ``bench`` ``kvviz.bench``, ``memory`` ``kvviz.kv_formula`` and ``kvviz.kv_configs``; ``prefix`` and
``serve`` are parsed by ``kvviz/serving/cli_commands.py``, ``policies`` by ``kvviz/policies/cli_commands.py``.
Modules that need torch are imported inside the subcommand that uses them: ``memory`` is arithmetic and should not
wait for torch.

What it does not do: compute anything itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from kvviz import report
from kvviz.bench_results import PATHS, BenchConfig, BenchResult
from kvviz.errors import InputError, KvvizError
from kvviz.kv_formula import (
    BF16, CACHE_PRECISIONS, DEFAULT_CACHE_GROUP, DEFAULT_RESERVE, GPUS, MAX_BATCH, MAX_CONTEXT, WEIGHT_PRECISIONS,
    Fit, MemoryEstimate, Precision, estimate, fit_on_gpu, format_bytes, kv_bytes_per_token, parse_gpu,
    parse_precision,
)

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
    """A whole number of at least 1; thousands separators ("131,072", "131_072") are accepted."""
    try:
        value = int(text.replace(",", "").replace("_", ""))
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
    from kvviz.stepper import Sampling
    from kvviz.tracing import start_trace

    if not args.prompt.strip():
        raise KvvizError("The prompt is empty: pass --prompt with some text.")
    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
    sampling.validate()
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    stepper, trace = start_trace(loaded, args.prompt, compare=args.compare, sampling=sampling,
                                 capture_attention=False, max_new_tokens=args.tokens, chat_template=args.chat)
    record = trace.records[-1]
    if not args.json:
        print(f"# {loaded.card.name} on {loaded.device} ({loaded.dtype_name}); prompt {trace.prompt_tokens} tokens; "
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


# ----- bench ----------------------------------------------------------------------------------------------------

def _add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m kvviz bench``."""
    add_model_arguments(parser)
    parser.add_argument("--tokens", type=positive_int, default=64,
                        help="new tokens per run: one prefill, then tokens-1 decode steps (default 64)")
    parser.add_argument("--prompt-tokens", type=positive_int, default=32,
                        help="prompt length in tokens (default 32; the naive path's cost grows with it)")
    parser.add_argument("--paths", nargs="+", default=None, metavar="PATH",
                        help=f"paths to time, space- or comma-separated (default: all of {', '.join(PATHS)}; "
                             "those that cannot run here are skipped with the reason)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed runs per cached path (default 3)")
    parser.add_argument("--naive-repeats", type=positive_int, default=1,
                        help="timed runs of the O(T²) naive path (default 1)")
    parser.add_argument("--warmup-tokens", type=positive_int, default=4,
                        help="tokens of each path's untimed warm-up run (default 4)")
    parser.add_argument("--graphs-compile", action="store_true",
                        help="graphs path: torch.compile the decode step before capturing it (CUDA only)")
    parser.add_argument("--graphs-steps", type=positive_int, default=1, metavar="K",
                        help="graphs path: decode steps per graph replay; each token gets replay time / K (default 1)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for PyTorch (default: PyTorch's choice); 1 is steadier on a busy machine")
    parser.add_argument("--json", metavar="FILE", help="also write the full result as JSON ('-': to stdout only)")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")


def _bench(args: argparse.Namespace) -> int:
    """``python -m kvviz bench``: time the decode paths on one model and print the table (and the JSON)."""
    import torch

    from kvviz.bench import BenchProgress, parse_paths, run_benchmark, validate
    from kvviz.models import load_model

    paths = parse_paths(args.paths) if args.paths is not None else PATHS
    config = BenchConfig(
        tokens=args.tokens, prompt_tokens=args.prompt_tokens, paths=paths, repeats=args.repeats,
        naive_repeats=args.naive_repeats, warmup_tokens=args.warmup_tokens, graphs_compile=args.graphs_compile,
        graphs_steps=args.graphs_steps,
    )
    validate(config)
    if args.paths is not None and "llamacpp" in paths:
        from kvviz.llamacpp_engine import unavailable_reason

        reason = unavailable_reason(args.model.strip())
        if reason is not None:  # asked for by name: say why at once rather than skip it after loading the model
            raise InputError(f"The llamacpp path cannot run: {reason}.")
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # this process only: the CLI owns it, unlike the app's shared server
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    show_progress = not args.quiet and sys.stderr.isatty()

    def on_progress(event: BenchProgress) -> bool:
        if show_progress:
            sys.stderr.write(f"\r\033[K[{event.fraction:4.0%}] {event.message}")
            sys.stderr.flush()
        return True

    result = run_benchmark(loaded, config, on_progress)
    if show_progress:
        sys.stderr.write("\r\033[K")
    if args.json == "-":
        print(result.to_json())
        return 0
    print(format_bench_table(result))
    if args.json:
        target = Path(args.json)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(result.to_json() + "\n", encoding="utf-8")
        print(f"# full result: {target}")
    return 0


def format_bench_table(result: BenchResult) -> str:
    """The CLI's report: one line per path, then what ``kvviz.report`` says about the result."""
    env, config = result.environment, result.config
    marks = [config.prompt_tokens + k for k in (10, 100, config.tokens - 1) if 1 <= k <= config.tokens - 1]
    marks = sorted(set(marks))
    lines = [
        f"# {env.describe()}; torch threads: {env.threads}",
        f"# prompt {config.prompt_tokens} tokens, {config.tokens} new tokens; {config.repeats} timed runs "
        f"({config.naive_repeats} for naive) after a {config.warmup_tokens}-token warm-up; ms are medians "
        "[min-max] across runs; @N is the decode step at position N (prompt + step); 1st call is the "
        "path's first decode step (its warm-up); xnaive is naive's end-to-end time (prefill + every step) over the "
        "path's",
        f"{'path':9s} {'prefill':>8s} {'ms/token':>9s} {'[min-max]':>15s} "
        + " ".join(f"{'@' + str(m):>8s}" for m in marks)
        + f" {'1st call':>9s} {'xnaive':>8s}  tokens",
    ]
    for path in result.paths:
        if not path.ok:
            lines.append(report.path_status_sentence(path))
            continue
        spread = path.ms_per_token
        at = [path.steps.ms_at(m) for m in marks]
        speedup = result.speedup_vs_naive(path.path)
        match = {True: "same", False: f"DIFFER from token {path.first_mismatch}", None: "-"}[path.matches_reference]
        cold = path.cold_first_step_ms
        lines.append(
            f"{path.path:9s} {path.prefill_ms.median:8.1f} {spread.median:9.2f} "
            f"{f'[{spread.low:.1f}-{spread.high:.1f}]':>15s} "
            + " ".join(f"{v:8.1f}" if v is not None else f"{'-':>8s}" for v in at)
            + (f" {cold:9.1f} " if cold is not None else f" {'-':>9s} ")
            + (f"{speedup:7.1f}x" if speedup is not None else f"{'-':>8s}")
            + f"  {match}" + (f" ({path.reason})" if path.reason else "")
        )
    growth = report.naive_growth_sentence(result)
    if growth is not None:
        lines.append(f"# {growth}")
    sentences = [*report.setup_sentences(result), *report.crossover_sentences(result), *report.growth_sentences(result),
                 report.peak_sentence(result), *report.bandwidth_sentences(result), *report.engine_sentences(result),
                 *report.engine_gap_sentences(result), *report.famous_figure_sentences(result)]
    lines.extend(f"# {sentence}" for sentence in sentences)
    lines.extend(f"# WARNING: {warning}" for warning in report.warnings(result))
    if not result.complete:
        lines.append("# stopped early: figures cover the runs that finished")
    lines.append(f"# wall time {result.wall_seconds:.1f} s (warm-ups, setup and device measurement included)")
    return "\n".join(lines)


# ----- memory ---------------------------------------------------------------------------------------------------

def _at_most(limit: int, what: str) -> Any:
    def parse(text: str) -> int:
        value = positive_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"{what} is at most {limit:,}, got {value:,}")
        return value
    return parse


def _precision_argument(table: dict[str, Precision]) -> Any:
    def parse(text: str) -> Precision:
        try:
            return parse_precision(text, table)
        except InputError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse


def _reserve(text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share such as 0.1 or 10%, got '{text}'") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 0.99, got {text}")
    return value


def _add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m kvviz memory``."""
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--preset", help="a model preset (see --list)")
    what.add_argument("--config", help="a config.json file or a local model folder holding one")
    what.add_argument("--list", action="store_true", help="list the presets and their bytes per token")
    parser.add_argument("--context", type=_at_most(MAX_CONTEXT, "the context"),
                        help=f"tokens per sequence, at most {MAX_CONTEXT:,} (required with --preset/--config)")
    parser.add_argument("--batch", type=_at_most(MAX_BATCH, "the batch"), default=1,
                        help=f"sequences held at once, at most {MAX_BATCH:,} (default 1)")
    parser.add_argument("--dtype", type=_precision_argument(WEIGHT_PRECISIONS), default=BF16,
                        help="weights dtype: fp32, fp16, bf16, fp8, int8, int4 (default bf16; the cache follows "
                             "unless --cache-dtype)")
    parser.add_argument("--cache-dtype", type=_precision_argument(CACHE_PRECISIONS), default=None,
                        help="KV cache dtype: fp32, fp16, bf16, fp8, int8, int4 (default: --dtype)")
    parser.add_argument("--group-size", type=positive_int, default=DEFAULT_CACHE_GROUP,
                        help=f"elements per scale/zero-point group of an int8/int4 cache (default "
                             f"{DEFAULT_CACHE_GROUP})")
    parser.add_argument("--params", type=positive_int, default=None,
                        help="parameter count, when a --config's architecture cannot be counted")
    parser.add_argument("--gpu", type=str, default=None, help=f"also fit on a GPU: {', '.join(GPUS)}")
    parser.add_argument("--reserve", type=_reserve, default=DEFAULT_RESERVE,
                        help="share of GPU memory kept for activations and the CUDA context (default 0.1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _memory(args: argparse.Namespace) -> int:
    """``python -m kvviz memory``: bytes of weights and KV cache for a preset or a config.json."""
    if args.list:
        return _print_presets(args.json)
    if not args.preset and not args.config:
        raise InputError("Choose a model: --preset NAME (see --list) or --config PATH.")
    if args.context is None:
        raise InputError("Pass --context N: the number of tokens per sequence.")
    gpu = parse_gpu(args.gpu) if args.gpu else None
    from kvviz.kv_configs import get_preset, spec_from_config_path

    spec = get_preset(args.preset) if args.preset else spec_from_config_path(args.config, args.params)
    if args.params:
        spec = replace(spec, parameters=args.params)
    cache_source = args.cache_dtype or CACHE_PRECISIONS[args.dtype.key]
    cache = cache_source.with_group_size(args.group_size)
    est = estimate(spec, args.context, args.batch, args.dtype, cache)
    fit = fit_on_gpu(est, gpu, args.reserve) if gpu else None
    if args.json:
        out = est.to_dict()
        if fit is not None:
            out["fit"] = fit.to_dict()
        print(json.dumps(out, indent=2))
        return 0
    for line in _memory_report_lines(est, fit):
        print(line)
    return 0


def _memory_report_lines(est: MemoryEstimate, fit: Fit | None) -> Iterable[str]:
    spec = est.spec
    yield f"# {spec.name} — {spec.attention_kind}; {spec.geometry()}"
    yield f"# source: {spec.source}"
    cache = est.cache_precision
    rows = [
        ("KV cache per token", est.kv_bytes_per_token, f"in {cache.label}"),
        ("KV cache per sequence", est.kv_bytes_per_sequence, f"at {est.context:,} tokens"),
        (f"KV cache, batch {est.batch:,}", est.kv_bytes_total, ""),
        ("weights", est.weights_bytes,
         f"{spec.parameters:,} parameters in {est.weights_precision.key}" if spec.parameters
         else "parameter count unknown: pass --params"),
        ("weights + KV cache", est.total_bytes, ""),
        ("one KV head per query head", est.kv_bytes_per_sequence_without_sharing,
         f"per sequence ({est.sharing_factor:,.1f}× the cache)"),
    ]
    for label, value, detail in rows:
        yield f"{label:28s} {format_bytes(value):>12s}  {value:>20,d} bytes  {detail}".rstrip()
    yield est.sentence()
    if spec.shares_kv:
        yield est.sharing_sentence()
    if fit is not None:
        yield fit.sentence()
    yield "Units: KiB/MiB/GiB = 2^10/2^20/2^30 bytes (1 GiB = 1.074 GB)."


def _print_presets(as_json: bool) -> int:
    from kvviz.kv_configs import all_presets

    specs = all_presets()
    if as_json:
        print(json.dumps([{
            "key": s.key, "name": s.name, "source": s.source, "attention": s.attention_kind, "layers": s.layers,
            "query_heads": s.query_heads, "kv_heads": s.kv_heads, "head_dim": s.head_dim,
            "parameters": s.parameters, "max_context": s.max_context,
            "kv_bytes_per_token_bf16": kv_bytes_per_token(s, BF16),
        } for s in specs], indent=2))
        return 0
    print(f"{'preset':15s} {'attention':34s} {'layers':>6s} {'params':>8s} {'context':>9s} "
          f"{'KV/token bf16':>14s}  source")
    for s in specs:
        print(f"{s.key:15s} {s.attention_kind:34s} {s.layers:6d} {s.parameters / 1e9:7.2f}B {s.max_context:9,d} "
              f"{format_bytes(kv_bytes_per_token(s, BF16)):>14s}  {s.source}")
    print("Or --config PATH for any config.json / local model folder. Units: KiB = 1,024 bytes.")
    return 0


# ----- the parser ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = _OneLineParser(prog="python -m kvviz", description="kvviz: see the KV cache of a real transformer.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    commands.add_parser("models", help="list models and whether each is available").set_defaults(run=_models)
    subcommands = (
        ("step", "step a model token by token and print the cache", _add_step_arguments, _step),
        ("bench", "time decode paths (naive, cached, static, CUDA graphs, generate) on the same tokens",
         _add_bench_arguments, _bench),
        ("memory", "KV cache size calculator", _add_memory_arguments, _memory),
    )
    for name, help_text, add_arguments, run in subcommands:
        sub = commands.add_parser(name, help=help_text)
        add_arguments(sub)
        sub.set_defaults(run=run)
    for name, help_text in SERVING_COMMANDS.items():
        from kvviz.serving.cli_commands import add_arguments as add_serving_arguments

        add_serving_arguments(name, commands.add_parser(name, help=help_text))
    from kvviz.policies.cli_commands import add_arguments as add_policies_arguments

    add_policies_arguments(commands.add_parser(
        "policies", help="cache eviction policies at a token budget, scored against the full cache on a long text"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
