"""Benchmark engine, result format, fit, charts and CLI: behaviour on tiny models on the CPU (no timed assertions).

The registry's tiny models, with their small initial weights, repeat one token forever, which would make "every
path chose the same tokens" true of almost any loop. The equivalence tests therefore use the same architectures
initialised with larger weights (``initializer_range=0.5``), whose greedy tokens vary from step to step.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from kvviz import report
from kvviz.bench import BenchProgress, benchmark_prompt, parse_paths, run_benchmark
from kvviz.bench_results import (
    FORMAT, PATHS, BenchConfig, BenchResult, DevicePeak, Environment, PathResult, Spread, StepSeries, check_tokens,
    fit_quadratic,
)
from kvviz.charts import speed as charts
from kvviz.errors import InputError
from kvviz.kv_formula import FP32
from kvviz.models import LoadedModel, load_random_model, tiny_config
from kvviz.roofline import known_gpu, measure_memory_bandwidth, step_bytes, weight_bytes_read

CPU_PATHS = ("naive", "dynamic", "kvviz", "static", "generate")
SMALL = BenchConfig(tokens=12, prompt_tokens=8, repeats=2, naive_repeats=1, warmup_tokens=2)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA graphs); none is visible")


def varied_model(key: str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    config = tiny_config(key)
    config.initializer_range = 0.5
    return load_random_model(config, f"{key}-varied", device=device, dtype=dtype)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def varied(request) -> LoadedModel:
    return varied_model(request.param)


@pytest.fixture(scope="module")
def llama_result() -> BenchResult:
    return run_benchmark(varied_model("tiny-llama"), SMALL)


# ----- the paths ------------------------------------------------------------------------------------------------

def test_every_cpu_path_produces_the_same_varied_tokens(varied):
    result = run_benchmark(varied, replace(SMALL, repeats=1))
    tokens = {p.path: p.tokens for p in result.paths if p.ok}
    assert set(tokens) == set(CPU_PATHS)
    assert all(len(t) == SMALL.tokens for t in tokens.values())
    assert len(set(tokens.values())) == 1, tokens
    assert len(set(tokens["dynamic"])) >= 4  # the check bites: the tokens are not one token repeated
    assert result.all_match and result.reference_path == "dynamic"
    assert all(p.matches_reference and p.first_mismatch is None for p in result.measured)


def test_cpu_paths_match_the_apps_own_greedy_stepper(llama_result):
    from kvviz.stepper import Stepper

    loaded = varied_model("tiny-llama")
    stepper = Stepper(loaded, capture_attention=False)
    records = [stepper.prefill(benchmark_prompt(loaded, SMALL.prompt_tokens))]
    records += [stepper.step() for _ in range(SMALL.tokens - 1)]
    assert llama_result.path("static").tokens == tuple(r.token_id for r in records)


def test_graphs_path_is_skipped_on_cpu_with_a_reason(llama_result):
    graphs = llama_result.path("graphs")
    assert graphs.status == "skipped" and "CUDA" in graphs.reason
    assert graphs.tokens == () and graphs.ms_per_token is None and not len(graphs.steps)


def test_llamacpp_path_is_skipped_for_a_model_without_a_gguf_file(llama_result):
    llamacpp = llama_result.path("llamacpp")
    assert llamacpp.status == "skipped" and "has no GGUF file" in llamacpp.reason and llamacpp.engine is None


def test_naive_processes_the_whole_context_each_step_while_cached_paths_process_one(llama_result):
    prompt = SMALL.prompt_tokens
    naive = llama_result.path("naive").steps
    assert naive.position == tuple(range(prompt + 1, prompt + SMALL.tokens))
    assert naive.tokens_processed == naive.position  # grows by one token per step
    assert np.all(np.diff(naive.flops) > 0)
    # Bytes: naive reads the weights only (no cache to read); dynamic paths read one more position per step;
    # the static cache is attended over its whole preallocated buffer, so its bytes stay at that size.
    assert len(set(naive.bytes_moved)) == 1
    dynamic, static = llama_result.path("dynamic").steps.bytes_moved, llama_result.path("static").steps.bytes_moved
    assert len(set(np.diff(dynamic))) == 1 and np.diff(dynamic)[0] > 0
    assert len(set(static)) == 1 and static[0] > dynamic[-1] > naive.bytes_moved[0]
    for name in ("dynamic", "kvviz", "static"):
        steps = llama_result.path(name).steps
        assert steps.position == naive.position
        assert steps.tokens_processed == (1,) * (SMALL.tokens - 1)
        assert all(f < n for f, n in zip(steps.flops, naive.flops))


def test_runs_spreads_and_cold_times_are_consistent(llama_result):
    for path in llama_result.measured:
        assert path.runs == SMALL.runs_for(path.path)
        assert path.ms_per_token.low <= path.ms_per_token.median <= path.ms_per_token.high
        assert path.cold_prefill_ms > 0
        if path.path != "generate":
            assert len(path.steps) == SMALL.tokens - 1
            assert all(lo <= med <= hi for lo, med, hi in
                       zip(path.steps.low_ms, path.steps.median_ms, path.steps.high_ms))
            assert path.cold_first_step_ms > 0
            assert path.total_ms.median >= path.prefill_ms.low
    generate = llama_result.path("generate")
    assert not len(generate.steps) and generate.total_ms.median > 0


def test_a_progress_callback_sees_every_phase_and_can_stop_the_benchmark(tiny_llama):
    events: list[BenchProgress] = []
    result = run_benchmark(tiny_llama, replace(SMALL, paths=("dynamic", "static")), events.append)
    assert result.complete
    assert [e.fraction for e in events] == sorted(e.fraction for e in events) and events[-1].fraction == 1.0
    assert {e.path for e in events} >= {"dynamic", "static"}
    assert sum(e.partial is not None for e in events) == 2 * SMALL.repeats  # one after every timed run

    seen: list[BenchProgress] = []

    def stop_after_first_run(event: BenchProgress) -> bool:
        seen.append(event)
        return event.partial is None  # stop as soon as one timed run has finished

    stopped = run_benchmark(tiny_llama, replace(SMALL, paths=("dynamic", "static")), stop_after_first_run)
    assert not stopped.complete
    assert stopped.path("dynamic").ok and stopped.path("dynamic").runs == 1
    assert stopped.path("static").status == "stopped"


def test_bad_settings_raise_one_sentence_input_errors(tiny_llama):
    for config, words in [
        (replace(SMALL, tokens=1), "at least 2"),
        (replace(SMALL, paths=("warp",)), "Unknown path 'warp'"),
        (replace(SMALL, paths=()), "No path"),
        (replace(SMALL, prompt_tokens=1000, tokens=100), "exceeds the context"),
    ]:
        with pytest.raises(InputError, match=words):
            run_benchmark(tiny_llama, config)
    assert parse_paths(["generate,naive", "static"]) == ("naive", "static", "generate")


# ----- GPU paths ------------------------------------------------------------------------------------------------

def test_graphs_path_is_skipped_with_the_reason_for_a_sliding_window_model():
    """A sliding-window layer keeps its length on the host, which a captured graph would freeze: skip, never run."""
    from tiny_models import sliding_mistral

    loaded = sliding_mistral(window=6, vocab_size=300, max_positions=64)
    result = run_benchmark(loaded, replace(SMALL, paths=("dynamic", "graphs")))
    graphs = result.path("graphs")
    assert not graphs.ok and "StaticSlidingWindowLayer" in graphs.reason
    assert result.path("dynamic").ok


@pytest.mark.gpu
@cuda
def test_peak_of_a_cuda_device_comes_from_the_table_or_a_measurement():
    from kvviz.roofline import device_peak

    peak = device_peak("cuda", torch.bfloat16)
    assert peak.memory_bytes_per_s > 1e11 and peak.flops_per_s > 1e12


# ----- token check, fit, crossover ------------------------------------------------------------------------------

def _path(name: str, tokens: tuple[int, ...], ms: list[float] | None = None, prompt: int = 10,
          prefill: float = 5.0) -> PathResult:
    ms = ms or [1.0] * (len(tokens) - 1)
    positions = tuple(range(prompt + 1, prompt + 1 + len(ms)))
    steps = StepSeries(positions, tuple(ms), tuple(ms), tuple(ms),
                       positions if name == "naive" else (1,) * len(ms), (1e6,) * len(ms), (1e6,) * len(ms))
    total = prefill + sum(ms)
    return PathResult(name, name, "ok", runs=1, tokens=tokens, prefill_ms=Spread(prefill, prefill, prefill),
                      ms_per_token=Spread.of([float(np.mean(ms))]), total_ms=Spread(total, total, total),
                      steps=steps)


def _linear_naive(other: str, other_ms: float, tokens: int, prompt: int, base: float, slope: float,
                  prefill: float = 5.0) -> BenchResult:
    """Naive steps costing ``base + slope·position`` ms beside ``other`` at a flat ``other_ms``, on the same tokens."""
    naive_ms = [base + slope * (prompt + k) for k in range(1, tokens)]
    ids = tuple(range(tokens))
    return _result((_path("naive", ids, naive_ms, prompt, prefill=prefill),
                    _path(other, ids, [other_ms] * (tokens - 1), prompt)), tokens, prompt)


def _result(paths: tuple[PathResult, ...], tokens: int, prompt: int = 10) -> BenchResult:
    env = Environment("m", "model", "llama", 1, "cpu", "a CPU", "float32", "t", "tf", "k", "py", "os", 2, None)
    return BenchResult(env, BenchConfig(tokens=tokens, prompt_tokens=prompt), DevicePeak(1e10, "x", 1e11, "y"),
                       paths, "2025-01-01T00:00:00+00:00", 1.0)


def test_check_tokens_reports_the_first_difference_against_dynamic():
    paths = (_path("naive", (1, 2, 3, 4)), _path("dynamic", (1, 2, 3, 4)), _path("static", (1, 2, 9, 4)),
             PathResult("graphs", "graphs", "skipped", "no GPU"))
    checked, reference = check_tokens(paths)
    assert reference == "dynamic"
    assert [(p.matches_reference, p.first_mismatch) for p in checked] == [
        (True, None), (True, None), (False, 2), (None, None)]


def test_fit_recovers_a_and_b_of_synthetic_quadratic_data():
    n = np.arange(1, 201, dtype=float)
    exact = fit_quadratic(n, 3.0 * n + 0.5 * n**2)
    assert exact.a == pytest.approx(3.0) and exact.b == pytest.approx(0.5) and exact.r2 == pytest.approx(1.0)
    noise = np.random.default_rng(0).normal(0.0, 50.0, n.size)
    noisy = fit_quadratic(n, 3.0 * n + 0.5 * n**2 + noise)
    assert noisy.b == pytest.approx(0.5, rel=0.02) and 0.99 < noisy.r2 < 1.0
    flat = fit_quadratic(n, 40.0 * n)
    assert flat.a == pytest.approx(40.0) and flat.b == pytest.approx(0.0, abs=1e-9)
    assert fit_quadratic([1.0, 2.0], [1.0, 2.0]) is None


def test_naive_fit_and_crossover_on_synthetic_steps():
    # Naive token j (0 = the prefill, at position 10) costs 20 + 0.5·(10 + j) ms, so n tokens take
    # Σ (25 + 0.5·j) = 25·n + 0.25·n·(n − 1) = 24.75·n + 0.25·n². Cached steps cost 30 ms.
    prompt, tokens = 10, 101
    result = _linear_naive("dynamic", 30.0, tokens, prompt, base=20.0, slope=0.5, prefill=20.0 + 0.5 * prompt)
    fit = result.naive_fit()
    assert fit.b == pytest.approx(0.25) and fit.a == pytest.approx(24.75) and fit.r2 == pytest.approx(1.0)
    assert result.crossover_position("dynamic") == 21  # 20 + 0.5·21 = 30.5 > 30 first at position 21
    assert result.predicted_crossover_position("dynamic") == pytest.approx(20.0)  # where 20 + 0.5·p = 30
    assert result.growth("naive") > 1.5 and result.growth("dynamic") == pytest.approx(1.0)
    summary = result.to_dict()["summary"]
    assert summary["naive_fit"]["r2"] == pytest.approx(1.0) and summary["crossover_position"]["dynamic"] == 21
    step_fit = result.naive_step_fit()  # per step: 20 + 0.5·position exactly
    assert step_fit.intercept == pytest.approx(20.0) and step_fit.slope == pytest.approx(0.5)
    assert summary["naive_step_fit"]["slope_ms_per_token"] == pytest.approx(0.5)
    assert "0.500 ms per token of context" in report.naive_growth_sentence(result)


def test_a_flat_naive_run_says_no_quadratic_growth_was_measured():
    """A cumulative sum of flat steps still fits a·n + b·n² with R² ≈ 1; the per-step fit must not be fooled."""
    prompt, tokens = 10, 60
    noise = np.random.default_rng(1).normal(0.0, 2.0, tokens - 1)
    naive_ms = list(40.0 - 0.01 * np.arange(tokens - 1) + noise)  # flat, drifting slightly down
    ids = tuple(range(tokens))
    result = _result((_path("naive", ids, naive_ms, prompt, prefill=40.0),
                      _path("dynamic", ids, [30.0] * (tokens - 1), prompt)), tokens, prompt)
    assert result.naive_fit().r2 > 0.99  # the cumulative fit alone would look convincing
    assert result.naive_step_fit().slope < 0
    assert report.naive_growth_sentence(result).startswith("No quadratic growth measured")


def test_every_stepped_path_has_a_cumulative_fit_and_extrapolates_it_exactly():
    """Synthetic steps whose cumulative times are exactly a·n + b·n² for both paths: the fit recovers a and b, and
    its prediction at 1,000 tokens is a·1000 + b·1000²."""
    prompt, tokens = 8, 200
    n = np.arange(2, tokens + 1)

    def path(name: str, a: float, b: float) -> PathResult:  # the n-th token costs C(n) − C(n−1) = a + b·(2n − 1)
        return _path(name, tuple(range(tokens)), list(a + b * (2 * n - 1)), prompt, prefill=a + b)

    result = _result((path("naive", 120.0, 1.25), path("kvviz", 70.0, 0.004)), tokens, prompt)
    for name, a, b in (("naive", 120.0, 1.25), ("kvviz", 70.0, 0.004)):
        fit = result.cumulative_fit(name)
        assert fit.a == pytest.approx(a) and fit.b == pytest.approx(b) and fit.r2 == pytest.approx(1.0)
        far = result.extrapolate(name, 1000)
        assert far.predicted_ms == pytest.approx(a * 1000 + b * 1000**2) and far.measured_tokens == tokens
        assert far.beyond_measurement and not result.extrapolate(name, tokens).beyond_measurement
    assert result.naive_fit() == result.cumulative_fit("naive")
    assert result.to_dict()["summary"]["cumulative_fit"]["kvviz"]["b_ms"] == pytest.approx(0.004)
    assert result.extrapolate("generate", 1000) is None and result.extrapolate("static", 1000) is None


def famous_result(naive_ab: tuple[float, float], cached_ab: tuple[float, float], model: str = "gpt2-medium",
            tokens: int = 200, prompt: int = 16) -> BenchResult:
    n = np.arange(2, tokens + 1)

    def path(name: str, a: float, b: float) -> PathResult:
        return _path(name, tuple(range(tokens)), list(a + b * (2 * n - 1)), prompt, prefill=a + b)

    result = _result((path("naive", *naive_ab), path("kvviz", *cached_ab)), tokens, prompt)
    return replace(result, environment=replace(result.environment, model=model))


def test_the_famous_figure_sentences_carry_the_fits_and_their_prediction():
    result = famous_result((300.0, 4.0), (250.0, 0.01))
    naive_s, cached_s = (300.0 * 1000 + 4.0 * 1000**2) / 1000, (250.0 * 1000 + 0.01 * 1000**2) / 1000  # 4,300 and 260
    fits, prediction, duration, gpu = report.famous_figure_sentences(result)
    assert fits.startswith("Fitted to this run's cumulative times over 200 new tokens after a 16-token prompt:")
    assert "naive ≈ 300.0·n + 4.0000·n² ms (R² = 1.0000)" in fits and "kvviz ≈ 250.0·n + 0.0100·n² ms" in fits
    assert prediction.startswith(f"At 1,000 tokens the fits predict {naive_s:.1f} s without the cache and "
                                 f"{cached_s:.1f} s with it ({naive_s / cached_s:.1f}×)")
    assert "against 107 s and 21.7 s (~4.9×)" in prediction
    assert duration.startswith("Running the full 1,000 tokens of both on the machine measured would take about "
                               "76.0 min (naive 71.7 min, kvviz 4.3 min;")
    assert gpu == report.gpu_probe_sentence()
    assert "17.6 s without the cache and 13.9 s with it (1.27×)" in gpu and "kernel launches" in gpu
    rows = report.famous_figure_rows(result)
    assert [row["without the cache (s)"] for row in rows] == ["107.0", "17.6", f"{naive_s:,.1f}"]
    assert [row["ratio"] for row in rows] == ["4.93×", "1.27×", f"{naive_s / cached_s:.2f}×"]
    assert report.famous_run_label(result) == (
        "Run the full 1,000 tokens here (naive and kvviz; the fits estimate 76.0 min on the machine measured)")
    # Only for the figure's model, and only with both paths measured.
    assert report.famous_figure_sentences(famous_result((300.0, 4.0), (250.0, 0.01), model="tiny-gpt2")) == []
    only_naive = replace(result, paths=result.paths[:1])
    assert report.famous_figure_rows(only_naive) == [] and report.famous_run_label(only_naive) is None


# ----- JSON format ----------------------------------------------------------------------------------------------

PATH_FIELDS = {"path", "label", "status", "reason", "runs", "tokens", "matches_reference", "first_mismatch",
               "prefill_ms", "ms_per_token", "total_ms", "cold", "steps", "engine"}
ENGINE_FIELDS = {"name", "version", "device", "model_file", "file_bytes", "weights_bytes", "weights_type", "kv_type",
                 "n_ctx", "kv_bytes", "kv_mib_reported", "threads", "eval_ms_per_token", "prompt_eval_ms",
                 "forced_matches", "forced_positions", "forced_max_gap"}
STEP_FIELDS = {"position", "median_ms", "min_ms", "max_ms", "tokens_processed", "flops", "bytes"}


def test_json_has_the_documented_fields_and_round_trips(llama_result):
    import transformers

    data = json.loads(llama_result.to_json())
    assert data["format"] == FORMAT and data["format_version"] == 1 and data["complete"] is True
    assert set(data) == {"format", "format_version", "created", "complete", "wall_seconds", "environment",
                         "config", "peak", "reference_path", "paths", "summary"}
    env = data["environment"]
    assert env["torch"] == torch.__version__ and env["transformers"] == transformers.__version__
    assert env["device"] == "cpu" and env["dtype"] == "float32" and env["device_name"] and env["threads"] >= 1
    assert set(env) == {"model", "model_name", "architecture", "parameters", "device", "device_name", "dtype",
                        "torch", "transformers", "kvviz", "python", "platform", "threads", "cuda", "load_average",
                        "cpus", "weights_bytes"}
    assert env["weights_bytes"] == weight_bytes_read(varied_model("tiny-llama").model)
    assert set(data["config"]) == {"tokens", "prompt_tokens", "paths", "repeats", "naive_repeats",
                                   "warmup_tokens", "graphs_compile", "graphs_steps"}
    assert set(data["peak"]) == {"memory_bytes_per_s", "memory_source", "flops_per_s", "flops_source"}
    assert [p["path"] for p in data["paths"]] == list(PATHS)
    for path in data["paths"]:
        assert set(path) == PATH_FIELDS and set(path["steps"]) == STEP_FIELDS
        assert set(path["cold"]) == {"setup_ms", "prefill_ms", "first_step_ms"}
        assert path["engine"] is None  # only an outside engine (llamacpp, which has no GGUF file to run here) has one
        if path["status"] == "ok":
            assert set(path["ms_per_token"]) == {"median", "min", "max"}
    assert set(data["summary"]) == {"all_match", "naive_fit", "naive_step_fit", "crossover_position",
                                    "predicted_crossover_position", "growth", "speedup_vs_naive", "cumulative_fit"}
    assert set(data["summary"]["cumulative_fit"]) == set(PATHS)
    assert data["summary"]["cumulative_fit"]["naive"] == data["summary"]["naive_fit"]
    assert data["summary"]["cumulative_fit"]["generate"] is None  # no per-step series to sum
    again = BenchResult.from_json(llama_result.to_json())
    assert again.to_dict() == json.loads(llama_result.to_json())
    with pytest.raises(ValueError, match="not a kvviz benchmark"):
        BenchResult.from_json('{"format": "something else"}')


def _broken(data: dict, change) -> str:
    broken = json.loads(json.dumps(data))
    change(broken)
    return json.dumps(broken)


@pytest.mark.parametrize("change, reason", [
    (lambda d: d.update(environment=[]), "missing or mistypes"),
    (lambda d: d["environment"].pop("device"), "environment.device"),
    (lambda d: d["paths"][0].update(prefill_ms=None), "is 'ok' but has no prefill_ms"),
    (lambda d: d["paths"][0].update(ms_per_token={"median": "fast"}), "missing or mistypes"),
    (lambda d: d["paths"][0].update(status="great"), "unknown status 'great'"),
])
def test_a_damaged_result_file_is_refused_with_a_reason(llama_result, change, reason):
    """What the Speed page's upload relies on: anything that would crash a chart is a ValueError when read."""
    text = _broken(llama_result.to_dict(), change)
    with pytest.raises(ValueError, match=reason):
        BenchResult.from_json(text)


