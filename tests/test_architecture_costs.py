"""Cost-model accounting for MLA's two cache forms, recurrent state, the unfused Mamba-1 scan, Mamba-2's chunked
prefill, unfused prompt attention, unfused recurrent decode steps and eager MoE launches."""

import dataclasses

import numpy as np
import pytest

from kvsim import Profile, Workload, load_hardware, load_model, parse_composition, predict
from kvsim.model import MLA, MLP, Attention, Layer, LinearAttention, Mamba, ModelSpec, MoE

HW = load_hardware("h100-sxm")


def test_mla_forms_cost_the_same_prefill_and_differ_in_decode():
    """Engines decompress the prompt's K and V at the prefill whatever they cache, so both forms do the same
    prefill arithmetic; a decode step reads (latent + rope) per token against heads x (nope + rope + v), and the
    absorbed step's attention runs over the latent widths."""
    latent = load_model("deepseek-v2-lite")
    dec = latent.with_mla_cache("decompressed")
    wl = Workload(prompt=4096, gen=8)
    a, b = predict(latent, HW, None, wl), predict(dec, HW, None, wl)
    assert float(a.prefill_flops) == float(b.prefill_flops)
    m = latent.layers[0].mixer
    per_token = {"latent": (m.kv_lora_rank + m.qk_rope_head_dim),
                 "decompressed": m.n_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim)}
    assert int(a.kv_cache_bytes) == 27 * (4096 + 7) * per_token["latent"] * 2
    assert int(b.kv_cache_bytes) == 27 * (4096 + 7) * per_token["decompressed"] * 2
    assert float(a.decode_bytes) < float(b.decode_bytes)
    assert float(a.decode_flops) > float(b.decode_flops)  # absorbed scores over 576 dims, values over 512


def test_mla_cache_form_is_a_model_option():
    m = load_model("deepseek-v3")
    assert {l.mixer.cache for l in m.layers} == {"latent"}
    assert {l.mixer.cache for l in m.with_mla_cache("decompressed").layers} == {"decompressed"}
    with pytest.raises(Exception, match="no MLA layers"):
        load_model("llama-3-8b").with_mla_cache("latent")


def test_state_dtype_and_state_quantization():
    """State matrices default to float32 (what transformers keeps), conv windows to the activation dtype;
    --state-dtype changes the former, quant:state=true stores both quantized."""
    m = load_model("mamba-2.8b")
    mixer, n = m.layers[0].mixer, m.n_layers
    conv, ssm = mixer.conv_channels * mixer.d_conv, mixer.d_inner * mixer.d_state
    bf16 = Workload(prompt=100, weight_dtype="bf16")
    assert int(predict(m, HW, None, bf16).state_bytes) == n * (conv * 2 + ssm * 4)
    assert int(predict(m, HW, None, dataclasses.replace(bf16, state_dtype="bf16")).state_bytes) == n * (conv + ssm) * 2
    q = predict(m, HW, parse_composition(["int8:state=true"]), bf16)
    # one int8 row per conv tap over the channels, one per state row over d_state; an fp16 scale and zero each
    assert int(q.state_bytes) == n * (mixer.d_conv * (mixer.conv_channels + 4) + mixer.d_inner * (mixer.d_state + 4))
    assert int(predict(m, HW, parse_composition(["int8"]), bf16).state_bytes) == n * (conv * 2 + ssm * 4)


def _mamba(version: int) -> ModelSpec:
    mixer = Mamba(256, 16, dt_rank=8) if version == 1 else Mamba(256, 16, version=2, n_heads=8)
    return ModelSpec(f"m{version}", 128, 100, (Layer(mixer, None, norms=1),) * 3)


def test_unfused_scan_term_is_exact_and_neutral_by_default():
    base = Profile(name="t", kernel_overhead_s=1e-5, mem_efficiency=0.5)
    on = dataclasses.replace(base, unfused_scan_s=2e-10)
    p, b = np.array([64, 512]), 2
    wl = Workload(prompt=p, gen=4, batch=b)
    m1 = _mamba(1)
    extra = predict(m1, HW, None, wl, on).ttft_s - predict(m1, HW, None, wl, base).ttft_s
    mixer = m1.layers[0].mixer
    expect = 3 * (2e-10 * mixer.d_inner * mixer.d_state * p * b + 3 * p * 1e-5)  # 3 layers
    assert np.allclose(extra, expect, rtol=1e-9)
    assert np.array_equal(predict(m1, HW, None, wl, on).tpot_s, predict(m1, HW, None, wl, base).tpot_s)
    for other in (_mamba(2), ModelSpec("a", 128, 100, (Layer(Attention(4, 2, 32), MLP(256)),) * 3)):
        assert np.array_equal(predict(other, HW, None, wl, on).ttft_s, predict(other, HW, None, wl, base).ttft_s)


