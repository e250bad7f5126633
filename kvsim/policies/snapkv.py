"""SnapKV (Li et al. 2024): after the prefill, the last `window` prompt queries vote (attention pooled over a
`kernel`-wide neighbourhood) for the prompt tokens to keep; the window itself is always kept. Decode tokens
are appended uncompressed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import KvsimError
from .base import Segment, Selector, clamp_note, param


@dataclass(frozen=True)
class SnapKV(Selector):
    name = "snapkv"
    summary = "Compress the prompt once: keep tokens the last `window` prompt queries attend to most"
    when = "after the prefill"

    budget: int = param(1024, "prompt tokens kept per head, observation window included", lo=1)
    window: int = param(32, "observation window: the last prompt queries that vote, always kept", lo=1)
    kernel: int = param(7, "width of the pooling over neighbouring tokens' votes (odd)", lo=1)
    pooling: str = param("max", "how votes are pooled over the kernel", choices=("max", "avg"),
                         quality_only=True)

    def validate(self):
        if self.window >= self.budget:
            raise KvsimError(f"{self.name}: window ({self.window}) must be smaller than budget ({self.budget})")
        if self.kernel % 2 == 0:
            raise KvsimError(f"{self.name}: kernel ({self.kernel}) must be odd")

    def layer_budget(self, ctx) -> int:
        return self.budget

    def kept(self, ctx, p, g):
        return [Segment(ctx.heads, np.minimum(p, self.layer_budget(ctx)) + g)]

    def prefill_cost(self, ctx, p):
        w = np.minimum(p, self.window)
        votes = w * p * ctx.layout.group * (2 * ctx.layout.score_dim + 5)
        return ctx.heads * (votes + self.kernel * p + p), np.zeros_like(p)

    def notes(self, p):
        return clamp_note(self.name, self.budget, p)

    def layer_notes(self, p, ctxs) -> list[str]:
        """Say so when the prompt is below some layer's budget: that layer keeps the whole prompt."""
        budgets = [self.layer_budget(c) for c in ctxs if c.rank >= 0] or [self.budget]
        small = int(np.min(p))
        if small >= max(budgets):
            return []
        if len(set(budgets)) == 1:
            return clamp_note(self.name, budgets[0], p)
        over = sum(b > small for b in budgets)
        return [f"{self.name}: prompt {small} is below the budget of {over} of {len(budgets)} layers (up to "
                f"{max(budgets)}): those layers keep the whole prompt, nothing is evicted there at the prefill"]
