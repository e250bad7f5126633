"""Library calls the explorer makes, shaped into tidy DataFrames. No arithmetic of its own: every number is
kvsim's (predict) or measured/'s (results CSVs)."""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import kvsim
from kvsim import Profile, Workload, predict
from kvsim.errors import KvsimError
from kvsim.units import GiB

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "calibrate" / "profiles"
RESULTS = ROOT / "measured" / "results"
# Presets shown side by side in the architecture comparison.
ARCHITECTURES = {"llama-2-7b": "MHA", "llama-3-8b": "GQA", "mistral-7b-v0.1": "GQA + sliding window",
                 "gemma-2-9b": "local/global", "deepseek-v2-lite": "MLA", "mamba-2.8b": "SSM",
                 "jamba-v0.1": "hybrid SSM + attention"}


@dataclass(frozen=True)
class Setup:
    """Everything a prediction depends on, as plain hashable values (so results can be cached)."""

    model_key: str  # preset name, "custom:<json of sizes>" or "config:<json>"
    hardware: str
    profile: str  # "" for the datasheet roofline, else a profile file name
    seq: int
    gen: int
    batch: int
    tp: int
    kv_dtype: str


def model_spec(key: str) -> kvsim.ModelSpec:
    if key.startswith("custom:"):
        s = json.loads(key[len("custom:"):])
        return kvsim.uniform("custom", n_layers=s["layers"], hidden=s["hidden"], vocab=s["vocab"],
                             n_heads=s["heads"], n_kv_heads=s["kv_heads"], head_dim=s["head_dim"],
                             intermediate=s["intermediate"], window=s["window"], weight_dtype="fp16")
    if key.startswith("config:"):
        return kvsim.from_hf_config(json.loads(key[len("config:"):]), name="uploaded")
    return kvsim.load_model(key)


def profiles() -> list[str]:
    return sorted(p.name for p in PROFILES.glob("*.json"))


def profile(name: str) -> Profile | None:
    return kvsim.load_profile(PROFILES / name) if name else None


def profile_summary(name: str) -> dict:
    data = json.loads((PROFILES / name).read_text())
    return {"device": data.get("device") or data.get("params", {}).get("device", ""),
            "heldout": data.get("heldout", {}), "hardware": data.get("hardware", "")}


def _predict(setup: Setup, spec: str, **overrides) -> kvsim.Prediction:
    wl = dict(prompt=setup.seq, gen=setup.gen, batch=setup.batch, tp=setup.tp, kv_dtype=setup.kv_dtype or None)
    wl.update(overrides)
    return predict(model_spec(setup.model_key), kvsim.load_hardware(setup.hardware),
                   kvsim.parse_composition(spec.split(" + ") if spec != "full" else []), Workload(**wl),
                   profile(setup.profile))


def seq_grid(seq: int, points: int) -> np.ndarray:
    hi = max(4 * seq, 8192)
    return np.unique(np.geomspace(16, hi, points).astype(np.int64))


def batch_grid(points: int, hi: int = 1024) -> np.ndarray:
    return np.unique(np.geomspace(1, hi, points).astype(np.int64))


def vs_sequence(setup: Setup, specs: tuple[str, ...], points: int = 200) -> pd.DataFrame:
    seqs = seq_grid(setup.seq, points)
    frames = []
    for spec in specs:
        pr = _predict(setup, spec, prompt=seqs)
        frames.append(pd.DataFrame({"policy": spec, "seq": seqs, "kv_gib": pr.kv_cache_bytes / GiB,
                                    "peak_gib": pr.peak_memory_bytes / GiB, "ttft_ms": pr.ttft_s * 1e3,
                                    "tpot_ms": pr.tpot_s * 1e3, "fits": pr.fits}))
    return pd.concat(frames, ignore_index=True)


def vs_batch(setup: Setup, specs: tuple[str, ...], points: int = 60) -> pd.DataFrame:
    batches = batch_grid(points)
    frames = []
    for spec in specs:
        pr = _predict(setup, spec, batch=batches)
        frames.append(pd.DataFrame({"policy": spec, "batch": batches, "tokens_per_s": pr.decode_tokens_per_s,
                                    "tpot_ms": pr.tpot_s * 1e3, "fits": pr.fits,
                                    "max_batch": int(np.asarray(pr.max_batch).ravel()[0])}))
    return pd.concat(frames, ignore_index=True)


