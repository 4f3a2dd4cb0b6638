"""The Step through page's Export popover and trace-file uploader under AppTest, on the tiny models.

The files are taken from the page's own download buttons (their data is built on click: the test runs the deferred
callable as Streamlit's server would) and uploaded into a new session, as a person would move them between two
browsers. Bad files must end in an st.error, never an exception.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from kvviz.exports.table import CSV_COLUMNS
from kvviz.exports.trace_file import MAX_FILE_BYTES
from kvviz.ui.exports import UPLOAD_KEY

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def open_page(model: str = "tiny-llama", **state: object) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["model_choice"] = model
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def click(at: AppTest, key: str, times: int = 1) -> AppTest:
    for _ in range(times):
        at.button(key=key).click().run()
        assert not at.exception, at.exception
    return at


def trace(at: AppTest):
    return at.session_state["kvviz_session"].trace


@pytest.fixture
def deferred(monkeypatch) -> dict:
    """The callables the page registers behind its download buttons, by file id (AppTest's media manager lives only
    for one run, so they are kept here to be called the way the server calls one when its button is clicked)."""
    made: dict = {}
    original = MediaFileManager.add_deferred

    def add_deferred(self, data_callable, *args, **kwargs):
        file_id = original(self, data_callable, *args, **kwargs)
        made[file_id] = data_callable
        return file_id

    monkeypatch.setattr(MediaFileManager, "add_deferred", add_deferred)
    return made


def download(at: AppTest, deferred: dict, key: str) -> bytes:
    """The file behind a download button, built as when the button is clicked."""
    data = deferred[at.download_button(key=key).proto.deferred_file_id]()
    return data.encode("utf-8") if isinstance(data, str) else data


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader(key=UPLOAD_KEY).set_value((name, data, "application/json")).run()
    assert not at.exception, at.exception
    return at


def unescaped(elements) -> list[str]:
    """Message texts as a reader sees them (the page backslash-escapes punctuation in file-derived messages)."""
    return [re.sub(r"\\(.)", r"\1", element.value) for element in elements]


def test_export_offers_nothing_before_a_prefill_and_three_files_after():
    at = open_page()
    assert not at.download_button
    assert any("nothing to export yet" in caption.value for caption in at.caption)
    click(at, "prefill")
    assert [(b.key, b.label) for b in at.download_button] == [
        ("export_json", "Trace as JSON"), ("export_csv", "Steps as CSV"), ("export_html", "HTML report")]
    assert all(b.proto.deferred_file_id and b.proto.ignore_rerun for b in at.download_button)


def test_a_downloaded_trace_loads_in_a_new_session_and_replays_the_same_tokens(deferred):
    sampled = dict(sample=True, temperature=1.2, top_k=30, seed=11, prompt="Export me", compare=False)
    at = click(click(open_page(**sampled), "prefill"), "next", times=4)
    recorded = trace(at)
    data = download(at, deferred, "export_json")
    assert json.loads(data)["settings"]["sampling"] == {"temperature": 1.2, "top_k": 30, "seed": 11}

    # Another browser session, on another model with other settings: the file brings its own.
    other = upload(open_page("tiny-gpt2"), "kvviz-tiny-llama.json", data)
    replayed = trace(other)
    assert replayed is not recorded
    assert replayed.token_ids() == recorded.token_ids()
    assert [r.token_id for r in replayed.records] == [r.token_id for r in recorded.records]
    assert replayed.records[-1].cache_len == recorded.records[-1].cache_len
    assert other.session_state["model_choice"] == "tiny-llama" and other.session_state["seed"] == 11
    assert not other.error and not other.warning
    info = unescaped(other.info)
    assert any(text.startswith("Loaded kvviz-tiny-llama.json: replayed the prefill and 4 steps") and
               f"so does the cache length ({recorded.records[-1].cache_len} tokens)" in text for text in info), info
    # The replayed page is an ordinary one: it steps on from there.
    click(other, "next")
    assert trace(other).records[-1].cache_len == recorded.records[-1].cache_len + 1


def test_the_csv_download_has_one_row_per_step(deferred):
    at = click(click(open_page(), "prefill"), "next", times=3)
    rows = list(csv.DictReader(io.StringIO(download(at, deferred, "export_csv").decode("utf-8"))))
    assert len(rows) == len(trace(at).records) == 4 and tuple(rows[0]) == CSV_COLUMNS
    assert [int(row["cache_len"]) for row in rows] == [r.cache_len for r in trace(at).records]


def test_the_html_download_is_self_contained_and_holds_the_charts(deferred):
    at = click(click(open_page(), "prefill"), "next")
    page = download(at, deferred, "export_html").decode("utf-8")
    assert not re.search(r"<script[^>]+\bsrc\s*=|<link\b", page, flags=re.I)
    assert page.count("Plotly.newPlot") == 8 and "What is the capital of France?" in page


def test_a_file_edited_to_disagree_with_the_model_is_replayed_and_the_difference_named(deferred):
    at = click(click(open_page(), "prefill"), "next", times=2)
    data = json.loads(download(at, deferred, "export_json"))
    wrong = (data["steps"][1]["token_id"] + 1) % 256
    data["steps"][1]["token_id"] = wrong
    data["steps"][2]["new_ids"] = [wrong]
    other = upload(open_page(), "edited.json", json.dumps(data).encode())
    warnings = unescaped(other.warning)
    assert any("The replay differs from the file: step 1 chose token id" in text and f"the file has id {wrong}" in text
               for text in warnings), warnings
    assert trace(other).records[-1].cache_len == trace(at).records[-1].cache_len


def test_bad_oversized_and_hostile_files_give_a_message_not_a_traceback():
    at = open_page()
    cases = {
        "garbage.json": (b"\x00\x01not json", "That file is not a kvviz trace: it is not"),
        "deep.json": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        "big.json": (b" " * (MAX_FILE_BYTES + 1), "a trace file may be at most 8 MiB"),
        "model.json": (json.dumps({"format": "kvviz-trace", "format_version": 1, "settings": {
            "model": "some-org/some-model", "prompt": "x"}}).encode(), "opens the built-in models only"),
        "[link](http://example.com).json": (b"{}", "That file is not a usable kvviz trace"),
    }
    for name, (data, expected) in cases.items():
        upload(at, name, data)
        errors = unescaped(at.error)
        assert len(errors) == 1 and expected in errors[0], (name, errors)
        assert trace(at) is None
    # The message shows its text literally: no Markdown link can come out of a file.
    assert all("](" not in element.value.replace("\\]\\(", "") for element in at.error)


@pytest.mark.parametrize("panel", ["KV cache", "Attention", "Cost per step"])
def test_every_chart_on_the_page_has_a_named_png_download(panel):
    at = click(click(open_page(panel=panel), "prefill"), "next")
    charts = at.get("plotly_chart")
    assert len(charts) >= 3
    names = set()
    for chart in charts:
        config = json.loads(chart.proto.config)
        assert "toImage" not in config.get("modeBarButtonsToRemove", [])
        options = config["toImageButtonOptions"]
        assert options["format"] == "png" and options["filename"].startswith("kvviz-")
        names.add(options["filename"])
    assert len(names) == len(charts)  # one file name per chart
    expected = {"KV cache": {"kvviz-kv-strips", "kvviz-cache-bytes"},
                "Attention": {"kvviz-attention-layer", "kvviz-attention-layers"},
                "Cost per step": {"kvviz-work", "kvviz-latency", "kvviz-cumulative"}}[panel]
    assert names == expected | {"kvviz-candidates"}


def test_the_surgery_chart_has_a_named_png_download():
    at = click(click(open_page(panel="Cache surgery"), "prefill"), "next")
    at.pills(key="surgery_positions").set_value([0, 1]).run()
    click(at, "surgery_apply")
    configs = [json.loads(chart.proto.config) for chart in at.get("plotly_chart")]
    assert {config["toImageButtonOptions"]["filename"] for config in configs} == {"kvviz-candidates",
                                                                                  "kvviz-surgery"}
