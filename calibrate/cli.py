"""`kvsim probe` and `kvsim calibrate`. Outputs are written to a temporary file and renamed, so an
existing profile is never left half-written."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

from kvsim.atomic import check_target, replacing
from kvsim.cli import _Parser
from kvsim.cliargs import whole
from kvsim.errors import KvsimError


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def cmd_probe(argv) -> int:
    p = _Parser(prog="kvsim probe", description="micro-benchmark this device into a hardware profile")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", action="append", default=None, choices=("fp32", "bf16", "fp16"),
                   help="repeatable (default: fp32 on cpu; bf16, fp16, fp32 on cuda)")
    p.add_argument("--quick", action="store_true", help="smaller buffers and fewer repeats")
    p.add_argument("--threads", type=whole("--threads", 1, 4096), default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", required=True, help="profile JSON to write")
    a = p.parse_args(argv)
    check_target(a.out, "--out", stream_ok=False)
    import torch

    if a.device != "cpu" and not (a.device.startswith("cuda") and torch.cuda.is_available()):
        raise KvsimError(f"device {a.device!r} is not available here")
    if a.threads:
        torch.set_num_threads(a.threads)
    from .probe import run
    from measured.progress import Progress
    dtypes = a.dtype or (["bf16", "fp16", "fp32"] if a.device != "cpu" else ["fp32"])
    with Progress(2 + len(dtypes) + (a.device == "cpu"), "probe", unit="stage") as progress:
        r = run(a.device, dtypes, a.quick, progress)
    main_dtype = (a.dtype or (["bf16"] if a.device != "cpu" else ["fp32"]))[0]
    profile = {"params": {"name": Path(a.out).stem, "memory_bandwidth": r["memory_bandwidth"],
                          "peak_flops": r["peak_flops"][main_dtype], "cache_bytes": r["cache_bytes"],
                          "device": r["device_name"], **r.get("unfused", {})},
               "kind": "probe", "dtype": main_dtype, "probe": r,
               "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    write_json(Path(a.out), profile)
    print(f"{r['device_name']}: stream {r['memory_bandwidth'] / 1e9:.1f} GB/s, "
          + ", ".join(f"{k} GEMM {v / 1e12:.3f} TFLOP/s" for k, v in r["peak_flops"].items())
          + f", op {r['overhead']['op_s'] * 1e6:.1f} us -> {a.out}")
    return 0


# Terms `kvsim probe` times on the CPU (calibrate.probe.executor_paths) that a calibration takes from its probe.
PROBED = ("unfused_chunk_s", "unfused_delta_s", "unfused_attention_s", "unfused_sink_s")


def cmd_calibrate(argv) -> int:
    from kvsim import DATASHEET, Profile, load_hardware, load_profile

    p = _Parser(prog="kvsim calibrate", description="fit efficiency parameters; held-out error")
    p.add_argument("--data", action="append", help="measurement CSV or folder (repeatable)")
    p.add_argument("--kernels", choices=["aiconfigurator"], help="fit to a public kernel database instead: "
                   "NVIDIA's aiconfigurator-core tables (pip install 'kvsim[gpu-data]')")
    p.add_argument("--system", default="h100_sxm", help="with --kernels: the database's system (h100_sxm, "
                                                        "h200_sxm, a100_sxm)")
    p.add_argument("--framework", default="vllm", help="with --kernels: vllm, trtllm or sglang")
    p.add_argument("--version", default=None, help="with --kernels: the framework version (default: newest)")
    p.add_argument("--out", default=None, help="profile JSON to write (a PNG plot is written beside it); with "
                                               "--kernels default calibrate/profiles/<hardware>-<framework>.json")
    p.add_argument("--hardware", default=None, help="hardware preset the datasheet comparison uses "
                                                    "(default: cpu for CPU data)")
    p.add_argument("--probe", default=None, help="profile from `kvsim probe`: its measured peaks are the base")
    p.add_argument("--folds", type=whole("--folds", 2, 100), default=5, help="cross-validation folds")
    p.add_argument("--seed", type=whole("--seed", 0, 2**32 - 1), default=0, help="fold assignment seed")
    p.add_argument("--fit", default=None, metavar="P,...",
                   help="fit only these parameters (comma list; default: all); the others keep the --probe "
                        "profile's or the defaults' values. Fewer free parameters need fewer rows and less time")
    p.add_argument("--holdout-batch-above", type=whole("--holdout-batch-above", 1, 1 << 16), default=4, metavar="B",
                   help="batch extrapolation hold-out: fit on batch <= B, test on larger batches")
    p.add_argument("--holdout-seq-above", type=whole("--holdout-seq-above", 1, 1 << 24), default=1024, metavar="S",
                   help="prompt extrapolation hold-out: fit on prompts <= S tokens, test on longer prompts")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out profile even if the new fit's held-out error is worse")
    a = p.parse_args(argv)
    if a.kernels:
        return _calibrate_kernels(a)
    if not a.data or not a.out:
        raise KvsimError("kvsim calibrate needs --data and --out (or --kernels aiconfigurator)")
    out = Path(a.out)
    if out.suffix != ".json":
        raise KvsimError("--out must be a .json file")
    check_target(out, "--out", stream_ok=False)
    from .data import load
    from .fit import Problem, at_floor, cross_validate, domain, extrapolate, fit, fits_needed, free_params, summary
    names = [x.strip() for x in a.fit.split(",") if x.strip()] if a.fit is not None else None
    free_params(names)  # an unknown name is refused before the data loads

    df, digest = load(a.data)
    device = str(df["device_name"].iloc[0])
    hw_name = a.hardware or ("cpu" if "cuda" not in str(df.get("device", ["cpu"])[0]) else "h100-sxm")
    hw = load_hardware(hw_name)
    base = load_profile(a.probe) if a.probe else Profile()
    # the probe's measured peaks and cache, and its torch paths' unfused terms: where no training model has a
    # path, its term keeps the probe's value
    base = Profile(name=out.stem, memory_bandwidth=base.memory_bandwidth, peak_flops=base.peak_flops,
                   cache_bytes=base.cache_bytes, device=device, **{k: getattr(base, k) for k in PROBED})
    problem = Problem(df, hw, base)
    free = free_params(names, problem)
    fixed = {}
    if str(df["executor"].iloc[0]).startswith("native-c") and "materialised_reads" in free:
        # that executor reads quantized and selected pages in place: there is no copy for the term to describe
        free = tuple(k for k in free if k != "materialised_reads")
        fixed["materialised_reads"] = "0: the native-c executors read pages in place (no dequantised or gathered copy)"
        if not free:
            raise KvsimError("--fit: nothing left to fit (materialised_reads is fixed at 0 for native-c data)")
    n_conf = df[["model", "seq", "policy"]].drop_duplicates().shape[0]
    if n_conf < a.folds:
        raise KvsimError(f"{n_conf} configurations cannot be split into {a.folds} folds")
    say = lambda s: print(s, file=sys.stderr)  # noqa: E731
    say(f"{len(df)} rows, {n_conf} configurations, {len(problem.groups)} groups on {device}")
    from measured.progress import Progress
    with Progress(fits_needed(df, a.folds, a.holdout_batch_above, a.holdout_seq_above), "calibrate",
                  unit="fit") as progress:
        # first on every row: a term it drives to nothing is fixed at 0 before the held-out fits, which then
        # score the model that ships
        progress.current("fit on every row")
        final = fit(problem, free=free)
        dropped = at_floor(final, free)
        if dropped and len(dropped) < len(free):
            for k in dropped:
                fixed[k] = "0: the fit on every row drove it to its lower bound (the data do not identify it)"
            free = tuple(k for k in free if k not in dropped)
            progress.note(f"fixed at 0 (at their lower bound): {', '.join(dropped)}")
            final = fit(problem, free=free)
        progress.done("fit on every row")
        held_ttft, held_tpot = cross_validate(problem, a.folds, a.seed, lambda s: progress.done("held-out", s),
                                              free=free)
        schemes = extrapolate(problem, a.holdout_batch_above, a.holdout_seq_above, free,
                              lambda s: progress.done("extrapolation", s) if "skipped" not in s else progress.note(s))
    train_ttft, train_tpot = problem.predict(final)
    raw_ttft, raw_tpot = problem.predict(Profile(name="uncalibrated", memory_bandwidth=base.memory_bandwidth,
                                                 peak_flops=base.peak_flops))
    sheet_ttft, sheet_tpot = problem.predict(DATASHEET)
    meas_ttft, meas_tpot = problem.ttft, problem.tpot

    def block(ttft, tpot):
        return summary(ttft, tpot, meas_ttft, meas_tpot)

    grouped = {**block(held_ttft, held_tpot), "folds": a.folds, "configurations": int(n_conf),
               "grouping": "model, seq, policy"}
    from measured.provenance import columns
    prov = columns("cpu")
    profile = {
        "params": {k: v for k, v in final.to_dict().items() if k != "meta"},
        "device": device,
        "hardware": hw_name,
        "fitted": list(free),
        "fixed": fixed,
        "heldout": grouped,
        # every hold-out, extrapolation included: TPOT and TTFT MAPE over rows no fit of theirs saw
        "heldout_schemes": {"grouped": grouped, **schemes},
        "domain": domain(df, problem.specs),
        "train": block(train_ttft, train_tpot),
        "uncalibrated_heldout": {**block(raw_ttft, raw_tpot),
                                 "meaning": "roofline at efficiency 1 with no overheads on the probe's measured peaks"
                                 if a.probe else f"roofline at efficiency 1 with no overheads on {hw_name}'s datasheet"},
        "datasheet_heldout": {**block(sheet_ttft, sheet_tpot),
                              "meaning": f"roofline at efficiency 1 with no overheads on {hw_name}'s datasheet"},
        "provenance": {"data": sorted(set(df["source"])), "data_sha256": digest, "rows": int(len(df)),
                       "date": prov["date"], "kvsim_commit": prov["kvsim_commit"],
                       "torch_version": prov["torch_version"], "transformers_version": prov["transformers_version"],
                       "numpy_version": np.__version__, "seed": a.seed,
                       "probe": a.probe, "measured_on": sorted(set(df["date"].astype(str).str[:10])) if "date" in df else []},
    }
    if not a.force:
        _refuse_worse(out, profile["heldout"])
    if not a.no_plot:
        from .report import plot
        title = (f"{device}: held-out TPOT MAPE {profile['heldout']['tpot_mape']:.1%}, "
                 f"TTFT MAPE {profile['heldout']['ttft_mape']:.1%}")
        plot(df, held_ttft, held_tpot, raw_ttft, raw_tpot, title, out.with_suffix(".png"))
    write_json(out, profile)
    h, u = profile["heldout"], profile["uncalibrated_heldout"]
    print(f"held-out MAPE: TPOT {h['tpot_mape']:.1%} (median {h['tpot_median_ape']:.1%}, max {h['tpot_max_ape']:.1%}), "
          f"TTFT {h['ttft_mape']:.1%} (median {h['ttft_median_ape']:.1%}, max {h['ttft_max_ape']:.1%})")
    for name, sc in profile["heldout_schemes"].items():
        if sc.get("rows"):
            print(f"  {name:20s} TPOT {sc['tpot_mape']:6.1%}  TTFT {sc['ttft_mape']:6.1%}  ({sc['rows']} held-out rows)")
        else:
            print(f"  {name:20s} not measurable on this data: {sc.get('note', 'no rows')}")
    print(f"uncalibrated on the same rows: TPOT {u['tpot_mape']:.1%}, TTFT {u['ttft_mape']:.1%}")
    print(f"wrote {out}" + ("" if a.no_plot else f" and {out.with_suffix('.png')}"))
    return 0


def _refuse_worse(out: Path, new: dict) -> None:
    """Keep a good profile: refuse to replace `out` with a fit whose held-out MAPE (mean of TPOT and TTFT) is
    worse than the one it already records, unless --force."""
    if not out.exists():
        return
    from kvsim.jsonio import read_object
    try:
        old = read_object(out, "profile").get("heldout") or {}
        before = (float(old["tpot_mape"]) + float(old["ttft_mape"])) / 2
    except (KvsimError, KeyError, TypeError, ValueError):
        return  # not a profile calibrate wrote: nothing to compare, replaced as asked
    after = (new["tpot_mape"] + new["ttft_mape"]) / 2
    if not after <= before:
        raise KvsimError(f"{out} has held-out MAPE {before:.1%}; this fit's is {after:.1%}, worse: kept {out} "
                         "(pass --force to replace it)")


def _calibrate_kernels(a) -> int:
    from .kernels import aiconfigurator, run

    aiconfigurator.data_root()  # one line naming the extra when the package is missing
    out = Path(a.out) if a.out else run.default_out(a.system, a.framework)
    if out.suffix != ".json":
        raise KvsimError("--out must be a .json file")
    from tqdm import tqdm

    def progress(items):
        return tqdm(items, desc="calibrate", unit="stage", file=sys.stderr, disable=not sys.stderr.isatty())
    doc = run.calibrate(a.system, a.framework, a.version, progress)
    write_json(out, doc)
    for fam, h in doc["heldout_summary"].items():
        print(f"{fam:18s} held-out MAPE {h['mape']:6.1%} (mean over hold-out schemes; worst {h['worst_mape']:.1%}: "
              f"{h['worst_split']}); datasheet roofline {h['datasheet_mape']:.1%}")
    print(f"wrote {out}")
    return 0


def main(cmd: str, argv: list[str]) -> int:
    return {"probe": cmd_probe, "calibrate": cmd_calibrate}[cmd](argv)
