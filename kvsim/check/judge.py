"""Verdicts: each claim of a row against a bound or an exact value computed by predict() for that row.

Time bounds are lower bounds from the datasheet (efficiency 1): a phase cannot take less than its FLOP at the
dense peak or its bytes at the peak bandwidth, max(FLOP / peak, bytes / bandwidth), even if every operation
overlapped every other (kvsim's per-operation roofline, which sums them, is never below it). With a
calibrated profile the profile's predicted times take their place, and the explanation says so.

Speed-ups are judged against the mechanism: with both configurations running at the same efficiency, a
throughput ratio cannot exceed the larger of the ratios of bytes and of FLOP each generated token needs
(max(a0, b0) / max(a1, b1) <= max(a0 / a1, b0 / b1)). A speed-up above the datasheet roofline ratio but within
that is possible (an inefficient baseline) and is reported as consistent with the reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import KvsimError
from ..predict import Workload, predict
from ..profile import Profile, describe
from ..units import fmt_bytes, fmt_count, fmt_seconds
from .table import CLAIMS, Claim, Row, Table

VERDICTS = ("consistent", "unverifiable", "impossible", "inconsistent", "invalid")
BATCH_DENSE = 1024  # batches searched one by one when the batch is not given; beyond, a geometric grid
_SEQ_FREE = ("params", "weights_bytes")  # claims that do not depend on the workload


@dataclass
class Verdict:
    label: str
    claim: str
    column: str
    claimed: float | None  # in base units, as written
    verdict: str
    bound: float | None = None  # the bound or exact value the claim was compared with, base units
    relation: str = ""  # "claimed >= bound", "claimed <= bound", "claimed = exact"
    margin: float | None = None  # (claimed - bound) / bound
    explanation: str = ""
    condition: str = ""  # what the claim needs to hold ("only if batch = 4", "only if 'MB' means MiB")
    raw: str = ""
    kind: str = ""  # bytes, seconds, rate, ratio, fraction, count, quality
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"label": self.label, "claim": self.claim, "column": self.column, "claimed": self.claimed,
                "raw": self.raw, "verdict": self.verdict, "bound": self.bound, "relation": self.relation,
                "margin": self.margin, "explanation": self.explanation, "condition": self.condition,
                "kind": self.kind, "extra": dict(self.extra)}


@dataclass
class Config:
    model: object
    hardware: object
    policy: object
    seq: int | None
    gen: int
    batch: int | None
    tp: int
    kv_dtype: str | None
    dtype: str | None
    assumed: list[str]
    engine: object = None
    invalid: str = ""  # why the configuration cannot exist although kvsim can still compute it

    def key(self) -> tuple:
        return (self.model.name, self.hardware.name, self.policy.spec(), self.seq, self.gen, self.batch, self.tp,
                self.kv_dtype, self.dtype, self.engine.label if self.engine else "hf")

    def with_batch(self, batch: int | None) -> "Config":
        return dataclasses.replace(self, batch=batch)


class Checker:
    def __init__(self, table: Table, profile: Profile | None = None, tolerance: float = 0.02):
        if not (0 <= tolerance < 1):
            raise KvsimError(f"--tolerance must be in [0, 1), got {tolerance}")
        self.table, self.profile, self.tol = table, profile, tolerance
        self.rows = {r.label: r for r in table.rows}
        self._configs: dict[str, Config | str] = {}
        self._preds: dict[tuple, object] = {}

    # ------------------------------------------------------------------ configurations
    def config(self, label: str) -> Config | str:
        """The row's configuration, or the reason it cannot exist (a string)."""
        if label not in self._configs:
            try:
                self._configs[label] = self._build(self.rows[label])
            except KvsimError as e:
                self._configs[label] = str(e)
        return self._configs[label]

    def _build(self, row: Row) -> Config | str:
        from .. import from_hf_config, load_hardware, load_json, load_model, parse_composition
        from ..parallel import check_model

        f = row.fields
        if not f["model"]:
            return "no model given"
        if f["model"].endswith(".json") or "/" in f["model"]:
            path = self.table.base_dir / f["model"]
            model = from_hf_config(load_json(path), name=Path(f["model"]).stem.replace(".config", ""))
        else:
            model = load_model(f["model"])
        if not f["hardware"]:
            return "no hardware given"
        hw = load_hardware(f["hardware"])
        specs = [s.strip() for s in f["policy"].split("+") if s.strip()]
        policy = parse_composition(specs)
        assumed = []
        seq = int(float(f["seq"])) if f["seq"] else None
        gen = int(float(f["gen"])) if f["gen"] else 1
        if not f["gen"]:
            assumed.append("gen not given: 1 (the cache after the prefill)")
        tp = int(float(f["tp"])) if f["tp"] else 1
        check_model(model, tp)
        invalid = ""
        if seq is not None and model.max_context and seq + gen > model.max_context:
            invalid = f"seq {seq:,} + gen {gen:,} is beyond {model.name}'s maximum context of {model.max_context:,} tokens"
        engine = None
        if f["engine"]:
            from ..presets import load_engine
            engine = load_engine(f["engine"])
        cfg = Config(model, hw, policy, seq, gen, int(float(f["batch"])) if f["batch"] else None, tp,
                     f["kv_dtype"] or None, f["dtype"] or None, assumed, engine, invalid)
        if seq is not None:
            self.predict(cfg, np.array([1]))  # a configuration predict refuses is invalid
        return cfg

    def predict(self, cfg: Config, batches: np.ndarray):
        key = (cfg.key(), tuple(batches.tolist()))
        if key not in self._preds:
            wl = Workload(prompt=cfg.seq, gen=cfg.gen, batch=batches, tp=cfg.tp, kv_dtype=cfg.kv_dtype,
                          weight_dtype=cfg.dtype)
            self._preds[key] = predict(cfg.model, cfg.hardware, cfg.policy, wl, self.profile, cfg.engine)
        return self._preds[key]

    def batches(self, cfg: Config) -> np.ndarray:
        """The row's batch, or the grid searched when it is empty: every batch up to BATCH_DENSE, then a
        geometric grid up to the largest batch that fits."""
        if cfg.batch is not None:
            return np.array([cfg.batch])
        top = max(1, int(self.predict(cfg, np.array([1])).max_batch[0]))
        dense = np.arange(1, min(top, BATCH_DENSE) + 1)
        if top <= BATCH_DENSE:
            return dense
        return np.unique(np.concatenate([dense, np.geomspace(BATCH_DENSE, top, 256).astype(np.int64), [top]]))

    # ------------------------------------------------------------------ verdicts
    def run(self) -> list[Verdict]:
        out: list[Verdict] = []
        for row in self.table.rows:
            out.extend(self.judge_row(row))
        return out

    def judge_row(self, row: Row) -> list[Verdict]:
        cfg = self.config(row.label)
        verdicts: list[Verdict] = []
        if isinstance(cfg, str):
            missing = cfg in ("no hardware given",)
            for c in row.claims or [None]:
                verdicts.append(Verdict(row.label, c.name if c else "configuration", c.column if c else "",
                                        c.readings[0][1] if c else None, "unverifiable" if missing else "invalid",
                                        explanation=cfg, raw=c.raw if c else "",
                                        kind=CLAIMS[c.name][1] if c else "", extra=row.extra))
        else:
            for c in row.claims:
                try:
                    v = self.judge(row, cfg, c)
                except KvsimError as e:
                    v = Verdict(row.label, c.name, c.column, c.readings[0][1], "invalid", explanation=str(e))
                v.raw, v.kind, v.extra = c.raw, CLAIMS[c.name][1], row.extra
                if cfg.assumed and v.verdict != "unverifiable" and c.name not in _SEQ_FREE:
                    v.explanation += f" [{'; '.join(cfg.assumed)}]"
                if cfg.invalid and c.name not in _SEQ_FREE:
                    v.explanation = f"{cfg.invalid}; were it allowed, {v.verdict}: {v.explanation}"
                    v.verdict, v.condition = "invalid", ""
                verdicts.append(v)
        for col, raw in row.quality.items():
            verdicts.append(self.judge_quality(row, col, raw))
        if not verdicts and not isinstance(cfg, str) and cfg.invalid:
            verdicts.append(Verdict(row.label, "configuration", "", None, "invalid", explanation=cfg.invalid,
                                    extra=row.extra))
        elif not verdicts:
            verdicts.append(Verdict(row.label, "(none)", "", None, "unverifiable",
                                    explanation="the row makes no claim", extra=row.extra))
        return verdicts

    def judge(self, row: Row, cfg: Config, c: Claim) -> Verdict:
        if cfg.seq is None and c.name not in _SEQ_FREE:
            return Verdict(row.label, c.name, c.column, c.readings[0][1], "unverifiable",
                           explanation="no seq given: the claim depends on the prompt length")
        base = None
        if c.name in ("compression_ratio", "memory_reduction", "memory_ratio", "speedup"):
            base = self._baseline(row, cfg, c.name)
            if isinstance(base, str):
                return Verdict(row.label, c.name, c.column, c.readings[0][1], "unverifiable", explanation=base)
        grid = self.batches(cfg) if cfg.seq is not None else np.array([1])
        q = QUANTITIES[c.name](self, cfg, grid, base)
        return self._decide(row, cfg, c, grid, q)

    def _baseline(self, row: Row, cfg: Config, claim: str) -> tuple[Config, str] | str:
        """The configuration a relative claim compares with. An empty baseline batch is this row's batch for
        memory claims (the same load), and the baseline's largest batch that fits for a speed-up (throughput
        papers run each system at its largest batch)."""
        label = row.fields["baseline"]
        if label == row.label:
            return cfg, f"row {label!r} itself"
        if not label:
            if claim == "speedup":
                return "no baseline given: a speed-up is relative to another row"
            from ..policies import Compose
            return (dataclasses.replace(cfg, policy=Compose(()), kv_dtype=None, assumed=[]),
                    "the same configuration with the full cache at the activation dtype")
        other = self.config(label)
        if isinstance(other, str):
            return f"baseline {label!r} cannot be evaluated: {other}"
        if other.seq is None:
            return f"baseline {label!r} gives no seq"
        if other.batch is None and claim == "speedup":
            top = int(self.predict(other, np.array([1])).max_batch[0])
            if top < 1:
                return f"baseline {label!r} does not fit in device memory even at batch 1"
            return other.with_batch(top), f"row {label!r} at its largest batch that fits, {top:,}"
        return other, f"row {label!r}"

    def _decide(self, row: Row, cfg: Config, c: Claim, grid: np.ndarray, q: "Quantity") -> Verdict:
        """Try each reading of the claim's unit against the quantity's own interpretation, then against its
        looser one (q.alt), over the batch grid; the first that holds somewhere decides, with what it needs said
        in the condition. Without one, the closest failure is reported."""
        tol = self.tol
        fits = np.broadcast_to(np.asarray(q.fits), grid.shape) if cfg.batch is None else np.ones(grid.shape, bool)
        bounds = [(q.lo, q.hi, "")] + ([q.alt] if q.alt else [])
        tries = []
        for lo, hi, needs in bounds:
            lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), grid.shape)
            hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), grid.shape)
            for unit, x in c.readings:
                slack = c.slack * (x / c.readings[0][1]) if c.readings[0][1] else c.slack
                ok_lo = x >= lo - tol * np.abs(lo) - slack
                ok_hi = x <= hi + tol * np.abs(hi) + slack
                tries.append((unit, x, lo, hi, ok_lo, ok_hi, ok_lo & ok_hi & fits, needs))
        pick = next((t for t in tries if t[6].any()), tries[0])
        unit, x, lo, hi, ok_lo, ok_hi, ok, needs = pick
        conds = []
        if unit != tries[0][0]:
            conds.append(f"only if '{tries[0][0]}' means {unit}")
        if needs:
            conds.append(needs)
        if ok.any():
            verdict = "consistent"
            # the batch with the most room before the bound, for the figures shown; the condition gives them all
            room = np.minimum(x - (lo - tol * np.abs(lo)), (hi + tol * np.abs(hi)) - x)
            room = np.where(ok, np.where(np.isfinite(room), room, np.finfo(float).max), -np.inf)
            i = int(np.argmax(room))
            if c.name in _SEQ_FREE:
                pass
            elif cfg.batch is None and not ok.all():
                conds.append(f"only if batch {_ranges(grid[ok])}")
            elif cfg.batch is None:
                conds.append(f"any batch that fits (1..{int(grid[-1]):,})")
        else:
            # the closest failure: the batch whose bound is nearest to the claim
            gap = np.where(ok_lo, 0.0, lo - x) + np.where(ok_hi, 0.0, x - hi)
            gap = np.where(fits, np.abs(gap), np.inf) if fits.any() else np.abs(gap)
            i = int(np.argmin(gap))
            verdict = q.fail_lo if not ok_lo[i] else q.fail_hi
            if cfg.batch is None and (ok_lo & ok_hi).any():
                conds.append("only at batches that do not fit in device memory")
        if q.relation == "=":
            side, relation = lo[i], "claimed = exact"
        elif not ok_lo[i] or (ok_hi[i] and (q.relation == ">=" or (q.relation == "range" and
                                                                  abs(x - lo[i]) <= abs(x - hi[i])))):
            side, relation = lo[i], "claimed >= bound"
        else:
            side, relation = hi[i], "claimed <= bound"
        margin = (x - side) / abs(side) if side and np.isfinite(side) else None
        if verdict == "consistent" and q.relation == "=" and abs(x - side) > tol * abs(side):
            conds.append(f"only within the rounding of {c.raw!r} as printed")
        b = int(grid[i])
        return Verdict(row.label, c.name, c.column, c.readings[0][1], verdict,
                       float(side) if np.isfinite(side) else None, relation,
                       None if margin is None else float(margin), q.explain(i, b), "; ".join(conds))

    def judge_quality(self, row: Row, col: str, raw: str) -> Verdict:
        """Quality needs a measurement; only an identical figure for a configuration that must differ is
        flagged (a copied cell), and only when the figure is precise enough not to coincide by rounding."""
        base = Verdict(row.label, col, col, None, "unverifiable", raw=raw, kind="quality", extra=row.extra,
                       explanation="quality cannot be judged by physics: it needs a measurement")
        try:
            x = float(raw.rstrip("%"))
        except ValueError:
            return base
        base.claimed = x
        digits = len(raw.strip().lstrip("-").replace(".", "").lstrip("0").rstrip("%"))
        if digits < 3 or x in (0.0, 1.0, 100.0):
            return base
        me = self._quality_key(row)
        for other in self.table.rows:
            if other is row or other.quality.get(col, "").strip() != raw.strip():
                continue
            them = self._quality_key(other)
            if me is None or them is None or me == them:
                continue
            diff = [n for n, a, b in zip(("model", "policy", "KV dtype", "weights"), me, them) if a != b]
            base.verdict = "inconsistent"
            base.bound, base.relation = x, "claimed != other row"
            base.explanation = (f"identical to row {other.label!r} ({raw}), whose {', '.join(diff)} {'differ' if len(diff) > 1 else 'differs'}: "
                                "configurations that keep different data cannot give the same figure to "
                                f"{digits} digits (a copied cell?)")
            break
        return base

    def _quality_key(self, row: Row):
        cfg = self.config(row.label)
        if isinstance(cfg, str):
            return None
        return cfg.model.name, cfg.policy.spec(), cfg.kv_dtype or "", cfg.dtype or ""


