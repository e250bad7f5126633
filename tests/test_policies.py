"""Generic tests over every registered policy (tests/policy_matrix.py)."""

import dataclasses

import numpy as np
import pytest

from kvsim import KvsimError, Workload, load_hardware, parse_composition, parse_policy, predict, uniform
from kvsim.model import Attention, Layer, Mamba, MLP, ModelSpec
from kvsim.policies import REGISTRY, describe, make, policy_class
from kvsim.policies.base import ENCODE

from .policy_matrix import COMPOSITIONS, POLICIES

HW = load_hardware("h100-sxm")
# Full-attention layers plus one sliding layer, so per-layer policies and architecture caps both show, and
# one Mamba layer, so what a policy does (or does not do) to recurrent state shows too.
MODEL = ModelSpec("test", 128, 100, tuple(
    Layer(Attention(4, 2, 32, window=(16 if i == 3 else 0)), MLP(256)) for i in range(6)) + (
    Layer(Mamba(256, 16, dt_rank=8), None, norms=1),))
PROMPTS = np.array([5, 40, 100])[:, None, None]
GENS = np.array([1, 7, 60])[None, :, None]
BATCH = np.array([1, 3])[None, None, :]


def outputs(policy, model=MODEL):
    pred = predict(model, HW, parse_composition(policy) if isinstance(policy, (list, tuple, str)) else policy,
                   Workload(prompt=PROMPTS, gen=GENS, batch=BATCH))
    cols = pred.columns()
    cols["per_layer"] = np.concatenate([np.ravel(b) for _, b in pred.kv_bytes_per_layer()])
    return cols


def test_matrix_covers_registry():
    assert set(POLICIES) == set(REGISTRY)


@pytest.mark.parametrize("name", POLICIES)
def test_spec_roundtrip(name):
    pol = parse_policy(POLICIES[name])
    assert parse_policy(pol.spec()) == pol


@pytest.mark.parametrize("name", POLICIES)
def test_eviction_never_exceeds_full(name):
    pol = parse_policy(POLICIES[name])
    full = outputs([])
    mine = outputs([POLICIES[name]])
    if pol.role == "select" or name == "minicache":
        assert np.all(mine["kv_cache_bytes"] <= full["kv_cache_bytes"] + mine["kv_cache_bytes"] * 0.6), name
    if name in ("window", "streamingllm", "h2o", "tova", "snapkv", "lru", "keynorm", "duo", "pyramidkv",
                "adakv", "dynamickv"):
        # pure token selection with no stored metadata beyond per-token state: payload never above full
        payload = outputs([POLICIES[name]])["per_layer"]
        assert np.all(payload <= full["per_layer"] * 1.6)


def _perturbed(cls, f, preset):
    value = preset.get(f.name, f.default)
    meta = f.metadata
    if meta.get("choices"):
        others = [c for c in meta["choices"] if c != value]
        return others[0]
    if isinstance(value, bool):
        return not value
    if isinstance(value, tuple):  # a per-layer list: an uneven one
        return (1.0, 0.5)
    hi = meta.get("hi")
    if isinstance(value, float):
        new = value / 2 if (hi is not None and value * 2 > hi) or value >= 1 else value * 2
        return new if new != value else 0.25
    new = value * 2 if value else 1
    if hi is not None and new > hi:
        new = value - 1
    return new


# Fields whose other values are only valid together with another field.
COMPANIONS = {("quant", "kind"): {"bits": 8}}
ODD = {"kernel"}  # pooling kernels must be odd


def _variants(name):
    base = parse_policy(POLICIES[name])
    for f in dataclasses.fields(type(base)):
        if f.metadata.get("quality_only"):
            continue
        value = _perturbed(type(base), f, {f.name: getattr(base, f.name)})
        if f.name in ODD:
            value = getattr(base, f.name) + 2
        changes = {f.name: value, **COMPANIONS.get((base.name, f.name), {})}
        yield f.name, base, dataclasses.replace(base, **changes)


