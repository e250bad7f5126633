"""The serving simulator: agreement with predict, queueing laws, conservation, reproducibility, the pool."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsim import (KvsimError, Profile, Workload, load_engine, load_hardware, load_model, load_profile,
                   parse_composition, predict)
from kvsim.sim import Requests, build, parse_lengths, simulate, summary, synthetic
from kvsim.sim.step import StepCost

H100 = load_hardware("h100-sxm")
LLAMA = load_model("llama-3.1-8b")
VLLM = load_engine("vllm")
GiB = 2**30


def spaced(p, g, n=2, gap=10.0):
    """n identical requests far enough apart that none waits for another."""
    return Requests(np.arange(n) * gap, np.full(n, p), np.full(n, g))


def poisson(n=300, rate=20.0, prompt="uniform:100..1500", output="uniform:20..200", seed=0):
    return synthetic(n, parse_lengths(prompt, "p", "prompt"), parse_lengths(output, "o", "output"), seed=seed,
                     rate=rate)


# ------------------------------------------------------------------------------------------- vs predict
# every per-step, per-layer, per-token and per-policy-layer overhead, a ramp and a partial overlap at once
OVERHEADS = Profile(name="overheads", mem_efficiency=0.8, compute_efficiency=0.7, compute_small_efficiency=0.1,
                    compute_half_tokens=64, step_overhead_s=1e-4, layer_overhead_s=1e-6, kernel_overhead_s=2e-6,
                    prefill_token_overhead_s=1e-7, policy_layer_overhead_s=3e-6, compute_memory_overlap=0.3)


@pytest.mark.parametrize("policy", [[], ["snapkv", "kivi"], ["h2o:budget=1024"], ["window:size=512"],
                                    ["offload:fraction=0.25"]])
@pytest.mark.parametrize("budget", [1000, 8192])
@pytest.mark.parametrize("profile", [None, "h100-sxm-vllm", "overheads"])
def test_a_lone_request_reproduces_predict(policy, budget, profile):
    """Unbounded pool, no contention: TTFT and TPOT are predict's (chunked and whole-prompt prefill)."""
    prof = OVERHEADS if profile == "overheads" else load_profile(profile) if profile else None
    eng = VLLM.with_(max_num_batched_tokens=budget)
    p, g = 3500, 9
    res = simulate(LLAMA, H100, spaced(p, g), policy, eng, prof, pool_bytes=math.inf)
    pred = predict(LLAMA, H100, parse_composition(policy), Workload(prompt=p, gen=g, quadrature=g), prof, eng)
    np.testing.assert_allclose(res.ttft_s, float(pred.ttft_s), rtol=1e-12)
    np.testing.assert_allclose(res.tpot_s, float(pred.tpot_s), rtol=1e-12)
    assert res.preemptions.sum() == 0


@pytest.mark.parametrize("policy", [[], ["snapkv:budget=256", "kivi"]])
def test_a_batch_arriving_together_reproduces_predicts_batch(policy):
    """B identical requests at once, whole-prompt prefill: one prefill pass of B prompts, then B decodes per
    step: predict's batch-B TTFT and TPOT."""
    b, p, g = 6, 700, 7
    eng = VLLM.with_(max_num_batched_tokens=0)
    reqs = Requests(np.zeros(b), np.full(b, p), np.full(b, g))
    res = simulate(LLAMA, H100, reqs, policy, eng, pool_bytes=math.inf)
    pred = predict(LLAMA, H100, parse_composition(policy), Workload(prompt=p, gen=g, batch=b, quadrature=g),
                   engine=eng)
    np.testing.assert_allclose(res.ttft_s, float(pred.ttft_s), rtol=1e-12)
    np.testing.assert_allclose(res.tpot_s, float(pred.tpot_s), rtol=1e-12)