def _ranges(values: np.ndarray) -> str:
    """'= 4', 'in 4..9', '>= 12 (up to 57)' from sorted batches."""
    v = [int(x) for x in values]
    if len(v) == 1:
        return f"= {v[0]:,}"
    runs, start = [], v[0]
    for a, b in zip(v, v[1:] + [None]):
        if b is None or b > a + 1:
            runs.append((start, a))
            start = b
    if len(runs) > 4:  # a geometric grid: say the span
        return f"between {v[0]:,} and {v[-1]:,}"
    return " or ".join(f"= {a:,}" if a == b else f"in {a:,}..{b:,}" for a, b in runs)


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


INF = np.inf


def _source(ck: Checker) -> str:
    if ck.profile is None:
        return "datasheet, efficiency 1"
    return f"profile {describe(ck.profile)}; a calibrated estimate, not a physical bound"


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
    r = k0 / k1 if k1 else INF
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
    q_kv = k0 / np.where(k1 > 0, k1, np.inf)
    q_all = a0 / a1
    one = np.ones_like(q_all)
    j = (lambda i: i) if np.size(k0) > 1 else (lambda i: 0)
    return Quantity(np.minimum(q_all, one), np.maximum(q_all, one), "range", "impossible", "impossible",
                    lambda i, b: f"vs {what}, batch {b:,}: weights + KV {fmt_bytes(a0[j(i)])} / {fmt_bytes(a1[i])} = "
                                 f"{q_all[i]:.2f}x per device (equal overheads assumed; other memory only brings it "
                                 f"toward 1x); KV alone {fmt_bytes(k0[j(i)])} / {fmt_bytes(k1[i])} = {q_kv[i]:.2f}x",
                    fits, (np.minimum.reduce([q_kv, q_all, one]), np.maximum.reduce([q_kv, q_all, one]),
                              "only if the ratio is of the KV cache alone"))


