"""Efficiency profile: how much of the datasheet a real stack achieves, and its fixed overheads.

The default profile is the datasheet roofline itself: efficiencies of 1 and no overheads. Its times are
a physical lower bound ("no implementation can beat this"), never a guess dressed up as a prediction.
Calibrated profiles (calibrate/profiles/*.json) replace these numbers with fitted ones and carry the
held-out error they were measured to have.

Matrix work (weight GEMMs, attention) over a forward pass of T tokens reaches peak_flops times
    (compute_small_efficiency * compute_half_tokens + compute_efficiency * T) / (compute_half_tokens + T)
which goes from the small-batch level (decode: a few rows per matrix, often row-at-a-time kernels) to the
large-batch level (prefill: blocked GEMMs), half way at compute_half_tokens. Weight and activation streams
reach bandwidth * mem_efficiency; KV reads and writes reach bandwidth * kv_efficiency (a cache that is
re-copied on every append, or read through gathers, achieves less of the bandwidth than a weight stream).
The policy's own arithmetic (scoring, selection, dequantisation) runs at peak_flops * policy_efficiency.
An operation class takes the longer of its compute and memory times (the roofline) plus the share of the
shorter that compute_memory_overlap leaves exposed (1: none; 0: the sum). On a GPU, many warps in flight hide
one under the other; on a CPU the same cores issue the weight loads and the FMAs, so a decode step's time
rises with every sequence from batch 1 on instead of staying at the weight stream's time until compute binds.

Kernel-level terms, fitted from per-op GPU measurements (calibrate/kernels), each 0 or empty by default so
the roofline is unchanged:
- attention compute has its own ramp, indexed by tokens per sequence (a FlashAttention query tile is filled
  by one sequence's queries and pays a fixed cost that its keys amortise): attn_small_efficiency ->
  attn_efficiency, half way at attn_half_tokens (attn_small_efficiency 0: that fixed cost alone);
- KV reads reach kv_dtype_efficiency[kv dtype] of the bandwidth where given (fp8 KV is dequantisation-bound
  on FlashAttention-3), kv_efficiency otherwise; decode kernels take that bound per head dim from
  kv_dtype_head_efficiency["dtype@head dim"] where given (each head dim is its own compiled kernel), and
  overlap their parts with kv_dtype_overlap[kv dtype] in place of attention_overlap;
- matrix work in a dtype listed in matmul_dtype_efficiency reaches that fraction of its own dense peak at
  many tokens;
- a decode step's KV reads are spread over its (sequence, KV head) pairs, each split into up to
  kv_max_splits pieces of kv_split_tokens (split-KV "flash decoding"; kv_split_rule "fa2": as
  FlashAttention-2 splits them, fa2_num_splits, with decode_aux_kernel_s per auxiliary kernel; "trtllm": on
  the kernel TensorRT-LLM picks, XQA split by xqa_num_splits or MMHA by mmha_num_splits with the terms in
  `mmha`, trtllm_uses_xqa): with few such
  pieces the kernel cannot keep enough loads in flight (kv_half_units sets how many it takes,
  kv_occupancy_power how sharply they saturate the memory system); a unit that dequantises a cache stored in
  a dtype listed in kv_dtype_unit_rate streams its KV at that share of a 16-bit unit's rate, so it takes 1/rate
  as many units to fill the bandwidth (FlashAttention-3's fp8 decode: slower per unit at a few sequences, the
  full bandwidth at many);
- attention pays attention_seq_overhead_s per sequence and KV head in each layer (scheduling a sequence's
  tiles or splits and its epilogue in varlen and paged kernels), decode kernels reading a KV dtype listed in
  kv_dtype_seq_overhead_s that instead (other kernels: XQA's fp8 Hopper kernel);
- a decode attention kernel pays decode_seq_overhead_s per sequence whatever its KV heads, in steps of at
  most decode_seq_overhead_max_seqs sequences where that is set (FlashAttention-3's varlen scheduler sorts
  the sequences and sizes their splits in one thread block up to 992 of them, and does neither beyond);
- graph-replayed engines pay no per-eager-kernel launch cost; a kernel still has a floor: matmul_overhead_s
  per weight matmul and attention_overhead_s per attention kernel;
- sliding-window kernels attend to window_edge_tokens keys beyond the window (whole tiles or pages at its edge),
  decode kernels to window_edge_head_tokens[head dim] where given (a key tile's length depends on the head dim),
  and to window_edge_head_tokens["dtype@head dim"] when they read a cache of that dtype (fp8 kernels' key tiles
  are longer: FlashAttention-3's tile_size_fwd_sm90 gives 160-224 keys at head dim 128 against 128 for 16 bits);
- routed-expert matmuls (a fused MoE block) reach moe_efficiency of the matrix efficiency, and in kernel-level
  profiles rows / (rows + moe_half_rows) of that with `rows` tokens per expert (a fused MoE kernel's tiles
  and configuration are tuned for many rows per expert: Triton's fused_moe pads each expert's rows to its
  block and switches configurations with the token count), and in kernel-level profiles their tiles pay
  moe_tile_fixed_k steps of their k loop where given (Triton's fused_moe gathers and scatters each tile's routed
  rows: fine-grained experts' short k loops reach less of the peak);
- tensor-parallel all-reduces reach comm_efficiency of the interconnect and pay allreduce_overhead_s each.

Executor terms fitted from harness runs, 0 by default: materialised_reads (unfused KV copies in decode) and
unfused_scan_s (an unfused Mamba-1 selective scan stepping a prompt token by token), unfused_chunk_s and
unfused_delta_s (an unfused chunked prefill's L x L tensors per chunk and head: Mamba-2's SSD, the gated delta
rule), unfused_attention_s (a prompt attention run unfused, per query head and query-key element: MLA and sink
logits under eager torch) with unfused_sink_s beyond it for sink logits, and unfused_state_s (a recurrent decode
step through state-sized temporaries); each grows by unfused_spill for the share of its temporaries beyond the
device's last-level cache (cache_bytes, from the probe).

With `tiled` set (profiles fitted to kernel tables), every weight matmul and attention kernel is priced as
one GPU kernel by kvsim/kernels.py: tiles and waves over the device's SMs, split-K, a tile's fixed work
(matmul_tile_fixed_k), one-row matmuls' own GEMV kernels (gemv_mem_efficiency), W8A8 activation
quantisation (quant_row_overhead_s per row), operand streams without
L2 reuse (matmul_operand_efficiency), fp8 attention kernels (attn_dtype_efficiency), per-unit costs that grow
with the head dim (attn_head_exponent) and run in waves, and the imperfect overlap of attention's compute,
memory and per-unit work (attention_overlap). Without it the cost model is the per-layer roofline above.
"""

