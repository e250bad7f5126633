"""The one adapter from a transformers config.json (a plain dict) to a ModelSpec. Offline, no remote code.

Families: Llama, Mistral, Qwen2/Qwen3 (dense and MoE), Qwen3-Next, Gemma/Gemma-2/Gemma-3, Phi-3/Phi-4, Granite,
GPT-2, Mixtral, gpt-oss, DeepSeek-V2/V3, Mamba, Mamba-2, Jamba, and (in hf_classic) OPT, GPT-J, GPT-NeoX, Phi-1/2
and Falcon. Any other model_type is refused: a config read as the wrong family gives wrong numbers silently.
With strict=True (presets) every key must be one this adapter reads or knowingly ignores, so a typo in a
preset cannot silently change a number.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from .errors import KvsimError
from .jsonio import read_object
from .limits import INPUT_MAX, check_layers
from .model import MLA, MLP, SSD_CHUNK, Attention, Layer, LinearAttention, Mamba, ModelSpec, MoE

# Keys that carry no information about memory, bandwidth or FLOPs.
_IGNORED = {
    "architectures", "model_type", "transformers_version", "bos_token_id", "eos_token_id", "pad_token_id",
    "unk_token_id", "initializer_range", "rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "use_cache",
    "rope_theta", "rope_scaling", "rope_parameters", "attention_dropout", "hidden_act", "hidden_activation",
    "activation_function", "resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_type", "summary_use_proj",
    "summary_activation", "summary_proj_to_labels", "summary_first_dropout", "scale_attn_weights",
    "pretraining_tp", "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
    "router_aux_loss_coef", "output_router_logits", "router_jitter_noise", "_name_or_path", "_model_name_or_path",
    "n_ctx", "task_specific_params", "topk_method", "n_group", "topk_group", "scoring_func", "norm_topk_prob",
    "routed_scaling_factor", "aux_loss_alpha", "seq_aux", "ep_size", "num_nextn_predict_layers", "time_step_min",
    "time_step_max", "time_step_init_scheme", "time_step_scale", "time_step_floor", "rescale_prenorm_residual",
    "residual_in_fp32", "use_mambapy", "chunk_size", "time_step_limit", "num_logits_to_keep", "mamba_dt_rank_auto",
    "use_mamba_kernels", "bidirectional", "use_bidirectional_attention", "_sliding_window_pattern",
    "sliding_window_pattern", "cache_implementation", "quantization_config", "dtype", "torch_dtype",
    "max_window_layers", "use_sliding_window", "rope_local_base_freq", "head_dim", "tie_word_embeddings",
    "mlp_bias", "attention_bias", "layer_types", "sliding_window", "max_position_embeddings", "vocab_size",
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "reorder_and_upcast_attn", "scale_attn_by_inverse_layer_idx", "n_positions", "n_embd", "n_layer", "n_head",
    "n_inner", "num_local_experts", "num_experts_per_tok", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim",
    "qk_nope_head_dim", "v_head_dim", "n_routed_experts", "moe_intermediate_size", "n_shared_experts",
    "first_k_dense_replace", "moe_layer_freq", "state_size", "conv_kernel", "expand", "time_step_rank",
    "use_bias", "use_conv_bias", "num_heads", "n_groups", "attn_layer_period", "attn_layer_offset",
    "expert_layer_period", "expert_layer_offset", "num_experts", "mamba_d_state", "mamba_d_conv", "mamba_expand",
    "mamba_dt_rank", "mamba_conv_bias", "mamba_proj_bias", "layers_block_type", "norm_before_gate",
    "norm_eps", "is_decoder", "add_cross_attention", "tie_embeddings", "hidden_dropout", "attention_probs_dropout_prob",
    "decoder_sparse_step", "mlp_only_layers", "experts_per_token", "swiglu_limit", "initial_context_length",
    "original_max_position_embeddings", "embd_pdrop", "resid_pdrop",
    "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
    "linear_conv_kernel_dim", "shared_expert_intermediate_size", "full_attention_interval", "partial_rotary_factor",
}

# How MLA layers are cached (kvsim.model.MLA.cache): "latent" (vLLM, SGLang: the compressed latent and the
# decoupled RoPE key, decode steps absorb the up-projections) or "decompressed" (per-head K and V). Not a
# transformers key: kvsim's CLI (--mla-cache) and the harness set it, so the prediction and the measurement of
# one model object always describe the same cache.
MLA_CACHE_KEY = "_kvsim_mla_cache"


def load_json(path: str | Path) -> dict:
    """Read a config.json (or a folder holding one); any failure becomes a one-line KvsimError."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    return read_object(p, "config.json")


LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def config_name(path: str | Path, cfg: dict) -> str:
    """What to call a model read from `path`: the config's _name_or_path (an HF hub id or the folder it was saved
    from), else the folder of a config.json, else the file's stem."""
    p = Path(path)
    named = cfg.get("_name_or_path")
    if isinstance(named, str) and named.strip().strip("/."):
        return named.strip().rstrip("/").rsplit("/", 1)[-1] if named.startswith(("/", ".")) else named.strip()
    if p.is_dir():
        return p.resolve().name
    return p.resolve().parent.name if p.name == "config.json" else p.stem


def _get(cfg: dict, key: str, default=None, *, required: bool = False, kind=int):
    value = cfg.get(key, default)
    if value is None:
        if required:
            raise KvsimError(f"config is missing {key!r}")
        return default
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise KvsimError(f"config {key!r} must be an integer, got {value!r}")
        value = int(value)
        if value < 0:
            raise KvsimError(f"config {key!r} must not be negative, got {value}")
        if value > INPUT_MAX:
            raise KvsimError(f"config {key!r} must be at most 2**53, got {value:.3g}")
        if key in LAYER_KEYS:
            check_layers(value, f"config {key!r}")
        return value
    if kind is bool and not isinstance(value, bool):
        raise KvsimError(f"config {key!r} must be true or false, got {value!r}")
    return value


def _head_dim(hidden: int, heads: int) -> int:
    """hidden / heads when the config gives no head_dim; a remainder would silently truncate every head."""
    if heads == 0 or hidden % heads:
        raise KvsimError(f"config hidden size {hidden} is not a multiple of {heads} attention heads")
    return hidden // heads


def _dtype(cfg: dict) -> str:
    raw = cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16"
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(str(raw), "bf16")


def _weight_format(cfg: dict, dtype: str) -> tuple[str | None, list[str]]:
    """The weight format a config's `quantization_config` describes (None: none), and notes. `dtype` is the
    checkpoint's torch_dtype: the activation dtype of a quantized format."""
    q = cfg.get("quantization_config")
    if q is None:
        return None, []
    if not isinstance(q, dict):
        raise KvsimError("config 'quantization_config' must be an object")
    method = str(q.get("quant_method", "")).lower()
    act = "" if dtype == "bf16" else f",act={dtype}"
    if method == "fp8":  # DeepSeek-V3, Qwen3-FP8: float8 e4m3 weights with per-block or per-tensor scales
        block = q.get("weight_block_size")
        if block is None:
            return "fp8" + act.replace(",", ":", 1), []
        if not (isinstance(block, list) and len(block) == 2 and block[0] == block[1] and isinstance(block[0], int)
                and block[0] > 0):
            raise KvsimError(f"config fp8 weight_block_size {block!r}: kvsim reads square blocks only")
        return f"fp8:block={block[0]}{act}", []
    if method in ("awq", "gptq"):
        bits, group = q.get("bits", q.get("w_bit")), q.get("group_size", q.get("q_group_size", 128))
        if bits == 4 and isinstance(group, int):
            return f"int4:group={max(group, 0)}{act}", []
        if bits == 8:
            return f"int8:weight-only{act}", []
    return None, [f"quantization_config ({method or 'no quant_method'}) is not modelled: weights are counted "
                  f"at {dtype}"]


