"""The causal attention matrix of a trace, assembled from the rows the cached stepper recorded.

With a KV cache the model computes one new row of the attention matrix per step: the prefill gives the full
causal block of the prompt (P×P), each decode step the new token's row over every cached position (1×T). Stacking
those rows gives the matrix a one-shot forward pass over the whole sequence computes; ``check_against_full_forward``
verifies that on the live model (it asks a ``NaiveStepper`` for the full-forward attention, since steppers are the
only code that calls the model).

Memory: records keep their rows as float16 (``Trace.attention_bytes()``); nothing here keeps a copy. A matrix is
built on demand for one layer (``layer_matrix``) or one head (``head_matrix``); long traces are walked in blocks
of rows (``row_blocks``) so that whole-model summaries never hold more than one block per layer.

What it does not do: draw (``kvviz/charts/attention.py``), score heads (``kvviz/heads.py``) or touch Streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from kvviz.models import LoadedModel, ModelCard
from kvviz.records import StepRecord, Trace
from kvviz.stepper import NaiveStepper

# The full-forward check captures every layer's (heads, n, n) weights in one call; this bounds that call to
# 34 MiB of float16 rows on SmolLM2 (30 layers × 9 heads × 256² × 2 bytes) plus twice that in float32 meanwhile.
CHECK_MAX_TOKENS = 256
# Rows are stored as float16 (spacing 2^-11 just below 1), so two equal weights may round one step apart.
TOLERANCE_BY_DTYPE = {"float32": 1e-3, "float16": 1e-2, "bfloat16": 3e-2}
ROWS_PER_BLOCK = 256


@dataclass(frozen=True)
class MatrixCheck:
    """How the matrix stacked from cached rows compares with one full forward pass over the same tokens."""

    tokens_checked: int  # the first n positions (causal: row i depends only on tokens 0..i, so a prefix is exact)
    total_tokens: int
    prompt_rows: int  # rows of the checked prefix that came from the prefill block
    decode_rows: int  # rows that came one per cached decode step
    layers: int
    heads: int
    max_abs_diff: float
    worst_layer: int
    worst_head: int
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def has_attention(trace: Trace | None) -> bool:
    """Whether every record of ``trace`` carries attention rows (they are off in benchmarks)."""
    return bool(trace and trace.records and all(r.attention for r in trace.records))


def trace_length(trace: Trace) -> int:
    """Positions in the context: the last record's sequence length (prompt + tokens fed by decode steps)."""
    return trace.records[-1].sequence_length if trace.records else 0


def _placement(record: StepRecord, layer: int) -> tuple[np.ndarray, int, int]:
    """The record's rows for ``layer`` with where they go: (rows (H, q, kv), first query position, first key column).

    A record that ends at sequence length S holds the queries S-q .. S-1 over keys S-kv .. S-1: right-aligned,
    which also covers sliding-window layers whose cache no longer holds the earliest keys.
    """
    rows = record.attention[layer]  # (H, q, kv)
    end = record.sequence_length
    return rows, end - rows.shape[1], end - rows.shape[2]


def _placements(trace: Trace, layer: int, upto: int) -> Iterator[tuple[np.ndarray, int, int]]:
    """``_placement`` of each record in order, up to the first whose queries start at or after ``upto``."""
    for record in trace.records:
        placement = _placement(record, layer)
        if placement[1] >= upto:
            return
        yield placement


def row_blocks(trace: Trace, layer: int, upto: int | None = None,
               rows_per_block: int = ROWS_PER_BLOCK) -> Iterator[tuple[int, np.ndarray]]:
    """Walk the causal matrix of ``layer`` in blocks of query rows: yields (first query position, block).

    Each block is float32 ``(heads, rows, width)`` over keys 0..width-1, where width is one past the block's last
    query (every later key is zero by causality, so it is left out: that halves the work of whole-matrix
    summaries). ``upto`` (default: the whole trace) truncates to the first positions. The prefill block is
    yielded in slices; consecutive decode rows are stacked into one block, so a long trace costs one array of
    ``rows_per_block`` rows at a time.
    """
    n = trace_length(trace) if upto is None else upto
    if not has_attention(trace):
        raise ValueError("This trace has no attention rows: it was recorded with capture_attention=False.")
    heads = trace.records[0].attention[layer].shape[0]
    pending: list[tuple[np.ndarray, int, int]] = []  # decode rows waiting to be stacked

    def flush() -> Iterator[tuple[int, np.ndarray]]:
        if not pending:
            return
        first, last = pending[0][1], pending[-1][1]
        # Gather in the rows' own dtype, one contiguous (heads, width) slab per row, then convert once.
        stacked = np.zeros((len(pending), heads, last + 1), dtype=pending[0][0].dtype)  # (q, H, width)
        for i, (rows, query, key_start) in enumerate(pending):
            stacked[i, :, key_start:query + 1] = rows[:, 0, :query + 1 - key_start]
        pending.clear()
        yield first, stacked.transpose(1, 0, 2).astype(np.float32)  # (H, q, width)

    for rows, query_start, key_start in _placements(trace, layer, n):
        if rows.shape[1] == 1:
            pending.append((rows, query_start, key_start))
            if len(pending) == rows_per_block:
                yield from flush()
            continue
        yield from flush()
        q_stop = min(rows.shape[1], n - query_start)
        for lo in range(0, q_stop, rows_per_block):
            hi = min(lo + rows_per_block, q_stop)
            width = query_start + hi  # one past the last query of this slice
            block = np.zeros((heads, hi - lo, width), dtype=np.float32)
            block[:, :, key_start:width] = rows[:, lo:hi, :width - key_start]
            yield query_start + lo, block
    yield from flush()


