"""Clustering of keys: older tokens of each head are merged into `clusters` centroids (k-means on keys,
values averaged, a count per centroid so attention weighs a centroid by log(count)); the most recent
`recent` tokens stay exact. Re-clustering runs after the prefill and every `every` steps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Segment, Selector, budget_peak, budget_resident, param


@dataclass(frozen=True)
class KMeans(Selector):
    name = "kmeans"
    summary = "Merge older tokens into k-means centroids of keys (values averaged, counts kept)"

    clusters: int = param(256, "centroids kept per head", lo=1)
    recent: int = param(128, "most recent tokens kept exactly", lo=0)
    every: int = param(64, "re-cluster every N decode steps; 0: only after the prefill", lo=0)
    iters: int = param(8, "Lloyd iterations per clustering", lo=1)

    @property
    def when(self) -> str:  # type: ignore[override]
        return "after the prefill" if self.every == 0 else f"every {self.every} steps"

    @property
    def cap(self) -> int:
        return self.clusters + self.recent

    def kept(self, ctx, p, g):
        return [Segment(ctx.heads, budget_resident(p, g, self.cap, self.every))]

    def peak(self, ctx, p, gmax):
        return [Segment(ctx.heads, budget_peak(p, gmax, self.cap, self.every))]

    def _clustered(self, p, g):
        last = (g // self.every) * self.every if self.every else np.zeros_like(g)
        return (p + last) > self.cap

    def state_bytes(self, ctx, p, g):
        return np.where(self._clustered(p, g), ctx.heads * self.clusters * 4, 0)  # fp32 counts

    def notes(self, p):
        cap = self.cap
        return [f"kmeans: clusters + recent = {cap} >= prompt {int(np.min(p))}: nothing is clustered at the "
                "prefill"] if np.any(np.asarray(p) <= cap) else []

    def _cluster_flops(self, ctx, n):
        return ctx.heads * self.iters * n * self.clusters * (2 * ctx.layout.k_dim + 1)

    def step_cost(self, ctx, p, g):
        n = budget_resident(p, g, self.cap, self.every) + 1
        if self.every == 0:
            return np.zeros_like(n), np.zeros_like(n)
        return self._cluster_flops(ctx, n) // self.every, np.zeros_like(n)

    def prefill_cost(self, ctx, p):
        return np.where(p > self.cap, self._cluster_flops(ctx, p), 0), np.zeros_like(p)