from __future__ import annotations

import numpy as np
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .errors import KvsimError
from .jsonio import read_object
from .units import canonical_dtype


SPLIT_RULES = ("", "fa2", "trtllm")  # Profile.kv_split_rule

# FlashAttention-2's split-KV decoding (csrc/flash_attn/flash_api.cpp, set_params_splitkv and
# num_splits_heuristic), which vLLM's FlashAttention backend leaves to the kernel on Ampere (it passes
# num_splits=0 to FA2; its 32-split cap for CUDA graphs is FlashAttention-3's alone).
FA2_BLOCK_M = 64  # query rows per tile: a decode step's grouped query heads are its rows
FA2_MAX_SPLITS = 128
FA2_CTAS_PER_SM = 2  # "we multiply number of SMs by 2 to hard-code the fact that we're using 128 threads per block"


def fa2_num_splits(pairs, tokens, sms: int, head_dim=128, group=1) -> np.ndarray:
    """KV splits FlashAttention-2 gives each (sequence, KV head) pair of a decode step with `tokens` keys per
    sequence. Only grouped-query steps split: it packs a KV head's `group` query heads as the rows of one
    tile and calls num_splits_heuristic, which gives 1 split when the tiles already fill 80% of
    2 x `sms` slots, and otherwise the fewest splits (up to 128, the slots and the key blocks of kBlockN:
    256, 128 or 64 keys at head dims up to 64, 128 and beyond) whose waves are at least 0.85 as full as the
    best's, skipping counts that leave the blocks per split unchanged. Multi-head steps never split."""
    pairs, tokens, head_dim, group = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64)
                                                           for x in (pairs, tokens, head_dim, group)))
    block_n = np.where(head_dim <= 64, 256.0, np.where(head_dim <= 128, 128.0, 64.0))
    n_blocks = np.ceil(np.maximum(tokens, 1.0) / block_n)
    tiles = pairs * np.ceil(group / FA2_BLOCK_M)
    slots = float(FA2_CTAS_PER_SM * sms)
    cap = np.minimum(np.minimum(FA2_MAX_SPLITS, slots), n_blocks)
    s = np.arange(1, FA2_MAX_SPLITS + 1, dtype=np.float64).reshape((-1,) + (1,) * tiles.ndim)
    eligible = (s <= cap) & ((s == 1) | (np.ceil(n_blocks / s) != np.ceil(n_blocks / np.maximum(s - 1, 1))))
    waves = tiles * s / slots
    eff = np.where(eligible, waves / np.ceil(waves), 0.0)
    good = eligible & (eff >= 0.85 * eff.max(axis=0))
    splits = np.argmax(good, axis=0) + 1.0  # the smallest count that qualifies (s = 1 always is eligible)
    return np.where((group > 1) & (tiles < 0.8 * slots), splits, 1.0)


def fa2_aux_kernels(splits, group, kv_heads) -> np.ndarray:
    """Kernels a FlashAttention-2 decode step launches beside the attention kernel (and the cache write), with
    `splits` per (sequence, KV head) (fa2_num_splits): a grouped-query step over several KV heads copies its
    queries into the packed layout (q.reshape(b, kv_heads, group, d).transpose(1, 2)) and its output back
    (over one KV head the transpose moves a dimension of size 1 and both stay views), and a split step combines
    the splits' partial outputs in a kernel of its own."""
    group, kv_heads = np.asarray(group, dtype=np.float64), np.asarray(kv_heads, dtype=np.float64)
    return 2.0 * ((group > 1) & (kv_heads > 1)) + (np.asarray(splits) > 1)


# TensorRT-LLM's generation attention (AttentionOp::enqueueGeneration, decoderMaskedMultiheadAttention/): a
# grouped-query step runs the XQA kernel when DecoderXQARunner's mayHavePerfGain holds, the masked multi-head
# (MMHA) kernel otherwise, and each splits KV its own way (decoderXQAConstants.h, decoderXQAImplCommon.h).
XQA_MIN_HISTORY_TOKENS = 128  # kMinHistoryTokensPerBlock: a split's least history
XQA_MIN_BLOCK_FACTOR = 4.0  # kEnableMinBlockFactor: XQA when its thread blocks x 4 reach the SM count
XQA_TARGET_WAVES = 8  # kTargetWaveFactor: splits shrink until the blocks fill at most 8 waves
XQA_MAX_SUB_SEQ = 6000  # getXqaMaxNumSubSeq: the multi-block workspace's (sequence, split) slots


def _xqa_blocks(past) -> np.ndarray:
    """history / kMinHistoryTokensPerBlock, at least 1 (integer division, as the source)."""
    return np.maximum(np.floor(np.asarray(past, dtype=np.float64) / XQA_MIN_HISTORY_TOKENS), 1.0)


