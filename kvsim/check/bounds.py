"""What each claim is compared with, as arrays over the batch grid: bounds and exact values from predict().

Time bounds are lower bounds from the datasheet (efficiency 1): a phase cannot take less than its FLOP at the
dense peak or its bytes at the peak bandwidth, max(FLOP / peak, bytes / bandwidth), even if every operation
overlapped every other (kvsim's per-operation roofline, which sums them, is never below it). With a
calibrated profile a claim is also held to the profile's prediction less its own worst held-out error: faster
than that is inconsistent with the measurements the profile was fitted to, and only faster than the datasheet
floor is impossible.

Speed-ups are judged against the mechanism: with both configurations running at the same efficiency, a
throughput ratio cannot exceed the larger of the ratios of bytes and of FLOP each generated token needs
(max(a0, b0) / max(a1, b1) <= max(a0 / a1, b0 / b1)). A speed-up above the datasheet roofline ratio but within
that is possible (an inefficient baseline) and is reported as consistent with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..model import MoE
from ..profile import Profile, describe, estimate_error
from ..units import fmt_bytes, fmt_count, fmt_seconds

if TYPE_CHECKING:
    from .judge import Checker, Config

SEQ_FREE = ("params", "weights_bytes")  # claims that do not depend on the workload


@dataclass
class Quantity:
    lo: object  # arrays over the batch grid
    hi: object
    relation: str  # "=", ">=", "<=", "range"
    fail_lo: str
    fail_hi: str
    explain: object  # (grid index, batch) -> one line of arithmetic
    fits: object = True
    alt: tuple | None = None  # (lo, hi, what it needs): a looser reading of the claim, tried when this one fails
    physical: tuple | None = None  # (lo, hi): the datasheet bounds, when lo/hi are a calibrated estimate's band


INF = np.inf


def _kv(ck: Checker, cfg: Config, grid, base):
    p = ck.predict(cfg, grid)
    kv = p.kv_cache_bytes.astype(np.float64)
    tokens = cfg.seq + cfg.gen - 1

    def explain(i, b):
        per = kv[i] / b
        return (f"{cfg.model.name}, policy {cfg.policy.spec()}, KV {p._engine.cost.kv_dtype}: {per:,.0f} B per "
                f"sequence at {tokens:,} token{'s' if tokens != 1 else ''} ({per / tokens:,.0f} B per token) x batch {b:,} = {kv[i]:,.0f} B "
                f"({fmt_bytes(kv[i])})")
    return Quantity(kv, kv, "=", "inconsistent", "inconsistent", explain, p.fits)


def _peak(ck: Checker, cfg: Config, grid, base):
    p = ck.predict(cfg, grid)
    c = p._engine.cost
    state = np.ceil(p.state_bytes.astype(np.float64) / c.tp)
    lo = p.weights_bytes_per_device + p.kv_peak_bytes.astype(np.float64) + state
    hi = float(cfg.hardware.memory_bytes)

    def explain(i, b):
        return (f"per device: weights {fmt_bytes(p.weights_bytes_per_device[i])} + KV peak "
                f"{fmt_bytes(p.kv_peak_bytes[i])}" + (f" + state {fmt_bytes(state[i])}" if state[i] else "")
                + f" = {fmt_bytes(lo[i])} at batch {b:,} <= peak memory <= {fmt_bytes(hi)} "
                f"({cfg.hardware.display}); kvsim's own estimate {fmt_bytes(p.peak_memory_bytes[i])}")
    return Quantity(lo, hi, "range", "impossible", "impossible", explain, p.fits)


def _weights(ck: Checker, cfg: Config, grid, base):
    from ..cost import CostModel
    c = CostModel(cfg.model, cfg.hardware, cfg.policy, kv_dtype=cfg.kv_dtype, weight_dtype=cfg.dtype, tp=1, pp=1,
                  profile=ck.profile or Profile())
    w = float(c.weight_bytes())
    return Quantity(w, w, "=", "inconsistent", "inconsistent",
                    lambda i, b: f"{cfg.model.name}: {cfg.model.n_params():,} parameters in {c.weight_dtype} = "
                                 f"{w:,.0f} B ({fmt_bytes(w)}, {fmt_bytes(w, binary=False)})")


def _params(ck: Checker, cfg: Config, grid, base):
    n = float(cfg.model.n_params())
    return Quantity(n, n, "=", "inconsistent", "inconsistent",
                    lambda i, b: f"{cfg.model.name}: {n:,.0f} parameters ({fmt_count(n)}) from its configuration")


def _per_seq_kv(ck: Checker, cfg: Config) -> float:
    p = ck.predict(cfg, np.array([1]))
    return float(p.kv_cache_bytes[0])


def _compression(ck: Checker, cfg: Config, grid, base):
    other, what = base
    k1, k0 = _per_seq_kv(ck, cfg), _per_seq_kv(ck, other)
    if not k1:
        return None  # no KV cache: a ratio to it is undefined
    r = k0 / k1
    return Quantity(r, r, "=", "inconsistent", "impossible",
                    lambda i, b: f"KV per sequence of {what} ({other.policy.spec()}) {k0:,.0f} B / this row's "
                                 f"({cfg.policy.spec()}) {k1:,.0f} B = {r:.3f}x (metadata and kept tokens included)")


def _memory_terms(ck: Checker, cfg: Config, grid, base):
    """(where both fit, weights + KV per device of this row and the baseline, the same for the KV alone)
    over the batch grid: the baseline at its own batch, or at this row's when it gives none."""
    other, what = base
    p1 = ck.predict(cfg, grid)
    p0 = ck.predict(other, grid if other.batch is None else np.array([other.batch]))
    w1, w0 = p1.weights_bytes_per_device.astype(float), p0.weights_bytes_per_device.astype(float)
    k1, k0 = p1.kv_peak_bytes.astype(float), p0.kv_peak_bytes.astype(float)
    return p1.fits & p0.fits, (w1 + k1, w0 + k0), (k1, k0)


