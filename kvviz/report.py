"""The words a benchmark result produces: its warnings, the naive-fit and crossover sentences, the bandwidth lines,
an outside engine (llama.cpp) beside the PyTorch paths, and GPT-2 medium's fits beside the figure people quote.

One room for them, so that ``python -m kvviz bench`` (``cli.format_bench_table``) and the Speed page say the same
thing about the same result. Each function takes a ``BenchResult`` and returns plain sentences (or None when there
is nothing to say); the caller adds its own frame (``# WARNING:`` on a terminal, ``st.warning`` on the page). The
published figures set beside a measurement (``FAMOUS_FIGURE``, ``H100_PROBE``) are kept here, with their source.

What it does not do: analyse (the fits, crossovers and noise tests are ``BenchResult`` methods in
``bench_results.py``), draw (``charts/speed.py``) or print.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvviz.bench_results import NOISY_RATIO, BenchResult, Extrapolation, PathResult
from kvviz.kv_formula import format_bytes

# Paths that decode step by step and so have a crossover with naive (generate is timed only as a whole).
CROSSOVER_PATHS: tuple[str, ...] = ("dynamic", "kvviz", "static", "graphs", "llamacpp")
# The PyTorch path an outside engine is compared with: the app's own stepper, else the plain transformers loop.
ENGINE_REFERENCE_PATHS: tuple[str, ...] = ("kvviz", "dynamic")


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
    differing = [p for p in result.measured if p.matches_reference is False]
    names = ", ".join(f"{p.path} (from token {p.first_mismatch})" for p in differing)
    why = "In 16-bit types a near-tie between two tokens can go either way"
    if any(p.engine is not None for p in differing):
        why = ("llama.cpp computes with the GGUF's quantised weights as stored (its dot products also quantise "
               f"the activations to 8 bits), the PyTorch paths with the same weights dequantised to "
               f"{result.environment.dtype}: the logits differ slightly, and a near-tie can go either way")
    return (f"Not every path chose the same tokens as {result.reference_path}: {names}. {why}; the timings are "
            "still comparable.")


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


# ----- an outside engine (llama.cpp) beside the PyTorch paths ---------------------------------------------------

def _engine_reference(result: BenchResult) -> PathResult | None:
    """The measured PyTorch path an engine is compared with (kvviz, else dynamic)."""
    return next((p for name in ENGINE_REFERENCE_PATHS if (p := result.path(name)) is not None and p.ok
                 and p.ms_per_token is not None), None)


def _tokens_phrase(path: PathResult, reference: str | None) -> str:
    if path.matches_reference is None:
        return "tokens not compared"
    if path.matches_reference:
        return f"the same {len(path.tokens)} greedy tokens as {reference}"
    return f"greedy tokens differ from {reference}'s from token {path.first_mismatch} on"


def engine_sentences(result: BenchResult) -> list[str]:
    """Per path run by an outside engine: its speed beside the PyTorch path's, the tokens check, and its cache."""
    reference = _engine_reference(result)
    sentences = []
    for path in result.measured:
        engine = path.engine
        if engine is None or path.ms_per_token is None:
            continue
        own = (f", {engine.eval_ms_per_token:.2f} ms by {engine.name}'s own counter"
               if engine.eval_ms_per_token is not None else "")
        ratio = ""
        if reference is not None and path.ms_per_token.median > 0:
            ratio = (f"; {reference.path} takes {reference.ms_per_token.median:.2f} ms, "
                     f"{reference.ms_per_token.median / path.ms_per_token.median:.1f}× as long")
        forced = ""
        if engine.forced_positions:
            forced = (f" Fed {result.reference_path}'s {engine.forced_positions} tokens one by one, {engine.name} "
                      f"chose the same next token at {engine.forced_matches} of them")
            if engine.forced_max_gap is not None:
                forced += (f"; at the other {engine.forced_positions - engine.forced_matches} its own choice led "
                           f"{result.reference_path}'s by at most {engine.forced_max_gap:.2f} logits (near-ties)")
            forced += "."
        sentences.append(
            f"{path.path}: {engine.name} {engine.version} on {engine.model_file} ({engine.weights_type}), "
            f"{engine.device}, {engine.threads} threads: {path.ms_per_token.median:.2f} ms per token by the wall "
            f"clock{own}{ratio}; "
            f"{_tokens_phrase(path, result.reference_path)}.{forced}")
        reported = ""
        if engine.kv_mib_reported is not None:
            agree = ("equal to the formula at the log's two decimals" if engine.kv_log_agrees
                     else "not what the formula says")
            reported = f"; {engine.name} logged allocating {engine.kv_mib_reported:.2f} MiB ({agree})"
        sentences.append(
            f"{path.path}'s KV cache: {engine.kv_type} for n_ctx = {engine.n_ctx:,} positions, "
            f"{engine.kv_bytes:,} bytes ({format_bytes(engine.kv_bytes)}) by kvviz's formula{reported}.")
    return sentences


