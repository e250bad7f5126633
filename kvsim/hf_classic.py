"""Readers for the pre-Llama decoder families: OPT, GPT-J, GPT-NeoX (Pythia), Phi-1/1.5/2 and Falcon.

They share one shape: LayerNorm with a bias, a two-matrix MLP without a gate, and attention whose K and V are
cached per KV head. Where they differ in weights, it is read: biases, fused QKV, one or two norms per layer
(GPT-J, Phi and Falcon-7B run attention and MLP in parallel from one LayerNorm), a bias on the output head
(GPT-J, Phi), OPT's learned positions. Rotary embeddings on part of each head (GPT-J, NeoX, Phi) and ALiBi
(Falcon-RW) add no weights and no cached bytes, and their elementwise FLOPs are not modelled.
"""

from __future__ import annotations

from .errors import KvsimError
from .hf import _get, act_kernels
from .model import MLP, Attention, Layer, ModelSpec
from .units import canonical_dtype


# Each family's config default activation (transformers' *Config classes), when a config names none.
_ACTIVATIONS = {"opt": "relu", "gptj": "gelu_new", "gpt_neox": "gelu", "phi": "gelu_new", "falcon": "gelu"}


def _dtype(cfg: dict) -> str:
    # These checkpoints predate bf16; with no dtype in the config transformers loads fp32, as for GPT-2.
    raw = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    try:
        return canonical_dtype(raw)
    except ValueError as e:
        raise KvsimError(f"config dtype: {e}") from None


