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


KNOWN = Profile(tiled=True, compute_efficiency=0.8, mem_efficiency=0.9, matmul_overhead_s=3e-6,
                matmul_tile_fixed_k=100.0, matmul_half_ctas=20.0, matmul_dtype_efficiency={"fp8": 0.55},
                matmul_operand_efficiency={"fp8": 3.0}, quant_row_overhead_s=4e-9,
                kv_efficiency=0.9, kv_dtype_head_efficiency={"fp8@64": 0.7, "fp8@128": 0.6, "fp8@256": 0.45},
                kv_dtype_overlap={"fp8": 1.1}, attention_seq_overhead_s=2e-8, attention_overhead_s=1e-5,
                window_edge_head_tokens={"64": 150.0, "128": 100.0, "256": 60.0, "fp8@64": 250.0, "fp8@128": 180.0,
                                         "fp8@256": 90.0}, decode_seq_overhead_s=1e-8,
                attn_efficiency=0.6, attn_half_tokens=1000.0,
                attn_dtype_efficiency={"fp8": 0.8}, kv_half_units=50.0, kv_split_tokens=300.0, kv_max_splits=32.0,
                attn_head_exponent=0.4, attention_overlap=1.3, attn_softmax_dims=50.0, prefill_group_exponent=1.0,
                prefill_attention={"kv_efficiency": 0.2, "attention_overhead_s": 1.2e-5,
                                   "attention_seq_overhead_s": 3e-8, "window_edge_tokens": 400.0,
                                   "attn_head_exponent": 0.2})


def _gemm_rows():
    grid = [(m, n, k, dt) for m in (1, 8, 64, 129, 512, 4096) for n in (1024, 4096, 14336) for k in (512, 1024, 4096)
            for dt in ("bfloat16", "fp8")]
    df = pd.DataFrame(grid, columns=["m", "n", "k", "gemm_dtype"])
    df["kernel_source"] = "x"
    df["seconds"] = ops.gemm(KNOWN, H100, df.m, df.n, df.k, df.gemm_dtype)
    return df


def _attention_rows():
    rows = []
    for b in (1, 4, 32, 256):
        for length in (128, 1024, 8192, 32768):
            for kvh, d in ((1, 64), (8, 128), (4, 256)):
                for dt in ("bfloat16", "fp8"):
                    for w in (0, 512):
                        rows.append(dict(batch_size=b, num_heads=32, num_key_value_heads=kvh, head_dim=d,
                                         kv_cache_dtype=dt, window_size=w, step=length - 1, isl=length,
                                         kernel_source="fa"))
    base = pd.DataFrame(rows)
    dec, pre = base.copy(), base.copy()
    dec["seconds"] = ops.decode_attention(KNOWN, H100, *families._attn_args(dec, "step"))
    pre["seconds"] = ops.prefill_attention(KNOWN, H100, *families._attn_args(pre, "isl"))
    return dec, pre


def test_gemm_fit_recovers_known_parameters():
    fam = families.gemm(_gemm_rows())
    prof = fit.fit_family(fam, H100, Profile(tiled=True))
    err = fit.ape(fam.predict(prof, H100, fam.rows), fam.rows["seconds"])
    assert err.max() < 0.02
    assert prof.matmul_dtype_efficiency["fp8"] == pytest.approx(0.55, rel=0.05)
    assert prof.compute_efficiency == pytest.approx(0.8, rel=0.05)
    assert prof.mem_efficiency == pytest.approx(0.9, rel=0.05)


def test_attention_fits_recover_known_parameters():
    dec, pre = _attention_rows()
    prefill, decode = families.prefill_attention(pre), families.decode_attention(dec, fa3=True)
    prof = fit.fit_family(prefill, H100, Profile(tiled=True))
    prof = fit.fit_family(decode, H100, prof)
    for fam in (prefill, decode):
        err = fit.ape(fam.predict(prof, H100, fam.rows), fam.rows["seconds"])
        assert err.max() < 0.03, fam.name
    assert prof.attn_efficiency == pytest.approx(0.6, rel=0.05)
    assert prof.attn_softmax_dims == pytest.approx(50.0, rel=0.1)
    assert prof.prefill_group_exponent == pytest.approx(1.0, rel=0.05)
    # per head dim: each is its own compiled kernel, with its own dequantisation rate and key tiles
    for key, value in KNOWN.kv_dtype_head_efficiency.items():
        assert prof.kv_dtype_head_efficiency[key] == pytest.approx(value, rel=0.05), key
    for key, value in KNOWN.window_edge_head_tokens.items():
        assert prof.window_edge_head_tokens[key] == pytest.approx(value, rel=0.1), key
    assert prof.decode_seq_overhead_s == pytest.approx(1e-8, rel=0.1)
    assert prof.prefill_attention["window_edge_tokens"] == pytest.approx(400.0, rel=0.1)


