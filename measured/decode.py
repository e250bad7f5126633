"""Decode attention over a layer's stored pages, read where they lie.

A store describes what it holds as pages: each page is a `Page(k, v)` of two `Enc`s, an exactly-sized tensor of
consecutive tokens and how to decode a row of it (raw values, packed integer codes with per-group scale and
zero, float8 codes with a scale, and an optional per-token multiplier). `attend` computes one decode step of
grouped-query attention for queries [B, Hkv, G, dk] (the G query heads of each KV head as rows: KV heads are
never expanded) over the pages in order, optionally reading only some logical tokens (`index`) and adding a
per-token bias.

Two implementations with one meaning:
- `native` (CPU): measured/decode.c, compiled at first use with the system C compiler into the kvsim cache and
  called through ctypes (its skinny matmul runs the decode step's weight matmuls too: measured/linear.py).
  Rows are decoded in registers and used at once: no dequantised, gathered or expanded copy of the cache is
  written, so a step reads each stored byte once.
- `torch` (any device, and the reference the tests hold the kernel to): pages are decoded into a float copy,
  concatenated and attended with two matmuls. On a GPU this is what runs; there, quantized or selected reads
  materialise a full-width copy (eager torch has no fused dequantising matmul).
KVSIM_ATTENTION=torch forces the torch path on the CPU too.
"""

from __future__ import annotations

import array
import ctypes
import dataclasses
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from kvsim.errors import KvsimError

SOURCE = Path(__file__).with_name("decode.c")
KINDS = {"raw": None, "int": 3, "fp8": 4}
RAW = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
META = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
MAX_DIM = 4096  # decode.c's row buffer
# The executor name rows carry: "native-c" ran decode.c's attention with torch's weight matmuls; this one runs
# the decode step's weight matmuls in decode.c too (calibrate refuses to fit the two together).
NATIVE = "native-c+linear"


@dataclass
class Enc:
    """One page's keys or values as stored. data [B, H, n, row]: raw values, or codes (uint8 or float8) packed
    along the row; scale/zero [B, H, rows, cols] where row r covers tokens r*t_div.. and column c covers
    elements c*d_div..; rowscale [B, H, n] multiplies every element of a token's row."""

    kind: str
    data: torch.Tensor
    dim: int
    bits: int = 0
    scale: torch.Tensor | None = None
    zero: torch.Tensor | None = None
    t_div: int = 1
    d_div: int = 1
    rowscale: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return self.data.shape[2]

    def decode(self, dtype=torch.float32) -> torch.Tensor:
        """The page's rows as values [B, H, n, dim] (the torch path's materialised copy)."""
        if self.kind == "raw":
            x = self.data.to(dtype)
        else:
            from .quant import unpack
            codes = self.data.float() if self.kind == "fp8" else unpack(self.data, self.bits, self.dim).float()
            b, h, n, d = codes.shape
            s = self.scale.float()
            z = self.zero.float() if self.zero is not None else None
            if self.d_div > 1:  # groups along the row: repeat each column over its elements, trim the padding
                s = s.repeat_interleave(self.d_div, -1)[..., :d]
                z = None if z is None else z.repeat_interleave(self.d_div, -1)[..., :d]
            if self.t_div > 1:  # rows shared by runs of tokens
                s = s.repeat_interleave(self.t_div, 2)[:, :, :n]
                z = None if z is None else z.repeat_interleave(self.t_div, 2)[:, :, :n]
            x = codes * s + (z if z is not None else 0)
            x = x.to(dtype)
        if self.rowscale is not None:
            x = x * self.rowscale.to(x.dtype).unsqueeze(-1)
        return x


    def to(self, device) -> "Enc":
        moved = {name: (None if t is None else t.to(device, non_blocking=True))
                 for name, t in (("data", self.data), ("scale", self.scale), ("zero", self.zero),
                                 ("rowscale", self.rowscale))}
        return dataclasses.replace(self, **moved)


@dataclass
class Page:
    k: Enc
    v: Enc

    def to(self, device) -> "Page":
        return Page(self.k.to(device), self.v.to(device))


def raw_page(k: torch.Tensor, v: torch.Tensor) -> Page:
    return Page(Enc("raw", k, k.shape[-1]), Enc("raw", v, v.shape[-1]))


