"""Quality on real weights: perplexity while compressing, and passkey retrieval."""

import math

from kvsim import parse_composition
from measured.quality import passkey, passkey_keys, perplexity
from measured.text import corpus


def test_perplexity_full_and_compressed(smollm2):
    model, tok = smollm2
    text = corpus(8000)
    full = perplexity(model, tok, parse_composition([]), text, 96, 32, False)
    small = perplexity(model, tok, parse_composition(["streamingllm:sinks=4,window=28"]), text, 96, 32, False)
    assert 1 < full["ppl"] < 60 and math.isfinite(small["ppl"])
    assert small["kv_cache_bytes"] < full["kv_cache_bytes"]


def test_passkey_full_cache_finds_the_key(smollm2):
    model, tok = smollm2
    hits = [passkey(model, tok, parse_composition([]), 256, d, k, False)["correct"]
            for d in (0.2, 0.8) for k in passkey_keys(2)]
    assert sum(hits) >= 3


def test_text_is_clean_prose():
    text = corpus(5000)
    assert "[[" not in text and "{{" not in text and "<ref" not in text and len(text) >= 5000


def test_quality_rows_predict_the_bytes_they_measure(tmp_path):
    import csv

    from tests.inprocess import run
    out = tmp_path / "q.csv"
    r = run("quality", "--policy", "full;h2o:budget=64;int8", "--context", "96", "--continuation", "16",
            "--passkey-lengths", "160", "--depths", "0.5", "--keys", "1", "--out", out)
    assert r.returncode == 0, r.stderr
    # progress as plain lines (not a terminal), then the summary table on stdout
    assert "quality 6/6" in r.stderr and "| smollm2-135m | `full` |" in r.stdout
    assert sum(line.startswith("| smollm2-135m |") for line in r.stdout.splitlines()) == 3
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {x["metric"] for x in rows} == {"perplexity", "passkey"} and len(rows) == 6
    assert all(x["kv_cache_bytes"] == x["kv_cache_bytes_predicted"] for x in rows), rows


def test_learned_scorer_trains_on_harness_scores(smollm2):
    import torch
    from measured.learned import collect, train
    model, tok = smollm2
    weights = train(collect(model, tok, 64, False), hidden=8, steps=3)
    assert len(weights) == model.config.num_hidden_layers
    assert all(torch.isfinite(t).all() and not t.requires_grad for ws in weights.values() for t in ws)


def test_summary_puts_bytes_perplexity_and_passkey_side_by_side(tmp_path):
    import pandas as pd
    from measured import summary
    rows = [dict(model="m", policy="full", metric="perplexity", value=10.0, kv_cache_bytes=2**21, status="ok")]
    rows += [dict(model="m", policy="full", metric="passkey", value=v, kv_cache_bytes=2**20, status="ok")
             for v in (1.0, 0.0, 1.0, 1.0)]
    text = summary.markdown(pd.DataFrame(rows))
    assert "| m | `full` | 2.0 | 10.000 | 0.75 (4) |" in text
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert summary.main([str(bad)]) == 2 and summary.main([str(tmp_path / "missing.csv")]) == 2
