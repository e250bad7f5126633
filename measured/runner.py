"""Measurement sweeps as tidy CSV rows: one (model, policy, seq, gen, batch) point per row, appended and
flushed as each completes, so an interrupted sweep loses nothing; --resume skips points already present
(a torn last line from a kill is dropped first). An out-of-memory point is a row with status 'oom'."""

from __future__ import annotations

import csv
import gc
import os
from pathlib import Path

import torch

from kvsim import Workload, load_hardware, predict
from kvsim.atomic import check_target
from kvsim.errors import KvsimError
from kvsim.hf import from_hf_config
from kvsim.model import LinearAttention, Mamba

from . import provenance
from kvsim.policies import label

from .decode import executor
from .loop import measure
from .progress import Progress

KEY = ("model", "weights", "policy", "seq", "gen", "batch", "device", "dtype")
COLUMNS = KEY + (
    "status", "error", "repeats", "executor",
    "kv_cache_bytes", "kv_cache_bytes_predicted", "kv_shared_bytes", "kv_shared_bytes_predicted",
    "kv_cache_bytes_prefill", "state_bytes", "state_bytes_predicted", "ttft_s", "tpot_s", "tpot_first_s", "tpot_last_s", "decode_tokens_per_s",
    "ttft_spread", "tpot_spread", "policy_prefill_s", "policy_step_s",
    "peak_memory_bytes", "peak_prefill_bytes", "peak_decode_bytes",
) + provenance.PROVENANCE
# CSVs written before recurrent state was measured: resumable, for models without recurrent layers
LEGACY_COLUMNS = tuple(c for c in COLUMNS if c not in ("state_bytes", "state_bytes_predicted"))