def _decoder(cfg: dict, family: str, *, hidden: int, heads: int, kv_heads: int, n_layers: int, inner: int,
             qkv_bias: bool, o_bias: bool, mlp_bias: bool, norms: int, fused_qkv: bool, tied: bool,
             lm_head_bias: bool = False, learned_positions: int = 0, final_norm: bool = True,
             max_context: int = 0) -> ModelSpec:
    if heads == 0 or hidden % heads:
        raise KvsimError(f"config hidden size {hidden} is not a multiple of {heads} attention heads")
    attn = Attention(heads, kv_heads, hidden // heads, qkv_bias=qkv_bias, o_bias=o_bias, fused_qkv=fused_qkv)
    layer = Layer(attn, MLP(inner, gated=False, bias=mlp_bias, act_kernels=act_kernels(cfg, _ACTIVATIONS[family])),
                  norms=norms)
    return ModelSpec(cfg.get("_kvsim_name", family), hidden, _get(cfg, "vocab_size", required=True),
                     (layer,) * n_layers, tied_embeddings=tied, weight_dtype=_dtype(cfg),
                     learned_positions=learned_positions, lm_head_bias=lm_head_bias, norm_bias=True,
                     final_norm=final_norm, max_context=max_context)


def _opt(cfg: dict) -> ModelSpec:
    hidden = _get(cfg, "hidden_size", required=True)
    if _get(cfg, "word_embed_proj_dim", hidden) != hidden:
        raise KvsimError("OPT configs whose word_embed_proj_dim differs from hidden_size (opt-350m) are not read")
    if cfg.get("layer_norm_elementwise_affine", True) is False:
        raise KvsimError("OPT configs without LayerNorm weights (layer_norm_elementwise_affine=false) are not read")
    heads = _get(cfg, "num_attention_heads", required=True)
    bias = bool(cfg.get("enable_bias", True))
    pre_norm = bool(cfg.get("do_layer_norm_before", True))
    n_pos = _get(cfg, "max_position_embeddings", 2048)
    # OPT's learned position table has two extra rows: positions are offset by 2 (OPTLearnedPositionalEmbedding).
    return _decoder(cfg, "opt", hidden=hidden, heads=heads, kv_heads=heads,
                    n_layers=_get(cfg, "num_hidden_layers", required=True), inner=_get(cfg, "ffn_dim", required=True),
                    qkv_bias=bias, o_bias=bias, mlp_bias=bias, norms=2, fused_qkv=False,
                    tied=bool(cfg.get("tie_word_embeddings", True)), learned_positions=n_pos + 2,
                    final_norm=pre_norm and not cfg.get("_remove_final_layer_norm", False), max_context=n_pos)


def _gptj(cfg: dict) -> ModelSpec:
    hidden = _get(cfg, "n_embd", required=True)
    heads = _get(cfg, "n_head", required=True)
    return _decoder(cfg, "gptj", hidden=hidden, heads=heads, kv_heads=heads,
                    n_layers=_get(cfg, "n_layer", required=True), inner=_get(cfg, "n_inner", None) or 4 * hidden,
                    qkv_bias=False, o_bias=False, mlp_bias=True, norms=1, fused_qkv=False,
                    tied=bool(cfg.get("tie_word_embeddings", False)), lm_head_bias=True,
                    max_context=_get(cfg, "n_positions", 2048))


def _neox(cfg: dict) -> ModelSpec:
    heads = _get(cfg, "num_attention_heads", required=True)
    bias = bool(cfg.get("attention_bias", True))
    return _decoder(cfg, "gpt_neox", hidden=_get(cfg, "hidden_size", required=True), heads=heads, kv_heads=heads,
                    n_layers=_get(cfg, "num_hidden_layers", required=True),
                    inner=_get(cfg, "intermediate_size", required=True), qkv_bias=bias, o_bias=bias, mlp_bias=True,
                    norms=2, fused_qkv=True, tied=bool(cfg.get("tie_word_embeddings", False)),
                    max_context=_get(cfg, "max_position_embeddings", 0) or 0)


def _phi(cfg: dict) -> ModelSpec:
    if cfg.get("qk_layernorm"):
        raise KvsimError("Phi configs with qk_layernorm=true are not read")
    heads = _get(cfg, "num_attention_heads", required=True)
    return _decoder(cfg, "phi", hidden=_get(cfg, "hidden_size", required=True), heads=heads,
                    kv_heads=_get(cfg, "num_key_value_heads", None) or heads,
                    n_layers=_get(cfg, "num_hidden_layers", required=True),
                    inner=_get(cfg, "intermediate_size", required=True), qkv_bias=True, o_bias=True, mlp_bias=True,
                    norms=1, fused_qkv=False, tied=bool(cfg.get("tie_word_embeddings", False)), lm_head_bias=True,
                    max_context=_get(cfg, "max_position_embeddings", 0) or 0)


def _falcon(cfg: dict) -> ModelSpec:
    hidden = _get(cfg, "hidden_size", required=True)
    heads = _get(cfg, "num_attention_heads", None) or _get(cfg, "n_head", required=True)
    new_arch = bool(cfg.get("new_decoder_architecture", False))
    if new_arch:  # Falcon-40B/180B: grouped KV heads, separate LayerNorms for the parallel attention and MLP
        kv_heads = _get(cfg, "num_kv_heads", required=True)
        norms = _get(cfg, "num_ln_in_parallel_attn", None) or 2
    else:  # Falcon-7B: one K/V head (multi_query); one LayerNorm when attention and MLP run in parallel
        kv_heads = 1 if cfg.get("multi_query", True) else heads
        norms = 1 if cfg.get("parallel_attn", True) else 2
    bias = bool(cfg.get("bias", False))
    return _decoder(cfg, "falcon", hidden=hidden, heads=heads, kv_heads=kv_heads,
                    n_layers=_get(cfg, "num_hidden_layers", None) or _get(cfg, "n_layer", required=True),
                    inner=_get(cfg, "ffn_hidden_size", None) or 4 * hidden, qkv_bias=bias, o_bias=bias,
                    mlp_bias=bias, norms=norms, fused_qkv=True, tied=bool(cfg.get("tie_word_embeddings", True)),
                    max_context=_get(cfg, "max_position_embeddings", 2048))


CLASSIC = {"opt": _opt, "gptj": _gptj, "gpt_neox": _neox, "phi": _phi, "falcon": _falcon}
