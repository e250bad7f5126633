import pytest

from kvsim import KvsimError, from_hf_config, load_json
from kvsim.model import MLA, Attention, Mamba, MoE

from . import hf_configs as H

LLAMA = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
         "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1000}


def test_llama_gqa():
    m = from_hf_config(LLAMA)
    a = m.layers[0].mixer
    assert isinstance(a, Attention) and (a.n_heads, a.n_kv_heads, a.head_dim) == (8, 2, 32)
    assert not m.tied_embeddings


def test_layer_types_and_gemma3_pattern():
    cfg = {**LLAMA, "model_type": "gemma3_text", "num_hidden_layers": 12, "sliding_window": 64, "head_dim": 16}
    m = from_hf_config(cfg)
    windows = [l.mixer.window for l in m.layers]
    assert windows == [64] * 5 + [0] + [64] * 5 + [0]
    assert m.tied_embeddings and m.layers[0].norms == 4 and m.layers[0].mixer.qk_norm
    explicit = from_hf_config({**cfg, "layer_types": ["full_attention"] * 12})
    assert all(l.mixer.window == 0 for l in explicit.layers)


def test_gemma2_alternates():
    m = from_hf_config({**LLAMA, "model_type": "gemma2", "sliding_window": 32})
    assert [l.mixer.window for l in m.layers] == [32, 0, 32, 0]


def test_qwen2_bias_and_disabled_window():
    m = from_hf_config({**LLAMA, "model_type": "qwen2", "sliding_window": 64, "use_sliding_window": False})
    assert m.layers[0].mixer.qkv_bias and m.layers[0].mixer.window == 0


