"""The model worker's queue with a fake model call: calls run one at a time, round-robin by session, so a long Play
and single steps of other sessions interleave; a failing call reaches its caller and the worker goes on."""

from __future__ import annotations

import json
import threading
import time

import pytest

from kvviz.server.queue import ModelWorker, WorkerPool, percentile, set_torch_threads, summarise


class FakeModel:
    """Stands in for a model call: records which session ran, checks that no two calls overlap."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds = seconds
        self.order: list[str] = []
        self.active = 0
        self.overlapped = False
        self.lock = threading.Lock()

    def call(self, session: str):
        def run() -> str:
            with self.lock:
                self.active += 1
                self.overlapped |= self.active > 1
            time.sleep(self.seconds)  # the "forward pass"
            with self.lock:
                self.active -= 1
                self.order.append(session)
            return session
        return run


def test_queued_calls_of_several_sessions_run_one_at_a_time_taking_turns():
    model = FakeModel()
    worker = ModelWorker("fake", log_path="")
    gate = threading.Event()
    worker.submit("blocker", gate.wait)  # holds the worker while the queues fill
    futures = [worker.submit("play", model.call("play"), "step") for _ in range(6)]
    futures += [worker.submit(name, model.call(name), "step") for name in ("a", "b", "c")]
    futures += [worker.submit("a", model.call("a"), "step")]
    gate.set()
    assert [future.result(timeout=10) for future in futures][-1] == "a"
    # One call per waiting session per turn: the play session's six calls do not hold back a, b and c.
    assert model.order == ["play", "a", "b", "c", "play", "a", "play", "play", "play", "play"]
    assert not model.overlapped


def test_a_long_play_advances_one_step_per_turn_and_a_single_step_waits_at_most_one_step_of_each_other():
    """A Play submits its next step only when the last one is back, as the page's Play does; three other sessions
    each click Next token once while it plays."""
    model = FakeModel(seconds=0.03)
    worker = ModelWorker("fake", log_path="")
    started = threading.Event()

    def play() -> None:
        for index in range(20):
            worker.run("play", model.call("play"), "step")
            if index == 2:
                started.set()

    player = threading.Thread(target=play)
    player.start()
    assert started.wait(10)
    submitted_after: dict[str, int] = {}

    def single(name: str) -> None:
        submitted_after[name] = len(model.order)  # calls finished before this click
        worker.run(name, model.call(name), "step")

    singles = [threading.Thread(target=single, args=(name,)) for name in "xyz"]
    for thread in singles:
        thread.start()
    for thread in [player, *singles]:
        thread.join(10)
    assert model.order.count("play") == 20 and not model.overlapped
    for name in "xyz":
        # Between its click and its run, a single step waits for the call running then plus at most one call of each
        # other session: the playing session runs at most twice (the running call and one turn) before it.
        waited_for = model.order[submitted_after[name]:model.order.index(name)]
        assert waited_for.count("play") <= 2, model.order
        assert all(waited_for.count(other) <= 1 for other in "xyz")
    # And the play went on meanwhile: it was not held back until all single steps were done.
    assert model.order[-1] == "play"
    assert not worker.waiting()


def test_a_failing_call_raises_in_its_caller_and_the_worker_serves_the_next(tmp_path):
    log = tmp_path / "latency.jsonl"
    worker = ModelWorker("fake", log_path=str(log))

    def out_of_memory() -> None:
        raise MemoryError("fake: no memory left")

    with pytest.raises(MemoryError, match="fake"):
        worker.run("a", out_of_memory, "step")
    assert worker.run("b", lambda: 42, "step") == 42
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(line["session"], line["ok"]) for line in lines] == [("a", False), ("b", True)]
    assert all(line["total_ms"] >= line["run_ms"] >= 0 for line in lines)
    summary = summarise(list(worker.timings))
    assert [(row.kind, row.calls, row.errors) for row in summary] == [("step", 2, 1)]


def test_the_pool_keeps_one_worker_per_model_and_lists_all_their_calls():
    pool = WorkerPool()
    assert pool.worker("m1") is pool.worker("m1") and pool.worker("m1") is not pool.worker("m2")
    pool.worker("m1").run("s", lambda: None, "prefill")
    pool.worker("m2").run("s", lambda: None, "step")
    assert sorted(timing.model for timing in pool.timings()) == ["m1", "m2"]


def test_percentiles_interpolate_between_ranks():
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([0.0, 10.0], 0.95) == pytest.approx(9.5)


def test_torch_threads_are_set_once_per_process():
    import torch

    first = set_torch_threads(0)
    assert first == torch.get_num_threads()
    assert set_torch_threads(first + 1) == first  # a later call changes nothing
    assert torch.get_num_threads() == first