def _floor(ck: Checker, p, phase: str):
    """Lower bound on a phase's time: (time, FLOP, bytes, peak, bandwidth) arrays."""
    c = p._engine.cost
    flops = getattr(p, f"{phase}_flops").astype(np.float64)
    nbytes = getattr(p, f"{phase}_bytes").astype(np.float64)
    peak, bw = max(c.raw_peak, c.raw_gemm_peak), c.raw_bw
    if ck.profile is None:
        t = np.maximum(flops / peak, nbytes / bw)
    else:
        t = (p.ttft_s if phase == "prefill" else p.tpot_s).astype(np.float64)
    return t, flops, nbytes, peak, bw


def _time_text(ck, what, t, flops, nbytes, peak, bw, i, b, roofline):
    if ck.profile is not None:
        return f"{what} at batch {b:,} predicted {fmt_seconds(t[i])} ({_source(ck)})"
    return (f"{what} >= max({fmt_count(flops[i], 'FLOP')} / {fmt_count(peak, 'FLOP/s')}, "
            f"{fmt_bytes(nbytes[i], binary=False)} / {fmt_bytes(bw, binary=False)}/s) = {fmt_seconds(t[i])} at batch "
            f"{b:,} ({_source(ck)}; kvsim's per-op roofline {fmt_seconds(roofline[i])})")


