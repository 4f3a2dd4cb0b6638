"""The production view: vLLM / SGLang Prometheus text read into ServerMetrics, fetched over http, and a kvviz run
read into the same shape. Offline: the fixtures are written from the engines' metric definitions (see their
headers) and the http tests talk to a server on this machine's loopback.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kvviz.errors import InputError
from kvviz.serving.engine import run_requests
from kvviz.serving.metrics import fetch_metrics, live_metrics, parse_metrics
from kvviz.serving.records import ServingRequest

FIXTURES = Path(__file__).parent.parent / "kvviz" / "serving" / "examples"
VLLM_TEXT = (FIXTURES / "metrics_vllm.txt").read_text()
SGLANG_TEXT = (FIXTURES / "metrics_sglang.txt").read_text()
BLOCK = 4


# ----- parsing --------------------------------------------------------------------------------------------------

def test_vllm_metrics_are_read_with_their_exact_values():
    metrics = parse_metrics(VLLM_TEXT)
    assert metrics.engine == "vllm"
    assert metrics.kv_cache_usage == 0.8125
    assert (metrics.prefix_cache_queries, metrics.prefix_cache_hits) == (52_480, 31_488)
    assert metrics.prefix_hit_rate == pytest.approx(31_488 / 52_480) == pytest.approx(0.6)
    assert (metrics.running, metrics.waiting, metrics.preemptions) == (14, 3, 6)
    assert (metrics.pool_tokens, metrics.block_size) == (27_713 * 16, 16)  # from vllm:cache_config_info's labels
    assert metrics.model == "meta-llama/Llama-3.1-8B-Instruct" and metrics.per_model == ()
    assert metrics.missing == ()


def test_sglang_metrics_are_read_with_their_exact_values():
    metrics = parse_metrics(SGLANG_TEXT)
    assert metrics.engine == "sglang"
    assert metrics.kv_cache_usage == 0.62
    assert metrics.prefix_hit_rate == 0.35  # SGLang's own gauge (last prefill batch), not hits / queries
    assert (metrics.prefix_cache_queries, metrics.prefix_cache_hits) == (41_200 + 19_800, 19_800)
    assert (metrics.running, metrics.waiting, metrics.preemptions) == (12, 3, 7)
    assert metrics.pool_tokens == 480_000
    assert metrics.model == "Qwen/Qwen2.5-7B-Instruct"
    assert metrics.missing == ("block_size",)  # SGLang reports no block size


def test_counts_are_summed_and_fractions_averaged_over_engines_with_a_breakdown_per_model():
    text = "\n".join([
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="a"} 4',
        'vllm:num_requests_running{engine="1",model_name="a"} 2',
        'vllm:num_requests_running{engine="0",model_name="b"} 1',
        "# TYPE vllm:kv_cache_usage_perc gauge",
        'vllm:kv_cache_usage_perc{engine="0",model_name="a"} 0.5',
        'vllm:kv_cache_usage_perc{engine="1",model_name="a"} 0.25',
        'vllm:kv_cache_usage_perc{engine="0",model_name="b"} 0.75',
        "# TYPE vllm:prefix_cache_queries_total counter",
        'vllm:prefix_cache_queries_total{engine="0",model_name="a"} 100',
        'vllm:prefix_cache_queries_total{engine="0",model_name="b"} 300',
        "# TYPE vllm:prefix_cache_hits_total counter",
        'vllm:prefix_cache_hits_total{engine="0",model_name="a"} 50',
        'vllm:prefix_cache_hits_total{engine="0",model_name="b"} 30',
        "",
    ])
    metrics = parse_metrics(text)
    assert metrics.running == 7 and metrics.kv_cache_usage == pytest.approx(0.5)
    assert (metrics.prefix_cache_queries, metrics.prefix_cache_hits) == (400, 80)
    assert metrics.prefix_hit_rate == pytest.approx(0.2)
    assert metrics.model is None and metrics.models == ("a", "b")
    a, b = metrics.per_model
    assert (a.model, a.running, a.kv_cache_usage, a.prefix_hit_rate) == ("a", 6, pytest.approx(0.375), 0.5)
    assert (b.model, b.running, b.kv_cache_usage, b.prefix_hit_rate) == ("b", 1, 0.75, 0.1)
    assert set(metrics.missing) == {"waiting", "preemptions", "pool_tokens", "block_size"}


def test_names_vllm_used_before_0_9_and_counters_without_a_type_line_are_read():
    text = ("vllm:gpu_cache_usage_perc 0.4\n"
            "vllm:gpu_prefix_cache_queries_total 80\n"
            "vllm:gpu_prefix_cache_hits_total 20\n"
            "vllm:num_preemptions_total 2\n")
    metrics = parse_metrics(text)
    assert (metrics.kv_cache_usage, metrics.prefix_cache_queries, metrics.prefix_cache_hits) == (0.4, 80, 20)
    assert metrics.preemptions == 2 and metrics.prefix_hit_rate == 0.25
    assert metrics.running is None and "running" in metrics.missing


def test_no_queries_gives_no_hit_rate_rather_than_a_division_by_zero():
    metrics = parse_metrics("vllm:prefix_cache_queries_total 0\nvllm:prefix_cache_hits_total 0\n")
    assert metrics.prefix_cache_queries == 0 and metrics.prefix_hit_rate is None


def test_broken_text_names_the_line_that_is_not_prometheus_text():
    lines = VLLM_TEXT.splitlines()
    broken = "\n".join(lines[:10] + ['vllm:num_requests_running{model_name="m" 3'] + lines[10:])
    with pytest.raises(InputError, match=r"^Could not read the metrics text: line 11 .*num_requests_running") as error:
        parse_metrics(broken)
    assert "\n" not in str(error.value)
    with pytest.raises(InputError, match="line 1 .*<html>"):
        parse_metrics("<html><body>Not Found</body></html>")


@pytest.mark.parametrize("text, message", [
    ('node_cpu_seconds_total{cpu="0"} 12.5\n', "does not look like vLLM or SGLang"),
    ("# HELP nothing here\n", "does not look like vLLM or SGLang"),
    ("vllm:some_other_metric 1\n", "none of the KV-cache or queue figures"),
    ("vllm:num_requests_running 1\nsglang:num_running_reqs 2\n", "mixes vLLM and SGLang"),
    ("   \n", "empty"),
])
def test_text_without_known_metrics_is_refused_with_a_reason(text, message):
    with pytest.raises(InputError, match=message):
        parse_metrics(text)


def test_reading_metrics_imports_neither_torch_nor_transformers():
    code = ("import sys, kvviz.serving.metrics\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----- fetching -------------------------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path == "/metrics":
            body = VLLM_TEXT.encode()
        elif self.path == "/huge":
            body = b"vllm:num_requests_running 1\n" * 100
        else:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture(scope="module")
def metrics_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_fetch_reads_a_metrics_page_over_http(metrics_server):
    text = fetch_metrics(f"{metrics_server}/metrics")
    assert text == VLLM_TEXT
    assert parse_metrics(text).running == 14


def test_fetch_refuses_an_answer_over_the_size_limit(metrics_server):
    size = len(b"vllm:num_requests_running 1\n" * 100)
    assert len(fetch_metrics(f"{metrics_server}/huge", max_bytes=size)) == size  # exactly the limit is fine
    with pytest.raises(InputError, match=f"larger than {size - 1:,} bytes"):
        fetch_metrics(f"{metrics_server}/huge", max_bytes=size - 1)


def test_fetch_reports_an_http_error_status(metrics_server):
    with pytest.raises(InputError, match="answered HTTP 404"):
        fetch_metrics(f"{metrics_server}/nothing-here")


def test_fetch_reports_a_refused_connection():
    with socket.socket() as probe:  # a port nothing listens on: bound, then released
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(InputError, match="connection was refused"):
        fetch_metrics(f"http://127.0.0.1:{port}/metrics", timeout_s=2)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/metrics", "localhost:8000/metrics", ""])
def test_fetch_accepts_only_http_and_https_addresses(url):
    with pytest.raises(InputError, match="http:// or https://"):
        fetch_metrics(url)


# ----- a kvviz run, read as vLLM would report it ----------------------------------------------------------------

@pytest.fixture(scope="module")
def shared_prefix_trace(untied_llama):
    shared = tuple(b"the shared prefix!! ")  # 20 tokens: five full blocks of 4
    requests = [ServingRequest(f"r{i}", shared + tuple(range(40 + 7 * i, 43 + 9 * i)), 4, arrival_step=2 * i)
                for i in range(3)]
    return run_requests(untied_llama, requests, block_size=BLOCK, num_blocks=40)


def test_live_metrics_count_prefix_queries_and_hits_in_tokens_per_admission(shared_prefix_trace):
    trace = shared_prefix_trace
    metrics = live_metrics(trace)
    assert metrics.engine == "kvviz" and metrics.model == trace.model and metrics.block_size == BLOCK
    assert metrics.prefix_cache_queries == sum(len(r.prompt_ids) for r in trace.requests)  # no preemption here
    assert metrics.prefix_cache_hits == sum(o.cached_prefix_tokens for o in trace.outcomes)
    assert metrics.prefix_cache_hits > 0  # later requests found the shared prefix
    assert metrics.prefix_hit_rate == pytest.approx(metrics.prefix_cache_hits / metrics.prefix_cache_queries)
    assert metrics.pool_tokens == trace.num_blocks * BLOCK and metrics.preemptions == 0
    assert metrics.missing == ()


def test_live_metrics_after_a_step_read_that_step_as_a_gauge_would(shared_prefix_trace):
    trace = shared_prefix_trace
    for step in trace.steps:
        metrics = live_metrics(trace, step.index)
        held = sum(1 for block in step.blocks if block.ref_count > 0)
        assert metrics.kv_cache_usage == pytest.approx(held / trace.num_blocks)
        states = [view.state for view in step.requests]
        assert metrics.running == states.count("prefilling") + states.count("decoding")
        assert metrics.waiting == states.count("waiting") + states.count("preempted")
        admitted = [e for s in trace.steps if s.index <= step.index for e in s.batch if e.admitted]
        assert metrics.prefix_cache_queries == sum(e.queried_tokens for e in admitted)
    first = live_metrics(trace, trace.steps[0].index)
    assert (first.running, first.prefix_cache_queries, first.prefix_cache_hits) == (1, 23, 0)
    assert live_metrics(trace).kv_cache_usage == 0  # all done: the finished requests' blocks are only cached
    with pytest.raises(InputError, match="no step"):
        live_metrics(trace, -1)


def test_live_metrics_count_a_preempted_request_again_with_the_tokens_it_had_generated(untied_llama):
    requests = [ServingRequest(f"p{i}", tuple(range(10 + i, 18 + i)), 24) for i in range(4)]
    trace = run_requests(untied_llama, requests, block_size=BLOCK, num_blocks=16, safety_margin=0.0)
    metrics = live_metrics(trace)
    assert metrics.preemptions == trace.summary.preemptions >= 1
    previous, admissions, folded_total = {}, 0, 0
    for step in trace.steps:
        for entry in step.batch:
            if entry.admitted:
                before = previous.get(entry.request_id)
                folded = before.generated if before is not None and before.state == "preempted" else 0
                assert entry.queried_tokens == 8 + folded  # the prompt, and what it had generated before
                admissions += 1
                folded_total += folded
        previous = {view.request_id: view for view in step.requests}
    assert admissions == 4 + metrics.preemptions and folded_total > 0
    assert metrics.prefix_cache_queries == 8 * admissions + folded_total


def test_live_metrics_without_prefix_sharing_have_no_prefix_figures(untied_llama):
    requests = [ServingRequest("a", tuple(range(30, 42)), 3), ServingRequest("b", tuple(range(30, 42)), 3, 1)]
    trace = run_requests(untied_llama, requests, block_size=BLOCK, num_blocks=16, prefix_sharing=False)
    metrics = live_metrics(trace)
    assert metrics.prefix_cache_queries is metrics.prefix_cache_hits is metrics.prefix_hit_rate is None
    assert {"prefix_cache_queries", "prefix_cache_hits", "prefix_hit_rate"} == set(metrics.missing)
