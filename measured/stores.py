"""Token storage for one head group, in one encoding, in exactly-sized pages.

Every store holds tokens of `heads` KV heads for a batch: shape [B, heads, n, d] in its own layout, each stored
tensor a `Paged` sequence of exactly-sized pages (measured/paged.py). Appends add pages or regrow a short open
page, evictions gather into a new page, and an in-place overwrite (`put`) reuses a slot; no tensor ever keeps
storage beyond what it holds. Byte counts are the sum of the unique storages of `tensors()`, compared against
kvsim's analytic formulas to the byte.

Attention reads a store through `pages()`: each page's keys and values as stored (measured/decode.py decodes
them row by row, in place). `kv()` is the full-precision copy the policy work that needs one tensor uses.

Stores whose layout depends on token order (per-channel groups, KIVI's residual) keep arrival order and
evict by rebuilding; stores where tokens are independent (`order_free`) can overwrite a slot in place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .decode import Enc, Page, quantize, raw_page
from .paged import Paged, gather_tokens, own
from .quant import dequantize_groups, pack, quantize_groups


def _cat(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return own(b) if a is None or a.shape[2] == 0 else torch.cat([a, b], dim=2)


class Store(ABC):
    order_free = True
    native = True  # pages are in the model's coordinates (low-rank stores hold coordinates in a basis)

    @abstractmethod
    def __len__(self) -> int:
        """Tokens held per head."""

    @abstractmethod
    def append(self, k: torch.Tensor, v: torch.Tensor) -> None: ...

    @abstractmethod
    def pages(self) -> list[Page]:
        """What attention reads, in storage order, as stored."""

    def kv(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Full-precision K and V, [B, heads, n, d], in storage order (a transient copy unless raw, one page)."""
        pages = self.pages()
        if not pages:
            return None, None
        if len(pages) == 1 and pages[0].k.kind == "raw" and pages[0].k.rowscale is None:
            return pages[0].k.data, pages[0].v.data
        dtype = self.dtype
        return (torch.cat([p.k.decode(dtype) for p in pages], 2), torch.cat([p.v.decode(dtype) for p in pages], 2))

    def keys(self, start: int = 0) -> torch.Tensor:
        """Full-precision keys of tokens start.. (decodes only the pages that hold them)."""
        parts, offset = [], 0
        for p in self.pages():
            n = p.k.n
            if offset + n > start:
                parts.append(p.k.decode(self.dtype)[:, :, max(0, start - offset):])
            offset += n
        return parts[0] if len(parts) == 1 else torch.cat(parts, 2)

    def query(self, q: torch.Tensor) -> torch.Tensor:
        """Queries [B, heads, G, d] in the coordinates the pages are stored in."""
        return q

    def output(self, o: torch.Tensor) -> torch.Tensor:
        """Attention output [B, heads, G, dv'] in stored coordinates, back in the model's."""
        return o

    @abstractmethod
    def take(self, idx: torch.Tensor) -> None:
        """Keep the tokens at idx [B, heads, m], in that order, in new exactly-sized tensors."""

    def put(self, slot: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Overwrite one token per (batch, head) at slot [B, heads] in place, except where keep [B, heads] is
        True (order_free stores only)."""
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

    def __init__(self, dtype=None):
        self.k, self.v = Paged(), Paged()
        self.dtype = dtype

    def __len__(self):
        return self.k.n

    def append(self, k, v):
        self.dtype = k.dtype
        self.k.append(k)
        self.v.append(v)

    def pages(self):
        return [raw_page(a, b) for a, b in zip(self.k.pages, self.v.pages)]

    def kv(self):
        return self.k.full(), self.v.full()

    def keys(self, start=0):
        return self.k.since(start)

    def take(self, idx):
        self.k.take(idx)
        self.v.take(idx)

    def clear(self):
        self.k.clear()
        self.v.clear()

    def put(self, slot, k, v, keep=None):
        self.k.put(slot, k, keep)
        self.v.put(slot, v, keep)

    def tensors(self):
        return self.k.pages + self.v.pages


class TokenQuantStore(Store):
    """Each token's row quantized on its own (kvsim Quant with axis=token): payload + scale (+ zero)."""

    def __init__(self, bits: int, v_bits: int, group: int, kind: str, scale_bits: int, dtype, dk: int, dv: int):
        self.bits, self.v_bits, self.group, self.kind, self.scale_bits = bits, v_bits, group, kind, scale_bits
        self.dtype, self.dk, self.dv = dtype, dk, dv
        self.parts: list[Paged | None] = [None] * 6  # k payload, scale, zero; v payload, scale, zero

    def __len__(self):
        return 0 if self.parts[0] is None else len(self.parts[0])

    def _encode(self, k, v):
        if self.kind == "int":
            return [*quantize(k, self.bits, self.group, self.scale_bits),
                    *quantize(v, self.v_bits, self.group, self.scale_bits)]
        kp, ks, kz = quantize_groups(k, self.bits, self.group, self.kind, self.scale_bits)
        vp, vs, vz = quantize_groups(v, self.v_bits, self.group, self.kind, self.scale_bits)
        return [kp, ks, kz, vp, vs, vz]

    def append(self, k, v):
        for i, new in enumerate(self._encode(k, v)):
            if new is not None:
                if self.parts[i] is None:
                    self.parts[i] = Paged()
                self.parts[i].append(new)

    def _enc(self, payload, scale, zero, bits, d) -> Enc:
        return Enc("fp8" if self.kind == "fp" else "int", payload, d, bits, scale, zero, 1, self.group or d)

    def pages(self):
        if self.parts[0] is None:
            return []
        kp, ks, kz, vp, vs, vz = [p.pages if p is not None else None for p in self.parts]
        out = []
        for i in range(len(kp)):
            out.append(Page(self._enc(kp[i], ks[i], kz[i] if kz else None, self.bits, self.dk),
                            self._enc(vp[i], vs[i], vz[i] if vz else None, self.v_bits, self.dv)))
        return out

    def kv(self):
        if self.parts[0] is None:
            return None, None
        kp, ks, kz, vp, vs, vz = [None if p is None else p.full() for p in self.parts]
        k = dequantize_groups(kp, ks, kz, self.bits, self.group, self.kind, self.dk, self.dtype)
        v = dequantize_groups(vp, vs, vz, self.v_bits, self.group, self.kind, self.dv, self.dtype)
        return k, v

    def take(self, idx):
        for p in self.parts:
            if p is not None:
                p.take(idx)

    def clear(self):
        self.parts = [None] * 6

    def put(self, slot, k, v, keep=None):
        for p, new in zip(self.parts, self._encode(k, v)):
            if p is not None:
                p.put(slot, new, keep)

    def tensors(self):
        return [t for p in self.parts if p is not None for t in p.pages]


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
        self.res: list[torch.Tensor | None] = [None, None]
        self.clear()

    def __len__(self):
        return len(self.q[0][0]) + (0 if self.res[0] is None else self.res[0].shape[2])

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

    def _enc(self, payload, scale, zero, axis, d) -> Enc:
        if axis == "token":
            return Enc("int", payload, d, self.bits, scale, zero, 1, self.group)
        return Enc("int", payload, d, self.bits, scale, zero, self.group, 1)  # a scale row per run of tokens

    def append(self, k, v):
        self.res = [_cat(self.res[0], k), _cat(self.res[1], v)]
        r = self.res[0].shape[2]
        flush = r - r % self.residual
        if not flush:
            return
        for i, axis in enumerate(self.axes):
            chunk = self.res[i][:, :, :flush]
            for part, new in zip(self.q[i], self._quantize(chunk, axis)):
                part.append(new)
            self.res[i] = self.res[i][:, :, flush:].clone()  # a fresh, exactly-sized tensor

    def pages(self):
        (kp, ks, kz), (vp, vs, vz) = [[p.pages for p in parts] for parts in self.q]
        (ka, va), (dk, dv) = self.axes, self.dims
        out = [Page(self._enc(kp[i], ks[i], kz[i], ka, dk), self._enc(vp[i], vs[i], vz[i], va, dv))
               for i in range(len(kp))]
        if self.res[0] is not None and self.res[0].shape[2]:
            out.append(raw_page(self.res[0], self.res[1]))
        return out

    def take(self, idx):
        k, v = self.kv()
        self.clear()
        self.append(gather_tokens(k, idx), gather_tokens(v, idx))

    def clear(self):
        # K, V parts (payload, scale, zero); a per-channel scale row covers `group` tokens
        self.q: list[list[Paged]] = [[Paged(), Paged(self.group if axis == "channel" else 1),
                                      Paged(self.group if axis == "channel" else 1)] for axis in self.axes]
        self.res = [None, None]

    def tensors(self):
        return [t for parts in self.q for p in parts for t in p.pages] + [t for t in self.res if t is not None]


class LowRankStore(Store):
    """Rank-r coordinates of K and V in per-head bases (shared by the batch), stored by an inner store.
    Attention runs in the bases' coordinates: queries are projected in, outputs out (no full-width copy)."""

    native = False

    def __init__(self, basis_k: torch.Tensor, basis_v: torch.Tensor, inner: Store):
        self.bk, self.bv, self.inner = basis_k, basis_v, inner  # [heads, d, r]
        self.order_free = inner.order_free
        self.dtype = basis_k.dtype

    def __len__(self):
        return len(self.inner)

    def _down(self, k, v):
        return torch.einsum("bhtd,hdr->bhtr", k, self.bk), torch.einsum("bhtd,hdr->bhtr", v, self.bv)

    def append(self, k, v):
        self.inner.append(*self._down(k, v))

    def pages(self):
        return self.inner.pages()

    def query(self, q):
        return torch.einsum("bhgd,hdr->bhgr", q, self.bk)

    def output(self, o):
        return torch.einsum("bhgr,hdr->bhgd", o.to(self.bv.dtype), self.bv)

    def kv(self):
        lk, lv = self.inner.kv()
        if lk is None:
            return None, None
        return torch.einsum("bhtr,hdr->bhtd", lk, self.bk), torch.einsum("bhtr,hdr->bhtd", lv, self.bv)

    def keys(self, start=0):
        return torch.einsum("bhtr,hdr->bhtd", self.inner.keys(start), self.bk)

    def take(self, idx):
        self.inner.take(idx)

    def clear(self):
        self.inner.clear()

    def put(self, slot, k, v, keep=None):
        self.inner.put(slot, *self._down(k, v), keep)

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
