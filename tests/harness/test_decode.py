"""Decode attention over stored pages: the C kernel equals the torch reference for every encoding, pages
decode to what the stores hold, paged storage stays exactly sized, and a decode step copies no cache."""

import pytest
import torch

from kvsim import parse_composition
from measured import decode
from measured.decode import Enc, Page, attend_torch, raw_page
from measured.encoding import quant_store
from measured.paged import PAGE, Paged
from measured.quant import dequantize_groups, quantize_groups
from measured.stores import GroupedStore, physical_bytes

from .conftest import tiny

B, H = 2, 3


def _both(q, pages, **kw):
    ref = attend_torch(q, pages, 0.17, kw.get("softcap"), kw.get("bias"), kw.get("index"), kw.get("logits", False))
    got = decode._attend_native(q, pages, 0.17, kw.get("softcap"), kw.get("bias"), kw.get("index"),
                                kw.get("logits", False))
    for a, b in zip(ref, got):
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), (a - b).abs().max()
    return got


def _kv(n, d, dtype=torch.float32):
    return torch.randn(B, H, n, d).to(dtype) * 2, torch.randn(B, H, n, d).to(dtype)


@pytest.mark.parametrize("g, d", [(1, 64), (3, 64), (7, 40), (2, 13)])  # 40 and 13: the scalar tails
def test_raw_pages_with_bias_index_softcap(g, d):
    q = torch.randn(B, H, g, d)
    pages = [raw_page(*_kv(70, d)), raw_page(*_kv(5, d)), raw_page(*_kv(1, d))]
    _both(q, pages, logits=True)
    _both(q, pages, bias=torch.randn(B, H, 40), softcap=3.0, logits=True)
    idx = torch.stack([torch.randperm(76)[:30].sort().values for _ in range(B * H)]).view(B, H, 30)
    _both(q, pages, index=idx, bias=torch.randn(B, H, 76), logits=True)


