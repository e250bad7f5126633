"""Measurement sweeps: rows as they complete, resume, out-of-memory rows, one-line errors."""

import csv

import pytest
import torch

from kvsim import parse_composition
from measured import runner
from tests.inprocess import run


def kvsim(*args, cwd="."):
    return run(*args, cwd=cwd)


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_measure_writes_resumes_and_repairs(tmp_path):
    out = tmp_path / "m.csv"
    r = kvsim("measure", "--model", "gpt2", "--policy", "full;streamingllm:sinks=4,window=28", "--seq", "48",
              "--gen", "4", "--batch", "1,2", "--repeats", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    first = rows(out)
    assert len(first) == 4 and all(x["status"] == "ok" for x in first)
    assert all(x["kv_cache_bytes"] == x["kv_cache_bytes_predicted"] for x in first)
    assert {"device_name", "torch_version", "transformers_version", "kvsim_commit", "date"} <= set(first[0])
    with out.open("a") as f:  # a run killed mid-row leaves a torn line
        f.write("gpt2,random,full,48,4,3,cpu,fp32,o")
    r = kvsim("measure", "--model", "gpt2", "--policy", "full;streamingllm:sinks=4,window=28;int8", "--seq", "48",
              "--gen", "4", "--batch", "1,2", "--repeats", "1", "--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr
    after = rows(out)
    assert len(after) == 6  # two new points, nothing repeated, the torn line gone
    assert len({(x["policy"], x["batch"]) for x in after}) == 6
    r = kvsim("measure", "--model", "gpt2", "--seq", "48", "--out", str(out))
    assert r.returncode == 2 and "--resume" in r.stderr


@pytest.mark.parametrize("error, words", [
    (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory"),
    # what torch's CPU allocator raises when malloc fails
    (lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                          "you tried to allocate 1099511627776 bytes"), "can't allocate memory"),
    (lambda: MemoryError(), ""),
])
def test_out_of_memory_is_a_row(tmp_path, monkeypatch, error, words):
    from measured.validate import tiny_model
    model = tiny_model("gpt2-mha")
    calls = {"n": 0}
    real = runner.measure

    def flaky(model, pol, ids, gen, **kw):
        calls["n"] += 1
        if ids.shape[0] == 2:
            raise error()
        return real(model, pol, ids, gen, **kw)

    monkeypatch.setattr(runner, "measure", flaky)
    out = tmp_path / "o.csv"
    n = runner.sweep(model, "tiny", "random", [parse_composition([])], [16], 3, [1, 2], "cpu", "fp32", 1, out,
                     False, warmup=0, report=lambda s: None)
    got = rows(out)
    assert n == 2 and [x["status"] for x in got] == ["ok", "oom"] and words in got[1]["error"]


@pytest.mark.parametrize("args, message", [
    (["measure", "--model", "nope", "--out", "x.csv"], "unknown model"),
    (["measure", "--model", "phi-3-mini", "--out", "x.csv"], "not supported by the harness"),
    (["measure", "--model", "gpt2", "--policy", "offload", "--out", "x.csv"], "cannot run on cpu"),
    (["measure", "--model", "gpt2", "--weights", "real", "--out", "x.csv"], "real weights exist only"),
    (["measure", "--model", "gpt2", "--device", "tpu", "--out", "x.csv"], "not available"),
    (["measure", "--model", "gpt2"], "required"),
    (["validate", "--arch", "vax"], "unknown --arch"),
])
def test_harness_errors_are_one_line(args, message, tmp_path):
    r = kvsim(*args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_validate_command_passes():
    r = kvsim("validate", "--arch", "gemma3-local-global,mamba")
    lines = r.stdout.strip().splitlines()[-3:]
    assert r.returncode == 0
    assert [line.split()[0] for line in lines] == ["gemma3-local-global", "mamba", "total"]
    assert all(line.split()[2:] == ["checks", "0", "differences"] for line in lines), lines


def test_recurrent_state_columns_and_older_files(tmp_path):
    """Rows carry measured and predicted recurrent state; a CSV from before those columns still resumes for a model
    without recurrent layers, and is refused, untouched, for one with them."""
    import json
    from measured.validate import ARCHS
    cfg = tmp_path / "mamba.json"
    cfg.write_text(json.dumps(ARCHS["mamba"]))
    out = tmp_path / "m.csv"
    r = kvsim("measure", "--model", str(cfg), "--policy", "full;int8:state=true", "--seq", "12", "--gen", "3",
              "--repeats", "1", "--warmup", "0", "--out", str(out))
    assert r.returncode == 0, r.stderr
    got = rows(out)
    assert all(x["state_bytes"] == x["state_bytes_predicted"] != "0" for x in got)
    assert int(got[1]["state_bytes"]) < int(got[0]["state_bytes"])
    old = tmp_path / "old.csv"
    old.write_text(",".join(runner.LEGACY_COLUMNS) + "\n")
    before = old.read_bytes()
    r = kvsim("measure", "--model", str(cfg), "--seq", "12", "--gen", "2", "--repeats", "1", "--out", str(old),
              "--resume")
    assert r.returncode == 2 and "state columns" in r.stderr and old.read_bytes() == before
    r = kvsim("measure", "--model", "gpt2", "--seq", "12", "--gen", "2", "--repeats", "1", "--warmup", "0",
              "--out", str(old), "--resume")
    assert r.returncode == 0, r.stderr
    assert len(rows(old)) == 1 and "state_bytes" not in rows(old)[0]


def test_estimate_predicts_a_sweep_and_measures_nothing(tmp_path):
    out = tmp_path / "never.csv"
    r = kvsim("measure", "--model", "smollm2-135m", "--policy", "full;int4", "--seq", "128,2048", "--batch", "1,8",
              "--gen", "16", "--repeats", "2", "--out", str(out), "--estimate", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("estimate smollm2-135m: 8 points, ") and not out.exists()
    from kvsim import Workload, load_hardware, load_model, load_profile, predict
    from measured.runner import estimate
    prof, spec, hw = load_profile("cpu"), load_model("smollm2-135m"), load_hardware("cpu")
    got = estimate(spec, [parse_composition([])], [2048], 16, [8], "fp32", 2, 0, prof, hw)["seconds"]
    pr = predict(spec, hw, None, Workload(prompt=2048, gen=16, batch=8, kv_dtype="fp32", weight_dtype="fp32"), prof)
    assert got == pytest.approx(2 * float(pr.ttft_s + 15 * pr.tpot_s))


def test_rows_name_their_decode_executor(tmp_path, monkeypatch):
    out = tmp_path / "m.csv"
    from measured.decode import NATIVE
    for choice, want in (("native", NATIVE), ("torch", "torch")):
        monkeypatch.setenv("KVSIM_ATTENTION", choice)
        r = kvsim("measure", "--model", "gpt2", "--seq", "24", "--gen", "2", "--repeats", "1", "--warmup", "0",
                  "--out", str(out), "--resume")
        assert r.returncode == 0, r.stderr
        assert rows(out)[-1]["executor"] == want
        out.unlink()
