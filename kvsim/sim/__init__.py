"""Serving simulation: continuous batching over a paged KV pool, with every KV policy in the loop.

    from kvsim import load_model, load_hardware
    from kvsim.sim import simulate, synthetic, parse_lengths, summary
    reqs = synthetic(1000, parse_lengths("1024", "--prompt-len", "prompt"),
                     parse_lengths("256", "--output-len", "output"), seed=0, rate=5.0)
    res = simulate(load_model("llama-3.1-8b"), load_hardware("h100-sxm"), reqs, policy=["snapkv", "kivi"])
    print(summary(res, slo_ttft=2.0, slo_tpot=0.05))

Modules: workload (arrivals and lengths), step (one step's time from the cost model), engine (the
scheduler loop), metrics (percentiles, goodput, time series), and here the entry points.
"""

from __future__ import annotations

import math

import numpy as np

from ..cost import CostModel
from ..errors import KvsimError
from ..policies import Compose, Policy, compose, parse_composition
from ..profile import DATASHEET
from ..serving import Engine, Serving
from .engine import PREEMPTION, SimResult, Simulator
from .metrics import downsample, meets, percentiles, summary
from .workload import Requests, at_rate, parse_lengths, read_trace, synthetic

__all__ = ["PREEMPTION", "Requests", "SimResult", "Simulator", "at_rate", "build", "downsample", "meets",
           "parse_lengths", "percentiles", "read_trace", "run_requests", "simulate", "summary", "sweep_rate",
           "synthetic"]


def build(model, hardware, policy=None, engine: Engine | str = "vllm", profile=None, *, kv_dtype=None,
          weight_dtype=None, state_dtype=None, tp: int = 1, pp: int = 1, preemption: str = "recompute",
          pool_bytes: float | None = None, longest_prompt: int = 1) -> Simulator:
    """A Simulator for one deployment, set up as predict sets up its cost model and pool. pool_bytes
    overrides the engine's pool (math.inf: unbounded); longest_prompt sizes the activation reservation of an
    engine without chunked prefill."""
    from ..presets import load_engine

    if isinstance(engine, str):
        engine = load_engine(engine)
    if engine.batching != "continuous":
        raise KvsimError(f"engine {engine.label} batches statically; the simulator schedules continuous batching "
                         "(--engine vllm, sglang or trtllm)")
    if policy is None:
        policy = Compose(())
    elif isinstance(policy, Policy):
        policy = compose(policy)
    elif isinstance(policy, (list, tuple)):
        policy = parse_composition(list(policy))
    profile = profile or DATASHEET
    cost = CostModel(model, hardware, policy, kv_dtype=kv_dtype, weight_dtype=weight_dtype, tp=tp, pp=pp,
                     profile=profile, state_dtype=state_dtype)
    serving = Serving(cost, engine, int(hardware.memory_bytes - profile.reserved_bytes))
    if pool_bytes is None:
        pool_bytes = float(serving.pool(np.int64(longest_prompt))["bytes"])
    return Simulator(serving, pool_bytes, preemption)


def simulate(model, hardware, requests: Requests, policy=None, engine: Engine | str = "vllm", profile=None,
             progress=None, **knobs) -> SimResult:
    """Simulate `requests` on one replica; knobs as for build()."""
    knobs.setdefault("longest_prompt", int(np.max(requests.prompt)))
    return build(model, hardware, policy, engine, profile, **knobs).run(requests, progress)


def run_requests(model, hardware, arrival_s, prompt_tokens, output_tokens, policy=None,
                 engine: Engine | str = "vllm", profile=None, **knobs) -> dict[str, np.ndarray]:
    """Per-request TTFT, TPOT and end-to-end latency (seconds) for requests given as arrays: the entry point
    for comparing the simulator with a measured engine run."""
    reqs = Requests(np.asarray(arrival_s, dtype=np.float64), np.asarray(prompt_tokens), np.asarray(output_tokens))
    res = simulate(model, hardware, reqs, policy, engine, profile, **knobs)
    return {"ttft_s": res.ttft_s, "tpot_s": res.tpot_s, "e2e_s": res.e2e_s, "first_token_s": res.first_token_s,
            "finish_s": res.finish_s, "preemptions": res.preemptions}


def _meets_at(sim: Simulator, reqs: Requests, gaps, rate: float, slo_ttft, slo_tpot, q: float):
    res = sim.run(at_rate(reqs, gaps, rate))
    ok = True
    if slo_ttft is not None:
        ok &= float(np.percentile(res.ttft_s, q)) <= slo_ttft
    tpot = res.tpot_s[~np.isnan(res.tpot_s)]
    if slo_tpot is not None and tpot.size:
        ok &= float(np.percentile(tpot, q)) <= slo_tpot
    return bool(ok), res


def sweep_rate(sim: Simulator, reqs: Requests, gaps: np.ndarray, slo_ttft: float | None, slo_tpot: float | None,
               q: float = 99.0, rel_tol: float = 0.02, start: float = 1.0, progress=None):
    """Highest Poisson arrival rate (requests/s) at which the q-th percentiles of TTFT and TPOT meet the SLOs,
    by doubling then geometric bisection to `rel_tol`, on the same requests and exponential gaps at every
    rate. Returns (rate, SimResult at that rate), or (0.0, None) when even 2**-20 req/s misses them."""
    if slo_ttft is None and slo_tpot is None:
        raise KvsimError("--sweep-rate needs an SLO: --slo-ttft and/or --slo-tpot")
    if not (0 < rel_tol < 1) or not math.isfinite(start) or start <= 0:
        raise KvsimError("the sweep needs 0 < rel_tol < 1 and a positive start rate")
    ok, res = _meets_at(sim, reqs, gaps, start, slo_ttft, slo_tpot, q)
    lo, hi, best = (start, None, res) if ok else (None, start, None)
    for _ in range(40):  # bracket: rates 2**-20 .. 2**20 times the start
        if progress:
            progress()
        if lo is not None and hi is not None:
            break
        r = lo * 2 if lo is not None else hi / 2
        ok, res = _meets_at(sim, reqs, gaps, r, slo_ttft, slo_tpot, q)
        if ok:
            lo, best = r, res
        else:
            hi = r
        if (lo or 0) > start * 2**20 or (hi or 1) < start * 2**-20:
            break
    if lo is None:
        return 0.0, None
    if hi is None:
        raise KvsimError(f"the SLOs are still met at {lo:.3g} req/s; the sweep stops there (is the SLO too loose?)")
    while hi / lo > 1 + rel_tol:
        if progress:
            progress()
        mid = math.sqrt(lo * hi)
        ok, res = _meets_at(sim, reqs, gaps, mid, slo_ttft, slo_tpot, q)
        if ok:
            lo, best = mid, res
        else:
            hi = mid
    return lo, best