def layer_matrix(trace: Trace, layer: int, upto: int | None = None) -> np.ndarray:
    """Every head's causal matrix of ``layer``, float32 ``(heads, n, n)``, stacked from the cached rows."""
    n = trace_length(trace) if upto is None else upto
    heads = trace.records[0].attention[layer].shape[0]
    matrix = np.zeros((heads, n, n), dtype=np.float32)
    for first_query, block in row_blocks(trace, layer, n):
        matrix[:, first_query:first_query + block.shape[1], :block.shape[2]] = block
    return matrix  # (H, n, n)


def head_matrix(trace: Trace, layer: int, head: int, upto: int | None = None) -> np.ndarray:
    """One head's causal matrix, float32 ``(n, n)``: row i is what query i attended to, built only for this head."""
    n = trace_length(trace) if upto is None else upto
    matrix = np.zeros((n, n), dtype=np.float32)
    for rows, query_start, key_start in _placements(trace, layer, n):
        q_stop = min(rows.shape[1], n - query_start)
        width = min(rows.shape[2], n - key_start)
        matrix[query_start:query_start + q_stop, key_start:key_start + width] = rows[head, :q_stop, :width]
    return matrix


def attention_row(trace: Trace, layer: int, head: int, query: int) -> np.ndarray:
    """What query position ``query`` attended to in one head: float32 ``(query + 1,)`` over keys 0..query."""
    for record in trace.records:
        rows, query_start, key_start = _placement(record, layer)
        if query_start <= query < query_start + rows.shape[1]:
            row = np.zeros(query + 1, dtype=np.float32)
            width = query + 1 - key_start
            row[key_start:] = rows[head, query - query_start, :width]
            return row
    raise IndexError(f"Query position {query} is not in this trace of {trace_length(trace)} tokens.")


def attention_bytes_formula(card: ModelCard, prompt_tokens: int, decode_steps: int) -> int:
    """Bytes of float16 rows a fully captured trace holds: the prefill stores P×P per head, each step one row.

    layers × q_heads × 2 bytes × (P² + Σ_{k=1..n} (P + k)); roughly layers × q_heads × T² bytes for long decodes.
    """
    p, n = prompt_tokens, decode_steps
    cells = p * p + n * p + n * (n + 1) // 2
    return card.layers * card.query_heads * 2 * cells


def tolerance_for(dtype_name: str) -> float:
    """Agreement expected between two computations of the same weights in the model's dtype (stored float16)."""
    return TOLERANCE_BY_DTYPE.get(dtype_name, 3e-2)


def full_forward_attention(loaded: LoadedModel, token_ids: list[int]) -> tuple[np.ndarray, ...]:
    """Every layer's ``(heads, n, n)`` float16 attention of one forward pass over ``token_ids``, without a cache."""
    record = NaiveStepper(loaded, capture_attention=True).prefill(token_ids)
    return record.attention


def check_against_full_forward(trace: Trace, loaded: LoadedModel,
                               max_tokens: int = CHECK_MAX_TOKENS) -> MatrixCheck:
    """Compare every layer and head of the stacked matrix with one full forward pass over the trace's tokens.

    Only the first ``max_tokens`` positions are checked on long traces: causal attention of position i depends on
    tokens 0..i only, so the prefix comparison is exact, and it keeps the full pass's all-layer capture bounded.
    """
    total = trace_length(trace)
    n = min(total, max_tokens)
    full = full_forward_attention(loaded, trace.token_ids()[:n])
    worst = (0.0, 0, 0)
    for layer, reference in enumerate(full):
        stacked = layer_matrix(trace, layer, upto=n)  # (H, n, n)
        per_head = np.abs(stacked - reference.astype(np.float32)).max(axis=(1, 2))  # (H,)
        head = int(per_head.argmax())
        if per_head[head] >= worst[0]:
            worst = (float(per_head[head]), layer, head)
    prompt_rows = min(trace.prompt_tokens, n)
    return MatrixCheck(
        tokens_checked=n, total_tokens=total, prompt_rows=prompt_rows, decode_rows=n - prompt_rows,
        layers=len(full), heads=full[0].shape[0], max_abs_diff=worst[0], worst_layer=worst[1],
        worst_head=worst[2], tolerance=tolerance_for(loaded.dtype_name),
    )


