"""Benchmark runner: time the same greedy tokens through several decode paths (``python -m kvviz bench``, Speed).

Paths (``bench_results.PATHS``), each a loop that prefills a prompt and then decodes one token per step:

- ``naive``: kvviz's ``NaiveStepper``, which feeds the whole sequence every step (no cache): O(T) work per step.
- ``dynamic``: the plain transformers loop with a ``DynamicCache`` (keys and values grow by concatenation).
- ``kvviz``: kvviz's own ``Stepper`` (``InstrumentedCache``) with attention capture and K/V recording off, so
  the gap to ``dynamic`` is what the app's bookkeeping costs.
- ``static``: a transformers ``StaticCache`` preallocated for the whole run and written in place; the decode
  step reads its input token from, and writes its chosen token to, one fixed device buffer.
- ``graphs``: that same static decode step, with the argmax and every position kept on the device
  (``static_decode.StaticDecoder``), captured as a CUDA graph (optionally ``torch.compile``-d first) and replayed,
  so the CPU launches one graph instead of hundreds of kernels and reads the tokens back. ``graphs_steps`` steps
  can share one replay and one read (each token's time is then the replay's ÷ that number). CUDA only: on any other
  device the path is skipped with the reason, never imitated.
- ``generate``: transformers' ``generate()``, the reference people know; it only returns when done, so its
  per-token figure is its total time over the N tokens (prefill included; a separate one-token call gives its
  time to first token).
- ``llamacpp``: llama.cpp (``llama-cpp-python``, ``llamacpp_engine.py``) on the model's own GGUF file, fed the same
  prompt token ids and choosing greedily, on the CPU with its own f16 cache: a compiled engine reading the
  quantised weights as stored. Only models that ship as a GGUF file (the default model) have it; elsewhere, or
  without the package, the path is skipped with the reason.

Honest timing: every path first does one short warm-up run whose times are reported apart (``cold``: the path's
first calls in this process; only the first path measured also pays process-wide first-use costs); then
``repeats`` timed runs (``naive_repeats`` for the quadratic naive path), interleaved path by path so that a
machine getting busier or quieter affects every path alike. Each step is timed with ``DeviceTimer`` (device
synchronised) from feeding its input to holding the chosen token id on the host. Token ids are compared across
paths; a mismatch is reported, not hidden.

The loaded model is shared (the app serves many sessions with one): nothing here changes model-wide settings;
caches, buffers and graphs belong to the run and are dropped at the end, also when a run is interrupted.

What it does not do: draw (``charts/speed.py``), define the result format (``bench_results.py``) or parse the
command line (``cli.py``).
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

import kvviz
from kvviz.bench_results import (
    PATH_LABELS, PATHS, BenchConfig, BenchResult, EngineInfo, Environment, PathResult, Spread, StepSeries,
    check_tokens,
)
from kvviz.costs import forward_flops
from kvviz.errors import InputError, first_line
from kvviz.kv_formula import ModelSpec, Precision, kv_cache_bytes, parse_precision, precision_of_torch_dtype
from kvviz.models import LoadedModel
from kvviz.roofline import device_name, device_peak, step_bytes, weight_bytes_read
from kvviz.static_decode import StaticDecoder, graph_blocker
from kvviz.stepper import NaiveStepper, Sampling, Stepper
from kvviz.timing import DeviceTimer

# Cycled to the requested prompt length: ordinary prose, so a real model continues it with ordinary text.
PROMPT_TEXT = (
    "When a language model writes a reply, it produces one token at a time. Each new token needs the keys and "
    "values of every token before it. Without a cache the model computes them all again at every step; with a "
    "cache it keeps them in memory and computes only those of the newest token. "
)
# Paths whose failure depends on the model family, the device or an outside library (a cache class, graph capture,
# generate's checks, a llama.cpp build): their errors are reported as the path's result instead of ending the whole
# benchmark.
FRAGILE_PATHS = ("static", "graphs", "generate", "llamacpp")


@dataclass(frozen=True)
class BenchProgress:
    """Where a benchmark is; ``partial`` is set after each timed run: every finished run so far, as a result."""

    fraction: float
    path: str
    phase: str  # "measuring the device", "warm-up", "capture", "run 2/3"
    message: str
    partial: BenchResult | None = None


# Return False to stop the benchmark (it then returns what it finished, with ``complete=False``).
ProgressCallback = Callable[[BenchProgress], "bool | None"]


@dataclass
class _Run:
    """One prefill and its decode steps, as timed."""

    tokens: list[int]
    prefill_ms: float
    step_ms: list[float] = field(default_factory=list)
    processed: list[int] = field(default_factory=list)
    total_ms: float | None = None  # set by paths that only time the whole run (generate)

    def add(self, token: int, ms: float, processed: int) -> None:
        self.tokens.append(token)
        self.step_ms.append(ms)
        self.processed.append(processed)

    @property
    def total(self) -> float:
        return self.total_ms if self.total_ms is not None else self.prefill_ms + sum(self.step_ms)

    @property
    def ms_per_token(self) -> float:
        """Mean decode-step time; for a path timed only as a whole (generate), its total over the tokens.

        Subtracting a separately timed one-token call from generate's total would exclude its prefill too, but
        the difference of two noisy times can come out below zero on a busy machine; the plain average cannot.
        """
        if self.step_ms:
            return float(np.mean(self.step_ms))
        return self.total / len(self.tokens)


class _Stopped(Exception):
    """Raised inside a run when the progress callback asked to stop."""


class _Skip(Exception):
    """Raised by a runner's setup when its path cannot run here; the message is the reason."""