def _layer_types(cfg: dict, n_layers: int) -> list[str]:
    """Per-layer attention type: 'full' or 'sliding', from `layer_types` or each family's older keys."""
    types = cfg.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != n_layers:
            raise KvsimError(f"config 'layer_types' must list {n_layers} entries")
        out = []
        for t in types:
            if t in ("full_attention", "attention"):
                out.append("full")
            elif t in ("sliding_attention", "chunked_attention"):
                out.append("sliding")
            else:
                raise KvsimError(f"config layer type {t!r} is not an attention type kvsim reads here")
        return out
    mt = cfg.get("model_type", "")
    window = cfg.get("sliding_window")
    if mt == "gemma2":
        return ["sliding" if i % 2 == 0 else "full" for i in range(n_layers)]
    if mt in ("gemma3", "gemma3_text"):
        period = cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or 6
        return ["full" if (i + 1) % period == 0 else "sliding" for i in range(n_layers)]
    if mt in ("qwen2", "qwen2_moe", "qwen3") and window:
        if not cfg.get("use_sliding_window", False):
            return ["full"] * n_layers
        first = cfg.get("max_window_layers", n_layers)
        return ["sliding" if i >= first else "full" for i in range(n_layers)]
    return ["sliding" if window else "full"] * n_layers


def _attention(cfg: dict, window: int) -> Attention:
    hidden = _get(cfg, "hidden_size", required=True)
    heads = _get(cfg, "num_attention_heads", required=True)
    kv_heads = _get(cfg, "num_key_value_heads", heads)
    if heads == 0 or kv_heads == 0:
        raise KvsimError("config attention heads must be positive")
    head_dim = _get(cfg, "head_dim", None) or _head_dim(hidden, heads)
    mt = cfg.get("model_type", "")
    bias = bool(cfg.get("attention_bias", mt == "gpt_oss"))  # transformers' GptOssConfig defaults it to true
    qkv_bias = mt in ("qwen2", "qwen2_moe") or bias
    o_bias = bias and mt not in ("qwen2", "qwen2_moe")
    qk_norm = mt in ("gemma3", "gemma3_text", "qwen3", "qwen3_moe", "qwen3_next")
    return Attention(heads, kv_heads, head_dim, window=window, qkv_bias=qkv_bias, o_bias=o_bias, qk_norm=qk_norm,
                     fused_qkv=mt == "phi3", sinks=mt == "gpt_oss", out_gate=mt == "qwen3_next")


def _mlps(cfg: dict, n_layers: int) -> list:
    """Each layer's MLP: dense, or a mixture of experts on the layers where the family puts them."""
    mt = cfg.get("model_type", "")
    if mt in ("qwen3_moe", "qwen3_next"):
        shared = _get(cfg, "shared_expert_intermediate_size", 0) if mt == "qwen3_next" else 0
        moe = MoE(_get(cfg, "num_experts", required=True), _get(cfg, "num_experts_per_tok", required=True),
                  _get(cfg, "moe_intermediate_size", required=True), n_shared=1 if shared else 0,
                  shared_intermediate=shared, shared_gate=bool(shared))
        step = _get(cfg, "decoder_sparse_step", 1) or 1
        dense_only = cfg.get("mlp_only_layers") or []
        if not isinstance(dense_only, list) or not all(isinstance(i, int) for i in dense_only):
            raise KvsimError("config 'mlp_only_layers' must be a list of layer indices")
        moe_at = [i not in dense_only and (i + 1) % step == 0 for i in range(n_layers)]
        dense = None if all(moe_at) else MLP(_get(cfg, "intermediate_size", required=True))
        return [moe if m else dense for m in moe_at]
    if mt in ("mixtral", "gpt_oss") or cfg.get("num_local_experts"):
        oss = mt == "gpt_oss"  # gpt-oss's router and expert projections carry biases
        return [MoE(_get(cfg, "num_local_experts", required=True), _get(cfg, "num_experts_per_tok", 2),
                    _get(cfg, "intermediate_size", required=True), router_bias=oss, bias=oss)] * n_layers
    return [MLP(_get(cfg, "intermediate_size", required=True), bias=bool(cfg.get("mlp_bias", False)))] * n_layers


