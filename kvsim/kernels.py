"""Time of one GPU kernel as a calibrated kernel profile (Profile.tiled) prices it: a weight matmul or an
attention kernel, with what the datasheet roofline leaves out.

The cost model (cost.py, one layer group at a time) and the kernel-table fits (calibrate/kernels/ops.py, one
measured row at a time) both call these functions, so a parameter fitted to single kernels means the same thing
inside `kvsim predict`. Every function is vectorised and returns (compute seconds, memory seconds, seconds):
the first two are the roofline's two sides as the kernel meets them, the third what it takes.

Matmuls. A GEMM kernel covers its m x n output with tiles and runs them in waves over the SMs: a partly
filled tile computes in full, and a last wave with fewer tiles than SMs takes as long as a full one. With few
tiles a kernel splits k into pieces run side by side (split-K) and adds their fp32 partial outputs. Libraries
pick the tile and split that finish first (cuBLAS's heuristics, CUTLASS autotuning), so the time is the best
over TILES x SPLITS. One row through one 16-bit weight (a decode step at batch 1) runs a GEMV kernel that
streams the weight at `gemv_mem_efficiency` of the bandwidth where the profile gives one. Each tile also
pays a fixed prologue and epilogue, worth `matmul_tile_fixed_k` steps of
its k loop (a fused MoE kernel's tiles `moe_tile_fixed_k`: Triton's fused_moe gathers each tile's routed rows
and scatters its outputs, so experts with short k loops, the fine-grained MoEs' small ones, reach less of the
peak). A kernel with few tiles cannot keep enough loads in flight: C thread blocks (tiles x splits) keep
C / sqrt(C^2 + matmul_half_ctas^2) of the bandwidth busy. W8A8 formats quantise the activations first, in a
kernel of their own: read 16-bit, write 8-bit, plus `quant_row_overhead_s` per row; their scaled-matmul
kernels (CUTLASS's in vLLM and SGLang) have no split-K. A kernel whose tiles each stream their own operand rows and columns (no
reuse through L2, as vLLM's CUTLASS fp8 kernels do) reads them at `matmul_operand_efficiency[dtype]` of the
bandwidth.

Attention. Compute runs at the attention ramp by tokens per sequence (Profile.attention_fraction: a query
tile's fixed cost amortised over its keys), at `attn_dtype_efficiency[kv dtype]` when the KV dtype has an
entry (FlashAttention-3's fp8 path quantises queries and runs its own kernels), and at d / (d +
`attn_softmax_dims`) of that for heads d wide: each score's softmax runs its exponential on the special-function
units, a fixed cost per score that narrow heads amortise over less matrix work (fitted on the tables' prefills
over head dims 64-256: 28-32 columns for vLLM's FlashAttention-3 on H100 and H200, 72 for SGLang's, 65 for
TensorRT-LLM's context FMHA). A decode kernel spreads its
KV reads over (sequence, KV head) units, each split along its context in up to `kv_max_splits` pieces of
`kv_split_tokens` or more (with `kv_split_rule` "fa2", as FlashAttention-2's heuristic splits them, each of
the step's grouped-query copies and split combine costing `decode_aux_kernel_s`; with "trtllm", on the kernel
TensorRT-LLM picks for the step: XQA, split by its own rule, a 16-bit cache's separate rotary-embedding and
KV-append kernel costing `decode_aux_kernel_s`, or MMHA, one unit per (sequence, query head) streaming its KV
head itself, split to fill one wave, with the profile's `mmha` terms and floor); C such pieces keep
C / (C^p + kv_half_units^p)^(1/p) of the bandwidth busy (p = `kv_occupancy_power`), a unit dequantising a KV
dtype listed in `kv_dtype_unit_rate` counting as that share of one. A KV dtype with a dequantisation bound is
also limited to that fraction of the bandwidth: the
SMs' conversion rate over the whole device, which neither the units' occupancy nor a cache served from L2
changes. Decode kernels are compiled per head dim with their own tiles, so the bound is fitted per head dim
(`kv_dtype_head_efficiency`, interpolated in log head dim between fitted ones; `kv_dtype_efficiency` where
none is given): FlashAttention-3's fp8 decode on H100 streams at 0.73, 0.87 and 0.46 of the bandwidth at head
dims 64, 128 and 256. Every (sequence,
KV head) unit costs `attention_seq_overhead_s` (a decode kernel reading a KV dtype listed in
`kv_dtype_seq_overhead_s`: that) for a 128-wide head, scaled by (head dim / 128) **
attn_head_exponent, and the units run in waves: fewer than one per SM cost a full wave. Each sequence of a
decode step adds `decode_seq_overhead_s` whatever its KV heads (FlashAttention-3's varlen scheduler sorts the
sequences and sizes their splits), in steps of at most `decode_seq_overhead_max_seqs` sequences where that is
set (past 992 FlashAttention-3 neither sorts nor splits). In decode the three
parts overlap imperfectly: time = (compute^q + memory^q + units^q)^(1/q) with q = `attention_overlap` (0:
max(compute, memory) + units); decode kernels reading a KV dtype listed in `kv_dtype_overlap` overlap with
that q instead (an fp8 unit's fixed work adds to its dequantising stream instead of hiding under it). A
prefill's units count (query heads per KV head) ** `prefill_group_exponent` each (1: a kernel that runs
every query head in thread blocks of its own). A prefill's KV traffic is the write of the prompt's keys and
values into the paged cache, a kernel of its own that runs before attention, and its units' fixed work adds to its compute
(the tables find no overlap): time = compute + units + memory.
"""

