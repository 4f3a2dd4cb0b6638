"""The Attention page (streamlit AppTest, tiny model): generate here, or read the trace another page left."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from kvviz.stepper import Sampling
from kvviz.ui.session import SessionTrace
from stepped import SESSION_KEY, stepped_session

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "attention.py")


def figure(element) -> dict:
    return json.loads(element.proto.spec)


def heatmap_z(element) -> np.ndarray:
    """The first trace's z as plotly ships it (a base64 typed array) decoded back to NumPy."""
    z = figure(element)["data"][0]["z"]
    values = np.frombuffer(base64.b64decode(z["bdata"]), dtype=np.dtype(z["dtype"]))
    return values.reshape([int(s) for s in str(z["shape"]).split(",")])


def charts_by_title(at: AppTest) -> dict[str, object]:
    return {figure(c)["layout"]["title"]["text"].split("<br>")[0]: c for c in at.get("plotly_chart")}


def generate(at: AppTest, model: str = "tiny-llama", tokens: int = 8, prompt: str = "abcabc xyz") -> AppTest:
    at.selectbox[0].set_value(model)
    at.text_area[0].set_value(prompt)
    at.slider[0].set_value(tokens)
    return at.button[0].click().run()


def page_with(session: SessionTrace) -> AppTest:
    """The page run in a browser session that already holds ``session`` (as the Step through page leaves it)."""
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state[SESSION_KEY] = session
    at.run()
    assert not at.exception
    return at


def test_without_a_trace_the_page_says_how_to_start():
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception
    assert "No trace yet" in at.info[0].value
    assert at.button[0].label == "Generate"


def test_generate_fills_the_session_trace_and_draws_every_view(tiny_llama):
    at = generate(AppTest.from_file(PAGE, default_timeout=120).run(), tokens=8)
    assert not at.exception and not at.error
    trace = at.session_state[SESSION_KEY].trace
    n = trace.records[-1].sequence_length
    assert trace.model.startswith("tiny-llama") and 2 <= len(trace.records) <= 8
    assert trace.prompt_tokens == len("abcabc xyz")
    charts = charts_by_title(at)
    matrix = next(c for title, c in charts.items() if title.startswith("What did each token attend to?"))
    z = heatmap_z(matrix)
    assert z.shape == (n, n)
    assert np.all(np.isnan(z[np.triu_indices(n, k=1)]))
    np.testing.assert_allclose(np.nansum(z, axis=1), 1.0, atol=3e-3)
    assert any(title.startswith("Where does every head look?") for title in charts)
    for measure in ("first token", "previous token", "copy what followed", "spread out"):
        assert any(measure in title for title in charts), measure
    success = at.success[0].value
    assert "match" in success and f"all {n} tokens" in success
    assert any(f"{n} tokens" in m.value for m in at.markdown)
    html = at.get("html")[0].proto.body
    assert "outline:2px" in html  # the token view outlines its query token


def test_the_page_reads_the_trace_the_home_page_left_and_one_more_token_adds_a_row(tiny_llama):
    at = page_with(stepped_session(tiny_llama, "hello hello", 3, capture_attention=True, max_new_tokens=50))
    assert any("14 tokens (11 prompt + 3 stepped)" in m.value for m in at.markdown)
    matrix = next(c for t, c in charts_by_title(at).items() if t.startswith("What did each token"))
    assert heatmap_z(matrix).shape == (14, 14)

    next(b for b in at.button if b.label == "One more token").click().run()
    assert not at.exception
    assert len(at.session_state[SESSION_KEY].trace.records) == 5
    matrix = next(c for t, c in charts_by_title(at).items() if t.startswith("What did each token"))
    assert heatmap_z(matrix).shape == (15, 15)