def test_heldout_reports_each_family_beside_the_datasheet():
    dec, _ = _attention_rows()
    out = fit.heldout(families.decode_attention(dec), H100, Profile(tiled=True))
    assert set(out) == {"decode_attention"}
    for res in out["decode_attention"].values():
        assert res["mape"] < 0.2 and res["datasheet_mape"] > 2 * res["mape"]


def test_a_term_the_rows_cannot_identify_is_dropped():
    """Rows made without an activation-quantisation row cost: the fit leaves that term at zero, not at a bound."""
    truth = dataclasses.replace(KNOWN, quant_row_overhead_s=0.0)
    df = _gemm_rows()
    df["seconds"] = ops.gemm(truth, H100, df.m, df.n, df.k, df.gemm_dtype)
    prof = fit.fit_family(families.gemm(df), H100, Profile(tiled=True))
    assert prof.quant_row_overhead_s < 1e-9  # a nanosecond a row: none on these shapes


def _decode(prof, model="llama-3-8b", **kw):
    wl = Workload(prompt=kw.pop("prompt", 4095), gen=2, batch=kw.pop("batch", 8), **kw)
    return predict(load_model(model), H100, None, wl, prof)


def _prefill(prof, model="llama-3-8b", **kw):
    return predict(load_model(model), H100, None, Workload(prompt=kw.pop("prompt", 4096), gen=2, batch=2, **kw), prof)


def test_kernel_terms_leave_the_datasheet_unchanged_by_default():
    a, b = _decode(None), _decode(Profile(name="plain"))
    assert float(a.tpot_first_s) == float(b.tpot_first_s) and float(a.ttft_s) == float(b.ttft_s)


NEW_TERMS = {"matmul_tile_fixed_k": 200.0, "matmul_half_ctas": 200.0, "quant_row_overhead_s": 1e-7,
             "matmul_operand_efficiency": {"fp8": 0.2}, "attn_dtype_efficiency": {"fp8": 0.3},
             "attn_head_exponent": 2.0, "attention_overlap": 1.0, "kv_occupancy_power": 8.0,
             "kv_dtype_unit_rate": {"fp8": 0.2}, "prefill_attention": {"attention_overhead_s": 1e-3},
             "decode_seq_overhead_s": 1e-6, "attn_softmax_dims": 500.0,
             "prefill_group_exponent": 3.0}  # 16 units x 4 ** 3 fill more than one wave


@pytest.mark.parametrize("term", sorted(NEW_TERMS))
def test_each_kernel_term_defaults_to_the_roofline_and_changes_a_kernel_profile(term):
    """At its default a term changes nothing (the datasheet's numbers); set in a kernel-level profile it
    changes the prediction it is about, so a term that is not wired into the cost model fails here."""
    kw = dict(weight_dtype="fp8", kv_dtype="fp8") if term in ("quant_row_overhead_s", "matmul_operand_efficiency",
                                                                "attn_dtype_efficiency", "kv_dtype_unit_rate") else {}
    if term == "attn_head_exponent":
        kw["model"] = "llama-3.2-1b"  # 64-wide heads
    field_default = Profile().to_dict()[term]
    same = Profile(**{term: field_default})
    for a, b in ((_decode(None, **kw), _decode(same, **kw)), (_prefill(None, **kw), _prefill(same, **kw))):
        assert float(a.tpot_first_s) == float(b.tpot_first_s) and float(a.ttft_s) == float(b.ttft_s)
    base = dataclasses.replace(KNOWN, **{term: field_default})
    moved = dataclasses.replace(KNOWN, **{term: NEW_TERMS[term]})
    before = (float(_decode(base, **kw).tpot_first_s), float(_prefill(base, **kw).ttft_s))
    after = (float(_decode(moved, **kw).tpot_first_s), float(_prefill(moved, **kw).ttft_s))
    assert before != after


def test_a_kernel_profile_prices_tiles_and_waves(monkeypatch):
    """With one tile shape and no split-K: one more row than the SMs' tiles hold runs a second wave (twice the
    time of a compute-bound GEMM), and a one-row GEMM computes a whole tile."""
    from kvsim import kernels
    monkeypatch.setattr(kernels, "_CONFIGS", (np.array([128.0]), np.array([128.0]), np.array([1.0])))
    prof = Profile(tiled=True, compute_efficiency=0.01)  # compute-bound everywhere
    t = lambda m, n, k: float(kernels.matmul(prof, H100, m, n, k, peak=1e15, bw=3e12, wbytes=2, abytes=2,  # noqa: E731
                                             dtype="bf16")[2])
    rows = 128 * H100.sm_count
    assert t(rows + 1, 128, 4096) == pytest.approx(2 * t(rows, 128, 4096), rel=1e-12)
    assert t(1, 128, 4096) == pytest.approx(t(128, 128, 4096), rel=1e-12)
    assert t(1, 128, 4096) == pytest.approx(2 * 128 * 128 * 4096 / (1e15 * 0.01 / H100.sm_count), rel=1e-12)


