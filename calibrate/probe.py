"""`kvsim probe`: micro-benchmarks of the device it runs on, written as an efficiency profile whose
hardware figures (memory bandwidth, matrix FLOP/s) are the ones measured here rather than a datasheet's.

Streams: a large copy (bytes read + written) and a large reduction (bytes read). Matrices: GEMMs of square
and skinny (decode-like) shapes per dtype. Overheads: the latency of a one-element op and of a small matmul.
Each figure is the median of timed repeats after warm-up (CUDA events on a GPU, perf_counter on the CPU).
The last-level cache's size is read, not timed: from the OS (Linux sysfs) on the CPU, from the driver on a GPU.

On the CPU, where transformers runs its torch paths (mamba_ssm's and fla's fused kernels need a GPU), the probe
also times those paths alone at sizes within the cache and writes their cost per element as the profile's
unfused terms: Mamba-2's chunked SSD and the gated delta rule per element of their L x L per-head tensors
(unfused_chunk_s, unfused_delta_s: their whole time, of which the FLOP the roofline charges are a few percent),
the math fallback attention per score beyond torch's fused kernel (unfused_attention_s) and sink logits' softmax
beyond that (unfused_sink_s). A calibration fits these where its data has such a model and keeps the probe's
value where it has none (a held-out model's own mechanism).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def time_call(fn, device: str, repeats: int, warmup: int = 2, best: bool = False) -> float:
    """Median seconds per call, or the fastest call with best=True (STREAM's convention for a peak)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return min(times) if best else statistics.median(times)


def bandwidth(device: str, nbytes: int, repeats: int) -> dict:
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    t_copy = time_call(lambda: dst.copy_(src), device, repeats, best=True)
    t_read = time_call(lambda: src.sum(), device, repeats, best=True)
    return {"bytes": n * 4, "copy_bytes_per_s": 2 * n * 4 / t_copy, "read_bytes_per_s": n * 4 / t_read}


def gemms(device: str, dtype: str, sizes, repeats: int) -> list[dict]:
    out = []
    dt = DTYPES[dtype]
    for m, k, n in sizes:
        a = torch.randn(m, k, device=device, dtype=dt)
        b = torch.randn(k, n, device=device, dtype=dt)
        t = time_call(lambda: a @ b, device, repeats)
        out.append({"dtype": dtype, "m": m, "k": k, "n": n, "seconds": t, "flops_per_s": 2 * m * k * n / t})
    return out


def overheads(device: str, repeats: int) -> dict:
    x = torch.ones(1, device=device)
    a = torch.randn(8, 64, device=device)
    b = torch.randn(64, 64, device=device)
    return {"op_s": time_call(lambda: x.add_(1), device, repeats * 20),
            "small_matmul_s": time_call(lambda: a @ b, device, repeats * 20)}


# The torch paths' shapes: Mamba-2's SSD at measured/configs/mamba2-small.json's (24 heads of 64, state 128,
# chunks of 256), the gated delta rule at qwen3-next-small.json's (32 value heads over 16 key heads of 32, chunks
# of 64), attention with 64-dim heads and MLA's narrower values (32).
SSD_SHAPE = dict(heads=24, head_dim=64, state=128, chunk=256)
DELTA_SHAPE = dict(heads=32, key_heads=16, head_dim=32, chunk=64)
ATTENTION_HEAD_DIM, NARROW_V = 64, 32


def ssd_chunks(b: int, t: int, repeats: int) -> tuple[float, int]:
    """Fastest seconds of transformers' torch SSD chunk scan over b x t tokens, and its L x L elements."""
    import transformers.models.mamba2.modeling_mamba2 as mamba2
    heads, p, n, chunk = (SSD_SHAPE[k] for k in ("heads", "head_dim", "state", "chunk"))
    x, dt = torch.randn(b, t, heads, p), torch.rand(b, t, heads)
    a, bb, cc = -torch.rand(heads), torch.randn(b, t, 1, n), torch.randn(b, t, 1, n)
    scan = getattr(mamba2.mamba2_chunk_scan, "__wrapped__", mamba2.mamba2_chunk_scan)  # the torch fallback
    s = time_call(lambda: scan(x, dt, a, bb, cc, chunk_size=chunk, D=torch.ones(heads), dt_bias=torch.zeros(heads),
                               dt_softplus=True), "cpu", repeats, warmup=1, best=True)
    return s, b * heads * -(-t // chunk) * chunk * chunk


def delta_chunks(b: int, t: int, repeats: int) -> tuple[float, int]:
    """Fastest seconds of transformers' torch chunked gated delta rule over b x t tokens, and its L x L
    elements."""
    from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule
    heads, key_heads, d, chunk = (DELTA_SHAPE[k] for k in ("heads", "key_heads", "head_dim", "chunk"))
    q, k = torch.randn(b, t, key_heads, d), torch.randn(b, t, key_heads, d)
    v, g, beta = torch.randn(b, t, heads, d), -torch.rand(b, t, heads), torch.rand(b, t, heads)
    s = time_call(lambda: torch_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=chunk,
                                                       use_qk_l2norm_in_kernel=True), "cpu", repeats, warmup=1,
                  best=True)
    return s, b * heads * -(-t // chunk) * chunk * chunk


def attention_paths(heads: int, t: int, repeats: int) -> dict:
    """Fastest seconds of one causal prompt attention over t tokens three ways: torch's fused CPU kernel (equal
    widths), its math fallback (MLA's narrower values) and the harness's sink softmax (gpt-oss); and the score
    elements (query heads x t x t) each materialises or streams."""
    import torch.nn.functional as F

    from measured.sinks import sink_prefill_attention
    q, k, v = (torch.randn(1, heads, t, ATTENTION_HEAD_DIM) for _ in range(3))
    narrow, sinks = torch.randn(1, heads, t, NARROW_V), torch.zeros(heads)
    best = lambda fn: time_call(fn, "cpu", repeats, warmup=1, best=True)  # noqa: E731
    return {"fused": best(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
            "math": best(lambda: F.scaled_dot_product_attention(q, k, narrow, is_causal=True)),
            "sinks": best(lambda: sink_prefill_attention(q, k, narrow, ATTENTION_HEAD_DIM ** -0.5, 0, sinks)),
            "elements": heads * t * t}


def executor_paths(repeats: int) -> dict:
    """The unfused terms (seconds per element) of transformers' torch paths on this CPU, at sizes whose
    temporaries fit a 16 MiB cache (beyond it they cost unfused_spill more, which calibration fits)."""
    ssd, ssd_el = ssd_chunks(1, 512, repeats)
    delta, delta_el = delta_chunks(1, 512, repeats)
    att = attention_paths(64, 256, repeats)
    per = lambda key: att[key] / att["elements"]  # noqa: E731
    return {"unfused_chunk_s": ssd / ssd_el, "unfused_delta_s": delta / delta_el,
            "unfused_attention_s": max(per("math") - per("fused"), 0.0),
            "unfused_sink_s": max(per("sinks") - per("math"), 0.0)}


SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


def cache_bytes(device: str, sysfs: Path = SYSFS_CACHE) -> int:
    """The last-level cache's size in bytes (0 where the OS does not say): a GPU's L2, or the CPU's largest
    data or unified cache level as Linux lists it for CPU 0 (sysfs sizes read like "32768K")."""
    if device.startswith("cuda"):
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))
    best = (0, 0)
    for index in sysfs.glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            level, size = int((index / "level").read_text()), (index / "size").read_text().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
            best = max(best, (level, int(size.rstrip("KMG")) * scale))
        except (OSError, ValueError):
            continue
    return best[1]


def run(device: str = "cpu", dtypes=None, quick: bool = False, progress=None) -> dict:
    cuda = device.startswith("cuda")
    dtypes = dtypes or (["bf16", "fp16", "fp32"] if cuda else ["fp32"])
    repeats = 3 if quick else 10
    big = (1 << 30) if cuda else (1 << 26 if quick else 1 << 28)
    dims = [1024, 2048] if quick else ([2048, 4096, 8192] if cuda else [512, 1024, 2048])
    sizes = [(d, d, d) for d in dims] + [(m, dims[-1], dims[-1]) for m in (1, 8, 64)]
    def stage(label, fn):
        if progress is not None:
            progress.current(label)
        out = fn()
        if progress is not None:
            progress.done(label)
        return out
    result = {"device": device, "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
              "threads": torch.get_num_threads(), "torch_version": torch.__version__,
              "cache_bytes": cache_bytes(device),
              "stream": stage(f"stream {big >> 20} MiB", lambda: bandwidth(device, big, repeats)), "gemm": [],
              "overhead": stage("op overheads", lambda: overheads(device, repeats))}
    for dt in dtypes:
        result["gemm"] += stage(f"{dt} GEMMs", lambda: gemms(device, dt, sizes, repeats))
    if not cuda:
        result["unfused"] = stage("torch paths", lambda: executor_paths(repeats))
    result["memory_bandwidth"] = max(result["stream"]["copy_bytes_per_s"], result["stream"]["read_bytes_per_s"])
    result["peak_flops"] = {dt: max(g["flops_per_s"] for g in result["gemm"] if g["dtype"] == dt) for dt in dtypes}
    return result


def _cpu_name() -> str:
    from measured.provenance import device_name
    return device_name("cpu")
