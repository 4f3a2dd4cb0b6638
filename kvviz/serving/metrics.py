"""The production view: what a vLLM or SGLang server says about its KV cache, beside the same figures of a kvviz run.

``parse_metrics`` reads a server's Prometheus text (its ``/metrics`` page) with ``prometheus_client``'s own parser
into a ``ServerMetrics`` record: KV-cache usage, prefix-cache queries and hits, running and waiting requests,
preemptions. ``fetch_metrics`` downloads that text, only when asked, over http or https, with a time and size
limit. ``live_metrics`` turns a kvviz ``ServingTrace`` into the same record, counted as vLLM counts.

The names come from the engines' source, not from guesses:

- vLLM, ``vllm/v1/metrics/loggers.py`` (``PrometheusStatLogger``; read at vllm-project/vllm 005a810bc40f, a
  v0.10-era V1 tree): gauges ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
  ``vllm:kv_cache_usage_perc`` (a fraction, 1 = full, despite the name; ``vllm:gpu_cache_usage_perc`` before 0.9),
  counters ``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits`` (``vllm:gpu_prefix_cache_*`` before 0.9) and
  ``vllm:num_preemptions``, exposed with a ``_total`` suffix, and the info gauge ``vllm:cache_config_info`` whose
  labels carry ``block_size`` and ``num_gpu_blocks``. Labels ``model_name`` and ``engine`` (one per
  data-parallel engine). Queries and hits count *tokens*: ``KVCacheManager.get_computed_blocks``
  (``vllm/v1/core/kv_cache_manager.py``) adds ``request.num_tokens`` to queries and the tokens of the matched
  blocks to hits each time a request is scheduled from the waiting queue (again after a preemption).
- SGLang, ``python/sglang/srt/metrics/collector.py`` (``SchedulerMetricsCollector``; read at sgl-project/sglang
  00ae9c1590d2): gauges ``sglang:token_usage`` (used / pool tokens), ``sglang:cache_hit_rate`` (hit tokens over
  hit + computed tokens of the last logged prefill batch, not since start), ``sglang:num_running_reqs``,
  ``sglang:num_queue_reqs``, ``sglang:max_total_num_tokens``; counters ``sglang:num_retracted_requests`` (SGLang
  "retracts" what vLLM "preempts") and ``sglang:realtime_tokens`` with ``mode`` = ``prefill_cache`` /
  ``prefill_compute`` (tokens since start, read here as prefix hits and misses). Label ``model_name`` and ranks.

What it does not do: scrape on a schedule, keep history, compute rates over time (every counter is read as the
total since the server started), or read histograms; it never contacts a server unless ``fetch_metrics`` is called.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from kvviz.errors import InputError, first_line
from kvviz.serving.accounting import HOLDING_STATES
from kvviz.serving.records import ServerMetrics, ServingTrace

WAITING_STATES = ("waiting", "preempted")
READ_FIELDS = ("kv_cache_usage", "prefix_cache_queries", "prefix_cache_hits", "prefix_hit_rate", "running",
               "waiting", "preemptions", "pool_tokens", "block_size")
MAX_BYTES = 2_000_000

Samples = dict[str, list[tuple[dict[str, str], float]]]  # sample name → (labels, value) of every series

# Example texts, written by hand from each engine's metric definitions (see their first lines): for the page's
# "Or an example" and the tests.
_EXAMPLES_DIR = Path(__file__).parent / "examples"
EXAMPLES = {"vLLM": _EXAMPLES_DIR / "metrics_vllm.txt", "SGLang": _EXAMPLES_DIR / "metrics_sglang.txt"}


def example_metrics(name: str) -> str:
    """The text of example ``name`` (a key of ``EXAMPLES``)."""
    if name not in EXAMPLES:
        raise InputError(f"No example called '{name}': choose one of {', '.join(EXAMPLES)}.")
    return EXAMPLES[name].read_text()


def metrics_row(metrics: ServerMetrics, source: str) -> dict[str, str]:
    """One table row for the page: every figure as text, '—' where the source did not have it."""
    def number(value: float | int | None, pattern: str = "{:,}") -> str:
        return "—" if value is None else pattern.format(value)

    return {
        "source": source,
        "engine": metrics.engine,
        "model": metrics.model or ", ".join(metrics.models) or "—",
        "KV-cache usage": number(metrics.kv_cache_usage, "{:.1%}"),
        "pool (tokens)": number(metrics.pool_tokens),
        "prefix queries (tokens)": number(metrics.prefix_cache_queries),
        "prefix hits (tokens)": number(metrics.prefix_cache_hits),
        "prefix hit rate": number(metrics.prefix_hit_rate, "{:.1%}"),
        "running": number(metrics.running),
        "waiting": number(metrics.waiting),
        "preemptions": number(metrics.preemptions),
    }


# ----- reading the text -----------------------------------------------------------------------------------------

def parse_metrics(text: str) -> ServerMetrics:
    """The KV-cache and queue figures in a vLLM or SGLang server's Prometheus text.

    Raises ``InputError`` when the text is not in the Prometheus text format, or names no metric of either engine.
    """
    if not text or not text.strip():
        raise InputError("The metrics text is empty: paste what the server's /metrics page shows.")
    samples = _read_samples(text)
    vllm = any(name.startswith("vllm:") for name in samples)
    sglang = any(name.startswith("sglang:") for name in samples)
    if vllm and sglang:
        raise InputError("This text mixes vLLM and SGLang metrics: paste the /metrics page of one server.")
    if not (vllm or sglang):
        raise InputError("This does not look like vLLM or SGLang metrics: no metric is named vllm:… or sglang:….")
    read = _read_vllm if vllm else _read_sglang
    models = sorted({labels["model_name"] for series in samples.values() for labels, _ in series
                     if "model_name" in labels})
    metrics = read(samples, "vllm" if vllm else "sglang")
    if all(getattr(metrics, name) is None for name in READ_FIELDS if name not in ("pool_tokens", "block_size")):
        raise InputError(f"This looks like {'vLLM' if vllm else 'SGLang'} metrics but has none of the KV-cache or "
                         "queue figures kvviz reads (KV usage, prefix cache, running, waiting, preemptions).")
    per_model: tuple[ServerMetrics, ...] = ()
    if len(models) > 1:
        per_model = tuple(
            _with_model(read(_only_model(samples, model), metrics.engine), model, (model,)) for model in models
        )
    return _with_model(metrics, models[0] if len(models) == 1 else None, tuple(models), per_model)


def _read_samples(text: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = defaultdict(list)
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[sample.name].append((dict(sample.labels), float(sample.value)))
    except (ValueError, TypeError, KeyError, IndexError) as error:
        raise InputError(f"Could not read the metrics text: {_where(text, error)}") from None
    return samples


def _where(text: str, error: Exception) -> str:
    """The first line the parser refuses on its own, with the parser's reason; the whole text's reason otherwise."""
    from prometheus_client.parser import text_string_to_metric_families

    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            list(text_string_to_metric_families(line + "\n"))
        except (ValueError, TypeError, KeyError, IndexError) as line_error:
            shown = line.strip() if len(line.strip()) <= 60 else line.strip()[:57] + "..."
            return f"line {number} ({shown!r}) is not in the Prometheus text format ({first_line(line_error, 80)})."
    return f"it is not in the Prometheus text format ({first_line(error, 80)})."


# ----- vLLM and SGLang ------------------------------------------------------------------------------------------

def _read_vllm(samples: Samples, engine: str) -> ServerMetrics:
    queries = _counter(samples, "vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries")
    hits = _counter(samples, "vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits")
    pool_tokens, block_size = _vllm_pool(samples.get("vllm:cache_config_info", []))
    return _record(
        engine,
        kv_cache_usage=_mean(samples, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        prefix_cache_queries=_whole(queries),
        prefix_cache_hits=_whole(hits),
        prefix_hit_rate=hits / queries if queries and hits is not None else None,
        running=_whole(_sum(samples, "vllm:num_requests_running")),
        waiting=_whole(_sum(samples, "vllm:num_requests_waiting")),
        preemptions=_whole(_counter(samples, "vllm:num_preemptions")),
        pool_tokens=pool_tokens,
        block_size=block_size,
    )


def _vllm_pool(series: list[tuple[dict[str, str], float]]) -> tuple[int | None, int | None]:
    """Pool tokens (every engine's blocks × block size) and the block size, from ``vllm:cache_config_info``."""
    total, sizes = 0, set()
    for labels, _ in series:
        try:
            blocks, size = int(labels["num_gpu_blocks"]), int(labels["block_size"])
        except (KeyError, ValueError):  # "None" before the engine has profiled its memory
            continue
        total += blocks * size
        sizes.add(size)
    return (total or None), (sizes.pop() if len(sizes) == 1 else None)


def _read_sglang(samples: Samples, engine: str) -> ServerMetrics:
    hits = _counter_where(samples, "sglang:realtime_tokens", mode="prefill_cache")
    computed = _counter_where(samples, "sglang:realtime_tokens", mode="prefill_compute")
    return _record(
        engine,
        kv_cache_usage=_mean(samples, "sglang:token_usage"),
        prefix_cache_queries=_whole(hits + computed) if hits is not None and computed is not None else None,
        prefix_cache_hits=_whole(hits),
        prefix_hit_rate=_mean(samples, "sglang:cache_hit_rate"),
        running=_whole(_sum(samples, "sglang:num_running_reqs")),
        waiting=_whole(_sum(samples, "sglang:num_queue_reqs")),
        preemptions=_whole(_counter(samples, "sglang:num_retracted_requests")),
        pool_tokens=_whole(_sum(samples, "sglang:max_total_num_tokens")),
        block_size=None,
    )


def _values(samples: Samples, name: str) -> list[float]:
    return [value for _, value in samples.get(name, []) if not math.isnan(value)]


def _sum(samples: Samples, *names: str) -> float | None:
    """The sum over label sets of the first of ``names`` present."""
    for name in names:
        values = _values(samples, name)
        if values:
            return sum(values)
    return None


def _mean(samples: Samples, *names: str) -> float | None:
    for name in names:
        values = _values(samples, name)
        if values:
            return sum(values) / len(values)
    return None


def _counter(samples: Samples, *names: str) -> float | None:
    """A counter's total: its ``_total`` sample, or the bare name where the text gave no type."""
    return _sum(samples, *(variant for name in names for variant in (f"{name}_total", name)))


def _counter_where(samples: Samples, name: str, **wanted: str) -> float | None:
    for variant in (f"{name}_total", name):
        values = [value for labels, value in samples.get(variant, [])
                  if all(labels.get(key) == value_ for key, value_ in wanted.items())]
        if values:
            return sum(values)
    return None


def _only_model(samples: Samples, model: str) -> Samples:
    kept: Samples = defaultdict(list)
    for name, series in samples.items():
        kept[name] = [(labels, value) for labels, value in series if labels.get("model_name", model) == model]
    return kept


def _whole(value: float | None) -> int | None:
    return None if value is None else int(round(value))


def _record(engine: str, **fields: float | int | None) -> ServerMetrics:
    missing = tuple(name for name in READ_FIELDS if fields[name] is None)
    return ServerMetrics(engine=engine, missing=missing, **fields)  # type: ignore[arg-type]


def _with_model(metrics: ServerMetrics, model: str | None, models: tuple[str, ...],
                per_model: tuple[ServerMetrics, ...] = ()) -> ServerMetrics:
    return replace(metrics, model=model, models=models, per_model=per_model)


# ----- fetching -------------------------------------------------------------------------------------------------

def fetch_metrics(url: str, timeout_s: float = 5.0, max_bytes: int = MAX_BYTES) -> str:
    """The text at ``url`` (a server's ``/metrics``), over http or https, within ``timeout_s`` and ``max_bytes``.

    Raises ``InputError`` with one sentence for a bad address, a refused or silent server, an HTTP error status or
    an answer larger than ``max_bytes`` (read up to one byte past the limit, then refused).
    """
    address = url.strip()
    parts = urllib.parse.urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"Give an http:// or https:// address, such as http://localhost:8000/metrics "
                         f"(got '{address[:80]}').")
    opener = _http_only_opener()
    request = urllib.request.Request(address, headers={"Accept": "text/plain"})
    try:
        with opener.open(request, timeout=timeout_s) as response:
            body = response.read(max_bytes + 1)
            charset = response.headers.get_content_charset() or "utf-8"
    except urllib.error.HTTPError as error:
        raise InputError(f"{address} answered HTTP {error.code} {error.reason}.") from None
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, TimeoutError):
            raise InputError(f"No answer from {address} within {timeout_s:g} s.") from None
        if isinstance(reason, ConnectionRefusedError):
            raise InputError(f"Could not reach {address}: the connection was refused (is the server running?).") \
                from None
        why = first_line(reason) if isinstance(reason, BaseException) else str(reason)
        raise InputError(f"Could not reach {address}: {why}.") from None
    except TimeoutError:
        raise InputError(f"No answer from {address} within {timeout_s:g} s.") from None
    except (OSError, ValueError) as error:
        raise InputError(f"Could not read {address}: {first_line(error)}.") from None
    if len(body) > max_bytes:
        raise InputError(f"The answer from {address} is larger than {max_bytes:,} bytes: is this a /metrics page?")
    return body.decode(charset, errors="replace")


