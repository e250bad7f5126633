"""Score-based eviction: score every resident token, keep the top `budget` per head, gather.

H2O, TOVA, key-norm, LRU and the learned scorer differ only in the score and what it costs, so each is a
few lines on top of this. Compression runs after the prefill and then every `every` decode steps
(0: prefill only): between compressions the cache grows by one token per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Segment, Selector, budget_peak, budget_resident, clamp_note, param


def causal_pairs(p: np.ndarray) -> np.ndarray:
    """Query-key pairs a causal pass over p tokens scores: p (p + 1) / 2, in float64 (it is a FLOP count, and
    passes 2**63 for prompts of a few tens of millions of tokens)."""
    p = np.asarray(p, dtype=np.float64)
    return p * (p + 1) / 2


@dataclass(frozen=True)
class ScoredEviction(Selector):
    budget: int = param(1024, "tokens kept per head after each compression", lo=1)
    every: int = param(1, "compress every N decode steps; 0: only after the prefill", lo=0)

    # Bits of bookkeeping the scorer keeps per resident token and head (a running score, a position).
    state_bits: ClassVar[int] = 0
    # FLOP per resident token, per query head, per decode step spent updating scores.
    flops_per_resident: ClassVar[int] = 0

    @property
    def when(self) -> str:  # type: ignore[override]
        return "after the prefill" if self.every == 0 else (
            "every step" if self.every == 1 else f"every {self.every} steps")

    def layer_budget(self, ctx) -> int:
        return self.budget

    def kept(self, ctx, p, g):
        return [Segment(ctx.heads, budget_resident(p, g, self.layer_budget(ctx), self.every))]

    def peak(self, ctx, p, gmax):
        return [Segment(ctx.heads, budget_peak(p, gmax, self.layer_budget(ctx), self.every))]

    def state_bytes(self, ctx, p, g):
        if self.every == 0:  # compressed once, at the prefill: no scores are kept afterwards
            return np.zeros(np.broadcast_shapes(np.shape(p), np.shape(g)), dtype=np.int64)
        n = budget_resident(p, g, self.layer_budget(ctx), self.every)
        return ctx.heads * n * self.state_bits // 8

    def new_token_flops(self, ctx) -> int:
        """FLOP to score the appended token, per head."""
        return 0

    def prefill_score_flops(self, ctx, p: np.ndarray) -> np.ndarray:
        """FLOP per head to score the prompt before the first compression."""
        return np.zeros_like(p)

    def step_cost(self, ctx, p, g):
        n = budget_resident(p, g, self.layer_budget(ctx), self.every) + 1
        if self.every == 0:
            return np.zeros_like(n), np.zeros_like(n)
        flops = ctx.heads * (n * ctx.layout.group * self.flops_per_resident + self.new_token_flops(ctx))
        flops = flops + ctx.heads * n // self.every  # choosing the victims
        state_traffic = 2 * ctx.heads * n * self.state_bits // 8 if self.flops_per_resident else \
            ctx.heads * n * self.state_bits // 8 // self.every
        return flops, state_traffic

    def prefill_cost(self, ctx, p):
        flops = ctx.heads * (self.prefill_score_flops(ctx, p) + p)
        return flops, ctx.heads * p * self.state_bits // 8 * (self.every > 0)

    def notes(self, p):
        return clamp_note(self.name, self.budget, p)
