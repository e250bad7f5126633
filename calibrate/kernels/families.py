"""Which measured rows each op family fits on, how kvsim predicts them, and how they are held out.
Row selection is SELECTION below, recorded in every profile.
"""

from __future__ import annotations

import numpy as np

from kvsim import load_hardware
from kvsim.cost import touched_experts

from . import aiconfigurator as aic
from . import ops
from .fit import ALLREDUCE_PARAMS, DECODE_PARAMS, GEMM_PARAMS, MOE_PARAMS, PREFILL_PARAMS, Family

SELECTION = """\
- GEMMs: bf16 and per-tensor fp8 with n and k of at least 512;
- a shape measured with several kernels (vLLM's fp8 block-scaled GEMMs: DeepGEMM, CUTLASS, FlashInfer) keeps
  its fastest, the one an engine's autotuner would pick;
- attention keeps the framework's main kernel (the source with most rows: FlashAttention-3 on Hopper), and
  drops head dim 192 (a QK-192 / V-128 layout the table has no V-width column for) and query-per-KV-head
  ratios of 48 or more (TensorRT-LLM takes another, 5-25x slower kernel path there);
- all-reduce keeps CUDA-graph rows (the engines replay graphs in decode);
- MoE keeps balanced routing on one device (no tensor or expert split) in bf16 (fp8 fused MoE reaches
  another fraction of its peak than fp8 GEMMs and is left out), the fastest kernel per shape, and drops a
  shape that some row runs faster than the datasheet bandwidth can stream the experts its tokens touch
  (H100 vLLM: 2048x5120 with 512 experts, top-22, and 2688x1856 with 128, top-6, at 0.76 of that floor: their
  columns do not describe what was timed); it is fitted after the GEMMs, whose terms it shares.
"""


# Block-scaled fp8 GEMMs are left out: vLLM's table puts a 55-150 us floor on every call (activation
# quantisation and scale handling), which no roofline term describes. Shapes narrower than an LLM projection
# under 8-way tensor parallelism are left out too.
GEMM_DTYPES = ("bfloat16", "fp8")
# A GEMM shape runs whichever kernel the library's heuristics pick, and for about a quarter of the shapes that is a
# slower one (H100 vLLM, one row through a 4096-65536 x 4096-65536 bf16 weight: most stream it at 2.9-3.1 TB/s,
# the rest at 2.4-2.6, with no pattern in n or k that carries across row counts). Least squares fits between the
# two populations and prices every shape 5-10% slow; a robust loss fits the usual kernel (held-out MAPE 9.2 ->
# 8.7% and 7.9 -> 7.7% on H100 vLLM, composed Llama decode steps at one sequence 10% slow -> within 7%).
GEMM_LOSS = ("soft_l1", 0.02)
MIN_GEMM_DIM = 512


def _fastest(df, keys):
    return df.loc[df.groupby(keys, sort=False)["seconds"].idxmin()].reset_index(drop=True)


def _main_kernel(df):
    if "kernel_source" not in df:
        return df
    main = df["kernel_source"].value_counts().idxmax()
    return df[df["kernel_source"] == main]


def _label(values) -> np.ndarray:
    return np.asarray(values).astype(str)


