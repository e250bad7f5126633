"""kvsim check: claim tables read, each verdict kind, units both ways, invalid rows, unusable input, and the
worked examples in examples/claims with their verdicts pinned."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from kvsim import Workload, load_hardware, load_model, predict
from kvsim.check import check, exit_code, parse
from kvsim.cli import main
from kvsim.errors import KvsimError
from kvsim.profile import DATASHEET

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "claims"
HEAD = "label,model,hardware,policy,seq,gen,batch,tp,baseline"


def verdicts(text: str, **kw) -> dict[tuple[str, str], object]:
    return {(v.label, v.claim): v for v in check(parse(text), **kw)}


def run(capsys, *args) -> tuple[int, str, str]:
    rc = main(["check", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------------------------------------ verdicts
def test_kv_bytes_exact_both_units_and_batch_search():
    kv = 2 * 32 * 32 * 128 * 2 * 4095  # Llama-2-7B in fp16: K and V, 32 layers x 32 heads x 128, 4,095 tokens
    v = verdicts(f"label,model,hardware,seq,gen,batch,kv_cache_bytes,kv_cache_bytes_GiB,kv_cache_bytes_GB\n"
                 f"exact,llama-2-7b,h100-sxm,4095,1,1,{kv},,\n"
                 f"gib-as-gb,llama-2-7b,h100-sxm,4095,1,2,,,{2 * kv / 2**30:.4f}\n"
                 f"wrong,llama-2-7b,h100-sxm,4095,1,1,{kv // 2},,\n"
                 f"batch?,llama-2-7b,h100-sxm,4095,1,,,{4 * kv / 2**30:.4f},\n")
    assert v["exact", "kv_cache_bytes"].verdict == "consistent"
    assert v["exact", "kv_cache_bytes"].bound == kv
    g = v["gib-as-gb", "kv_cache_bytes"]
    assert g.verdict == "consistent" and g.condition == "only if 'GB' means GiB"
    assert v["wrong", "kv_cache_bytes"].verdict == "inconsistent"
    b = v["batch?", "kv_cache_bytes"]
    assert b.verdict == "consistent" and b.condition == "only if batch = 4"


def test_time_bounds_are_the_datasheet_roofline_at_efficiency_one():
    # the bound check uses: max(FLOP / peak, bytes / bandwidth) of each phase, never above kvsim's own roofline
    assert all(getattr(DATASHEET, f) == 1.0 for f in ("mem_efficiency", "kv_efficiency", "compute_efficiency",
                                                     "policy_efficiency", "moe_efficiency", "comm_efficiency"))
    assert DATASHEET.step_overhead_s == DATASHEET.kernel_overhead_s == DATASHEET.layer_overhead_s == 0
    p = predict(load_model("llama-3-8b"), load_hardware("h100-sxm"), None, Workload(prompt=2048, gen=64, batch=8))
    v = verdicts("label,model,hardware,seq,gen,batch,ttft_ms,tpot_ms\n"
                 "r,llama-3-8b,h100-sxm,2048,64,8,1000,1000\n")
    ttft, tpot = v["r", "ttft_s"].bound, v["r", "tpot_s"].bound
    hw = load_hardware("h100-sxm")
    assert ttft == pytest.approx(max(p.prefill_flops[()] / hw.peak_flops("bf16"), p.prefill_bytes[()] / hw.memory_bandwidth))
    assert ttft <= p.ttft_s[()] * (1 + 1e-12) and tpot <= p.tpot_s[()] * (1 + 1e-12)


def test_impossible_times_and_throughput():
    v = verdicts("label,model,hardware,seq,gen,batch,ttft_ms,tpot_us,decode_tokens_per_s,throughput_tokens_per_s\n"
                 "fast,llama-2-7b,a100-80gb,2048,128,1,1,100,,\n"
                 "many,llama-2-7b,a100-80gb,2048,128,1,,,1000,1000\n"
                 "ok,llama-2-7b,a100-80gb,2048,128,1,500,20000,50,40\n")
    for claim in ("ttft_s", "tpot_s"):
        assert v["fast", claim].verdict == "impossible" and v["fast", claim].margin < -0.9
        assert v["fast", claim].relation == "claimed >= bound"
    for claim in ("decode_tokens_per_s", "throughput_tokens_per_s"):
        assert v["many", claim].verdict == "impossible" and v["many", claim].relation == "claimed <= bound"
        assert v["ok", claim].verdict == "consistent"
    assert v["ok", "ttft_s"].verdict == v["ok", "tpot_s"].verdict == "consistent"
    assert "datasheet, efficiency 1" in v["fast", "ttft_s"].explanation


def test_profile_band_separates_inconsistent_from_impossible():
    """With a calibrated profile, a TPOT faster than its prediction less its worst held-out error is
    inconsistent with the profile's measurements; only one faster than the datasheet floor is impossible."""
    from kvsim import Workload, load_hardware, load_model, predict
    from kvsim.profile import estimate_error, load_profile
    prof = load_profile("h100-sxm-vllm")
    p = predict(load_model("llama-3-8b"), load_hardware("h100-sxm"), None, Workload(prompt=1024, gen=16, batch=1),
                prof, "vllm")
    est = float(p.tpot_s)
    floor = max(float(p.decode_flops) / max(p._engine.cost.raw_peak, p._engine.cost.raw_gemm_peak),
                float(p.decode_bytes) / p._engine.cost.raw_bw)
    err = estimate_error(prof, "decode", ("gemm", "decode_attention"))
    assert 0 < err < 1 and floor < est * (1 - err)
    claims = {"slow": est * 2, "near": est * (1 - err / 2), "fast": (est * (1 - err) + floor) / 2, "magic": floor / 2}
    rows = "".join(f"{k},llama-3-8b,h100-sxm,1024,16,1,vllm,{t * 1e3!r}\n" for k, t in claims.items())
    v = verdicts("label,model,hardware,seq,gen,batch,engine,tpot_ms\n" + rows, profile=prof, tolerance=0.0)
    got = {k: v[k, "tpot_s"].verdict for k in claims}
    assert got == {"slow": "consistent", "near": "consistent", "fast": "inconsistent", "magic": "impossible"}
    assert "held-out error" in v["fast", "tpot_s"].explanation and "physical floor" in v["fast", "tpot_s"].explanation
    # throughput mirrors it: the most tokens/s the band allows, then the datasheet's
    rate = {"fast": 1 / ((est * (1 - err) + floor) / 2), "magic": 2 / floor}
    rows = "".join(f"{k},llama-3-8b,h100-sxm,1024,16,1,vllm,{r!r}\n" for k, r in rate.items())
    v = verdicts("label,model,hardware,seq,gen,batch,engine,decode_tokens_per_s\n" + rows, profile=prof,
                 tolerance=0.0)
    assert (v["fast", "decode_tokens_per_s"].verdict, v["magic", "decode_tokens_per_s"].verdict) == \
        ("inconsistent", "impossible")


