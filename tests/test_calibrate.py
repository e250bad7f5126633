"""Calibration: recovers known parameters from data the model generates; refuses malformed data; never
leaves a profile half-written."""

import csv
import json

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("pandas")

from kvsim import Profile, Workload, load_hardware, load_model, parse_composition, predict  # noqa: E402

TRUE = Profile(name="truth", mem_efficiency=0.55, kv_efficiency=0.3, compute_efficiency=0.6,
               compute_small_efficiency=0.1, compute_half_tokens=48.0, policy_efficiency=0.02, step_overhead_s=2e-3, layer_overhead_s=3e-4, prefill_token_overhead_s=4e-6,
               policy_layer_overhead_s=1.5e-4)
COLUMNS = ["model", "policy", "seq", "gen", "batch", "dtype", "device_name", "status", "ttft_s", "tpot_s", "date"]


MODELS = ("smollm2-135m", "gpt2", "gemma-3-270m")  # 30, 12 and 18 layers: step and layer overheads separate
POLICIES = ("full", "h2o:budget=128,every=1,recent=32", "snapkv:budget=128,window=32,kernel=7,pooling=max",
            "int8", "kivi:bits=2,group=32,residual=128,scale_bits=16")


def synthetic_rows(profile=TRUE, models=MODELS, policies=POLICIES, seqs=(128, 256, 512, 1024), batches=(1, 4)):
    hw = load_hardware("cpu")
    rows = []
    for model in models:
        spec = load_model(model)
        for pol in policies:
            comp = parse_composition([] if pol == "full" else [pol])
            for seq in seqs:
                seq = min(seq, 960) if model == "gpt2" else seq  # GPT-2 was trained for 1,024 positions
                for batch in batches:
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


def kvsim(*args, cwd="."):
    from tests.inprocess import run
    return run(*args, cwd=cwd)


# The parameters the recovery test frees; the rest stay at the truth. Fitting all twelve at once reaches the same
# optimum on this data but took 12 minutes (each of ~100 Jacobians costs 13 predictions of every group); six free
# parameters on two policies keep every assertion and take seconds.
FREE = ("mem_efficiency", "compute_efficiency", "compute_small_efficiency", "layer_overhead_s", "step_overhead_s",
        "prefill_token_overhead_s")


def test_recovers_known_parameters():
    import dataclasses

    import pandas as pd

    from calibrate.fit import Problem, cross_validate, errors, fit
    df = pd.DataFrame(synthetic_rows(policies=POLICIES[:2], seqs=(128, 512, 1024)))
    problem = Problem(df, load_hardware("cpu"), dataclasses.replace(TRUE, name="start"))
    held_ttft, held_tpot = cross_validate(problem, 3, 0, free=FREE)
    assert errors(held_tpot, problem.tpot)["mape"] < 0.01 and errors(held_ttft, problem.ttft)["mape"] < 0.01
    fitted = fit(problem, free=FREE)
    for name in FREE:
        assert getattr(fitted, name) == pytest.approx(getattr(TRUE, name), rel=0.1), name
    # the profile drives predictions: the fitted one reproduces the truth's TPOT at a point it never saw
    wl = Workload(prompt=700, gen=16, batch=2, kv_dtype="fp32", weight_dtype="fp32")
    a = predict(load_model("smollm2-135m"), load_hardware("cpu"), None, wl, fitted).tpot_s
    b = predict(load_model("smollm2-135m"), load_hardware("cpu"), None, wl, TRUE).tpot_s
    assert float(a) == pytest.approx(float(b), rel=0.02)


def test_calibrate_writes_a_profile_and_keeps_a_better_one(tmp_path):
    data = tmp_path / "synthetic.csv"
    rows = synthetic_rows(policies=POLICIES[:1], seqs=(128, 512))
    write(data, rows)
    out = tmp_path / "fit.json"
    # the layer overhead is the truth's largest fixed cost: with the rest at their defaults a fit of these two
    # keeps both off their bounds (a term at its floor would be fixed, not listed as fitted)
    r = kvsim("calibrate", "--data", str(data), "--out", str(out), "--hardware", "cpu", "--folds", "3",
              "--fit", "mem_efficiency,layer_overhead_s")
    assert r.returncode == 0, r.stderr
    prof = json.loads(out.read_text())
    assert prof["fitted"] == ["mem_efficiency", "layer_overhead_s"]
    assert prof["provenance"]["rows"] == len(rows) == 12 and len(prof["provenance"]["data_sha256"]) == 64
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # a profile whose recorded held-out error is better is kept, unless --force
    better = {**prof, "heldout": {**prof["heldout"], "tpot_mape": 0.0, "ttft_mape": 0.0}}
    out.write_text(json.dumps(better))
    args = ("calibrate", "--data", str(data), "--out", str(out), "--hardware", "cpu", "--folds", "3", "--no-plot",
            "--fit", "mem_efficiency,layer_overhead_s")
    r = kvsim(*args)
    assert r.returncode == 2 and "--force" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert json.loads(out.read_text()) == better
    r = kvsim(*args, "--force")
    assert r.returncode == 0 and json.loads(out.read_text())["heldout"]["tpot_mape"] > 0, r.stderr