def _memory(ck: Checker, cfg: Config, grid, base):
    other, what = base
    if other.key() == cfg.key():
        return Quantity(0.0, 0.0, "=", "inconsistent", "inconsistent",
                        lambda i, b: f"the baseline is {what}, the same configuration as this row: the reduction is 0")
    fits, (a1, a0), (k1, k0) = _memory_terms(ck, cfg, grid, base)
    r_kv = np.where(k0 > 0, 1 - k1 / np.where(k0 > 0, k0, 1), 0.0)
    r_all = 1 - a1 / a0
    zero = np.zeros_like(r_kv)
    j = (lambda i: i) if np.size(k0) > 1 else (lambda i: 0)
    return Quantity(np.minimum(r_all, zero), np.maximum(r_all, zero), "range", "impossible", "impossible",
                    lambda i, b: f"vs {what}, batch {b:,}: weights + KV 1 - {fmt_bytes(a1[i])} / {fmt_bytes(a0[j(i)])} "
                                 f"= {r_all[i]:.1%} per device (equal overheads assumed; other memory only brings it "
                                 f"toward 0); KV alone 1 - {fmt_bytes(k1[i])} / {fmt_bytes(k0[j(i)])} = {r_kv[i]:.1%}",
                    fits, (np.minimum.reduce([r_kv, r_all, zero]), np.maximum.reduce([r_kv, r_all, zero]),
                              "only if the reduction is of the KV cache alone"))


def _memory_ratio(ck: Checker, cfg: Config, grid, base):
    other, what = base
    if other.key() == cfg.key():
        return Quantity(1.0, 1.0, "=", "inconsistent", "inconsistent",
                        lambda i, b: f"the baseline is {what}, the same configuration as this row: the ratio is 1")
    fits, (a1, a0), (k1, k0) = _memory_terms(ck, cfg, grid, base)
    with np.errstate(divide="ignore", invalid="ignore"):
        q_kv = np.where(k1 > 0, k0 / np.where(k1 > 0, k1, 1), np.nan)  # undefined without a KV cache
    q_all = a0 / a1
    one = np.ones_like(q_all)
    j = (lambda i: i) if np.size(k0) > 1 else (lambda i: 0)
    return Quantity(np.minimum(q_all, one), np.maximum(q_all, one), "range", "impossible", "impossible",
                    lambda i, b: f"vs {what}, batch {b:,}: weights + KV {fmt_bytes(a0[j(i)])} / {fmt_bytes(a1[i])} = "
                                 f"{q_all[i]:.2f}x per device (equal overheads assumed; other memory only brings it "
                                 f"toward 1x); KV alone {fmt_bytes(k0[j(i)])} / {fmt_bytes(k1[i])} = "
                                 + (f"{q_kv[i]:.2f}x" if np.isfinite(q_kv[i]) else "undefined"),
                    fits, (np.fmin.reduce([q_kv, q_all, one]), np.fmax.reduce([q_kv, q_all, one]),
                              "only if the ratio is of the KV cache alone"))


