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
from kvsim.errors import KvsimError
from kvsim.hf import from_hf_config

from . import provenance
from .loop import measure

KEY = ("model", "weights", "policy", "seq", "gen", "batch", "device", "dtype")
COLUMNS = KEY + (
    "status", "error", "repeats",
    "kv_cache_bytes", "kv_cache_bytes_predicted", "kv_shared_bytes", "kv_shared_bytes_predicted",
    "kv_cache_bytes_prefill", "ttft_s", "tpot_s", "tpot_first_s", "tpot_last_s", "decode_tokens_per_s",
    "ttft_spread", "tpot_spread", "policy_prefill_s", "policy_step_s",
    "peak_memory_bytes", "peak_prefill_bytes", "peak_decode_bytes",
) + provenance.PROVENANCE


def _repair(path: Path) -> None:
    """Drop a torn last line (a run killed mid-write leaves no newline at the end)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(cut)


def done_keys(path: Path, key=KEY) -> set[tuple]:
    if not path.exists():
        return set()
    _repair(path)
    with path.open(newline="") as f:
        return {tuple(row[k] for k in key) for row in csv.DictReader(f) if row.get("status")}


class RowWriter:
    """Append rows to a CSV (header on a new file), flushing each row to disk."""

    def __init__(self, path: Path, columns, resume: bool):
        self.path, self.columns = path, tuple(columns)
        if path.exists() and path.stat().st_size:
            if not resume:
                raise KvsimError(f"{path} exists; pass --resume to continue it or choose another --out")
            with path.open(newline="") as f:
                header = next(csv.reader(f), None)
            if tuple(header or ()) != self.columns:
                raise KvsimError(f"{path} has different columns; it was written by another kind of run")
            self.f = path.open("a", newline="")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.f = path.open("w", newline="")
            csv.writer(self.f).writerow(self.columns)
        self.w = csv.DictWriter(self.f, self.columns, extrasaction="raise")

    def write(self, row: dict) -> None:
        self.w.writerow({k: _cell(row.get(k)) for k in self.columns})
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
    return isinstance(e, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))) or \
        "out of memory" in str(e).lower()


def _spread(vals) -> float | None:
    vals = [v for v in vals if v == v]
    if len(vals) < 2:
        return None
    return (max(vals) - min(vals)) / (sorted(vals)[len(vals) // 2] or 1)


def sweep(model, model_name: str, weights: str, policies, seqs, gen: int, batches, device: str, dtype: str,
          repeats: int, out: Path, resume: bool, warmup: int = 1, report=print, seed: int = 0) -> int:
    """Measure every (policy, seq, batch) point; returns the number of rows written."""
    spec = from_hf_config(model.config.to_dict())
    hw = load_hardware("h100-sxm")  # bytes do not depend on the hardware
    skip = done_keys(out) if resume else set()
    writer = RowWriter(out, COLUMNS, resume)
    prov = provenance.columns(device)
    written = 0
    gen_ = torch.Generator().manual_seed(seed)
    try:
        for pol in policies:
            for seq in seqs:
                for batch in batches:
                    key = dict(model=model_name, weights=weights, policy=pol.spec(), seq=seq, gen=gen, batch=batch,
                               device=device, dtype=dtype)
                    if tuple(str(key[k]) for k in KEY) in skip:
                        continue
                    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen_).to(device)
                    pred = predict(spec, hw, pol, Workload(prompt=seq, gen=gen, batch=batch, kv_dtype=dtype))
                    prov["date"] = provenance.columns(device)["date"]  # when this point was measured
                    resident = int(pred.kv_cache_bytes + pred.policy_state_bytes)  # physical: cache and state
                    row = dict(key, repeats=repeats, kv_cache_bytes_predicted=resident,
                               kv_shared_bytes_predicted=int(pred.kv_shared_bytes), **prov)
                    try:
                        m = measure(model, pol, ids, gen, repeats=repeats, warmup=warmup)
                    except Exception as e:  # an out-of-memory point is data; anything else is a bug
                        if not _is_oom(e):
                            raise
                        row.update(status="oom", error=str(e).splitlines()[0][:200])
                    else:
                        last = m.requests[-1]
                        tpot = m.median("tpot_s")
                        row.update(
                            status="ok", kv_cache_bytes=last.bytes_end["sequence"],
                            kv_shared_bytes=last.bytes_end["shared"],
                            kv_cache_bytes_prefill=last.bytes_prefill["sequence"],
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
                    report(f"{model_name} {pol.spec()} seq={seq} batch={batch}: {row['status']}"
                           + (f" ttft={row['ttft_s']:.4f}s tpot={row['tpot_s']:.5f}s kv={row['kv_cache_bytes']}"
                              if row["status"] == "ok" else ""))
                    del ids
                    gc.collect()
                    if device.startswith("cuda"):
                        torch.cuda.empty_cache()
    finally:
        writer.close()
    return written