def _llama_like(cfg: dict) -> ModelSpec:
    n_layers = _get(cfg, "num_hidden_layers", required=True)
    hidden = _get(cfg, "hidden_size", required=True)
    window = _get(cfg, "sliding_window", 0) or 0
    types = _layer_types(cfg, n_layers)
    if "sliding" in types and not window:
        raise KvsimError("config has sliding layers but no 'sliding_window'")
    mt = cfg.get("model_type", "")
    gemma = mt.startswith("gemma")
    norms = 4 if mt in ("gemma2", "gemma3", "gemma3_text") else 2
    full, sliding = _attention(cfg, 0), _attention(cfg, window) if window else None
    layers = tuple(Layer(sliding if t == "sliding" else full, mlp, norms=norms)
                   for t, mlp in zip(types, _mlps(cfg, n_layers)))
    tied = cfg.get("tie_word_embeddings", gemma)
    return ModelSpec(cfg.get("_kvsim_name", mt), hidden, _get(cfg, "vocab_size", required=True),
                     layers, tied_embeddings=bool(tied), weight_dtype=_dtype(cfg),
                     max_context=_get(cfg, "max_position_embeddings", 0) or 0)


# Activations transformers writes out as formulas (NewGELUActivation, FastGELUActivation, QuickGELUActivation):
# one eager kernel per operation. Every other activation it names runs as one torch kernel.
_FORMULA_ACTIVATIONS = {"gelu_new": 8, "gelu_fast": 8, "quick_gelu": 3}


def act_kernels(cfg: dict, default: str) -> int:
    """Eager kernels of a config's MLP activation (its `activation_function` or `hidden_act`, else `default`)."""
    name = cfg.get("activation_function") or cfg.get("hidden_act") or default
    return _FORMULA_ACTIVATIONS.get(name, 1) if isinstance(name, str) else 1


def _gpt2(cfg: dict) -> ModelSpec:
    hidden = _get(cfg, "n_embd", required=True)
    heads = _get(cfg, "n_head", required=True)
    inner = _get(cfg, "n_inner", None) or 4 * hidden
    attn = Attention(heads, heads, _head_dim(hidden, heads), qkv_bias=True, o_bias=True, fused_qkv=True)
    layer = Layer(attn, MLP(inner, gated=False, bias=True, act_kernels=act_kernels(cfg, "gelu_new")), norms=2)
    n_pos = _get(cfg, "n_positions", 1024)
    return ModelSpec(cfg.get("_kvsim_name", "gpt2"), hidden, _get(cfg, "vocab_size", required=True),
                     (layer,) * _get(cfg, "n_layer", required=True), tied_embeddings=True,
                     weight_dtype=_dtype(cfg) if ("dtype" in cfg or "torch_dtype" in cfg) else "fp32",
                     learned_positions=n_pos, norm_bias=True, max_context=n_pos)


def _deepseek(cfg: dict) -> ModelSpec:
    n_layers = _get(cfg, "num_hidden_layers", required=True)
    hidden = _get(cfg, "hidden_size", required=True)
    form = cfg.get(MLA_CACHE_KEY, "latent")
    if form not in ("latent", "decompressed"):
        raise KvsimError(f"MLA cache form must be latent or decompressed, got {form!r}")
    mla = MLA(_get(cfg, "num_attention_heads", required=True), _get(cfg, "kv_lora_rank", required=True),
              _get(cfg, "qk_rope_head_dim", required=True), _get(cfg, "qk_nope_head_dim", required=True),
              _get(cfg, "v_head_dim", required=True), q_lora_rank=_get(cfg, "q_lora_rank", 0) or 0, cache=form,
              complex_rope=cfg.get("model_type") == "deepseek_v2")
    dense = MLP(_get(cfg, "intermediate_size", required=True))
    moe = MoE(_get(cfg, "n_routed_experts", required=True), _get(cfg, "num_experts_per_tok", required=True),
              _get(cfg, "moe_intermediate_size", required=True), n_shared=_get(cfg, "n_shared_experts", 0) or 0,
              router_bias=cfg.get("model_type") == "deepseek_v3",
              group_routing=cfg.get("model_type") == "deepseek_v3" or cfg.get("topk_method") == "group_limited_greedy")
    first_dense = _get(cfg, "first_k_dense_replace", 0)
    freq = _get(cfg, "moe_layer_freq", 1) or 1
    layers = tuple(Layer(mla, moe if (i >= first_dense and i % freq == 0) else dense) for i in range(n_layers))
    return ModelSpec(cfg.get("_kvsim_name", cfg.get("model_type", "deepseek")), hidden,
                     _get(cfg, "vocab_size", required=True), layers,
                     tied_embeddings=bool(cfg.get("tie_word_embeddings", False)), weight_dtype=_dtype(cfg),
                     max_context=_get(cfg, "max_position_embeddings", 0) or 0)