def _floor(ck: Checker, p, phase: str):
    """Lower bound on a phase's time from the datasheet: (time, FLOP, bytes, peak, bandwidth) arrays."""
    c = p._engine.cost
    flops = getattr(p, f"{phase}_flops").astype(np.float64)
    nbytes = getattr(p, f"{phase}_bytes").astype(np.float64)
    peak, bw = max(c.raw_peak, c.raw_gemm_peak), c.raw_bw
    return np.maximum(flops / peak, nbytes / bw), flops, nbytes, peak, bw


def _families(cfg: Config, phase: str) -> tuple[str, ...]:
    """The kernel-database op families a phase of this configuration runs."""
    fams = ["gemm", "prefill_attention" if phase == "prefill" else "decode_attention"]
    fams += ["moe"] if any(isinstance(layer.mlp, MoE) for layer in cfg.model.layers) else []
    fams += ["allreduce"] if cfg.tp > 1 else []
    return tuple(fams)


def _least(ck: Checker, cfg: Config, p, phase: str):
    """(least time a claim may report, the profile's prediction, its error, the datasheet floor): without a
    profile the floor itself; with one, the prediction less its worst held-out error, never below the floor."""
    floor = _floor(ck, p, phase)[0]
    if ck.profile is None:
        return floor, floor, 0.0, floor
    est = (p.ttft_s if phase == "prefill" else p.tpot_s).astype(np.float64)
    err = min(estimate_error(ck.profile, phase, _families(cfg, phase)), 1.0)
    return np.maximum(est * (1.0 - err), floor), est, err, floor


def _time_text(ck, what, t, flops, nbytes, peak, bw, i, b, roofline):
    text = (f"{what} >= max({fmt_count(flops[i], 'FLOP')} / {fmt_count(peak, 'FLOP/s')}, "
            f"{fmt_bytes(nbytes[i], binary=False)} / {fmt_bytes(bw, binary=False)}/s) = {fmt_seconds(t[i])} at batch "
            f"{b:,} (datasheet, efficiency 1")
    if ck.profile is None:
        return text + f"; kvsim's per-op roofline {fmt_seconds(roofline[i])})"
    return text + ")"


def _estimate_text(ck, what, least, est, err, i, b):
    return (f"{what} at batch {b:,} predicted {fmt_seconds(est[i])} (profile {describe(ck.profile)}); at most "
            f"{err:.1%} faster by its worst held-out error: >= {fmt_seconds(least[i])}")


def _time(ck: Checker, cfg: Config, grid, what: str, phase: str, per_token: bool):
    """A phase's time (TTFT, TPOT) or, per_token, the decode throughput it allows."""
    p = ck.predict(cfg, grid)
    t, f, nb, peak, bw = _floor(ck, p, phase)
    least, est, err, floor = _least(ck, cfg, p, phase)
    roof = p.ttft_s if phase == "prefill" else p.tpot_s

    def explain(i, b):
        text = _time_text(ck, what, t, f, nb, peak, bw, i, b, roof)
        if ck.profile is not None:
            text = _estimate_text(ck, what, least, est, err, i, b) + "; physical floor: " + text
        if per_token:
            return f"batch {b:,} / " + text + f" = {grid[i] / least[i]:,.1f} tokens/s"
        return text

    physical = None if ck.profile is None else ((0.0, grid / floor) if per_token else (floor, INF))
    fail = "impossible" if ck.profile is None else "inconsistent"
    if per_token:
        return Quantity(0.0, grid / least, "<=", fail, fail, explain, p.fits, physical=physical)
    return Quantity(least, INF, ">=", fail, fail, explain, p.fits, physical=physical)


def _ttft(ck: Checker, cfg: Config, grid, base):
    return _time(ck, cfg, grid, "TTFT", "prefill", False)


def _tpot(ck: Checker, cfg: Config, grid, base):
    return _time(ck, cfg, grid, "TPOT", "decode", False)


def _throughput(ck: Checker, cfg: Config, grid, base):
    return _time(ck, cfg, grid, "TPOT", "decode", True)


def _e2e_floor(ck: Checker, cfg: Config, p, least: bool = True):
    """Least time of the whole request: the prefill's plus gen - 1 decode steps at the mean step's (with a
    profile, least=False gives the datasheet floor instead of the estimate's band)."""
    steps = np.maximum(np.asarray(p._engine.gen) - 1, 0)
    pick = 0 if least else 3
    t_pre = _least(ck, cfg, p, "prefill")[pick]
    t_dec = _least(ck, cfg, p, "decode")[pick]
    return t_pre + steps * t_dec, t_pre, t_dec, steps