def test_relative_claims():
    v = verdicts(f"{HEAD},compression_ratio,memory_reduction_pct,speedup\n"
                 "base,llama-2-7b,a100-80gb,,4000,64,8,1,,,,\n"
                 "h2o,llama-2-7b,a100-80gb,h2o:budget=500,4000,64,8,1,base,8,,\n"
                 "h2o-too-much,llama-2-7b,a100-80gb,h2o:budget=500,4000,64,8,1,base,20,,\n"
                 "h2o-too-little,llama-2-7b,a100-80gb,h2o:budget=500,4000,64,8,1,base,2,,\n"
                 "itself,llama-2-7b,a100-80gb,,4000,64,8,1,itself,,-700,\n"
                 "kv-only,llama-2-7b,a100-80gb,h2o:budget=500,4000,64,8,1,base,,80,\n"
                 "beyond,llama-2-7b,a100-80gb,h2o:budget=500,4000,64,8,1,base,,95,\n"
                 "fast,llama-2-7b,a100-80gb,h2o:budget=500,4000,64,8,1,base,,,10\n"
                 "fine,llama-2-7b,a100-80gb,h2o:budget=500,4000,64,8,1,base,,,1.5\n"
                 "nobase,llama-2-7b,a100-80gb,h2o:budget=500,4000,64,8,1,,,,1.5\n")
    assert v["h2o", "compression_ratio"].verdict == "consistent"
    assert v["h2o-too-much", "compression_ratio"].verdict == "impossible"
    assert v["h2o-too-little", "compression_ratio"].verdict == "inconsistent"
    assert v["itself", "memory_reduction"].verdict == "inconsistent" and v["itself", "memory_reduction"].bound == 0
    assert v["kv-only", "memory_reduction"].verdict == "consistent"
    assert v["kv-only", "memory_reduction"].condition == "only if the reduction is of the KV cache alone"
    assert v["beyond", "memory_reduction"].verdict == "impossible"
    fast = v["fast", "speedup"]
    assert fast.verdict == "impossible" and "bytes" in fast.explanation and "roofline ratio" in fast.explanation
    assert v["fine", "speedup"].verdict == "consistent"
    assert v["nobase", "speedup"].verdict == "unverifiable" and "baseline" in v["nobase", "speedup"].explanation


