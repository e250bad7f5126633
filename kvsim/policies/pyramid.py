"""Per-layer budgets on top of SnapKV's selection.

PyramidKV (Cai et al. 2024): budgets fall linearly from the first to the last layer; `beta` sets how
steep (the last layer gets (budget - window) / beta beyond its window). Or any per-layer schedule: `ratios`
lists budget fractions from the first layer to the last, stretched over the depth in equal runs of layers
(`pyramidkv:budget=1024,ratios=1,1,0.5,0.25`: the first quarter of the layers keep 1024, the last 256).
DynamicKV (Zhou et al. 2024): the same total, split across layers at run time by how concentrated each layer's
attention is; layer budgets come in multiples of `quantum`, so per-layer figures are averages and the total is
exact."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import KvsimError
from .base import param
from .snapkv import SnapKV


def pyramid_budgets(budget: int, window: int, beta: float, n_layers: int) -> list[int]:
    """Budget of each layer, first to last; the same integers measured/ uses."""
    avg = budget - window
    low = avg / beta
    high = 2 * avg - low
    if n_layers == 1:
        return [budget]
    return [window + int(round(high - (high - low) * i / (n_layers - 1))) for i in range(n_layers)]


@dataclass(frozen=True)
class PyramidKV(SnapKV):
    name = "pyramidkv"
    summary = "SnapKV with budgets falling linearly with depth (pyramid); average budget as given"

    beta: float = param(20.0, "steepness: the last layer keeps (budget - window) / beta beyond its window "
                              "(unused with ratios)", lo=1.0)
    ratios: tuple = param((), "per-layer budgets as fractions of budget, first layer to last, stretched over the "
                              "depth in equal runs (e.g. 1,1,0.5,0.25); empty: the linear pyramid")

    def validate(self):
        super().validate()
        if not isinstance(self.ratios, tuple) or not all(
                isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < float("inf") for r in self.ratios):
            raise KvsimError(f"pyramidkv: ratios must be positive numbers, got {self.ratios!r}")
        low = min((self.ratio_budget(r) for r in self.ratios), default=self.budget)
        if low <= self.window:
            raise KvsimError(f"pyramidkv: ratio {min(self.ratios)} gives a layer budget of {low} tokens, not above "
                             f"the window ({self.window})")

    def ratio_budget(self, r: float) -> int:
        return int(round(self.budget * r))

    def layer_budget(self, ctx) -> int:
        if self.ratios:
            return self.ratio_budget(self.ratios[ctx.rank * len(self.ratios) // ctx.n_ranked])
        return pyramid_budgets(self.budget, self.window, self.beta, ctx.n_ranked)[ctx.rank]


@dataclass(frozen=True)
class DynamicKV(SnapKV):
    name = "dynamickv"
    summary = "SnapKV with the total budget split across layers at run time by attention concentration"
    data_dependent = True
    defers = True

    quantum: int = param(16, "layer budgets are multiples of this many tokens", lo=1, quality_only=True)

    def validate(self):
        super().validate()
        if self.budget % self.quantum:
            raise KvsimError(f"dynamickv: budget ({self.budget}) must be a multiple of quantum ({self.quantum})")
