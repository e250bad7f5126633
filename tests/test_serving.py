"""The serving model: engine presets, the KV pool, paged requests, chunked prefill, prefix sharing."""

import json
import subprocess
import sys

import numpy as np
import pytest

from kvsim import (Engine, HardwareSpec, KvsimError, Workload, engine_names, load_engine, load_hardware, load_model,
                   parse_composition, predict, uniform)
from kvsim.cost import CostModel
from kvsim.profile import DATASHEET, Profile
from kvsim.serving import HF, Serving, chunk_nodes
from kvsim.units import GiB

H100 = load_hardware("h100-sxm")
LLAMA = load_model("llama-3-8b")
VLLM = load_engine("vllm")


def cost_model(model, policy=(), hw=H100, profile=DATASHEET, kv_dtype="bf16"):
    return CostModel(model, hw, parse_composition(list(policy)), kv_dtype=kv_dtype, weight_dtype=None, tp=1, pp=1,
                     profile=profile)


# ---------------------------------------------------------------------------------------------- presets
def test_engine_presets_carry_a_source_for_every_knob():
    assert {"hf", "vllm-0.33.0", "sglang-0.5.23", "trtllm-1.2"} <= set(engine_names())
    for name in engine_names():
        e = load_engine(name)
        assert e.source
        if e.name != "hf":
            optional = ({"max_num_seqs"} if e.max_num_seqs else set()) | (
                {"admit_full_input"} if e.admit_full_input else set()) | (
                {"reserved_blocks"} if e.reserved_blocks else set())
            assert set(e.sources) == {"memory_fraction", "fraction_of", "block_size", "max_num_batched_tokens"} | optional
    assert load_engine("hf") == HF
    assert load_engine("vllm") == load_engine("vllm-0.33.0")
    # vllm/config/cache.py (0.33.0): gpu_memory_utilization 0.92, DEFAULT_BLOCK_SIZE 16;
    # vllm/engine/arg_utils.py: `vllm serve` on >= 70 GiB (not A100): max_num_batched_tokens 8192
    assert (VLLM.memory_fraction, VLLM.block_size, VLLM.max_num_batched_tokens) == (0.92, 16, 8192)
    sg, trt = load_engine("sglang"), load_engine("trtllm")
    assert (sg.block_size, sg.max_num_batched_tokens, sg.fraction_of) == (1, 8192, "static")
    assert (trt.memory_fraction, trt.block_size, trt.max_num_batched_tokens, trt.fraction_of) == (0.9, 32, 8192, "free")


def test_unknown_engine_and_bad_knobs_are_refused():
    with pytest.raises(KvsimError, match="unknown engine preset"):
        load_engine("tgi")
    for knobs, message in (({"memory_fraction": 0.0}, r"\(0, 1\]"), ({"memory_fraction": 1.5}, r"\(0, 1\]"),
                           ({"block_size": 0}, "--block-size"), ({"max_num_batched_tokens": -1}, "batched")):
        with pytest.raises(KvsimError, match=message):
            VLLM.with_(**knobs)


def test_default_engine_is_hf_and_changes_nothing():
    wl = Workload(prompt=np.array([100, 5000]), gen=64, batch=3)
    a, b = predict(LLAMA, H100, None, wl), predict(LLAMA, H100, None, wl, engine="hf")
    for key in a.KEYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.engine == "hf"


# ------------------------------------------------------------------------------------------------- pool
def test_vllm_cpu_pool_golden():
    # vLLM 0.33.0 on CPU (VLLM_CPU_KVCACHE_SPACE=2 -> kv_cache_memory_bytes = 2 GiB; the CPU platform's preferred
    # block size is 128, vllm/platforms/cpu.py update_block_size_for_backend) logs for a Llama-shaped model with
    # hidden 1024, 12 layers, 16 q / 4 KV heads, head_dim 64, bf16:
    #   "KV cache size: 174,720 tokens", "Maximum concurrency for 2,048 tokens per request: 85.31x".
    # 12 layers x 4 heads x 64 x 2 (K, V) x 2 B = 12,288 B/token; 2 GiB // (128 x 12,288 B) = 1,365 blocks.
    m = uniform("cpu-llama", n_layers=12, hidden=1024, vocab=32000, n_heads=16, n_kv_heads=4, head_dim=64,
                intermediate=4096, weight_dtype="bf16")
    eng = Engine(name="vllm-cpu", memory_fraction=1.0, block_size=128, max_num_batched_tokens=4096)
    cm = cost_model(m)
    weights = cm.weight_bytes()
    act = int(cm.activation_peak(np.int64(4096), 1, True))
    hw = HardwareSpec("cpu-2g", "2 GiB pool", 2 * GiB + weights + act, 1e11, {"bf16": 1e12})
    pred = predict(m, hw, None, Workload(prompt=2048, gen=1), engine=eng)
    assert int(pred.kv_pool_tokens) == 174_720 and int(pred.kv_pool_blocks) == 1365
    assert f"{float(pred.max_concurrency):.2f}" == "85.31"
    assert int(pred.kv_pool_bytes) == 1365 * 128 * 12_288
    # with vLLM's GPU default of 16-token blocks the same 2 GiB holds 10,922 blocks = 174,752 tokens (85.33x)
    pred16 = predict(m, hw, None, Workload(prompt=2048, gen=1), engine=eng.with_(block_size=16))
    assert int(pred16.kv_pool_tokens) == 174_752 and f"{float(pred16.max_concurrency):.2f}" == "85.33"


