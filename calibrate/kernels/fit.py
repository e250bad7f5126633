"""Fit a Profile's kernel-level parameters to one system's and framework's measured ops, family by family,
and measure held-out error by holding out whole groups.

Each family fits only the parameters its ops exercise; parameters fitted by an earlier family are held
fixed (prefill attention reuses decode's attention floor, MoE reuses the GEMM ramp). Least squares on
log(predicted / measured), each parameter fitted as its logarithm within bounds. A held-out split fits on
every row outside a group and predicts the group: a head dim or KV-head count never seen, long contexts
from short ones, large batches from small ones, GEMM shapes never seen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from kvsim.hardware import HardwareSpec
from kvsim.profile import Profile

# (lower, upper, start); "table.key" names an entry of a dict-valued Profile field
GEMM_PARAMS = {"compute_efficiency": (0.05, 1.2, 0.7), "compute_small_efficiency": (1e-4, 1.2, 0.02),
               "compute_half_tokens": (1.0, 1e5, 256.0), "mem_efficiency": (0.05, 1.2, 0.8),
               "matmul_overhead_s": (1e-8, 1e-3, 4e-6), "matmul_dtype_efficiency.fp8": (0.05, 1.2, 0.6)}
# decode and prefill attention share their kernels' floors, per-sequence cost and window edge: one fit
ATTENTION_PARAMS = {"kv_efficiency": (0.05, 1.0, 0.8), "kv_dtype_efficiency.fp8": (0.05, 1.0, 0.6),
                    "attention_seq_overhead_s": (1e-11, 1e-4, 1e-8), "attention_overhead_s": (1e-8, 1e-3, 5e-6),
                    "window_edge_tokens": (1e-2, 1e4, 64.0), "attn_efficiency": (0.01, 1.2, 0.6),
                    "attn_small_efficiency": (1e-4, 1.2, 0.05), "attn_half_tokens": (1.0, 1e6, 1024.0),
                    "kv_half_units": (1e-2, 1e5, 30.0), "kv_split_tokens": (1.0, 1e6, 256.0),
                    "kv_max_splits": (1.0, 1e4, 16.0)}
FIT_ROWS = 4000
MOE_PARAMS = {"moe_efficiency": (0.02, 1.5, 0.6)}
ALLREDUCE_PARAMS = {"comm_efficiency": (0.01, 1.5, 0.7), "allreduce_overhead_s": (1e-8, 1e-2, 1e-5)}


@dataclass
class Family:
    name: str
    params: dict
    predict: object  # (profile, hardware, rows) -> seconds
    splits: object  # rows -> list of (split name, group labels per row)
    rows: object = None  # pandas DataFrame
    by: str = ""  # column whose values are reported as op families of their own



def _set(profile: Profile, values: dict) -> Profile:
    plain = {k: v for k, v in values.items() if "." not in k}
    tables: dict = {}
    for k, v in values.items():
        if "." in k:
            table, key = k.split(".", 1)
            tables.setdefault(table, dict(getattr(profile, table)))[key] = v
    return dataclasses.replace(profile, **plain, **tables)


def fit_family(fam: Family, hw: HardwareSpec, base: Profile, rows: np.ndarray | None = None) -> Profile:
    """`base` with the family's parameters fitted to `rows` (all when None)."""
    from scipy.optimize import least_squares

    rows = np.arange(len(fam.rows)) if rows is None else np.asarray(rows)
    if rows.size > FIT_ROWS:  # the fit converges on a seeded sample; errors are measured on every row
        rows = np.sort(np.random.default_rng(0).choice(rows, FIT_ROWS, replace=False))
    df = fam.rows.iloc[rows]
    meas = df["seconds"].to_numpy(float)
    names = [k for k in fam.params if _exercised(k, df)]
    lo = np.log([fam.params[k][0] for k in names])
    hi = np.log([fam.params[k][1] for k in names])
    x0 = np.clip(np.log([fam.params[k][2] for k in names]), lo + 1e-6, hi - 1e-6)

    def residuals(x):
        pred = fam.predict(_set(base, dict(zip(names, np.exp(x)))), hw, df)
        return np.log(pred / meas)

    best = None
    for shift in (0.0, -1.0, 1.0):  # floors and bandwidths trade off: start from three corners
        start = np.clip(x0 + shift * np.array([1.0 if k.endswith("_s") else 0.0 for k in names]), lo + 1e-6,
                        hi - 1e-6)
        res = least_squares(residuals, start, bounds=(lo, hi), x_scale=1.0, diff_step=1e-4, max_nfev=300)
        if best is None or res.cost < best.cost:
            best = res
    return _set(base, dict(zip(names, np.exp(best.x))))


def _exercised(name: str, df) -> bool:
    """A parameter the rows cannot inform is left at its default (fp8 entries without fp8 rows, ...)."""
    if name == "matmul_dtype_efficiency.fp8":
        return bool(df["gemm_dtype"].isin(["fp8", "fp8_block"]).any())
    if name == "kv_dtype_efficiency.fp8":
        return bool((df["kv_cache_dtype"] == "fp8").any())
    if name == "window_edge_tokens":
        return bool((df["window_size"] > 0).any())
    return True


def ape(pred, meas) -> np.ndarray:
    return np.abs(np.asarray(pred) / np.asarray(meas) - 1.0)


def summary(err: np.ndarray) -> dict:
    return {"mape": float(np.mean(err)), "median_ape": float(np.median(err)),
            "p90_ape": float(np.quantile(err, 0.9)), "max_ape": float(np.max(err)), "rows": int(err.size)}


def heldout(fam: Family, hw: HardwareSpec, base: Profile, report=lambda s: None) -> dict:
    """{op family: {split: errors}}: MAPE of rows predicted by a fit that never saw their group, with the
    datasheet roofline's error on the same rows beside it."""
    meas = fam.rows["seconds"].to_numpy(float)
    sheet = ape(fam.predict(Profile(), hw, fam.rows), meas)
    kinds = fam.rows[fam.by].to_numpy().astype(str) if fam.by else np.full(len(meas), fam.name)
    out: dict = {}
    for split, labels in fam.splits(fam.rows):
        pred = np.full(len(meas), np.nan)
        for g in np.unique(labels[labels != ""]):
            test = np.where(labels == g)[0]
            train = np.where(labels != g)[0]
            if test.size == 0 or train.size < 20:
                continue
            prof = fit_family(fam, hw, base, train)
            pred[test] = fam.predict(prof, hw, fam.rows.iloc[test])
        for kind in np.unique(kinds):
            done = ~np.isnan(pred) & (kinds == kind)
            if not done.any():
                continue
            name = kind if not fam.by else f"{kind}_{fam.name}"
            res = {**summary(ape(pred[done], meas[done])), "datasheet_mape": float(np.mean(sheet[done]))}
            out.setdefault(name, {})[split] = res
            report(f"  {name} held out by {split}: MAPE {res['mape']:.1%} over {res['rows']} rows "
                   f"(datasheet {res['datasheet_mape']:.1%})")
    return out
