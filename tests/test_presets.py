import pytest

from kvsim import KvsimError, load_hardware, load_model
from kvsim.presets import hardware_names, model_entry, model_names

REQUIRED_MODELS = {"llama-2-7b", "llama-2-70b", "llama-3-8b", "llama-3-70b", "mistral-7b-v0.1", "mistral-7b-v0.3",
                   "mixtral-8x7b", "qwen2.5-7b", "gemma-2-9b", "gemma-3-270m", "smollm2-135m", "tinyllama-1.1b",
                   "gpt2", "gpt2-large", "deepseek-v2-lite", "deepseek-v3", "mamba-2.8b", "jamba-v0.1",
                   "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "llama-3.2-1b", "llama-3.2-3b", "qwen3-8b",
                   "qwen3-32b", "qwen3-30b-a3b", "qwen2.5-72b", "phi-3-mini", "phi-4", "gpt-oss-20b",
                   "gpt-oss-120b"}
REQUIRED_HW = {"h100-sxm", "h100-pcie", "h200", "a100-40gb", "a100-80gb", "l4", "t4", "rtx-4090", "mi300x", "cpu",
               "a100-pcie-80gb", "a10g", "l40s", "v100-sxm2-32gb", "rtx-3090", "h100-nvl", "b200", "gb200",
               "mi325x", "h20"}


def test_required_presets_exist():
    assert REQUIRED_MODELS <= set(model_names())
    assert REQUIRED_HW <= set(hardware_names())


@pytest.mark.parametrize("name", model_names())
def test_every_model_loads_with_a_source(name):
    m = load_model(name)
    assert m.source.startswith("https://") and m.n_params() > 0
    assert model_entry(name).get("display")


@pytest.mark.parametrize("name, dtype", [("gemma-2-9b", "bf16"), ("tinyllama-1.1b", "bf16"), ("llama-2-7b", "fp16"),
                                         ("gpt2", "fp32"), ("qwen3-8b", "bf16"), ("gpt-oss-20b", "bf16")])
def test_weight_dtype_is_the_released_checkpoints(name, dtype):
    assert load_model(name).weight_dtype == dtype


def test_mistral_versions():
    # v0.1 slides a 4096-token window on every layer; v0.3 has none and a 32768-token vocabulary.
    v1, v3 = load_model("mistral-7b-v0.1"), load_model("mistral-7b-v0.3")
    assert {l.mixer.window for l in v1.layers} == {4096} and {l.mixer.window for l in v3.layers} == {0}
    assert (v1.vocab, v3.vocab) == (32000, 32768)
    assert "4,096-token sliding window" in model_entry("mistral-7b-v0.1")["display"]


def test_retired_mistral_name_names_both_versions():
    with pytest.raises(KvsimError, match="mistral-7b-v0.1.*mistral-7b-v0.3") as e:
        load_model("mistral-7b")
    assert "\n" not in str(e.value)


def test_gpt_oss_alternates_windows_with_sinks_and_biased_experts():
    m = load_model("gpt-oss-120b")
    assert [l.mixer.window for l in m.layers[:4]] == [128, 0, 128, 0] and m.n_layers == 36
    assert all(l.mixer.sinks and l.mlp.bias and l.mlp.router_bias for l in m.layers)
    assert (m.layers[0].mlp.n_experts, m.layers[0].mlp.top_k) == (128, 4)


@pytest.mark.parametrize("name", hardware_names())
def test_every_hardware_loads(name):
    h = load_hardware(name)
    assert h.source and h.memory_bytes > 0 and h.memory_bandwidth > 0
    assert h.peak_flops("fp32") > 0


def test_unknown_preset_lists_valid_names():
    with pytest.raises(KvsimError, match="valid: .*llama-3-8b"):
        load_model("llama-9")
    with pytest.raises(KvsimError, match="valid: .*h100-sxm"):
        load_hardware("h1000")


def test_missing_dtype_falls_back_to_wider():
    t4 = load_hardware("t4")
    # Turing has no bf16 tensor cores; a bf16 checkpoint runs in fp16 there (vLLM's dtype=auto), not on fp32 units
    assert t4.peak_flops("bf16") == t4.peak_flops("fp16")
    assert t4.peak_flops("fp8") == t4.peak_flops("fp16")  # fp8 operands are widened to fp16
