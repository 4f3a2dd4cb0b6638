"""Head types: per layer and head, how much a head behaves like an attention sink, a previous-token head or an
induction head, and how spread out its attention is.

Every score is a mean over query rows of the causal attention matrix (row i = what query i attended to):

- sink mass: weight on position 0, over queries 1..T-1 (query 0 can only look at itself);
- previous-token score: weight on position i-1, over queries 2..T-1 (at query 1 the previous token *is* position
  0, so a sink would count twice);
- induction score: weight on the positions right after earlier occurrences of the query's own token, over the
  queries whose token occurred before. On the probe (random tokens, then the same tokens again) that is exactly
  the attention from the second copy to "the token after the earlier occurrence";
- mean entropy: -Σ a·log(a) in nats, over queries 1..T-1 (0 = all weight on one key; uniform over k keys = ln k);
- spread (normalised entropy): each query's entropy divided by ln(i+1), the entropy of uniform weight over the i+1
  positions query i can see, averaged over queries 1..T-1. 0 = one key, 1 = uniform. Entropy in nats grows with
  the context (ln k), so maps of traces of different lengths are only comparable in this form.

Scores are computed block by block from ``row_blocks`` so a long trace is never held as a full matrix per layer.
The induction probe runs the model through a ``NaiveStepper`` (one forward pass with attention capture). It adds
no beginning-of-sequence token, as SmolLM2's tokenizer adds none to plain text either, so position 0 is one of the
random tokens (and takes the sink's weight).
What it does not do: draw, or decide what a "real" head is beyond the stated thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from kvviz.attention_matrix import row_blocks
from kvviz.models import LoadedModel
from kvviz.records import Trace
from kvviz.stepper import NaiveStepper
from kvviz.tracing import new_trace

PROBE_HALF_LENGTH = 50
PROBE_SEED = 0

MEASURES = ("sink", "previous", "induction", "entropy", "spread")
# The maps the Attention page draws: spread stands for entropy there, since it compares across trace lengths.
MAPS = ("sink", "previous", "induction", "spread")
# A head "is" a sink / previous-token / induction head when its mean score reaches these (weights are in [0, 1]).
THRESHOLDS = {"sink": 0.5, "previous": 0.5, "induction": 0.4}
TITLES = {
    "sink": "Which heads park their attention on the first token?",
    "previous": "Which heads look at the previous token?",
    "induction": "Which heads copy what followed this token last time?",
    "entropy": "How spread out is each head's attention (nats)?",
    "spread": "How spread out is each head's attention?",
}
MEANINGS = {
    "sink": "Sink mass: mean weight on position 0 over every query after it. A head with nothing useful to read "
            "parks its weight there (softmax must put it somewhere); 1 = all of it.",
    "previous": "Previous-token score: mean weight on position i-1 (queries 2 onwards). 1 = the head always reads "
                "the token just before.",
    "induction": "Induction score, on random tokens repeated twice: mean weight from each token of the second copy "
                 "on the token that followed its earlier occurrence. 1 = a perfect 'A B … A → B' copier.",
    "entropy": "Mean entropy in nats: 0 = all weight on one key; uniform over k keys = ln k (ln 100 ≈ 4.6).",
    "spread": "Spread: each query's entropy as a fraction of the most it could be, ln(positions it can see), "
              "averaged over queries 1 onwards. 0 = all weight on one key, 1 = even over every key. Unlike "
              "entropy in nats it does not grow with the length of the trace.",
}

# What a trace must hold before a measure has any query to average over.
NEEDS = {
    "sink": "it needs at least 2 tokens",
    "previous": "it needs at least 3 tokens",
    "induction": "no token occurs twice in it",
    "entropy": "it needs at least 2 tokens",
    "spread": "it needs at least 2 tokens",
}


@dataclass(frozen=True)
class HeadScores:
    """The four measures for every layer and query head, each ``(layers, heads)`` float64."""

    sink: np.ndarray
    previous: np.ndarray
    induction: np.ndarray  # NaN where no query's token occurred earlier
    entropy: np.ndarray
    spread: np.ndarray  # entropy / ln(visible positions), in [0, 1]
    tokens: int
    source: str  # what the scores were measured on, for chart notes

    def measure(self, name: str) -> np.ndarray:
        return getattr(self, name)


@dataclass(frozen=True)
class Finding:
    """Which heads reach a measure's threshold, and the strongest head either way."""

    measure: str
    threshold: float
    passing: tuple[tuple[int, int, float], ...]  # (layer, head, score), strongest first
    best: tuple[int, int, float]
    total_heads: int


