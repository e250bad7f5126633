"""A learned scorer: a small MLP maps each key to an importance score (as in learned eviction work such as
"Not All Heads Matter"/TokenSelect-style predictors). The score is computed once when a token is written
and cached; the weights are one per layer, shared by all sequences."""

from __future__ import annotations

from dataclasses import dataclass

from .base import param
from .scored import ScoredEviction


@dataclass(frozen=True)
class Learned(ScoredEviction):
    name = "learned"
    summary = "Keep the tokens a per-layer MLP scores highest from their keys; MLP weights and FLOPs counted"
    state_bits = 32  # cached fp32 score per resident token and head

    hidden: int = param(32, "hidden units of the scorer MLP (key -> hidden -> score)", lo=1)

    def scorer_params(self, ctx) -> int:
        return ctx.layout.k_dim * self.hidden + self.hidden + self.hidden + 1

    def shared_bytes(self, ctx):
        return 4 * self.scorer_params(ctx)  # fp32 weights

    def new_token_flops(self, ctx):
        return 2 * (ctx.layout.k_dim * self.hidden + self.hidden) + 4 * self.hidden

    def prefill_score_flops(self, ctx, p):
        return p * self.new_token_flops(ctx)
