"""Fit a Profile's efficiency parameters to measured TTFT and TPOT: least squares on log-time.

Each parameter is fitted as the logarithm of its value (all are positive), within bounds wide enough not to
bind in practice. Held-out error comes from grouped cross-validation: whole configurations (model,
sequence length, policy; every batch size of them together) are held out, so a configuration is never
predicted by a fit that saw it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from kvsim import Profile, Workload, load_model, parse_composition, predict
from kvsim.errors import KvsimError
from kvsim.hardware import HardwareSpec
from kvsim.hf import from_hf_config, load_json
from kvsim.model import Mamba

# name: (lower, upper, initial guess)
PARAMS = {
    "mem_efficiency": (0.02, 1.5, 0.5),
    "kv_efficiency": (1e-3, 1.5, 0.3),
    "compute_efficiency": (0.01, 1.5, 0.5),
    "compute_small_efficiency": (1e-4, 1.5, 0.1),
    "compute_half_tokens": (1e-2, 1e5, 32.0),
    "policy_efficiency": (1e-6, 1.5, 0.01),
    "step_overhead_s": (1e-9, 10.0, 1e-4),
    "layer_overhead_s": (1e-9, 1.0, 1e-4),
    "kernel_overhead_s": (1e-10, 1e-2, 5e-6),
    "prefill_token_overhead_s": (1e-12, 1e-1, 1e-6),
    "policy_layer_overhead_s": (1e-9, 1.0, 1e-5),
    "materialised_reads": (1e-4, 2.0, 0.5),
    "unfused_scan_s": (1e-14, 1e-7, 1e-10),
}
# Parameters of terms only some architectures have: fitted by default only where the data holds such a model
# (elsewhere nothing identifies them and they keep the base profile's value).
ONLY_WITH = {"unfused_scan_s": lambda spec: any(isinstance(l.mixer, Mamba) and l.mixer.version == 1
                                              for l in spec.layers)}


def model_spec(name: str):
    try:
        return load_model(name)
    except KvsimError:
        return from_hf_config(load_json(name), name=name)


@dataclass
class Group:
    """Rows that share a model, policy, dtype and generation length: one vectorised prediction."""

    rows: np.ndarray
    spec: object
    policy: object
    dtype: str
    gen: int
    seq: np.ndarray
    batch: np.ndarray


class Problem:
    def __init__(self, df, hardware: HardwareSpec, base: Profile):
        self.df, self.hw, self.base = df, hardware, base
        self.ttft = df["ttft_s"].to_numpy(float)
        self.tpot = df["tpot_s"].to_numpy(float)
        self.groups: list[Group] = []
        specs = {}
        for (model, policy, dtype, gen), sub in df.groupby(["model", "policy", "dtype", "gen"], sort=False):
            if model not in specs:
                specs[model] = model_spec(model)
            pol = parse_composition(str(policy).split(" ") if str(policy) != "full" else [])
            self.groups.append(Group(sub.index.to_numpy(), specs[model], pol, dtype, int(gen),
                                     sub["seq"].to_numpy(), sub["batch"].to_numpy()))

    def profile(self, values: dict) -> Profile:
        return dataclasses.replace(self.base, **values)

    def predict(self, profile: Profile, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Predicted (TTFT, TPOT) for every row (NaN outside `rows` when given)."""
        ttft = np.full(len(self.df), np.nan)
        tpot = np.full(len(self.df), np.nan)
        for g in self.groups:
            sel = np.ones(g.rows.size, bool) if rows is None else np.isin(g.rows, rows)
            idx = g.rows[sel]
            if idx.size == 0:
                continue
            wl = Workload(prompt=g.seq[sel], gen=g.gen, batch=g.batch[sel], kv_dtype=g.dtype, weight_dtype=g.dtype)
            pred = predict(g.spec, self.hw, g.policy, wl, profile)
            ttft[idx], tpot[idx] = pred.ttft_s, pred.tpot_s
        return ttft, tpot


