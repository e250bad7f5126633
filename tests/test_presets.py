import pytest

from kvsim import KvsimError, load_hardware, load_model
from kvsim.presets import hardware_names, model_names

REQUIRED_MODELS = {"llama-2-7b", "llama-2-70b", "llama-3-8b", "llama-3-70b", "mistral-7b", "mixtral-8x7b",
                   "qwen2.5-7b", "gemma-2-9b", "gemma-3-270m", "smollm2-135m", "tinyllama-1.1b", "gpt2",
                   "gpt2-large", "deepseek-v2-lite", "deepseek-v3", "mamba-2.8b", "jamba-v0.1"}
REQUIRED_HW = {"h100-sxm", "h100-pcie", "h200", "a100-40gb", "a100-80gb", "l4", "t4", "rtx-4090", "mi300x", "cpu"}


def test_required_presets_exist():
    assert REQUIRED_MODELS <= set(model_names())
    assert REQUIRED_HW <= set(hardware_names())


@pytest.mark.parametrize("name", model_names())
def test_every_model_loads_with_a_source(name):
    m = load_model(name)
    assert m.source.startswith("https://") and m.n_params() > 0


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
