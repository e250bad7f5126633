"""`kvsim probe`: micro-benchmarks of the device it runs on, written as an efficiency profile whose
hardware figures (memory bandwidth, matrix FLOP/s) are the ones measured here rather than a datasheet's.

Streams: a large copy (bytes read + written) and a large reduction (bytes read). Matrices: GEMMs of square
and skinny (decode-like) shapes per dtype. Overheads: the latency of a one-element op and of a small matmul.
Each figure is the median of timed repeats after warm-up (CUDA events on a GPU, perf_counter on the CPU).
The last-level cache's size is read, not timed: from the OS (Linux sysfs) on the CPU, from the driver on a GPU.
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
    return {"op_s": time_call(lambda: x.add_(1), device, repeats * 20), "small_matmul_s": time_call(lambda: a @ b, device,
                                                                                            repeats * 20)}


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
    result["memory_bandwidth"] = max(result["stream"]["copy_bytes_per_s"], result["stream"]["read_bytes_per_s"])
    result["peak_flops"] = {dt: max(g["flops_per_s"] for g in result["gemm"] if g["dtype"] == dt) for dt in dtypes}
    return result


def _cpu_name() -> str:
    from measured.provenance import device_name
    return device_name("cpu")
