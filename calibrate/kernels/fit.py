"""Fit a Profile's kernel-level parameters to one system's and framework's measured ops, family by family,
and measure held-out error by holding out whole groups.

Each family fits only the parameters its ops exercise; parameters fitted by an earlier family are held
fixed (prefill attention reuses decode's attention floor, MoE reuses the GEMM ramp). Least squares on
log(predicted / measured) (GEMMs with a robust loss: Family.loss), each parameter fitted as its logarithm
within bounds. A held-out split fits on
every row outside a group and predicts the group: a head dim or KV-head count never seen, long contexts
from short ones, large batches from small ones, GEMM shapes never seen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from kvsim.hardware import HardwareSpec
from kvsim.profile import OVERRIDE_TABLES, Profile

# (lower, upper, start); "table.key" names an entry of a dict-valued Profile field
GEMM_PARAMS = {"compute_efficiency": (0.05, 1.2, 0.8), "mem_efficiency": (0.05, 1.2, 0.8),
               "gemv_mem_efficiency": (0.05, 1.2, 0.8),
               "matmul_overhead_s": (1e-8, 1e-3, 4e-6), "matmul_tile_fixed_k": (1.0, 1e5, 128.0),
               "matmul_half_ctas": (1e-3, 1e4, 50.0),
               "matmul_dtype_efficiency.fp8": (0.05, 1.2, 0.6), "matmul_operand_efficiency.fp8": (0.05, 10.0, 1.0),
               "quant_row_overhead_s": (1e-13, 1e-6, 1e-9)}
# Decode and prefill attention are different kernels (split-KV decoding, a causal pass): prefill is fitted
# first, with the attention compute ramp (decode spends next to nothing on compute) and its own values of the
# kernel terms (Profile.prefill_attention); decode then fits its own, the ramp held.
PREFILL_PARAMS = {"attn_efficiency": (0.01, 1.2, 0.6), "attn_half_tokens": (1.0, 1e6, 1024.0),
                  "attn_dtype_efficiency.fp8": (0.05, 1.5, 0.8),
                  "prefill_attention.kv_efficiency": (0.01, 1.0, 0.3),
                  "prefill_attention.attention_overhead_s": (1e-8, 1e-3, 1e-5),
                  "prefill_attention.attention_seq_overhead_s": (1e-11, 1e-4, 2e-8),
                  "prefill_attention.window_edge_tokens": (1e-2, 1e4, 256.0),
                  "prefill_attention.attn_head_exponent": (1e-3, 3.0, 0.3),
                  "attn_softmax_dims": (1e-2, 1e4, 32.0), "prefill_group_exponent": (1e-3, 1.5, 0.5)}
DECODE_PARAMS = {"kv_efficiency": (0.05, 1.0, 0.9), "kv_dtype_efficiency.fp8": (0.05, 1.0, 0.6),
                 "attention_seq_overhead_s": (1e-11, 1e-4, 2e-8), "attention_overhead_s": (1e-8, 1e-3, 1e-5),
                 "kv_dtype_unit_rate.fp8": (0.05, 1.0, 0.6), "kv_occupancy_power": (1.0, 16.0, 2.0),
                 "window_edge_tokens": (1e-2, 1e4, 128.0), "kv_half_units": (1e-2, 1e5, 100.0),
                 "kv_split_tokens": (1.0, 1e6, 256.0), "kv_max_splits": (1.0, 1e4, 16.0),
                 "attn_head_exponent": (1e-3, 3.0, 0.4), "attention_overlap": (1.0, 20.0, 1.5),
                 "kv_dtype_overlap.fp8": (1.0, 20.0, 1.0),
                 "decode_seq_overhead_s": (1e-11, 1e-4, 1e-8), "decode_aux_kernel_s": (1e-9, 1e-3, 2e-6)}
FIT_ROWS = 4000
MOE_PARAMS = {"moe_efficiency": (0.02, 1.5, 0.6), "moe_half_rows": (1e-2, 1e5, 16.0),
              "moe_tile_fixed_k": (1.0, 1e5, 300.0)}
ALLREDUCE_PARAMS = {"comm_efficiency": (0.01, 1.5, 0.7), "allreduce_overhead_s": (1e-8, 1e-2, 1e-5)}


@dataclass
class Family:
    name: str
    params: dict
    predict: object  # (profile, hardware, rows) -> seconds
    splits: object  # rows -> list of (split name, group labels per row)
    rows: object = None  # pandas DataFrame
    by: str = ""  # column whose values are reported as op families of their own
    fixed: dict = dataclasses.field(default_factory=dict)  # known values (not fitted) the family sets, with why
    # scipy least_squares loss and f_scale on the log residuals: "linear" is plain least squares; "soft_l1" with
    # a small scale weighs residuals beyond it by their size (close to least absolute deviations), so a family
    # whose rows hold two populations is fitted to its larger one instead of between them
    loss: tuple = ("linear", 1.0)



def _set(profile: Profile, values: dict) -> Profile:
    plain = {k: v for k, v in values.items() if "." not in k}
    tables: dict = {}
    for k, v in values.items():
        if "." in k:
            table, key = k.split(".", 1)
            tables.setdefault(table, dict(getattr(profile, table)))[key] = v
    return dataclasses.replace(profile, **plain, **tables)


def _unset(profile: Profile, names) -> Profile:
    """`profile` without the named parameters: dict entries removed, fields at their defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(Profile)}
    plain = {k: defaults[k] for k in names if "." not in k}
    tables: dict = {}
    for k in names:
        if "." in k:
            table, key = k.split(".", 1)
            tables.setdefault(table, dict(getattr(profile, table))).pop(key, None)
    return dataclasses.replace(profile, **plain, **tables)


