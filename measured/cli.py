"""`kvsim measure`, `kvsim quality`, `kvsim validate` (dispatched from kvsim.cli, which turns KvsimError and
argument errors into one line on stderr and exit status 2)."""

from __future__ import annotations

import sys
from pathlib import Path

from kvsim.cli import _Parser, parse_values
from kvsim.cliargs import RANGE_HELP, whole
from kvsim.errors import KvsimError
from kvsim.policies import alternatives, label

from .support import check


def _policies(specs, model_type: str, device: str):
    pols = alternatives(specs)
    for pol in pols:
        why = check([p.name for p in pol.parts], model_type, device)
        if why:
            raise KvsimError(why)
    return pols


def _threads(n: int | None):
    if n:
        import torch
        torch.set_num_threads(n)


def _load(model: str, weights: str, device: str, dtype: str):
    from .models import REAL, build_random, hf_config, load_real

    if weights == "real":
        if model not in REAL:
            raise KvsimError(f"real weights exist only for {', '.join(REAL)}; use --weights random for {model}")
        m, tok = load_real(model, device, dtype)
        return m, tok
    cfg = hf_config(model)
    why = check([], cfg.get("model_type", ""), device)
    if why:
        raise KvsimError(why)
    return build_random(model, device, dtype), None


def cmd_measure(argv) -> int:
    p = _Parser(prog="kvsim measure", description="measure policies on a transformers model; CSV rows",
                epilog=RANGE_HELP)
    p.add_argument("--model", required=True, help="preset name or config.json path")
    p.add_argument("--weights", choices=("random", "real"), default="random",
                   help="random: exact shapes, for memory and latency; real: smollm2-135m or gemma-3-270m")
    p.add_argument("--policy", action="append", default=[], help="policy spec ('a + b' composes); ';' separates "
                                                                 "alternatives (default: full)")
    p.add_argument("--seq", default="512", help="prompt lengths (list or range)")
    p.add_argument("--gen", type=whole("--gen", 1, 1 << 20), default=32, help="generated tokens per request")
    p.add_argument("--batch", default="1", help="batch sizes (list or range)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", default=None, help="fp32 (default on cpu) or bf16/fp16 (default bf16 on cuda)")
    p.add_argument("--repeats", type=whole("--repeats", 1, 1000), default=3, help="timed runs per point (median)")
    p.add_argument("--warmup", type=whole("--warmup", 0, 100), default=1, help="untimed runs before them")
    p.add_argument("--threads", type=whole("--threads", 1, 4096), default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", required=True, help="CSV file; rows are appended as they complete")
    p.add_argument("--resume", action="store_true", help="continue an existing --out, skipping finished points")
    p.add_argument("--estimate", metavar="PROFILE", default=None,
                   help="measure nothing: print this sweep's predicted wall time with a calibrated profile (a path "
                        "or a shipped name) and exit")
    a = p.parse_args(argv)
    dtype = a.dtype or ("fp32" if a.device == "cpu" else "bf16")
    if a.estimate:
        return _estimate(a, dtype)
    _check_device(a.device)
    _threads(a.threads)
    from .models import hf_config
    model_type = hf_config(a.model).get("model_type", "") if a.weights == "random" else "llama"
    pols = _policies(a.policy, model_type, a.device)
    seqs, batches = parse_values(a.seq, "--seq", lo=1), parse_values(a.batch, "--batch", lo=1)
    model, _ = _load(a.model, a.weights, a.device, dtype)
    from .runner import sweep
    n = sweep(model, a.model, a.weights, pols, seqs, a.gen, batches, a.device, dtype, a.repeats, Path(a.out),
              a.resume, a.warmup, report=lambda s: print(s, file=sys.stderr))
    print(f"wrote {n} rows to {a.out}", file=sys.stderr)
    return 0


def _estimate(a, dtype: str) -> int:
    from kvsim import load_hardware, load_profile
    from kvsim.hf import from_hf_config

    from .models import hf_config
    from .runner import estimate
    cfg = hf_config(a.model)
    pols = _policies(a.policy, cfg.get("model_type", ""), a.device)
    seqs, batches = parse_values(a.seq, "--seq", lo=1), parse_values(a.batch, "--batch", lo=1)
    prof = load_profile(a.estimate)
    hw = prof.meta.get("hardware") or ("cpu" if a.device == "cpu" else None)
    if not hw:
        raise KvsimError(f"profile {a.estimate} names no hardware to predict {a.device} with")
    r = estimate(from_hf_config(cfg, name=a.model), pols, seqs, a.gen, batches, dtype, a.repeats, a.warmup, prof,
                 load_hardware(hw))
    print(f"estimate {a.model}: {r['points']} points, {r['seconds']:.0f} s ({r['seconds'] / 3600:.2f} h) with "
          f"profile {prof.name}")
    return 0


def _check_device(device: str) -> None:
    if device == "cpu":
        return
    import torch
    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise KvsimError(f"device {device!r} is not available here (cpu{', cuda' if torch.cuda.is_available() else ''})")


QUALITY_COLUMNS = ("model", "policy", "metric", "context", "continuation", "length", "depth", "key", "value",
                   "answer", "kv_cache_bytes", "kv_cache_bytes_predicted", "kv_shared_bytes", "status")


def cmd_quality(argv) -> int:
    from .provenance import PROVENANCE
    p = _Parser(prog="kvsim quality", description="perplexity and passkey accuracy with a compressed cache",
                epilog=RANGE_HELP)
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m or gemma-3-270m (real weights)")
    p.add_argument("--policy", action="append", default=[], help="policy spec ('a + b' composes); ';' separates "
                                                                 "alternatives (default: full)")
    p.add_argument("--context", type=whole("--context", 1, 1 << 20), default=512, help="perplexity: tokens prefilled")
    p.add_argument("--continuation", type=whole("--continuation", 1, 1 << 20), default=256,
                   help="perplexity: tokens decoded one at a time")
    p.add_argument("--passkey-lengths", default="512,1024,2048", help="passkey prompt lengths")
    p.add_argument("--depths", default="0.1,0.5,0.9", help="passkey depths (0 start .. 1 end)")
    p.add_argument("--keys", type=whole("--keys", 1, 1000), default=3, help="passkey keys per length and depth")
    p.add_argument("--skip-perplexity", action="store_true")
    p.add_argument("--skip-passkey", action="store_true")
    p.add_argument("--threads", type=whole("--threads", 1, 4096), default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", required=True, help="CSV file; rows are appended as they complete")
    p.add_argument("--resume", action="store_true", help="continue an existing --out, skipping finished points")
    a = p.parse_args(argv)
    _threads(a.threads)
    pols = _policies(a.policy, "llama" if a.model == "smollm2-135m" else "gemma3_text", "cpu")
    lengths = parse_values(a.passkey_lengths, "--passkey-lengths", lo=16, hi=1 << 20)
    depths = parse_values(a.depths, "--depths", integer=False, lo=0, hi=1)
    from .models import REAL
    if a.model not in REAL:
        raise KvsimError(f"real weights exist only for {', '.join(REAL)}; got --model {a.model}")
    pols = list({p.spec(): p for p in pols}.values())
    out = Path(a.out)
    from .runner import RowWriter, check_out, done_keys
    key = ("model", "policy", "metric", "context", "continuation", "length", "depth", "key")
    cols = QUALITY_COLUMNS + PROVENANCE
    check_out(out, cols, a.resume)  # an --out it must not touch is refused before the model loads
    skip = done_keys(out, key, cols, say=lambda t: print(t, file=sys.stderr)) if a.resume else set()
    model, tok = _load(a.model, "real", "cpu", "fp32")
    from kvsim import Workload, load_hardware, predict
    from kvsim.hf import from_hf_config

    from . import provenance
    from .progress import Progress
    from .quality import passkey, passkey_keys, perplexity
    from .text import corpus
    bos = REAL[a.model]["bos"]
    spec = from_hf_config(model.config.to_dict())
    hw = load_hardware("h100-sxm")
    writer = RowWriter(out, cols, a.resume)
    keys = passkey_keys(a.keys)
    per_policy = (0 if a.skip_perplexity else 1) + (0 if a.skip_passkey else len(lengths) * len(depths) * len(keys))
    progress = Progress(len(pols) * per_policy, "quality")
    prov = provenance.columns("cpu")
    text = corpus(60_000)
    from kvsim.policies.learned import Learned
    from .learned import scorer_state
    try:
        for pol in pols:
            scorers = scorer_state(model, tok, a.model, pol.select.hidden, bos) if isinstance(pol.select, Learned) \
                else None
            name = label(pol)
            if not a.skip_perplexity:
                row = dict(model=a.model, policy=pol.spec(), metric="perplexity", context=a.context,
                           continuation=a.continuation, length=a.context + a.continuation, depth="", key="")
                point = f"{name} perplexity {a.context}+{a.continuation}"
                if tuple(str(row[k]) for k in key) in skip:
                    progress.done(point, "done before (--resume)")
                else:
                    progress.current(point)
                    r = perplexity(model, tok, pol, text, a.context, a.continuation, bos, scorers)
                    # every continuation token is appended (teacher forcing): kvsim's gen counts the token the
                    # prefill yields plus one per decode step, so gen = continuation + 1
                    pred = predict(spec, hw, pol, Workload(prompt=a.context, gen=a.continuation + 1, kv_dtype="fp32"))
                    row.update(value=r["ppl"], kv_cache_bytes=r["kv_cache_bytes"], kv_shared_bytes=r["kv_shared_bytes"],
                               kv_cache_bytes_predicted=int(pred.kv_cache_bytes + pred.policy_state_bytes), status="ok",
                               **prov)
                    writer.write(row)
                    progress.done(point, f"perplexity {r['ppl']:.3f}, {r['kv_cache_bytes']:,} B")
            if a.skip_passkey:
                continue
            for length in lengths:
                for depth in depths:
                    for k in keys:
                        row = dict(model=a.model, policy=pol.spec(), metric="passkey", context="", continuation="",
                                   length=length, depth=depth, key=k)
                        point = f"{name} passkey length={length} depth={depth:g} key={k}"
                        if tuple(str(row[c]) for c in key) in skip:
                            progress.done(point, "done before (--resume)")
                            continue
                        progress.current(point)
                        r = passkey(model, tok, pol, length, depth, k, bos, scorer_state=scorers)
                        pred = predict(spec, hw, pol, Workload(prompt=r["prompt_tokens"], gen=8, kv_dtype="fp32"))
                        row.update(value=float(r["correct"]), answer=r["answer"][:40],
                                   kv_cache_bytes=r["kv_cache_bytes"],
                                   kv_cache_bytes_predicted=int(pred.kv_cache_bytes + pred.policy_state_bytes),
                                   status="ok", **prov)
                        writer.write(row)
                        progress.done(point, "correct" if r["correct"] else f"wrong ({r['answer'][:20]!r})")
    finally:
        progress.close()
        writer.close()
    from .summary import quality_table
    print(quality_table(out, a.model, [p.spec() for p in pols]))
    return 0


def cmd_validate(argv) -> int:
    from .validate import ARCHS, run
    p = _Parser(prog="kvsim validate", description="predicted vs physical cache bytes, every policy")
    p.add_argument("--arch", default=",".join(ARCHS), help=f"comma list of: {', '.join(ARCHS)}")
    p.add_argument("--prompt", type=whole("--prompt", 2, 4096), default=60, help="prompt tokens")
    p.add_argument("--gen", type=whole("--gen", 1, 1024), default=9, help="generated tokens")
    p.add_argument("--batch", type=whole("--batch", 1, 64), default=2, help="sequences")
    a = p.parse_args(argv)
    archs = [x.strip() for x in a.arch.split(",") if x.strip()]
    unknown = [x for x in archs if x not in ARCHS]
    if unknown:
        raise KvsimError(f"unknown --arch {', '.join(unknown)}; valid: {', '.join(ARCHS)}")
    from .progress import Progress
    from .validate import CASES, summary
    with Progress(len(archs) * len(CASES), "validate", unit="case") as progress:
        checks = run(archs, a.prompt, a.gen, a.batch, progress=progress)
    print("\n" + "\n".join(summary(checks)))
    return 1 if any(not c.ok for c in checks) else 0


def main(cmd: str, argv: list[str]) -> int:
    import logging
    import os
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:  # transformers' own "Loading weights" bar would interleave with kvsim's progress
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    return {"measure": cmd_measure, "quality": cmd_quality, "validate": cmd_validate}[cmd](argv)


__all__ = ["main"]