def _folds(keys, k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold label of every row; rows with equal keys share a fold."""
    keys = np.asarray(keys).astype(str)
    uniq = np.unique(keys)
    rng = np.random.default_rng(seed)
    rng.shuffle(uniq)
    fold = {u: str(i % k) for i, u in enumerate(uniq)}
    return np.array([fold[x] for x in keys])


def _two_way(mask) -> np.ndarray:
    """Hold out the rows where `mask` is true (one group), fitting on the rest."""
    return np.where(np.asarray(mask), "heldout", "")


def gemm(df) -> Family:
    df = df[df["gemm_dtype"].isin(GEMM_DTYPES) & (df["n"] >= MIN_GEMM_DIM) & (df["k"] >= MIN_GEMM_DIM)]
    df = _fastest(df, ["m", "n", "k", "gemm_dtype"])

    def predict(prof, hw, d):
        return ops.gemm(prof, hw, d["m"].to_numpy(), d["n"].to_numpy(), d["k"].to_numpy(), d["gemm_dtype"].to_numpy())

    def splits(d):
        return [("unseen (n, k) shapes, 5 folds", _folds(d["n"].astype(str) + "x" + d["k"].astype(str))),
                ("m >= 2048 fitted from m < 2048", _two_way(d["m"] >= 2048))]
    return Family("gemm", GEMM_PARAMS, predict, splits, df, loss=GEMM_LOSS)


def _attention_rows(df):
    df = _main_kernel(df)
    df = df[(df["head_dim"] != 192) & (df["num_heads"] / df["num_key_value_heads"] < 48)
            & (df["num_heads"] % df["num_key_value_heads"] == 0)]
    return df[df["kv_cache_dtype"].isin(ops.KV_DTYPES)].reset_index(drop=True)


def _attn_args(d, length):
    return (d["batch_size"].to_numpy(), d[length].to_numpy(), d["num_heads"].to_numpy(),
            d["num_key_value_heads"].to_numpy(), d["head_dim"].to_numpy(), d["kv_cache_dtype"].to_numpy(),
            d["window_size"].to_numpy())


def _attention_splits(d, long_from: int, big_from: int):
    return [("unseen head dim", _label(d["head_dim"])),
            ("unseen KV-head count", _label(d["num_key_value_heads"])),
            (f"contexts >= {(long_from + 1) // 1024}K fitted from shorter", _two_way(d["length"] >= long_from)),
            (f"batches >= {big_from} fitted from smaller", _two_way(d["batch_size"] >= big_from))]


# Most KV splits a framework lets its decode kernel use, where its source fixes it: vLLM captures FlashAttention
# decode in CUDA graphs with at most VLLM_FLASH_ATTN_MAX_NUM_SPLITS_FOR_CUDA_GRAPH splits (vllm/envs.py, default 32);
# SGLang's FlashAttention backend passes num_splits=0, FlashAttention-3's own heuristic, which allows at most 128
# (hopper/flash_api.cpp, get_num_splits). Only contexts beyond the tables' shorter ones reach the cap, so the fit
# could not tell it from them (SGLang's cap extrapolated from contexts below 8K came out at 10).
MAX_KV_SPLITS = {"vllm": (32.0, "vllm/envs.py: VLLM_FLASH_ATTN_MAX_NUM_SPLITS_FOR_CUDA_GRAPH = 32"),
                 "sglang": (128.0, "sglang flashattention_backend.py: num_splits = 0 (FlashAttention-3's heuristic); "
                                   "flash-attention hopper/flash_api.cpp: get_num_splits caps it at 128")}
# FlashAttention-3's varlen scheduler (hopper/flash_prepare_scheduler.cu) sorts a step's sequences and sizes their
# KV splits in one thread block while they number at most 992; beyond, it stops sorting and splitting (vLLM refuses
# full CUDA graphs past 992 for this reason). The tables show the per-sequence cost stop there: H100 vLLM, one KV
# head at a 2-token context, 33.1 us at 512 sequences and 41.5 us at 1,024, against 24.3 and 38.0 us for the same
# (sequence, KV head) units spread over 8 KV heads.
FA3_SCHED_MAX_SEQS = (992.0, "flash-attention hopper/flash_prepare_scheduler.cu: sequences beyond 992 are "
                             "neither sorted nor split (PREPARE_VARLEN_MAX_BATCHES_1CTA)")
FA3_FRAMEWORKS = ("vllm", "sglang")  # their Hopper attention backends run FlashAttention-3
# On Ampere vLLM's FlashAttention backend runs FlashAttention-2 (v1/attention/backends/fa_utils.py: version 3
# only on SM90) and passes it num_splits=0 (flash_attn.py: max_num_splits is set only for FlashAttention-3's
# ahead-of-time scheduler), so the kernel's own heuristic splits KV, with no 32-split cap
# (kvsim.profile.fa2_num_splits). The collector's rows name the kernel: kernel_source "vllm_flash_attn".
FA2_SPLITS = ("fa2", "vllm 0.14 on SM80: FlashAttention-2 with num_splits=0, its num_splits_heuristic decides "
                     "(flash-attention csrc/flash_attn/flash_api.cpp set_params_splitkv)")
FA2_FRAMEWORKS = ("vllm",)
# TensorRT-LLM's generation attention picks XQA or MMHA per step and splits KV by each kernel's own rule
# (kvsim.profile.trtllm_uses_xqa, xqa_num_splits); the collector times the PyTorch flow's TrtllmAttention
# (AttentionOp::enqueueGeneration) in a CUDA graph. MMHA's keys per unrolled loop depend on the block size it
# picks at run time, so that length is fitted (Profile.mmha's kv_split_tokens).
TRTLLM_SPLITS = ("trtllm", "TensorRT-LLM AttentionOp::enqueueGeneration: XQA when DecoderXQARunner::mayHavePerfGain "
                           "holds (kv heads x batch x max(1, history / 128) x 4 >= SMs), its KV splits by "
                           "computeMultiBlockCount (decoderXQAImplCommon.h); MMHA otherwise")
MMHA_PARAMS = {f"mmha.{k}": DECODE_PARAMS[k] for k in ("kv_efficiency", "attention_seq_overhead_s", "kv_half_units",
                                                       "kv_occupancy_power", "kv_split_tokens", "attention_overlap",
                                                       "attention_overhead_s")}


def decode_attention(df, l2_bytes: float = 0.0, framework: str = "", fa3: bool = False, fa2: bool = False) -> Family:
    """Decode steps: `length` is the cached history (a step reads length + 1 tokens). `fa3` / `fa2`: the
    framework runs FlashAttention-3 / FlashAttention-2 (with the kernel's own KV splits) on these rows' device;
    TensorRT-LLM runs its own kernels (TRTLLM_SPLITS)."""
    df = _attention_rows(df).assign(length=lambda d: d["step"])

    def predict(prof, hw, d):
        return ops.decode_attention(prof, hw, *_attn_args(d, "length"), l2_bytes)

    params = dict(DECODE_PARAMS)
    # one term per head dim its rows cover, in place of one for all: each head dim is its own compiled kernel,
    # with its own dequantisation rate and key tiles (a window's edge is whole tiles, longer ones for fp8 caches)
    fp8, windowed = df["kv_cache_dtype"] == "fp8", df["window_size"] > 0
    for flat, table, key, rows in (("kv_dtype_efficiency.fp8", "kv_dtype_head_efficiency", "fp8@{}", fp8),
                                   ("window_edge_tokens", "window_edge_head_tokens", "{}", windowed & ~fp8),
                                   ("window_edge_tokens", "window_edge_head_tokens", "fp8@{}", windowed & fp8)):
        dims = sorted(df.loc[rows, "head_dim"].astype(int).unique())
        if dims:
            bounds = DECODE_PARAMS[flat]
            params.pop(flat, None)
            params.update({f"{table}.{key.format(d)}": bounds for d in dims})
    params = {**params, "meta.l2_speedup": (1.0, 20.0, 1.5), "meta.l2_overhead_s": (1e-7, 1e-3, 8e-6)} \
        if l2_bytes else params
    if fa2 or framework == "trtllm":  # the kernels' own rules in place of fitted split lengths and a cap
        fixed = {"kv_split_rule": FA2_SPLITS if fa2 else TRTLLM_SPLITS}
        params.pop("kv_split_tokens")
        params.pop("kv_max_splits")
        if not fa2:  # XQA's fp8 (GMMA) and 16-bit kernels differ in their fixed work per unit
            params.update(MMHA_PARAMS)
            params["kv_dtype_seq_overhead_s.fp8"] = DECODE_PARAMS["attention_seq_overhead_s"]
    else:  # decode_aux_kernel_s prices FlashAttention-2's and XQA's auxiliary kernels
        fixed = {"kv_max_splits": MAX_KV_SPLITS[framework]} if framework in MAX_KV_SPLITS else {}
        params.pop("decode_aux_kernel_s")
    if fa3:
        fixed["decode_seq_overhead_max_seqs"] = FA3_SCHED_MAX_SEQS
    else:  # a per-sequence cost whose mechanism (and its end) these kernels are not known to have: fitted on
        # small batches it would only extrapolate (A100 vLLM's large batches: 21.7% -> 26.4% with it)
        params.pop("decode_seq_overhead_s")
    return Family("decode_attention", params, predict, lambda d: _attention_splits(d, 8191, 128), df, fixed=fixed)


# FlashAttention-2 packs a KV head's query heads into one unit for a one-token query only (flash_api.cpp mha_fwd:
# seqlenq_ngroups_swapped) and runs every query head on its own otherwise, which no single exponent describes:
# fitted on A100 vLLM, one came out at 0.57 and took batches of 64 and more from 19.4% to 23.9% held out.
FA2_PREFILL_FIXED = {"prefill_group_exponent": (0.0, "FlashAttention-2 packs grouped query heads for one-token "
                                                     "queries only (flash_api.cpp mha_fwd: seqlenq_ngroups_swapped); "
                                                     "not fitted")}


def prefill_attention(df, fa2: bool = False) -> Family:
    """Prefills: `length` is the prompt. `fa2`: the rows' kernel is FlashAttention-2 (FA2_PREFILL_FIXED)."""
    df = _attention_rows(df).assign(length=lambda d: d["isl"])

    def predict(prof, hw, d):
        return ops.prefill_attention(prof, hw, *_attn_args(d, "length"))

    return Family("prefill_attention", PREFILL_PARAMS, predict, lambda d: _attention_splits(d, 8192, 64), df,
                  fixed=dict(FA2_PREFILL_FIXED) if fa2 else {})


def allreduce(df) -> Family:
    if "backend" in df:
        graph = df[df["backend"].astype(str).str.contains("graph")]
        df = graph if len(graph) else df
    df = df[df["allreduce_dtype"].isin(["bfloat16", "float16"])].reset_index(drop=True)

    def predict(prof, hw, d):
        return ops.allreduce(prof, hw, d["num_gpus"].to_numpy(), d["message_size"].to_numpy())

    def splits(d):
        return [("unseen GPU count", _label(d["num_gpus"])),
                ("messages >= 16M elements fitted from smaller", _two_way(d["message_size"] >= 2**24))]
    return Family("allreduce", ALLREDUCE_PARAMS, predict, splits, df)


def moe(df, bandwidth: float = 0.0) -> Family:
    """Fused MoE blocks with balanced routing: the GEMM terms plus one efficiency of their own. With the device's
    `bandwidth`, a shape that some row runs faster than streaming the weights of the experts its tokens touch
    allows is left out: its columns do not describe what was timed."""
    keep = (df["distribution"].eq("balanced") & df["moe_dtype"].eq("bfloat16") & df["moe_tp_size"].eq(1)
            & df["moe_ep_size"].eq(1))  # one device: kvsim models no expert parallelism
    df = _fastest(df[keep], ["num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size",
                             "moe_ep_size", "moe_dtype"])
    if bandwidth:
        e, k, t = (df[c].to_numpy(np.float64) for c in ("num_experts", "topk", "num_tokens"))
        weights = touched_experts(e, k, t) * 3 * df["hidden_size"] * df["inter_size"] * ops.ACT_BYTES
        shape = ["hidden_size", "inter_size", "num_experts", "topk"]
        possible = (df["seconds"] * bandwidth >= weights).groupby([df[c] for c in shape]).transform("all")
        df = df[possible].reset_index(drop=True)

    def predict(prof, hw, d):
        return ops.moe(prof, hw, *(d[c].to_numpy() for c in ("num_tokens", "hidden_size", "inter_size", "topk",
                                                             "num_experts", "moe_tp_size", "moe_ep_size",
                                                             "moe_dtype")))
    def splits(d):
        shape = d["hidden_size"].astype(str) + "x" + d["inter_size"].astype(str) + "/" + d["num_experts"].astype(str)
        return [("unseen (hidden, intermediate, experts), 5 folds", _folds(shape)),
                ("tokens >= 1024 fitted from fewer", _two_way(d["num_tokens"] >= 1024))]
    return Family("moe", MOE_PARAMS, predict, splits, df)


def for_system(tables: dict, l2_bytes: float = 0.0) -> list[Family]:
    """The families one system's tables support, in fitting order (GEMM terms before the MoE that shares
    them, prefill attention before decode): `tables` maps aiconfigurator.TABLES keys to Table or None."""
    out = [gemm(tables["gemm"].rows)]
    dec = tables["decode_attention"]
    fa2 = dec.framework in FA2_FRAMEWORKS and dec.system in aic.AMPERE
    if tables["prefill_attention"] is not None:  # before decode: decode holds its attention ramp
        out.append(prefill_attention(tables["prefill_attention"].rows, fa2=fa2))
    out.append(decode_attention(dec.rows, l2_bytes, dec.framework,
                                fa3=dec.framework in FA3_FRAMEWORKS and dec.system in aic.HOPPER,
                                fa2=fa2))
    if tables["moe"] is not None:
        fam = moe(tables["moe"].rows, load_hardware(aic.HARDWARE[dec.system]).memory_bandwidth)
        if len(fam.rows):
            out.append(fam)
    if tables["allreduce"] is not None:
        out.append(allreduce(tables["allreduce"].rows))
    return out
