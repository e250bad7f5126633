"""calibrate/serving.py: a step-time fit recovers the profile that made the steps, and bad folders are refused."""

import dataclasses
import json

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


def test_fit_recovers_step_times():
    dep = serving.Deployment(META, CONFIG, load_profile("cpu"))
    truth = dataclasses.replace(dep.base, mem_efficiency=0.6, compute_efficiency=0.4, step_overhead_s=2e-3)
    batches = _batches(np.random.default_rng(0), 40)
    measured = serving.predict_steps(dep, truth, batches)
    fitted = serving.fit(dep, batches, measured)
    err = np.abs(serving.predict_steps(dep, fitted, batches) / measured - 1)
    assert err.max() < 0.02
    # and the fit moved: the starting profile is far from the truth on these steps
    assert np.abs(serving.predict_steps(dep, dep.base, batches) / measured - 1).mean() > 0.2


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
