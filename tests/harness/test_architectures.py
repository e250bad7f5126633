"""MLA in both cache forms, recurrent state (Mamba, Mamba-2, Jamba, Gated DeltaNet), attention sinks: the harness
runs each for real and its bytes are kvsim's."""

import pytest
import torch

from kvsim import Workload, load_hardware, parse_composition, predict
from kvsim.hf import from_hf_config
from measured.loop import Session, run_request
from measured.validate import ARCHS, tiny_model

from .conftest import tiny
from .test_correctness import decode_logits, teacher_forced

HW = load_hardware("h100-sxm")
RECURRENT = ["mamba", "mamba2", "jamba-hybrid", "qwen3-next-deltanet"]
HYBRID = ["jamba-hybrid", "qwen3-next-deltanet"]


def _predicted(model, spec, prompt, gen, batch):
    return predict(from_hf_config(model.config.to_dict()), HW, parse_composition(spec),
                   Workload(prompt=prompt, gen=gen, batch=batch, kv_dtype="fp32", weight_dtype="fp32"))


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_kvsim_counts_every_parameter(arch):
    """kvsim's layer specs hold exactly the model's weights (every stored tensor, tied ones once)."""
    model = tiny(arch)
    stored = {t.untyped_storage().data_ptr(): t.numel() for t in model.state_dict().values()}
    assert from_hf_config(model.config.to_dict()).n_params() == sum(stored.values())


@pytest.mark.parametrize("v", ["v2", "v3"])
def test_mla_both_cache_forms(v):
    """The latent form (absorbed decode) and the decompressed form give the model's logits, and hold the bytes
    kvsim predicts: (latent + rope) elements per token and layer against heads x (nope + rope + v)."""
    latent, dec = tiny(f"deepseek-{v}-mla"), tiny(f"deepseek-{v}-decompressed")
    cfg = ARCHS[f"deepseek-{v}-mla"]
    assert latent.state_dict()["lm_head.weight"].shape == dec.state_dict()["lm_head.weight"].shape
    dec.load_state_dict(latent.state_dict())  # the same weights: only the cache differs
    ids = torch.randint(0, 128, (2, 30))
    ref = teacher_forced(latent, ids, 20)
    layers, p, b = cfg["num_hidden_layers"], 30, 2
    per_token = {"latent": cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"],
                 "decompressed": cfg["num_attention_heads"] * (cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]
                                                               + cfg["v_head_dim"])}
    for form, model in (("latent", latent), ("decompressed", dec)):
        got, cache = decode_logits(model, ids, 20)
        assert (got - ref).abs().max() < 1e-4, form
        held = cache.physical_bytes()["sequence"]
        assert held == layers * b * (p - 1) * per_token[form] * 4  # the last token is fed, not yet stored
        assert held == int(_predicted(model, [], p - 1, 1, b).kv_cache_bytes)
    assert per_token["latent"] < per_token["decompressed"]


def test_latent_form_decodes_from_the_latent_only():
    """The latent layer stores one [latent | rope key] vector per token, never per-head K or V."""
    model = tiny("deepseek-v3-mla")
    cfg = ARCHS["deepseek-v3-mla"]
    s = Session(model, parse_composition([]))
    ids = torch.randint(0, 128, (1, 12))
    with torch.no_grad():
        s.prefill(ids)
        s.step(ids[:, -1])
    for layer in s.cache.layers:
        k, v = layer.groups[0].store.kv()
        assert k.shape == (1, 1, 13, cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]) and v.shape[-1] == 0


@pytest.mark.parametrize("arch", RECURRENT)
def test_recurrent_state_is_constant_in_length_and_predicted(arch):
    model = tiny(arch)
    sizes = []
    for p in (6, 45):
        r = run_request(model, parse_composition([]), torch.randint(0, 128, (2, p)), 5)
        pred = _predicted(model, [], p, 5, 2)
        assert r.bytes_prefill["state"] == r.bytes_end["state"] == int(pred.state_bytes) > 0
        sizes.append(r.bytes_end["state"])
    assert sizes[0] == sizes[1]


