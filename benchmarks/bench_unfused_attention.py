"""What the harness's unfused prompt attentions cost per score element, against torch's fused CPU kernel.

One layer's attention over a prompt, timed alone (best of --repeats after a warm-up), three ways: SDPA with
equal q/k/v widths (torch's fused CPU kernel), SDPA with a narrower value (MLA's widths: the math fallback,
which materialises every head's scores) and measured/sinks.py's explicit softmax with sink logits (gpt-oss).
Prints each one's time and its time per query head and query-key element, the unit of the cost model's
unfused_attention_s (unfused_sink_s on top for sinks), with the size of one layer's scores: per element the
unfused paths cost more once the scores outgrow the last-level cache (the cost model's unfused_spill). Run it
alone on the machine.

    python benchmarks/bench_unfused_attention.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from calibrate.probe import ATTENTION_HEAD_DIM, attention_paths  # noqa: E402

SHAPES = ((64, 128), (64, 256), (64, 512), (64, 1024), (32, 2048), (128, 512))  # (query heads, prompt tokens)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1, "
          f"head dim {ATTENTION_HEAD_DIM}")
    print(f"{'heads':>5} {'tokens':>6} {'scores MB':>9} | {'fused ms':>8} {'math ms':>8} {'sinks ms':>8} | "
          f"ns per element: {'fused':>5} {'math':>5} {'sinks':>5}")
    for heads, t in SHAPES:
        r = attention_paths(heads, t, a.repeats)
        fused, math, sink = r["fused"], r["math"], r["sinks"]
        per = r["elements"] / 1e9
        print(f"{heads:>5} {t:>6} {r['elements'] * 4 / 1e6:>9.0f} | {fused * 1e3:>8.1f} {math * 1e3:>8.1f} "
              f"{sink * 1e3:>8.1f} | {'':>16}{fused / per:>5.2f} {math / per:>5.2f} {sink / per:>5.2f}")


if __name__ == "__main__":
    main()
