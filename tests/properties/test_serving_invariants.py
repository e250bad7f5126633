"""Invariants of the serving model (kvsim/serving.py) over random architectures, policies, engines and devices."""

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from kvsim import Engine, HardwareSpec, Workload, parse_composition, predict
from kvsim.cost import CostModel
from kvsim.policies.base import ENCODE, SELECT
from kvsim.profile import DATASHEET
from kvsim.serving import Serving

from ..policy_matrix import COMPOSITIONS, POLICIES
from .test_analytic_invariants import models

ALL = sorted(POLICIES)
SPECS = [[POLICIES[n]] for n in ALL] + [list(c) for c in COMPOSITIONS]
# eviction and quantization (and low-rank) only: sparse reads keep page metadata beside a full cache
SHRINKING = [[POLICIES[n]] for n in ALL if parse_composition([POLICIES[n]]).parts[0].role in (SELECT, ENCODE)] + \
    [list(c) for c in COMPOSITIONS if "quest" not in " ".join(c)]
prompts = st.integers(1, 400)
gens = st.integers(1, 60)


@st.composite
def engines(draw, fraction=None):
    return Engine(name="t", memory_fraction=fraction or draw(st.sampled_from([0.3, 0.5, 0.9, 1.0])),
                  fraction_of=draw(st.sampled_from(["total", "static", "free"])),
                  block_size=draw(st.sampled_from([1, 4, 16, 128])),
                  max_num_batched_tokens=draw(st.sampled_from([0, 8, 64, 512])))


def device(memory: int) -> HardwareSpec:
    return HardwareSpec("d", "test device", memory, 1e12, {"bf16": 1e14, "fp32": 5e13}, host_bandwidth=1e10)


memories = st.integers(60_000, 20_000_000)  # from less than the weights to thousands of requests


def cost_model(model, spec, hw):
    return CostModel(model, hw, parse_composition(spec), kv_dtype="bf16", weight_dtype=None, tp=1, pp=1,
                     profile=DATASHEET)


@given(models(), st.sampled_from(SPECS), prompts, gens, engines(), st.floats(0.05, 1.0), st.floats(0.05, 1.0),
       memories)
def test_max_concurrency_non_decreasing_in_memory_utilization(model, spec, p, g, eng, f1, f2, memory):
    lo, hi = sorted((f1, f2))
    hw, pol = device(memory), parse_composition(spec)
    a = predict(model, hw, pol, Workload(prompt=p, gen=g), engine=eng.with_(memory_fraction=lo))
    b = predict(model, hw, pol, Workload(prompt=p, gen=g), engine=eng.with_(memory_fraction=hi))
    assert float(b.max_concurrency) >= float(a.max_concurrency)
    assert int(b.kv_pool_blocks) >= int(a.kv_pool_blocks) and int(b.max_batch) >= int(a.max_batch)


@given(models(), st.sampled_from(SHRINKING), prompts, gens, engines(), memories, st.integers(0, 400))
def test_eviction_and_quantization_never_lower_max_concurrency(model, spec, p, g, eng, memory, shared):
    """A policy holds no more pages than the full cache, between steps and while prefilling, so the pool holds at
    least as many of its requests. (Excluded: a budget larger than the prompt keeps everything plus its scores,
    and a learned scorer's or low-rank basis's shared weights take memory from the pool.)"""
    hw = device(memory)
    shared = min(shared, p)
    full = Serving(cost_model(model, [], hw), eng, memory).request(p, g, 1, shared)
    mine = Serving(cost_model(model, spec, hw), eng, memory).request(p, g, 1, shared)
    assume(mine["steady"] + mine["shared"] <= full["steady"] + full["shared"])
    assume(mine["steady"] + mine["surplus"] + mine["shared"] <= full["steady"] + full["surplus"] + full["shared"])
    assume(mine["shared"] == full["shared"] or shared == 0)
    wl = Workload(prompt=p, gen=g, shared_prefix=shared)
    a = predict(model, hw, None, wl, engine=eng)
    b = predict(model, hw, parse_composition(spec), wl, engine=eng)
    assume(int(b.kv_pool_bytes) >= int(a.kv_pool_bytes))
    assert float(b.max_concurrency) >= float(a.max_concurrency) * (1 - 1e-12)


@given(models(), st.sampled_from(SPECS), prompts, gens, engines(), memories, st.integers(0, 400))
def test_block_rounded_pool_never_holds_more_than_its_bytes(model, spec, p, g, eng, memory, shared):
    hw = device(memory)
    shared = min(shared, p)
    cm = cost_model(model, spec, hw)
    srv = Serving(cm, eng, memory)
    pool = srv.pool(p)
    # the pool's token slots at full precision in every device layer fit in the bytes the engine left
    per_token = sum(grp.count * page for grp, page in srv.paged) // eng.block_size
    assert int(pool["tokens"]) * per_token <= int(pool["usable"])
    assert 0 <= int(pool["bytes"]) <= int(pool["usable"])
    # the requests it admits, block-rounded, fit in the pool, and so do their unrounded bytes
    info = srv.concurrency(p, g, 1, shared)
    n = int(info["max_requests"])
    assume(n < 10**12)
    used = n * int(info["steady"]) + int(info["surplus"]) + int(info["shared"])
    assert n == 0 or used <= int(pool["bytes"])
    logical = int(cm.kv_stored(p, g - 1, peak=True, per_device=True, place="device")) + srv.state
    assert logical <= int(info["steady"]) + int(info["shared"])  # rounding up to pages never under-counts
    assert float(info["max_concurrency"]) >= n and np.isfinite(float(info["max_concurrency"]))


@given(models(), st.sampled_from(SPECS), st.integers(2, 3000), st.integers(1, 4), st.data())
def test_chunked_prefill_is_never_faster_than_whole_prompt_prefill(model, spec, p, b, data):
    budget = data.draw(st.integers(b, max(b, p * b - 1)))
    hw = device(10**10)
    pol = parse_composition(spec)
    whole = predict(model, hw, pol, Workload(prompt=p, batch=b))
    chunked = predict(model, hw, pol, Workload(prompt=p, batch=b),
                      engine=Engine(name="c", max_num_batched_tokens=budget))
    assert float(chunked.ttft_s) >= float(whole.ttft_s) * (1 - 1e-12)
    assert float(chunked.prefill_flops) >= float(whole.prefill_flops) * (1 - 1e-12)
