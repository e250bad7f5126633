"""Least-recently-used eviction: a token is 'used' at a step when its attention weight is above the mean
(1/n); evict the token whose last use is oldest."""

from __future__ import annotations

from dataclasses import dataclass

from .scored import ScoredEviction


@dataclass(frozen=True)
class LRU(ScoredEviction):
    name = "lru"
    summary = "Evict the token least recently used (attention weight above 1/n counts as a use)"
    state_bits = 32  # int32 step of last use per resident token and head
    flops_per_resident = 1  # compare the weight with 1/n

    def prefill_score_flops(self, ctx, p):
        return p * ctx.layout.group * (2 * ctx.layout.score_dim + 5)
