"""What transformers' torch paths of the chunked prefills cost per L x L element, by the size of their tensors.

One layer's chunked scan over a prompt, timed alone (best of --repeats after a warm-up): Mamba-2's SSD
(`torch_forward`'s chunk scan at measured/configs/mamba2-small.json's shape: 24 heads of 64, state 128, chunks of
256) and the gated delta rule (`torch_chunk_gated_delta_rule` at qwen3-next-small.json's: 32 value heads over 16
key heads of 32, chunks of 64). Prints each one's time per element of its L x L per-head tensors (the unit of the
cost model's unfused_chunk_s and unfused_delta_s) against the size of those tensors for the whole batch: SSD's
cost per element rises once they outgrow the last-level cache (unfused_spill). Run it alone on the machine.

    python benchmarks/bench_unfused_chunks.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import transformers.models.mamba2.modeling_mamba2 as mamba2
from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from calibrate.probe import time_call  # noqa: E402

POINTS = ((1, 128), (1, 512), (1, 1024), (4, 512), (1, 2048), (4, 1024), (8, 512))  # (batch, prompt tokens)


def best(fn, repeats: int) -> float:
    return time_call(fn, "cpu", repeats, warmup=1, best=True)


def ssd(b: int, t: int, repeats: int) -> tuple[float, int]:
    heads, p, n, chunk = 24, 64, 128, 256
    x, dt = torch.randn(b, t, heads, p), torch.rand(b, t, heads)
    a, bb, cc = -torch.rand(heads), torch.randn(b, t, 1, n), torch.randn(b, t, 1, n)
    scan = getattr(mamba2.mamba2_chunk_scan, "__wrapped__", mamba2.mamba2_chunk_scan)  # the torch fallback
    s = best(lambda: scan(x, dt, a, bb, cc, chunk_size=chunk, D=torch.ones(heads), dt_bias=torch.zeros(heads),
                          dt_softplus=True), repeats)
    return s, b * heads * -(-t // chunk) * chunk * chunk


def delta(b: int, t: int, repeats: int) -> tuple[float, int]:
    heads, key_heads, d, chunk = 32, 16, 32, 64
    q, k = torch.randn(b, t, key_heads, d), torch.randn(b, t, key_heads, d)
    v, g, beta = torch.randn(b, t, heads, d), -torch.rand(b, t, heads), torch.rand(b, t, heads)
    s = best(lambda: torch_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=chunk, use_qk_l2norm_in_kernel=True),
             repeats)
    return s, b * heads * -(-t // chunk) * chunk * chunk


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
    print(f"{'batch':>5} {'tokens':>6} | {'SSD ms':>7} {'L x L MB':>8} {'ns/el':>6} | {'delta ms':>8} {'L x L MB':>8} "
          f"{'ns/el':>6}")
    for b, t in POINTS:
        (s1, e1), (s2, e2) = ssd(b, t, a.repeats), delta(b, t, a.repeats)
        print(f"{b:>5} {t:>6} | {s1 * 1e3:>7.1f} {e1 * 4 / 1e6:>8.1f} {s1 / e1 * 1e9:>6.2f} | {s2 * 1e3:>8.1f} "
              f"{e2 * 4 / 1e6:>8.1f} {s2 / e2 * 1e9:>6.2f}")


if __name__ == "__main__":
    main()
