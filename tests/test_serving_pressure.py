"""Memory pressure (a pool too small: waiting, preemption, unchanged outputs) and maximum concurrency (vLLM's
start-up figure, projected for a GPU with kvviz's KV formula and read off a live pool). Tiny random models, CPU.
"""

from __future__ import annotations

import math

import pytest

from kvviz.errors import InputError
from kvviz.kv_configs import get_preset
from kvviz.kv_formula import BF16, FP8, GPUS, MIB, weights_bytes
from kvviz.serving.engine import ServingEngine
from kvviz.serving.pressure import (
    live_concurrency,
    max_concurrency,
    pressure_pool_blocks,
    pressure_requests,
    project_concurrency,
    run_pressure,
)
from kvviz.serving.workload import demo_requests


@pytest.fixture(scope="module")
def pressure_run(untied_llama):
    return run_pressure(untied_llama, count=4, new_tokens=6, seed=0, mean_gap_steps=1.0)


# ----- arrivals -------------------------------------------------------------------------------------------------

def test_arrivals_are_seeded_and_reuse_the_demo_questions(untied_llama):
    first = pressure_requests(untied_llama, 6, 4, seed=3, mean_gap_steps=2.0)
    again = pressure_requests(untied_llama, 6, 4, seed=3, mean_gap_steps=2.0)
    other = pressure_requests(untied_llama, 6, 4, seed=4, mean_gap_steps=2.0)
    steps = [r.arrival_step for r in first]
    assert steps == [r.arrival_step for r in again] != [r.arrival_step for r in other]
    assert steps[0] == 0 and steps == sorted(steps)
    demo = demo_requests(untied_llama, 6, 4)
    assert [r.prompt_ids for r in first] == [r.prompt_ids for r in demo]
    assert all(r.new_tokens == 4 for r in first)
    assert [r.arrival_step for r in pressure_requests(untied_llama, 4, 4, 0, 0.0)] == [0, 0, 0, 0]


def test_the_pool_is_the_asked_share_of_what_all_requests_need_but_fits_the_largest(untied_llama):
    requests = pressure_requests(untied_llama, 4, 6, 0, 1.0)
    needs = [math.ceil(r.max_cache_tokens / 16) for r in requests]
    assert pressure_pool_blocks(requests, 16, 0.5) == math.ceil(0.5 * sum(needs))
    assert pressure_pool_blocks(requests, 16, 0.01) == max(needs) + 1
    with pytest.raises(InputError, match="pool fraction"):
        pressure_pool_blocks(requests, 16, 0.0)


# ----- the run --------------------------------------------------------------------------------------------------

def test_a_pool_too_small_makes_requests_wait_and_be_preempted_without_changing_outputs(pressure_run):
    timeline, summary = pressure_run.timeline, pressure_run.trace.summary
    assert timeline.preemptions == summary.preemptions > 0
    assert timeline.peak_waiting > 0 and timeline.steps_with_waiting > 0
    assert summary.outputs_match_sequential is True and summary.max_logprob_diff < 1e-4
    assert pressure_run.trace.prefix_sharing is False
    needs = sum(math.ceil(r.max_cache_tokens / 16) for r in pressure_run.trace.requests)
    assert timeline.pool_blocks < needs  # the pool could not hold every request at full length


def test_the_timeline_reads_every_step_of_the_trace(pressure_run):
    trace, timeline = pressure_run.trace, pressure_run.timeline
    assert [p.step for p in timeline.points] == [s.index for s in trace.steps]
    for point, step in zip(timeline.points, trace.steps):
        assert point.blocks_held + point.blocks_cached + point.blocks_free == timeline.pool_blocks
        assert point.blocks_held == sum(1 for b in step.blocks if b.ref_count > 0)
        assert point.preempted == len(step.preempted) and point.finished == len(step.finished)
        states = [v.state for v in step.requests]
        assert point.running + point.waiting + states.count("done") == len(step.requests)
    assert sum(p.arrived for p in timeline.points) == sum(p.finished for p in timeline.points) == 4
    assert timeline.peak_blocks_held <= timeline.pool_blocks


# ----- maximum concurrency --------------------------------------------------------------------------------------

def test_max_concurrency_is_pool_blocks_over_the_blocks_one_request_needs():
    assert max_concurrency(16_384, 4_096) == 4.0
    assert max_concurrency(16_384 + 15, 4_096) == 4.0  # a partial block of the pool is no block
    assert max_concurrency(16_384, 4_097) == pytest.approx(1_024 / 257)  # one token more: one block more each
    assert max_concurrency(100, 30, block_size=10) == pytest.approx(10 / 3)
    with pytest.raises(InputError):
        max_concurrency(100, 0)


def test_llama_3_1_8b_bf16_on_an_h100_matches_the_hand_computation():
    spec = get_preset("llama-3.1-8b")
    gpu = GPUS["h100"].memory_bytes
    weights = weights_bytes(8_030_261_248, BF16)
    projection = project_concurrency(spec, BF16, gpu, weights)
    per_token = 2 * 32 * 8 * 128 * 2  # K and V × 32 layers × 8 KV heads × head dim 128 × 2 bytes
    assert per_token == 131_072 == projection.kv_bytes_per_token
    assert gpu == 81_559 * MIB and weights == 16_060_522_496
    budget = int(81_559 * MIB * 0.9) - 16_060_522_496  # 90 % of the card, less the weights
    blocks = budget // (131_072 * 16)
    assert (projection.kv_budget_bytes, projection.num_blocks) == (budget, blocks) == (60_908_206_489, 29_043)
    assert projection.pool_tokens == 29_043 * 16 == 464_688
    assert projection.tokens_per_request == 131_072 and projection.blocks_per_request == 8_192
    assert projection.max_concurrency == pytest.approx(29_043 / 8_192)  # vLLM would print "3.55x"
    assert f"{projection.max_concurrency:.2f}x" == "3.55x"
    shorter = project_concurrency(spec, FP8, gpu, weights, tokens_per_request=8_192)
    assert shorter.kv_bytes_per_token == 65_536 and shorter.max_concurrency == pytest.approx(
        (budget // (65_536 * 16)) / 512)


def test_projection_refuses_what_it_does_not_model():
    spec = get_preset("llama-3.1-8b")
    with pytest.raises(InputError, match="Nothing is left"):
        project_concurrency(spec, BF16, GPUS["t4"].memory_bytes, weights_bytes(8_030_261_248, BF16))
    with pytest.raises(InputError, match="sliding-window"):
        project_concurrency(get_preset("mistral-7b"), BF16, GPUS["h100"].memory_bytes, 0)


def test_live_concurrency_reads_the_engine_pool(untied_llama):
    engine = ServingEngine(untied_llama, block_size=16, num_blocks=24)
    live = live_concurrency(engine)
    assert live.source == "live pool" and live.model == untied_llama.key
    assert (live.num_blocks, live.block_size, live.block_bytes) == (24, 16, engine.block_bytes)
    assert live.pool_bytes == engine.batcher.pool_bytes and live.pool_tokens == 24 * 16
    assert live.kv_bytes_per_token == engine.size.per_token == 2 * 2 * 2 * 16 * 4
    assert live.tokens_per_request == untied_llama.card.context_length == 512
    assert live.max_concurrency == pytest.approx(24 / 32) == max_concurrency(24 * 16, 512, 16)
    assert live.gpu_memory_bytes is None and live.kv_budget_bytes is None
    assert live_concurrency(engine, 100).max_concurrency == pytest.approx(24 / 7)
