"""MiniCache (Liu et al. 2024): from depth `start` on, adjacent layers' KV are merged after the prefill.
Per token and head the pair stores one direction (SLERP of the two layers' unit vectors at `t`) plus the
four magnitudes (|K| and |V| of both layers); the `retain` fraction of tokens whose directions disagree
most stays unmerged in both layers. Decode tokens are appended per layer, unmerged."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import MERGE, Policy, Segment, param


@dataclass(frozen=True)
class MiniCache(Policy):
    name = "minicache"
    role = MERGE
    summary = "Merge adjacent layers' KV from mid-depth on (shared directions, per-layer magnitudes)"
    when = "after the prefill"

    start: float = param(0.5, "fraction of the depth where merging starts", lo=0.0, hi=1.0)
    retain: float = param(0.05, "fraction of prompt tokens kept unmerged in both layers", lo=0.0, hi=1.0)
    t: float = param(0.6, "SLERP interpolation between the two layers' directions", lo=0.0, hi=1.0,
                     quality_only=True)

    def pair_position(self, ctx) -> int:
        """0: first layer of a merged pair (holds the shared part), 1: second, -1: not merged."""
        first = int(np.ceil(self.start * ctx.n_ranked))
        k = ctx.rank - first
        if ctx.rank < 0 or k < 0 or k >= 2 * ((ctx.n_ranked - first) // 2):
            return -1
        return k % 2

    def segments(self, ctx, p, g, *, reading: bool) -> list[Segment] | None:
        pos = self.pair_position(ctx)
        if pos < 0:
            return None
        r = np.floor(self.retain * p).astype(np.int64)
        own = Segment(ctx.heads, r + g)
        if pos == 0:
            # Directions plus 4 magnitudes are stored here; reading needs this layer's 2 magnitudes.
            mags = (2 if reading else 4) * ctx.elem_bits
            return [Segment(ctx.heads, p - r, None, mags), own]
        return [Segment(ctx.heads, p - r, None, 2 * ctx.elem_bits), own] if reading else [own]

    def layer_notes(self, p, ctxs) -> list[str]:
        """Say so when nothing would be merged: no adjacent pair of layers from depth `start`, or retain=1."""
        if self.retain >= 1:
            return ["minicache: retain=1 keeps every prompt token unmerged: nothing is merged"]
        if not any(self.pair_position(c) == 0 for c in ctxs):
            return [f"minicache: no pair of adjacent layers from depth start={self.start}: nothing is merged"]
        return []

    def prefill_cost(self, ctx, p):
        if self.pair_position(ctx) != 0:
            return np.zeros_like(p), np.zeros_like(p)
        d = ctx.layout.k_dim + ctx.layout.v_dim
        return ctx.heads * p * 20 * d, np.zeros_like(p)  # norms, angle, SLERP for both K and V