@dataclass(frozen=True)
class InductionProbe:
    """Seeded random tokens repeated twice, and the head scores measured on the model's attention over them."""

    token_ids: tuple[int, ...]
    half_length: int
    seed: int
    scores: HeadScores


def _block_sums(block: np.ndarray, first_query: int, tokens: np.ndarray | None) -> dict[str, tuple[np.ndarray, int]]:
    """Per-head sums of each measure over the rows of one block ``(H, q, width)``, with how many rows counted."""
    heads, q, width = block.shape
    queries = np.arange(first_query, first_query + q)  # absolute query positions
    sums: dict[str, tuple[np.ndarray, int]] = {}

    after_first = queries >= 1
    sums["sink"] = (block[:, after_first, 0].sum(axis=1), int(after_first.sum()))
    log = np.zeros_like(block)
    np.log(block, out=log, where=block > 0)  # 0·log 0 counts as 0
    entropy = -np.einsum("hqk,hqk->hq", block, log)  # (H, q)
    sums["entropy"] = (entropy[:, after_first].sum(axis=1), int(after_first.sum()))
    most = np.log(queries[after_first] + 1.0)  # uniform weight over the i+1 visible positions
    sums["spread"] = ((entropy[:, after_first] / most).sum(axis=1), int(after_first.sum()))

    rows = np.nonzero(queries >= 2)[0]
    previous = block[:, rows, queries[rows] - 1]  # (H, rows)
    sums["previous"] = (previous.sum(axis=1), len(rows))

    if tokens is not None:
        keys = np.arange(width)
        # Key k follows an earlier occurrence of the query's token when tokens[k-1] == tokens[i] and k < i.
        key_follows = np.full(width, -1, dtype=np.int64)
        key_follows[1:] = tokens[: width - 1]
        targets = (key_follows[None, :] == tokens[queries][:, None]) & (keys[None, :] < queries[:, None])  # (q, k)
        counted = targets.any(axis=1)
        weight = np.einsum("hqk,qk->hq", block, targets.astype(np.float32))  # (H, q)
        sums["induction"] = (weight[:, counted].sum(axis=1), int(counted.sum()))
    return sums


def _score_blocks(blocks: Iterable[tuple[int, np.ndarray]], heads: int,
                  tokens: np.ndarray | None) -> dict[str, np.ndarray]:
    totals = {name: np.zeros(heads) for name in MEASURES}
    counts = dict.fromkeys(MEASURES, 0)
    for first_query, block in blocks:
        for name, (value, count) in _block_sums(block, first_query, tokens).items():
            totals[name] += value
            counts[name] += count
    return {name: totals[name] / counts[name] if counts[name] else np.full(heads, np.nan) for name in MEASURES}


def score_matrices(matrices: Sequence[np.ndarray], token_ids: Sequence[int] | None = None,
                   source: str = "given matrices") -> HeadScores:
    """Score full causal matrices, one ``(heads, T, T)`` array per layer (rows sum to 1, zero above the diagonal)."""
    tokens = np.asarray(token_ids, dtype=np.int64) if token_ids is not None else None
    per_layer = [_score_blocks([(0, np.asarray(m, dtype=np.float32))], m.shape[0], tokens) for m in matrices]
    return _stack(per_layer, matrices[0].shape[-1], source)


def score_trace(trace: Trace, source: str = "") -> HeadScores:
    """Score every layer and head of a trace from its cached rows, one block of rows at a time."""
    tokens = np.asarray(trace.token_ids(), dtype=np.int64)
    layers = len(trace.records[0].attention)
    heads = trace.records[0].attention[0].shape[0]
    per_layer = [_score_blocks(row_blocks(trace, layer), heads, tokens) for layer in range(layers)]
    return _stack(per_layer, len(tokens), source or f"{trace.model}, {len(tokens)} tokens of the current trace")