def test_the_format_document_names_every_field():
    text = (Path(__file__).parent.parent / "docs" / "bench-format.md").read_text(encoding="utf-8")
    for name in PATH_FIELDS | STEP_FIELDS | ENGINE_FIELDS | {"format_version", "environment", "summary", "naive_fit",
                                                             "naive_step_fit", "growth", "cumulative_fit",
                                                             "weights_bytes"}:
        assert f"`{name}`" in text, name


# ----- roofline -------------------------------------------------------------------------------------------------

def test_bytes_per_step_count_weights_and_the_kv_read_and_written(tiny_llama):
    card = tiny_llama.card
    weights = weight_bytes_read(tiny_llama.model)
    assert weights == sum(p.numel() * 4 for p in tiny_llama.model.parameters())  # tied embeddings: all read
    per_position = 2 * card.layers * card.kv_heads * card.head_dim * 4
    assert step_bytes(weights, tiny_llama.spec, FP32, attended=100, new_tokens=1) == weights + per_position * 101
    sliding = replace(tiny_llama.spec, groups=tuple(replace(g, kind="sliding", window=10)
                                                    for g in tiny_llama.spec.groups))
    assert step_bytes(weights, sliding, FP32, attended=100, new_tokens=1) == weights + per_position * 11
    assert step_bytes(weights, None, FP32, attended=100, new_tokens=1) == weights  # no cache: the weights only


