import json

import numpy as np
import pytest

from kvsim import KvsimError, Profile, Workload, load_hardware, load_model, parse_composition, predict

H100 = load_hardware("h100-sxm")
LLAMA = load_model("llama-3-8b")


def test_max_batch_is_the_largest_that_fits():
    wl = Workload(prompt=4096, gen=512)
    pred = predict(LLAMA, H100, None, wl)
    mb = int(pred.max_batch)
    assert mb > 1
    at = predict(LLAMA, H100, None, Workload(prompt=4096, gen=512, batch=mb))
    over = predict(LLAMA, H100, None, Workload(prompt=4096, gen=512, batch=mb + 1))
    assert bool(at.fits) and not bool(over.fits)


def test_max_context_is_the_largest_that_fits():
    pred = predict(LLAMA, H100, None, Workload(prompt=1000, gen=16, batch=4))
    mc = int(pred.max_context())
    assert bool(predict(LLAMA, H100, None, Workload(prompt=mc, gen=16, batch=4)).fits)
    assert not bool(predict(LLAMA, H100, None, Workload(prompt=mc + 1, gen=16, batch=4)).fits)


def test_vectorised_equals_pointwise():
    pol = parse_composition(["h2o:budget=512", "kivi"])
    p = np.array([100, 2000, 9000])[:, None]
    b = np.array([1, 16])[None, :]
    grid = predict(LLAMA, H100, pol, Workload(prompt=p, gen=300, batch=b))
    for i, pi in enumerate([100, 2000, 9000]):
        for j, bj in enumerate([1, 16]):
            one = predict(LLAMA, H100, pol, Workload(prompt=pi, gen=300, batch=bj))
            for key in ("kv_cache_bytes", "peak_memory_bytes", "ttft_s", "tpot_s", "max_batch"):
                assert np.asarray(getattr(grid, key))[i, j] == pytest.approx(float(getattr(one, key)))


def test_quadrature_close_to_exact_mean():
    for spec in ([], ["h2o:budget=1024"], ["kmeans:clusters=256,recent=64,every=64"], ["mixed:every=16"]):
        pol = parse_composition(spec)
        for p, gen in ((100, 3000), (900, 700), (3000, 50)):
            approx = predict(LLAMA, H100, pol, Workload(prompt=p, gen=gen, batch=8)).tpot_s
            exact = predict(LLAMA, H100, pol, Workload(prompt=p, gen=gen, batch=8, quadrature=gen)).tpot_s
            assert abs(approx / exact - 1) < 0.01


def test_tensor_parallel_splits_kv_heads_and_replicates_mqa():
    gqa = predict(LLAMA, H100, None, Workload(prompt=4096, tp=8))
    assert int(gqa.kv_cache_bytes_per_device) * 8 == int(gqa.kv_cache_bytes)
    assert float(gqa.tpot_s) < float(predict(LLAMA, H100, None, Workload(prompt=4096)).tpot_s)
    gemma = load_model("gemma-3-270m")  # one KV head: every device holds it
    mqa = predict(gemma, H100, None, Workload(prompt=4096, tp=4))
    assert int(mqa.kv_cache_bytes_per_device) == int(mqa.kv_cache_bytes)


def test_offload_moves_kv_off_the_device_and_onto_the_link():
    wl = Workload(prompt=32768, gen=64, batch=4)
    base = predict(LLAMA, H100, None, wl)
    off = predict(LLAMA, H100, parse_composition(["offload:fraction=1.0"]), wl)
    assert int(off.kv_host_bytes) == int(base.kv_cache_bytes)
    assert float(off.peak_memory_bytes) < float(base.peak_memory_bytes)
    assert off.bound_decode.item() == "host-link" and float(off.tpot_s) > float(base.tpot_s)
    serial = predict(LLAMA, H100, parse_composition(["offload:fraction=1.0,overlap=false"]), wl)
    assert float(serial.tpot_s) > float(off.tpot_s)


def test_profile_efficiency_slows_and_overheads_add():
    wl = Workload(prompt=2048, gen=64)
    ideal = predict(LLAMA, H100, None, wl)
    slow = predict(LLAMA, H100, None, wl, Profile(name="x", mem_efficiency=0.5, kv_efficiency=0.5,
                                                  layer_overhead_s=1e-5))
    assert float(slow.tpot_s) == pytest.approx(2 * float(ideal.tpot_s) + 32e-5, rel=1e-6)


def test_compute_memory_overlap_goes_from_the_roofline_max_to_the_sum():
    """Each operation class: overlap 1 (the default) is max(compute, memory), 0 their sum, between a share."""
    from kvsim.sim import build

    cpu, model = load_hardware("cpu"), load_model("llama-3.2-1b")
    p, b, s = np.int64(256), np.int64(4), np.int64(10)
    phases = {o: build(model, cpu, profile=Profile(name="x", compute_memory_overlap=o)).cost.phase(p, b, s, False)
              for o in (1.0, 0.5, 0.0)}
    for name, (_, _, c, m, t) in phases[1.0].parts.items():
        assert t == pytest.approx(max(c, m))
        assert phases[0.0].parts[name][4] == pytest.approx(c + m)
        assert phases[0.5].parts[name][4] == pytest.approx(max(c, m) + 0.5 * min(c, m))
    wl = Workload(prompt=256, gen=12, batch=4)
    tpot = [float(predict(model, cpu, None, wl, Profile(name="x", compute_memory_overlap=o)).tpot_s)
            for o in (1.0, 0.5, 0.0)]
    assert tpot[0] == float(predict(model, cpu, None, wl).tpot_s)
    assert tpot[0] < tpot[1] < tpot[2]
    for bad in (1.5, -0.1):
        with pytest.raises(KvsimError, match="compute_memory_overlap"):
            Profile(name="x", compute_memory_overlap=bad)


