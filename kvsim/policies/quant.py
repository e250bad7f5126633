"""Quantized KV storage: integer (asymmetric, scale + zero point per group) or float8 (scale per group).

axis=token: each token's row of d channels is split into groups of `group` channels (0: the whole row);
            a row packs to ceil(d * bits / 8) bytes plus one scale (and zero point) per group.
axis=channel: each channel is quantized over runs of `group` consecutive tokens; tokens that do not yet
            fill a run stay in full precision (the residual), so bytes step every `group` tokens.
Error bound (int): |x - x'| <= (max - min) / (2 (2**bits - 1)) within a group; fp8 (e4m3): relative 2**-4
for normal values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import ENCODE, Policy, i64, pack_bytes, param


def dequant_ops(bits: int, kind: str) -> int:
    """Operations to dequantise one element: convert and scale (plus the zero point for integers), plus a
    shift and a mask to unpack codes narrower than a byte."""
    return 2 + (kind == "int") + (2 if bits < 8 else 0)


@dataclass(frozen=True)
class Quant(Policy):
    name = "quant"
    role = ENCODE
    summary = "Quantize K and V (int with scale+zero per group, or fp8 with a scale), per token or per channel"
    when = "on write"

    bits: int = param(8, "bits per stored key element (and value element unless v_bits is set)", lo=1, hi=8)
    v_bits: int = param(0, "bits per value element; 0: same as bits", lo=0, hi=8)
    kind: str = param("int", "int: asymmetric integer, scale and zero point per group; fp: float8 e4m3, "
                             "scale per group", choices=("int", "fp"))
    axis: str = param("token", "token: groups along a token's channels; channel: groups along `group` "
                               "tokens of a channel", choices=("token", "channel"))
    group: int = param(0, "group size: channels per group (axis=token, 0: whole row) or tokens per group "
                          "(axis=channel, must be > 0)", lo=0)
    scale_bits: int = param(16, "bits of each scale and zero point", choices=(16, 32))
    state: bool = param(False, "also store SSM and linear-attention recurrent state (conv window and state "
                               "matrix) quantized, at `bits`, in groups of `group` along each state row")

    def validate(self):
        from ..errors import KvsimError
        if self.kind == "fp" and (self.bits != 8 or self.v_bits not in (0, 8)):
            raise KvsimError("quant: kind=fp is float8 (e4m3): bits must be 8")
        if self.axis == "channel" and self.group <= 0:
            raise KvsimError("quant: axis=channel needs group > 0 (tokens per group)")
        if self.state and self.axis == "channel":
            raise KvsimError("quant: state=true needs axis=token: a recurrent state has no token axis to group over")

    @property
    def vb(self) -> int:
        return self.v_bits or self.bits

    @property
    def _meta_bytes(self) -> int:
        """Scale, plus zero point for integers, per group."""
        return (2 if self.kind == "int" else 1) * self.scale_bits // 8

    def _token_row(self, d: int, bits: int) -> int:
        if d == 0:
            return 0
        groups = -(-d // (self.group or d))
        return int(pack_bytes(d, bits)) + groups * self._meta_bytes

    def row_bytes(self, width: int) -> int:
        """Bytes of one row of `width` elements quantized at `bits` (axis=token layout): a recurrent state row."""
        return self._token_row(width, self.bits)

    def granularity(self) -> int:
        """Token count whose multiples keep the byte formula linear (1: every token is alike)."""
        return self.group if self.axis == "channel" else 1

    def head_bytes(self, k_dim: int, v_dim: int, n: np.ndarray, elem_bits: int) -> np.ndarray:
        n = i64(n)
        if self.axis == "token":
            return n * (self._token_row(k_dim, self.bits) + self._token_row(v_dim, self.vb))
        q = n - n % self.group
        runs = q // self.group
        payload = q * (pack_bytes(k_dim, self.bits) + pack_bytes(v_dim, self.vb))
        meta = runs * (k_dim + v_dim) * self._meta_bytes
        residual = (n - q) * (k_dim + v_dim) * elem_bits // 8
        return payload + meta + residual

    def write_bytes(self, k_dim: int, v_dim: int, elem_bits: int) -> int:
        """Bytes one new token writes per head (into the full-precision residual for axis=channel)."""
        if self.axis == "token":
            return self._token_row(k_dim, self.bits) + self._token_row(v_dim, self.vb)
        return (k_dim + v_dim) * elem_bits // 8

    def dequant_flops(self, k_dim: int, v_dim: int, n: np.ndarray) -> np.ndarray:
        """Per element read: unpack a sub-byte code (shift, mask), convert, and undo scale and zero point."""
        return dequant_ops(self.bits, self.kind) * i64(n) * (k_dim + v_dim)


@dataclass(frozen=True)
class Kivi(Policy):
    """KIVI (Liu et al. 2024): keys per channel, values per token, recent tokens kept in full precision.
    The residual holds n mod `residual` tokens; when it fills, it is quantized as a whole."""

    name = "kivi"
    role = ENCODE
    summary = "KIVI: keys quantized per channel, values per token, a full-precision residual window"
    when = "every `residual` tokens"

    bits: int = param(2, "bits per quantized element", lo=1, hi=8)
    group: int = param(32, "group size: tokens per key group, channels per value group", lo=1)
    residual: int = param(128, "full-precision residual length R (a multiple of group); the residual holds "
                               "n mod R tokens", lo=1)
    scale_bits: int = param(16, "bits of each scale and zero point", choices=(16, 32))

    def validate(self):
        from ..errors import KvsimError
        if self.residual % self.group:
            raise KvsimError(f"kivi: residual ({self.residual}) must be a multiple of group ({self.group})")

    def granularity(self) -> int:
        return self.residual

    def head_bytes(self, k_dim: int, v_dim: int, n: np.ndarray, elem_bits: int) -> np.ndarray:
        n = i64(n)
        r = n % self.residual
        q = n - r
        meta = 2 * self.scale_bits // 8
        keys = q * pack_bytes(k_dim, self.bits) + (q // self.group) * k_dim * meta
        v_groups = -(-v_dim // self.group) if v_dim else 0
        values = q * (pack_bytes(v_dim, self.bits) + v_groups * meta)
        return keys + values + r * (k_dim + v_dim) * elem_bits // 8

    def write_bytes(self, k_dim: int, v_dim: int, elem_bits: int) -> int:
        return (k_dim + v_dim) * elem_bits // 8

    def dequant_flops(self, k_dim: int, v_dim: int, n: np.ndarray) -> np.ndarray:
        return dequant_ops(self.bits, "int") * i64(n) * (k_dim + v_dim)
