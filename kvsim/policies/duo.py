"""DuoAttention (Xiao et al. 2024): retrieval heads keep the full cache, streaming heads keep only sinks and
a recent window. The original learns which heads are which; here each layer has round(retrieval x heads)
retrieval heads, picked by attention spread on the prompt, so the byte count per layer is fixed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Segment, Selector, param


@dataclass(frozen=True)
class DuoAttention(Selector):
    name = "duo"
    summary = "Retrieval heads keep everything; streaming heads keep sinks + recent window (per-head storage)"
    when = "every step (streaming heads)"

    retrieval: float = param(0.5, "fraction of each layer's KV heads that keep the full cache", lo=0.0, hi=1.0)
    sinks: int = param(4, "initial tokens streaming heads keep", lo=0)
    window: int = param(252, "recent tokens streaming heads keep", lo=1)

    def retrieval_heads(self, ctx) -> int:
        return int(np.floor(self.retrieval * ctx.heads + 0.5))

    def kept(self, ctx, p, g):
        n_r = self.retrieval_heads(ctx)
        t = p + g
        return [Segment(n_r, t), Segment(ctx.heads - n_r, np.minimum(t, self.sinks + self.window))]

    def notes(self, p):
        cap = self.sinks + self.window
        return [f"duo: sinks + window = {cap} >= prompt {int(np.min(p))}: streaming heads keep the whole prompt"] \
            if np.any(np.asarray(p) <= cap) else []

    def prefill_cost(self, ctx, p):
        # Picking the retrieval heads: attention mass of the last query outside sinks + window, per head.
        return ctx.heads * p * ctx.layout.group * (2 * ctx.layout.score_dim + 5), np.zeros_like(p)