def trtllm_uses_xqa(seqs, kv_heads, group, past, sms: int, fp8_cache=False) -> np.ndarray:
    """Whether TensorRT-LLM runs a decode step of `seqs` sequences with `past` cached tokens over `kv_heads` KV
    heads of `group` query heads each on XQA rather than MMHA: grouped-query steps only, when kv_heads x seqs x
    max(1, past / 128) thread blocks times 4 reach the SMs (mayHavePerfGain). A step reading an fp8 cache runs
    XQA whenever it is grouped-query: every such row of the H100 tables times XQA's Hopper fp8 kernel (5-6 us
    at one sequence, against MMHA's 9-16 us), whatever the block count."""
    blocks = np.asarray(kv_heads, dtype=np.float64) * np.asarray(seqs, dtype=np.float64) * _xqa_blocks(past)
    return (np.asarray(group) > 1) & (np.asarray(fp8_cache) | (blocks * XQA_MIN_BLOCK_FACTOR >= sms))


def xqa_num_splits(seqs, kv_heads, past, sms: int) -> np.ndarray:
    """KV splits XQA gives each (sequence, KV head) of a decode step (computeMultiBlockCount): one per 128
    history tokens, at most round(sqrt(8 x that)) so that the final reduction does not dominate, then cut
    down to fill at most 8 waves of the SMs and to the workspace's 6,000 (sequence, split) slots."""
    seqs, kv_heads = (np.asarray(x, dtype=np.float64) for x in (seqs, kv_heads))
    n = _xqa_blocks(past)
    n = np.minimum(n, np.round(np.sqrt(8.0 * n)))
    adj = seqs * kv_heads * n / sms / XQA_TARGET_WAVES
    n = np.maximum(np.where(adj > 1.0, np.floor(n / adj), n), 1.0)
    return np.maximum(np.minimum(n, np.floor(XQA_MAX_SUB_SEQ / np.maximum(seqs, 1.0))), 1.0)


def mmha_num_splits(units, tokens, sms: int, loop_tokens) -> np.ndarray:
    """KV splits (seq_len_tile) MMHA gives each of a decode step's `units` (sequence, query head) pairs with
    `tokens` keys each (multi_block_grid_setup): enough to fill one wave of the SMs, ceil(SMs / units), which is
    also the cap AttentionOp::getMaxNumSeqLenTile sizes the workspace for, and at most one per unrolled loop of
    `loop_tokens` keys. The shared-memory floor on splits (a block holds its keys' logits) binds only where
    contexts of tens of thousands of tokens meet more units than SMs, and is left out."""
    units = np.maximum(np.asarray(units, dtype=np.float64), 1.0)
    by_tokens = np.ceil(np.maximum(np.asarray(tokens, dtype=np.float64), 1.0) / max(loop_tokens, 1.0))
    return np.maximum(np.minimum(np.ceil(sms / units), by_tokens), 1.0)


# Largest value a float field may take: a cost in seconds ("_s") at most 10 s (the widest range a fit allows, a
# forward pass's fixed cost), a count (tokens, units, tiles, head-dim columns) at most 1e9; exponents, sizes and
# rates where they are plausible.
_FIELD_CEILING = {"reserved_bytes": 1e15, "runtime_bytes": 1e15, "cudagraph_bytes": 1e15, "cache_bytes": 1e15,
                  "memory_bandwidth": 1e15, "peak_flops": 1e18, "attn_head_exponent": 4.0,
                  "prefill_group_exponent": 4.0}

# attention fields a profile's mmha may set for TensorRT-LLM's MMHA decode kernel (kv_split_rule "trtllm")
MMHA_FIELDS = frozenset({"kv_efficiency", "attention_seq_overhead_s", "kv_half_units", "kv_occupancy_power",
                         "kv_split_tokens", "attention_overlap", "attention_overhead_s"})

# attention fields a profile's prefill_attention may set for prefill kernels
PREFILL_FIELDS = frozenset({"kv_efficiency", "attention_overhead_s", "attention_seq_overhead_s", "window_edge_tokens",
                            "attn_head_exponent"})
# Profile fields holding another kernel's values of the profile's own fields, and the fields each may set
OVERRIDE_TABLES = {"prefill_attention": PREFILL_FIELDS, "mmha": MMHA_FIELDS}