def summary(setup: Setup, specs: tuple[str, ...]) -> pd.DataFrame:
    """One row per policy at the chosen workload."""
    hw = kvsim.load_hardware(setup.hardware)
    rows = []
    for spec in specs:
        pr = _predict(setup, spec)
        mc = int(np.asarray(pr.max_context()).ravel()[0])
        rows.append({
            "policy": spec, "kv_gib": float(pr.kv_cache_bytes) / GiB, "kv_peak_gib": float(pr.kv_peak_bytes) / GiB,
            "weights_gib": float(pr.weights_bytes_per_device) / GiB,
            "activations_gib": float(pr.activation_peak_bytes) / GiB,
            "peak_gib": float(pr.peak_memory_bytes) / GiB, "capacity_gib": pr.capacity_bytes / GiB,
            "fits": bool(pr.fits), "max_batch": int(pr.max_batch), "max_context": None if mc == 2**63 - 1 else mc,
            "ttft_ms": float(pr.ttft_s) * 1e3, "tpot_ms": float(pr.tpot_s) * 1e3,
            "tokens_per_s": float(pr.decode_tokens_per_s), "bound": str(pr.bound_decode),
            "prefill_flops": float(pr.prefill_flops), "prefill_bytes": float(pr.prefill_bytes),
            "decode_flops": float(pr.decode_flops), "decode_bytes": float(pr.decode_bytes),
            "peak_flops": hw.peak_flops(pr._engine.cost.act_dtype), "bandwidth": hw.memory_bandwidth,
            "notes": "\n".join(pr.notes),  # notes contain '; ' themselves: one per line
        })
    return pd.DataFrame(rows)


def architectures(setup: Setup, points: int = 60) -> pd.DataFrame:
    seqs = seq_grid(setup.seq, points)
    frames = []
    for name, kind in ARCHITECTURES.items():
        pr = predict(kvsim.load_model(name), kvsim.load_hardware(setup.hardware), None,
                     Workload(prompt=seqs, gen=1, batch=1, kv_dtype="bf16", weight_dtype="bf16"))
        state = (pr.kv_cache_bytes + pr.state_bytes) / GiB
        frames.append(pd.DataFrame({"model": f"{name} ({kind})", "seq": seqs, "cache_gib": state}))
    return pd.concat(frames, ignore_index=True)


def quality() -> pd.DataFrame | None:
    """Measured perplexity against measured cache bytes (measured/results/*/quality*.csv)."""
    files = sorted(glob.glob(str(RESULTS / "*" / "quality*.csv")))
    if not files:
        return None
    df = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    df = df[df["status"] == "ok"]
    ppl = df[df["metric"] == "perplexity"][["model", "policy", "value", "kv_cache_bytes"]].rename(
        columns={"value": "perplexity"})
    keys = df[df["metric"] == "passkey"].groupby(["model", "policy"], as_index=False)["value"].mean().rename(
        columns={"value": "passkey_accuracy"})
    out = ppl.merge(keys, on=["model", "policy"], how="left")
    out["kv_mib"] = out["kv_cache_bytes"] / 2**20
    return out


def check(setup: Setup, spec: str) -> None:
    """Raise KvsimError if this policy spec cannot be evaluated for this setup (cheap: a tiny workload)."""
    _predict(setup, spec, prompt=min(setup.seq, 64), gen=1, batch=1)


def fitted_data() -> list[tuple[str, Path]]:
    """(profile file, measurement CSV) for every shipped profile fitted to harness runs: the files its provenance
    names, so the explorer compares each profile with the very rows it was fitted to (never runs of another
    harness executor that happen to sit in the same folder)."""
    out = []
    for name in profiles():
        meta = json.loads((PROFILES / name).read_text())
        for rel in (meta.get("provenance") or {}).get("data", []):
            path = Path(rel) if Path(rel).is_absolute() else ROOT / rel
            if path.is_file() and meta.get("hardware"):
                out.append((name, path))
    return out


def measured_vs_predicted() -> pd.DataFrame | None:
    """Measured latency rows next to kvsim's prediction for them by the profile fitted to them."""
    from calibrate.fit import model_spec as measured_model

    out = []
    for prof_name, path in fitted_data():
        df = pd.read_csv(path)
        if not {"ttft_s", "tpot_s", "status"} <= set(df.columns):
            continue
        df = df[df["status"] == "ok"].reset_index(drop=True)
        hardware = profile_summary(prof_name)["hardware"]
        try:
            hw = kvsim.load_hardware(hardware)
        except KvsimError:
            continue  # no preset for this device: nothing honest to compare with
        prof = profile(prof_name)
        for (model, pol, dtype, gen), sub in df.groupby(["model", "policy", "dtype", "gen"]):
            try:
                spec = measured_model(model, path.parent)
            except KvsimError:
                continue
            pr = predict(spec, hw, kvsim.parse_composition([pol] if pol != "full" else []),
                         Workload(prompt=sub["seq"].to_numpy(), gen=int(gen), batch=sub["batch"].to_numpy(),
                                  kv_dtype=dtype, weight_dtype=dtype), prof)
            for metric, meas, pred in (("TTFT", sub["ttft_s"], pr.ttft_s), ("TPOT", sub["tpot_s"], pr.tpot_s)):
                out.append(pd.DataFrame({"model": model, "policy": pol, "seq": sub["seq"], "batch": sub["batch"],
                                         "metric": metric, "device": sub["device_name"],
                                         "profile": prof_name.removesuffix(".json"),
                                         "measured_ms": meas * 1e3, "predicted_ms": np.asarray(pred) * 1e3}))
    if not out:
        return None
    res = pd.concat(out, ignore_index=True)
    res["error"] = res["predicted_ms"] / res["measured_ms"] - 1
    return res


