"""Write the request files the vLLM-CPU serving runs replay: Poisson arrivals, uniform lengths, fixed seeds.

Standard library only, so the same files come out in any environment:
  python make_requests.py   (writes requests/rate-<r>.csv)
"""

import csv
import os
import random

RATES = (0.5, 1.0, 1.5, 2.0)  # requests per second
REQUESTS = 120
PROMPT = (32, 256)  # uniform, inclusive
OUTPUT = (16, 64)


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for k, rate in enumerate(RATES):
        rng = random.Random(1000 + k)
        t = 0.0
        os.makedirs(os.path.join(here, "requests"), exist_ok=True)
        path = os.path.join(here, "requests", f"rate-{rate:g}.csv")
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["request", "arrival_s", "prompt_tokens", "output_tokens"])
            for i in range(REQUESTS):
                w.writerow([f"r{i}", f"{t:.6f}", rng.randint(*PROMPT), rng.randint(*OUTPUT)])
                t += rng.expovariate(rate)
        os.replace(tmp, path)


if __name__ == "__main__":
    main()
