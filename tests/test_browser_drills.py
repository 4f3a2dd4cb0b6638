"""The Drills page in a real browser on the default SmolLM2: a seed link shows the questions the engine draws for it,
a bad seed is replaced and said so, the mock interview keeps its answers across a visit to another page and runs to
its score, and a review link opens its page.

Needs Debian's Chromium, like ``test_browser.py`` (skipped without it unless ``KVVIZ_REQUIRE_BROWSER=1``).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
from app_driver import STEP_TIMEOUT_MS, app_in_browser

from kvviz.drills.bank import load_bank
from kvviz.drills.links import PAGE_TITLES, known_pages
from kvviz.drills.mock import mock_questions, topic_questions
from kvviz.drills.numeric import LiveModel
from kvviz.drills.records import ChoiceQuestion

pytestmark = pytest.mark.browser


def url_seed(url: str) -> str:
    return parse_qs(urlsplit(url).query)["seed"][-1]


def test_the_drills_page_runs_a_seeded_mock_interview_in_a_real_browser(tmp_path, require_browser, smollm2):
    from playwright.sync_api import expect

    bank = load_bank()
    live = LiveModel(smollm2.spec, smollm2.dtype_name)
    with app_in_browser(tmp_path / "streamlit.log") as (url, browser):
        page = browser.new_page(viewport={"width": 1400, "height": 1200})

        # A bad seed: a message, a valid seed in the address bar, and that seed's questions.
        page.goto(url + "/drills?seed=banana")
        page.get_by_text(re.compile(r"seed='banana' in the link is not a whole number")).wait_for(timeout=STEP_TIMEOUT_MS)
        page.wait_for_function("() => /[?&]seed=\\d+/.test(window.location.search)", timeout=STEP_TIMEOUT_MS)
        assert int(url_seed(page.url)) >= 0

        # A good seed: the first topic's questions, as the engine draws them for it.
        page.goto(url + "/drills?seed=5")
        first_topic = next(iter(bank.topics))
        for question in topic_questions(bank, first_topic, 5, live):
            page.get_by_text(question.prompt, exact=True).wait_for(timeout=STEP_TIMEOUT_MS)
        assert url_seed(page.url) == "5"
        assert page.get_by_test_id("stAlert").count() == 0

        # The mock interview: ten numbered questions and a clock; finishing at once scores 0 and reviews all ten.
        page.get_by_text("Mock interview", exact=True).click()
        page.get_by_role("button", name="Start the mock interview").click()
        page.get_by_text(re.compile(r"\d+:\d\d left$")).wait_for(timeout=STEP_TIMEOUT_MS)
        questions = mock_questions(bank, 5, live)
        for number, question in enumerate(questions, start=1):
            page.get_by_text(f"{number}. {question.prompt}", exact=True).wait_for()
        # Answer the first question right, visit another page and come back: the seed, the interview and the
        # answer are still there.
        first = questions[0]
        if isinstance(first, ChoiceQuestion):
            page.get_by_text(first.options[first.correct_index].text, exact=True).click()
        else:
            page.get_by_label(re.compile(r"^Your answer to question 1 \(")).fill(f"{first.answer} {first.unit}")
            page.keyboard.press("Enter")
        page.get_by_text("1 of 10 answered", exact=True).wait_for()  # the server has the answer
        page.get_by_test_id("stSidebarNav").get_by_text("Memory", exact=True).click()
        page.get_by_role("heading", name=re.compile("^Memory")).first.wait_for(timeout=STEP_TIMEOUT_MS)
        page.get_by_test_id("stSidebarNav").get_by_text("Drills", exact=True).click()
        page.get_by_text(f"1. {first.prompt}", exact=True).wait_for(timeout=STEP_TIMEOUT_MS)
        page.wait_for_function("() => /[?&]seed=5(&|$)/.test(window.location.search)", timeout=STEP_TIMEOUT_MS)
        page.get_by_role("button", name="Finish and score").click()
        page.get_by_text(re.compile(r"^Score: 1 / 10 in \d+:\d\d; 9 left unanswered\.$")).wait_for()
        expect(page.get_by_text(re.compile(r"^Your answer: \(none\) · Correct: "))).to_have_count(9)

        # A review link opens the page it names.
        links = page.locator("a").filter(has_text=re.compile(r"^the .+ page"))
        expect(links).to_have_count(9)
        hrefs = [links.nth(index).get_attribute("href") for index in range(links.count())]
        assert len(hrefs) == 9
        target = next(href for href in hrefs if href.startswith("./") and href[2:].split("?")[0] not in
                      ("", "lessons", "cache_policies"))
        name = target[2:].split("?")[0]
        assert name in known_pages()
        page.goto(urljoin(page.url, target))
        page.wait_for_function(f"() => window.location.pathname.endsWith('/{name}')", timeout=STEP_TIMEOUT_MS)
        page.get_by_role("heading", name=re.compile(f"^{PAGE_TITLES[name]}")).first.wait_for(timeout=STEP_TIMEOUT_MS)
