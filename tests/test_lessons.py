"""The lessons' engine on tiny models: every step's check fails before its action and passes after it, and the
checks quote the live state (not a number written into the lesson)."""

from __future__ import annotations

import pytest
import torch

from kvviz.kv_formula import kv_bytes_per_token, precision_of_torch_dtype
from kvviz.lessons.catalogue import LESSONS, available_lessons, lesson_by_key
from kvviz.lessons.core import LessonState, run_step, snapshot
from kvviz.lessons.prefill_and_decode import LESSON_ONE_STEP, LESSON_PREFILL
from kvviz.stepper import DEFAULT_PROMPT, encode_prompt


def run_lesson_checking_skips(lesson, loaded) -> tuple[LessonState, list[str]]:
    """Each step: its check on the state as the step opens (the action skipped) must fail; after the action it
    must pass. Returns the state and the passing sentences."""
    state = LessonState(loaded)
    sentences = []
    for step in lesson.steps:
        skipped = step.check(state, snapshot(state))
        assert not skipped.passed, f"{lesson.key} / {step.title}: passed without its action: {skipped.sentence}"
        result = run_step(step, state)
        assert result.passed, f"{lesson.key} / {step.title}: {result.sentence}"
        sentences.append(result.sentence)
    return state, sentences


@pytest.mark.parametrize("key", [lesson.key for lesson in LESSONS])
def test_every_lesson_runs_to_its_end_and_no_check_passes_without_its_action(key, tiny_llama):
    lesson = lesson_by_key(key)
    assert 3 <= len(lesson.steps) <= 7
    run_lesson_checking_skips(lesson, tiny_llama)


def test_there_are_at_least_eight_lessons_and_a_lesson_is_hidden_until_its_page_exists():
    without_policies = available_lessons(lambda page: page != "cache_policies")
    assert len(without_policies) >= 8 and "policies" not in [lesson.key for lesson in without_policies]
    assert len(available_lessons(lambda page: True)) == len(LESSONS)
    assert [lesson.key for lesson in available_lessons(lambda page: False)] == [
        lesson.key for lesson in LESSONS if lesson.needs_page is None]


def test_the_prefill_check_quotes_the_prompt_length_and_the_layers_of_the_model(tiny_gpt2):
    state, sentences = run_lesson_checking_skips(LESSON_PREFILL, tiny_gpt2)
    prompt = len(encode_prompt(tiny_gpt2, DEFAULT_PROMPT, chat_template=tiny_gpt2.chat_template_available))
    assert sentences[0].startswith(f"The cache now holds {prompt} positions in each of {tiny_gpt2.card.layers} layers")
    per_token = kv_bytes_per_token(tiny_gpt2.spec, precision_of_torch_dtype(tiny_gpt2.dtype_name))
    longer = state.trace.records[0].cache_len
    assert f"({longer * per_token:,} B) = {longer} tokens × {per_token:,} B per token" in sentences[1]


def test_a_step_that_changed_an_earlier_cached_key_fails_the_one_column_check(tiny_llama):
    state = LessonState(tiny_llama)
    first, second = LESSON_ONE_STEP.steps[:2]
    assert run_step(first, state).passed
    before = snapshot(state)
    second.action(state)
    assert second.check(state, before).passed
    with torch.inference_mode():
        state.stepper.cache.layers[1].keys[0, 0, 3, 0] += 1.0  # an earlier position, rewritten
    result = second.check(state, before)
    assert not result.passed and "earlier K/V rows changed" in result.sentence


def test_two_steps_instead_of_one_fail_the_one_column_check(tiny_llama):
    state = LessonState(tiny_llama)
    first, second = LESSON_ONE_STEP.steps[:2]
    run_step(first, state)
    before = snapshot(state)
    second.action(state)
    second.action(state)
    assert not second.check(state, before).passed
