"""The uncompressed cache: every processed token of every head stays resident."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Segment, Selector


@dataclass(frozen=True)
class Full(Selector):
    name = "full"
    summary = "Keep every token (the baseline)"
    when = "never"

    def kept(self, ctx, p, g):
        return [Segment(ctx.heads, p + g)]