@dataclass(frozen=True)
class Profile:
    name: str = "datasheet"
    mem_efficiency: float = 1.0  # fraction of peak bandwidth reached by weight and activation streams
    kv_efficiency: float = 1.0  # fraction of peak bandwidth reached by KV reads and writes
    compute_efficiency: float = 1.0  # fraction of dense peak FLOP/s reached by matrix work over many tokens
    compute_small_efficiency: float = 0.0  # the same over very few tokens (0: same as compute_efficiency)
    compute_half_tokens: float = 0.0  # tokens per forward pass half way between the two
    policy_efficiency: float = 1.0  # fraction of peak FLOP/s reached by the KV policy's own arithmetic
    step_overhead_s: float = 0.0  # per forward pass (a decode step, or the prefill)
    layer_overhead_s: float = 0.0  # per layer per forward pass (framework module calls)
    kernel_overhead_s: float = 0.0  # per kernel launched (ModelSpec.kernels() per forward pass, eager)
    prefill_token_overhead_s: float = 0.0  # per prompt token in the prefill, beyond the roofline
    policy_layer_overhead_s: float = 0.0  # per layer per decode step when a KV policy does work there
    # Unfused executors dequantise or gather what a decode step reads into a new tensor at the KV dtype,
    # writing it and reading it back; fused kernels read the compressed or paged cache in place (0).
    materialised_reads: float = 0.0  # fraction of that copy's write-and-read traffic that reaches memory
    # Share of an operation class's shorter time (compute or memory) hidden under the longer: 1 is the
    # roofline's max; a CPU core that issues its own loads and FMAs hides less, down to their sum at 0.
    compute_memory_overlap: float = 1.0
    # Unfused executors run Mamba-1's selective scan over a prompt token by token, discretising and stepping
    # every state element per token (cost.CostModel._add_unfused_scan); fused scan kernels cost nothing here (0).
    unfused_scan_s: float = 0.0  # seconds per state element and prompt token of that loop
    # Unfused executors run Mamba-2's chunked prefill (SSD) as many elementwise passes and batched products over
    # L x L tensors per chunk and head (cost.CostModel._add_unfused_chunks); fused kernels keep them on chip (0).
    unfused_chunk_s: float = 0.0  # seconds per element of those tensors
    # The gated delta rule's torch path per chunk and head: L x L decay and score matrices, two triangular solves
    # against them and a sequential scan over the chunks, a different and dearer path per L x L element than
    # SSD's (transformers' torch_chunk_gated_delta_rule; flash-linear-attention's kernels: 0).
    unfused_delta_s: float = 0.0  # seconds per L x L element
    # Unfused executors run a prompt's attention that torch's fused kernel cannot (MLA's unequal score and value
    # widths, sink logits) by materialising every head's scores (cost.unfused_attention); fused kernels: 0.
    unfused_attention_s: float = 0.0  # seconds per score element
    # Sink logits add passes of their own to that path: the sink column concatenated to every row of scores (an
    # unaligned copy), their max subtracted, and the column sliced off again before the values are weighted.
    unfused_sink_s: float = 0.0  # seconds per score element, beyond unfused_attention_s
    # Those temporaries (scores, L x L tensors, state-sized ones) stream through DRAM on every pass once they
    # outgrow the last-level cache: their per-element costs grow by unfused_spill times the share of the tensor
    # beyond cache_bytes (cost.CostModel._spilled).
    unfused_spill: float = 0.0
    cache_bytes: float = 0.0  # the device's last-level cache, as the probe reads it (0: unknown, no spill term)
    # Unfused executors step a recurrent state in decode through state-sized temporaries
    # (cost.CostModel._add_unfused_state); fused kernels update it in place (0).
    unfused_state_s: float = 0.0  # seconds per recurrent state element per decode step
    attn_efficiency: float = 0.0  # attention FLOP/s fraction over long sequences (0: matrix efficiency)
    attn_small_efficiency: float = 0.0  # the same over very short sequences (0: same as attn_efficiency)
    attn_half_tokens: float = 0.0  # tokens per sequence half way between the two
    kv_dtype_efficiency: dict = field(default_factory=dict)  # KV dtype -> fraction of bandwidth
    # "dtype@head dim" -> the same for decode kernels of that head width (kernels are compiled per head dim)
    kv_dtype_head_efficiency: dict = field(default_factory=dict)
    matmul_dtype_efficiency: dict = field(default_factory=dict)  # matmul dtype -> fraction of its peak
    attention_seq_overhead_s: float = 0.0  # per sequence, per KV head and layer, in attention
    # KV dtype -> the same for decode kernels reading a cache of that dtype, where they are other kernels
    # (TensorRT-LLM's XQA runs a Hopper GMMA kernel for fp8 caches and a generic one for 16-bit caches)
    kv_dtype_seq_overhead_s: dict = field(default_factory=dict)
    decode_seq_overhead_s: float = 0.0  # per sequence of a decode attention kernel, whatever its KV heads
    decode_seq_overhead_max_seqs: float = 0.0  # steps of more sequences than this do not pay it (0: all do)
    kv_half_units: float = 0.0  # parallel units of a decode step at which KV reads reach half speed
    kv_occupancy_power: float = 2.0  # sharpness p of that knee: C / (C^p + kv_half_units^p)^(1/p)
    kv_dtype_unit_rate: dict = field(default_factory=dict)  # KV dtype -> a decode unit's KV rate vs a 16-bit cache
    kv_split_tokens: float = 0.0  # tokens per split of a sequence's KV in decode (0: no splitting)
    kv_max_splits: float = 0.0  # most splits per (sequence, KV head)
    # "fa2": a kernel-level decode step splits KV as FlashAttention-2 decides (fa2_num_splits), in place of
    # kv_split_tokens and kv_max_splits; "trtllm": TensorRT-LLM picks XQA (xqa_num_splits) or MMHA (the
    # fields in `mmha`) per step (trtllm_uses_xqa); "": kv_split_tokens and kv_max_splits
    kv_split_rule: str = ""
    # per kernel a decode step launches beside attention's own: under "fa2" the grouped-query layout's copies of
    # the queries and outputs and the combine of split partial outputs (fa2_aux_kernels); under "trtllm" XQA's
    # rotary-embedding and KV-append kernel for a 16-bit cache (its fp8 Hopper kernel does both itself)
    decode_aux_kernel_s: float = 0.0
    # TensorRT-LLM's MMHA decode kernel (kv_split_rule "trtllm"): its values of the fields in MMHA_FIELDS
    mmha: dict = field(default_factory=dict)
    matmul_overhead_s: float = 0.0  # per weight matmul per layer
    attention_overhead_s: float = 0.0  # per attention kernel per layer
    window_edge_tokens: float = 0.0  # keys beyond a sliding window that kernels still read
    # head dim (or "kv dtype@head dim") -> the same for decode kernels that wide (reading that KV dtype)
    window_edge_head_tokens: dict = field(default_factory=dict)
    moe_efficiency: float = 1.0  # routed-expert matmuls' fraction of the matrix efficiency at their rows
    moe_half_rows: float = 0.0  # rows per expert at which a fused MoE kernel reaches half that (0: no ramp)
    moe_tile_fixed_k: float = 0.0  # a fused MoE kernel's tile prologue and epilogue in k steps (0: matmul_tile_fixed_k)
    comm_efficiency: float = 1.0  # fraction of interconnect bandwidth reached by all-reduces
    allreduce_overhead_s: float = 0.0  # per all-reduce
    # Kernel-level model (kvsim/kernels.py), for profiles fitted to single-kernel tables.
    tiled: bool = False  # price each weight matmul and attention kernel as one GPU kernel
    matmul_tile_fixed_k: float = 0.0  # a GEMM tile's prologue and epilogue, in steps of its k loop
    gemv_mem_efficiency: float = 0.0  # a one-row matmul's (GEMV kernel's) bandwidth fraction (0: mem_efficiency)
    matmul_half_ctas: float = 0.0  # thread blocks (tiles x splits) at which a GEMM's memory streams are sqrt(1/2) busy
    quant_row_overhead_s: float = 0.0  # per row of a W8A8 matmul's activation-quantisation kernel
    matmul_operand_efficiency: dict = field(default_factory=dict)  # matmul dtype -> tile operand streams / bandwidth
    attn_dtype_efficiency: dict = field(default_factory=dict)  # KV dtype -> attention compute fraction of the ramp
    attn_head_exponent: float = 0.0  # attention_seq_overhead_s scales as (head dim / 128) ** this
    # A score's softmax (its exponential on the special-function units, which run at a small fraction of the
    # tensor cores' rate) costs as much matrix work as this many head-dim columns, so attention on heads d wide
    # computes at d / (d + attn_softmax_dims) of its ramp (whose efficiency is then that of infinitely wide
    # heads): narrow heads reach less of the peak (0: no such cost).
    attn_softmax_dims: float = 0.0
    # A prefill attention kernel's units are (sequence, KV head) pairs, each counting (query heads per KV head) **
    # this: 1 where every query head runs thread blocks of its own (TensorRT-LLM's context FMHA), 0 where a KV
    # head's query heads share them (FlashAttention-3 packing grouped queries).
    prefill_group_exponent: float = 0.0
    # Prefill attention runs other kernels than decode (a causal FlashAttention pass, not split-KV decoding):
    # its values of the attention fields below where they differ (PREFILL_FIELDS).
    prefill_attention: dict = field(default_factory=dict)
    attention_overlap: float = 0.0  # q of (compute^q + memory^q + units^q)^(1/q) in attention (0: max + units)
    kv_dtype_overlap: dict = field(default_factory=dict)  # KV dtype -> its decode kernels' attention_overlap
    reserved_bytes: float = 0.0  # device memory not available to the model (runtime, allocator slack)
    # Serving engines' reservations (kvsim/serving.py), taken from the engine's memory share before the KV pool.
    runtime_bytes: float = 0.0  # CUDA context, NCCL buffers and other memory outside the allocator, per device
    cudagraph_bytes: float = 0.0  # memory pools of captured CUDA graphs, per device
    # Hardware figures measured by `kvsim probe` replace the datasheet ones when set (0: use the datasheet).
    memory_bandwidth: float = 0.0
    peak_flops: float = 0.0
    device: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        for table, allowed in OVERRIDE_TABLES.items():
            values = getattr(self, table)
            if not isinstance(values, dict) or set(values) - allowed:
                raise KvsimError(f"profile {self.name}: {table} may only set {', '.join(sorted(allowed))}")
            if values:
                values = {k: float(v) if not isinstance(v, bool) else v for k, v in values.items()}
                object.__setattr__(self, table, values)
                replace(self, **{table: {}}, **values)  # validates the values as the profile's own
        if self.kv_split_rule not in SPLIT_RULES:
            raise KvsimError(f"profile {self.name}: kv_split_rule must be one of "
                             f"{', '.join(repr(r) for r in SPLIT_RULES)}, got {self.kv_split_rule!r}")
        if not isinstance(self.tiled, bool):
            raise KvsimError(f"profile {self.name}: tiled must be true or false, got {self.tiled!r}")
        for f in fields(self):
            if f.type == "float" and isinstance(getattr(self, f.name), bool):
                raise KvsimError(f"profile {self.name}: {f.name} must be a number, got {getattr(self, f.name)!r}")
            if f.type == "float":
                v = getattr(self, f.name)
                if not isinstance(v, (int, float)) or v != v or v < 0 or v == float("inf"):
                    raise KvsimError(f"profile {self.name}: {f.name} must be a finite non-negative number, got {v!r}")
                top = _FIELD_CEILING.get(f.name, 10.0 if f.name.endswith("_s") else 1e9)
                if v > top:  # a finite but absurd term would print an absurd time with exit code 0
                    raise KvsimError(f"profile {self.name}: {f.name} must be at most {top:g}, got {v!r}")
        for name in ("mem_efficiency", "kv_efficiency", "compute_efficiency", "policy_efficiency"):
            if not 0 < getattr(self, name) <= 1.5:
                raise KvsimError(f"profile {self.name}: {name} must be in (0, 1.5]")
        if self.gemv_mem_efficiency > 1.5:
            raise KvsimError(f"profile {self.name}: gemv_mem_efficiency must be at most 1.5")
        for name in ("compute_small_efficiency", "attn_efficiency", "attn_small_efficiency"):
            if getattr(self, name) > 1.5:
                raise KvsimError(f"profile {self.name}: {name} must be at most 1.5")
        if self.compute_memory_overlap > 1:
            raise KvsimError(f"profile {self.name}: compute_memory_overlap must be in [0, 1]")
        if not 0 < self.moe_efficiency <= 1.5:
            raise KvsimError(f"profile {self.name}: moe_efficiency must be in (0, 1.5]")
        if not 0 < self.comm_efficiency <= 1.5:
            raise KvsimError(f"profile {self.name}: comm_efficiency must be in (0, 1.5]")
        if self.attention_overlap and not 1 <= self.attention_overlap <= 64:
            raise KvsimError(f"profile {self.name}: attention_overlap must be 0 or in [1, 64]")
        if not 1 <= self.kv_occupancy_power <= 16:
            raise KvsimError(f"profile {self.name}: kv_occupancy_power must be in [1, 16]")
        for name in ("kv_dtype_efficiency", "matmul_dtype_efficiency", "matmul_operand_efficiency",
                     "attn_dtype_efficiency", "kv_dtype_unit_rate", "kv_dtype_overlap", "kv_dtype_seq_overhead_s"):
            table = getattr(self, name)
            if not isinstance(table, dict):
                raise KvsimError(f"profile {self.name}: {name} must map dtypes to fractions")
            clean = {}
            for k, v in table.items():
                try:
                    dt = canonical_dtype(k)
                except ValueError as e:
                    raise KvsimError(f"profile {self.name}: {name}: {e}") from None
                # operand streams come from L2 as well as memory: their rate may pass the memory bandwidth
                top = {"matmul_operand_efficiency": 10.0, "kv_dtype_overlap": 64.0,
                       "kv_dtype_seq_overhead_s": 1e-3}.get(name, 1.5)
                overlap = name == "kv_dtype_overlap"  # a q below 1 would take longer than the sum of the parts
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                        1 <= v <= top if overlap else 0 < v <= top):
                    raise KvsimError(f"profile {self.name}: {name}[{k}] must be in {'[1' if overlap else '(0'}, "
                                     f"{top:g}], got {v!r}")
                clean[dt] = float(v)
            object.__setattr__(self, name, clean)
        for name, top in (("kv_dtype_head_efficiency", 1.5), ("window_edge_head_tokens", float("inf"))):
            object.__setattr__(self, name, self._per_head_table(name, getattr(self, name), top))

    def _per_head_table(self, name: str, table, top: float) -> dict:
        """A per-head-dim table checked, with canonical keys: "dtype@head dim" for bandwidth fractions in
        (0, top]; "head dim" (16-bit caches) or "dtype@head dim" (kernels reading that KV dtype) for key counts
        in [0, top)."""
        if not isinstance(table, dict):
            raise KvsimError(f"profile {self.name}: {name} must map head dims to values")
        keyed = name == "kv_dtype_head_efficiency"
        clean = {}
        for k, v in table.items():
            dt, _, dim = str(k).rpartition("@")
            try:
                d = int(dim)
                key = f"{canonical_dtype(dt)}@{d}" if dt or keyed else str(d)
            except ValueError:
                d = 0
            ok = not isinstance(v, bool) and isinstance(v, (int, float)) and (0 < v <= top if keyed else 0 <= v < top)
            if d <= 0 or not ok:
                raise KvsimError(f"profile {self.name}: {name} maps "
                                 f"{'dtype@head_dim (fp8@128)' if keyed else 'head dims (128) or dtype@head_dim'}"
                                 f" to {'fractions in (0, 1.5]' if keyed else 'key counts'}, got {k!r}: {v!r}")
            clean[key] = float(v)
        return clean

    def for_prefill(self) -> "Profile":
        """The profile prefill attention kernels run with: prefill_attention's values over these."""
        if not self.prefill_attention:
            return self
        return replace(self, prefill_attention={}, **self.prefill_attention)

    def for_mmha(self) -> "Profile":
        """The profile TensorRT-LLM's MMHA decode kernel runs with: mmha's values over these (its
        kv_split_tokens: the keys of one unrolled loop, mmha_num_splits)."""
        return replace(self, mmha={}, kv_split_rule="", **self.mmha)

    # ----- achieved fractions of the datasheet, shared by the cost model and the kernel fits -----
    def matmul_fraction(self, tokens, dtype: str = ""):
        """Fraction of the dense peak that matrix work over `tokens` rows reaches."""
        big = self.matmul_dtype_efficiency.get(dtype, self.compute_efficiency)
        if self.compute_half_tokens and self.compute_small_efficiency:
            h = self.compute_half_tokens
            return (self.compute_small_efficiency * h + big * tokens) / (h + tokens)
        return big + 0.0 * tokens

    def attention_fraction(self, seq_tokens, tokens):
        """Fraction of the dense peak attention reaches with `seq_tokens` per sequence (`tokens` rows in the
        whole pass, for profiles without an attention ramp of their own)."""
        if not self.attn_efficiency:
            return self.matmul_fraction(tokens)
        if self.attn_half_tokens:
            h = self.attn_half_tokens
            return (self.attn_small_efficiency * h + self.attn_efficiency * seq_tokens) / (h + seq_tokens)
        return self.attn_efficiency + 0.0 * seq_tokens

    def decode_units(self, pairs, tokens, sms: int = 0, head_dim=128, group=1):
        """Parallel units of a decode step: (sequence, KV head) pairs, each split along its `tokens`. With the
        device's SM count (kernel-level profiles), splits are chosen as FlashAttention's heuristic does: enough
        to fill the SMs, each at least kv_split_tokens long, at most kv_max_splits; or, with kv_split_rule
        "fa2", by FlashAttention-2's own rule for `group` query heads per KV head at `head_dim`."""
        if self.kv_split_rule == "fa2" and sms:
            return pairs * fa2_num_splits(pairs, tokens, sms, head_dim, group)
        if not self.kv_split_tokens:
            return pairs
        tokens = np.asarray(tokens, dtype=np.float64)
        cap = max(self.kv_max_splits, 1.0)
        if sms:
            return pairs * np.clip(np.minimum(sms / np.maximum(pairs, 1e-9), tokens / self.kv_split_tokens), 1.0, cap)
        return pairs * np.minimum(1.0 + tokens / self.kv_split_tokens, cap)

    def moe_fraction(self, rows):
        """Share of the matrix efficiency a fused MoE kernel's expert matmuls reach with `rows` tokens per expert."""
        rows = np.asarray(rows, dtype=np.float64)
        if not self.moe_half_rows:
            return self.moe_efficiency + 0.0 * rows
        return self.moe_efficiency * rows / (rows + self.moe_half_rows)

    def decode_seq_s(self, seqs):
        """Seconds a decode attention kernel spends on its `seqs` sequences' own scheduling, whatever their KV
        heads: decode_seq_overhead_s each, none past decode_seq_overhead_max_seqs where that is set."""
        seqs = np.asarray(seqs, dtype=np.float64)
        cap = self.decode_seq_overhead_max_seqs
        return np.where((seqs <= cap) | (cap == 0), seqs * self.decode_seq_overhead_s, 0.0)

    def kv_dequant_fraction(self, kv_dtype: str, head_dim):
        """Bandwidth fraction at which dequantising a `kv_dtype` cache bounds a decode kernel's KV reads, per
        head dim (_per_head_dim); None: no such bound."""
        dims = {int(k.split("@")[1]): v for k, v in self.kv_dtype_head_efficiency.items()
                if k.split("@")[0] == kv_dtype}
        return _per_head_dim(dims, head_dim) if dims else self.kv_dtype_efficiency.get(kv_dtype)

    def window_edge(self, head_dim, kv_dtype: str = ""):
        """Keys beyond a sliding window that a decode kernel of `head_dim` reads (_per_head_dim): its own entries
        where the kernel reads a `kv_dtype` cache that has some (an fp8 kernel's key tiles are longer than a
        16-bit one's), the plain head-dim entries otherwise."""
        table = self.window_edge_head_tokens
        own = {int(k.split("@")[1]): v for k, v in table.items() if kv_dtype and k.split("@")[0] == kv_dtype}
        dims = own or {int(k): v for k, v in table.items() if "@" not in k}
        return _per_head_dim(dims, head_dim) if dims else self.window_edge_tokens + 0.0 * np.asarray(head_dim)

    def kv_fraction(self, kv_dtype: str, units=None):
        """Fraction of the bandwidth KV reads and writes reach for a cache stored in `kv_dtype`, with `units`
        (sequence, KV head) pairs sharing a decode step's reads (None: enough of them)."""
        frac = self.kv_dtype_efficiency.get(kv_dtype, self.kv_efficiency)
        return frac if units is None else frac * self.kv_occupancy(units)

    def kv_occupancy(self, units):
        """Share of a decode step's KV bandwidth that `units` parallel units keep busy (1: enough of them)."""
        units = np.asarray(units, dtype=np.float64)
        if not self.kv_half_units:
            return 1.0 + 0.0 * units
        # loads in flight saturate the memory system sharply: C / (C^p + h^p)^(1/p) with p >= 2, not C / (C + h)
        p = self.kv_occupancy_power
        if p == 2.0:  # the default: a square root is cheaper than two powers on the simulator's hot path
            return units / np.sqrt(units * units + self.kv_half_units ** 2)
        return units / (units ** p + self.kv_half_units ** p) ** (1.0 / p)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        known = {f.name for f in fields(cls)}
        params = data.get("params", data)
        unknown = sorted(set(params) - known)
        if unknown:
            raise KvsimError(f"profile has unknown keys: {', '.join(unknown)}")
        kwargs = dict(params)
        meta = {k: v for k, v in data.items() if k != "params"} if "params" in data else kwargs.pop("meta", {})
        kwargs["meta"] = meta
        return cls(**kwargs)


