"""RocketKV (Behnam et al. 2025): two stages. A coarse SnapKV-style eviction after the prefill keeps
`budget` tokens; then each decode step reads only the top pages of what is kept (`read` tokens)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import KvsimError
from .base import param
from .quest import Quest
from .snapkv import SnapKV


@dataclass(frozen=True)
class RocketKV(SnapKV):
    name = "rocketkv"
    summary = "Two stages: SnapKV eviction after the prefill, then Quest-style sparse reads each step"

    page: int = param(16, "tokens per page for the sparse reads", lo=1)
    read_budget: int = param(256, "tokens read per decode step per head (whole pages)", lo=1)

    def validate(self):
        super().validate()
        if self.read_budget > self.budget:
            raise KvsimError(f"rocketkv: read_budget ({self.read_budget}) exceeds budget ({self.budget})")
        self.reader()

    def reader(self) -> Quest:
        return Quest(page=self.page, budget=self.read_budget)