def _mamba(cfg: dict) -> ModelSpec:
    hidden = _get(cfg, "hidden_size", required=True)
    expand = _get(cfg, "expand", 2)
    d_inner = _get(cfg, "intermediate_size", None) or expand * hidden
    d_state = _get(cfg, "state_size", 16)
    conv = _get(cfg, "conv_kernel", 4)
    bias, conv_bias = bool(cfg.get("use_bias", False)), bool(cfg.get("use_conv_bias", True))
    if cfg.get("model_type") == "mamba2":
        heads = _get(cfg, "num_heads", required=True)
        d_inner = heads * _get(cfg, "head_dim", required=True)
        mixer = Mamba(d_inner, d_state, conv, version=2, n_heads=heads, n_groups=_get(cfg, "n_groups", 1),
                      conv_bias=conv_bias, proj_bias=bias, chunk=_get(cfg, "chunk_size", SSD_CHUNK))
    else:
        rank = cfg.get("time_step_rank", "auto")
        dt_rank = math.ceil(hidden / 16) if rank == "auto" else _get(cfg, "time_step_rank")
        mixer = Mamba(d_inner, d_state, conv, version=1, dt_rank=dt_rank, conv_bias=conv_bias, proj_bias=bias)
    layers = (Layer(mixer, None, norms=1),) * _get(cfg, "num_hidden_layers", required=True)
    return ModelSpec(cfg.get("_kvsim_name", cfg.get("model_type", "mamba")), hidden,
                     _get(cfg, "vocab_size", required=True), layers,
                     tied_embeddings=bool(cfg.get("tie_word_embeddings", True)), weight_dtype=_dtype(cfg))


def _jamba(cfg: dict) -> ModelSpec:
    n_layers = _get(cfg, "num_hidden_layers", required=True)
    hidden = _get(cfg, "hidden_size", required=True)
    attn = dataclasses.replace(_attention(cfg, 0), rope=False)
    d_state = _get(cfg, "mamba_d_state", 16)
    dt_rank = cfg.get("mamba_dt_rank", "auto")
    dt_rank = math.ceil(hidden / 16) if dt_rank == "auto" else _get(cfg, "mamba_dt_rank")
    mamba = Mamba(_get(cfg, "mamba_expand", 2) * hidden, d_state, _get(cfg, "mamba_d_conv", 4), version=1,
                  dt_rank=dt_rank, conv_bias=bool(cfg.get("mamba_conv_bias", True)),
                  proj_bias=bool(cfg.get("mamba_proj_bias", False)), bc_norms=True)
    dense = MLP(_get(cfg, "intermediate_size", required=True))
    experts = _get(cfg, "num_experts", 16)
    # one expert is transformers' plain MLP (JambaMLP), whatever num_experts_per_tok says
    moe = MoE(experts, _get(cfg, "num_experts_per_tok", 2), _get(cfg, "intermediate_size", required=True)) \
        if experts > 1 else dense
    a_period, a_off = _get(cfg, "attn_layer_period", 8), _get(cfg, "attn_layer_offset", 4)
    e_period, e_off = _get(cfg, "expert_layer_period", 2), _get(cfg, "expert_layer_offset", 1)
    layers = []
    for i in range(n_layers):
        mixer = attn if i % a_period == a_off else mamba
        mlp = moe if i % e_period == e_off else dense
        layers.append(Layer(mixer, mlp, norms=2))
    return ModelSpec(cfg.get("_kvsim_name", "jamba"), hidden, _get(cfg, "vocab_size", required=True),
                     tuple(layers), tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                     weight_dtype=_dtype(cfg), max_context=_get(cfg, "max_position_embeddings", 0) or 0)