def test_ops_and_the_cost_model_agree_on_one_layer():
    """The same kernel-level terms give the same time per layer in the table model (ops.py) and in the cost
    model (cost.py): decode and prefill attention, and every weight matmul of a forward pass."""
    from kvsim.cost import CostModel
    from kvsim.policies import Compose
    cost = CostModel(load_model("llama-3-8b"), H100, Compose(()), kv_dtype=None, weight_dtype="bf16", tp=1, pp=1,
                     profile=KNOWN)
    cost.elementwise = False
    b, ctx = 16, 8192
    ph = cost.cache_phase(np.array(ctx - 1), np.array(b), np.array(0), prefill=False)
    op = ops.decode_attention(KNOWN, H100, [b], [ctx - 1], [32], [8], [128], ["bfloat16"], [0])[0]
    # ops reads the new token too (the table's step + 1); the cost model its cache: one token in 8,192
    assert float(ph.time_s) / 32 == pytest.approx(float(op) - KNOWN.attention_overhead_s, rel=1e-3)
    ph = cost.cache_phase(np.array(4096), np.array(2), np.array(0), prefill=True)
    op = ops.prefill_attention(KNOWN, H100, [2], [4096], [32], [8], [128], ["bfloat16"], [0])[0]
    assert float(ph.time_s) / 32 == pytest.approx(float(op) - 1.2e-5, rel=1e-9)
    ph = cost.pass_phase(np.array(64.0), np.array(64.0))
    shapes = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]
    mm = lambda n, k: float(ops.gemm(KNOWN, H100, [64], [n], [k], ["bfloat16"])[0]) - KNOWN.matmul_overhead_s  # noqa: E731
    assert float(ph.time_s) == pytest.approx(32 * sum(mm(n, k) for n, k in shapes) + mm(128256, 4096), rel=1e-9)


def test_one_row_matmuls_stream_their_weight_at_the_gemv_efficiency():
    """A one-row, 16-bit, ungrouped matmul is a GEMV kernel at gemv_mem_efficiency; two rows, a fused MoE
    group or a W8A8 kernel stay at mem_efficiency."""
    from kvsim import kernels
    base = Profile(tiled=True, mem_efficiency=0.8)
    gemv = dataclasses.replace(base, gemv_mem_efficiency=0.9)
    t = lambda p, m, **kw: float(kernels.matmul(p, H100, m, 14336, 4096, peak=1e15, bw=3e12, wbytes=kw.pop(  # noqa: E731
        "wbytes", 2), abytes=2, dtype="bf16", **kw)[2])
    assert t(gemv, 1) == pytest.approx(t(base, 1) * 0.8 / 0.9, rel=1e-2)  # weight-bound: the bandwidth's ratio
    assert t(gemv, 2) == t(base, 2)
    assert t(gemv, 1, groups=8.0) == t(base, 1, groups=8.0)
    assert t(gemv, 1, wbytes=1, quantised=True) == t(base, 1, wbytes=1, quantised=True)


def test_a_dequantising_decode_unit_needs_more_units_to_fill_the_bandwidth():
    """kv_dtype_unit_rate: an fp8 decode step of a few sequences reads its bytes slower than a 16-bit one,
    and at many sequences both reach the same bandwidth."""
    from kvsim import kernels
    prof = Profile(tiled=True, kv_half_units=100.0, kv_occupancy_power=4.0, kv_split_tokens=256.0,
                   kv_max_splits=32.0, kv_dtype_unit_rate={"fp8": 0.25})

    def per_byte(dtype, b):
        kv = b * 8 * 32768 * 2 * 128 * (1 if dtype == "fp8" else 2)
        _, mem, _ = kernels.attention(prof, H100, flops=0.0, kv_bytes=kv, kv_dtype=dtype, seq_tokens=32768,
                                      units=b * 8, head_dim=128, decode=True, tokens=32768, peak=1e15, bw=3e12)
        return float(mem) / kv
    assert per_byte("fp8", 1) > 1.5 * per_byte("bf16", 1)
    assert per_byte("fp8", 512) == pytest.approx(per_byte("bf16", 512), rel=1e-3)


def test_occupancy_power_two_is_the_square_root_knee():
    prof = Profile(kv_half_units=50.0)
    units = np.array([1.0, 50.0, 400.0])
    assert np.allclose(prof.kv_occupancy(units), units / np.sqrt(units ** 2 + 2500.0), rtol=1e-12)
    sharp = dataclasses.replace(prof, kv_occupancy_power=8.0)
    assert float(sharp.kv_occupancy(50.0)) == pytest.approx(2 ** (-1 / 8), rel=1e-12)
    assert float(sharp.kv_occupancy(400.0)) > float(prof.kv_occupancy(400.0))


