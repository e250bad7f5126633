"""Where the harness can execute each policy. Plain Python: `kvsim list policies` reads it without torch."""

from __future__ import annotations

# Families the harness drives through transformers' attention interface and cache API (measured/validate.py has
# a small model of each).
ARCHITECTURES = {
    "llama": "Llama, SmolLM2, TinyLlama, Qwen2/Qwen3, Mistral, Mixtral (MHA/GQA, sliding windows, MoE)",
    "gemma3": "Gemma-3 (local sliding + global layers, MQA)",
    "gpt2": "GPT-2 (MHA, learned positions)",
    "deepseek": "DeepSeek-V2/V3 (MLA: the latent + RoPE key with absorbed decode, or per-head K/V; MoE)",
    "gpt_oss": "gpt-oss (alternating sliding-window and full layers with attention sinks, MoE)",
    "mamba": "Mamba, Mamba-2 (recurrent state only)",
    "jamba": "Jamba (attention + Mamba + MoE)",
    "qwen3_next": "Qwen3-Next (Gated DeltaNet linear attention + gated full attention, MoE)",
}
MODEL_TYPES = {"llama": "llama", "qwen2": "llama", "qwen3": "llama", "mistral": "llama", "mixtral": "llama",
               "gemma3_text": "gemma3", "gemma3": "gemma3", "gpt2": "gpt2", "deepseek_v2": "deepseek",
               "deepseek_v3": "deepseek", "gpt_oss": "gpt_oss", "mamba": "mamba", "mamba2": "mamba", "jamba": "jamba",
               "qwen3_next": "qwen3_next"}
# Policies that need more than any attention layer offers, by device.
DEVICE_ONLY = {"offload": ("cuda", "offload streams KV from host memory to a GPU; on the CPU there is no "
                                   "separate device memory to offload from")}
# What the harness executes differently from the analytic model, by policy.
CAVEATS = {"offload": "each offloaded layer is copied in when it is needed (overlap=false); prefetching is not "
                      "executed"}
# Which part of a layer each policy acts on, by role (kvsim.policies.base), and the exceptions by name.
_ACTS_ON = {
    "select": "the attention KV of layers whose cache grows (full-attention and MLA layers; sliding-window layers "
              "keep their own bound)",
    "read": "the attention KV of layers whose cache grows",
    "merge": "pairs of adjacent attention layers whose cache grows",
    "encode": "the attention KV of every attention and MLA layer",
    "place": "the attention KV of every attention and MLA layer",
}
_QUANT = ("the attention KV of every attention and MLA layer; with state=true also the recurrent state (conv "
          "window and state matrix) of Mamba and linear-attention layers")
_NAMED = {"quant": _QUANT, "int8": _QUANT, "int4": _QUANT, "fp8": _QUANT}
_NOT_WITH = {"minicache": "lowrank", "lowrank": "minicache"}


def check(policy_names: list[str], model_type: str, device: str) -> str | None:
    """None if the harness can run these policies on this model and device, else why not."""
    if model_type not in MODEL_TYPES:
        return f"model type {model_type!r} is not supported by the harness (supported: {', '.join(MODEL_TYPES)})"
    for name in policy_names:
        if name in DEVICE_ONLY and not device.startswith(DEVICE_ONLY[name][0]):
            return f"policy {name} cannot run on {device}: {DEVICE_ONLY[name][1]}"
    if "minicache" in policy_names and "lowrank" in policy_names:
        return "minicache with lowrank is not executed by the harness (merged directions have no per-layer basis)"
    return None


def describe_support(name: str) -> str:
    """Where `name` runs in the harness: architectures and devices, and the part of each layer it acts on."""
    from kvsim.policies import policy_class

    archs = ", ".join(ARCHITECTURES)
    if name in DEVICE_ONLY:
        dev, why = DEVICE_ONLY[name]
        where = f"{dev} only: {why}" + (f"; {CAVEATS[name]}" if name in CAVEATS else "")
    else:
        where = "cpu, cuda"
    acts = _NAMED.get(name) or _ACTS_ON[policy_class(name).role] + "; Mamba and linear-attention state are left alone"
    text = f"runs on {archs} ({where}); acts on {acts}"
    return text + (f"; not composed with {_NOT_WITH[name]}" if name in _NOT_WITH else "")