# ----- downsampling for display -----------------------------------------------------------------------------------

POOLING = ("max", "mean")


def pool_factor(n: int, max_side: int) -> int:
    """The smallest block size f so that an n×n matrix pooled in f×f blocks has at most ``max_side`` per side."""
    return max(1, -(-n // max_side))


def _causal_counts(n: int, factor: int) -> np.ndarray:
    """How many causal (query ≥ key) cells each f×f block of an n×n matrix covers, ``(m, m)``."""
    m = -(-n // factor)
    sizes = np.minimum(factor, n - np.arange(m) * factor)  # rows (= columns) in block a
    counts = np.outer(sizes, sizes).astype(np.float64)
    counts[np.triu_indices(m, k=1)] = 0
    counts[np.diag_indices(m)] = sizes * (sizes + 1) / 2
    return counts


class CausalPooler:
    """Pools a causal matrix into f×f blocks, fed one block of query rows at a time.

    ``max``: each cell is the largest weight among the query/key pairs it covers (a sharp diagonal or a sink column
    survives any factor). ``mean``: the average over the causal pairs it covers. Blocks wholly above the diagonal
    (a query never sees a later key) are NaN, so they draw as empty.
    """

    def __init__(self, heads: int, n: int, factor: int, how: str = "max") -> None:
        if how not in POOLING:
            raise ValueError(f"Pooling must be one of {POOLING} (got {how!r}).")
        self.n, self.factor, self.how = n, factor, how
        self.side = -(-n // factor)
        self.values = np.zeros((heads, self.side, self.side), dtype=np.float32)

    def add(self, first_query: int, block: np.ndarray) -> None:
        """Fold in rows ``first_query ..`` of the matrix, ``block`` float ``(H, q, width)`` over keys 0..width-1."""
        heads, q, width = block.shape
        f = self.factor
        blocks_across = -(-width // f)
        if width % f:
            padded = np.zeros((heads, q, blocks_across * f), dtype=np.float32)
            padded[:, :, :width] = block
            block = padded
        by_column = block.reshape(heads, q, blocks_across, f)  # (H, q, blocks across, f)
        columns = by_column.max(axis=3) if self.how == "max" else by_column.sum(axis=3)  # (H, q, blocks across)
        groups = (first_query + np.arange(q)) // f  # pooled row of each query row
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
        target = groups[starts]
        if self.how == "max":
            reduced = np.maximum.reduceat(columns, starts, axis=1)  # (H, groups, blocks across)
            self.values[:, target, :blocks_across] = np.maximum(self.values[:, target, :blocks_across], reduced)
        else:
            self.values[:, target, :blocks_across] += np.add.reduceat(columns, starts, axis=1)

    def result(self) -> np.ndarray:
        """The pooled ``(H, side, side)`` float32 matrix, NaN above the diagonal."""
        values = self.values.copy()
        if self.how == "mean":
            counts = _causal_counts(self.n, self.factor)
            values = values / np.where(counts > 0, counts, 1.0)[None].astype(np.float32)
        above = np.triu_indices(self.side, k=1)
        values[:, above[0], above[1]] = np.nan
        return values


def pool_causal(matrix: np.ndarray, factor: int, how: str = "max") -> np.ndarray:
    """Pool one causal ``(n, n)`` matrix into ``ceil(n/f)`` square blocks (see ``CausalPooler``); NaN above."""
    n = matrix.shape[-1]
    pooler = CausalPooler(1, n, factor, how)
    pooler.add(0, matrix[None].astype(np.float32, copy=False))
    return pooler.result()[0]


def pooled_layers(trace: Trace, max_side: int, how: str = "max", upto: int | None = None) -> np.ndarray:
    """Every layer and head pooled to at most ``max_side`` per side: ``(layers, heads, side, side)`` float32.

    Streams each layer's rows through a ``CausalPooler``, so the model view of a long trace never holds a full
    ``(heads, T, T)`` layer.
    """
    n = trace_length(trace) if upto is None else upto
    factor = pool_factor(n, max_side)
    out = []
    for layer in range(len(trace.records[0].attention)):
        pooler = CausalPooler(trace.records[0].attention[layer].shape[0], n, factor, how)
        for first_query, block in row_blocks(trace, layer, n):
            pooler.add(first_query, block)
        out.append(pooler.result())
    return np.stack(out)  # (L, H, side, side)