def test_fused_moe_efficiency_ramps_with_rows_per_expert():
    ramp = Profile(moe_efficiency=0.5, moe_half_rows=64.0)
    assert np.allclose(ramp.moe_fraction([64.0, 6400.0]), [0.25, 0.5 * 6400 / 6464], rtol=1e-12)
    assert float(Profile(moe_efficiency=0.5).moe_fraction(1.0)) == 0.5
    slow = predict(load_model("mixtral-8x7b"), H100, None, Workload(prompt=2048),
                   dataclasses.replace(KNOWN, moe_half_rows=512.0))
    fast = predict(load_model("mixtral-8x7b"), H100, None, Workload(prompt=2048), KNOWN)
    assert float(slow.ttft_s) > float(fast.ttft_s)


def test_fused_moe_tiles_pay_their_own_fixed_cost():
    """moe_tile_fixed_k replaces matmul_tile_fixed_k in the experts' grouped GEMMs only: a compute-bound MoE
    prefill slows, a dense model does not change."""
    moe_tiles = dataclasses.replace(KNOWN, moe_tile_fixed_k=2000.0)
    slow = predict(load_model("mixtral-8x7b"), H100, None, Workload(prompt=8192), moe_tiles)
    fast = predict(load_model("mixtral-8x7b"), H100, None, Workload(prompt=8192), KNOWN)
    assert float(slow.ttft_s) > 1.1 * float(fast.ttft_s)
    assert float(_prefill(moe_tiles).ttft_s) == float(_prefill(KNOWN).ttft_s)


def test_moe_shapes_faster_than_their_weights_are_left_out():
    """A shape that some row runs faster than the datasheet bandwidth streams the experts its tokens touch does
    not describe what was timed (aiconfigurator's 2048x5120, 512 experts, top-22 on H100)."""
    rows = [dict(num_tokens=t, hidden_size=4096, inter_size=i, topk=2, num_experts=8, moe_tp_size=1, moe_ep_size=1,
                 moe_dtype="bfloat16", distribution="balanced", kernel_source="x") for t in (1, 64) for i in (1536, 14336)]
    df = pd.DataFrame(rows)
    df["seconds"] = families.moe(df.assign(seconds=1.0)).predict(KNOWN, H100, df)
    weights = 2 * 3 * 4096 * 14336 * 2
    df.loc[(df.inter_size == 14336) & (df.num_tokens == 1), "seconds"] = 0.5 * weights / H100.memory_bandwidth
    kept = families.moe(df, H100.memory_bandwidth).rows
    assert set(kept["inter_size"]) == {1536} and len(kept) == 2
    assert len(families.moe(df).rows) == 4


def test_a_kernel_profile_needs_the_device_sm_count():
    with pytest.raises(KvsimError, match="SM count"):
        predict(load_model("llama-3-8b"), load_hardware("l4"), None, Workload(), KNOWN)


def test_per_sequence_attention_cost_is_charged_per_sequence_kv_head_and_layer():
    base = _decode(Profile())
    more = _decode(Profile(attention_seq_overhead_s=1e-6))
    # llama-3-8b: 32 layers x 8 KV heads x batch 8
    assert float(more.tpot_first_s - base.tpot_first_s) == pytest.approx(32 * 8 * 8 * 1e-6, rel=1e-9)


def test_per_sequence_decode_cost_is_charged_per_sequence_up_to_its_cap():
    """decode_seq_overhead_s: per sequence and layer whatever the KV heads, in decode only, and not at all in a
    step of more sequences than decode_seq_overhead_max_seqs (FlashAttention-3 stops sorting them past 992)."""
    per_seq = Profile(decode_seq_overhead_s=1e-6)
    base = _decode(Profile(), batch=[8, 1024])
    more = _decode(per_seq, batch=[8, 1024])
    assert np.allclose(more.tpot_first_s - base.tpot_first_s, [32 * 8 * 1e-6, 32 * 1024 * 1e-6], rtol=1e-9)
    assert float(_prefill(per_seq).ttft_s) == float(_prefill(Profile()).ttft_s)
    capped = _decode(dataclasses.replace(per_seq, decode_seq_overhead_max_seqs=992.0), batch=[8, 1024])
    assert np.allclose(capped.tpot_first_s - base.tpot_first_s, [32 * 8 * 1e-6, 0.0], rtol=1e-9, atol=1e-15)


def test_fp8_decode_kernels_take_their_own_window_edge():
    """An fp8 cache's decode kernels have longer key tiles: their window edge is the "fp8@head dim" entry where
    the profile has one, the 16-bit kernels' otherwise."""
    prof = Profile(window_edge_head_tokens={"128": 100.0, "fp8@128": 300.0})
    assert float(prof.window_edge(128)) == 100.0 and float(prof.window_edge(128, "bf16")) == 100.0
    assert float(prof.window_edge(128, "fp8")) == 300.0
    assert float(Profile(window_edge_head_tokens={"128": 100.0}).window_edge(128, "fp8")) == 100.0
    beyond = dict(model="mistral-7b-v0.1", prompt=16000, kv_dtype="fp8")
    assert float(_decode(prof, **beyond).tpot_first_s) > float(
        _decode(Profile(window_edge_head_tokens={"128": 100.0}), **beyond).tpot_first_s)


