"""Make the README's pictures: docs/step-through.png (the home page) and docs/serving.png (the Serving page).

Starts ``streamlit run app.py`` on a free port and opens it in headless Chromium (1400 px wide). ``--page
step-through`` presses Prefill and Next token until SmolLM2 has answered the default prompt; ``--page serving``
presses Start and then Step until the default scenario is at step ``--steps`` (several requests running, their
shared prefix blocks outlined). The viewport is saved as an optimised PNG. It asserts nothing; the browser tests
(tests/test_browser.py, tests/test_browser_serving.py) check the same flows.

    python scripts/screenshot.py [--page step-through|serving] [--steps N] [--height 1500] [--out FILE]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the app driver is shared with the browser tests

from app_driver import STEP_TIMEOUT_MS, StepPage, launch_chromium, running_app  # noqa: E402

DEFAULT_STEPS = {"step-through": 6, "serving": 8}


def step_through(page: StepPage, steps: int) -> None:
    page.open().prefill()
    for _ in range(steps):
        # Let the browser finish drawing first: on a small machine it would otherwise share the CPU with the model
        # and the timings in the picture would show that contention.
        page.page.wait_for_timeout(1000)
        page.next_token()


def serving(page: StepPage, steps: int) -> None:
    from playwright.sync_api import expect

    page.page.goto(f"{page.url}/serving")
    main = page.page.get_by_test_id("stMainBlockContainer")
    main.get_by_role("button", name="Start", exact=True).click(timeout=STEP_TIMEOUT_MS)
    for step in range(steps + 1):
        if step:
            main.get_by_role("button", name="Step", exact=True).click()
        expect(main.get_by_text(re.compile(f"^Step {step}: one forward pass"))).to_be_visible(timeout=STEP_TIMEOUT_MS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page", choices=list(DEFAULT_STEPS), default="step-through")
    parser.add_argument("--steps", type=int, default=None,
                        help="Next token clicks after the prefill, or Step clicks after Start (default 6 / 8)")
    parser.add_argument("--height", type=int, default=1500, help="viewport height in pixels")
    parser.add_argument("--out", type=Path, default=None, help="default docs/<page>.png")
    args = parser.parse_args()
    steps = DEFAULT_STEPS[args.page] if args.steps is None else args.steps
    out = args.out or ROOT / "docs" / f"{args.page}.png"
    from playwright.sync_api import sync_playwright

    with running_app() as url, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = StepPage(browser.new_page(viewport={"width": 1400, "height": args.height}), url)
            (serving if args.page == "serving" else step_through)(page, steps)
            path = page.screenshot(out)
        finally:
            browser.close()
    print(f"{path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
