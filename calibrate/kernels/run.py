"""`kvsim calibrate --kernels aiconfigurator`: fit one system's and framework's profile from the tables, with
held-out error per op family, and write it atomically."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np

from kvsim import load_hardware
from kvsim.errors import KvsimError
from kvsim.profile import Profile

from . import aiconfigurator as aic
from . import families, fit

LOWER_BOUND = ("Fitted to single ops timed alone in CUDA graphs: norms, rotary embeddings, activations, "
               "sampling, the scheduler and CPU time are not in the tables, so a step predicted with this "
               "profile is a lower bound on a real engine's step.")


def profile_name(system: str, framework: str) -> str:
    return f"{aic.HARDWARE.get(system, system)}-{framework}"


def calibrate(system: str, framework: str, version: str | None = None, progress=None,
              say=lambda s: print(s, file=sys.stderr)) -> dict:
    """The profile document: params, provenance, held-out and datasheet errors per op family."""
    if framework not in aic.FRAMEWORKS:
        raise KvsimError(f"--framework must be one of {', '.join(aic.FRAMEWORKS)}")
    if system not in aic.HARDWARE:
        raise KvsimError(f"no kvsim hardware preset for {system!r} (have: {', '.join(aic.HARDWARE)})")
    hw = load_hardware(aic.HARDWARE[system])
    tables = {f: aic.load(system, f, framework, version) for f in aic.TABLES}
    if tables["gemm"] is None or tables["decode_attention"] is None:
        raise KvsimError(f"{aic.PACKAGE} has no GEMM or decode-attention table for {system}/{framework}")
    fams = families.for_system(tables, aic.L2_BYTES.get(system, 0))
    name = profile_name(system, framework)
    prof = Profile(name=name, device=tables["gemm"].device, tiled=True)
    heldout, train = {}, {}
    steps = [(f, stage) for f in fams for stage in ("fit", "held-out")]
    bar = progress(steps) if progress else steps
    for fam, stage in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{fam.name}: {stage}")
        if stage == "fit":
            say(f"{fam.name}: fitting on {len(fam.rows):,} rows")
            prof = fit.fit_family(fam, hw, prof)
            meas = fam.rows["seconds"].to_numpy(float)
            err = fit.ape(fam.predict(prof, hw, fam.rows), meas)
            kinds = fam.rows[fam.by].to_numpy().astype(str) if fam.by else np.full(len(meas), fam.name)
            for k in np.unique(kinds):
                train[k if not fam.by else f"{k}_{fam.name}"] = fit.summary(err[kinds == k])
        else:
            heldout.update(fit.heldout(fam, hw, prof, say))
    headline = {}
    for fam, splits in heldout.items():
        worst = max(splits, key=lambda s: splits[s]["mape"])
        headline[fam] = {"mape": float(np.mean([r["mape"] for r in splits.values()])),
                         "datasheet_mape": float(np.mean([r["datasheet_mape"] for r in splits.values()])),
                         "worst_split": worst, "worst_mape": splits[worst]["mape"]}
    params = {k: v for k, v in prof.to_dict().items() if k != "meta"}
    return {
        "params": params,
        "kind": "kernel-database",
        "device": tables["gemm"].device,
        "hardware": aic.HARDWARE[system],
        "lower_bound": LOWER_BOUND,
        "table_only": {k: float(v) for k, v in prof.meta.items()},
        "heldout_summary": headline,
        "heldout": heldout,
        "train": train,
        "source": {
            "package": aic.PACKAGE, "package_version": aic.package_version(), "licence": "Apache-2.0 (NVIDIA)",
            "system": system, "framework": framework,
            "framework_versions": {f: t.version for f, t in tables.items() if t is not None},
            "tables": {f: f"aiconfigurator_core/systems/data/{system}/{aic.TABLES[f][0]}/{framework}/{t.version}/"
                          f"{aic.TABLES[f][1]}" for f, t in tables.items() if t is not None},
            "rows_used": {fam.name: int(len(fam.rows)) for fam in fams},
            "not_fitted": {k: {"value": v, "source": why} for fam in fams for k, (v, why) in fam.fixed.items()},
            "selection": families.SELECTION.strip(),
        },
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def default_out(system: str, framework: str) -> Path:
    return Path(__file__).resolve().parents[1] / "profiles" / f"{profile_name(system, framework)}.json"
