"""Run kvviz as a class server (``python -m kvviz.ui.serve``), one or several replicas behind nginx, and drive
many browser sessions on it at once: for the classroom tests and ``scripts/load.py``.

A ``ClassSession`` is one Playwright browser context (its own cookies, so its own Streamlit session) on the home
page. Its clicks are timed in the browser: from the click to the moment the page shows the step it asked for
(``arm`` installs a watcher before the click), so that many sessions can be clicked at once and read afterwards.

It does not assert anything itself: the callers decide what must hold.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

from app_driver import ROOT, STEP_TIMEOUT_MS, StepPage, _wait_healthy, free_port

NGINX = Path(os.environ.get("KVVIZ_NGINX", shutil.which("nginx") or "/usr/sbin/nginx"))
SITE_CONFIG = ROOT / "deploy" / "nginx-kvviz.conf"
# One secret for every replica: Streamlit signs its cookies with it, so a browser's cookies hold on any replica.
REPLICA_COOKIE_SECRET = "kvviz-classroom-test-secret"


@dataclass
class Server:
    url: str
    pid: int
    log_path: Path
    latency_log: Path


@contextmanager
def kvviz_server(log_dir: Path, env: dict[str, str] | None = None, port: int | None = None,
                 name: str = "server") -> Iterator[Server]:
    """``python -m kvviz.ui.serve`` on ``port`` (a free one by default) with its log and model-call latency log in
    ``log_dir``; stopped afterwards."""
    port = port or free_port()
    log_path, latency_log = log_dir / f"{name}.log", log_dir / f"{name}-latency.jsonl"
    log = open(log_path, "w+b")  # noqa: SIM115 - closed below
    command = [sys.executable, "-m", "kvviz.ui.serve", "--server.port", str(port), "--server.address", "127.0.0.1",
               "--server.headless", "true", "--server.fileWatcherType", "none"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "KVVIZ_LATENCY_LOG": str(latency_log),
                                    "STREAMLIT_SERVER_COOKIE_SECRET": REPLICA_COOKIE_SECRET, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log)
        yield Server(url, process.pid, log_path, latency_log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_for_log(path: Path, text: str, timeout_s: float = 240.0) -> None:
    """Until ``text`` appears in the log at ``path`` (a server's preload line, for example)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)  # polling a log file, not a timing under test
    raise AssertionError(f"{text!r} not in {path} after {timeout_s:.0f} s:\n{path.read_text(errors='replace')[-2000:]}")


def nginx_config(upstream_ports: list[int], listen_port: int, work_dir: Path) -> str:
    """The shipped site config (deploy/nginx-kvviz.conf) with these ports, inside a minimal main config that keeps
    every file nginx writes in ``work_dir`` and logs each request's route cookie and replica."""
    site = SITE_CONFIG.read_text()
    servers = "\n".join(f"    server 127.0.0.1:{port} max_fails=3 fail_timeout=10s;" for port in upstream_ports)
    site, replaced = re.subn(r"(?m)^    server 127\.0\.0\.1:\d+ .*;\n(?:    server 127\.0\.0\.1:\d+ .*;\n)*",
                             servers + "\n", site)
    site, listens = re.subn(r"(?m)^    listen \d+;", f"    listen 127.0.0.1:{listen_port};", site)
    if replaced != 1 or listens != 1:
        raise RuntimeError(f"{SITE_CONFIG} no longer has the upstream servers and listen line this driver replaces")
    (work_dir / "kvviz-site.conf").write_text(site)
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (f"{user}worker_processes 1;\npid {work_dir}/nginx.pid;\nerror_log {work_dir}/error.log;\n"
            "daemon off;\nevents { worker_connections 512; }\nhttp {\n"
            "  log_format route '$cookie_kvviz_route $upstream_addr $status $request_uri';\n"
            f"  access_log {work_dir}/access.log route;\n"
            f"  client_body_temp_path {work_dir}/body;\n  proxy_temp_path {work_dir}/proxy;\n"
            f"  fastcgi_temp_path {work_dir}/fastcgi;\n  uwsgi_temp_path {work_dir}/uwsgi;\n"
            f"  scgi_temp_path {work_dir}/scgi;\n"
            f"  include {work_dir}/kvviz-site.conf;\n}}\n")


@contextmanager
def nginx_proxy(upstream_ports: list[int], work_dir: Path) -> Iterator[str]:
    """Debian's nginx in front of the replicas on a free loopback port; yields its URL."""
    port = free_port()
    config = work_dir / "nginx.conf"
    config.write_text(nginx_config(upstream_ports, port, work_dir))
    checked = subprocess.run([str(NGINX), "-t", "-c", str(config), "-p", str(work_dir)], capture_output=True,
                             text=True)
    if checked.returncode != 0:
        raise RuntimeError(f"nginx rejects the config:\n{checked.stderr}")
    process = subprocess.Popen([str(NGINX), "-c", str(config), "-p", str(work_dir)], stdout=subprocess.DEVNULL,
                               stderr=open(work_dir / "nginx.stderr", "wb"))  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    try:
        log = open(work_dir / "nginx.stderr", "rb")  # noqa: SIM115
        _wait_healthy(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


def spread_routes(url: str, access_log: Path, per_replica: int, replicas: int = 2) -> list[str]:
    """Route cookie values that nginx sends ``per_replica`` each to every replica: the hash of a route depends on
    the replicas' addresses (random ports), so candidates are tried through nginx and its log says where each went.
    """
    import urllib.request

    chosen: dict[str, list[str]] = {}
    for index in range(256):
        route = f"student-{index}"
        request = urllib.request.Request(url + "/_stcore/health", headers={"Cookie": f"kvviz_route={route}"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            reply.read()
        for line in reversed(access_log.read_text().splitlines()):
            logged, upstream, _status, uri = (line.split(" ", 3) + ["", "", ""])[:4]
            if logged == route and uri.startswith("/_stcore/health"):
                if len(chosen.setdefault(upstream, [])) < per_replica:
                    chosen[upstream].append(route)
                break
        if len(chosen) == replicas and all(len(routes) == per_replica for routes in chosen.values()):
            return [route for routes in zip(*chosen.values()) for route in routes]
    raise AssertionError(f"nginx did not spread 256 routes over {replicas} replicas: {chosen}")


def routes_by_replica(access_log: Path) -> dict[str, set[str]]:
    """From nginx's access log: for each route cookie, the replicas its websocket requests went to."""
    routes: dict[str, set[str]] = {}
    for line in access_log.read_text().splitlines():
        route, upstream, _status, uri = (line.split(" ", 3) + ["", "", ""])[:4]
        if uri.startswith("/_stcore/stream") and route != "-":
            routes.setdefault(route, set()).add(upstream)
    return routes


def rss_bytes(pid: int) -> int | None:
    """Resident memory of process ``pid`` (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def link(model: str, prompt: str, compare: bool) -> str:
    """A share link that fills in the sidebar (no steps: the session presses Prefill itself)."""
    return f"/?model={model}&prompt={quote(prompt)}&chat=0&compare={int(compare)}"


def student_marker(index: int) -> str:
    """What marks student ``index``'s prompt in a token stream."""
    return f"Student{index:02d}"


def student_prompt(index: int) -> str:
    return f"{student_marker(index)} asks what a cache keeps"


def cross_talk(index: int, stream: str, markers: list[str]) -> list[str]:
    """What is wrong with session ``index``'s token stream: its own marker missing, or another session's shown."""
    own = student_marker(index)
    found = []
    if own not in stream:
        found.append(f"session {index}: its own prompt is not in its token stream")
    others = [marker for marker in markers if marker != own and marker in stream]
    if others:
        found.append(f"session {index}: shows other sessions' prompts {others}")
    return found


_ARM = """([target]) => {
  const shown = () => Array.from(document.querySelectorAll('[data-testid=stMarkdownContainer]')).some(el => {
    const match = el.textContent.trim().match(/^(prefill|step (\\d+)) · /);
    return match !== null && (target === 0 ? match[1] === "prefill" : Number(match[2] || 0) >= target);
  });
  const watch = {start: performance.now(), end: null};
  window.__kvvizWatch = watch;
  const observer = new MutationObserver(() => {
    if (watch.end === null && shown()) { watch.end = performance.now(); observer.disconnect(); }
  });
  observer.observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


@dataclass
class ClassSession:
    """One student's browser context on the home page."""

    index: int
    prompt: str
    page: StepPage
    target: int = -1  # the step the last click asked for; -1 before the prefill
    client_ms: list[float] = field(default_factory=list)

    @classmethod
    def open(cls, browser: Any, url: str, index: int, model: str, compare: bool,
             log_path: Path | None = None, cookies: list[dict] | None = None) -> "ClassSession":
        context = browser.new_context(viewport={"width": 1300, "height": 900})
        if cookies:
            context.add_cookies(cookies)
        prompt = student_prompt(index)
        page = StepPage(context.new_page(), url + link(model, prompt, compare), log_path)
        page.open()
        return cls(index, prompt, page)

    def marker(self) -> str:
        return student_marker(self.index)

    def click(self) -> None:
        """Prefill first, Next token after: start the click and its in-browser timer without waiting."""
        self.target += 1
        self.page.page.evaluate(_ARM, [self.target])
        self.page.click("Prefill" if self.target == 0 else "Next token")

    def done(self) -> bool:
        return bool(self.page.page.evaluate("() => window.__kvvizWatch && window.__kvvizWatch.end !== null"))

    def finish(self, timeout_ms: int = STEP_TIMEOUT_MS) -> float:
        """Wait for the step the last click asked for; its browser-side latency in ms."""
        self.page.page.wait_for_function("() => window.__kvvizWatch.end !== null", timeout=timeout_ms)
        watch = self.page.page.evaluate("() => window.__kvvizWatch")
        self.client_ms.append(watch["end"] - watch["start"])
        return self.client_ms[-1]

    def problems(self, markers: list[str]) -> list[str]:
        """What is wrong with this session's page: an exception, an error, a wrong step, another's tokens."""
        found = []
        page = self.page.page
        if page.get_by_test_id("stException").count():
            found.append(f"session {self.index}: exception on the page")
        # Any message on the page, but the note that the model chose its end-of-sequence token (a random model may).
        errors = [text for text in page.get_by_test_id("stMainBlockContainer").get_by_test_id("stAlert")
                  .all_inner_texts() if text.strip() and "end-of-sequence" not in text]
        if errors:
            found.append(f"session {self.index}: messages {errors}")
        status = self.page.status()
        if status is None or status.step != self.target:
            found.append(f"session {self.index}: shows {status}, expected step {self.target}")
        found += self.cross_talk(markers)
        return found

    def cross_talk(self, markers: list[str]) -> list[str]:
        return cross_talk(self.index, "".join(self.page.chips()), markers)