def _bad(tmp_path, name, mutate):
    rows = synthetic_rows(policies=POLICIES[:1], seqs=(128, 256))
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
    ("inf.csv", lambda r, c: ([{**x, "ttft_s": "inf"} if i == 2 else x for i, x in enumerate(r)], c), "ttft_s is"),
    ("tiny.csv", lambda r, c: ([{**x, "ttft_s": 1e-300} if i == 2 else x for i, x in enumerate(r)], c), "ttft_s is"),
    ("huge.csv", lambda r, c: ([{**x, "seq": 1e12} if i == 2 else x for i, x in enumerate(r)], c), "seq is"),
    ("fraction.csv", lambda r, c: ([{**x, "seq": 128.5} if i == 2 else x for i, x in enumerate(r)], c), "seq is"),
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
    assert prof.cache_bytes == json.loads(out.read_text())["probe"]["cache_bytes"] >= 0
    # the torch paths' unfused terms, which a calibration on this probe keeps where its data has no such model
    from calibrate.cli import PROBED
    assert set(json.loads(out.read_text())["probe"]["unfused"]) == set(PROBED)
    assert all(getattr(prof, k) >= 0 for k in PROBED) and prof.unfused_chunk_s > 0 and prof.unfused_delta_s > 0
    pred = predict(load_model("gpt2"), load_hardware("cpu"), None, Workload(prompt=64, gen=4, kv_dtype="fp32"), prof)
    assert np.isfinite(pred.tpot_s)


def test_probe_reads_the_last_level_cache_from_sysfs(tmp_path):
    """The largest data or unified level (never the instruction cache), whatever order sysfs lists them in;
    an unreadable or odd entry is skipped, and no entries at all give 0."""
    from calibrate.probe import cache_bytes
    for i, (level, kind, size) in enumerate([(3, "Unified", "32768K"), (1, "Data", "32K"),
                                             (4, "Instruction", "64M"), (2, "Unified", "1M"), (5, "Data", "x")]):
        (tmp_path / f"index{i}").mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (tmp_path / f"index{i}" / name).write_text(f"{value}\n")
    assert cache_bytes("cpu", tmp_path) == 32 << 20
    assert cache_bytes("cpu", tmp_path / "missing") == 0


def test_extrapolation_schemes_and_domain_are_recorded(tmp_path):
    """Every hold-out scheme is fitted and reported; the profile states its domain and predict notes a query
    outside it. Rows made by a profile of the fitted family are recovered on every scheme."""
    import shutil

    from kvsim import load_profile
    from kvsim.hf import from_hf_config, load_json
    folder = tmp_path / "runs"
    (folder / "models").mkdir(parents=True)
    cfg = folder / "models" / "tiny-llama.json"
    shutil.copy("measured/results/cpu/models/llama-mqa-768x16.json", cfg)
    truth = Profile(name="truth", mem_efficiency=0.55, step_overhead_s=2e-3)  # the two parameters fitted below
    rows = synthetic_rows(truth, models=("smollm2-135m",), policies=POLICIES[:1], seqs=(128, 2048), batches=(1, 2, 8))
    spec = from_hf_config(load_json(cfg), name="models/tiny-llama.json")
    for seq in (128, 2048):  # a model named by a config.json path relative to its CSV, as collect.sh names them
        for batch in (1, 2, 8):
            pr = predict(spec, load_hardware("cpu"), None, Workload(prompt=seq, gen=16, batch=batch, kv_dtype="fp32",
                                                                      weight_dtype="fp32"), truth)
            rows.append({**rows[0], "model": "models/tiny-llama.json", "seq": seq, "batch": batch,
                         "ttft_s": float(pr.ttft_s), "tpot_s": float(pr.tpot_s)})
    write(folder / "latency-v2.csv", rows)
    out = tmp_path / "fit.json"
    r = kvsim("calibrate", "--data", str(folder / "latency-v2.csv"), "--out", str(out), "--hardware", "cpu",
              "--folds", "2", "--no-plot", "--fit", "mem_efficiency,step_overhead_s",
              "--holdout-batch-above", "2", "--holdout-seq-above", "1024")
    assert r.returncode == 0, r.stderr
    prof = json.loads(out.read_text())
    schemes = prof["heldout_schemes"]
    assert set(schemes) == {"grouped", "leave-one-model-out", "batch", "prompt"}
    assert schemes["leave-one-model-out"]["rows"] == 12 and len(schemes["leave-one-model-out"]["splits"]) == 2
    assert schemes["batch"]["rows"] == 4 and schemes["prompt"]["rows"] == 6
    for name, sc in schemes.items():
        assert sc["tpot_mape"] < 0.01 and sc["ttft_mape"] < 0.01, (name, sc)
    assert "leave-one-model-out" in r.stdout and "prompt" in r.stdout
    dom = prof["domain"]
    assert dom["batch"] == [1, 8] and dom["prompt"] == [128, 2048] and dom["dtypes"] == ["fp32"]
    assert dom["params"] == sorted([spec.n_params(), load_model("smollm2-135m").n_params()])
    fitted = load_profile(out)
    inside = predict(load_model("smollm2-135m"), load_hardware("cpu"), None,
                     Workload(prompt=512, gen=16, batch=4, kv_dtype="fp32", weight_dtype="fp32"), fitted)
    assert not any("extrapolation" in n for n in inside.notes)
    outside = predict(load_model("llama-3-8b"), load_hardware("cpu"), None, Workload(prompt=4096, gen=16, batch=32),
                      fitted)
    note = [n for n in outside.notes if "extrapolation" in n]
    assert len(note) == 1 and all(w in note[0] for w in ("batch 32", "prompt 4,096", "bf16", "8.03B parameters"))


