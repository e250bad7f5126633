"""kvsim what-if explorer: pick a model, hardware, workload and policies; compare them side by side.

Run with `kvsim app` or `streamlit run app/streamlit_app.py`. Widgets and charts only: every number comes
from kvsim (predictions) or measured/ (results files), through app/data.py.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `streamlit run` from a checkout

from app import charts, data, export, state  # noqa: E402
from kvsim import hardware_names, model_names  # noqa: E402
from kvsim.errors import KvsimError  # noqa: E402
from kvsim.jsonio import parse_object  # noqa: E402
from kvsim.policies import REGISTRY, policy_class  # noqa: E402
from kvsim.units import fmt_bytes  # noqa: E402

UNITS = {"budget": "tokens", "window": "tokens", "size": "tokens", "sinks": "tokens", "recent": "tokens",
         "page": "tokens", "read_budget": "tokens", "clusters": "centroids", "every": "decode steps",
         "iters": "iterations", "bits": "bits", "v_bits": "bits", "k_bits": "bits", "scale_bits": "bits",
         "group": "elements", "residual": "tokens", "rank": "dims", "rank_v": "dims", "hidden": "units",
         "quantum": "tokens", "kernel": "tokens", "retain": "fraction", "high": "fraction", "retrieval": "fraction",
         "floor": "fraction", "fraction": "fraction", "start": "fraction of depth", "t": "fraction", "beta": "ratio"}

st.set_page_config(page_title="kvsim explorer", layout="wide")
state.init()
for problem in st.session_state.get("_url_problems", []):
    st.warning(problem)


@st.cache_data(show_spinner=False, max_entries=64)
def cached(fn_name: str, setup: data.Setup, specs: tuple[str, ...], points: int):
    fn = getattr(data, fn_name)
    return fn(setup, specs, points) if points else fn(setup, specs)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_setup_only(fn_name: str, setup: data.Setup):
    return getattr(data, fn_name)(setup)


@st.cache_data(show_spinner="simulating...", max_entries=8)
def cached_serving(setup: data.Setup, specs: tuple[str, ...], srv: data.ServingSetup):
    return data.serving(setup, specs, srv)


@st.cache_data(show_spinner=False)
def cached_quality():
    return data.quality()


@st.cache_data(show_spinner=False, max_entries=8)
def cached_measured():
    return data.measured_vs_predicted()


def policy_widgets(name: str) -> str:
    """Widgets for one policy's parameters; returns its spec."""
    cls = policy_class(name)
    preset = REGISTRY[name][2]
    parts = []
    with st.sidebar.expander(f"{name}: {cls.summary}", expanded=False):
        for f in dataclasses.fields(cls):
            meta = f.metadata
            key = f"p.{name}.{f.name}"
            default = preset.get(f.name, f.default)
            label = f"{f.name} ({UNITS[f.name]})" if f.name in UNITS else f.name
            help_text = meta.get("help", "") + (" (changes which tokens are kept, not cost)"
                                                if meta.get("quality_only") else "")
            if key in st.session_state and not isinstance(default, tuple) and \
                    not isinstance(st.session_state[key], type(default)):
                try:  # a value from the URL arrives as text
                    raw = st.session_state[key]
                    st.session_state[key] = (raw.lower() in ("1", "true") if isinstance(default, bool)
                                             else type(default)(raw))
                    if not isinstance(default, bool) and not abs(st.session_state[key]) <= 2**53:
                        raise ValueError(raw)  # a widget cannot hold it, and no policy accepts it
                except (TypeError, ValueError):
                    del st.session_state[key]
            if isinstance(default, tuple):  # a per-layer list: comma-separated, empty for none
                if key not in st.session_state or not isinstance(st.session_state[key], str):
                    st.session_state[key] = ",".join(map(str, default))
                value = st.text_input(label, key=key, help=help_text).strip()
                if value:
                    parts.append(f"{f.name}={value}")
                continue
            if meta.get("choices"):
                choices = list(meta["choices"])
                if key not in st.session_state:
                    st.session_state[key] = default
                value = st.selectbox(label, choices, key=key, help=help_text)
            elif isinstance(default, bool):
                value = st.checkbox(label, value=default, key=key, help=help_text)
            elif isinstance(default, int):
                lo = int(meta["lo"]) if meta.get("lo") is not None else None
                hi = int(meta["hi"]) if meta.get("hi") is not None else None
                if key not in st.session_state:
                    st.session_state[key] = default
                value = st.number_input(label, min_value=lo, max_value=hi, step=1, key=key, help=help_text)
            else:
                lo = float(meta["lo"]) if meta.get("lo") is not None else None
                hi = float(meta["hi"]) if meta.get("hi") is not None else None
                if key not in st.session_state:
                    st.session_state[key] = float(default)
                value = st.number_input(label, min_value=lo, max_value=hi, step=0.05, key=key, help=help_text)
            parts.append(f"{f.name}={str(value).lower() if isinstance(value, bool) else value}")
    return name + (":" + ",".join(parts) if parts else "")