from __future__ import annotations

import numpy as np

from .errors import KvsimError
from .hardware import HardwareSpec
from .profile import Profile, fa2_aux_kernels, mmha_num_splits, trtllm_uses_xqa, xqa_num_splits

# Output tiles (rows x columns) that Hopper and Ampere GEMM kernels choose among (CUTLASS's default tile
# shapes for 16- and 8-bit operands: 64x64 for skinny problems, 128x128, and 128x256 for large ones).
TILES = ((64, 64), (128, 128), (128, 256))
SPLITS = (1, 2, 3, 4, 6, 8, 12, 16)  # split-K factors
# (tile rows, tile columns, splits) of every configuration; scaled (W8A8) kernels do not split k
_CONFIGS = tuple(np.array(v, dtype=np.float64) for v in zip(*[(tm, tn, s) for tm, tn in TILES for s in SPLITS]))
_CONFIGS_W8A8 = tuple(np.array(v, dtype=np.float64) for v in zip(*[(tm, tn, 1) for tm, tn in TILES]))
ACC_BYTES = 4  # fp32 partial outputs of split-K
OUT_BYTES = 2  # matmul outputs and attention queries stay 16-bit
HEAD_DIM_REF = 128.0  # attention_seq_overhead_s is quoted for a head this wide


def sm_count(hw: HardwareSpec) -> int:
    if not hw.sm_count:
        raise KvsimError(f"hardware {hw.name} lists no SM count, which a kernel-level profile needs "
                         "(give sm_count in its preset)")
    return hw.sm_count


def matmul(prof: Profile, hw: HardwareSpec, m, n, k, *, peak: float, bw: float, wbytes: float, abytes: float,
           dtype: str, quantised: bool = False, groups=1.0, moe: bool = False):
    """y[m, n] = x[m, k] @ W[k, n], `groups` independent ones in one kernel. `peak` and `bw` are the raw
    (datasheet or probed) dense peak of the matmul dtype and memory bandwidth; `abytes` the bytes of each
    activation element the matmul reads. `moe`: the groups are a fused MoE block's experts, each over its m
    routed rows, computing at Profile.moe_fraction(m) of the matrix efficiency with tiles of their own fixed
    cost (moe_tile_fixed_k)."""
    m, n, k, groups = (np.asarray(a, dtype=np.float64) for a in (m, n, k, groups))
    efficiency = prof.moe_fraction(m) if moe else 1.0
    fixed_k = prof.moe_tile_fixed_k if moe and prof.moe_tile_fixed_k else prof.matmul_tile_fixed_k
    membw = bw * prof.mem_efficiency
    if prof.gemv_mem_efficiency and not quantised:  # one row through one weight: a GEMV kernel of its own
        membw = np.where((m <= 1) & (groups == 1), bw * prof.gemv_mem_efficiency, membw)
    moved = groups * (n * k * wbytes + m * k * abytes + m * n * OUT_BYTES)
    quant = 0.0
    if quantised:  # the activation-quantisation kernel before the matmul
        quant = groups * m * k * (OUT_BYTES + abytes) / membw + groups * m * prof.quant_row_overhead_s
    if not prof.tiled:  # the roofline of this one matmul
        comp = 2.0 * groups * m * n * k / (peak * prof.matmul_fraction(m, dtype) * efficiency)
        mem = moved / membw + quant
        return comp, mem, np.maximum(comp, moved / membw) + quant
    sms = sm_count(hw)
    eff = prof.matmul_dtype_efficiency.get(dtype, prof.compute_efficiency) * efficiency
    operand = prof.matmul_operand_efficiency.get(dtype, 0.0)
    # every (tile, split) configuration along a leading axis: one numpy pass, then the fastest per shape
    tm, tn, s = (a.reshape((-1,) + (1,) * m.ndim) for a in (_CONFIGS_W8A8 if quantised else _CONFIGS))
    tiles = groups * np.ceil(m / tm) * np.ceil(n / tn)
    ks = np.ceil(k / s)
    ctas = tiles * s
    c = np.ceil(ctas / sms) * (2.0 * tm * tn * (ks + fixed_k)) / (peak * eff / sms)
    occ = ctas / np.sqrt(ctas * ctas + prof.matmul_half_ctas ** 2) if prof.matmul_half_ctas else 1.0
    b = moved / (membw * occ) + np.where(s > 1, groups * m * n * ACC_BYTES * 2 * s / membw, 0.0)  # partials
    if operand:
        b = np.maximum(b, ctas * (tm * abytes + tn * wbytes) * ks / (bw * operand))
    t = np.maximum(c, b)
    best = t.min(axis=0)
    at_best = t == best  # the two sides of the fastest configuration
    return np.where(at_best, c, np.inf).min(axis=0), np.where(at_best, b, np.inf).min(axis=0) + quant, best + quant