def test_many_tokens_split_across_threads():
    q = torch.randn(1, 2, 3, 64)
    k, v = torch.randn(1, 2, 3000, 64), torch.randn(1, 2, 3000, 64)
    _both(q, [raw_page(k, v)], logits=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_raw_pages(dtype):
    q = torch.randn(B, H, 2, 32)
    _both(q, [raw_page(*_kv(33, 32, dtype))])


@pytest.mark.parametrize("bits, group, kind, scale_bits", [(4, 32, "int", 16), (2, 0, "int", 16), (3, 16, "int", 32),
                                                          (8, 0, "int", 16), (4, 24, "int", 16), (8, 32, "fp", 16),
                                                          (5, 0, "int", 32), (1, 8, "int", 16)])
def test_token_quantized_pages(bits, group, kind, scale_bits):
    d = 64
    k, v = _kv(37, d)
    kp, ks, kz = quantize_groups(k, bits, group, kind, scale_bits)
    vp, vs, vz = quantize_groups(v, bits, group, kind, scale_bits)
    name = "fp8" if kind == "fp" else "int"
    ek, ev = Enc(name, kp, d, bits, ks, kz, 1, group or d), Enc(name, vp, d, bits, vs, vz, 1, group or d)
    # a page decodes to exactly what the store's own dequantisation gives
    assert torch.equal(ek.decode(), dequantize_groups(kp, ks, kz, bits, group, kind, d, torch.float32))
    _both(torch.randn(B, H, 3, d), [Page(ek, ev), raw_page(*_kv(1, d))], logits=True)


@pytest.mark.parametrize("bits, group", [(2, 8), (4, 16), (2, 32)])
def test_per_channel_pages(bits, group):
    st = GroupedStore(bits, group, 2 * group, "channel", "token", 16, torch.float32, 64, 64)
    st.append(*_kv(5 * group + 3, 64))
    k_ref, v_ref = st.kv()
    pages = st.pages()
    assert len(pages) == 2  # the quantized runs, then the full-precision residual
    assert torch.equal(torch.cat([p.k.decode() for p in pages], 2), k_ref)
    assert torch.equal(torch.cat([p.v.decode() for p in pages], 2), v_ref)
    _both(torch.randn(B, H, 3, 64), pages, logits=True)
    for _ in range(12 * group):  # decode tokens: flushes of 2 x group tokens fill pages of codes and of scales
        st.append(*_kv(1, 64))
    pages = st.pages()
    assert sum(p.k.n for p in pages) == len(st) and len(pages) > 2
    assert torch.equal(torch.cat([p.k.decode() for p in pages], 2), st.kv()[0])
    _both(torch.randn(B, H, 3, 64), pages, logits=True)


def test_row_scales():
    k, v = _kv(20, 32)
    mags = torch.rand(B, H, 20, 4)
    page = Page(Enc("raw", k, 32, rowscale=mags[..., 2]), Enc("raw", v, 32, rowscale=mags[..., 3]))
    _both(torch.randn(B, H, 2, 32), [page, raw_page(*_kv(1, 32))], logits=True)


def test_paged_storage_is_exact_and_appends_copy_one_page():
    p = Paged()
    prompt = torch.randn(B, H, 100, 8)
    p.append(prompt)
    first = p.pages[0]
    for i in range(PAGE + 3):
        p.append(torch.randn(B, H, 1, 8))
    assert len(p) == 100 + PAGE + 3 and len(p.pages) == 3
    assert p.pages[0] is first  # the prompt page was never copied
    for t in p.pages:
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    assert physical_bytes(p.pages) == len(p) * B * H * 8 * 4
    full = p.full()
    slot = torch.tensor([[5, 120, 166], [99, 100, 0]])
    keep = torch.tensor([[False, False, True], [False, False, False]])
    new = torch.randn(B, H, 1, 8)
    p.put(slot, new, keep)
    after = p.full()
    for b in range(B):
        for h in range(H):
            s = int(slot[b, h])
            want = full[b, h, s] if keep[b, h] else new[b, h, 0]
            assert torch.equal(after[b, h, s], want)
            assert torch.equal(p.at(slot)[b, h, 0], want)
    assert torch.equal(p.since(150), after[:, :, 150:])
    idx = torch.tensor([1, 50, 101, 160]).expand(B, H, 4)
    p.take(idx)
    assert len(p.pages) == 1 and torch.equal(p.full(), torch.gather(after, 2, idx[..., None].expand(B, H, 4, 8)))


@pytest.mark.parametrize("specs", [[], ["int4"], ["kivi:bits=2,group=8,residual=16"], ["lowrank:rank=8", "int8"]])
def test_store_pages_attend_like_their_full_copy(specs):
    """What attention reads in place equals attention over the store's full-precision copy."""
    pol = parse_composition(specs)
    from measured.encoding import Encoder
    enc = Encoder(pol, torch.float32)
    k, v = _kv(45, 32)
    enc.fit(k, v)
    st = enc.store(None, 32, 32)
    st.append(k, v)
    for i in range(20):
        st.append(*_kv(1, 32))
    q = torch.randn(B, H, 3, 32)
    out, lse, _ = decode.attend(st.query(q), st.pages(), 0.2)
    kk, vv = st.kv()
    ref, ref_lse, _ = attend_torch(q, [raw_page(kk, vv)], 0.2)
    assert torch.allclose(st.output(out), ref, rtol=1e-4, atol=1e-5)
    assert torch.allclose(lse, ref_lse, rtol=1e-4, atol=1e-4)


def _step_allocations(model, specs, prompt):
    """(bytes allocated by one decode step, cache bytes) after a prompt of `prompt` tokens."""
    from torch.profiler import ProfilerActivity, profile

    from measured.loop import Session
    s = Session(model, parse_composition(specs))
    ids = torch.randint(0, 128, (2, prompt))
    with torch.inference_mode():
        tok = s.prefill(ids).argmax(-1)
        for _ in range(2):
            tok = s.step(tok).argmax(-1)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            s.step(tok)
    return sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), s.cache.physical_bytes()["sequence"]


@pytest.mark.parametrize("specs", [[], ["int4:group=16"], ["kivi:bits=2,group=8,residual=16"],
                                   ["quest:page=8,budget=64"], ["h2o:budget=600,recent=8"], ["lowrank:rank=16"]])
