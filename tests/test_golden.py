"""Published numbers, each with its source."""

import numpy as np
import pytest

from kvsim import Workload, load_hardware, load_model, parse_composition, predict, uniform
from kvsim.presets import model_entry, model_names
from kvsim.units import GiB

H100 = load_hardware("h100-sxm")


def kv_bytes(model, seq, policy=None, kv_dtype=None, batch=1):
    pred = predict(model, H100, parse_composition(policy or []), Workload(prompt=seq, gen=1, batch=batch,
                                                                           kv_dtype=kv_dtype))
    return int(pred.kv_cache_bytes)


@pytest.mark.parametrize("kv_heads, expected", [(32, 4 * GiB), (8, 1 * GiB), (1, GiB // 8)])
def test_llama_shape_8k_fp16(kv_heads, expected):
    # 32 layers x kv_heads x 128 dims x 8192 tokens x 2 (K and V) x 2 bytes: the standard KV formula
    # (e.g. NVIDIA's "Mastering LLM Techniques: Inference Optimization" blog; llm-analysis's FasterTransformer table).
    m = uniform("t", n_layers=32, hidden=4096, vocab=32000, n_heads=32, n_kv_heads=kv_heads, head_dim=128,
                intermediate=11008, weight_dtype="fp16")
    assert kv_bytes(m, 8192) == expected


def test_qwen25_7b_bytes_per_token():
    # 28 layers x 4 KV heads x 128 dims x 2 x 2 bytes = 57,344 bytes per token (Qwen2.5 config; widely quoted).
    m = load_model("qwen2.5-7b")
    assert kv_bytes(m, 1001) - kv_bytes(m, 1000) == 57_344


def test_deepseek_v3_mla_bytes_per_token():
    # MLA caches kv_lora_rank 512 + rope 64 = 576 elements per token per layer (DeepSeek-V2 paper, Table 1:
    # 4.5 d_h per token per layer with d_h = 128); 61 layers x 576 x 2 bytes = 70,272 bytes.
    m = load_model("deepseek-v3")
    assert kv_bytes(m, 2) - kv_bytes(m, 1) == 70_272


def test_mla_decompressed_is_the_naive_cache():
    # The same model caching decompressed per-head K and V: 128 heads x (192 + 128) x 2 bytes x 61 layers.
    from kvsim.model import MLA, Layer
    m = load_model("deepseek-v3")
    layers = tuple(Layer(MLA(**{**l.mixer.__dict__, "cache": "decompressed"}), l.mlp) for l in m.layers)
    naive = m.with_(layers=layers)
    assert kv_bytes(naive, 2) - kv_bytes(naive, 1) == 61 * 128 * (192 + 128) * 2


def test_mistral_sliding_window_caps_cache():
    # Mistral-7B-v0.1's 4096-token window: a query sees itself and 4095 earlier tokens, so 4095 are kept between
    # steps (transformers' DynamicSlidingWindowLayer keeps sliding_window - 1).
    m = load_model("mistral-7b-v0.1")
    per_token = 32 * 8 * 128 * 2 * 2
    assert kv_bytes(m, 100_000) == 4095 * per_token
    assert kv_bytes(m, 1000) == 1000 * per_token


@pytest.mark.parametrize("name, per_token", [
    ("llama-3.1-8b", 32 * 8 * 128 * 2 * 2),     # 131,072 bytes: 32 layers x 8 KV heads x 128 x K,V x bf16
    ("llama-3.2-1b", 16 * 8 * 64 * 2 * 2),      # head dim 64
    ("qwen3-30b-a3b", 48 * 4 * 128 * 2 * 2),    # 4 KV heads; MoE changes weights, not the cache
    ("mistral-7b-v0.3", 32 * 8 * 128 * 2 * 2),  # no window: grows past 4096 tokens
])
def test_new_presets_bytes_per_token(name, per_token):
    m = load_model(name)
    assert kv_bytes(m, 5001) - kv_bytes(m, 5000) == per_token


def test_gemma3_270m_local_global():
    # 18 layers, 3 global (every 6th) keep everything, 15 local keep 511; 1 KV head x 256 dims x 2 x 2 bytes.
    m = load_model("gemma-3-270m")
    per_layer_token = 1 * 256 * 2 * 2
    assert kv_bytes(m, 10_000) == (3 * 10_000 + 15 * 511) * per_layer_token


def test_mamba_state_is_constant():
    # Mamba-1: conv state d_inner x d_conv plus SSM state d_inner x d_state per layer.
    m = load_model("mamba-2.8b")
    a = predict(m, H100, None, Workload(prompt=10, gen=1))
    b = predict(m, H100, None, Workload(prompt=100_000, gen=1))
    assert int(a.kv_cache_bytes) == int(b.kv_cache_bytes) == 0
    assert int(a.state_bytes) == int(b.state_bytes) == 64 * (5120 * 4 + 5120 * 16) * 4  # fp32 model


def test_kivi_2bit_payload_fraction():
    # KIVI-2 with group 32 and residual 128 at a multiple of 128 tokens: keys 2/16 of fp16 plus one fp16 scale
    # and zero point per channel per 32 tokens; values 2/16 plus a scale and zero point per 32 channels.
    m = uniform("t", n_layers=1, hidden=128, vocab=10, n_heads=1, n_kv_heads=1, head_dim=128, intermediate=8)
    n = 1024
    keys = n * 128 * 2 // 8 + (n // 32) * 128 * 4
    values = n * (128 * 2 // 8 + (128 // 32) * 4)
    assert kv_bytes(m, n, ["kivi"]) == keys + values


@pytest.mark.parametrize("name", model_names())
def test_preset_parameter_counts(name):
    # Each preset records its published parameter count and where it comes from.
    entry = model_entry(name)
    n = load_model(name).n_params()
    tol = entry.get("params_tolerance", 0.0)
    assert abs(n - entry["published_params"]) <= tol * entry["published_params"], (n, entry["published_params"])


def test_h100_decode_is_weights_over_bandwidth():
    # Llama-2-7B fp16 decode at batch 1 reads every weight once except the untied input embedding table, of
    # which it gathers one row: (6.74e9 - 32000 x 4096) x 2 bytes over 3.35 TB/s = 3.94 ms, the datasheet floor.
    m = load_model("llama-2-7b")
    pred = predict(m, H100, None, Workload(prompt=1, gen=2))
    floor = (m.n_params() - m.vocab * m.hidden) * 2 / 3.35e12
    assert floor <= float(pred.tpot_s) <= floor * 1.02
    assert pred.bound_decode.item() == "memory"


def test_h100_preset_is_dense():
    # NVIDIA's datasheet: 989.4 TFLOP/s dense BF16 (1979 is the 2:4 sparse figure and must not be used).
    assert H100.peak_flops("bf16") == pytest.approx(989.4e12)
    assert H100.memory_bandwidth == pytest.approx(3.35e12)


def test_llama3_8b_awq_int4_checkpoint_size():
    # hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4 (https://huggingface.co/hugging-quants/
    # Meta-Llama-3.1-8B-Instruct-AWQ-INT4, same shapes as Llama-3-8B): about 5.7 GB of safetensors. AutoAWQ's
    # GEMM layout: int4 weights, per group of 128 input channels an fp16 scale and a 4-bit zero point; embeddings,
    # lm_head and norms stay fp16. kvsim used to count every weight at 4 bits: 3.74 GiB.
    pred = predict(load_model("llama-3-8b"), H100, None, Workload(weight_dtype="int4"))
    assert int(pred.weights_bytes) == pytest.approx(5.7e9, rel=0.01)
    assert int(pred.weights_bytes) > 5.3 * GiB


def test_deepseek_v3_preset_is_its_fp8_checkpoint():
    # deepseek-ai/DeepSeek-V3 config.json: quantization_config {quant_method fp8, fmt e4m3, weight_block_size
    # [128, 128]}: about one byte per weight (the 671B main model), embeddings and lm_head in bf16.
    m = load_model("deepseek-v3")
    assert m.weight_dtype == "fp8:block=128"
    w = int(predict(m, H100, None, Workload()).weights_bytes)
    assert 671e9 < w < 671e9 * 1.01
    assert int(predict(m, H100, None, Workload(prompt=1)).kv_cache_bytes) == 70_272  # the KV stays bf16


@pytest.mark.parametrize("model, batch, tp, isl, osl, published", [
    ("llama-2-7b", 64, 1, 128, 128, 9193),
    ("llama-2-7b", 64, 1, 128, 2048, 5367),
    ("llama-2-7b", 64, 1, 2048, 128, 2058),
    ("llama-2-7b", 32, 1, 2048, 2048, 2230),
    ("llama-2-70b", 64, 4, 128, 128, 3317),
    ("llama-2-70b", 64, 4, 2048, 128, 843),
])
def test_published_tensorrt_llm_fp8_throughput_is_below_the_datasheet_bound(model, batch, tp, isl, osl, published):
    # TensorRT-LLM 0.5.0 docs/source/performance.md, "H100 GPUs (FP8)" (static batches; output tokens/s):
    # https://github.com/NVIDIA/TensorRT-LLM/blob/release/0.5.0/docs/source/performance.md
    # The datasheet roofline is a lower bound on time, so no published throughput may exceed kvsim's.
    pred = predict(load_model(model), H100, None, Workload(prompt=isl, gen=osl, batch=batch, tp=tp,
                                                            weight_dtype="fp8", kv_dtype="fp8"))
    assert bool(pred.fits) and float(pred.throughput_tokens_per_s) >= published