# ------------------------------------------------------------------------------------------- claim checking
CLAIMS_DIR = ROOT / "examples" / "claims"
# Display units of each kind of claim: the one place the page converts kvsim's base units.
CLAIM_UNITS = {"bytes": ("GiB", GiB), "seconds": ("ms", 1e-3), "rate": ("tokens/s", 1.0), "ratio": ("x", 1.0),
               "fraction": ("%", 0.01), "count": ("billions", 1e9)}


def claim_examples() -> dict[str, str]:
    """The worked claim tables shipped in examples/claims, by file name."""
    return {p.name: p.read_text() for p in sorted(CLAIMS_DIR.glob("*.csv"))}


def check_claims(text: str, profile_name: str = "", tolerance: float = 0.02) -> pd.DataFrame:
    """kvsim check on a table's text (config.json paths in it are looked up beside the shipped examples): one
    row per claim with its verdict, and the claim and its bound in the display unit of its kind."""
    from kvsim.check import check, parse

    verdicts = check(parse(text, CLAIMS_DIR, "the table"), profile(profile_name), tolerance)
    rows = []
    for v in verdicts:
        unit, scale = CLAIM_UNITS.get(v.kind, ("", 1.0))
        rows.append({"label": v.label, "claim": v.claim, "claimed_raw": v.raw, "verdict": v.verdict,
                     "unit": unit, "claimed": None if v.claimed is None or v.kind == "quality" else v.claimed / scale,
                     "bound": None if v.bound is None or v.kind == "quality" else v.bound / scale,
                     "relation": v.relation, "margin_pct": None if v.margin is None else 100 * v.margin,
                     "condition": v.condition, "explanation": v.explanation,
                     "source": v.extra.get("source", "")})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class ServingSetup:
    """The Serving tab's inputs: an engine preset and a synthetic Poisson workload at several rates."""

    engine: str
    requests: int
    prompt: str  # a length distribution as `kvsim simulate --prompt-len` reads it
    output: str
    rates: tuple[float, ...]
    seed: int = 0


def serving(setup: Setup, specs: tuple[str, ...], srv: ServingSetup) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(latency percentiles per policy and rate, per-step pool occupancy at the highest rate) from kvsim.sim."""
    from kvsim import sim

    lengths = (sim.parse_lengths(srv.prompt, "prompt", "prompt"), sim.parse_lengths(srv.output, "output", "output"))
    base = sim.synthetic(srv.requests, *lengths, seed=srv.seed, rate=1.0)
    gaps = np.random.default_rng(srv.seed).standard_exponential(srv.requests)
    lat, occ = [], []
    for spec in specs:
        simulator = sim.build(model_spec(setup.model_key), kvsim.load_hardware(setup.hardware),
                              kvsim.parse_composition(spec.split(" + ") if spec != "full" else []), srv.engine,
                              profile(setup.profile), tp=setup.tp, kv_dtype=setup.kv_dtype or None,
                              longest_prompt=int(base.prompt.max()))
        for rate in srv.rates:
            res = simulator.run(sim.at_rate(base, gaps, rate))
            s = sim.summary(res)
            for metric in ("ttft", "tpot", "e2e"):
                for q in ("p50", "p99"):
                    lat.append({"policy": spec, "rate": rate, "metric": metric.upper(), "percentile": q,
                                "ms": s[f"{metric}_{q}_s"] * 1e3})
            lat.append({"policy": spec, "rate": rate, "metric": "throughput", "percentile": "",
                        "ms": s["throughput_tokens_per_s"]})
        series = sim.downsample(res, 400)
        occ.append(pd.DataFrame({"policy": spec, "t_s": series["t_s"],
                                 "pool_used_gib": np.asarray(series["pool_used_bytes"]) / GiB,
                                 "running": series["running"], "waiting": series["waiting"],
                                 "pool_gib": simulator.pool / GiB}))
    return pd.DataFrame(lat), pd.concat(occ, ignore_index=True)
