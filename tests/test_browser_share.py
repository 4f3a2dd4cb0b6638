"""Share links end to end in a real browser, on the default SmolLM2: a link opens the same tokens as the engine
produces for its settings, the address bar follows each step, and a presenter link's keyboard shortcuts step.

Needs Debian's Chromium, like ``test_browser.py`` (skipped without it unless ``KVVIZ_REQUIRE_BROWSER=1``).
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from app_driver import STEP_TIMEOUT_MS, StepPage, app_in_browser

from kvviz.charts.style import token_label
from kvviz.stepper import Stepper

pytestmark = pytest.mark.browser

LINK = "/?model=smollm2-135m&prompt=The%20capital%20of%20France%20is&steps=3"


def chip_text(token: str) -> str:
    """A token as its chip shows it (whitespace-only and newline tokens are drawn with visible glyphs)."""
    return token_label(token) if token.strip() == "" or "\n" in token else token


def greedy_tokens(loaded, prompt: str, chat_template: bool, steps: int) -> list[str]:
    stepper = Stepper(loaded)
    texts = [stepper.prefill(prompt, chat_template=chat_template).token_text]
    texts += [stepper.step().token_text for _ in range(steps)]
    return [chip_text(text) for text in texts]


def query_of(url: str) -> dict[str, str]:
    return {name: values[-1] for name, values in parse_qs(urlsplit(url).query).items()}


def test_a_share_link_opens_the_same_tokens_in_a_real_browser(tmp_path, require_browser, smollm2):
    log = tmp_path / "streamlit.log"
    with app_in_browser(log) as (url, browser):
        page = StepPage(browser.new_page(viewport={"width": 1400, "height": 1200}), url + LINK, log)
        page.page.goto(page.url)
        status = page.wait_for_step(3)
        assert status.step == 3
        chips = page.chips()
        assert status.cache_tokens == len(chips) - 1  # every cached token, plus the newest
        expected = greedy_tokens(smollm2, "The capital of France is", chat_template=True, steps=3)
        assert chips[-4:] == expected
        assert "The capital of France is" in "".join(chips)
        assert page.page.get_by_test_id("stAlert").count() == 0  # a good link brings no message

        # The address bar follows the page: one more token, and the URL says steps=4.
        assert query_of(page.page.url)["steps"] == "3"
        page.next_token()
        page.page.wait_for_function("() => window.location.search.includes('steps=4')", timeout=STEP_TIMEOUT_MS)
        # The Share popover shows the same link, ready to copy.
        page.click("Share")
        shown = page.page.get_by_test_id("stCode").filter(has_text="?model=").inner_text().strip()
        assert query_of(shown) == query_of(page.page.url)
        assert query_of(shown) == {"model": "smollm2-135m", "prompt": "The capital of France is", "chat": "1",
                                   "steps": "4"}

        # A presenter link without the chat template: sidebar closed, and N steps like Next token.
        tab = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        presenter = StepPage(tab, url + "/?model=smollm2-135m&prompt=The%20capital%20of%20France%20is&chat=0"
                                        "&steps=1&present=1", log)
        tab.goto(presenter.url)
        assert presenter.wait_for_step(1).cache_tokens == 5 + 1
        assert presenter.chips()[-2:] == greedy_tokens(smollm2, "The capital of France is", chat_template=False,
                                                        steps=1)
        assert tab.get_by_test_id("stSidebar").get_attribute("data-collapsed") == "true"
        tab.get_by_text("Step through the KV cache", exact=True).click()  # the focus on the page, not a text box
        tab.keyboard.press("n")
        assert presenter.wait_for_step(2).step == 2
        assert query_of(tab.url)["present"] == "1"
