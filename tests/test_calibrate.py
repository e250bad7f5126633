"""Calibration: recovers known parameters from data the model generates; refuses malformed data; never
leaves a profile half-written."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("pandas")

from kvsim import Profile, Workload, load_hardware, load_model, parse_composition, predict  # noqa: E402

TRUE = Profile(name="truth", mem_efficiency=0.55, kv_efficiency=0.3, compute_efficiency=0.6,
               compute_small_efficiency=0.1, compute_half_tokens=48.0, policy_efficiency=0.02, step_overhead_s=2e-3, layer_overhead_s=3e-4, prefill_token_overhead_s=4e-6,
               policy_layer_overhead_s=1.5e-4)
COLUMNS = ["model", "policy", "seq", "gen", "batch", "dtype", "device_name", "status", "ttft_s", "tpot_s", "date"]


def synthetic_rows(profile=TRUE):
    hw = load_hardware("cpu")
    rows = []
    for model in ("smollm2-135m", "gpt2", "gemma-3-270m"):
        spec = load_model(model)
        for pol in ("full", "h2o:budget=128,every=1,recent=32", "snapkv:budget=128,window=32,kernel=7,pooling=max",
                    "int8", "kivi:bits=2,group=32,residual=128,scale_bits=16"):
            comp = parse_composition([] if pol == "full" else pol.split(" "))
            for seq in (128, 256, 512, 1024 if model != "gpt2" else 960):
                for batch in (1, 4):
                    pr = predict(spec, hw, comp, Workload(prompt=seq, gen=16, batch=batch, kv_dtype="fp32",
                                                          weight_dtype="fp32"), profile)
                    rows.append({"model": model, "policy": pol, "seq": seq, "gen": 16, "batch": batch, "dtype": "fp32",
                                 "device_name": "synthetic", "status": "ok", "ttft_s": float(pr.ttft_s),
                                 "tpot_s": float(pr.tpot_s), "date": "2026-11-22T00:00:00Z"})
    return rows


def write(path, rows, columns=COLUMNS):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def kvsim(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kvsim.cli", *args], capture_output=True, text=True, timeout=900,
                          cwd=cwd)


def test_recovers_known_parameters(tmp_path):
    data = tmp_path / "synthetic.csv"
    write(data, synthetic_rows())
    out = tmp_path / "fit.json"
    r = kvsim("calibrate", "--data", str(data), "--out", str(out), "--hardware", "cpu", "--folds", "3")
    assert r.returncode == 0, r.stderr
    prof = json.loads(out.read_text())
    assert prof["heldout"]["tpot_mape"] < 0.01 and prof["heldout"]["ttft_mape"] < 0.01
    for name in ("mem_efficiency", "compute_efficiency", "layer_overhead_s", "step_overhead_s"):
        assert prof["params"][name] == pytest.approx(getattr(TRUE, name), rel=0.1), name
    assert prof["provenance"]["rows"] == 120 and len(prof["provenance"]["data_sha256"]) == 64
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # the profile drives predictions: the fitted one reproduces the truth's TPOT
    from kvsim import load_profile
    fitted = load_profile(out)
    wl = Workload(prompt=700, gen=16, batch=2, kv_dtype="fp32", weight_dtype="fp32")
    a = predict(load_model("smollm2-135m"), load_hardware("cpu"), None, wl, fitted).tpot_s
    b = predict(load_model("smollm2-135m"), load_hardware("cpu"), None, wl, TRUE).tpot_s
    assert float(a) == pytest.approx(float(b), rel=0.02)


def _bad(tmp_path, name, mutate):
    rows = synthetic_rows()[:40]
    cols = list(COLUMNS)
    rows, cols = mutate(rows, cols)
    path = tmp_path / name
    if rows is None:
        path.write_text("")
    else:
        write(path, rows, cols)
    return path


@pytest.mark.parametrize("name, mutate, message", [
    ("missing.csv", lambda r, c: (r, [x for x in c if x != "tpot_s"]), "missing columns tpot_s"),
    ("nan.csv", lambda r, c: ([{**x, "ttft_s": "nan"} if i == 3 else x for i, x in enumerate(r)], c), "ttft_s is"),
    ("empty.csv", lambda r, c: (None, c), "empty file"),
    ("mixed.csv", lambda r, c: ([{**x, "device_name": "other"} if i % 2 else x for i, x in enumerate(r)], c),
     "mixes devices"),
    ("failed.csv", lambda r, c: ([{**x, "status": "oom"} for x in r], c), "no rows with status ok"),
    ("negative.csv", lambda r, c: ([{**x, "tpot_s": -1} if i == 0 else x for i, x in enumerate(r)], c), "tpot_s is"),
])
def test_malformed_data_is_refused_and_profile_untouched(tmp_path, name, mutate, message):
    data = _bad(tmp_path, name, mutate)
    out = tmp_path / "keep.json"
    out.write_text('{"precious": true}')
    r = kvsim("calibrate", "--data", str(data), "--out", str(out), "--hardware", "cpu")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert json.loads(out.read_text()) == {"precious": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "keep.json"])


def test_probe_writes_a_usable_profile(tmp_path):
    out = tmp_path / "probe.json"
    r = kvsim("probe", "--quick", "--out", str(out))
    assert r.returncode == 0, r.stderr
    from kvsim import load_profile
    prof = load_profile(out)
    assert prof.memory_bandwidth > 1e8 and prof.peak_flops > 1e8
    pred = predict(load_model("gpt2"), load_hardware("cpu"), None, Workload(prompt=64, gen=4, kv_dtype="fp32"), prof)
    assert np.isfinite(pred.tpot_s)