def _qwen3_next(cfg: dict) -> ModelSpec:
    """Qwen3-Next: Gated DeltaNet layers with a full (gated) attention layer every full_attention_interval-th,
    a mixture of experts with one gated shared expert."""
    n_layers = _get(cfg, "num_hidden_layers", required=True)
    hidden = _get(cfg, "hidden_size", required=True)
    types = cfg.get("layer_types")
    if types is None:
        every = _get(cfg, "full_attention_interval", 4) or 4
        types = ["full_attention" if (i + 1) % every == 0 else "linear_attention" for i in range(n_layers)]
    if not isinstance(types, list) or len(types) != n_layers or \
            any(t not in ("full_attention", "linear_attention") for t in types):
        raise KvsimError(f"config 'layer_types' must list {n_layers} entries of full_attention or linear_attention")
    linear = LinearAttention(_get(cfg, "linear_num_value_heads", required=True),
                             _get(cfg, "linear_key_head_dim", required=True),
                             _get(cfg, "linear_value_head_dim", required=True),
                             n_key_heads=_get(cfg, "linear_num_key_heads", required=True),
                             conv=_get(cfg, "linear_conv_kernel_dim", 4), head_gates=2, head_params=2, out_norm=True,
                             delta_rule=True)
    attn = _attention(cfg, 0)
    layers = tuple(Layer(attn if t == "full_attention" else linear, mlp, norms=2)
                   for t, mlp in zip(types, _mlps(cfg, n_layers)))
    return ModelSpec(cfg.get("_kvsim_name", "qwen3_next"), hidden, _get(cfg, "vocab_size", required=True), layers,
                     tied_embeddings=bool(cfg.get("tie_word_embeddings", False)), weight_dtype=_dtype(cfg),
                     max_context=_get(cfg, "max_position_embeddings", 0) or 0)


# Families whose checkpoints have Llama's shape (RMSNorm, gated MLP or MoE, RoPE), with the differences
# `_attention` and `_mlps` read (biases, q/k norms, sinks, fused projections, expert layouts).
_LLAMA_FAMILY = {"llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3", "gemma3_text",
                 "mixtral", "phi3", "granite", "gpt_oss"}
_READERS = {"gpt2": _gpt2, "deepseek_v2": _deepseek, "deepseek_v3": _deepseek, "mamba": _mamba, "mamba2": _mamba,
            "falcon_mamba": _mamba, "jamba": _jamba, "qwen3_next": _qwen3_next,
            **{mt: _llama_like for mt in _LLAMA_FAMILY}}


def _reader(mt: str):
    from .hf_classic import CLASSIC  # at call time: hf_classic reads keys with this module's helpers

    readers = {**_READERS, **CLASSIC}
    if mt not in readers:
        what = f"model_type {mt!r}" if mt else "a config without 'model_type'"
        raise KvsimError(f"kvsim cannot read {what}; it reads: {', '.join(sorted(readers))}")
    return readers[mt]


def from_hf_config(cfg: dict, name: str | None = None, strict: bool = False) -> ModelSpec:
    """Turn a transformers config dict into a ModelSpec; raise KvsimError on anything it cannot read."""
    if not isinstance(cfg, dict):
        raise KvsimError("config must be a JSON object")
    if "text_config" in cfg and isinstance(cfg["text_config"], dict):  # multimodal wrappers (Gemma-3 4B+)
        inner = dict(cfg["text_config"])
        inner.setdefault("model_type", cfg.get("model_type", ""))
        cfg = inner
    mt = cfg.get("model_type", "")
    read = _reader(mt)
    if strict:
        unknown = sorted(k for k in cfg if k not in _IGNORED and not k.startswith("_kvsim"))
        if unknown:
            raise KvsimError(f"config has keys kvsim does not read: {', '.join(unknown)}")
    cfg = dict(cfg)
    if name:
        cfg["_kvsim_name"] = name
    try:
        spec = read(cfg)
    except KvsimError:
        raise
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise KvsimError(f"cannot read config ({mt or 'no model_type'}): {e}") from None
    fmt, notes = _weight_format(cfg, spec.weight_dtype)
    if fmt is not None or notes:
        spec = spec.with_(weight_dtype=fmt or spec.weight_dtype, notes=spec.notes + tuple(notes))
    return spec