def engine_gap_sentences(result: BenchResult) -> list[str]:
    """Where an outside engine's lead over the PyTorch path comes from, in the result's own numbers.

    Bytes: each decode step reads every weight once, so the weights' size per token is a floor on its time at the
    measured copy rate. What the measured time adds to that floor is work that is not moving weights.
    """
    reference = _engine_reference(result)
    torch_weights = result.environment.weights_bytes
    engines = [p for p in result.measured if p.engine is not None and p.ms_per_token is not None]
    if reference is None or torch_weights is None or not engines:
        return []
    rate = result.peak.memory_bytes_per_s
    roof = bandwidth_roof_name(result)
    torch_floor = torch_weights / rate * 1000.0
    sentences = []
    for path in engines:
        engine = path.engine
        floor = engine.weights_bytes / rate * 1000.0
        sentences.append(
            f"Weights read per token: {engine.name} {format_bytes(engine.weights_bytes)} ({engine.weights_type}, "
            f"as stored in {engine.model_file}), the PyTorch paths {format_bytes(torch_weights)} "
            f"({result.environment.dtype}, dequantised from it): {torch_weights / engine.weights_bytes:.1f}× the "
            "bytes.")
        sentences.append(
            f"At the {roof} of {rate / 1e9:.1f} GB/s, reading those weights takes at least {floor:.1f} ms and "
            f"{torch_floor:.1f} ms per token; measured: {path.ms_per_token.median:.1f} ms ({path.path}) and "
            f"{reference.ms_per_token.median:.1f} ms ({reference.path}). Beyond its weights' floor the PyTorch step "
            f"spends {reference.ms_per_token.median - torch_floor:.1f} ms, {engine.name} "
            f"{path.ms_per_token.median - floor:.1f} ms.")
    sentences.append(
        "That remainder is time not spent reading weights: PyTorch runs each of the model's layers as a sequence of "
        "separate operators, each one a Python call through the dispatcher and a kernel that writes its result "
        "to memory for the next to read back (per-layer Python dispatch, unfused kernels); llama.cpp runs the "
        "whole token as one C++ compute graph on its own thread pool, with the dequantisation fused into its dot "
        "products.")
    return sentences


# ----- the famous figure: GPT-2 medium, 1,000 tokens ------------------------------------------------------------

@dataclass(frozen=True)
class PublishedFigure:
    """A timing quoted elsewhere, to set beside what this machine measures."""

    model: str  # registry key
    tokens: int
    without_cache_s: float
    with_cache_s: float
    source: str

    @property
    def ratio(self) -> float:
        return self.without_cache_s / self.with_cache_s


FAMOUS_FIGURE = PublishedFigure("gpt2-medium", 1000, 107.0, 21.7,
                                "the figure interview guides repeat for GPT-2 medium")
# A reference probe of the same experiment on one NVIDIA H100.
H100_PROBE = PublishedFigure("gpt2-medium", 1000, 17.6, 13.9, "a reference probe on one NVIDIA H100")
# The paths whose fits are set beside the published "without" and "with the cache" figures.
FAMOUS_PATHS: tuple[str, str] = ("naive", "kvviz")


def famous_figure_predictions(result: BenchResult,
                              figure: PublishedFigure = FAMOUS_FIGURE) -> tuple[Extrapolation, Extrapolation] | None:
    """The naive and cached paths' cumulative fits evaluated at the published figure's token count."""
    if result.environment.model != figure.model:
        return None
    naive, cached = (result.extrapolate(name, figure.tokens) for name in FAMOUS_PATHS)
    if naive is None or cached is None:
        return None
    return naive, cached