def _ttft(ck: Checker, cfg: Config, grid, base):
    p = ck.predict(cfg, grid)
    t, f, nb, peak, bw = _floor(ck, p, "prefill")
    return Quantity(t, INF, ">=", "impossible", "impossible",
                    lambda i, b: _time_text(ck, "TTFT", t, f, nb, peak, bw, i, b, p.ttft_s), p.fits)


def _tpot(ck: Checker, cfg: Config, grid, base):
    p = ck.predict(cfg, grid)
    t, f, nb, peak, bw = _floor(ck, p, "decode")
    return Quantity(t, INF, ">=", "impossible", "impossible",
                    lambda i, b: _time_text(ck, "TPOT", t, f, nb, peak, bw, i, b, p.tpot_s), p.fits)


def _throughput(ck: Checker, cfg: Config, grid, base):
    p = ck.predict(cfg, grid)
    t, f, nb, peak, bw = _floor(ck, p, "decode")
    rate = grid / t
    return Quantity(0.0, rate, "<=", "impossible", "impossible",
                    lambda i, b: f"batch {b:,} / " + _time_text(ck, "TPOT", t, f, nb, peak, bw, i, b, p.tpot_s)
                    + f" = {rate[i]:,.1f} tokens/s", p.fits)


_PHASE = {True: "; each phase max(FLOP / peak, bytes / bandwidth)", False: ""}


