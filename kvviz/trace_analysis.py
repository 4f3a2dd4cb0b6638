"""What the figures need out of a recorded trace: K/V vector lengths, the newest query's attention, where the
latest call wrote, which KV head each query head reads, the timing summary; and the one per-trace memo for costly
results.

The page redraws after every token, so anything costly is remembered per ``Trace`` object (``memo_of``): a trace
grows in place and its records never change, so a result keyed by what it read (a record's index, the trace's
length) stays right while the trace lives, and goes when the trace does. Nothing is shared between two traces,
hence between two browser sessions.

What it does not do: draw (``kvviz/charts/``), stack attention matrices (``attention_matrix.py``), run the model or
import Streamlit.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from collections import OrderedDict
from typing import Any, Callable, Hashable, TypeVar

import numpy as np

from kvviz.records import StepRecord, Trace

T = TypeVar("T")
# A heatmap wider than this many positions is unreadable on a laptop and slow to ship to the browser.
MAX_COLUMNS = 512
MEMO_ENTRIES = 24  # per trace: a few figures, score tables and per-record arrays


# ----- the per-trace memo ---------------------------------------------------------------------------------------

class TraceMemo:
    """Results computed from one trace, least recently used dropped first beyond ``MEMO_ENTRIES``."""

    def __init__(self) -> None:
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()`` once per ``key``; include the trace's length in keys of results that read all of it."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        if len(self._entries) >= MEMO_ENTRIES:
            self._entries.popitem(last=False)
        value = self._entries[key] = compute()
        return value

    def __contains__(self, key: Hashable) -> bool:
        """Whether ``key`` is remembered; asking counts as a use (a flag checked at every render stays)."""
        if key not in self._entries:
            return False
        self._entries.move_to_end(key)
        return True


# Keyed by id(): a Trace is a mutable dataclass, so not hashable. The weak reference's callback drops the entry
# when the trace is collected, before its id can be reused.
_MEMOS: dict[int, tuple[weakref.ref, TraceMemo]] = {}


def memo_of(trace: Trace) -> TraceMemo:
    """The memo of this trace object, created on first use and dropped with the trace."""
    key = id(trace)
    entry = _MEMOS.get(key)
    if entry is not None and entry[0]() is trace:
        return entry[1]
    memo = TraceMemo()
    _MEMOS[key] = (weakref.ref(trace, lambda _, key=key: _MEMOS.pop(key, None)), memo)
    return memo


# ----- positions and heads --------------------------------------------------------------------------------------

def latest(trace: Trace) -> StepRecord | None:
    return trace.records[-1] if trace.records else None


def appended_positions(record: StepRecord | None) -> tuple[int, int]:
    """[start, stop) of the context positions the latest call appended to the cache."""
    if record is None:
        return (0, 0)
    stop = record.sequence_length
    return (stop - len(record.new_ids), stop)


def kv_head_of(query_head: int, queries_per_kv_head: int) -> int:
    """The KV head that ``query_head`` reads: grouped-query attention gives each run of ``queries_per_kv_head``
    consecutive query heads one KV head (1 query head per KV head in multi-head attention)."""
    return query_head // max(queries_per_kv_head, 1)


def query_heads_sharing(query_head: int, queries_per_kv_head: int) -> list[int]:
    """Every query head that reads the same KV head as ``query_head`` (itself included)."""
    group = kv_head_of(query_head, queries_per_kv_head)
    return list(range(group * queries_per_kv_head, (group + 1) * queries_per_kv_head))


def query_groups(query_heads: int, kv_heads: int) -> list[int]:
    """The KV head each query head reads, for every query head."""
    per_group = max(query_heads // max(kv_heads, 1), 1)
    return [kv_head_of(head, per_group) for head in range(query_heads)]


# ----- cache and attention arrays --------------------------------------------------------------------------------

def _record_norms(record: StepRecord) -> np.ndarray:
    """``(2, layers, new)``: lengths of the key and value vectors one record appended."""
    rows = np.stack([np.stack([k for k, _ in record.kv_rows]), np.stack([v for _, v in record.kv_rows])])
    rows = rows.astype(np.float32)  # (2, layers, kv_heads, new, head_dim); NumPy's float16 maths is slow
    return np.sqrt(np.einsum("plknd,plknd->pln", rows, rows))  # (2, layers, new)


def kv_norms(trace: Trace, max_columns: int = MAX_COLUMNS) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Length of each cached key and value vector (L2 over KV heads and dims), per layer and position.

    Returns ``(key_norms, value_norms, first_position)``, each array ``(layers, positions)`` covering at most the
    latest ``max_columns`` positions, which start at ``first_position``. ``None`` when no record carries
    ``kv_rows`` (the stepper was built without ``record_kv``). Each record's lengths are computed once (the trace's
    memo), so a redraw after one more token costs one record, not the whole trace.
    """
    records = trace.records
    if not records or not all(r.kv_rows for r in records):
        return None
    total = sum(len(r.new_ids) for r in records)
    first_position = max(total - max_columns, 0)
    # Only the records that reach into the window are touched, so a long trace costs no more than a short one.
    kept: list[int] = []
    position = total
    for index in range(len(records) - 1, -1, -1):
        kept.append(index)
        position -= len(records[index].new_ids)
        if position <= first_position:
            break
    kept.reverse()
    skip = first_position - position  # positions of the first kept record that fall before the window
    by_record: dict[int, np.ndarray] = memo_of(trace).get(("record norms",), dict)
    for index in kept:
        if index not in by_record:
            by_record[index] = _record_norms(records[index])
    norms = np.concatenate([by_record[i] for i in kept], axis=2)[:, :, skip:]  # (2, layers, positions)
    return norms[0], norms[1], first_position