def test_h2o_recent_window_needs_positions():
    from kvsim.policies.h2o import H2O
    assert H2O(budget=64, recent=0).state_bits < H2O(budget=64, recent=8).state_bits


@pytest.mark.parametrize("name", [n for n in POLICIES if n not in ("int8", "int4", "fp8")])
def test_every_field_changes_some_output(name):
    """A policy field that changes no output is a bug (DESIGN.md). quality_only fields are checked by the
    harness instead, against the model's outputs."""
    for field_name, base, other in _variants(name):
        assert other is not None, f"{name}.{field_name}: could not build a variant"
        a, b = outputs([base.spec()]), outputs([other.spec()])
        changed = any(not np.array_equal(a[k], b[k]) for k in a)
        assert changed, f"{name}.{field_name}: {getattr(base, field_name)} -> {getattr(other, field_name)} changed nothing"


@pytest.mark.parametrize("parts", COMPOSITIONS)
def test_compositions_build_and_predict(parts):
    out = outputs(list(parts))
    assert np.all(out["kv_cache_bytes"] > 0) and np.all(np.isfinite(out["tpot_s"]))


@pytest.mark.parametrize("specs, message", [
    (["h2o", "tova"], "both are select"),
    (["int8", "lowrank:rank=8"], "lowrank before"),
    (["int8", "kivi"], "at most one"),
    (["mixed", "int8"], "mixed already"),
    (["h2o", "minicache"], "does not compose"),
    (["rocketkv", "quest"], "already does sparse reads"),
    (["adakv:budget=100,window=8", "kivi"], "multiples of 128"),
])
def test_invalid_compositions(specs, message):
    with pytest.raises(KvsimError, match=message):
        parse_composition(specs)


@pytest.mark.parametrize("spec, message", [
    ("h2o:budget=0", "budget must be >= 1"),
    ("h2o:budget=10,recent=10", "recent"),
    ("h2o:budget=ten", "must be int"),
    ("h2o:bugdet=4", "no parameter 'bugdet'"),
    ("quant:kind=fp,bits=4", "float8"),
    ("quant:axis=channel", "group > 0"),
    ("kivi:group=32,residual=100", "multiple of group"),
    ("snapkv:budget=32,window=32", "smaller than budget"),
    ("snapkv:kernel=4", "odd"),
    ("quest:page=16,budget=100", "multiple of page"),
    ("duo:retrieval=1.5", "<= 1.0"),
    ("offload:overlap=maybe", "must be bool"),
    ("nosuch", "unknown policy"),
    ("h2o:budget", "key=value"),
])
def test_bad_policy_specs(spec, message):
    with pytest.raises(KvsimError, match=message):
        parse_policy(spec)


def test_describe_lists_every_parameter_with_help():
    for d in describe():
        for prm in d["params"]:
            assert prm["help"], (d["name"], prm["name"])


def test_encoders_apply_to_sliding_layers_but_eviction_does_not():
    sliding = ModelSpec("s", 128, 100, (Layer(Attention(4, 2, 32, window=16), MLP(256)),))
    full = outputs([], sliding)["kv_cache_bytes"]
    assert np.array_equal(outputs(["h2o:budget=4,recent=1"], sliding)["kv_cache_bytes"], full)
    assert np.all(outputs(["int8"], sliding)["kv_cache_bytes"] < full)


def test_pyramid_budgets_average_to_budget():
    from kvsim.policies.pyramid import pyramid_budgets
    b = pyramid_budgets(1024, 32, 20, 32)
    assert b[0] > b[-1] and abs(np.mean(b) - 1024) < 1


@pytest.mark.parametrize("name", [n for n in POLICIES if parse_policy(POLICIES[n]).role in ("select", "read")
                                  and n not in ("full", "mixed")])
def test_a_prompt_below_the_budget_is_said(name):
    """Every budgeted policy says so when the prompt is below its budget (nothing is evicted at the prefill)."""
    pred = predict(MODEL, HW, parse_composition([POLICIES[name]]), Workload(prompt=2))
    assert any(n.startswith(parse_policy(POLICIES[name]).name) for n in pred.notes), pred.notes


