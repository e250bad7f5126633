"""Measurement rows for calibration: read, checked, and grouped into configurations.

Refused with one-line errors: no file, an empty file, missing columns, no usable rows, NaN or non-positive
times in usable rows, and rows from more than one device (a profile describes one device).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kvsim.errors import KvsimError

REQUIRED = ("model", "policy", "seq", "gen", "batch", "dtype", "device_name", "status", "ttft_s", "tpot_s")


def files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.csv") if _is_latency(q))
        elif p.is_file():
            out.append(p)
        else:
            raise KvsimError(f"--data {p}: no such file or folder")
    if not out:
        raise KvsimError("--data: no measurement CSV found")
    return out


def _is_latency(path: Path) -> bool:
    with path.open() as f:
        header = f.readline()
    return "tpot_s" in header and "ttft_s" in header


def load(paths: list[str]):
    import pandas as pd

    frames = []
    digest = hashlib.sha256()
    for path in files(paths):
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
    for col in ("ttft_s", "tpot_s", "seq", "gen", "batch"):
        vals = pd.to_numeric(df[col], errors="coerce")
        bad = vals.isna() | (vals <= 0)
        if bad.any():
            i = int(bad.idxmax())
            raise KvsimError(f"row {i} ({df.loc[i, 'source']}): {col} is {df.loc[i, col]!r}, not a positive number")
        df[col] = vals
    devices = sorted(df["device_name"].astype(str).unique())
    if len(devices) > 1:
        raise KvsimError(f"data mixes devices ({'; '.join(devices)}); calibrate one device at a time")
    for col in ("seq", "gen", "batch"):
        df[col] = df[col].astype(int)
    df = df.reset_index(drop=True)
    return df, digest.hexdigest()