def newest_attention(trace: Trace, max_columns: int = MAX_COLUMNS) -> tuple[np.ndarray, int] | None:
    """The newest query's attention weights, ``(layers, query_heads, positions)``, and the first position shown.

    The newest query is the last token fed to the model (the last prompt token after a prefill). Layers whose
    cache holds fewer positions (a sliding window) are right-aligned and padded with NaN.
    """
    record = latest(trace)
    if record is None or not record.attention:
        return None
    length = record.sequence_length
    first_position = max(length - max_columns, 0)
    width = length - first_position
    rows = np.full((len(record.attention), record.attention[0].shape[0], width), np.nan, dtype=np.float32)
    for layer, weights in enumerate(record.attention):  # weights: (q_heads, q_len, kv_len)
        last_row = weights[:, -1, :].astype(np.float32)[:, -width:]
        rows[layer, :, width - last_row.shape[1]:] = last_row
    return rows, first_position


# ----- timing -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TimingSummary:
    """The numbers the timing panel writes out; the charts show the same data step by step."""

    prefill_ms: float
    prefill_naive_ms: float | None
    decode_steps: int
    cached_decode_ms: float
    naive_decode_ms: float | None
    latest_ms: float
    latest_naive_ms: float | None
    capture_ms: float | None = None  # recording for the charts over the decode steps, timed apart from both paths
    latest_context: int = 0  # tokens in the context at the latest step
    prompt_tokens: int = 0  # tokens the prefill processed

    @property
    def prefill_ms_per_token(self) -> float | None:
        """The prefill's time spread over its tokens, to set beside one decode step's time for one token."""
        return self.prefill_ms / self.prompt_tokens if self.prompt_tokens else None

    @property
    def latest_ratio(self) -> float | None:
        """How many times longer the naive path took than the cached one at the latest step (same position)."""
        if self.latest_naive_ms is None or self.latest_ms <= 0:
            return None
        return self.latest_naive_ms / self.latest_ms

    @property
    def speedup(self) -> float | None:
        """How many times longer the naive path spent on decode steps so far."""
        if self.naive_decode_ms is None or self.cached_decode_ms <= 0:
            return None
        return self.naive_decode_ms / self.cached_decode_ms


def timing_summary(trace: Trace) -> TimingSummary | None:
    """Prefill (time to first token) apart, decode steps summed per path; ``None`` before the first prefill."""
    prefill = trace.prefill
    if prefill is None:
        return None
    steps = trace.decode_steps
    compared = all(r.ms_naive is not None for r in steps)
    last = trace.records[-1]
    captured = [r.capture_ms for r in steps if r.capture_ms is not None]
    return TimingSummary(
        prefill_ms=prefill.ms, prefill_naive_ms=prefill.ms_naive, decode_steps=len(steps),
        cached_decode_ms=float(sum(r.ms for r in steps)),
        naive_decode_ms=float(sum(r.ms_naive for r in steps)) if compared and prefill.ms_naive is not None else None,
        latest_ms=last.ms, latest_naive_ms=last.ms_naive,
        capture_ms=float(sum(captured)) if captured else None,
        latest_context=last.sequence_length, prompt_tokens=trace.prompt_tokens,
    )