# ----- the paths ------------------------------------------------------------------------------------------------

class _Runner:
    """One decode path, in gpt-fast's shape: ``prefill(prompt) -> token`` and ``step() -> token``.

    ``run`` is the one timed loop every path but ``generate`` shares: a fresh start (``start_run``, untimed), then
    ``DeviceTimer`` around the prefill and around each step, and ``tick`` after each, outside the timed region.
    """

    def __init__(self, loaded: LoadedModel, config: BenchConfig) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        self.config = config
        self.tokens_processed = 1  # tokens the last step pushed through the model (the naive path: all of them)

    def setup(self, prompt: list[int]) -> float | None:
        """One-off work before the first run, in ms (None when there is none)."""
        return None

    def start_run(self) -> None:
        """Fresh per-run state (an empty cache), before the clock starts."""

    def prefill(self, prompt: list[int]) -> int:
        """Feed the prompt; return the chosen token, held on the host."""
        raise NotImplementedError

    def step(self) -> int:
        """Feed the token chosen last; return the next one, held on the host."""
        raise NotImplementedError

    def run(self, prompt: list[int], tokens: int, tick: Callable[[int], None]) -> _Run:
        self.start_run()
        with DeviceTimer(self.device) as timer:
            token = self.prefill(prompt)
        result = _Run([token], timer.ms)
        tick(1)
        for _ in range(tokens - 1):
            with DeviceTimer(self.device) as timer:
                token = self.step()
            result.add(token, timer.ms, self.tokens_processed)
            tick(1)
        return result

    def close(self) -> None:
        """Drop every buffer the path allocated."""

    def engine_info(self) -> EngineInfo | None:
        """What an outside engine reports about its runs (None for the PyTorch paths)."""
        return None


