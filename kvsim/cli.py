"""The kvsim command line: argument parsing and formatting only; every number comes from the library.

Bad input prints one line on stderr and exits 2. Heavy packages (torch, pandas, streamlit) are imported
only by the subcommands that need them, so `kvsim predict` starts fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from .cliargs import RANGE_HELP, Parser, parse_values
from .errors import UsageError as CliError
from .atomic import output, terminate_cleanly
from .limits import MAX_CASES, MAX_GRID, check_points  # one class, whichever module runs as __main__

SIZE_FLAGS = {  # flag -> (dest, default) for a model built from sizes: a Llama-2-7B shape in fp16
    "--layers": ("layers", 32),
    "--heads": ("heads", 32),
    "--kv-heads": ("kv_heads", None),
    "--head-dim": ("head_dim", 128),
    "--hidden": ("hidden", 4096),
    "--intermediate": ("intermediate", 11008),
    "--vocab": ("vocab", 32000),
    "--window": ("window", 0),
}
WORKLOAD_FLAGS = {"--seq": ("seq", 1024), "--gen": ("gen", 1), "--batch": ("batch", 1), "--tp": ("tp", 1),
                  "--pp": ("pp", 1)}
JSON_KEYS = ("kv_cache_bytes", "policy_state_bytes", "kv_cache_bytes_per_device", "kv_peak_bytes", "kv_shared_bytes",
             "kv_host_bytes",
             "state_bytes", "weights_bytes", "weights_bytes_per_device", "activation_peak_bytes",
             "peak_memory_bytes", "capacity_bytes", "fits", "max_batch", "max_context", "prefill_flops",
             "prefill_bytes", "decode_flops", "decode_bytes", "ttft_s", "tpot_s", "tpot_first_s", "tpot_last_s",
             "e2e_s", "decode_tokens_per_s", "throughput_tokens_per_s", "bound_prefill", "bound_decode", "bound",
             "kv_pool_bytes", "kv_pool_blocks", "kv_pool_tokens", "kv_request_bytes", "max_concurrency",
             "max_request_context")
SWEEP_KEYS = ("kv_cache_bytes", "policy_state_bytes", "kv_cache_bytes_per_device", "kv_peak_bytes", "weights_bytes",
              "peak_memory_bytes", "fits", "max_batch", "ttft_s", "tpot_s", "decode_tokens_per_s",
              "throughput_tokens_per_s", "prefill_flops", "decode_bytes", "bound_prefill", "bound",
              "kv_pool_bytes", "kv_pool_blocks", "kv_pool_tokens", "kv_request_bytes", "max_concurrency")
FRACTION_TEXT = {"total": "device memory", "static": "device memory for weights and KV",
                 "free": "the memory free after weights and activations"}
ENGINE_FLAGS = {  # flag -> (Engine field, parser, help)
    "--max-num-batched-tokens": ("max_num_batched_tokens", int,
                                 "tokens per forward pass: prompts are prefilled in chunks of it (0: whole prompt)"),
    "--gpu-memory-utilization": ("memory_fraction", float,
                                 "share of device memory the engine may use, in (0, 1] (SGLang: mem_fraction_static; "
                                 "TensorRT-LLM: free_gpu_memory_fraction)"),
    "--block-size": ("block_size", int, "tokens per KV block (page)"),
    "--max-num-seqs": ("max_num_seqs", int, "requests scheduled together (0: as many as the pool holds)"),
}


_Parser = Parser  # the name measured/ and calibrate/ import


# ------------------------------------------------------------------------------------------------ model
def _add_model_args(p: argparse.ArgumentParser, sweep: bool):
    g = p.add_argument_group("model (one of: a preset, a config.json, or sizes)")
    g.add_argument("--model", help="model preset (kvsim list models)" + ("; comma list allowed" if sweep else ""))
    g.add_argument("--hf-config", help="path to a transformers config.json (or its folder)")
    for flag, (dest, default) in SIZE_FLAGS.items():
        g.add_argument(flag, dest=dest, default=None, metavar="N" + ("|LIST" if sweep else ""),
                       help=f"default {default if default is not None else 'heads (MHA)'}")
    g.add_argument("--dtype", dest="weight_dtype", default=None,
                   help="weight format: bf16, fp16, fp32, fp8[:block=128], int8[:weight-only], int4[:group=128], "
                        "q4_0, q8_0; options head=F (embeddings and output head), act=D; default: the model's, "
                        "fp16 for sizes")
    g.add_argument("--mla-cache", dest="mla_cache", choices=("latent", "decompressed"), default=None,
                   help="how MLA layers (DeepSeek-V2/V3) are cached: latent (the compressed latent + RoPE key, "
                        "decode absorbs the up-projections: vLLM, SGLang; the default) or decompressed (per-head "
                        "K and V)")


def _models(args, sweep: bool):
    """The ModelSpec(s) the arguments describe, with --mla-cache applied."""
    models = _described_models(args, sweep)
    form = getattr(args, "mla_cache", None)
    return [m.with_mla_cache(form) for m in models] if form else models


def _described_models(args, sweep: bool):
    from . import from_hf_config, load_json, load_model, uniform

    sized = {dest: getattr(args, dest) for _, (dest, _) in SIZE_FLAGS.items() if getattr(args, dest) is not None}
    chosen = [name for name, on in (("--model", args.model), ("--hf-config", args.hf_config), ("size flags", sized))
              if on]
    if len(chosen) > 1:
        raise CliError(f"give one of --model, --hf-config or size flags, not {' and '.join(chosen)}")
    if args.model:
        names = [s.strip() for s in args.model.split(",")] if sweep else [args.model]
        return [load_model(n) for n in names]
    if args.hf_config:
        from .hf import config_name
        cfg = load_json(args.hf_config)
        return [from_hf_config(cfg, name=config_name(args.hf_config, cfg))]
    values = {}
    for flag, (dest, default) in SIZE_FLAGS.items():
        raw = sized.get(dest)
        if raw is None:
            values[dest] = [default]
        elif sweep:
            values[dest] = parse_values(raw, flag)
        else:
            values[dest] = [_one_int(raw, flag)]
    import itertools
    check_points(math.prod(len(v) for v in values.values()), "the grid of model sizes", MAX_CASES)
    models = []
    keys = list(values)
    for combo in itertools.product(*(values[k] for k in keys)):
        v = dict(zip(keys, combo))
        kv = v["kv_heads"] if v["kv_heads"] is not None else v["heads"]
        for name in ("layers", "heads", "head_dim", "hidden", "intermediate", "vocab"):
            if v[name] <= 0:
                raise CliError(f"--{name.replace('_', '-')} must be positive, got {v[name]}")
        if kv <= 0:
            raise CliError(f"--kv-heads must be positive, got {kv}")
        if v["window"] < 0:
            raise CliError(f"--window must not be negative, got {v['window']}")
        name = f"custom-L{v['layers']}-H{v['heads']}-KV{kv}-D{v['head_dim']}"
        models.append(uniform(name, n_layers=v["layers"], hidden=v["hidden"], vocab=v["vocab"], n_heads=v["heads"],
                              n_kv_heads=kv, head_dim=v["head_dim"], intermediate=v["intermediate"],
                              window=v["window"], weight_dtype="fp16"))
    return models


def _one_int(raw, flag) -> int:
    vals = parse_values(raw, flag)
    if len(vals) != 1:
        raise CliError(f"{flag} takes one value here; use `kvsim sweep` for several")
    return vals[0]


def _add_common(p: argparse.ArgumentParser, sweep: bool):
    _add_model_args(p, sweep)
    _add_hardware(p, sweep)
    w = p.add_argument_group("workload")
    for flag, (dest, default) in WORKLOAD_FLAGS.items():
        w.add_argument(flag, dest=dest, default=str(default), metavar="N" + ("|LIST" if sweep else ""),
                       help={"--seq": "prompt tokens", "--gen": "generated tokens (>= 1)",
                             "--batch": "sequences decoded together", "--tp": "tensor-parallel degree",
                             "--pp": "pipeline-parallel degree"}[flag] + f" (default {default})")
    _add_kv_dtype(w)
    _add_policy_profile(p, sweep)
    p.add_argument("--quadrature", type=int, default=8, help="decode steps evaluated for the mean TPOT")
    _add_engine_args(p, "hf", "hf (default: whole-prompt prefill, static batch), vllm, sglang, trtllm, or a "
                              "versioned preset such as vllm-0.33.0")
    w.add_argument("--shared-prefix", dest="shared_prefix", default="0", metavar="N" + ("|LIST" if sweep else ""),
                   help="leading prompt tokens every request shares (a system prompt), stored once (default 0)")


def _add_hardware(p, sweep: bool):
    p.add_argument("--hardware", default="h100-sxm",
                   help="hardware preset (kvsim list hardware)" + ("; comma list allowed" if sweep else ""))


def _add_kv_dtype(g):
    g.add_argument("--kv-dtype", default=None, help="KV dtype (fp16, bf16, fp32, fp8, int8); default: the "
                                                    "weight dtype when 16 bits or wider, else bf16")
    g.add_argument("--state-dtype", default=None, help="SSM / linear-attention state matrices' dtype; default fp32 "
                                                       "(transformers; vLLM's mamba_ssm_cache_dtype=auto is the model "
                                                       "dtype); conv windows are kept at the activation dtype")


def _add_policy_profile(p, sweep: bool):
    p.add_argument("--policy", action="append", default=[], metavar="SPEC",
                   help="KV policy name or name:key=value,...; compose with ' + ' or repeat the flag"
                        + ("; alternatives separated by ';' (none: skip this slot)" if sweep else ""))
    p.add_argument("--profile", default=None, help="calibrated efficiency profile: a JSON path or a shipped name (kvsim list profiles; default: the datasheet "
                                                   "roofline, a lower bound on time)")


def _add_engine_args(p, default: str, helptext: str):
    s = p.add_argument_group("serving engine (kvsim list engines; explicit knobs override the engine's defaults)")
    s.add_argument("--engine", default=default, help=helptext)
    for flag, (dest, _, knob_help) in ENGINE_FLAGS.items():
        s.add_argument(flag, dest=dest, default=None, metavar="N", help=knob_help)


def _engine(args):
    """The engine preset with the explicit knobs applied."""
    from .presets import load_engine
    eng = load_engine(args.engine)
    knobs = {}
    for flag, (dest, conv, _) in ENGINE_FLAGS.items():
        raw = getattr(args, dest)
        if raw is None:
            continue
        if conv is int:
            knobs[dest] = _one_int(raw, flag)
        else:
            try:
                knobs[dest] = float(raw)
            except ValueError:
                raise CliError(f"{flag}: cannot read {raw!r} as a number") from None
            if not math.isfinite(knobs[dest]):
                raise CliError(f"{flag} must be finite, got {raw}")
    if knobs.get("max_num_seqs") and eng.batching == "static":
        raise CliError(f"--max-num-seqs: {eng.label} batches statically (the batch is --batch); give a continuous "
                       "engine (--engine vllm, sglang or trtllm)")
    return eng.with_(**knobs)


def _profile(args):
    from .profile import load_profile
    return load_profile(args.profile) if args.profile else None


# ---------------------------------------------------------------------------------------------- predict
def cmd_predict(args) -> int:
    from . import Workload, load_hardware, parse_composition, predict
    from .units import fmt_bytes, fmt_count, fmt_seconds

    model = _models(args, sweep=False)[0]
    hw = load_hardware(args.hardware)
    policy = parse_composition(args.policy)
    wl = Workload(prompt=_one_int(args.seq, "--seq"), gen=_one_int(args.gen, "--gen"),
                  batch=_one_int(args.batch, "--batch"), tp=_one_int(args.tp, "--tp"), pp=_one_int(args.pp, "--pp"),
                  kv_dtype=args.kv_dtype, weight_dtype=args.weight_dtype, quadrature=args.quadrature,
                  shared_prefix=_one_int(args.shared_prefix, "--shared-prefix"), state_dtype=args.state_dtype)
    prof = _profile(args)
    engine = _engine(args)
    from .profile import DATASHEET, describe as describe_profile
    pred = predict(model, hw, policy, wl, prof, engine)
    from .predict import DECODE_KEYS

    values = {k: _scalar(getattr(pred, k)) for k in JSON_KEYS if k not in ("max_context", "max_request_context")}
    decode = bool(_scalar(pred.has_decode))
    if not decode:  # gen = 1: no decode step, so no TPOT or decode throughput to report
        values.update({k: None for k in DECODE_KEYS if k in values})
    for key in ("max_context", "max_request_context"):
        mc = int(getattr(pred, key)().ravel()[0])
        values[key] = None if mc == (2**63 - 1) else mc
    conc = values["max_concurrency"]
    values["max_concurrency"] = None if not math.isfinite(conc) else conc
    layers = [(i, int(b.ravel()[0])) for i, b in pred.kv_bytes_per_layer()]
    for note in pred.notes:
        print(f"note: {note}", file=sys.stderr)
    from .policies import label as policy_label
    inputs = {"model": model.name, "hardware": hw.name, "policy": policy.spec(), "policy_label": policy_label(policy), "seq": wl.prompt, "gen": wl.gen,
              "batch": wl.batch, "tp": wl.tp, "pp": wl.pp, "kv_dtype": pred._engine.cost.kv_dtype,
              "weight_dtype": pred._engine.cost.weight_dtype, "profile": prof.name if prof else "datasheet",
              "profile_description": describe_profile(prof or DATASHEET),
              "engine": engine.label, "max_num_batched_tokens": engine.max_num_batched_tokens,
              "gpu_memory_utilization": engine.memory_fraction, "block_size": engine.block_size,
              "shared_prefix": wl.shared_prefix}
    from .breakdown import rows as breakdown_rows, table as breakdown_table
    ops = breakdown_rows(pred) if args.breakdown else None
    if args.format == "json":
        out = {**inputs, **values, "kv_bytes_per_layer": [b for _, b in layers], "notes": pred.notes,
               **({"breakdown": ops} if ops is not None else {})}
        print(json.dumps(out, indent=2))
    elif args.format == "csv":
        if ops is not None:
            raise CliError("--breakdown prints a table or JSON, not CSV")
        keys = list(inputs) + list(JSON_KEYS)
        row = {**inputs, **values}
        print(",".join(keys))
        print(",".join(_csv_cell(row[k]) for k in keys))
    else:
        v = values
        mc_s = "unbounded" if v["max_context"] is None else f"{v['max_context']:,}"
        mr_s = "unbounded" if v["max_request_context"] is None else f"{v['max_request_context']:,}"
        conc_s = "unbounded" if v["max_concurrency"] is None else f"{v['max_concurrency']:,.2f}x"
        chunk = f"chunks of {engine.max_num_batched_tokens:,} tokens" if engine.chunked else "whole prompt"
        share = f", shared prefix {wl.shared_prefix:,}" if wl.shared_prefix else ""
        rows = [
            ("model", f"{model.name} ({fmt_count(model.n_params())} params, {inputs['weight_dtype']})"),
            ("hardware", f"{hw.display} ({fmt_bytes(hw.memory_bytes)})"),
            ("policy", policy_label(policy)),
            *[("", f"{part.name}: {part.summary}") for part in policy.parts if part.name != "full"],
            ("workload", f"prompt {wl.prompt}, gen {wl.gen}, batch {wl.batch}, tp {wl.tp}, pp {wl.pp}, "
                         f"KV {inputs['kv_dtype']}"),
            ("", ""),
            ("KV cache", f"{fmt_bytes(v['kv_cache_bytes'])}  ({v['kv_cache_bytes']:,} B; "
                         f"{fmt_bytes(v['kv_cache_bytes_per_device'])} per device"
                         + (f", {fmt_bytes(v['kv_host_bytes'])} offloaded to host memory" if v["kv_host_bytes"]
                            else "") + ")"),
            ("policy state", f"{fmt_bytes(v['policy_state_bytes'])}  (scores, positions, counts beside the cache)"),
            *([("recurrent state", f"{fmt_bytes(v['state_bytes'])}  ({v['state_bytes']:,} B of SSM / linear-attention "
                                   f"conv windows and state matrices, constant in length; state matrices "
                                   f"{pred._engine.cost.state_dtype})")] if v["state_bytes"] else []),
            ("KV peak (request)", fmt_bytes(v["kv_peak_bytes"])),
            ("weights", f"{fmt_bytes(v['weights_bytes'])}  ({fmt_bytes(v['weights_bytes_per_device'])} per device)"),
            ("activations (peak)", fmt_bytes(v["activation_peak_bytes"])),
            ("peak memory / device", f"{fmt_bytes(v['peak_memory_bytes'])} of {fmt_bytes(v['capacity_bytes'])}"
                                     f" -> {'fits' if v['fits'] else 'DOES NOT FIT'}"),
            ("max batch", f"{v['max_batch']:,} at this prompt and gen"),
            ("max context", f"{mc_s} tokens at batch {wl.batch}"),
            ("", ""),
            ("engine", f"{engine.display or engine.label}"),
            ("", f"uses {engine.memory_fraction:g} of {FRACTION_TEXT[engine.fraction_of]}; {engine.block_size}-token "
                 f"blocks, {chunk}, {engine.batching} batching{share}"),
            ("KV pool", f"{fmt_bytes(v['kv_pool_bytes'])}: {v['kv_pool_blocks']:,} blocks, "
                        f"{v['kv_pool_tokens']:,} tokens"),
            ("per request", f"{fmt_bytes(v['kv_request_bytes'])} in whole blocks"),
            ("max concurrency", f"{conc_s} for {wl.prompt + wl.gen - 1:,} tokens per request"),
            ("longest request", f"{mr_s} prompt tokens (gen {wl.gen})"),
            ("", ""),
            ("prefill", f"{fmt_count(v['prefill_flops'], 'FLOP')}, {fmt_bytes(v['prefill_bytes'])} moved"),
            ("TTFT", f"{fmt_seconds(v['ttft_s'])}  ({v['bound_prefill']}-bound)"),
        ]
        if decode:
            rows[-1:-1] = [("decode step (mean)", f"{fmt_count(v['decode_flops'], 'FLOP')}, "
                                                  f"{fmt_bytes(v['decode_bytes'])} moved")]
            rows += [("TPOT", f"{fmt_seconds(v['tpot_s'])}  ({v['bound_decode']}-bound; first "
                              f"{fmt_seconds(v['tpot_first_s'])}, last {fmt_seconds(v['tpot_last_s'])})"),
                     ("decode throughput", f"{v['decode_tokens_per_s']:,.1f} tokens/s")]
        else:
            rows.append(("decode", "none (gen 1: the prefill yields the only token)"))
        width = max(len(k) for k, _ in rows)
        for k, val in rows:
            print(f"{k:<{width}}  {val}" if k or val else "")
        if ops is not None:
            print("\n" + breakdown_table(ops))
        if not prof:
            print("\n(times: datasheet roofline, a lower bound; pass --profile for calibrated predictions)")
        else:
            from .profile import describe
            print(f"\n(times: profile {describe(prof)})")
    return 0


def _scalar(x):
    a = x.ravel()[0] if hasattr(x, "ravel") else x
    if hasattr(a, "item"):
        a = a.item()
    return a


def _csv_cell(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    if v is None:
        return ""
    s = str(v)
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\n\r') else s


# ------------------------------------------------------------------------------------------------ sweep
def cmd_sweep(args) -> int:
    from . import Workload, load_hardware, predict

    models = _models(args, sweep=True)
    hws = [load_hardware(h.strip()) for h in args.hardware.split(",")]
    from .policies import alternatives, stored_format
    policies = alternatives(args.policy)
    seqs = np.array(parse_values(args.seq, "--seq"), dtype=np.int64)
    gens = np.array(parse_values(args.gen, "--gen"), dtype=np.int64)
    batches = np.array(parse_values(args.batch, "--batch"), dtype=np.int64)
    tps = parse_values(args.tp, "--tp")
    pps = parse_values(args.pp, "--pp")
    shared = parse_values(args.shared_prefix, "--shared-prefix")
    if len(shared) != 1:
        raise CliError("--shared-prefix takes one value in a sweep")
    check_points(len(seqs) * len(gens) * len(batches), "the --seq x --gen x --batch grid", MAX_GRID)
    check_points(len(models) * len(hws) * len(policies) * len(tps) * len(pps), "models x hardware x policies x "
                 "parallelism", MAX_CASES)
    check_points(len(models) * len(hws) * len(policies) * len(tps) * len(pps) * len(seqs) * len(gens) * len(batches),
                 "this sweep")
    prof = _profile(args)
    engine = _engine(args)
    # An outer-product grid by broadcasting: per-sequence work is computed once per (seq, gen), not per batch.
    S, G, B = seqs[:, None, None], gens[None, :, None], batches[None, None, :]
    flat = [a.ravel() for a in np.meshgrid(seqs, gens, batches, indexing="ij")]
    header = ["model", "hardware", "policy", "engine", "seq", "gen", "batch", "tp", "pp", "kv_dtype", "kv_stored",
              *SWEEP_KEYS]
    from contextlib import nullcontext
    with output(args.out) if args.out else nullcontext(sys.stdout) as sink:
        sink.write(",".join(header) + "\n")
        rows = 0
        noted: set[str] = set()
        for model in models:
            for hw in hws:
                for pol in policies:
                    for tp in tps:
                        for pp in pps:
                            wl = Workload(prompt=S, gen=G, batch=B, tp=tp, pp=pp, kv_dtype=args.kv_dtype,
                                          state_dtype=args.state_dtype,
                                          weight_dtype=args.weight_dtype, quadrature=args.quadrature,
                                          shared_prefix=shared[0])
                            pred = predict(model, hw, pol, wl, prof, engine)
                            for n in pred.notes:
                                if n not in noted:
                                    noted.add(n)
                                    print(f"note: {n}", file=sys.stderr)
                            cols = pred.columns()
                            prefix = ",".join(_csv_cell(x) for x in (model.name, hw.name, pol.spec(), engine.label))
                            prefix = prefix.replace("%", "%%")  # the prefix is part of a %-format
                            kv_dtype = pred._engine.cost.kv_dtype
                            stored = _csv_cell(stored_format(pol, kv_dtype)).replace("%", "%%")
                            rows += _write_block(sink, prefix, *flat, tp, pp, f"{kv_dtype},{stored}", cols)
    if args.out:
        print(f"wrote {rows:,} rows to {args.out}", file=sys.stderr)
    return 0


def _write_block(sink, prefix, S, G, B, tp, pp, kv_dtype, cols) -> int:
    """Format a block of rows with one %-format per row: about a microsecond per field. Decode figures of rows
    with gen = 1 (no decode step) are left empty."""
    from .predict import DECODE_KEYS

    fmt_parts = [prefix, "%d", "%d", "%d", str(tp), str(pp), kv_dtype]
    data = [S, G, B]
    for k in SWEEP_KEYS:
        a = cols[k]
        if k in DECODE_KEYS and np.any(G <= 1):
            cell = np.char.mod("%.9g", a) if a.dtype.kind == "f" else a.astype(str)
            fmt_parts.append("%s")
            data.append(np.where(G > 1, cell, ""))
        elif a.dtype.kind == "b":
            fmt_parts.append("%s")
            data.append(np.where(a, "true", "false"))
        elif a.dtype.kind in "iu":
            fmt_parts.append("%d")
            data.append(a)
        elif a.dtype.kind == "f" and not np.all(np.isfinite(a)):  # unbounded: an empty cell, never inf or nan
            fmt_parts.append("%s")
            data.append(np.array([f"{x:.9g}" if math.isfinite(x) else "" for x in a.tolist()], dtype=object))
        elif a.dtype.kind == "f":
            fmt_parts.append("%.9g")
            data.append(a)
        else:
            fmt_parts.append("%s")
            data.append(a)
    fmt = ",".join(fmt_parts) + "\n"
    lists = [d.tolist() for d in data]
    n = len(lists[0])
    chunk = 65536
    for start in range(0, n, chunk):
        sink.write("".join(fmt % row for row in zip(*(l[start:start + chunk] for l in lists))))
    return n


# ------------------------------------------------------------------------------------------------ check
CHECK_COLUMNS = ("label", "claim", "claimed", "verdict", "bound", "margin")


def _check_value(x, kind: str) -> str:
    from .units import fmt_bytes, fmt_count, fmt_seconds

    if x is None:
        return ""
    if kind == "bytes":
        return fmt_bytes(x)
    if kind == "seconds":
        return fmt_seconds(x)
    if kind == "rate":
        return f"{x:,.1f} tok/s"
    if kind == "ratio":
        return f"{x:.3g}x"
    if kind == "fraction":
        return f"{x:.1%}"
    if kind == "count":
        return fmt_count(x)
    return f"{x:g}"


def _check_cells(v) -> list[str]:
    claimed = v.raw if v.claim == v.column or not v.column else f"{v.raw} ({v.column})"
    margin = "" if v.margin is None else f"{v.margin:+.1%}"
    return [v.label, v.claim, claimed, v.verdict, _check_value(v.bound, v.kind), margin]


def cmd_check(args) -> int:
    from .check import VERDICTS, check, exit_code, read
    from .profile import describe

    try:
        tol = float(args.tolerance)
    except ValueError:
        raise CliError(f"--tolerance: cannot read {args.tolerance!r} as a number") from None
    if not (0 <= tol < 1):
        raise CliError(f"--tolerance must be a fraction in [0, 1), got {args.tolerance}")
    prof = _profile(args)
    verdicts = check(read(args.table), prof, tol)
    against = (f"profile {describe(prof)} (its predictions less its worst held-out error: faster is inconsistent; "
               "faster than the datasheet floor, impossible)" if prof else
               "the datasheet roofline at efficiency 1 (lower bounds on time, upper bounds on throughput)")
    if args.format == "json":
        print(json.dumps([v.to_dict() for v in verdicts], indent=2, allow_nan=False))
    elif args.format == "csv":
        import csv
        extra = list(dict.fromkeys(k for v in verdicts for k in v.extra))
        keys = ["label", "claim", "column", "raw", "claimed", "verdict", "bound", "relation", "margin", "condition",
                "explanation"]
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(keys + extra)
        for v in verdicts:
            d = v.to_dict()
            w.writerow([_csv_value(d[k]) for k in keys] + [v.extra.get(k, "") for k in extra])
    else:
        md = args.format == "markdown"
        rows = [_check_cells(v) for v in verdicts]
        if md:
            print(f"Checked against {against}, tolerance {tol:g}.\n")
            print("| " + " | ".join(CHECK_COLUMNS + ("why",)) + " |")
            print("|" + "---|" * (len(CHECK_COLUMNS) + 1))
            for v, cells in zip(verdicts, rows):
                why = v.explanation + (f" ({v.condition})" if v.condition else "")
                print("| " + " | ".join(c.replace("|", "\\|") for c in cells + [why]) + " |")
        else:
            widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(CHECK_COLUMNS)]
            print("  ".join(h.ljust(w) for h, w in zip(CHECK_COLUMNS, widths)).rstrip())
            for v, cells in zip(verdicts, rows):
                print("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
                if v.condition:
                    print(f"    {v.condition}")
                print(f"    {v.explanation}")
                for k, val in v.extra.items():
                    if val:
                        print(f"    {k}: {val}")
            print(f"\n(checked against {against}; tolerance {tol:g})")
        counts = {k: sum(v.verdict == k for v in verdicts) for k in VERDICTS}
        print(("\n" if md else "") + ", ".join(f"{n} {k}" for k, n in counts.items() if n))
    return exit_code(verdicts)


def _csv_value(x) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return repr(x)
    return str(x)


# --------------------------------------------------------------------------------------------- simulate
SIM_TABLE = (  # (column, summary key, scale, format)
    ("req/s", "throughput_requests_per_s", 1, "{:.3g}"), ("tok/s", "throughput_tokens_per_s", 1, "{:,.0f}"),
    ("goodput", "goodput_requests_per_s", 1, "{:.3g}"),
    ("TTFT p50", "ttft_p50_s", 1e3, "{:,.1f} ms"), ("TTFT p99", "ttft_p99_s", 1e3, "{:,.1f} ms"),
    ("TPOT p50", "tpot_p50_s", 1e3, "{:,.2f} ms"), ("TPOT p99", "tpot_p99_s", 1e3, "{:,.2f} ms"),
    ("ITL p99", "itl_p99_s", 1e3, "{:,.2f} ms"), ("E2E p99", "e2e_p99_s", 1, "{:,.2f} s"),
    ("preempt", "preemptions", 1, "{:,}"), ("pool use", "pool_utilisation_mean", 100, "{:.0f}%"),
    ("max run", "running_max", 1, "{:,}"))


def _positive_float(raw, flag: str) -> float | None:
    if raw is None:
        return None
    try:
        v = float(raw)
    except ValueError:
        raise CliError(f"{flag}: cannot read {raw!r} as a number") from None
    if not math.isfinite(v) or v <= 0:
        raise CliError(f"{flag} must be a finite number > 0, got {raw}")
    return v


def _progress(total: int, desc: str):
    """A tqdm bar on a terminal; nothing in logs and pipes."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, unit="req" if "sweep" not in desc else "run", leave=False, file=sys.stderr)

    def update(done=None):
        bar.update((done - bar.n) if done is not None else 1)
    return update, bar.close


