"""AdaKV (Feng et al. 2024): a layer's budget (heads x budget) is split across its heads at run time,
more to heads whose attention is spread out, each head guaranteed `floor` x budget. Storage is really
per head (ragged), not masked. Per-head figures are averages; the per-layer total is exact."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import KvsimError
from .base import param
from .snapkv import SnapKV


@dataclass(frozen=True)
class AdaKV(SnapKV):
    name = "adakv"
    summary = "SnapKV with each layer's budget split unevenly across heads at run time (ragged per-head storage)"
    data_dependent = True

    floor: float = param(0.2, "fraction of the per-head budget every head is guaranteed", lo=0.0, hi=1.0,
                         quality_only=True)
    quantum: int = param(1, "head budgets are multiples of this many tokens", lo=1, quality_only=True)

    def validate(self):
        super().validate()
        if self.budget % self.quantum:
            raise KvsimError(f"adakv: budget ({self.budget}) must be a multiple of quantum ({self.quantum})")
