"""Summaries of a simulation: latency percentiles, throughput, goodput, and down-sampled time series."""

from __future__ import annotations

import math

import numpy as np

from .engine import SimResult

PERCENTILES = (50, 90, 99)
LATENCIES = ("ttft_s", "tpot_s", "itl_s", "e2e_s")


def percentiles(x: np.ndarray) -> dict[str, float | None]:
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    if not x.size:
        return {"mean": None, **{f"p{q}": None for q in PERCENTILES}}
    return {"mean": float(x.mean()), **{f"p{q}": float(np.percentile(x, q)) for q in PERCENTILES}}


def meets(res: SimResult, slo_ttft: float | None, slo_tpot: float | None) -> np.ndarray:
    """Per request: whether it met both SLOs (a one-token request has no TPOT to miss)."""
    ok = np.ones(len(res.prompt), dtype=bool)
    if slo_ttft is not None:
        ok &= res.ttft_s <= slo_ttft
    if slo_tpot is not None:
        tpot = res.tpot_s
        ok &= np.isnan(tpot) | (tpot <= slo_tpot)
    return ok


def summary(res: SimResult, slo_ttft: float | None = None, slo_tpot: float | None = None) -> dict:
    """Every figure of a run as plain numbers. Throughput and goodput are over the makespan, from the first
    arrival to the last finish."""
    span = float(np.max(res.finish_s) - np.min(res.arrival_s))
    n = len(res.prompt)
    good = int(meets(res, slo_ttft, slo_tpot).sum())
    out_tokens = int(res.output.sum())
    used = res.series["pool_used_bytes"]
    dt = res.series["step_s"]
    busy = float(dt.sum())
    util = None if not math.isfinite(res.pool_bytes) or res.pool_bytes == 0 else \
        float(np.sum(used * dt) / busy / res.pool_bytes) if busy else 0.0
    out = {"requests": n, "steps": res.steps, "makespan_s": span,
           "throughput_requests_per_s": n / span if span > 0 else None,
           "throughput_tokens_per_s": out_tokens / span if span > 0 else None,
           "goodput_requests_per_s": good / span if span > 0 else None,
           "slo_met_fraction": good / n,
           "preemptions": int(res.preemptions.sum()), "preempted_requests": int((res.preemptions > 0).sum()),
           "pool_bytes": None if not math.isfinite(res.pool_bytes) else int(res.pool_bytes),
           "pool_utilisation_mean": util,
           "pool_used_bytes_max": int(used.max()) if used.size else 0,
           "running_max": int(res.series["running"].max()) if res.steps else 0,
           "mean_in_system": float(np.sum(res.e2e_s)) / span if span > 0 else None}
    for key in LATENCIES:
        for stat, v in percentiles(getattr(res, key)).items():
            out[f"{key[:-2]}_{stat}_s"] = v
    return out


def downsample(res: SimResult, points: int = 2000) -> dict[str, list]:
    """The per-step series at no more than `points` evenly spaced steps (the last step always included)."""
    s = res.series
    n = res.steps
    idx = np.unique(np.linspace(0, n - 1, min(points, n)).round().astype(np.int64)) if n else np.zeros(0, np.int64)
    return {k: np.asarray(v)[idx].tolist() for k, v in s.items()}
