"""Altair charts: a DataFrame in, a chart out. Titles and axes carry their units."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

alt.data_transformers.disable_max_rows()
WIDTH = "container"
# Channels are built as classes with explicit types throughout: shorthand strings ("policy:N") make altair
# search its whole schema per channel, some 15 ms a chart, which alone would blow the re-render budget.
T = alt.Tooltip
# Solid where the workload fits in device memory, dashed where it would not.
FITS = alt.StrokeDash("fits:N", title="fits in memory",
                      scale=alt.Scale(domain=[True, False], range=[[1, 0], [6, 4]]))


def _only(df: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """The columns a chart encodes: the page ships every column of a chart's frame to the browser."""
    return df[list(columns)]


def _x_seq(log: bool):
    return alt.X("seq:Q", title="sequence length (tokens)",
                 scale=alt.Scale(type="log" if log else "linear", nice=False))


def kv_vs_seq(df: pd.DataFrame, log: bool) -> alt.Chart:
    y = alt.Y("kv_gib:Q", title="KV cache (GiB)", scale=alt.Scale(type="log" if log else "linear"))
    return alt.Chart(_only(df, "policy", "seq", "kv_gib")).mark_line().encode(
        x=_x_seq(log), y=y, color=alt.Color("policy:N"),
        tooltip=[T("policy:N"), T("seq:Q"), T("kv_gib:Q", format=".3f")]).properties(
        title="KV cache against sequence length", width=WIDTH, height=320)


def architectures(df: pd.DataFrame, log: bool) -> alt.Chart:
    scale = alt.Scale(type="log" if log else "linear")
    return alt.Chart(_only(df, "model", "seq", "cache_gib")).mark_line().encode(
        x=_x_seq(log), y=alt.Y("cache_gib:Q", title="KV cache + recurrent state (GiB), bf16", scale=scale),
        color=alt.Color("model:N", title="architecture"),
        tooltip=[T("model:N"), T("seq:Q"), T("cache_gib:Q", format=".4f")]).properties(
        title="Per-sequence cache of MHA, GQA, sliding, MLA, SSM and hybrid models", width=WIDTH, height=320)


def memory_breakdown(summary: pd.DataFrame) -> alt.Chart:
    parts = summary.melt(id_vars=["policy", "capacity_gib"], value_vars=["weights_gib", "kv_peak_gib",
                                                                         "activations_gib"],
                         var_name="part", value_name="gib")
    parts["part"] = parts["part"].map({"weights_gib": "weights", "kv_peak_gib": "KV (peak)",
                                       "activations_gib": "activations + workspace"})
    bars = alt.Chart(parts).mark_bar().encode(
        x=alt.X("policy:N", title=None), y=alt.Y("gib:Q", title="memory per device (GiB)", stack="zero"),
        color=alt.Color("part:N", title=None), tooltip=[T("policy:N"), T("part:N"), T("gib:Q", format=".2f")])
    cap = alt.Chart(_only(summary.head(1), "capacity_gib")).mark_rule(color="red", strokeDash=[6, 3]).encode(
        y=alt.Y("capacity_gib:Q"))
    return (bars + cap).properties(title="Memory against device capacity (red)", width=WIDTH, height=320)


def latency_vs_seq(df: pd.DataFrame, log: bool, field: str, title: str) -> alt.Chart:
    return alt.Chart(_only(df, "policy", "seq", field, "fits")).mark_line().encode(
        x=_x_seq(log), y=alt.Y(f"{field}:Q", title=title, scale=alt.Scale(type="log" if log else "linear")),
        color=alt.Color("policy:N"), strokeDash=FITS,
        tooltip=[T("policy:N"), T("seq:Q"), T(f"{field}:Q", format=".3f"), T("fits:N")]).properties(
        title=f"{title} against sequence length", width=WIDTH, height=280)


def throughput_vs_batch(df: pd.DataFrame) -> alt.Chart:
    lines = alt.Chart(_only(df, "policy", "batch", "tokens_per_s", "fits")).mark_line().encode(
        x=alt.X("batch:Q", title="batch (sequences)", scale=alt.Scale(type="log", nice=False)),
        y=alt.Y("tokens_per_s:Q", title="decode throughput (tokens/s)"), color=alt.Color("policy:N"),
        strokeDash=FITS,
        tooltip=[T("policy:N"), T("batch:Q"), T("tokens_per_s:Q", format=",.0f"), T("fits:N")])
    limits = df.drop_duplicates("policy")
    limits = limits[limits["max_batch"] > 0]
    rules = alt.Chart(_only(limits, "policy", "max_batch")).mark_rule(strokeDash=[4, 4]).encode(
        x=alt.X("max_batch:Q"), color=alt.Color("policy:N"), tooltip=[T("policy:N"), T("max_batch:Q")])
    return (lines + rules).properties(title="Decode throughput against batch (dashed rules: max batch)",
                                      width=WIDTH, height=300)


