"""Measurement rows for calibration: read, checked, and grouped into configurations.

Refused with one-line errors: no file, an empty file, missing columns, no usable rows, NaN or non-positive
times in usable rows, and rows from more than one device (a profile describes one device).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kvsim.errors import KvsimError

# What a measurement can plausibly be: a row outside is a typo or a corrupted file, and one such row can drag a
# least-squares fit anywhere (a 1e12-token prompt, a 1e-300 s TTFT). (lo, hi, whole number)
PLAUSIBLE = {"seq": (1, 2**24, True), "gen": (1, 2**20, True), "batch": (1, 2**16, True),
             "ttft_s": (1e-7, 1e5, False), "tpot_s": (1e-7, 1e4, False)}
MAX_BYTES = 1 << 30
REQUIRED = ("model", "policy", "seq", "gen", "batch", "dtype", "device_name", "status", "ttft_s", "tpot_s")
# Rows written before the harness recorded its decode executor came from the first one: whole-cache torch.cat appends
# and KV heads expanded for grouped-query attention (measured/results/cpu/latency.csv).
LEGACY_EXECUTOR = "torch-v1"


def files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.csv") if _is_latency(q))
        elif p.is_file():
            out.append(p)
        elif p.exists():
            raise KvsimError(f"--data {p}: not a regular file or folder")
        else:
            raise KvsimError(f"--data {p}: no such file or folder")
    if not out:
        raise KvsimError("--data: no measurement CSV found")
    return out


def _is_latency(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open(errors="replace") as f:
        header = f.readline(1 << 16)
    return "tpot_s" in header and "ttft_s" in header


def load(paths: list[str]):
    import pandas as pd

    frames = []
    digest = hashlib.sha256()
    for path in files(paths):
        if path.stat().st_size > MAX_BYTES:
            raise KvsimError(f"{path}: larger than {MAX_BYTES >> 20} MiB")
        raw = path.read_bytes()
        digest.update(raw)
        if not raw.strip():
            raise KvsimError(f"{path}: empty file")
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise KvsimError(f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None
        missing = [c for c in REQUIRED if c not in df.columns]
        if missing:
            raise KvsimError(f"{path}: missing columns {', '.join(missing)}")
        df["source"] = str(path)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df = df[df["status"] == "ok"].copy()
    if df.empty:
        raise KvsimError("no rows with status ok to calibrate on")
    import numpy as np
    for col, (lo, hi, whole) in PLAUSIBLE.items():
        vals = pd.to_numeric(df[col], errors="coerce")
        bad = vals.isna() | ~np.isfinite(vals) | (vals < lo) | (vals > hi)
        if whole:
            bad |= vals.notna() & np.isfinite(vals) & (vals != np.floor(vals))
        if bad.any():
            i = int(bad.idxmax())
            kind = "a whole number" if whole else "a number"
            raise KvsimError(f"row {i} ({df.loc[i, 'source']}): {col} is {df.loc[i, col]!r}, not {kind} in "
                             f"[{lo:g}, {hi:g}]; fix or drop the row")
        df[col] = vals
    devices = sorted(df["device_name"].astype(str).unique())
    if len(devices) > 1:
        raise KvsimError(f"data mixes devices ({'; '.join(devices)}); calibrate one device at a time")
    df["executor"] = df["executor"].fillna(LEGACY_EXECUTOR) if "executor" in df else LEGACY_EXECUTOR
    executors = sorted(df["executor"].astype(str).unique())
    if len(executors) > 1:
        raise KvsimError(f"data mixes harness decode executors ({', '.join(executors)}): the same point takes a "
                         "different time on each; calibrate on one (pass its CSV, not the folder)")
    for col in ("seq", "gen", "batch"):
        df[col] = df[col].astype(int)
    df = df.reset_index(drop=True)
    return df, digest.hexdigest()
