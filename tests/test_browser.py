"""End to end in a real browser: ``streamlit run app.py`` driven by headless Chromium, on the default SmolLM2.

Needs Debian's Chromium at /usr/bin/chromium (``make browser`` installs it). Without it the test is skipped with
the reason, unless ``KVVIZ_REQUIRE_BROWSER=1`` (``make test`` sets it), where a missing browser is a failure.
The screenshot it takes goes to pytest's temporary folder; ``scripts/screenshot.py`` makes the README's picture.
"""

from __future__ import annotations

import pytest

from app_driver import STEP_TIMEOUT_MS, StepPage, app_in_browser

pytestmark = pytest.mark.browser


def test_step_through_in_a_real_browser(tmp_path, require_browser):
    from playwright.sync_api import expect

    log = tmp_path / "streamlit.log"  # the server's output, for reading when this test fails
    with app_in_browser(log) as (url, browser):
        page = StepPage(browser.new_page(viewport={"width": 1400, "height": 1500}), url, log).open()
        assert page.status() is None and page.chips() == []

        after_prefill = page.prefill()
        prompt_chips = page.chips()
        assert after_prefill.cache_tokens == len(prompt_chips) - 1  # every cached token, plus the newest
        assert prompt_chips[-1] == "The"  # SmolLM2 starts its answer

        for expected_step in (1, 2, 3):
            status = page.next_token()
            assert status.step == expected_step
            assert status.cache_tokens == after_prefill.cache_tokens + expected_step
        chips = page.chips()
        assert len(chips) == len(prompt_chips) + 3
        assert "".join(chips[-4:]) == "The capital of France"
        assert page.page.get_by_text("same token", exact=False).count() >= 1

        # Play generates the number of tokens asked for, redrawing the page after each one.
        page.set_play_tokens(2)
        page.click("Play")
        page.wait_for_step(5)
        expect(page.button("Stop")).to_be_disabled(timeout=STEP_TIMEOUT_MS)  # disabled = not playing
        page.wait_idle()
        status = page.status()
        assert status.step == 5
        assert "".join(page.chips()[-6:]) == "The capital of France is Paris"

        # Another browser session starts from nothing and never sees this session's tokens. There a long
        # answer is started with Play, and Stop ends it well before the 48 tokens Play was asked for.
        other = StepPage(browser.new_context(viewport={"width": 1400, "height": 1000}).new_page(), url, log).open()
        assert other.status() is None and other.chips() == []
        other.set_prompt("Tell me a long story about a dragon who learns to fly.")
        other.prefill()
        other.set_play_tokens(48)
        other.click("Play")
        other.wait_for_step(2, idle=False)
        other.click("Stop")
        expect(other.button("Stop")).to_be_disabled(timeout=STEP_TIMEOUT_MS)
        other.wait_idle()
        assert 2 <= other.status().step < 48
        assert other.page.get_by_text("Stopped.").count() == 1
        assert "dragon" in "".join(other.chips())
        assert page.status() == status and "dragon" not in "".join(page.chips())

        shot = page.screenshot(tmp_path / "step-through.png")
        assert shot.stat().st_size > 10_000


def test_speed_page_stop_ends_a_running_benchmark_in_a_real_browser(tmp_path, require_browser):
    """Stop interrupts a benchmark that is really running, the page keeps the runs that finished, and the
    server's one-benchmark-at-a-time lock is free again afterwards."""
    from playwright.sync_api import expect

    log = tmp_path / "streamlit.log"
    with app_in_browser(log) as (url, browser):
        page = StepPage(browser.new_page(viewport={"width": 1400, "height": 1200}), url, log).open()
        tab = page.page
        tab.get_by_test_id("stSidebarNav").get_by_text("Speed", exact=True).click()
        tab.get_by_text("Choose a model and press").wait_for(timeout=STEP_TIMEOUT_MS)
        main = tab.get_by_test_id("stMainBlockContainer")
        main.get_by_test_id("stSelectbox").first.click()
        tab.get_by_role("option", name="tiny-llama").click()
        tokens, prompt = main.get_by_role("slider").nth(0), main.get_by_role("slider").nth(1)
        tokens.focus()
        tab.keyboard.press("End")  # 1,024 new tokens,
        tab.keyboard.press("ArrowLeft")  # then 1,020: with 1 prompt token it fits tiny-llama's context
        prompt.focus()
        tab.keyboard.press("Home")
        page.wait_idle()
        assert (tokens.input_value(), prompt.input_value()) == ("1020", "1")

        page.click("Run benchmark")
        progress = tab.get_by_test_id("stProgress")
        # Stop once the naive run has finished and the next path's timed run is under way. On a busy 2-core machine
        # naive's 1,020 steps were seen to take over three minutes: the wait allows for that.
        expect(progress).to_contain_text("dynamic: run 1/3", timeout=3 * STEP_TIMEOUT_MS)
        page.click("Stop")
        tab.get_by_text("Stopped. Showing the runs that finished before the stop.").wait_for(
            timeout=STEP_TIMEOUT_MS)
        page.wait_idle()
        assert progress.count() == 0
        metrics = main.get_by_test_id("stMetric").all_inner_texts()
        assert len(metrics) == 1 and metrics[0].startswith("naive · ms/token"), metrics
        assert float(metrics[0].split()[-1]) > 0
        assert main.get_by_text("stopped early", exact=False).count() >= 1  # the charts say so too

        # The stopped run released the server's benchmark lock: a new run starts (and is stopped again).
        page.click("Run benchmark")
        expect(progress).to_contain_text("%", timeout=STEP_TIMEOUT_MS)
        assert main.get_by_text("Another benchmark is running").count() == 0
        page.click("Stop")
        tab.get_by_text("Stopped.", exact=False).first.wait_for(timeout=STEP_TIMEOUT_MS)
        page.wait_idle()
        assert progress.count() == 0
