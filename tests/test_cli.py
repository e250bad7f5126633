"""The command line, run as a user would: exit codes, one-line errors, JSON keys, sweep rows."""

import csv
import io
import json
import subprocess
import sys

import pytest

REQUIRED_JSON = {"kv_cache_bytes", "policy_state_bytes", "weights_bytes", "peak_memory_bytes", "ttft_s", "tpot_s", "decode_tokens_per_s",
                 "max_batch", "bound"}


def run(*args, ok=True):
    r = subprocess.run([sys.executable, "-m", "kvsim.cli", *args], capture_output=True, text=True, timeout=120)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def test_predict_from_sizes_is_the_issue_example():
    out = run("predict", "--heads", "32", "--kv-heads", "8", "--seq", "8192", "--format", "json").stdout
    d = json.loads(out)
    assert REQUIRED_JSON <= set(d)
    assert d["kv_cache_bytes"] == 32 * 8 * 128 * 8192 * 2 * 2  # 1 GiB
    assert d["bound"] in ("memory", "compute", "overhead", "host-link", "interconnect")


def test_predict_table_and_csv():
    assert "KV cache" in run("predict", "--model", "gpt2", "--seq", "512").stdout
    rows = list(csv.DictReader(io.StringIO(run("predict", "--model", "gpt2", "--format", "csv").stdout)))
    assert len(rows) == 1 and int(rows[0]["kv_cache_bytes"]) > 0


def test_policy_composition_and_profile(tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"params": {"name": "t", "mem_efficiency": 0.5}, "heldout": {}}))
    a = json.loads(run("predict", "--model", "llama-3-8b", "--seq", "4096", "--gen", "64", "--format", "json",
                       "--policy", "h2o:budget=1024,recent=128", "--policy", "kivi:bits=2").stdout)
    b = json.loads(run("predict", "--model", "llama-3-8b", "--seq", "4096", "--gen", "64", "--format", "json",
                       "--policy", "h2o:budget=1024,recent=128", "--policy", "kivi:bits=2",
                       "--profile", str(prof)).stdout)
    assert a["kv_cache_bytes"] == b["kv_cache_bytes"] and b["tpot_s"] > a["tpot_s"] * 1.9


def test_sweep_ranges_lists_and_alternatives():
    out = run("sweep", "--model", "llama-3-8b", "--seq", "1024..8192*2", "--batch", "1,4",
              "--policy", "full;h2o:budget=512", "--policy", "none;kivi").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 4 * 2 * 2 * 2
    assert {r["seq"] for r in rows} == {"1024", "2048", "4096", "8192"}
    assert REQUIRED_JSON <= set(rows[0])
    step = list(csv.DictReader(io.StringIO(run("sweep", "--seq", "5..20+5", "--heads", "8,16").stdout)))
    assert [r["seq"] for r in step] == ["5", "10", "15", "20"] * 2
    assert [r["model"] for r in step][::4] == ["custom-L32-H8-KV8-D128", "custom-L32-H16-KV16-D128"]


def test_sweep_out_is_atomic(tmp_path):
    target = tmp_path / "s.csv"
    target.write_text("precious")
    r = run("sweep", "--seq", "1..4+1", "--batch", "0", "--out", str(target), ok=False)
    assert r.returncode == 2 and target.read_text() == "precious"  # a failed sweep leaves the old file
    run("sweep", "--seq", "1..4+1", "--out", str(target))
    assert len(target.read_text().splitlines()) == 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_list_commands():
    assert "llama-3-8b" in run("list", "models").stdout
    assert "h100-sxm" in run("list", "hardware").stdout
    out = run("list", "policies").stdout
    assert "h2o" in out and "budget" in out and "kivi" in out