def test_pyramid_notes_layers_whose_budget_exceeds_the_prompt():
    # Budgets fall from 1966 (first layer) to 82 (last) around an average of 1024: a 1500-token prompt is kept
    # whole by the first layers although it exceeds the average budget.
    m = uniform("t", n_layers=32, hidden=256, vocab=100, n_heads=4, n_kv_heads=2, head_dim=64, intermediate=512)
    pol = parse_composition(["pyramidkv:budget=1024"])
    assert any("8 of 32 layers (up to 1966)" in n for n in predict(m, HW, pol, Workload(prompt=1500)).notes)
    assert not predict(m, HW, pol, Workload(prompt=2000)).notes


def test_minicache_says_when_nothing_is_merged():
    notes = predict(MODEL, HW, parse_composition(["minicache:start=0.9"]), Workload(prompt=50)).notes
    assert any("nothing is merged" in n for n in notes)
    assert not predict(MODEL, HW, parse_composition(["minicache:start=0.0"]), Workload(prompt=50)).notes


def test_per_layer_budget_ratios():
    pol = parse_policy("pyramidkv:budget=64,window=8,kernel=3,ratios=1,1,0.5,0.25")
    assert pol.ratios == (1.0, 1.0, 0.5, 0.25) and parse_policy(pol.spec()) == pol
    full = uniform("t", n_layers=8, hidden=128, vocab=100, n_heads=4, n_kv_heads=2, head_dim=32, intermediate=256)
    from kvsim.cost import layer_contexts
    budgets = [pol.layer_budget(c) for c in layer_contexts(full, 16)]
    assert budgets == [64, 64, 64, 64, 32, 32, 16, 16]  # 4 ratios stretched over 8 layers
    kv = int(predict(full, HW, parse_composition([pol.spec()]), Workload(prompt=100)).kv_cache_bytes)
    assert kv == sum(budgets) * 2 * 32 * 2 * 2  # tokens x KV heads x dims x (K, V) x 2 bytes
    later = parse_policy("pyramidkv:ratios=1,0.5,budget=64,window=8")  # values run up to the next key=
    assert later.ratios == (1.0, 0.5) and later.budget == 64


@pytest.mark.parametrize("spec, message", [
    ("pyramidkv:budget=64,window=8,ratios=1,0.1", "not above the window"),
    ("pyramidkv:ratios=1,x", "must be numbers"),
    ("pyramidkv:ratios=1,-1", "positive"),
    ("h2o:budget=64,128", "expected key=value"),
])
def test_bad_ratio_lists(spec, message):
    with pytest.raises(KvsimError, match=message):
        parse_policy(spec)


def test_policy_state_is_reported_beside_the_cache():
    # H2O keeps an fp32 score and an int32 position per kept token and head: 8 bytes, in policy_state_bytes;
    # kv_cache_bytes holds keys and values only, so budget / prompt is the compression ratio as read.
    m = uniform("t", n_layers=4, hidden=128, vocab=100, n_heads=4, n_kv_heads=2, head_dim=32, intermediate=256)
    wl = Workload(prompt=1000, batch=3)
    full = predict(m, HW, None, wl)
    h2o = predict(m, HW, parse_composition(["h2o:budget=100,recent=10"]), wl)
    assert int(h2o.kv_cache_bytes) * 10 == int(full.kv_cache_bytes)
    assert int(h2o.policy_state_bytes) == 3 * 4 * 2 * 100 * 8 and int(full.policy_state_bytes) == 0
    assert int(h2o.kv_peak_bytes) >= int(h2o.kv_cache_bytes) + int(h2o.policy_state_bytes)  # memory counts both
    assert sum(int(b) for _, b in h2o.kv_bytes_per_layer()) == int(h2o.kv_cache_bytes)
    snap = predict(m, HW, parse_composition(["snapkv:budget=100,window=10"]), wl)
    assert int(snap.policy_state_bytes) == 0  # compresses once: no scores kept