def test_known_gpus_match_whole_words_and_memory_bandwidth_is_measured():
    assert known_gpu("NVIDIA H100 80GB HBM3").label == "NVIDIA H100 SXM"
    assert known_gpu("NVIDIA H100 PCIe").label == "NVIDIA H100 PCIe"
    assert known_gpu("NVIDIA A100-SXM4-80GB").label == "NVIDIA A100 80GB SXM"
    assert known_gpu("NVIDIA L40") is None and known_gpu("NVIDIA L4").label == "NVIDIA L4"
    assert measure_memory_bandwidth("cpu", nbytes=8 * 2**20, repeats=2) > 1e8


# ----- charts ---------------------------------------------------------------------------------------------------

BUILDERS = [charts.latency_figure, charts.cumulative_figure, charts.speedup_figure, charts.roofline_figure,
            charts.bandwidth_figure, charts.per_token_figure]


@pytest.mark.parametrize("builder", BUILDERS)
def test_every_chart_works_with_nothing_measured(builder):
    skipped = _result((PathResult("graphs", "graphs", "skipped", "no GPU"),), tokens=8)
    for result in (None, skipped):
        fig = builder(result)
        assert fig.layout.title.text.split("<br>")[0].endswith("?")
        assert fig.layout.annotations  # says what to do instead of drawing empty axes


