"""Cache policies and cache surgery in a real browser on the default SmolLM2.

A two-policy comparison (window and sinks) runs to its end and draws its views; on the Step through page, surgery
on a copy of the cache moves the next-token distribution while the session's own next token stays. Waits for states
(a text, a count), never for a fixed time. Skipped without Chromium unless ``KVVIZ_REQUIRE_BROWSER``.
"""

from __future__ import annotations

import re

import pytest

from app_driver import STEP_TIMEOUT_MS, StepPage, app_in_browser

pytestmark = pytest.mark.browser


def _set_number(main, label: str, value: int) -> None:
    field = main.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")


def test_two_policies_run_to_the_end_and_surgery_changes_a_copy(tmp_path, require_browser):
    from playwright.sync_api import expect

    with app_in_browser(tmp_path / "streamlit.log") as (url, browser):
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(f"{url}/cache_policies")
        main = page.get_by_test_id("stMainBlockContainer")
        run = main.get_by_role("button", name="Run the comparison", exact=True)
        expect(run).to_be_enabled(timeout=STEP_TIMEOUT_MS)
        # 96 tokens, the first 64 in one prefill (nothing evicted yet at the budget of 64), then 32 scored one at a
        # time by three caches (full, window, sinks): a short run even on a busy machine.
        # Each change reruns the page; until a rerun settles, Streamlit can hold a stale copy of a field beside the new
        # one, and a click on the fragment's button during a whole-page rerun can be dropped: settle after each.
        idle = StepPage(page, url).wait_idle
        for label, value in (("Tokens of the text", 96), ("Prompt (tokens in the first call)", 64)):
            _set_number(main, label, value)
            idle()
            expect(main.get_by_label(label, exact=True)).to_have_value(str(value))
        run.click()
        expect(main.get_by_text(re.compile(r"^32 of 32 next tokens scored"))).to_be_visible(
            timeout=2 * STEP_TIMEOUT_MS)
        expect(main.get_by_role("button", name="Stop", exact=True)).to_be_disabled(timeout=STEP_TIMEOUT_MS)
        sentence = main.get_by_text(re.compile(r"^At a budget of 64 tokens, perplexity with the window alone is"))
        expect(sentence).to_have_count(1)
        numbers = re.search(r"window alone is ([\d,.]+), with sinks .*? ([\d,.]+); the full cache: ([\d,.]+)",
                            sentence.inner_text())
        assert numbers, sentence.inner_text()  # all three perplexities of this run are stated
        assert all(float(value.replace(",", "")) >= 1.0 for value in numbers.groups())  # a perplexity is at least 1
        for title in ("Does quality hold once the cache is full?", "What does each policy cost in memory",
                      "What does window@64 keep?", "Where does 2-bit rounding hurt?"):
            expect(main.locator(".gtitle", has_text=title)).to_have_count(1, timeout=STEP_TIMEOUT_MS)
        page.screenshot(path=str(tmp_path / "policies.png"), full_page=True)

        page.goto(url)
        main = page.get_by_test_id("stMainBlockContainer")
        prefill = main.get_by_role("button", name="Prefill", exact=True)
        expect(prefill).to_be_enabled(timeout=STEP_TIMEOUT_MS)
        prefill.click()
        expect(main.get_by_text(re.compile(r"^prefill · \d+ tokens in the cache"))).to_be_visible(
            timeout=STEP_TIMEOUT_MS)
        status = main.get_by_text(re.compile(r"^prefill · \d+ tokens in the cache")).inner_text()
        page.get_by_role("tab", name="Cache surgery").click()
        expect(main.get_by_text("Apply surgery", exact=False).first).to_be_visible(timeout=STEP_TIMEOUT_MS)
        idle()
        main.get_by_role("radio", name="Zero their keys and values").click()
        expect(main.get_by_role("radio", name="Zero their keys and values")).to_have_attribute(
            "aria-checked", "true", timeout=STEP_TIMEOUT_MS)
        group = main.get_by_test_id("stButtonGroup").last  # the token chips (pills)
        chips = group.locator("button")
        expect(chips.first).to_be_visible(timeout=STEP_TIMEOUT_MS)
        count = chips.count()
        for index in range(count):  # every position before the newest token
            chips.nth(index).click()
        expect(group.locator("button[data-selected='true']")).to_have_count(count, timeout=STEP_TIMEOUT_MS)
        idle()
        main.get_by_role("button", name="Apply surgery", exact=True).click()
        result = main.get_by_text(re.compile(r"with the untouched cache, '.*' \(\d+\.\d%\) after zeroing the keys and values of positions 0, 1,"))
        expect(result).to_have_count(1, timeout=STEP_TIMEOUT_MS)
        expect(main.get_by_text("The next token changed", exact=False)).to_have_count(1)
        expect(main.get_by_text(re.compile(r"^prefill · \d+ tokens in the cache"))).to_have_count(1)
        # The session's own trace is untouched: the same call and cache length as before the surgery.
        assert main.get_by_text(re.compile(r"^prefill · \d+ tokens in the cache")).inner_text().split(" · ")[:2] == \
            status.split(" · ")[:2]
        tokens = re.search(r"'(.*)' \([\d.]+%\) with the untouched cache, '(.*)' \([\d.]+%\) after", result.inner_text())
        assert tokens and tokens.group(1) != tokens.group(2), result.inner_text()
        page.screenshot(path=str(tmp_path / "surgery.png"), full_page=True)
