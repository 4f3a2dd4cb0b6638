"""StaticDecoder, the graphs path's decode step: on the CPU it runs eagerly (and compiled) and must choose the
``static`` bench path's tokens; on a CUDA GPU its captured graphs must too.

The graph capture itself is CUDA-only. What makes a step capturable is checked on the CPU instead: it reads no
value from the host (``decode`` runs many steps without a read, and ``torch.compile`` traces it as one graph that
is never recompiled as the position advances) and its buffers keep their addresses across ``reset``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from kvviz.bench import benchmark_prompt, run_benchmark
from kvviz.bench_results import BenchConfig
from kvviz.models import LoadedModel, is_available, load_model
from kvviz.static_decode import StaticDecoder, graph_blocker
from test_bench import SMALL, varied_model

TOKENS = 16
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA graphs); none is visible")


def static_path_tokens(loaded: LoadedModel, tokens: int = TOKENS, paths: tuple[str, ...] = ("static",),
                       **config: object) -> dict[str, tuple[int, ...]]:
    """The bench's own paths on ``loaded``, one timed run: their tokens by path name."""
    result = run_benchmark(loaded, replace(SMALL, tokens=tokens, paths=paths, repeats=1, **config))
    return {p.path: p.tokens for p in result.paths if p.ok}


def decoded(decoder: StaticDecoder, prompt: list[int], tokens: int, chunks: tuple[int, ...] = ()) -> list[int]:
    """Prefill, then ``tokens - 1`` steps in ``chunks`` (one call for all when empty), read once at the end."""
    decoder.reset()
    first = decoder.prefill(prompt)
    for steps in chunks or (tokens - 1,):
        decoder.decode(steps)
    new = decoder.read(len(prompt), tokens)
    assert new[0] == first
    return new


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def varied(request) -> LoadedModel:
    return varied_model(request.param)


@torch.inference_mode()
def test_eager_steps_choose_the_static_and_kvviz_paths_tokens_without_a_host_read_between(varied):
    expected = static_path_tokens(varied, paths=("kvviz", "static"))
    prompt = benchmark_prompt(varied, SMALL.prompt_tokens)
    decoder = StaticDecoder(varied.model, len(prompt) + TOKENS)
    assert tuple(decoded(decoder, prompt, TOKENS)) == expected["static"] == expected["kvviz"]
    assert len(set(expected["static"])) > 3  # varied tokens, so "equal" means something
    # K steps per call, as a replay of a K-step graph runs them, then single steps for the rest: the same tokens.
    assert tuple(decoded(decoder, prompt, TOKENS, chunks=(4, 4, 4, 1, 1, 1))) == expected["static"]
    assert decoder.read(0, len(prompt)) == prompt


@torch.inference_mode()
def test_reset_empties_the_decoder_in_place_so_a_captured_graph_would_stay_valid(tiny_llama):
    prompt = benchmark_prompt(tiny_llama, 5)
    decoder = StaticDecoder(tiny_llama.model, len(prompt) + 6)
    first = decoded(decoder, prompt, 6)
    buffers = [decoder.input_id, decoder.tokens, decoder.cursor,
               *(t for layer in decoder.cache.layers for t in (layer.keys, layer.values, layer.cumulative_length))]
    addresses = [t.data_ptr() for t in buffers]
    decoder.reset()
    assert int(decoder.cursor) == 0 and not decoder.tokens.any()
    assert all(int(layer.cumulative_length) == 0 and not layer.keys.any() for layer in decoder.cache.layers)
    assert decoded(decoder, prompt, 6) == first
    assert [t.data_ptr() for t in buffers] == addresses


def test_capture_refuses_a_cpu_decoder_and_a_sliding_window_cache_is_named(tiny_llama):
    from tiny_models import sliding_mistral

    decoder = StaticDecoder(tiny_llama.model, 8)
    assert graph_blocker(decoder.cache) is None
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        decoder.capture(1, warmup_prompt=[1])
    sliding = sliding_mistral(window=6, vocab_size=300, max_positions=64)
    assert "StaticSlidingWindowLayer" in graph_blocker(StaticDecoder(sliding.model, 16).cache)


@pytest.mark.slow
@torch.inference_mode()
def test_smollm2_bfloat16_eager_steps_choose_the_static_paths_tokens():
    """The real model in the GPU's dtype: the decoder's step is the static path's op for op, so bit-equal tokens."""
    loaded = load_model("smollm2-135m", device="cpu", dtype="bfloat16")
    expected = static_path_tokens(loaded, paths=("kvviz", "static"))
    prompt = benchmark_prompt(loaded, SMALL.prompt_tokens)
    decoder = StaticDecoder(loaded.model, len(prompt) + TOKENS)
    assert tuple(decoded(decoder, prompt, TOKENS, chunks=(8, 4, 1, 1, 1))) == expected["static"] == expected["kvviz"]