def test_calibration_frees_the_scan_term_only_with_mamba_1_data():
    from calibrate.fit import free_params

    class Problem:
        def __init__(self, specs, cache_bytes=0.0):
            self.groups = [type("G", (), {"spec": s})() for s in specs]
            self.base = Profile(cache_bytes=cache_bytes)

    assert "unfused_scan_s" not in free_params(None, Problem([load_model("gpt2")]))
    assert "unfused_scan_s" in free_params(None, Problem([load_model("gpt2"), _mamba(1)]))
    assert "unfused_scan_s" not in free_params(None, Problem([_mamba(2)]))
    assert "unfused_chunk_s" in free_params(None, Problem([_mamba(2)]))
    assert "unfused_chunk_s" not in free_params(None, Problem([load_model("gpt2"), _mamba(1)]))
    assert "unfused_state_s" in free_params(None, Problem([_mamba(1)]))
    assert "unfused_state_s" not in free_params(None, Problem([load_model("gpt2")]))
    assert "unfused_attention_s" in free_params(None, Problem([load_model("deepseek-v2-lite")]))
    assert "unfused_attention_s" not in free_params(None, Problem([load_model("gpt2"), _mamba(2)]))
    assert "unfused_sink_s" not in free_params(None, Problem([load_model("deepseek-v2-lite")]))
    assert "unfused_sink_s" in free_params(None, Problem([ModelSpec("s", 128, 100, (Layer(
        Attention(4, 2, 32, sinks=True), MLP(256)),))]))
    assert "unfused_delta_s" not in free_params(None, Problem([_mamba(2)]))
    # the spill term needs temporaries that can outgrow a cache, and the cache's size
    assert "unfused_spill" not in free_params(None, Problem([_mamba(2)]))
    assert "unfused_spill" in free_params(None, Problem([_mamba(2)], cache_bytes=1e6))
    assert "unfused_spill" not in free_params(None, Problem([_mamba(1), load_model("gpt2")], cache_bytes=1e6))


def test_mamba2_prefill_runs_the_chunked_ssd_at_its_chunk_rate():
    """Mamba-2's prefill FLOP are the SSD algorithm's (per token at the full-chunk rate: C.B^T per group, the
    masked product and the chunk states per head); Mamba-1 and decode steps keep the recurrent step."""
    m2, m1 = _mamba(2), _mamba(1)
    mixer = m2.layers[0].mixer
    L, n, p = 256, 16, 256 // 8
    per_token = 2 * mixer.conv_channels * mixer.d_conv + 2 * L * n * 1 + 8 * (2 * L * p + 4 * n * p)
    assert np.allclose(mixer.prefill_flops([1, 1000]), [per_token, 1000 * per_token])
    assert float(m1.layers[0].mixer.prefill_flops(10)) == 10 * m1.layers[0].mixer.step_flops()
    wl = Workload(prompt=1000, gen=4)
    assert float(predict(m2, HW, None, wl).prefill_flops) > float(predict(m2.with_(layers=tuple(
        dataclasses.replace(l, mixer=dataclasses.replace(l.mixer, chunk=16)) for l in m2.layers)), HW, None,
        wl).prefill_flops)
    from kvsim.hf import from_hf_config
    cfg = {"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2, "state_size": 16, "num_heads": 4,
           "head_dim": 32, "vocab_size": 100, "chunk_size": 128}
    assert from_hf_config(cfg).layers[0].mixer.chunk == 128