def decode_occupancy(prof: Profile, units, tokens, sms: int = 0, kv_dtype: str = "", head_dim=128, group=1):
    """Share of a decode kernel's KV bandwidth its split (sequence, KV head) units keep busy."""
    return _split_occupancy(prof, prof.decode_units(units, tokens, sms, head_dim, group), kv_dtype)


def _split_occupancy(prof: Profile, split, kv_dtype: str):
    """decode_occupancy of `split` units already split; a unit that dequantises a `kv_dtype` listed in
    kv_dtype_unit_rate streams slower and counts as that share of one."""
    return prof.kv_occupancy(split * prof.kv_dtype_unit_rate.get(kv_dtype, 1.0))


def attention(prof: Profile, hw: HardwareSpec, *, flops, kv_bytes, kv_dtype: str, seq_tokens, units, head_dim,
              decode: bool, tokens=None, seqs=None, peak: float, bw: float, l2_speedup=1.0, group=1):
    """One attention kernel: `flops` of scores and weighted values over `seq_tokens` keys per sequence,
    `kv_bytes` of KV read and written, `units` (sequence, KV head) pairs of `seqs` sequences, `group` query heads
    per KV head; in decode `tokens` is each sequence's cached context (the split-KV length). `l2_speedup` (table
    fits only) speeds up reads that a replayed kernel finds in L2."""
    kv_bytes = np.asarray(kv_bytes, dtype=np.float64)
    units = np.asarray(units, dtype=np.float64)
    tokens = tokens if tokens is not None else seq_tokens
    if not prof.tiled:  # the per-layer roofline's attention (cost.py without `tiled`)
        occ = decode_occupancy(prof, units, tokens, kv_dtype=kv_dtype) if decode else 1.0
        comp = np.asarray(flops, dtype=np.float64) / (peak * prof.attention_fraction(seq_tokens, units))
        mem = kv_bytes / (bw * prof.kv_fraction(kv_dtype) * occ * l2_speedup)
        per_seq = prof.decode_seq_s(seqs) if decode and seqs is not None else 0.0
        return comp, mem, np.maximum(comp, mem) + units * prof.attention_seq_overhead_s + per_seq
    sms = sm_count(hw)
    if not decode:
        units = units * np.asarray(group, dtype=np.float64) ** prof.prefill_group_exponent
        return _tiled_attention(prof.for_prefill(), sms, flops, kv_bytes, kv_dtype, seq_tokens, units, units, head_dim,
                                False, None, peak, bw, l2_speedup)
    if prof.kv_split_rule == "trtllm":  # decode callers give `seqs`
        return _trtllm_decode(prof, sms, flops, kv_bytes, kv_dtype, seq_tokens, units, head_dim, tokens, seqs, peak,
                              bw, l2_speedup, group)
    split = prof.decode_units(units, tokens, sms, head_dim, group)
    comp, mem, t = _tiled_attention(prof, sms, flops, kv_bytes, kv_dtype, seq_tokens, units, split, head_dim, True,
                                    seqs, peak, bw, l2_speedup)
    if prof.kv_split_rule == "fa2" and prof.decode_aux_kernel_s:
        t = t + prof.decode_aux_kernel_s * fa2_aux_kernels(split / units, group, units / seqs)
    return comp, mem, t