def test_max_batch_respects_the_engines_max_num_seqs():
    from kvsim import load_engine

    vllm = load_engine("vllm")
    wl = Workload(prompt=128, gen=128)
    pool = predict(LLAMA, H100, None, wl, engine=vllm.with_(max_num_seqs=0))
    assert int(pool.max_batch) == int(np.floor(float(pool.max_concurrency))) > 300
    capped = predict(LLAMA, H100, None, wl, engine=vllm.with_(max_num_seqs=300))
    assert int(capped.max_batch) == 300 and any("max_num_seqs, 300" in n for n in capped.notes)
    assert float(capped.max_concurrency) == float(pool.max_concurrency)  # the pool's figure, as vLLM logs it
    at = predict(LLAMA, H100, None, Workload(prompt=128, gen=128, batch=300), engine=vllm.with_(max_num_seqs=300))
    over = predict(LLAMA, H100, None, Workload(prompt=128, gen=128, batch=301), engine=vllm.with_(max_num_seqs=300))
    assert bool(at.fits) and not bool(over.fits) and any("never runs" in n for n in over.notes)


def test_cli_max_num_seqs_caps_max_batch_and_is_refused_for_a_static_batch(capsys):
    from kvsim.cli import main

    assert main(["predict", "--model", "llama-3-8b", "--engine", "vllm", "--max-num-seqs", "12", "--format",
                 "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["max_batch"] == 12 and any("max_num_seqs, 12" in n for n in out["notes"])
    assert main(["predict", "--model", "llama-3-8b", "--max-num-seqs", "12"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "statically" in err[0]


def test_moe_decode_reads_only_touched_experts():
    mix = load_model("mixtral-8x7b")
    one = predict(mix, H100, None, Workload(prompt=128, gen=2, batch=1))
    many = predict(mix, H100, None, Workload(prompt=128, gen=2, batch=256))
    assert float(one.decode_bytes) < 0.4 * float(many.decode_bytes)  # 2 of 8 experts vs nearly all


@pytest.mark.parametrize("wl, message", [
    (Workload(prompt=0), "prompt must be >= 1"),
    (Workload(gen=0), "gen must be >= 1"),
    (Workload(batch=[1, -2]), "batch must be >= 1"),
    (Workload(prompt=1.5), "whole numbers"),
    (Workload(tp=0), "parallel degrees"),
    (Workload(pp=99), "exceeds"),
    (Workload(kv_dtype="int4"), "byte wide"),
    (Workload(kv_dtype="fp12"), "unknown dtype"),
])
def test_bad_workloads(wl, message):
    with pytest.raises((KvsimError, ValueError), match=message):
        predict(LLAMA, H100, None, wl)


def test_notes_say_budget_was_clamped():
    pred = predict(LLAMA, H100, parse_composition(["h2o:budget=4096"]), Workload(prompt=1000))
    assert any("clamped" in n for n in pred.notes)


def test_every_field_has_the_workload_shape():
    mamba = load_model("mamba-2.8b")  # no KV layers: KV fields must still broadcast
    pred = predict(mamba, H100, None, Workload(prompt=np.array([10, 20, 30]), gen=4))
    for key in pred.KEYS:
        assert np.shape(getattr(pred, key)) == (3,), key


def test_kernel_overhead_counts_the_kernels_a_layer_launches():
    wl = Workload(prompt=256, gen=8)
    base = predict(LLAMA, H100, None, wl)
    slow = predict(LLAMA, H100, None, wl, Profile(name="k", kernel_overhead_s=1e-5))
    assert float(slow.tpot_s) - float(base.tpot_s) == pytest.approx(1e-5 * LLAMA.kernels())
    gpt2, smol = load_model("gpt2"), load_model("smollm2-135m")
    # LayerNorm, fused QKV and learned positions launch far fewer kernels than RMSNorm, RoPE and a gated MLP
    assert gpt2.kernels() / gpt2.n_layers < smol.kernels() / smol.n_layers


def test_materialised_reads_time_a_decoded_copy_only_for_policies_that_make_one():
    from kvsim.cost import CostModel

    def step_s(spec: str, share: float) -> float:
        prof = Profile(name="m", materialised_reads=share, kv_efficiency=0.5)
        cm = CostModel(LLAMA, H100, parse_composition(spec), kv_dtype="bf16", weight_dtype=None, tp=1, pp=1,
                       profile=prof)
        return float(cm.phase(4096, 2, 100, prefill=False).time_s)

    assert step_s("full", 1.0) == step_s("full", 0.0)
    lay = 128 * 2 * 2  # bf16 K and V of one head-token
    read = LLAMA.n_layers * 2 * 8 * 4196 * lay  # layers x batch x KV heads x tokens read
    copy_s = 2 * read / (H100.memory_bandwidth * 0.5)  # write the decoded copy, read it back
    assert step_s("quant:bits=4", 1.0) - step_s("quant:bits=4", 0.0) == pytest.approx(copy_s, rel=1e-6)
    assert step_s("quest:page=16,budget=512", 0.5) > step_s("quest:page=16,budget=512", 0.0)