def model_key() -> str:
    mode = st.sidebar.radio("Model", ["preset", "config.json", "sizes"], key="model_mode", horizontal=True)
    if mode == "preset":
        return st.sidebar.selectbox("Preset", model_names(), key="model")
    if mode == "config.json":
        up = st.sidebar.file_uploader("A transformers config.json", type=["json"])
        if up is None:
            st.info("Upload a config.json to use it (nothing leaves this machine).")
            st.stop()
        try:  # the same bounded reader as the CLI: size, depth, finite numbers
            cfg = parse_object(up.getvalue(), "config.json", up.name)
        except KvsimError as e:
            st.error(str(e))
            st.stop()
        return "config:" + json.dumps(cfg, sort_keys=True)
    c1, c2 = st.sidebar.columns(2)
    sizes = {}
    for i, (key, label) in enumerate([("layers", "layers"), ("heads", "query heads"), ("kv_heads", "KV heads"),
                                      ("head_dim", "head dim"), ("hidden", "hidden size"),
                                      ("intermediate", "MLP size"), ("vocab", "vocabulary"),
                                      ("window", "sliding window (0: none)")]):
        sizes[key] = int((c1 if i % 2 == 0 else c2).number_input(label, min_value=0, step=1, key=key))
    return "custom:" + json.dumps(sizes, sort_keys=True)


def download_row(chart, frame, name: str) -> None:
    c1, c2, c3, _ = st.columns([1, 1, 1, 5])
    c1.download_button("CSV", lambda: export.csv(frame), f"{name}.csv", "text/csv", key=f"csv-{name}",
                       on_click="ignore")
    c2.download_button("PNG", lambda: export.png(chart), f"{name}.png", "image/png", key=f"png-{name}",
                       on_click="ignore")
    c3.download_button("SVG", lambda: export.svg(chart), f"{name}.svg", "image/svg+xml", key=f"svg-{name}",
                       on_click="ignore")


def show(chart, frame, name: str) -> None:
    st.altair_chart(chart, width="stretch")
    download_row(chart, frame, name)


# ------------------------------------------------------------------------------------------------ sidebar
st.sidebar.title("kvsim")
st.sidebar.caption("What will this KV-cache choice cost me?")
key = model_key()
hw_name = st.sidebar.selectbox("Hardware", hardware_names(), key="hardware")
profile_names = [""] + data.profiles()
if st.session_state.get("profile") not in profile_names:
    st.session_state["profile"] = ""
profile_name = st.sidebar.selectbox("Efficiency profile", profile_names, key="profile",
                                    format_func=lambda n: n or "datasheet roofline (lower bound)",
                                    help="A calibrated profile (kvsim calibrate) with its held-out error")
st.sidebar.subheader("Workload")
c1, c2 = st.sidebar.columns(2)
seq = int(c1.number_input("prompt (tokens)", min_value=1, step=256, key="seq"))
gen = int(c2.number_input("generated (tokens)", min_value=1, step=64, key="gen"))
batch = int(c1.number_input("batch (sequences)", min_value=1, step=1, key="batch"))
tp = int(c2.selectbox("tensor parallel (devices)", [1, 2, 4, 8], key="tp"))
kv_dtype = st.sidebar.selectbox("KV dtype", ["bf16", "fp16", "fp32", "fp8"], key="kv_dtype")
points = int(st.sidebar.number_input("sweep points", min_value=20, max_value=2000, step=50, key="points",
                                     help="points on each curve against sequence length"))