@pytest.mark.parametrize("args, message", [
    (["predict", "--model", "llama-9"], "unknown model preset"),
    (["predict", "--heads", "30", "--kv-heads", "8"], "multiple of KV heads"),
    (["predict", "--layers", "0"], "must be positive"),
    (["predict", "--seq", "-5"], "prompt must be >= 1"),
    (["predict", "--policy", "h2o:budgt=3"], "no parameter"),
    (["predict", "--policy", "zip"], "unknown policy"),
    (["predict", "--hardware", "h900"], "unknown hardware preset"),
    (["predict", "--model", "gpt2", "--heads", "8"], "give one of"),
    (["predict", "--seq", "1,2"], "use `kvsim sweep`"),
    (["sweep", "--seq", "10..1*2"], "runs backwards"),
    (["sweep", "--seq", "1..10*1"], "never reaches"),
    (["predict", "--hf-config", "/nonexistent/config.json"], "not found"),
    (["predict", "--frobnicate"], "unrecognized arguments"),
    (["nonsense"], "invalid choice"),
    (["predict", "--kv-dtype", "nope"], "unknown dtype"),
    (["sweep", "--kv-dtype", "nope"], "unknown dtype"),
    (["predict", "--policy", "snapkv:budget=99999999999999999999999"], "at most 2**53"),
    (["predict", "--policy", "pyramidkv:budget=512,ratios=1,1e400"], "at most 2**53"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    r = run(*args, ok=False)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if not l.startswith("note:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_malformed_config_json(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"model_type": "llama", "hidden_size": 64,')
    r = run("predict", "--hf-config", str(p), ok=False)
    assert r.returncode == 2 and "malformed" in r.stderr and "Traceback" not in r.stderr


def test_budget_larger_than_sequence_is_clamped_and_said():
    r = run("predict", "--seq", "100", "--policy", "h2o:budget=1024")
    assert "clamped" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["predict", "--seq", "1e18"], "at most 2**53"),
    (["predict", "--batch", "1e15"], "beyond 2**53 bytes"),
    (["predict", "--model", "llama-3-70b", "--tp", "3"], "query heads"),
    (["sweep", "--seq", "1..1e400*2"], "cannot read"),
])
def test_unrepresentable_inputs_are_refused_in_one_line(args, message):
    r = run(*args, ok=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [l for l in r.stderr.splitlines() if not l.startswith("note:")]
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_max_context_is_a_number_at_large_batches():
    # Llama-2-7B fp16 at batch 512 used to report 59,382,906,711 tokens (an int64 wrap in the search)
    d = json.loads(run("predict", "--model", "llama-2-7b", "--batch", "512", "--format", "json").stdout)
    assert 0 < d["max_context"] < 1024 and not d["fits"]


def test_gen_1_has_no_decode_figures():
    # gen 1: the prefill yields the only token; no decode step happens, so no TPOT or decode throughput
    table = run("predict", "--model", "gpt2", "--gen", "1").stdout
    assert "TPOT" not in table and "decode throughput" not in table and "TTFT" in table
    assert "TPOT" in run("predict", "--model", "gpt2", "--gen", "2").stdout
    d = json.loads(run("predict", "--model", "gpt2", "--gen", "1", "--format", "json").stdout)
    assert d["tpot_s"] is None and d["decode_tokens_per_s"] is None and d["ttft_s"] > 0
    assert d["bound"] == d["bound_prefill"]
    rows = list(csv.DictReader(io.StringIO(run("sweep", "--model", "gpt2", "--gen", "1,2", "--seq", "64").stdout)))
    assert [r["tpot_s"] == "" for r in rows] == [True, False]
    assert all("nan" not in v.lower() and "inf" not in v.lower() for r in rows for v in r.values())


def test_bare_kvsim_and_bare_list_show_what_there_is(capsys):
    from kvsim.cli import main
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "predict" in out and "calibrate" in out and "measure" in out
    assert main(["list"]) == 0
    assert "profiles" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("kvsim ")


def test_a_missing_extra_is_named_in_one_line(monkeypatch, capsys):
    import importlib

    from kvsim.cli import main
    real = importlib.import_module

    def fake(name, *a):
        if name == "measured.cli":
            err = ImportError("No module named 'torch'")
            err.name = "torch"
            raise err
        return real(name, *a)
    monkeypatch.setattr(importlib, "import_module", fake)
    assert main(["measure"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'measure' extra" in err[0] and "torch" in err[0]