def test_compression_without_baseline_is_against_the_full_cache():
    v = verdicts("label,model,hardware,policy,seq,compression_ratio\n"
                 "kivi,llama-2-7b,h100-sxm,kivi:bits=2,4000,8\n")
    # 2-bit payload is 8x fewer bits, but scales, zero points and the fp16 residual are not free
    assert v["kivi", "compression_ratio"].verdict == "impossible"
    assert v["kivi", "compression_ratio"].bound < 8


def test_peak_memory_below_weights_or_above_device():
    v = verdicts("label,model,hardware,seq,gen,batch,peak_memory_bytes_GB\n"
                 "low,llama-2-7b,a100-80gb,1024,1,1,10\n"
                 "high,llama-2-7b,a100-80gb,1024,1,1,90\n"
                 "ok,llama-2-7b,a100-80gb,1024,1,1,16\n")
    assert v["low", "peak_memory_bytes"].verdict == "impossible"
    assert v["high", "peak_memory_bytes"].verdict == "impossible"
    assert v["ok", "peak_memory_bytes"].verdict == "consistent"


def test_params_and_rounding_of_the_printed_figure():
    v = verdicts("label,model,hardware,params_B\na,llama-2-7b,h100-sxm,7\nb,llama-2-7b,h100-sxm,7.5\n")
    assert v["a", "params"].verdict == "consistent"  # 6.74B is '7' to one digit
    assert v["a", "params"].condition == "only within the rounding of '7' as printed"
    assert v["b", "params"].verdict == "inconsistent"


def test_unverifiable_says_what_is_missing():
    v = verdicts("label,model,hardware,seq,ttft_ms\nnoseq,llama-2-7b,h100-sxm,,10\nnohw,llama-2-7b,,100,10\n")
    assert v["noseq", "ttft_s"].verdict == "unverifiable" and "seq" in v["noseq", "ttft_s"].explanation
    assert v["nohw", "ttft_s"].verdict == "unverifiable" and "hardware" in v["nohw", "ttft_s"].explanation


# --------------------------------------------------------------------------------------------- invalid rows
def test_invalid_rows_are_verdicts_not_crashes():
    v = verdicts("label,model,hardware,policy,seq,gen,tp,kv_cache_bytes\n"
                 "preset,no-such-model,h100-sxm,,100,1,1,1\n"
                 "heads,llama-2-7b,h100-sxm,,100,1,3,1\n"
                 "context,llama-2-7b,h100-sxm,,4096,8,1,1\n"
                 "policy,llama-2-7b,h100-sxm,nosuch:x=1,100,1,1,1\n"
                 "nomodel,,h100-sxm,,100,1,1,1\n")
    assert {k: x.verdict for k, x in v.items()} == {(r, "kv_cache_bytes"): "invalid" for r in
                                                   ("preset", "heads", "context", "policy", "nomodel")}
    assert "unknown model preset" in v["preset", "kv_cache_bytes"].explanation
    assert "does not divide" in v["heads", "kv_cache_bytes"].explanation
    assert "maximum context" in v["context", "kv_cache_bytes"].explanation
    assert "were it allowed" in v["context", "kv_cache_bytes"].explanation  # physics still reported


