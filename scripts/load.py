"""Drive N sessions on kvviz at once, as a class would, and report what they saw.

Each session is its own Streamlit session on the home page with its own prompt ("StudentNN asks what a cache
keeps"); it presses Prefill, then Next token K times, one click every ``--interval`` seconds (the sessions' clicks
are spread evenly over the interval), or as soon as its last step is shown with ``--interval 0``. A session is a
client of the websocket protocol the browser speaks (``tests/ws_driver.py``: it sends the very messages a click
sends), or, for the first ``--browsers K`` sessions, a Chromium context: thirty Chromium pages on the server's own
two cores would take the CPU the server needs, while one or two show what a browser sees. Printed at the end:

- errors: exceptions or messages on a page, a page not at the step it should be at, a step not shown in time;
- cross-talk: a session whose token stream lacks its own prompt or shows another session's;
- client-side latency, p50/p95: in Chromium from the click to the moment the page shows the step (timed in the
  page); over the protocol from the click to the run's end message (what a browser receives before it draws);
- server-side latency, p50/p95: from a model call's submission to its record, queue wait included, as the server's
  model workers log it (``KVVIZ_LATENCY_LOG``);
- server memory: each server process's resident memory at the end and its peak, and all servers' resident memory once
  the sessions had opened (before any model call) and at the end.

By default the script starts the server itself (``python -m kvviz.ui.serve``, server mode off unless
``KVVIZ_SERVER_MODE=1`` is in the environment), or two replicas behind Debian's nginx with ``--replicas 2``
(``deploy/nginx-kvviz.conf``), each with ``--torch-threads`` (its config's ``torch_threads``). With ``--url`` it
drives a server that is already running; give ``--latency-log`` (the file its ``KVVIZ_LATENCY_LOG`` names) and
``--server-pid`` for the server-side figures.

    python scripts/load.py --sessions 30 --clicks 12 --interval 10 [--model smollm2-135m] [--no-compare]
                           [--browsers K] [--replicas 2] [--torch-threads N]
                           [--url URL --latency-log FILE --server-pid PID ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the browser drivers are shared with the classroom tests

from kvviz.kv_formula import format_bytes
from kvviz.server.queue import percentile

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
    """The model calls the servers logged since ``since``, each marked with its log's file name (its replica)."""
    calls = []
    for path in paths:
        if path.exists():
            calls += [{**json.loads(line), "replica": path.stem} for line in path.read_text().splitlines()
                      if line.strip()]
    return [call for call in calls if call["submitted"] >= since]


def drive(url: str, args: argparse.Namespace, browser, log_path: Path | None,
          opened: Callable[[], None]) -> tuple[list, list[str]]:
    """Open the sessions (the first ``--browsers`` in Chromium, the rest over the protocol), then click each on its
    schedule; return the sessions and the errors seen."""
    import threading

    from classroom_driver import ClassSession
    from ws_driver import WsSession

    errors: list[str] = []
    sessions: list = []
    for index in range(args.sessions):
        if index < args.browsers:
            sessions.append(ClassSession.open(browser, url, index, args.model, args.compare, log_path=log_path))
        else:  # behind nginx a browser is given a random route cookie; here each session sends its own
            sessions.append(WsSession.open(url, index, args.model, args.compare,
                                           route=f"load-{index}-{time.time_ns()}"))
    print(f"{args.sessions} sessions open ({args.browsers} in Chromium)", flush=True)
    opened()
    start = time.monotonic()

    def first_click(index: int) -> float:
        return start + args.interval * index / args.sessions  # the sessions' clicks spread over the interval

    def student(session: WsSession) -> None:
        next_at = first_click(session.index)
        for _click in range(args.clicks + 1):  # the prefill, then the Next tokens
            time.sleep(max(next_at - time.monotonic(), 0.0))  # the schedule under test, not a wait for a state
            try:
                session.click(timeout_s=args.step_timeout)
            except Exception as error:  # noqa: BLE001 - reported with the session, the others go on
                errors.append(f"session {session.index}: step {session.target}: {type(error).__name__}: {error}")
                return
            next_at = max(next_at + args.interval, time.monotonic())

    threads = [threading.Thread(target=student, args=(session,)) for session in sessions[args.browsers:]]
    for thread in threads:
        thread.start()
    # The browsers, from this thread: each click starts a watcher in its page, polled until the step is drawn.
    pages = sessions[:args.browsers]
    next_at = [first_click(session.index) for session in pages]
    clicked_at: list[float | None] = [None] * len(pages)
    remaining = [args.clicks + 1] * len(pages)
    while any(remaining) or any(at is not None for at in clicked_at):
        now = time.monotonic()
        for index, session in enumerate(pages):
            if clicked_at[index] is not None:
                if session.done():
                    session.finish()
                    clicked_at[index] = None
                    next_at[index] = max(next_at[index] + args.interval, time.monotonic())
                elif now - clicked_at[index] > args.step_timeout:
                    errors.append(f"session {index}: step {session.target} not shown within {args.step_timeout:.0f} s")
                    clicked_at[index] = None
                    remaining[index] = 0
            elif remaining[index] and now >= next_at[index]:
                session.click()
                clicked_at[index] = time.monotonic()
                remaining[index] -= 1
        time.sleep(POLL_S)
    for thread in threads:
        thread.join()
    return sessions, errors


