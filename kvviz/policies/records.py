"""What a cache policy holds and how it scored against the full cache: plain data, no torch.

What it does not do: compute any of it (``eviction.py``, ``quality.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class LayerHolding:
    """The positions one layer holds after a policy's eviction, and the bytes of its live K and V tensors."""

    layer: int
    positions: tuple[tuple[int, ...], ...]  # per KV head, ascending original token positions
    bytes: int

    @property
    def same_across_heads(self) -> bool:
        return all(head == self.positions[0] for head in self.positions)

    @property
    def tokens(self) -> int:
        return len(self.positions[0]) if self.positions else 0


@dataclass(frozen=True)
class PolicyScore:
    """One policy at one budget over one text, scored against the full cache on the same tokens.

    ``perplexity`` is exp(mean negative log-likelihood) of the text's next tokens; ``top1_agreement`` the share of
    those steps where its most likely next token is the full cache's; ``kl`` the mean KL(full ‖ policy) of the two
    next-token distributions, in nats; ``bytes_held`` the K and V bytes held at the end; ``ms_per_token`` the mean
    device-synchronised time of a decode step, eviction included.
    """

    name: str
    budget_tokens: int | None  # None for the full cache
    bytes_held: int
    perplexity: float
    top1_agreement: float
    kl: float
    ms_per_token: float
    tokens_scored: int
    holdings: tuple[LayerHolding, ...] = ()
    nll_per_token: tuple[float, ...] = ()  # the negative log-likelihood of each scored token, nats
    kl_per_token: tuple[float, ...] = ()  # KL(full ‖ policy) at each scored token, nats
    watched: tuple[tuple[int, ...], ...] = ()  # after each call: the positions held in the watched layer and head

    @property
    def label(self) -> str:
        """'sinks@64' for an evicting policy, the name alone for one that holds every token."""
        return self.name if self.budget_tokens is None or self.name == "full" else f"{self.name}@{self.budget_tokens}"

    def to_dict(self, with_holdings: bool = False) -> dict[str, Any]:
        out = {key: value for key, value in asdict(self).items()
               if key not in ("holdings", "nll_per_token", "kl_per_token", "watched")}
        if with_holdings:
            out["holdings"] = [
                {"layer": h.layer, "bytes": h.bytes,
                 "positions": [list(h.positions[0])] if h.same_across_heads else [list(p) for p in h.positions]}
                for h in self.holdings
            ]
        return out


@dataclass(frozen=True)
class PolicyComparison:
    """Every policy over the same text: the first ``prompt_tokens`` go in one prefill, the rest one at a time."""

    model: str
    text: str  # where the text came from: a file path, or the shipped excerpt's name
    tokens: int
    prompt_tokens: int
    device: str
    dtype: str
    policies: tuple[PolicyScore, ...]
    wall_seconds: float
    watch: tuple[int, int] | None = None  # (layer, KV head) whose held positions each score's ``watched`` lists

    @property
    def scored(self) -> int:
        """Next tokens scored so far (all after the prompt once the run has finished)."""
        return self.policies[0].tokens_scored if self.policies else 0

    def to_dict(self, with_holdings: bool = False) -> dict[str, Any]:
        return {
            "model": self.model, "text": self.text, "tokens": self.tokens, "prompt_tokens": self.prompt_tokens,
            "device": self.device, "dtype": self.dtype, "wall_seconds": self.wall_seconds,
            "policies": [policy.to_dict(with_holdings) for policy in self.policies],
        }