class _DynamicRunner(_Runner):
    """The plain transformers loop: a ``DynamicCache`` grown by concatenation, the token read back each step."""

    def start_run(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)

    def _feed(self, ids: list[int]) -> int:
        input_ids = torch.tensor([ids], device=self.device)  # (1, new)
        out = self.model(input_ids=input_ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.token = int(out.logits[0, -1].argmax())
        return self.token

    def prefill(self, prompt: list[int]) -> int:
        return self._feed(prompt)

    def step(self) -> int:
        return self._feed([self.token])

    def close(self) -> None:
        self.cache = None


class _StepperRunner(_Runner):
    """The app's own steppers, so the benchmark measures exactly what the pages run."""

    def __init__(self, loaded: LoadedModel, config: BenchConfig, naive: bool) -> None:
        super().__init__(loaded, config)
        self.naive = naive

    def start_run(self) -> None:
        if self.naive:
            self.stepper = NaiveStepper(self.loaded, Sampling(), capture_attention=False)
        else:
            self.stepper = Stepper(self.loaded, Sampling(), capture_attention=False, record_kv=False)

    def prefill(self, prompt: list[int]) -> int:
        return self.stepper.prefill(prompt).token_id

    def step(self) -> int:
        record = self.stepper.step()
        self.tokens_processed = record.tokens_processed
        return record.token_id

    def close(self) -> None:
        self.stepper = None


class _StaticRunner(_Runner):
    """A preallocated ``StaticCache`` and a one-token input buffer that the decode step reads and overwrites."""

    def __init__(self, loaded: LoadedModel, config: BenchConfig) -> None:
        super().__init__(loaded, config)
        from transformers import StaticCache

        self.cache = StaticCache(config=self.model.config, max_cache_len=config.prompt_tokens + config.tokens)
        self.next_id = torch.zeros((1, 1), dtype=torch.long, device=self.device)  # (1, 1)

    def _feed(self, input_ids: torch.Tensor) -> None:
        """Run ``input_ids`` through the model and write the greedy choice into ``next_id``."""
        out = self.model(input_ids=input_ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.next_id.copy_(out.logits[:, -1].argmax(dim=-1, keepdim=True))  # (1, 1)

    def start_run(self) -> None:
        self.cache.reset()

    def prefill(self, prompt: list[int]) -> int:
        self._feed(torch.tensor([prompt], device=self.device))  # (1, P)
        return int(self.next_id)

    def step(self) -> int:
        self._feed(self.next_id)
        return int(self.next_id)

    def close(self) -> None:
        self.cache = None
        self.next_id = None


class _GraphRunner(_Runner):
    """``StaticDecoder``'s decode step recorded as CUDA graphs; ``graphs_steps`` steps per replay.

    Per token the host does nothing but replay and read: positions, the input token and the argmax stay on the
    device, inside the graph. With ``graphs_steps`` = K > 1 one replay runs K steps, each feeding the next, and the
    host reads their K tokens at once; the shared loop times one step per token, so this path has its own ``run``:
    each timed region is one replay plus the read of its tokens, device-synchronised, and each of its tokens is
    given an equal share. A run's last steps, fewer than K, replay a one-step graph.
    """

    def __init__(self, loaded: LoadedModel, config: BenchConfig) -> None:
        super().__init__(loaded, config)
        self.decoder = StaticDecoder(self.model, config.prompt_tokens + config.tokens)
        blocker = graph_blocker(self.decoder.cache)
        if blocker:
            raise _Skip(blocker)
        if loaded.device.type != "cuda":
            raise _Skip(f"needs a CUDA GPU: a CUDA graph replays recorded GPU kernel launches, and this run is on "
                        f"{loaded.device.type}")
        self.steps_per_replay = config.graphs_steps
        self.graphs: dict[int, Any] = {}

    def setup(self, prompt: list[int]) -> float | None:
        """Compile (when asked) and capture: the one-off cost, reported apart from the per-token times."""
        start = time.perf_counter()
        if self.config.graphs_compile:
            self.decoder.compile()
        for steps in sorted({self.steps_per_replay, 1}, reverse=True):
            self.graphs[steps] = self.decoder.capture(steps, warmup_prompt=prompt[:1])
        return (time.perf_counter() - start) * 1000.0

    def run(self, prompt: list[int], tokens: int, tick: Callable[[int], None]) -> _Run:
        self.decoder.reset()
        with DeviceTimer(self.device) as timer:
            token = self.decoder.prefill(prompt)
        result = _Run([token], timer.ms)
        tick(1)
        while len(result.tokens) < tokens:
            steps = self.steps_per_replay if tokens - len(result.tokens) >= self.steps_per_replay else 1
            with DeviceTimer(self.device) as timer:
                self.graphs[steps].replay()
                chosen = self.decoder.read(len(prompt) + len(result.tokens), steps)
            for token in chosen:
                result.add(token, timer.ms / steps, 1)
            tick(steps)
        return result

    def close(self) -> None:
        self.graphs = {}
        self.decoder = None


class _GenerateRunner(_Runner):
    """transformers ``generate()``, greedy, never stopping early: an empty EOS list keeps it to exactly N tokens.

    The one path with its own ``run``: ``generate()`` returns only when done, so it is timed as a whole.
    """

    def _generate(self, input_ids: torch.Tensor, tokens: int) -> torch.Tensor:
        pad = self.loaded.tokenizer.pad_token_id
        return self.model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=tokens, do_sample=False,
            eos_token_id=[], pad_token_id=pad if pad is not None else 0, use_cache=True,
        )

    def run(self, prompt: list[int], tokens: int, tick: Callable[[int], None]) -> _Run:
        input_ids = torch.tensor([prompt], device=self.device)  # (1, P)
        with DeviceTimer(self.device) as timer:
            self._generate(input_ids, 1)
        prefill_ms = timer.ms
        tick(1)  # the one-token call above is generate's time to first token, reported as its prefill
        with DeviceTimer(self.device) as timer:
            out = self._generate(input_ids, tokens)
        result = _Run([int(t) for t in out[0, len(prompt):].tolist()], prefill_ms, total_ms=timer.ms)
        tick(max(tokens - 1, 0))
        return result


class _LlamaCppRunner(_Runner):
    """llama.cpp on the model's GGUF file: the same prompt ids, a greedy token per call, its own f16 cache.

    Timed by the shared loop like every path (wall clock, prefill and steps apart); llama.cpp's own counters are
    read after each run and reported beside it. The first run is the warm-up, so its counters are left out.
    """

    def __init__(self, loaded: LoadedModel, config: BenchConfig) -> None:
        super().__init__(loaded, config)
        from kvviz import llamacpp_engine
        from kvviz.models import gguf_file

        reason = llamacpp_engine.unavailable_reason(loaded.key)
        if reason is not None:
            raise _Skip(reason)
        self.gguf = gguf_file(loaded.key)
        self.session: Any = None
        self.perfs: list[Any] = []
        self.agreement: Any = None

    def setup(self, prompt: list[int]) -> float | None:
        from kvviz.llamacpp_engine import LlamaCppSession

        start = time.perf_counter()
        # The same threads as PyTorch's, and one batch for the whole prompt, as the PyTorch prefill is one call.
        self.session = LlamaCppSession(self.gguf, n_ctx=self.config.prompt_tokens + self.config.tokens,
                                       threads=torch.get_num_threads(), n_batch=max(512, len(prompt)))
        return (time.perf_counter() - start) * 1000.0

    def start_run(self) -> None:
        self.session.reset()

    def prefill(self, prompt: list[int]) -> int:
        self.token = self.session.feed(prompt)
        return self.token

    def step(self) -> int:
        self.token = self.session.feed([self.token])
        return self.token

    def run(self, prompt: list[int], tokens: int, tick: Callable[[int], None]) -> _Run:
        result = super().run(prompt, tokens, tick)
        self.perfs.append(self.session.perf())
        return result

    def compare_forced(self, prompt: list[int], reference: list[int]) -> None:
        """Teacher forcing against the reference path's tokens, untimed (``LlamaCppSession.agreement``)."""
        self.agreement = self.session.agreement(prompt, reference)

    def engine_info(self) -> EngineInfo | None:
        session = self.session
        if session is None:
            return None
        timed = self.perfs[1:]
        per_token = [p.eval_ms_per_token for p in timed if p.eval_ms_per_token is not None]
        agreement = self.agreement
        log = session.cache_log()
        kv_type = log.k_type if log is not None and log.k_type == log.v_type else "f16"
        return EngineInfo(
            name="llama.cpp", version=session.version, device="cpu", model_file=self.gguf.name,
            file_bytes=self.gguf.stat().st_size, weights_bytes=session.weights_bytes,
            weights_type=session.weights_type, kv_type=kv_type, n_ctx=session.n_ctx,
            kv_bytes=kv_cache_bytes(self.loaded.spec, session.n_ctx, 1, parse_precision(kv_type)),
            kv_mib_reported=log.mib if log is not None else None, threads=session.threads,
            eval_ms_per_token=float(np.median(per_token)) if per_token else None,
            prompt_eval_ms=float(np.median([p.prompt_eval_ms for p in timed])) if timed else None,
            forced_matches=agreement.matches if agreement else None,
            forced_positions=agreement.positions if agreement else None,
            forced_max_gap=agreement.max_gap if agreement else None,
        )

    def close(self) -> None:
        # The session stays as a record of what llama.cpp held (its size, type, version) for the result.
        if self.session is not None:
            self.session.close()


def _make_runner(name: str, loaded: LoadedModel, config: BenchConfig) -> _Runner:
    if name == "naive":
        return _StepperRunner(loaded, config, naive=True)
    if name == "kvviz":
        return _StepperRunner(loaded, config, naive=False)
    if name == "dynamic":
        return _DynamicRunner(loaded, config)
    if name == "static":
        return _StaticRunner(loaded, config)
    if name == "graphs":
        return _GraphRunner(loaded, config)
    if name == "generate":
        return _GenerateRunner(loaded, config)
    if name == "llamacpp":
        return _LlamaCppRunner(loaded, config)
    raise InputError(f"Unknown path '{name}': choose from {', '.join(PATHS)}.")


# ----- the benchmark --------------------------------------------------------------------------------------------

def parse_paths(values: Sequence[str]) -> tuple[str, ...]:
    """Path names from a list that may hold comma-separated names; canonical order, no repeats."""
    names = [part.strip().lower() for value in values for part in value.split(",") if part.strip()]
    if not names:
        raise InputError(f"No path given: choose from {', '.join(PATHS)}.")
    unknown = [name for name in names if name not in PATHS]
    if unknown:
        raise InputError(f"Unknown path '{unknown[0]}': choose from {', '.join(PATHS)}.")
    return tuple(name for name in PATHS if name in names)


def validate(config: BenchConfig, loaded: LoadedModel | None = None) -> None:
    """Raise ``InputError`` with one sentence when the settings cannot be run."""
    if config.tokens < 2:
        raise InputError(f"Tokens must be at least 2 (a prefill and one decode step); got {config.tokens}.")
    if config.prompt_tokens < 1:
        raise InputError(f"Prompt tokens must be at least 1; got {config.prompt_tokens}.")
    if config.repeats < 1 or config.naive_repeats < 1:
        raise InputError("Repeats must be at least 1.")
    if config.graphs_steps < 1:
        raise InputError(f"Graph steps per replay must be at least 1; got {config.graphs_steps}.")
    if config.warmup_tokens < 2:
        raise InputError(f"Warm-up tokens must be at least 2 (a prefill and one step); got {config.warmup_tokens}.")
    parse_paths(config.paths)
    if loaded is not None and config.prompt_tokens + config.tokens > loaded.card.context_length:
        raise InputError(
            f"Prompt tokens + tokens = {config.prompt_tokens + config.tokens} exceeds the context of "
            f"{loaded.card.context_length} tokens of {loaded.card.name}."
        )


def benchmark_prompt(loaded: LoadedModel, prompt_tokens: int) -> list[int]:
    """``prompt_tokens`` token ids of ``PROMPT_TEXT``, repeated as often as needed."""
    ids = list(loaded.tokenizer(PROMPT_TEXT)["input_ids"])
    return (ids * (prompt_tokens // len(ids) + 1))[:prompt_tokens]


def environment(loaded: LoadedModel) -> Environment:
    import transformers

    return Environment(
        model=loaded.key, model_name=loaded.card.name, architecture=loaded.card.architecture,
        parameters=loaded.card.parameters, device=str(loaded.device), device_name=device_name(loaded.device),
        dtype=loaded.dtype_name, torch=torch.__version__, transformers=transformers.__version__,
        kvviz=kvviz.__version__, python=platform.python_version(), platform=platform.platform(),
        threads=torch.get_num_threads(), cuda=torch.version.cuda, load_average=_load_average(), cpus=os.cpu_count(),
        weights_bytes=weight_bytes_read(loaded.model),
    )


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not every platform reports one
        return None


@dataclass
class _PathState:
    name: str
    status: str = "ok"
    reason: str = ""
    setup_ms: float | None = None
    warm: _Run | None = None
    runs: list[_Run] = field(default_factory=list)


class _Work:
    """Progress accounting: one unit per token of every run, warm-ups included."""

    def __init__(self, config: BenchConfig, callback: ProgressCallback | None) -> None:
        warmup = min(config.warmup_tokens, config.tokens)
        self.total = sum(warmup + config.runs_for(p) * config.tokens for p in config.paths) or 1
        self.done = 0
        self.callback = callback
        self.path = ""
        self.phase = ""

    def report(self, message: str, partial: BenchResult | None = None) -> None:
        if self.callback is None:
            return
        event = BenchProgress(min(self.done / self.total, 1.0), self.path, self.phase, message, partial)
        if self.callback(event) is False:
            raise _Stopped

    def tick(self, units: int) -> None:
        self.done += units
        self.report(f"{self.path}: {self.phase}")


def run_benchmark(loaded: LoadedModel, config: BenchConfig, progress: ProgressCallback | None = None) -> BenchResult:
    """Measure every path in ``config.paths`` on ``loaded``; ``progress`` is called after every step."""
    validate(config, loaded)
    config = replace(config, paths=parse_paths(config.paths))
    started = time.perf_counter()
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    work = _Work(config, progress)
    env = environment(loaded)  # first, so that the load average is the machine's, not ours
    work.path, work.phase = "device", "measuring the device"
    work.report("Measuring the device's memory bandwidth and compute…")
    peak = device_peak(loaded.device, loaded.dtype)
    prompt = benchmark_prompt(loaded, config.prompt_tokens)
    states = {name: _PathState(name) for name in config.paths}
    runners: dict[str, _Runner] = {}

    def assemble(complete: bool) -> BenchResult:
        results = tuple(_path_result(states[name], config, loaded, runners.get(name)) for name in config.paths)
        checked, reference = check_tokens(results)
        return BenchResult(
            environment=env, config=config, peak=peak, paths=checked, created=created,
            wall_seconds=time.perf_counter() - started, complete=complete, reference_path=reference,
        )

    complete = True
    try:
        with torch.inference_mode():
            for name in config.paths:
                state = states[name]
                work.path, work.phase = name, "warm-up"
                try:
                    runners[name] = _make_runner(name, loaded, config)
                    work.phase = "setup"
                    work.report(f"{name}: setting up")
                    state.setup_ms = runners[name].setup(prompt)
                    work.phase = "warm-up"
                    state.warm = runners[name].run(prompt, min(config.warmup_tokens, config.tokens), work.tick)
                except _Skip as skip:
                    state.status, state.reason = "skipped", str(skip)
                    work.tick(min(config.warmup_tokens, config.tokens) + config.runs_for(name) * config.tokens)
                except Exception as error:  # noqa: BLE001 - reported as the path's result, see FRAGILE_PATHS
                    if name not in FRAGILE_PATHS or isinstance(error, _Stopped):
                        raise
                    state.status, state.reason = "failed", _failure(error)
                if state.status != "ok" and name in runners:
                    runners.pop(name).close()
            for repeat in range(max(config.runs_for(p) for p in config.paths)):
                for name in config.paths:
                    state = states[name]
                    if state.status != "ok" or repeat >= config.runs_for(name):
                        continue
                    work.path, work.phase = name, f"run {repeat + 1}/{config.runs_for(name)}"
                    try:
                        state.runs.append(runners[name].run(prompt, config.tokens, work.tick))
                    except _Stopped:
                        raise
                    except Exception as error:  # noqa: BLE001 - see FRAGILE_PATHS
                        if name not in FRAGILE_PATHS:
                            raise
                        state.status, state.reason = "failed", _failure(error)
                        runners.pop(name).close()
                        continue
                    work.report(f"{name}: finished {work.phase}", partial=assemble(complete=False))
        _compare_engines_forced(runners, states, prompt)
    except _Stopped:
        complete = False
    finally:
        for runner in runners.values():
            runner.close()
    return assemble(complete)


def _compare_engines_forced(runners: dict[str, _Runner], states: dict[str, _PathState], prompt: list[int]) -> None:
    """Feed each outside engine the reference path's tokens (the path ``check_tokens`` compares with), untimed."""
    measured = [name for name in PATHS if name in states and states[name].status == "ok" and states[name].runs]
    reference = "dynamic" if "dynamic" in measured else next(iter(measured), None)
    for name, runner in runners.items():
        if isinstance(runner, _LlamaCppRunner) and reference not in (None, name) and states[name].status == "ok":
            runner.compare_forced(prompt, states[reference].runs[0].tokens)


def _failure(error: BaseException) -> str:
    """A failed path's reason: the exception's type and the first line of its message."""
    name, line = type(error).__name__, first_line(error, limit=300)
    return line if line == name else f"{name}: {line}"


def _path_result(state: _PathState, config: BenchConfig, loaded: LoadedModel,
                 runner: _Runner | None = None) -> PathResult:
    label = PATH_LABELS[state.name]
    if state.name == "graphs" and config.graphs_compile:
        label += " (torch.compile first)"
    if state.name == "graphs" and config.graphs_steps > 1:
        label += f" ({config.graphs_steps} steps per replay; ms/token = replay ÷ {config.graphs_steps})"
    warm = state.warm
    cold = dict(
        cold_setup_ms=state.setup_ms,
        cold_prefill_ms=warm.prefill_ms if warm else None,
        cold_first_step_ms=warm.step_ms[0] if warm and warm.step_ms else None,
    )
    if state.status != "ok":
        return PathResult(state.name, label, state.status, state.reason, **cold)
    runs = state.runs
    if not runs:
        return PathResult(state.name, label, "stopped", "stopped before its first timed run", **cold)
    reason = ""
    if any(run.tokens != runs[0].tokens for run in runs):
        reason = "its runs chose different tokens from one another"
    engine = runner.engine_info() if runner is not None else None
    return PathResult(
        path=state.name, label=label, status="ok", reason=reason, runs=len(runs), tokens=tuple(runs[0].tokens),
        prefill_ms=Spread.of([r.prefill_ms for r in runs]), ms_per_token=Spread.of([r.ms_per_token for r in runs]),
        total_ms=Spread.of([r.total for r in runs]), steps=_step_series(runs, config, loaded, state.name, engine),
        engine=engine, **cold,
    )


def _step_series(runs: list[_Run], config: BenchConfig, loaded: LoadedModel, path: str,
                 engine: EngineInfo | None = None) -> StepSeries:
    """Per-step medians and bands, with each step's FLOPs and the bytes it must move on this path.

    Bytes differ by path: naive keeps no cache (keys and values are recomputed, never read back), the static paths
    attend over their whole preallocated buffer (masked, but read), the dynamic ones over the positions held;
    on every path a sliding layer reads at most its window. An outside engine reads its own weights (llama.cpp:
    the GGUF's quantised tensors) and its own cache type.
    """
    if not runs[0].step_ms:
        return StepSeries()
    times = np.array([run.step_ms for run in runs])  # (runs, steps)
    processed = runs[0].processed
    positions = [config.prompt_tokens + k for k in range(1, len(processed) + 1)]
    text = loaded.model.config.get_text_config(decoder=True)
    vocab = int(text.vocab_size)
    hidden = int(getattr(text, "hidden_size", None) or text.n_embd)
    weights = engine.weights_bytes if engine is not None else weight_bytes_read(loaded.model)
    precision = parse_precision(engine.kv_type) if engine is not None else precision_of_torch_dtype(loaded.dtype_name)
    return StepSeries(
        position=tuple(positions),
        median_ms=tuple(float(v) for v in np.median(times, axis=0)),
        low_ms=tuple(float(v) for v in times.min(axis=0)),
        high_ms=tuple(float(v) for v in times.max(axis=0)),
        tokens_processed=tuple(processed),
        flops=tuple(forward_flops(loaded, vocab, hidden, n, p) for n, p in zip(processed, positions)),
        bytes_moved=tuple(_path_step_bytes(path, weights, loaded.spec, precision, p, n, config)
                          for n, p in zip(processed, positions)),
    )


def _path_step_bytes(path: str, weights: int, spec: ModelSpec, precision: Precision, position: int,
                     new_tokens: int, config: BenchConfig) -> float:
    if path == "naive":
        return step_bytes(weights, None, precision, position, new_tokens)
    if path in ("static", "graphs"):
        # A static layer is preallocated for the whole run, or for its window when it slides (transformers'
        # StaticSlidingWindowLayer), and attention reads all of it: the window cap applies as for any layer.
        return step_bytes(weights, spec, precision, config.prompt_tokens + config.tokens, new_tokens)
    return step_bytes(weights, spec, precision, position, new_tokens)
