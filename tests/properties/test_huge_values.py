"""Huge inputs: predict either refuses in one line (KvsimError) or returns exact, non-negative, finite, monotone
figures. No int64 may wrap: the full cache is compared with its size computed in Python integers."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsim import KvsimError, Workload, load_hardware, load_model, parse_composition, predict
from kvsim.limits import EXACT, token_limit
from kvsim.model import MLA, MLP, Attention, Layer, ModelSpec

from ..policy_matrix import POLICIES

HW = load_hardware("h100-sxm")
SIZE_KEYS = ("kv_cache_bytes", "kv_cache_bytes_per_device", "kv_peak_bytes", "kv_shared_bytes", "kv_host_bytes",
             "state_bytes", "weights_bytes", "weights_bytes_per_device", "activation_peak_bytes",
             "peak_memory_bytes", "max_batch")
FLOAT_KEYS = ("prefill_flops", "prefill_bytes", "decode_flops", "decode_bytes", "ttft_s", "tpot_s", "e2e_s",
              "decode_tokens_per_s", "throughput_tokens_per_s")

# Log-uniform whole numbers from 1 to past 2**63 (Python ints beyond int64 included).
huge = st.integers(0, 66).flatmap(lambda e: st.integers(max(1, 2**e // 2), 2**e))


@st.composite
def models(draw):
    kind = draw(st.sampled_from(["gqa", "mqa", "mla"]))
    n_layers = draw(st.integers(1, 96))
    if kind == "mla":
        mixer = MLA(draw(st.sampled_from([16, 128])), 512, 64, 128, 128)
    else:
        kv = 1 if kind == "mqa" else draw(st.sampled_from([2, 8, 64]))
        mixer = Attention(kv * draw(st.sampled_from([1, 4, 16])), kv, draw(st.sampled_from([64, 128, 256])))
    return ModelSpec(kind, 4096, 32000, (Layer(mixer, MLP(11008)),) * n_layers)


def run(model, spec, p, g, b):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # scalar overflow in numpy is a RuntimeWarning
        return predict(model, HW, parse_composition([spec] if spec else []), Workload(prompt=p, gen=g, batch=b))


def check_sane(pred):
    for k in SIZE_KEYS:
        a = np.asarray(getattr(pred, k))
        assert a.dtype.kind in "iu" and np.all(a >= 0) and np.all(a < EXACT), k
    for k in FLOAT_KEYS:
        a = np.asarray(getattr(pred, k), dtype=np.float64)
        assert np.all(np.isfinite(a)) and np.all(a >= 0), k
    assert bool(pred.fits) == (int(pred.peak_memory_bytes) <= pred.capacity_bytes)
    mc = int(pred.max_context())
    assert 0 <= mc < 2**53


def refused_in_one_line(e: KvsimError) -> bool:
    return "\n" not in str(e) and str(e)


@given(models(), huge, huge, huge)
def test_full_cache_is_exact_or_refused(model, p, g, b):
    try:
        pred = run(model, None, p, g, b)
    except KvsimError as e:
        assert refused_in_one_line(e)
        return
    check_sane(pred)
    per_token = sum(l.mixer.kv_layout().n_kv_heads * (l.mixer.kv_layout().k_dim + l.mixer.kv_layout().v_dim) * 2
                    for l in model.layers)
    assert int(pred.kv_cache_bytes) == b * (p + g - 1) * per_token  # Python integers: exact


@settings(max_examples=60)
@given(st.sampled_from(sorted(POLICIES)), huge, huge, huge)
def test_every_policy_is_sane_or_refused(name, p, g, b):
    model = load_model("llama-3-8b")
    try:
        pred = run(model, POLICIES[name], p, g, b)
    except KvsimError as e:
        assert refused_in_one_line(e)
        return
    check_sane(pred)
    try:  # monotone: a bigger batch never needs less memory or time
        more = run(model, POLICIES[name], p, g, b * 2)
    except KvsimError:
        return
    assert int(more.kv_cache_bytes) >= int(pred.kv_cache_bytes)
    assert int(more.peak_memory_bytes) >= int(pred.peak_memory_bytes)
    assert float(more.ttft_s) >= float(pred.ttft_s) and float(more.tpot_s) >= float(pred.tpot_s)
    assert int(more.max_context()) <= int(pred.max_context())


@given(huge, st.integers(1, 2**40))
def test_prefill_flops_grow_with_the_prompt(p, b):
    model = load_model("llama-2-7b")
    try:
        small, big = run(model, None, p, 1, b), run(model, None, p * 2, 1, b)
    except KvsimError as e:
        assert refused_in_one_line(e)
        return
    assert 0 < float(small.prefill_flops) < float(big.prefill_flops) < np.inf


@pytest.mark.parametrize("batch", [1, 64, 256, 512, 4096, 2**20])
def test_max_context_is_the_largest_that_fits_at_any_batch(batch):
    # Llama-2-7B fp16 on an H100: the search used to wrap int64 at batch 256-512 ("unbounded", 59 billion).
    m = load_model("llama-2-7b")
    pred = run(m, None, 1024, 16, batch)
    mc = int(pred.max_context())
    assert mc < 120_000
    if mc:
        assert bool(run(m, None, mc, 16, batch).fits)
    assert not bool(run(m, None, mc + 1, 16, batch).fits)


@pytest.mark.parametrize("workload, message", [
    (dict(prompt=10**18), "at most 2\\*\\*53"),
    (dict(prompt=10**30), "at most 2\\*\\*53"),
    (dict(batch=10**15), "beyond 2\\*\\*53 bytes"),
    (dict(prompt=2**52, gen=2**52), "beyond what kvsim computes exactly"),
])
def test_unrepresentable_results_are_refused(workload, message):
    with pytest.raises(KvsimError, match=message):
        run(load_model("llama-2-7b"), None, workload.get("prompt", 1024), workload.get("gen", 1),
            workload.get("batch", 1))


def test_token_limit_is_generous_for_real_models():
    assert token_limit(load_model("llama-2-7b")) > 10**10
    assert token_limit(load_model("deepseek-v3")) > 10**10
