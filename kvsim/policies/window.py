"""Recency-only caches: a plain window, and StreamingLLM's attention sinks plus a window.
Both run as ring buffers: the new token overwrites the oldest non-sink slot, so no state and no copying."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Segment, Selector, param


@dataclass(frozen=True)
class Window(Selector):
    name = "window"
    summary = "Keep the most recent `size` tokens"
    when = "every step"

    size: int = param(1024, "tokens kept per head (the most recent ones)", lo=1)

    def kept(self, ctx, p, g):
        return [Segment(ctx.heads, np.minimum(p + g, self.size))]

    def notes(self, p):
        return [f"window: size {self.size} >= prompt {int(np.min(p))}: nothing is evicted at the prefill"] \
            if np.any(self.size >= p) else []


@dataclass(frozen=True)
class StreamingLLM(Selector):
    """Xiao et al. 2023: the first `sinks` tokens attract attention regardless of content; keep them."""

    name = "streamingllm"
    summary = "Keep `sinks` initial tokens plus the `window` most recent"
    when = "every step"

    sinks: int = param(4, "initial tokens always kept (attention sinks)", lo=0)
    window: int = param(1020, "most recent tokens kept", lo=1)

    def kept(self, ctx, p, g):
        return [Segment(ctx.heads, np.minimum(p + g, self.sinks + self.window))]

    def notes(self, p):
        cap = self.sinks + self.window
        return [f"streamingllm: sinks + window = {cap} >= prompt {int(np.min(p))}: nothing is evicted at the "
                "prefill"] if np.any(cap >= p) else []
