"""Each measured op's time as kvsim's cost model charges it, from a Profile and a HardwareSpec.

Each op is one call of kvsim/kernels.py, the functions the cost model (kvsim/cost.py) prices its kernels
with, so the parameters fitted here mean the same thing inside `kvsim predict`; this module only turns a
table's columns into those calls (and adds each kernel's floor, as the cost model's step time does). Every
function is vectorised over a table's columns.
"""

from __future__ import annotations

import numpy as np

from kvsim import kernels
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


def _peak(prof: Profile, hw: HardwareSpec, dtype: str) -> float:
    return prof.peak_flops or hw.peak_flops(dtype)


def _by_name(names) -> list[tuple[str, np.ndarray]]:
    names = np.asarray(names).astype(str)
    return [(str(n), names == n) for n in np.unique(names)]


def gemm(prof: Profile, hw: HardwareSpec, m, n, k, dtype) -> np.ndarray:
    """y[m, n] = x[m, k] @ W[k, n] as one kernel (kvsim.kernels.matmul), plus its floor; W8A8 dtypes add the
    activation-quantisation kernel and its floor."""
    m, n, k = (np.asarray(a, dtype=np.float64) for a in (m, n, k))
    out = np.empty(m.shape)
    for name, sel in _by_name(dtype):
        mm_dt, wbytes = MATMUL_DTYPES[name]
        abytes = wbytes if mm_dt in W8A8 else ACT_BYTES
        _, _, t = kernels.matmul(prof, hw, m[sel], n[sel], k[sel], peak=_peak(prof, hw, mm_dt), bw=_bw(prof, hw),
                                 wbytes=wbytes, abytes=abytes, dtype=mm_dt, quantised=mm_dt in W8A8)
        out[sel] = t + prof.matmul_overhead_s * (2 if mm_dt in W8A8 else 1)
    return out


def _table_only(prof: Profile, key: str, default: float) -> float:
    """A term that describes the tables' measurement only: in the profile's meta while fitting, under
    "table_only" in a profile read back from its JSON."""
    return prof.meta.get(key, prof.meta.get("table_only", {}).get(key, default))


def _window_tokens(prof: Profile, tokens, window, head_dim, kv_dtype: str):
    """Keys a decode kernel reads of `tokens` when a sliding window of `window` (0: none) binds, edge included."""
    return np.where(window > 0, np.minimum(tokens, window + prof.window_edge(head_dim, kv_dtype)), tokens)


def decode_attention(prof: Profile, hw: HardwareSpec, batch, step, heads, kv_heads, head_dim, kv_dtype,
                     window, l2_bytes: float = 0.0) -> np.ndarray:
    """One decode step of `batch` sequences holding `step` tokens each: the new token's K/V is written and
    step + 1 tokens are read (the last `window` of them when windowed)."""
    b, step, h, kvh, d, w = (np.asarray(a, dtype=np.float64) for a in (batch, step, heads, kv_heads, head_dim,
                                                                       window))
    out = np.empty(b.shape)
    for name, sel in _by_name(kv_dtype):
        kv_dt, elem = KV_DTYPES[name]
        bs, ctx, kh, dd = b[sel], step[sel] + 1, kvh[sel], d[sel]
        tokens = _window_tokens(prof, ctx, w[sel], dd, kv_dt)
        moved = bs * (tokens + 1) * kh * 2 * dd * elem
        # The tables replay one op in a CUDA graph without flushing L2, so a cache that fits in L2 is read from
        # it on every replay, and the kernel's floor is the L2's latency rather than memory's (H100 vLLM: a
        # step's time jumps by about 8 us where its KV outgrows the 50 MB L2). In a real step the layers'
        # weights flush L2 between attention calls: the fitted L2 speed-up and floor live in the profile's
        # meta for these rows only, never in `kvsim predict`.
        in_l2 = moved <= l2_bytes
        l2 = np.where(in_l2, _table_only(prof, "l2_speedup", 1.0), 1.0)
        _, _, t = kernels.attention(prof, hw, flops=bs * h[sel] * tokens * (4 * dd + 5), kv_bytes=moved,
                                    kv_dtype=kv_dt, seq_tokens=tokens, units=bs * kh, head_dim=dd, decode=True,
                                    tokens=tokens, seqs=bs, peak=_peak(prof, hw, "bf16"), bw=_bw(prof, hw),
                                    l2_speedup=l2, group=h[sel] / kh)
        out[sel] = t + np.where(in_l2, _table_only(prof, "l2_overhead_s", prof.attention_overhead_s),
                                prof.attention_overhead_s)
    return out


