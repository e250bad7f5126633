"""Invariants of the analytic model over random architectures, policies and workloads."""

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from kvsim import Workload, load_hardware, parse_composition, predict
from kvsim.cost import layer_contexts
from kvsim.model import MLA, MLP, Attention, Layer, LinearAttention, Mamba, ModelSpec, MoE
from kvsim.policies import parse_policy

from ..policy_matrix import POLICIES

HW = load_hardware("h100-sxm")


@st.composite
def mixers(draw, kv, group, d):
    """One token mixer of any kind kvsim models: attention (full or windowed, with sinks or an output gate), MLA
    in either cache form, Mamba-1/2, linear attention (plain or a gated delta rule with a conv)."""
    kind = draw(st.sampled_from(["attention", "attention", "mla", "mamba", "mamba2", "linear"]))
    if kind == "attention":
        return Attention(kv * group, kv, d, window=draw(st.sampled_from([0, 0, 12, 40])),
                         sinks=draw(st.booleans()), out_gate=draw(st.booleans()), qk_norm=draw(st.booleans()))
    if kind == "mla":
        return MLA(kv * group, draw(st.sampled_from([16, 32])), 8, d, d, q_lora_rank=draw(st.sampled_from([0, 24])),
                   cache=draw(st.sampled_from(["latent", "decompressed"])))
    if kind == "mamba":
        return Mamba(128, draw(st.sampled_from([8, 16])), dt_rank=4, bc_norms=draw(st.booleans()))
    if kind == "mamba2":
        return Mamba(128, 32, version=2, n_heads=draw(st.sampled_from([4, 8])), n_groups=draw(st.sampled_from([1, 2])))
    delta = draw(st.booleans())
    return LinearAttention(4, d, d, n_key_heads=draw(st.sampled_from([2, 4])), conv=4 if delta else 0,
                           head_gates=2 if delta else 0, head_params=2 if delta else 0, out_norm=delta,
                           delta_rule=delta, shift_states=0 if delta else draw(st.sampled_from([0, 2])))


@st.composite
def models(draw):
    """Random small models drawing from every layer type (and hybrids of them), dense or MoE MLPs."""
    kv = draw(st.sampled_from([1, 2, 4]))
    group = draw(st.sampled_from([1, 2, 3]))
    d = draw(st.sampled_from([8, 16, 32]))
    n_layers = draw(st.integers(2, 6))
    layers = []
    for _ in range(n_layers):
        moe = draw(st.booleans())
        mlp = MoE(8, 2, 32, n_shared=draw(st.sampled_from([0, 1])), shared_gate=draw(st.booleans())) if moe else MLP(64)
        layers.append(Layer(draw(mixers(kv, group, d)), mlp))
    return ModelSpec("h", 64, 50, tuple(layers))


policy_names = st.sampled_from(sorted(POLICIES))
prompts = st.integers(1, 300)
gens = st.integers(1, 80)


def kv(model, spec, p, g=1, b=1):
    return int(predict(model, HW, parse_composition([spec] if spec else []),
                       Workload(prompt=p, gen=g, batch=b)).kv_cache_bytes)


def granularity(spec) -> int:
    pol = parse_composition([spec]) if spec else parse_composition([])
    return pol.quant.granularity() if pol.quant is not None else 1


@given(models(), policy_names, prompts, gens)
def test_kv_bytes_monotone_in_prompt(model, name, p, g):
    """Non-decreasing in the prompt; for encodings that flush a residual (KIVI, per-channel groups) the bytes
    drop when the residual is quantized, so monotonicity holds in steps of the residual length."""
    spec = POLICIES[name]
    step = granularity(spec)
    assert kv(model, spec, p + step, g) >= kv(model, spec, p, g)


@given(st.integers(1, 4), policy_names, prompts, gens)
def test_mqa_le_gqa_le_mha(group, name, p, g):
    spec = POLICIES[name]
    sizes = []
    for kv_heads in (1, 2, 4):
        model = ModelSpec("m", 64, 50, (Layer(Attention(4 * group, kv_heads, 16), MLP(64)),) * 3)
        sizes.append(kv(model, spec, p, g))
    assert sizes[0] <= sizes[1] <= sizes[2]