def test_native_executor_data_fixes_the_copy_term(tmp_path):
    """The native executor reads pages in place: materialised_reads has nothing to describe and is not fitted."""
    data = tmp_path / "native.csv"
    rows = [{**x, "executor": "native-c"} for x in synthetic_rows(policies=POLICIES[:1], seqs=(128, 512))]
    write(data, rows, COLUMNS + ["executor"])
    out = tmp_path / "fit.json"
    r = kvsim("calibrate", "--data", str(data), "--out", str(out), "--hardware", "cpu", "--folds", "2", "--no-plot",
              "--fit", "mem_efficiency,materialised_reads")
    assert r.returncode == 0, r.stderr
    prof = json.loads(out.read_text())
    assert prof["fitted"] == ["mem_efficiency"] and "materialised_reads" in prof["fixed"]
    assert prof["params"]["materialised_reads"] == 0
    r = kvsim("calibrate", "--data", str(data), "--out", str(out), "--hardware", "cpu", "--fit", "materialised_reads")
    assert r.returncode == 2 and "nothing left to fit" in r.stderr


def test_calibrate_refuses_to_mix_harness_executors(tmp_path):
    rows = synthetic_rows(policies=POLICIES[:1], seqs=(128, 512))
    write(tmp_path / "old.csv", rows)  # no executor column: the first harness
    write(tmp_path / "new.csv", [{**x, "executor": "native-c"} for x in rows], COLUMNS + ["executor"])
    r = kvsim("calibrate", "--data", str(tmp_path), "--out", str(tmp_path / "p.json"), "--hardware", "cpu")
    assert r.returncode == 2 and "mixes harness decode executors" in r.stderr, r.stderr


def test_a_malformed_domain_is_refused_in_one_line(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"params": {"name": "p", "mem_efficiency": 0.5}, "domain": {"batch": [8, 1]}}))
    r = kvsim("predict", "--model", "gpt2", "--profile", str(path))
    assert r.returncode == 2 and "domain.batch" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_composed_policies_are_read_as_one_composition():
    """measure writes a composition's spec as "a + b"; calibrate must predict that composition, not refuse '+'."""
    import pandas as pd

    from calibrate.fit import Problem
    spec = parse_composition(["snapkv:budget=128", "int4"]).spec()
    rows = synthetic_rows(policies=POLICIES[:1], seqs=(512,), batches=(2,))
    df = pd.DataFrame([{**rows[0], "policy": spec}])
    problem = Problem(df, load_hardware("cpu"), TRUE)
    ttft, tpot = problem.predict(TRUE)
    want = predict(load_model("smollm2-135m"), load_hardware("cpu"), parse_composition(["snapkv:budget=128", "int4"]),
                   Workload(prompt=512, gen=16, batch=2, kv_dtype="fp32", weight_dtype="fp32"), TRUE)
    assert tpot[0] == pytest.approx(float(want.tpot_s)) and ttft[0] == pytest.approx(float(want.ttft_s))


def test_evaluate_reports_error_per_model_and_over_all_rows():
    import pandas as pd
    from calibrate.evaluate import by_model
    df = pd.DataFrame({"model": ["a", "a", "b"], "tpot_s": [1.0, 2.0, 4.0], "ttft_s": [1.0, 1.0, 1.0]})
    t = by_model(df, np.array([1.5, 0.5, 1.0]), np.array([1.1, 1.8, 2.0]))
    assert t.loc["a", "tpot_mape"] == pytest.approx(0.1) and t.loc["b", "tpot_median"] == pytest.approx(-0.5)
    assert t.loc["a", "ttft_mape"] == pytest.approx(0.5) and t.loc["all rows", "rows"] == 3
    assert t.loc["all rows", "tpot_mape"] == pytest.approx((0.1 + 0.1 + 0.5) / 3)


