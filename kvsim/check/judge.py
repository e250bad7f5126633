"""Verdicts: each claim of a row against the bound or exact value (bounds.py) computed by predict() for that row's
configuration. A row becomes a Config through the same library calls the CLI makes (presets, config.json,
policy specs joined by +, engines); what cannot be built is an `invalid` verdict, never a crash. An empty batch
is searched over a grid (one vectorised predict call), and a claim's other readings (the other byte unit, the
KV cache alone) are tried after its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import KvsimError
from ..predict import Workload, predict
from ..profile import Profile
from .bounds import QUANTITIES, SEQ_FREE, Quantity
from .table import CLAIMS, Claim, Row, Table

VERDICTS = ("consistent", "unverifiable", "impossible", "inconsistent", "invalid")
NO_HARDWARE = "no hardware given"  # what makes a row's claims unverifiable rather than invalid
BATCH_DENSE = 1024  # batches searched one by one when the batch is not given; beyond, a geometric grid


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
        """Plain values; a float that is not finite (an undefined ratio) becomes None."""
        def num(x):
            return x if x is None or not isinstance(x, float) or np.isfinite(x) else None
        return {"label": self.label, "claim": self.claim, "column": self.column, "claimed": num(self.claimed),
                "raw": self.raw, "verdict": self.verdict, "bound": num(self.bound), "relation": self.relation,
                "margin": num(self.margin), "explanation": self.explanation, "condition": self.condition,
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
            return NO_HARDWARE
        hw = load_hardware(f["hardware"])
        specs = [s.strip() for s in f["policy"].split("+")] if f["policy"] else []
        if any(not spec for spec in specs):
            return f"policy {f['policy']!r} has an empty part between '+' signs"
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
            missing = cfg == NO_HARDWARE
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
                if cfg.assumed and v.verdict != "unverifiable" and c.name not in SEQ_FREE:
                    v.explanation += f" [{'; '.join(cfg.assumed)}]"
                if cfg.invalid and c.name not in SEQ_FREE:
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
        if cfg.seq is None and c.name not in SEQ_FREE:
            return Verdict(row.label, c.name, c.column, c.readings[0][1], "unverifiable",
                           explanation="no seq given: the claim depends on the prompt length")
        base = None
        if c.name in ("compression_ratio", "memory_reduction", "memory_ratio", "speedup"):
            base = self._baseline(row, cfg, c.name)
            if isinstance(base, str):
                return Verdict(row.label, c.name, c.column, c.readings[0][1], "unverifiable", explanation=base)
        grid = self.batches(cfg) if cfg.seq is not None else np.array([1])
        q = QUANTITIES[c.name](self, cfg, grid, base)
        if q is None:
            return Verdict(row.label, c.name, c.column, c.readings[0][1], "unverifiable",
                           explanation="this configuration keeps no KV cache: a ratio to its KV is undefined")
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
        nothing_fits = not fits.any()
        if nothing_fits:
            fits = np.ones(grid.shape, bool)
        bounds = [(q.lo, q.hi, "")] + ([q.alt] if q.alt else [])
        tries = []
        for lo, hi, needs in bounds:
            lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), grid.shape)
            hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), grid.shape)
            for unit, x in c.readings:
                slack = c.slack * (x / c.readings[0][1]) if c.readings[0][1] else c.slack
                with np.errstate(invalid="ignore"):  # an infinite bound keeps no band
                    ok_lo = x >= np.where(np.isfinite(lo), lo - tol * np.abs(lo) - slack, lo)
                    ok_hi = x <= np.where(np.isfinite(hi), hi + tol * np.abs(hi) + slack, hi)
                tries.append((unit, x, lo, hi, ok_lo, ok_hi, ok_lo & ok_hi & fits, needs))
        pick = next((t for t in tries if t[6].any()), tries[0])
        unit, x, lo, hi, ok_lo, ok_hi, ok, needs = pick
        conds = []
        if unit != tries[0][0]:
            conds.append(f"only if '{tries[0][0]}' means {unit}")
        if nothing_fits and c.name not in SEQ_FREE:
            conds.append("not even batch 1 fits in device memory")
        if needs:
            conds.append(needs)
        if ok.any():
            verdict = "consistent"
            # the batch with the most room before the bound, for the figures shown; the condition gives them all
            with np.errstate(invalid="ignore"):
                room = np.minimum(x - (lo - tol * np.abs(lo)), (hi + tol * np.abs(hi)) - x)
            room = np.where(ok, np.where(np.isfinite(room), room, np.finfo(float).max), -np.inf)
            i = int(np.argmax(room))
            if c.name in SEQ_FREE:
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
            if q.physical is not None and self._beyond(x, c, q.physical, grid.shape, i):
                verdict = "impossible"
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

    def _beyond(self, x: float, c: Claim, physical: tuple, shape, i: int) -> bool:
        """Whether claimed x breaks the datasheet bounds too (within the same tolerance and rounding slack)."""
        lo, hi = (np.broadcast_to(np.asarray(v, dtype=np.float64), shape)[i] for v in physical)
        slack = c.slack * (x / c.readings[0][1]) if c.readings[0][1] else c.slack
        return bool(x < lo - self.tol * abs(lo) - slack or (np.isfinite(hi) and x > hi + self.tol * abs(hi) + slack))

    def judge_quality(self, row: Row, col: str, raw: str) -> Verdict:
        """Quality needs a measurement; only an identical figure for a configuration that must differ is
        flagged (a copied cell), and only when the figure is precise enough not to coincide by rounding."""
        base = Verdict(row.label, col, col, None, "unverifiable", raw=raw, kind="quality", extra=row.extra,
                       explanation="quality cannot be judged by physics: it needs a measurement")
        try:
            x = float(raw.rstrip("%"))
        except ValueError:
            return base
        if not np.isfinite(x):
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
