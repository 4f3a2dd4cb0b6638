"""A new learner opens Lessons in a real browser and completes the first three lessons on the default SmolLM2; a
step's link opens Step through on the trace the lesson built, and the way back keeps the learner's place.

Needs Debian's Chromium, like ``test_browser.py`` (skipped without it unless ``KVVIZ_REQUIRE_BROWSER=1``). Every wait
is for a state the page shows (a step's heading, a check's sentence, the status line), never a fixed time.
"""

from __future__ import annotations

import re

import pytest
from app_driver import STEP_TIMEOUT_MS, StepPage, app_in_browser

from kvviz.lessons.catalogue import LESSONS
from kvviz.lessons.prefill_and_decode import LONGER_PROMPT
from kvviz.stepper import DEFAULT_PROMPT, encode_prompt

pytestmark = [pytest.mark.browser, pytest.mark.slow]


class LessonsPage(StepPage):
    """The Lessons page in a browser tab."""

    def main(self):
        return self.page.get_by_test_id("stMainBlockContainer")

    def wait_text(self, pattern: str | re.Pattern) -> str:
        """Wait until an element of the main area shows ``pattern`` (a regex anchored at both ends, or an exact
        text); return that element's text."""
        locator = self.main().get_by_text(pattern if isinstance(pattern, re.Pattern) else re.compile(
            "^" + re.escape(pattern) + "$"))
        locator.first.wait_for(timeout=STEP_TIMEOUT_MS)
        return locator.first.inner_text().strip()

    def passed_sentences(self) -> list[str]:
        """The checks' sentences on screen (those of finished steps sit in closed expanders, not shown)."""
        alerts = self.main().get_by_test_id("stAlertContentSuccess").all()
        return [alert.get_by_test_id("stMarkdownContainer").inner_text().strip() for alert in alerts
                if alert.is_visible()]

    def wait_passed(self, sentence: str) -> list[str]:
        """Wait until a visible check shows ``sentence`` (the page may draw the step's heading before its check);
        return the checks' sentences on screen then."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        alert = self.main().get_by_test_id("stAlertContentSuccess").filter(has_text=sentence[:80])
        try:
            alert.first.wait_for(state="visible", timeout=STEP_TIMEOUT_MS)
        except PlaywrightTimeout:
            raise AssertionError(f"no check shows {sentence!r}. The page:\n{self.describe()}") from None
        self.wait_idle()
        return self.passed_sentences()

    def choose_lesson(self, label: str) -> None:
        self.main().get_by_test_id("stSelectbox").filter(has_text="Lesson").get_by_role("combobox").click()
        self.page.get_by_role("option", name=label, exact=True).click()

    def run_step(self, number: int, total: int, title: str, action: str) -> str:
        """Press the step's action and wait for its check to pass (its Next button appears only then); return the
        check's sentence."""
        self.wait_text(f"Step {number} of {total}: {title}")
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        self.click(action)
        try:
            self.button("Finish the lesson" if number == total else "Next step").wait_for(timeout=STEP_TIMEOUT_MS)
        except PlaywrightTimeout:
            raise AssertionError(f"step {number} ({title}) did not pass. The page:\n{self.describe()}") from None
        self.wait_idle()
        return self.passed_sentences()[-1]

    def next(self, last: bool) -> None:
        self.click("Finish the lesson" if last else "Next step")


def test_a_new_learner_completes_the_first_three_lessons_on_smollm2(tmp_path, require_browser, smollm2):
    prompt_tokens = len(encode_prompt(smollm2, DEFAULT_PROMPT, chat_template=True))
    layers = smollm2.card.layers
    log = tmp_path / "streamlit.log"
    with app_in_browser(log) as (url, browser):
        page = LessonsPage(browser.new_page(viewport={"width": 1400, "height": 1200}), url + "/lessons", log)
        page.page.goto(page.url)
        page.wait_text("Lesson 1: What prefill puts in the cache")

        # Lesson 1, step 1, then its link to Step through: the status line shows the lesson's prefill.
        first = LESSONS[0].steps[0]
        sentence = page.run_step(1, 3, first.title, first.action_label)
        assert sentence.startswith(f"The cache now holds {prompt_tokens} positions in each of {layers} layers")
        page.main().get_by_test_id("stPageLink-NavLink").filter(has_text="See this cache on Step through").click()
        status = page.wait_for_step(0)
        assert (status.step, status.cache_tokens) == (0, prompt_tokens)
        # No message there: the sidebar shows the settings that built the trace, and nothing was set twice.
        assert page.main().get_by_test_id("stAlert").count() == 0, page.describe()
        page.page.get_by_test_id("stSidebarNavLink").filter(has_text=re.compile(r"Lessons$")).click()
        page.wait_text("Step 1 of 3: Feed the prompt")
        assert page.wait_passed(sentence)[-1] == sentence  # the learner's place and check are kept

        for number, lesson in enumerate(LESSONS[:3], start=1):
            if number > 1:
                page.choose_lesson(f"{number}. {lesson.title}")
                page.wait_text(f"Lesson {number}: {lesson.title}")
            sentences = []
            for index, step in enumerate(lesson.steps, start=1):
                if (number, index) != (1, 1):
                    sentences.append(page.run_step(index, len(lesson.steps), step.title, step.action_label))
                page.next(last=index == len(lesson.steps))
            page.wait_text(f"Lesson complete: all {len(lesson.steps)} checks passed on the live model.")
            if number == 1:
                longer = len(encode_prompt(smollm2, LONGER_PROMPT, chat_template=True))
                assert sentences[0].startswith(f"The longer prompt is {longer} tokens, {longer - prompt_tokens} more")
                assert sentences[-1].startswith("The step fed ")
                assert f": {longer} → {longer + 1} positions in every layer" in sentences[-1]
            if number == 2:
                assert sentences[0].startswith(f"The cache now holds {prompt_tokens} positions")
                assert sentences[1].startswith(f"Every one of the {layers} layers went from {prompt_tokens} to "
                                               f"{prompt_tokens + 1} positions")
                assert f"over all {prompt_tokens + 2} cached positions" in sentences[2]
            if number == 3:
                assert sentences[1].startswith("Each of the 8 cached steps fed 1 token")
                assert "Both chose the same token 8 times out of 8" in sentences[1]
                assert "memory-bound" in sentences[-1]
        assert page.main().get_by_test_id("stException").count() == 0
