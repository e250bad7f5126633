"""Weight formats (kvsim/weights.py): spellings, stored sizes, and the dtypes matmuls and activations run in."""

from fractions import Fraction

import pytest

from kvsim import KvsimError, Workload, from_hf_config, load_hardware, load_model, predict
from kvsim.cost import CostModel
from kvsim.policies import parse_composition
from kvsim.profile import DATASHEET
from kvsim.weights import parse

H100, A100, T4 = load_hardware("h100-sxm"), load_hardware("a100-80gb"), load_hardware("t4")
LLAMA = load_model("llama-3-8b")


@pytest.mark.parametrize("spec, canonical, bits", [
    ("bf16", "bf16", 16),
    ("bfloat16", "bf16", 16),
    ("fp32", "fp32", 32),
    ("fp8", "fp8", 8),
    ("fp8:block=128", "fp8:block=128", Fraction(8) + Fraction(32, 128 * 128)),  # one fp32 scale per block
    ("int8", "int8", 8),
    ("int8:weight-only", "int8:weight-only", 8),
    ("int4", "int4:group=128", Fraction(4) + Fraction(20, 128)),  # fp16 scale + 4-bit zero per 128 weights
    ("awq", "int4:group=128", Fraction(4) + Fraction(20, 128)),
    ("int4:group=64,head=int4", "int4:group=64,head=int4", Fraction(4) + Fraction(20, 64)),
    ("int4:group=0", "int4:group=0", 4),
    ("q4_0", "q4_0", Fraction(9, 2)),  # llama.cpp: 32 x 4 bits + an fp16 scale per block of 32
    ("q8_0", "q8_0", Fraction(17, 2)),
    ("int4:act=fp16", "int4:group=128,act=fp16", Fraction(4) + Fraction(20, 128)),
])
def test_spellings_and_bits(spec, canonical, bits):
    fmt = parse(spec)
    assert fmt.spec == canonical and fmt.bits == bits
    assert parse(fmt.spec) == fmt


@pytest.mark.parametrize("spec, message", [
    ("int5", "unknown weight format"),
    ("int4:block=128", "no option 'block'"),
    ("bf16:act=fp16", "no option 'act'"),
    ("int4:group=-1", "whole number"),
    ("int4:group=1e30", "whole number"),
    ("fp8:weight-only=1", "takes no value"),
    ("int4:head=int3", "head must be"),
    ("int4:act=int8", "act must be"),
])
def test_bad_spellings_are_one_line(spec, message):
    with pytest.raises(KvsimError, match=message) as e:
        parse(spec)
    assert "\n" not in str(e.value)


def cost(weights, hw=H100, model=LLAMA):
    return CostModel(model, hw, parse_composition([]), kv_dtype=None, weight_dtype=weights, tp=1, pp=1,
                     profile=DATASHEET)


def test_w8a8_matmuls_run_at_the_8bit_peak_weight_only_at_16_bits():
    # H100 SXM datasheet: 1978.9 dense fp8 / int8 TFLOP/s, 989.4 bf16.
    assert cost("fp8").raw_gemm_peak == pytest.approx(1978.9e12)
    assert cost("int8").raw_gemm_peak == pytest.approx(1978.9e12)
    for spec in ("int8:weight-only", "fp8:weight-only", "int4", "q4_0", "bf16"):
        assert cost(spec).raw_gemm_peak == pytest.approx(989.4e12), spec
    # Attention and activations stay at the compute dtype whatever the weights.
    for spec in ("fp8", "int8", "int4"):
        c = cost(spec)
        assert c.raw_peak == pytest.approx(989.4e12) and c.act_dtype == "bf16" and c.kv_dtype == "bf16"


def test_fp8_prefill_is_faster_than_bf16_by_the_matmul_share():
    wl = Workload(prompt=4096, batch=16)
    fp8, bf16 = predict(LLAMA, H100, None, replace(wl, "fp8")), predict(LLAMA, H100, None, replace(wl, "bf16"))
    assert fp8.bound_prefill.item() == "compute"
    assert 0.5 < float(fp8.ttft_s) / float(bf16.ttft_s) < 0.7  # matmuls halve; attention does not
    assert int(fp8.activation_peak_bytes) == int(bf16.activation_peak_bytes)


def replace(wl, weights):
    import dataclasses
    return dataclasses.replace(wl, weight_dtype=weights)


def test_device_without_fp8_units_runs_fp8_weight_only_and_says_so():
    pred = predict(LLAMA, A100, None, Workload(weight_dtype="fp8"))
    assert any("no fp8 units" in n for n in pred.notes)
    assert cost("fp8", A100).raw_gemm_peak == pytest.approx(312e12)


def test_t4_runs_a_bf16_checkpoint_at_its_fp16_rate_and_says_so():
    # T4 datasheet: 65 TFLOP/s fp16 tensor cores, 8.1 fp32, no bf16. Before this, bf16 fell to the fp32 rate:
    # a compute-bound prefill 8x slower than the same model in fp16.
    wl = Workload(prompt=1024)
    bf16 = predict(LLAMA, T4, None, wl)
    fp16 = predict(LLAMA, T4, None, replace(wl, "fp16"))
    assert float(bf16.ttft_s) == pytest.approx(float(fp16.ttft_s))
    assert any("no bf16 units" in n and "fp16" in n for n in bf16.notes)
    assert not any("bf16" in n for n in fp16.notes)
    assert cost(None, T4).kv_dtype == "fp16"


def test_weight_only_formats_keep_activations_and_kv_at_the_compute_dtype():
    wl = Workload(prompt=2048, gen=16, batch=4)
    base = predict(LLAMA, H100, None, wl)
    for spec in ("int4", "q4_0", "int8:weight-only"):
        q = predict(LLAMA, H100, None, replace(wl, spec))
        assert int(q.kv_cache_bytes) == int(base.kv_cache_bytes)
        assert int(q.activation_peak_bytes) == int(base.activation_peak_bytes)
        assert int(q.weights_bytes) < int(base.weights_bytes)
    fp16_model = load_model("llama-2-7b")  # a float16 checkpoint keeps fp16 activations when quantized
    assert cost("int4", model=fp16_model).act_dtype == "fp16"


def test_head_option_quantizes_embeddings_and_output_head():
    plain, head = cost("int4").weight_bytes(), cost("int4:head=int4").weight_bytes()
    embed = LLAMA.embedding_params()  # untied: input table and lm_head
    assert plain - head == pytest.approx(embed * (2 - 4.15625 / 8), abs=1)


def test_awq_and_fp8_configs_are_read_from_quantization_config():
    cfg = dict(load_model_config("llama-3-8b"), torch_dtype="float16",
               quantization_config={"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
                                    "version": "gemm"})
    assert from_hf_config(cfg).weight_dtype == "int4:group=128,act=fp16"
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
    assert from_hf_config(cfg).weight_dtype == "fp8:block=128,act=fp16"
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    spec = from_hf_config(cfg)
    assert spec.weight_dtype == "fp16" and any("not modelled" in n for n in spec.notes)


def load_model_config(name):
    from kvsim.presets import model_entry
    return dict(model_entry(name)["config"])
