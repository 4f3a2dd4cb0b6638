"""Benchmark results: what ``kvviz bench`` and the Speed page measured, and the documented JSON format.

Every figure is milliseconds of wall-clock time, device-synchronised, from feeding a step's input to holding the
chosen token id on the host (the ``graphs`` path with ``graphs_steps`` K > 1: from one replay of K steps to holding
their K tokens, shared equally among them). A *run* is a prefill followed by ``tokens - 1`` decode steps (the prefill already
chooses the first new token). Decode step ``k`` (1-based) feeds the token chosen before it; its ``position`` is
the number of tokens in the context once that token is in: ``prompt_tokens + k``.

JSON format (``format: "kvviz-bench"``, ``format_version: 1``; ``docs/bench-format.md`` explains each field)::

    {
      "format": "kvviz-bench", "format_version": 1, "created": "2025-01-01T12:00:00+00:00",
      "complete": true,                      # false when stopped before every run finished
      "wall_seconds": 95.2,                  # the whole benchmark, warm-up and setup included
      "environment": {"model", "model_name", "architecture", "parameters", "device", "device_name", "dtype",
                      "torch", "transformers", "kvviz", "python", "platform", "threads", "cuda",
                      "load_average", "cpus", "weights_bytes"},
      "config": {"tokens", "prompt_tokens", "paths", "repeats", "naive_repeats", "warmup_tokens",
                 "graphs_compile", "graphs_steps"},
      "peak": {"memory_bytes_per_s", "memory_source", "flops_per_s", "flops_source"},
      "reference_path": "dynamic",           # the path whose tokens the others are checked against
      "paths": [{
          "path": "dynamic", "label": "...", "status": "ok" | "skipped" | "failed" | "stopped", "reason": "",
          "runs": 3,                         # timed runs that finished
          "tokens": [...],                   # token ids of the first timed run (prefill's token first)
          "matches_reference": true, "first_mismatch": null,   # index into tokens of the first difference
          "prefill_ms": {"median", "min", "max"},
          "ms_per_token": {"median", "min", "max"},   # per run: mean decode-step time; then across runs
          "total_ms": {"median", "min", "max"},       # per run: prefill + every decode step
          "cold": {"setup_ms", "prefill_ms", "first_step_ms"},  # the path's first calls (warm-up), not in the stats
          "steps": {"position": [...], "median_ms": [...], "min_ms": [...], "max_ms": [...],
                    "tokens_processed": [...], "flops": [...], "bytes": [...]},  # one entry per decode step
          "engine": null | {"name", "version", "device", "model_file", "file_bytes", "weights_bytes",
                            "weights_type", "kv_type", "n_ctx", "kv_bytes", "kv_mib_reported", "threads",
                            "eval_ms_per_token", "prompt_eval_ms", "forced_matches", "forced_positions",
                            "forced_max_gap"}   # an outside engine's own facts (llamacpp)
      }, ...],
      "summary": {                           # derived from the above, for readers without kvviz
          "all_match": true,
          "naive_fit": {"a_ms", "b_ms", "r2", "points"} | null,   # naive cumulative ms ≈ a·n + b·n²
          "naive_step_fit": {"intercept_ms", "slope_ms_per_token", "r2", "points"} | null,  # naive step ms ≈ c + d·T
          "crossover_position": {"<path>": int | null, ...},       # from here on the path beats naive each step
          "predicted_crossover_position": {"<path>": float | null, ...},   # the same from the naive fit
          "growth": {"<path>": float | null, ...},                 # median of last 10 steps / steps 5–15
          "speedup_vs_naive": {"<path>": float | null, ...},       # naive total / path total
          "cumulative_fit": {"<path>": {"a_ms", "b_ms", "r2", "points"} | null, ...}   # path cumulative ≈ a·n + b·n²
      }
    }

``generate`` has no per-step series (transformers' ``generate()`` returns only when done): its ``steps`` lists
are empty, its ``ms_per_token`` is its total time over the N tokens, and its ``prefill_ms`` is a separate
one-token ``generate()`` call (its time to first token).

``llamacpp`` runs the same prompt token ids through llama.cpp (``llama-cpp-python``) on the default model's own GGUF
file: its weights are read as stored (Q4_1), its cache is llama.cpp's (f16), and ``engine`` records both.

``DevicePeak`` (the roofs: peak bandwidth and compute) is stored with every result; ``roofline.py`` finds the
figures.

What it does not do: run anything (``bench.py``), draw (``charts/speed.py``), or import torch or transformers (a
test checks it): a result file can be read without them.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

FORMAT = "kvviz-bench"
FORMAT_VERSION = 1

# Path names in the order they run and are shown; each measures a different decode loop over the same tokens.
PATHS: tuple[str, ...] = ("naive", "dynamic", "kvviz", "static", "graphs", "generate", "llamacpp")
PATH_LABELS: dict[str, str] = {
    "naive": "naive: full recompute each step (kvviz NaiveStepper)",
    "dynamic": "dynamic: transformers DynamicCache, hand loop",
    "kvviz": "kvviz: the app's Stepper (InstrumentedCache), capture off",
    "static": "static: preallocated StaticCache written in place",
    "graphs": "graphs: StaticCache decode step replayed as a CUDA graph",
    "generate": "generate: transformers generate(), total time / tokens",
    "llamacpp": "llamacpp: llama.cpp on the model's GGUF file (weights as stored, f16 cache)",
}
CACHED_PATHS: tuple[str, ...] = ("dynamic", "kvviz", "static", "graphs", "generate", "llamacpp")


@dataclass(frozen=True)
class DevicePeak:
    """The roofs of the roofline: what the device can move and compute at best, and where each figure came from."""

    memory_bytes_per_s: float
    memory_source: str
    flops_per_s: float
    flops_source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "memory_bytes_per_s": self.memory_bytes_per_s, "memory_source": self.memory_source,
            "flops_per_s": self.flops_per_s, "flops_source": self.flops_source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DevicePeak":
        return cls(float(data["memory_bytes_per_s"]), str(data["memory_source"]), float(data["flops_per_s"]),
                   str(data["flops_source"]))


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. ``tokens`` new tokens per run: one prefill, then ``tokens - 1`` decode steps."""

    tokens: int = 64
    prompt_tokens: int = 32
    paths: tuple[str, ...] = PATHS
    repeats: int = 3
    # The naive path is O(T²) in time; its growth dwarfs run-to-run noise, so one timed run is the default.
    naive_repeats: int = 1
    warmup_tokens: int = 4
    graphs_compile: bool = False  # graphs path: torch.compile the decode step before capturing it
    graphs_steps: int = 1  # graphs path: decode steps per replay, their time shared equally among their tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens, "prompt_tokens": self.prompt_tokens, "paths": list(self.paths),
            "repeats": self.repeats, "naive_repeats": self.naive_repeats, "warmup_tokens": self.warmup_tokens,
            "graphs_compile": self.graphs_compile, "graphs_steps": self.graphs_steps,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchConfig":
        return cls(
            tokens=int(data["tokens"]), prompt_tokens=int(data["prompt_tokens"]), paths=tuple(data["paths"]),
            repeats=int(data["repeats"]), naive_repeats=int(data["naive_repeats"]),
            warmup_tokens=int(data["warmup_tokens"]), graphs_compile=bool(data["graphs_compile"]),
            graphs_steps=int(data.get("graphs_steps", 1)),  # results written before it existed replayed one step
        )

    def runs_for(self, path: str) -> int:
        return self.naive_repeats if path == "naive" else self.repeats


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements and their min–max range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        return cls(float(statistics.median(values)), float(min(values)), float(max(values)))

    def to_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Spread | None":
        return None if data is None else cls(float(data["median"]), float(data["min"]), float(data["max"]))


