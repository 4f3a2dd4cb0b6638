"""The Cache policies page under AppTest on a tiny model: the run, its views and sentences against its records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from kvviz.charts.policies import keep_map_figure, rolling_perplexity
from kvviz.policies import report
from kvviz.policies.eviction import PolicySpec
from kvviz.policies.kivi import fake_quantise, quantisation_errors
from kvviz.policies.quality import PolicyRun, compare_policies, text_ids, shipped_text

PAGE = str(Path(__file__).parent.parent / "app_pages" / "cache_policies.py")
SMALL = dict(policies_model="tiny-llama", policies_tokens=64, policies_prompt=4, policies_budgets=[8])


def open_page(**state: object) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    for key, value in {**SMALL, **state}.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    assert not at.exception, at.exception
    return at


def lab(at: AppTest):
    return at.session_state["kvviz_policies"]


def titles(at: AppTest) -> list[str]:
    return [json.loads(chart.proto.spec)["layout"]["title"]["text"].split("<br>")[0] for chart in at.get("plotly_chart")]


def test_idle_page_says_what_to_press_and_draws_nothing():
    at = open_page()
    assert any("Run the comparison" in info.value for info in at.info)
    assert not at.get("plotly_chart")
    assert at.button(key="policies_stop").disabled


def test_a_run_scores_every_policy_to_the_end_and_draws_every_view():
    at = click(open_page(policies_names=["window", "sinks"]), "policies_run")
    session = lab(at)
    assert session.run.finished and not session.running
    result = session.run.result()
    assert [score.label for score in result.policies] == ["full", "window@8", "sinks@8"]
    assert result.scored == 64 - 4
    table = at.dataframe[0].value
    assert list(table["policy"]) == ["full", "window@8", "sinks@8"]
    assert list(table["perplexity"]) == [f"{score.perplexity:,.3f}" for score in result.policies]
    assert table["KL (nats)"][0] == "0.0000"  # the full cache against itself
    assert any(m.value == report.collapse_sentence(result) for m in at.markdown)
    assert titles(at) == ["Does quality hold once the cache is full?",
                          "What does each policy cost in memory, and in quality?",
                          "What does window@8 keep? Layer 0, KV head 0",
                          "Where does 2-bit rounding hurt? Layer 0"]
    assert session.kivi is not None and any(m.value == report.kivi_sentence(session.kivi) for m in at.markdown)


def test_the_page_run_equals_the_engine_run_with_the_same_settings(tiny_llama):
    at = click(open_page(policies_names=["h2o"]), "policies_run")
    full, page = lab(at).run.result().policies
    ids = text_ids(tiny_llama, shipped_text(), 64)
    engine = compare_policies(tiny_llama, ids, [PolicySpec("h2o", 8)], prompt_tokens=4).policies[0]
    assert page.perplexity == pytest.approx(engine.perplexity, rel=1e-6)
    assert page.kl == pytest.approx(engine.kl, rel=1e-5, abs=1e-9)
    assert full.label == "full" and full.kl == pytest.approx(0.0, abs=1e-9)


def _partial_session(loaded, calls: int, running: bool):
    from kvviz.ui.policies import LabSession

    ids = text_ids(loaded, shipped_text(), 64)
    run = PolicyRun(loaded, ids, [PolicySpec("window", 8)], 4, watch=(0, 0))
    run.advance(calls)
    return LabSession(run=run, running=running)


def _open_with(session) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    for key, value in SMALL.items():
        at.session_state[key] = value
    at.session_state["kvviz_policies"] = session
    at.run()
    assert not at.exception, at.exception
    return at


def test_stop_between_two_chunks_keeps_what_was_scored_and_says_how_far_it_got(tiny_llama):
    from kvviz.ui.policies import stop

    session = _partial_session(tiny_llama, 21, running=True)  # the prefill and 20 decode calls
    stop(session)
    assert not session.running
    at = _open_with(session)
    assert any(info.value.startswith("Stopped after 24 of 64 tokens") for info in at.info)
    assert at.get("progress")[0].proto.text.startswith("21 of 60 next tokens scored")
    assert at.dataframe[0].value["policy"][0] == "window@8"
    assert session.run.result().scored == 21 and not session.run.finished
    assert at.button(key="policies_stop").disabled


@pytest.mark.parametrize("state, message", [
    (dict(policies_names=[]), "Choose at least one policy."),
    (dict(policies_budgets=[64]), "holds the whole text"),
    (dict(policies_sinks=8), "must hold the 8 sink tokens"),
    (dict(policies_prompt=64), "The prompt must be 1 to 63 tokens"),
])
def test_bad_settings_give_a_message_and_no_run(state, message):
    at = click(open_page(**state), "policies_run")
    assert any(message in error.value for error in at.error), [e.value for e in at.error]
    assert lab(at).run is None


# ----- the engine pieces the page draws ----------------------------------------------------------------------------
def test_the_stepwise_run_gives_the_same_scores_as_the_whole_run(tiny_llama):
    ids = text_ids(tiny_llama, shipped_text(), 48)
    specs = [PolicySpec("sinks", 10), PolicySpec("window", 10), PolicySpec("window", 20)]
    whole = compare_policies(tiny_llama, ids, specs, prompt_tokens=6)
    run = PolicyRun(tiny_llama, ids, specs, 6)
    while not run.finished:
        run.advance(5)
    for a, b in zip(whole.policies, run.result().policies):
        assert a.label == b.label and a.nll_per_token == pytest.approx(b.nll_per_token, rel=1e-6)
    assert [p.label for p in whole.policies] == ["sinks@10", "window@10", "window@20"]
    assert whole.policies[0].perplexity == pytest.approx(np.exp(np.mean(whole.policies[0].nll_per_token)))


def test_the_keep_map_records_what_the_cache_held_after_every_call(tiny_llama):
    ids = text_ids(tiny_llama, shipped_text(), 40)
    result = compare_policies(tiny_llama, ids, [PolicySpec("sinks", 10, sinks=2)], prompt_tokens=5, watch=(1, 0))
    watched = result.policies[0].watched
    assert len(watched) == 40 - 5
    assert watched[0] == tuple(range(5))  # after the prefill: nothing to evict yet
    assert watched[-1] == (0, 1, *range(31, 39))  # 2 sinks + the 8 newest of the 39 fed (the last token is only
    # a target)
    heat = keep_map_figure(result, result.policies[0]).data[0].z
    assert heat.shape == (35, 39) and heat[-1, 0] == 1 and heat[-1, 2] == 0 and heat[0, 5] == -1


def test_rolling_perplexity_is_exp_of_the_mean_of_the_last_tokens():
    nll = (1.0, 3.0, 2.0, 4.0)
    assert rolling_perplexity(nll, window=2) == pytest.approx(np.exp([1.0, 2.0, 2.5, 3.0]))


def test_fake_quantisation_keeps_min_and_max_and_has_two_to_the_bits_levels():
    x = torch.linspace(-3, 5, 97)[None, :]  # (1, 97)
    q = fake_quantise(x, bits=2, dim=1)
    assert torch.unique(q).numel() == 4
    assert float(q.min()) == pytest.approx(-3.0) and float(q.max()) == pytest.approx(5.0)
    assert float((q - x).abs().max()) <= (8 / 3) / 2 + 1e-6  # half a step


def test_an_outlier_channel_makes_per_token_grouping_worse_for_keys():
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(1, 2, 64, 16, generator=generator)
    keys[..., 3] *= 40  # one outlier channel, at every token, as KIVI observed in real keys
    values = torch.randn(1, 2, 64, 16, generator=generator)
    errors = quantisation_errors(keys, values, layer=0, bits=2)
    assert errors.outlier_channel == 3
    # Grouped per token, the outlier sets every token's range: it is rounded well, the other channels badly.
    token, channel = errors.key_relative("token"), errors.key_relative("channel")
    assert token[3] < channel[3] and all(token[c] > 2 * channel[c] for c in range(16) if c != 3)
    assert errors.key_ratio > 2
