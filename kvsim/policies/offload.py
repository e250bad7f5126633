"""Offload to host memory: the KV of the first `fraction` of the cache-holding layers lives in host memory
and is streamed to the device layer by layer each step over the host link (PCIe). With `overlap`, the copy
of layer l+1 runs while layer l computes, so a step costs the larger of compute and transfer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import PLACE, Policy, param


@dataclass(frozen=True)
class Offload(Policy):
    name = "offload"
    role = PLACE
    summary = "Keep the KV of a fraction of layers in host memory, streamed in over PCIe every step"
    when = "every step (transfers)"

    fraction: float = param(1.0, "fraction of the cache-holding layers whose KV lives in host memory",
                            lo=0.0, hi=1.0)
    overlap: bool = param(True, "overlap each layer's transfer with the previous layer's compute")

    def offloaded(self, kv_rank: int, n_kv: int) -> bool:
        return kv_rank >= 0 and kv_rank < int(np.floor(self.fraction * n_kv + 0.5))