def test_pool_formulas_per_fraction_kind():
    cm = cost_model(LLAMA, profile=Profile(name="r", runtime_bytes=1e9, cudagraph_bytes=5e8))
    cap = H100.memory_bytes
    weights = cm.weight_bytes()
    act = int(cm.activation_peak(np.int64(8192), 1, True))
    total = Serving(cm, VLLM, cap).pool(1024)
    assert int(total["usable"]) == int(cap * 0.92) - weights - act - 1_000_000_000 - 500_000_000
    static = Serving(cm, VLLM.with_(fraction_of="static", memory_fraction=0.8), cap).pool(1024)
    assert int(static["usable"]) == int(cap * 0.8) - weights - 1_000_000_000
    free = Serving(cm, VLLM.with_(fraction_of="free", memory_fraction=0.9), cap).pool(1024)
    assert int(free["usable"]) == int(np.floor((cap - weights - act - 1_500_000_000) * 0.9))
    for pool in (total, static, free):  # whole blocks of 16 tokens x 32 layers x 8 heads x 256 B
        assert int(pool["bytes"]) == int(pool["blocks"]) * 16 * 131_072 <= int(pool["usable"])


def test_max_concurrency_is_vllms_blocks_over_blocks_per_request():
    pred = predict(LLAMA, H100, None, Workload(prompt=1000, gen=25), engine=VLLM)
    blocks_per_request = -(-1024 // 16)  # 1,000 + 24 resident tokens
    assert float(pred.max_concurrency) == pytest.approx(int(pred.kv_pool_blocks) / blocks_per_request)
    assert int(pred.max_batch) == int(pred.kv_pool_blocks) // blocks_per_request
    at = predict(LLAMA, H100, None, Workload(prompt=1000, gen=25, batch=int(pred.max_batch)), engine=VLLM)
    over = predict(LLAMA, H100, None, Workload(prompt=1000, gen=25, batch=int(pred.max_batch) + 1), engine=VLLM)
    assert bool(at.fits) and not bool(over.fits)


def test_sliding_window_layers_hold_their_window_of_blocks():
    gemma = load_model("gemma-2-9b")  # alternating 4,096-token windows and global layers
    cm = cost_model(gemma)
    srv = Serving(cm, VLLM, H100.memory_bytes)
    req = srv.request(32768, 1)
    expect = 0
    for grp, page in srv.paged:
        keep = grp.ctx.layout.keep_cap
        blocks = -(-min(32768, keep) // 16) + 1 if keep else -(-32768 // 16)
        expect += grp.count * page * blocks
    assert int(req["steady"]) == expect
    # the window's layers need far fewer blocks than global ones
    full = sum(g.count * page * 2048 for g, page in srv.paged)
    assert int(req["steady"]) < 0.6 * full


def test_snapkv_kivi_frees_blocks_by_its_byte_ratio():
    wl = Workload(prompt=16384, gen=256)
    spec = ["snapkv:budget=1024", "kivi:bits=2"]
    base = predict(LLAMA, H100, None, wl, engine=VLLM)
    comp = predict(LLAMA, H100, parse_composition(spec), wl, engine=VLLM)
    srv = Serving(cost_model(LLAMA, spec), VLLM, H100.memory_bytes)
    req = srv.request(16384, 256)
    # every layer rounds the policy's bytes up to whole 16-token pages of bf16
    grp, page = srv.paged[0]
    held = grp.ctx and srv.cost.policy.peak_bytes(grp.ctx, 16384, 255)
    assert int(req["steady"]) == 32 * page * -(-int(held) // page)
    # one request prefilling holds its whole 2-bit prompt until SnapKV compresses it: counted once
    assert float(comp.max_concurrency) == pytest.approx(
        (int(comp.kv_pool_bytes) - int(req["surplus"])) / int(req["steady"]))
    ratio = int(base.kv_request_bytes) / int(comp.kv_request_bytes)
    assert ratio > 10 and float(comp.max_concurrency) > 0.9 * ratio * float(base.max_concurrency)


def test_offloaded_layers_hold_no_device_blocks():
    wl = Workload(prompt=8192, gen=16)
    base = predict(LLAMA, H100, None, wl, engine=VLLM)
    half = predict(LLAMA, H100, parse_composition(["offload:fraction=0.5"]), wl, engine=VLLM)
    assert int(half.kv_request_bytes) == int(base.kv_request_bytes) // 2
    assert float(half.max_concurrency) > 1.9 * float(base.max_concurrency)


def test_shared_prefix_is_stored_once():
    wl = Workload(prompt=2048, gen=128)
    shared = Workload(prompt=2048, gen=128, shared_prefix=1500)
    a = predict(LLAMA, H100, None, wl, engine=VLLM)
    b = predict(LLAMA, H100, None, shared, engine=VLLM)
    page = 16 * 131_072
    prefix = (1500 // 16) * page  # whole blocks only (vLLM's prefix caching hashes full blocks)
    assert int(b.kv_request_bytes) == int(a.kv_request_bytes) - prefix
    assert float(b.max_concurrency) == pytest.approx((int(b.kv_pool_bytes) - prefix) / int(b.kv_request_bytes))
    assert float(b.max_concurrency) > 3 * float(a.max_concurrency)
    with pytest.raises(KvsimError, match="shared prefix"):
        predict(LLAMA, H100, None, Workload(prompt=100, shared_prefix=101), engine=VLLM)


# -------------------------------------------------------------------------------------- chunked prefill
def test_chunk_nodes_are_exact_for_linear_costs():
    for n in (0, 1, 5, 16, 17, 100, 12345):
        idx, w = chunk_nodes(np.int64(n), 8, 0)
        for f in (lambda i: 1.0 + 0 * i, lambda i: 3.0 * i + 2.0):
            assert float(np.sum(w * f(idx))) == pytest.approx(sum(f(i) for i in range(n)))
        assert np.all(idx >= 0) and (n == 0 or np.all(idx < n))


def test_chunked_ttft_sums_every_chunk():
    cm = cost_model(LLAMA)
    eng = VLLM.with_(max_num_batched_tokens=1000)
    srv = Serving(cm, eng, H100.memory_bytes)
    p = 7500  # seven full chunks and one of 500
    ttft, _ = srv.prefill(np.int64(p), np.int64(1))
    by_hand = 0.0
    for i in range(8):
        c = min(1000, p - 1000 * i)
        ph = srv.chunk_phase(c, 1, 1000 * i, i == 7)
        by_hand += float(cm.phase_time(ph, c, 1, prefill=True))
    assert float(ttft) == pytest.approx(by_hand, rel=1e-12)
    # many chunks: the segment rule stays within a fraction of a percent of the exact sum
    p = 100_000
    srv = Serving(cm, VLLM.with_(max_num_batched_tokens=512), H100.memory_bytes)
    ttft, _ = srv.prefill(np.int64(p), np.int64(1))
    n = -(-p // 512)
    exact = sum(float(cm.phase_time(srv.chunk_phase(min(512, p - 512 * i), 1, 512 * i, i == n - 1),
                                    min(512, p - 512 * i), 1, prefill=True)) for i in range(n))
    assert float(ttft) == pytest.approx(exact, rel=2e-3)


def test_one_chunk_equals_the_whole_prompt_pass():
    cm = cost_model(LLAMA)
    srv = Serving(cm, VLLM, H100.memory_bytes)
    one = cm.phase_time(srv.chunk_phase(4000, 2, 0, True), 4000, 2, prefill=True)
    whole = cm.phase_time(cm.phase(4000, 2, 0, prefill=True), 4000, 2, prefill=True)
    assert float(one) == pytest.approx(float(whole), rel=1e-12)
    pred = predict(LLAMA, H100, None, Workload(prompt=4000, batch=2), engine=VLLM)  # 4,000 x 2 <= 8,192
    assert float(pred.ttft_s) == float(predict(LLAMA, H100, None, Workload(prompt=4000, batch=2)).ttft_s)


def test_chunking_slows_a_long_prompt_and_caps_activations():
    wl = Workload(prompt=131072)
    whole = predict(LLAMA, H100, None, wl)
    chunked = predict(LLAMA, H100, None, wl, engine=VLLM)
    assert float(chunked.ttft_s) > float(whole.ttft_s)
    assert int(chunked.prefill_flops) >= int(whole.prefill_flops)
    assert int(chunked.activation_peak_bytes) < int(whole.activation_peak_bytes) / 10


def test_token_budget_below_the_batch_is_refused():
    with pytest.raises(KvsimError, match="smaller than the batch"):
        predict(LLAMA, H100, None, Workload(prompt=100, batch=64), engine=VLLM.with_(max_num_batched_tokens=32))


# ------------------------------------------------------------------------------------ context numbers
def test_issue_context_numbers():
    # Llama-3-8B, 1,024-token prompts, H100: 291 in a static batch; a pool of the whole device ~520
    wl = Workload(prompt=1024)
    assert int(predict(LLAMA, H100, None, wl).max_batch) == 291
    full = predict(LLAMA, H100, None, wl, engine=VLLM.with_(memory_fraction=1.0))
    assert 500 <= float(full.max_concurrency) <= 540
    # Qwen2.5-7B at 32K on H100: 11 in a static batch (whole-prompt activations of the batch), a paged pool
    # several times more. The issue guessed ~29; the bytes say more: (80 GiB x 0.92 - 15.2 GB of weights - one
    # 8,192-token pass) / (32,768 x 57,344 B) = 33.4.
    qwen = load_model("qwen2.5-7b")
    wl = Workload(prompt=32768)
    assert int(predict(qwen, H100, None, wl).max_batch) == 11
    assert 33 <= float(predict(qwen, H100, None, wl, engine=VLLM).max_concurrency) < 34
    # Llama-3-8B on A100-80GB: the memory after weights holds ~530K tokens for one request
    a100 = load_hardware("a100-80gb")
    longest = int(predict(LLAMA, a100, None, Workload(prompt=1024), engine=VLLM.with_(memory_fraction=1.0))
                  .max_request_context())
    assert 480_000 <= longest <= 540_000


# ------------------------------------------------------------------------------------------------- CLI
def run(*args):
    return subprocess.run([sys.executable, "-m", "kvsim.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_engine_flags_and_outputs():
    r = run("predict", "--model", "llama-3-8b", "--seq", "1024", "--engine", "vllm", "--block-size", "32",
            "--gpu-memory-utilization", "0.8", "--max-num-batched-tokens", "2048", "--format", "json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["engine"] == "vllm-0.33.0" and d["block_size"] == 32 and d["gpu_memory_utilization"] == 0.8
    assert d["kv_pool_tokens"] == d["kv_pool_blocks"] * 32 and d["max_concurrency"] > 300
    assert d["max_request_context"] > 100_000
    table = run("predict", "--model", "llama-3-8b", "--engine", "sglang").stdout
    assert "max concurrency" in table and "KV pool" in table and "nan" not in table.lower()
    sweep = run("sweep", "--model", "llama-3-8b", "--seq", "1024,4096", "--engine", "trtllm",
                "--policy", "full;streamingllm")
    assert sweep.returncode == 0, sweep.stderr
    lines = sweep.stdout.splitlines()
    assert "max_concurrency" in lines[0] and ",trtllm-1.2," in lines[1] and "nan" not in sweep.stdout


@pytest.mark.parametrize("args, message", [
    (["--engine", "vllm", "--gpu-memory-utilization", "1.5"], "(0, 1]"),
    (["--engine", "vllm", "--gpu-memory-utilization", "0"], "(0, 1]"),
    (["--engine", "vllm", "--block-size", "0"], "--block-size"),
    (["--engine", "vllm", "--max-num-batched-tokens", "4", "--batch", "8"], "smaller than the batch"),
    (["--engine", "nope"], "unknown engine preset"),
    (["--seq", "10", "--shared-prefix", "20"], "shared prefix"),
])
def test_cli_serving_errors_are_one_line(args, message):
    r = run("predict", "--model", "llama-3-8b", *args)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if not line.startswith("note:")]
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_prefill_token_overhead_counts_every_prompt_token_of_the_batch():
    """A static batch's prefill pays prefill_token_overhead_s for each of its b x p tokens, as a serving step
    does for each token it schedules."""
    import dataclasses
    on = dataclasses.replace(DATASHEET, prefill_token_overhead_s=1e-6)
    for engine in (HF, VLLM.with_(max_num_batched_tokens=128)):
        wl = Workload(prompt=np.array([64, 300]), gen=4, batch=4)
        extra = predict(LLAMA, H100, None, wl, on, engine=engine).ttft_s - \
            predict(LLAMA, H100, None, wl, DATASHEET, engine=engine).ttft_s
        assert np.allclose(extra, 1e-6 * np.array([64, 300]) * 4, rtol=1e-9)