def test_unfused_chunk_terms_are_exact_and_neutral_by_default():
    """unfused_chunk_s per element of the padded chunks' L x L per-head tensors of Mamba-2's SSD, unfused_delta_s
    per element of the gated delta rule's, in the prefill only; zero changes nothing, each path pays its own
    term only, and models without chunked layers pay neither."""
    base = Profile(name="t", mem_efficiency=0.5)
    on = dataclasses.replace(base, unfused_chunk_s=1e-9)
    p, b = np.array([64, 300]), 2
    wl = Workload(prompt=p, gen=4, batch=b)
    m2 = _mamba(2)
    extra = predict(m2, HW, None, wl, on).ttft_s - predict(m2, HW, None, wl, base).ttft_s
    assert np.allclose(extra, 3 * 1e-9 * np.ceil(p / 256) * 8 * 256 * 256 * b, rtol=1e-9)
    assert np.array_equal(predict(m2, HW, None, wl, on).tpot_s, predict(m2, HW, None, wl, base).tpot_s)
    from pathlib import Path

    from kvsim.hf import from_hf_config, load_json
    gdn = from_hf_config(load_json(Path(__file__).parents[1] / "measured/configs/qwen3-next-small.json"))
    delta = dataclasses.replace(base, unfused_delta_s=1e-9)
    gdn_layers = [l for l in gdn.layers if isinstance(l.mixer, LinearAttention)]
    heads = gdn_layers[0].mixer.n_heads
    extra = predict(gdn, HW, None, Workload(prompt=640), delta).ttft_s - \
        predict(gdn, HW, None, Workload(prompt=640), base).ttft_s
    assert float(extra) == pytest.approx(len(gdn_layers) * 1e-9 * 10 * heads * 64 * 64, rel=1e-9)  # 10 chunks of 64
    assert float(predict(gdn, HW, None, Workload(prompt=640), on).ttft_s) == \
        float(predict(gdn, HW, None, Workload(prompt=640), base).ttft_s)
    assert np.array_equal(predict(m2, HW, None, wl, delta).ttft_s, predict(m2, HW, None, wl, base).ttft_s)
    for other in (_mamba(1), ModelSpec("a", 128, 100, (Layer(Attention(4, 2, 32), MLP(256)),) * 3)):
        for prof in (on, delta):
            assert np.array_equal(predict(other, HW, None, wl, prof).ttft_s,
                                  predict(other, HW, None, wl, base).ttft_s)


def test_unfused_temporaries_beyond_the_cache_cost_unfused_spill_more():
    """An unfused temporary within cache_bytes costs its per-element term; the share of it beyond costs
    unfused_spill times more (Mamba-2's L x L tensors in fp32, a batch's chunks together); without a cache size
    or a spill nothing changes."""
    m2 = _mamba(2)  # 8 heads, chunks of 256: one chunk's tensors are 8 x 256 x 256 x 4 B = 2 MiB per sequence
    base = Profile(name="t", mem_efficiency=0.5, unfused_chunk_s=1e-9)
    spill = dataclasses.replace(base, unfused_spill=3.0, cache_bytes=float(4 << 20))
    wl = Workload(prompt=np.array([256, 1024]), gen=4, batch=2)  # 4 MiB (fits) and 16 MiB (a quarter fits)
    extra = predict(m2, HW, None, wl, spill).ttft_s - predict(m2, HW, None, wl, base).ttft_s
    elements = np.array([1, 4]) * 8 * 256 * 256 * 2
    assert np.allclose(extra, 3 * 1e-9 * elements * 3.0 * np.array([0.0, 0.75]), rtol=1e-9)
    for no in (dataclasses.replace(spill, cache_bytes=0.0), dataclasses.replace(spill, unfused_spill=0.0)):
        assert np.array_equal(predict(m2, HW, None, wl, no).ttft_s, predict(m2, HW, None, wl, base).ttft_s)


def test_grouped_moe_launches_do_not_depend_on_the_experts_a_pass_hits():
    """kernel_overhead_s over a grouped MoE block (transformers 5's default and the harness's): the router and the
    grouped experts' fixed launches once per layer, for one decode token and a long prompt's prefill alike."""
    moe = MoE(32, 4, 64)
    m = ModelSpec("e", 128, 100, (Layer(Attention(4, 2, 32), moe),) * 2)
    dense = m.with_(layers=(Layer(Attention(4, 2, 32), None),) * 2)
    assert m.kernels() - dense.kernels() == 2 * (4 + 16)  # router and grouped experts per layer
    slow = Profile(name="k", kernel_overhead_s=1e-5)
    for prompt in (1, 512):
        wl = Workload(prompt=prompt, gen=2, batch=1)
        extra = predict(m, HW, None, wl, slow).ttft_s - predict(m, HW, None, wl, Profile(name="z")).ttft_s
        assert float(extra) == pytest.approx(1e-5 * m.kernels(), rel=1e-9)


