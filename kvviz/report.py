"""The words a benchmark result produces: its warnings, the naive-fit and crossover sentences, the bandwidth lines.

One room for them, so that ``python -m kvviz bench`` (``cli.format_bench_table``) and the Speed page say the same
thing about the same result. Each function takes a ``BenchResult`` and returns plain sentences (or None when there
is nothing to say); the caller adds its own frame (``# WARNING:`` on a terminal, ``st.warning`` on the page).

What it does not do: analyse (the fits, crossovers and noise tests are ``BenchResult`` methods in
``bench_results.py``), draw (``charts/speed.py``) or print.
"""

from __future__ import annotations

from kvviz.bench_results import NOISY_RATIO, BenchResult, PathResult

# Paths that decode step by step and so have a crossover with naive (generate is timed only as a whole).
CROSSOVER_PATHS: tuple[str, ...] = ("dynamic", "kvviz", "static", "graphs")


# ----- warnings -------------------------------------------------------------------------------------------------

def busy_sentence(result: BenchResult) -> str | None:
    """A warning when the machine's load exceeded its CPUs as the benchmark started; None otherwise."""
    env = result.environment
    if not env.busy:
        return None
    return (f"The machine's load ({env.load_average:.1f}) exceeded its {env.cpus} CPUs when this benchmark started: "
            "other work competed for them, so the times are inflated and noisy.")


def noise_sentence(result: BenchResult, ratio: float = NOISY_RATIO) -> str | None:
    """A warning when runs of one path disagree by more than ``ratio``; None when every path is steady."""
    noisy = result.noisy_paths(ratio)
    if not noisy:
        return None
    ranges = "; ".join(f"{p.path}'s {p.runs} runs {p.ms_per_token.low:.2f}–{p.ms_per_token.high:.2f} ms/token "
                       f"({p.ms_per_token.high / p.ms_per_token.low:.1f}×)" for p in noisy)
    return (f"Runs disagree: {ranges}. Something else used the machine during the benchmark (on a small "
            "machine, a browser drawing the page counts too). The medians are shown; compare paths with care, "
            "or run again on a quiet machine.")


def mismatch_sentence(result: BenchResult) -> str | None:
    """A warning naming the paths whose tokens differ from the reference path's; None when all agree."""
    if result.all_match:
        return None
    differing = ", ".join(f"{p.path} (from token {p.first_mismatch})" for p in result.measured
                          if p.matches_reference is False)
    return (f"Not every path chose the same tokens as {result.reference_path}: {differing}. In 16-bit types a "
            "near-tie between two tokens can go either way; the timings are still comparable.")


def warnings(result: BenchResult) -> list[str]:
    """Every warning the result calls for, in the order both the CLI and the page show them."""
    return [w for w in (busy_sentence(result), noise_sentence(result), mismatch_sentence(result)) if w is not None]


def path_status_sentence(path: PathResult) -> str:
    """Why a path has no timings: '<path> skipped: <reason>'."""
    return f"{path.path} {path.status}: {path.reason}"


# ----- what the measurements say -------------------------------------------------------------------------------

def naive_growth_sentence(result: BenchResult) -> str | None:
    """What the two naive fits say, in one sentence (None without a naive series)."""
    cumulative, per_step = result.naive_fit(), result.naive_step_fit()
    if cumulative is None or per_step is None:
        return None
    if cumulative.b <= 0 or per_step.slope <= 0:
        return (f"No quadratic growth measured: the naive step time does not rise with the context over this "
                f"run (per-step slope {per_step.slope:+.4f} ms per token, cumulative b = {cumulative.b:+.4f}); "
                "the context is too short for the recompute to dominate on this machine.")
    return (f"Naive cumulative time ≈ {cumulative.a:.2f}·n + {cumulative.b:.4f}·n² ms over n new tokens "
            f"(R² = {cumulative.r2:.4f}); per step, naive ≈ {per_step.intercept:.1f} + {per_step.slope:.3f} ms "
            f"per token of context (R² = {per_step.r2:.3f}, {per_step.points} steps): every step recomputes the "
            "whole context, so each costs more than the last and the total grows with the square of the length.")


def crossover_sentence(result: BenchResult, path: str) -> str | None:
    """"<path> beats naive at every step from position N (fit predicts M)", or None with nothing to say."""
    measured, predicted = result.crossover_position(path), result.predicted_crossover_position(path)
    if measured is None and predicted is None:
        return None
    where = measured if measured is not None else "— (not within this run)"
    first_step = result.config.prompt_tokens + 1  # the position of the first decode step
    if predicted is None:
        fit_says = ""
    elif predicted <= result.config.prompt_tokens:  # clamped: the fit has naive slower from the first token on
        fit_says = (" (the naive fit agrees: naive is slower from the first token)" if measured == first_step
                    else " (the naive fit has naive slower from the first token)")
    else:
        fit_says = f" (the naive fit predicts {predicted:.0f})"
    return f"{path} beats naive at every step from position {where}{fit_says}"


def crossover_sentences(result: BenchResult) -> list[str]:
    """The crossover sentence of every stepped cached path that has one."""
    return [s for s in (crossover_sentence(result, name) for name in CROSSOVER_PATHS) if s is not None]


def growth_sentences(result: BenchResult) -> list[str]:
    """'<path>: last 10 steps / steps 5-15 = 1.02x' for every stepped cached path with at least 25 steps."""
    growths = ((name, result.growth(name)) for name in CROSSOVER_PATHS)
    return [f"{name}: last 10 steps / steps 5-15 = {growth:.2f}x" for name, growth in growths if growth is not None]


def setup_sentences(result: BenchResult) -> list[str]:
    """Per path with one-off work before its first run (compilation, graph capture): what it cost, kept apart."""
    return [f"{path.label}: one-off setup {path.cold_setup_ms / 1000:.1f} s before its first run, not in its ms/token"
            for path in result.measured if path.cold_setup_ms is not None]


# ----- the hardware ---------------------------------------------------------------------------------------------

def bandwidth_roof_name(result: BenchResult) -> str:
    """What the bandwidth roof is: a measured copy rate (CPUs, unknown GPUs) or a spec-sheet peak (known GPUs)."""
    return "measured copy rate" if result.peak.memory_source.startswith("measured") else "spec-sheet peak bandwidth"


def peak_sentence(result: BenchResult) -> str:
    """The roofs the result was compared with, and where each figure came from."""
    peak = result.peak
    return (f"Peak memory bandwidth {peak.memory_bytes_per_s / 1e9:.1f} GB/s ({peak.memory_source}); "
            f"compute {peak.flops_per_s / 1e9:.0f} GFLOP/s ({peak.flops_source}).")


def bandwidth_sentences(result: BenchResult) -> list[str]:
    """Per stepped path: how many bytes its last step moves and what share of peak bandwidth that is."""
    roof = bandwidth_roof_name(result)
    return [f"{path.path}: its last step must move about {path.steps.bytes_moved[-1] / 2**20:.0f} MiB (an estimate: "
            f"weights and K/V, activations left out); over its measured time that is "
            f"{result.bandwidth_used(path)[-1]:.0%} of the {roof}" for path in result.measured if len(path.steps)]