def tradeoff(summary: pd.DataFrame) -> alt.Chart:
    return alt.Chart(summary).mark_circle(opacity=0.7).encode(
        x=alt.X("peak_gib:Q", title="peak memory per device (GiB)"),
        y=alt.Y("tokens_per_s:Q", title="decode throughput (tokens/s)"),
        size=alt.Size("tpot_ms:Q", title="TPOT (ms)", scale=alt.Scale(range=[60, 1500])),
        color=alt.Color("policy:N"), tooltip=[T("policy:N"), T("peak_gib:Q", format=".2f"),
                                              T("tokens_per_s:Q", format=",.0f"), T("tpot_ms:Q", format=".2f")]
    ).properties(title="Trade-off: throughput against memory (bubble: TPOT)", width=WIDTH, height=320)


def quality_vs_memory(df: pd.DataFrame) -> alt.Chart:
    return alt.Chart(df).mark_point(filled=True, size=70).encode(
        x=alt.X("kv_mib:Q", title="measured KV cache (MiB)", scale=alt.Scale(type="log")),
        y=alt.Y("perplexity:Q", title="perplexity (lower is better)", scale=alt.Scale(zero=False)),
        color=alt.Color("family:N", title="policy family"), shape=alt.Shape("model:N"),
        tooltip=[T("model:N"), T("policy:N"), T("perplexity:Q", format=".3f"),
                 T("passkey_accuracy:Q", format=".2f"), T("kv_mib:Q", format=".2f")]
    ).properties(title="Measured quality against measured cache bytes (real weights)", width=WIDTH, height=320)


def roofline(summary: pd.DataFrame) -> alt.Chart:
    peak = float(summary["peak_flops"].iloc[0])
    bw = float(summary["bandwidth"].iloc[0])
    pts = []
    for _, r in summary.iterrows():
        for phase, f, b, t in (("prefill", r.prefill_flops, r.prefill_bytes, r.ttft_ms / 1e3),
                               ("decode", r.decode_flops, r.decode_bytes, r.tpot_ms / 1e3)):
            pts.append({"policy": r.policy, "phase": phase, "intensity": f / b, "flops_per_s": f / t})
    pts = pd.DataFrame(pts)
    lo = min(0.1, pts["intensity"].min() / 2)
    hi = max(peak / bw * 8, pts["intensity"].max() * 2)
    xs = np.geomspace(lo, hi, 100)
    roof = pd.DataFrame({"intensity": xs, "flops_per_s": np.minimum(peak, bw * xs)})
    scale_x, scale_y = alt.Scale(type="log"), alt.Scale(type="log")
    line = alt.Chart(roof).mark_line(color="gray").encode(
        x=alt.X("intensity:Q", title="arithmetic intensity (FLOP/byte)", scale=scale_x),
        y=alt.Y("flops_per_s:Q", title="attained FLOP/s", scale=scale_y, axis=alt.Axis(format="~s")))
    dots = alt.Chart(pts).mark_point(filled=True, size=90).encode(
        x=alt.X("intensity:Q", scale=scale_x), y=alt.Y("flops_per_s:Q", scale=scale_y),
        color=alt.Color("policy:N"), shape=alt.Shape("phase:N"),
        tooltip=[T("policy:N"), T("phase:N"), T("intensity:Q", format=".2f"), T("flops_per_s:Q", format=".3e")])
    return (line + dots).properties(title="Roofline: each phase's operating point (gray: device roof)",
                                    width=WIDTH, height=320)