def test_a_decode_step_copies_no_cache(specs):
    """What a step allocates does not grow with the cache it reads: no expanded, dequantised or gathered copy
    (the old executor's torch.cat append alone allocated the whole cache every step)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type="llama", hidden_size=128, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1, vocab_size=128)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    small, cache_small = _step_allocations(model, specs, 200)
    big, cache_big = _step_allocations(model, specs, 1000)
    assert big - small < (cache_big - cache_small) / 8, (small, big, cache_small, cache_big)


def test_native_and_torch_paths_decode_the_same_tokens(monkeypatch):
    from measured.loop import run_request
    model = tiny("qwen2-bias")
    ids = torch.randint(0, 128, (2, 50))
    for specs in ([], ["int4:group=16"], ["kivi:bits=4,group=8,residual=16"], ["tova:budget=24"]):
        pol = parse_composition(specs)
        native = run_request(model, pol, ids, 8).tokens
        monkeypatch.setenv("KVSIM_ATTENTION", "torch")
        slow = run_request(model, pol, ids, 8).tokens
        monkeypatch.delenv("KVSIM_ATTENTION")
        assert torch.equal(native, slow), specs


def test_unknown_attention_choice_is_refused(monkeypatch):
    from kvsim.errors import KvsimError
    monkeypatch.setenv("KVSIM_ATTENTION", "fast")
    with pytest.raises(KvsimError):
        decode.use_native(torch.device("cpu"))


@pytest.mark.parametrize("bits", range(1, 9))
def test_native_quantization_is_bit_exact(bits):
    from measured.decode import quantize
    for group in (0, 16, 24):
        for scale_bits in (16, 32):
            x = torch.randn(2, 3, 4, 64) * 3
            x[0, 0, 0, :32] = 1.7  # a constant group: its scale underflows in fp16
            x = x.transpose(1, 2).contiguous().transpose(1, 2)  # strided batch and heads, rows contiguous
            for a, b in zip(quantize_groups(x, bits, group, "int", scale_bits), quantize(x, bits, group, scale_bits)):
                assert torch.equal(a, b), (bits, group, scale_bits)


def test_sinks_take_probability_and_give_no_value():
    from measured.attention import decode_step
    from measured.stores import RawStore
    st = RawStore()
    st.append(*_kv(30, 16))
    q, kn, vn = torch.randn(B, H, 2, 16), *_kv(1, 16)
    sinks = torch.randn(H, 2)
    out, probs, p_new = decode_step(q, [(st, st.pages())], kn, vn, 0.25, None, probs=True, sinks=sinks)
    k, v = st.kv()
    k, v = torch.cat([k, kn], 2), torch.cat([v, vn], 2)
    s = torch.matmul(q, k.transpose(-1, -2)) * 0.25
    s = torch.cat([s, sinks[None, :, :, None].expand(B, H, 2, 1)], -1)
    p = s.softmax(-1)
    assert torch.allclose(out, torch.matmul(p[..., :-1], v), atol=1e-5)
    assert torch.allclose(torch.cat([probs, p_new], -1), p[..., :-1], atol=1e-6)


@pytest.mark.parametrize("m, k, n", [(1, 64, 96), (3, 40, 7), (8, 13, 100), (16, 576, 1729), (5, 8, 1)])
def test_native_linear_equals_torch(m, k, n):
    """decode.c's skinny matmul: every block and tail shape (weight rows in threes, input rows in fours, k in
    eights), with and without bias, on strided input rows."""
    w, b = torch.randn(n, k), torch.randn(n)
    x = torch.randn(m, 2 * k)[:, ::2]  # rows whose elements are not contiguous: copied first
    for bias in (None, b):
        ref = torch.nn.functional.linear(x, w, bias)
        assert torch.allclose(decode.linear(x, w, bias), ref, rtol=1e-4, atol=1e-4)


def test_native_grouped_linear_equals_one_matmul_per_expert():
    """decode.c's grouped skinny matmul: each expert's rows against its own weight (and bias), experts with no
    rows skipped, rows past the last expert's end (another rank's experts) left at zero."""
    experts, n, k = 5, 13, 40
    w, b = torch.randn(experts, n, k), torch.randn(experts, n)
    counts = torch.tensor([2, 0, 3, 1, 0])
    x = torch.randn(int(counts.sum()) + 2, k)  # two sentinel rows at the end
    ends = torch.cumsum(counts, 0)
    for bias in (None, b):
        got = decode.grouped_linear(x, ends, w, bias)
        start = 0
        for e, end in enumerate(ends.tolist()):
            ref = torch.nn.functional.linear(x[start:end], w[e], None if bias is None else bias[e])
            assert torch.allclose(got[start:end], ref, rtol=1e-4, atol=1e-4)
            start = end
        assert torch.equal(got[start:], torch.zeros(2, n))


def test_native_matmuls_take_gpt2s_conv1d_in_place():
    """GPT-2's Conv1D projections (x @ weight[in, out]) run the skinny matmul too: the same parameter, its shape
    and state-dict name unchanged, its values laid out [out, in]; decode-sized calls and prefills agree with
    x @ weight + bias (test_correctness decodes GPT-2 against a teacher-forced pass with the swap in place)."""
    from transformers.pytorch_utils import Conv1D

    from measured.linear import MAX_ROWS, NativeConv1D, native_matmuls
    model = tiny("gpt2-mha")
    names = {k: v.shape for k, v in model.state_dict().items()}
    attn = model.transformer.h[0].attn.c_attn
    weight = attn.weight
    native_matmuls(model)
    native_matmuls(model)  # idempotent
    conv = model.transformer.h[0].attn.c_attn
    assert type(conv) is NativeConv1D and conv.weight is weight and weight.t().is_contiguous()
    assert {k: v.shape for k, v in model.state_dict().items()} == names
    assert not any(type(m) is Conv1D for m in model.modules())
    for rows in (1, MAX_ROWS, MAX_ROWS + 1):
        x = torch.randn(rows, conv.nx)
        assert torch.allclose(conv(x), x @ conv.weight + conv.bias, rtol=1e-4, atol=1e-4)


def test_native_matmuls_keep_parameters_ties_and_fall_back():
    """The swap shares each weight (a tied output head stays tied, state-dict names unchanged); more rows
    than a decode step (a prefill), other dtypes and the torch executor go through torch's linear."""
    from measured.linear import MAX_ROWS, NativeLinear, native_matmuls
    model = tiny("llama-gqa")
    model.lm_head.weight = model.model.embed_tokens.weight  # tied, as SmolLM2's is
    names = set(model.state_dict())
    head = model.lm_head.weight
    native_matmuls(model)
    native_matmuls(model)  # idempotent
    assert isinstance(model.lm_head, NativeLinear) and model.lm_head.weight is head
    assert set(model.state_dict()) == names
    lin = model.model.layers[0].mlp.down_proj
    assert type(lin) is NativeLinear
    for rows in (1, MAX_ROWS, MAX_ROWS + 1):
        x = torch.randn(rows, lin.in_features)
        assert torch.allclose(lin(x), torch.nn.functional.linear(x, lin.weight), rtol=1e-4, atol=1e-4)
    x = torch.randn(2, lin.in_features, dtype=torch.float64)
    assert lin(x.float()).dtype == torch.float32 and lin.double()(x).dtype == torch.float64