def _http_only_opener() -> urllib.request.OpenerDirector:
    """An opener with http and https handlers only, so a redirect cannot lead to ftp:// or file://."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), urllib.request.HTTPHandler(),
                    urllib.request.HTTPSHandler(), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPRedirectHandler(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


# ----- a kvviz run in the same shape ----------------------------------------------------------------------------

def live_metrics(trace: ServingTrace, step: int | None = None) -> ServerMetrics:
    """What vLLM's /metrics would say after step ``step`` (default: the last) of a kvviz run.

    ``kv_cache_usage`` is blocks held by requests over pool blocks (a block kept only for prefix reuse counts as
    free, as vLLM's ``BlockPool.get_usage`` counts it); prefix queries and hits are tokens, added at each
    admission (a request admitted again after a preemption is counted again), as vLLM adds them; preemptions are
    counted since the first step; running and waiting are the requests holding blocks and the arrived ones queued.
    Without prefix sharing there are no queries or hits (vLLM counts none with prefix caching off).
    """
    steps = [s for s in trace.steps if step is None or s.index <= step]
    if not steps:
        raise InputError(f"The run has no step at or before step {step}." if step is not None
                         else "The run has no steps yet: step it first.")
    last = steps[-1]
    held = sum(1 for block in last.blocks if block.ref_count > 0)
    cached = sum(1 for block in last.blocks if block.cached and block.ref_count == 0)
    pool_blocks = held + cached + last.free_blocks
    admissions = [entry for s in steps for entry in s.batch if entry.admitted]
    queries = sum(entry.queried_tokens for entry in admissions) if trace.prefix_sharing else None
    hits = sum(entry.cached_prefix_tokens for entry in admissions) if trace.prefix_sharing else None
    states = [view.state for view in last.requests]
    metrics = _record(
        "kvviz",
        kv_cache_usage=held / pool_blocks if pool_blocks else None,
        prefix_cache_queries=queries,
        prefix_cache_hits=hits,
        prefix_hit_rate=hits / queries if queries and hits is not None else None,
        running=sum(states.count(state) for state in HOLDING_STATES),
        waiting=sum(states.count(state) for state in WAITING_STATES),
        preemptions=sum(len(s.preempted) for s in steps),
        pool_tokens=pool_blocks * trace.block_size,
        block_size=trace.block_size,
    )
    return _with_model(metrics, trace.model, (trace.model,))
