"""Drive N browser sessions on kvviz at once, as a class would, and report what they saw.

Each session is its own Chromium context (its own Streamlit session) on the home page with its own prompt
("StudentNN asks what a cache keeps"); it presses Prefill, then Next token K times, one click every ``--interval``
seconds (the sessions' clicks are spread evenly over the interval), or as soon as its last step is shown with
``--interval 0``. Printed at the end:

- errors: exceptions or messages on a page, a page not at the step it should be at, a step not shown in time;
- cross-talk: a session whose token stream lacks its own prompt or shows another session's;
- browser-side latency, p50/p95: from the click to the moment the page shows the step (timed in the browser);
- server-side latency, p50/p95: from a model call's submission to its record, queue wait included, as the server's
  model workers log it (``KVVIZ_LATENCY_LOG``);
- server memory: each server process's resident memory at the end, and its peak.

By default the script starts the server itself (``python -m kvviz.ui.serve``, server mode off unless
``KVVIZ_SERVER_MODE=1`` is in the environment), or two replicas behind Debian's nginx with ``--replicas 2``
(``deploy/nginx-kvviz.conf``). With ``--url`` it drives a server that is already running; give ``--latency-log``
(the file its ``KVVIZ_LATENCY_LOG`` names) and ``--server-pid`` for the server-side figures.

    python scripts/load.py --sessions 30 --clicks 12 --interval 10 [--model smollm2-135m] [--no-compare]
                           [--replicas 2] [--url URL --latency-log FILE --server-pid PID ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the browser drivers are shared with the classroom tests

from kvviz.kv_formula import format_bytes  # noqa: E402
from kvviz.server.queue import percentile  # noqa: E402

POLL_S = 0.05  # how often the script looks at the pages while clicks are in flight


def peak_rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def server_calls(paths: list[Path], since: float) -> list[dict]:
    calls = []
    for path in paths:
        if path.exists():
            calls += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [call for call in calls if call["submitted"] >= since]


def drive(browser, url: str, args: argparse.Namespace, log_path: Path | None) -> tuple[list, list[str]]:
    """Open the sessions, click them on schedule; return the sessions and the errors seen."""
    from classroom_driver import ClassSession

    errors: list[str] = []
    sessions = []
    for index in range(args.sessions):
        sessions.append(ClassSession.open(browser, url, index, args.model, compare=args.compare, log_path=log_path))
        print(f"session {index} open", flush=True)
    clicks_each = args.clicks + 1  # the prefill, then the Next tokens
    start = time.monotonic()
    offsets = [args.interval * index / max(args.sessions, 1) for index in range(args.sessions)]
    next_at = [start + offset for offset in offsets]
    clicked_at: list[float | None] = [None] * args.sessions
    remaining = [clicks_each] * args.sessions
    timeout_s = args.step_timeout
    while any(remaining) or any(at is not None for at in clicked_at):
        now = time.monotonic()
        for index, session in enumerate(sessions):
            if clicked_at[index] is not None:
                if session.done():
                    session.finish()
                    clicked_at[index] = None
                    next_at[index] = max(next_at[index] + args.interval, time.monotonic())
                elif now - clicked_at[index] > timeout_s:
                    errors.append(f"session {index}: step {session.target} not shown within {timeout_s:.0f} s")
                    clicked_at[index] = None
                    remaining[index] = 0
            elif remaining[index] and now >= next_at[index]:
                session.click()
                clicked_at[index] = time.monotonic()
                remaining[index] -= 1
        time.sleep(POLL_S)
    return sessions, errors


def report(sessions: list, errors: list[str], calls: list[dict], pids: list[int], args: argparse.Namespace) -> None:
    from classroom_driver import rss_bytes

    markers = [session.marker() for session in sessions]
    cross_talk = [problem for session in sessions for problem in session.cross_talk(markers)]
    problems = [problem for session in sessions for problem in session.problems(markers)
                if problem not in cross_talk]
    errors = errors + problems
    browser_steps = [ms for session in sessions for ms in session.browser_ms[1:]]
    browser_prefills = [session.browser_ms[0] for session in sessions if session.browser_ms]
    steps = [call["total_ms"] for call in calls if call["kind"] == "step"]
    prefills = [call["total_ms"] for call in calls if call["kind"] == "prefill"]
    failed_calls = sum(not call["ok"] for call in calls)

    def line(name: str, values: list[float]) -> str:
        if not values:
            return f"  {name:<34} no data"
        return (f"  {name:<34} p50 {percentile(values, 0.5):>8,.0f} ms   p95 {percentile(values, 0.95):>8,.0f} ms   "
                f"max {max(values):>8,.0f} ms   n={len(values)}")

    print(f"\n{args.sessions} sessions × {args.clicks} Next token clicks ({args.model}, naive comparison "
          f"{'on' if args.compare else 'off'}, interval {args.interval:g} s, {args.replicas or 'external'} "
          f"server{'s' if args.replicas != 1 else ''})")
    print(f"errors: {len(errors)}" + "".join(f"\n  {error}" for error in errors))
    print(f"cross-talk: {len(cross_talk)}" + "".join(f"\n  {problem}" for problem in cross_talk))
    print(f"failed model calls on the server: {failed_calls}")
    print("latency")
    print(line("Next token, server (submit→record)", steps))
    print(line("Next token, browser (click→shown)", browser_steps))
    print(line("Prefill, server", prefills))
    print(line("Prefill, browser", browser_prefills))
    for pid in pids:
        rss, peak = rss_bytes(pid), peak_rss_bytes(pid)
        print(f"server memory (pid {pid}): resident {format_bytes(rss) if rss else 'unknown'}, "
              f"peak {format_bytes(peak) if peak else 'unknown'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=2, help="Next token clicks per session, after its Prefill")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between a session's clicks (0: at once)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--no-compare", dest="compare", action="store_false", help="naive comparison off")
    parser.add_argument("--replicas", type=int, default=1, choices=(1, 2), help="servers to start (2: behind nginx)")
    parser.add_argument("--url", help="drive this running server instead of starting one")
    parser.add_argument("--latency-log", type=Path, action="append", default=[])
    parser.add_argument("--server-pid", type=int, action="append", default=[])
    parser.add_argument("--step-timeout", type=float, default=300.0)
    parser.add_argument("--keep", action="store_true", help="keep the servers' logs (their folder is printed)")
    args = parser.parse_args()
    if args.sessions < 1 or args.clicks < 0:
        parser.error("--sessions must be at least 1 and --clicks at least 0")

    from playwright.sync_api import sync_playwright

    from app_driver import launch_chromium
    from classroom_driver import kvviz_server, nginx_proxy, wait_for_log

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kvviz-load-"))) if not args.keep else \
            Path(tempfile.mkdtemp(prefix="kvviz-load-"))
        print(f"logs in {work}", flush=True)
        log_path = None
        if args.url:
            url, logs, pids = args.url.rstrip("/"), args.latency_log, args.server_pid
            args.replicas = 0
        else:
            servers = [stack.enter_context(kvviz_server(work, name=f"replica-{index}"))
                       for index in range(args.replicas)]
            for server in servers:
                wait_for_log(server.log_path, "kvviz: preloaded")
            url = servers[0].url
            if args.replicas > 1:
                url = stack.enter_context(nginx_proxy([int(s.url.rsplit(":", 1)[1]) for s in servers], work))
            logs, pids, log_path = [s.latency_log for s in servers], [s.pid for s in servers], servers[0].log_path
        print(f"driving {url}", flush=True)
        since = time.time()
        playwright = stack.enter_context(sync_playwright())
        browser = launch_chromium(playwright)
        stack.callback(browser.close)
        sessions, errors = drive(browser, url, args, log_path)
        report(sessions, errors, server_calls(logs, since), pids, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