def famous_figure_sentences(result: BenchResult, figure: PublishedFigure = FAMOUS_FIGURE) -> list[str]:
    """The fits of this run, their prediction at the published length beside the published figure, and how long
    running that length here would take; empty unless the result is of the figure's model with both paths."""
    predictions = famous_figure_predictions(result, figure)
    if predictions is None:
        return []
    naive, cached = predictions
    env, config = result.environment, result.config
    fits = "; ".join(f"{p.path} ≈ {p.fit.a:.1f}·n + {p.fit.b:.4f}·n² ms (R² = {p.fit.r2:.4f})"
                     for p in predictions)
    total_s = (naive.predicted_ms + cached.predicted_ms) / 1000.0
    return [
        f"Fitted to this run's cumulative times over {naive.measured_tokens} new tokens after a "
        f"{config.prompt_tokens}-token prompt: {fits}.",
        f"At {figure.tokens:,} tokens the fits predict {naive.predicted_ms / 1000:.1f} s without the cache and "
        f"{cached.predicted_ms / 1000:.1f} s with it ({naive.predicted_ms / cached.predicted_ms:.1f}×) on "
        f"{env.device} ({env.device_name}, {env.dtype}, {env.threads} threads), against {figure.without_cache_s:g} s "
        f"and {figure.with_cache_s:g} s (~{figure.ratio:.1f}×) in {figure.source}.",
        f"Running the full {figure.tokens:,} tokens of both on the machine measured would take about "
        f"{_duration(total_s)} "
        f"(naive {_duration(naive.predicted_ms / 1000)}, {cached.path} {_duration(cached.predicted_ms / 1000)}; "
        "the fits' estimate).",
        gpu_probe_sentence(),
    ]


def famous_figure_rows(result: BenchResult, figure: PublishedFigure = FAMOUS_FIGURE,
                       probe: PublishedFigure = H100_PROBE) -> list[dict[str, str]]:
    """The published figure, the GPU probe and this run's prediction at the same length, as table rows."""
    predictions = famous_figure_predictions(result, figure)
    if predictions is None:
        return []
    naive, cached = predictions
    env = result.environment

    def row(what: str, without: float, with_cache: float) -> dict[str, str]:
        return {"": what, "without the cache (s)": f"{without:,.1f}", "with the cache (s)": f"{with_cache:,.1f}",
                "ratio": f"{without / with_cache:.2f}×"}

    return [
        row(f"published: {figure.source}", figure.without_cache_s, figure.with_cache_s),
        row(probe.source, probe.without_cache_s, probe.with_cache_s),
        row(f"this measurement, the fits' prediction ({env.device}: {env.device_name}, {env.dtype})",
            naive.predicted_ms / 1000.0, cached.predicted_ms / 1000.0),
    ]


def famous_run_label(result: BenchResult, figure: PublishedFigure = FAMOUS_FIGURE) -> str | None:
    """The label of the button that runs the full published length, with the fits' estimate of how long it takes."""
    predictions = famous_figure_predictions(result, figure)
    if predictions is None:
        return None
    total_s = sum(p.predicted_ms for p in predictions) / 1000.0
    return (f"Run the full {figure.tokens:,} tokens here (naive and {FAMOUS_PATHS[1]}; the fits estimate "
            f"{_duration(total_s)} on the machine measured)")


def gpu_probe_sentence(probe: PublishedFigure = H100_PROBE) -> str:
    """Why a GPU shows a much smaller gain for the same experiment."""
    return (f"In {probe.source}, the same {probe.tokens:,} tokens took {probe.without_cache_s:g} s without the cache "
            f"and {probe.with_cache_s:g} s with it ({probe.ratio:.2f}×). On a GPU, each token's cost at this size is "
            "dominated by kernel launches and Python overhead, not arithmetic: recomputing the whole sequence adds "
            "work the GPU does in the time the launches take anyway, so it costs little extra until the sequence "
            "is long.")


def _duration(seconds: float) -> str:
    """'42 s', '7.5 min', '1.3 h'."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
