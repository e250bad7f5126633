"""The harness computes the model's own function: full-cache decoding matches transformers' attention."""

import pytest
import torch

from kvsim import parse_composition
from measured.loop import Session, run_request
from measured.quant import dequantize_groups, quantize_groups
from measured.stores import GroupedStore

from .conftest import tiny


def teacher_forced(model, ids, prompt):
    """Logits at every decode position from one full forward with transformers' own attention (SDPA, or eager
    where the model has no SDPA path: gpt-oss's sinks, Mamba)."""
    try:
        model.set_attn_implementation("sdpa")
    except (ValueError, ImportError):
        model.set_attn_implementation("eager")
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    return ref[:, prompt - 1:-1]


def decode_logits(model, ids, prompt, policy=()):
    """Logits of the harness's loop: prefill ids[:, :prompt], then one teacher-forced token per step; and the cache."""
    s = Session(model, parse_composition(list(policy)))
    with torch.no_grad():
        got = [s.prefill(ids[:, :prompt])]
        for i in range(prompt, ids.shape[1] - 1):
            got.append(s.step(ids[:, i]))
    return torch.stack(got, 1), s.cache


# every architecture the harness runs; MLA in both cache forms; Mamba-2's prompt spans several scan chunks
ARCH_PROMPTS = [("llama-gqa", 40), ("gemma3-local-global", 40), ("gpt2-mha", 40), ("mistral-window", 40),
                ("qwen2-bias", 30), ("mixtral-moe", 30), ("deepseek-v2-mla", 30), ("deepseek-v2-decompressed", 30),
                ("deepseek-v3-mla", 24), ("deepseek-v3-decompressed", 24), ("mamba", 30), ("mamba2", 40),
                ("jamba-hybrid", 30), ("gpt-oss-sinks", 30), ("qwen3-next-deltanet", 30)]


def test_every_architecture_is_checked():
    from measured.validate import ARCHS
    assert {a for a, _ in ARCH_PROMPTS} == set(ARCHS)


@pytest.mark.parametrize("arch, prompt", ARCH_PROMPTS)
def test_full_cache_logits_match_transformers(arch, prompt):
    model = tiny(arch)
    ids = torch.randint(0, 128, (2, prompt + 12))
    ref = teacher_forced(model, ids, prompt)
    got, _ = decode_logits(model, ids, prompt)
    assert (got - ref).abs().max() < 1e-4


@pytest.mark.parametrize("spec", ["window:size=64", "quest:page=8,budget=64", "snapkv:budget=64,window=8",
                                  "h2o:budget=64", "streamingllm:sinks=4,window=60"])
def test_policies_that_keep_everything_are_exact(spec):
    """With budgets above the sequence, a policy must not change a single logit."""
    model = tiny("llama-gqa")
    ids = torch.randint(0, 128, (1, 40))
    a = run_request(model, parse_composition([]), ids, 10)
    b = run_request(model, parse_composition([spec]), ids, 10)
    assert torch.equal(a.tokens, b.tokens)


def test_real_smollm2_matches_generate(smollm2):
    model, tok = smollm2
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    model.set_attn_implementation("sdpa")
    ref = model.generate(ids, max_new_tokens=16, do_sample=False)[:, ids.shape[1]:]
    got = run_request(model, parse_composition([]), ids, 16).tokens
    assert torch.equal(ref, got), (tok.decode(ref[0]), tok.decode(got[0]))


@pytest.mark.parametrize("bits, group", [(2, 0), (3, 16), (4, 32), (8, 0)])
def test_int_quantization_error_within_bound(bits, group):
    x = torch.randn(2, 3, 17, 64) * 3
    p, s, z = quantize_groups(x, bits, group, "int", 16)
    y = dequantize_groups(p, s, z, bits, group, "int", 64, torch.float32)
    # Documented bound: half a step, (max - min) / (2 (2**bits - 1)) per group, plus fp16 rounding of scale/zero.
    g = group or 64
    xs = x.reshape(2, 3, 17, 64 // g, g)
    step = (xs.amax(-1) - xs.amin(-1)) / (2 ** bits - 1)
    bound = (step / 2 + 2e-3 * xs.abs().amax(-1) + (2 ** bits) * 1e-3 * step).repeat_interleave(g, -1)
    assert ((x - y).abs() <= bound.reshape(x.shape)).all()


def test_fp8_error_within_bound():
    x = torch.randn(4, 2, 33, 64)
    p, s, z = quantize_groups(x, 8, 0, "fp", 16)
    y = dequantize_groups(p, s, z, 8, 0, "fp", 64, torch.float32)
    scale = x.abs().amax(-1, keepdim=True) / 448
    assert ((x - y).abs() <= x.abs() * 2 ** -4 + scale * 2 ** -6 * 1.01).all()


def test_kivi_store_error_and_residual():
    st = GroupedStore(2, 8, 16, "channel", "token", 16, torch.float32, 32, 32)
    k, v = torch.randn(1, 2, 37, 32), torch.randn(1, 2, 37, 32)
    st.append(k, v)
    kk, vv = st.kv()
    assert torch.equal(kk[:, :, 32:], k[:, :, 32:])  # 37 mod 16 = 5 tokens stay exact
    runs = k[:, :, :32].reshape(1, 2, 4, 8, 32)
    step = (runs.amax(3) - runs.amin(3)) / 3
    err = (kk[:, :, :32] - k[:, :, :32]).abs().reshape(1, 2, 4, 8, 32)
    assert (err <= step.unsqueeze(3) / 2 * 1.02 + 1e-3).all()


QUALITY_ONLY = [
    ("snapkv:budget=20,window=4,kernel=5,pooling=max", "snapkv:budget=20,window=4,kernel=5,pooling=avg"),
    ("adakv:budget=20,window=4,kernel=3,floor=0.0", "adakv:budget=20,window=4,kernel=3,floor=1.0"),
    ("adakv:budget=20,window=4,kernel=3,quantum=1", "adakv:budget=20,window=4,kernel=3,quantum=10"),
    ("dynamickv:budget=20,window=4,kernel=3,quantum=1", "dynamickv:budget=20,window=4,kernel=3,quantum=10"),
    ("minicache:start=0.0,retain=0.2,t=0.2", "minicache:start=0.0,retain=0.2,t=0.8"),
    ("h2o:budget=20,recent=2", "h2o:budget=20,recent=16"),
]


@pytest.mark.parametrize("a, b", QUALITY_ONLY)
def test_quality_only_fields_change_the_output(a, b):
    """Fields that change no predicted byte or second must change what the model computes."""
    model = tiny("llama-gqa")
    ids = torch.randint(0, 128, (2, 60))
    outs = []
    for spec in (a, b):
        s = Session(model, parse_composition([spec]))
        with torch.no_grad():
            logits = [s.prefill(ids)]
            nxt = logits[-1].argmax(-1)
            for _ in range(6):
                logits.append(s.step(nxt))
                nxt = logits[-1].argmax(-1)
        outs.append(torch.stack(logits))
    assert not torch.allclose(outs[0], outs[1])