def test_recurrent_mixers_launch_their_torch_paths_kernels_in_each_phase():
    """kernel_overhead_s over a recurrent model: a decode step launches the decode path's kernels, a prefill the
    prefill path's fixed set; the gated delta rule's chunk loop adds DELTA_CHUNK_KERNELS per chunk of its
    unfused prefill (the launches are the executor's: none without the unfused term)."""
    from pathlib import Path

    from kvsim.cost import DELTA_CHUNK_KERNELS
    from kvsim.hf import from_hf_config, load_json
    gdn = from_hf_config(load_json(Path(__file__).parents[1] / "measured/configs/qwen3-next-small.json"))
    chunks = sum(isinstance(l.mixer, LinearAttention) for l in gdn.layers) * 10  # 640 tokens: 10 chunks of 64
    # Mamba-1 has no chunks: the chunk terms launch nothing there (its per-token launches go with unfused_scan_s)
    for m, prefill_launches in ((_mamba(1), 0), (_mamba(2), 0), (gdn, DELTA_CHUNK_KERNELS * chunks)):
        assert m.kernels(prefill=True) != m.kernels()
        base = Profile(name="z", unfused_chunk_s=1e-12, unfused_delta_s=1e-12)
        slow = dataclasses.replace(base, kernel_overhead_s=1e-5)
        wl = Workload(prompt=640, gen=4)
        a, b = predict(m, HW, None, wl, slow), predict(m, HW, None, wl, base)
        assert float(a.ttft_s - b.ttft_s) == pytest.approx(1e-5 * (m.kernels(prefill=True) + prefill_launches),
                                                           rel=1e-9)
        assert float(a.tpot_s - b.tpot_s) == pytest.approx(1e-5 * m.kernels(), rel=1e-9)


def test_eager_kernel_counts_follow_the_config():
    """What a config says about the eager path: GPT-2's gelu_new is a formula of eight kernels, Jamba's attention
    has no rotary embedding, DeepSeek-V2's rope is a complex product, V3 routes within groups."""
    from kvsim.hf import from_hf_config
    gpt2 = {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 128}
    relu = from_hf_config({**gpt2, "activation_function": "relu"})
    assert from_hf_config(gpt2).kernels() - relu.kernels() == 2 * 7
    # and each of the formula's operations writes (and the next reads) a tensor as wide as the intermediate
    wl = Workload(prompt=100, gen=2, kv_dtype="fp32")
    extra = predict(from_hf_config(gpt2), HW, None, wl).prefill_bytes - predict(relu, HW, None, wl).prefill_bytes
    assert int(extra) == 2 * 7 * 2 * 100 * 256 * 4  # layers x extra writes x (write, read) x tokens x 4 x 64 x fp32
    jamba = from_hf_config({"model_type": "jamba", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "num_key_value_heads": 2, "attn_layer_period": 2,
                            "attn_layer_offset": 1, "num_experts": 1, "vocab_size": 128})
    assert [l.mixer.rope for l in jamba.layers if isinstance(l.mixer, Attention)] == [False]
    ds = {"hidden_size": 64, "intermediate_size": 96, "moe_intermediate_size": 16, "num_hidden_layers": 2,
          "num_attention_heads": 4, "kv_lora_rank": 32, "q_lora_rank": None, "qk_rope_head_dim": 4,
          "qk_nope_head_dim": 8, "v_head_dim": 8, "n_routed_experts": 8, "num_experts_per_tok": 2,
          "first_k_dense_replace": 1, "vocab_size": 128}
    v2, v3 = from_hf_config({**ds, "model_type": "deepseek_v2"}), from_hf_config({**ds, "model_type": "deepseek_v3"})
    assert v2.layers[1].mixer.complex_rope and not v3.layers[1].mixer.complex_rope
    assert v3.layers[1].mlp.group_routing and not v2.layers[1].mlp.group_routing
    assert v3.kernels() - v2.kernels() == 2 * (10 - 2) + 13  # rotate-half rope in both layers, V3's group routing