@dataclass(frozen=True)
class StepSeries:
    """Per decode step, across runs: latency median/min/max and the work the step had to do."""

    position: tuple[int, ...] = ()
    median_ms: tuple[float, ...] = ()
    low_ms: tuple[float, ...] = ()
    high_ms: tuple[float, ...] = ()
    tokens_processed: tuple[int, ...] = ()
    flops: tuple[float, ...] = ()
    bytes_moved: tuple[float, ...] = ()

    def __len__(self) -> int:
        return len(self.position)

    def to_dict(self) -> dict[str, list]:
        return {
            "position": list(self.position), "median_ms": list(self.median_ms), "min_ms": list(self.low_ms),
            "max_ms": list(self.high_ms), "tokens_processed": list(self.tokens_processed),
            "flops": list(self.flops), "bytes": list(self.bytes_moved),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StepSeries":
        return cls(
            tuple(int(v) for v in data["position"]), tuple(float(v) for v in data["median_ms"]),
            tuple(float(v) for v in data["min_ms"]), tuple(float(v) for v in data["max_ms"]),
            tuple(int(v) for v in data["tokens_processed"]), tuple(float(v) for v in data["flops"]),
            tuple(float(v) for v in data["bytes"]),
        )

    def ms_at(self, position: int) -> float | None:
        """Median latency of the step at ``position`` (None when that step was not measured)."""
        try:
            return self.median_ms[self.position.index(position)]
        except ValueError:
            return None


@dataclass(frozen=True)
class EngineInfo:
    """What an outside engine (llama.cpp) reports about its own run: its weights file, its cache, its own clock.

    ``kv_bytes`` is kvviz's formula (``kv_formula.kv_cache_bytes``) for ``n_ctx`` positions at ``kv_type``;
    ``kv_mib_reported`` is the size the engine logged when it allocated its cache, in MiB to two decimals as it
    prints it (None when it did not say). ``eval_ms_per_token`` and ``prompt_eval_ms`` come from the engine's own
    performance counters (medians over the timed runs), beside the wall clock that every path is timed with.
    """

    name: str
    version: str
    device: str
    model_file: str
    file_bytes: int
    weights_bytes: int  # bytes of the weight tensors as the engine holds them, read once per decode step
    weights_type: str
    kv_type: str  # as the engine names it ("f16")
    n_ctx: int
    kv_bytes: int
    kv_mib_reported: float | None
    threads: int
    eval_ms_per_token: float | None = None
    prompt_eval_ms: float | None = None
    # Fed the reference path's tokens one by one (untimed, after the runs): the positions where the engine's greedy
    # choice was the reference's, out of how many, and where it was not, its top logit's largest lead.
    forced_matches: int | None = None
    forced_positions: int | None = None
    forced_max_gap: float | None = None

    @property
    def kv_log_agrees(self) -> bool | None:
        """Whether the logged size equals the formula's to the log's two decimals (None without a log)."""
        if self.kv_mib_reported is None:
            return None
        return abs(self.kv_bytes / 2**20 - self.kv_mib_reported) <= 0.005 + 1e-9

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "EngineInfo | None":
        if data is None:
            return None
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class PathResult:
    """One decode path: its tokens, whether they match the reference, and its timings."""

    path: str
    label: str
    status: str  # "ok", "skipped", "failed" or "stopped"
    reason: str = ""
    runs: int = 0
    tokens: tuple[int, ...] = ()
    matches_reference: bool | None = None
    first_mismatch: int | None = None
    prefill_ms: Spread | None = None
    ms_per_token: Spread | None = None
    total_ms: Spread | None = None
    cold_setup_ms: float | None = None  # one-off work before the first run (graph capture, compilation)
    cold_prefill_ms: float | None = None
    cold_first_step_ms: float | None = None
    steps: StepSeries = field(default_factory=StepSeries)
    engine: EngineInfo | None = None  # set by paths that run an outside engine (llamacpp)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        spread = lambda s: s.to_dict() if s is not None else None  # noqa: E731
        return {
            "path": self.path, "label": self.label, "status": self.status, "reason": self.reason,
            "runs": self.runs, "tokens": list(self.tokens), "matches_reference": self.matches_reference,
            "first_mismatch": self.first_mismatch, "prefill_ms": spread(self.prefill_ms),
            "ms_per_token": spread(self.ms_per_token), "total_ms": spread(self.total_ms),
            "cold": {"setup_ms": self.cold_setup_ms, "prefill_ms": self.cold_prefill_ms,
                     "first_step_ms": self.cold_first_step_ms},
            "steps": self.steps.to_dict(),
            "engine": self.engine.to_dict() if self.engine is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PathResult":
        cold = data.get("cold") or {}
        status = str(data["status"])
        if status not in PATH_STATUSES:
            raise ValueError(f"path {data['path']!s} has the unknown status {status!r}")
        if status == "ok":
            missing = [name for name in ("prefill_ms", "ms_per_token", "total_ms") if not data.get(name)]
            if missing:
                raise ValueError(f"path {data['path']!s} is 'ok' but has no {', '.join(missing)}")
        return cls(
            path=str(data["path"]), label=str(data.get("label", data["path"])), status=status,
            reason=str(data.get("reason", "")), runs=int(data.get("runs", 0)),
            tokens=tuple(int(t) for t in data.get("tokens", ())), matches_reference=data.get("matches_reference"),
            first_mismatch=data.get("first_mismatch"), prefill_ms=Spread.from_dict(data.get("prefill_ms")),
            ms_per_token=Spread.from_dict(data.get("ms_per_token")), total_ms=Spread.from_dict(data.get("total_ms")),
            cold_setup_ms=cold.get("setup_ms"), cold_prefill_ms=cold.get("prefill_ms"),
            cold_first_step_ms=cold.get("first_step_ms"), steps=StepSeries.from_dict(data["steps"]),
            engine=EngineInfo.from_dict(data.get("engine")),
        )


PATH_STATUSES = ("ok", "skipped", "failed", "stopped")
# Timed runs of one path whose slowest is more than this many times its fastest: something else used the machine.
NOISY_RATIO = 1.5


@dataclass(frozen=True)
class Environment:
    """What the numbers were measured on: every result carries it."""

    model: str
    model_name: str
    architecture: str
    parameters: int
    device: str
    device_name: str
    dtype: str
    torch: str
    transformers: str
    kvviz: str
    python: str
    platform: str
    threads: int
    cuda: str | None
    load_average: float | None = None  # 1-minute load when the benchmark started: a busy machine times slower
    cpus: int | None = None
    weights_bytes: int | None = None  # bytes of weights one forward call of the PyTorch model reads

    @property
    def busy(self) -> bool:
        """Whether other work was competing for the CPUs when the benchmark started."""
        return self.load_average is not None and self.cpus is not None and self.load_average > self.cpus
    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Environment":
        # None is a real value for these (no CUDA, not read, written before the field existed).
        optional = ("cuda", "load_average", "cpus", "weights_bytes")
        missing = [name for name in cls.__dataclass_fields__ if name not in optional and data.get(name) is None]
        if missing:
            raise KeyError(f"environment.{missing[0]}")
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})

    def describe(self) -> str:
        """One line for chart notes and the CLI header."""
        load = f" · load {self.load_average:.1f}" if self.load_average is not None else ""
        return (f"{self.model_name} · {self.device} ({self.device_name}) · {self.dtype} · "
                f"torch {self.torch} · transformers {self.transformers}{load}")


