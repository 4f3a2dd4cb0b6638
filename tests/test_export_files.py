"""The export formats on the tiny models: the trace file round-trips and replays the same tokens, the CSV has one
documented row per step, the HTML report is self-contained and holds the charts and figures, and the reader turns
every bad, oversized or hostile file into one sentence (an ``InputError``), never a traceback."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from kvviz.errors import InputError
from kvviz.exports.html_report import report_html
from kvviz.exports.png import chart_config
from kvviz.exports.table import CSV_COLUMNS, trace_csv
from kvviz.exports.trace_file import (
    MAX_FILE_BYTES,
    REPLAY_MAX_STEPS,
    check_replay,
    read_trace_file,
    replay_message,
    settings_of,
    trace_to_dict,
    trace_to_json,
)
from kvviz.kv_formula import format_bytes
from kvviz.models import REGISTRY
from kvviz.stepper import Sampling
from kvviz.tracing import start_trace

DOC = Path(__file__).resolve().parents[1] / "docs" / "trace-format.md"
MODELS = list(REGISTRY)
ALLOWED = [*MODELS, "tiny-llama-untied"]  # the conftest's untied Llama varies its greedy tokens (tied ones echo)


def record(loaded, prompt: str, steps: int, *, compare: bool = True, sampling: Sampling = Sampling(),
           max_new_tokens: int = 32):
    """A trace as the page makes it, and the settings that made it."""
    stepper, trace = start_trace(loaded, prompt, compare=compare, sampling=sampling, capture_attention=True,
                                 record_kv=True, max_new_tokens=max_new_tokens)
    for _ in range(steps):
        trace.append(stepper.step())
    settings = settings_of(loaded.key, dict(prompt=prompt, chat_template=False, compare=compare, sampling=sampling,
                                            max_new_tokens=max_new_tokens))
    return trace, settings


def replay(loaded, recorded):
    """What loading a file does, without the page: the file's settings through a fresh stepper."""
    settings = recorded.settings
    sampling = Sampling(temperature=settings.temperature, top_k=settings.top_k, seed=settings.seed)
    stepper, trace = start_trace(loaded, settings.prompt, compare=settings.compare, sampling=sampling,
                                 capture_attention=False, max_new_tokens=settings.max_new_tokens,
                                 chat_template=settings.chat_template)
    for _ in range(recorded.replay_steps):
        trace.append(stepper.step())
    return trace


@pytest.fixture(scope="module")
def greedy(untied_llama):
    return record(untied_llama, "Hello, cache", 6)


@pytest.fixture(scope="module")
def greedy_json(greedy) -> str:
    trace, settings = greedy
    return trace_to_json(trace, settings)


# ----- round trip ---------------------------------------------------------------------------------------------------

def test_a_greedy_trace_file_loads_back_and_replays_the_same_tokens_and_cache_length(untied_llama, greedy,
                                                                                     greedy_json):
    trace, _ = greedy
    recorded = read_trace_file(greedy_json.encode("utf-8"), ALLOWED)
    assert recorded.settings.model == "tiny-llama-untied" and len(set(trace.token_ids()[-6:])) > 1
    replayed = replay(untied_llama, recorded)
    assert replayed.token_ids() == trace.token_ids()
    assert [r.token_id for r in replayed.records] == [r.token_id for r in trace.records]
    assert replayed.records[-1].cache_len == trace.records[-1].cache_len == len(trace.token_ids())
    check = check_replay(recorded, replayed)
    assert check.same and check.first_difference is None and check.compared == 7
    message = replay_message(recorded, check, "trace.json")
    assert "replayed the prefill and 6 steps" in message
    assert f"so does the cache length ({trace.records[-1].cache_len} tokens)" in message


def test_a_sampled_trace_replays_from_its_seed(tiny_llama):
    sampling = Sampling(temperature=1.5, top_k=40, seed=7)
    trace, settings = record(tiny_llama, "Sampled text", 8, compare=False, sampling=sampling)
    recorded = read_trace_file(trace_to_json(trace, settings), MODELS)
    assert (recorded.settings.temperature, recorded.settings.top_k, recorded.settings.seed) == (1.5, 40, 7)
    assert not recorded.settings.compare
    replayed = replay(tiny_llama, recorded)
    assert replayed.token_ids() == trace.token_ids() and check_replay(recorded, replayed).same
    # A different seed is a different replay, and the check says where it first parts.
    other = replay(tiny_llama, read_trace_file(trace_to_json(trace, settings_of(
        "tiny-llama", dict(prompt="Sampled text", chat_template=False, compare=False,
                           sampling=Sampling(temperature=1.5, top_k=40, seed=8), max_new_tokens=32))), MODELS))
    assert other.token_ids() != trace.token_ids()