@given(models(), policy_names, prompts, gens)
def test_selection_keeps_no_more_tokens_than_full(model, name, p, g):
    pol = parse_composition([POLICIES[name]])
    full = parse_composition([])
    for ctx in layer_contexts(model, 16):
        if ctx is None:
            continue
        mine = sum(s.heads * np.asarray(s.tokens) for s in pol.segments(ctx, p, g - 1))
        base = sum(s.heads * np.asarray(s.tokens) for s in full.segments(ctx, p, g - 1))
        assert np.all(mine <= base)


@given(models(), st.sampled_from([2, 3, 4, 8]), st.sampled_from([0, 8]), prompts)
def test_token_quantization_is_bits_over_16_plus_metadata(model, bits, group, p):
    fp16 = kv(model, "", p)
    q = kv(model, f"quant:bits={bits},group={group}", p)
    tokens_heads = 0
    meta = 0
    for ctx in layer_contexts(model, 16):
        if ctx is None:  # a recurrent layer: no per-token cache
            continue
        n = min(p, ctx.layout.keep_cap) if ctx.layout.keep_cap else p
        tokens_heads += n * ctx.heads
        rows = sum(-(-d // (group or d)) for d in (ctx.layout.k_dim, ctx.layout.v_dim) if d)  # MLA latent: no V row
        meta += n * ctx.heads * rows * 4  # fp16 scale + zero per group
    assert q == fp16 * bits // 16 + meta


@given(models(), st.integers(1, 100_000), st.integers(1, 100_000), policy_names)
def test_recurrent_state_constant_in_length(model, p1, p2, name):
    """Whatever the layer mix and the policy, recurrent state does not grow with the sequence; a quantization
    that takes the state stores less of it than full precision."""
    pol = parse_composition([POLICIES[name]])
    a = predict(model, HW, pol, Workload(prompt=p1)).state_bytes
    b = predict(model, HW, pol, Workload(prompt=p2, gen=3)).state_bytes
    assert int(a) == int(b)
    recurrent = any(isinstance(layer.mixer, (Mamba, LinearAttention)) for layer in model.layers)
    assert (int(a) > 0) == recurrent
    full = predict(model, HW, None, Workload(prompt=p1)).state_bytes
    quantized = predict(model, HW, parse_composition(["int4:state=true"]), Workload(prompt=p1)).state_bytes
    assert int(quantized) < int(full) or not recurrent


@given(models(), policy_names, prompts, gens, st.integers(1, 8))
def test_memory_and_time_invariants(model, name, p, g, b):
    pol = parse_composition([POLICIES[name]])
    pred = predict(model, HW, pol, Workload(prompt=p, gen=g, batch=b))
    assert int(pred.kv_peak_bytes) >= int(pred.kv_cache_bytes_per_device)
    assert float(pred.peak_memory_bytes) >= float(pred.weights_bytes_per_device)
    assert float(pred.tpot_s) > 0 and float(pred.ttft_s) > 0
    bigger = predict(model, HW, pol, Workload(prompt=p, gen=g, batch=b + 1))
    assert float(bigger.tpot_s) >= float(pred.tpot_s)
    assert int(bigger.kv_cache_bytes) >= int(pred.kv_cache_bytes)


@given(policy_names, st.integers(1, 2000), st.integers(1, 2000))
def test_max_batch_falls_with_prompt(name, p1, p2):
    assume(p1 != p2)
    from kvsim import load_model
    m = load_model("llama-3-8b")
    pol = parse_composition([POLICIES[name]])
    lo, hi = sorted((p1, p2))
    a = predict(m, HW, pol, Workload(prompt=lo, gen=16)).max_batch
    b = predict(m, HW, pol, Workload(prompt=hi, gen=16)).max_batch
    assert int(a) >= int(b)


def test_kivi_bytes_drop_when_the_residual_flushes():
    m = ModelSpec("k", 64, 50, (Layer(Attention(2, 2, 32), MLP(64)),))
    assert kv(m, "kivi:residual=128,group=32", 128) < kv(m, "kivi:residual=128,group=32", 127)
