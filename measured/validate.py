"""`kvsim validate`: for every registered policy (and the example compositions) on small random models of
several architectures, run the harness and compare the physical cache bytes with kvsim's prediction,
after the prefill and after the last decode step, per sequence and shared. Any difference fails."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvsim import Workload, load_hardware, parse_composition, predict
from kvsim.model import LinearAttention, Mamba
from kvsim.hf import MLA_CACHE_KEY, from_hf_config
from kvsim.policies.examples import COMPOSITIONS, SMALL

from .loop import run_request
from .support import check

# Every registered policy at small parameters, plus the example compositions; and a quantization of recurrent
# state (a no-op on attention-only models, the state of Mamba and linear-attention layers elsewhere).
CASES = [[s] for s in SMALL.values()] + [list(c) for c in COMPOSITIONS] + [["int4:group=16,state=true"]]

# Small configs, one per architecture the harness drives. The newer families mirror a real checkpoint's config
# (named beside each) with its layer types, head counts, expert counts and ratios kept, and fewer layers and
# narrower widths: the smallest shapes that still exercise every layer type.
ARCHS = {
    "llama-gqa": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128},
    "qwen2-bias": {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
                   "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 128},
    "mistral-window": {"model_type": "mistral", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 20,
                       "vocab_size": 128},
    "gemma3-local-global": {"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 96,
                            "num_hidden_layers": 6, "num_attention_heads": 2, "num_key_value_heads": 1,
                            "head_dim": 32, "sliding_window": 24, "vocab_size": 128,
                            "layer_types": ["sliding_attention"] * 2 + ["full_attention"] + ["sliding_attention"] * 2
                            + ["full_attention"]},
    "gpt2-mha": {"model_type": "gpt2", "n_embd": 64, "n_layer": 3, "n_head": 4, "vocab_size": 128,
                 "n_positions": 256},
    # mistralai/Mixtral-8x7B-v0.1: 32 heads, 8 KV heads, 8 experts, 2 active
    "mixtral-moe": {"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 8, "num_local_experts": 8,
                    "num_experts_per_tok": 2, "vocab_size": 128},
    # deepseek-ai/DeepSeek-V2-Lite: 16 heads, latent 512 + RoPE 64, nope 128, v 128 (all / 16 here), no query
    # compression, a dense first layer, then 64 routed experts (6 active) + 2 shared
    "deepseek-v2-mla": {"model_type": "deepseek_v2", "hidden_size": 64, "intermediate_size": 96,
                        "moe_intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 16,
                        "num_key_value_heads": 16, "kv_lora_rank": 32, "q_lora_rank": None, "qk_rope_head_dim": 4,
                        "qk_nope_head_dim": 8, "v_head_dim": 8, "n_routed_experts": 64, "num_experts_per_tok": 6,
                        "n_shared_experts": 2, "first_k_dense_replace": 1, "topk_method": "greedy",
                        "vocab_size": 128},
    # deepseek-ai/DeepSeek-V3: 128 heads, query latent 1536, KV latent 512 + RoPE 64 (all / 16 here), 256 routed
    # experts (8 active, in 8 groups of which 4 are chosen) + 1 shared, sigmoid routing with a score correction
    "deepseek-v3-mla": {"model_type": "deepseek_v3", "hidden_size": 64, "intermediate_size": 96,
                        "moe_intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 128,
                        "num_key_value_heads": 128, "kv_lora_rank": 32, "q_lora_rank": 96, "qk_rope_head_dim": 4,
                        "qk_nope_head_dim": 8, "v_head_dim": 8, "n_routed_experts": 256, "num_experts_per_tok": 8,
                        "n_shared_experts": 1, "n_group": 8, "topk_group": 4, "first_k_dense_replace": 1,
                        "vocab_size": 128},
    # state-spaces/mamba-2.8b-hf: d_state 16, expand 2, conv 4, dt rank hidden / 16
    "mamba": {"model_type": "mamba", "hidden_size": 64, "num_hidden_layers": 2, "state_size": 16, "expand": 2,
              "conv_kernel": 4, "time_step_rank": 4, "vocab_size": 128},
    # state-spaces/mamba2-2.7b: expand 2, head_dim 64 (16 here), d_state 2 x head_dim, 1 group, conv 4; chunks of
    # 16 (256 there) so a prompt spans several
    "mamba2": {"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2, "state_size": 32, "expand": 2,
               "conv_kernel": 4, "num_heads": 8, "head_dim": 16, "n_groups": 1, "chunk_size": 16,
               "vocab_size": 128},
    # ai21labs/Jamba-v0.1: attention every 8th layer (offset 4), Mamba elsewhere, 16 experts (2 active) every 2nd
    # layer (offset 1), 32 heads, 8 KV heads, no positional encoding
    "jamba-hybrid": {"model_type": "jamba", "hidden_size": 128, "intermediate_size": 96, "num_hidden_layers": 8,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "num_experts": 16,
                     "num_experts_per_tok": 2, "attn_layer_period": 8, "attn_layer_offset": 4,
                     "expert_layer_period": 2, "expert_layer_offset": 1, "mamba_d_state": 16, "mamba_d_conv": 4,
                     "mamba_expand": 2, "mamba_dt_rank": 8, "vocab_size": 128},
    # openai/gpt-oss-20b: sliding (128 tokens; 16 here) and full layers alternating, learned sinks, 64 heads,
    # 8 KV heads, 32 experts (4 active)
    "gpt-oss-sinks": {"model_type": "gpt_oss", "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 8, "num_local_experts": 32,
                      "num_experts_per_tok": 4, "sliding_window": 16,
                      "layer_types": ["sliding_attention", "full_attention"], "vocab_size": 128},
    # Qwen/Qwen3-Next-80B-A3B: 3 Gated DeltaNet layers per gated full-attention layer; DeltaNet 16 key heads,
    # 32 value heads, conv 4; attention 16 heads, 2 KV heads, RoPE on a quarter of head_dim; 512 experts
    # (10 active) + 1 gated shared expert
    "qwen3-next-deltanet": {"model_type": "qwen3_next", "hidden_size": 64, "intermediate_size": 96,
                            "moe_intermediate_size": 8, "shared_expert_intermediate_size": 8, "num_hidden_layers": 4,
                            "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 16,
                            "linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 8,
                            "linear_value_head_dim": 8, "linear_conv_kernel_dim": 4, "num_experts": 512,
                            "num_experts_per_tok": 10, "vocab_size": 128},
}
# MLA in both cache forms: each MLA model is followed by the same model caching decompressed per-head K and V
# (hf.MLA_CACHE_KEY)
ARCHS = {name: cfg for arch, base in ARCHS.items() for name, cfg in
         [(arch, base)] + ([(arch.replace("-mla", "-decompressed"), {**base, MLA_CACHE_KEY: "decompressed"})]
                           if arch.endswith("-mla") else [])}


@dataclass
class Check:
    arch: str
    policy: str
    phase: str
    measured: int
    predicted: int
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.measured == self.predicted


def tiny_model(arch: str, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**ARCHS[arch])).eval()


def check_policy(model, arch: str, specs: list[str], prompt: int, gen: int, batch: int) -> list[Check]:
    pol = parse_composition(specs)
    spec = from_hf_config(model.config.to_dict())
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt))
    r = run_request(model, pol, ids, gen)
    hw = load_hardware("h100-sxm")  # bytes do not depend on the hardware; this one has every link
    name = pol.spec()
    dtype = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[next(model.parameters()).dtype]
    recurrent = any(isinstance(layer.mixer, (Mamba, LinearAttention)) for layer in spec.layers)
    out = []
    for phase, g, got in (("prefill", 1, r.bytes_prefill), ("end", gen, r.bytes_end)):
        pred = predict(spec, hw, pol, Workload(prompt=prompt, gen=g, batch=batch, kv_dtype=dtype, weight_dtype=dtype))
        # gen=1: resident after the prefill (and any split across layers); physical storage holds the policy state too
        seq_pred = int(pred.kv_cache_bytes) + int(pred.policy_state_bytes)
        out.append(Check(arch, name, phase, got["sequence"], seq_pred))
        out.append(Check(arch, name, phase + " shared", got["shared"], int(pred.kv_shared_bytes)))
        if recurrent:
            out.append(Check(arch, name, phase + " state", got["state"], int(pred.state_bytes)))
    return out


def run(archs=None, prompt: int = 60, gen: int = 9, batch: int = 2, report=print, progress=None,
        cases=None) -> list[Check]:
    """Every case (or `cases`) on every architecture. With `progress` (measured.progress.Progress), one line or
    bar step per case and a line per mismatch; without, `report` gets every check."""
    checks: list[Check] = []
    for arch in archs or ARCHS:
        model = tiny_model(arch)
        for specs in cases or CASES:
            point = f"{arch} {' + '.join(specs)}"
            names = [parse_composition([s]).parts[0].name for s in specs]
            why = check(names, model.config.model_type, "cuda")  # bytes do not depend on the device
            if why:
                if progress is not None:
                    progress.done(point, f"skipped: {why}")
                else:
                    report(f"{arch:26s} {' '.join(specs):60s} skipped: {why}")
                continue
            if progress is not None:
                progress.current(point)
            got = check_policy(model, arch, specs, prompt, gen, batch)
            checks.extend(got)
            for c in got:
                flag = "ok" if c.ok else "MISMATCH"
                line = (f"{arch:26s} {' '.join(specs)[:60]:60s} {c.phase:15s} measured {c.measured:>10,d}  "
                        f"predicted {c.predicted:>10,d}  {flag}")
                if progress is None:
                    report(line)
                elif not c.ok:
                    progress.note(line)
            if progress is not None:
                bad = sum(not c.ok for c in got)
                progress.done(point, f"{len(got)} checks, " + (f"{bad} MISMATCH" if bad else "all equal"))
    return checks


def summary(checks: list[Check]) -> list[str]:
    """One line per architecture (checks, differences) and a total."""
    lines = []
    for arch in dict.fromkeys(c.arch for c in checks):
        mine = [c for c in checks if c.arch == arch]
        lines.append(f"{arch:26s} {len(mine):5d} checks  {sum(not c.ok for c in mine):3d} differences")
    lines.append(f"{'total':26s} {len(checks):5d} checks  {sum(not c.ok for c in checks):3d} differences")
    return lines
