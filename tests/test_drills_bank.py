"""The drill bank: its size and topics, every option explained, every link resolving, every numeric answer
recomputed from kvviz's formulas (and the live-model ones from live tensors), grading with units, seeded sets."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from kvviz import kv_formula as mem
from kvviz.drills.bank import bank_problems, load_bank, read_bank
from kvviz.drills.grading import grade, read_number, unit_kind
from kvviz.drills.links import link_problems
from kvviz.drills.mock import (
    MOCK_QUESTIONS,
    mock_ids,
    mock_questions,
    parse_seed,
    realise,
    score_mock,
)
from kvviz.drills.numeric import LiveModel, draw, fill
from kvviz.drills.records import ChoiceQuestion, Link, NumericQuestion, NumericTemplate
from kvviz.errors import InputError
from kvviz.kv_configs import PRESETS, get_preset
from kvviz.roofline import KNOWN_GPUS
from kvviz.serving.cb_api import blocks_for
from kvviz.serving.prefix import prefix_report
from kvviz.serving.pressure import project_on_gpu
from kvviz.stepper import Stepper

ISSUE_TOPICS = {"prefill", "decode_step", "not_cached", "cost", "bytes_gqa", "heads", "paged", "prefix", "eviction",
                "quantisation", "sliding"}
MISCONCEPTIONS = {"The cache stores attention weights.", "Q is cached.", "The cost per token is constant.",
                  "The cache size is 2·layers·hidden_size."}
SEEDS = range(12)


@pytest.fixture(scope="module")
def bank():
    return load_bank()


def numeric_templates(bank) -> list[NumericTemplate]:
    return [entry for entry in bank.entries if isinstance(entry, NumericTemplate)]


def test_the_bank_holds_at_least_40_questions_over_every_topic_of_the_issue(bank):
    counts = bank.topic_counts()
    assert len(bank.entries) >= 40
    assert set(counts) == ISSUE_TOPICS
    assert all(count >= 3 for count in counts.values()), counts
    assert sum(counts.values()) == len(bank.entries)
    assert len(numeric_templates(bank)) >= 10
    assert len({entry.id for entry in bank.entries}) == len(bank.entries)


def test_each_popular_misconception_is_confronted_by_at_least_one_question(bank):
    confronted = {entry.misconception for entry in bank.entries if entry.misconception}
    assert MISCONCEPTIONS <= confronted


def test_every_choice_has_one_correct_option_and_every_option_an_explanation(bank):
    choices = [entry for entry in bank.entries if isinstance(entry, ChoiceQuestion)]
    assert len(choices) >= 30
    for question in choices:
        assert len(question.options) >= 3, question.id
        assert sum(option.correct for option in question.options) == 1, question.id
        assert len({option.text for option in question.options}) == len(question.options), question.id
        for option in question.options:
            assert len(option.explanation.split()) >= 5, (question.id, option.text)


def test_every_link_resolves_to_an_existing_page_and_view(bank):
    pages = {path.stem for path in (Path(__file__).parent.parent / "app_pages").glob("*.py")}
    for entry in bank.entries:
        assert link_problems(entry.link) == [], entry.id
        assert entry.link.page in pages | {"lessons", "cache_policies"}
        if entry.link.view:
            source = (Path(__file__).parent.parent / "app_pages" / f"{entry.link.page}.py").read_text()
            assert entry.link.view in source
    assert bank_problems(bank) == []


def test_the_link_check_rejects_missing_pages_views_and_queries():
    assert link_problems(Link("nowhere"))
    assert link_problems(Link("serving", view="A tab that does not exist"))
    assert link_problems(Link("memory", query="tab=cost"))
    assert link_problems(Link("step_through", query="tab=nothing"))
    assert link_problems(Link("cache_policies", view="A view nobody can check yet"))
    assert link_problems(Link("step_through", query="tab=cost")) == []
    assert Link("step_through", query="tab=cost").href == "./?tab=cost"
    assert Link("serving", view="Prefix caching").href == "./serving"


# ----- numeric answers, recomputed from the formulas --------------------------------------------------------------

def recompute(template: NumericTemplate, seed: int) -> float:
    """The answer in base units, straight from the formula modules (not through kvviz.drills.numeric)."""
    drawn = draw(template, seed)
    spec, precision, p = drawn.spec, drawn.precision, drawn.params
    quantity = template.quantity
    if quantity == "kv_bytes_per_token":
        return mem.kv_bytes_per_token(spec, precision)
    if quantity == "layer_bytes_per_step":
        return mem.kv_bytes_per_token(spec, precision) / spec.layers  # every layer alike in these models
    if quantity == "kv_cache_bytes":
        return mem.kv_cache_bytes(spec, p["context"], p.get("batch", 1), precision)
    if quantity == "hidden_size_overestimate":
        hidden = dict(next(x for x in PRESETS if x.key == spec.key).config)["hidden_size"]
        return 2 * spec.layers * hidden * precision.bits / 8 / mem.kv_bytes_per_token(spec, precision)
    if quantity == "int4_compression":
        int4 = mem.CACHE_PRECISIONS["int4"].with_group_size(p["group_size"])
        return mem.kv_bytes_per_token(spec, mem.BF16) / mem.kv_bytes_per_token(spec, int4)
    if quantity == "decode_attention_flops":
        return mem.attention_flops(spec, 1, p["context"])
    if quantity == "naive_over_cached_attention":
        return mem.attention_flops(spec, p["context"], p["context"]) / mem.attention_flops(spec, 1, p["context"])
    if quantity == "decode_floor_seconds":
        gpu = next(g for g in KNOWN_GPUS if g.label == p["gpu"])
        moved = (mem.weights_bytes(spec.parameters, mem.BF16) + mem.kv_cache_bytes(spec, p["context"], 1, precision)
                 + mem.kv_bytes_per_token(spec, precision))
        return moved / gpu.memory_bytes_per_s
    if quantity == "max_batch_on_gpu":
        return mem.fit_on_gpu(mem.estimate(spec, p["context"], 1, mem.BF16, precision), mem.GPUS[p["gpu"]]).max_batch
    if quantity == "last_block_waste":
        return (blocks_for(p["tokens"], p["block_size"]) * p["block_size"] - p["tokens"]) \
            * mem.kv_bytes_per_token(spec, precision)
    if quantity == "prefix_reused_tokens":
        shared = list(range(p["shared"]))
        return prefix_report(shared + [-1], shared + [-2] * (p["length"] - p["shared"]), p["block_size"]).reusable_tokens
    if quantity == "max_concurrency":
        return project_on_gpu(spec, precision.key, p["gpu"], 0.9, p["tokens"]).max_concurrency
    raise AssertionError(f"no recomputation for {quantity}")


def test_every_numeric_answer_equals_the_formula_for_every_seed(bank):
    for template in numeric_templates(bank):
        seen_answers = set()
        for seed in SEEDS:
            question = fill(template, seed)
            expected = recompute(template, seed) / unit_kind(template.unit)[1]
            assert question.answer == pytest.approx(expected, rel=1e-9), (template.id, seed)
            assert question.unit == template.unit and 0 < question.tolerance <= 0.1
            # Its own answer, written with its unit, is graded right; 20 % off is graded wrong.
            assert grade(question, f"{question.answer} {question.unit}").correct
            assert not grade(question, f"{question.answer * 1.2 + 1} {question.unit}").correct
            assert "{" not in question.prompt and "{" not in question.explanation, template.id
            seen_answers.add(question.answer)
        if len(template.models) > 1 or any(len(values) > 1 for _, values in template.parameters):
            assert len(seen_answers) > 1, f"{template.id}: every seed asks the same numbers"


def test_numeric_answers_match_published_figures(bank):
    per_token = next(t for t in numeric_templates(bank) if t.id == "num-bytes-per-token")
    # Llama-3.1-70B: 80 layers × 8 KV heads × 128 × 2 (K, V) × 2 bytes = 320 KiB per token in bf16.
    forced = replace(per_token, models=("llama-3.1-70b",), parameters=(("dtype", ("bf16",)),))
    assert fill(forced, 0).answer == 320
    # Llama-2-7B (multi-head): 0.5 MiB per token in fp16.
    forced = replace(per_token, models=("llama-2-7b",), parameters=(("dtype", ("fp16",)),))
    assert fill(forced, 0).answer == 512


def test_the_hidden_size_question_names_only_models_whose_query_heads_times_head_dim_is_their_hidden_size(bank):
    template = next(t for t in numeric_templates(bank) if t.quantity == "hidden_size_overestimate")
    for model in template.models:
        spec = get_preset(model)
        config = dict(next(p for p in PRESETS if p.key == model).config)
        assert spec.query_heads * spec.head_dim == config["hidden_size"], model
        assert spec.kv_heads < spec.query_heads  # otherwise the estimate is right and the question pointless


def test_prompts_name_the_model_and_values_they_were_drawn_with(bank):
    template = next(t for t in numeric_templates(bank) if t.id == "num-cache-bytes")
    for seed in SEEDS:
        drawn, question = draw(template, seed), fill(template, seed)
        assert drawn.spec.name in question.prompt
        assert f"{drawn.params['context']:,}" in question.prompt and drawn.precision.label in question.prompt


def test_live_model_questions_match_the_live_cache_tensors(tiny_llama):
    bank = load_bank()
    live = LiveModel(tiny_llama.spec, tiny_llama.dtype_name)
    stepper = Stepper(tiny_llama)
    first = stepper.prefill(list(range(5, 25)))  # 20 positions cached
    second = stepper.step()
    cache = replace(bank.by_id("num-live-cache"), parameters=(("context", (first.cache_len,)),))
    assert fill(cache, 0, live).answer * 1024 == first.cache_bytes
    step = fill(bank.by_id("num-live-layer-step"), 0, live)
    assert step.answer == second.cache_layers[0].bytes - first.cache_layers[0].bytes
    per_token = fill(bank.by_id("num-live-bytes-per-token"), 0, live)
    assert per_token.answer == second.cache_bytes - first.cache_bytes
    assert tiny_llama.card.name in per_token.prompt
    # Without a loaded model the questions use the default model's preset in float32, and say so.
    fallback = fill(bank.by_id("num-live-bytes-per-token"), 0)
    assert "SmolLM2-135M" in fallback.prompt and fallback.answer == 2 * 30 * 3 * 64 * 4


# ----- grading ----------------------------------------------------------------------------------------------------

def numeric(answer: float, unit: str, tolerance: float = 0.01) -> NumericQuestion:
    return NumericQuestion("q", "bytes_gqa", "?", answer, unit, tolerance, "", "", Link("memory"))


def test_numeric_answers_are_read_with_their_unit_and_converted():
    question = numeric(320, "KiB")
    for text in ("320", "320 KiB", "327680 bytes", "327,680 B", "0.3125 MiB", "320kib", "321 KiB", "3.2768e5 bytes"):
        assert grade(question, text).correct, text
    assert read_number("1.5 GiB", "MiB") == (1536, "")
    assert read_number("0.5 s", "ms") == (500, "")
    verdict = grade(question, "330 KiB")
    assert not verdict.correct and verdict.answered and "320 KiB" in verdict.message
    decimal = grade(question, "327.68 kB")  # 327,680 bytes in decimal kilobytes
    assert decimal.correct


def test_an_answer_in_a_unit_of_another_kind_or_no_number_is_wrong_and_says_why():
    question = numeric(7.7, "ms")
    verdict = grade(question, "7.7 GiB")
    assert not verdict.correct and "measures bytes" in verdict.message and "7.7 ms" in verdict.message
    assert "not a number" in grade(question, "fast").message
    assert "not a unit" in grade(question, "7.7 parsecs").message
    empty = grade(question, "  ")
    assert not empty.correct and not empty.answered


def test_a_choice_is_graded_by_the_option_and_gives_its_explanation(bank):
    question = bank.by_id("not-cached-query")
    right = grade(question, question.correct_index)
    assert right.correct and question.options[question.correct_index].explanation in right.message
    wrong_index = (question.correct_index + 1) % len(question.options)
    wrong = grade(question, wrong_index)
    assert not wrong.correct and question.options[wrong_index].explanation in wrong.message
    assert wrong.expected == question.options[question.correct_index].text
    assert not grade(question, None).answered


# ----- seeds, sets and the mock interview -------------------------------------------------------------------------

def test_the_same_seed_gives_the_same_set_and_other_seeds_other_sets(bank):
    first, again = mock_questions(bank, 2024), mock_questions(bank, 2024)
    assert first == again
    assert len({tuple(mock_ids(bank, seed)) for seed in range(10)}) == 10
    numeric_entry = numeric_templates(bank)[0]
    assert realise(numeric_entry, 5) == realise(numeric_entry, 5)


def test_a_mock_interview_has_10_questions_from_10_topics(bank):
    for seed in SEEDS:
        ids = mock_ids(bank, seed)
        assert len(ids) == MOCK_QUESTIONS == len(set(ids))
        assert len({bank.by_id(i).topic for i in ids}) == MOCK_QUESTIONS


def test_scoring_counts_right_answers_and_reviews_the_missed_ones(bank):
    questions = mock_questions(bank, 11)
    answers = []
    for number, question in enumerate(questions):
        right = question.correct_index if isinstance(question, ChoiceQuestion) else f"{question.answer} {question.unit}"
        if number < 4:
            answers.append(right)
        elif number < 7:
            answers.append(None)
        else:
            answers.append((question.correct_index + 1) % len(question.options)
                           if isinstance(question, ChoiceQuestion) else f"{question.answer * 2 + 1}")
    result = score_mock(11, questions, answers, seconds=125)
    assert result.score == 4 and result.total == 10
    assert [item.number for item in result.missed] == [5, 6, 7, 8, 9, 10]
    assert result.sentence() == "Score: 4 / 10 in 2:05; 3 left unanswered."
    late = score_mock(11, questions, [None] * 10, seconds=10_000)
    assert late.timed_out and late.seconds == 15 * 60 and "time ran out" in late.sentence()


@pytest.mark.parametrize("value, message", [("abc", "not a whole number"), ("-3", "outside"),
                                            ("99999999999", "outside"), ("", "not a whole number"),
                                            ("1.5", "not a whole number")])
def test_a_bad_seed_becomes_the_fallback_with_a_message(value, message):
    seed, text = parse_seed(value, 77)
    assert seed == 77 and message in text


def test_a_good_seed_is_used_as_given():
    assert parse_seed("123", 77) == (123, "")
    assert parse_seed(["5", "9"], 77) == (9, "")
    assert parse_seed(None, 77) == (77, "")


# ----- a malformed bank is refused --------------------------------------------------------------------------------

TOPICS = '[topics]\nprefill = { title = "Prefill" }\n'
CHOICE = '''
[[choice]]
id = "{id}"
topic = "{topic}"
prompt = "Which?"
link = {{ page = "memory" }}
[[choice.options]]
text = "A"
correct = {first}
explanation = "Because A."
[[choice.options]]
text = "B"
correct = true
explanation = "Because B."
'''


def write_bank(folder: Path, *choices: str) -> Path:
    (folder / "topics.toml").write_text(TOPICS)
    (folder / "questions.toml").write_text("".join(choices))
    return folder


def test_a_well_formed_bank_reads(tmp_path):
    bank = read_bank(write_bank(tmp_path, CHOICE.format(id="a", topic="prefill", first="false")))
    assert [entry.id for entry in bank.entries] == ["a"] and bank.topic_counts() == {"prefill": 1}


@pytest.mark.parametrize("choices, message", [
    ((CHOICE.format(id="a", topic="prefill", first="true"),), "exactly one correct"),
    ((CHOICE.format(id="a", topic="decoding", first="false"),), "unknown topic"),
    ((CHOICE.format(id="a", topic="prefill", first="false"),) * 2, "repeats the ids a"),
    (("[[choice]\nid=",), "not valid TOML"),
])
def test_a_malformed_bank_is_refused_with_a_message_naming_the_entry(tmp_path, choices, message):
    with pytest.raises(InputError, match=message):
        read_bank(write_bank(tmp_path, *choices))


def test_a_numeric_template_with_a_unit_of_the_wrong_kind_is_refused(tmp_path):
    text = '''
[[numeric]]
id = "n"
topic = "prefill"
quantity = "kv_bytes_per_token"
unit = "ms"
tolerance = 0.01
models = ["gpt2"]
prompt = "?"
explanation = "{working}"
link = { page = "memory" }
'''
    with pytest.raises(InputError, match="not a unit of bytes"):
        read_bank(write_bank(tmp_path, text))
    assert math.isclose(unit_kind("GiB")[1], 2**30)