def test_the_check_names_the_first_step_whose_token_differs(tiny_llama, untied_llama, greedy_json):
    # The untied model's file replayed on another model: same prompt ids, other tokens.
    recorded = read_trace_file(greedy_json, ALLOWED)
    replayed = replay(tiny_llama, recorded)
    check = check_replay(recorded, replayed)
    assert not check.same
    first = next(i for i, (a, b) in enumerate(zip(recorded.steps, replayed.records)) if a.token_id != b.token_id)
    assert check.first_difference == first
    message = replay_message(recorded, check, "trace.json")
    assert "The replay differs from the file" in message and f"id {recorded.steps[first].token_id}" in message


def test_the_file_holds_every_step_with_the_csv_fields_and_the_context(greedy, greedy_json):
    trace, _ = greedy
    data = json.loads(greedy_json)
    assert (data["format"], data["format_version"]) == ("kvviz-trace", 1)
    assert data["token_ids"] == trace.token_ids() and data["prompt_tokens"] == trace.prompt_tokens
    assert len(data["steps"]) == len(trace.records)
    for step, rec in zip(data["steps"], trace.records):
        assert set(CSV_COLUMNS) | {"new_ids", "candidates"} == set(step)
        assert step["new_ids"] == list(rec.new_ids) and step["cache_bytes"] == rec.cache_bytes
        assert [c["token_id"] for c in step["candidates"]] == [c.token_id for c in rec.candidates]


def test_a_long_trace_replays_at_most_the_limit_and_says_so(greedy):
    trace, settings = greedy
    data = trace_to_dict(trace, settings)
    last = data["steps"][-1]
    for index in range(len(data["steps"]), REPLAY_MAX_STEPS + 5):
        data["steps"].append({**last, "index": index, "new_ids": [last["token_id"]]})
    data["settings"]["max_new_tokens"] = 4096
    recorded = read_trace_file(json.dumps(data), ALLOWED)
    assert recorded.decode_steps == REPLAY_MAX_STEPS + 4 and recorded.replay_steps == REPLAY_MAX_STEPS
    message = replay_message(recorded, check_replay(recorded, trace), "long.json")
    assert f"loading replays at most {REPLAY_MAX_STEPS}" in message


# ----- CSV ----------------------------------------------------------------------------------------------------------

def test_csv_has_one_row_per_step_with_the_documented_columns(greedy):
    trace, _ = greedy
    rows = list(csv.DictReader(io.StringIO(trace_csv(trace))))
    assert len(rows) == len(trace.records) == 7
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [int(r["index"]) for r in rows] == list(range(7))
    assert [r["kind"] for r in rows] == ["prefill"] + ["decode"] * 6
    assert [int(r["token_id"]) for r in rows] == [r.token_id for r in trace.records]
    assert [int(r["cache_len"]) for r in rows] == [r.cache_len for r in trace.records]
    assert [int(r["cache_bytes"]) for r in rows] == [r.cache_bytes for r in trace.records]
    assert all(float(r["ms_naive"]) > 0 and r["same_token"] in {"True", "False"} for r in rows)
    # Every column is documented in the format's table.
    documented = re.findall(r"^\| `(\w+)` \|", DOC.read_text().split("## CSV columns")[1], flags=re.M)
    assert tuple(documented) == CSV_COLUMNS


def test_csv_leaves_unmeasured_cells_empty_and_quotes_awkward_tokens(tiny_llama):
    trace, _ = record(tiny_llama, 'a, "quoted"\nline', 2, compare=False)
    rows = list(csv.DictReader(io.StringIO(trace_csv(trace))))
    assert len(rows) == 3 and all(r["ms_naive"] == "" and r["same_token"] == "" for r in rows)
    assert [r["token"] for r in rows] == [r.token_text for r in trace.records]