def prefix_values(page: Page, dim: int) -> Page:
    """`page` of a layout whose values are the first `dim` elements of its keys (MLA's latent: a KVLayout with
    v_dim 0, whose stored values are empty). Raw keys are read in place through a view of their first `dim`
    columns; encoded keys pack whole groups of a row with their scales, so their prefix is decoded once."""
    k = page.k
    if k.kind == "raw" and k.rowscale is None:
        return Page(k, Enc("raw", k.data[..., :dim], dim))
    return Page(k, Enc("raw", k.decode()[..., :dim], dim))


def use_native(device: torch.device) -> bool:
    choice = os.environ.get("KVSIM_ATTENTION", "native")
    if choice not in ("native", "torch"):
        raise KvsimError(f"KVSIM_ATTENTION must be native or torch, got {choice!r}")
    return device.type == "cpu" and choice == "native"


def executor(device: torch.device) -> str:
    """Which implementation runs a decode step's attention and weight matmuls on `device` (recorded with every
    measurement): decode.c's attention and skinny matmuls (measured/linear.py), or torch's."""
    return NATIVE if use_native(torch.device(device)) else "torch"


def attend(q: torch.Tensor, pages: list[Page], scale: float, softcap=None, bias: torch.Tensor | None = None,
           index: torch.Tensor | None = None, logits: bool = False):
    """One decode step over `pages`. q [B, H, G, dk]; bias [B, H, nb] is added to the logits of logical tokens
    < nb; index [B, H, m] ascending logical tokens to read (None: all). Returns (out [B, H, G, dv] float32,
    lse [B, H, G] float32, logits [B, H, G, read] float32 or None)."""
    if use_native(q.device):
        return _attend_native(q, pages, scale, softcap, bias, index, logits)
    return attend_torch(q, pages, scale, softcap, bias, index, logits)


def attend_torch(q, pages, scale, softcap=None, bias=None, index=None, logits=False):
    dtype = q.dtype
    k = torch.cat([p.k.decode(dtype) for p in pages], 2)
    v = torch.cat([p.v.decode(dtype) for p in pages], 2)
    n = k.shape[2]
    if bias is not None:
        bias = bias.float()
        if bias.shape[-1] < n:
            bias = torch.cat([bias, bias.new_zeros(*bias.shape[:-1], n - bias.shape[-1])], -1)
    if index is not None:
        k = torch.gather(k, 2, index.unsqueeze(-1).expand(*index.shape, k.shape[-1]))
        v = torch.gather(v, 2, index.unsqueeze(-1).expand(*index.shape, v.shape[-1]))
        bias = None if bias is None else torch.gather(bias, 2, index)
    s = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # [B, H, G, n]: G query rows per KV head
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    if bias is not None:
        s = s + bias[:, :, None, :]
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse.unsqueeze(-1))
    out = torch.matmul(p.to(v.dtype), v).float()
    return out, lse, (s if logits else None)


# ------------------------------------------------------------------------------------------- native kernel
# decode.c's Enc: 23 fields of 8 bytes (kind, bits, dim, t_div, d_div, meta, rmeta, data, scale, zero, rowscale,
# n, data strides x3, scale strides x3, rowscale strides x3), passed as one int64 array per call.
ENC_FIELDS = 23


def _cache_dir() -> Path:
    from .models import cache_dir
    return cache_dir() / "native"


