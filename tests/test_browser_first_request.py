"""The first requests after a server start, in a real browser: the app's own navigation and a working page, always.

Each case starts its own ``streamlit run app.py`` and waits only until the server answers its health check, not
until the model or the heavy imports are ready, because that is when a new user or a shared link arrives:

- the home page, and a click on Memory in the sidebar at once;
- a deep link to ``/memory`` as the very first request;
- three browser sessions opening different pages at the same moment.

Two things broke these before: a folder named ``pages`` beside app.py made Streamlit serve its folder-based
navigation (and run page files without app.py) until app.py had called ``st.navigation`` once; and two first script
runs importing transformers at once left one of them with a module object that lacks transformers' lazy names
(``kvviz/ui/engine_import.py`` says why). The tests watch every navigation label the browser ever shows, not just
the last ones, so a wrong navigation that is replaced a few seconds later still fails them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from app_driver import ROOT, STEP_TIMEOUT_MS, StepPage, app_in_browser

APP_LABELS = ["Step through", "Memory", "Attention", "Speed", "Serving", "Cache policies", "Lessons", "Drills",
              "Server"]
TITLES = {
    "memory": "Memory — how big is the KV cache?",
    "speed": "Speed — what does the KV cache buy?",
    "attention": "Attention — what does each new token look at?",
    "serving": "Serving — many requests, one paged KV cache",
}

# Records, from the first paint on, every label the sidebar navigation shows.
RECORD_NAV_LABELS = """
window.kvvizNavLabels = new Set();
new MutationObserver(() => {
  for (const link of document.querySelectorAll('[data-testid=stSidebarNavLink]')) {
    window.kvvizNavLabels.add(link.innerText.trim().split("\\n").pop().trim());  // the icon comes first
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def test_no_folder_named_pages_beside_app_py():
    # Its mere existence (even an empty folder) makes Streamlit run every script in folder-based mode until
    # app.py has called st.navigation (streamlit/runtime/pages_manager.py, uses_pages_directory).
    assert not (ROOT / "pages").exists()


def _new_tab(browser: Any, url: str, log: Path) -> StepPage:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script(RECORD_NAV_LABELS)
    return StepPage(context.new_page(), url, log)


def _assert_page_works(tab: StepPage, page: str) -> None:
    """The page's title is shown, the script run has finished, and the browser never showed another navigation."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    main = tab.page.get_by_test_id("stMainBlockContainer")
    try:
        main.get_by_role("heading", name=TITLES[page]).or_(main.get_by_test_id("stException")).first.wait_for(
            timeout=STEP_TIMEOUT_MS)
    except PlaywrightTimeout:
        raise AssertionError(f"the {page} page did not render. The page:\n{tab.describe()}") from None
    tab.wait_idle()
    assert main.get_by_test_id("stException").count() == 0, f"exception on the {page} page:\n{tab.describe()}"
    assert "ImportError" not in tab.page.inner_text("body"), tab.describe()
    assert main.get_by_role("heading", name=TITLES[page]).count() == 1, tab.describe()
    links = tab.page.get_by_test_id("stSidebarNavLink").all_inner_texts()
    assert [text.strip().split("\n")[-1].strip() for text in links] == APP_LABELS, links
    seen = tab.page.evaluate("Array.from(window.kvvizNavLabels)")
    assert set(seen) <= set(APP_LABELS), f"the browser showed other navigation labels: {seen}"
    assert re.search(rf"/{page}$", tab.page.url), tab.page.url


@pytest.mark.browser
def test_a_click_on_memory_right_after_the_first_visit(tmp_path, require_browser):
    log = tmp_path / "streamlit.log"
    with app_in_browser(log) as (url, browser):
        tab = _new_tab(browser, url, log)
        tab.page.goto(url)
        # Whatever navigation comes first: the click is the new user's, made as soon as there is a link.
        tab.page.get_by_test_id("stSidebarNav").get_by_text(re.compile(r"^memory$", re.IGNORECASE)).click(
            timeout=STEP_TIMEOUT_MS)
        _assert_page_works(tab, "memory")


@pytest.mark.browser
def test_a_deep_link_as_the_first_request(tmp_path, require_browser):
    log = tmp_path / "streamlit.log"
    with app_in_browser(log) as (url, browser):
        tab = _new_tab(browser, url, log)
        tab.page.goto(f"{url}/memory")
        _assert_page_works(tab, "memory")


@pytest.mark.browser
def test_three_first_visitors_at_the_same_moment(tmp_path, require_browser):
    log = tmp_path / "streamlit.log"
    with app_in_browser(log) as (url, browser):
        tabs = {page: _new_tab(browser, url, log) for page in ("memory", "speed", "attention")}
        # All requests leave before any page has drawn anything (goto waits only for the response).
        for page, tab in tabs.items():
            tab.page.goto(f"{url}/{page}", wait_until="commit")
        for page, tab in tabs.items():
            _assert_page_works(tab, page)