def _e2e_floor(ck: Checker, p):
    """Lower bound on the whole request: the prefill's floor plus gen - 1 decode steps at the mean step's."""
    steps = np.maximum(np.asarray(p._engine.gen) - 1, 0)
    t_pre = _floor(ck, p, "prefill")[0]
    t_dec = _floor(ck, p, "decode")[0]
    return t_pre + steps * t_dec, t_pre, t_dec, steps


def _e2e(ck: Checker, cfg: Config, grid, base):
    p = ck.predict(cfg, grid)
    t, t_pre, t_dec, steps = _e2e_floor(ck, p)
    return Quantity(t, INF, ">=", "impossible", "impossible",
                    lambda i, b: f"request >= prefill {fmt_seconds(t_pre[i])} + {int(steps):,} steps x "
                                 f"{fmt_seconds(t_dec[i])} = {fmt_seconds(t[i])} at batch {b:,} ({_source(ck)}{_PHASE[ck.profile is None]})",
                    p.fits)


def _throughput_e2e(ck: Checker, cfg: Config, grid, base):
    p = ck.predict(cfg, grid)
    t, t_pre, t_dec, steps = _e2e_floor(ck, p)
    gen = int(cfg.gen)
    rate = grid * gen / t
    return Quantity(0.0, rate, "<=", "impossible", "impossible",
                    lambda i, b: f"batch {b:,} x gen {gen:,} / (prefill {fmt_seconds(t_pre[i])} + {int(steps):,} steps "
                                 f"x {fmt_seconds(t_dec[i])}) = {rate[i]:,.1f} tokens/s ({_source(ck)}{_PHASE[ck.profile is None]})",
                    p.fits)


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
    t1 = _e2e_floor(ck, p1)[0] / (grid * float(np.asarray(p1._engine.gen)))
    t0 = float(_e2e_floor(ck, p0)[0][0]) / (b0 * float(np.asarray(p0._engine.gen)))
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
