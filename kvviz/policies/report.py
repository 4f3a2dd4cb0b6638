"""Every sentence the Cache policies page writes about a policy or a run, from the records.

What it does not do: compute scores (``quality.py``) or draw (``kvviz/charts/policies.py``).
"""

from __future__ import annotations

import numpy as np

from kvviz.kv_formula import format_bytes
from kvviz.policies.kivi import QuantisationErrors
from kvviz.policies.records import PolicyComparison, PolicyScore


def describe(name: str, sinks: int) -> str:
    """What a policy keeps, and what it costs, in one or two sentences."""
    return {
        "full": "Keeps every token: the reference every other policy is scored against. Its memory grows by one "
                "position per layer with every token.",
        "window": "Keeps only the newest tokens, up to the budget. Cheapest rule there is; once the first tokens "
                  "leave, the heads that put most of their attention on them (attention sinks) lose their anchor.",
        "sinks": f"StreamingLLM: keeps the first {sinks} tokens (the attention sinks) plus the newest. The same "
                 "memory as the window, and the sinks give the heads back a place to put attention they do not need.",
        "h2o": "H2O: half the budget for the newest tokens, half for the heavy hitters, the tokens with the most "
               "attention accumulated so far. Needs the attention weights at every step, which fused kernels "
               "(FlashAttention) do not return: here they are computed again, and that time is in ms/token.",
        "snapkv": "SnapKV: scores the prompt once, by the attention its last queries pay to each position (pooled "
                  "over neighbours), and keeps the best prompt positions plus the newest tokens. Built for long "
                  "prompts with short answers: generated tokens are never scored, so past the recent window they "
                  "go first.",
        "knorm": "Keeps the tokens whose keys have the smallest L2 norm: no attention weights needed. Devoto et al. "
                 "(2024) found that keys with a low norm tend to receive high attention.",
        "random": "Keeps a random choice of tokens, drawn afresh at every eviction with a fixed seed: the control "
                  "any scoring rule has to beat.",
        "fp8": "Keeps every token, each element in one byte (float8 e4m3) with one scale per tensor: half the bytes "
               "of bfloat16, a quarter of float32.",
        "int4": "Keeps every token in 4-bit integers with a scale and zero point per group of 64, the newest tokens "
                "(up to 128) in full precision until they are quantised together, as KIVI does.",
        "int2": "As int4 with 2 bits: four levels per group. The residual of recent tokens stays full precision.",
    }[name]


def run_sentence(result: PolicyComparison) -> str:
    """Which policy came closest to the full cache, and what the full cache held."""
    scored = [p for p in result.policies if p.name != "full"]
    if not scored:
        return ""
    best = min(scored, key=lambda p: p.kl)
    worst = max(scored, key=lambda p: p.kl)
    full = next((p for p in result.policies if p.name == "full"), None)
    held = f" The full cache held {format_bytes(full.bytes_held)} at the end." if full is not None else ""
    return (f"Over {result.scored:,} next tokens, **{best.label}** stayed closest to the full cache (mean KL "
            f"{best.kl:.4f} nats, same top token {best.top1_agreement:.1%} of the time, holding "
            f"{format_bytes(best.bytes_held)}); **{worst.label}** strayed furthest (KL {worst.kl:.4f}, "
            f"{worst.top1_agreement:.1%}).{held}")


def collapse_sentence(result: PolicyComparison) -> str:
    """StreamingLLM's question, answered from this run: does the window collapse, and do the sinks restore it?"""
    windows = {p.budget_tokens: p for p in result.policies if p.name == "window"}
    sinks = {p.budget_tokens: p for p in result.policies if p.name == "sinks"}
    full = next((p for p in result.policies if p.name == "full"), None)
    shared = sorted(set(windows) & set(sinks))
    if not shared:
        return ""
    budget = shared[0]
    window, kept = windows[budget], sinks[budget]
    against = f"; the full cache: {full.perplexity:,.2f}" if full is not None else ""
    ratio = window.perplexity / kept.perplexity
    verdict = ("the window collapses and keeping the first tokens restores it" if ratio > 10 else
               "keeping the first tokens helps" if ratio > 1.05 else
               "keeping the first tokens makes little difference here")
    return (f"At a budget of {budget} tokens, perplexity with the window alone is {window.perplexity:,.2f}, with "
            f"{kept.name} (the first tokens kept) {kept.perplexity:,.2f}{against}: {verdict} "
            f"({ratio:,.1f}× between them).")


def kivi_sentence(errors: QuantisationErrors) -> str:
    keys_token, keys_channel = errors.key_relative("token").mean(), errors.key_relative("channel").mean()
    values_token, values_channel = errors.value_relative("token").mean(), errors.value_relative("channel").mean()
    largest = errors.key_magnitude[errors.outlier_channel] / np.median(errors.key_magnitude)
    return (f"Rounded to {errors.bits} bits, layer {errors.layer}'s keys lose {keys_token:.0%} of a channel's size on "
            f"average when each token's channels share a range, {keys_channel:.0%} when each channel has its own "
            f"({errors.key_ratio:,.1f}×); its largest key channel ({errors.outlier_channel}) is {largest:,.1f}× the "
            f"median channel. Its values lose {values_channel:.0%} of a token's size grouped per channel, "
            f"{values_token:.0%} grouped per token ({errors.value_ratio:,.1f}×). KIVI quantises keys per channel and "
            "values per token.")


def score_row(score: PolicyScore) -> dict[str, str]:
    return {
        "policy": score.label, "budget (tokens)": "-" if score.budget_tokens is None else f"{score.budget_tokens:,}",
        "K and V held": format_bytes(score.bytes_held), "perplexity": f"{score.perplexity:,.3f}",
        "top-1 agreement": f"{score.top1_agreement:.1%}", "KL (nats)": f"{score.kl:.4f}",
        "ms/token": f"{score.ms_per_token:,.1f}",
    }