def _e2e_source(ck: Checker) -> str:
    if ck.profile is None:
        return "datasheet, efficiency 1; each phase max(FLOP / peak, bytes / bandwidth)"
    return (f"profile {describe(ck.profile)}; each phase its prediction less its worst held-out error, never "
            "below the datasheet floor")


def _e2e_physical(ck: Checker, cfg: Config, p, rate_of=None):
    if ck.profile is None:
        return None
    t = _e2e_floor(ck, cfg, p, least=False)[0]
    return (0.0, rate_of(t)) if rate_of else (t, INF)


def _e2e(ck: Checker, cfg: Config, grid, base):
    p = ck.predict(cfg, grid)
    t, t_pre, t_dec, steps = _e2e_floor(ck, cfg, p)
    fail = "impossible" if ck.profile is None else "inconsistent"
    return Quantity(t, INF, ">=", fail, fail,
                    lambda i, b: f"request >= prefill {fmt_seconds(t_pre[i])} + {int(steps):,} steps x "
                                 f"{fmt_seconds(t_dec[i])} = {fmt_seconds(t[i])} at batch {b:,} ({_e2e_source(ck)})",
                    p.fits, physical=_e2e_physical(ck, cfg, p))


def _throughput_e2e(ck: Checker, cfg: Config, grid, base):
    p = ck.predict(cfg, grid)
    t, t_pre, t_dec, steps = _e2e_floor(ck, cfg, p)
    gen = int(cfg.gen)
    rate = grid * gen / t
    fail = "impossible" if ck.profile is None else "inconsistent"
    return Quantity(0.0, rate, "<=", fail, fail,
                    lambda i, b: f"batch {b:,} x gen {gen:,} / (prefill {fmt_seconds(t_pre[i])} + {int(steps):,} steps "
                                 f"x {fmt_seconds(t_dec[i])}) = {rate[i]:,.1f} tokens/s ({_e2e_source(ck)})",
                    p.fits, physical=_e2e_physical(ck, cfg, p, lambda t: grid * gen / t))


def _speedup(ck: Checker, cfg: Config, grid, base):
    other, what = base
    p1, p0 = ck.predict(cfg, grid), ck.predict(other, np.array([other.batch or 1]))
    b0 = float(other.batch or 1)
    per = {}
    for name, p, b in (("this", p1, grid.astype(float)), ("base", p0, b0)):
        # work per generated token over the whole request: the prefill and every decode step
        g = np.asarray(p._engine.gen, dtype=float)
        steps = np.maximum(g - 1, 0)
        per[name] = tuple((getattr(p, f"prefill_{k}") + steps * getattr(p, f"decode_{k}")) / (b * g)
                          for k in ("bytes", "flops"))
    rb = per["base"][0][0] / per["this"][0]
    rf = per["base"][1][0] / per["this"][1]
    bound = np.maximum(rb, rf)
    t1 = _e2e_floor(ck, cfg, p1, least=False)[0] / (grid * float(np.asarray(p1._engine.gen)))
    t0 = float(_e2e_floor(ck, other, p0, least=False)[0][0]) / (b0 * float(np.asarray(p0._engine.gen)))
    roof = t0 / t1
    return Quantity(0.0, bound, "<=", "impossible", "impossible",
                    lambda i, b: f"vs {what}: per generated token the baseline moves {rb[i]:.2f}x the bytes and "
                                 f"does {rf[i]:.2f}x the FLOP of this row at batch {b:,}: at equal efficiency the "
                                 f"speed-up is at most {bound[i]:.2f}x; the datasheet roofline ratio is {roof[i]:.2f}x "
                                 "(a measured speed-up can exceed it when the baseline ran below its roofline)",
                    p1.fits)


QUANTITIES = {
    "kv_cache_bytes": _kv,
    "peak_memory_bytes": _peak,
    "weights_bytes": _weights,
    "params": _params,
    "compression_ratio": _compression,
    "memory_reduction": _memory,
    "memory_ratio": _memory_ratio,
    "ttft_s": _ttft,
    "tpot_s": _tpot,
    "e2e_s": _e2e,
    "decode_tokens_per_s": _throughput,
    "throughput_tokens_per_s": _throughput_e2e,
    "speedup": _speedup,
}
