"""Make the README's picture of the Serving page: docs/serving.png.

Starts ``streamlit run app.py`` on a free port, opens the Serving page in headless Chromium (1400 px wide), presses
Start and then Step until the default scenario on SmolLM2 is at step ``--steps`` (several requests running, their
shared prefix blocks outlined), and saves the viewport as an optimised PNG. It asserts nothing; the browser test
(tests/test_browser_serving.py) checks the same flow.

    python scripts/screenshot_serving.py [--steps 8] [--height 1500] [--out docs/serving.png]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the app driver is shared with the browser tests

from app_driver import STEP_TIMEOUT_MS, StepPage, launch_chromium, running_app  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="Step clicks after Start")
    parser.add_argument("--height", type=int, default=1500, help="viewport height in pixels")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "serving.png")
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    with running_app() as url, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": args.height})
            tab.goto(f"{url}/serving")
            main_block = tab.get_by_test_id("stMainBlockContainer")
            main_block.get_by_role("button", name="Start", exact=True).click(timeout=STEP_TIMEOUT_MS)
            for step in range(args.steps + 1):
                if step:
                    main_block.get_by_role("button", name="Step", exact=True).click()
                expect(main_block.get_by_text(re.compile(f"^Step {step}: one forward pass"))).to_be_visible(
                    timeout=STEP_TIMEOUT_MS)
            page = StepPage(tab, url)
            path = page.screenshot(args.out)
        finally:
            browser.close()
    print(f"{path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