def summary(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"p50_ms": percentile(values, 0.5), "p95_ms": percentile(values, 0.95), "max_ms": max(values),
            "n": len(values)}


def report(sessions: list, errors: list[str], calls: list[dict], pids: list[int],
           args: argparse.Namespace) -> dict:
    from classroom_driver import rss_bytes

    markers = [session.marker() for session in sessions]
    cross_talk = [problem for session in sessions for problem in session.cross_talk(markers)]
    problems = [problem for session in sessions for problem in session.problems(markers)
                if problem not in cross_talk]
    errors = errors + problems
    pages, clients = sessions[:args.browsers], sessions[args.browsers:]
    figures = {
        "Next token, server (submit→record)": [call["total_ms"] for call in calls if call["kind"] == "step"],
        "Next token, model run (no queue)": [call["run_ms"] for call in calls if call["kind"] == "step"],
        "Next token, browser (click→drawn)": [ms for session in pages for ms in session.client_ms[1:]],
        "Next token, protocol (click→run's end)": [ms for session in clients for ms in session.client_ms[1:]],
        "Prefill, server": [call["total_ms"] for call in calls if call["kind"] == "prefill"],
        "Prefill, browser (click→drawn)": [session.client_ms[0] for session in pages if session.client_ms],
        "Prefill, protocol (click→run's end)": [session.client_ms[0] for session in clients if session.client_ms],
    }
    failed_calls = sum(not call["ok"] for call in calls)

    def line(name: str, values: list[float]) -> str:
        if not values:
            return f"  {name:<38} no data"
        return (f"  {name:<38} p50 {percentile(values, 0.5):>8,.0f} ms   p95 {percentile(values, 0.95):>8,.0f} ms   "
                f"max {max(values):>8,.0f} ms   n={len(values)}")

    servers = f"{args.replicas} server{'s behind nginx' if args.replicas > 1 else ''}" if args.replicas else \
        "an external server"
    print(f"\n{args.sessions} sessions × {args.clicks} Next token clicks ({args.model}, naive comparison "
          f"{'on' if args.compare else 'off'}, interval {args.interval:g} s, {servers}, {args.browsers} in Chromium)")
    print(f"errors: {len(errors)}" + "".join(f"\n  {error}" for error in errors))
    print(f"cross-talk: {len(cross_talk)}" + "".join(f"\n  {problem}" for problem in cross_talk))
    print(f"failed model calls on the server: {failed_calls}")
    print("latency")
    for name, values in figures.items():
        print(line(name, values))
    memory = []
    for pid in pids:
        rss, peak = rss_bytes(pid), peak_rss_bytes(pid)
        memory.append({"pid": pid, "resident_bytes": rss, "peak_bytes": peak})
        print(f"server memory (pid {pid}): resident {format_bytes(rss) if rss else 'unknown'}, "
              f"peak {format_bytes(peak) if peak else 'unknown'}")
    per_replica = {}
    for call in calls:
        per_replica[call["replica"]] = per_replica.get(call["replica"], 0) + 1
    if len(per_replica) > 1:
        print("model calls per replica: " + ", ".join(f"{name} {count}" for name, count in sorted(per_replica.items())))
    return {"sessions": args.sessions, "clicks": args.clicks, "interval_s": args.interval, "model": args.model,
            "compare": args.compare, "browsers": args.browsers, "replicas": args.replicas,
            "torch_threads": args.torch_threads, "errors": errors, "cross_talk": cross_talk,
            "failed_model_calls": failed_calls, "latency": {name: summary(v) for name, v in figures.items()},
            "calls_per_replica": per_replica, "server_memory": memory,
            "load_average": Path("/proc/loadavg").read_text().split()[:3]}


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
    parser.add_argument("--browsers", type=int, default=0,
                        help="how many of the sessions are Chromium contexts (default 0: all speak the protocol)")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch threads of each server this script starts (0: torch's default)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.sessions < 1 or args.clicks < 0 or args.torch_threads < 0 or not 0 <= args.browsers <= args.sessions:
        parser.error("--sessions must be at least 1, --clicks and --torch-threads at least 0, --browsers between 0 "
                     "and --sessions")

    from classroom_driver import kvviz_server, nginx_proxy, rss_bytes, wait_for_log

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kvviz-load-"))) if not args.keep else \
            Path(tempfile.mkdtemp(prefix="kvviz-load-"))
        print(f"logs in {work}", flush=True)
        log_path = None
        if args.url:
            url, logs, pids = args.url.rstrip("/"), args.latency_log, args.server_pid
            args.replicas = 0
        else:
            config = work / "kvviz-server.toml"
            config.write_text(f"torch_threads = {args.torch_threads}\n")
            servers = [stack.enter_context(kvviz_server(work, env={"KVVIZ_SERVER_CONFIG": str(config)},
                                                        name=f"replica-{index}"))
                       for index in range(args.replicas)]
            for server in servers:
                wait_for_log(server.log_path, "kvviz: preloaded")
            url = servers[0].url
            if args.replicas > 1:
                url = stack.enter_context(nginx_proxy([int(s.url.rsplit(":", 1)[1]) for s in servers], work))
            logs, pids, log_path = [s.latency_log for s in servers], [s.pid for s in servers], servers[0].log_path
        print(f"driving {url}", flush=True)
        since = time.time()
        resident = {}

        def opened() -> None:  # the servers' memory once every session has drawn its page, before any model call
            resident["open"] = sum(rss_bytes(pid) or 0 for pid in pids)

        browser = None
        if args.browsers:
            from app_driver import launch_chromium
            from playwright.sync_api import sync_playwright

            playwright = stack.enter_context(sync_playwright())
            browser = launch_chromium(playwright)
            stack.callback(browser.close)
        sessions, errors = drive(url, args, browser, log_path, opened)
        figures = report(sessions, errors, server_calls(logs, since), pids, args)
        after, before = sum(rss_bytes(pid) or 0 for pid in pids), resident.get("open", 0)
        if pids and before and after:
            # Not divided by the sessions: the first model calls' own buffers (allocator, oneDNN) are in the growth.
            # Runs with different --sessions give the memory each further session adds (docs/classroom.md).
            figures["resident_open_bytes"], figures["resident_end_bytes"] = before, after
            print(f"server memory, all servers: {format_bytes(before)} once the sessions had opened (before any "
                  f"model call), {format_bytes(after)} at the end")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        for session in sessions[args.browsers:]:
            session.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
