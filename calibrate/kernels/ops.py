"""Each measured op's time as kvsim's cost model charges it, from a Profile and a HardwareSpec.

These are the cost model's own formulas (kvsim/cost.py) at the granularity of one kernel, so the parameters
fitted here mean the same thing inside `kvsim predict`: the matrix ramp by rows, the attention ramp by
tokens per sequence, KV bandwidth per KV dtype, the per-sequence decode cost, the per-kernel floors, the
sliding-window penalty and the all-reduce bandwidth. Every function is vectorised over a table's columns.
"""

from __future__ import annotations

import numpy as np

from kvsim.cost import causal_pairs, touched_experts
from kvsim.hardware import HardwareSpec
from kvsim.profile import Profile

# the tables' dtype names -> (kvsim dtype whose peak the kernel runs at, bytes per operand element)
MATMUL_DTYPES = {"bfloat16": ("bf16", 2), "float16": ("fp16", 2), "fp8": ("fp8", 1), "fp8_block": ("fp8", 1),
                 "int8_wo": ("bf16", 1), "int4_wo": ("bf16", 0.5), "w4a16_mxfp4": ("bf16", 0.5)}
KV_DTYPES = {"bfloat16": ("bf16", 2), "float16": ("fp16", 2), "fp8": ("fp8", 1), "int8": ("int8", 1)}
ACT_BYTES = 2  # activations and outputs stay in 16 bits
W8A8 = ("fp8", "int8")  # matmul dtypes whose activations are quantised before the matmul


def _bw(prof: Profile, hw: HardwareSpec) -> float:
    return prof.memory_bandwidth or hw.memory_bandwidth


def gemm(prof: Profile, hw: HardwareSpec, m, n, k, dtype) -> np.ndarray:
    """y[m, n] = x[m, k] @ W[k, n]: 2mnk FLOP at the dtype's peak, weights + input + output once."""
    m, n, k = (np.asarray(a, dtype=np.float64) for a in (m, n, k))
    dtype = np.asarray(dtype)
    out = np.empty(m.shape)
    for name in np.unique(dtype):
        sel = dtype == name
        kv_dt, wbytes = MATMUL_DTYPES[str(name)]
        peak = (prof.peak_flops or hw.peak_flops(kv_dt)) * prof.matmul_fraction(m[sel], kv_dt)
        flops = 2.0 * m[sel] * n[sel] * k[sel]
        abytes = wbytes if kv_dt == "fp8" else ACT_BYTES
        moved = n[sel] * k[sel] * wbytes + m[sel] * k[sel] * abytes + m[sel] * n[sel] * ACT_BYTES
        bw = _bw(prof, hw) * prof.mem_efficiency
        out[sel] = np.maximum(flops / peak, moved / bw) + prof.matmul_overhead_s
        if kv_dt in W8A8:  # a kernel of its own quantises the activations first: read 16-bit, write 8-bit
            out[sel] += m[sel] * k[sel] * (ACT_BYTES + abytes) / bw + prof.matmul_overhead_s
    return out


def _kv(prof: Profile, kv_dtype) -> tuple[np.ndarray, np.ndarray]:
    """Bytes per element and achieved fraction of bandwidth for each row's KV dtype."""
    names, inverse = np.unique(np.asarray(kv_dtype).astype(str), return_inverse=True)
    elem = np.array([KV_DTYPES[n][1] for n in names], dtype=np.float64)
    frac = np.array([prof.kv_fraction(KV_DTYPES[n][0]) for n in names])
    return elem[inverse], frac[inverse]


def _attn_peak(prof: Profile, hw: HardwareSpec, seq, rows):
    return (prof.peak_flops or hw.peak_flops("bf16")) * prof.attention_fraction(seq, rows)


