"""Token storage for one head group, in one encoding, with exactly-sized tensors.

Every store holds tokens of `heads` KV heads for a batch: shape [B, heads, n, d] in its own layout. Appends
concatenate into new tensors and evictions gather into new tensors, so no tensor ever keeps storage beyond
what it holds; an in-place overwrite (`put`) reuses a slot without growing anything. Byte counts are the
sum of the unique storages of `tensors()`, compared against kvsim's analytic formulas to the byte.

Stores whose layout depends on token order (per-channel groups, KIVI's residual) keep arrival order and
evict by rebuilding; stores where tokens are independent (`order_free`) can overwrite a slot in place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .quant import dequantize_groups, pack, quantize_groups, unpack


def _own(x: torch.Tensor) -> torch.Tensor:
    """x in an exactly-sized storage of its own. A single token's K or V can be a contiguous view into a
    projection's output (GPT-2's fused QKV): keeping it would keep the whole buffer, query included."""
    if x.is_contiguous() and x.untyped_storage().nbytes() == x.numel() * x.element_size():
        return x
    return x.clone(memory_format=torch.contiguous_format)


def _cat(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return _own(b) if a is None or a.shape[2] == 0 else torch.cat([a, b], dim=2)


def _bits(x: torch.Tensor) -> torch.Tensor:
    """float8 has no gather/scatter kernels on every device; its bytes move the same as uint8."""
    return x.view(torch.uint8) if x.dtype == torch.float8_e4m3fn else x


def _gather(x: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    if x is None:
        return None
    out = torch.gather(_bits(x), 2, idx.unsqueeze(-1).expand(*idx.shape, x.shape[-1]))
    return out.view(x.dtype)


def _scatter(x: torch.Tensor, slot: torch.Tensor, new: torch.Tensor) -> None:
    index = slot[:, :, None, None].expand(x.shape[0], x.shape[1], 1, x.shape[-1])
    _bits(x).scatter_(2, index, _bits(new.to(x.dtype)))


class Store(ABC):
    order_free = True

    @abstractmethod
    def __len__(self) -> int:
        """Tokens held per head."""

    @abstractmethod
    def append(self, k: torch.Tensor, v: torch.Tensor) -> None: ...

    @abstractmethod
    def kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-precision K and V, [B, heads, n, d], in storage order (a transient copy when encoded)."""

    @abstractmethod
    def take(self, idx: torch.Tensor) -> None:
        """Keep the tokens at idx [B, heads, m], in that order, in new exactly-sized tensors."""

    def put(self, slot: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Overwrite one token per (batch, head) at slot [B, heads] in place (order_free stores only)."""
        raise TypeError(f"{type(self).__name__} keeps token order; evict with take()")

    @abstractmethod
    def clear(self) -> None:
        """Drop every token (and the tensors that held them)."""

    def tensors(self) -> list[torch.Tensor]:
        return []

    def shared_tensors(self) -> list[torch.Tensor]:
        return []


class RawStore(Store):
    """K and V at the model dtype."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def __len__(self):
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k, v):
        self.k, self.v = _cat(self.k, k), _cat(self.v, v)

    def kv(self):
        return self.k, self.v

    def take(self, idx):
        self.k, self.v = _gather(self.k, idx), _gather(self.v, idx)

    def clear(self):
        self.k = self.v = None

    def put(self, slot, k, v):
        _scatter(self.k, slot, k)
        _scatter(self.v, slot, v)

    def tensors(self):
        return [t for t in (self.k, self.v) if t is not None]


class TokenQuantStore(Store):
    """Each token's row quantized on its own (kvsim Quant with axis=token): payload + scale (+ zero)."""

    def __init__(self, bits: int, v_bits: int, group: int, kind: str, scale_bits: int, dtype, dk: int, dv: int):
        self.bits, self.v_bits, self.group, self.kind, self.scale_bits = bits, v_bits, group, kind, scale_bits
        self.dtype, self.dk, self.dv = dtype, dk, dv
        self.parts: list[torch.Tensor | None] = [None] * 6  # k payload, scale, zero; v payload, scale, zero

    def __len__(self):
        return 0 if self.parts[0] is None else self.parts[0].shape[2]

    def _encode(self, k, v):
        kp, ks, kz = quantize_groups(k, self.bits, self.group, self.kind, self.scale_bits)
        vp, vs, vz = quantize_groups(v, self.v_bits, self.group, self.kind, self.scale_bits)
        return [kp, ks, kz, vp, vs, vz]

    def append(self, k, v):
        self.parts = [None if new is None else _cat(old, new) for old, new in zip(self.parts, self._encode(k, v))]

    def kv(self):
        kp, ks, kz, vp, vs, vz = self.parts
        k = dequantize_groups(kp, ks, kz, self.bits, self.group, self.kind, self.dk, self.dtype)
        v = dequantize_groups(vp, vs, vz, self.v_bits, self.group, self.kind, self.dv, self.dtype)
        return k, v

    def take(self, idx):
        self.parts = [_gather(t, idx) for t in self.parts]

    def clear(self):
        self.parts = [None] * 6

    def put(self, slot, k, v):
        for t, new in zip(self.parts, self._encode(k, v)):
            if t is not None:
                _scatter(t, slot, new)

    def tensors(self):
        return [t for t in self.parts if t is not None]


