"""Serving engine: continuous batching over transformers' paged KV pool, stepped and recorded by kvviz.

Tiny random models, offline, CPU. The equivalence tests are strict: every batched request must choose the same
greedy tokens as the same request decoded alone by ``Stepper``, with log-probabilities equal to float32 rounding
(a request attending to another request's keys would move them far more).
"""

from __future__ import annotations

import inspect
import json
import math
import re
import subprocess
import sys

import pytest

from kvviz.cli import main
from kvviz.errors import InputError
from kvviz.kv_configs import spec_from_config
from kvviz.kv_formula import kv_bytes_per_token, precision_of_torch_dtype
from kvviz.serving import cb_api
from kvviz.serving.engine import ServingEngine, run_requests, run_sequential
from kvviz.serving.prefix import prefix_report, run_prefix
from kvviz.serving.records import ServingRequest

BLOCK = 4


def staggered_requests() -> list[ServingRequest]:
    """Four requests with a shared 20-token prefix, different lengths, joining one step apart."""
    shared = tuple(b"the shared prefix!! ")
    return [ServingRequest(f"r{i}", shared + tuple(range(40 + 7 * i, 43 + 9 * i)), 5 + 2 * i, arrival_step=i)
            for i in range(4)]


@pytest.fixture(scope="module")
def staggered_trace(untied_llama):
    return run_requests(untied_llama, staggered_requests(), block_size=BLOCK, num_blocks=40, compare_sequential=True)


# ----- equivalence ----------------------------------------------------------------------------------------------

def test_batched_outputs_equal_each_request_decoded_alone(staggered_trace):
    summary = staggered_trace.summary
    assert summary.outputs_match_sequential is True
    assert summary.max_logprob_diff < 1e-4
    assert summary.tokens_generated == sum(r.new_tokens for r in staggered_requests())
    assert len({o.generated_ids for o in staggered_trace.outcomes}) == 4  # the model does not just echo


def test_batched_outputs_equal_sequential_on_gpt2(tiny_gpt2):
    requests = [ServingRequest("a", tuple(b"hello paged world"), 6), ServingRequest("b", tuple(b"hi"), 4, 1)]
    trace = run_requests(tiny_gpt2, requests, block_size=BLOCK, num_blocks=16)
    alone = run_sequential(tiny_gpt2, requests)
    assert {o.request_id: o.generated_ids for o in trace.outcomes} == alone.outputs


def test_requests_join_and_leave_the_running_batch(staggered_trace):
    first, second = staggered_trace.steps[0], staggered_trace.steps[1]
    assert [e.request_id for e in first.batch] == ["r0"] and first.arrived == ("r0",)
    # r1 joins while r0 decodes: one decode token and r1's prompt tokens in the same forward.
    assert {e.request_id: (e.prefill_tokens, e.decode_tokens) for e in second.batch}["r0"] == (0, 1)
    assert {e.request_id for e in second.batch} == {"r0", "r1"}
    done_steps = {o.request_id: o.finish_step for o in staggered_trace.outcomes}
    assert done_steps["r0"] < done_steps["r3"]
    last_states = {v.request_id: v.state for v in staggered_trace.steps[-1].requests}
    assert set(last_states.values()) == {"done"}


def test_a_prompt_longer_than_the_token_budget_is_prefilled_in_chunks(untied_llama):
    requests = [ServingRequest("long", tuple(range(30, 70)), 3)]
    trace = run_requests(untied_llama, requests, block_size=BLOCK, num_blocks=16, max_batch_tokens=16,
                         compare_sequential=True)
    assert [s.prefill_tokens for s in trace.steps[:3]] == [16, 16, 8]
    assert [v.state for s in trace.steps[:3] for v in s.requests] == ["prefilling", "prefilling", "decoding"]
    assert [s.batch[0].produced_token for s in trace.steps[:3]] == [False, False, True]
    assert trace.summary.outputs_match_sequential is True