def cmd_simulate(args) -> int:
    from . import load_hardware
    from .policies import alternatives
    from . import sim

    model = _models(args, sweep=False)[0]
    hw = load_hardware(args.hardware)
    policies = alternatives(args.policy)
    engine = _engine(args)
    prof = _profile(args)
    if args.series_points < 1:
        raise CliError("--series-points must be at least 1")
    rate = _positive_float(args.rate, "--rate")
    slo_ttft, slo_tpot = _positive_float(args.slo_ttft, "--slo-ttft"), _positive_float(args.slo_tpot, "--slo-tpot")
    n = _one_int(args.requests, "--requests")
    concurrency = _one_int(args.concurrency, "--concurrency") if args.concurrency is not None else 0
    if args.concurrency is not None and concurrency < 1:
        raise CliError("--concurrency must be at least 1")
    modes = [m for m, on in (("--rate", rate is not None), ("--concurrency", args.concurrency is not None),
                             ("--trace", args.trace), ("--sweep-rate", args.sweep_rate)) if on]
    if args.sweep_rate and len(modes) > 1 and "--trace" not in modes:
        raise CliError(f"--sweep-rate chooses the rate itself; drop {' and '.join(m for m in modes if m != '--sweep-rate')}")
    if not args.sweep_rate and len(modes) != 1:
        raise CliError("give one of --rate, --concurrency, --trace or --sweep-rate" +
                       (f", not {' and '.join(modes)}" if modes else ""))
    if args.trace:
        reqs = sim.read_trace(args.trace)
    else:
        lengths = (sim.parse_lengths(args.prompt_len, "--prompt-len", "prompt"),
                   sim.parse_lengths(args.output_len, "--output-len", "output"))
        reqs = sim.synthetic(n, *lengths, seed=args.seed, rate=rate or (1.0 if args.sweep_rate else None),
                             concurrency=concurrency)
    knobs = dict(kv_dtype=args.kv_dtype, state_dtype=args.state_dtype, weight_dtype=args.weight_dtype,
                 tp=_one_int(args.tp, "--tp"),
                 pp=_one_int(args.pp, "--pp"), preemption=args.preemption, longest_prompt=int(reqs.prompt.max()))
    results = []
    for pol in policies:
        simulator = sim.build(model, hw, pol, engine, prof, **knobs)
        if args.sweep_rate:
            gaps = np.random.default_rng(args.seed).standard_exponential(len(reqs))
            update, close = _progress(30, f"sweep {pol.spec()}")
            try:
                best, res = sim.sweep_rate(simulator, reqs, gaps, slo_ttft, slo_tpot, progress=update)
            finally:
                close()
        else:
            update, close = _progress(len(reqs), f"simulate {pol.spec()}")
            try:
                res, best = simulator.run(reqs, update), None
            finally:
                close()
        summ = sim.summary(res, slo_ttft, slo_tpot) if res is not None else None
        results.append({"policy": pol.spec(), "policy_name": pol.name, "max_rate_req_per_s": best, "summary": summ,
                        "series": sim.downsample(res, args.series_points) if res is not None else None,
                        "_res": res, "pool_bytes": simulator.pool})
    inputs = {"model": model.name, "hardware": hw.name, "engine": engine.label,
              "max_num_batched_tokens": engine.max_num_batched_tokens, "max_num_seqs": engine.max_num_seqs,
              "block_size": engine.block_size, "gpu_memory_utilization": engine.memory_fraction,
              "profile": prof.name if prof else "datasheet", "preemption": args.preemption,
              "requests": len(reqs), "rate": rate, "concurrency": concurrency or None, "trace": args.trace,
              "prompt_len": None if args.trace else args.prompt_len,
              "output_len": None if args.trace else args.output_len, "seed": args.seed,
              "slo_ttft_s": slo_ttft, "slo_tpot_s": slo_tpot, "sweep_rate": bool(args.sweep_rate)}
    text = _format_simulation(args.format, inputs, results)
    if args.series:
        _write_text(args.series, _series_csv(results))
    if args.out:
        _write_text(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _format_simulation(fmt: str, inputs: dict, results: list[dict]) -> str:
    if fmt == "json":
        clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
        for r in clean:
            r["pool_bytes"] = None if not math.isfinite(r["pool_bytes"]) else int(r["pool_bytes"])
        return json.dumps({**inputs, "results": clean}, indent=2) + "\n"
    if fmt == "csv":
        keys = next((list(r["summary"]) for r in results if r["summary"]), [])  # every summary has the same keys
        head = ["model", "hardware", "engine", "profile", "policy", "policy_name", "max_rate_req_per_s"] + keys
        lines = [",".join(head)]
        for r in results:
            row = {**inputs, **(r["summary"] or {}), **{k: r[k] for k in ("policy", "policy_name", "max_rate_req_per_s")}}
            lines.append(",".join(_csv_cell(row.get(k)) for k in head))
        return "\n".join(lines) + "\n"
    load = ("sweep: highest Poisson rate meeting P99 SLOs" if inputs["sweep_rate"] else
            f"rate {inputs['rate']:g} req/s" if inputs["rate"] else
            f"closed loop, concurrency {inputs['concurrency']}" if inputs["concurrency"] else f"trace {inputs['trace']}")
    slo = ", ".join(f"{k} <= {v * 1e3:g} ms" for k, v in (("TTFT", inputs["slo_ttft_s"]), ("TPOT", inputs["slo_tpot_s"]))
                    if v is not None) or "none"
    out = [f"{inputs['model']} on {inputs['hardware']}, {inputs['engine']} (budget "
           f"{inputs['max_num_batched_tokens'] or 'unlimited'} tokens/step, max {inputs['max_num_seqs'] or 'pool-bound'} "
           f"seqs, {inputs['block_size']}-token blocks), profile {inputs['profile']}",
           f"{inputs['requests']:,} requests, {load}; preemption by {inputs['preemption']}; SLO {slo}", ""]
    cols = (["policy"] + (["max req/s"] if inputs["sweep_rate"] else []) + ["KV pool"] + [c for c, *_ in SIM_TABLE])
    rows = []
    for r in results:
        s = r["summary"] or {}
        pool = "unbounded" if not math.isfinite(r["pool_bytes"]) else f"{r['pool_bytes'] / 2**30:.1f} GiB"
        cells = [r["policy_name"]] + ([f"{r['max_rate_req_per_s']:.3g}"] if inputs["sweep_rate"] else []) + [pool]
        for _, key, scale, f in SIM_TABLE:
            v = s.get(key)
            cells.append("-" if v is None else f.format(v * scale if scale != 1 else v))
        rows.append(cells)
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths))))
    for row in rows:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    if inputs["sweep_rate"]:
        out.append("\n(latencies, throughput and goodput at each policy's highest rate)")
    return "\n".join(out) + "\n"


