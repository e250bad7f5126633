"""Check a claim: paste or upload a claim table (or pick a worked example) and see each claim's verdict next to
its bound. Widgets and charts only: the verdicts are `kvsim check`'s, through app/data.py."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `streamlit run` from a checkout

from app import charts, data  # noqa: E402
from kvsim.errors import KvsimError  # noqa: E402

st.set_page_config(page_title="kvsim: check a claim", layout="wide")
st.title("Check a claim")
st.caption("One row per configuration (label, model, hardware, policy, seq, gen, batch, tp, kv_dtype, dtype, "
           "engine, baseline) and its claimed figures (kv_cache_bytes, peak_memory_bytes, ttft_s, tpot_s, "
           "decode_tokens_per_s, throughput_tokens_per_s, compression_ratio, memory_reduction, speedup, ...), "
           "with unit suffixes such as _ms, _GB or _pct. The same as `kvsim check TABLE`.")

source = st.radio("Table", ["example", "paste", "upload"], key="claim_source", horizontal=True)
examples = data.claim_examples()
if source == "example":
    name = st.selectbox("Worked example (examples/claims)", list(examples), key="claim_example")
    text = examples[name]
elif source == "paste":
    text = st.text_area("CSV", key="claim_text", height=200,
                        value="label,model,hardware,seq,gen,batch,kv_cache_bytes_GB\n"
                              "llama-8k,llama-3-8b,h100-sxm,8191,1,1,1.07\n")
else:
    up = st.file_uploader("A claim table (CSV)", type=["csv"], key="claim_upload")
    if up is None:
        st.info("Upload a CSV claim table (nothing leaves this machine).")
        st.stop()
    try:
        text = up.getvalue().decode("utf-8")
    except UnicodeDecodeError:
        st.error("That file is not a CSV file (not UTF-8 text).")
        st.stop()

c1, c2 = st.columns(2)
profile_name = c1.selectbox("Judge times against", [""] + data.profiles(), key="claim_profile",
                            format_func=lambda p: p or "the datasheet roofline (lower bounds)")
tolerance = c2.number_input("Tolerance (fraction)", min_value=0.0, max_value=0.5, value=0.02, step=0.01,
                            key="claim_tolerance")
try:
    frame = data.check_claims(text, profile_name, float(tolerance))
except KvsimError as e:
    st.error(str(e))
    st.stop()

counts = frame["verdict"].value_counts()
cols = st.columns(5)
for col, verdict in zip(cols, ("consistent", "unverifiable", "impossible", "inconsistent", "invalid")):
    col.metric(verdict, int(counts.get(verdict, 0)))
if profile_name:
    st.caption(f"Times judged against the calibrated profile {profile_name}: estimates, not physical bounds.")
st.dataframe(frame[["label", "claim", "claimed_raw", "verdict", "claimed", "bound", "unit", "margin_pct",
                    "condition", "explanation", "source"]],
             hide_index=True, width="stretch",
             column_config={"claimed_raw": "as written", "margin_pct": st.column_config.NumberColumn(
                 "margin (%)", format="%+.1f"), "claimed": st.column_config.NumberColumn(format="%.4g"),
                 "bound": st.column_config.NumberColumn(format="%.4g")})
if frame[["claimed", "bound"]].notna().all(axis=1).any():
    st.altair_chart(charts.claims_vs_bounds(frame), width="stretch")