def test_only_flashattention3_frameworks_fit_the_per_sequence_cost_with_its_cap():
    dec, _ = _attention_rows()
    fa3 = families.decode_attention(dec, framework="vllm", fa3=True)
    assert fa3.fixed["decode_seq_overhead_max_seqs"][0] == 992 and "decode_seq_overhead_s" in fa3.params
    other = families.decode_attention(dec, framework="vllm")
    assert "decode_seq_overhead_max_seqs" not in other.fixed and "decode_seq_overhead_s" not in other.params


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
    prof = fit.fit_family(fam, H100, dataclasses.replace(KNOWN, moe_efficiency=1.0))
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


@pytest.mark.skipif(not HAS_DB, reason="aiconfigurator-core (kvsim[gpu-data]) not installed")
def test_composition_interpolates_query_heads_between_measured_ones():
    from calibrate.kernels import compose
    t = compose.Tables("h100_sxm", "vllm")
    lo, hi = (t.attention_s(True, 8, 4096, h, 4, 128) for h in (24, 32))
    assert t.attention_s(True, 8, 4096, 28, 4, 128) == pytest.approx((lo + hi) / 2, rel=1e-12)
    with pytest.raises(LookupError):
        t.attention_s(True, 8, 4096, 200, 4, 128)  # beyond every measured head count


def test_a_profile_used_on_other_hardware_says_so():
    pred = predict(load_model("llama-3-8b"), load_hardware("a100-80gb"), None, Workload(), load_profile("h100-sxm-vllm"))
    assert any("fitted on h100-sxm" in n for n in pred.notes)
    pred = predict(load_model("llama-3-8b"), H100, None, Workload(), load_profile("h100-sxm-vllm"))
    assert not any("fitted on" in n for n in pred.notes)


def test_per_head_dim_terms_interpolate_in_log_head_dim_and_hold_beyond():
    prof = Profile(tiled=True, kv_dtype_head_efficiency={"fp8@64": 0.8, "fp8@256": 0.4},
                   window_edge_head_tokens={"64": 200, "256": 50})
    assert prof.kv_dequant_fraction("fp8", 128) == pytest.approx(0.6)  # half way in log head dim
    assert prof.kv_dequant_fraction("fp8", [32, 512]).tolist() == [0.8, 0.4]
    assert prof.kv_dequant_fraction("bf16", 128) is None  # no bound for a dtype without entries
    assert float(prof.window_edge(128)) == pytest.approx(125.0)
    assert float(Profile(window_edge_tokens=7.0).window_edge(96)) == 7.0


@pytest.mark.parametrize("bad", [{"kv_dtype_head_efficiency": {"fp8@x": 0.5}},
                                 {"kv_dtype_head_efficiency": {"fp8@128": 0.0}},
                                 {"kv_dtype_head_efficiency": {"fp9@128": 0.5}},
                                 {"window_edge_head_tokens": {"0": 10.0}},
                                 {"window_edge_head_tokens": {"128": -1.0}},
                                 {"window_edge_head_tokens": {"fp9@128": 10.0}},
                                 {"window_edge_head_tokens": {"fp8@": 10.0}},
                                 {"kv_dtype_overlap": {"fp8": 0.5}}])
def test_per_head_dim_and_overlap_tables_refuse_bad_entries(bad):
    with pytest.raises(KvsimError):
        Profile(**bad)


def test_a_heldout_fit_takes_no_value_from_rows_it_did_not_see():
    """The base a held-out split starts from was fitted on every row; a head dim the split's training rows
    lack must not keep the value fitted on its own held-out rows."""
    dec, _ = _attention_rows()
    fam = families.decode_attention(dec)
    base = fit.fit_family(fam, H100, Profile(tiled=True))
    assert "fp8@256" in base.kv_dtype_head_efficiency
    train = np.where(fam.rows["head_dim"] != 256)[0]
    prof = fit.fit_family(fam, H100, base, train)
    assert "fp8@256" not in prof.kv_dtype_head_efficiency and "256" not in prof.window_edge_head_tokens


def test_a_profile_read_back_from_json_keeps_its_table_only_terms():
    """The L2 floor describes the tables' replays; the report and transfer checks read profiles from JSON,
    where it sits under table_only, and must price those rows as the fit did."""
    dec, _ = _attention_rows()
    args = families._attn_args(dec, "step")
    fitted = dataclasses.replace(KNOWN, meta={"l2_overhead_s": 2e-6})
    doc = {"params": {k: v for k, v in KNOWN.to_dict().items() if k != "meta"},
           "table_only": {"l2_overhead_s": 2e-6}}
    read_back = Profile.from_dict(doc)
    l2 = 50 * 2**20
    assert np.array_equal(ops.decode_attention(fitted, H100, *args, l2), ops.decode_attention(read_back, H100, *args, l2))
    assert not np.array_equal(ops.decode_attention(KNOWN, H100, *args, l2), ops.decode_attention(read_back, H100, *args, l2))


