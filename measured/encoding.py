"""Build the store for a head group from a composition's encodings (low-rank, then quantization)."""

from __future__ import annotations

import torch

from kvsim.policies.compose import Compose
from kvsim.policies.quant import Kivi, Quant

from .stores import GroupedStore, LowRankStore, RawStore, Store, TokenQuantStore, fit_basis


def quant_store(quant, dtype, dk: int, dv: int) -> Store:
    if quant is None:
        return RawStore()
    if isinstance(quant, Kivi):
        return GroupedStore(quant.bits, quant.group, quant.residual, "channel", "token", quant.scale_bits, dtype,
                            dk, dv)
    if isinstance(quant, Quant):
        if quant.axis == "channel":
            if quant.v_bits and quant.v_bits != quant.bits:
                raise ValueError("per-channel quantization with different key and value bits is not supported")
            return GroupedStore(quant.bits, quant.group, quant.group, "channel", "channel", quant.scale_bits, dtype,
                                dk, dv)
        return TokenQuantStore(quant.bits, quant.vb, quant.group, quant.kind, quant.scale_bits, dtype, dk, dv)
    raise TypeError(f"no store for {type(quant).__name__}")


class Encoder:
    """Makes stores for one layer; holds the low-rank bases once fitted on the prompt."""

    def __init__(self, policy: Compose, dtype: torch.dtype):
        self.policy, self.dtype = policy, dtype
        self.bases: tuple[torch.Tensor, torch.Tensor] | None = None

    def fit(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Fit the per-head low-rank bases on the prompt's K and V [B, Hkv, p, d] (no-op without lowrank)."""
        lr = self.policy.lowrank
        if lr is None:
            return
        rk, rv = lr.ranks(k.shape[-1], v.shape[-1])
        self.bases = tuple(fit_basis(x, r) if x.shape[-1] else x.new_zeros(x.shape[1], 0, 0)
                           for x, r in ((k, rk), (v, rv)))  # width 0: MLA's latent has no separate values

    def store(self, heads: torch.Tensor | None, dk: int, dv: int) -> Store:
        lr = self.policy.lowrank
        if lr is None:
            return quant_store(self.policy.quant, self.dtype, dk, dv)
        bk, bv = self.bases
        if heads is not None:
            bk, bv = bk[heads].contiguous(), bv[heads].contiguous()
        return LowRankStore(bk, bv, quant_store(self.policy.quant, self.dtype, bk.shape[-1], bv.shape[-1]))
