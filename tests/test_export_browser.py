"""Exports end to end in a real browser, on the instant tiny models: the Export popover's JSON downloads, loads in
another browser context through the sidebar's uploader and replays the same tokens and cache length; the HTML
report downloads; a chart's toolbar has the PNG button, with the chart's file name in the browser's Plotly config.
(Clicking that button in headless Chromium started no download in our runs, so the test does not click it.)

Needs Debian's Chromium, like ``test_browser.py`` (skipped without it unless ``KVVIZ_REQUIRE_BROWSER=1``).
"""

from __future__ import annotations

import json
import re

import pytest
from app_driver import STEP_TIMEOUT_MS, StepPage, app_in_browser

pytestmark = pytest.mark.browser

LINK = "/?model=tiny-llama&prompt=Export%20me&chat=0&steps=3"


def test_a_downloaded_trace_replays_in_another_browser_and_charts_carry_their_png_name(tmp_path, require_browser):
    log = tmp_path / "streamlit.log"
    with app_in_browser(log) as (url, browser):
        first = StepPage(browser.new_page(viewport={"width": 1400, "height": 1200}, accept_downloads=True),
                         url + LINK, log)
        first.page.goto(first.url)
        recorded = first.wait_for_step(3)
        chips = first.chips()

        first.click("Export")
        with first.page.expect_download(timeout=STEP_TIMEOUT_MS) as json_download:
            first.page.get_by_role("button", name="Trace as JSON").click()
        assert json_download.value.suggested_filename == "kvviz-tiny-llama.json"
        trace_file = tmp_path / "trace.json"
        json_download.value.save_as(trace_file)
        data = json.loads(trace_file.read_text(encoding="utf-8"))
        assert len(data["steps"]) == 4 and data["steps"][-1]["cache_len"] == recorded.cache_tokens

        with first.page.expect_download(timeout=STEP_TIMEOUT_MS) as html_download:
            first.page.get_by_role("button", name="HTML report").click()
        report = tmp_path / "report.html"
        html_download.value.save_as(report)
        text = report.read_text(encoding="utf-8")
        assert not re.search(r"<script[^>]+\bsrc\s*=|<link\b", text, flags=re.I) and "Plotly.newPlot" in text
        first.page.keyboard.press("Escape")  # close the popover

        # The candidates chart's toolbar has Plotly's PNG button, and the chart in the browser holds the file name.
        chart = first.page.get_by_test_id("stPlotlyChart").first
        chart.hover()
        button = chart.get_by_role("button", name="Download plot as a PNG")
        assert button.count() == 1
        options = button.evaluate("el => el.closest('.js-plotly-plot')._context.toImageButtonOptions")
        assert options == {"format": "png", "filename": "kvviz-candidates", "scale": 2}

        # Another browser, on another model: the file brings its settings and the page replays them.
        second = StepPage(browser.new_context(viewport={"width": 1400, "height": 1200}).new_page(),
                          url + "/?model=tiny-gpt2", log)
        second.open()
        second.page.get_by_test_id("stSidebar").locator("input[type=file]").set_input_files(str(trace_file))
        replayed = second.wait_for_step(3)
        assert replayed.cache_tokens == recorded.cache_tokens
        assert second.chips() == chips
        second.page.get_by_text(re.compile(r"Every replayed token equals the recorded one")).wait_for(
            timeout=STEP_TIMEOUT_MS)
