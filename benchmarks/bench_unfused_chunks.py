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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from calibrate.probe import delta_chunks, ssd_chunks  # noqa: E402

POINTS = ((1, 128), (1, 512), (1, 1024), (4, 512), (1, 2048), (4, 1024), (8, 512))  # (batch, prompt tokens)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
    print(f"{'batch':>5} {'tokens':>6} | {'SSD ms':>7} {'L x L MB':>8} {'ns/el':>6} | {'delta ms':>8} {'L x L MB':>8} "
          f"{'ns/el':>6}")
    for b, t in POINTS:
        (s1, e1), (s2, e2) = ssd_chunks(b, t, a.repeats), delta_chunks(b, t, a.repeats)
        print(f"{b:>5} {t:>6} | {s1 * 1e3:>7.1f} {e1 * 4 / 1e6:>8.1f} {s1 / e1 * 1e9:>6.2f} | {s2 * 1e3:>8.1f} "
              f"{e2 * 4 / 1e6:>8.1f} {s2 / e2 * 1e9:>6.2f}")


if __name__ == "__main__":
    main()