@pytest.mark.parametrize("builder", BUILDERS)
def test_every_chart_draws_each_measured_path_with_units_and_the_device(builder, llama_result):
    fig = builder(llama_result)
    names = {trace.name for trace in fig.data if trace.name}
    title = fig.layout.title.text
    assert "cpu" in title and "float32" in title
    if builder is not charts.per_token_figure:
        assert {"dynamic", "kvviz", "static"} <= names
        assert any(unit in (fig.layout.yaxis.title.text or "") for unit in ("ms", "(s)", "×", "GFLOP/s", "%"))
    else:
        assert list(fig.data[0].x) == list(CPU_PATHS)


def test_charts_handle_a_two_thousand_token_run():
    tokens, prompt = 2000, 16
    result = _linear_naive("kvviz", 4.0, tokens, prompt, base=5.0, slope=0.01)
    for builder in BUILDERS:
        fig = builder(result)
        assert fig.data
    fig = charts.cumulative_figure(result)
    assert any(trace.name and trace.name.startswith("naive fit") and "R² = 1.000" in trace.name for trace in fig.data)
    assert charts.speedup_figure(result).layout.shapes  # break-even line and the crossover marker
    rows = charts.summary_rows(result)
    assert [row["path"] for row in rows] == ["naive", "kvviz"] and rows[1]["same tokens"] == "—"