@torch.inference_mode()
def test_the_compiled_step_is_one_graph_that_no_position_recompiles_and_chooses_the_same_tokens():
    """What capture needs, checked where no GPU is: ``fullgraph`` fails on any break (host work between pieces),
    ``error_on_recompile`` on any per-step value dynamo would have to read from the host. The ``aot_eager``
    backend traces exactly as inductor's front end does but runs the ops eagerly: seconds instead of the minute
    that inductor's C++ code generation takes on 2 CPU cores (the GPU tests compile with inductor)."""
    import torch._dynamo

    loaded = varied_model("tiny-llama")
    expected = static_path_tokens(loaded)["static"]
    prompt = benchmark_prompt(loaded, SMALL.prompt_tokens)
    decoder = StaticDecoder(loaded.model, len(prompt) + TOKENS)
    decoder.compile(backend="aot_eager")
    decoder.prefill(prompt)
    decoder.decode(1)  # compiles for this decoder (dynamo keeps one cache per function, shared by every decoder)
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert tuple(decoded(decoder, prompt, TOKENS)) == expected
        assert tuple(decoded(decoder, prompt, TOKENS, chunks=(5, 5, 5))) == expected


@torch.inference_mode()
def test_the_same_check_catches_the_host_side_length_that_graph_blocker_refuses():
    """A sliding-window layer counts its length in a Python int: dynamo must recompile as it changes, and a graph
    would replay the captured value forever."""
    import torch._dynamo
    from tiny_models import sliding_mistral

    loaded = sliding_mistral(window=6, vocab_size=300, max_positions=64)
    decoder = StaticDecoder(loaded.model, 24)
    decoder.compile(backend="aot_eager")
    decoder.prefill(list(range(1, 9)))
    decoder.decode(1)  # compiles for this decoder, as above
    with torch._dynamo.config.patch(error_on_recompile=True), pytest.raises(Exception, match="cumulative_length"):
        decoder.decode(1)


# ----- on a CUDA GPU --------------------------------------------------------------------------------------------

@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("compile_first", [False, True])
@pytest.mark.parametrize("steps", [1, 4])
def test_graphs_path_replays_k_steps_per_graph_and_chooses_the_static_paths_tokens(steps, compile_first):
    loaded = varied_model("tiny-llama", device="cuda", dtype="float32")
    config = replace(SMALL, paths=("static", "graphs"), graphs_compile=compile_first, graphs_steps=steps)
    result = run_benchmark(loaded, config)
    graphs = result.path("graphs")
    assert graphs.ok, graphs.reason
    assert graphs.cold_setup_ms > 0 and graphs.steps.tokens_processed == (1,) * (SMALL.tokens - 1)
    assert graphs.tokens == result.path("static").tokens and graphs.matches_reference
    assert (f"{steps} steps per replay" in graphs.label) == (steps > 1)


@pytest.mark.gpu
@cuda
@torch.inference_mode()
def test_smollm2_bfloat16_graph_replays_choose_the_static_paths_tokens():
    """The real model in bfloat16 on the GPU, 64 tokens: 8 steps per replay, then single steps for the rest."""
    available, why = is_available("smollm2-135m")
    if not available:
        pytest.skip(f"SmolLM2's weights are not here: {why}")
    loaded = load_model("smollm2-135m", device="cuda", dtype="bfloat16")
    tokens = static_path_tokens(loaded, tokens=64, paths=("static", "graphs"), graphs_steps=8)
    assert set(tokens) == {"static", "graphs"} and tokens["graphs"] == tokens["static"]


def test_graph_steps_below_one_are_refused():
    from kvviz.bench import validate
    from kvviz.errors import InputError

    with pytest.raises(InputError, match="at least 1"):
        validate(BenchConfig(graphs_steps=0))


def test_the_graphs_label_says_what_its_ms_per_token_contains_and_setup_is_reported_apart(tiny_llama):
    from kvviz import report
    from kvviz.bench_results import PathResult, Spread

    config = replace(SMALL, paths=("graphs",), graphs_compile=True, graphs_steps=8)
    graphs = run_benchmark(tiny_llama, config).path("graphs")
    assert graphs.status == "skipped"  # on the CPU; the label is the same wherever it runs
    assert graphs.label.endswith("(torch.compile first) (8 steps per replay; ms/token = replay ÷ 8)")
    timed = PathResult("graphs", graphs.label, "ok", runs=1, tokens=(1, 2), prefill_ms=Spread(1, 1, 1),
                       ms_per_token=Spread(1, 1, 1), total_ms=Spread(2, 2, 2), cold_setup_ms=23_400.0)
    result = replace(run_benchmark(tiny_llama, replace(SMALL, paths=("dynamic",))), paths=(timed,))
    assert report.setup_sentences(result) == [
        f"{graphs.label}: one-off setup 23.4 s before its first run, not in its ms/token"]