def test_one_vectorised_step_equals_per_request_evaluations():
    sim = build(LLAMA, H100, parse_composition(["h2o:budget=512"]), VLLM, load_profile("h100-sxm-vllm"))
    sc, cost = StepCost(sim.serving), sim.cost
    rng = np.random.default_rng(1)
    p, s = rng.integers(10, 3000, 7), rng.integers(0, 900, 7)
    got = sc.time(p, s, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    per = sum(float(cost.cache_phase(np.int64(pi), np.int64(7), np.int64(si), prefill=False).time_s) / 7
              for pi, si in zip(p, s))
    from kvsim.cost import Phase
    fixed = cost.pass_phase(7.0, 7)
    one = cost.cache_phase(np.int64(p[0]), np.int64(7), np.int64(s[0]), prefill=False)
    want = cost.step_time(Phase(time_s=fixed.time_s + per, comm_s=fixed.comm_s), 0, one.policy_layers)
    assert got == pytest.approx(float(want), rel=1e-12)


@pytest.mark.parametrize("policy,profile", [([], None), (["snapkv:budget=256", "kivi"], "h100-sxm-vllm"),
                                            (["offload:fraction=0.25"], None)])
def test_many_steps_at_once_equal_one_at_a_time(policy, profile):
    """StepCost.times (a fit's thousands of logged steps) is StepCost.time step by step: decodes, whole
    prompts and chunks, alone and mixed, with steps of different sizes side by side."""
    sim = build(LLAMA, H100, parse_composition(policy), VLLM, load_profile(profile) if profile else None)
    rng = np.random.default_rng(3)
    batches = []
    for i in range(40):
        nd, npre = int(rng.integers(0, 9)), int(rng.integers(0, 4))
        nd += nd + npre == 0
        q = rng.integers(20, 5000, npre)
        done = np.where(rng.random(npre) < 0.5, 0, (q * rng.uniform(0, 0.9, npre)).astype(np.int64))
        c = np.where(rng.random(npre) < 0.5, q - done, np.maximum((q - done) // 3, 1))
        batches.append((rng.integers(10, 4000, nd), rng.integers(0, 500, nd), q, done, c))
    one = np.array([sim.step_cost.time(*b) for b in batches])
    np.testing.assert_allclose(sim.step_cost.times(batches), one, rtol=1e-12)


def test_held_pages_end_at_predicts_per_request_pages():
    for policy in ([], ["snapkv"], ["kivi"], ["window:size=300"], ["h2o:budget=200", "int4"]):
        sim = build(LLAMA, H100, parse_composition(policy), VLLM)
        p, gen = np.array([50, 1000, 5000]), np.array([1, 100, 3000])
        np.testing.assert_array_equal(sim.serving.held(p, gen - 1), sim.serving.request(p, gen)["steady"])


# -------------------------------------------------------------------------------------------- queueing
def test_littles_law():
    """Time-average requests in the system (from the engine's own queue series) = throughput x mean E2E."""
    res = simulate(LLAMA, H100, poisson(300, rate=15.0, output="uniform:20..100"), None, VLLM)
    s = res.series
    span = float(res.finish_s.max() - res.arrival_s.min())
    in_system = float(np.sum((s["running"] + s["waiting"]) * s["step_s"])) / span
    assert in_system == pytest.approx(len(res.prompt) / span * float(res.e2e_s.mean()), rel=0.05)


def check_conserved(res, reqs):
    n = len(reqs)
    assert np.all(np.isfinite(res.finish_s)) and len(res.finish_s) == n  # every request finished, once
    assert np.all(res.arrival_s <= res.first_token_s) and np.all(res.first_token_s <= res.finish_s)
    assert len(res.itl_s) == int(np.sum(reqs.output - 1))  # one gap per token after the first, none twice
    assert np.all(res.itl_s > 0)
    assert np.all(res.series["pool_used_bytes"] <= res.pool_bytes)
    assert res.series["running"][-1] == 0 and res.series["waiting"][-1] == 0


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_requests_are_conserved_under_preemption(preemption):
    reqs = poisson(100, rate=50.0)
    res = simulate(LLAMA, H100, reqs, None, VLLM, preemption=preemption, pool_bytes=2 * GiB)
    assert res.preemptions.sum() > 0
    check_conserved(res, reqs)


def test_preemption_when_the_pool_is_small_not_when_big():
    reqs = poisson(100, rate=50.0)
    small = simulate(LLAMA, H100, reqs, None, VLLM, pool_bytes=2 * GiB)
    big = simulate(LLAMA, H100, reqs, None, VLLM)
    assert small.preemptions.sum() > 0 and big.preemptions.sum() == 0


@pytest.mark.parametrize("full_input", [False, True])
def test_admission_on_the_whole_input_or_the_first_chunk(full_input):
    """Two 1,536-token prompts at once, 1,024 tokens per step, a pool of 132 16-token blocks: the second
    prompt's first chunk (32 blocks) fits beside the first prompt (96), its whole input does not. vLLM
    (scheduler_reserve_full_isl) waits for the whole input to fit; an engine without that gate starts the
    chunk at once."""
    eng = VLLM.with_(max_num_batched_tokens=1024, max_num_seqs=0, admit_full_input=full_input)
    block = int(build(LLAMA, H100, None, eng).serving.held(np.int64(16), np.int64(0)))
    reqs = Requests(np.zeros(2), np.full(2, 1536), np.full(2, 3))
    res = simulate(LLAMA, H100, reqs, None, eng, pool_bytes=132 * block)
    check_conserved(res, reqs)
    if full_input:  # the second starts once the first has left the pool
        assert res.first_token_s[1] > res.finish_s[0] and res.preemptions.sum() == 0
    else:  # it starts beside the first, and the first one's growth then preempts it
        assert res.preemptions[1] == 1 and res.preemptions[0] == 0
    assert load_engine("vllm").admit_full_input  # vLLM's default


def test_the_engines_reserved_blocks_are_never_given_to_a_request():
    """vLLM keeps one block of its pool as the null block: a pool of N blocks holds N - 1 of requests."""
    eng = VLLM.with_(max_num_batched_tokens=0, max_num_seqs=0)
    sim = build(LLAMA, H100, None, eng, pool_bytes=10 * 2**21)  # ten 16-token blocks of 2 MiB
    assert eng.reserved_blocks == 1 and sim.pool == 9 * sim.serving.block_bytes == 9 * 2**21
    reqs = Requests(np.zeros(2), np.full(2, 64), np.full(2, 17))  # 4 blocks each, 5 at the end: 10 together
    res = sim.run(reqs)
    assert res.preemptions.sum() > 0 and res.series["pool_used_bytes"].max() <= 9 * 2**21
    none = build(LLAMA, H100, None, eng.with_(reserved_blocks=0), pool_bytes=10 * 2**21)
    assert none.pool == 10 * 2**21 and none.run(reqs).preemptions.sum() == 0


def test_policies_raise_capacity_in_a_pool_bound_regime():
    reqs = poisson(100, rate=50.0, prompt="2000", output="100")
    full = summary(simulate(LLAMA, H100, reqs, None, VLLM, pool_bytes=2 * GiB))
    comp = summary(simulate(LLAMA, H100, reqs, ["snapkv:budget=256", "kivi"], VLLM, pool_bytes=2 * GiB))
    assert comp["running_max"] > 2 * full["running_max"]
    assert comp["throughput_tokens_per_s"] > full["throughput_tokens_per_s"]
    assert comp["e2e_mean_s"] < full["e2e_mean_s"]


def test_a_larger_pool_never_lowers_goodput():
    reqs = poisson(120, rate=30.0, prompt="uniform:500..2500", output="uniform:20..100")
    goodput = [summary(simulate(LLAMA, H100, reqs, None, VLLM, pool_bytes=gib * GiB), slo_ttft=1.0,
                       slo_tpot=0.05)["goodput_requests_per_s"] for gib in (0.5, 1, 2, 4, 16)]
    assert goodput == sorted(goodput) and goodput[0] < goodput[-1]


def test_closed_loop_keeps_the_concurrency():
    reqs = synthetic(60, parse_lengths("500", "p", "prompt"), parse_lengths("50", "o", "output"), seed=3,
                     concurrency=8)
    res = simulate(LLAMA, H100, reqs, None, VLLM)
    check_conserved(res, reqs)
    assert res.series["running"].max() == 8
    assert np.all(res.arrival_s[8:] == np.sort(res.finish_s)[:52])  # each finish releases the next request


# ----------------------------------------------------------------------------------------- reproducible
def test_fixed_seeds_reproduce_bit_for_bit():
    a, b, c = (simulate(LLAMA, H100, poisson(100, rate=40.0, seed=seed), ["kivi"], VLLM, pool_bytes=1 * GiB)
               for seed in (5, 5, 6))
    assert a.preemptions.sum() > 0
    for key in ("first_token_s", "finish_s", "itl_s", "preemptions"):
        assert np.array_equal(getattr(a, key), getattr(b, key))
    assert not np.array_equal(a.finish_s, c.finish_s)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 25), rate=st.floats(0.5, 200), pool_gib=st.floats(0.6, 8), seed=st.integers(0, 99),
       budget=st.sampled_from([0, 256, 2048]), preemption=st.sampled_from(["recompute", "swap"]),
       seqs=st.sampled_from([0, 4, 64]))
def test_any_workload_is_conserved_and_within_the_pool(n, rate, pool_gib, seed, budget, preemption, seqs):
    reqs = synthetic(n, parse_lengths("uniform:1..3000", "p", "prompt"), parse_lengths("uniform:1..100", "o", "output"),
                     seed=seed, rate=rate)
    eng = VLLM.with_(max_num_batched_tokens=budget, max_num_seqs=seqs)
    res = simulate(LLAMA, H100, reqs, ["h2o:budget=256"], eng, preemption=preemption, pool_bytes=pool_gib * GiB)
    check_conserved(res, reqs)
    if seqs:
        assert res.series["running"].max() <= seqs


# -------------------------------------------------------------------------------------------- refusals
def test_a_request_the_pool_can_never_hold_is_refused():
    with pytest.raises(KvsimError, match="needs"):
        simulate(LLAMA, H100, spaced(100_000, 10), None, VLLM, pool_bytes=1 * GiB)
    with pytest.raises(KvsimError, match="context"):
        simulate(LLAMA, H100, spaced(200_000, 10), None, VLLM)
    with pytest.raises(KvsimError):
        Requests(np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))