def test_flashattention2_splits_as_its_heuristic_does():
    """num_splits_heuristic over 2 x 108 A100 slots: a few grouped-query tiles split until their waves are
    nearly full; tiles filling 80% of the slots, and multi-head steps, never split; the count stays within the
    key blocks (128 keys at head dim 128, 256 at 64) and skips counts that leave the blocks per split unchanged."""
    from kvsim.profile import fa2_num_splits
    got = fa2_num_splits(np.array([8, 64, 64, 256, 1, 1, 4]), np.array([4095, 8191, 2047, 8191, 131071, 300, 4095]),
                         108, 128, 4)
    assert got.tolist() == [16.0, 3.0, 3.0, 1.0, 114.0, 3.0, 32.0]
    assert fa2_num_splits(8, 4095, 108, 128, 1) == 1.0  # multi-head attention: no split
    assert fa2_num_splits(1, 300, 108, 64, 8) == 2.0  # 2 blocks of 256 keys: at most 2 splits
    assert fa2_num_splits(1, 100, 108, 128, 8) == 1.0  # one key block


def test_an_fa2_profile_splits_decode_by_the_kernels_rule():
    """With kv_split_rule "fa2" a kernel-level profile's decode occupancy follows fa2_num_splits (kv_split_tokens
    and kv_max_splits unused); an unknown rule is refused; the vLLM A100 decode family fixes the rule."""
    from kvsim import kernels
    base = Profile(tiled=True, kv_half_units=100.0, kv_occupancy_power=2.0)
    fa2 = dataclasses.replace(base, kv_split_rule="fa2", kv_split_tokens=1e5, kv_max_splits=2.0)
    a100 = load_hardware("a100-80gb")
    occ = kernels.decode_occupancy(fa2, 8.0, 4095.0, kernels.sm_count(a100), head_dim=128, group=4)
    assert occ == pytest.approx(fa2.kv_occupancy(8.0 * 16))
    mha = kernels.decode_occupancy(fa2, 8.0, 4095.0, kernels.sm_count(a100), head_dim=128, group=1)
    assert mha == pytest.approx(fa2.kv_occupancy(8.0))
    with pytest.raises(KvsimError, match="kv_split_rule"):
        Profile(kv_split_rule="fa9")
    rows = pd.DataFrame({"batch_size": [1], "step": [1023], "num_heads": [32], "num_key_value_heads": [8],
                         "head_dim": [128], "kv_cache_dtype": ["bfloat16"], "window_size": [0], "seconds": [1e-5]})
    fam = families.decode_attention(rows, framework="vllm", fa2=True)
    assert fam.fixed["kv_split_rule"][0] == "fa2" and "kv_split_tokens" not in fam.params


def test_fa2_decode_steps_pay_their_auxiliary_kernels():
    """decode_aux_kernel_s per kernel beside attention under the "fa2" rule: a grouped-query step's two layout
    copies (none over one KV head, where they are views), and a combine when it splits; a multi-head step none;
    profiles without the rule never pay it."""
    from kvsim import kernels
    from kvsim.profile import fa2_aux_kernels, fa2_num_splits
    a100 = load_hardware("a100-80gb")
    sms = kernels.sm_count(a100)
    group = [4, 4, 1, 32]
    splits = fa2_num_splits([8, 256, 8, 8], 4095, sms, 128, group)
    assert fa2_aux_kernels(splits, group, [8, 8, 8, 1]).tolist() == \
        [3.0, 2.0, 0.0, 1.0]
    fa2 = Profile(tiled=True, kv_split_rule="fa2", kv_half_units=100.0)

    def step(prof, group):
        return kernels.attention(prof, a100, flops=1e6, kv_bytes=1e6, kv_dtype="bf16", seq_tokens=4095.0,
                                 units=8.0, head_dim=128, decode=True, seqs=1.0, peak=1e14, bw=1e12, group=group)[2]
    paid = dataclasses.replace(fa2, decode_aux_kernel_s=2e-6)
    assert float(step(paid, 4) - step(fa2, 4)) == pytest.approx(3 * 2e-6)
    assert float(step(paid, 1)) == float(step(fa2, 1))
    no_rule = dataclasses.replace(paid, kv_split_rule="")
    assert float(step(no_rule, 4)) == float(step(dataclasses.replace(no_rule, decode_aux_kernel_s=0.0), 4))