def free_params(names=None, problem: "Problem | None" = None) -> tuple[str, ...]:
    """The parameters a fit moves (by default all of PARAMS that `problem`'s models exercise); the others keep
    the base profile's values."""
    if names is None:
        specs = [g.spec for g in problem.groups] if problem is not None else []
        return tuple(k for k in PARAMS if k not in ONLY_WITH or any(ONLY_WITH[k](s) for s in specs))
    unknown = [n for n in names if n not in PARAMS]
    if unknown or not names:
        raise KvsimError(f"--fit: unknown parameter {', '.join(unknown) or '(none given)'}; valid: {', '.join(PARAMS)}")
    return tuple(dict.fromkeys(names))


def _vector(values: dict, free) -> np.ndarray:
    return np.log([values[k] for k in free])


def _values(x: np.ndarray, free) -> dict:
    return {k: float(np.exp(v)) for k, v in zip(free, x)}


def fit(problem: Problem, rows: np.ndarray | None = None, start: dict | None = None, free=None) -> Profile:
    """Least squares on log(predicted / measured) for TTFT and TPOT over `rows` (all when None), moving the
    `free` parameters (free_params' default set when None) and keeping the rest at the base profile's values."""
    from scipy.optimize import least_squares

    free = free_params(free, problem)
    rows = np.arange(len(problem.df)) if rows is None else rows
    lo = np.log([PARAMS[k][0] for k in free])
    hi = np.log([PARAMS[k][1] for k in free])

    def residuals(x):
        ttft, tpot = problem.predict(problem.profile(_values(x, free)), rows)
        return np.concatenate([np.log(ttft[rows] / problem.ttft[rows]), np.log(tpot[rows] / problem.tpot[rows])])

    # Fixed overheads and bandwidth trade against each other on small models, so the surface has several
    # basins: start from the defaults and from overhead-light and overhead-heavy corners, keep the best.
    starts = [start] if start else [_start(1.0), _start(0.1), _start(10.0)]
    best = None
    for s in starts:
        x0 = np.clip(_vector(s, free), lo + 1e-6, hi - 1e-6)
        res = least_squares(residuals, x0, bounds=(lo, hi), x_scale=1.0, diff_step=1e-3, max_nfev=400)
        if best is None or res.cost < best.cost:
            best = res
    return problem.profile(_values(best.x, free))


def _start(overhead_scale: float) -> dict:
    """Default starting values, with every fixed overhead scaled and efficiencies scaled the other way."""
    out = {}
    for k, b in PARAMS.items():
        scale = overhead_scale if k.endswith("_s") else (1.0 / overhead_scale) ** 0.5 if "efficiency" in k else 1.0
        out[k] = b[2] * scale
    return out


def errors(pred: np.ndarray, meas: np.ndarray) -> dict:
    ape = np.abs(pred / meas - 1)
    return {"mape": float(np.mean(ape)), "median_ape": float(np.median(ape)), "max_ape": float(np.max(ape)),
            "rows": int(ape.size)}


def folds(df, k: int, seed: int) -> np.ndarray:
    """Fold of every row; whole (model, seq, policy) configurations share a fold."""
    keys = df[["model", "seq", "policy"]].astype(str).agg("|".join, axis=1)
    uniq = np.array(sorted(keys.unique()))
    rng = np.random.default_rng(seed)
    rng.shuffle(uniq)
    fold_of = {key: i % k for i, key in enumerate(uniq)}
    return keys.map(fold_of).to_numpy()


def cross_validate(problem: Problem, k: int, seed: int, report=lambda s: None,
                   free=None) -> tuple[np.ndarray, np.ndarray]:
    """Held-out (TTFT, TPOT) for every row, each predicted by a fit on the other folds."""
    fold = folds(problem.df, k, seed)
    ttft = np.full(len(problem.df), np.nan)
    tpot = np.full(len(problem.df), np.nan)
    for f in range(k):
        train, test = np.where(fold != f)[0], np.where(fold == f)[0]
        if test.size == 0:
            continue
        prof = fit(problem, train, free=free)
        a, b = problem.predict(prof, test)
        ttft[test], tpot[test] = a[test], b[test]
        report(f"fold {f + 1}/{k}: {test.size} held-out rows, TPOT MAPE {errors(b[test], problem.tpot[test])['mape']:.3f}, "
               f"TTFT MAPE {errors(a[test], problem.ttft[test])['mape']:.3f}")
    return ttft, tpot
