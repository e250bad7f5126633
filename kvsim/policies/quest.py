"""Quest (Tang et al. 2024): storage stays full; each decode step scores pages of `page` tokens by an upper
bound of q.k from per-page channel-wise min and max keys, and reads only the best pages (`budget` tokens)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import KvsimError
from .base import READ, Policy, Segment, param


@dataclass(frozen=True)
class Quest(Policy):
    name = "quest"
    role = READ
    summary = "Query-aware sparse reads: keep everything, read the top pages by a min/max key bound"
    when = "every step (reads only)"

    page: int = param(16, "tokens per page", lo=1)
    budget: int = param(1024, "tokens read per decode step per head (whole pages)", lo=1)

    def validate(self):
        if self.budget % self.page:
            raise KvsimError(f"{self.name}: budget ({self.budget}) must be a multiple of page ({self.page})")

    def read_tokens(self, n: np.ndarray) -> np.ndarray:
        """Tokens a step reads from n resident: everything up to the budget; beyond it, budget/page - 1 whole
        pages plus the page being filled, which is always read and holds ((n - 1) mod page) + 1 tokens."""
        current = (n - 1) % self.page + 1
        return np.where(n <= self.budget, n, self.budget - self.page + current)

    def read(self, ctx, kept: list[Segment]) -> list[Segment]:
        return [Segment(s.heads, self.read_tokens(s.tokens), s.encoding, s.extra_bits_per_token) for s in kept]

    def _pages(self, kept):
        return sum(s.heads * (-(-s.tokens // self.page)) for s in kept)

    def state_bytes(self, ctx, kept) -> np.ndarray:
        """Per-page min and max keys, kept at the KV dtype."""
        return self._pages(kept) * 2 * ctx.layout.k_dim * ctx.elem_bits // 8

    def step_cost(self, ctx, kept):
        pages = self._pages(kept)
        flops = pages * float(ctx.layout.group * 3 * ctx.layout.k_dim) + pages
        return flops, self.state_bytes(ctx, kept)

    def notes(self, p):
        return [f"quest: read budget {self.budget} >= prompt {int(np.min(p))}: every token is read"] \
            if np.any(np.asarray(p) <= self.budget) else []