def test_tensorrt_llm_picks_xqa_or_mmha_as_its_dispatcher_does():
    """XQA when kv_heads x batch x max(1, history // 128) x 4 reaches the SMs (mayHavePerfGain), grouped-query
    steps only; the switches the H100 tables show: 8 KV heads at one sequence between 511 and 1,023 cached
    tokens, one KV head at short contexts between 32 and 64 sequences; an fp8 grouped-query cache always XQA."""
    from kvsim.profile import trtllm_uses_xqa
    sms = 132
    got = trtllm_uses_xqa([1, 1, 32, 64, 1, 1], [8, 8, 1, 1, 32, 8], [4, 4, 32, 32, 1, 4],
                          [511, 1023, 127, 127, 65535, 1], sms)
    assert got.tolist() == [False, True, False, True, False, False]
    assert trtllm_uses_xqa(1, 8, 4, 1, sms, fp8_cache=True)
    assert not trtllm_uses_xqa(1, 8, 1, 1, sms, fp8_cache=True)  # multi-head: MMHA whatever the cache


def test_xqa_splits_as_compute_multi_block_count_does():
    """One split per 128 history tokens, at most round(sqrt(8 n)), cut to at most 8 waves and 6,000 slots."""
    from kvsim.profile import xqa_num_splits
    got = xqa_num_splits([1, 64, 1, 1, 2048, 8], [8, 1, 8, 1, 8, 1], [65535, 32768, 100, 1024, 8192, 1e6], 132)
    # 511 -> round(sqrt(4088)) = 64; 256 -> 45, 21.8 waves -> floor(45 / 2.73) = 16; under 128 tokens: 1;
    # 8 -> min(8, 8); 64 -> 23, 2,788 waves -> 1; 7,812 -> 250, 15.2 waves -> floor(250 / 1.89) = 132
    assert got.tolist() == [64.0, 16.0, 1.0, 8.0, 1.0, 132.0]
    # the workspace binds only on devices of more than 750 SMs: 250 splits, 16 waves of 1,000 -> 125, then 6000 // 64
    assert xqa_num_splits(64, 1, 1e6, 1000) == 93.0


def test_a_trtllm_profile_prices_each_step_on_the_kernel_it_runs():
    """Under kv_split_rule "trtllm" an MMHA step runs on the profile's mmha terms, one unit per query head
    streaming its KV head itself, with MMHA's own floor; an XQA step on the profile's own, plus one auxiliary
    kernel for a 16-bit cache (none for fp8); mmha may only set its fields; the TensorRT-LLM decode family
    fixes the rule and fits the MMHA terms."""
    from kvsim import kernels
    trt = Profile(tiled=True, kv_split_rule="trtllm", kv_half_units=50.0, attention_seq_overhead_s=3e-8,
                  decode_aux_kernel_s=3e-6, attention_overhead_s=6e-6,
                  mmha={"attention_seq_overhead_s": 1e-8, "attention_overhead_s": 9e-6, "kv_half_units": 80.0})

    def step(prof, seqs, kv_heads, group, past, kv_dtype="bf16"):
        return float(kernels.attention(prof, H100, flops=1e6, kv_bytes=1e6 * kv_heads, kv_dtype=kv_dtype,
                                       seq_tokens=past + 1.0, units=seqs * kv_heads, head_dim=128, decode=True,
                                       tokens=past + 1.0, seqs=seqs, peak=1e15, bw=3e12, group=group)[2])
    mmha = step(trt, 1, 8, 4, 300)  # 8 x 1 x 2 x 4 = 64 < 132: MMHA, as 32 heads each reading their keys
    assert mmha == pytest.approx(step(trt, 1, 32, 1, 300))
    later = dataclasses.replace(trt, mmha={**trt.mmha, "attention_overhead_s": 10e-6})
    assert step(later, 1, 8, 4, 300) == pytest.approx(mmha + 1e-6)
    xqa = step(trt, 64, 8, 4, 300)
    assert xqa == pytest.approx(step(dataclasses.replace(trt, decode_aux_kernel_s=0.0), 64, 8, 4, 300) + 3e-6)
    assert step(trt, 64, 8, 4, 300, "fp8") == step(dataclasses.replace(trt, decode_aux_kernel_s=0.0), 64, 8, 4, 300,
                                                   "fp8")
    assert step(dataclasses.replace(trt, mmha={}), 64, 8, 4, 300) == xqa  # XQA never reads the MMHA terms
    with pytest.raises(KvsimError, match="mmha may only set"):
        Profile(mmha={"kv_split_rule": 1.0})
    with pytest.raises(KvsimError, match="kv_dtype_seq_overhead_s"):
        Profile(kv_dtype_seq_overhead_s={"fp8": -1.0})
    rows = pd.DataFrame({"batch_size": [1], "step": [1023], "num_heads": [32], "num_key_value_heads": [8],
                         "head_dim": [128], "kv_cache_dtype": ["fp8"], "window_size": [0], "seconds": [1e-5]})
    fam = families.decode_attention(rows, framework="trtllm")
    assert fam.fixed["kv_split_rule"][0] == "trtllm" and "kv_max_splits" not in fam.params
    assert {"mmha.kv_split_tokens", "kv_dtype_seq_overhead_s.fp8", "decode_aux_kernel_s"} <= set(fam.params)