def test_unfused_attention_is_what_torchs_fused_cpu_kernel_cannot_run():
    """Unequal score and value widths (MLA, either cache form) and sink logits; not plain, grouped or
    windowed attention."""
    from kvsim.cost import unfused_attention
    assert all(unfused_attention(l) for l in load_model("deepseek-v3").layers)
    assert all(unfused_attention(l) for l in load_model("deepseek-v3").with_mla_cache("decompressed").layers)
    assert not unfused_attention(Layer(MLA(8, 64, 16, 16, 32), None))
    assert unfused_attention(Layer(Attention(8, 2, 64, sinks=True), None))
    assert unfused_attention(Layer(Attention(8, 2, 64, v_head_dim=32), None))
    assert not any(unfused_attention(Layer(a, None)) for a in (Attention(8, 2, 64), Attention(8, 8, 64, window=128)))


def test_unfused_attention_term_is_exact_in_whole_and_chunked_prefills():
    """unfused_attention_s per query head and query-key element: p x p per sequence for a whole prompt, each
    chunk's c x (earlier + c) in a chunked one; never in decode, never for layers the fused kernel runs."""
    from kvsim import load_engine
    from kvsim.cost import CostModel
    from kvsim.serving import Serving
    vllm = load_engine("vllm")
    sink = ModelSpec("s", 128, 100, (Layer(Attention(4, 2, 32, sinks=True), MLP(256)),) * 3)
    base = Profile(name="t", mem_efficiency=0.5)
    on = dataclasses.replace(base, unfused_attention_s=1e-9)
    p, b = np.array([64, 300]), 2
    wl = Workload(prompt=p, gen=4, batch=b)
    extra = predict(sink, HW, None, wl, on).ttft_s - predict(sink, HW, None, wl, base).ttft_s
    assert np.allclose(extra, 3 * 1e-9 * 4 * p * p * b, rtol=1e-9)
    assert np.array_equal(predict(sink, HW, None, wl, on).tpot_s, predict(sink, HW, None, wl, base).tpot_s)
    # sink logits' own passes (unfused_sink_s) come on top, and only for layers that have them
    sunk = dataclasses.replace(on, unfused_sink_s=2e-9)
    extra = predict(sink, HW, None, wl, sunk).ttft_s - predict(sink, HW, None, wl, base).ttft_s
    assert np.allclose(extra, 3 * 3e-9 * 4 * p * p * b, rtol=1e-9)
    wide = ModelSpec("v", 128, 100, (Layer(Attention(4, 2, 32, v_head_dim=16), MLP(256)),) * 3)
    assert np.array_equal(predict(wide, HW, None, wl, sunk).ttft_s, predict(wide, HW, None, wl, on).ttft_s)
    plain = ModelSpec("a", 128, 100, (Layer(Attention(4, 2, 32), MLP(256)),) * 3)
    assert np.array_equal(predict(plain, HW, None, wl, on).ttft_s, predict(plain, HW, None, wl, base).ttft_s)
    chunked = [Serving(CostModel(sink, HW, parse_composition([]), kv_dtype="bf16", weight_dtype=None, tp=1, pp=1,
                                 profile=prof), vllm.with_(max_num_batched_tokens=100),
                       HW.memory_bytes) for prof in (base, on)]
    (t0, _), (t1, _) = (srv.prefill(np.int64(300), np.int64(1)) for srv in chunked)
    assert float(t1 - t0) == pytest.approx(3 * 1e-9 * 4 * sum(100 * (100 * i + 100) for i in range(3)), rel=1e-9)


def test_unfused_state_term_is_exact_per_decode_step():
    """unfused_state_s per recurrent state element (not the conv window) per sequence and decode step, in
    Mamba and linear-attention layers; prefills and attention layers never pay it."""
    base = Profile(name="t", mem_efficiency=0.5)
    on = dataclasses.replace(base, unfused_state_s=1e-9)
    wl = Workload(prompt=np.array([64, 300]), gen=4, batch=3)
    for version in (1, 2):
        m = _mamba(version)
        mixer = m.layers[0].mixer
        extra = predict(m, HW, None, wl, on).tpot_s - predict(m, HW, None, wl, base).tpot_s
        assert np.allclose(extra, 3 * 1e-9 * mixer.d_inner * mixer.d_state * 3, rtol=1e-9)
        assert np.array_equal(predict(m, HW, None, wl, on).ttft_s, predict(m, HW, None, wl, base).ttft_s)
    plain = ModelSpec("a", 128, 100, (Layer(Attention(4, 2, 32), MLP(256)),) * 3)
    assert np.array_equal(predict(plain, HW, None, wl, on).tpot_s, predict(plain, HW, None, wl, base).tpot_s)

