"""Kernel-database calibration: the reader, the op models' agreement with the cost model, parameter recovery
from synthetic tables, and the shipped profiles."""

import dataclasses
import importlib.util

import numpy as np
import pandas as pd
import pytest

from calibrate.kernels import aiconfigurator as aic
from calibrate.kernels import families, fit, ops
from kvsim import Profile, Workload, load_hardware, load_model, predict
from kvsim.errors import KvsimError
from kvsim.profile import describe, load_profile, shipped_profiles

H100 = load_hardware("h100-sxm")
HAS_DB = importlib.util.find_spec("aiconfigurator_core") is not None


def test_missing_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "aiconfigurator_core" else real(name, *a))
    with pytest.raises(KvsimError, match=r"kvsim\[gpu-data\]"):
        aic.data_root()


def test_cli_without_package_exits_2_with_one_line(monkeypatch, capsys):
    from kvsim.cli import main
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "aiconfigurator_core" else real(name, *a))
    assert main(["calibrate", "--kernels", "aiconfigurator", "--system", "h100_sxm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gpu-data" in err[0]


KNOWN = Profile(compute_efficiency=0.8, compute_small_efficiency=0.01, compute_half_tokens=200.0,
                mem_efficiency=0.9, matmul_overhead_s=3e-6, matmul_dtype_efficiency={"fp8": 0.55},
                kv_efficiency=0.85, kv_dtype_efficiency={"fp8": 0.6}, attention_seq_overhead_s=2e-8,
                attention_overhead_s=1e-5, window_edge_tokens=100.0, attn_efficiency=0.6,
                attn_small_efficiency=0.01, attn_half_tokens=1000.0, kv_half_units=3.0)


def _gemm_rows():
    grid = [(m, n, k, dt) for m in (1, 8, 64, 512, 4096) for n in (1024, 4096, 14336) for k in (1024, 4096)
            for dt in ("bfloat16", "fp8")]
    df = pd.DataFrame(grid, columns=["m", "n", "k", "gemm_dtype"])
    df["kernel_source"] = "x"
    df["seconds"] = ops.gemm(KNOWN, H100, df.m, df.n, df.k, df.gemm_dtype)
    return df


def _attention_rows():
    rows = []
    for b in (1, 8, 64):
        for length in (128, 1024, 8192):
            for kvh in (1, 8):
                for dt in ("bfloat16", "fp8"):
                    for w in (0, 512):
                        rows.append(dict(batch_size=b, num_heads=32, num_key_value_heads=kvh, head_dim=128,
                                         kv_cache_dtype=dt, window_size=w, step=length - 1, isl=length,
                                         kernel_source="fa"))
    base = pd.DataFrame(rows)
    dec, pre = base.copy(), base.copy()
    dec["seconds"] = ops.decode_attention(KNOWN, H100, *families._attn_args(dec, "step"))
    pre["seconds"] = ops.prefill_attention(KNOWN, H100, *families._attn_args(pre, "isl"))
    return dec, pre


def test_gemm_fit_recovers_known_parameters():
    fam = families.gemm(_gemm_rows())
    prof = fit.fit_family(fam, H100, Profile())
    err = fit.ape(fam.predict(prof, H100, fam.rows), fam.rows["seconds"])
    assert err.max() < 0.01
    assert prof.matmul_dtype_efficiency["fp8"] == pytest.approx(0.55, rel=0.05)
    assert prof.mem_efficiency == pytest.approx(0.9, rel=0.05)


def test_attention_fit_recovers_known_parameters():
    fam = families.attention(*_attention_rows())
    prof = fit.fit_family(fam, H100, Profile())
    err = fit.ape(fam.predict(prof, H100, fam.rows), fam.rows["seconds"])
    assert err.max() < 0.02
    assert prof.kv_dtype_efficiency["fp8"] == pytest.approx(0.6, rel=0.05)
    assert prof.window_edge_tokens == pytest.approx(100.0, rel=0.1)


def test_heldout_reports_each_family_beside_the_datasheet():
    fam = families.attention(*_attention_rows())
    out = fit.heldout(fam, H100, Profile())
    assert set(out) == {"decode_attention", "prefill_attention"}
    for splits in out.values():
        for res in splits.values():
            assert res["mape"] < 0.2 and res["datasheet_mape"] > 2 * res["mape"]


def _decode(prof, model="llama-3-8b", **kw):
    wl = Workload(prompt=kw.pop("prompt", 4095), gen=2, batch=kw.pop("batch", 8), **kw)
    return predict(load_model(model), H100, None, wl, prof)


def test_kernel_terms_leave_the_datasheet_unchanged_by_default():
    a, b = _decode(None), _decode(Profile(name="plain"))
    assert float(a.tpot_first_s) == float(b.tpot_first_s) and float(a.ttft_s) == float(b.ttft_s)


def test_per_sequence_attention_cost_is_charged_per_sequence_kv_head_and_layer():
    base = _decode(Profile())
    more = _decode(Profile(attention_seq_overhead_s=1e-6))
    # llama-3-8b: 32 layers x 8 KV heads x batch 8
    assert float(more.tpot_first_s - base.tpot_first_s) == pytest.approx(32 * 8 * 8 * 1e-6, rel=1e-9)


def test_matmul_and_attention_floors_are_per_kernel():
    base = _decode(Profile())
    more = _decode(Profile(matmul_overhead_s=1e-6, attention_overhead_s=2e-6))
    # 4 weight matmuls per layer + the logits; one attention kernel per layer
    assert float(more.tpot_first_s - base.tpot_first_s) == pytest.approx((32 * 4 + 1) * 1e-6 + 32 * 2e-6, rel=1e-9)


def test_fp8_kv_efficiency_applies_to_fp8_caches_only():
    slow = Profile(kv_dtype_efficiency={"fp8": 0.5})
    assert float(_decode(slow, kv_dtype="fp8").tpot_first_s) > float(_decode(Profile(), kv_dtype="fp8").tpot_first_s)
    assert float(_decode(slow).tpot_first_s) == float(_decode(Profile()).tpot_first_s)


def test_window_edge_only_costs_where_the_window_binds():
    edge = Profile(window_edge_tokens=512.0)
    inside = dict(model="mistral-7b-v0.1", prompt=1000)
    assert float(_decode(edge, **inside).tpot_first_s) == float(_decode(Profile(), **inside).tpot_first_s)
    beyond = dict(model="mistral-7b-v0.1", prompt=16000)
    assert float(_decode(edge, **beyond).tpot_first_s) > float(_decode(Profile(), **beyond).tpot_first_s)


def test_decode_op_model_matches_the_cost_model_attention():
    """One layer's decode attention from ops equals what the cost model adds for it (bytes-bound case)."""
    prof = Profile(kv_efficiency=0.8)
    b, ctx = 16, 8192
    t_op = ops.decode_attention(prof, H100, b, ctx - 1, 32, 8, 128, "bfloat16", 0)
    full = _decode(prof, prompt=ctx - 1, batch=b)
    none = _decode(prof, prompt=1, batch=b)
    # the cost model's decode attention grows by the same KV reads per layer
    per_layer = float(full.tpot_first_s - none.tpot_first_s) / 32
    t_small = ops.decode_attention(prof, H100, b, 1, 32, 8, 128, "bfloat16", 0)
    assert per_layer == pytest.approx(float(t_op - t_small), rel=0.02)


@pytest.mark.skipif(not HAS_DB, reason="aiconfigurator-core (kvsim[gpu-data]) not installed")
def test_reader_gives_seconds_and_provenance():
    t = aic.load("h100_sxm", "gemm", "vllm")
    assert t.version and "H100" in t.device and len(t.rows) > 1000
    assert np.allclose(t.rows["seconds"], t.rows["latency"] * 1e-3)
    with pytest.raises(KvsimError, match="no system"):
        aic.load("no_such_gpu", "gemm", "vllm")
    with pytest.raises(KvsimError, match="no version"):
        aic.load("h100_sxm", "gemm", "vllm", "0.0.1")


def test_shipped_kernel_profiles_load_and_name_their_error(capsys):
    from kvsim.cli import main
    names = shipped_profiles()
    kernel = [n for n in names if load_profile(names[n]).meta.get("kind") == "kernel-database"]
    assert {"h100-sxm-vllm", "h200-vllm"} <= set(kernel)
    for n in kernel:
        prof = load_profile(n)
        assert "held-out" in describe(prof) and "lower bound" in describe(prof)
        assert prof.meta["source"]["package"] == "aiconfigurator-core"
    assert main(["list", "profiles"]) == 0
    assert "h100-sxm-vllm" in capsys.readouterr().out
    assert main(["predict", "--model", "llama-3-8b", "--profile", "h100-sxm-vllm", "--gen", "4"]) == 0
    assert "h100-sxm-vllm" in capsys.readouterr().out
    assert main(["predict", "--model", "llama-3-8b", "--profile", "no-such-profile"]) == 2


def test_moe_fit_recovers_its_efficiency():
    rows = [dict(num_tokens=t, hidden_size=4096, inter_size=i, topk=k, num_experts=e, moe_tp_size=1, moe_ep_size=1,
                 moe_dtype="bfloat16", distribution="balanced", kernel_source="x")
            for t in (1, 16, 256, 4096) for i in (1536, 14336) for k, e in ((2, 8), (8, 128))]
    df = pd.DataFrame(rows)
    truth = dataclasses.replace(KNOWN, moe_efficiency=0.4)
    df["seconds"] = families.moe(df.assign(seconds=1.0)).predict(truth, H100, df)
    fam = families.moe(df)
    prof = fit.fit_family(fam, H100, KNOWN)
    assert prof.moe_efficiency == pytest.approx(0.4, rel=0.02)


def test_moe_layers_charge_routed_experts_at_their_own_efficiency():
    slow = _decode(Profile(moe_efficiency=0.25), model="mixtral-8x7b", prompt=4095, batch=1)
    fast = _decode(Profile(), model="mixtral-8x7b", prompt=4095, batch=1)
    assert float(slow.tpot_first_s) == float(fast.tpot_first_s)  # one token: the expert weights bound it
    slow = predict(load_model("mixtral-8x7b"), H100, None, Workload(prompt=8192), Profile(moe_efficiency=0.25))
    fast = predict(load_model("mixtral-8x7b"), H100, None, Workload(prompt=8192), Profile())
    assert float(slow.ttft_s) > 1.5 * float(fast.ttft_s)  # a long prefill is compute-bound in the experts


@pytest.mark.skipif(not HAS_DB, reason="aiconfigurator-core (kvsim[gpu-data]) not installed")
def test_composed_steps_agree_with_the_cost_model(monkeypatch):
    from calibrate.kernels import compose
    monkeypatch.setattr(compose, "CASES", [("llama-3-8b", 1)])
    monkeypatch.setattr(compose, "BATCHES", (1, 8))
    rows = [r for r in compose.check("h100-sxm-vllm", "h100_sxm", "vllm") if "ratio" in r]
    assert len(rows) >= 8
    assert np.mean([abs(r["ratio"] - 1) for r in rows]) < 0.10


def test_a_profile_used_on_other_hardware_says_so():
    pred = predict(load_model("llama-3-8b"), load_hardware("a100-80gb"), None, Workload(), load_profile("h100-sxm-vllm"))
    assert any("fitted on h100-sxm" in n for n in pred.notes)
    pred = predict(load_model("llama-3-8b"), H100, None, Workload(), load_profile("h100-sxm-vllm"))
    assert not any("fitted on" in n for n in pred.notes)
