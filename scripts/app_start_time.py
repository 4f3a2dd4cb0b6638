"""How long the app takes from ``streamlit run app.py`` to SmolLM2's first token on screen (a second start).

Launches headless Chromium first (its own start is not counted), then, ``--runs`` times: starts the server, opens
the home page, waits until the page says "Press Prefill" (the model is loaded), presses Prefill and waits until the
status line of the prefill is on screen, then until the page has settled (every chart drawn). Needs Debian's
Chromium and Playwright (``make test`` installs both) and an already converted model. Asserts nothing.

    python scripts/app_start_time.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the app driver is shared with the browser test

from app_driver import StepPage, launch_chromium, running_app  # noqa: E402


def spread(values: list[float]) -> str:
    return f"{min(values):.1f}–{max(values):.1f} s (median {statistics.median(values):.1f} s, {len(values)} runs)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    times: dict[str, list[float]] = {"server answering": [], "page ready, model loaded": [],
                                     "first token on screen": [], "page settled, every chart drawn": []}
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            for _ in range(args.runs):
                start = time.perf_counter()
                with running_app() as url:
                    times["server answering"].append(time.perf_counter() - start)
                    page = StepPage(browser.new_page(viewport={"width": 1400, "height": 1000}), url).open()
                    times["page ready, model loaded"].append(time.perf_counter() - start)
                    page.click("Prefill")
                    page.wait_for_step(0, idle=False)
                    times["first token on screen"].append(time.perf_counter() - start)
                    page.wait_idle()
                    times["page settled, every chart drawn"].append(time.perf_counter() - start)
                    page.page.close()
        finally:
            browser.close()
    for name, values in times.items():
        print(f"{name}: {spread(values)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
