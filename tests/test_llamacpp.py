"""The llamacpp path: llama.cpp on the default model's own GGUF file beside the PyTorch paths (offline, CPU).

The tests that run llama.cpp need ``llama-cpp-python`` (``require_llamacpp``: skipped without it, failed without it
under ``make test``) and load the real default model (``slow``). The checks of what happens without either run
everywhere.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kvviz import llamacpp_engine, report
from kvviz.bench import benchmark_prompt, run_benchmark
from kvviz.bench_results import BenchConfig, BenchResult
from kvviz.cli import format_bench_table
from kvviz.kv_formula import FP16, kv_bytes_per_token
from kvviz.models import gguf_file
from kvviz.roofline import step_bytes

ROOT = Path(__file__).parent.parent
LADDER = BenchConfig(tokens=16, prompt_tokens=32, paths=("dynamic", "kvviz", "llamacpp"), repeats=1, warmup_tokens=2)


@pytest.fixture(scope="module")
def ladder(smollm2) -> BenchResult:
    if not llamacpp_engine.installed():
        pytest.skip("llama-cpp-python is not installed")
    return run_benchmark(smollm2, LADDER)


# ----- without llama.cpp or without a GGUF file -----------------------------------------------------------------

def test_a_model_without_a_gguf_file_is_refused_by_name_and_skipped_by_default(tiny_llama):
    reason = llamacpp_engine.unavailable_reason("tiny-llama")
    assert reason.startswith("tiny-llama has no GGUF file") and "smollm2-135m" in reason
    result = run_benchmark(tiny_llama, BenchConfig(tokens=4, prompt_tokens=4, paths=("dynamic", "llamacpp"),
                                                   repeats=1, warmup_tokens=2))
    llamacpp = result.path("llamacpp")
    assert llamacpp.status == "skipped" and llamacpp.reason == reason
    assert result.path("dynamic").ok and result.all_match
    assert report.path_status_sentence(llamacpp) == f"llamacpp skipped: {reason}"


@pytest.mark.parametrize("model", ["tiny-gpt2", "gpt2-medium"])
def test_cli_asked_for_llamacpp_on_a_model_without_gguf_exits_2_with_one_line(model):
    result = subprocess.run([sys.executable, "-m", "kvviz", "bench", "--model", model, "--tokens", "4", "--paths",
                             "dynamic,llamacpp"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == (
        f"kvviz: error: The llamacpp path cannot run: {llamacpp_engine.unavailable_reason(model)}.")


def test_without_the_package_the_reason_says_how_to_install_it_and_how_long_it_takes(monkeypatch):
    monkeypatch.setattr(llamacpp_engine, "installed", lambda: False)
    reason = llamacpp_engine.unavailable_reason("smollm2-135m")
    assert reason.startswith("llama-cpp-python is not installed")
    assert f"pip install {llamacpp_engine.REQUIREMENT}" in reason and "about 5 minutes" in reason


def test_make_test_installs_the_pinned_package_and_requires_it():
    pins = (ROOT / "requirements-dev.txt").read_text().splitlines()
    assert llamacpp_engine.REQUIREMENT in pins
    test_target = re.search(r"^test:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    assert "KVVIZ_REQUIRE_LLAMACPP=1" in test_target
    assert llamacpp_engine.REQUIREMENT not in (ROOT / "requirements.txt").read_text()  # optional for `make run`


# ----- with llama.cpp, on the default model ---------------------------------------------------------------------

@pytest.mark.slow
def test_llamacpp_decodes_the_same_prompt_ids_and_its_differences_are_near_ties(require_llamacpp, ladder, smollm2):
    dynamic, kvviz, llamacpp = (ladder.path(name) for name in ("dynamic", "kvviz", "llamacpp"))
    assert llamacpp.ok and len(llamacpp.tokens) == LADDER.tokens and len(llamacpp.steps) == LADDER.tokens - 1
    assert kvviz.tokens == dynamic.tokens and ladder.reference_path == "dynamic"
    engine = llamacpp.engine
    # Fed dynamic's tokens one at a time, llama.cpp chooses the same next token nearly everywhere; where it does
    # not, the two candidates are within a fraction of a logit (Q4_1 weights with 8-bit activations against the
    # same weights dequantised to float32). Free-running greedy decoding parts at the first such near-tie.
    assert engine.forced_positions == LADDER.tokens
    assert engine.forced_matches >= LADDER.tokens - 2
    session = llamacpp_engine.LlamaCppSession(gguf_file("smollm2-135m"), n_ctx=64, threads=1)
    try:
        agreement = session.agreement(benchmark_prompt(smollm2, LADDER.prompt_tokens), list(dynamic.tokens))
    finally:
        session.close()
    assert (agreement.matches, agreement.positions) == (engine.forced_matches, engine.forced_positions)
    if llamacpp.matches_reference:
        assert agreement.first_difference is None and engine.forced_max_gap is None
    else:
        assert llamacpp.first_mismatch == agreement.first_difference
        assert 0 < engine.forced_max_gap < 0.5
    assert llamacpp.reason == ""  # its own runs agree with one another


@pytest.mark.slow
def test_llamacpp_reports_its_weights_and_its_f16_cache_against_the_formula(require_llamacpp, ladder, smollm2):
    llamacpp = ladder.path("llamacpp")
    engine = llamacpp.engine
    gguf = gguf_file("smollm2-135m")
    assert (engine.name, engine.device, engine.model_file, engine.weights_type) == (
        "llama.cpp", "cpu", gguf.name, "Q4_1")
    assert engine.version == "0.3.36" and engine.file_bytes == gguf.stat().st_size
    assert 0.9 * engine.file_bytes < engine.weights_bytes < engine.file_bytes  # the tensors, less the metadata
    # llama.cpp rounds its context up to a multiple of 256 and keeps K and V in f16: 2·30·3·64·2 = 23,040 B a position.
    assert engine.n_ctx % 256 == 0 and engine.n_ctx >= LADDER.prompt_tokens + LADDER.tokens
    assert kv_bytes_per_token(smollm2.spec, FP16) == 23_040
    assert engine.kv_type == "f16" and engine.kv_bytes == engine.n_ctx * 23_040
    assert engine.kv_log_agrees and engine.kv_mib_reported == pytest.approx(engine.kv_bytes / 2**20, abs=0.005)
    # Its steps read its own weights and its f16 cache; the PyTorch paths read float32 weights.
    first = llamacpp.steps.position[0]
    assert llamacpp.steps.bytes_moved[0] == step_bytes(engine.weights_bytes, smollm2.spec, FP16, first, 1)
    assert ladder.environment.weights_bytes / engine.weights_bytes > 5
    assert engine.eval_ms_per_token > 0 and engine.prompt_eval_ms > 0


@pytest.mark.slow
def test_the_engine_sentences_say_what_the_numbers_are(require_llamacpp, ladder):
    llamacpp, kvviz = ladder.path("llamacpp"), ladder.path("kvviz")
    engine = llamacpp.engine
    first, kv = report.engine_sentences(ladder)
    assert f"{llamacpp.ms_per_token.median:.2f} ms per token by the wall clock" in first
    assert f"{engine.eval_ms_per_token:.2f} ms by llama.cpp's own counter" in first
    assert (f"kvviz takes {kvviz.ms_per_token.median:.2f} ms, "
            f"{kvviz.ms_per_token.median / llamacpp.ms_per_token.median:.1f}× as long") in first
    assert f"chose the same next token at {engine.forced_matches} of them" in first
    assert f"n_ctx = {engine.n_ctx:,} positions, {engine.kv_bytes:,} bytes" in kv and "equal to the formula" in kv
    weights, floors, why = report.engine_gap_sentences(ladder)
    ratio = ladder.environment.weights_bytes / engine.weights_bytes
    assert f"{ratio:.1f}× the bytes" in weights and "Q4_1" in weights and "float32" in weights
    floor = engine.weights_bytes / ladder.peak.memory_bytes_per_s * 1000
    assert f"at least {floor:.1f} ms" in floors
    assert "Python" in why and "fused" in why
    table = format_bench_table(ladder)
    for sentence in report.engine_sentences(ladder) + report.engine_gap_sentences(ladder):
        assert f"# {sentence}" in table


@pytest.mark.slow
def test_the_result_file_keeps_the_engine_record(require_llamacpp, ladder):
    again = BenchResult.from_json(ladder.to_json())
    assert again.path("llamacpp").engine == ladder.path("llamacpp").engine
    assert again.environment.weights_bytes == ladder.environment.weights_bytes
    old = ladder.to_dict()
    old["environment"].pop("weights_bytes")
    for path in old["paths"]:
        path.pop("engine")
    older = BenchResult.from_dict(old)  # a file written before these fields existed still reads
    assert older.path("llamacpp").engine is None and report.engine_gap_sentences(older) == []
    assert ladder.path("dynamic").engine is None