def _absent_default(name: str, bounds) -> bool:
    """Whether the lower end of the parameter's range is the term vanishing, so that leaving it out (a dict
    entry, or a field whose default is 0) is what the fit asked for."""
    lower, _, start = bounds
    if name.startswith("meta."):  # a table-only speed-up at its lower bound of 1 is no speed-up
        return lower == 1.0
    if lower > 1e-2 * start:
        return False
    if "." in name:
        return True
    return {f.name: f.default for f in dataclasses.fields(Profile)}.get(name) == 0.0


def fit_family(fam: Family, hw: HardwareSpec, base: Profile, rows: np.ndarray | None = None) -> Profile:
    """`base` with the family's parameters fitted to `rows` (all when None). A term the rows drive to the
    lower bound of its range is one they cannot identify: it is dropped (left at zero) and the rest refitted."""
    rows = np.arange(len(fam.rows)) if rows is None else np.asarray(rows)
    if rows.size > FIT_ROWS:  # the fit converges on a seeded sample; errors are measured on every row
        rows = np.sort(np.random.default_rng(0).choice(rows, FIT_ROWS, replace=False))
    df = fam.rows.iloc[rows]
    base = _set(base, {k: v for k, (v, _) in fam.fixed.items()})
    names = [k for k in fam.params if _exercised(k, df) and k not in fam.fixed]
    # a parameter these rows cannot inform takes no value from an earlier fit (a held-out split's base was
    # fitted on every row, its held-out group included)
    base = _unset(base, [k for k in fam.params if k not in names and k not in fam.fixed])
    while True:
        values, at_floor = _least_squares(fam, hw, base, df, names)
        dropped = [k for k in at_floor if _absent_default(k, fam.params[k])]
        if not dropped:
            return _set(base, values)
        names = [k for k in names if k not in dropped]
        base = _vanish(base, dropped)


def _vanish(profile: Profile, names) -> Profile:
    """`profile` without the named terms: 0 in an override table (an entry it lacks falls back to the profile's
    value, fitted by another family), left out (at its default) elsewhere."""
    pinned = {k: 0.0 for k in names if k.split(".", 1)[0] in OVERRIDE_TABLES}
    return _set(_unset(profile, [k for k in names if k not in pinned]), pinned)


def _least_squares(fam: Family, hw: HardwareSpec, base: Profile, df, names: list[str]):
    """Fitted values of `names` and those of them at the lower bound of their range."""
    from scipy.optimize import least_squares

    meas = df["seconds"].to_numpy(float)
    lo = np.log([fam.params[k][0] for k in names])
    hi = np.log([fam.params[k][1] for k in names])
    x0 = np.clip(np.log([fam.params[k][2] for k in names]), lo + 1e-6, hi - 1e-6)

    def residuals(x):
        pred = fam.predict(_set(base, dict(zip(names, np.exp(x)))), hw, df)
        return np.log(pred / meas)

    best = None
    floors = np.array([1.0 if k.endswith("_s") else 0.0 for k in names])
    # floors and bandwidths trade off, and so do a kernel's rooflines: start from four corners
    for shift in (0.0 * floors, -floors, floors, 1.5 * (1.0 - floors)):
        start = np.clip(x0 + shift, lo + 1e-6, hi - 1e-6)
        res = least_squares(residuals, start, bounds=(lo, hi), x_scale=1.0, diff_step=1e-4, max_nfev=300,
                            loss=fam.loss[0], f_scale=fam.loss[1])
        if best is None or res.cost < best.cost:
            best = res
    at_floor = [k for k, x, l in zip(names, best.x, lo) if x - l < 0.25]  # within 25% of the lower bound
    return dict(zip(names, np.exp(best.x))), at_floor


def _exercised(name: str, df) -> bool:
    """A parameter the rows cannot inform is left at its default (fp8 entries without fp8 rows, ...)."""
    if name in ("matmul_dtype_efficiency.fp8", "matmul_operand_efficiency.fp8", "quant_row_overhead_s"):
        return bool(df["gemm_dtype"].isin(["fp8", "fp8_block"]).any())
    if name in ("kv_dtype_efficiency.fp8", "attn_dtype_efficiency.fp8", "kv_dtype_unit_rate.fp8",
                "kv_dtype_overlap.fp8", "kv_dtype_seq_overhead_s.fp8"):
        return bool((df["kv_cache_dtype"] == "fp8").any())
    if name.startswith("kv_dtype_head_efficiency."):
        dt, dim = name.split(".", 1)[1].split("@")
        return bool(((df["kv_cache_dtype"] == dt) & (df["head_dim"] == int(dim))).any())
    if name.startswith("window_edge_head_tokens."):
        dt, _, dim = name.split(".", 1)[1].rpartition("@")
        rows = (df["window_size"] > 0) & (df["head_dim"] == int(dim))
        return bool((rows & ((df["kv_cache_dtype"] == dt) if dt else (df["kv_cache_dtype"] != "fp8"))).any())
    if name == "attn_softmax_dims":  # with one head dim it only trades off against attn_efficiency
        return df["head_dim"].nunique() > 1
    if name == "prefill_group_exponent":
        return (df["num_heads"] / df["num_key_value_heads"]).nunique() > 1
    if name.endswith("window_edge_tokens"):
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
