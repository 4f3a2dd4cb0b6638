"""One worker thread per loaded model, serving the model calls of every session round-robin by session.

Streamlit runs each browser session's script in a thread of its own; left alone, every session's step would run
on the shared model at the same moment, and on a CPU the sessions' torch threads would fight over the cores. Here a
caller hands its call to the model's worker (``ModelWorker.run``) and waits for the result. The worker keeps a
queue per session and takes one call from each waiting session in turn, so a session that queues many calls (a
long Play submits one step per turn) advances one call per turn, and a single Next token waits for at most one
call of each other active session before its own runs.

Each finished call is timed from its submission to its result (``CallTiming``: the wait in the queue and the run)
and kept in a bounded log for the admin view and the load script; with ``KVVIZ_LATENCY_LOG`` set, one line per
call is also appended to that file.

What it does not do: know what a call does (it runs any callable), batch calls of different sessions into one
forward pass, or cancel a call once it runs. An exception raised by a call is raised again in the caller's thread;
the worker goes on with the next call.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any, Callable, TypeVar

T = TypeVar("T")

LATENCY_LOG_ENV = "KVVIZ_LATENCY_LOG"
# Calls remembered for the admin view's percentiles (about an hour of a 30-student class stepping every 10 s).
TIMINGS_KEPT = 10_000


@dataclass(frozen=True)
class CallTiming:
    """One call through a worker: when it was submitted, how long it waited, how long it ran (milliseconds)."""

    model: str
    session: str
    kind: str  # what the caller said it was: "prefill", "step", ...
    submitted: float  # time.time() at submission
    wait_ms: float
    run_ms: float
    ok: bool

    @property
    def total_ms(self) -> float:
        """Submission to result: the server-side latency a click sees, before the page is drawn."""
        return self.wait_ms + self.run_ms


@dataclass
class _Call:
    session: str
    kind: str
    fn: Callable[[], Any]
    future: Future
    submitted: float  # time.time()
    submitted_clock: float  # time.perf_counter()


class ModelWorker:
    """A daemon thread that runs the calls submitted for one model, one at a time, round-robin by session."""

    def __init__(self, name: str, log_path: str | None = None) -> None:
        self.name = name
        self.log_path = log_path if log_path is not None else os.environ.get(LATENCY_LOG_ENV) or None
        self.timings: deque[CallTiming] = deque(maxlen=TIMINGS_KEPT)
        self._queues: OrderedDict[str, deque[_Call]] = OrderedDict()  # waiting sessions, in turn order
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name=f"kvviz-worker-{name}", daemon=True)
        self._thread.start()

    # ----- callers --------------------------------------------------------------------------------------------------
    def submit(self, session: str, fn: Callable[[], T], kind: str = "call") -> Future:
        """Queue ``fn`` for ``session``; the future holds its result (or its exception)."""
        call = _Call(session, kind, fn, Future(), time.time(), time.perf_counter())
        with self._ready:
            # A session that is not waiting joins at the back of the turn order; one that is keeps its place.
            self._queues.setdefault(session, deque()).append(call)
            self._ready.notify()
        return call.future

    def run(self, session: str, fn: Callable[[], T], kind: str = "call") -> T:
        """Run ``fn`` on the worker in ``session``'s turn and return its result (raising what it raised)."""
        return self.submit(session, fn, kind).result()

    def waiting(self) -> dict[str, int]:
        """Calls queued per session, not counting the one running."""
        with self._ready:
            return {session: len(calls) for session, calls in self._queues.items()}

    # ----- the worker thread ----------------------------------------------------------------------------------------
    def _next_call(self) -> _Call:
        with self._ready:
            while not self._queues:
                self._ready.wait()
            session, calls = next(iter(self._queues.items()))
            call = calls.popleft()
            # This session's turn is used: it goes to the back of the order (or leaves it, with nothing queued).
            del self._queues[session]
            if calls:
                self._queues[session] = calls
            return call

    def _serve(self) -> None:
        while True:
            call = self._next_call()
            started = time.perf_counter()
            result: Any = None
            error: BaseException | None = None
            try:
                result = call.fn()
            except BaseException as raised:  # noqa: BLE001 - handed to the caller, the worker must survive
                error = raised
            finished = time.perf_counter()
            # Recorded before the caller gets its result, so a caller that reads the log after a call finds it there.
            self._record(CallTiming(self.name, call.session, call.kind, call.submitted,
                                    wait_ms=(started - call.submitted_clock) * 1000,
                                    run_ms=(finished - started) * 1000, ok=error is None))
            if error is not None:
                call.future.set_exception(error)
            else:
                call.future.set_result(result)

    def _record(self, timing: CallTiming) -> None:
        self.timings.append(timing)
        if self.log_path:
            line = json.dumps({**asdict(timing), "total_ms": timing.total_ms})
            try:
                with open(self.log_path, "a", encoding="utf-8") as log:
                    log.write(line + "\n")
            except OSError:
                self.log_path = None  # an unwritable log must not stop the calls


class WorkerPool:
    """One ``ModelWorker`` per model key, created on first use; shared by every session of the process."""

    def __init__(self) -> None:
        self._workers: dict[str, ModelWorker] = {}
        self._guard = threading.Lock()

    def worker(self, key: str) -> ModelWorker:
        with self._guard:
            if key not in self._workers:
                self._workers[key] = ModelWorker(key)
            return self._workers[key]

    def waiting(self) -> dict[str, dict[str, int]]:
        """Calls queued now, per model and session."""
        with self._guard:
            workers = dict(self._workers)
        return {key: worker.waiting() for key, worker in workers.items()}

    def timings(self) -> list[CallTiming]:
        with self._guard:
            workers = list(self._workers.values())
        return sorted((timing for worker in workers for timing in list(worker.timings)),
                      key=lambda timing: timing.submitted)


_threads_lock = threading.Lock()
_threads_set: list[int] = []  # the count set for this process, once


def set_torch_threads(count: int) -> int:
    """Set torch's intra-op thread count once for the process (0: leave torch's default); return the count in
    effect. Later calls change nothing: torch warns, or fails, when the count changes after work has started."""
    import torch

    with _threads_lock:
        if not _threads_set:
            if count > 0:
                torch.set_num_threads(count)
            _threads_set.append(torch.get_num_threads())
        return _threads_set[0]


def percentile(values: list[float], fraction: float) -> float | None:
    """The ``fraction`` quantile of ``values`` by linear interpolation (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class LatencySummary:
    """Server-side latency of one kind of call (submission to result), in milliseconds."""

    kind: str
    calls: int
    errors: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    p50_wait_ms: float


def summarise(timings: list[CallTiming]) -> list[LatencySummary]:
    """One summary per kind of call, in the order the kinds first appear."""
    kinds = list(dict.fromkeys(timing.kind for timing in timings))
    rows = []
    for kind in kinds:
        chosen = [timing for timing in timings if timing.kind == kind]
        totals = [timing.total_ms for timing in chosen]
        rows.append(LatencySummary(kind, len(chosen), sum(not timing.ok for timing in chosen),
                                   percentile(totals, 0.5), percentile(totals, 0.95), max(totals),
                                   percentile([timing.wait_ms for timing in chosen], 0.5)))
    return rows
