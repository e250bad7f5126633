"""`kvsim measure`, `kvsim quality`, `kvsim validate` (dispatched from kvsim.cli, which turns KvsimError and
argument errors into one line on stderr and exit status 2)."""

from __future__ import annotations

import sys
from pathlib import Path

from kvsim.cli import _Parser, parse_values
from kvsim.errors import KvsimError
from kvsim.policies import alternatives

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
    p = _Parser(prog="kvsim measure", description="measure policies on a transformers model; CSV rows")
    p.add_argument("--model", required=True, help="preset name or config.json path")
    p.add_argument("--weights", choices=("random", "real"), default="random",
                   help="random: exact shapes, for memory and latency; real: smollm2-135m or gemma-3-270m")
    p.add_argument("--policy", action="append", default=[], help="policy spec; ';' separates alternatives")
    p.add_argument("--seq", default="512", help="prompt lengths (list or range)")
    p.add_argument("--gen", type=int, default=32, help="generated tokens per request")
    p.add_argument("--batch", default="1", help="batch sizes (list or range)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="fp32 (default on cpu) or bf16/fp16 (default bf16 on cuda)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", required=True, help="CSV file; rows are appended as they complete")
    p.add_argument("--resume", action="store_true", help="continue an existing --out, skipping finished points")
    a = p.parse_args(argv)
    if a.gen < 1 or a.repeats < 1:
        raise KvsimError("--gen and --repeats must be at least 1")
    dtype = a.dtype or ("fp32" if a.device == "cpu" else "bf16")
    _check_device(a.device)
    _threads(a.threads)
    from .models import hf_config
    model_type = hf_config(a.model).get("model_type", "") if a.weights == "random" else "llama"
    pols = _policies(a.policy, model_type, a.device)
    seqs, batches = parse_values(a.seq, "--seq"), parse_values(a.batch, "--batch")
    if min(seqs) < 1 or min(batches) < 1:
        raise KvsimError("--seq and --batch values must be at least 1")
    model, _ = _load(a.model, a.weights, a.device, dtype)
    from .runner import sweep
    n = sweep(model, a.model, a.weights, pols, seqs, a.gen, batches, a.device, dtype, a.repeats, Path(a.out),
              a.resume, a.warmup, report=lambda s: print(s, file=sys.stderr))
    print(f"wrote {n} rows to {a.out}", file=sys.stderr)
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
    p = _Parser(prog="kvsim quality", description="perplexity and passkey accuracy with a compressed cache")
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m or gemma-3-270m (real weights)")
    p.add_argument("--policy", action="append", default=[], help="policy spec; ';' separates alternatives")
    p.add_argument("--context", type=int, default=512, help="perplexity: tokens prefilled")
    p.add_argument("--continuation", type=int, default=256, help="perplexity: tokens decoded one at a time")
    p.add_argument("--passkey-lengths", default="512,1024,2048", help="passkey prompt lengths")
    p.add_argument("--depths", default="0.1,0.5,0.9", help="passkey depths (0 start .. 1 end)")
    p.add_argument("--keys", type=int, default=3, help="passkey keys per length and depth")
    p.add_argument("--skip-perplexity", action="store_true")
    p.add_argument("--skip-passkey", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args(argv)
    _threads(a.threads)
    pols = _policies(a.policy, "llama" if a.model == "smollm2-135m" else "gemma3_text", "cpu")
    lengths = parse_values(a.passkey_lengths, "--passkey-lengths")
    depths = parse_values(a.depths, "--depths", integer=False)
    model, tok = _load(a.model, "real", "cpu", "fp32")
    from kvsim import Workload, load_hardware, predict
    from kvsim.hf import from_hf_config

    from . import provenance
    from .models import REAL
    from .quality import passkey, passkey_keys, perplexity
    from .runner import RowWriter, done_keys
    from .text import corpus
    bos = REAL[a.model]["bos"]
    spec = from_hf_config(model.config.to_dict())
    hw = load_hardware("h100-sxm")
    out = Path(a.out)
    key = ("model", "policy", "metric", "context", "continuation", "length", "depth", "key")
    skip = done_keys(out, key) if a.resume else set()
    cols = QUALITY_COLUMNS + PROVENANCE
    writer = RowWriter(out, cols, a.resume)
    prov = provenance.columns("cpu")
    text = corpus(60_000)
    from kvsim.policies.learned import Learned
    from .learned import scorer_state
    try:
        for pol in pols:
            scorers = scorer_state(model, tok, a.model, pol.select.hidden, bos) if isinstance(pol.select, Learned) \
                else None
            if not a.skip_perplexity:
                row = dict(model=a.model, policy=pol.spec(), metric="perplexity", context=a.context,
                           continuation=a.continuation, length=a.context + a.continuation, depth="", key="")
                if tuple(str(row[k]) for k in key) not in skip:
                    r = perplexity(model, tok, pol, text, a.context, a.continuation, bos, scorers)
                    # every continuation token is appended (teacher forcing): kvsim's gen counts the token the
                    # prefill yields plus one per decode step, so gen = continuation + 1
                    pred = predict(spec, hw, pol, Workload(prompt=a.context, gen=a.continuation + 1, kv_dtype="fp32"))
                    row.update(value=r["ppl"], kv_cache_bytes=r["kv_cache_bytes"], kv_shared_bytes=r["kv_shared_bytes"],
                               kv_cache_bytes_predicted=int(pred.kv_cache_bytes + pred.policy_state_bytes), status="ok",
                               **prov)
                    writer.write(row)
                    print(f"{pol.spec()}: perplexity {r['ppl']:.3f}, {r['kv_cache_bytes']:,} B", file=sys.stderr)
            if a.skip_passkey:
                continue
            for length in lengths:
                for depth in depths:
                    for k in passkey_keys(a.keys):
                        row = dict(model=a.model, policy=pol.spec(), metric="passkey", context="", continuation="",
                                   length=length, depth=depth, key=k)
                        if tuple(str(row[c]) for c in key) in skip:
                            continue
                        r = passkey(model, tok, pol, length, depth, k, bos, scorer_state=scorers)
                        pred = predict(spec, hw, pol, Workload(prompt=r["prompt_tokens"], gen=8, kv_dtype="fp32"))
                        row.update(value=float(r["correct"]), answer=r["answer"][:40],
                                   kv_cache_bytes=r["kv_cache_bytes"],
                                   kv_cache_bytes_predicted=int(pred.kv_cache_bytes + pred.policy_state_bytes),
                                   status="ok", **prov)
                        writer.write(row)
            print(f"{pol.spec()}: passkey done", file=sys.stderr)
    finally:
        writer.close()
    return 0


def cmd_validate(argv) -> int:
    from .validate import ARCHS, run
    p = _Parser(prog="kvsim validate", description="predicted vs physical cache bytes, every policy")
    p.add_argument("--arch", default=",".join(ARCHS), help=f"comma list of: {', '.join(ARCHS)}")
    p.add_argument("--prompt", type=int, default=60)
    p.add_argument("--gen", type=int, default=9)
    p.add_argument("--batch", type=int, default=2)
    a = p.parse_args(argv)
    archs = [x.strip() for x in a.arch.split(",") if x.strip()]
    unknown = [x for x in archs if x not in ARCHS]
    if unknown:
        raise KvsimError(f"unknown --arch {', '.join(unknown)}; valid: {', '.join(ARCHS)}")
    if a.prompt < 2 or a.gen < 1 or a.batch < 1:
        raise KvsimError("--prompt must be at least 2, --gen and --batch at least 1")
    checks = run(archs, a.prompt, a.gen, a.batch)
    bad = [c for c in checks if not c.ok]
    print(f"\n{len(checks)} checks, {len(bad)} differences")
    return 1 if bad else 0


def main(cmd: str, argv: list[str]) -> int:
    import logging
    import os
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return {"measure": cmd_measure, "quality": cmd_quality, "validate": cmd_validate}[cmd](argv)


__all__ = ["main"]