def _cpu_tag() -> str:
    """The build is -march=native: a cache shared by machines with other CPUs must not load it."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")),
                     "")
    except OSError:
        flags = ""
    return hashlib.sha256((platform.machine() + flags).encode()).hexdigest()[:10]


FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno"]


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """The compiled kernel (built once per source, flags and CPU into the kvsim cache)."""
    src = SOURCE.read_bytes()
    tag = hashlib.sha256(src + " ".join(FLAGS).encode()).hexdigest()[:12]
    target = _cache_dir() / f"decode-{tag}-{_cpu_tag()}.so"
    if not target.exists():
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if not cc:
            raise KvsimError("the harness's CPU decode kernel needs a C compiler (cc) to build measured/decode.c; "
                             "install one, or set KVSIM_ATTENTION=torch for the slower torch path")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so")
        os.close(fd)
        try:
            r = subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True,
                               timeout=300)
            if r.returncode:
                raise KvsimError(f"building measured/decode.c failed ({cc}): "
                                 f"{(r.stderr.strip().splitlines() or ['no message'])[0][:200]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    i64, ptr, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
    lib.kvsim_attend.argtypes = [i64, i64, i64, i64, i64, ptr, ptr, ptr, i64, ptr, i64, i64, i64, ptr, i64, i64,
                                 i64, f32, f32, ptr, ptr, ptr, i64, i64]
    lib.kvsim_attend.restype = ctypes.c_int
    lib.kvsim_quantize.argtypes = [i64, i64, i64, i64, ptr, i64, i64, i64, i64, i64, i64, ptr, ptr, ptr]
    lib.kvsim_quantize.restype = ctypes.c_int
    lib.kvsim_linear.argtypes = [i64, i64, i64, ptr, i64, ptr, i64, ptr, ptr, i64, i64]
    lib.kvsim_linear.restype = ctypes.c_int
    lib.kvsim_grouped_linear.argtypes = [i64, ptr, i64, i64, ptr, i64, ptr, i64, i64, ptr, i64, ptr, i64, i64]
    lib.kvsim_grouped_linear.restype = ctypes.c_int
    return lib


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., k] @ weight[n, k]^T (+ bias) through decode.c's skinny matmul: every weight row read once, in
    place. For fp32 rows with a contiguous last dimension; callers keep it to a decode step's few rows."""
    k, n = x.shape[-1], weight.shape[0]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x2.shape[0], n, dtype=torch.float32, device=x.device)
    rc = library().kvsim_linear(x2.shape[0], n, k, x2.data_ptr(), x2.stride(0), weight.data_ptr(), weight.stride(0),
                                0 if bias is None else bias.data_ptr(), y.data_ptr(), n, torch.get_num_threads())
    if rc:
        raise ValueError(f"native linear refused a {tuple(x2.shape)} x {tuple(weight.shape)} matmul")
    return y.reshape(*x.shape[:-1], n)


def grouped_linear(x: torch.Tensor, ends: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Rows of x [s, k] sorted by expert, rows ends[e - 1]:ends[e] times weight[e] [n, k]^T (+ bias[e]), every
    expert in one call of decode.c's skinny matmul (each hit expert's weight read once); rows past ends[-1] are 0.
    fp32, weight rows contiguous; callers keep it to a decode step's few rows."""
    k, n = x.shape[-1], weight.shape[1]
    if x.stride(-1) != 1:
        x = x.contiguous()
    ends = ends.to(torch.int64).contiguous()
    y = torch.zeros(x.shape[0], n, dtype=torch.float32, device=x.device)
    rc = library().kvsim_grouped_linear(weight.shape[0], ends.data_ptr(), n, k, x.data_ptr(), x.stride(0),
                                        weight.data_ptr(), weight.stride(0), weight.stride(1),
                                        0 if bias is None else bias.data_ptr(),
                                        0 if bias is None else bias.stride(0), y.data_ptr(), n,
                                        torch.get_num_threads())
    if rc:
        raise ValueError(f"native grouped linear refused {tuple(x.shape)} rows against {tuple(weight.shape)}")
    return y


