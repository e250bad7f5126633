"""`kvsim predict --breakdown`: the per-operator rows are the cost model's own terms, so per phase they sum to
the phase's FLOP, bytes and time."""

import json

import pytest

from kvsim.cli import main


@pytest.mark.parametrize("argv", [
    ["--model", "llama-3-8b", "--seq", "4096", "--gen", "64", "--batch", "8", "--policy", "int8"],
    ["--model", "deepseek-v2-lite", "--seq", "2048", "--gen", "16", "--tp", "2", "--policy", "h2o:budget=512"],
    ["--model", "llama-3-8b", "--policy", "offload", "--gen", "8"],
])
def test_rows_sum_to_the_phase(capsys, argv):
    assert main(["predict", *argv, "--breakdown", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["breakdown"]
    phases = {r["phase"] for r in rows}
    assert len(phases) == 2
    for ph in phases:
        total = next(r for r in rows if r["phase"] == ph and r["op"] == "total")
        parts = [r for r in rows if r["phase"] == ph and r["op"] != "total"]
        assert sum(r["time_s"] for r in parts) == pytest.approx(total["time_s"], rel=1e-9)
        counted = [r for r in parts if r["op"] != "unfused KV copy"]  # time only, not the phase's bytes
        assert sum(r["flops"] for r in counted) == pytest.approx(total["flops"], rel=1e-9)
        assert sum(r["bytes"] for r in counted) == pytest.approx(total["bytes"], rel=1e-9)
        assert all(r["time_s"] >= 0 and r["bytes"] >= 0 for r in parts)
    prefill = next(r for r in rows if r["phase"] == "prefill" and r["op"] == "total")
    assert prefill["time_s"] == pytest.approx(out["ttft_s"], rel=1e-6)


def test_breakdown_table_and_refusals(capsys):
    assert main(["predict", "--breakdown"]) == 0
    assert "weight matmuls" in capsys.readouterr().out
    assert main(["predict", "--breakdown", "--format", "csv"]) == 2
    assert main(["predict", "--breakdown", "--engine", "vllm"]) == 2


def test_executor_terms_are_not_called_compute_bound():
    """An unfused executor term has time but no FLOP or bytes of its own: its row says `executor`."""
    import dataclasses

    from kvsim import Profile, Workload, load_hardware, predict
    from kvsim.breakdown import rows
    from kvsim.model import MLP, Attention, Layer, ModelSpec
    sink = ModelSpec("s", 128, 100, (Layer(Attention(4, 2, 32, sinks=True), MLP(256)),) * 2)
    prof = dataclasses.replace(Profile(name="t"), unfused_attention_s=1e-9)
    out = rows(predict(sink, load_hardware("cpu"), None, Workload(prompt=512, gen=2), prof, engine="hf"))
    row = next(r for r in out if r["op"] == "unfused attention scores")
    assert row["bound"] == "executor" and row["time_s"] > 0
