"""Speed-page helpers: run a benchmark behind a progress bar, keep this session's result, read a saved one.

Stopping: a click on any button while the benchmark runs makes Streamlit rerun the script, and the rerun is
delivered as an exception at the next progress-bar update. The engine then drops its caches and graphs
(``finally``) and the page shows the last partial result, which the progress callback stores after every
finished run. One benchmark runs per server process at a time: two side by side on one machine would time each
other, not the paths. On a class server (``KVVIZ_SERVER_MODE=1``) benchmarks may be turned off altogether, and an
uploaded result must fit the server's upload limit.
"""

from __future__ import annotations

from pathlib import Path

import threading
import time

import streamlit as st

from kvviz.bench import BenchProgress, run_benchmark, validate
from kvviz.bench_results import BenchConfig, BenchResult
from kvviz.errors import InputError, KvvizError
from kvviz.models import LoadedModel
from kvviz.ui.server import server_settings

_RESULT_KEY = "kvviz_speed_result"
_STATUS_KEY = "kvviz_speed_status"
# Streamlit sends every progress update to the browser; a few per second are enough to look live.
_UPDATE_SECONDS = 0.25


@st.cache_resource(show_spinner=False)
def _server_lock() -> threading.Lock:
    return threading.Lock()


def last_result() -> BenchResult | None:
    """This session's latest result (complete, partial after a stop, or loaded from a file)."""
    return st.session_state.get(_RESULT_KEY)


def last_status() -> str:
    """'running', 'done', 'loaded' or '' (nothing yet): a rerun while 'running' means the run was stopped."""
    return st.session_state.get(_STATUS_KEY, "")


def mark_stopped() -> None:
    if last_status() == "running":
        st.session_state[_STATUS_KEY] = "stopped"


def run_with_progress(loaded: LoadedModel, config: BenchConfig) -> BenchResult:
    """Run the benchmark with a live progress bar; raises ``InputError`` when another one is running."""
    server_settings().check_benchmark()
    validate(config, loaded)  # before any widget, so that bad settings leave no progress bar behind
    lock = _server_lock()
    if not lock.acquire(blocking=False):
        raise InputError("Another benchmark is running on this server (one runs at a time); press Run again when it "
                         "has finished, as two at once would time each other.")
    try:
        # Set before the run: if Streamlit interrupts it (Stop), the rerun finds "running" and reports a stop.
        st.session_state[_STATUS_KEY] = "running"
        st.session_state.pop(_RESULT_KEY, None)
        bar = st.progress(0.0, text="Starting…")
        last_update = [0.0]

        def on_progress(event: BenchProgress) -> bool:
            if event.partial is not None:
                st.session_state[_RESULT_KEY] = event.partial
            now = time.monotonic()
            if now - last_update[0] >= _UPDATE_SECONDS:
                last_update[0] = now
                bar.progress(event.fraction, text=f"{event.fraction:.0%} · {event.message}")
            return True

        try:
            result = run_benchmark(loaded, config, on_progress)
        except KvvizError:
            st.session_state[_STATUS_KEY] = ""
            bar.empty()
            raise
        bar.empty()
        st.session_state[_RESULT_KEY] = result
        st.session_state[_STATUS_KEY] = "done"
        return result
    finally:
        lock.release()


def famous_run_config(result: BenchResult, loaded: LoadedModel) -> BenchConfig:
    """The published figure's full length on the paths it compares, with the result's prompt where the model's
    context leaves room for it (else the longest prompt that fits)."""
    from kvviz.report import FAMOUS_FIGURE, FAMOUS_PATHS

    room = loaded.card.context_length - FAMOUS_FIGURE.tokens
    return BenchConfig(tokens=FAMOUS_FIGURE.tokens, prompt_tokens=max(1, min(result.config.prompt_tokens, room)),
                       paths=FAMOUS_PATHS, repeats=1, naive_repeats=1)


# A result measured with scripts/gpu_ladder.sh and shipped with the project, so a CPU-only user can see a GPU's ladder.
SHIPPED_GPU_RESULT = Path(__file__).resolve().parents[2] / "docs" / "results" / "smollm2-h200-bf16.json"


# CPU results measured with `kvviz bench` for the README: the ladder with llama.cpp, and GPT-2 medium's fits.
SHIPPED_CPU_RESULTS: dict[str, Path] = {
    "llamacpp": SHIPPED_GPU_RESULT.parent / "smollm2-cpu-llamacpp.json",
    "gpt2-medium": SHIPPED_GPU_RESULT.parent / "gpt2-medium-cpu.json",
}


def load_shipped_gpu_result() -> BenchResult:
    """The H200 ladder shipped in docs/results, shown as if it had been uploaded."""
    return load_result(SHIPPED_GPU_RESULT.read_bytes())


def load_shipped_cpu_result(name: str) -> BenchResult:
    """One of the CPU results shipped in docs/results (``SHIPPED_CPU_RESULTS``), shown as if it had been uploaded."""
    return load_result(SHIPPED_CPU_RESULTS[name].read_bytes())


def load_result(data: bytes) -> BenchResult:
    """A result saved by ``kvviz bench --json`` or the page's download button; raises ``InputError`` if not one,
    or if it is larger than a class server accepts."""
    server_settings().check_upload(len(data))
    try:
        result = BenchResult.from_json(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise InputError(f"That file is not a kvviz benchmark result: {error}.") from None
    st.session_state[_RESULT_KEY] = result
    st.session_state[_STATUS_KEY] = "loaded"
    return result