def test_mixtral_moe():
    m = from_hf_config({**LLAMA, "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2})
    assert isinstance(m.layers[0].mlp, MoE) and m.layers[0].mlp.top_k == 2


def test_gpt2():
    m = from_hf_config({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 100,
                        "n_positions": 32})
    assert m.learned_positions == 32 and m.norm_bias and m.layers[0].mixer.qkv_bias


def test_deepseek_mla_and_dense_first_layers():
    cfg = {"model_type": "deepseek_v2", "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 16,
           "num_hidden_layers": 3, "num_attention_heads": 4, "kv_lora_rank": 32, "qk_rope_head_dim": 8,
           "qk_nope_head_dim": 16, "v_head_dim": 16, "n_routed_experts": 8, "num_experts_per_tok": 2,
           "n_shared_experts": 1, "first_k_dense_replace": 1, "vocab_size": 100}
    m = from_hf_config(cfg)
    assert isinstance(m.layers[0].mixer, MLA)
    assert not isinstance(m.layers[0].mlp, MoE) and isinstance(m.layers[1].mlp, MoE)


def test_mamba_and_mamba2():
    m1 = from_hf_config({"model_type": "mamba", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100,
                         "state_size": 16})
    assert isinstance(m1.layers[0].mixer, Mamba) and m1.layers[0].mixer.dt_rank == 4
    m2 = from_hf_config({"model_type": "mamba2", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 100,
                         "num_heads": 8, "head_dim": 16, "state_size": 16, "n_groups": 1})
    assert m2.layers[0].mixer.version == 2 and m2.layers[0].mixer.d_inner == 128


def test_jamba_hybrid_pattern():
    cfg = {"model_type": "jamba", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 8,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "num_experts": 4}
    m = from_hf_config(cfg)
    kinds = [type(l.mixer).__name__ for l in m.layers]
    assert kinds.count("Attention") == 1 and kinds[4] == "Attention"
    assert isinstance(m.layers[1].mlp, MoE) and not isinstance(m.layers[0].mlp, MoE)


@pytest.mark.parametrize("cfg, message", [
    ({**LLAMA, "num_key_value_heads": 3}, "multiple of KV heads"),
    ({k: v for k, v in LLAMA.items() if k != "hidden_size"}, "missing 'hidden_size'"),
    ({**LLAMA, "num_hidden_layers": "four"}, "must be an integer"),
    ({**LLAMA, "model_type": "gemma3_text", "layer_types": ["full_attention"]}, "must list 4"),
    ([1, 2], "JSON object"),
])
def test_bad_configs(cfg, message):
    with pytest.raises(KvsimError, match=message):
        from_hf_config(cfg)


def test_strict_rejects_unknown_keys():
    with pytest.raises(KvsimError, match="hiden_size"):
        from_hf_config({**LLAMA, "hiden_size": 4}, strict=True)
    from_hf_config({**LLAMA, "hiden_size": 4})  # real config.json files carry many keys: tolerated


def test_load_json_errors(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"a": 1,')
    with pytest.raises(KvsimError, match="malformed"):
        load_json(bad)
    with pytest.raises(KvsimError, match="not found"):
        load_json(tmp_path / "missing.json")
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    assert load_json(tmp_path) == {"model_type": "llama"}  # a folder means its config.json


# ---- published configs of real checkpoints (tests/hf_configs.py): KV bytes per token and parameter counts
def _kv_per_token(model, seq=100):
    from kvsim import Workload, load_hardware, predict
    h100 = load_hardware("h100-sxm")
    a, b = (int(predict(model, h100, None, Workload(prompt=s, gen=1)).kv_cache_bytes) for s in (seq, seq + 1))
    return b - a


@pytest.mark.parametrize("cfg, kv_bytes, params, rel", [
    # OPT-1.3B, fp16: 24 layers x 2 (K, V) x 2048 x 2 bytes. 1,315,758,080 parameters: transformers'
    # OPTForCausalLM (the count includes OPT's learned position table of 2048 + 2 rows).
    (H.OPT_1_3B, 24 * 2 * 2048 * 2, 1_315_758_080, 0),
    # GPT-J-6B ships fp32: 28 x 2 x 4096 x 4 bytes. Model card (huggingface.co/EleutherAI/gpt-j-6b): n_parameters
    # 6,053,381,344; transformers' GPTJForCausalLM has 6,050,882,784 (2,498,560 fewer = 610 x 4096, which the
    # card does not explain), hence the 0.05% tolerance.
    (H.GPTJ_6B, 28 * 2 * 4096 * 4, 6_053_381_344, 5e-4),
    # Pythia-1.4B, fp16: 24 x 2 x 2048 x 2. 1,414,647,808 total parameters (github.com/EleutherAI/pythia, models table).
    (H.PYTHIA_1_4B, 24 * 2 * 2048 * 2, 1_414_647_808, 0),
    # Phi-2, fp16: 32 x 2 x 2560 x 2. 2,779,683,840 parameters: safetensors index of microsoft/phi-2 (total_size / 2).
    (H.PHI_2, 32 * 2 * 2560 * 2, 2_779_683_840, 0),
    # Phi-3-mini-4k, bf16, MHA: 32 x 2 x 3072 x 2. 3,821,079,552: safetensors index of the repo (total_size / 2).
    (H.PHI_3_MINI_4K, 32 * 2 * 3072 * 2, 3_821_079_552, 0),
    # Falcon-7B, bf16, multi-query (one K/V head of 64): 32 x 2 x 64 x 2. 6,921,720,704: safetensors index of
    # tiiuae/falcon-7b (total_size / 2).
    (H.FALCON_7B, 32 * 2 * 64 * 2, 6_921_720_704, 0),
    # gpt-oss-20b, bf16, below the 128-token window every layer holds every token: 24 x 2 x 8 x 64 x 2.
    # 20.91B total parameters: gpt-oss model card, Table 1 (arXiv:2508.10925), given to 0.01B.
    (H.GPT_OSS_20B, 24 * 2 * 8 * 64 * 2, 20_910_000_000, 5e-4),
], ids=["opt-1.3b", "gpt-j-6b", "pythia-1.4b", "phi-2", "phi-3-mini-4k", "falcon-7b", "gpt-oss-20b"])
def test_published_configs(cfg, kv_bytes, params, rel):
    m = from_hf_config(cfg)
    assert _kv_per_token(m) == kv_bytes
    assert abs(m.n_params() - params) <= rel * params, m.n_params()


def test_falcon_new_decoder_architecture():
    # Falcon-40B: 8 grouped KV heads of 64, two LayerNorms per parallel block, bf16: 60 x 2 x 8 x 64 x 2 bytes.
    m = from_hf_config(H.FALCON_40B)
    assert _kv_per_token(m) == 60 * 2 * 8 * 64 * 2
    assert m.layers[0].norms == 2 and from_hf_config(H.FALCON_7B).layers[0].norms == 1


def test_gpt_oss_windows_cap_half_the_layers():
    # Sliding layers keep 127 tokens (window 128 - 1), full layers keep everything.
    m = from_hf_config(H.GPT_OSS_20B)
    per_layer_token = 2 * 8 * 64 * 2
    from kvsim import Workload, load_hardware, predict
    kv = int(predict(m, load_hardware("h100-sxm"), None, Workload(prompt=10_000, gen=1)).kv_cache_bytes)
    assert kv == (12 * 10_000 + 12 * 127) * per_layer_token
    a = m.layers[0].mixer
    assert a.sinks and a.qkv_bias and a.o_bias and m.layers[0].mlp.bias


def test_opt_350m_projection_is_refused():
    with pytest.raises(KvsimError, match="word_embed_proj_dim"):
        from_hf_config({**H.OPT_1_3B, "hidden_size": 1024, "word_embed_proj_dim": 512})


def test_qwen3_moe_dense_layers():
    cfg = {**LLAMA, "model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
           "decoder_sparse_step": 2, "mlp_only_layers": [3]}
    kinds = [type(l.mlp).__name__ for l in from_hf_config(cfg).layers]
    assert kinds == ["MLP", "MoE", "MLP", "MLP"]


@pytest.mark.parametrize("model_type", ["bert", "starcoder2", "qwen2_moe", ""])
def test_unknown_model_type_is_refused(model_type):
    with pytest.raises(KvsimError, match="kvsim cannot read") as e:
        from_hf_config({**LLAMA, "model_type": model_type})
    assert "\n" not in str(e.value) and "llama" in str(e.value)