def _repair(path: Path) -> None:
    """Drop a torn last line (a run killed mid-write leaves no newline at the end)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(cut)


def _header(path: Path) -> tuple:
    with path.open(newline="") as f:
        return tuple(next(csv.reader(f), None) or ())


def _own(path: Path, columns, legacy=()) -> tuple:
    """The header of a file this kind of run wrote (`columns`, or an older `legacy` set); a file it did not write
    is refused before any of it is read or touched."""
    try:
        header = _header(path)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise KvsimError(f"{path} cannot be resumed: {getattr(e, 'strerror', None) or e}") from None
    if header != tuple(columns) and not (legacy and header == tuple(legacy)):
        raise KvsimError(f"{path} was not written by this kind of kvsim run (its columns differ); it is left as it "
                         "is: choose another --out")
    return header


def done_keys(path: Path, key=KEY, columns=COLUMNS, say=None, legacy=()) -> set[tuple]:
    """Points already in a CSV this kind of run wrote (a torn last line from a kill is dropped first). Rows
    measured at another kvsim commit are kept, and `say` is told how many."""
    if not path.exists() or not path.stat().st_size:
        return set()
    check_target(path, "--out", stream_ok=False)
    _own(path, columns, legacy)
    _repair(path)
    here = provenance.columns("cpu")["kvsim_commit"]
    with path.open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get("status")]
    other = sorted({r.get("kvsim_commit", "") for r in rows} - {here})
    if other and say is not None:
        n = sum(r.get("kvsim_commit", "") != here for r in rows)
        say(f"note: {n} of {len(rows)} rows in {path} were measured at kvsim commit {', '.join(other)[:80]}, "
            f"not {here}; they are kept, and new points are added")
    return {tuple(row[k] for k in key) for row in rows}


def check_out(path: Path, columns, resume: bool, legacy=()) -> tuple | None:
    """The header of an existing CSV of this kind to append to (None: a new file to create), or KvsimError,
    before any expensive work: a folder, a device, a file another run wrote, or an existing file without
    --resume."""
    check_target(path, "--out", stream_ok=False)
    if not (path.exists() and path.stat().st_size):
        return None
    if not resume:
        raise KvsimError(f"{path} exists; pass --resume to continue it or choose another --out")
    return _own(path, columns, legacy)


class RowWriter:
    """Append rows to a CSV (header on a new file), flushing each row to disk."""

    def __init__(self, path: Path, columns, resume: bool, legacy=()):
        self.path, self.columns = path, tuple(columns)
        header = check_out(path, self.columns, resume, legacy)
        if header is not None:
            self.columns = header  # an older file keeps its own columns
            self.f = path.open("a", newline="")
        else:
            self.f = path.open("w", newline="")
            csv.writer(self.f).writerow(self.columns)
        self.w = csv.DictWriter(self.f, self.columns, extrasaction="raise")

    def write(self, row: dict) -> None:
        self.w.writerow({k: _cell(row.get(k)) for k in self.columns})  # an older file's columns: the rest is left out
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self):
        self.f.close()


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


def _is_oom(e: BaseException) -> bool:
    # torch's CPU allocator raises RuntimeError("... DefaultCPUAllocator: can't allocate memory ...")
    text = str(e).lower()
    return isinstance(e, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))) or \
        "out of memory" in text or "can't allocate memory" in text


def _spread(vals) -> float | None:
    vals = [v for v in vals if v == v]
    if len(vals) < 2:
        return None
    return (max(vals) - min(vals)) / (sorted(vals)[len(vals) // 2] or 1)


def estimate(spec, policies, seqs, gen: int, batches, dtype: str, repeats: int, warmup: int, profile, hardware) -> dict:
    """Predicted wall time of a sweep, by kvsim's own cost model with `profile`: per point the warm-up requests
    (16-token prompts, 4 tokens: what `measure` runs) and `repeats` timed requests of TTFT + (gen - 1) x TPOT."""
    import numpy as np

    p, b = np.asarray(seqs)[:, None], np.asarray(batches)[None, :]
    total, points = 0.0, 0
    for pol in list({x.spec(): x for x in policies}.values()):
        t = 0.0
        for reps, prompt, g in ((repeats, p, gen), (warmup, np.minimum(p, 16), min(gen, 4))):
            if not reps:
                continue
            pr = predict(spec, hardware, pol, Workload(prompt=prompt, gen=g, batch=b, kv_dtype=dtype,
                                                       weight_dtype=dtype), profile)
            t = t + reps * (pr.ttft_s + (g - 1) * np.nan_to_num(pr.tpot_s))
        total += float(np.sum(t))
        points += p.size * b.size
    return {"points": points, "seconds": total}


def sweep(model, model_name: str, weights: str, policies, seqs, gen: int, batches, device: str, dtype: str,
          repeats: int, out: Path, resume: bool, warmup: int = 1, report=print, seed: int = 0) -> int:
    """Measure every (policy, seq, batch) point; returns the number of rows written."""
    spec = from_hf_config(model.config.to_dict())
    hw = load_hardware("h100-sxm")  # bytes do not depend on the hardware
    skip = done_keys(out, say=report, legacy=LEGACY_COLUMNS) if resume else set()
    writer = RowWriter(out, COLUMNS, resume, LEGACY_COLUMNS)
    if "state_bytes" not in writer.columns and any(isinstance(l.mixer, (Mamba, LinearAttention)) for l in spec.layers):
        writer.close()
        raise KvsimError(f"{out} has no state columns (it predates them); {model_name} keeps recurrent state: "
                         "choose another --out")
    prov = provenance.columns(device)
    written = 0
    gen_ = torch.Generator().manual_seed(seed)
    policies = list({p.spec(): p for p in policies}.values())  # a policy given twice is measured once
    progress = Progress(len(policies) * len(seqs) * len(batches), "measure")
    try:
        for pol in policies:
            for seq in seqs:
                for batch in batches:
                    key = dict(model=model_name, weights=weights, policy=pol.spec(), seq=seq, gen=gen, batch=batch,
                               device=device, dtype=dtype)
                    point = f"{model_name} {label(pol)} seq={seq} batch={batch}"
                    if tuple(str(key[k]) for k in KEY) in skip:
                        progress.done(point, "done before (--resume)")
                        continue
                    progress.current(point)
                    pred = predict(spec, hw, pol, Workload(prompt=seq, gen=gen, batch=batch, kv_dtype=dtype,
                                                           weight_dtype=dtype))
                    prov["date"] = provenance.columns(device)["date"]  # when this point was measured
                    resident = int(pred.kv_cache_bytes + pred.policy_state_bytes)  # physical: cache and state
                    row = dict(key, repeats=repeats, executor=executor(device), kv_cache_bytes_predicted=resident,
                               kv_shared_bytes_predicted=int(pred.kv_shared_bytes),
                               state_bytes_predicted=int(pred.state_bytes), **prov)
                    try:
                        ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen_).to(device)
                        m = measure(model, pol, ids, gen, repeats=repeats, warmup=warmup)
                    except Exception as e:  # an out-of-memory point is data; anything else is a bug
                        if not _is_oom(e):
                            raise
                        row.update(status="oom", error=(str(e).splitlines() or [type(e).__name__])[0][:200])
                    else:
                        last = m.requests[-1]
                        tpot = m.median("tpot_s")
                        row.update(
                            status="ok", kv_cache_bytes=last.bytes_end["sequence"],
                            kv_shared_bytes=last.bytes_end["shared"],
                            kv_cache_bytes_prefill=last.bytes_prefill["sequence"], state_bytes=last.bytes_end["state"],
                            ttft_s=m.median("ttft_s"), tpot_s=tpot,
                            tpot_first_s=m.median_of(lambda r: r.steps_s[0] if r.steps_s else float("nan")),
                            tpot_last_s=m.median_of(lambda r: r.steps_s[-1] if r.steps_s else float("nan")),
                            decode_tokens_per_s=batch / tpot if tpot == tpot and tpot > 0 else None,
                            ttft_spread=_spread([r.ttft_s for r in m.requests]),
                            tpot_spread=_spread([r.tpot_s for r in m.requests]),
                            policy_prefill_s=m.median("policy_prefill_s"), policy_step_s=m.median("policy_decode_s"),
                            peak_prefill_bytes=m.median("peak_prefill"), peak_decode_bytes=m.median("peak_decode"),
                        )
                        peaks = [row["peak_prefill_bytes"], row["peak_decode_bytes"]]
                        peaks = [p for p in peaks if p == p and p is not None]
                        row["peak_memory_bytes"] = max(peaks) if peaks else None
                        for k in ("peak_prefill_bytes", "peak_decode_bytes"):
                            if row[k] != row[k]:
                                row[k] = None
                    writer.write(row)
                    written += 1
                    progress.done(point, row["status"] + (
                        f" ttft={row['ttft_s']:.4f}s tpot={row['tpot_s']:.5f}s kv={row['kv_cache_bytes']}"
                        if row["status"] == "ok" else f" ({row['error']})"))
                    ids = None
                    gc.collect()
                    if device.startswith("cuda"):
                        torch.cuda.empty_cache()
    finally:
        progress.close()
        writer.close()
    return written
