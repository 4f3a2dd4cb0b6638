"""A trace as a table: one row per model call (the prefill, then each decode step), as CSV.

The columns are ``CSV_COLUMNS``, documented in ``docs/trace-format.md``; the values are the records' own (the
same ones ``StepRecord.summary`` gives the CLI), nothing recomputed. An empty cell means "not measured" (the naive
columns with the comparison off, the recording time when nothing was recorded).

What it does not do: read a CSV back (the JSON export is the format that loads), or round anything but times.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from kvviz.records import StepRecord, Trace

CSV_COLUMNS: tuple[str, ...] = (
    "index", "kind", "token_id", "token", "is_eos", "context_tokens", "cache_len", "cache_bytes", "ms_cached",
    "ms_naive", "capture_ms", "tokens_processed", "naive_tokens_processed", "flops", "max_logit_diff", "same_token",
)


def step_row(record: StepRecord) -> dict[str, Any]:
    """One record's row, keyed by ``CSV_COLUMNS``."""
    summary = record.summary()
    return {
        "index": summary["index"],
        "kind": summary["kind"],
        "token_id": summary["token_id"],
        "token": summary["token"],
        "is_eos": record.is_eos,
        "context_tokens": record.sequence_length,
        "cache_len": summary["cache_len"],
        "cache_bytes": summary["cache_bytes"],
        "ms_cached": summary["ms_cached"],
        "ms_naive": summary["ms_naive"],
        "capture_ms": summary["capture_ms"],
        "tokens_processed": summary["tokens_processed"],
        "naive_tokens_processed": record.naive_tokens_processed,
        "flops": summary["flops"],
        "max_logit_diff": summary["max_logit_diff"],
        "same_token": summary["same_token"],
    }


def step_rows(trace: Trace) -> list[dict[str, Any]]:
    return [step_row(record) for record in trace.records]


def trace_csv(trace: Trace) -> str:
    """The trace as CSV text: a header of ``CSV_COLUMNS``, then one row per record (quoted where a token needs it)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in step_rows(trace):
        writer.writerow({key: "" if value is None else value for key, value in row.items()})
    return out.getvalue()
