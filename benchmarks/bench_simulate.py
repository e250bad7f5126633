"""Speed of the serving simulator. Prints figures; asserts nothing (speed is not a test).

    python benchmarks/bench_simulate.py            # 10,000 requests, ~2.5M decode tokens, per policy
    python benchmarks/bench_simulate.py --quick    # 1,000 requests

Workload: Llama-3.1-8B on an H100 SXM under vLLM 0.33.0's defaults with the h100-sxm-vllm kernel profile,
Poisson arrivals, log-normal prompts (median 1,000 tokens) and outputs (median 220, sigma 0.5: ~250 on
average), at a rate that keeps a few hundred requests running. Wall time is CPU time on one core of whatever
machine runs it (a shared machine makes it noisy: run it twice).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, as the target says
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from kvsim import load_hardware, load_model, load_profile  # noqa: E402
from kvsim.sim import build, parse_lengths, summary, synthetic  # noqa: E402

POLICIES = [[], ["snapkv:budget=512", "kivi"], ["h2o:budget=512"], ["offload"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1,000 requests instead of 10,000")
    ap.add_argument("--rate", type=float, default=40.0, help="Poisson arrivals per second (default 40)")
    args = ap.parse_args()
    n = 1000 if args.quick else 10_000
    reqs = synthetic(n, parse_lengths("lognormal:median=1000,sigma=0.5", "--prompt-len", "prompt"),
                     parse_lengths("lognormal:median=220,sigma=0.5", "--output-len", "output"), seed=0, rate=args.rate)
    decode = int((reqs.output - 1).sum())
    model, hw, prof = load_model("llama-3.1-8b"), load_hardware("h100-sxm"), load_profile("h100-sxm-vllm")
    print(f"{n:,} requests, {decode:,} decode tokens, {args.rate:g} req/s, llama-3.1-8b on h100-sxm, vllm, "
          "profile h100-sxm-vllm")
    print(f"{'policy':26s} {'wall s':>8s} {'requests/s':>11s} {'steps':>8s} {'steps/s':>9s} {'tokens/s':>11s}"
          f" {'mean running':>13s} {'preempt':>8s}")
    for pol in POLICIES:
        sim = build(model, hw, pol, "vllm", prof, longest_prompt=int(reqs.prompt.max()))
        t0 = time.process_time()
        res = sim.run(reqs)
        wall = time.process_time() - t0
        s = summary(res)
        running = float((res.series["running"] * res.series["step_s"]).sum() / res.series["step_s"].sum())
        print(f"{'+'.join(pol) or 'full':26s} {wall:8.2f} {n / wall:11,.0f} {res.steps:8,} {res.steps / wall:9,.0f}"
              f" {decode / wall:11,.0f} {running:13.1f} {s['preemptions']:8,}")


if __name__ == "__main__":
    main()
