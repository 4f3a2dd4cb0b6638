"""The CLI contract: output shape, JSON fields, exit status and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def kvviz(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvviz", *args], capture_output=True, text=True, timeout=300)


def test_step_json_contract_with_compare():
    result = kvviz("step", "--model", "tiny-llama", "--prompt", "hello there", "--tokens", "5", "--compare", "--json")
    assert result.returncode == 0, result.stderr
    trace = json.loads(result.stdout)
    assert {"model", "device", "dtype", "prompt_tokens", "steps"} <= set(trace)
    # The model's name, as in the app's traces (both start with kvviz.tracing.start_trace).
    assert trace["model"] == "tiny-llama (random weights, seed 0)" and trace["prompt_tokens"] == len("hello there")
    assert len(trace["steps"]) == 5  # the prefill's token, then 4 decode steps
    assert trace["steps"][0]["kind"] == "prefill"
    for offset, step in enumerate(trace["steps"]):
        assert {"token_id", "token", "cache_len", "cache_bytes", "ms_cached", "ms_naive",
                "max_logit_diff", "same_token"} <= set(step)
        assert step["cache_len"] == trace["prompt_tokens"] + offset
        assert step["same_token"] is True and step["ms_naive"] > 0 and step["ms_cached"] > 0
    per_token = trace["steps"][1]["cache_bytes"] - trace["steps"][0]["cache_bytes"]
    assert per_token == 2 * 4 * 2 * 16 * 4  # layers × KV heads × head dim × K,V × fp32 bytes


def test_step_json_without_compare_has_null_naive_fields():
    result = kvviz("step", "--model", "tiny-gpt2", "--prompt", "abc", "--tokens", "2", "--json")
    assert result.returncode == 0, result.stderr
    step = json.loads(result.stdout)["steps"][0]
    assert step["ms_naive"] is None and step["max_logit_diff"] is None and step["same_token"] is None


def test_step_table_output():
    result = kvviz("step", "--model", "tiny-llama", "--prompt", "abc", "--tokens", "3", "--compare")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line and not line.startswith("#")]
    assert lines[0].split()[:3] == ["step", "token", "cache_len"]
    assert len(lines) == 4 and all(line.split()[-1] == "yes" for line in lines[1:])


def test_models_lists_the_registry():
    result = kvviz("models")
    assert result.returncode == 0
    for key in ("smollm2-135m", "tiny-llama", "tiny-gpt2"):
        assert key in result.stdout


@pytest.mark.parametrize(
    "args, reason",
    [
        (["step", "--model", "tiny-llama", "--prompt", "", "--tokens", "3"], "prompt is empty"),
        (["step", "--model", "no-such-model", "--prompt", "hi"], "Unknown model"),
        (["step", "--model", "./no/such/folder", "--prompt", "hi"], "Unknown model"),
        (["step", "--model", "tiny-llama", "--prompt", "hi", "--tokens", "0"], "at least 1"),
        (["step", "--model", "tiny-llama", "--prompt", "hi", "--tokens", "-3"], "at least 1"),
        (["step", "--model", "tiny-llama", "--prompt", "hi", "--tokens", "5000"], "context"),
        (["step", "--model", "tiny-llama", "--prompt", "hi", "--temperature", "-2"], "Temperature"),
        (["step", "--model", "tiny-llama", "--prompt", "hi", "--dtype", "int3"], "Unknown dtype"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(args, reason):
    result = kvviz(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kvviz: error:") and reason in lines[0]


@pytest.mark.slow
def test_default_model_trace_is_sensible_and_grows_by_46080_bytes_in_float32():
    result = kvviz("step", "--model", "smollm2-135m", "--prompt", "The capital of France is",
                   "--tokens", "20", "--compare", "--json")
    assert result.returncode == 0, result.stderr
    trace = json.loads(result.stdout)
    steps = trace["steps"]
    assert trace["dtype"] == "float32" and len(steps) == 20
    assert all(s["same_token"] for s in steps)
    assert "Paris" in "".join(s["token"] for s in steps[:3])
    assert {b["cache_bytes"] - a["cache_bytes"] for a, b in zip(steps, steps[1:])} == {46_080}


@pytest.mark.slow
def test_default_model_cache_grows_by_23040_bytes_per_token_in_bfloat16():
    """The live cache's bytes in bfloat16, not just the formula: 2 · 30 layers · 3 KV heads · 64 · 2 B."""
    result = kvviz("step", "--model", "smollm2-135m", "--dtype", "bfloat16", "--prompt", "The capital of France is",
                   "--tokens", "6", "--json")
    assert result.returncode == 0, result.stderr
    trace = json.loads(result.stdout)
    steps = trace["steps"]
    assert trace["dtype"] == "bfloat16" and len(steps) == 6
    assert steps[0]["cache_bytes"] == 23_040 * steps[0]["cache_len"]
    assert {b["cache_bytes"] - a["cache_bytes"] for a, b in zip(steps, steps[1:])} == {23_040}