def measured_vs_predicted(df: pd.DataFrame) -> alt.Chart:
    lo = float(min(df["measured_ms"].min(), df["predicted_ms"].min())) * 0.8
    hi = float(max(df["measured_ms"].max(), df["predicted_ms"].max())) * 1.25
    scale = alt.Scale(type="log", domain=[lo, hi])
    diag = alt.Chart(pd.DataFrame({"x": [lo, hi]})).mark_line(color="gray", strokeDash=[4, 4]).encode(
        x=alt.X("x:Q", scale=scale), y=alt.Y("x:Q", scale=scale))
    pts = alt.Chart(df).mark_point(filled=True, size=40, opacity=0.7).encode(
        x=alt.X("measured_ms:Q", title="measured (ms)", scale=scale),
        y=alt.Y("predicted_ms:Q", title="predicted (ms)", scale=scale), color=alt.Color("model:N"),
        shape=alt.Shape("metric:N"),
        tooltip=[T("model:N"), T("policy:N"), T("seq:Q"), T("batch:Q"), T("metric:N"),
                 T("measured_ms:Q", format=".2f"), T("predicted_ms:Q", format=".2f"), T("error:Q", format="+.1%")])
    return (diag + pts).properties(title="Measured runs against predictions (dashed: equal)", width=WIDTH,
                                   height=340)


VERDICT_COLORS = alt.Scale(domain=["consistent", "unverifiable", "impossible", "inconsistent", "invalid"],
                           range=["#2ca02c", "#7f7f7f", "#d62728", "#ff7f0e", "#9467bd"])


def claims_vs_bounds(df: pd.DataFrame) -> alt.Chart:
    """Each claim (a dot, coloured by its verdict) next to the bound or exact value it was judged against (a
    tick), one panel per unit, on a log axis so that a claim 10x off a bound stands out."""
    d = _only(df.dropna(subset=["claimed", "bound"]), "label", "claim", "unit", "claimed", "bound", "verdict",
              "relation", "margin_pct")
    d = d[(d["claimed"] > 0) & (d["bound"] > 0)].assign(row=lambda x: x["label"] + " · " + x["claim"])
    y = alt.Y("row:N", title=None, sort=None, axis=alt.Axis(labelLimit=360))
    x = alt.X("claimed:Q", title=None, scale=alt.Scale(type="log"))
    tips = [T("label:N"), T("claim:N"), T("claimed:Q", format=",.4g"), T("bound:Q", format=",.4g"), T("unit:N"),
            T("relation:N"), T("verdict:N"), T("margin_pct:Q", title="margin (%)", format="+.1f")]
    dots = alt.Chart().mark_point(filled=True, size=90).encode(
        x=x, y=y, color=alt.Color("verdict:N", scale=VERDICT_COLORS), tooltip=tips)
    ticks = alt.Chart().mark_tick(color="black", thickness=2, size=18).encode(
        x=alt.X("bound:Q", scale=alt.Scale(type="log")), y=y, tooltip=tips)
    return alt.layer(ticks, dots, data=d).facet(
        row=alt.Row("unit:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left"))).resolve_scale(
        x="independent", y="independent").properties(
        title="Each claim (dot) against its bound or exact value (tick)")


def serving_latency(df: pd.DataFrame, metric: str, title: str) -> alt.Chart:
    """P50 (solid) and P99 (dashed) of one latency against the arrival rate, per policy."""
    rows = _only(df[df["metric"] == metric], "policy", "rate", "percentile", "ms")
    return alt.Chart(rows).mark_line(point=True).encode(
        x=alt.X("rate:Q", title="arrival rate (requests/s, Poisson)"),
        y=alt.Y("ms:Q", title=title, scale=alt.Scale(type="log")),
        color=alt.Color("policy:N"),
        strokeDash=alt.StrokeDash("percentile:N", title="percentile",
                                  scale=alt.Scale(domain=["p50", "p99"], range=[[1, 0], [6, 4]])),
        tooltip=[T("policy:N"), T("rate:Q", format=".3g"), T("percentile:N"), T("ms:Q", format=".2f")]).properties(
        title=f"{title} against arrival rate (simulated)", width=WIDTH, height=300)


def pool_occupancy(df: pd.DataFrame) -> alt.Chart:
    """KV pool in use over the run at the highest rate, per policy; the pool size as a rule."""
    lines = alt.Chart(_only(df, "policy", "t_s", "pool_used_gib", "running")).mark_line().encode(
        x=alt.X("t_s:Q", title="time (s)"), y=alt.Y("pool_used_gib:Q", title="KV pool in use (GiB)"),
        color=alt.Color("policy:N"),
        tooltip=[T("policy:N"), T("t_s:Q", format=".2f"), T("pool_used_gib:Q", format=".2f"), T("running:Q")])
    cap = alt.Chart(_only(df.head(1), "pool_gib")).mark_rule(color="red", strokeDash=[6, 3]).encode(
        y=alt.Y("pool_gib:Q"))
    return (lines + cap).properties(title="KV pool occupancy over time at the highest rate (pool size in red)",
                                    width=WIDTH, height=300)
