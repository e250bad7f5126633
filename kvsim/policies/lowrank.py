"""Low-rank K/V storage (LORC, Palu)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import ENCODE, Policy, param


@dataclass(frozen=True)
class LowRank(Policy):
    """Low-rank K/V (LORC, Palu): each head's keys and values are stored as rank-r coordinates in a basis
    fitted at the prefill (one basis per layer and KV head, shared by the batch). Attention runs in the
    rank-r space: q is projected once per step, the output is lifted back once per step."""

    name = "lowrank"
    role = ENCODE
    summary = "Low-rank projection of K and V to rank r per head (LORC/Palu); bases counted"
    when = "on write"

    rank: int = param(32, "rank kept for keys, per head", lo=1)
    rank_v: int = param(0, "rank kept for values; 0: same as rank", lo=0)

    def ranks(self, k_dim: int, v_dim: int) -> tuple[int, int]:
        return min(self.rank, k_dim), min(self.rank_v or self.rank, v_dim)

    def idle_reason(self, ctxs) -> str | None:
        """Rank at or above every layer's head dims: nothing is projected away, and the bases add bytes."""
        if all(self.ranks(c.layout.k_dim, c.layout.v_dim) == (c.layout.k_dim, c.layout.v_dim) for c in ctxs):
            dims = sorted({c.layout.k_dim for c in ctxs} | {c.layout.v_dim for c in ctxs})
            return (f"rank {self.rank}{f'/{self.rank_v}' if self.rank_v else ''} is at or above the head dim "
                    f"({', '.join(map(str, dims))}): keys and values keep every dimension, and the bases add bytes")
        return None

    def granularity(self) -> int:
        return 1

    def shared_bytes(self, k_dim: int, v_dim: int, heads: int, elem_bits: int) -> int:
        rk, rv = self.ranks(k_dim, v_dim)
        return heads * (k_dim * rk + v_dim * rv) * elem_bits // 8