log = st.sidebar.checkbox("log axes", key="log")

st.sidebar.subheader("Policies to compare")
families = [n for n in REGISTRY if n != "full"]
chosen_default = [p for p in str(st.session_state.get("policies", "")).split("|") if p in REGISTRY]
if "chosen" not in st.session_state:
    st.session_state["chosen"] = chosen_default
chosen = st.sidebar.multiselect("policies", ["full"] + families, key="chosen",
                                help="each is compared with the others; open one below to set its parameters")
specs = [policy_widgets(n) if n != "full" else "full" for n in chosen]
extra = st.sidebar.text_area("more policies or compositions, one per line (compose with +)", key="extra",
                             placeholder="h2o:budget=512 + kivi:bits=2")
specs += [line.strip() for line in extra.splitlines() if line.strip()]

st.session_state["policies"] = "|".join(chosen)
state.publish({k: str(v) for k, v in st.session_state.items() if isinstance(k, str) and k.startswith("p.")})

# ---------------------------------------------------------------------------------------------- validate
try:
    spec_model = data.model_spec(key)
except (KvsimError, ValueError, KeyError, TypeError, RecursionError) as e:
    st.error(f"This model cannot be built: {e}")
    st.stop()
setup = data.Setup(key, hw_name, profile_name, seq, gen, batch, tp, kv_dtype)
valid = []
for spec in specs:
    try:
        data.check(setup, spec)
        valid.append(spec)
    except (KvsimError, ValueError) as e:
        st.warning(f"{spec}: {e}")
if not valid:
    st.info("Choose at least one valid policy in the sidebar.")
    st.stop()
specs_t = tuple(dict.fromkeys(valid))

# ------------------------------------------------------------------------------------------------ header
try:
    summary = cached("summary", setup, specs_t, 0)
except KvsimError as e:
    st.error(str(e))
    st.stop()
st.title(f"{spec_model.name} on {hw_name}")
prof_note = "datasheet roofline: times are lower bounds" if not profile_name else \
    "calibrated profile {} (held-out TPOT MAPE {:.1%}, TTFT MAPE {:.1%})".format(
        profile_name, data.profile_summary(profile_name)["heldout"].get("tpot_mape", float("nan")),
        data.profile_summary(profile_name)["heldout"].get("ttft_mape", float("nan")))
st.caption(f"{spec_model.n_params() / 1e9:.2f}B parameters · prompt {seq:,} · gen {gen:,} · batch {batch} · "
           f"TP {tp} · KV {kv_dtype} · {prof_note}")
table = summary[["policy", "kv_gib", "peak_gib", "fits", "max_batch", "max_context", "ttft_ms", "tpot_ms",
                 "tokens_per_s", "bound"]].rename(columns={
    "kv_gib": "KV (GiB)", "peak_gib": "peak memory/device (GiB)", "max_batch": "max batch",
    "max_context": "max context (tokens)", "ttft_ms": "TTFT (ms)", "tpot_ms": "TPOT (ms)",
    "tokens_per_s": "decode tokens/s", "bound": "decode bound"})
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"KV (GiB)": st.column_config.NumberColumn(format="%.3f"),
                            "peak memory/device (GiB)": st.column_config.NumberColumn(format="%.2f"),
                            "TTFT (ms)": st.column_config.NumberColumn(format="%.2f"),
                            "TPOT (ms)": st.column_config.NumberColumn(format="%.3f"),
                            "decode tokens/s": st.column_config.NumberColumn(format="%.0f")})
for n in sorted({n for notes in summary["notes"] for n in notes.split("\n") if n}):
    st.caption(f"note: {n}")