def prefill_attention(prof: Profile, hw: HardwareSpec, batch, isl, heads, kv_heads, head_dim, kv_dtype,
                      window) -> np.ndarray:
    """Causal attention over `isl` prompt tokens per sequence, writing their K/V."""
    b, p, h, kvh, d, w = (np.asarray(a, dtype=np.float64) for a in (batch, isl, heads, kv_heads, head_dim, window))
    prof = prof.for_prefill()
    out = np.empty(b.shape)
    for name, sel in _by_name(kv_dtype):
        kv_dt, elem = KV_DTYPES[name]
        pairs = causal_pairs(p[sel], np.where(w[sel] > 0, w[sel] + prof.window_edge_tokens, 0.0))
        _, _, t = kernels.attention(prof, hw, flops=b[sel] * pairs * h[sel] * (4 * d[sel] + 5),
                                    kv_bytes=b[sel] * p[sel] * kvh[sel] * 2 * d[sel] * elem, kv_dtype=kv_dt,
                                    seq_tokens=p[sel], units=b[sel] * kvh[sel], head_dim=d[sel], decode=False,
                                    peak=_peak(prof, hw, "bf16"), bw=_bw(prof, hw), group=h[sel] / kvh[sel])
        out[sel] = t + prof.attention_overhead_s
    return out


def moe(prof: Profile, hw: HardwareSpec, tokens, hidden, inter, topk, experts, tp, ep, dtype) -> np.ndarray:
    """A fused MoE block: gate-up and down grouped GEMMs over the experts the routed tokens touch (uniform
    routing), each expert's matmuls over its share of the rows, experts split tp x ep ways."""
    t_, hd, it, k, e, tp, ep = (np.asarray(a, dtype=np.float64) for a in (tokens, hidden, inter, topk, experts,
                                                                          tp, ep))
    out = np.empty(t_.shape)
    for name, sel in _by_name(dtype):
        mm_dt, wbytes = MATMUL_DTYPES[name]
        abytes = wbytes if mm_dt in W8A8 else ACT_BYTES
        touched = touched_experts(e[sel], k[sel], t_[sel])
        rows = t_[sel] * k[sel] / touched  # tokens each touched expert's matmuls see
        kw = dict(peak=_peak(prof, hw, mm_dt), bw=_bw(prof, hw), wbytes=wbytes, abytes=abytes, dtype=mm_dt,
                  quantised=mm_dt in W8A8, groups=touched / ep[sel], moe=True)
        up = kernels.matmul(prof, hw, rows, 2 * it[sel] / tp[sel], hd[sel], **kw)[2]
        down = kernels.matmul(prof, hw, rows, hd[sel], it[sel] / tp[sel], **kw)[2]
        out[sel] = up + down
    return out + 2 * prof.matmul_overhead_s


def allreduce(prof: Profile, hw: HardwareSpec, gpus, elements, elem_bytes=ACT_BYTES) -> np.ndarray:
    """A ring all-reduce of `elements` values over `gpus` devices: 2 (n - 1) / n of the message crosses
    each link."""
    n, x = np.asarray(gpus, dtype=np.float64), np.asarray(elements, dtype=np.float64)
    volume = 2 * (n - 1) / n * x * elem_bytes
    return volume / (hw.interconnect_bandwidth * prof.comm_efficiency) + prof.allreduce_overhead_s
