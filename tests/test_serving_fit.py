"""calibrate/serving.py: a step-time fit recovers the profile that made the steps, and bad folders are refused."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from calibrate import serving
from kvsim.errors import KvsimError
from kvsim.profile import load_profile

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
          "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
          "vocab_size": 4000, "max_position_embeddings": 2048, "torch_dtype": "float32"}
META = {"vllm": "test", "torch": "test", "dtype": "float32", "threads": 2, "cpu_count": 2, "block_size": 16,
        "num_blocks": 1000, "kv_cache_gib": 1, "max_num_batched_tokens": 512, "max_num_seqs": 64}


def _batches(rng, n):
    out = []
    for _ in range(n):
        nd, npre = int(rng.integers(0, 12)), int(rng.integers(0 if _ else 1, 3))
        nd += npre == 0
        p = rng.integers(16, 400, nd)
        q = rng.integers(16, 400, npre)
        done = (q * rng.uniform(0, 0.8, npre)).astype(np.int64)
        out.append((p, rng.integers(0, 60, nd), q, done, q - done))
    return out


@pytest.mark.parametrize("overlap", [0.0, 0.4])
def test_fit_recovers_the_profile_that_made_the_steps(overlap):
    """Steps timed by a known profile: the fit finds its efficiencies and overlap; an overlap at a limit is
    fixed there, one inside is fitted."""
    dep = serving.Deployment(META, CONFIG, load_profile("cpu"))
    truth = dataclasses.replace(dep.profile(serving.FIXED), mem_efficiency=0.6, kv_efficiency=0.6,
                                compute_efficiency=0.4, compute_memory_overlap=overlap)
    batches = _batches(np.random.default_rng(0), 60)
    measured = serving.predict_steps(dep, truth, batches)
    got = serving.fit(dep, batches, measured)
    assert got.fitted["mem_efficiency"] == pytest.approx(0.6, rel=1e-3)
    assert got.fitted["compute_efficiency"] == pytest.approx(0.4, rel=1e-3)
    if overlap:
        assert got.fitted["compute_memory_overlap"] == pytest.approx(overlap, abs=1e-3)
    else:
        assert "compute_memory_overlap" not in got.fitted and got.fixed["compute_memory_overlap"][0] == 0.0
    np.testing.assert_allclose(serving.predict_steps(dep, got.profile, batches), measured, rtol=1e-3)
    # and the fit moved: the starting profile is far from the truth on these steps
    assert np.abs(serving.predict_steps(dep, dep.base, batches) / measured - 1).mean() > 0.2


RUNS = Path(__file__).resolve().parents[1] / "measured" / "results" / "vllm-cpu"


def test_the_simulated_scheduler_puts_the_engines_batches_together():
    """Every committed vLLM run, simulated with each step taking the engine's measured time: the simulator
    schedules the engine's batch at every step; an engine with another token budget would not."""
    meta, config, runs = serving.load(RUNS)
    dep = serving.Deployment(meta, config, load_profile("cpu"))
    for run in runs:
        got = serving.replay_schedule(dep, run)
        assert got == {"measured": len(run.steps), "simulated": len(run.steps), "differ": 0, "first": None}
    dep.engine = dep.engine.with_(max_num_batched_tokens=200)
    assert serving.replay_schedule(dep, runs[-1])["differ"] > 0


def test_folder_without_runs_or_columns_is_refused(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps(dict(META, runs={})))
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(KvsimError, match="lists no runs"):
        serving.load(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps(dict(META, runs={"rate-1": {}})))
    (tmp_path / "rate-1.csv").write_text("arrival_s,prompt_tokens\n0,5\n")
    (tmp_path / "rate-1.steps.csv").write_text("start_s,end_s,decodes,prefills\n0,1,,5:0:5\n")
    with pytest.raises(KvsimError, match="lacks output_tokens, first_token_s"):
        serving.load(tmp_path)


def test_cli_refuses_unknown_rate(tmp_path, capsys):
    assert serving.main([str(tmp_path), "--fit-rates", "1"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