def _per_head_dim(values: dict, head_dim):
    """A term fitted per head dim (FlashAttention compiles its kernels per head dim, with their own tiles), at
    `head_dim`: interpolated in log head dim between the fitted head dims around it, the nearest one's
    value beyond them."""
    fitted = np.array(sorted(values), dtype=np.float64)
    return np.interp(np.log(np.asarray(head_dim, dtype=np.float64)), np.log(fitted),
                     [values[int(d)] for d in fitted])


DATASHEET = Profile()


def shipped_profiles() -> dict[str, Path]:
    """Calibrated profiles that ship with kvsim (calibrate/profiles), by name; probe outputs excluded."""
    import importlib.util

    spec = importlib.util.find_spec("calibrate")
    if spec is None or not spec.submodule_search_locations:
        return {}
    folder = Path(list(spec.submodule_search_locations)[0]) / "profiles"
    return {q.stem: q for q in sorted(folder.glob("*.json")) if not q.stem.endswith("-probe")}


def load_profile(path: str | Path) -> Profile:
    """Read a calibrated profile JSON ({"params": {...}, "heldout": {...}, ...}): a path, or the name of a
    shipped profile (kvsim list profiles)."""
    p = Path(path)
    shipped = shipped_profiles()
    if not p.exists() and str(path) in shipped:
        p = shipped[str(path)]
    elif not p.exists() and p.suffix != ".json":
        raise KvsimError(f"no profile {str(path)!r}: give a JSON path or one of {', '.join(shipped) or '(none)'}")
    data = read_object(p, "profile")
    params = data.get("params", data)
    if not isinstance(params, dict) or not params:
        raise KvsimError(f"profile {p} has no parameters (an empty profile is not the datasheet; omit --profile)")
    try:
        return Profile.from_dict(data)
    except TypeError as e:
        raise KvsimError(f"profile {p}: {e}") from None