def test_summary_table_has_every_column_in_every_row_and_no_none(llama_result):
    rows = charts.summary_rows(llama_result)
    assert sorted(row["path"] for row in rows) == sorted(CPU_PATHS + ("graphs", "llamacpp"))
    assert all(tuple(row) == charts.SUMMARY_COLUMNS for row in rows)  # one shape: no blank cells in the table
    assert all(isinstance(value, str) and value not in ("", "None", "nan") for row in rows
               for column, value in row.items() if column != "note")
    graphs = next(row for row in rows if row["path"] == "graphs")
    assert graphs["status"] == "skipped" and "CUDA" in graphs["note"] and graphs["ms / token (median)"] == "—"
    dynamic = next(row for row in rows if row["path"] == "dynamic")
    assert float(dynamic["ms / token (median)"]) == pytest.approx(llama_result.path("dynamic").ms_per_token.median,
                                                                 abs=0.005)
    generate = next(row for row in rows if row["path"] == "generate")
    assert generate["first step ms (warm-up)"] == "—"  # generate() reports only its total


# ----- command line ---------------------------------------------------------------------------------------------

def kvviz(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvviz", *args], capture_output=True, text=True, timeout=600)


def test_cli_prints_a_table_and_writes_the_json(tmp_path):
    target = tmp_path / "out" / "bench.json"
    result = kvviz("bench", "--model", "tiny-gpt2", "--tokens", "6", "--prompt-tokens", "4", "--repeats", "1",
                   "--paths", "naive,dynamic", "static", "--graphs-steps", "4", "--json", str(target))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("path"))
    assert header.split()[:3] == ["path", "prefill", "ms/token"]
    rows = [line.split()[0] for line in lines if line and not line.startswith(("#", "path"))]
    assert rows == ["naive", "dynamic", "static"]
    data = json.loads(target.read_text())
    assert data["config"]["paths"] == ["naive", "dynamic", "static"] and data["summary"]["all_match"] is True
    assert data["environment"]["model"] == "tiny-gpt2" and data["config"]["graphs_steps"] == 4


