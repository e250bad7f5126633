"""Tensor parallelism: heads sharded as vLLM shards them, per-device bytes of the busiest device."""

import subprocess
import sys

import pytest

from kvsim import KvsimError, Workload, load_hardware, load_model, parse_composition, predict, uniform
from kvsim.parallel import kv_heads_per_device

H100 = load_hardware("h100-sxm")
LLAMA70 = load_model("llama-3-70b")  # 64 query heads, 8 KV heads


@pytest.mark.parametrize("q, kv, tp, per_device", [
    (64, 8, 1, 8), (64, 8, 2, 4), (64, 8, 8, 1),
    (64, 8, 16, 1),  # tp > KV heads: each KV head replicated on 2 devices (vLLM's num_kv_head_replicas)
    (64, 8, 64, 1),
    (32, 1, 8, 1),  # MQA: every device holds the one head
    (24, 12, 3, 4),
])
def test_kv_heads_per_device(q, kv, tp, per_device):
    assert kv_heads_per_device(q, kv, tp) == per_device


@pytest.mark.parametrize("q, kv, tp, message", [
    (64, 8, 3, "does not divide the 64 query heads"),
    (48, 8, 6, "does not divide the 8 KV heads"),
    (48, 8, 12, "not a multiple of the 8 KV heads"),
])
def test_splits_vllm_refuses_are_refused(q, kv, tp, message):
    with pytest.raises(KvsimError, match=message):
        kv_heads_per_device(q, kv, tp)


def test_llama3_70b_tp3_is_refused_not_shrunk():
    # 64 query heads do not divide by 3 (vLLM: "Total number of attention heads (64) must be divisible by tensor
    # parallel size (3)"). kvsim used to floor 8 // 3 = 2 heads per device: 2/8 of the KV, a quarter too little.
    with pytest.raises(KvsimError, match="query heads"):
        predict(LLAMA70, H100, None, Workload(prompt=8192, tp=3))


def test_replicated_kv_heads_are_whole_on_every_device():
    full = predict(LLAMA70, H100, None, Workload(prompt=8192))
    for tp in (8, 16, 32):
        pred = predict(LLAMA70, H100, None, Workload(prompt=8192, tp=tp))
        assert int(pred.kv_cache_bytes_per_device) * 8 == int(full.kv_cache_bytes)  # one KV head of 8 each


def test_ragged_heads_count_the_busiest_device():
    # DuoAttention: half the KV heads keep everything, half keep sinks + a window. With one KV head per device
    # (tp 8 on Llama-3-8B) the busiest device holds a retrieval head: a full head's cache, not the average.
    m = load_model("llama-3-8b")
    wl = Workload(prompt=32768, tp=8)
    duo = predict(m, H100, parse_composition(["duo:retrieval=0.5"]), wl)
    full = predict(m, H100, None, wl)
    assert int(duo.kv_cache_bytes_per_device) == int(full.kv_cache_bytes_per_device)
    assert int(duo.kv_cache_bytes) < int(full.kv_cache_bytes)
    two = predict(m, H100, parse_composition(["duo:retrieval=0.5"]), Workload(prompt=32768, tp=2))
    assert int(two.kv_cache_bytes_per_device) == int(full.kv_cache_bytes) // 2  # all 4 retrieval heads on one


def test_per_device_bytes_are_never_a_floor():
    # 3 KV heads x 1 token on 3 devices: one head each, exactly a third, for every policy in the matrix.
    m = uniform("t", n_layers=2, hidden=96, vocab=50, n_heads=6, n_kv_heads=3, head_dim=32, intermediate=64)
    from tests.policy_matrix import POLICIES
    for name, spec in POLICIES.items():
        if name == "duo":
            continue  # ragged heads: the busiest device holds more than a third
        pred = predict(m, H100, parse_composition([spec]), Workload(prompt=7, gen=3, tp=3))
        per_dev, total = int(pred.kv_cache_bytes_per_device), int(pred.kv_cache_bytes)
        assert per_dev * 3 + int(pred.kv_host_bytes) >= total, name  # offloaded layers live on the host


def test_cli_refuses_in_one_line():
    r = subprocess.run([sys.executable, "-m", "kvsim.cli", "predict", "--model", "llama-3-70b", "--tp", "3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "query heads" in r.stderr