def _range(dom: dict, key: str, name: str) -> tuple[float, float] | None:
    r = dom.get(key)
    if r is None:
        return None
    if (not isinstance(r, list) or len(r) != 2 or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in r)
            or not r[0] <= r[1]):
        raise KvsimError(f"profile {name}: domain.{key} must be [low, high], got {r!r}")
    return float(r[0]), float(r[1])


def _count(x: float) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:,.0f}"


def domain(prof: Profile) -> dict:
    """The ranges a calibrated profile was fitted on (model parameters, batch, prompt, context = prompt +
    generated tokens) and its dtypes; {} for a profile that records none."""
    dom = (prof.meta or {}).get("domain")
    if dom is None:
        return {}
    if not isinstance(dom, dict):
        raise KvsimError(f"profile {prof.name}: domain must be an object")
    out = {k: r for k in ("params", "batch", "prompt", "context") if (r := _range(dom, k, prof.name)) is not None}
    dtypes = dom.get("dtypes")
    if dtypes is not None:
        if not isinstance(dtypes, list) or not all(isinstance(d, str) for d in dtypes):
            raise KvsimError(f"profile {prof.name}: domain.dtypes must be a list of dtype names")
        out["dtypes"] = [canonical_dtype(d) for d in dtypes]
    return out


def domain_text(dom: dict) -> str:
    parts = []
    if "params" in dom:
        parts.append(f"models of {_count(dom['params'][0])}-{_count(dom['params'][1])} parameters")
    if "batch" in dom:
        parts.append(f"batch {dom['batch'][0]:,.0f}-{dom['batch'][1]:,.0f}")
    if "prompt" in dom:
        parts.append(f"prompts of {dom['prompt'][0]:,.0f}-{dom['prompt'][1]:,.0f} tokens")
    if "context" in dom:
        parts.append(f"contexts up to {dom['context'][1]:,.0f}")
    if "dtypes" in dom:
        parts.append("/".join(dom["dtypes"]))
    return ", ".join(parts)


