"""Quantization primitives on torch tensors, matching kvsim.policies.quant's byte formulas exactly.

Integers are asymmetric: per group, scale = (max - min) / (2**bits - 1), zero = min, both stored at
scale_bits; codes of `bits` bits are packed into rows of ceil(d * bits / 8) bytes. Float8 is e4m3 with a
per-group scale max|x| / 448.
"""

from __future__ import annotations

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def _shifts(bits: int, device) -> torch.Tensor:
    return torch.arange(0, 8, bits, dtype=torch.uint8, device=device)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes in [0, 2**bits) along the last dim (d values) -> uint8 rows of ceil(d * bits / 8) bytes.
    Element i's bits start at bit i * bits of the row, least significant first."""
    if bits == 8 or codes.shape[-1] == 0:
        return codes.to(torch.uint8).contiguous()
    if 8 % bits == 0:  # whole codes per byte: one shift and a sum instead of bit planes
        per = 8 // bits
        d = codes.shape[-1]
        pad = -d % per
        c = codes.to(torch.uint8)
        if pad:
            c = torch.nn.functional.pad(c, (0, pad))
        c = c.reshape(*codes.shape[:-1], -1, per) << _shifts(bits, codes.device)
        return c.sum(-1, dtype=torch.uint8).contiguous()
    d = codes.shape[-1]
    shifts = torch.arange(bits, device=codes.device, dtype=torch.uint8)
    bitplanes = (codes.to(torch.uint8).unsqueeze(-1) >> shifts) & 1  # [..., d, bits]
    flat = bitplanes.reshape(*codes.shape[:-1], d * bits)
    nbytes = -(-d * bits // 8)
    pad = nbytes * 8 - d * bits
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    weights = (torch.ones(8, dtype=torch.uint8, device=codes.device) << torch.arange(8, dtype=torch.uint8,
                                                                                       device=codes.device))
    return (flat.reshape(*codes.shape[:-1], nbytes, 8) * weights).sum(-1, dtype=torch.uint8).contiguous()


def unpack(packed: torch.Tensor, bits: int, d: int) -> torch.Tensor:
    if bits == 8:
        return packed
    if d == 0:
        return packed.new_zeros(*packed.shape[:-1], 0)
    if 8 % bits == 0:
        mask = (1 << bits) - 1
        codes = (packed.unsqueeze(-1) >> _shifts(bits, packed.device)) & mask
        return codes.reshape(*packed.shape[:-1], -1)[..., :d]
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    flat = ((packed.unsqueeze(-1) >> shifts) & 1).reshape(*packed.shape[:-1], packed.shape[-1] * 8)[..., :d * bits]
    planes = flat.reshape(*packed.shape[:-1], d, bits)
    weights = torch.ones(bits, dtype=torch.uint8, device=packed.device) << torch.arange(bits, dtype=torch.uint8,
                                                                                        device=packed.device)
    return (planes * weights).sum(-1, dtype=torch.uint8)


def _meta_dtype(scale_bits: int) -> torch.dtype:
    return torch.float16 if scale_bits == 16 else torch.float32


def quantize_groups(x: torch.Tensor, bits: int, group: int, kind: str, scale_bits: int):
    """Quantize along the last dim in groups of `group` (0: whole row). Returns (payload, scale, zero|None)
    with payload packed rows and scale/zero of shape [..., n_groups]."""
    d = x.shape[-1]
    if d == 0:  # a head without separate values (MLA's latent: values are read from the keys): nothing to store
        empty = x.new_zeros(*x.shape[:-1], 0)
        mdt = _meta_dtype(scale_bits)
        return empty.to(torch.uint8), empty.to(mdt), (None if kind == "fp" else empty.to(mdt))
    g = group or d
    n_groups = -(-d // g)
    pad = n_groups * g - d
    xf = x.float()
    if pad:  # pad with the row's last value so the padding never widens a group's range
        xf = torch.cat([xf, xf[..., -1:].expand(*xf.shape[:-1], pad)], -1)
    grouped = xf.reshape(*x.shape[:-1], n_groups, g)
    mdt = _meta_dtype(scale_bits)
    if kind == "fp":
        scale = (grouped.abs().amax(-1) / FP8_MAX).clamp_min(1e-12).to(mdt)
        codes = (grouped / scale.float().unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return codes.reshape(*x.shape[:-1], n_groups * g)[..., :d].contiguous(), scale, None
    lo = grouped.amin(-1)
    hi = grouped.amax(-1)
    levels = (1 << bits) - 1
    zero = lo.to(mdt)
    scale = ((hi - lo) / levels).clamp_min(1e-12).to(mdt)
    codes = torch.round((grouped - zero.float().unsqueeze(-1)) / scale.float().unsqueeze(-1)).clamp(0, levels)
    codes = codes.reshape(*x.shape[:-1], n_groups * g)[..., :d]
    return pack(codes.to(torch.uint8), bits), scale, zero


def dequantize_groups(payload, scale, zero, bits: int, group: int, kind: str, d: int, dtype) -> torch.Tensor:
    if d == 0:
        return payload.new_zeros(*payload.shape[:-1], 0, dtype=dtype)
    g = group or d
    n_groups = scale.shape[-1]
    if kind == "fp":
        vals = payload.float()
    else:
        vals = unpack(payload, bits, d).float()
    pad = n_groups * g - d
    if pad:
        vals = torch.nn.functional.pad(vals, (0, pad))
    vals = vals.reshape(*vals.shape[:-1], n_groups, g) * scale.float().unsqueeze(-1)
    if zero is not None:
        vals = vals + zero.float().unsqueeze(-1)
    return vals.reshape(*vals.shape[:-2], n_groups * g)[..., :d].to(dtype)