def test_shared_model_keeps_its_attention_and_weights_are_not_copied(untied_llama, staggered_trace):
    assert untied_llama.model.config._attn_implementation == "kvviz"
    twin = cb_api.paged_twin(untied_llama.model)
    assert twin.config._attn_implementation == "sdpa" and twin.config is not untied_llama.model.config
    for original, shared in zip(untied_llama.model.parameters(), twin.parameters()):
        assert original.data_ptr() == shared.data_ptr()
    assert untied_llama.model.config._attn_implementation == "kvviz"


# ----- blocks and bytes -----------------------------------------------------------------------------------------

def test_every_block_is_held_free_or_cached_and_reference_counts_match_holders(staggered_trace):
    pool_size = staggered_trace.num_blocks
    for step in staggered_trace.steps:
        held = [b for b in step.blocks if b.ref_count > 0]
        cached = [b for b in step.blocks if b.cached]
        assert len(held) + len(cached) + step.free_blocks == pool_size
        for block in step.blocks:
            assert block.ref_count == len(block.owners)  # a block of two requests has a count of 2 or more
            assert not (block.cached and block.owners)
            assert 0 < block.tokens <= BLOCK
            if block.cached or len(block.owners) > 1:
                assert block.hashed and block.tokens == BLOCK  # only full, hashed blocks are shared or kept
        for view in step.requests:
            if view.state in ("prefilling", "decoding"):
                assert len(view.block_table) == math.ceil(view.tokens_held / BLOCK)
                assert view.last_block_fill == view.tokens_held - (len(view.block_table) - 1) * BLOCK
            else:
                assert view.block_table == () and view.tokens_held == 0
    assert any(len(b.owners) >= 2 for s in staggered_trace.steps for b in s.blocks)  # sharing happened


def test_finished_requests_free_their_blocks_or_leave_them_cached(staggered_trace):
    for step in staggered_trace.steps:
        for rid in step.finished:
            assert all(rid not in block.owners for block in step.blocks)
    last = staggered_trace.steps[-1]
    assert all(not block.owners for block in last.blocks)
    assert all(block.cached and block.hashed for block in last.blocks)


def test_block_bytes_from_the_live_pool_equal_kvviz_formula(untied_llama, staggered_trace):
    config = untied_llama.model.config
    spec = spec_from_config(config, key="t", name="t", source="test", parameters=0)
    per_token = kv_bytes_per_token(spec, precision_of_torch_dtype("float32"))
    assert per_token == 2 * 2 * 2 * 16 * 4  # K and V × layers × KV heads × head dim × fp32 bytes
    assert staggered_trace.block_bytes == per_token * BLOCK
    assert staggered_trace.summary.block_bytes_match_formula
    for step in staggered_trace.steps:
        memory = step.memory
        held = [b for b in step.blocks if b.ref_count > 0]
        assert memory.paged_reserved == len(held) * staggered_trace.block_bytes
        assert memory.paged_used == sum(b.tokens for b in held) * per_token
        assert memory.paged_internal_fragmentation == memory.paged_reserved - memory.paged_used
        assert 0 <= memory.paged_internal_fragmentation < len(held) * staggered_trace.block_bytes or not held
        holding = [v for v in step.requests if v.state in ("prefilling", "decoding")]
        assert memory.contiguous_used == sum(v.tokens_held for v in holding) * per_token
        requests = {r.request_id: r for r in staggered_trace.requests}
        assert memory.contiguous_reserved == sum(requests[v.request_id].max_cache_tokens for v in holding) * per_token


def test_paged_pool_wastes_less_than_contiguous_reservations(staggered_trace):
    summary = staggered_trace.summary
    assert 0 <= summary.waste_fraction_paged < summary.waste_fraction_contiguous < 1
    assert summary.paged_bytes_peak < summary.contiguous_bytes_reserved


