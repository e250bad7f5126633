"""Where the harness can execute each policy. Plain Python: `kvsim list policies` reads it without torch."""

from __future__ import annotations

# Attention families the harness drives through transformers' attention interface and cache API.
ARCHITECTURES = {
    "llama": "Llama, SmolLM2, TinyLlama, Qwen2/Qwen3, Mistral (GQA/MHA, sliding windows)",
    "gemma3": "Gemma-3 (local sliding + global layers, MQA)",
    "gpt2": "GPT-2 (MHA, learned positions)",
}
MODEL_TYPES = {"llama": "llama", "qwen2": "llama", "qwen3": "llama", "mistral": "llama", "mixtral": "llama",
               "gemma3_text": "gemma3", "gemma3": "gemma3", "gpt2": "gpt2"}
UNSUPPORTED_MODEL_TYPES = {
    "deepseek_v2": "transformers caches MLA decompressed per head, not the latent kvsim models",
    "deepseek_v3": "transformers caches MLA decompressed per head, not the latent kvsim models",
    "mamba": "no KV cache to run policies on",
    "mamba2": "no KV cache to run policies on",
    "jamba": "hybrid Mamba cache is not driven by this harness",
}
# Policies that need more than any attention layer offers, by device.
DEVICE_ONLY = {"offload": ("cuda", "offload streams KV from host memory to a GPU; on the CPU there is no "
                                   "separate device memory to offload from")}
# What the harness executes differently from the analytic model, by policy.
CAVEATS = {"offload": "each offloaded layer is copied in when it is needed (overlap=false); prefetching is not "
                      "executed"}


def check(policy_names: list[str], model_type: str, device: str) -> str | None:
    """None if the harness can run these policies on this model and device, else why not."""
    if model_type in UNSUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not supported by the harness: {UNSUPPORTED_MODEL_TYPES[model_type]}"
    if model_type not in MODEL_TYPES:
        return f"model type {model_type!r} is not supported by the harness (supported: {', '.join(MODEL_TYPES)})"
    for name in policy_names:
        if name in DEVICE_ONLY and not device.startswith(DEVICE_ONLY[name][0]):
            return f"policy {name} cannot run on {device}: {DEVICE_ONLY[name][1]}"
    if "minicache" in policy_names and "lowrank" in policy_names:
        return "minicache with lowrank is not executed by the harness (merged directions have no per-layer basis)"
    return None


def describe_support(name: str) -> str:
    archs = ", ".join(ARCHITECTURES)
    if name in DEVICE_ONLY:
        dev, why = DEVICE_ONLY[name]
        caveat = f"; {CAVEATS[name]}" if name in CAVEATS else ""
        return f"runs on {archs}, {dev} only ({why}){caveat}"
    return f"runs on {archs} (cpu, cuda); not on MLA, Mamba or Jamba models"