def domain_notes(prof: Profile, params: int, prompt, gen, batch, dtypes: tuple[str, ...]) -> list[str]:
    """One note when a query lies outside what `prof` was fitted on: its times are then an extrapolation."""
    dom = domain(prof)
    if not dom:
        return []
    prompt, batch = np.asarray(prompt), np.asarray(batch)
    context = prompt + np.asarray(gen)
    out = []
    for key, values, label in (("params", np.asarray(params), lambda v: f"{_count(v)} parameters"),
                               ("batch", batch, lambda v: f"batch {v:,.0f}"),
                               ("prompt", prompt, lambda v: f"prompt {v:,.0f}"),
                               ("context", context, lambda v: f"context {v:,.0f}")):
        if key not in dom:
            continue
        lo, hi = dom[key]
        if key == "context":  # a shorter context than any fitted one is an interpolation of the prompt range
            lo = -np.inf
        below, above = values[values < lo], values[values > hi]
        out += [label(float(below.min()))] if below.size else []
        out += [label(float(above.max()))] if above.size else []
    out += [f"{d}" for d in dict.fromkeys(dtypes) if "dtypes" in dom and d not in dom["dtypes"]]
    if not out:
        return []
    return [f"profile {prof.name} was fitted on {domain_text(dom)}; this query is outside that ({', '.join(out)}): "
            "its times are an extrapolation"]


