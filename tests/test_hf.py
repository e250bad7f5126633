import pytest

from kvsim import KvsimError, from_hf_config, load_json
from kvsim.model import MLA, Attention, Mamba, MoE

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
