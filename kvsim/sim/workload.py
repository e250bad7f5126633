"""Requests for the simulator: arrival times and lengths.

Arrivals are Poisson at a rate (exponential gaps), a closed loop of fixed concurrency (a finished request's
client sends the next one at once), or a trace CSV with the columns arrival_s, prompt_tokens, output_tokens.
Lengths are drawn from a distribution spelled as text:
    512                       every request the same
    uniform:128..2048         whole numbers, both ends included
    lognormal:median=M,sigma=S   exp(N(log M, S)), rounded, at least 1
    lognormal:fit=FILE        the log-normal whose log-mean and log-deviation are those of FILE's column
Every draw comes from one numpy Generator seeded by the caller, so a seed reproduces a workload bit for bit.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import KvsimError
from ..limits import INPUT_MAX

TRACE_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")
TRACE_MAX_BYTES = 256 * 2**20
MAX_REQUESTS = 10_000_000


@dataclass(frozen=True)
class Requests:
    """Requests in arrival order. With `closed` > 0 the arrival times are ignored: `closed` requests arrive at
    time 0 and each one that finishes releases the next at its finish time."""

    arrival_s: np.ndarray  # float64, non-decreasing
    prompt: np.ndarray  # int64 >= 1
    output: np.ndarray  # int64 >= 1: generated tokens, the first one from the prefill
    closed: int = 0

    def __post_init__(self):
        a, p, o = (np.asarray(x) for x in (self.arrival_s, self.prompt, self.output))
        n = len(p)
        if n == 0:
            raise KvsimError("no requests to simulate (--requests must be at least 1)")
        if n > MAX_REQUESTS:
            raise KvsimError(f"at most {MAX_REQUESTS:,} requests, got {n:,}")
        if a.shape != (n,) or o.shape != (n,):
            raise KvsimError("arrival times, prompt and output lengths must be three arrays of one length")
        if not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(np.diff(a) < 0):
            raise KvsimError("arrival times must be finite, non-negative and in order")
        for name, x in (("prompt", p), ("output", o)):
            if x.dtype.kind not in "iu" or np.any(x < 1) or np.any(x > INPUT_MAX):
                raise KvsimError(f"{name} lengths must be whole numbers from 1 to 2**53")
        if isinstance(self.closed, bool) or not isinstance(self.closed, int) or self.closed < 0:
            raise KvsimError("the closed-loop concurrency must be a whole number >= 0")
        object.__setattr__(self, "arrival_s", a.astype(np.float64))
        object.__setattr__(self, "prompt", p.astype(np.int64))
        object.__setattr__(self, "output", o.astype(np.int64))

    def __len__(self) -> int:
        return len(self.prompt)


def _positive(x: float, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
        raise KvsimError(f"{what} must be a finite number > 0, got {x!r}")
    return float(x)


def _count(n, what: str, lo: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not lo <= n <= MAX_REQUESTS:
        raise KvsimError(f"{what} must be a whole number from {lo} to {MAX_REQUESTS:,}, got {n!r}")
    return int(n)


def fit_lognormal(x) -> tuple[float, float]:
    """(mu, sigma) of log x: the maximum-likelihood log-normal."""
    x = np.asarray(x, dtype=np.float64)
    if x.size < 2 or np.any(x <= 0):
        raise KvsimError("a log-normal fit needs at least two positive lengths")
    logs = np.log(x)
    return float(logs.mean()), float(logs.std())


def parse_lengths(spec: str, flag: str, column: str):
    """A length distribution from its text (see the module docstring): a function (n, rng) -> int64 array."""
    text = str(spec).strip()
    try:
        if text.startswith("uniform:"):
            lo_s, hi_s = text[len("uniform:"):].split("..")
            lo, hi = _whole(lo_s, flag), _whole(hi_s, flag)
            if hi < lo:
                raise KvsimError(f"{flag}: uniform range {text!r} runs backwards")
            return lambda n, rng: rng.integers(lo, hi, size=n, endpoint=True, dtype=np.int64)
        if text.startswith("lognormal:"):
            opts = dict(kv.split("=", 1) for kv in text[len("lognormal:"):].split(","))
            if set(opts) == {"fit"}:
                mu, sigma = fit_lognormal(getattr(read_trace(opts["fit"]), column))
            elif set(opts) == {"median", "sigma"}:
                median, sigma = float(opts["median"]), float(opts["sigma"])
                if not (math.isfinite(median) and median >= 1 and math.isfinite(sigma) and 0 <= sigma <= 10):
                    raise KvsimError(f"{flag}: lognormal needs median >= 1 and sigma in [0, 10], got {text!r}")
                mu = math.log(median)
            else:
                raise ValueError
            return lambda n, rng: _lognormal(rng, mu, sigma, n, flag)
        v = _whole(text, flag)
        return lambda n, rng: np.full(n, v, dtype=np.int64)
    except KvsimError:
        raise
    except (ValueError, TypeError):
        raise KvsimError(f"{flag}: cannot read {text!r}; give N, uniform:LO..HI, lognormal:median=M,sigma=S "
                         "or lognormal:fit=TRACE.csv") from None


def _whole(s: str, flag: str) -> int:
    f = float(s)
    if not math.isfinite(f) or f != int(f) or not 1 <= f <= INPUT_MAX:
        raise KvsimError(f"{flag}: lengths are whole numbers from 1 to 2**53, got {s.strip()!r}")
    return int(f)


def _lognormal(rng, mu: float, sigma: float, n: int, flag: str) -> np.ndarray:
    x = np.rint(rng.lognormal(mu, sigma, size=n))
    if np.any(x > INPUT_MAX):
        raise KvsimError(f"{flag}: the log-normal draws lengths beyond 2**53; lower sigma or the median")
    return np.maximum(x, 1).astype(np.int64)


def synthetic(n: int, prompt, output, seed: int, rate: float | None = None, concurrency: int = 0) -> Requests:
    """n requests with lengths drawn from `prompt` and `output` (parse_lengths) arriving at `rate` (Poisson)
    or in a closed loop of `concurrency`."""
    n = _count(n, "--requests")
    if (rate is None) == (not concurrency):
        raise KvsimError("give an arrival rate (--rate) or a concurrency (--concurrency), one of them")
    rng = np.random.default_rng(seed)
    gaps = rng.standard_exponential(n)  # drawn first in either mode, so lengths match across modes
    p, o = prompt(n, rng), output(n, rng)
    if concurrency:
        return Requests(np.zeros(n), p, o, closed=_count(concurrency, "--concurrency"))
    return Requests(np.cumsum(gaps / _positive(rate, "--rate")), p, o)


def at_rate(reqs: Requests, gaps: np.ndarray, rate: float) -> Requests:
    """The same requests arriving with exponential gaps `gaps` (mean 1) scaled to `rate`."""
    return Requests(np.cumsum(gaps / _positive(rate, "the arrival rate")), reqs.prompt, reqs.output)


def read_trace(path: str | Path) -> Requests:
    """A trace CSV: a header naming arrival_s, prompt_tokens and output_tokens (other columns ignored), one
    request per row; rows are sorted by arrival."""
    p = Path(path)
    if not p.is_file():
        raise KvsimError(f"--trace: {p} is not a regular file")
    if p.stat().st_size > TRACE_MAX_BYTES:
        raise KvsimError(f"--trace: {p} is larger than {TRACE_MAX_BYTES // 2**20} MiB")
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in TRACE_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise KvsimError(f"--trace: {p} lacks the column(s) {', '.join(missing)}")
            cols: dict[str, list] = {c: [] for c in TRACE_COLUMNS}
            for line, row in enumerate(reader, start=2):
                for c in TRACE_COLUMNS:
                    try:
                        v = float(row[c])
                    except (TypeError, ValueError):
                        raise KvsimError(f"--trace: {p} line {line}: {c} {row[c]!r} is not a number") from None
                    if not math.isfinite(v) or v < 0 or (c != "arrival_s" and (v != int(v) or v < 1)):
                        raise KvsimError(f"--trace: {p} line {line}: bad {c} {row[c]!r}")
                    cols[c].append(v)
    except UnicodeDecodeError:
        raise KvsimError(f"--trace: {p} is not UTF-8 text") from None
    a = np.array(cols["arrival_s"], dtype=np.float64)
    order = np.argsort(a, kind="stable")
    lengths = [np.array(cols[c], dtype=np.float64)[order] for c in TRACE_COLUMNS[1:]]
    if any(np.any(x > INPUT_MAX) for x in lengths):
        raise KvsimError(f"--trace: {p}: lengths must be at most 2**53")
    return Requests(a[order], lengths[0].astype(np.int64), lengths[1].astype(np.int64))
