"""Fit a Profile's efficiency parameters to measured TTFT and TPOT: least squares on log-time.

Each parameter is fitted as the logarithm of its value (all are positive), within bounds wide enough not to
bind in practice. Held-out error comes from grouped cross-validation: whole configurations (model,
sequence length, policy; every batch size of them together) are held out, so a configuration is never
predicted by a fit that saw it. That estimate cannot see extrapolation (every held-out row still has its model,
prompt length and batch in training), so three more schemes hold out what users extrapolate to: each model in
turn (leave-one-model-out), batches above a threshold, and prompts above a threshold.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kvsim import Profile, Workload, load_model, parse_composition, predict
from kvsim.errors import KvsimError
from kvsim.hardware import HardwareSpec
from kvsim.cost import unfused_attention
from kvsim.hf import from_hf_config, load_json
from kvsim.model import LinearAttention, Mamba

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
    "unfused_chunk_s": (1e-14, 1e-7, 1e-10),
    "unfused_delta_s": (1e-14, 1e-7, 1e-10),
    "unfused_attention_s": (1e-14, 1e-7, 1e-10),
    "unfused_sink_s": (1e-14, 1e-7, 1e-10),
    "unfused_state_s": (1e-14, 1e-7, 1e-10),
    "unfused_spill": (1e-4, 100.0, 0.5),
}
# Parameters of terms only some architectures have: fitted by default only where the data holds such a model
# (elsewhere nothing identifies them and they keep the base profile's value). Each test takes a model spec and
# the base profile.
def _chunked(spec, kind) -> bool:
    return any(isinstance(l.mixer, kind) and l.mixer.chunked for l in spec.layers)


ONLY_WITH = {"unfused_scan_s": lambda spec, base: any(isinstance(l.mixer, Mamba) and l.mixer.version == 1
                                                    for l in spec.layers),
             "unfused_chunk_s": lambda spec, base: _chunked(spec, Mamba),
             "unfused_delta_s": lambda spec, base: _chunked(spec, LinearAttention),
             "unfused_attention_s": lambda spec, base: any(unfused_attention(l) for l in spec.layers),
             "unfused_sink_s": lambda spec, base: any(unfused_attention(l) and getattr(l.mixer, "sinks", False)
                                                      for l in spec.layers),
             "unfused_state_s": lambda spec, base: any(isinstance(l.mixer, (Mamba, LinearAttention))
                                                       for l in spec.layers),
             # temporaries outgrow a cache only where they exist and the base profile knows the cache's size
             "unfused_spill": lambda spec, base: base.cache_bytes > 0 and (
                 any(unfused_attention(l) for l in spec.layers) or _chunked(spec, (Mamba, LinearAttention)))}


def model_spec(name: str, base: str | Path | None = None):
    """A preset by name, or a config.json path as a measurement row names it: as given, else relative to `base`
    (the folder of the CSV the row came from; collect.sh names its own model files relative to it)."""
    try:
        return load_model(name)
    except KvsimError:
        path = Path(name)
        if not path.exists() and base is not None and (Path(base) / name).exists():
            path = Path(base) / name
        if not path.exists():
            raise KvsimError(f"model {name!r} is neither a preset nor a config.json found as given or beside its "
                             "data") from None
        return from_hf_config(load_json(path), name=name)


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
        self.specs = specs = {}
        for (model, policy, dtype, gen), sub in df.groupby(["model", "policy", "dtype", "gen"], sort=False):
            if model not in specs:
                specs[model] = model_spec(model, Path(str(sub["source"].iloc[0])).parent if "source" in sub else None)
            pol = parse_composition([str(policy)] if str(policy) != "full" else [])  # "a + b" is one composition
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
        base = problem.base if problem is not None else None
        return tuple(k for k in PARAMS if k not in ONLY_WITH or any(ONLY_WITH[k](s, base) for s in specs))
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
    # a term no training model has (a held-out model's own mechanism) does not move the residuals: it keeps the
    # base profile's value rather than wherever the optimizer started it
    specs = [g.spec for g in problem.groups if np.isin(g.rows, rows).any()]
    free = tuple(k for k in free if k not in ONLY_WITH or any(ONLY_WITH[k](s, problem.base) for s in specs))
    if not free:
        return problem.profile({})
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


def at_floor(profile: Profile, free) -> tuple[str, ...]:
    """The `free` parameters a fit left at their lower bound whose default is 0 (overheads and executor terms):
    terms the data drive to nothing, which cannot be identified and are fixed at 0 instead of reported as fitted."""
    default = Profile()
    return tuple(k for k in free if getattr(default, k) == 0 and getattr(profile, k) <= PARAMS[k][0] * 1.01)


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


# ------------------------------------------------------------------------------------------ hold-out schemes
def summary(pred_ttft: np.ndarray, pred_tpot: np.ndarray, meas_ttft: np.ndarray, meas_tpot: np.ndarray) -> dict:
    e1, e2 = errors(pred_tpot, meas_tpot), errors(pred_ttft, meas_ttft)
    return {"tpot_mape": e1["mape"], "tpot_median_ape": e1["median_ape"], "tpot_max_ape": e1["max_ape"],
            "ttft_mape": e2["mape"], "ttft_median_ape": e2["median_ape"], "ttft_max_ape": e2["max_ape"],
            "rows": e1["rows"]}


def splits(df, batch_above: int, seq_above: int) -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    """The extrapolation hold-outs: name -> [(label, train rows, test rows)]. leave-one-model-out fits once per
    model on every other model; batch trains on batch <= batch_above and tests above it; prompt trains on prompts
    <= seq_above and tests above it. Rows of neither side of a split are not used by it, nor test rows whose
    policy no training row has."""
    idx = np.arange(len(df))
    models = sorted(df["model"].astype(str).unique())
    out = {"leave-one-model-out": [(m, idx[df["model"].astype(str).to_numpy() != m],
                                    idx[df["model"].astype(str).to_numpy() == m]) for m in models]}
    b, s = df["batch"].to_numpy(), df["seq"].to_numpy()
    out["batch"] = [(f"batch <= {batch_above} -> > {batch_above}", idx[b <= batch_above], idx[b > batch_above])]
    out["prompt"] = [(f"prompt <= {seq_above} -> > {seq_above}", idx[s <= seq_above], idx[s > seq_above])]
    # A test row whose policy no training row runs is not a prediction: nothing in training identifies that
    # policy's parameters (leave-one-model-out over data where only one model runs the policies).
    policy = df["policy"].astype(str).to_numpy()
    return {name: [(label, train, test[np.isin(policy[test], policy[train])]) for label, train, test in parts]
            for name, parts in out.items()}


def extrapolate(problem: Problem, batch_above: int, seq_above: int, free=None, report=lambda s: None) -> dict:
    """Held-out error of every extrapolation scheme: per scheme its MAPEs over the test rows (each predicted by
    a fit that never saw them, nor their model / batch / prompt range), the rows on each side, and per split."""
    out = {}
    for name, parts in splits(problem.df, batch_above, seq_above).items():
        ttft = np.full(len(problem.df), np.nan)
        tpot = np.full(len(problem.df), np.nan)
        per = {}
        trained = 0
        for label, train, test in parts:
            if not test.size or not train.size:
                per[label] = {"rows": int(test.size), "train_rows": int(train.size),
                              "note": "no rows to " + ("test" if not test.size else "train") + " on"}
                report(f"{name} {label}: skipped ({per[label]['note']})")
                continue
            prof = fit(problem, train, free=free)
            a, b = problem.predict(prof, test)
            ttft[test], tpot[test] = a[test], b[test]
            per[label] = {**summary(a[test], b[test], problem.ttft[test], problem.tpot[test]),
                          "train_rows": int(train.size)}
            trained += int(train.size)
            report(f"{name} {label}: {test.size} held-out rows, TPOT MAPE {per[label]['tpot_mape']:.3f}, "
                   f"TTFT MAPE {per[label]['ttft_mape']:.3f}")
        done = ~np.isnan(tpot)
        block = summary(ttft[done], tpot[done], problem.ttft[done], problem.tpot[done]) if done.any() else \
            {"rows": 0, "note": "no split of this data has rows on both sides"}
        out[name] = {**block, "splits": per}
    return out


def fits_needed(df, k: int, batch_above: int, seq_above: int) -> int:
    """Fits a full calibration runs: k folds, every extrapolation split with rows on both sides, the final fit."""
    parts = [p for ps in splits(df, batch_above, seq_above).values() for p in ps]
    return k + sum(1 for _, tr, te in parts if tr.size and te.size) + 1


def domain(df, specs: dict) -> dict:
    """What a profile was fitted on: model sizes (parameters), batch, prompt and context (prompt + generated
    tokens) ranges, and dtypes; kvsim predict notes a query outside it."""
    params = [int(specs[m].n_params()) for m in df["model"].astype(str).unique()]
    ctx = df["seq"].to_numpy() + df["gen"].to_numpy()
    return {"params": [min(params), max(params)], "batch": [int(df["batch"].min()), int(df["batch"].max())],
            "prompt": [int(df["seq"].min()), int(df["seq"].max())], "context": [int(ctx.min()), int(ctx.max())],
            "dtypes": sorted(df["dtype"].astype(str).unique()), "models": sorted(df["model"].astype(str).unique())}