def test_whole_context_reservations_hold_the_model_context_for_every_request_holding_blocks(untied_llama,
                                                                                          staggered_trace):
    context = untied_llama.card.context_length
    assert staggered_trace.context_length == context == 512  # the config's max_position_embeddings
    per_token = staggered_trace.summary.bytes_per_token
    reserved, over = 0, 0
    for step in staggered_trace.steps:
        memory = step.memory
        holding = [v for v in step.requests if v.state in ("prefilling", "decoding")]
        assert memory.contiguous_context_reserved == len(holding) * context * per_token
        assert memory.contiguous_context_over_reservation == memory.contiguous_context_reserved - memory.contiguous_used
        reserved += memory.contiguous_context_reserved
        over += memory.contiguous_context_over_reservation
    summary = staggered_trace.summary
    assert summary.contiguous_context_bytes_reserved == max(s.memory.contiguous_context_reserved
                                                            for s in staggered_trace.steps)
    assert summary.waste_fraction_contiguous_context == pytest.approx(over / reserved)
    # Short requests in a 512-token context: nearly all of a whole-context reservation is never written.
    assert summary.waste_fraction_contiguous < 0.5 < summary.waste_fraction_contiguous_context < 1
    assert summary.contiguous_context_bytes_reserved > summary.contiguous_bytes_reserved


def test_a_short_pool_preempts_and_recomputes_without_changing_outputs(untied_llama):
    requests = [ServingRequest(f"p{i}", tuple(range(10 + i, 18 + i)), 24) for i in range(4)]
    trace = run_requests(untied_llama, requests, block_size=BLOCK, num_blocks=16, safety_margin=0.0,
                         compare_sequential=True)
    assert trace.summary.preemptions >= 1
    assert any(view.state == "preempted" for step in trace.steps for view in step.requests)
    assert any(step.sat_out for step in trace.steps)  # a request with no room to grow waits out a step
    assert trace.summary.outputs_match_sequential is True
    for step in trace.steps:
        assert sum(1 for b in step.blocks if b.ref_count > 0) + step.free_blocks <= trace.num_blocks


def test_a_request_larger_than_the_pool_is_refused_before_the_first_step(untied_llama):
    engine = ServingEngine(untied_llama, block_size=BLOCK, num_blocks=2)
    with pytest.raises(InputError, match="too small"):
        engine.add(ServingRequest("big", tuple(range(20)), 4))
    late_and_big = [ServingRequest("small", (1, 2), 2), ServingRequest("big", tuple(range(40)), 4, arrival_step=5)]
    with pytest.raises(InputError, match="request big"):
        run_requests(untied_llama, late_and_big, block_size=BLOCK, num_blocks=4)