tabs = st.tabs(["Memory", "Latency & throughput", "Serving", "Trade-offs & quality", "Roofline", "Measured"])
with tabs[0]:
    seq_df = cached("vs_sequence", setup, specs_t, points)
    show(charts.kv_vs_seq(seq_df, log), seq_df, "kv_vs_seq")
    show(charts.memory_breakdown(summary), summary, "memory_breakdown")
    arch = cached_setup_only("architectures", setup)
    show(charts.architectures(arch, log), arch, "architectures")
with tabs[1]:
    show(charts.latency_vs_seq(seq_df, log, "ttft_ms", "TTFT (ms)"), seq_df, "ttft_vs_seq")
    show(charts.latency_vs_seq(seq_df, log, "tpot_ms", "TPOT (ms)"), seq_df, "tpot_vs_seq")
    batch_df = cached("vs_batch", setup, specs_t, min(points, 200))
    show(charts.throughput_vs_batch(batch_df), batch_df, "throughput_vs_batch")
with tabs[2]:
    st.caption("A discrete-event simulation of one engine replica (kvsim simulate): continuous batching over the "
               "engine's KV pool, each policy changing its requests' pages, step times from the cost model.")
    c1, c2, c3, c4 = st.columns(4)
    engine = c1.selectbox("engine", ["vllm", "sglang", "trtllm"], key="sim_engine")
    n_req = int(c2.number_input("requests", min_value=10, max_value=5000, step=50, key="sim_requests"))
    prompt_len = c3.text_input("prompt length", key="sim_prompt",
                               help="N, uniform:LO..HI, lognormal:median=M,sigma=S")
    output_len = c4.text_input("output length", key="sim_output", help="same forms as the prompt length")
    c1, c2, c3 = st.columns(3)
    top = float(c1.number_input("highest rate (requests/s)", min_value=0.01, step=1.0, key="sim_rate"))
    n_rates = int(c2.number_input("rates", min_value=2, max_value=12, step=1, key="sim_rates"))
    run = c3.toggle("simulate", key="sim_on", help="runs every chosen policy at every rate (seconds)")
    if run:
        srv = data.ServingSetup(engine, n_req, prompt_len, output_len,
                                tuple(float(r) for r in np.linspace(top / n_rates, top, n_rates)))
        try:
            lat, occ = cached_serving(setup, specs_t, srv)
        except KvsimError as e:
            st.error(str(e))
        else:
            show(charts.serving_latency(lat, "TTFT", "TTFT (ms)"), lat, "serving_ttft")
            show(charts.serving_latency(lat, "TPOT", "TPOT (ms)"), lat, "serving_tpot")
            show(charts.pool_occupancy(occ), occ, "pool_occupancy")
with tabs[3]:
    show(charts.tradeoff(summary), summary, "tradeoff")
    q = cached_quality()
    if q is None or q.empty:
        st.info("No measured quality yet: run `kvsim quality` to add measured/results/<device>/quality.csv.")
    else:
        q = q.assign(family=q["policy"].str.split(":").str[0])
        st.caption("Perplexity of SmolLM2-135M / Gemma-3-270M on Wikipedia text with each policy compressing, "
                   "against the cache bytes the harness measured (passkey accuracy in the tooltip).")
        show(charts.quality_vs_memory(q), q, "quality_vs_memory")
with tabs[4]:
    show(charts.roofline(summary), summary, "roofline")
with tabs[5]:
    mvp = cached_measured()
    if mvp is None:
        st.info("No calibrated profile names its measurements yet: `kvsim calibrate --data CSV` records them.")
    else:
        for (device, prof), rows in mvp.groupby(["device", "profile"]):
            for metric in ("TPOT", "TTFT"):
                err = rows[rows["metric"] == metric]["error"].abs().mean()
                st.metric(f"{metric} mean absolute error on {device} ({prof})", f"{err:.1%}")
        st.caption("Each calibrated profile against the measured runs it was fitted to (the files its provenance "
                   "names), whatever the sidebar shows: held-out error is in `kvsim list profiles`.")
        show(charts.measured_vs_predicted(mvp), mvp, "measured_vs_predicted")
st.caption(f"KV at the chosen workload, first policy: {fmt_bytes(summary['kv_gib'].iloc[0] * 2**30)}")