def kvsim(*args):
    return subprocess.run([sys.executable, "-m", "kvsim.cli", "simulate", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("bad", [["--rate", "0"], ["--rate", "nan"], ["--rate", "inf"], ["--rate", "1", "--requests", "0"],
                                 ["--rate", "1", "--prompt-len", "200000"], ["--concurrency", "0"], [],
                                 ["--rate", "1", "--concurrency", "2"], ["--sweep-rate"], ["--rate", "1", "--out", "/"]])
def test_cli_refuses_hostile_input_in_one_line(bad):
    r = kvsim("--model", "llama-3.1-8b", "--requests", "5", *bad)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_json_series_and_sweep(tmp_path):
    out, series = tmp_path / "sim.json", tmp_path / "series.csv"
    r = kvsim("--model", "llama-3.1-8b", "--rate", "10", "--requests", "50", "--policy", "full;kivi",
              "--format", "json", "--out", str(out), "--series", str(series), "--slo-ttft", "1")
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert [x["policy_name"] for x in data["results"]] == ["full", "kivi"]
    assert data["results"][0]["summary"]["requests"] == 50
    assert series.read_text().startswith("policy,t_s,step_s,running,waiting,pool_used_bytes,preemptions\n")
    r = kvsim("--model", "llama-3.1-8b", "--sweep-rate", "--requests", "40", "--output-len", "50", "--slo-ttft", "0.5",
              "--slo-tpot", "0.02", "--format", "csv")
    assert r.returncode == 0, r.stderr
    rows = r.stdout.strip().splitlines()
    rate = float(rows[1].split(",")[rows[0].split(",").index("max_rate_req_per_s")])
    assert rate > 0