def _series_csv(results: list[dict]) -> str:
    lines = ["policy,t_s,step_s,running,waiting,pool_used_bytes,preemptions"]
    for r in results:
        s = r["series"]
        if not s:
            continue
        pol = _csv_cell(r["policy"])
        for row in zip(s["t_s"], s["step_s"], s["running"], s["waiting"], s["pool_used_bytes"], s["preemptions"]):
            lines.append(f"{pol},{row[0]!r},{row[1]!r},{row[2]},{row[3]},{row[4]},{row[5]}")
    return "\n".join(lines) + "\n"


def _write_text(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file renamed over it, and only over a regular file."""
    from .atomic import replacing

    target = Path(path)
    if target.exists() and not target.is_file():
        raise CliError(f"{path} exists and is not a regular file; not writing over it")
    if not target.parent.is_dir():
        raise CliError(f"folder {target.parent} does not exist")
    with replacing(target) as tmp:
        tmp.write_text(text)


def _add_simulate(sub):
    sm = sub.add_parser("simulate", help="simulate serving: continuous batching over the KV pool, latency "
                                         "percentiles, goodput, the highest rate meeting SLOs per policy")
    _add_model_args(sm, sweep=False)
    _add_hardware(sm, sweep=False)
    _add_policy_profile(sm, sweep=True)
    g = sm.add_argument_group("deployment")
    _add_kv_dtype(g)
    g.add_argument("--tp", default="1", metavar="N", help="tensor-parallel degree (default 1)")
    g.add_argument("--pp", default="1", metavar="N", help="pipeline-parallel degree (default 1)")
    _add_engine_args(sm, "vllm", "vllm (default), sglang, trtllm or a versioned preset (continuous batching)")
    sm.add_argument("--preemption", default="recompute", choices=("recompute", "swap"),
                    help="when the pool runs out: drop the newest request's KV and recompute it (vLLM's default), "
                         "or swap it to host memory over the host link")
    w = sm.add_argument_group("requests (one of --rate, --concurrency, --trace, --sweep-rate)")
    w.add_argument("--rate", default=None, help="Poisson arrivals per second")
    w.add_argument("--concurrency", default=None, metavar="N", help="closed loop: N requests in flight")
    w.add_argument("--trace", default=None, metavar="CSV", help="CSV with arrival_s, prompt_tokens, output_tokens")
    w.add_argument("--sweep-rate", action="store_true",
                   help="find, for each policy, the highest Poisson rate whose P99 TTFT and TPOT meet the SLOs")
    w.add_argument("--requests", default="1000", metavar="N", help="requests to simulate (default 1000)")
    w.add_argument("--prompt-len", default="1024", metavar="DIST",
                   help="N | uniform:LO..HI | lognormal:median=M,sigma=S | lognormal:fit=TRACE.csv (default 1024)")
    w.add_argument("--output-len", default="256", metavar="DIST", help="generated tokens, same forms (default 256)")
    w.add_argument("--seed", type=int, default=0, help="random seed of arrivals and lengths (default 0)")
    w.add_argument("--slo-ttft", default=None, metavar="S", help="TTFT objective in seconds (goodput, sweep)")
    w.add_argument("--slo-tpot", default=None, metavar="S", help="TPOT objective in seconds (goodput, sweep)")
    o = sm.add_argument_group("output")
    o.add_argument("--format", choices=("table", "json", "csv"), default="table")
    o.add_argument("--out", default=None, help="write the output here (atomically) instead of stdout")
    o.add_argument("--series", default=None, metavar="CSV",
                   help="write the per-step time series (running, waiting, pool bytes, preemptions) here")
    o.add_argument("--series-points", type=int, default=2000, help="time-series points kept per policy")


# ------------------------------------------------------------------------------------------------- list
def cmd_list(args) -> int:
    from .presets import hardware_names, load_hardware, load_model, model_entry, model_names
    from .units import fmt_bytes, fmt_count

    if args.what == "models":
        for n in model_names():
            m = load_model(n)
            kinds = sorted({type(l.mixer).__name__ + ("(window)" if getattr(l.mixer, "window", 0) else "")
                            for l in m.layers})
            print(f"{n:18s} {fmt_count(m.n_params()):>8s} params  {m.weight_dtype:4s}  {m.n_layers:3d} layers  "
                  f"{', '.join(kinds):28s}  {model_entry(n).get('display', '')}")
    elif args.what == "engines":
        from .presets import engine_names, load_engine
        for n in engine_names():
            e = load_engine(n)
            chunk = f"{e.max_num_batched_tokens:,} tokens/pass" if e.chunked else "whole prompt"
            seqs = f", at most {e.max_num_seqs:,} requests per step" if e.max_num_seqs else ""
            seqs += ", admits a request when its whole input fits" if e.admit_full_input else ""
            print(f"{n:14s} {e.display}\n    memory {e.memory_fraction:g} ({e.fraction_of}), {e.block_size}-token "
                  f"blocks, {chunk}, {e.batching} batching{seqs}")
            for knob, src in e.sources.items():
                print(f"    {knob}: {src}")
    elif args.what == "profiles":
        from .profile import describe, load_profile, shipped_profiles
        for n, path in shipped_profiles().items():
            prof = load_profile(path)
            print(f"{n:20s} {prof.meta.get('hardware', ''):12s} {describe(prof)}")
    elif args.what == "hardware":
        for n in hardware_names():
            h = load_hardware(n)
            print(f"{n:14s} {h.display:55s} {fmt_bytes(h.memory_bytes):>10s}  {h.memory_bandwidth / 1e9:7.0f} GB/s"
                  f"  {h.peak_flops('bf16') / 1e12:7.1f} TFLOP/s bf16 (dense)")
    else:
        from .policies import describe
        support = _harness_support()
        for d in describe():
            alias = f" (= {d['family']} with {', '.join(f'{k}={v}' for k, v in d['preset'].items())})" \
                if d["preset"] else ""
            print(f"{d['name']}{alias}  [{d['role']}]\n    {d['summary']}")
            for prm in d["params"]:
                print(f"    {prm['name']} = {prm['default']}: {prm['help']}")
            if support is not None:
                print(f"    measured/: {support(d['name'])}")
    return 0


def _harness_support():
    try:
        from measured.support import describe_support
    except ImportError:
        return None
    return describe_support


# -------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kvsim", description="What will this KV-cache choice cost me?")
    p.add_argument("--version", action="version", version=f"kvsim {_version()}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    pr = sub.add_parser("predict", help="predict memory, bytes, FLOP and latency for one configuration",
                        description="Predict memory, bytes, FLOP and latency for one configuration.",
                        epilog="Numbers: one value each (1024, 1e6); lists and ranges (a..b*k, a..b+k) are for "
                               "kvsim sweep (kvsim sweep --help).\n" + POLICY_HELP)
    _add_common(pr, sweep=False)
    pr.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    pr.add_argument("--breakdown", action="store_true",
                    help="also show each operation class per phase: FLOP, bytes, intensity, bound, time")
    sw = sub.add_parser("sweep", help="CSV of predictions over lists and ranges of any numeric flag",
                        description="CSV of predictions over every combination of the values given.",
                        epilog=RANGE_HELP + "\n" + POLICY_HELP)
    _add_common(sw, sweep=True)
    sw.add_argument("--out", default=None, help="write the CSV here (atomically) instead of stdout")
    ck = sub.add_parser("check", help="audit a CSV table of published claims against physics (issue 13)")
    ck.add_argument("table", help="claim table: a CSV file, or - for stdin (README: 'Checking claims')")
    ck.add_argument("--format", choices=("table", "markdown", "json", "csv"), default="table")
    ck.add_argument("--profile", default=None, help="judge times against a calibrated profile (a JSON path or a "
                                                    "shipped name) instead of the datasheet roofline")
    ck.add_argument("--tolerance", default="0.02", metavar="FRACTION",
                    help="relative slack before a claim beats a bound or differs from an exact value, on top of the "
                         "rounding of the figure as printed (default 0.02)")
    _add_simulate(sub)
    ls = sub.add_parser("list", help="list presets and policies")
    ls.add_argument("what", nargs="?", choices=LISTS, help=", ".join(LISTS))
    for name, _, helptext in EXTERNAL:
        sub.add_parser(name, help=helptext)  # listed in --help; their own parsers take the arguments
    return p


POLICY_HELP = ("Policies: name or name:key=value,... (kvsim list policies); compose with '+' or by repeating "
               "--policy: --policy 'h2o:budget=512 + kivi:bits=2'.")
LISTS = ("models", "hardware", "policies", "engines", "profiles")
# the pyproject extra each external command needs
EXTRAS = {"measure": "measure", "quality": "measure", "validate": "measure", "probe": "measure",
          "calibrate": "calibrate", "app": "app"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("kvsim")
    except PackageNotFoundError:
        return "unknown (not installed)"


# Subcommands implemented outside the numpy-only core, imported only when used.
EXTERNAL = (
    ("measure", "measured.cli", "run policies on real transformers models; CSV of measured bytes and latency"),
    ("quality", "measured.cli", "perplexity and passkey accuracy with a compressed cache (real weights)"),
    ("validate", "measured.cli", "check predicted == measured cache bytes for every policy"),
    ("probe", "calibrate.cli", "micro-benchmark this device into a hardware profile"),
    ("calibrate", "calibrate.cli", "fit efficiency parameters to measurements; held-out error"),
    ("app", "app.launch", "open the Streamlit what-if explorer"),
)


def main(argv: list[str] | None = None) -> int:
    from .errors import KvsimError

    argv = sys.argv[1:] if argv is None else argv
    terminate_cleanly()
    try:
        external = {n: m for n, m, _ in EXTERNAL}
        if argv and argv[0] in external:
            import importlib
            try:
                mod = importlib.import_module(external[argv[0]])
            except ImportError as e:
                extra = EXTRAS.get(argv[0], "all")
                raise CliError(f"`kvsim {argv[0]}` needs the {extra!r} extra ({e.name} is missing): "
                               f"pip install -e '.[{extra}]'") from None
            return mod.main(argv[0], argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.cmd is None:  # bare `kvsim`: what it can do, not an error
            parser.print_help()
            return 0
        if args.cmd == "list" and args.what is None:
            print("kvsim list " + " | ".join(LISTS) + "   (e.g. kvsim list models)")
            return 0
        return {"predict": cmd_predict, "sweep": cmd_sweep, "check": cmd_check, "simulate": cmd_simulate,
                "list": cmd_list}[args.cmd](args)
    except KvsimError as e:
        print(f"kvsim: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `kvsim sweep | head`: the reader has what it wanted
        _silence_stdout()
        return 0
    except MemoryError:
        print("kvsim: error: out of memory; reduce the sweep or the model", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise BrokenPipeError again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
