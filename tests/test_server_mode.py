"""Server mode (``KVVIZ_SERVER_MODE=1`` + a TOML file) on the tiny models under AppTest: the allow-list refuses a
local folder and a hub id with a message, the caps on new tokens and on the context stop a session with a message,
benchmarks can be turned off, uploads are size-limited, idle sessions' traces are freed, a step that runs out of
memory resets only that session, a failed load leaves the others working, a visitor who arrives during a load sees
its progress, and the Server page lists the sessions' memory and the calls' latency."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from kvviz.errors import InputError, ModelLoadError
from kvviz.server.sessions import SessionRegistry
from kvviz.server.settings import ServerSettings, load_settings
from kvviz.stepper import Sampling

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


@pytest.fixture
def server_mode(tmp_path, monkeypatch):
    """Server mode with a config file the test writes (``write(text)``)."""
    config = tmp_path / "kvviz-server.toml"
    config.write_text("")
    monkeypatch.setenv("KVVIZ_SERVER_MODE", "1")
    monkeypatch.setenv("KVVIZ_SERVER_CONFIG", str(config))

    def write(text: str) -> None:
        config.write_text(text)
        # The settings are read again when the file changes; a test may write twice within the clock's resolution.
        from kvviz.ui.server import _settings_for

        _settings_for.cache_clear()

    return write


def open_page(model: str = "tiny-llama", **state: object) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["model_choice"] = model
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    assert not at.exception, at.exception
    return at


def messages(at: AppTest) -> str:
    return " ".join(element.value for kind in ("error", "warning", "info") for element in at.get(kind))


def session(at: AppTest):
    return at.session_state["kvviz_session"]


# ----- settings ---------------------------------------------------------------------------------------------------

def test_settings_come_from_the_environment_and_the_toml_file(tmp_path):
    config = tmp_path / "class.toml"
    config.write_text('models = ["tiny-llama"]\nmax_new_tokens = 32\nidle_minutes = 5\nbenchmarks = "off"\n')
    settings = load_settings({"KVVIZ_SERVER_MODE": "1", "KVVIZ_SERVER_CONFIG": str(config)})
    assert settings.enabled and settings.models == ("tiny-llama",) and settings.max_new_tokens == 32
    assert settings.idle_seconds == 300 and settings.benchmarks == "off"
    assert not load_settings({"KVVIZ_SERVER_CONFIG": str(config)}).enabled  # the file alone does not turn it on


@pytest.mark.parametrize("text, reason", [
    ("max_tokens = 3\n", "unknown setting"),
    ("max_new_tokens = '3'\n", "must be a int"),
    ("models = 'tiny-llama'\n", "list of model names"),
    ("benchmarks = 'many'\n", "benchmarks must be one of"),
    ("max_context = 0\n", "at least 1"),
    ("models = [\n", "cannot read it as TOML"),
])
def test_a_bad_config_file_is_refused_with_the_reason(tmp_path, text, reason):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(InputError, match=reason):
        load_settings({"KVVIZ_SERVER_MODE": "1", "KVVIZ_SERVER_CONFIG": str(config)})
    with pytest.raises(InputError, match="not a file"):
        load_settings({"KVVIZ_SERVER_CONFIG": str(tmp_path / "missing.toml")})


def test_the_checks_say_which_limit_was_hit():
    settings = ServerSettings(enabled=True, max_new_tokens=8, max_context=100, benchmarks="off", upload_max_bytes=10)
    with pytest.raises(ModelLoadError, match="local folders and Hugging Face ids are turned off"):
        settings.check_model("/home/student/model")
    assert settings.new_tokens_cap(64) == (8, "This server allows at most 8 new tokens per trace: asked for 64, "
                                               "this trace stops at 8.")
    assert settings.new_tokens_cap(5) == (5, None)
    with pytest.raises(InputError, match="caps a session's context at 100 tokens"):
        settings.check_context(101)
    with pytest.raises(InputError, match="Benchmarks are turned off"):
        settings.check_benchmark()
    with pytest.raises(InputError, match="up to 10 bytes"):
        settings.check_upload(11)
    open_mode = ServerSettings()
    open_mode.check_model("/home/student/model")
    open_mode.check_context(10**9)
    open_mode.check_benchmark()
    assert open_mode.new_tokens_cap(10**6) == (10**6, None)


# ----- the page in server mode ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["HuggingFaceTB/SmolLM2-360M-Instruct", "/tmp"])
def test_server_mode_refuses_a_hub_id_and_a_local_path_with_a_message(server_mode, name):
    at = open_page(model="other", model_other=name)
    assert "runs in class mode and loads only smollm2-135m, tiny-llama, tiny-gpt2" in messages(at)
    assert f"'{name}' is not one of them" in messages(at)
    assert not [button for button in at.get("button") if button.key == "prefill"]  # nothing to step


def test_server_mode_refuses_a_built_in_model_left_off_the_list(server_mode):
    server_mode('models = ["tiny-llama"]\n')
    at = open_page(model="tiny-gpt2")
    assert "loads only tiny-llama" in messages(at)
    assert "loads only tiny-llama" not in messages(open_page(model="tiny-llama"))


def test_the_new_token_cap_cuts_a_trace_with_a_message(server_mode):
    server_mode("max_new_tokens = 3\n")
    at = click(open_page(prompt="hello", chat_template=False), "prefill")
    assert "at most 3 new tokens per trace: asked for 64" in messages(at)
    click(at, "next")
    click(at, "next")
    assert len(session(at).trace.records) == 3  # the prefill's token and two steps: three new tokens
    click(at, "next")
    assert "Reached the limit of 3 new tokens" in messages(at)
    assert len(session(at).trace.records) == 3


def test_the_context_cap_stops_a_session_with_a_message(server_mode):
    server_mode("max_context = 8\n")
    at = click(open_page(prompt="hello", chat_template=False), "prefill")  # byte tokens: 5 (+ BOS where added)
    start = session(at).trace.records[-1].sequence_length
    for _ in range(8 - start):
        click(at, "next")
    assert session(at).trace.records[-1].sequence_length == 8
    click(at, "next")
    assert "caps a session's context at 8 tokens" in messages(at)
    assert session(at).trace.records[-1].sequence_length == 8


def test_a_prompt_longer_than_the_context_cap_is_refused(server_mode):
    server_mode("max_context = 8\n")
    at = click(open_page(prompt="a prompt of many bytes", chat_template=False), "prefill")
    assert "caps a session's context at 8 tokens" in messages(at)
    assert session(at).trace is None


def test_uploads_past_the_limit_and_benchmarks_are_refused_in_server_mode(server_mode):
    server_mode('upload_max_bytes = 100\nbenchmarks = "off"\n')
    from kvviz.ui.server import server_settings

    with pytest.raises(InputError, match="up to 100 bytes"):
        server_settings().check_upload(101)
    with pytest.raises(InputError, match="Benchmarks are turned off"):
        server_settings().check_benchmark()


# ----- sessions: idle, out of memory, failed loads, the Server page ---------------------------------------------

def test_an_idle_session_has_its_trace_freed_and_is_told_why(tiny_llama):
    from kvviz.tracing import start_trace
    from kvviz.ui.session import SessionTrace

    registry = SessionRegistry()
    idle, active = SessionTrace(), SessionTrace()
    for state in (idle, active):
        state.stepper, state.trace = start_trace(tiny_llama, "hello", compare=False, sampling=Sampling(),
                                                 capture_attention=True)
    assert idle.held_bytes() > 0
    registry.touch(idle.id, idle, now=0.0)
    registry.touch(active.id, active, now=500.0)
    assert [row.bytes_held > 0 for row in registry.usage(now=600.0)] == [True, True]
    assert registry.sweep(idle_seconds=300, now=600.0) == [idle.id]
    assert idle.trace is None and idle.held_bytes() == 0 and "freed after 5 minutes" in idle.message[1]
    assert active.trace is not None
    del idle
    assert [row.session for row in registry.usage(now=600.0)] == [active.id[:8]]  # a dropped session leaves


def test_a_step_that_runs_out_of_memory_resets_that_session_only(monkeypatch):
    first = click(open_page(prompt="hello", chat_template=False), "prefill")
    other = click(open_page(prompt="other words", chat_template=False), "prefill")

    def out_of_memory():
        raise torch.OutOfMemoryError("injected: CUDA out of memory")

    monkeypatch.setattr(session(first).stepper, "step", out_of_memory)
    click(first, "next")
    assert "ran out of memory during this step, so this session was reset" in messages(first)
    assert session(first).trace is None
    click(other, "next")  # the other session and the model's worker go on
    assert len(session(other).trace.records) == 2
    click(first, "prefill")
    assert session(first).trace is not None and not first.get("error")


def test_a_failed_load_shows_a_message_and_other_sessions_go_on(tmp_path):
    folder = tmp_path / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text("{ not json")
    broken = open_page(model="other", model_other=str(folder))
    assert broken.get("error") and not broken.exception
    working = click(open_page(prompt="hello", chat_template=False), "prefill")
    assert session(working).trace is not None and not working.get("error")


def test_a_visitor_arriving_during_a_load_sees_its_progress_then_gets_the_model():
    from kvviz.models import load_model
    from kvviz.ui.resources import model_store

    key = ("tiny-gpt2", "cpu", "float32")
    store = model_store()
    release, reported = threading.Event(), threading.Event()

    def slow_loader(report):
        report("Reading the weights (a slow first start)")
        reported.set()
        release.wait(30)
        return load_model("tiny-gpt2", device="cpu", dtype="float32")

    loader = threading.Thread(target=store.load, args=(key, slow_loader))
    if store.get(key) is not None:
        pytest.skip("tiny-gpt2 on cpu/float32 is already loaded in this process")
    loader.start()
    assert reported.wait(10)

    def visitor() -> None:
        from kvviz.ui.resources import get_model

        get_model("tiny-gpt2", "cpu", "float32")

    at = AppTest.from_function(visitor, default_timeout=30)
    threading.Timer(1.5, release.set).start()  # the load finishes while the visitor watches
    at.run()
    loader.join(10)
    assert not at.exception, at.exception
    labels = [status.label for status in at.status]
    assert any(label.startswith("Loaded tiny-gpt2") and "waited" in label for label in labels), labels
    written = " ".join(element.value for element in at.get("markdown"))
    assert "Reading the weights (a slow first start)" in written


def test_the_server_page_lists_sessions_memory_and_call_latency():
    # Kept in a name until the end: the registry holds sessions weakly, so a dropped one may leave it at any time.
    student = click(click(open_page(prompt="hello", chat_template=False), "prefill"), "next")
    at = AppTest.from_file(str(ROOT / "app_pages" / "server_admin.py"), default_timeout=30)
    at.run()
    assert not at.exception, at.exception
    metrics = {metric.label: metric.value for metric in at.get("metric")}
    assert metrics["Server memory (resident)"].endswith(("MiB", "GiB"))
    assert int(metrics["Sessions"]) >= 1
    sessions_frame, calls_frame = at.dataframe[0].value, at.dataframe[1].value
    assert "tiny-llama" in set(sessions_frame["model"])
    assert {"prefill", "step"} <= set(calls_frame["call"])
    assert session(student).trace is not None  # the student's session was alive while the page was read


# ----- benchmarks on the Speed page ---------------------------------------------------------------------------------

def speed_page_run() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app_pages" / "speed.py"), default_timeout=120).run()
    at.selectbox(key="speed_model").set_value("tiny-llama")
    at.button(key="speed_run").click().run()
    assert not at.exception, at.exception
    return at


def test_benchmarks_turned_off_are_refused_on_the_speed_page(server_mode):
    server_mode('benchmarks = "off"\n')
    at = speed_page_run()
    assert any("Benchmarks are turned off on this class server" in error.value for error in at.error)
    assert not at.metric


def test_a_second_benchmark_while_one_runs_is_asked_to_wait(server_mode):
    from kvviz.ui.speed import _server_lock

    lock = _server_lock()
    assert lock.acquire(timeout=60)  # another session's benchmark holds the server
    try:
        at = speed_page_run()
    finally:
        lock.release()
    assert any("Another benchmark is running on this server (one runs at a time)" in error.value
               for error in at.error)


def test_the_launcher_refuses_to_start_with_a_bad_config_file(tmp_path):
    import os
    import subprocess
    import sys

    config = tmp_path / "kvviz-server.toml"
    config.write_text("max_new_tokens = -1\n")
    done = subprocess.run([sys.executable, "-m", "kvviz.ui.serve", "--server.port", "1"], cwd=ROOT,
                          env={**os.environ, "KVVIZ_SERVER_MODE": "1", "KVVIZ_SERVER_CONFIG": str(config)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == "kvviz: error: max_new_tokens must be at least 1 (got -1)."


def test_a_prompt_past_the_context_cap_never_reaches_the_model(server_mode):
    from kvviz.ui.server import worker_pool

    server_mode("max_context = 8\n")
    before = len(worker_pool().timings())
    at = click(open_page(prompt="a prompt of many more bytes than eight", chat_template=False), "prefill")
    assert "caps a session's context at 8 tokens" in messages(at)
    assert len(worker_pool().timings()) == before  # refused before any model call was queued


def test_a_cache_policy_comparison_past_the_context_cap_is_refused_in_server_mode(server_mode):
    from tests.test_policies_page import click as click_policies
    from tests.test_policies_page import lab
    from tests.test_policies_page import open_page as open_policies

    server_mode("max_context = 48\n")
    at = click_policies(open_policies(), "policies_run")  # 64 tokens of text
    assert any("at most 48 tokens of text" in error.value for error in at.error), [e.value for e in at.error]
    assert lab(at).run is None