@pytest.mark.parametrize("arch", ["mixtral-moe", "gpt-oss-sinks", "deepseek-v3-mla", "jamba-hybrid",
                                  "qwen3-next-deltanet"])
def test_native_experts_equal_transformers_grouped_mm(arch, monkeypatch):
    """Routed experts run grouped through decode.c's skinny matmul (gpt-oss's [in, out] experts laid out once,
    shapes unchanged) and give what transformers' own grouped_mm gives, for a decode step's rows; a prefill's
    rows and the torch executor keep transformers' grouped_mm."""
    from transformers.integrations.moe import grouped_mm_experts_forward

    from measured.linear import EXPERTS, _experts_modules, native_experts_forward, native_matmuls
    model = tiny(arch)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    native_matmuls(model)
    native_matmuls(model)  # idempotent
    assert model.config._experts_implementation == EXPERTS
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    mod = _experts_modules(model)[0]
    for p in mod.parameters(recurse=False):
        torch.nn.init.normal_(p, std=0.1)  # some classes start their experts at zero
    k = model.config.num_experts_per_tok
    for rows in (1, 5, 40):
        x = torch.randn(rows, model.config.hidden_size)
        index = torch.stack([torch.randperm(mod.num_experts)[:k] for _ in range(rows)])
        weights = torch.rand(rows, k)
        with torch.no_grad():
            ref = grouped_mm_experts_forward(mod, x, index, weights)
            assert torch.allclose(native_experts_forward(mod, x, index, weights), ref, rtol=1e-5, atol=1e-5)
            monkeypatch.setenv("KVSIM_ATTENTION", "torch")
            assert torch.equal(native_experts_forward(mod, x, index, weights), ref)
            monkeypatch.delenv("KVSIM_ATTENTION")
