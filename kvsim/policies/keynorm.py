"""Key-norm eviction (Devoto et al. 2024): keys with a small L2 norm draw the most attention; keep those."""

from __future__ import annotations

from dataclasses import dataclass

from .scored import ScoredEviction


@dataclass(frozen=True)
class KeyNorm(ScoredEviction):
    name = "keynorm"
    summary = "Keep the tokens whose keys have the smallest L2 norm (no attention weights needed)"
    state_bits = 32  # the fp32 norm of each resident key, computed once when it is written

    def new_token_flops(self, ctx):
        return 2 * ctx.layout.k_dim

    def prefill_score_flops(self, ctx, p):
        return p * 2 * ctx.layout.k_dim