@pytest.mark.parametrize(
    "args, reason",
    [
        (["--tokens", "0"], "must be at least 1"),
        (["--tokens", "1"], "at least 2"),
        (["--tokens", "many"], "whole number"),
        (["--paths", "warp"], "Unknown path 'warp'"),
        (["--graphs-steps", "0"], "must be at least 1"),
        (["--prompt-tokens", "1020", "--tokens", "10"], "exceeds the context"),
        (["--model", "no-such-model"], "Unknown model"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(args, reason):
    base = ["bench", "--model", "tiny-llama", "--tokens", "4"]
    result = kvviz(*base, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvviz: error:") and reason in lines[0], result.stderr
    assert result.stdout == ""


def test_runs_that_disagree_are_flagged_and_steady_ones_are_not():
    from dataclasses import replace

    ids = (1, 2, 3, 4)
    steady = replace(_path("dynamic", ids), runs=3, ms_per_token=Spread(2.0, 1.9, 2.2))
    noisy = replace(_path("kvviz", ids), runs=3, ms_per_token=Spread(17.27, 2.63, 22.71))
    single = replace(_path("naive", ids), runs=1, ms_per_token=Spread(50.0, 50.0, 50.0))
    assert report.noise_sentence(_result((single, steady), 4)) is None
    result = _result((single, steady, noisy), 4)
    assert [p.path for p in result.noisy_paths()] == ["kvviz"]
    sentence = report.noise_sentence(result)
    assert sentence.startswith("Runs disagree: kvviz's 3 runs 2.63–22.71 ms/token (8.6×).")
    assert "dynamic" not in sentence


def test_the_cli_table_says_what_the_report_module_says():
    """The Speed page shows report.warnings / crossover_sentences; the CLI's table must carry the same words."""
    from dataclasses import replace

    from kvviz.cli import format_bench_table

    ids = (1, 2, 3, 4)
    naive = _path("naive", ids, ms=[5.0, 6.0, 7.0])
    noisy = replace(_path("kvviz", (1, 2, 9, 4)), runs=3, ms_per_token=Spread(3.0, 1.0, 9.0))
    paths, reference = check_tokens((naive, _path("dynamic", ids), noisy))
    result = replace(_result(paths, 4), reference_path=reference)
    table = format_bench_table(result)
    warnings = report.warnings(result)
    assert len(warnings) == 2 and warnings[1].startswith("Not every path chose the same tokens as dynamic")
    for sentence in warnings:
        assert f"# WARNING: {sentence}" in table
    for sentence in [*report.crossover_sentences(result), report.peak_sentence(result),
                     *report.bandwidth_sentences(result)]:
        assert f"# {sentence}" in table


def test_crossover_sentence_gives_the_measured_position_and_what_the_fit_says():
    """Naive cumulative time exactly a·n + b·n², so its n-th step costs a + b·(2n − 1); cached costs c per token."""
    prompt, tokens, b = 10, 40, 0.05
    n = np.arange(2, tokens + 1)

    def result(a: float, c: float) -> BenchResult:
        naive_ms = list(a + b * (2 * n - 1))
        ids = tuple(range(tokens))
        naive = _path("naive", ids, naive_ms, prompt, prefill=a + b)
        cached = _path("kvviz", ids, [c] * (tokens - 1), prompt)
        return _result((naive, cached), tokens, prompt)

    # c = 3.02: the n-th naive step exceeds it from n = 26 (position prompt + n − 1 = 35); the fit's n* = 25.7.
    late = result(a=0.5, c=3.02)
    assert late.predicted_crossover_position("kvviz") == pytest.approx(prompt + 25.7 - 1)
    assert report.crossover_sentence(late, "kvviz") == (
        "kvviz beats naive at every step from position 35 (the naive fit predicts 35)")
    # Naive far slower from the start: the fit's solution lies before the first token and is clamped there.
    early = result(a=50.0, c=3.02)
    assert early.predicted_crossover_position("kvviz") == prompt
    assert report.crossover_sentence(early, "kvviz") == (
        "kvviz beats naive at every step from position 11 (the naive fit agrees: naive is slower from the first token)")
    # The fit says "from the first token" but the measurement disagrees (one slow cached step late in the run):
    # the sentence gives both without calling them in agreement.
    late_slow = result(a=50.0, c=3.02)
    slow_end = replace(late_slow.path("kvviz"), steps=replace(
        late_slow.path("kvviz").steps, median_ms=(3.02,) * (tokens - 2) + (500.0,)))
    disagreeing = _result((late_slow.path("naive"), slow_end), tokens, prompt)
    assert report.crossover_sentence(disagreeing, "kvviz") == (
        "kvviz beats naive at every step from position — (not within this run) "
        "(the naive fit has naive slower from the first token)")


def test_estimates_and_roofs_are_labelled_as_what_they_are(llama_result):
    from kvviz import report
    from kvviz.ui.speed import SHIPPED_GPU_RESULT

    gpu = BenchResult.from_json(SHIPPED_GPU_RESULT.read_text())
    for result, roof in ((llama_result, "measured copy rate"), (gpu, "spec-sheet peak bandwidth")):
        assert report.bandwidth_roof_name(result) == roof
        assert roof in charts.bandwidth_figure(result).layout.yaxis.title.text
        for figure in (charts.bandwidth_figure(result), charts.roofline_figure(result)):
            assert "estimated FLOPs and bytes ÷ times measured on" in figure.layout.title.text
        assert all("(an estimate" in sentence and roof in sentence for sentence in report.bandwidth_sentences(result))
    assert "same position" in charts.speedup_figure(llama_result).layout.yaxis.title.text
    assert "naive ÷ path, end to end" in charts.summary_rows(llama_result)[0]


def test_the_readmes_cpu_figures_are_what_the_shipped_results_say():
    """The README quotes the 2-core CPU ladder with llama.cpp and GPT-2 medium's fits; the files in docs/results are
    those runs, and the report module's sentences about them carry the quoted numbers."""
    from kvviz.ui.speed import SHIPPED_CPU_RESULTS

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    ladder = BenchResult.from_json(SHIPPED_CPU_RESULTS["llamacpp"].read_text())
    llamacpp, kvviz = ladder.path("llamacpp"), ladder.path("kvviz")
    assert f"**{llamacpp.ms_per_token.median:.2f}**" in readme and f"| {kvviz.ms_per_token.median:.2f} |" in readme
    ratio = kvviz.ms_per_token.median / llamacpp.ms_per_token.median
    assert f"{ratio:.1f}× as long" in report.engine_sentences(ladder)[0] and f"| {ratio:.1f}× |" in readme
    engine = llamacpp.engine
    assert f"at {engine.forced_matches} of {engine.forced_positions} positions" in readme
    assert f"{engine.kv_bytes:,} B" in readme and f"{engine.weights_bytes:,} B" in readme
    famous = BenchResult.from_json(SHIPPED_CPU_RESULTS["gpt2-medium"].read_text())
    assert famous.environment.model == "gpt2-medium" and "architecture only" in famous.environment.model_name
    naive, cached = report.famous_figure_predictions(famous)
    assert f"| {naive.predicted_ms / 1000:,.1f} s | {cached.predicted_ms / 1000:.1f} s |" in readme
    assert f"{naive.predicted_ms / cached.predicted_ms:.1f}×" in report.famous_figure_sentences(famous)[1]
    assert f"{naive.fit.a:.1f}·n + {naive.fit.b:.4f}·n² ms (R² {naive.fit.r2:.4f})" in readme


def test_the_readmes_full_gpt2_medium_run_is_the_shipped_result():
    """The README's measured 1,000-token GPT-2 medium row (beside the fits' prediction) is the shipped run's."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    path = Path(__file__).parent.parent / "docs" / "results" / "gpt2-medium-cpu-1000.json"
    full = BenchResult.from_json(path.read_text())
    naive, cached = full.path("naive"), full.path("kvviz")
    assert full.config.tokens == 1000 and naive.matches_reference and cached.matches_reference
    ratio = naive.total_ms.median / cached.total_ms.median
    assert (f"| {naive.total_ms.median / 1000:,.1f} s | {cached.total_ms.median / 1000:.1f} s | {ratio:.1f}× |"
            in readme)