def decode_attention(prof: Profile, hw: HardwareSpec, batch, step, heads, kv_heads, head_dim, kv_dtype,
                     window, l2_bytes: float = 0.0) -> np.ndarray:
    """One decode step of `batch` sequences holding `step` tokens each: the new token's K/V is written and
    step + 1 tokens are read (the last `window` of them when windowed)."""
    b, step, h, kvh, d, w = (np.asarray(a, dtype=np.float64) for a in (batch, step, heads, kv_heads, head_dim,
                                                                       window))
    kv_dtype = np.asarray(kv_dtype)
    tokens = np.where(w > 0, np.minimum(step + 1, w + prof.window_edge_tokens), step + 1)
    elem, frac = _kv(prof, kv_dtype)
    frac = frac * prof.kv_occupancy(prof.decode_units(b * kvh, step + 1))
    per_token = kvh * 2 * d * elem
    moved = b * (tokens * per_token + per_token)
    flops = b * h * tokens * (4 * d + 5)
    # The tables replay one op in a CUDA graph without flushing L2, so a cache that fits in L2 is read from
    # it on every replay. In a real step the layers' weights flush L2 between attention calls: the fitted
    # L2 speed-up lives in the profile's meta for these rows only, never in `kvsim predict`.
    speedup = np.where(moved <= l2_bytes, prof.meta.get("l2_speedup", 1.0), 1.0)
    t = np.maximum(flops / _attn_peak(prof, hw, step + 1, b), moved / (_bw(prof, hw) * frac * speedup))
    return t + b * kvh * prof.attention_seq_overhead_s + prof.attention_overhead_s


def prefill_attention(prof: Profile, hw: HardwareSpec, batch, isl, heads, kv_heads, head_dim, kv_dtype,
                      window) -> np.ndarray:
    """Causal attention over `isl` prompt tokens per sequence, writing their K/V."""
    b, p, h, kvh, d = (np.asarray(a, dtype=np.float64) for a in (batch, isl, heads, kv_heads, head_dim))
    kv_dtype = np.asarray(kv_dtype)
    w = np.asarray(window, dtype=np.float64)
    pairs = causal_pairs(p, np.where(w > 0, w + prof.window_edge_tokens, 0.0))
    elem, frac = _kv(prof, kv_dtype)
    flops = b * pairs * h * (4 * d + 5)
    moved = b * p * kvh * 2 * d * elem
    t = np.maximum(flops / _attn_peak(prof, hw, p, b * p), moved / (_bw(prof, hw) * frac))
    return t + b * kvh * prof.attention_seq_overhead_s + prof.attention_overhead_s


def moe(prof: Profile, hw: HardwareSpec, tokens, hidden, inter, topk, experts, tp, ep, dtype) -> np.ndarray:
    """A fused MoE block (gate-up and down for every routed token), experts split tp x ep ways."""
    t_, hd, it, k, e, tp, ep = (np.asarray(a, dtype=np.float64) for a in (tokens, hidden, inter, topk, experts,
                                                                          tp, ep))
    dtype = np.asarray(dtype)
    out = np.empty(t_.shape)
    for name in np.unique(dtype):
        sel = dtype == name
        kv_dt, wbytes = MATMUL_DTYPES[str(name)]
        per_expert = 3.0 * hd[sel] * it[sel]
        touched = touched_experts(e[sel], k[sel], t_[sel])
        flops = 2.0 * t_[sel] * k[sel] * per_expert / (tp[sel] * ep[sel])
        rows = t_[sel] * k[sel] / touched  # tokens each touched expert's matmul sees
        peak = (prof.peak_flops or hw.peak_flops(kv_dt)) * prof.matmul_fraction(rows, kv_dt) * prof.moe_efficiency
        moved = touched * per_expert * wbytes / (tp[sel] * ep[sel]) + t_[sel] * k[sel] * hd[sel] * 2 * ACT_BYTES
        out[sel] = np.maximum(flops / peak, moved / (_bw(prof, hw) * prof.mem_efficiency))
    return out + 2 * prof.matmul_overhead_s


def allreduce(prof: Profile, hw: HardwareSpec, gpus, elements, elem_bytes=ACT_BYTES) -> np.ndarray:
    """A ring all-reduce of `elements` values over `gpus` devices: 2 (n - 1) / n of the message crosses
    each link."""
    n, x = np.asarray(gpus, dtype=np.float64), np.asarray(elements, dtype=np.float64)
    volume = 2 * (n - 1) / n * x * elem_bytes
    return volume / (hw.interconnect_bandwidth * prof.comm_efficiency) + prof.allreduce_overhead_s
