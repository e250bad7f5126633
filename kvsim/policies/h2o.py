"""H2O (Zhang et al. 2023): heavy hitters by accumulated attention, plus a protected recent window."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import KvsimError
from .base import param
from .scored import ScoredEviction, causal_pairs


@dataclass(frozen=True)
class H2O(ScoredEviction):
    name = "h2o"
    summary = "Heavy hitters: keep the tokens with the largest accumulated attention, plus the recent window"
    flops_per_resident = 1  # add this step's attention weight, per query head

    # Its size only changes which tokens are kept; whether it is zero changes the state (positions).
    recent: int = param(32, "most recent tokens always kept (part of the budget)", lo=0, quality_only=True)

    @property
    def state_bits(self) -> int:  # type: ignore[override]
        """fp32 accumulated score per resident token and head, plus an int32 position when a recent window
        must be told apart (slots are reused in place, so order is not positional)."""
        return 32 + (32 if self.recent else 0)

    def validate(self):
        if self.recent >= self.budget:
            raise KvsimError(f"h2o: recent ({self.recent}) must be smaller than budget ({self.budget})")

    def prefill_score_flops(self, ctx, p):
        # Column sums of the full causal attention matrix: an extra QK^T + softmax pass over the prompt.
        return causal_pairs(p) * ctx.layout.group * (2 * ctx.layout.score_dim + 5)
