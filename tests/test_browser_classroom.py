"""A class on the real app in real browsers (Debian's Chromium), on the tiny model in server mode, started the way a
class server is (``python -m kvviz.ui.serve``, the model preloaded): six sessions at once, each with its own
prompt, none seeing another's tokens; two replicas behind nginx, each session kept on its replica; a server
restart under open tabs.

Needs Chromium like ``test_browser.py``; the nginx test also needs Debian's nginx (skipped with the reason without
it).
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
from app_driver import STEP_TIMEOUT_MS, free_port, launch_chromium
from classroom_driver import (
    NGINX, ClassSession, kvviz_server, nginx_proxy, routes_by_replica, spread_routes, wait_for_log,
)

pytestmark = pytest.mark.browser

MODEL = "tiny-llama"
CLASS_ENV = {"KVVIZ_SERVER_MODE": "1"}


@pytest.fixture
def class_config(tmp_path):
    config = tmp_path / "kvviz-server.toml"
    config.write_text(f'preload = ["{MODEL}"]\nmax_new_tokens = 16\n')
    return {**CLASS_ENV, "KVVIZ_SERVER_CONFIG": str(config)}


def step_all(sessions: list[ClassSession], clicks: int) -> None:
    """Prefill, then ``clicks`` Next tokens, every session clicking before any is waited for (so they overlap)."""
    for _ in range(clicks + 1):
        for session in sessions:
            session.click()
        for session in sessions:
            session.finish()


def calls(latency_log) -> list[dict]:
    """A server's model calls so far (none before its first call writes the file)."""
    if not latency_log.exists():
        return []
    return [json.loads(line) for line in latency_log.read_text().splitlines()]


def test_six_sessions_at_once_each_see_only_their_own_tokens(tmp_path, require_browser, class_config):
    from playwright.sync_api import sync_playwright

    with kvviz_server(tmp_path, class_config) as server, sync_playwright() as playwright:
        wait_for_log(server.log_path, f"kvviz: preloaded {MODEL}")  # loaded at the start, before any visitor
        browser = launch_chromium(playwright)
        try:
            sessions = [ClassSession.open(browser, server.url, index, MODEL, compare=True, log_path=server.log_path)
                        for index in range(6)]
            step_all(sessions, clicks=2)
            markers = [session.marker() for session in sessions]
            assert [problem for session in sessions for problem in session.problems(markers)] == []
            # The preloaded model served them: no session loaded it itself (that would show a "Loaded …" box).
            for session in sessions:
                assert session.page.page.get_by_text(re.compile(r"^Loaded tiny")).count() == 0
        finally:
            browser.close()
    logged = calls(server.latency_log)
    assert sorted(call["kind"] for call in logged) == ["prefill"] * 6 + ["step"] * 12
    assert len({call["session"] for call in logged}) == 6 and all(call["ok"] for call in logged)


def test_a_server_restart_under_open_tabs_brings_each_back_with_a_message_and_no_traceback(tmp_path, require_browser,
                                                                                class_config):
    from playwright.sync_api import sync_playwright

    port = free_port()
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            with kvviz_server(tmp_path, class_config, port=port, name="before") as server:
                sessions = [ClassSession.open(browser, server.url, index, MODEL, compare=False) for index in range(2)]
                step_all(sessions, clicks=1)
            # The server is gone: the tabs lose their websocket. A new server starts on the same port.
            with kvviz_server(tmp_path, class_config, port=port, name="after") as server:
                for session in sessions:
                    page = session.page.page
                    # The tab reconnects by itself; its address bar still holds its link (prompt and steps), so the
                    # new server's fresh session replays it.
                    status = session.page.wait_for_step(1, timeout_ms=STEP_TIMEOUT_MS)
                    assert status.step == 1
                    assert page.get_by_test_id("stException").count() == 0
                    page.get_by_text("This tab's earlier session is gone from the server").wait_for()
                    assert session.cross_talk([s.marker() for s in sessions]) == []
                assert len({call["session"] for call in calls(server.latency_log)}) == 2
        finally:
            browser.close()


@pytest.fixture
def require_nginx() -> None:
    if not NGINX.exists():
        pytest.skip(f"no nginx at {NGINX}: install Debian's nginx (apt-get install nginx) to run the replica test")


def test_two_replicas_behind_nginx_keep_each_session_on_its_replica(tmp_path, require_browser, require_nginx,
                                                                    class_config):
    from playwright.sync_api import sync_playwright

    with kvviz_server(tmp_path, class_config, name="replica-a") as first, \
            kvviz_server(tmp_path, class_config, name="replica-b") as second, \
            nginx_proxy([int(first.url.rsplit(":", 1)[1]), int(second.url.rsplit(":", 1)[1])], tmp_path) as url, \
            sync_playwright() as playwright:
        # A browser without a route cookie is given one.
        with urllib.request.urlopen(url + "/") as reply:
            assert re.match(r"kvviz_route=\w+; Path=/", reply.headers["Set-Cookie"])
        browser = launch_chromium(playwright)
        try:
            # Routes that nginx's hash sends two to each replica (random ones, or fixed ones with the replicas on
            # random ports, could all land on one).
            chosen = spread_routes(url, tmp_path / "access.log", per_replica=2)
            sessions = [ClassSession.open(browser, url, index, MODEL, compare=True,
                                          cookies=[{"name": "kvviz_route", "value": route, "url": url}])
                        for index, route in enumerate(chosen)]
            step_all(sessions, clicks=2)
            markers = [session.marker() for session in sessions]
            assert [problem for session in sessions for problem in session.problems(markers)] == []
        finally:
            browser.close()
        routes = routes_by_replica(tmp_path / "access.log")
        assert set(routes) == set(chosen)
        assert all(len(replicas) == 1 for replicas in routes.values()), routes  # each session stayed on one
        assert len(set().union(*routes.values())) == 2, routes  # and both replicas served
        served = [len({call["session"] for call in calls(server.latency_log)}) for server in (first, second)]
        assert sorted(served) != [0, 4] and sum(served) == 4


def test_when_a_replica_dies_its_sessions_start_afresh_on_the_other_with_a_message(tmp_path, require_browser,
                                                                                 require_nginx, class_config):
    import os
    import signal

    from playwright.sync_api import sync_playwright

    with kvviz_server(tmp_path, class_config, name="replica-a") as first, \
            kvviz_server(tmp_path, class_config, name="replica-b") as second, \
            nginx_proxy([int(first.url.rsplit(":", 1)[1]), int(second.url.rsplit(":", 1)[1])], tmp_path) as url, \
            sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            session = ClassSession.open(browser, url, 0, MODEL, compare=False,
                                        cookies=[{"name": "kvviz_route", "value": "student-0", "url": url}])
            step_all([session], clicks=1)
            # nginx logs a websocket when it closes, so the replica that served the session is read from the
            # replicas' own call logs.
            dying, other = (first, second) if calls(first.latency_log) else (second, first)
            assert calls(dying.latency_log) and not calls(other.latency_log)
            os.kill(dying.pid, signal.SIGTERM)
            page = session.page.page
            page.get_by_text("This tab's earlier session is gone from the server").wait_for(timeout=STEP_TIMEOUT_MS)
            assert session.page.wait_for_step(1).step == 1  # the link in the address bar replayed its step
            assert page.get_by_test_id("stException").count() == 0
            assert session.cross_talk([session.marker()]) == []
            assert calls(other.latency_log)  # the other replica took the session over
        finally:
            browser.close()
