"""Prompt design through the real prefix cache: cache-friendly prompts hit more than cache-hostile ones, hits are
exact for a crafted pair, the few-shot shuffle is seeded, and a chat's hits grow turn by turn. Tiny random model
with a byte tokenizer (one token a byte, no chat template), CPU; one slow test on SmolLM2 with its chat template.
"""

from __future__ import annotations

import pytest

from kvviz.errors import InputError
from kvviz.serving.prompt_design import (
    FEW_SHOT_EXAMPLES,
    PROMPT_DESIGN_SCENARIOS,
    PromptDesignScenario,
    few_shot_orders,
    render_prompt,
    run_prompt_design,
)

SCENARIO_KEYS = [scenario.key for scenario in PROMPT_DESIGN_SCENARIOS]


@pytest.fixture(scope="module")
def tiny_run(tiny_llama):
    return run_prompt_design(tiny_llama, block_size=16)


@pytest.mark.parametrize("key", SCENARIO_KEYS)
def test_the_cache_friendly_variant_hits_more_than_the_cache_hostile_one(tiny_run, key):
    scenario = tiny_run.scenario(key)
    friendly, hostile = scenario.friendly, scenario.hostile
    assert friendly.hit_rate_after_first > hostile.hit_rate_after_first
    assert friendly.hit_rate_overall > hostile.hit_rate_overall
    assert friendly.prefill_tokens_saved > hostile.prefill_tokens_saved
    assert friendly.hit_tokens[0] == hostile.hit_tokens[0] == 0  # each variant starts from an empty cache
    for variant in (friendly, hostile):
        assert len(variant.prompt_tokens) == len(variant.hit_tokens) == len(variant.ttft_ms) == len(variant.texts)
        assert 3 <= len(variant.texts) <= 5
        assert all(hit % 16 == 0 and hit < tokens for hit, tokens in zip(variant.hit_tokens, variant.prompt_tokens))
        assert variant.prefill_tokens_saved == sum(variant.hit_tokens)
        assert variant.hit_rate_after_first == pytest.approx(sum(variant.hit_tokens[1:])
                                                             / sum(variant.prompt_tokens[1:]))
        assert variant.hit_rate_overall == pytest.approx(sum(variant.hit_tokens) / sum(variant.prompt_tokens))


def test_a_chat_resending_its_history_hits_more_every_turn(tiny_run):
    chat = tiny_run.scenario("chat-history")
    hits = chat.friendly.hit_tokens
    assert all(later > earlier for earlier, later in zip(hits[1:], hits[2:])) and hits[1] > 0
    # Every turn the hostile chat's date line differs a few bytes in, so what it reuses stays the same and small.
    assert len(set(chat.hostile.hit_tokens[1:])) == 1 and chat.hostile.hit_tokens[1] <= 32


def test_the_run_says_what_it_ran(tiny_run, tiny_llama):
    assert (tiny_run.model, tiny_run.block_size, tiny_run.new_tokens) == ("tiny-llama", 16, 2)
    assert tiny_run.chat_template is False and tiny_run.seconds > 0
    assert [s.key for s in tiny_run.scenarios] == SCENARIO_KEYS
    first = tiny_run.scenarios[0].friendly
    text, ids = render_prompt(tiny_llama, PROMPT_DESIGN_SCENARIOS[0].friendly[0])
    assert first.texts[0] == text and text.startswith("system: You are the help desk") and text.endswith("assistant:")
    assert first.prompt_tokens[0] == len(ids) == len(text.encode())  # the byte tokenizer: one token a byte
    assert {"scenarios", "seconds", "chat_template"} <= set(tiny_run.to_dict())


def test_a_crafted_pair_hits_exactly_the_whole_blocks_of_its_shared_prefix(tiny_llama):
    shared = "A" * 40
    crafted = PromptDesignScenario(
        key="crafted", title="crafted", lesson="", friendly_description="", hostile_description="",
        friendly=((("user", shared + "x"),), (("user", shared + "yz"),), (("user", shared + "yz!"),)),
        hostile=((("user", "x" + shared),), (("user", "yz" + shared),), (("user", "yz!" + shared),)),
    )
    run = run_prompt_design(tiny_llama, block_size=4, scenarios=[crafted])
    friendly, hostile = run.scenarios[0].friendly, run.scenarios[0].hostile
    # Prompt 2 shares "user: " + 40 × "A" = 46 bytes with prompt 1: 11 whole blocks of 4. Prompt 3 shares 48
    # bytes with prompt 2 ("user: AAA…Ayz"): 12 blocks, the cache holding every earlier prompt's full blocks.
    assert friendly.prompt_tokens == (58, 59, 60)  # "user: …" + "\nassistant:"
    assert friendly.hit_tokens == (0, 44, 48)
    assert friendly.first_divergence == (None, 46, 48)
    # Only "user: " (6 bytes: one block) comes before prompt 2's first differing byte, "user: yz" (two) before 3's.
    assert hostile.hit_tokens == (0, 4, 8)
    assert friendly.hit_rate_after_first == pytest.approx((44 + 48) / (59 + 60))
    assert friendly.hit_rate_overall == pytest.approx((44 + 48) / (58 + 59 + 60))
    assert friendly.prefill_tokens_saved == 92 and hostile.prefill_tokens_saved == 12


def test_the_few_shot_shuffle_is_seeded_and_really_reorders():
    orders = few_shot_orders()
    assert orders == few_shot_orders() and orders != few_shot_orders(1)
    fixed = list(range(len(FEW_SHOT_EXAMPLES)))
    assert all(sorted(order) == fixed and order != fixed for order in orders)
    hostile = next(s for s in PROMPT_DESIGN_SCENARIOS if s.key == "few-shot-order").hostile
    for order, conversation in zip(orders, hostile):
        system = conversation[0][1]
        positions = [system.index(FEW_SHOT_EXAMPLES[i][0]) for i in order]
        assert positions == sorted(positions)  # the examples appear in the seeded order


def test_no_scenario_is_refused():
    with pytest.raises(InputError, match="at least one"):
        run_prompt_design(None, scenarios=[])  # type: ignore[arg-type]


@pytest.mark.slow
def test_smollm2_chat_template_prompts_hit_more_every_turn_and_a_changing_start_hits_less(smollm2):
    chat = next(s for s in PROMPT_DESIGN_SCENARIOS if s.key == "chat-history")
    run = run_prompt_design(smollm2, scenarios=[chat])
    assert run.chat_template is True
    friendly, hostile = run.scenarios[0].friendly, run.scenarios[0].hostile
    assert friendly.texts[0].startswith("<|im_start|>system\nYou are a patient cooking tutor")
    assert friendly.texts[0].endswith("<|im_start|>assistant\n")
    hits = friendly.hit_tokens
    assert hits[0] == 0 and all(later > earlier for earlier, later in zip(hits[1:], hits[2:]))
    assert friendly.hit_rate_after_first > 2 * hostile.hit_rate_after_first
