"""Measure what the Step through page adds to a Next token click beyond the model's own step time.

At about 200 cached tokens of the default model (SmolLM2-135M, naive comparison on, as a user first sees it):

1. server: the page under Streamlit's AppTest; wall time of one Next token click minus the engine's measured
   time of that step (cached + naive forward passes). AppTest reruns the whole script, sidebar included, and
   parses every element it gets back, so this is an upper bound of the server's work for a fragment rerun.
2. charts: the part of (1) spent building the figures (``kvviz.charts.step.all_figures`` on the same trace).
3. browser: ``streamlit run app.py`` driven by headless Chromium, timed inside the page: from the click until
   the new step's status line is painted, and until the main thread has finished redrawing every chart (the end
   of the last long task), each minus the step time the page itself shows. This includes the websocket, the
   server's rerun of the fragment, React and Plotly.

Prints medians over ``--clicks`` clicks (and min/max). A benchmark, not a test: nothing is asserted.

    python scripts/bench_page.py [--clicks 10] [--tokens 200] [--skip-browser]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the app driver is shared with the browser test

# About 190 SmolLM2 tokens: the prefill fills most of the context, a few steps bring it to --tokens.
PROMPT = "The key and value cache stores one vector per token, per layer and per head. " * 12


def summary(label: str, values: list[float]) -> str:
    return (f"{label:<44s} median {statistics.median(values):7.1f} ms   min {min(values):7.1f}   "
            f"max {max(values):7.1f}   (n={len(values)})")


def bench_server(clicks: int, tokens: int) -> None:
    from streamlit.testing.v1 import AppTest

    from kvviz.charts.step import all_figures

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.session_state["prompt"] = PROMPT
    at.session_state["chat_template"] = False
    at.session_state["max_new_tokens"] = tokens + clicks + 10
    at.run()
    at.button(key="prefill").click().run()
    session = at.session_state["kvviz_session"]
    while session.trace.records[-1].cache_len < tokens:
        at.button(key="next").click().run()
    overheads, totals, figures = [], [], []
    for _ in range(clicks):
        start = time.perf_counter()
        at.button(key="next").click().run()
        elapsed = (time.perf_counter() - start) * 1000
        assert not at.exception, at.exception
        record = session.trace.records[-1]
        model = record.ms + (record.ms_naive or 0.0)
        totals.append(elapsed)
        overheads.append(elapsed - model)
        start = time.perf_counter()
        all_figures(session.trace, layer=15)
        figures.append((time.perf_counter() - start) * 1000)
    print(f"# server (AppTest), {record.cache_len} cached tokens at the end, model {session.trace.model}")
    print(summary("click → script done (incl. model)", totals))
    print(summary("page overhead (minus cached+naive model)", overheads))
    print(summary("of which: building all 8 figures", figures))


# Timestamps taken inside the page: the click, the first paint of the new step's status line, and every long task
# (main-thread work over 50 ms: React and Plotly redrawing) that follows.
_WATCH = """([label]) => {
  const t = window.__kvviz = {click: null, status: null, longtasks: []};
  document.addEventListener('click', () => { t.click = performance.now(); }, {capture: true, once: true});
  new MutationObserver((_, observer) => {
    const shown = Array.from(document.querySelectorAll('[data-testid=stMarkdownContainer]'))
      .some(e => e.innerText.startsWith(label));
    if (shown && t.status === null) {
      t.status = performance.now();
      observer.disconnect();
    }
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
  new PerformanceObserver(list => list.getEntries().forEach(e => t.longtasks.push(e.startTime + e.duration)))
    .observe({type: 'longtask'});
}"""


def bench_browser(clicks: int, tokens: int) -> None:
    from playwright.sync_api import sync_playwright

    from app_driver import StepPage, launch_chromium, running_app

    with running_app() as url, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            page = StepPage(tab, url).open()
            # Settings the way a person would: type the prompt, untick the chat template, raise the limit.
            sidebar = tab.locator('[data-testid="stSidebar"]')
            sidebar.get_by_label("Prompt", exact=True).fill(PROMPT)
            sidebar.get_by_label("Max new tokens", exact=True).fill(str(tokens + clicks + 10))
            sidebar.get_by_text("Wrap in the chat template").click()
            page.wait_idle()
            status = page.prefill()
            while status.cache_tokens < tokens:
                status = page.next_token()
            to_status, to_quiet = [], []
            for _ in range(clicks):
                tab.evaluate(_WATCH, [f"step {status.step + 1} · "])
                status = page.next_token()
                tab.wait_for_timeout(1500)  # let the redraw finish so that its long tasks are all reported
                times = tab.evaluate("window.__kvviz")
                model = status.cached_ms + (status.naive_ms or 0.0)
                to_status.append(times["status"] - times["click"] - model)
                quiet = max([times["status"], *times["longtasks"]])
                to_quiet.append(quiet - times["click"] - model)
        finally:
            browser.close()
    print(f"# browser (streamlit run + headless Chromium), {status.cache_tokens} cached tokens at the end")
    print(summary("click → new step on screen, minus model", to_status))
    print(summary("click → every chart redrawn, minus model", to_quiet))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=200, help="cached tokens before measuring")
    parser.add_argument("--skip-browser", action="store_true")
    args = parser.parse_args()
    bench_server(args.clicks, args.tokens)
    if not args.skip_browser:
        bench_browser(args.clicks, args.tokens)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