@pytest.mark.parametrize("arch", HYBRID)
def test_eviction_acts_on_attention_layers_only(arch):
    model = tiny(arch)
    ids = torch.randint(0, 128, (2, 60))
    full = run_request(model, parse_composition([]), ids, 6)
    h2o = run_request(model, parse_composition(["h2o:budget=16,recent=4"]), ids, 6)
    assert h2o.bytes_end["state"] == full.bytes_end["state"]
    assert h2o.bytes_end["sequence"] < full.bytes_end["sequence"] // 2
    assert h2o.bytes_end["sequence"] == int(_predicted(model, ["h2o:budget=16,recent=4"], 60, 6, 2).kv_cache_bytes
                                            + _predicted(model, ["h2o:budget=16,recent=4"], 60, 6, 2)
                                            .policy_state_bytes)


@pytest.mark.parametrize("arch", RECURRENT)
def test_quantization_says_whether_it_takes_the_state(arch):
    """int8 quantizes attention KV and leaves recurrent state at full precision; int8:state=true quantizes the
    state as well (payload and scales really stored: bytes as predicted, outputs near the full-precision ones)."""
    model = tiny(arch)
    ids = torch.randint(0, 128, (2, 30))
    full = run_request(model, parse_composition([]), ids, 5)
    kv_only = run_request(model, parse_composition(["int8"]), ids, 5)
    both = run_request(model, parse_composition(["int8:state=true"]), ids, 5)
    assert kv_only.bytes_end["state"] == full.bytes_end["state"]
    assert both.bytes_end["state"] == int(_predicted(model, ["int8:state=true"], 30, 5, 2).state_bytes)
    assert both.bytes_end["state"] < full.bytes_end["state"] / 2
    a, _ = decode_logits(model, ids, 20)
    b, _ = decode_logits(model, ids, 20, ["int8:state=true"])
    assert 0 < (a - b).abs().max() < 0.05 * a.abs().max()


def test_sinks_take_their_share_of_the_softmax():
    """gpt-oss with sink logits large enough to matter: the harness still reproduces the model, and leaving
    the sinks out would not."""
    model = tiny_model("gpt-oss-sinks", seed=1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.normal_(0.0, 2.0)
    ids = torch.randint(0, 128, (2, 30))
    ref = teacher_forced(model, ids, 20)
    got, _ = decode_logits(model, ids, 20)
    assert (got - ref).abs().max() < 1e-4
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.fill_(-1e4)  # a sink that takes nothing: plain softmax
    assert (teacher_forced(model, ids, 20) - ref).abs().max() > 1e-2


def test_list_policies_says_where_each_policy_runs():
    """Every policy names the architectures the harness runs it on and what part of a layer it touches, which the
    tests above check in the harness: selections leave recurrent state alone, quantization takes it on request."""
    from kvsim.policies import REGISTRY, policy_class
    from measured.support import ARCHITECTURES, describe_support, check
    from tests.inprocess import run as kvsim
    out = kvsim("list", "policies").stdout
    for name in REGISTRY:
        text = describe_support(name)
        assert text in out and all(arch in text for arch in ARCHITECTURES)
        takes_state = "with state=true also the recurrent state" in text
        assert takes_state == (name in ("quant", "int8", "int4", "fp8")), name
        assert takes_state or "state are left alone" in text
        assert ("cuda only" in text) == (check([name], "llama", "cpu") is not None), name
        if policy_class(name).role == "select":
            assert "layers whose cache grows" in text


def test_latency_configs_are_what_kvsim_reads():
    """The configs the CPU latency block measures: kvsim counts transformers' own parameters (built on the meta
    device, nothing allocated) and reads the MLA cache form from the file."""
    import json
    from pathlib import Path
    from transformers import AutoConfig, AutoModelForCausalLM

    paths = sorted(Path("measured/configs").glob("*.json"))
    assert len(paths) == 9
    for path in paths:
        cfg = json.loads(path.read_text())
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(
                **{k: v for k, v in cfg.items() if k != "torch_dtype"}))
        stored = {t.untyped_storage().data_ptr() if t.device.type != "meta" else name: t.numel()
                  for name, t in model.state_dict().items()}
        tied = "lm_head.weight" in stored and model.config.tie_word_embeddings
        spec = from_hf_config(cfg)
        assert spec.n_params() == sum(stored.values()) - (stored["lm_head.weight"] if tied else 0), path.name
        forms = {l.mixer.cache for l in spec.layers if hasattr(l.mixer, "cache")}
        assert forms <= {"decompressed" if "decompressed" in path.name else "latent"}