def test_mmha_splits_fill_one_wave_within_its_unrolled_loops():
    """ceil(SMs / units), the workspace's cap, and no more splits than loops of keys."""
    from kvsim.profile import mmha_num_splits
    got = mmha_num_splits([32, 32, 1, 200, 32], [65536, 300, 65536, 65536, 1], 132, 256)
    assert got.tolist() == [5.0, 2.0, 132.0, 1.0, 1.0]


def test_a_dropped_override_term_vanishes_instead_of_inheriting():
    """A prefill (or MMHA) term the rows drive to zero is 0 in its table, not the decode value a missing entry
    would fall back to; a plain term is left at its default."""
    from calibrate.kernels.fit import _vanish
    prof = Profile(attn_head_exponent=0.4, attention_seq_overhead_s=2e-8,
                   prefill_attention={"attn_head_exponent": 0.2}, mmha={"attention_seq_overhead_s": 1e-8})
    out = _vanish(prof, ["prefill_attention.attn_head_exponent", "mmha.attention_seq_overhead_s",
                         "attention_seq_overhead_s"])
    assert out.for_prefill().attn_head_exponent == 0.0 and out.for_mmha().attention_seq_overhead_s == 0.0
    assert out.attention_seq_overhead_s == 0.0 and out.attn_head_exponent == 0.4


def test_prefill_units_follow_query_heads_as_the_exponent_says():
    """With prefill_group_exponent 1 a prefill over 32 query heads costs as many units whatever its KV heads (one
    per query head, TensorRT-LLM's context FMHA); at 0 its units are its (sequence, KV head) pairs."""
    from kvsim import kernels
    kw = dict(flops=0.0, kv_bytes=0.0, kv_dtype="bf16", seq_tokens=1.0, head_dim=128, decode=False, peak=1e15,
              bw=3e12)
    for exponent in (0.0, 1.0):
        prof = Profile(tiled=True, attention_seq_overhead_s=1e-8, prefill_group_exponent=exponent)
        t = {kvh: float(kernels.attention(prof, H100, units=256 * kvh, group=32 / kvh, **kw)[2]) for kvh in (1, 8, 32)}
        if exponent:
            assert t[1] == pytest.approx(t[8], rel=1e-12) == pytest.approx(t[32], rel=1e-12)
            assert t[1] == pytest.approx(256 * 32 * 1e-8, rel=1e-12)
        else:
            assert t[8] == pytest.approx(8 * t[1], rel=1e-12)


def test_narrow_heads_compute_at_a_smaller_share_of_the_ramp():
    from kvsim import kernels
    kw = dict(kv_bytes=0.0, kv_dtype="bf16", seq_tokens=4096.0, units=8.0, decode=False, peak=1e15, bw=3e12)
    prof = Profile(tiled=True, attn_efficiency=0.5, attn_softmax_dims=64.0)
    for d in (64, 128, 256):
        comp = float(kernels.attention(prof, H100, flops=1e12, head_dim=d, **kw)[0])
        assert comp == pytest.approx(1e12 / (1e15 * 0.5 * d / (d + 64.0)), rel=1e-12)


def test_terms_one_head_dim_or_one_group_cannot_identify_are_not_fitted():
    """attn_softmax_dims only trades off against attn_efficiency over one head dim, and the prefill group exponent
    needs more than one query-per-KV-head ratio; FlashAttention-2 keeps the exponent fixed (FA2_PREFILL_FIXED)."""
    _, pre = _attention_rows()
    one = pre[(pre.head_dim == 128) & (pre.num_key_value_heads == 8)]
    prof = fit.fit_family(families.prefill_attention(one), H100, Profile(tiled=True, attn_softmax_dims=7.0,
                                                                         prefill_group_exponent=0.3))
    assert prof.attn_softmax_dims == 0.0 and prof.prefill_group_exponent == 0.0
    fam = families.prefill_attention(pre, fa2=True)
    assert fit.fit_family(fam, H100, Profile(tiled=True)).prefill_group_exponent == 0.0
    assert "prefill_group_exponent" in fam.fixed


@pytest.mark.parametrize("field, value", [("attn_softmax_dims", 1e308), ("attention_seq_overhead_s", 1e6),
                                          ("prefill_group_exponent", 5.0), ("memory_bandwidth", 1e300)])
def test_a_profile_with_an_absurd_term_is_refused(field, value):
    """A finite but absurd term would print an absurd time with exit code 0: the profile refuses it."""
    with pytest.raises(KvsimError, match=field):
        Profile(**{field: value})