def _stack(per_layer: list[dict[str, np.ndarray]], tokens: int, source: str) -> HeadScores:
    stacked = {name: np.stack([layer[name] for layer in per_layer]) for name in MEASURES}  # (L, H) each
    return HeadScores(**stacked, tokens=tokens, source=source)


def probe_token_ids(loaded: LoadedModel, half_length: int = PROBE_HALF_LENGTH, seed: int = PROBE_SEED) -> list[int]:
    """``half_length`` distinct random ordinary tokens (seeded), then the same tokens again."""
    vocab = len(loaded.tokenizer)
    special = set(getattr(loaded.tokenizer, "all_special_ids", []) or [])
    ordinary = torch.tensor([t for t in range(vocab) if t not in special])
    if half_length < 2 or half_length > len(ordinary):
        raise ValueError(f"The probe needs 2..{len(ordinary)} distinct tokens per copy (got {half_length}).")
    generator = torch.Generator().manual_seed(seed)
    # Distinct within a copy, so every token of the second copy has exactly one earlier occurrence.
    chosen = ordinary[torch.randperm(len(ordinary), generator=generator)[:half_length]].tolist()
    return chosen + chosen


def run_induction_probe(loaded: LoadedModel, half_length: int = PROBE_HALF_LENGTH,
                        seed: int = PROBE_SEED) -> InductionProbe:
    """One forward pass over the repeated random tokens with attention capture, scored per layer and head."""
    ids = probe_token_ids(loaded, half_length, seed)
    record = NaiveStepper(loaded, capture_attention=True).prefill(ids)
    trace = new_trace(loaded)
    trace.append(record)
    source = f"{loaded.card.name}, 2×{half_length} random tokens (seed {seed})"
    return InductionProbe(tuple(ids), half_length, seed, score_trace(trace, source))


def find_heads(scores: HeadScores, measure: str, threshold: float | None = None) -> Finding:
    """Heads whose ``measure`` reaches ``threshold`` (default: ``THRESHOLDS``), strongest first."""
    values = scores.measure(measure)
    limit = THRESHOLDS[measure] if threshold is None else threshold
    layers, heads = np.nonzero(np.nan_to_num(values, nan=-np.inf) >= limit)
    passing = sorted(((int(l), int(h), float(values[l, h])) for l, h in zip(layers, heads)), key=lambda x: -x[2])
    flat = int(np.nanargmax(values)) if not np.all(np.isnan(values)) else 0
    best = (flat // values.shape[1], flat % values.shape[1], float(values.flat[flat]))
    return Finding(measure, limit, tuple(passing), best, values.size)


def describe(finding: Finding, show: int = 5) -> str:
    """One honest sentence: how many heads pass, which, and the strongest even when none passes."""
    layer, head, score = finding.best
    if np.isnan(score):
        return f"Not measurable on this trace: {NEEDS[finding.measure]}."
    if not finding.passing:
        return (f"No head reaches {finding.threshold:.2f}; the highest is layer {layer} head {head} "
                f"at {score:.2f}.")
    listed = ", ".join(f"L{l}H{h} {s:.2f}" for l, h, s in finding.passing[:show])
    more = f" and {len(finding.passing) - show} more" if len(finding.passing) > show else ""
    return (f"{len(finding.passing)} of {finding.total_heads} heads reach {finding.threshold:.2f}: "
            f"{listed}{more}.")


def describe_entropy(scores: HeadScores) -> str:
    """The most focused and the most spread-out head, by spread, with their entropy in nats."""
    values = scores.spread
    if np.all(np.isnan(values)):
        return f"Not measurable on this trace: {NEEDS['spread']}."
    low = np.unravel_index(np.nanargmin(values), values.shape)
    high = np.unravel_index(np.nanargmax(values), values.shape)
    return (f"Most focused: layer {low[0]} head {low[1]} (spread {values[low]:.2f}, "
            f"{scores.entropy[low]:.2f} nats); most spread out: layer {high[0]} head {high[1]} "
            f"(spread {values[high]:.2f}, {scores.entropy[high]:.2f} nats).")
