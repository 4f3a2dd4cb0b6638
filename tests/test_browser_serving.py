"""The Serving page in a real browser on the default SmolLM2: the default scenario played to the end, then prefixes.

Waits for states (a text, a count), never for a fixed time. Skipped without Chromium unless ``KVVIZ_REQUIRE_BROWSER``.
"""

from __future__ import annotations

import re

import pytest

from app_driver import STEP_TIMEOUT_MS, app_in_browser

pytestmark = pytest.mark.browser


def test_serving_page_plays_the_default_scenario_and_shows_a_prefix_hit(tmp_path, require_browser):
    from playwright.sync_api import expect

    with app_in_browser(tmp_path / "streamlit.log") as (url, browser):
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(f"{url}/serving")
        main = page.get_by_test_id("stMainBlockContainer")
        start = main.get_by_role("button", name="Start", exact=True)
        expect(start).to_be_enabled(timeout=STEP_TIMEOUT_MS)
        start.click()
        expect(main.get_by_text(re.compile(r"^Step 0: one forward pass fed \d+ tokens"))).to_be_visible(
            timeout=STEP_TIMEOUT_MS)
        expect(main.get_by_text(re.compile(r"The pool after step 0: \d+ blocks held"))).to_have_count(1)

        main.get_by_role("button", name="Play", exact=True).click()
        expect(main.get_by_text("6 of 6 requests done", exact=False)).to_be_visible(timeout=STEP_TIMEOUT_MS)
        expect(main.get_by_text("Averaged over the", exact=False)).to_be_visible(timeout=STEP_TIMEOUT_MS)
        expect(main.get_by_role("button", name="Stop", exact=True)).to_be_disabled()
        # The block tables list all six requests, done.
        expect(main.get_by_text(re.compile(r"Finished: r\d"))).to_have_count(1)

        page.get_by_role("tab", name="Prefix caching").click()
        main.get_by_role("button", name="Run A, then B; then B alone").click()
        expect(main.get_by_text("Why did my prefix hit (or miss)?")).to_be_visible(timeout=STEP_TIMEOUT_MS)
        sentence = main.get_by_text(re.compile(r"^Time to first token of prompt B: [\d,]+ ms cold, [\d,]+ ms with "
                                               r"\d+ of its \d+ tokens found in the prefix cache"))
        expect(sentence).to_have_count(1)
        reused = re.search(r"with (\d+) of its", sentence.inner_text())
        assert reused and int(reused.group(1)) >= 16 * 20  # the ~340-token system prompt, in whole blocks of 16
        expect(main.get_by_text("the same", exact=True)).to_have_count(1)
        page.screenshot(path=str(tmp_path / "serving.png"), full_page=True)
