"""Predicted-against-measured plot for a calibrated profile (altair, saved as PNG beside the profile)."""

from __future__ import annotations

from pathlib import Path

from kvsim.atomic import replacing


def plot(df, held_ttft, held_tpot, datasheet_ttft, datasheet_tpot, title: str, out: Path) -> None:
    import altair as alt
    import pandas as pd

    rows = []
    for metric, meas, cal, raw in (("TTFT", df["ttft_s"], held_ttft, datasheet_ttft),
                                   ("TPOT", df["tpot_s"], held_tpot, datasheet_tpot)):
        for kind, pred in (("calibrated (held out)", cal), ("roofline, uncalibrated", raw)):
            rows.append(pd.DataFrame({"metric": metric, "model": df["model"], "policy": df["policy"],
                                      "measured_s": meas.to_numpy(), "predicted_s": pred, "prediction": kind}))
    data = pd.concat(rows, ignore_index=True)
    panels = []
    for metric in ("TTFT", "TPOT"):
        sub = data[data["metric"] == metric]
        lo = float(min(sub["measured_s"].min(), sub["predicted_s"].min())) * 0.8
        hi = float(max(sub["measured_s"].max(), sub["predicted_s"].max())) * 1.25
        scale = alt.Scale(type="log", domain=[lo, hi])
        points = alt.Chart(sub).mark_point(filled=True, size=28, opacity=0.7).encode(
            x=alt.X("measured_s:Q", scale=scale, title=f"measured {metric} (s)"),
            y=alt.Y("predicted_s:Q", scale=scale, title=f"predicted {metric} (s)"),
            color=alt.Color("model:N"), shape=alt.Shape("prediction:N"),
            tooltip=["model", "policy", "measured_s", "predicted_s", "prediction"])
        diag = alt.Chart(pd.DataFrame({"x": [lo, hi]})).mark_line(color="gray", strokeDash=[4, 4]).encode(
            x=alt.X("x:Q", scale=scale), y=alt.Y("x:Q", scale=scale))
        panels.append(alt.layer(diag, points).properties(width=330, height=330, title=metric))
    chart = alt.hconcat(*panels).properties(title=title)
    with replacing(out, suffix=".png") as tmp:
        chart.save(str(tmp), scale_factor=2)