@dataclass(frozen=True)
class QuadraticFit:
    """y ≈ a·x + b·x² (no constant: zero tokens take no time), least squares, with its R²."""

    a: float
    b: float
    r2: float
    points: int

    def predict(self, x: np.ndarray | float) -> np.ndarray | float:
        return self.a * x + self.b * np.square(x)


def fit_quadratic(x: Sequence[float], y: Sequence[float]) -> QuadraticFit | None:
    """Least-squares fit of ``y = a·x + b·x²``; None with fewer than 3 points (R² would be meaningless)."""
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.size < 3 or xs.size != ys.size:
        return None
    design = np.stack([xs, xs**2], axis=1)  # (points, 2)
    (a, b), *_ = np.linalg.lstsq(design, ys, rcond=None)
    return QuadraticFit(float(a), float(b), _r_squared(ys, design @ np.array([a, b])), int(xs.size))


def _r_squared(ys: np.ndarray, predicted: np.ndarray) -> float:
    """1 - residual / total sum of squares (1 for constant data, which any fit matches)."""
    residual = float(np.sum((ys - predicted) ** 2))
    total = float(np.sum((ys - ys.mean()) ** 2))
    return 1.0 - residual / total if total > 0 else 1.0


def _fit_dict(fit: QuadraticFit | None) -> dict[str, float] | None:
    return None if fit is None else {"a_ms": fit.a, "b_ms": fit.b, "r2": fit.r2, "points": fit.points}