def estimate_error(prof: Profile, phase: str, families: tuple[str, ...] = ()) -> float:
    """The relative error a profile's predicted `phase` time ("prefill" or "decode") carries, from its own
    held-out figures: a harness profile's worst hold-out scheme for TTFT or TPOT; a kernel-database profile's
    worst hold-out of the op `families` the step runs. 0 when the profile states none."""
    meta = prof.meta or {}
    if meta.get("kind") == "kernel-database":
        summary = meta.get("heldout_summary", {})
        return max((float(v.get("worst_mape", v["mape"])) for k, v in summary.items() if k in families), default=0.0)
    held = meta.get("heldout", {})
    key = "ttft_mape" if phase == "prefill" else "tpot_mape"
    schemes = [s for s in (meta.get("heldout_schemes") or {}).values()
               if isinstance(s, dict) and key in s and s.get("rows", 1)]
    return max([float(held.get(key, 0.0))] + [float(s[key]) for s in schemes])


def describe(prof: Profile) -> str:
    """One line naming a profile, where it comes from and its held-out error."""
    meta = prof.meta or {}
    if prof.name == "datasheet" and not meta:
        return "datasheet roofline (a lower bound on time)"
    if meta.get("kind") == "kernel-database":
        src = meta.get("source", {})
        errs = ", ".join(f"{k.replace('_', ' ')} {v['mape']:.0%} (worst {v.get('worst_mape', v['mape']):.0%})"
                         for k, v in meta.get("heldout_summary", {}).items())
        fw = src.get("framework_versions", {}).get("gemm", "")
        return (f"{prof.name}: {src.get('package', '')} {src.get('package_version', '')} kernel tables, "
                f"{src.get('system', '')} {src.get('framework', '')} {fw}; held-out op MAPE (mean over hold-out "
                f"schemes) {errs}; "
                "single ops timed alone, so times are a lower bound on an engine's step")
    held = meta.get("heldout", {})
    if "tpot_mape" in held:
        dom = domain(prof)
        worst = [s for s in (meta.get("heldout_schemes") or {}).values() if isinstance(s, dict) and s.get("rows")]
        extra = ""
        if worst:
            t = max(s["tpot_mape"] for s in worst)
            f = max(s["ttft_mape"] for s in worst)
            extra = f" (worst hold-out scheme: TPOT {t:.1%}, TTFT {f:.1%})"
        return (f"{prof.name}: fitted to harness runs on {meta.get('device', prof.device) or 'its device'}"
                + (f" ({domain_text(dom)})" if dom else "")
                + f"; held-out MAPE TPOT {held['tpot_mape']:.1%}, TTFT {held['ttft_mape']:.1%}{extra}")
    return f"{prof.name} (no held-out error recorded)"
