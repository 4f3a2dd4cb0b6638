"""The sessions of one server process: when each was last active, what it holds, and freeing idle ones.

Each browser session registers the object that keeps its state (anything with ``held_bytes()``, ``usage()`` and
``free(reason)``) every time it acts. ``SessionRegistry.sweep`` frees the state of sessions idle longer than a
limit (their model cache and recorded arrays; the session itself stays, and tells its user why its trace is gone
when they come back). The registry keeps only weak references, so a session that Streamlit has dropped leaves it.

What it does not do: know Streamlit, or hold any tensor. ``held_bytes`` counts the live cache tensors and the
recorded NumPy arrays a trace keeps, not Python's own objects.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from typing import Protocol

from kvviz.records import Trace


class SessionState(Protocol):
    def held_bytes(self) -> int: ...

    def usage(self) -> tuple[str, int]:  # (model name, tokens in the context)
        ...

    def free(self, reason: str) -> bool:  # True when something was freed
        ...


@dataclass(frozen=True)
class SessionUsage:
    """One session as the admin view lists it (no prompt or token text: those belong to the student)."""

    session: str  # the first 8 characters of its id
    model: str
    tokens: int
    bytes_held: int
    idle_seconds: float


def trace_bytes(trace: Trace | None) -> int:
    """Bytes a trace holds: the live cache tensors of its last call (measured from the tensors when recorded),
    plus every recorded attention row and K/V row."""
    if trace is None or not trace.records:
        return 0
    recorded = 0
    for record in trace.records:
        recorded += sum(array.nbytes for array in record.attention or ())
        recorded += sum(keys.nbytes + values.nbytes for keys, values in record.kv_rows or ())
    return trace.records[-1].cache_bytes + recorded


class SessionRegistry:
    """Sessions by id: last activity and a weak reference to their state."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._states: dict[str, weakref.ref] = {}
        self._last_active: dict[str, float] = {}

    def touch(self, session: str, state: SessionState, now: float | None = None) -> None:
        with self._guard:
            self._states[session] = weakref.ref(state)
            self._last_active[session] = time.monotonic() if now is None else now

    def _live(self) -> list[tuple[str, SessionState, float]]:
        with self._guard:
            for session in [key for key, ref in self._states.items() if ref() is None]:
                del self._states[session], self._last_active[session]
            return [(key, ref(), self._last_active[key]) for key, ref in self._states.items() if ref() is not None]

    def sweep(self, idle_seconds: float, now: float | None = None) -> list[str]:
        """Free the state of every session idle for more than ``idle_seconds``; return their ids."""
        now = time.monotonic() if now is None else now
        minutes = idle_seconds / 60
        reason = (f"Your trace was freed after {minutes:g} minutes without activity, so that this shared server "
                  "keeps room for everyone: press Prefill to start again.")
        return [key for key, state, last in self._live() if now - last > idle_seconds and state.free(reason)]

    def usage(self, now: float | None = None) -> list[SessionUsage]:
        """Every live session, the one holding most first."""
        now = time.monotonic() if now is None else now
        rows = []
        for key, state, last in self._live():
            model, tokens = state.usage()
            rows.append(SessionUsage(key[:8], model, tokens, state.held_bytes(), now - last))
        return sorted(rows, key=lambda row: -row.bytes_held)


def process_rss_bytes() -> int | None:
    """Resident memory of this process (Linux ``/proc``); None where that cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