@dataclass(frozen=True)
class Extrapolation:
    """A cumulative fit a·n + b·n² (ms) evaluated beyond the measured run: a prediction, labelled as one."""

    path: str
    fit: QuadraticFit
    measured_tokens: int  # new tokens the fit was made over
    tokens: int
    predicted_ms: float

    @property
    def beyond_measurement(self) -> bool:
        return self.tokens > self.measured_tokens


@dataclass(frozen=True)
class LinearFit:
    """y ≈ intercept + slope·x, least squares, with its R²."""

    intercept: float
    slope: float
    r2: float
    points: int


def fit_linear(x: Sequence[float], y: Sequence[float]) -> LinearFit | None:
    """Least-squares line through (x, y); None with fewer than 3 points."""
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.size < 3 or xs.size != ys.size or np.ptp(xs) == 0:
        return None
    slope, intercept = np.polyfit(xs, ys, 1)
    return LinearFit(float(intercept), float(slope), _r_squared(ys, intercept + slope * xs), int(xs.size))


@dataclass(frozen=True)
class BenchResult:
    """A whole benchmark: environment, settings, device peaks and one ``PathResult`` per requested path."""

    environment: Environment
    config: BenchConfig
    peak: DevicePeak
    paths: tuple[PathResult, ...]
    created: str
    wall_seconds: float
    complete: bool = True
    reference_path: str | None = None

    # ----- lookups ----------------------------------------------------------------------------------------------
    def path(self, name: str) -> PathResult | None:
        return next((p for p in self.paths if p.path == name), None)

    @property
    def measured(self) -> tuple[PathResult, ...]:
        return tuple(p for p in self.paths if p.ok)

    @property
    def all_match(self) -> bool:
        return all(p.matches_reference is not False for p in self.measured)

    # ----- analysis ---------------------------------------------------------------------------------------------
    def noisy_paths(self, ratio: float = NOISY_RATIO) -> tuple[PathResult, ...]:
        """Paths whose timed runs disagree: the slowest run's ms/token over ``ratio`` × the fastest's."""
        return tuple(p for p in self.measured if p.runs >= 2 and p.ms_per_token is not None
                     and p.ms_per_token.low > 0 and p.ms_per_token.high / p.ms_per_token.low > ratio)

    def cumulative(self, path: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(tokens generated n, median cumulative ms to produce them) for a stepped path, prefill included."""
        result = self.path(path)
        if result is None or not result.ok or result.prefill_ms is None or not len(result.steps):
            return None
        n = np.arange(1, len(result.steps) + 2, dtype=np.float64)
        ms = np.cumsum([result.prefill_ms.median, *result.steps.median_ms])
        return n, ms

    def naive_cumulative(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``cumulative("naive")``."""
        return self.cumulative("naive")

    def cumulative_fit(self, path: str) -> QuadraticFit | None:
        """A path's cumulative time ≈ a·n + b·n² over n new tokens (None without a per-step series).

        For naive, b carries the recompute (each step processes the whole context); for a cached path, b carries
        only the attention over a growing cache, and a the weights read once per token.
        """
        data = self.cumulative(path)
        return fit_quadratic(*data) if data is not None else None

    def naive_fit(self) -> QuadraticFit | None:
        """Naive cumulative time ≈ a·n + b·n²: each step recomputes the whole context, so the sum is quadratic."""
        return self.cumulative_fit("naive")

    def extrapolate(self, path: str, tokens: int) -> Extrapolation | None:
        """The path's cumulative fit evaluated at ``tokens`` new tokens (same prompt), or None without a fit."""
        fit = self.cumulative_fit(path)
        if fit is None:
            return None
        return Extrapolation(path, fit, fit.points, tokens, float(fit.predict(float(tokens))))

    def naive_step_fit(self) -> LinearFit | None:
        """Naive per-step ms ≈ c + d·position: the sharper test of the quadratic claim.

        A cumulative sum rises steadily whatever the steps do, so the cumulative fit's R² is near 1 almost always;
        the per-step line shows whether each step really costs more as the context grows (d > 0) and how cleanly.
        """
        naive = self.path("naive")
        if naive is None or not naive.ok or not len(naive.steps):
            return None
        return fit_linear(naive.steps.position, naive.steps.median_ms)

    def crossover_position(self, path: str) -> int | None:
        """The first position from which ``path`` is faster than naive at every later measured step."""
        naive, other = self.path("naive"), self.path(path)
        if naive is None or other is None or not naive.ok or not other.ok or not len(other.steps):
            return None
        naive_ms = dict(zip(naive.steps.position, naive.steps.median_ms))
        pairs = [(p, naive_ms[p], ms) for p, ms in zip(other.steps.position, other.steps.median_ms) if p in naive_ms]
        if not pairs:
            return None
        start = None
        for position, slow, fast in pairs:
            if fast < slow:
                start = position if start is None else start
            else:
                start = None
        return start

    def predicted_crossover_position(self, path: str) -> float | None:
        """Where the naive step time from the fit (a + b·(2n − 1)) first exceeds the path's median ms per token.

        Clamped to ``prompt_tokens`` (the first new token) when the fit has naive slower from the very start."""
        fit, other = self.naive_fit(), self.path(path)
        if fit is None or other is None or not other.ok or other.ms_per_token is None or fit.b <= 0:
            return None
        # The n-th token's naive cost is C(n) - C(n-1) = a + b(2n - 1); it equals the cached cost c at n*.
        n_star = (other.ms_per_token.median - fit.a + fit.b) / (2.0 * fit.b)
        return float(self.config.prompt_tokens + max(n_star, 1.0) - 1.0)

    def growth(self, path: str) -> float | None:
        """Latency at the end relative to early on: median of the last 10 steps over the median of steps 5–15."""
        result = self.path(path)
        if result is None or not result.ok or len(result.steps) < 25:
            return None
        ms = result.steps.median_ms
        return float(statistics.median(ms[-10:]) / statistics.median(ms[4:15]))

    def speedup_vs_naive(self, path: str) -> float | None:
        """End to end: the naive path's median total time for the run over this path's (same tokens, same N)."""
        naive, other = self.path("naive"), self.path(path)
        if naive is None or other is None or not naive.ok or not other.ok or not naive.total_ms or not other.total_ms:
            return None
        return naive.total_ms.median / other.total_ms.median

    def bandwidth_used(self, path: PathResult) -> np.ndarray:
        """Per decode step of ``path``: the bytes it must move over its median time, as a share of peak bandwidth."""
        steps = path.steps
        rate = np.asarray(steps.bytes_moved, dtype=np.float64) / (np.asarray(steps.median_ms) / 1000.0)
        return rate / self.peak.memory_bytes_per_s

    # ----- JSON -------------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        fit, step_fit = self.naive_fit(), self.naive_step_fit()
        names = [p.path for p in self.paths if p.path != "naive"]
        return {
            "all_match": self.all_match,
            "naive_fit": _fit_dict(fit),
            "naive_step_fit": None if step_fit is None else {
                "intercept_ms": step_fit.intercept, "slope_ms_per_token": step_fit.slope, "r2": step_fit.r2,
                "points": step_fit.points},
            "crossover_position": {name: self.crossover_position(name) for name in names},
            "predicted_crossover_position": {name: self.predicted_crossover_position(name) for name in names},
            "growth": {p.path: self.growth(p.path) for p in self.paths},
            "speedup_vs_naive": {name: self.speedup_vs_naive(name) for name in names},
            "cumulative_fit": {p.path: _fit_dict(self.cumulative_fit(p.path)) for p in self.paths},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": self.created,
            "complete": self.complete,
            "wall_seconds": self.wall_seconds,
            "environment": self.environment.to_dict(),
            "config": self.config.to_dict(),
            "peak": self.peak.to_dict(),
            "reference_path": self.reference_path,
            "paths": [p.to_dict() for p in self.paths],
            "summary": self.summary(),
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchResult":
        """Read a result written by ``to_dict`` (raises ValueError for anything else)."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a kvviz benchmark result (its 'format' is not 'kvviz-bench')")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"kvviz benchmark format version {data.get('format_version')} is not supported")
        try:
            return cls(
                environment=Environment.from_dict(data["environment"]),
                config=BenchConfig.from_dict(data["config"]),
                peak=DevicePeak.from_dict(data["peak"]),
                paths=tuple(PathResult.from_dict(p) for p in data["paths"]),
                created=str(data["created"]),
                wall_seconds=float(data["wall_seconds"]),
                complete=bool(data["complete"]),
                reference_path=data.get("reference_path"),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise ValueError(f"the benchmark result is missing or mistypes a field ({error})") from None

    @classmethod
    def from_json(cls, text: str) -> "BenchResult":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"not JSON ({error.msg} at line {error.lineno})") from None
        return cls.from_dict(data)


def check_tokens(paths: Sequence[PathResult]) -> tuple[tuple[PathResult, ...], str | None]:
    """Compare each measured path's tokens with the reference (``dynamic`` if it ran, else the first that ran)."""
    measured = [p for p in paths if p.ok and p.tokens]
    if not measured:
        return tuple(paths), None
    reference = next((p for p in measured if p.path == "dynamic"), measured[0])
    checked = []
    for result in paths:
        if not result.ok or not result.tokens:
            checked.append(result)
            continue
        mismatch = next((i for i, (x, y) in enumerate(zip(result.tokens, reference.tokens)) if x != y), None)
        if mismatch is None and len(result.tokens) != len(reference.tokens):
            mismatch = min(len(result.tokens), len(reference.tokens))
        checked.append(replace(result, matches_reference=mismatch is None, first_mismatch=mismatch))
    return tuple(checked), reference.path