def test_serving_records_import_neither_torch_nor_transformers():
    code = ("import sys, kvviz.serving.records\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----- prefix caching -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("full_blocks", [1, 3])
def test_a_shared_prefix_of_k_full_blocks_gives_k_hits(untied_llama, full_blocks):
    shared = list(range(50, 50 + full_blocks * BLOCK))
    prompts = [shared + [1, 2, 3], shared + [9, 8, 7, 6, 5]]
    run = run_prefix(untied_llama, prompts, block_size=BLOCK)
    assert [p.hit_blocks for p in run.prompts] == [0, full_blocks]
    assert run.prompts[1].hit_tokens == full_blocks * BLOCK
    assert run.prompts[1].first_divergence == full_blocks * BLOCK
    assert prefix_report(prompts[0], prompts[1], BLOCK).reusable_blocks == full_blocks
    first, second = run.prompts
    for i in range(full_blocks):  # a hit is the very block the first prompt left, found by its chained hash
        assert second.blocks[i].hit and second.blocks[i].content_hash == first.blocks[i].content_hash
        assert second.blocks[i].block_id == first.blocks[i].block_id
    assert not second.blocks[full_blocks].hit


@pytest.mark.parametrize("full_blocks", [1, 3])
def test_a_shared_prefix_one_token_short_of_a_block_misses_that_block(untied_llama, full_blocks):
    shared = list(range(60, 60 + full_blocks * BLOCK - 1))
    prompts = [shared + [1, 2, 3, 4], shared + [9, 8, 7, 6, 5]]
    run = run_prefix(untied_llama, prompts, block_size=BLOCK)
    assert run.prompts[1].hit_blocks == full_blocks - 1  # 0 for one block: shorter than a block never hits
    assert prefix_report(prompts[0], prompts[1], BLOCK).reusable_blocks == full_blocks - 1


def test_block_hashes_chain_to_their_parents(untied_llama):
    run = run_prefix(untied_llama, [list(range(100, 117))], block_size=BLOCK)
    blocks = run.prompts[0].blocks
    assert len(blocks) == 4 and blocks[0].parent_hash is None
    for parent, child in zip(blocks, blocks[1:]):
        assert child.parent_hash == parent.content_hash
    assert len({b.content_hash for b in blocks}) == 4


def test_prefix_report_finds_the_divergence_and_the_block_floor():
    a = list(range(20))
    report = prefix_report(a, a[:10] + [99] + a[11:], 4)
    assert (report.first_divergence, report.divergence_block, report.reusable_blocks) == (10, 2, 2)
    assert prefix_report(a, [5] + a[1:], 4).reusable_blocks == 0
    assert prefix_report(a[:3] + [0], a[:3] + [1], 4).reusable_blocks == 0  # three shared tokens: under a block
    same = prefix_report(a[:16], a[:16], 4)  # identical 4-block prompts: the last block holds the token to compute
    assert (same.first_divergence, same.reusable_blocks, same.reusable_tokens) == (None, 3, 12)


def test_prefix_runs_refuse_one_token_requests(untied_llama):
    with pytest.raises(InputError, match="at least 2 new tokens"):
        run_prefix(untied_llama, [[1, 2, 3, 4, 5]], block_size=BLOCK, new_tokens=1)


# ----- transformers' private API, as cb_api uses it ---------------------------------------------------------------

def test_the_private_continuous_batching_api_cb_api_relies_on_is_there(untied_llama):
    import transformers
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    from transformers.generation.continuous_batching import continuous_api, requests
    from transformers.generation.continuous_batching.cache_allocators import cache_allocator, cache_pool

    assert transformers.__version__ == cb_api.TRANSFORMERS_CHECKED, "re-check kvviz/serving/cb_api.py, then bump"
    fields = set(ContinuousBatchingConfig.__dataclass_fields__)
    assert {"page_size", "num_blocks", "max_batch_tokens", "use_cuda_graph", "use_async_batching",
            "allow_block_sharing", "auto_switch_to_flash", "return_logprobs", "cpu_offload_space",
            "safety_margin"} <= fields
    manager, processor = continuous_api.ContinuousBatchingManager, continuous_api.ContinuousBatchProcessor
    assert list(inspect.signature(manager._create_batch_processor).parameters) == ["self"]
    assert list(inspect.signature(processor.prepare_next_batch).parameters) == ["self"]
    assert list(inspect.signature(processor._generation_step).parameters) == ["self", "model"]
    assert list(inspect.signature(processor.update_batch).parameters) == ["self"]
    assert list(inspect.signature(cache_allocator.compute_block_hash).parameters) == ["parent_hash", "tokens"]
    assert isinstance(cache_pool.CachePool.num_free_sectors, property)
    assert {"position_offset", "generated_tokens", "initial_tokens", "_true_initial_tokens"} <= set(
        requests.RequestState.__dataclass_fields__)
    assert {"state", "has_new_token", "query_length"} <= set(requests.FutureRequestState.__slots__)
    # The manager refuses kvviz's own attention name: why cb_api steps a twin of the model instead.
    with pytest.raises(ValueError, match="not supported for continuous batching"):
        untied_llama.model.init_continuous_batching(
            continuous_batching_config=ContinuousBatchingConfig(num_blocks=4, auto_switch_to_flash=False))
    batcher = cb_api.PagedBatcher(untied_llama.model, page_size=BLOCK, num_blocks=8, max_batch_tokens=32)
    ledger = batcher.cache.cache_allocators[cb_api.FULL_ATTENTION].ledger
    assert {"shared_ref_counts", "hash_to_block", "block_to_hash", "cached_blocks"} <= set(vars(ledger))
    assert batcher.prefix_sharing and batcher.pool().free_blocks == len(batcher.block_ids) == 8
    assert batcher.cache.cache_tensor.numel() == (8 + 2) * batcher.block_bytes  # two trash sectors in front


# ----- command line ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["prefix", "--model", "tiny-llama"],
    ["prefix", "--model", "tiny-llama", "--prompt", "   "],
    ["prefix", "--model", "tiny-llama", "--prompt", "abc", "--block-size", "3"],
    ["serve", "--model", "tiny-llama", "--block-size", "2"],
    ["serve", "--model", "tiny-llama", "--requests", "0"],
    ["serve", "--model", "tiny-llama", "--blocks", "1", "--new-tokens", "4"],
    ["serve", "--model", "no-such-model"],
    ["serve", "--model", "tiny-llama", "--blocks", "many"],
])
def test_bad_serving_input_exits_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(argv))
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("kvviz: error: ")


