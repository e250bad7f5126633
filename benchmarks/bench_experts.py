"""A MoE block's routed experts in a decode step: transformers' default `grouped_mm` against the harness's grouped
skinny matmul (measured/linear.py native_experts_forward), per model of measured/configs and rows per step.

Each model is built random-initialised from its config; one experts module is timed alone on `rows` token rows
with random top-k routing (median of --repeats after a warm-up). `grouped_mm` hands each expert's rows to the
BLAS, which packs the expert's weight on every call; the native path reads each hit expert's weight once. Run it
alone on the machine.

    python benchmarks/bench_experts.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from calibrate.probe import time_call  # noqa: E402
from measured.linear import _experts_modules, native_experts_forward, native_matmuls  # noqa: E402

MODELS = ("mixtral-small", "jamba-small", "gpt-oss-small", "qwen3-next-small", "deepseek-v3-small")
ROWS = (1, 4, 8, 16)


def median(fn, repeats: int) -> float:
    return time_call(fn, "cpu", repeats, warmup=1)


def main() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations.moe import grouped_mm_experts_forward
    from transformers.utils import logging

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    a = ap.parse_args()
    logging.set_verbosity_error()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32; ms per experts block, "
          "grouped_mm -> native")
    for name in MODELS:
        cfg = AutoConfig.for_model(**json.loads((ROOT / "measured/configs" / f"{name}.json").read_text()))
        model = AutoModelForCausalLM.from_config(cfg).eval()
        native_matmuls(model)
        mod, k = _experts_modules(model)[0], cfg.num_experts_per_tok
        cells = []
        for rows in ROWS:
            x = torch.randn(rows, cfg.hidden_size)
            index = torch.stack([torch.randperm(mod.num_experts)[:k] for _ in range(rows)])
            weights = torch.rand(rows, k)
            with torch.no_grad():
                ref = median(lambda: grouped_mm_experts_forward(mod, x, index, weights), a.repeats)
                new = median(lambda: native_experts_forward(mod, x, index, weights), a.repeats)
            cells.append(f"{rows:>2} rows {ref * 1e3:5.2f} -> {new * 1e3:5.2f}")
        print(f"{name:<18} ({mod.num_experts} experts, top {k}): " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
