"""Run the real app (``streamlit run app.py``) on a free local port and drive its home page with Chromium.

Used by the browser test and by ``scripts/screenshot.py`` / ``scripts/bench_page.py``. It uses Debian's Chromium
(``/usr/bin/chromium``, or ``$KVVIZ_CHROMIUM``) through Playwright, because Playwright's own browser download is
not available everywhere. It does not assert anything itself: the callers decide what must hold.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("KVVIZ_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
# The first start of the default model converts its GGUF weights (~20 s on 2 cores); be generous.
START_TIMEOUT_S = 240.0
STEP_TIMEOUT_MS = 180_000
STATUS = re.compile(
    r"^(prefill|step (\d+)) · ([\d,]+) tokens in the cache · cached ([\d,.]+) ms(?: · naive ([\d,.]+) ms)?"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_app(port: int | None = None, env: dict[str, str] | None = None,
                log_path: Path | None = None) -> Iterator[str]:
    """Serve app.py headless on ``port`` (a free one by default); yield its URL; stop the server afterwards.

    The server's output goes to ``log_path`` when given (kept for reading after a failure), else it is dropped.
    """
    port = port or free_port()
    log = open(log_path, "w+b") if log_path else tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    command = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
        "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
    ]
    server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _wait_healthy(url: str, server: subprocess.Popen, log: Any) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"streamlit exited with {server.returncode}:\n{log.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.25)  # polling interval while the server starts, not a test of timing
    raise RuntimeError(f"streamlit did not answer on {url} within {START_TIMEOUT_S:.0f} s")


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


@contextmanager
def app_in_browser(log_path: Path) -> Iterator[tuple[str, Any]]:
    """A freshly started app and a headless Chromium: yield (the app's URL, the browser); close both after."""
    from playwright.sync_api import sync_playwright

    with running_app(log_path=log_path) as url, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield url, browser
        finally:
            browser.close()


@dataclass(frozen=True)
class Status:
    """The status line above the token stream: which call ran last and how long the cache is."""

    step: int  # 0 after the prefill
    cache_tokens: int
    cached_ms: float  # the model's own time for this call, as the engine measured it
    naive_ms: float | None


def parse_status(text: str) -> Status | None:
    """The status line's figures, if ``text`` (as shown, without Markdown's asterisks) is the status line."""
    match = STATUS.match(text.strip())
    if match is None:
        return None
    naive = match.group(5)
    return Status(int(match.group(2) or 0), int(match.group(3).replace(",", "")),
                  float(match.group(4).replace(",", "")), float(naive.replace(",", "")) if naive else None)


class StepPage:
    """The home page in a browser tab, with the few actions the tests and scripts need."""

    def __init__(self, page: Any, url: str, log_path: Path | None = None) -> None:
        self.page = page
        self.url = url
        self.log_path = log_path  # the server's output, quoted when a wait times out

    def describe(self) -> str:
        """What the page shows now (status, badges, messages, exceptions) and the server log's tail: for the
        message of a failed wait, so a failure far away (CI) can be understood from its output alone."""
        main = self.page.get_by_test_id("stMainBlockContainer")
        parts = [f"status line: {self.status()}"]
        for test_id in ("stMarkdownContainer", "stAlert", "stException"):
            texts = [t.strip() for t in main.get_by_test_id(test_id).all_inner_texts() if t.strip()]
            parts.append(f"{test_id}: {[t[:120] for t in texts[:16]]}")
        for label in ("Play", "Stop"):
            if self.button(label).count():
                parts.append(f"{label} button enabled: {self.button(label).is_enabled()}")
        running = self.page.get_by_test_id("stStatusWidget").count()
        parts.append(f"Streamlit status widget shown: {bool(running)}")
        if self.log_path is not None and self.log_path.exists():
            parts.append("server log (tail):\n" + self.log_path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def open(self) -> "StepPage":
        self.page.goto(self.url)
        self.page.get_by_text("Press Prefill", exact=False).first.wait_for(timeout=STEP_TIMEOUT_MS)
        return self

    def status(self) -> Status | None:
        texts = self.page.locator('[data-testid="stMarkdownContainer"]').all_inner_texts()
        return next((status for status in map(parse_status, texts) if status is not None), None)

    def wait_for_step(self, step: int, timeout_ms: int = STEP_TIMEOUT_MS, idle: bool = True) -> Status:
        """Wait until the page shows call ``step`` or a later one (0: a prefill); with ``idle``, also until Streamlit
        has finished. Returns the status line then shown.

        "Or a later one": while Play runs, the browser may skip drawing a step whose successor arrives before it
        has painted it (seen: step 1, then step 3), so waiting for one exact intermediate step can wait forever.
        A caller that knows where the page must stop asserts the returned step itself.
        """
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(
                """([target]) => Array.from(document.querySelectorAll('[data-testid=stMarkdownContainer]')).some(el => {
                     const match = el.textContent.trim().match(/^(prefill|step (\\d+)) · /);
                     if (match === null) return false;
                     return target === 0 ? match[1] === "prefill" : Number(match[2] || 0) >= target;
                   })""",
                arg=[step], timeout=timeout_ms,
            )
        except PlaywrightTimeout:
            label = "prefill" if step == 0 else f"step {step}"
            raise AssertionError(f"{label} did not appear within {timeout_ms / 1000:.0f} s. The page:\n"
                                 f"{self.describe()}") from None
        if idle:
            self.wait_idle()
        status = self.status()
        assert status is not None
        return status

    def wait_idle(self, quiet_ms: int = 400) -> None:
        """Until Streamlit's "running" indicator is gone and the page has stopped changing for ``quiet_ms``.

        The indicator alone is not enough: Streamlit shows it only for runs that last a while, and the elements of
        a run arrive one by one (the status line before the token chips), so a short run can look finished while
        its last elements are still on their way. Quiet means no element added, removed or retexted.
        """
        self.page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=STEP_TIMEOUT_MS)
        self.page.evaluate(
            """([quiet, cap]) => new Promise(resolve => {
                 const finish = () => { observer.disconnect(); clearTimeout(limit); resolve(true); };
                 let timer = setTimeout(finish, quiet);
                 const observer = new MutationObserver(() => { clearTimeout(timer); timer = setTimeout(finish, quiet); });
                 observer.observe(document.body, {subtree: true, childList: true, characterData: true});
                 const limit = setTimeout(finish, cap);  // a page that never settles fails the caller's checks
               })""",
            [quiet_ms, 30_000],
        )
        self.page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=STEP_TIMEOUT_MS)

    def button(self, label: str) -> Any:
        # Scoped to the page body: while a script runs, Streamlit's header shows a "Stop" button of its own.
        return self.page.get_by_test_id("stMainBlockContainer").get_by_role("button", name=label, exact=True)

    def click(self, label: str) -> None:
        self.button(label).click()

    def set_prompt(self, text: str) -> None:
        """Type a new prompt and wait until the app has taken it: the sidebar shows its token count anew (so the
        new prompt must differ in length from the old one)."""
        sidebar = self.page.get_by_test_id("stSidebar")
        count = sidebar.get_by_text(re.compile(r"tokens( with the chat template)?; the model's context holds"))
        before = count.inner_text()
        box = sidebar.get_by_label("Prompt", exact=True)
        box.fill(text)
        box.press("Control+Enter")  # commits a text area, as leaving it does
        self.page.wait_for_function(
            """([before]) => Array.from(document.querySelectorAll('[data-testid=stSidebar] p'))
                 .some(p => p.textContent.includes("the model's context holds") && p.textContent !== before)""",
            arg=[before], timeout=STEP_TIMEOUT_MS,
        )
        self.wait_idle()

    def set_play_tokens(self, count: int) -> None:
        box = self.page.get_by_test_id("stMainBlockContainer").get_by_label("Tokens to play", exact=True)
        box.fill(str(count))
        box.press("Enter")

    def prefill(self) -> Status:
        self.click("Prefill")
        return self.wait_for_step(0)

    def next_token(self) -> Status:
        before = self.status()
        self.click("Next token")
        return self.wait_for_step((before.step if before else 0) + 1)

    def chips(self) -> list[str]:
        """The token stream's chips, prompt and generated, then the newest (the legend's samples left out)."""
        return self.page.locator(".kvviz-stream .kvviz-chip").all_inner_texts()

    def screenshot(self, path: Path, max_bytes: int = 300_000) -> Path:
        """A PNG of the viewport, optimised; reduced to a 256-colour palette only if it is over ``max_bytes``.

        A palette shifts the chart colours a little (vermillion drifts to orange), so full colour comes first.
        """
        from PIL import Image

        # No hover tooltip in the picture: park the pointer on the empty header and wait for the tooltip to go.
        self.page.mouse.move(700, 10)
        self.page.locator('[data-testid="stTooltipContent"]').first.wait_for(state="hidden")
        self.wait_idle()
        image = Image.open(io.BytesIO(self.page.screenshot())).convert("RGB")
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG", optimize=True)
        if path.stat().st_size > max_bytes:
            image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, format="PNG", optimize=True)
        return path
