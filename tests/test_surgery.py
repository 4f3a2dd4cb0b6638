"""Cache surgery (kvviz/surgery.py): copies only, exact equivalences, and the messages for bad choices."""

from __future__ import annotations

import json

import pytest
import torch

from kvviz.errors import InputError
from kvviz.stepper import Stepper
from kvviz.surgery import SurgeryOp, copy_cache, run_surgery


@pytest.fixture()
def stepped(untied_llama):
    stepper = Stepper(untied_llama, capture_attention=False)
    stepper.prefill(list(range(5, 25)))
    for _ in range(3):
        stepper.step()
    return stepper


def _snapshot(stepper):
    return [(layer.keys.clone(), layer.values.clone()) for layer in stepper.cache.layers]


def _run(stepper, op):
    return run_surgery(stepper.loaded, stepper.cache, stepper.ids, op, stepper.last_logits)


@pytest.mark.parametrize("op", [
    SurgeryOp("drop", (0, 3, 7)), SurgeryOp("zero", (0, 1), layers=(1,), heads=(0,)),
    SurgeryOp("swap", (2, 9)), SurgeryOp("swap_values", (2, 9), layers=(0,)),
])
def test_surgery_never_changes_the_steppers_cache_and_the_next_step_is_as_before(op, stepped, untied_llama):
    before, ids, pending = _snapshot(stepped), list(stepped.ids), stepped.pending_token
    twin = Stepper(untied_llama, capture_attention=False)
    twin.prefill(ids[:20])
    for _ in range(3):
        twin.step()
    _run(stepped, op)
    for (keys, values), layer in zip(before, stepped.cache.layers):
        assert torch.equal(keys, layer.keys) and torch.equal(values, layer.values)
    assert stepped.ids == ids and stepped.pending_token == pending
    assert stepped.step().token_id == twin.step().token_id
    assert torch.equal(stepped.last_logits, twin.last_logits)


def test_the_untouched_copy_reproduces_the_steppers_own_next_token_distribution(stepped):
    result = _run(stepped, SurgeryOp("zero", (4,)))
    assert result.untouched_diff < 1e-5
    assert result.before[0].token_id == stepped.pending_token
    assert result.query_position == len(stepped.ids) - 1


def test_dropping_positions_equals_masking_them_out(stepped, untied_llama):
    """Dropped rows, the token fed at its original position = the same call over the whole cache with a mask that
    hides those positions from the newest token (earlier rows were computed with them visible in both)."""
    dropped = (1, 5, 6)
    result = _run(stepped, SurgeryOp("drop", dropped))
    n = len(stepped.ids)
    mask = torch.ones(1, n, dtype=torch.long)
    mask[0, list(dropped)] = 0
    with torch.inference_mode():
        cache = copy_cache(stepped.cache, untied_llama.model.config, n - 1)
        full = untied_llama.model(input_ids=torch.tensor([stepped.ids[-1:]]), position_ids=torch.tensor([[n - 1]]),
                                  attention_mask=mask, past_key_values=cache).logits[0, -1]
    probs = torch.softmax(full.float(), dim=-1)
    assert result.after[0].token_id == int(torch.argmax(probs))
    assert result.after[0].probability == pytest.approx(float(probs.max()), abs=1e-5)


def test_swapping_whole_rows_changes_nothing_but_swapping_values_does(stepped):
    both = _run(stepped, SurgeryOp("swap", (0, 8)))
    values = _run(stepped, SurgeryOp("swap_values", (0, 8)))
    assert both.max_logit_diff < 1e-4
    assert values.max_logit_diff > 1e-3


def test_zeroing_every_position_in_every_layer_moves_the_distribution(stepped):
    result = _run(stepped, SurgeryOp("zero", tuple(range(len(stepped.ids) - 1))))
    assert result.kl > 1e-3 and result.max_logit_diff > 1e-2
    layers, kv_heads = len(stepped.cache.layers), stepped.cache.layers[0].keys.shape[1]
    assert result.rows_changed == (len(stepped.ids) - 1) * layers * kv_heads


@pytest.mark.parametrize("op, reason", [
    (SurgeryOp("drop", ()), "at least one position"),
    (SurgeryOp("swap", (1,)), "exactly two"),
    (SurgeryOp("zero", (99,)), "not before the newest token"),
    (SurgeryOp("zero", (1,), layers=(7,)), "Layers must be"),
    (SurgeryOp("zero", (1,), heads=(9,)), "KV heads must be"),
    (SurgeryOp("drop", (1,), heads=(0,)), "zero it"),
    (SurgeryOp("melt", (1,)), "Unknown surgery"),
])
def test_bad_surgery_raises_a_clear_input_error(op, reason, stepped):
    with pytest.raises(InputError, match=reason):
        _run(stepped, op)


def test_surgery_before_a_prefill_says_so(untied_llama):
    stepper = Stepper(untied_llama)
    with pytest.raises(InputError, match="Prefill"):
        run_surgery(untied_llama, stepper.cache, stepper.ids, SurgeryOp("zero", (0,)))


# ----- the Cache surgery tab on the Step through page (AppTest) ------------------------------------------------------
def test_the_surgery_tab_changes_a_copy_and_the_next_step_is_unchanged():
    from tests.test_page_step_through import click, open_page, session

    at = click(click(open_page(panel="Cache surgery"), "prefill"), "next")
    stepper = session(at).stepper.cached
    keys_before = [layer.keys.clone() for layer in stepper.cache.layers]
    pending, length = stepper.pending_token, len(stepper.ids)
    assert any("Apply surgery" in info.value for info in at.info)
    at.segmented_control(key="surgery_action").set_value("zero").run()
    positions = list(range(length - 1))
    at.pills(key="surgery_positions").set_value(positions).run()
    click(at, "surgery_apply")
    assert not at.error, [e.value for e in at.error]
    sentence = next(m.value for m in at.markdown if "with the untouched cache" in m.value)
    assert f"{', '.join(map(str, positions))} in every layer" in sentence
    titles = [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]
    assert any(title.startswith("Next token after zeroing the keys and values of positions 0, 1") for title in titles)
    assert stepper.pending_token == pending and len(stepper.ids) == length
    assert all(torch.equal(old, layer.keys) for old, layer in zip(keys_before, stepper.cache.layers))
    click(at, "surgery_reset")
    assert not any("with the untouched cache" in m.value for m in at.markdown)
    click(at, "next")
    assert len(session(at).stepper.cached.ids) == length + 1


def test_the_surgery_tab_shows_a_bad_choice_as_an_error():
    from tests.test_page_step_through import click, open_page

    at = click(open_page(panel="Cache surgery"), "prefill")
    at.segmented_control(key="surgery_action").set_value("swap").run()
    at.pills(key="surgery_positions").set_value([0]).run()
    click(at, "surgery_apply")
    assert any("exactly two" in e.value for e in at.error)
