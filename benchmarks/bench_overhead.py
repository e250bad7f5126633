"""Policy overhead per decode step, as a fraction of a full-cache step at the same kept length.

SmolLM2-135M's shape, random weights (timing does not depend on the values), batch 1, CPU. Each policy
keeps `budget` tokens of a prompt four times as long; the reference is the full cache holding `budget`
tokens. Policies and the reference run interleaved, round after round, so drift in the machine's speed hits
all of them alike; figures are medians over every decode step of every round. Also prints TPOT against
kept tokens for a long context (the cache shrinking should make steps cheaper).

    python benchmarks/bench_overhead.py [--budget 512] [--rounds 5] [--gen 48] [--threads 2] [--part overhead|kept]
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from kvsim import parse_composition  # noqa: E402
from measured.loop import run_request  # noqa: E402
from measured.models import build_random  # noqa: E402

GATED = ("window", "streamingllm", "h2o", "tova", "snapkv", "keynorm", "lru", "learned")  # target <= 5%


def specs(b: int) -> dict[str, str]:
    return {
        "window": f"window:size={b}",
        "streamingllm": f"streamingllm:sinks=4,window={b - 4}",
        "h2o": f"h2o:budget={b}",
        "tova": f"tova:budget={b}",
        "snapkv": f"snapkv:budget={b}",
        "keynorm": f"keynorm:budget={b}",
        "lru": f"lru:budget={b}",
        "learned": f"learned:budget={b}",
        "pyramidkv": f"pyramidkv:budget={b}",
        "adakv": f"adakv:budget={b}",
        "duo": f"duo:retrieval=0.5,sinks=4,window={b - 4}",
        "kmeans": f"kmeans:clusters={b // 2},recent={b // 2},every=32",
        "quest": f"quest:budget={b}",
        "int8": "int8",
        "kivi": "kivi",
        "mixed": "mixed",
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gen", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma list of policies (default: all)")
    ap.add_argument("--part", choices=("overhead", "kept", "both"), default="both")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = build_random("smollm2-135m")
    g = torch.Generator().manual_seed(0)
    short = torch.randint(0, model.config.vocab_size, (1, a.budget), generator=g)
    long = torch.randint(0, model.config.vocab_size, (1, 4 * a.budget), generator=g)
    if a.part in ("overhead", "both"):
        overhead(model, short, long, a)
    if a.part in ("kept", "both"):
        kept_tokens(model, g, a)


def overhead(model, short, long, a) -> None:
    chosen = {k: v for k, v in specs(a.budget).items() if not a.only or k in a.only.split(",")}
    cases = {"full@budget": (parse_composition([]), short)}
    cases.update({k: (parse_composition([v]), long) for k, v in chosen.items()})
    steps: dict[str, list[float]] = {k: [] for k in cases}
    policy: dict[str, list[float]] = {k: [] for k in cases}
    for k, (pol, ids) in cases.items():  # warm-up
        run_request(model, pol, ids[:, :32], 4)
    for _ in range(a.rounds):
        for k, (pol, ids) in cases.items():
            r = run_request(model, pol, ids, a.gen)
            steps[k] += r.steps_s
            policy[k].append(r.policy_decode_s)
    base = statistics.median(steps["full@budget"])
    print(f"SmolLM2-135M shape, batch 1, {a.threads} threads, kept {a.budget} tokens (prompt {4 * a.budget} "
          f"for policies), {a.rounds} rounds x {a.gen - 1} steps")
    print(f"{'policy':14s} {'TPOT ms':>9s} {'vs full':>9s} {'policy ms':>10s}")
    print(f"{'full@budget':14s} {base * 1e3:9.2f} {'':>9s} {statistics.median(policy['full@budget']) * 1e3:10.3f}")
    for k in chosen:
        t = statistics.median(steps[k])
        mark = "  <- target <= +5%" if k in GATED else ""
        print(f"{k:14s} {t * 1e3:9.2f} {100 * (t / base - 1):+8.1f}% {statistics.median(policy[k]) * 1e3:10.3f}{mark}")


def kept_tokens(model, g, a) -> None:
    print("\nTPOT against kept tokens (streamingllm on a 4096-token prompt, full cache for reference; "
          f"{a.rounds} interleaved rounds):")
    ids = torch.randint(0, model.config.vocab_size, (1, 4096), generator=g)
    kept = (4096, 2048, 1024, 512, 256, 128)
    steps: dict[int, list[float]] = {k: [] for k in kept}
    for _ in range(a.rounds):
        for k in kept:
            pol = parse_composition([] if k == 4096 else [f"streamingllm:sinks=4,window={k - 4}"])
            steps[k] += run_request(model, pol, ids, a.gen).steps_s
    for k in kept:
        print(f"  kept {k:5d}: TPOT {statistics.median(steps[k]) * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
