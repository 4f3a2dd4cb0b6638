"""Make the README's picture of the home page: docs/step-through.png.

Starts ``streamlit run app.py`` on a free port, opens it in headless Chromium (1400 px wide), presses Prefill and
Next token until SmolLM2 has answered the default prompt, and saves the viewport as an optimised PNG. It asserts
nothing; the browser test (tests/test_browser.py) checks the same flow.

    python scripts/screenshot.py [--steps 6] [--height 1500] [--out docs/step-through.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the app driver is shared with the browser test

from app_driver import StepPage, launch_chromium, running_app  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="Next token clicks after the prefill")
    parser.add_argument("--height", type=int, default=1500, help="viewport height in pixels")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "step-through.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with running_app() as url, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = StepPage(browser.new_page(viewport={"width": 1400, "height": args.height}), url).open()
            page.prefill()
            for _ in range(args.steps):
                # Let the browser finish drawing first: on a small machine it would otherwise share the CPU
                # with the model and the timings in the picture would show that contention.
                page.page.wait_for_timeout(1000)
                page.next_token()
            path = page.screenshot(args.out)
        finally:
            browser.close()
    print(f"{path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
