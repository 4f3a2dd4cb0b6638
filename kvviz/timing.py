"""Device-synchronised wall-clock timing.

A CUDA kernel launch returns before the work is done, so a timer read without a synchronisation measures the
launch, not the work. ``DeviceTimer`` synchronises the device before it starts and before it stops. On the CPU
it is a plain ``time.perf_counter`` timer. It does not aggregate or report anything.
"""

from __future__ import annotations

import time

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait until every kernel queued on ``device`` has finished (no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class DeviceTimer:
    """Context manager measuring elapsed milliseconds of the work queued inside it on ``device``.

    Example::

        with DeviceTimer(model.device) as timer:
            model(input_ids)
        print(timer.ms)
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.ms: float = float("nan")
        self._start = 0.0

    def __enter__(self) -> "DeviceTimer":
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.ms = (time.perf_counter() - self._start) * 1000.0
