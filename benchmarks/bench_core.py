"""Speed of the analytic core. Prints figures; asserts nothing (speed is not a test).

    python benchmarks/bench_core.py            # all three
    python benchmarks/bench_core.py --quick    # smaller grids

1. predict() throughput, points per second on one core, over model x sequence x batch x policy.
2. `kvsim predict` wall time from process start to exit.
3. `kvsim sweep` writing a 1,000,000-row CSV.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the target says
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from kvsim import Workload, load_hardware, load_model, parse_composition, predict  # noqa: E402

MODELS = ["llama-3-8b", "mistral-7b-v0.1", "gemma-3-270m", "deepseek-v2-lite", "jamba-v0.1"]
POLICIES = [[], ["h2o:budget=1024"], ["snapkv:budget=1024", "kivi"], ["streamingllm"], ["quest"], ["duo"],
            ["int8"], ["kmeans"], ["pyramidkv"], ["offload"]]


def throughput(n_seq: int, n_batch: int, gen: int) -> None:
    hw = load_hardware("h100-sxm")
    seq = np.linspace(128, 131072, n_seq).astype(np.int64)[:, None]
    batch = np.arange(1, n_batch + 1)[None, :]
    points = seq.size * batch.size
    total_points, total_time = 0, 0.0
    print(f"\npredict() throughput, gen={gen}, {points:,} points per call (sequence x batch grid)")
    print(f"{'model':18s} {'policy':28s} {'points/s':>14s}")
    for name in MODELS:
        model = load_model(name)
        for spec in POLICIES:
            pol = parse_composition(spec)
            wl = Workload(prompt=seq, gen=gen, batch=batch)
            predict(model, hw, pol, Workload(prompt=seq[:2], gen=gen, batch=batch[:, :2]))  # warm caches
            t = time.perf_counter()
            predict(model, hw, pol, wl)
            dt = time.perf_counter() - t
            total_points += points
            total_time += dt
            print(f"{name:18s} {pol.name:28s} {points / dt:14,.0f}")
    print(f"{'all':18s} {'(aggregate)':28s} {total_points / total_time:14,.0f}   <- target >= 1,000,000")


def cli_startup(repeats: int) -> None:
    cmd = [sys.executable, "-m", "kvsim.cli", "predict", "--heads", "32", "--kv-heads", "8", "--seq", "8192"]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    print(f"\n`kvsim predict` process start to exit: median {statistics.median(times):.3f} s over {repeats} runs, "
          f"min {min(times):.3f} s   <- target < 0.5 s")


def sweep_csv() -> None:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "sweep.csv")
        cmd = [sys.executable, "-m", "kvsim.cli", "sweep", "--model", "llama-3-8b", "--seq", "1..10000+1",
               "--batch", "1..100+1", "--out", out]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        dt = time.perf_counter() - t
        with open(out) as f:
            rows = sum(1 for _ in f) - 1
        size = os.path.getsize(out)
    print(f"\n`kvsim sweep` wrote {rows:,} rows ({size / 1e6:.0f} MB) in {dt:.2f} s   <- target < 15 s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_seq, n_batch = (1000, 100) if not args.quick else (200, 50)
    throughput(n_seq, n_batch, gen=1)
    throughput(n_seq, n_batch, gen=128)
    cli_startup(5 if args.quick else 11)
    if not args.quick:
        sweep_csv()


if __name__ == "__main__":
    main()