def test_serve_json_contract():
    result = subprocess.run(
        [sys.executable, "-m", "kvviz", "serve", "--model", "tiny-llama", "--requests", "3", "--new-tokens", "4",
         "--block-size", "4", "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    summary = payload["summary"]
    assert {"paged_bytes_peak", "contiguous_bytes_reserved", "waste_fraction_paged", "waste_fraction_contiguous",
            "tokens_per_s_batched", "tokens_per_s_sequential", "preemptions",
            "outputs_match_sequential"} <= set(summary)
    assert summary["outputs_match_sequential"] is True and summary["requests"] == 3
    assert payload["context_length"] == 1024  # tiny-llama's
    peak_holding = max(sum(r["state"] in ("prefilling", "decoding") for r in s["requests"]) for s in payload["steps"])
    assert summary["contiguous_context_bytes_reserved"] == peak_holding * 1024 * summary["bytes_per_token"]
    assert summary["contiguous_bytes_reserved"] < summary["contiguous_context_bytes_reserved"]
    assert 0 < summary["waste_fraction_contiguous"] < summary["waste_fraction_contiguous_context"] < 1
    assert {"contiguous_context_reserved", "contiguous_context_over_reservation"} <= set(payload["steps"][0]["memory"])
    step = payload["steps"][0]
    assert {"index", "batch", "requests", "blocks", "free_blocks", "preempted", "memory", "ms"} <= set(step)
    assert {"request_id", "state", "tokens_held", "block_table", "last_block_fill"} <= set(step["requests"][0])
    assert len(payload["requests"]) == 3 and all(len(r["generated_ids"]) == 4 for r in payload["requests"])
    assert {"prompt_ids", "arrival_step", "ttft_ms", "cached_prefix_tokens",
            "preemptions"} <= set(payload["requests"][0])


def test_serve_table_prints_the_whole_context_reservation(capsys):
    assert main(["serve", "--model", "tiny-llama", "--requests", "2", "--new-tokens", "3", "--block-size", "4"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "whole 1,024-token context" in line)
    # Two requests × 1,024 positions × (K,V × 4 layers × 2 KV heads × 16 dims × 4 bytes = 1 KiB a position).
    waste = re.search(r"peak 2 MiB, waste (\d+\.\d)%$", line)
    assert waste is not None, line
    assert 50 < float(waste.group(1)) < 100  # prompts of ~200 tokens in a 1,024-token reservation


def test_prefix_json_contract(capsys):
    assert main(["prefix", "--model", "tiny-llama", "--block-size", "4", "--json",
                 "--prompt", "the same long opening, then one", "--prompt", "the same long opening, then two"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["block_size"] == 4
    first, second = payload["prompts"]
    assert {"tokens", "full_blocks", "hit_blocks", "hit_tokens", "first_divergence", "ttft_ms"} <= set(first)
    assert first["first_divergence"] is None and first["hit_blocks"] == 0
    assert second["first_divergence"] == len("the same long opening, then ")  # byte tokenizer: one token a byte
    assert second["hit_blocks"] == second["first_divergence"] // 4


# ----- the real model -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_default_model_batched_outputs_equal_sequential(smollm2):
    from kvviz.serving.workload import demo_requests

    requests = demo_requests(smollm2, 2, 6, arrive_every=1)
    trace = run_requests(smollm2, requests, block_size=16, num_blocks=16, compare_sequential=True)
    assert trace.summary.outputs_match_sequential is True
    assert trace.summary.block_bytes_match_formula
    assert trace.block_bytes == 2 * 30 * 3 * 64 * 4 * 16  # K,V × layers × KV heads × head dim × fp32 × tokens
    assert trace.outcome("r1").cached_prefix_tokens == 32  # the shared instruction: two full blocks found
