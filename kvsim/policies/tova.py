"""TOVA (Oren et al. 2024): evict the token the current query attends to least."""

from __future__ import annotations

from dataclasses import dataclass

from .scored import ScoredEviction


@dataclass(frozen=True)
class TOVA(ScoredEviction):
    name = "tova"
    summary = "Evict the token with the lowest attention weight from the current query (mean over heads in a group)"
    flops_per_resident = 1  # mean of the group's attention weights

    def prefill_score_flops(self, ctx, p):
        return p * ctx.layout.group * (2 * ctx.layout.score_dim + 5)  # the last prompt query's row
