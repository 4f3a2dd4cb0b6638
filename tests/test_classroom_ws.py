"""A class without browsers: many Streamlit sessions over the websocket protocol (``tests/ws_driver.py``, what
``scripts/load.py`` drives by default) on a class server started as one is (``python -m kvviz.ui.serve``, the tiny
model preloaded). Each session must read its own page: its step, its cache length, its prompt's tokens and no one
else's. And the launcher's garbage-collector freeze: objects from imports are left out, later garbage is not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
from app_driver import ROOT
from classroom_driver import kvviz_server, wait_for_log
from ws_driver import WsSession

MODEL = "tiny-llama"
SESSIONS = 12
CLICKS = 3


@pytest.fixture
def class_env(tmp_path):
    config = tmp_path / "kvviz-server.toml"
    config.write_text(f'preload = ["{MODEL}"]\nmax_new_tokens = 16\ntorch_threads = 1\n')
    return {"KVVIZ_SERVER_MODE": "1", "KVVIZ_SERVER_CONFIG": str(config)}


def test_twelve_protocol_sessions_at_once_each_read_only_their_own_page(tmp_path, class_env):
    with kvviz_server(tmp_path, class_env) as server:
        wait_for_log(server.log_path, f"kvviz: preloaded {MODEL}")
        sessions = [WsSession.open(server.url, index, MODEL, compare=True) for index in range(SESSIONS)]
        try:
            before = [session.status() for session in sessions]
            failures: list[BaseException] = []

            def student(session: WsSession) -> None:
                try:
                    for _ in range(CLICKS + 1):  # Prefill, then Next token
                        session.click()
                except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread below
                    failures.append(error)

            threads = [threading.Thread(target=student, args=(session,)) for session in sessions]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert failures == []
            markers = [session.marker() for session in sessions]
            assert before == [None] * SESSIONS  # nothing ran before the Prefill
            assert [problem for session in sessions for problem in session.problems(markers)] == []
            prompt_tokens = None
            for session in sessions:
                status = session.status()
                stream = "".join(session.chips()).replace("␣", " ")  # a chip of spaces alone shows them as ␣
                assert stream.startswith(session.prompt)  # the chips spell its own prompt, then its tokens
                prompt_tokens = prompt_tokens or status.cache_tokens - CLICKS
                assert (status.step, status.cache_tokens) == (CLICKS, prompt_tokens + CLICKS)
                assert status.naive_ms is not None  # the comparison ran in every session
                assert len(session.client_ms) == CLICKS + 1 and min(session.client_ms) > 0
            # Reading another session's markers is what the cross-talk check would catch.
            assert sessions[0].cross_talk([sessions[1].prompt.split()[0]]) == []
            assert sessions[0].cross_talk([sessions[0].marker(), "Student"]) == [
                "session 0: shows other sessions' prompts ['Student']"]
        finally:
            for session in sessions:
                session.close()
    logged = [json.loads(line) for line in server.latency_log.read_text().splitlines()]
    assert sorted(call["kind"] for call in logged) == ["prefill"] * SESSIONS + ["step"] * SESSIONS * CLICKS
    assert len({call["session"] for call in logged}) == SESSIONS and all(call["ok"] for call in logged)
    assert "objects from imports left out of garbage collection" in server.log_path.read_text()


FREEZE_CHECK = """
import gc, weakref
from kvviz.ui.serve import freeze_imports
frozen = freeze_imports()
class Node:
    pass
node = Node()
node.self = node  # a cycle: only the collector frees it
alive = weakref.ref(node)
del node
gc.collect(2)
print(frozen, alive() is None, gc.get_freeze_count() >= frozen)
"""


def test_the_launcher_freezes_the_imports_and_still_collects_later_garbage():
    done = subprocess.run([sys.executable, "-c", FREEZE_CHECK], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=True)
    frozen, collected, kept = done.stdout.split()
    assert int(frozen) > 100_000  # torch, transformers, plotly, pandas and Streamlit: about half a million
    assert (collected, kept) == ("True", "True")