def test_extrapolation_scores_only_policies_its_training_rows_run():
    import pandas as pd
    from calibrate.fit import splits
    df = pd.DataFrame({"model": ["a", "a", "b", "b"], "policy": ["full", "int4", "full", "full"],
                       "batch": [1, 8, 1, 8], "seq": [128, 128, 2048, 2048]})
    lomo = dict((label, (train, test)) for label, train, test in splits(df, 4, 1024)["leave-one-model-out"])
    assert list(lomo["a"][1]) == [0]  # model a's int4 row: no other model runs int4, so no fit can predict it
    assert list(lomo["b"][1]) == [2, 3]
    (_, train, test), = splits(df, 4, 1024)["batch"]
    assert list(train) == [0, 2] and list(test) == [3]  # row 1 (int4 at batch 8) has no int4 row to train on


def test_every_shipped_profile_is_named_as_its_file():
    """`--profile NAME` resolves calibrate/profiles/NAME.json; the profile inside must print that name (a fit
    written to another path and copied in keeps the name of the path it was written to)."""
    from kvsim.profile import load_profile, shipped_profiles
    for name, path in shipped_profiles().items():
        assert load_profile(path).name == name, path


def test_terms_a_fit_drives_to_their_floor_are_named_for_fixing():
    """An overhead or executor term (default 0) left at its lower bound is not identified by the data; an
    efficiency at its floor, or a term above it, is not named."""
    from calibrate.fit import PARAMS, at_floor
    free = ("policy_layer_overhead_s", "step_overhead_s", "unfused_spill", "mem_efficiency")
    prof = Profile(name="t", policy_layer_overhead_s=PARAMS["policy_layer_overhead_s"][0], step_overhead_s=1e-3,
                   unfused_spill=PARAMS["unfused_spill"][0], mem_efficiency=PARAMS["mem_efficiency"][0])
    assert at_floor(prof, free) == ("policy_layer_overhead_s", "unfused_spill")
    assert at_floor(prof, ("step_overhead_s",)) == ()


def test_a_fit_without_a_terms_model_keeps_that_terms_base_value():
    """Rows of a model with a term of its own (Mamba-1's unfused scan) held out of a fit: nothing in the training
    rows moves the term, so it keeps the base profile's value (0) instead of wherever the optimizer started."""
    import dataclasses

    import pandas as pd

    from calibrate.fit import Problem, fit
    truth = dataclasses.replace(TRUE, unfused_scan_s=1e-9)
    df = pd.DataFrame(synthetic_rows(truth, models=("smollm2-135m", "mamba-2.8b"), policies=("full",),
                                     seqs=(128, 512), batches=(1, 4)))
    problem = Problem(df, load_hardware("cpu"), Profile(name="base"))
    dense = np.where(df["model"] == "smollm2-135m")[0]
    assert fit(problem, dense, free=("step_overhead_s", "unfused_scan_s")).unfused_scan_s == 0.0
    assert fit(problem, free=("step_overhead_s", "unfused_scan_s")).unfused_scan_s > 0.0


def test_calibrate_keeps_the_probes_terms_its_data_cannot_fit(tmp_path):
    """`kvsim calibrate --probe`: the probe's peaks and its torch paths' unfused terms are the base; a term no
    model in the data exercises (sinks, the delta rule, SSD on dense rows) ships with the probe's value."""
    from calibrate.cli import PROBED
    data = tmp_path / "native.csv"
    write(data, [{**x, "executor": "native-c"} for x in synthetic_rows(policies=POLICIES[:1], seqs=(128, 512))],
          COLUMNS + ["executor"])
    probe = tmp_path / "probe.json"
    terms = {k: (i + 1) * 1e-9 for i, k in enumerate(PROBED)}
    probe.write_text(json.dumps({"params": {"name": "probe", "memory_bandwidth": 3e10, "peak_flops": 2e11,
                                            "cache_bytes": 1 << 25, **terms}, "kind": "probe"}))
    out = tmp_path / "fit.json"
    r = kvsim("calibrate", "--data", str(data), "--probe", str(probe), "--out", str(out), "--hardware", "cpu",
              "--folds", "2", "--no-plot", "--fit", "mem_efficiency")
    assert r.returncode == 0, r.stderr
    params = json.loads(out.read_text())["params"]
    assert {k: params[k] for k in PROBED} == terms
    assert params["memory_bandwidth"] == 3e10 and params["cache_bytes"] == 1 << 25