def quantize(x: torch.Tensor, bits: int, group: int, scale_bits: int):
    """measured/quant.quantize_groups(x, bits, group, "int", scale_bits), bit for bit, in one native call
    (a decode step quantizes one token per layer: in torch that is dozens of small ops)."""
    if not (use_native(x.device) and x.dim() == 4 and 1 <= bits <= 8 and x.shape[-1] > 0):
        from .quant import quantize_groups
        return quantize_groups(x, bits, group, "int", scale_bits)
    xf = x.float()
    if xf.stride(-1) != 1:
        xf = xf.contiguous()
    b, h, n, d = xf.shape
    groups = -(-d // (group or d))
    mdt = torch.float16 if scale_bits == 16 else torch.float32
    payload = torch.empty(b, h, n, -(-d * bits // 8), dtype=torch.uint8)
    scale = torch.empty(b, h, n, groups, dtype=mdt)
    zero = torch.empty(b, h, n, groups, dtype=mdt)
    st = xf.stride()
    rc = library().kvsim_quantize(b, h, n, d, xf.data_ptr(), st[0], st[1], st[2], bits, group, scale_bits,
                                  payload.data_ptr(), scale.data_ptr(), zero.data_ptr())
    if rc:
        raise ValueError(f"native quantization refused bits={bits}")
    return payload, scale, zero


def _enc(e: Enc, b: int, h: int, keep: list) -> list[int]:
    """decode.c's Enc fields for one page's keys or values (tensors the kernel reads are appended to `keep`)."""
    data = e.data
    if data.dtype == torch.float8_e4m3fn:
        data = data.view(torch.uint8)
    if e.kind == "raw":
        kind = RAW.get(data.dtype)
        if kind is None:
            raise ValueError(f"raw pages of {data.dtype} are not supported by the native kernel")
    elif data.dtype != torch.uint8:
        raise ValueError(f"{e.kind} codes must be uint8, got {data.dtype}")
    else:
        kind = KINDS[e.kind]
    shape, st = data.shape, data.stride()
    if shape[0] != b or shape[1] != h or (st[3] != 1 and shape[3] > 1):
        raise ValueError("a page must match the query's batch and heads, with contiguous rows")
    keep.append(data)
    meta = rmeta = scale = zero = rowscale = 0
    ss = rs = (0, 0, 0)
    if e.scale is not None:
        sst = e.scale.stride()
        if e.scale.shape[-1] > 1 and sst[3] != 1:
            raise ValueError("page scales must have contiguous rows")
        if e.zero is not None and (e.zero.dtype != e.scale.dtype or e.zero.stride() != sst):
            raise ValueError("zero must have the dtype and layout of scale")
        meta, scale, ss = META[e.scale.dtype], e.scale.data_ptr(), sst[:3]
        zero = 0 if e.zero is None else e.zero.data_ptr()
    if e.rowscale is not None:
        rmeta, rowscale, rs = META[e.rowscale.dtype], e.rowscale.data_ptr(), e.rowscale.stride()
    return [kind, e.bits, e.dim, max(1, e.t_div), max(1, e.d_div), meta, rmeta, data.data_ptr(), scale, zero,
            rowscale, shape[2], st[0], st[1], st[2], *ss, *rs]


def _attend_native(q, pages, scale, softcap, bias, index, want_logits):
    b, h, g, dk = q.shape
    dv = pages[0].v.dim
    if dk > MAX_DIM or dv > MAX_DIM:
        return attend_torch(q, pages, scale, softcap, bias, index, want_logits)
    lib = library()
    qf = q.float().contiguous()
    keep: list = []
    np_ = len(pages)
    ks = array.array("q", [x for p in pages for x in _enc(p.k, b, h, keep)])
    vs = array.array("q", [x for p in pages for x in _enc(p.v, b, h, keep)])
    total = sum(p.k.n for p in pages)
    read = total if index is None else index.shape[-1]
    out = torch.empty(b, h, g, dv, dtype=torch.float32)
    lse = torch.empty(b, h, g, dtype=torch.float32)
    logits = torch.empty(b, h, g, read, dtype=torch.float32) if want_logits else None
    if bias is not None:
        bias = bias.float()
        if bias.stride(-1) != 1:
            bias = bias.contiguous()
    if index is not None:
        index = index.to(torch.int64)
        if index.stride(-1) != 1:
            index = index.contiguous()
    threads = torch.get_num_threads()
    # enough (sequence, head, token range) items to keep every thread busy, ranges of at least 256 tokens
    splits = max(1, min(-(-4 * threads // (b * h)), read // 256))
    rc = lib.kvsim_attend(b, h, g, dk, dv, qf.data_ptr(), ks.buffer_info()[0], vs.buffer_info()[0], np_,
                          0 if bias is None else bias.data_ptr(), 0 if bias is None else bias.shape[-1],
                          0 if bias is None else bias.stride(0), 0 if bias is None else bias.stride(1),
                          0 if index is None else index.data_ptr(), 0 if index is None else index.shape[-1],
                          0 if index is None else index.stride(0), 0 if index is None else index.stride(1),
                          float(scale), float(softcap or 0.0), out.data_ptr(), lse.data_ptr(),
                          0 if logits is None else logits.data_ptr(), splits, threads)
    if rc:
        raise MemoryError("native decode attention: out of memory")
    return out, lse, logits