class GroupedStore(Store):
    """Quantized runs of `residual` tokens plus a full-precision residual of n mod residual tokens.

    Keys and values are each quantized per channel (groups of `group` tokens of one channel) or per token
    (groups of `group` channels of one token). KIVI is keys per channel, values per token; kvsim's Quant
    with axis=channel is both per channel with residual = group."""

    order_free = False

    def __init__(self, bits: int, group: int, residual: int, k_axis: str, v_axis: str, scale_bits: int, dtype,
                 dk: int, dv: int):
        self.bits, self.group, self.residual = bits, group, residual
        self.axes = (k_axis, v_axis)
        self.scale_bits, self.dtype, self.dims = scale_bits, dtype, (dk, dv)
        self.q: list[list[torch.Tensor | None]] = [[None, None, None], [None, None, None]]  # K, V quantized parts
        self.res: list[torch.Tensor | None] = [None, None]

    def __len__(self):
        quantized = 0 if self.q[0][0] is None else self.q[0][0].shape[2]
        return quantized + (0 if self.res[0] is None else self.res[0].shape[2])

    def _quantize(self, x, axis):
        if axis == "token":
            return list(quantize_groups(x, self.bits, self.group, "int", self.scale_bits))
        b, h, m, d = x.shape
        runs = x.float().reshape(b, h, m // self.group, self.group, d)  # `group` tokens of each channel
        mdt = torch.float16 if self.scale_bits == 16 else torch.float32
        levels = (1 << self.bits) - 1
        lo, hi = runs.amin(3), runs.amax(3)  # [b, h, runs, d]
        zero = lo.to(mdt)
        scale = ((hi - lo) / levels).clamp_min(1e-12).to(mdt)
        codes = torch.round((runs - zero.float().unsqueeze(3)) / scale.float().unsqueeze(3)).clamp(0, levels)
        return [pack(codes.reshape(b, h, m, d).to(torch.uint8), self.bits), scale.contiguous(), zero.contiguous()]

    def _dequantize(self, parts, axis, d):
        payload, scale, zero = parts
        if payload is None:
            return None
        if axis == "token":
            return dequantize_groups(payload, scale, zero, self.bits, self.group, "int", d, self.dtype)
        b, h, m, _ = payload.shape
        codes = unpack(payload, self.bits, d).float().reshape(b, h, m // self.group, self.group, d)
        return (codes * scale.float().unsqueeze(3) + zero.float().unsqueeze(3)).reshape(b, h, m, d).to(self.dtype)

    def append(self, k, v):
        self.res = [_cat(self.res[0], k), _cat(self.res[1], v)]
        r = self.res[0].shape[2]
        flush = r - r % self.residual
        if not flush:
            return
        for i, axis in enumerate(self.axes):
            chunk = self.res[i][:, :, :flush]
            new = self._quantize(chunk, axis)
            self.q[i] = [None if n is None else _cat(o, n) for o, n in zip(self.q[i], new)]
            self.res[i] = self.res[i][:, :, flush:].clone()  # a fresh, exactly-sized tensor

    def kv(self):
        out = []
        for i, axis in enumerate(self.axes):
            parts = [x for x in (self._dequantize(self.q[i], axis, self.dims[i]), self.res[i]) if x is not None]
            out.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))
        return out[0], out[1]

    def take(self, idx):
        k, v = self.kv()
        self.clear()
        self.append(_gather(k, idx), _gather(v, idx))

    def clear(self):
        self.q = [[None, None, None], [None, None, None]]
        self.res = [None, None]

    def tensors(self):
        return [t for part in self.q for t in part if t is not None] + [t for t in self.res if t is not None]


class LowRankStore(Store):
    """Rank-r coordinates of K and V in per-head bases (shared by the batch), stored by an inner store."""

    def __init__(self, basis_k: torch.Tensor, basis_v: torch.Tensor, inner: Store):
        self.bk, self.bv, self.inner = basis_k, basis_v, inner  # [heads, d, r]
        self.order_free = inner.order_free

    def __len__(self):
        return len(self.inner)

    def _down(self, k, v):
        return torch.einsum("bhtd,hdr->bhtr", k, self.bk), torch.einsum("bhtd,hdr->bhtr", v, self.bv)

    def append(self, k, v):
        self.inner.append(*self._down(k, v))

    def kv(self):
        lk, lv = self.inner.kv()
        return torch.einsum("bhtr,hdr->bhtd", lk, self.bk), torch.einsum("bhtr,hdr->bhtd", lv, self.bv)

    def take(self, idx):
        self.inner.take(idx)

    def clear(self):
        self.inner.clear()

    def put(self, slot, k, v):
        self.inner.put(slot, *self._down(k, v))

    def tensors(self):
        return self.inner.tensors()

    def shared_tensors(self):
        return [self.bk, self.bv]


def fit_basis(x: torch.Tensor, rank: int) -> torch.Tensor:
    """Per-head orthonormal basis [heads, d, rank] of the prompt's vectors x [B, heads, n, d]: the top right
    singular vectors over the batch's tokens (completed to `rank` when there are fewer tokens)."""
    b, h, n, d = x.shape
    rows = x.float().transpose(0, 1).reshape(h, b * n, d)
    _, _, vh = torch.linalg.svd(rows, full_matrices=True)
    return vh[:, :rank, :].transpose(1, 2).to(x.dtype).contiguous()


def physical_bytes(tensors) -> int:
    """Bytes of the unique storages behind `tensors` (views of one storage count once, and a view of a
    larger storage counts the whole storage: slack is never hidden)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None:
            continue
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())