# ----- HTML report --------------------------------------------------------------------------------------------------

def test_the_html_report_is_self_contained_and_holds_the_charts_and_figures(greedy):
    trace, settings = greedy
    page = report_html(trace, settings)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # Nothing is fetched: no script, style sheet, image or frame from elsewhere; plotly.js is inlined once.
    assert not re.search(r"<script[^>]+\bsrc\s*=", page, flags=re.I)
    assert not re.search(r"<link\b", page, flags=re.I)
    assert not re.search(r"<(img|iframe)\b", page, flags=re.I)
    assert not re.search(r"@import|url\(\s*['\"]?https?:", page, flags=re.I)
    assert page.count("Plotly.newPlot") == 8 and len(page) > 3_000_000  # plotly.js itself is ~4.6 MB
    for name in ("candidates", "kv-strips", "cache-bytes", "attention-layers", "attention-layer", "work",
                 "latency", "cumulative"):
        assert f'id="kvviz-{name.replace("-", "_")}"' in page
        assert f'"filename": "kvviz-{name}"' in page
    last = trace.records[-1]
    assert f"<td>{last.cache_len:,}</td>" in page
    assert format_bytes(last.cache_bytes) in page and f"{last.cache_bytes:,} bytes" in page
    assert settings.prompt in page
    steps_table = page.split("<tbody>")[-1]
    assert steps_table.count("<tr>") == len(trace.records)


def test_the_html_report_escapes_the_prompt(tiny_llama):
    trace, settings = record(tiny_llama, "<script src='https://example.com/x.js'></script>", 1)
    page = report_html(trace, settings)
    assert "<script src=" not in page and "&lt;script src=" in page


# ----- PNG ----------------------------------------------------------------------------------------------------------

def test_chart_config_turns_on_a_named_png_download():
    config = chart_config("cache_bytes")
    assert config["toImageButtonOptions"] == {"format": "png", "filename": "kvviz-cache-bytes", "scale": 2}
    assert "toImage" not in config["modeBarButtonsToRemove"]


# ----- bad files ----------------------------------------------------------------------------------------------------

def _edited(text: str, edit) -> str:
    data = json.loads(text)
    edit(data)
    return json.dumps(data)