def _trtllm_decode(prof: Profile, sms: int, flops, kv_bytes, kv_dtype: str, seq_tokens, units, head_dim, tokens,
                   seqs, peak: float, bw: float, l2_speedup, group):
    """A TensorRT-LLM decode step: XQA over (sequence, KV head) units split by its own rule, with a separate
    rotary-embedding and KV-append kernel for a 16-bit cache; or MMHA, one unit per (sequence, query head),
    each streaming its KV head's keys and values itself, with the profile's `mmha` terms."""
    seqs = np.asarray(seqs, dtype=np.float64)
    group = np.asarray(group, dtype=np.float64)
    kv_heads = units / np.maximum(seqs, 1e-12)  # 0 for an empty batch
    past = np.maximum(np.asarray(tokens, dtype=np.float64) - 1.0, 0.0)  # the history before this step's token
    xqa = trtllm_uses_xqa(seqs, kv_heads, group, past, sms, fp8_cache=kv_dtype == "fp8")
    split = units * xqa_num_splits(seqs, kv_heads, past, sms)
    xc, xm, xt = _tiled_attention(prof, sms, flops, kv_bytes, kv_dtype, seq_tokens, units, split, head_dim, True,
                                  seqs, peak, bw, l2_speedup)
    if kv_dtype != "fp8":
        xt = xt + prof.decode_aux_kernel_s
    mm = prof.for_mmha()
    heads = units * group
    mc, mmem, mt = _tiled_attention(mm, sms, flops, kv_bytes * group, kv_dtype, seq_tokens, heads,
                                    heads * mmha_num_splits(heads, tokens, sms, mm.kv_split_tokens), head_dim, True,
                                    seqs, peak, bw, l2_speedup)
    mt = mt + (mm.attention_overhead_s - prof.attention_overhead_s)  # callers add the profile's floor: MMHA's own
    return np.where(xqa, xc, mc), np.where(xqa, xm, mmem), np.where(xqa, xt, mt)


def _tiled_attention(prof: Profile, sms: int, flops, kv_bytes, kv_dtype: str, seq_tokens, units, split, head_dim,
                     decode: bool, seqs, peak: float, bw: float, l2_speedup):
    """One attention kernel of a tiled profile with its `units` already split into `split` (decode)."""
    occ = _split_occupancy(prof, split, kv_dtype) if decode else 1.0
    frac = prof.attention_fraction(seq_tokens, seq_tokens) * prof.attn_dtype_efficiency.get(kv_dtype, 1.0)
    if prof.attn_softmax_dims:
        d = np.asarray(head_dim, dtype=np.float64)
        frac = frac * d / (d + prof.attn_softmax_dims)
    comp = np.asarray(flops, dtype=np.float64) / (peak * frac)
    mem = kv_bytes / (bw * prof.kv_efficiency * occ * l2_speedup)
    dq = prof.kv_dequant_fraction(kv_dtype, head_dim) if decode else prof.kv_dtype_efficiency.get(kv_dtype)
    if dq is not None:
        mem = np.maximum(mem, kv_bytes / (bw * dq))  # occ is 1 in prefill, and decode's bound is device-wide
    per_unit = prof.kv_dtype_seq_overhead_s.get(kv_dtype, prof.attention_seq_overhead_s) if decode \
        else prof.attention_seq_overhead_s
    per_unit = per_unit * (np.asarray(head_dim, dtype=np.float64) / HEAD_DIM_REF) ** prof.attn_head_exponent
    unit_s = np.maximum(units, sms) * per_unit
    if decode and seqs is not None:
        unit_s = unit_s + prof.decode_seq_s(seqs)
    q = prof.kv_dtype_overlap.get(kv_dtype, prof.attention_overlap) if decode else prof.attention_overlap
    if not decode:  # the cache write, then a causal pass whose units' fixed work adds to its compute
        t = comp + unit_s + mem
    elif q:
        t = (comp ** q + mem ** q + unit_s ** q) ** (1.0 / q)
    else:
        t = np.maximum(comp, mem) + unit_s
    return comp, mem, t