def test_choosing_a_layer_and_head_redraws_that_head(tiny_llama):
    at = generate(AppTest.from_file(PAGE, default_timeout=120).run(), tokens=4)
    layer = next(s for s in at.selectbox if s.label == "Layer")
    head = next(s for s in at.selectbox if s.label == "Head")
    layer.set_value(3)
    head.set_value(1)
    at.run()
    assert not at.exception
    titles = list(charts_by_title(at))
    assert any("Layer 3, head 1" in t for t in titles)
    head = next(s for s in at.selectbox if s.label == "Head")
    assert head.format_func(head.value) == "head 1 · KV head 0 (shared with 0)"


def test_page_does_no_array_maths_and_the_engine_needs_no_streamlit():
    source = Path(PAGE).read_text()
    for forbidden in ("import numpy", "import torch", "np.", "torch."):
        assert forbidden not in source, forbidden
    code = ("import sys, kvviz.attention_matrix, kvviz.heads, kvviz.charts.attention;"
            "assert 'streamlit' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_long_trace_draws_its_matrix_at_once_and_whole_model_views_on_request(tiny_llama):
    at = page_with(stepped_session(tiny_llama, "abcdefghij" * 60, 5, capture_attention=True, max_new_tokens=50))
    titles = charts_by_title(at)
    matrix = next(c for t, c in titles.items() if t.startswith("What did each token"))
    assert heatmap_z(matrix).shape == (202, 202)  # 605 tokens in 3×3 max-pooled blocks
    assert "max-pooled 3×3 blocks" in figure(matrix)["layout"]["title"]["text"]
    assert not any(t.startswith("Where does every head look?") for t in titles)
    assert "605 tokens" in at.info[0].value
    assert "first 256 of 605 tokens" in at.success[0].value
    next(b for b in at.button if b.label == "Compute the model view and head maps").click().run()
    assert not at.exception
    assert any(t.startswith("Where does every head look?") for t in charts_by_title(at))


def test_attention_capture_stops_at_the_session_budget_and_the_page_shows_the_captured_part(tiny_llama, monkeypatch):
    """Memory stays bounded: past the per-tab budget, steps go on without attention rows, and this page shows the
    matrix of the tokens that were captured and says where capture stopped."""
    from kvviz.ui import session as sessions

    state = SessionTrace()
    sessions.prefill(state, tiny_llama, "abcabc xyz", chat_template=False, compare=True, sampling=Sampling(),
                     max_new_tokens=32)
    monkeypatch.setattr(sessions, "ATTENTION_BUDGET_BYTES", state.trace.attention_bytes() + 1)
    for _ in range(4):
        sessions.step(state)
    with_rows = [bool(r.attention) for r in state.trace.records]
    assert with_rows == [True, True, False, False, False]  # the step that crossed the budget was the last captured
    assert state.trace.with_attention().records == state.trace.records[:2]
    assert state.attention_trace() is state.attention_trace()  # one object, so the page's per-trace memos hold
    assert all(r.same_token for r in state.trace.records[1:])  # the cache and the comparison go on

    at = page_with(state)
    assert any("Attention capture stopped after 11 of the trace's 14 tokens" in m.value for m in at.info)
    matrix = next(c for t, c in charts_by_title(at).items() if t.startswith("What did each token"))
    assert heatmap_z(matrix).shape == (11, 11)


def test_a_one_token_trace_draws_and_says_what_cannot_be_measured(tiny_llama):
    at = generate(AppTest.from_file(PAGE, default_timeout=120).run(), tokens=1, prompt="a")
    assert not at.exception and not at.error
    assert len(at.session_state[SESSION_KEY].trace.records) == 1
    texts = [m.value for m in at.markdown]
    assert any(t.startswith("Not measurable on this trace: it needs at least 2 tokens") for t in texts)
    assert not any(" nan" in t for t in texts)


def test_a_long_prompt_that_fits_the_context_is_not_refused_for_the_pages_token_cap(tiny_llama):
    """tiny-llama holds 1,024 positions: a 700-token prompt and 20 new tokens fit, though 700 + 512 would not."""
    at = generate(AppTest.from_file(PAGE, default_timeout=120).run(), tokens=20, prompt="ab" * 350)
    assert not at.exception and not at.error
    assert at.session_state[SESSION_KEY].trace.prompt_tokens == 700