BAD_FILES = {
    "empty": (lambda good: b"", "not JSON"),
    "not UTF-8": (lambda good: b"\xff\xfe\x00{", "not UTF-8"),
    "truncated": (lambda good: good[: len(good) // 2], "not JSON"),
    "a list": (lambda good: "[1, 2, 3]", "the file is not a JSON object"),
    "deep nesting": (lambda good: "[" * 200_000 + "]" * 200_000, "nested too deeply"),
    "NaN": (lambda good: good.replace('"temperature": 0.0', '"temperature": NaN'), "NaN"),
    "huge integer": (lambda good: good.replace('"seed": 0', '"seed": ' + "9" * 5000), "not a kvviz trace"),
    "other format": (lambda good: _edited(good, lambda d: d.update(format="kvviz-bench")), '"format"'),
    "other version": (lambda good: _edited(good, lambda d: d.update(format_version=2)), "reads version 1"),
    "version as bool": (lambda good: _edited(good, lambda d: d.update(format_version=True)), "format_version"),
    "unknown model": (lambda good: _edited(good, lambda d: d["settings"].update(model="evil/model")),
                      "opens the built-in models only"),
    "markup as model": (lambda good: _edited(good, lambda d: d["settings"].update(model="![x](http://e.x/i.png)")),
                        "recorded on a string"),
    "empty prompt": (lambda good: _edited(good, lambda d: d["settings"].update(prompt="  ")), "prompt is empty"),
    "prompt too long": (lambda good: _edited(good, lambda d: d["settings"].update(prompt="x" * 200_001)),
                        "longer than 200,000"),
    "seed negative": (lambda good: _edited(good, lambda d: d["settings"]["sampling"].update(seed=-1)),
                      "settings.sampling.seed is -1"),
    "temperature too high": (lambda good: _edited(good, lambda d: d["settings"]["sampling"].update(temperature=5)),
                             "temperature 5"),
    "chat as string": (lambda good: _edited(good, lambda d: d["settings"].update(chat_template="yes")),
                       "chat_template is not true or false"),
    "no steps": (lambda good: _edited(good, lambda d: d.update(steps=[])), "no steps"),
    "steps missing": (lambda good: _edited(good, lambda d: d.pop("steps")), 'has no "steps"'),
    "step not object": (lambda good: _edited(good, lambda d: d["steps"].__setitem__(1, "x")),
                        "steps[1] is not a JSON object"),
    "bad token id": (lambda good: _edited(good, lambda d: d["steps"][0].update(new_ids=[1, "2"])), "token ids"),
    "steps do not follow": (lambda good: _edited(good, lambda d: d["steps"][2].update(new_ids=[999])),
                            "do not follow"),
    "second prefill": (lambda good: _edited(good, lambda d: d["steps"][1].update(kind="prefill")),
                       'steps[1].kind is "prefill"'),
    "too many steps": (lambda good: _edited(good, lambda d: d.update(steps=d["steps"] * 700)), "at most 4,096"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_gives_one_clear_sentence(greedy_json, case):
    make, expected = BAD_FILES[case]
    with pytest.raises(InputError) as raised:
        read_trace_file(make(greedy_json), ALLOWED)
    message = str(raised.value)
    assert message.startswith("That file is not") and expected in message, message
    assert "\n" not in message and len(message) < 400


def test_an_oversized_file_is_refused_before_it_is_parsed():
    data = b" " * MAX_FILE_BYTES + b"{}"
    with pytest.raises(InputError, match=r"^That file is 8 MiB; a trace file may be at most 8 MiB\.$"):
        read_trace_file(data, MODELS)


def test_fields_a_replay_does_not_need_are_ignored(greedy_json):
    data = json.loads(greedy_json)
    data["steps"][0]["ms_cached"] = "not a number"
    data["extra"] = {"anything": [1, 2, 3]}
    recorded = read_trace_file(json.dumps(data), ALLOWED)
    assert len(recorded.steps) == 7


def _paths(value, prefix=()):
    """Every path to a value inside a JSON document (objects and lists walked)."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            yield from _paths(item, (*prefix, index))


def test_any_field_replaced_by_any_json_value_reads_or_gives_a_sentence(greedy_json):
    """Every field of a real file (the first steps' too), replaced in turn by each kind of JSON value: the reader
    returns a file or raises ``InputError``, never anything else."""
    good = json.loads(greedy_json)
    replacements = [None, True, False, 0, -1, 2**70, 1.5, "", "x", [], [1], {}, {"a": 1}]
    tried = refused = 0
    for path in _paths(good):
        if not path:
            continue
        for replacement in replacements:
            data = json.loads(greedy_json)
            target = data
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = replacement
            tried += 1
            try:
                read_trace_file(json.dumps(data), ALLOWED)
            except InputError:
                refused += 1
    assert tried > 1000 and 0 < refused < tried


def test_reading_and_writing_files_needs_neither_the_model_stack_nor_streamlit():
    import subprocess
    import sys

    code = ("import sys, kvviz.exports.trace_file, kvviz.exports.table, kvviz.exports.png\n"
            "loaded = sorted({'torch', 'transformers', 'streamlit'} & set(sys.modules))\n"
            "assert not loaded, f'imported {loaded}'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_report_says_why_it_has_no_attention_charts(tiny_llama):
    stepper, trace = start_trace(tiny_llama, "No attention", compare=False, sampling=Sampling(),
                                 capture_attention=False, max_new_tokens=8)
    trace.append(stepper.step())
    settings = settings_of("tiny-llama", dict(prompt="No attention", chat_template=False, compare=False,
                                              sampling=Sampling(), max_new_tokens=8))
    page = report_html(trace, settings)
    assert page.count("Plotly.newPlot") == 6 and "recorded without attention weights" in page
    # Capture on for the prefill, then off (as the page does past its attention budget).
    stepper, trace = start_trace(tiny_llama, "Some attention", compare=False, sampling=Sampling(),
                                 capture_attention=True, max_new_tokens=8)
    stepper.capture_attention = False
    trace.append(stepper.step())
    page = report_html(trace, settings)
    assert f"Attention capture stopped at {trace.records[0].sequence_length} tokens" in page