def test_hostile_rows_give_verdicts_and_valid_json(capsys, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("label,model,hardware,policy,seq,gen,batch,ttft_s,compression_ratio,memory_ratio,baseline,"
                     "kv_cache_bytes,accuracy\n"
                     "zero,llama-2-7b,h100-sxm,,100,1,1,0,,,,,nan\n"
                     "ssm,mamba-2.8b,h100-sxm,,100,1,1,,5,5,zero,0,\n"
                     "plus,llama-2-7b,h100-sxm,+,100,1,1,1,,,,,\n"
                     "huge,llama-2-7b,h100-sxm,,100,1,900719925474099,1,,,,,\n"
                     "nofit,llama-3.1-405b,l4,,100,1,,,,,,51609600,\n")
    v = {(x.label, x.claim): x for x in check(parse(table.read_text()))}
    assert v["zero", "ttft_s"].verdict == "impossible"  # a written 0 carries no rounding
    assert v["ssm", "kv_cache_bytes"].verdict == "consistent"  # an SSM keeps state, not KV
    assert v["ssm", "compression_ratio"].verdict == "unverifiable"
    assert v["ssm", "memory_ratio"].verdict == "impossible" and "undefined" in v["ssm", "memory_ratio"].explanation
    assert v["plus", "ttft_s"].verdict == "invalid" and "empty part" in v["plus", "ttft_s"].explanation
    assert v["huge", "ttft_s"].verdict == "invalid" and "2**53" in v["huge", "ttft_s"].explanation
    nofit = v["nofit", "kv_cache_bytes"]
    assert nofit.verdict == "consistent" and "not even batch 1 fits" in nofit.condition
    rc, out, err = run(capsys, str(table), "--format", "json")
    assert rc == 1 and not err and "NaN" not in out and "Infinity" not in out
    assert json.loads(out)


# ------------------------------------------------------------------------------------------------- quality
def test_quality_unverifiable_except_identical_figures_for_different_configurations():
    v = verdicts("label,model,hardware,policy,seq,accuracy,perplexity\n"
                 "full,llama-2-7b,h100-sxm,,1024,45.67,5.472\n"
                 "h2o,llama-2-7b,h100-sxm,h2o:budget=64,1024,45.67,6.1\n"
                 "full-again,llama-2-7b,a100-80gb,,1024,45.67,100\n"
                 "perfect,llama-2-7b,h100-sxm,h2o:budget=32,1024,,100\n")
    assert v["full", "accuracy"].verdict == "inconsistent" and "h2o" in v["full", "accuracy"].explanation
    assert v["h2o", "accuracy"].verdict == "inconsistent"
    assert v["h2o", "perplexity"].verdict == "unverifiable"
    assert v["perfect", "perplexity"].verdict == "unverifiable"  # a ceiling is not a copied cell
    assert v["full", "perplexity"].verdict == "unverifiable"


# -------------------------------------------------------------------------------------------- unusable input
@pytest.mark.parametrize("text, message", [
    ("label,model\n\"a,b\n", "not a readable CSV"),
    ("label,model,seq\na,llama-2-7b\n", "2 fields where the header has 3"),
    ("label,model,hardware,seq,ttft_hours\na,llama-2-7b,h100-sxm,10,1\n", "unknown unit 'hours'"),
    ("label,model,ttft_ms\na,llama-2-7b,fast\n", "cannot read 'fast' as a number"),
    ("label,model\na,x\na,y\n", "used twice"),
    ("name,value\na,1\n", "not a claim table"),
    ("label,model,baseline\na,x,b\n", "baseline 'b' is not a label"),
    ("label,model,ttft_s,ttft_ms\na,x,1,1000\n", "both give ttft_s"),
    ("", "empty"),
])
def test_unusable_tables_are_refused(text, message):
    with pytest.raises(KvsimError, match=message):
        parse(text)


def test_cli_exit_codes_and_formats(capsys, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("label,model,hardware,seq,gen,batch,kv_cache_bytes_MiB,note\n"
                    "a,llama-2-7b,h100-sxm,1024,1,1,512,kept\n")
    rc, out, err = run(capsys, str(good))
    assert rc == 0 and "consistent" in out and "note: kept" in out and not err
    rc, out, _ = run(capsys, str(good), "--format", "json")
    row = json.loads(out)[0]
    assert rc == 0 and {"label", "claim", "claimed", "verdict", "bound", "margin", "explanation"} <= set(row)
    assert row["extra"] == {"note": "kept"} and row["claimed"] == 512 * 2**20
    rc, out, _ = run(capsys, str(good), "--format", "csv")
    assert rc == 0 and out.splitlines()[0].endswith(",note")
    rc, out, _ = run(capsys, str(good), "--format", "markdown")
    assert rc == 0 and out.count("| a |") == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("label,model,hardware,seq,ttft_us\na,llama-2-7b,h100-sxm,4096,1\n")
    assert run(capsys, str(bad))[0] == 1
    binary = tmp_path / "x.csv"
    binary.write_bytes(b"\x00\x01\xff\xfe")
    rc, out, err = run(capsys, str(binary))
    assert rc == 2 and not out and err.count("\n") == 1 and "not a CSV" in err
    rc, _, err = run(capsys, str(tmp_path))
    assert rc == 2 and "not a regular file" in err
    rc, _, err = run(capsys, str(good), "--tolerance", "2")
    assert rc == 2 and "--tolerance" in err


def test_cli_reads_stdin(capsys, monkeypatch):
    data = b"label,model,hardware,seq,gen,batch,kv_cache_bytes_MiB\na,llama-2-7b,h100-sxm,1024,1,1,512\n"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    rc, out, _ = run(capsys, "-")
    assert rc == 0 and "consistent" in out


# ------------------------------------------------------------------------------------------ worked examples
PINNED = {
    "vllm_paper.csv": {("opt13b-one-token", "kv_cache_bytes"): ("consistent", "only if 'KB' means KiB"),
                       ("opt13b-one-request", "kv_cache_bytes"): ("consistent",
                                                                  "only within the rounding of '1.6' as printed")},
    "mistral_paper.csv": {("full-attention-32k", "(none)"): ("unverifiable", ""),
                          ("rolling-buffer-32k", "compression_ratio"): ("consistent", "")},
    "kivi_paper.csv": {("fp16", "(none)"): ("unverifiable", ""),
                       ("kivi-2bit", "memory_ratio"): ("consistent", "only if batch in 170..268"),
                       ("kivi-2bit", "speedup"): ("consistent", "only if batch in 826..1,114")},
    "gpt_fast.csv": {(label, "throughput_tokens_per_s"): ("consistent", "") for label in (
        "llama2-7b-base", "llama2-7b-int8", "llama2-7b-int4", "llama2-70b-int8", "llama2-70b-int4", "llama2-7b-tp2",
        "llama2-7b-tp4", "llama2-7b-tp8", "llama2-70b-tp2", "llama2-70b-tp4", "llama2-70b-tp8")},
    "tensorrt_llm.csv": {
        ("llama3.1-8b-128/128", "throughput_tokens_per_s"): ("consistent", "only if batch between 107 and 4,075"),
        ("llama3.1-8b-128/2048", "throughput_tokens_per_s"): ("consistent", "only if batch in 126..479"),
        ("llama3.1-8b-2048/2048", "throughput_tokens_per_s"): ("consistent", "only if batch in 61..254"),
        ("llama3.1-8b-20000/2000", "throughput_tokens_per_s"): ("consistent", "only if batch in 10..47"),
        ("llama3.1-405b-128/2048", "throughput_tokens_per_s"): ("consistent", "only if batch in 71..439"),
        ("llama3.1-405b-2048/2048", "throughput_tokens_per_s"): ("consistent", "only if batch in 43..233")},
    "h2o_paper.csv": {
        **{(f"t4-{s}", "throughput_tokens_per_s"): ("consistent", "") for s in (
            "accelerate-512+32", "flexgen-512+32", "h2o-512+32", "accelerate-512+512", "flexgen-512+512",
            "h2o-512+512", "flexgen-512+1024", "h2o-512+1024")},
        ("a100-flexgen-13b-5000+5000", "e2e_s"): ("invalid", ""),
        ("a100-h2o-13b-5000+5000", "e2e_s"): ("invalid", ""),
        ("a100-flexgen-2048+2048-b24", "throughput_tokens_per_s"): ("invalid", ""),
        ("a100-flexgen-2048+2048-b24", "e2e_s"): ("invalid", ""),
        ("a100-h2o-2048+2048-b24", "throughput_tokens_per_s"): ("invalid", ""),
        ("a100-h2o-2048+2048-b24", "e2e_s"): ("invalid", ""),
        ("a100-h2o-2048+2048-b64", "throughput_tokens_per_s"): ("invalid", ""),
        ("a100-h2o-2048+2048-b64", "speedup"): ("invalid", "")},
}


def test_every_example_is_pinned():
    assert sorted(PINNED) == sorted(p.name for p in EXAMPLES.glob("*.csv"))


@pytest.mark.parametrize("name", sorted(PINNED))
def test_worked_examples(name, capsys):
    from kvsim.check import read
    got = {(v.label, v.claim): (v.verdict, v.condition) for v in check(read(str(EXAMPLES / name)))}
    assert got == PINNED[name]
    for v in check(read(str(EXAMPLES / name))):  # every row cites its source
        assert v.extra.get("source"), (name, v.label)
    rc, out, err = run(capsys, str(EXAMPLES / name))
    assert rc == exit_code(check(read(str(EXAMPLES / name)))) and not err


def test_batch_grid_is_vectorised_not_a_loop():
    """One predict call per configuration and batch grid, whatever the number of claims."""
    from kvsim.check.judge import Checker
    ck = Checker(parse("label,model,hardware,seq,gen,ttft_ms,tpot_ms,decode_tokens_per_s,kv_cache_bytes_GB\n"
                       "a,llama-3-8b,h100-sxm,1024,64,100,10,100,1\n"))
    ck.run()
    grids = [k[1] for k in ck._preds]
    assert len(ck._preds) == 2 and max(len(g) for g in grids) > 100  # batch 1 (max batch) and the grid
    assert np.all(np.diff(max(grids, key=len)) > 0)
