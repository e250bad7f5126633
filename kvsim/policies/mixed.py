"""Mixed precision with retention (MiKV-style): keep a `retain` fraction of tokens, chosen by accumulated
attention; the most important `high` fraction of those stay at the KV dtype, the rest are quantized per
token to k_bits / v_bits. Re-decided after the prefill and every `every` steps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Segment, Selector, param
from .quant import Quant


def retained(p, g, retain: float, every: int) -> np.ndarray:
    """Tokens resident after g steps when each compression keeps ceil(retain x tokens seen so far)."""
    t = p + g
    last = (g // every) * every if every else np.zeros_like(g)
    at_last = np.ceil(retain * (p + last) - 1e-9).astype(np.int64)
    return np.minimum(t, at_last + (g - last))


@dataclass(frozen=True)
class MixedPrecision(Selector):
    name = "mixed"
    summary = "Retain a fraction of tokens; the most important stay full precision, the rest low-bit"

    retain: float = param(0.32, "fraction of processed tokens kept", lo=0.0, hi=1.0)
    high: float = param(0.6, "fraction of kept tokens stored at the KV dtype", lo=0.0, hi=1.0)
    k_bits: int = param(3, "bits per key element of low-precision tokens", lo=1, hi=8)
    v_bits: int = param(2, "bits per value element of low-precision tokens", lo=1, hi=8)
    group: int = param(0, "channels per quantization group (0: whole row)", lo=0)
    every: int = param(1, "re-decide every N decode steps; 0: only after the prefill", lo=0)

    state_bits = 32  # fp32 accumulated score per resident token and head

    @property
    def when(self) -> str:  # type: ignore[override]
        return "after the prefill" if self.every == 0 else f"every {self.every} steps"

    def low(self) -> Quant:
        return Quant(bits=self.k_bits, v_bits=self.v_bits, group=self.group)

    def _split(self, n):
        hi = np.floor(self.high * n + 1e-9).astype(np.int64)
        return hi, n - hi

    def _segments(self, ctx, n):
        hi, lo = self._split(n)
        return [Segment(ctx.heads, hi), Segment(ctx.heads, lo, self.low())]

    def kept(self, ctx, p, g):
        return self._segments(ctx, retained(p, g, self.retain, self.every))

    def peak(self, ctx, p, gmax):
        end = retained(p, gmax, self.retain, self.every)
        if self.every > 1:
            g_star = ((gmax + 1) // self.every) * self.every - 1
            before = np.where(g_star >= 0, retained(p, np.maximum(g_star, 0), self.retain, self.every), 0)
            end = np.maximum(end, before)
        return self._segments(ctx, end)

    def state_bytes(self, ctx, p, g):
        if self.every == 0:
            return np.zeros(np.broadcast_shapes(np.shape(p), np.shape(g)), dtype=np.int64)
        return ctx.heads * retained(p, g, self.retain, self.every) * self.state_bits // 8

    def step_cost(self, ctx, p, g):
        n = retained(p, g, self.retain, self.every) + 1
        flops = ctx.heads * n * float(ctx.layout.group + 1)
        return flops, 2 * ctx.heads * n * self.state_bits // 8

    def prefill_cost(self, ctx, p):
        from .scored import causal_pairs
        return ctx.heads * causal_pairs(p) * ctx.layout.group * (2 * ctx.layout.score_dim + 5), np.zeros_like(p)
